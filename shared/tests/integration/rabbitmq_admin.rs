//! The README's way to answer a saga by hand, as a person takes it: RabbitMQ's admin
//! panel in headless Chromium (scripts/rabbitmq_admin_check.py, playwright from
//! scripts/tools.sh's virtualenv) publishes the reply; the worker approves the order.
//! `make test` runs it on RabbitMQ 3.10 (port 15672) and 4.0.5 (15673, through
//! `TEST_RABBITMQ_MANAGEMENT_URL`).

use std::process::Command;

use serde_json::json;
use sqlx::PgPool;

use crate::{
    helpers::broker::TestBroker,
    helpers::processes::run_to_success,
    helpers::saga::{RunningWorker, saga_status, settled},
    helpers::{Placed, TestApp},
};

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs scripts/tools.sh"]
async fn a_saga_answered_from_the_rabbitmq_admin_panel_approves_the_order(db: PgPool) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let python = format!("{root}/target/tools/venv/bin/python");
    assert!(std::path::Path::new(&python).exists(), "scripts/tools.sh (run by `make test`) installs playwright");
    let management =
        std::env::var("TEST_RABBITMQ_MANAGEMENT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672/".to_owned());
    let app = TestApp::new(db);
    let broker = TestBroker::new().await;
    let phone = app.create_product("Phone", 100.0, 10).await;
    let Placed { order, .. } = app.place_order(&[phone]).await;
    let worker = RunningWorker::start(&app, &broker);

    std::fs::create_dir_all(format!("{root}/target/artifacts")).unwrap();
    let major = broker.version().major;
    let screenshot = format!("{root}/target/artifacts/rabbitmq-admin-publish-{major}.png");
    // The README's payload, as typed into the panel.
    let payload = serde_json::to_string_pretty(&json!({"orderID": order, "orderType": "Approved"})).unwrap();
    let mut check = Command::new(python);
    check
        .arg(format!("{root}/scripts/rabbitmq_admin_check.py"))
        .arg(&management)
        .arg(&broker.topology.exchange)
        .arg(order_service::amqp::REPLY_ROUTING_KEY)
        .arg(&payload)
        .arg(&screenshot);
    run_to_success(check).await;

    let approved = settled(&app, order, "Approved").await;
    worker.stop().await;
    broker.cleanup().await;
    assert!(approved, "the order is {:?} after the panel's reply", saga_status(&app, order).await);
    let listed = app.get("/api/v1/orders/").await;
    assert_eq!(listed.body["orders"][0]["OrderID"], json!(order));
    assert!(std::path::Path::new(&screenshot).exists());
}
