//! The saga worker against the real PostgreSQL, RabbitMQ and Redis.

use std::{sync::Arc, time::Duration};

use order_service::{
    amqp::Consumer,
    saga::{self, SagaReply, dlq},
    trace_context::TraceContext,
};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{
    Placed, TestApp,
    broker::TestBroker,
    eventually, publish_rows,
    saga::{RunningWorker, TestWorker, events, reply, saga_status, send_reply, settled},
};

#[sqlx::test(migrations = "../migrations")]
async fn an_approval_approves_emits_order_created_and_shows_in_every_list(db: PgPool) {
    let app = TestApp::new(db);
    let broker = TestBroker::new().await;
    let phone = app.create_product("Phone", 100.0, 10).await;
    let Placed { user, order, .. } = app.place_order(&[phone]).await;
    let user_list = format!("/api/v1/orders/user/{user}");
    assert_eq!(app.get(&user_list).await.body["orders"], json!([]), "cached while pending");

    let worker = RunningWorker::start(&app, &broker);
    send_reply(&broker, &reply(order, "Approved"), "reply-1").await;
    assert!(settled(&app, order, "Approved").await);
    assert_eq!(saga_status(&app, order).await, ("Approved".into(), "New".into()));

    let created = events(&app, "OrderCreated").await;
    assert_eq!(created.len(), 1);
    let event = &created[0];
    assert_eq!((&event["orderID"], &event["userID"]), (&json!(order), &json!(user)));
    assert_eq!((&event["sagaStatus"], &event["totalPrice"]), (&json!("Approved"), &json!(90)));
    assert_eq!(event["products"], json!([{"productID": phone, "name": "Phone", "actualPrice": 90}]));
    assert_eq!(event["address"], "Russia, Moscow, Pushkina, 44");

    assert_eq!(app.get(&format!("/api/v1/orders/{order}")).await.body["sagaStatus"], "Approved");
    assert_eq!(app.get("/api/v1/orders/").await.body["orders"][0]["OrderID"], json!(order));
    assert_eq!(app.get(&user_list).await.body["orders"][0]["OrderID"], json!(order), "no stale cache hit");
    worker.stop().await;
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rejection_cancels_the_order_and_keeps_it_out_of_the_lists(db: PgPool) {
    let app = TestApp::new(db);
    let broker = TestBroker::new().await;
    let phone = app.create_product("Phone", 100.0, 10).await;
    let Placed { user, order, .. } = app.place_order(&[phone]).await;
    let worker = RunningWorker::start(&app, &broker);
    send_reply(&broker, &json!({"ORDERID": order, "ordertype": "Rejected"}).to_string(), "reply-1").await;
    assert!(settled(&app, order, "Rejected").await);
    assert_eq!(saga_status(&app, order).await, ("Rejected".into(), "Canceled".into()));
    let canceled = events(&app, "OrderCanceled").await;
    assert_eq!(canceled.len(), 1);
    assert_eq!(canceled[0]["orderID"], json!(order));
    let by_id = app.get(&format!("/api/v1/orders/{order}")).await.body;
    assert_eq!((&by_id["sagaStatus"], &by_id["orderStatus"]), (&json!("Rejected"), &json!("Canceled")));
    assert_eq!(app.get("/api/v1/orders/").await.body["orders"], json!([]));
    assert_eq!(app.get(&format!("/api/v1/orders/user/{user}")).await.body["orders"], json!([]));
    worker.stop().await;
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_same_reply_three_times_applies_once(db: PgPool) {
    let app = TestApp::new(db);
    let broker = TestBroker::new().await;
    let phone = app.create_product("Phone", 1.0, 0).await;
    let Placed { order, .. } = app.place_order(&[phone]).await;
    let Placed { order: other, .. } = app.place_order(&[phone]).await;
    for _ in 0..3 {
        send_reply(&broker, &reply(order, "Approved"), "same-id").await;
    }
    // Without a message id, the order and the answer are the key.
    for _ in 0..3 {
        send_reply(&broker, &reply(other, "Approved"), "").await;
    }
    let worker = RunningWorker::start(&app, &broker);
    assert!(settled(&app, order, "Approved").await && settled(&app, other, "Approved").await);
    assert!(
        eventually(Duration::from_secs(10), || async {
            broker.queue_depth(&broker.topology.customer_saga_queue).await == 0
        })
        .await
    );
    worker.stop().await;
    assert_eq!(events(&app, "OrderCreated").await.len(), 2, "one event per order");
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM saga_inbox").fetch_one(&app.db).await.unwrap();
    assert_eq!(inbox, 2);
    // A contradicting reply later is stale: recorded, nothing moves.
    let outcome =
        saga::apply(&app.db.clone().into(), "late", SagaReply::Rejected { order_id: order }, TraceContext::new_root())
            .await
            .unwrap();
    assert!(matches!(outcome, saga::Applied::Stale { .. }));
    assert_eq!(saga_status(&app, order).await.0, "Approved");
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_worker_stopped_between_commit_and_ack_has_no_effect_when_redelivered(db: PgPool) {
    let app = TestApp::new(db);
    let broker = TestBroker::new().await;
    let phone = app.create_product("Phone", 1.0, 0).await;
    let Placed { order, .. } = app.place_order(&[phone]).await;
    let user = saga_user(&app, order).await;
    let user_list = format!("/api/v1/orders/user/{user}");
    assert_eq!(app.get(&user_list).await.body["orders"], json!([]), "a cached page");
    send_reply(&broker, &reply(order, "Approved"), "reply-1").await;

    // A worker that takes the reply, commits it, and dies before its ack (and before
    // it could invalidate the cache).
    let mut consumer =
        Consumer::connect(&broker.args("crashing"), &broker.topology, &broker.topology.customer_saga_queue, 1)
            .await
            .unwrap();
    let delivery = consumer.next().await.unwrap();
    let parsed = SagaReply::parse(&delivery.body).unwrap();
    let key = delivery.message_id().unwrap().to_owned();
    assert_eq!(
        saga::apply(&app.db.clone().into(), &key, parsed, TraceContext::new_root()).await.unwrap(),
        saga::Applied::Approved { user_id: saga_user(&app, order).await }
    );
    consumer.close().await; // no ack: the broker redelivers

    let worker = RunningWorker::start(&app, &broker);
    // The redelivered duplicate still invalidates the page the first worker could not.
    // (Waiting for CustomerSaga to look empty raced: a reply the worker had prefetched
    // but not yet taken counts as not ready, and stopping then handed it back.)
    let invalidated = eventually(Duration::from_secs(10), || async {
        app.get(&user_list).await.body["orders"][0]["OrderID"] == json!(order)
    })
    .await;
    worker.stop().await;
    assert!(invalidated, "the redelivered reply did not invalidate the user's page");
    assert_eq!(events(&app, "OrderCreated").await.len(), 1, "the redelivery changed nothing");
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_worker_that_dies_right_after_its_ack_has_already_invalidated(db: PgPool) {
    let app = TestApp::new(db);
    let broker = TestBroker::new().await;
    let phone = app.create_product("Phone", 1.0, 0).await;
    let Placed { user, order, .. } = app.place_order(&[phone]).await;
    let user_list = format!("/api/v1/orders/user/{user}");
    assert_eq!(app.get(&user_list).await.body["orders"], json!([]), "a cached page");
    let died = Arc::new(tokio::sync::Notify::new());
    let worker = TestWorker::new(&app, &broker).halt_after_first_ack(died.clone()).start();
    send_reply(&broker, &reply(order, "Approved"), "reply-1").await;
    tokio::time::timeout(Duration::from_secs(10), died.notified()).await.expect("the worker took the reply");
    worker.abort();
    // Acked: the broker will not redeliver it, so nothing else would ever invalidate.
    assert_eq!(broker.queue_depth(&broker.topology.customer_saga_queue).await, 0);
    assert_eq!(saga_status(&app, order).await.0, "Approved");
    assert_eq!(app.get(&user_list).await.body["orders"][0]["OrderID"], json!(order), "the cached page is stale");
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_poison_reason_larger_than_a_frame_is_cut_and_the_reply_dead_lettered(db: PgPool) {
    let app = TestApp::new(db);
    let broker = TestBroker::new().await;
    // The peer controls the value quoted in the reason: 200 KB, past the 128 KiB frame.
    let huge = "x".repeat(200_000);
    send_reply(&broker, &json!({"orderID": huge, "orderType": "Approved"}).to_string(), "huge-id").await;
    send_reply(&broker, &json!({"orderID": Uuid::new_v4(), "orderType": huge}).to_string(), "huge-type").await;
    let worker = RunningWorker::start(&app, &broker);
    let dead_lettered = eventually(Duration::from_secs(15), || async {
        broker.queue_depth(&broker.topology.dead_letter_queue).await == 2
    })
    .await;
    worker.stop().await;
    assert!(dead_lettered, "the poison replies were not dead-lettered");
    let dead = broker.drain(&broker.topology.dead_letter_queue).await;
    for message in &dead {
        let reason = message.header("x-poison-reason").unwrap_or_default();
        assert!(reason.len() <= 1024, "a reason of {} bytes", reason.len());
        assert!(reason.contains("xxxx"), "the reason still quotes the value: {reason}");
        assert!(message.body.to_string().len() > 200_000, "the message itself is kept whole");
    }
    broker.cleanup().await;
}

async fn saga_user(app: &TestApp, order: Uuid) -> Uuid {
    sqlx::query_scalar("SELECT user_id FROM orders WHERE id = $1").bind(order).fetch_one(&app.db).await.unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn poison_replies_go_to_the_dead_letter_queue_with_their_reason(db: PgPool) {
    let app = TestApp::new(db);
    let broker = TestBroker::new().await;
    let poison = [
        ("{not json".to_owned(), "malformed JSON"),
        (json!({"orderID": Uuid::new_v4(), "orderType": "Maybe"}).to_string(), "unknown orderType"),
        (reply(Uuid::new_v4(), "Approved"), "unknown order"),
        (json!({"orderType": "Approved"}).to_string(), "missing field orderID"),
    ];
    for (i, (body, _)) in poison.iter().enumerate() {
        send_reply(&broker, body, &format!("poison-{i}")).await;
    }
    let worker = RunningWorker::start(&app, &broker);
    assert!(
        eventually(Duration::from_secs(10), || async {
            broker.queue_depth(&broker.topology.dead_letter_queue).await == 4
        })
        .await,
        "not every poison reply reached the DLQ"
    );
    worker.stop().await;
    assert!(broker.drain(&broker.topology.customer_saga_queue).await.is_empty(), "CustomerSaga is empty");
    let dead = broker.drain(&broker.topology.dead_letter_queue).await;
    for (i, (_, reason)) in poison.iter().enumerate() {
        let message = dead.iter().find(|m| m.message_id() == format!("poison-{i}")).expect("dead-lettered");
        let header = message.header("x-poison-reason").unwrap_or_default();
        assert!(header.contains(reason), "{header:?} does not say {reason:?}");
    }
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_pending_order_is_re_requested_then_canceled_after_the_last_retry(db: PgPool) {
    let app = TestApp::new(db);
    let phone = app.create_product("Phone", 1.0, 0).await;
    let Placed { order, .. } = app.place_order(&[phone]).await;
    let timeout = Duration::from_secs(600);
    let age_order = || async {
        sqlx::query("UPDATE orders SET saga_requested_at = now() - interval '11 minutes' WHERE id = $1")
            .bind(order)
            .execute(&app.db)
            .await
            .unwrap();
    };
    // The relay published the requests 11 minutes ago.
    let age = || async {
        age_order().await;
        publish_rows(&app.db, &format!("aggregate_id = '{order}'"), "now() - interval '11 minutes'").await;
    };
    // Not due yet.
    assert_eq!(
        saga::sweep_timeouts(&app.db.clone().into(), timeout, 2, saga::ReplyBacklog::Empty).await.unwrap(),
        saga::Swept::default()
    );
    // Nor while its request has not left the outbox (the relay or the broker is down).
    age_order().await;
    assert_eq!(
        saga::sweep_timeouts(&app.db.clone().into(), timeout, 2, saga::ReplyBacklog::Empty).await.unwrap(),
        saga::Swept::default()
    );
    for retry in 1..=2 {
        age().await;
        let swept = saga::sweep_timeouts(&app.db.clone().into(), timeout, 2, saga::ReplyBacklog::Empty).await.unwrap();
        assert_eq!((swept.re_requested, swept.canceled.len()), (1, 0), "retry {retry}");
        assert_eq!(events(&app, "OrderCreateSaga").await.len(), 1 + retry);
    }
    // Each re-request names the first request, so the customer service can tell it
    // from a new order.
    let requests = events(&app, "OrderCreateSaga").await;
    assert!(requests[0].get("originalEventID").is_none(), "{}", requests[0]);
    for again in &requests[1..] {
        assert_eq!(again["originalEventID"], requests[0]["eventID"], "{again}");
        assert_ne!(again["eventID"], requests[0]["eventID"]);
    }
    age().await;
    let swept = saga::sweep_timeouts(&app.db.clone().into(), timeout, 2, saga::ReplyBacklog::Empty).await.unwrap();
    assert_eq!((swept.re_requested, swept.canceled.len()), (0, 1));
    assert_eq!(saga_status(&app, order).await, ("Rejected".into(), "Canceled".into()));
    assert_eq!(events(&app, "OrderCanceled").await.len(), 1);
    // A late approval changes nothing.
    let late =
        saga::apply(&app.db.clone().into(), "late", SagaReply::Approved { order_id: order }, TraceContext::new_root())
            .await
            .unwrap();
    assert!(matches!(late, saga::Applied::Stale { .. }));
    assert_eq!(saga_status(&app, order).await.0, "Rejected");
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs rabbitmqctl"]
async fn the_worker_carries_on_after_the_broker_drops_its_connections(db: PgPool) {
    let app = TestApp::new(db);
    let broker = TestBroker::new().await;
    let phone = app.create_product("Phone", 1.0, 0).await;
    let worker = RunningWorker::start(&app, &broker);
    let Placed { order: first, .. } = app.place_order(&[phone]).await;
    send_reply(&broker, &reply(first, "Approved"), "reply-1").await;
    assert!(settled(&app, first, "Approved").await);

    assert!(broker.close_connections("worker") > 0, "the worker had no connection to close");
    let Placed { order: second, .. } = app.place_order(&[phone]).await;
    send_reply(&broker, &reply(second, "Rejected"), "reply-2").await;
    assert!(settled(&app, second, "Rejected").await, "the worker did not reconnect");
    worker.stop().await;
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_database_failure_is_retried_not_lost(db: PgPool) {
    let app = TestApp::new(db);
    let broker = TestBroker::new().await;
    let phone = app.create_product("Phone", 1.0, 0).await;
    let Placed { order, .. } = app.place_order(&[phone]).await;
    // Every write of a reply fails until the flag is cleared.
    sqlx::raw_sql(
        "CREATE TABLE failing (on_ boolean);
         INSERT INTO failing VALUES (true);
         CREATE FUNCTION fail_inbox() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF (SELECT on_ FROM failing) THEN RAISE EXCEPTION 'database trouble'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER fail_inbox BEFORE INSERT ON saga_inbox FOR EACH ROW EXECUTE FUNCTION fail_inbox();",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let worker = RunningWorker::start(&app, &broker);
    send_reply(&broker, &reply(order, "Approved"), "reply-1").await;
    // The worker keeps trying while it fails…
    assert!(!settled_within(&app, order, Duration::from_secs(2)).await);
    sqlx::query("UPDATE failing SET on_ = false").execute(&app.db).await.unwrap();
    // …and applies the reply once the database is back.
    assert!(settled(&app, order, "Approved").await);
    worker.stop().await;
    assert!(broker.drain(&broker.topology.dead_letter_queue).await.is_empty());
    broker.cleanup().await;
}

pub(crate) async fn settled_within(app: &TestApp, order: Uuid, limit: Duration) -> bool {
    eventually(limit, || async { saga_status(app, order).await.0 != "Pending" }).await
}

#[sqlx::test(migrations = "../migrations")]
async fn the_dead_letter_queue_is_listed_then_replayed_once_the_cause_is_fixed(db: PgPool) {
    let app = TestApp::new(db);
    let broker = TestBroker::new().await;
    // A reply that came before its order existed, and one that can never apply.
    let early = Uuid::new_v4();
    send_reply(&broker, &reply(early, "Approved"), "early").await;
    send_reply(&broker, "{not json", "garbage").await;
    let worker = RunningWorker::start(&app, &broker);
    let dlq = &broker.topology.dead_letter_queue;
    assert!(eventually(Duration::from_secs(10), || async { broker.queue_depth(dlq).await == 2 }).await);

    // Listing leaves the messages where they are, and says why each is there.
    let args = broker.args("dlq");
    let listed = dlq::list(&args, &broker.topology, 100).await.unwrap();
    let mut kinds: Vec<_> = listed.iter().map(|l| (l.message_id.clone().unwrap(), l.kind.clone())).collect();
    kinds.sort();
    assert_eq!(kinds, [("early".to_owned(), "unknown_order".to_owned()), ("garbage".into(), "malformed_json".into())]);
    assert!(listed.iter().all(|l| !l.reason.is_empty()));
    assert_eq!(dlq::list(&args, &broker.topology, 1).await.unwrap().len(), 1);
    assert!(eventually(Duration::from_secs(5), || async { broker.queue_depth(dlq).await == 2 }).await);

    // The cause is fixed: the order now exists. Replay moves both back; the early reply
    // applies, the garbage is dead-lettered again, and nothing is replayed twice.
    app.place_order_with_id(early).await;
    let moved = dlq::replay(&args, &broker.args("dlq-publish"), &broker.topology, 100).await.unwrap();
    assert_eq!(moved.len(), 2);
    assert!(settled(&app, early, "Approved").await, "the replayed reply was applied");
    assert!(eventually(Duration::from_secs(10), || async { broker.queue_depth(dlq).await == 1 }).await);
    worker.stop().await;
    let left = broker.drain(dlq).await;
    assert_eq!(left.iter().map(|m| m.message_id()).collect::<Vec<_>>(), ["garbage"]);
    broker.cleanup().await;
}

/// Replies are applied side by side: one waiting on its order's lock does not hold up
/// the next. One at a time, each reply waited for the commit (the WAL flush) of the one
/// before: after 10 s of orders at 16 connections, their sagas took 16.7 s more to finish
/// (`make bench`, the like-for-like POST rows).
#[sqlx::test(migrations = "../migrations")]
async fn a_reply_waiting_for_its_order_does_not_hold_up_the_next(db: PgPool) {
    let app = TestApp::new(db);
    let broker = TestBroker::new().await;
    let phone = app.create_product("Phone", 100.0, 10).await;
    let first = app.place_order(&[phone]).await.order;
    let second = app.place_order(&[phone]).await.order;
    // Another transaction holds the first order (as a concurrent delete or sweep would).
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE").bind(first).execute(&mut *holder).await.unwrap();

    let worker = RunningWorker::start(&app, &broker);
    send_reply(&broker, &reply(first, "Approved"), "reply-first").await;
    send_reply(&broker, &reply(second, "Approved"), "reply-second").await;
    assert!(settled(&app, second, "Approved").await, "the second reply waited behind the first");
    assert_eq!(saga_status(&app, first).await.0, "Pending");

    holder.rollback().await.unwrap();
    assert!(settled(&app, first, "Approved").await);
    worker.stop().await;
    broker.cleanup().await;
}
