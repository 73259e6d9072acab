//! Which release a binary is: `--version`, the `build_info` metric, the image tag
//! (CHANGELOG.md lists the releases; README "Upgrading" says how to move between them).

/// The system's name: the OpenAPI title, the PostgreSQL `application_name`, the
/// instrumentation scope of its spans and the prefix of its Redis keys.
pub const NAME: &str = "order-service";

/// The release, from the workspace's version (one for every binary).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit it was built from (`build.rs`).
pub const COMMIT: &str = env!("ORDER_SERVICE_COMMIT");

/// `<program> <version> (<commit>)`, as `--version` prints it.
pub fn describe(program: &str) -> String {
    format!("{program} {VERSION} ({COMMIT})")
}

/// Prints [`describe`] and returns true when the first argument is `--version` or `-V`.
pub fn print_version_if_asked(program: &str) -> bool {
    let asked = matches!(std::env::args().nth(1).as_deref(), Some("--version" | "-V"));
    if asked {
        println!("{}", describe(program));
    }
    asked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_names_the_program_the_release_and_the_commit() {
        let line = describe("api");
        assert!(line.starts_with(&format!("api {VERSION} (")), "{line}");
        assert!(!COMMIT.is_empty() && line.ends_with(&format!("({COMMIT})")), "{line}");
    }
}
