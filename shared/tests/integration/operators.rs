//! An operator's tools, run as the real `saga-worker` binary: stuck sagas, and dead
//! letters listed by reason, replayed or discarded one by one.

use std::{process::Command, time::Duration};

use order_service::amqp::{Outgoing, Publisher, QueueType, Topology};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    helpers::saga::{TestWorker, saga_status, settled},
    helpers::{
        Placed, TestApp,
        broker::OwnVhost,
        eventually,
        processes::{database_url, target_dir},
    },
};

/// Runs `saga-worker ARGS`; returns (success, stdout lines parsed as JSON, stderr).
fn saga_worker(args: &[&str], env: &[(&str, &str)]) -> (bool, Vec<Value>, String) {
    let output = Command::new(target_dir().join("saga-worker"))
        .args(args)
        .envs(env.iter().copied())
        .env("LOG_LEVEL", "info")
        .output()
        .expect("the saga-worker is built (`make test` builds it)");
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line}")))
        .collect();
    (output.status.success(), lines, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries: make test builds them"]
async fn sagas_pending_lists_the_waiting_orders_oldest_first(db: PgPool) {
    let app = TestApp::new(db.clone());
    let phone = app.create_product("Phone", 1.0, 0).await;
    let Placed { user, address, order: fresh } = app.place_order(&[phone]).await;
    let old = app.order_for(user, address, &[phone]).await;
    let older = app.order_for(user, address, &[phone]).await;
    let answered = app.order_for(user, address, &[phone]).await;
    app.approve(answered).await;
    // Placed two and three hours ago; the oldest asked again twice, the last time an hour ago.
    sqlx::query("UPDATE orders SET created_at = now() - interval '2 hours' WHERE id = $1")
        .bind(old)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE orders SET created_at = now() - interval '3 hours', saga_retries = 2,
                           saga_requested_at = now() - interval '1 hour' WHERE id = $1",
    )
    .bind(older)
    .execute(&db)
    .await
    .unwrap();
    let url = database_url(&db);
    let env = [("DATABASE_URL", url.as_str())];

    let (ok, lines, stderr) = saga_worker(&["sagas", "pending"], &env);
    assert!(ok, "{stderr}");
    let ids: Vec<&Value> = lines.iter().map(|l| &l["order_id"]).collect();
    assert_eq!(ids, [&json!(older), &json!(old), &json!(fresh)], "oldest first, the answered order left out");
    let oldest = &lines[0];
    assert_eq!((&oldest["user_id"], &oldest["re_requests"]), (&json!(user), &json!(2)));
    let age = oldest["age_seconds"].as_f64().unwrap();
    assert!((3.0 * 3600.0..3.0 * 3600.0 + 60.0).contains(&age), "{age}");
    assert!(oldest["last_re_requested_at"].is_string());
    assert!(lines[2]["last_re_requested_at"].is_null(), "never asked again");
    eprintln!("sagas pending:\n{}", lines.iter().map(Value::to_string).collect::<Vec<_>>().join("\n"));

    // The same, as the worker's gauges read it.
    let (pending, oldest) = order_service::saga::pending_summary(&db.clone().into()).await.unwrap();
    assert_eq!(pending, 3);
    assert!((age - 1.0..age + 60.0).contains(&oldest), "{oldest} against {age}");

    let (_, lines, _) = saga_worker(&["sagas", "pending", "--older-than", "90m"], &env);
    assert_eq!(lines.iter().map(|l| &l["order_id"]).collect::<Vec<_>>(), [&json!(older), &json!(old)]);
    let (_, lines, _) = saga_worker(&["sagas", "pending", "1"], &env);
    assert_eq!(lines.len(), 1);
    let (ok, _, stderr) = saga_worker(&["sagas", "pending", "--older-than", "soon"], &env);
    assert!(!ok && stderr.contains("--older-than"), "{stderr}");
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries (make test builds them) and rabbitmqctl"]
async fn dead_letters_are_listed_by_reason_then_replayed_or_discarded_one_by_one(db: PgPool) {
    let app = TestApp::new(db.clone());
    let vhost = OwnVhost::create("ops");
    vhost.declare_contract().await;
    let topology = Topology::contract(QueueType::Quorum);
    // A reply that came before its order existed, and two that can never apply.
    let early = Uuid::new_v4();
    let mut publisher = Publisher::connect(&vhost.args("customer-service"), &topology).await.unwrap();
    let replies = [
        ("early", json!({"orderID": early, "orderType": "Approved"}).to_string()),
        ("garbage-1", "{not json".to_owned()),
        ("garbage-2", "[1, 2".to_owned()),
    ];
    let messages: Vec<Outgoing> =
        replies.iter().map(|(id, body)| topology.customer_reply(*id, body.as_str())).collect();
    assert!(publisher.publish_all(&messages, order_service::amqp::CONFIRM_DEADLINE).await.iter().all(Result::is_ok));
    publisher.close().await;
    let worker = TestWorker::on(&app, vhost.args("worker"), vhost.args("worker-dlq"), topology.clone()).start();
    let dlq = topology.dead_letter_queue.clone();
    assert!(eventually(Duration::from_secs(15), || async { vhost.depth(&dlq).await == 3 }).await);

    let url = database_url(&db);
    let env = [("DATABASE_URL", url.as_str()), ("AMQP_URL", vhost.url.as_str())];
    // Counts by reason first, then the messages; all stay in the queue.
    let (ok, lines, stderr) = saga_worker(&["dlq", "list"], &env);
    assert!(ok, "{stderr}");
    assert_eq!(
        lines[..2],
        [json!({"kind": "malformed_json", "count": 2}), json!({"kind": "unknown_order", "count": 1})]
    );
    let mut listed: Vec<&str> = lines[2..].iter().map(|l| l["message_id"].as_str().unwrap()).collect();
    listed.sort_unstable();
    assert_eq!(listed, ["early", "garbage-1", "garbage-2"]);
    assert!(eventually(Duration::from_secs(5), || async { vhost.depth(&dlq).await == 3 }).await);

    // The cause of one is fixed (its order now exists): replayed alone, it applies.
    app.place_order_with_id(early).await;
    let (ok, lines, stderr) = saga_worker(&["dlq", "replay", "--id", "early"], &env);
    assert!(ok, "{stderr}");
    let done = lines.iter().find(|l| l.get("action").is_some()).expect("a line saying what was done");
    assert_eq!(
        (&done["action"], &done["message_id"], &done["kind"]),
        (&json!("replayed"), &json!("early"), &json!("unknown_order"))
    );
    assert!(lines.iter().any(|l| l["message"] == "dead letter replayed" && l["message.id"] == "early"), "{lines:?}");
    assert!(settled(&app, early, "Approved").await, "{:?}", saga_status(&app, early).await);

    // One discarded: logged whole first, and the other left in place.
    let (ok, lines, stderr) = saga_worker(&["dlq", "discard", "--id", "garbage-1"], &env);
    assert!(ok, "{stderr}");
    let logged = lines.iter().find(|l| l["message"] == "dead letter discarded").expect("the discard is logged");
    assert_eq!((&logged["message.id"], &logged["body"]), (&json!("garbage-1"), &json!("{not json")));
    assert!(logged["headers"].as_str().unwrap().contains("x-poison-reason"), "{logged}");
    assert!(lines.iter().any(|l| l["action"] == "discarded"));
    assert!(eventually(Duration::from_secs(5), || async { vhost.depth(&dlq).await == 1 }).await);
    let (_, lines, _) = saga_worker(&["dlq", "list"], &env);
    assert_eq!(lines.last().unwrap()["message_id"], "garbage-2");

    // An id that is not there: an error that says so, and nothing moves.
    let (ok, _, stderr) = saga_worker(&["dlq", "discard", "--id", "garbage-1"], &env);
    assert!(!ok && stderr.contains("no dead letter has the message id"), "{stderr}");
    assert!(eventually(Duration::from_secs(5), || async { vhost.depth(&dlq).await == 1 }).await);

    worker.stop().await;
}
