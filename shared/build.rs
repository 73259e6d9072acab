//! `sqlx::migrate!` embeds migrations/ at build time: rebuild when it changes.
//!
//! And stamps the commit a binary was built from (`--version`, the `build_info` metric): the
//! `ORDER_SERVICE_COMMIT` variable if set (the image build passes it: the build context has
//! no `.git`), else `git rev-parse`, else "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    println!("cargo:rerun-if-env-changed=ORDER_SERVICE_COMMIT");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    let commit = std::env::var("ORDER_SERVICE_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(|| {
            let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ORDER_SERVICE_COMMIT={commit}");
}
