//! schemathesis (PyPI, in scripts/tools.sh's virtualenv) against `/openapi.json` of the
//! real api binary: every operation, 50 generated requests each, a fixed seed. No 5xx,
//! every response conforms to the spec (status, content type, headers, schema), invalid
//! input is refused, and a 405 says what is allowed.
//!
//! `positive_data_acceptance` is left out: a few rules are in the spec's prose only (a
//! blank name, a path id that is not a UUID, a price with three decimals, the capital
//! letter of a product name), so schemathesis counts their 400 as a refusal of valid data.

use std::process::Command;

use sqlx::PgPool;

use crate::helpers::processes::{run_to_success, spawn_api};

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs scripts/tools.sh"]
async fn schemathesis_finds_no_server_error_and_no_response_off_the_spec(db: PgPool) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let schemathesis = format!("{root}/target/tools/venv/bin/schemathesis");
    assert!(std::path::Path::new(&schemathesis).exists(), "scripts/tools.sh (run by `make test`) installs it");
    // Its own Redis database: the users it reads are random, but keep clear anyway.
    let (_api, base) = spawn_api(&db, &[("REDIS_URL", "redis://127.0.0.1:6379/12")]).await;
    let work = format!("{root}/target/schemathesis");
    std::fs::create_dir_all(&work).unwrap();
    let mut schemathesis = Command::new(schemathesis);
    schemathesis
        .current_dir(work)
        .args(["--no-color", "run", &format!("{base}/openapi.json")])
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", "50", "--seed", "1", "--workers", "1", "--generation-database", "none"]);
    run_to_success(schemathesis).await;
}
