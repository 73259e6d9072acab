//! Flow measurements for `make bench` (scripts/bench.py runs it against the running
//! processes; it prints one JSON object a run). Not a test, not a production binary.
//!
//!   bench_flow raw-publish N      the client library's own publish rate with confirms
//!   bench_flow relay N            outbox rows/s through the running relay (a backlog)
//!   bench_flow relay-latency      commit→publish latency of a steady trickle
//!   bench_flow backlog N          N outbox rows committed at once, no wake-up (the relay paused)
//!   bench_flow drain LAST         wakes the relays, seconds until every row up to LAST is published
//!   bench_flow saga N             replies/s applied by the running saga worker
//!   bench_flow retention N        rows/s one retention pass deletes, N rows past the retention
//!   bench_flow e2e N API_URL      POST an order → Approved in the user's list, N times
//!
//! Environment: DATABASE_URL, AMQP_URL (the bench's vhost).

use std::time::{Duration, Instant};

use order_service::{
    amqp::{self, Outgoing, Publisher, QueueType, Topology},
    outbox::RelayWaker,
};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1000);
    let db = PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
    let amqp_url = std::env::var("AMQP_URL")?;
    let topology = Topology::contract(QueueType::Quorum);
    let relays = RelayWaker::start(db.clone().into());
    let result = match args.first().map(String::as_str) {
        Some("raw-publish") => raw_publish(&amqp_url, &topology, count).await?,
        Some("relay") => relay(&db, &relays, count).await?,
        Some("relay-latency") => relay_latency(&db, &relays).await?,
        Some("backlog") => json!({"last": insert_events(&db, count).await?}),
        Some("drain") => drain(&db, &relays, count as i64).await?,
        Some("saga") => saga(&db, &amqp_url, &topology, count).await?,
        Some("retention") => retention(&db, count).await?,
        Some("e2e") => e2e(&db, args.get(2).map_or("http://127.0.0.1:18000", String::as_str), count).await?,
        _ => anyhow::bail!(
            "usage: bench_flow raw-publish|relay|relay-latency|backlog|drain|saga|retention|e2e N [API_URL]"
        ),
    };
    println!("{result}");
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn raw_publish(url: &str, topology: &Topology, count: usize) -> anyhow::Result<serde_json::Value> {
    let mut publisher =
        Publisher::connect(&amqp::connection_args(url, "bench-raw").map_err(anyhow::Error::msg)?, topology).await?;
    let body = json!({"eventID": Uuid::nil(), "eventType": "Bench", "eventTimeStamp": "2026-01-01T00:00:00Z", "orderID": Uuid::nil(), "userID": Uuid::nil(), "productsIDs": [], "totalPrice": 90}).to_string();
    let started = Instant::now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<Outgoing> = chunk
            .iter()
            .map(|_| Outgoing {
                exchange: topology.exchange.clone(),
                routing_key: "Order.Bench".into(),
                message_id: Uuid::new_v4().to_string(),
                message_type: "Bench".into(),
                timestamp: 0,
                headers: vec![("traceparent".into(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into())],
                body: body.clone().into_bytes(),
            })
            .collect();
        for result in publisher.publish_all(&batch, Duration::from_secs(10)).await {
            result?;
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    publisher.close().await;
    Ok(json!({"raw_publish_per_s": rate}))
}

/// Inserts `count` events in one transaction; returns the id of the last.
async fn insert_events(db: &PgPool, count: usize) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "WITH inserted AS (
             INSERT INTO outbox (event_id, aggregate_id, exchange, routing_key, event_type, payload)
             SELECT gen_random_uuid(), gen_random_uuid(), 'Orders', 'Order.Bench', 'Bench',
                    json_build_object('eventID', gen_random_uuid(), 'eventType', 'Bench', 'n', n)
               FROM generate_series(1, $1) AS n
             RETURNING id)
         SELECT max(id) FROM inserted",
    )
    .bind(count as i64)
    .fetch_one(db)
    .await?)
}

/// Waits until the backlog is published. Polls the last row by its key (a count of a
/// large backlog every few milliseconds would itself load PostgreSQL, the resource the
/// relay is measured on), then makes sure with one count.
async fn drained(db: &PgPool, last: i64) -> anyhow::Result<()> {
    loop {
        let published: bool = sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM outbox WHERE id = $1)")
            .bind(last)
            .fetch_one(db)
            .await?;
        if published && unpublished(db).await? == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(if published { 20 } else { 2 })).await;
    }
}

async fn unpublished(db: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(db).await?)
}

async fn relay(db: &PgPool, relays: &RelayWaker, count: usize) -> anyhow::Result<serde_json::Value> {
    // Throughput: a backlog of `count` rows committed at once, drained by the relay.
    while unpublished(db).await? > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let last = insert_events(db, count).await?;
    relays.wake();
    drained(db, last).await?;
    Ok(json!({"relay_per_s": count as f64 / started.elapsed().as_secs_f64()}))
}

/// The relays' drain of a backlog committed while they were paused (`backlog`): the
/// throughput at that backlog, without the insert's own time.
async fn drain(db: &PgPool, relays: &RelayWaker, last: i64) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    relays.wake();
    drained(db, last).await?;
    Ok(json!({"drain_s": started.elapsed().as_secs_f64()}))
}

async fn retention(db: &PgPool, count: usize) -> anyhow::Result<serde_json::Value> {
    // `count` rows published eight days ago, then the relay's own retention pass (the
    // relays' housekeeping may take some of them meanwhile: they skip each other's rows).
    sqlx::query(
        "INSERT INTO outbox_published (id, event_id, aggregate_id, exchange, routing_key, event_type, payload,
                                       headers, created_at, published_at, attempts)
         SELECT -n, gen_random_uuid(), gen_random_uuid(), 'Orders', 'Order.Bench', 'Bench',
                json_build_object('eventID', gen_random_uuid(), 'eventType', 'Bench', 'n', n), '{}',
                now() - interval '8 days', now() - interval '8 days', 1
           FROM generate_series(1, $1) AS n",
    )
    .bind(count as i64)
    .execute(db)
    .await?;
    let retention = order_service::outbox::DEFAULT_RETENTION;
    let started = Instant::now();
    let mut deleted = 0;
    loop {
        let pass = order_service::outbox::housekeeping::delete_published(&db.clone().into(), retention).await?;
        deleted += pass;
        if pass == 0 {
            break;
        }
    }
    Ok(json!({"retention_deleted": deleted, "retention_per_s": deleted as f64 / started.elapsed().as_secs_f64()}))
}

async fn relay_latency(db: &PgPool, relays: &RelayWaker) -> anyhow::Result<serde_json::Value> {
    // One row per transaction, 100 a second for 5 s, as orders arrive; each commit wakes
    // the relays afterwards, as the api's and the worker's do.
    let mark = sqlx::query_scalar::<_, i64>("SELECT COALESCE(max(id), 0) FROM outbox_published").fetch_one(db).await?;
    for _ in 0..500 {
        insert_events(db, 1).await?;
        relays.wake();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while unpublished(db).await? > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // created_at is the inserting transaction's start: within a millisecond of its commit here.
    let mut latencies: Vec<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM published_at - created_at)::float8 * 1000 FROM outbox_published WHERE id > $1",
    )
    .bind(mark)
    .fetch_all(db)
    .await?;
    latencies.sort_by(f64::total_cmp);
    Ok(json!({
        "commit_to_publish_p50_ms": percentile(&latencies, 0.5),
        "commit_to_publish_p99_ms": percentile(&latencies, 0.99),
    }))
}

async fn saga(db: &PgPool, url: &str, topology: &Topology, count: usize) -> anyhow::Result<serde_json::Value> {
    // Pending orders of the seeded users, then one Approved reply each.
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "INSERT INTO orders (id, user_id, delivery_address_id, payment_method, total_price)
         SELECT o, ('10000000-0000-4000-8000-' || lpad((6 + n % 9000)::text, 12, '0'))::uuid,
                   ('20000000-0000-4000-8000-' || lpad((6 + n % 9000)::text, 12, '0'))::uuid, 'Card', 10
           FROM UNNEST($1::uuid[]) WITH ORDINALITY AS t(o, n)",
    )
    .bind(&ids)
    .execute(db)
    .await?;
    sqlx::query(
        "INSERT INTO order_products (order_id, position, product_id, name, actual_price)
         SELECT o, 1, '00000000-0000-4000-8000-000000000001', 'Product 1', 10 FROM UNNEST($1::uuid[]) AS o",
    )
    .bind(&ids)
    .execute(db)
    .await?;
    let mut publisher =
        Publisher::connect(&amqp::connection_args(url, "bench-saga").map_err(anyhow::Error::msg)?, topology).await?;
    let replies: Vec<Outgoing> = ids
        .iter()
        .map(|id| {
            topology
                .customer_reply(Uuid::new_v4().to_string(), json!({"orderID": id, "orderType": "Approved"}).to_string())
        })
        .collect();
    let started = Instant::now();
    for chunk in replies.chunks(500) {
        for result in publisher.publish_all(chunk, Duration::from_secs(10)).await {
            result?;
        }
    }
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE id = ANY($1) AND saga_status = 'Pending'")
                .bind(&ids)
                .fetch_one(db)
                .await?;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    publisher.close().await;
    Ok(json!({"saga_per_s": rate}))
}

async fn e2e(_db: &PgPool, api: &str, count: usize) -> anyhow::Result<serde_json::Value> {
    let client = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(count);
    for n in 0..count {
        // A light user, so the check reads a short list.
        let user = 100 + n % 5000;
        let (user_id, address) =
            (format!("10000000-0000-4000-8000-{user:012}"), format!("20000000-0000-4000-8000-{user:012}"));
        let order = Uuid::new_v4();
        let body = json!({"orderID": order, "paymentMethod": "Card", "productsIds": ["00000000-0000-4000-8000-000000000001"], "userID": user_id, "deliveryAddress": address});
        let started = Instant::now();
        let status = client
            .post(format!("{api}/api/v1/orders/"))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await?
            .status();
        anyhow::ensure!(status.as_u16() == 204, "POST answered {status}");
        let url = format!("{api}/api/v1/orders/user/{user_id}?limit=1000&order=desc");
        loop {
            let page = client.get(&url).send().await?.text().await?;
            if page.contains(&order.to_string()) {
                break;
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "order {order} not approved within 10 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(json!({"e2e_p50_ms": percentile(&latencies, 0.5), "e2e_p99_ms": percentile(&latencies, 0.99)}))
}
