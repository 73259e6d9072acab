//! Transactional outbox, write side: an event is a row inserted with the same
//! `&mut Tx` (the same transaction) as the change it announces, so it is
//! published if and only if the change commits. The relay publishes the rows; the
//! committing process wakes it afterwards ([`RelayWaker`]).

pub mod housekeeping;
pub mod relay;
mod wake;

pub use wake::RelayWaker;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use tracing::Instrument;

use crate::{db::Tx, trace_context::TraceContext};

/// How long published rows, and the inbox's record of applied replies, are kept by
/// default (`OUTBOX_RETENTION`): a week, far past any redelivery of either.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 86400);

/// The topic exchange every event goes to.
pub(crate) const EXCHANGE: &str = "Orders";

/// An event of the wire contract: its routing key and `eventType` are fixed by its type.
pub trait Event: Serialize {
    const ROUTING_KEY: &'static str;
    const EVENT_TYPE: &'static str;

    /// The order (or other aggregate) the event is about; events of one aggregate are
    /// published in the order they were written.
    fn aggregate_id(&self) -> Uuid;
}

/// The published body: `eventID`, `eventType`, `eventTimeStamp`, then the event's fields.
#[derive(Serialize)]
struct Envelope<'a, E> {
    #[serde(rename = "eventID")]
    event_id: Uuid,
    #[serde(rename = "eventType")]
    event_type: &'static str,
    #[serde(rename = "eventTimeStamp")]
    event_time_stamp: DateTime<Utc>,
    #[serde(flatten)]
    event: &'a E,
}

/// Serializes an event into its envelope.
pub(crate) fn envelope<E: Event>(event: &E, event_id: Uuid, at: DateTime<Utc>) -> serde_json::Result<String> {
    serde_json::to_string(&Envelope { event_id, event_type: E::EVENT_TYPE, event_time_stamp: at, event })
}

/// Writes `event` to the outbox inside the caller's transaction; returns its `eventID`.
pub async fn append<E: Event>(tx: &mut Tx<'_>, event: &E, trace: TraceContext) -> Result<Uuid, sqlx::Error> {
    append_as(tx, event, Uuid::now_v7(), trace).await
}

/// [`append`] with an `eventID` chosen by the caller (who stored it elsewhere in the
/// same transaction); a v7 UUID keeps the outbox's ids in time order.
pub(crate) async fn append_as<E: Event>(
    tx: &mut Tx<'_>,
    event: &E,
    event_id: Uuid,
    trace: TraceContext,
) -> Result<Uuid, sqlx::Error> {
    let payload = envelope(event, event_id, Utc::now()).map_err(|e| sqlx::Error::Encode(e.into()))?;
    // The row keeps this span's context: the relay's producer span continues it, so the
    // event's trace runs request → transaction → append → publish → consumer.
    let span = tracing::debug_span!(
        "outbox.append",
        otel.name = format!("outbox append {}", E::EVENT_TYPE),
        otel.kind = "internal",
        db.system.name = "postgresql",
        db.operation.name = "INSERT",
        db.collection.name = "outbox",
        messaging.message.id = %event_id,
        messaging.destination.name = EXCHANGE,
    );
    let context = TraceContext::of(&span).unwrap_or_else(|| trace.child());
    let headers = serde_json::json!({ "traceparent": context.to_string() });
    sqlx::query!(
        r#"INSERT INTO outbox (event_id, aggregate_id, exchange, routing_key, event_type, payload, headers)
           VALUES ($1, $2, $3, $4, $5, ($6::text)::json, $7)"#,
        event_id,
        event.aggregate_id(),
        EXCHANGE,
        E::ROUTING_KEY,
        E::EVENT_TYPE,
        payload,
        headers,
    )
    .execute(&mut **tx)
    .instrument(span)
    .await?;
    Ok(event_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Pinged {
        #[serde(rename = "orderID")]
        order_id: Uuid,
    }

    impl Event for Pinged {
        const ROUTING_KEY: &'static str = "Order.Ping";
        const EVENT_TYPE: &'static str = "OrderPinged";
        fn aggregate_id(&self) -> Uuid {
            self.order_id
        }
    }

    #[test]
    fn the_envelope_starts_with_the_event_id_then_the_fields() {
        let at = DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z").unwrap().with_timezone(&Utc);
        let body = envelope(&Pinged { order_id: Uuid::nil() }, Uuid::max(), at).unwrap();
        assert_eq!(
            body,
            r#"{"eventID":"ffffffff-ffff-ffff-ffff-ffffffffffff","eventType":"OrderPinged","eventTimeStamp":"2026-11-25T10:00:00Z","orderID":"00000000-0000-0000-0000-000000000000"}"#
        );
    }
}
