//! The OpenAPI 3.1 document of the HTTP API: the shapes of the replies the
//! handlers build as JSON objects, and what every operation shares (the
//! security schemes, the role from [`required_role`], the errors of the
//! authentication layer), added to what `#[utoipa::path]` on each handler
//! says. `api::openapi()` puts them together; `docs/openapi.json` is its
//! output.

use std::collections::BTreeMap;

use axum::http::Method;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, Ref, RefOr, ResponseBuilder,
};
use verge_shared::dsse::Envelope;
use verge_shared::messages::{Resources, RunSpec};
use verge_shared::trust::ReleaseArtifact;
use verge_shared::{KeyId, ServiceName, Sha256Digest, Timestamp};

use super::auth::required_role;
use crate::app::{
    ApiTokenView, AuditRecord, NodeView, RegionView, ServiceView, TokenView, UserView, role_name,
};

/// The security scheme of API tokens (`Authorization: Bearer <token>`).
pub const BEARER: &str = "bearer";
/// The security scheme of the web console's session cookie.
pub const SESSION: &str = "console_session";

/// Routes that need no token: the controller's health, this document,
/// the MQTT surface's AsyncAPI document and JSON Schemas, artifact downloads (a node's client certificate or an operator's token
/// over HTTPS; anyone over plain HTTP), sign-in, enrollment (the bootstrap
/// token in the body) and renewal (signed by the node key).
pub const PUBLIC: [(&str, &str); 8] = [
    ("GET", "/healthz"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/asyncapi.json"),
    ("GET", "/api/v1/schemas/{file}"),
    ("GET", "/api/v1/artifacts/{sha256}"),
    ("POST", "/api/v1/login"),
    ("POST", "/api/v1/enroll"),
    ("POST", "/api/v1/nodes/{id}/certificate"),
];

// The reply shapes below are built with `json!` by their handlers; they
// are described here, and the schemathesis system test checks every reply
// against them.

/// `GET /healthz`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Health {
    #[schema(example = "ok")]
    status: String,
}

/// `GET /api/v1/services`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ServiceList {
    services: Vec<ServiceView>,
}

/// `GET /api/v1/nodes`: one page, in id order.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NodePage {
    nodes: Vec<NodeView>,
    /// Pass it as `cursor` for the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// `GET /api/v1/tokens`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenList {
    tokens: Vec<TokenView>,
}

/// `GET /api/v1/consumers`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ConsumerList {
    consumers: Vec<crate::app::ConsumerView>,
}

/// `GET /api/v1/api-tokens`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ApiTokenList {
    api_tokens: Vec<ApiTokenView>,
}

/// `GET /api/v1/users`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UserList {
    users: Vec<UserView>,
}

/// `GET /api/v1/regions`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RegionList {
    regions: Vec<RegionView>,
}

/// `GET /api/v1/audit`: newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AuditList {
    entries: Vec<AuditRecord>,
    /// Pass it as `cursor` for the next (older) page; `null` on the last.
    next_cursor: Option<String>,
}

/// A release as lists and the watch stream show it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReleaseSummary {
    /// The digest of the signed envelope: what a service's `release` names.
    digest: Sha256Digest,
    service: ServiceName,
    #[schema(example = "1.2.0")]
    version: String,
    /// The publisher whose key signed it.
    publisher: String,
    artifacts: Vec<ReleaseArtifact>,
    created_at: Timestamp,
}

/// `GET /api/v1/releases`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReleaseList {
    releases: Vec<ReleaseSummary>,
}

/// `GET /api/v1/releases/{digest}`: the summary with the run spec, the
/// resources and the envelope as signed.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReleaseDetail {
    #[schema(inline)]
    #[serde(flatten)]
    summary: ReleaseSummary,
    run: RunSpec,
    resources: Resources,
    envelope: Envelope,
}

/// The root keys of the trust bundle.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TrustRoot {
    threshold: u32,
    key_ids: Vec<KeyId>,
}

/// A publisher of the trust bundle and the services it may sign.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TrustPublisher {
    name: String,
    key_id: KeyId,
    /// Service name patterns.
    services: Vec<String>,
}

/// `GET /api/v1/trust`: the trust bundle in force.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TrustView {
    version: u64,
    expires_at: Timestamp,
    root: TrustRoot,
    controller_key_ids: Vec<KeyId>,
    publishers: Vec<TrustPublisher>,
}

/// `PUT /api/v1/trust`: the version in force, and whether this request
/// installed it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TrustInstalled {
    version: u64,
    installed: bool,
}

/// One Server-Sent Event of `GET /api/v1/watch` (docs/api.md, "Watching
/// changes"); `: keep-alive` comments come between them.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WatchEvent {
    /// The change's kind (`node`, `service`, `replica`, `release`, `token`,
    /// `api_token`, `user`) or a control event (`sync`, `relist`, `dropped`).
    #[schema(example = "node")]
    event: String,
    /// One line of JSON: `{"id", "kind", "action", "at", "object"}` for a
    /// change, `{"id", "kind", "message"}` and more for a control event.
    data: String,
    /// The id to resume after; absent on `dropped`.
    #[schema(example = "1795000000123004")]
    id: Option<String>,
}

/// `POST /api/v1/artifacts`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ArtifactStored {
    sha256: Sha256Digest,
    size: u64,
}

/// The document with what every operation shares: the API's description,
/// the security schemes, each operation's role and the errors its
/// authentication can answer.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    doc.info = InfoBuilder::new()
        .title("Verge controller API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "The Verge controller's HTTP API (docs/api.md). Every error has the body \
             `{\"error\": {\"code\", \"message\", \"field\"}}` with a stable `code`; each \
             response lists the codes it can carry.",
        ))
        .build();
    let components = doc.components.take().unwrap_or_default();
    let components = ComponentsBuilder::from(components)
        .security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token: the bootstrap `<data_dir>/admin-token`, one from \
                         `POST /api/v1/login` or `POST /api/v1/api-tokens`.",
                    ))
                    .build(),
            ),
        )
        .security_scheme(
            SESSION,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "verge_session",
                "The web console's session; a change made with it also needs the page's \
                 CSRF token in `X-CSRF-Token`.",
            ))),
        )
        .build();
    doc.components = Some(components);
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, operation) in [
            (HttpMethod::Get, &mut item.get),
            (HttpMethod::Put, &mut item.put),
            (HttpMethod::Post, &mut item.post),
            (HttpMethod::Delete, &mut item.delete),
        ] {
            if let Some(operation) = operation {
                complete(path, method, operation);
            }
        }
    }
    doc
}

fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Put => "PUT",
        HttpMethod::Post => "POST",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Head => "HEAD",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Trace => "TRACE",
    }
}

/// One operation's security, role and shared errors.
fn complete(path: &str, method: HttpMethod, operation: &mut Operation) {
    let name = method_name(&method);
    let public = PUBLIC.contains(&(name, path));
    let error = |description: &str| -> RefOr<utoipa::openapi::Response> {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Error")))
                    .build(),
            )
            .into()
    };
    let responses = &mut operation.responses.responses;
    let mut add = |status: &str, description: &str, response: RefOr<utoipa::openapi::Response>| {
        if let Some(RefOr::T(existing)) = responses.get_mut(status) {
            existing.description = format!("{}; {description}", existing.description);
        } else {
            responses.insert(status.to_owned(), response);
        }
    };
    add(
        "500",
        "`internal`: a failure on the controller's side (logged with its cause)",
        error("`internal`: a failure on the controller's side (logged with its cause)"),
    );
    if public {
        if path == "/api/v1/artifacts/{sha256}" {
            // A node's client certificate, an operator's token, or nothing
            // over plain HTTP.
            operation.security = Some(vec![
                SecurityRequirement::default(),
                SecurityRequirement::new(BEARER, Vec::<String>::new()),
            ]);
        } else {
            operation.security = Some(vec![SecurityRequirement::default()]);
        }
        return;
    }
    let method: Method = name.parse().unwrap_or(Method::GET);
    let role = role_name(required_role(&method, path));
    operation.security = Some(vec![
        SecurityRequirement::new(BEARER, Vec::<String>::new()),
        SecurityRequirement::new(SESSION, Vec::<String>::new()),
    ]);
    operation.extensions = Some(
        ExtensionsBuilder::new()
            .add("x-verge-role", Value::from(role))
            .build(),
    );
    let needs = format!("Needs the `{role}` role.");
    operation.description = Some(match operation.description.take() {
        Some(text) => format!("{text}\n\n{needs}"),
        None => needs,
    });
    let unauthorized = "`unauthorized`: missing, unknown, expired or revoked token; \
                        `session_idle`: the console session ended";
    add("401", unauthorized, error(unauthorized));
    let forbidden = format!(
        "`forbidden`: the token's role is below `{role}`; `csrf`: a change made with the \
         console's cookie without its CSRF token; `cross_origin`: a change made with the \
         console's cookie from another origin"
    );
    add("403", &forbidden, error(&forbidden));
    let throttled = "`too_many_attempts`: too many bad tokens from this address; \
                     `Retry-After` says how many seconds to wait";
    let mut response = ResponseBuilder::new().description(throttled).header(
        "Retry-After",
        HeaderBuilder::new()
            .schema(<u64 as utoipa::PartialSchema>::schema())
            .description(Some("Seconds to wait."))
            .build(),
    );
    response = response.content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Error")))
            .build(),
    );
    add("429", throttled, response.into());
}

/// The document as `docs/openapi.json` keeps it: pretty-printed, every
/// object's keys in order, a newline at the end.
pub fn render(doc: &OpenApi) -> String {
    let value = serde_json::to_value(doc).map(sorted).unwrap_or(Value::Null);
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// `value` with every object's keys sorted, whatever map serde_json uses.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let ordered: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(ordered.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}
