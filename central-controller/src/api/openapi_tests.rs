//! The OpenAPI document: the committed copy is what the code generates,
//! it lists exactly the routes docs/api.md lists with the same roles, and
//! every operation in it reaches a handler of the real router.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode, header};
use serde_json::Value;

use super::access_tests::documented_routes;
use super::tests::{api, request, send};
use super::*;
use crate::testing::memory_fixture;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
const REGENERATE: &str = "VERGE_BLESS=1 cargo test -p central-controller --lib openapi";

fn document() -> Value {
    serde_json::from_str(&openapi_text()).expect("the document is JSON")
}

/// Every (method, path) of the document, with its operation.
fn operations(doc: &Value) -> Vec<(Method, String, Value)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut out = Vec::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            let method: Method = method.to_uppercase().parse().expect("method");
            out.push((method, path.clone(), operation.clone()));
        }
    }
    out
}

#[test]
fn the_committed_document_is_what_the_code_generates() {
    let generated = openapi_text();
    if std::env::var_os("VERGE_BLESS").is_some() {
        std::fs::write(COMMITTED, &generated).expect("write docs/openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the document the handlers generate; \
         regenerate it with `{REGENERATE}` and commit it"
    );
}

#[test]
fn the_document_is_openapi_3_1_with_both_security_schemes() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["console_session"]["in"], "cookie");
    assert_eq!(schemes["console_session"]["name"], "verge_session");
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], serde_json::json!(["error"]), "{error}");
}

#[test]
fn the_document_lists_the_routes_of_api_md_with_their_roles() {
    let doc = document();
    let documented: BTreeSet<(String, String)> = documented_routes()
        .into_iter()
        .map(|(m, p, _)| (m.to_string(), p))
        .collect();
    let listed: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m.to_string(), p))
        .collect();
    assert_eq!(
        listed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in the OpenAPI document but not in docs/api.md's routes table"
    );
    assert_eq!(
        documented.difference(&listed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in docs/api.md's routes table but not in the OpenAPI document"
    );
    for (method, path, role) in documented_routes() {
        let operation = operations(&doc)
            .into_iter()
            .find(|(m, p, _)| *m == method && *p == path)
            .map(|(_, _, o)| o)
            .expect("listed");
        let security = operation["security"].as_array().expect("security");
        if role == "public" {
            assert!(
                security.iter().any(|s| s == &serde_json::json!({})),
                "{method} {path} is public: its security must allow no credentials"
            );
            assert!(operation.get("x-verge-role").is_none(), "{method} {path}");
        } else {
            assert_eq!(operation["x-verge-role"], role.as_str(), "{method} {path}");
            assert!(
                !security.iter().any(|s| s == &serde_json::json!({})),
                "{method} {path} needs a token"
            );
            for status in ["401", "403", "429"] {
                assert!(
                    operation["responses"].get(status).is_some(),
                    "{method} {path} lacks {status}"
                );
            }
        }
        assert!(
            operation["responses"].get("500").is_some(),
            "{method} {path} lacks 500"
        );
    }
}

#[test]
fn every_error_response_has_the_error_body_and_names_its_codes() {
    for (method, path, operation) in operations(&document()) {
        for (status, response) in operation["responses"].as_object().expect("responses") {
            let code: u16 = status.parse().expect("status");
            if code < 400 || code == 416 {
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(
                schema, "#/components/schemas/Error",
                "{method} {path} {status}: {response}"
            );
            let description = response["description"].as_str().unwrap_or_default();
            assert!(
                description.starts_with('`'),
                "{method} {path} {status} must name its error codes: {description}"
            );
        }
    }
}

#[tokio::test]
async fn every_operation_reaches_a_handler() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    for (method, path, _) in operations(&document()) {
        let uri = path
            .replace("{sha256}", &"0".repeat(64))
            .replace("{index}", "0")
            .replace(['{', '}'], "");
        // The watch stream never ends: a bad filter answers at once.
        let uri = match path.as_str() {
            "/api/v1/watch" => format!("{uri}?kind=none"),
            _ => uri,
        };
        // Without a body: a handler answers (most with 4xx), never the
        // router's fallback or a 405.
        let (status, body) = send(&router, request(method.clone(), &uri, Body::empty())).await;
        let text = String::from_utf8_lossy(&body);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !text.contains("no such route"),
            "{method} {path} reached no handler: {status} {text}"
        );
    }
}

#[tokio::test]
async fn the_document_is_served_without_a_token() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    let mut anonymous = request(Method::GET, "/api/v1/openapi.json", Body::empty());
    anonymous.headers_mut().remove(header::AUTHORIZATION);
    let (status, body) = send(&router, anonymous).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(String::from_utf8_lossy(&body), openapi_text());
}
