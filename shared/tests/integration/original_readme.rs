//! The original service's README, as its users typed it: its curl commands send JSON
//! with `-d` and no `Content-Type`, so curl says `application/x-www-form-urlencoded`.
//! The commands are in `shared/tests/fixtures/original-readme-commands.sh`, verbatim.

use std::process::Command;

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::processes::spawn_api;

const COMMANDS: &str = include_str!("../fixtures/original-readme-commands.sh");

/// Runs one of the original's commands against `base`, changing only the host and port
/// and the closing backtick of its body (see the fixture's header); returns its stdout.
fn run(command: &str, base: &str) -> String {
    let command = command
        .replace("http://localhost:8000/", &format!("{base}/"))
        .replace("http://localhost/", &format!("{base}/"))
        .replace("\n}`", "\n}'");
    let output = Command::new("sh").arg("-c").arg(format!("{command} --silent --show-error")).output().unwrap();
    assert!(output.status.success(), "{command}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries (make test builds them) and curl"]
async fn the_original_readmes_commands_work_as_written(db: PgPool) {
    let (_api, base) = spawn_api(&db, &[]).await;
    let commands: Vec<&str> = COMMANDS
        .split("\n---\n")
        .map(|c| c.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n"))
        .map(|c| Box::leak(c.into_boxed_str()) as &str)
        .collect();
    assert_eq!(commands.len(), 7, "the fixture holds the original's seven commands");
    let answers: Vec<String> = commands.iter().map(|c| run(c, &base)).collect();
    let parsed = |i: usize| serde_json::from_str::<Value>(&answers[i]).unwrap_or(Value::Null);

    assert_eq!(parsed(0), json!({"status": "OK"}));
    // 204s print nothing: the product, the address and the user were created.
    assert_eq!(answers[1..4], ["", "", ""], "{answers:?}");
    let product = reqwest::get(format!("{base}/api/v1/products/string")).await.unwrap();
    assert_eq!(product.status(), 200);
    let product: Value = serde_json::from_str(&product.text().await.unwrap()).unwrap();
    assert_eq!(
        (&product["price"], &product["discount"], &product["description"]),
        (&json!(100), &json!(10), &json!("string"))
    );
    // The original ignored paymentMethod; the contract takes Online, Card or Cash.
    let refused = parsed(4)["message"].as_str().unwrap_or_default().to_owned();
    assert!(refused.contains("paymentMethod") && refused.contains("Online"), "{}", answers[4]);
    assert_eq!(parsed(5)["count"], 0);
    assert_eq!(parsed(6)["count"], 0);
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries (make test builds them) and curl"]
async fn a_body_that_is_not_json_still_needs_the_json_content_type(db: PgPool) {
    let (_api, base) = spawn_api(&db, &[]).await;
    let client = reqwest::Client::new();
    let post = |content_type: Option<&'static str>, body: &'static str| {
        let mut request = client.post(format!("{base}/api/v1/address/")).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let address = r#"{"addressID": "7b2b575e-65e7-427c-bb1b-1fe609fc1f6b", "buildingNumber": 44, "streetName": "s", "city": "c", "country": "k"}"#;
    // A form that is a form, and JSON under any other declared type: 415, as before.
    assert_eq!(post(Some("application/x-www-form-urlencoded"), "a=1&b=2").await.0, 415);
    assert_eq!(post(Some("text/plain"), address).await.0, 415);
    assert_eq!(post(None, "not json").await.0, 415);
    // JSON with no type, or curl's default form type: taken as JSON.
    assert_eq!(post(None, address).await, (204, String::new()));
    let (status, body) = post(Some("application/x-www-form-urlencoded"), address).await;
    assert_eq!(status, 409, "{body}");
}
