//! Swagger UI as a person would use it: headless Chromium, driven by
//! scripts/swagger_ui_check.py (playwright, in scripts/tools.sh's virtualenv).

use std::process::{Command, Stdio};

use sqlx::PgPool;

use crate::{
    broker::eventually,
    e2e::{Processes, free_port, target_dir},
};

#[sqlx::test(migrations = "../migrations")]
async fn swagger_ui_lists_every_route_and_tries_a_create(db: PgPool) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let python = format!("{root}/target/tools/venv/bin/python");
    assert!(std::path::Path::new(&python).exists(), "scripts/tools.sh (run by `make test`) installs playwright");
    let database = db.connect_options().get_database().unwrap().to_owned();
    let port = free_port();
    let api = Command::new(target_dir().join("api"))
        .env("DATABASE_URL", format!("postgres://postgres@127.0.0.1:5432/{database}"))
        .env("API_ADDR", format!("127.0.0.1:{port}"))
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
    std::fs::create_dir_all(format!("{root}/target/artifacts")).unwrap();
    let screenshot = format!("{root}/target/artifacts/swagger-ui.png");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python).arg(format!("{root}/scripts/swagger_ui_check.py")).arg(&base).arg(&screenshot).output()
    })
    .await
    .unwrap()
    .expect("python runs");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
