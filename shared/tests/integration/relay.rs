//! The outbox relay against the real PostgreSQL and RabbitMQ.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use order_service::outbox::relay::{self, RelaySettings, relay_batch};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::helpers::{
    Placed, TestApp,
    broker::TestBroker,
    eventually,
    outbox::{self, Row},
    processes::database_url,
    publish_rows,
    relay::{TestRelay, drain, settings, unpublished},
    saga::{RunningWorker, reply, send_reply, settled},
};

/// Writes `per_aggregate` events for each of `aggregates` orders, interleaved as
/// concurrent orders would write them; returns the event ids of each aggregate in order.
async fn seed_events(db: &PgPool, aggregates: usize, per_aggregate: usize) -> HashMap<Uuid, Vec<Uuid>> {
    let ids: Vec<Uuid> = (0..aggregates).map(|_| Uuid::new_v4()).collect();
    let mut written: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for seq in 0..per_aggregate {
        let (mut event_ids, mut aggregate_ids, mut payloads) = (Vec::new(), Vec::new(), Vec::new());
        for aggregate in &ids {
            let event_id = Uuid::now_v7();
            event_ids.push(event_id);
            aggregate_ids.push(*aggregate);
            payloads.push(json!({"eventID": event_id, "eventType": "OrderPinged", "orderID": aggregate, "seq": seq}));
            written.entry(*aggregate).or_default().push(event_id);
        }
        let rows: Vec<Row> = event_ids
            .into_iter()
            .zip(aggregate_ids)
            .zip(payloads)
            .map(|((event_id, aggregate), payload)| Row { event_id, payload, ..Row::ping(aggregate) })
            .collect();
        outbox::seed(db, &rows).await;
    }
    written
}

#[sqlx::test(migrations = "../migrations")]
async fn every_order_created_through_the_api_reaches_order_saga_once(db: PgPool) {
    let app = TestApp::new(db.clone());
    let broker = TestBroker::new().await;
    let phone = app.create_product("Phone", 100.0, 10).await;
    let mut orders = HashSet::new();
    for _ in 0..5 {
        orders.insert(app.place_order(&[phone]).await.order);
    }

    let mut publisher = broker.publisher().await;
    let outcome = relay_batch(&db.clone().into(), &mut publisher, &broker.topology, &settings()).await.unwrap();
    assert_eq!((outcome.claimed, outcome.published, outcome.failed), (5, 5, 0));
    assert_eq!(
        relay_batch(&db.clone().into(), &mut publisher, &broker.topology, &settings()).await.unwrap().claimed,
        0
    );
    assert_eq!(unpublished(&db).await, 0);

    let received = broker.drain(&broker.topology.order_saga_queue).await;
    assert_eq!(received.len(), 5);
    assert!(broker.drain(&broker.topology.orders_queue).await.is_empty(), "Order.Saga.* is not Order.*");
    for message in &received {
        let body = &message.body;
        let text = serde_json::to_string(body).unwrap();
        assert!(text.starts_with(r#"{"eventID":"#), "{text}");
        assert_eq!(body["eventType"], "OrderCreateSaga");
        assert_eq!(body["totalPrice"], json!(90));
        assert_eq!(body["productsIDs"], json!([phone]));
        assert!(orders.remove(&Uuid::parse_str(body["orderID"].as_str().unwrap()).unwrap()));
        let p = &message.properties;
        assert_eq!(message.message_id(), body["eventID"].as_str().unwrap());
        assert_eq!(p.message_type().map(String::as_str), Some("OrderCreateSaga"));
        assert_eq!(p.content_type().map(String::as_str), Some("application/json"));
        assert_eq!(p.delivery_mode(), Some(2), "persistent");
        assert!(p.timestamp().unwrap() > 1_700_000_000);
        let traceparent = message.header("traceparent").expect("a traceparent header");
        assert!(order_service::trace_context::TraceContext::parse(&traceparent).is_some(), "{traceparent}");
    }
    publisher.close().await;
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn three_relays_publish_every_event_once_and_in_order(db: PgPool) {
    let broker = TestBroker::new().await;
    let written = seed_events(&db, 500, 10).await;

    let mut relays = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let db = db.clone();
        let mut publisher = broker.publisher().await;
        let topology = broker.topology.clone();
        relays.spawn(async move {
            // Step until nothing is left, not merely until this relay finds nothing to claim.
            while unpublished(&db).await > 0 {
                let outcome = relay_batch(&db.clone().into(), &mut publisher, &topology, &settings()).await.unwrap();
                assert_eq!(outcome.failed, 0);
                if outcome.claimed == 0 {
                    tokio::task::yield_now().await;
                }
            }
            publisher.close().await;
        });
    }
    while let Some(done) = relays.join_next().await {
        done.unwrap();
    }

    let received = broker.drain(&broker.topology.order_saga_queue).await;
    let ids: Vec<String> = received.iter().map(|m| m.message_id()).collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 5000, "every event delivered");
    assert_eq!(distinct.len(), 5000, "none twice");
    let mut arrived: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for message in &received {
        let order = Uuid::parse_str(message.body["orderID"].as_str().unwrap()).unwrap();
        arrived.entry(order).or_default().push(Uuid::parse_str(&message.message_id()).unwrap());
    }
    assert_eq!(arrived, written, "per order, in the order written");
    // Each published row is kept as it was sent, with its one attempt.
    let kept: (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT event_id), count(*) FILTER (WHERE attempts = 1 AND published_at >= created_at)
           FROM outbox_published",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(kept, (5000, 5000, 5000));
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn an_unroutable_event_stays_in_the_outbox(db: PgPool) {
    let broker = TestBroker::new().await;
    // No queue is bound to this key on the test's exchange.
    let lost = Row { routing_key: "Nowhere.Event".into(), event_type: "Lost".into(), ..Row::ping(Uuid::new_v4()) };
    outbox::seed(&db, &[lost]).await;
    let mut publisher = broker.publisher().await;
    let outcome = relay_batch(&db.clone().into(), &mut publisher, &broker.topology, &settings()).await.unwrap();
    assert_eq!((outcome.claimed, outcome.published, outcome.failed, outcome.reconnect), (1, 0, 1, false));
    let (attempts, last_error, retry_later): (i32, String, bool) =
        sqlx::query_as("SELECT attempts, last_error, next_attempt_at > now() FROM outbox")
            .fetch_one(&db)
            .await
            .unwrap();
    let published: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_published").fetch_one(&db).await.unwrap();
    assert_eq!(published, 0);
    assert_eq!(attempts, 1);
    assert!(last_error.contains("NO_ROUTE"), "{last_error}");
    assert!(retry_later, "backs off before the next attempt");
    // Within the backoff, it is not claimed again.
    assert_eq!(
        relay_batch(&db.clone().into(), &mut publisher, &broker.topology, &settings()).await.unwrap().claimed,
        0
    );
    publisher.close().await;
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_row_committed_late_is_still_published(db: PgPool) {
    let broker = TestBroker::new().await;
    let (early, late) = (Uuid::new_v4(), Uuid::new_v4());
    // `early` gets the lower id but commits after `late` was published.
    let mut slow = db.begin().await.unwrap();
    outbox::seed(&mut *slow, &[Row { event_id: early, ..Row::ping(Uuid::new_v4()) }]).await;
    outbox::seed(&db, &[Row { event_id: late, ..Row::ping(Uuid::new_v4()) }]).await;

    let mut publisher = broker.publisher().await;
    assert_eq!(
        relay_batch(&db.clone().into(), &mut publisher, &broker.topology, &settings()).await.unwrap().published,
        1
    );
    slow.commit().await.unwrap();
    assert_eq!(
        relay_batch(&db.clone().into(), &mut publisher, &broker.topology, &settings()).await.unwrap().published,
        1
    );
    let ids: Vec<String> =
        broker.drain(&broker.topology.order_saga_queue).await.iter().map(|m| m.message_id()).collect();
    assert_eq!(ids, [late.to_string(), early.to_string()]);
    publisher.close().await;
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs rabbitmqctl"]
async fn the_relay_resumes_by_itself_when_the_broker_drops_its_connection(db: PgPool) {
    let broker = TestBroker::new().await;
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(TestRelay::new(&db, &broker).batch_size(50).build().run(stopped));

    let mut written = HashSet::new();
    for round in 0..6 {
        for ids in seed_events(&db, 100, 1).await.into_values() {
            written.extend(ids);
        }
        if round % 2 == 1 {
            // Mid-stream, as the relay works through the rows.
            assert!(
                eventually(Duration::from_secs(10), || async { broker.close_connections("relay") > 0 }).await,
                "the relay had no connection to close"
            );
        }
    }
    assert!(
        eventually(Duration::from_secs(30), || async { unpublished(&db).await == 0 }).await,
        "the relay did not resume: {} rows left",
        unpublished(&db).await
    );
    stop.send(true).unwrap();
    running.await.unwrap();

    let received: HashSet<Uuid> = broker
        .drain(&broker.topology.order_saga_queue)
        .await
        .iter()
        .map(|m| Uuid::parse_str(&m.message_id()).unwrap())
        .collect();
    // At least once: a row published just before the drop may come twice; none is lost.
    assert_eq!(received, written);
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn retention_deletes_old_published_rows_only(db: PgPool) {
    seed_events(&db, 3, 1).await;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox ORDER BY id").fetch_all(&db).await.unwrap();
    publish_rows(&db, &format!("id = {}", ids[0]), "now() - interval '8 days'").await;
    publish_rows(&db, &format!("id = {}", ids[2]), "now() - interval '1 day'").await;
    let deleted = order_service::outbox::housekeeping::delete_published(
        &db.clone().into(),
        order_service::outbox::DEFAULT_RETENTION,
    )
    .await
    .unwrap();
    assert_eq!(deleted, 1);
    let published: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM outbox_published ORDER BY id").fetch_all(&db).await.unwrap();
    assert_eq!(published, [ids[2]]);
    assert_eq!(unpublished(&db).await, 1, "an unpublished row is never deleted");
}

#[sqlx::test(migrations = "../migrations")]
async fn the_relay_vacuums_the_outbox_once_published_rows_pile_up(db: PgPool) {
    use order_service::outbox::housekeeping::{VACUUM_AFTER_DEAD_ROWS, vacuum_if_needed};
    let dead_rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'outbox'")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    // As where autovacuum is off (it is on this machine), so that only the relay vacuums.
    sqlx::query("ALTER TABLE outbox SET (autovacuum_enabled = false)").execute(&db).await.unwrap();
    // A few dead rows: not worth a vacuum.
    seed_events(&db, 100, 1).await;
    publish_rows(&db, "true", "now()").await;
    assert!(eventually(Duration::from_secs(5), || async { dead_rows().await >= 100 }).await);
    assert_eq!(vacuum_if_needed(&db.clone().into()).await.unwrap(), None);
    // Past the threshold, as a busy relay leaves them: vacuumed, and the claim's index is
    // clean again.
    seed_events(&db, VACUUM_AFTER_DEAD_ROWS as usize, 1).await;
    publish_rows(&db, "true", "now()").await;
    assert!(eventually(Duration::from_secs(5), || async { dead_rows().await >= VACUUM_AFTER_DEAD_ROWS }).await);
    assert!(vacuum_if_needed(&db.clone().into()).await.unwrap().is_some());
    let vacuumed: bool =
        sqlx::query_scalar("SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'outbox'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(vacuumed);
    assert!(eventually(Duration::from_secs(5), || async { dead_rows().await == 0 }).await);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_relay_carries_on_when_its_database_connections_are_killed(db: PgPool) {
    let broker = TestBroker::new().await;
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(TestRelay::new(&db, &broker).batch_size(50).build().run(stopped));
    let mut written = HashSet::new();
    for _ in 0..4 {
        for ids in seed_events(&db, 100, 1).await.into_values() {
            written.extend(ids);
        }
        // Every other session on the test's database: the relay's pool and its LISTEN.
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
            .execute(&db)
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(30), || async { unpublished(&db).await == 0 }).await,
        "the relay did not carry on: {} rows left",
        unpublished(&db).await
    );
    stop.send(true).unwrap();
    running.await.unwrap();
    let received: HashSet<Uuid> = broker
        .drain(&broker.topology.order_saga_queue)
        .await
        .iter()
        .map(|m| Uuid::parse_str(&m.message_id()).unwrap())
        .collect();
    assert_eq!(received, written);
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_relay_reports_health_and_metrics(db: PgPool) {
    use order_service::{probes, telemetry};
    use poem::test::TestClient;

    let broker_up = Arc::new(AtomicBool::new(false));
    let client = TestClient::new(probes::app(db.clone().into(), broker_up.clone(), telemetry::metrics()));
    client.get("/healthcheck/").send().await.assert_json(json!({"status": "OK"})).await;
    let response = client.get("/readyz").send().await;
    response.assert_status(poem::http::StatusCode::SERVICE_UNAVAILABLE);
    response.assert_json(json!({"status": "rabbitmq unavailable"})).await;
    broker_up.store(true, std::sync::atomic::Ordering::Relaxed);
    client.get("/readyz").send().await.assert_json(json!({"status": "OK"})).await;

    seed_events(&db, 2, 1).await;
    order_service::outbox::housekeeping::record_backlog(&db.clone().into()).await.unwrap();
    // A failure and a success, to have every series.
    let broker = TestBroker::new().await;
    insert_event(&db, Uuid::new_v4(), "Nowhere.At.All").await;
    let mut publisher = broker.publisher().await;
    relay_batch(&db.clone().into(), &mut publisher, &broker.topology, &settings()).await.unwrap();
    publisher.close().await;
    broker.cleanup().await;
    let text = client.get("/metrics").send().await.0.into_body().into_string().await.unwrap();
    for metric in [
        "outbox_pending ",
        "outbox_oldest_unpublished_age_seconds ",
        "outbox_published_total ",
        "outbox_publish_failures_total{reason=\"returned\"}",
        "outbox_batch_duration_seconds_bucket{",
    ] {
        assert!(text.contains(metric), "{metric} missing from {text}");
    }
}

async fn insert_event(db: &PgPool, aggregate: Uuid, routing_key: &str) -> Uuid {
    let row = Row { routing_key: routing_key.into(), ..Row::ping(aggregate) };
    outbox::seed(db, std::slice::from_ref(&row)).await;
    row.event_id
}

#[sqlx::test(migrations = "../migrations")]
async fn a_nacked_event_stays_unpublished(db: PgPool) {
    use amqprs::channel::{QueueBindArguments, QueueDeclareArguments};

    let broker = TestBroker::new().await;
    // A queue that refuses every message: the broker nacks the publish.
    let full = format!("{}.full", broker.tag);
    let mut arguments = amqprs::FieldTable::new();
    arguments.insert("x-max-length".try_into().unwrap(), amqprs::FieldValue::l(0));
    arguments.insert("x-overflow".try_into().unwrap(), "reject-publish".into());
    let publisher = broker.publisher().await;
    let channel = broker.channel().await;
    channel
        .queue_declare(QueueDeclareArguments::transient_autodelete(&full).arguments(arguments).finish())
        .await
        .unwrap();
    channel.queue_bind(QueueBindArguments::new(&full, &broker.topology.exchange, "Full.Event")).await.unwrap();
    drop(publisher);

    insert_event(&db, Uuid::new_v4(), "Full.Event").await;
    let mut publisher = broker.publisher().await;
    let outcome = relay_batch(&db.clone().into(), &mut publisher, &broker.topology, &settings()).await.unwrap();
    assert_eq!((outcome.published, outcome.failed, outcome.reconnect), (0, 1, false));
    let last_error: String = sqlx::query_scalar("SELECT last_error FROM outbox").fetch_one(&db).await.unwrap();
    assert!(last_error.contains("nacked"), "{last_error}");
    publisher.close().await;
    channel.queue_delete(amqprs::channel::QueueDeleteArguments::new(&full)).await.unwrap();
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_failed_event_holds_back_the_next_of_its_order(db: PgPool) {
    use amqprs::channel::QueueBindArguments;

    let broker = TestBroker::new().await;
    let order = Uuid::new_v4();
    let first = insert_event(&db, order, "Order.Later.First").await;
    let second = insert_event(&db, order, "Order.Saga.Second").await;
    let mut publisher = broker.publisher().await;
    // The first is unroutable; the second, routable, must wait for it.
    let outcome = relay_batch(&db.clone().into(), &mut publisher, &broker.topology, &settings()).await.unwrap();
    assert_eq!((outcome.claimed, outcome.failed), (1, 1));
    // Neither while the first waits out its backoff…
    assert_eq!(
        relay_batch(&db.clone().into(), &mut publisher, &broker.topology, &settings()).await.unwrap().claimed,
        0
    );
    // …nor when it is due and fails again.
    sqlx::query("UPDATE outbox SET next_attempt_at = now()").execute(&db).await.unwrap();
    assert_eq!(
        relay_batch(&db.clone().into(), &mut publisher, &broker.topology, &settings()).await.unwrap().published,
        0
    );

    let channel = broker.channel().await;
    channel
        .queue_bind(QueueBindArguments::new(
            &broker.topology.order_saga_queue,
            &broker.topology.exchange,
            "Order.Later.*",
        ))
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET next_attempt_at = now(), attempts = 2000").execute(&db).await.unwrap();
    drain(&db.clone().into(), &mut publisher, &broker, &settings()).await;
    let ids: Vec<String> =
        broker.drain(&broker.topology.order_saga_queue).await.iter().map(|m| m.message_id()).collect();
    assert_eq!(ids, [first.to_string(), second.to_string()]);
    publisher.close().await;
    broker.cleanup().await;
}

/// Whether a session of the test's database listens, within 10 s.
async fn listening(db: &PgPool) -> bool {
    eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%')",
        )
        .fetch_one(db)
        .await
        .unwrap()
    })
    .await
}

/// The api's commit and the worker's wake the relay at once (no NOTIFY inside their
/// transactions: see the next test).
#[sqlx::test(migrations = "../migrations")]
async fn commits_of_the_api_and_the_worker_wake_the_relay_before_its_schedule(db: PgPool) {
    let broker = TestBroker::new().await;
    let (stop, stopped) = watch::channel(false);
    let broker_up = Arc::new(AtomicBool::new(false));
    // Hourly: only a wake-up can explain a quick publish.
    let relay = TestRelay::new(&db, &broker).schedule("0 0 * * * *").broker_up(broker_up.clone()).build();
    let running = tokio::spawn(relay.run(stopped));
    assert!(
        eventually(Duration::from_secs(10), || async { broker_up.load(std::sync::atomic::Ordering::Relaxed) }).await
    );
    // Only once the relay listens can a commit's wake-up reach it (waiting for an empty
    // outbox, before anything was inserted, synchronized nothing: #24).
    assert!(listening(&db).await, "the relay never listened");
    let app = TestApp::new(db.clone());
    let phone = app.create_product("Phone", 10.0, 0).await;
    let Placed { order, .. } = app.place_order(&[phone]).await;
    assert!(
        eventually(Duration::from_secs(3), || async { unpublished(&db).await == 0 }).await,
        "not woken by the api's commit"
    );
    // The worker's approval writes OrderCreated: it wakes the relay too.
    let worker = RunningWorker::start(&app, &broker);
    send_reply(&broker, &reply(order, "Approved"), "approval").await;
    assert!(settled(&app, order, "Approved").await);
    assert!(
        eventually(Duration::from_secs(3), || async { unpublished(&db).await == 0 }).await,
        "not woken by the worker's commit"
    );
    worker.stop().await;
    stop.send(true).unwrap();
    running.await.unwrap();
    assert_eq!(broker.drain(&broker.topology.order_saga_queue).await.len(), 1);
    let created = broker.drain(&broker.topology.orders_queue).await;
    assert!(created.iter().any(|m| m.body["eventType"] == "OrderCreated"), "{created:?}");
    broker.cleanup().await;
}

/// A NOTIFY inside a business transaction holds PostgreSQL's one notify lock through
/// that transaction's commit and WAL flush: every order, delete and saga reply would
/// commit one at a time. A commit that writes the outbox sends no NOTIFY of its own
/// (the process that committed wakes the relays afterwards, `outbox::RelayWaker`).
#[sqlx::test(migrations = "../migrations")]
async fn an_outbox_commit_sends_no_notify_of_its_own(db: PgPool) {
    let mut listener = sqlx::postgres::PgListener::connect_with(&db).await.unwrap();
    listener.listen("outbox").await.unwrap();
    insert_event(&db, Uuid::new_v4(), "Order.Saga.Ping").await;
    let heard = tokio::time::timeout(Duration::from_secs(1), listener.recv()).await;
    assert!(heard.is_err(), "the commit itself notified the relays: {heard:?}");
}

#[sqlx::test(migrations = "../migrations")]
async fn the_listener_holds_no_connection_of_the_relays_pool(db: PgPool) {
    let broker = TestBroker::new().await;
    // The relay's own pool, at the smallest size its configuration allows for two lanes.
    let pool = order_service::db::connect(&database_url(&db), 4, &[], Default::default()).unwrap();
    let (stop, stopped) = watch::channel(false);
    let relay = TestRelay::new(&db, &broker).db(pool.clone()).build();
    let task = tokio::spawn(relay.run(stopped));
    assert!(listening(&db).await, "the relay never listened");
    // Idle lanes hold nothing: all four of the pool's connections can be had (a
    // housekeeping pass or a probe would take one each).
    let mut held = Vec::new();
    for n in 1..=4 {
        let connection = tokio::time::timeout(Duration::from_secs(5), pool.acquire()).await;
        assert!(matches!(connection, Ok(Ok(_))), "connection {n} of 4 could not be had: {connection:?}");
        held.push(connection);
    }
    drop(held);
    stop.send(true).unwrap();
    task.await.unwrap();
    broker.cleanup().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_outbox_vacuum_is_not_cut_short_by_the_statement_timeout(db: PgPool) {
    use order_service::outbox::housekeeping::vacuum_if_needed;
    sqlx::query("ALTER TABLE outbox SET (autovacuum_enabled = false)").execute(&db).await.unwrap();
    seed_events(&db, 50_000, 1).await;
    publish_rows(&db, "true", "now()").await;
    let dead = || async {
        sqlx::query_scalar::<_, i64>("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'outbox'")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    assert!(eventually(Duration::from_secs(5), || async { dead().await >= 50_000 }).await);
    // A pool whose statements time out long before this vacuum can finish (the relay's
    // is 30 s, against a large outbox).
    let impatient =
        order_service::db::connect(&database_url(&db), 2, &[("statement_timeout", "20ms")], Default::default())
            .unwrap();
    let vacuumed = vacuum_if_needed(&impatient).await;
    assert!(matches!(vacuumed, Ok(Some(_))), "{vacuumed:?}");
    // The connection went back to the pool with its timeout as it was.
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(impatient.pool()).await.unwrap();
    assert_eq!(timeout, "20ms");
}

#[sqlx::test(migrations = "../migrations")]
async fn one_retention_pass_deletes_everything_past_the_retention(db: PgPool) {
    seed_events(&db, 30_000, 1).await;
    publish_rows(&db, "true", "now() - interval '8 days'").await;
    seed_events(&db, 10, 1).await;
    let deleted = order_service::outbox::housekeeping::delete_published(
        &db.clone().into(),
        order_service::outbox::DEFAULT_RETENTION,
    )
    .await
    .unwrap();
    // Every 30 s, 10,000 at most was 333 rows/s: less than a busy relay publishes.
    assert_eq!(deleted, 30_000);
    assert_eq!(unpublished(&db).await, 10);
}

/// An outbox of the version before the relay deleted what it published: its published
/// rows move to `outbox_published`, its unpublished ones stay, and an order placed
/// before `saga_event_id` existed keeps its first request's `eventID`.
#[sqlx::test(migrations = false)]
async fn upgrading_moves_published_rows_out_of_the_outbox(db: PgPool) {
    const BEFORE: i64 = 20261130000002;
    let all = sqlx::migrate!("../migrations");
    let mut before = sqlx::migrate!("../migrations");
    before.migrations = all.migrations.iter().filter(|m| m.version <= BEFORE).cloned().collect::<Vec<_>>().into();
    before.run(&db).await.unwrap();

    let (order, first, again) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (user, address) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO addresses (id, building_number, street_name, city, country)
              VALUES ('{address}', 1, 'Street', 'City', 'Country');
         INSERT INTO users (id, username, address_id) VALUES ('{user}', 'old', '{address}');
         INSERT INTO orders (id, user_id, delivery_address_id, payment_method, total_price)
              VALUES ('{order}', '{user}', '{address}', 'Card', 1);
         INSERT INTO outbox (event_id, aggregate_id, exchange, routing_key, event_type, payload, published_at, attempts)
              VALUES ('{first}', '{order}', 'Orders', 'Order.Saga.Create', 'OrderCreateSaga', '{{}}', now() - interval '1 hour', 1),
                     ('{again}', '{order}', 'Orders', 'Order.Saga.Create', 'OrderCreateSaga', '{{}}', NULL, 0);"
    )))
    .execute(&db)
    .await
    .unwrap();

    all.run(&db).await.unwrap();
    let waiting: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM outbox").fetch_all(&db).await.unwrap();
    assert_eq!(waiting, [again]);
    let published: Vec<(Uuid, i32, bool)> =
        sqlx::query_as("SELECT event_id, attempts, published_at < now() - interval '59 minutes' FROM outbox_published")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(published, [(first, 1, true)]);
    let original: Option<Uuid> =
        sqlx::query_scalar("SELECT saga_event_id FROM orders WHERE id = $1").bind(order).fetch_one(&db).await.unwrap();
    assert_eq!(original, Some(first));
}

/// A healthy outbox is empty most of the time, and so are its statistics after a VACUUM.
/// When a backlog builds (the broker was away), each claim must still read a bounded
/// window of it: in the bench, believing the outbox empty, the planner read and sorted
/// the whole backlog at each claim, then (with sequential scans off) rescanned the window
/// and the aggregate index for each row; a 20,000-row backlog drained at 663, then 2,058
/// events/s.
#[sqlx::test(migrations = "../migrations")]
async fn a_backlog_after_an_empty_outbox_is_not_read_whole_at_each_claim(db: PgPool) {
    let broker = TestBroker::new().await;
    seed_events(&db, 100, 1).await;
    publish_rows(&db, "true", "now()").await;
    // Empty, with its pages kept (as when the truncation at the end of a VACUUM cannot
    // get its lock under concurrent writes): every estimate is then one row.
    sqlx::raw_sql("VACUUM (TRUNCATE false) outbox").execute(&db).await.unwrap();
    const BACKLOG: i64 = 5_000;
    seed_events(&db, BACKLOG as usize, 1).await;

    // What scans of the outbox read, as the relay's sessions report it when they end.
    let read = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT seq_tup_read, idx_tup_fetch FROM pg_stat_user_tables WHERE relname = 'outbox'",
        )
        .fetch_one(&db)
        .await
        .unwrap()
    };
    let before = read().await;
    let relay_db =
        order_service::db::connect(&database_url(&db), 2, relay::SESSION_SETTINGS, Default::default()).unwrap();
    let mut publisher = broker.publisher().await;
    let steps = drain(&relay_db, &mut publisher, &broker, &settings()).await;
    relay_db.close().await;
    publisher.close().await;
    assert_eq!(unpublished(&db).await, 0);
    assert!(steps >= 10, "{steps} steps");
    // A session reports its statistics as it ends.
    let relay_sessions = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'order-service'",
        )
        .fetch_one(&db)
        .await
        .unwrap()
    };
    assert!(eventually(Duration::from_secs(10), || async { relay_sessions().await == 0 }).await);
    let after = read().await;
    let (sequentially, by_index) = (after.0 - before.0, after.1 - before.1);
    assert!(sequentially < BACKLOG, "the claims read {sequentially} rows sequentially for a backlog of {BACKLOG}");
    // A row is fetched by the (at most four) windows it falls in and by its own claim:
    // about five times. The plan that rescanned per row fetched hundreds of times more.
    assert!(by_index < 10 * BACKLOG, "the claims fetched {by_index} rows by index for a backlog of {BACKLOG}");
    broker.cleanup().await;
}

/// Heads the broker refused are backed off; their successors stay due but can never be
/// claimed. However many such successors come first, the claim finds the heads of other
/// orders behind them (#24: with batch size 1 the window was four rows, and four backed-off
/// orders with a due successor each made the claim return nothing, forever).
#[sqlx::test(migrations = "../migrations")]
async fn successors_of_backed_off_heads_do_not_hide_the_heads_behind_them(db: PgPool) {
    let broker = TestBroker::new().await;
    for _ in 0..4 {
        let order = Uuid::new_v4();
        let backed_off = Row { due_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)), ..Row::ping(order) };
        outbox::seed(&db, &[backed_off, Row::ping(order)]).await;
    }
    let claimable = Uuid::new_v4();
    outbox::seed(&db, &[Row { event_id: claimable, ..Row::ping(Uuid::new_v4()) }]).await;

    let mut publisher = broker.publisher().await;
    let one_at_a_time = RelaySettings { batch_size: 1, ..settings() };
    let outcome = relay_batch(&db.clone().into(), &mut publisher, &broker.topology, &one_at_a_time).await.unwrap();
    assert_eq!((outcome.claimed, outcome.published), (1, 1), "the fifth order's event was not claimed");
    let published: Uuid = sqlx::query_scalar("SELECT event_id FROM outbox_published").fetch_one(&db).await.unwrap();
    assert_eq!(published, claimable);
    publisher.close().await;
    broker.cleanup().await;
}

/// Migrations up to `last` applied, as a database of an earlier main was.
async fn migrate_up_to(db: &PgPool, last: i64) {
    let mut before = sqlx::migrate!("../migrations");
    before.migrations = before.migrations.iter().filter(|m| m.version <= last).cloned().collect::<Vec<_>>().into();
    before.run(db).await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn upgrading_a_database_of_real_size_finishes(db: PgPool) {
    // 20261130000003 backfilled one order at a time with no index to serve the lookup, in
    // the pool's session (statement_timeout 30 s): on a database like this one it was
    // cancelled (57014) and the migrate Job failed all its retries.
    const ORDERS: i64 = 100_000;
    migrate_up_to(&db, 20261130000002).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO addresses (id, building_number, street_name, city, country)
              VALUES ('00000000-0000-4000-8000-000000000001', 1, 'Street', 'City', 'Country');
         INSERT INTO users (id, username, address_id)
              VALUES ('00000000-0000-4000-8000-000000000002', 'many', '00000000-0000-4000-8000-000000000001');
         INSERT INTO orders (id, user_id, delivery_address_id, payment_method, total_price, created_at)
              SELECT md5('order' || n)::uuid, '00000000-0000-4000-8000-000000000002',
                     '00000000-0000-4000-8000-000000000001', 'Card', 10, now() - interval '8 days'
                FROM generate_series(1, {ORDERS}) AS n;
         -- A week of events: each order's request and its answer, published; the last
         -- thousand orders' answers not yet.
         INSERT INTO outbox (event_id, aggregate_id, exchange, routing_key, event_type, payload, published_at, attempts)
              SELECT md5('event' || n || kind)::uuid, md5('order' || n)::uuid, 'Orders', kind, kind, '{{}}',
                     CASE WHEN kind = 'OrderCreated' AND n > {ORDERS} - 1000 THEN NULL
                          ELSE now() - interval '7 days' + n * interval '1 second' END,
                     1
                FROM generate_series(1, {ORDERS}) AS n, unnest(ARRAY['OrderCreateSaga', 'OrderCreated']) AS kind
               ORDER BY n, kind DESC;
         ANALYZE;"
    )))
    .execute(&db)
    .await
    .unwrap();

    let started = std::time::Instant::now();
    order_service::db::migrate(&crate::helpers::processes::database_url(&db)).await.unwrap();
    println!("{ORDERS} orders, {} events migrated in {:?}", ORDERS * 2, started.elapsed());

    let (published, waiting, without_first): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox_published), (SELECT count(*) FROM outbox),
                (SELECT count(*) FROM orders WHERE saga_event_id IS NULL)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((published, waiting, without_first), (ORDERS * 2 - 1000, 1000, 0));
    // Each order keeps its first request's id.
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders
           JOIN outbox_published AS p ON p.aggregate_id = orders.id AND p.event_type = 'OrderCreateSaga'
          WHERE p.event_id <> orders.saga_event_id",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(wrong, 0);
    order_service::db::require(&db).await.unwrap();
}
