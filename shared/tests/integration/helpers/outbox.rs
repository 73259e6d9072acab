//! Outbox rows written straight into the table, as a committing command would: the one
//! place a test names the outbox's columns.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

/// One row; [`Row::ping`] and struct update for the rest.
#[derive(Debug, Clone)]
pub struct Row {
    pub event_id: Uuid,
    pub aggregate_id: Uuid,
    pub routing_key: String,
    pub event_type: String,
    pub payload: Value,
    /// When the relay may claim it; now, when `None`.
    pub due_at: Option<DateTime<Utc>>,
}

impl Row {
    /// An event of `aggregate` that `OrderSaga` receives (`Order.Saga.Ping`), with a time-
    /// ordered id and an empty payload.
    pub fn ping(aggregate: Uuid) -> Self {
        Row {
            event_id: Uuid::now_v7(),
            aggregate_id: aggregate,
            routing_key: "Order.Saga.Ping".into(),
            event_type: "OrderPinged".into(),
            payload: json!({}),
            due_at: None,
        }
    }
}

/// Writes `rows` in one statement, in their order (ids ascending), on the contract's
/// exchange.
pub async fn seed<'e>(db: impl sqlx::PgExecutor<'e>, rows: &[Row]) {
    let column = |f: fn(&Row) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let (events, aggregates): (Vec<Uuid>, Vec<Uuid>) = rows.iter().map(|r| (r.event_id, r.aggregate_id)).unzip();
    let due: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.due_at).collect();
    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_id, exchange, routing_key, event_type, payload, next_attempt_at)
         SELECT e, a, 'Orders', k, t, p::json, coalesce(d, now())
           FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
                WITH ORDINALITY AS r(e, a, k, t, p, d, n)
          ORDER BY n",
    )
    .bind(&events)
    .bind(&aggregates)
    .bind(column(|r| r.routing_key.clone()))
    .bind(column(|r| r.event_type.clone()))
    .bind(column(|r| r.payload.to_string()))
    .bind(&due)
    .execute(db)
    .await
    .unwrap();
}
