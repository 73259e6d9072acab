//! Swagger UI as a person would use it: headless Chromium, driven by
//! scripts/swagger_ui_check.py (playwright, in scripts/tools.sh's virtualenv).

use std::process::Command;

use sqlx::PgPool;

use crate::helpers::processes::{run_to_success, spawn_api};

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs scripts/tools.sh"]
async fn swagger_ui_lists_every_route_and_tries_a_create(db: PgPool) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let python = format!("{root}/target/tools/venv/bin/python");
    assert!(std::path::Path::new(&python).exists(), "scripts/tools.sh (run by `make test`) installs playwright");
    let (_api, base) = spawn_api(&db, &[]).await;
    std::fs::create_dir_all(format!("{root}/target/artifacts")).unwrap();
    let screenshot = format!("{root}/target/artifacts/swagger-ui.png");
    let mut check = Command::new(python);
    check.arg(format!("{root}/scripts/swagger_ui_check.py")).arg(&base).arg(&screenshot);
    run_to_success(check).await;
}
