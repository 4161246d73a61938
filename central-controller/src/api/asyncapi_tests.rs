//! The MQTT surface's published documents: the committed
//! `docs/asyncapi.json` and `docs/schemas/*.json` are what verge-shared
//! generates (regenerate with the command below), and the controller
//! serves them without a token.

use std::path::PathBuf;

use axum::http::{Method, StatusCode, header};
use serde_json::Value;
use verge_shared::{asyncapi, schema};

use super::tests::{api, request, send};
use super::*;
use crate::testing::memory_fixture;

const REGENERATE: &str = "VERGE_BLESS=1 cargo test -p central-controller --lib asyncapi";

fn docs() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs"))
}

/// Writes `text` to `path` under `VERGE_BLESS`; else the path, if the
/// committed file differs.
fn check_committed(path: PathBuf, text: &str) -> Option<String> {
    if std::env::var_os("VERGE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("under docs/")).expect("create the directory");
        std::fs::write(&path, text).expect("write a generated document");
        return None;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    (committed != text).then(|| path.display().to_string())
}

#[test]
fn the_committed_asyncapi_document_is_what_the_code_generates() {
    let stale = check_committed(docs().join("asyncapi.json"), &asyncapi::text());
    assert!(
        stale.is_none(),
        "docs/asyncapi.json differs from the document verge-shared generates; regenerate it \
         with `{REGENERATE}` and commit it"
    );
}

#[test]
fn the_committed_schemas_are_what_the_code_generates() {
    let mut stale = Vec::new();
    for (name, value) in schema::schemas() {
        let path = docs().join("schemas").join(format!("{name}.json"));
        stale.extend(check_committed(path, &schema::render(&value)));
    }
    let extra: Vec<String> = std::fs::read_dir(docs().join("schemas"))
        .expect("docs/schemas")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| {
            !schema::PAYLOADS
                .iter()
                .any(|p| format!("{}.json", p.name) == *n)
        })
        .collect();
    assert!(
        stale.is_empty() && extra.is_empty(),
        "{stale:?} differ from the schemas the wire types generate, and {extra:?} are not \
         generated at all; regenerate docs/schemas/ with `{REGENERATE}` (delete the files no \
         longer generated) and commit them"
    );
}

#[tokio::test]
async fn the_asyncapi_document_and_the_schemas_are_served_without_a_token() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    let anonymous = |uri: &str| {
        let mut r = request(Method::GET, uri, Body::empty());
        r.headers_mut().remove(header::AUTHORIZATION);
        r
    };
    let (status, body) = send(&router, anonymous("/api/v1/asyncapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(String::from_utf8_lossy(&body), asyncapi::text());
    for (name, schema) in schema::schemas() {
        let uri = format!("/api/v1/schemas/{name}.json");
        let (status, body) = send(&router, anonymous(&uri)).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(
            String::from_utf8_lossy(&body),
            schema::render(&schema),
            "{uri}"
        );
    }
    for unknown in ["/api/v1/schemas/nothing.json", "/api/v1/schemas/status"] {
        let (status, body) = send(&router, anonymous(unknown)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
        let error: Value = serde_json::from_slice(&body).expect("the error body");
        assert_eq!(error["error"]["code"], "not_found", "{error}");
        let message = error["error"]["message"].as_str().expect("a message");
        assert!(message.contains("status.json"), "{message}");
    }
}
