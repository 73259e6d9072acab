//! schemathesis (PyPI, in scripts/tools.sh's virtualenv) against `/openapi.json` of the
//! real api binary: every operation, 50 generated requests each, a fixed seed. No 5xx,
//! every response conforms to the spec (status, content type, headers, schema), invalid
//! input is refused, and a 405 says what is allowed.
//!
//! `positive_data_acceptance` is left out: a few rules are in the spec's prose only (a
//! blank name, a path id that is not a UUID, a price with three decimals, the capital
//! letter of a product name), so schemathesis counts their 400 as a refusal of valid data.

use std::process::{Command, Stdio};

use sqlx::PgPool;

use crate::{
    broker::eventually,
    e2e::{Processes, free_port, target_dir},
};

#[sqlx::test(migrations = "../migrations")]
async fn schemathesis_finds_no_server_error_and_no_response_off_the_spec(db: PgPool) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let schemathesis = format!("{root}/target/tools/venv/bin/schemathesis");
    assert!(std::path::Path::new(&schemathesis).exists(), "scripts/tools.sh (run by `make test`) installs it");
    let database = db.connect_options().get_database().unwrap().to_owned();
    let port = free_port();
    let api = Command::new(target_dir().join("api"))
        .env("DATABASE_URL", format!("postgres://postgres@127.0.0.1:5432/{database}"))
        .env("API_ADDR", format!("127.0.0.1:{port}"))
        // Its own Redis database: the users it reads are random, but keep clear anyway.
        .env("REDIS_URL", "redis://127.0.0.1:6379/12")
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the api is built (`make test` builds it)");
    let _api = Processes(vec![("api".into(), api)]);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    assert!(
        eventually(std::time::Duration::from_secs(30), || async {
            client.get(format!("{base}/healthcheck/")).send().await.is_ok()
        })
        .await
    );
    let work = format!("{root}/target/schemathesis");
    std::fs::create_dir_all(&work).unwrap();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis)
            .current_dir(work)
            .args(["--no-color", "run", &format!("{base}/openapi.json")])
            .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
            .args(["--max-examples", "50", "--seed", "1", "--workers", "1", "--generation-database", "none"])
            .output()
    })
    .await
    .unwrap()
    .expect("schemathesis runs");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
