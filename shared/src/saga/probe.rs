//! The probe that bounds how long the saga timeout waits for a backlog of replies.
//!
//! While replies wait in `CustomerSaga`, any of them may be the answer of an order past
//! its last retry, so the sweep does not cancel it. Waiting for an empty queue never ends
//! under a sustained backlog, and an order whose request was really lost was never
//! canceled. So when the sweep postpones for a backlog, it publishes a probe into the
//! queue carrying the database time it was sent; the worker that takes it records that
//! time as the barrier (`saga_reply_barrier`). The queue hands out in order, so every
//! reply published before the probe had been delivered when the probe was, and was
//! applied or is held by a worker ([`super::in_hand`]). An order whose answer was due
//! before the barrier (its last request older than the barrier less the timeout) and is
//! still pending was not answered in time: the sweep cancels it. Postponement is thus
//! bounded by the time the queue takes to drain what was in it when the order's answer
//! was due, plus one sweep.

use chrono::{DateTime, Utc};

use crate::{amqp::Outgoing, db::Db};

/// The probe's AMQP `type`; a worker takes it apart from the customer service's replies.
pub const MESSAGE_TYPE: &str = "SagaReplyProbe";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// The database's time when the sweep sent it.
    pub sent_at: DateTime<Utc>,
}

impl Probe {
    /// A probe into `queue`, through the default exchange (it reaches the queue
    /// whatever its bindings).
    pub fn message(&self, queue: &str) -> Outgoing {
        Outgoing {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            message_id: format!("probe-{}", uuid::Uuid::new_v4()),
            message_type: MESSAGE_TYPE.into(),
            timestamp: self.sent_at.timestamp().max(0) as u64,
            headers: vec![],
            body: serde_json::to_vec(self).expect("a probe serializes"),
        }
    }

    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    /// Raises the barrier to this probe's time (never lowers it: probes of several
    /// sweeps overtake nothing, but a redelivered one arrives late), unless a reply went
    /// back to the queue since the probe was sent ([`reset`]).
    pub async fn record(&self, db: &Db) -> Result<(), sqlx::Error> {
        let sent_at = self.sent_at;
        db.run(|connection| {
            Box::pin(async move {
                sqlx::query!(
                    "INSERT INTO saga_reply_barrier (passed_at) VALUES ($1)
                     ON CONFLICT (id) DO UPDATE SET passed_at = greatest(saga_reply_barrier.passed_at, excluded.passed_at)
                      WHERE saga_reply_barrier.reset_at < excluded.passed_at",
                    sent_at
                )
                .execute(connection)
                .await?;
                Ok(())
            })
        })
        .await
    }
}

/// Withdraws the barrier before a worker hands a reply back to the queue: delivered
/// before, perhaps before the last probe, it would sit in the queue behind a barrier that
/// says it was delivered, and its order could be canceled
/// (`a_reply_handed_back_after_a_probe_passed_keeps_its_order_from_the_timeout`). Probes
/// sent before this are not recorded. Best effort: a worker that cannot reach PostgreSQL
/// (or crashes) returns its replies without it, the window docs/architecture.md names.
pub async fn reset(db: &Db) -> Result<(), sqlx::Error> {
    db.run(|connection| {
        Box::pin(async move {
            sqlx::query!(
                "INSERT INTO saga_reply_barrier (passed_at, reset_at) VALUES ('-infinity', now())
                 ON CONFLICT (id) DO UPDATE SET passed_at = '-infinity', reset_at = now()"
            )
            .execute(connection)
            .await?;
            Ok(())
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_reads_back_what_it_carries() {
        let probe = Probe { sent_at: "2026-12-03T13:00:00.123456Z".parse().unwrap() };
        let message = probe.message("CustomerSaga");
        assert_eq!((message.exchange.as_str(), message.routing_key.as_str()), ("", "CustomerSaga"));
        assert_eq!(Probe::parse(&message.body), Some(probe));
        assert_eq!(Probe::parse(br#"{"orderID":"x"}"#), None);
    }
}
