//! The published JSON Schemas and the AsyncAPI document: the committed
//! copies are what the code generates, the examples and real documents
//! (every variant, optional fields absent) validate, and wrong documents
//! do not.

use std::path::PathBuf;

use crate::schema::{self, PAYLOADS};

const REGENERATE: &str = "VERGE_BLESS=1 cargo test -p verge-shared --features schema schema";

fn docs() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs"))
}

/// Writes `text` to `path` under VERGE_BLESS, else says whether it differs.
fn check_committed(path: PathBuf, text: &str) -> Option<String> {
    if std::env::var_os("VERGE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("under docs/")).expect("create docs/schemas");
        std::fs::write(&path, text).expect("write a generated document");
        return None;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    (committed != text).then(|| path.display().to_string())
}

#[test]
fn the_committed_schemas_are_what_the_code_generates() {
    let mut stale = Vec::new();
    for (name, schema) in schema::schemas() {
        let path = docs().join("schemas").join(format!("{name}.json"));
        stale.extend(check_committed(path, &schema::render(&schema)));
    }
    let listed: Vec<String> = std::fs::read_dir(docs().join("schemas"))
        .expect("docs/schemas")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !PAYLOADS.iter().any(|p| format!("{}.json", p.name) == *n))
        .collect();
    assert!(
        stale.is_empty() && listed.is_empty(),
        "{stale:?} differ from the schemas the wire types generate, and {listed:?} are not \
         generated at all; regenerate docs/schemas/ with `{REGENERATE}` (delete the files no \
         longer generated) and commit them"
    );
}
