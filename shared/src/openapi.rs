//! OpenAPI schemas (with the `openapi` feature) for the wire types whose
//! JSON is a string in a format of their own: identifiers, times, digests
//! and keys. The structs and enums derive theirs where they are defined.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};

use crate::{AgentId, KeyId, PublicKey, RegionId, ServiceName, Sha256Digest, Timestamp};

/// A string schema with a description, and a pattern and length when given.
fn string(description: &str, pattern: Option<&str>, max_length: Option<usize>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(pattern)
        .min_length(max_length.map(|_| 1))
        .max_length(max_length)
}

macro_rules! schema {
    ($ty:ty, $build:expr) => {
        impl utoipa::PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                $build.into()
            }
        }
        impl utoipa::ToSchema for $ty {}
    };
}

schema!(
    AgentId,
    string(
        "A node (edge agent) id: ASCII letters, digits, '-', '_' and '.', starting with a letter or digit.",
        Some("^[A-Za-z0-9][A-Za-z0-9._-]*$"),
        Some(64),
    )
    .examples([serde_json::json!("edge-a")])
);
schema!(
    RegionId,
    string(
        "A region: lower-case letters, digits and '-', starting with a letter or digit.",
        Some("^[a-z0-9][a-z0-9-]*$"),
        Some(63),
    )
    .examples([serde_json::json!("eu-west")])
);
schema!(
    ServiceName,
    string(
        "A service name: a DNS label (lower-case letters, digits and '-').",
        Some("^[a-z0-9][a-z0-9-]*$"),
        Some(63),
    )
    .examples([serde_json::json!("hello")])
);
schema!(
    Timestamp,
    string("A time in RFC 3339, UTC, with milliseconds.", None, None)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .examples([serde_json::json!("2026-11-18T09:30:00.412Z")])
);
schema!(
    Sha256Digest,
    string(
        "A SHA-256 digest in lower-case hex.",
        Some("^[0-9a-f]{64}$"),
        None
    )
    .examples([serde_json::json!(
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    )])
);
schema!(
    KeyId,
    string(
        "The id of a public key: hex SHA-256 of its raw bytes.",
        None,
        None
    )
);
schema!(
    PublicKey,
    string(
        "An Ed25519 public key: base64 of its 32 raw bytes.",
        None,
        None
    )
    .examples([serde_json::json!(
        "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
    )])
);
