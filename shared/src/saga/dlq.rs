//! Operating the dead-letter queue (`saga-worker dlq list|replay|discard`): see what was
//! dead-lettered and why, grouped by reason, and send replies back to `CustomerSaga`
//! once their cause is fixed (an order that was missing now exists, a bug in the worker
//! is deployed away), all of them or one by its message id; or discard one for good.
//!
//! A replayed reply leaves the DLQ only after the broker confirmed its copy on
//! `CustomerSaga`: a crash in between leaves it in both, and the worker's inbox makes
//! the second copy a no-op.

use std::time::Duration;

use crate::amqp::Nodes;
use serde::Serialize;

use crate::amqp::{Consumer, Delivery, Outgoing, Publisher, Topology, queue_depth};

/// How long to wait for the next message the broker said it holds.
const NEXT_MESSAGE: Duration = Duration::from_secs(5);

/// One dead-lettered reply, as `dlq list` prints it (a JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    /// The worker's poison kind (`malformed_json`, `unknown_order`, ...), or the broker's
    /// dead-letter reason (`delivery_limit` when a reply failed ten times).
    pub kind: String,
    pub reason: String,
    pub body: String,
}

impl DeadLetter {
    fn of(delivery: &Delivery) -> Self {
        let (kind, reason) = match delivery.header("x-poison-kind") {
            Some(kind) => (kind, delivery.header("x-poison-reason").unwrap_or_default()),
            // Dead-lettered by the broker itself, not by the worker.
            None => {
                let reason = delivery.header("x-first-death-reason").unwrap_or_else(|| "unknown".into());
                let queue = delivery.header("x-first-death-queue").unwrap_or_default();
                (reason.clone(), format!("{reason} on {queue}"))
            }
        };
        DeadLetter {
            message_id: delivery.message_id().map(str::to_owned),
            kind,
            reason,
            body: String::from_utf8_lossy(&delivery.body).into_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] amqprs::error::Error),
    #[error("the broker said {expected} messages were waiting, but only {got} came")]
    Missing { expected: u32, got: u32 },
    #[error("message {message_id:?} was not republished ({error}); it stays in the dead-letter queue")]
    NotRepublished { message_id: Option<String>, error: String },
    #[error("no dead letter has the message id {0:?}")]
    NotFound(String),
}

/// How many dead letters there are of each kind, most first (then by kind): what an
/// operator reads before the messages themselves.
pub fn by_kind(letters: &[DeadLetter]) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for letter in letters {
        *counts.entry(&letter.kind).or_default() += 1;
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().map(|(kind, n)| (kind.to_owned(), n)).collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
}

/// Takes the dead letters waiting, unacked, until the one with `message_id`; the others
/// go back to the queue, untouched, when the consumer's channel closes.
async fn find(args: &Nodes, topology: &Topology, message_id: &str) -> Result<(Consumer, Delivery), DlqError> {
    let waiting = queue_depth(args, &topology.dead_letter_queue).await?;
    if waiting == 0 {
        return Err(DlqError::NotFound(message_id.to_owned()));
    }
    let prefetch = u16::try_from(waiting).unwrap_or(u16::MAX);
    let mut consumer = Consumer::connect(args, topology, &topology.dead_letter_queue, prefetch).await?;
    for _ in 0..waiting {
        match tokio::time::timeout(NEXT_MESSAGE, consumer.next()).await {
            Ok(Some(delivery)) if delivery.message_id() == Some(message_id) => return Ok((consumer, delivery)),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    consumer.close().await;
    Err(DlqError::NotFound(message_id.to_owned()))
}

/// Sends the dead letter with `message_id` back to `CustomerSaga` (confirmed, then acked
/// on the DLQ), and leaves the others where they are.
#[tracing::instrument(name = "dlq.replay_one", skip_all, fields(otel.name = "dlq replay", messaging.message.id = message_id))]
pub async fn replay_one(
    consume: &Nodes,
    publish: &Nodes,
    topology: &Topology,
    message_id: &str,
) -> Result<DeadLetter, DlqError> {
    let (consumer, delivery) = find(consume, topology, message_id).await?;
    let letter = DeadLetter::of(&delivery);
    let outcome = async {
        let mut publisher = Publisher::connect(publish, topology).await?;
        let copy = back_to_queue(&delivery, topology);
        let published = publisher.publish_one(&copy).await;
        publisher.close().await;
        match published {
            Ok(()) => {
                consumer.ack(delivery.tag).await?;
                tracing::info!(message.id = message_id, kind = %letter.kind, reason = %letter.reason,
                    queue = %topology.customer_saga_queue, "dead letter replayed");
                Ok(letter)
            }
            Err(error) => {
                Err(DlqError::NotRepublished { message_id: letter.message_id.clone(), error: error.to_string() })
            }
        }
    }
    .await;
    consumer.close().await;
    outcome
}

/// Removes the dead letter with `message_id` for good, after logging all of it (headers
/// and body), and leaves the others where they are.
#[tracing::instrument(name = "dlq.discard_one", skip_all, fields(otel.name = "dlq discard", messaging.message.id = message_id))]
pub async fn discard_one(args: &Nodes, topology: &Topology, message_id: &str) -> Result<DeadLetter, DlqError> {
    let (consumer, delivery) = find(args, topology, message_id).await?;
    let letter = DeadLetter::of(&delivery);
    tracing::warn!(
        message.id = message_id,
        kind = %letter.kind,
        reason = %letter.reason,
        headers = ?delivery.properties.headers(),
        body = %letter.body,
        "dead letter discarded"
    );
    let acked = consumer.ack(delivery.tag).await;
    consumer.close().await;
    acked?;
    Ok(letter)
}

/// The first `limit` dead-lettered replies, left in the queue: they are taken unacked
/// and go back when the channel closes.
pub async fn list(args: &Nodes, topology: &Topology, limit: u16) -> Result<Vec<DeadLetter>, DlqError> {
    // Counted before consuming: a consumer's prefetched messages are no longer "ready".
    let expected = queue_depth(args, &topology.dead_letter_queue).await?.min(u32::from(limit));
    if expected == 0 {
        return Ok(Vec::new());
    }
    let mut consumer = Consumer::connect(args, topology, &topology.dead_letter_queue, limit.max(1)).await?;
    let mut listed = Vec::with_capacity(expected as usize);
    while (listed.len() as u32) < expected {
        match tokio::time::timeout(NEXT_MESSAGE, consumer.next()).await {
            Ok(Some(delivery)) => listed.push(DeadLetter::of(&delivery)),
            _ => break,
        }
    }
    consumer.close().await;
    let got = listed.len() as u32;
    if got < expected {
        return Err(DlqError::Missing { expected, got });
    }
    // The broker puts them back after the channel closes, asynchronously (a quorum queue
    // through its log): wait until it has, or a listing right after this one finds the
    // queue empty (seen on 3.10: the third of 25 quick listings got nothing).
    let deadline = std::time::Instant::now() + NEXT_MESSAGE;
    while queue_depth(args, &topology.dead_letter_queue).await? < got && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(listed)
}

/// Moves up to `limit` dead-lettered replies back to `CustomerSaga`, one at a time: each
/// is published straight to the queue, confirmed, and only then acked on the DLQ. Only
/// the messages waiting when it starts are moved, so a reply that is dead-lettered again
/// at once is not replayed in a loop. Returns what it moved.
#[tracing::instrument(name = "dlq.replay", skip_all, fields(otel.name = "dlq replay", limit))]
pub async fn replay(
    consume: &Nodes,
    publish: &Nodes,
    topology: &Topology,
    limit: u32,
) -> Result<Vec<DeadLetter>, DlqError> {
    let todo = queue_depth(consume, &topology.dead_letter_queue).await?.min(limit);
    let mut consumer = Consumer::connect(consume, topology, &topology.dead_letter_queue, 1).await?;
    let mut publisher = Publisher::connect(publish, topology).await?;
    let mut moved = Vec::with_capacity(todo as usize);
    let outcome = async {
        while (moved.len() as u32) < todo {
            let Ok(Some(delivery)) = tokio::time::timeout(NEXT_MESSAGE, consumer.next()).await else {
                return Err(DlqError::Missing { expected: todo, got: moved.len() as u32 });
            };
            let letter = DeadLetter::of(&delivery);
            let copy = back_to_queue(&delivery, topology);
            match publisher.publish_one(&copy).await {
                Ok(()) => {
                    consumer.ack(delivery.tag).await?;
                    tracing::info!(message.id = ?letter.message_id, kind = %letter.kind, reason = %letter.reason,
                        queue = %topology.customer_saga_queue, "dead letter replayed");
                    moved.push(letter);
                }
                Err(error) => {
                    consumer.reject_for_retry(delivery.tag).await?;
                    return Err(DlqError::NotRepublished { message_id: letter.message_id, error: error.to_string() });
                }
            }
        }
        Ok(())
    }
    .await;
    consumer.close().await;
    publisher.close().await;
    outcome.map(|()| moved)
}

/// The reply as the customer service sent it: same id, type and body, without the
/// dead-letter headers (a fresh failure writes its own).
fn back_to_queue(delivery: &Delivery, topology: &Topology) -> Outgoing {
    let headers = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| delivery.header(name).map(|value| (name.to_owned(), value)))
        .collect();
    Outgoing {
        // The default exchange routes to the queue of that name (SPEC: "or straight to
        // the queue").
        exchange: String::new(),
        routing_key: topology.customer_saga_queue.clone(),
        message_id: delivery.message_id().map_or_else(|| format!("replayed-{}", uuid::Uuid::new_v4()), str::to_owned),
        message_type: delivery.properties.message_type().cloned().unwrap_or_else(|| crate::amqp::REPLY_TYPE.into()),
        timestamp: delivery.properties.timestamp().unwrap_or_default(),
        headers,
        body: delivery.body.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(kind: &str) -> DeadLetter {
        DeadLetter { message_id: None, kind: kind.into(), reason: String::new(), body: String::new() }
    }

    #[test]
    fn kinds_are_counted_most_first() {
        let letters: Vec<_> = ["unknown_order", "malformed_json", "unknown_order", "delivery_limit", "malformed_json"]
            .into_iter()
            .chain(["unknown_order"])
            .map(letter)
            .collect();
        assert_eq!(
            by_kind(&letters),
            [("unknown_order".to_owned(), 3), ("malformed_json".into(), 2), ("delivery_limit".into(), 1)]
        );
        assert!(by_kind(&[]).is_empty());
    }
}
