//! The choreography saga, order side: the customer service's replies and the timeout.
//!
//! A reply arrives as data, so it is parsed into [`SagaReply`] and matched — the bus of
//! this side. [`apply`] takes one reply through one transaction: the order's transition
//! (refused by the domain type when the order is no longer `Pending`), the event it
//! emits into the outbox, and a row in `saga_inbox` that makes a redelivery a no-op.
//! [`sweep_timeouts`] re-requests orders the customer service has not answered, and
//! cancels them after the last try. `worker` runs both in the `saga-worker` process;
//! `dlq` is its operator's side (`saga-worker dlq list|replay`).

pub mod dlq;
pub mod in_hand;
pub mod probe;
pub mod worker;

use std::time::Duration;

use crate::db::{Db, Lease};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{
    db::Tx,
    orders::{
        domain::{Order, OrderStatus, SagaStatus},
        events::{EventClient, OrderCanceled, OrderCreateSaga, OrderCreated, OrderLine},
    },
    outbox,
    pricing::Money,
    trace_context::TraceContext,
};

/// What the customer service answered about an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaReply {
    Approved { order_id: Uuid },
    Rejected { order_id: Uuid },
}

/// Why a reply can never be applied: it goes to the dead-letter queue with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("missing field {0}")]
    MissingField(&'static str),
    #[error("orderID is not a UUID: {0}")]
    InvalidOrderId(String),
    #[error("unknown orderType {0}")]
    UnknownOrderType(String),
    #[error("unknown order {0}")]
    UnknownOrder(Uuid),
}

impl Poison {
    /// A short label for metrics and the dead-letter header.
    pub fn kind(&self) -> &'static str {
        match self {
            Poison::MalformedJson(_) => "malformed_json",
            Poison::MissingField(_) => "missing_field",
            Poison::InvalidOrderId(_) => "invalid_order_id",
            Poison::UnknownOrderType(_) => "unknown_order_type",
            Poison::UnknownOrder(_) => "unknown_order",
        }
    }
}

impl SagaReply {
    /// `{"orderID": "<uuid>", "orderType": "Approved" | "Rejected"}`, keys matched
    /// case-insensitively (an exact match first).
    pub fn parse(body: &[u8]) -> Result<Self, Poison> {
        let value: Value = serde_json::from_slice(body).map_err(|e| Poison::MalformedJson(e.to_string()))?;
        let Value::Object(object) = value else {
            return Err(Poison::MalformedJson("the reply is not a JSON object".into()));
        };
        let order_id = field(&object, "orderID").ok_or(Poison::MissingField("orderID"))?;
        let order_id = order_id
            .as_str()
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| Poison::InvalidOrderId(quoted(order_id)))?;
        let order_type = field(&object, "orderType").ok_or(Poison::MissingField("orderType"))?;
        match order_type.as_str() {
            Some("Approved") => Ok(SagaReply::Approved { order_id }),
            Some("Rejected") => Ok(SagaReply::Rejected { order_id }),
            _ => Err(Poison::UnknownOrderType(quoted(order_type))),
        }
    }

    pub fn order_id(&self) -> Uuid {
        match *self {
            SagaReply::Approved { order_id } | SagaReply::Rejected { order_id } => order_id,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            SagaReply::Approved { .. } => "Approved",
            SagaReply::Rejected { .. } => "Rejected",
        }
    }

    /// The inbox key of a reply: its message id, or for a reply without one its
    /// answer; always with the order, so a publisher reusing an id for another order
    /// does not lose that reply.
    pub fn inbox_key(&self, message_id: Option<&str>) -> String {
        format!("{}:{}", self.order_id(), message_id.unwrap_or(self.as_str()))
    }
}

/// The most characters of a peer's value a reason quotes. The reason travels in a
/// header of the dead letter, and headers must fit in one AMQP frame (128 KiB by
/// default): a 200 KB `orderID` quoted whole failed the dead-letter publish, and the
/// reply went back to the queue, again and again.
const QUOTED_CHARS: usize = 200;

/// A peer's value as a reason quotes it: JSON, cut to [`QUOTED_CHARS`] characters.
fn quoted(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text,
    }
}

fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).or_else(|| object.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

/// What applying a reply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The order is approved; `OrderCreated` is in the outbox.
    Approved { user_id: Uuid },
    /// The order is rejected and canceled; `OrderCanceled` is in the outbox.
    Rejected { user_id: Uuid },
    /// This very message was applied before: nothing changed.
    Duplicate { user_id: Uuid },
    /// The order had already left `Pending`: recorded, nothing changed.
    Stale { user_id: Uuid },
}

impl Applied {
    /// The user whose cached pages the reply may concern.
    pub fn user_id(&self) -> Uuid {
        match *self {
            Applied::Approved { user_id }
            | Applied::Rejected { user_id }
            | Applied::Duplicate { user_id }
            | Applied::Stale { user_id } => user_id,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Applied::Approved { .. } => "approved",
            Applied::Rejected { .. } => "rejected",
            Applied::Duplicate { .. } => "duplicate",
            Applied::Stale { .. } => "stale",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    #[error(transparent)]
    Poison(#[from] Poison),
    /// Worth retrying: the database may be back in a moment.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

impl SagaError {
    fn database(&self) -> Option<&sqlx::Error> {
        match self {
            SagaError::Database(e) => Some(e),
            SagaError::Poison(_) => None,
        }
    }
}

/// Applies one reply in one transaction.
///
/// Within DB_DEADLINE from `BEGIN` to `COMMIT`. Past it the outcome is unknown, which
/// the caller treats as an outage: the reply is held and applied again, and the inbox
/// makes a second application of a reply that did commit a no-op.
pub async fn apply(db: &Db, message_key: &str, reply: SagaReply, trace: TraceContext) -> Result<Applied, SagaError> {
    crate::db::in_transaction_span("ApplySagaReply", async {
        let mut lease = db.lease().await?;
        let applied = db.within(apply_in_transaction(&mut lease, message_key, reply, trace)).await;
        lease.settle_unless(applied.as_ref().err().and_then(SagaError::database));
        applied
    })
    .await
}

async fn apply_in_transaction(
    lease: &mut Lease,
    message_key: &str,
    reply: SagaReply,
    trace: TraceContext,
) -> Result<Applied, SagaError> {
    let mut tx = lease.begin().await?;
    let mut order =
        crate::orders::lock(&mut tx, reply.order_id()).await?.ok_or(Poison::UnknownOrder(reply.order_id()))?;
    let transition = match reply {
        SagaReply::Approved { .. } => order.approve(),
        SagaReply::Rejected { .. } => order.reject(),
    };
    let outcome = if transition.is_ok() { "applied" } else { "stale" };
    let recorded = sqlx::query!(
        "INSERT INTO saga_inbox (message_id, order_id, reply, outcome) VALUES ($1, $2, $3, $4)
         ON CONFLICT (message_id) DO NOTHING",
        message_key,
        order.id,
        reply.as_str(),
        outcome,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if recorded == 0 {
        tx.rollback().await?;
        return Ok(Applied::Duplicate { user_id: order.user_id });
    }
    if transition.is_err() {
        tx.commit().await?;
        return Ok(Applied::Stale { user_id: order.user_id });
    }
    save_statuses(&mut tx, &order).await?;
    let applied = match reply {
        SagaReply::Approved { .. } => {
            let event = order_created(&mut tx, order.id).await?;
            outbox::append(&mut tx, &event, trace).await?;
            Applied::Approved { user_id: order.user_id }
        }
        SagaReply::Rejected { .. } => {
            let event = OrderCanceled {
                order_id: order.id,
                user_id: order.user_id,
                reason: "rejected by the customer service".into(),
            };
            outbox::append(&mut tx, &event, trace).await?;
            Applied::Rejected { user_id: order.user_id }
        }
    };
    tx.commit().await?;
    Ok(applied)
}

async fn save_statuses(tx: &mut Tx<'_>, order: &Order) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE orders SET saga_status = $2, order_status = $3 WHERE id = $1",
        order.id,
        order.saga_status as SagaStatus,
        order.order_status as OrderStatus,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The order's full data, read back inside the transaction that approved it.
async fn order_created(tx: &mut Tx<'_>, id: Uuid) -> Result<OrderCreated, sqlx::Error> {
    // The order is pending (never deleted) and locked by this transaction.
    let view = crate::orders::view_by_id(&mut **tx, id).await?.ok_or(sqlx::Error::RowNotFound)?;
    Ok(OrderCreated {
        order_id: view.id,
        user_id: view.user_id,
        order_status: view.order_status,
        saga_status: view.saga_status,
        payment_method: view.payment_method,
        client: EventClient { client_id: view.user_id, client_name: view.client_name },
        address: view.address,
        serial_number: view.serial_number,
        products: view
            .products
            .0
            .into_iter()
            .map(|line| OrderLine {
                product_id: line.product_id,
                name: line.name,
                actual_price: Money::from_db(line.actual_price),
            })
            .collect(),
        total_price: Money::from_db(view.total_price),
        created_at: view.created_at,
    })
}

/// What one sweep of the saga timeout did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Orders whose `Order.Saga.Create` was emitted again.
    pub re_requested: usize,
    /// Orders canceled after the last retry: their users, to invalidate.
    pub canceled: Vec<Uuid>,
    /// Orders past their last retry left pending: their answers may still be waiting in
    /// `CustomerSaga` or held by a worker.
    pub postponed: usize,
}

/// What the sweep knows of the replies waiting in `CustomerSaga`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyBacklog {
    /// None waiting: an order still pending now was not answered.
    Empty,
    /// Some are waiting; any of them may be the answer of an order that timed out.
    Waiting(u32),
    /// The broker could not be asked.
    Unknown,
}

impl ReplyBacklog {
    pub fn of(depth: Option<u32>) -> Self {
        match depth {
            Some(0) => ReplyBacklog::Empty,
            Some(waiting) => ReplyBacklog::Waiting(waiting),
            None => ReplyBacklog::Unknown,
        }
    }
}

/// Orders still `Pending` `timeout` after their last request get it again (carrying the
/// first request's `eventID`), up to `max_retries` times; after that they are rejected
/// and canceled (compensation) — but only once their answer, had it come in time, would
/// have reached us: every reply published before it was due delivered (the queue was
/// empty, `replies`, or a [`probe`] sent later came through) and none of the order's
/// replies in a worker's hands ([`in_hand`]). An approval stuck behind a backlog is not a
/// silent customer service. Rows are claimed with `SKIP LOCKED`, so several workers can
/// sweep at once.
pub async fn sweep_timeouts(
    db: &Db,
    timeout: Duration,
    max_retries: i32,
    replies: ReplyBacklog,
) -> Result<Swept, sqlx::Error> {
    let mut lease = db.lease().await?;
    let swept = db.within(sweep_in_transaction(&mut lease, timeout, max_retries, replies)).await;
    lease.settle(&swept);
    swept
}

async fn sweep_in_transaction(
    lease: &mut Lease,
    timeout: Duration,
    max_retries: i32,
    replies: ReplyBacklog,
) -> Result<Swept, sqlx::Error> {
    let mut tx = lease.begin().await?;
    // Re-requests need no proof; a cancellation needs the order's answer, if it came in
    // time, to have been delivered (`probe`) and not to be in a worker's hands
    // (`in_hand`). Orders that cannot be canceled yet stay out of the window, so they
    // never keep a younger order from its re-request.
    let due = sqlx::query!(
        r#"WITH held AS (SELECT objid::bigint AS key FROM pg_locks
                          WHERE locktype = 'advisory' AND classid = $4::int4::oid AND objsubid = 2 AND granted),
                seen AS (SELECT CASE WHEN $3 THEN now() ELSE (SELECT passed_at FROM saga_reply_barrier) END
                                AS delivered_until)
           SELECT id, user_id, order_status AS "order_status: OrderStatus", saga_status AS "saga_status: SagaStatus",
                  deleted_at, saga_retries, total_price, saga_event_id AS original_event_id,
                (SELECT array_agg(product_id ORDER BY position) FROM order_products
                  WHERE order_id = orders.id) AS "products_ids!: Vec<Uuid>"
           FROM orders, seen
          WHERE saga_status = 'Pending' AND saga_requested_at < now() - make_interval(secs => $1)
            -- The wait counts from when the request left: not while the relay or the broker
            -- is down and the request still sits in the outbox.
            AND NOT EXISTS (SELECT 1 FROM outbox
                             WHERE outbox.aggregate_id = orders.id
                               AND outbox.event_type = 'OrderCreateSaga')
            AND NOT EXISTS (SELECT 1 FROM outbox_published AS published
                             WHERE published.aggregate_id = orders.id
                               AND published.event_type = 'OrderCreateSaga'
                               AND published.published_at > now() - make_interval(secs => $1))
            AND (saga_retries < $2
                 OR (saga_requested_at < delivered_until - make_interval(secs => $1)
                     AND NOT EXISTS (SELECT 1 FROM outbox_published AS published
                                      WHERE published.aggregate_id = orders.id
                                        AND published.event_type = 'OrderCreateSaga'
                                        AND published.published_at > delivered_until - make_interval(secs => $1))
                     AND ('x' || left(orders.id::text, 8))::bit(32)::bigint NOT IN (SELECT key FROM held)))
          ORDER BY saga_requested_at
          LIMIT 100
            FOR UPDATE OF orders SKIP LOCKED"#,
        timeout.as_secs_f64(),
        max_retries,
        replies == ReplyBacklog::Empty,
        in_hand::NAMESPACE,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut swept = Swept::default();
    for row in due {
        let trace = TraceContext::new_root();
        if row.saga_retries < max_retries {
            let event = OrderCreateSaga {
                order_id: row.id,
                user_id: row.user_id,
                products_ids: row.products_ids,
                total_price: Money::from_db(row.total_price),
                original_event_id: row.original_event_id,
            };
            outbox::append(&mut tx, &event, trace).await?;
            sqlx::query!(
                "UPDATE orders SET saga_retries = saga_retries + 1, saga_requested_at = now() WHERE id = $1",
                row.id
            )
            .execute(&mut *tx)
            .await?;
            tracing::info!(order.id = %row.id, retry = row.saga_retries + 1, "saga timed out, customer check requested again");
            swept.re_requested += 1;
        } else {
            let mut order = Order {
                id: row.id,
                user_id: row.user_id,
                order_status: row.order_status,
                saga_status: row.saga_status,
                deleted_at: row.deleted_at,
            };
            if let Err(refused) = order.reject() {
                // Pending but not cancelable: leave it for a person, and out of the next sweeps.
                tracing::error!(order.id = %order.id, %refused, "timed-out order cannot be canceled");
                sqlx::query!("UPDATE orders SET saga_requested_at = now() WHERE id = $1", order.id)
                    .execute(&mut *tx)
                    .await?;
                continue;
            }
            save_statuses(&mut tx, &order).await?;
            let event = OrderCanceled {
                order_id: order.id,
                user_id: order.user_id,
                reason: "the customer service did not answer".into(),
            };
            outbox::append(&mut tx, &event, trace).await?;
            tracing::warn!(order.id = %order.id, retries = row.saga_retries, "saga timed out for good, order canceled");
            swept.canceled.push(order.user_id);
        }
    }
    // Past their last retry, still pending: their answers may be on their way.
    swept.postponed = sqlx::query_scalar!(
        r#"SELECT count(*) AS "postponed!" FROM orders
            WHERE saga_status = 'Pending' AND saga_retries >= $2
              AND saga_requested_at < now() - make_interval(secs => $1)"#,
        timeout.as_secs_f64(),
        max_retries,
    )
    .fetch_one(&mut *tx)
    .await? as usize;
    tx.commit().await?;
    Ok(swept)
}

/// An order waiting on the customer service, as `saga-worker sagas pending` prints it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PendingSaga {
    pub order_id: Uuid,
    pub user_id: Uuid,
    /// Seconds since the order was placed.
    pub age_seconds: f64,
    /// Times the saga timeout asked the customer service again.
    pub re_requests: i32,
    /// When it last did; none before the first re-request.
    pub last_re_requested_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Pending orders placed at least `older_than` ago, oldest first, at most `limit`.
pub async fn pending_sagas(db: &Db, older_than: Duration, limit: i64) -> Result<Vec<PendingSaga>, sqlx::Error> {
    db.run(|c| {
        Box::pin(
            sqlx::query_as!(
                PendingSaga,
                r#"SELECT id AS order_id, user_id,
                  EXTRACT(EPOCH FROM now() - created_at)::float8 AS "age_seconds!",
                  saga_retries AS re_requests,
                  CASE WHEN saga_retries > 0 THEN saga_requested_at END AS last_re_requested_at
             FROM orders
            WHERE saga_status = 'Pending' AND created_at <= now() - make_interval(secs => $1)
            ORDER BY created_at, id
            LIMIT $2"#,
                older_than.as_secs_f64(),
                limit
            )
            .fetch_all(c),
        )
    })
    .await
}

/// How many orders wait on the customer service, and the age of the oldest (0 if
/// none), for `saga_pending` and `saga_oldest_pending_age_seconds`.
pub async fn pending_summary(db: &Db) -> Result<(i64, f64), sqlx::Error> {
    let row = db
        .run(|c| {
            Box::pin(
                sqlx::query!(
                    r#"SELECT count(*) AS "pending!",
                  COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS "oldest_age!"
             FROM orders WHERE saga_status = 'Pending'"#
                )
                .fetch_one(c),
            )
        })
        .await?;
    Ok((row.pending, row.oldest_age))
}

/// Deletes inbox rows older than `retention`, in bounded batches, for at most 10 s a
/// pass (it runs hourly: ten batches of 1,000 an hour were 2.8 rows/s, less than the
/// replies a busy worker records).
pub(crate) async fn prune_inbox(db: &Db, retention: Duration) -> Result<u64, sqlx::Error> {
    crate::db::delete_in_batches(1000, Duration::from_secs(10), || {
        db.run(|c| {
            Box::pin(async move {
                Ok(sqlx::query!(
                    "DELETE FROM saga_inbox WHERE message_id IN (
                 SELECT message_id FROM saga_inbox
                  WHERE received_at < now() - make_interval(secs => $1)
                  LIMIT 1000
                    FOR UPDATE SKIP LOCKED)",
                    retention.as_secs_f64()
                )
                .execute(c)
                .await?
                .rows_affected())
            })
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "1b2b434e-44e8-424c-bb1b-1fe609fc1f7d";

    #[test]
    fn parses_the_two_replies_with_keys_in_any_case() {
        let id = Uuid::parse_str(ID).unwrap();
        let approved = format!(r#"{{"orderID": "{ID}", "orderType": "Approved"}}"#);
        assert_eq!(SagaReply::parse(approved.as_bytes()), Ok(SagaReply::Approved { order_id: id }));
        let rejected = format!(r#"{{"OrderId": "{ID}", "ORDERTYPE": "Rejected", "extra": 1}}"#);
        assert_eq!(SagaReply::parse(rejected.as_bytes()), Ok(SagaReply::Rejected { order_id: id }));
        let both = format!(r#"{{"orderid": "nope", "orderID": "{ID}", "orderType": "Approved"}}"#);
        assert_eq!(SagaReply::parse(both.as_bytes()).unwrap().order_id(), id, "an exact key wins");
    }

    #[test]
    fn poison_says_why() {
        let cases = [
            ("{not json".to_owned(), "malformed_json"),
            ("".to_owned(), "malformed_json"),
            ("[1]".to_owned(), "malformed_json"),
            (r#"{"orderType": "Approved"}"#.to_owned(), "missing_field"),
            (r#"{"orderID": 7, "orderType": "Approved"}"#.to_owned(), "invalid_order_id"),
            (r#"{"orderID": "x", "orderType": "Approved"}"#.to_owned(), "invalid_order_id"),
            (format!(r#"{{"orderID": "{ID}"}}"#), "missing_field"),
            (format!(r#"{{"orderID": "{ID}", "orderType": "Maybe"}}"#), "unknown_order_type"),
            // Keys are matched whatever their case; values are not.
            (format!(r#"{{"orderID": "{ID}", "orderType": "approved"}}"#), "unknown_order_type"),
        ];
        for (body, kind) in cases {
            assert_eq!(SagaReply::parse(body.as_bytes()).unwrap_err().kind(), kind, "{body}");
        }
    }

    #[test]
    fn a_reason_quotes_at_most_a_few_hundred_characters_of_the_peers_value() {
        let huge = "é".repeat(100_000);
        for body in [
            format!(r#"{{"orderID": "{huge}", "orderType": "Approved"}}"#),
            format!(r#"{{"orderID": "{ID}", "orderType": "{huge}"}}"#),
        ] {
            let reason = SagaReply::parse(body.as_bytes()).unwrap_err().to_string();
            assert!(reason.len() < 600, "{} bytes", reason.len());
            assert!(reason.contains("éééé") && reason.contains("200002 bytes"), "{reason}");
        }
        let short = SagaReply::parse(br#"{"orderID": "x", "orderType": "Approved"}"#).unwrap_err();
        assert_eq!(short.to_string(), r#"orderID is not a UUID: "x""#);
    }

    #[test]
    fn a_reply_without_id_is_keyed_by_order_and_answer() {
        let id = Uuid::parse_str(ID).unwrap();
        assert_eq!(SagaReply::Approved { order_id: id }.inbox_key(None), format!("{ID}:Approved"));
        assert_eq!(SagaReply::Approved { order_id: id }.inbox_key(Some("m-1")), format!("{ID}:m-1"));
    }
}
