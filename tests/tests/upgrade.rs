//! Upgrades: data directories written by earlier releases open in this one.
//!
//! `make_fixture` (ignored) writes a fixture of the current data format
//! (tests/fixtures/README.md).

use std::path::PathBuf;

use verge_tests::fixture;

/// Writes a fixture to `$VERGE_FIXTURE_OUT` (see tests/fixtures/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "makes a fixture; run by hand at the last commit of a data format"]
async fn make_fixture() {
    let out = PathBuf::from(
        std::env::var_os("VERGE_FIXTURE_OUT").expect("VERGE_FIXTURE_OUT names the tar.gz to write"),
    );
    let expected = fixture::make(&out).await.expect("fixture made");
    println!("{} written: {expected:?}", out.display());
}
