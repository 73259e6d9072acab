//! The outbox relay: claim a batch of rows, publish them with confirms, move what the
//! broker confirmed out of the outbox into `outbox_published` — one step,
//! [`relay_batch`] — and the loop around it, [`Relay::run`], driven by a cron schedule
//! and woken early by `LISTEN outbox`. The outbox holds unpublished rows only: a
//! published row is deleted, which writes no new tuple version and no index entry, where
//! marking it (an UPDATE) wrote both (migration 20261130000003 has the measurement).
//!
//! Several relays may run at once. A row is claimed with `FOR UPDATE SKIP LOCKED`, so no
//! two relays hold it; and only the oldest row of each aggregate is claimable, so the
//! events of one order reach the broker in the order they were written even when relays
//! race. A row is found whenever its transaction commits (there is no high-water mark to
//! skip past it). Delivery is at least once: a relay that dies after publishing and
//! before its commit publishes the row again, and the consumers deduplicate by
//! `message_id`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::amqp::Nodes;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, postgres::PgListener};

use crate::db::Db;
use crate::telemetry::names;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::{
    amqp::{Outgoing, Publisher, Topology},
    error::chain,
    retry::{Backoff, Policy},
    trace_context::TraceContext,
};

/// The relay's PostgreSQL session settings (its pool's).
///
/// The outbox swings from empty to a large backlog and back, and its statistics say what
/// it held at its last VACUUM or ANALYZE, which for a healthy outbox is nothing. Believing
/// it nearly empty, the planner claimed by reading the whole backlog and sorting it, at
/// every step (the claim's own shape, in [`relay_batch`], is the other half of the fix;
/// `a_backlog_after_an_empty_outbox_is_not_read_whole_at_each_claim` reproduces both).
/// So:
/// - `enable_seqscan = off`: the claim's window walks the primary key from the oldest
///   row, however small the planner believes the table;
/// - `jit = off`: a scan that cannot avoid the table (the `EXISTS` before each claim,
///   which stops at the first due row) keeps the huge cost that setting gives it, and
///   would be JIT-compiled at every step;
/// - `plan_cache_mode = force_custom_plan`: a plan cached while the outbox was empty
///   (sqlx prepares statements) is not reused once it is not;
/// - `synchronous_commit = off`: the relay's commits need not wait for their WAL flush: a
///   move lost in a crash of PostgreSQL only publishes its row again, which
///   at-least-once delivery allows (and WAL order means a lost move never leaves a later
///   event of its order moved). The fsync it saves is one per batch, which the api's own
///   commits then do not queue behind.
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("enable_seqscan", "off"),
    ("jit", "off"),
    ("plan_cache_mode", "force_custom_plan"),
    ("synchronous_commit", "off"),
];

/// The channel `NOTIFY`-ed after every commit that wrote the outbox (`outbox/wake.rs`).
pub(crate) const CHANNEL: &str = "outbox";

/// What the relay's steps run with: `OutboxConfig::relay_settings()`.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed per step.
    pub batch_size: i64,
    /// How long to wait for the broker's confirms of a batch. Shorter than the server's
    /// `idle_in_transaction_session_timeout`, as the claim's transaction waits with it.
    pub confirm_timeout: Duration,
    /// Published rows are kept in `outbox_published` this long.
    pub retention: Duration,
    /// Relays run side by side in this process (`RELAY_LANES`).
    pub lanes: usize,
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows the broker confirmed, now moved to `outbox_published`.
    pub published: usize,
    /// Rows the broker refused (nack, return), left unpublished for a retry with backoff.
    pub failed: usize,
    /// Rows not confirmed for the broker's or the connection's reasons, released as
    /// they were for the next connection.
    pub released: usize,
    /// A confirm did not come or a frame could not be sent: reconnect before going on.
    pub reconnect: bool,
}

struct Claimed {
    id: i64,
    event_id: Uuid,
    exchange: String,
    routing_key: String,
    event_type: String,
    payload: String,
    headers: serde_json::Value,
    created_at: DateTime<Utc>,
}

/// One step of the relay. The claim's transaction stays open while the batch is
/// published, so the rows stay locked against other relays until they are moved.
///
/// The claim looks at the oldest due heads only (four batches' worth, walked in id order
/// on the primary key): a due row that is not its order's head (its head was refused by
/// the broker and backs off) is passed over, at one probe of the aggregate's index each,
/// so a claim finds work whenever there is some. The window was once the oldest due rows,
/// heads or not: four orders whose heads backed off, with a due successor each, filled a
/// window of batch size 1 and every claim returned nothing (#24,
/// `successors_of_backed_off_heads_do_not_hide_the_heads_behind_them`). Its shape keeps its cost bounded by that window whatever
/// the planner believes of the outbox, whose statistics usually say it is empty (a
/// VACUUM of an empty outbox leaves its pages with no rows: every estimate becomes one
/// row). Believing that, the planner had rescanned the window for each row and read the
/// whole aggregate index for each row, as joins: 551 ms a claim at a 5,000-row backlog,
/// 15 s at 20,000. So the window is an array, computed once and looked up by key, and
/// the earlier-row check is a subquery probed per row (`OFFSET 0` keeps it from becoming
/// a join): 1.8 ms at 5,000 rows from the same statistics. The probe's `id + 0` leaves
/// the primary key no condition to use, so it goes by the aggregate's index: given the
/// choice, the planner once walked every earlier row of the outbox by primary key for
/// each probe (100 ms claims in the bench, `auto_explain`).
pub async fn relay_batch(
    db: &Db,
    publisher: &mut Publisher,
    topology: &Topology,
    settings: &RelaySettings,
) -> Result<Outcome, sqlx::Error> {
    let started = Instant::now();
    // Most steps find nothing: every wake-up wakes each lane, and a lane steps once more
    // after each batch. Ask first, in one round trip and without a transaction, instead
    // of opening one around a claim that is planned afresh each time.
    let pending = db
        .run(|c| {
            Box::pin(
                sqlx::query_scalar!(
                    r#"SELECT EXISTS (SELECT 1 FROM outbox WHERE next_attempt_at <= now()) AS "pending!""#
                )
                .fetch_one(c),
            )
        })
        .await?;
    if !pending {
        return Ok(Outcome::default());
    }
    // Each statement within DB_DEADLINE (the transaction stays open while the broker
    // confirms, which `confirm_timeout` bounds). A statement that fails leaves the lease
    // unsettled: its connection is closed, and the server rolls the claim back, so the
    // rows are claimable again and charged nothing.
    let mut lease = db.lease().await?;
    let mut tx = db.within(lease.begin()).await?;
    let rows = db.within(sqlx::query_as!(
        Claimed,
        r#"SELECT id, event_id, exchange, routing_key, event_type, payload::text AS "payload!", headers, created_at
             FROM outbox AS o
            WHERE id = ANY(ARRAY(SELECT id FROM outbox AS due
                                  WHERE next_attempt_at <= now()
                                    AND NOT EXISTS (SELECT 1 FROM outbox AS earlier
                                                     WHERE earlier.aggregate_id = due.aggregate_id
                                                       AND earlier.id + 0 < due.id
                                                    OFFSET 0)
                                  ORDER BY id
                                  LIMIT $1::bigint * 4))
              -- Again on the row itself: when another relay retried it meanwhile, the
              -- lock re-checks this on the new version (not the subquery's).
              AND next_attempt_at <= now()
              AND NOT EXISTS (SELECT 1 FROM outbox AS earlier
                               WHERE earlier.aggregate_id = o.aggregate_id
                                 AND earlier.id + 0 < o.id
                              OFFSET 0)
            ORDER BY id
            LIMIT $1
              FOR UPDATE OF o SKIP LOCKED"#,
        settings.batch_size
    )
    .fetch_all(&mut *tx))
    .await?;
    if rows.is_empty() {
        db.within(tx.commit()).await?;
        lease.settle_unless(None);
        return Ok(Outcome::default());
    }

    let (messages, spans): (Vec<Outgoing>, Vec<tracing::Span>) = rows.iter().map(|row| outgoing(row, topology)).unzip();
    let results = publisher.publish_all(&messages, settings.confirm_timeout).await;
    for (span, result) in spans.iter().zip(&results) {
        if let Err(error) = result {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", error.reason());
        }
    }

    let mut published = Vec::with_capacity(rows.len());
    let (mut failed, mut errors) = (Vec::new(), Vec::new());
    let mut released = 0;
    for (row, result) in rows.iter().zip(&results) {
        let Err(error) = result else {
            published.push(row.id);
            continue;
        };
        metrics::counter!(names::OUTBOX_PUBLISH_FAILURES, "reason" => error.reason()).increment(1);
        if error.is_about_the_message() {
            tracing::warn!(outbox.id = row.id, event.id = %row.event_id, %error, "event refused by the broker, will retry with backoff");
            failed.push(row.id);
            errors.push(error.to_string());
        } else {
            // The broker's or the connection's trouble (no confirm, a closed channel, an
            // alarm) says nothing about the row: it goes back as it was, with no attempt
            // charged, and leaves as soon as a connection works again. Charging it made a
            // 30 s memory alarm cost every claimed row minutes of backoff.
            released += 1;
        }
    }
    if released > 0 {
        let error = results.iter().find_map(|r| r.as_ref().err().filter(|e| !e.is_about_the_message()));
        tracing::warn!(released, error = ?error, "batch not confirmed; rows released for the next connection");
    }
    if !published.is_empty() {
        db.within(move_to_published(&mut *tx, &published)).await?;
    }
    // Backoff doubles per attempt, up to five minutes (the exponent is capped before
    // power() so a row failing for days cannot overflow it).
    if !failed.is_empty() {
        db.within(
            sqlx::query!(
                "UPDATE outbox AS o
            SET attempts = o.attempts + 1,
                last_error = f.error,
                next_attempt_at = now() + make_interval(secs => least(power(2, least(o.attempts, 9)), 300))
           FROM UNNEST($1::bigint[], $2::text[]) AS f(id, error)
          WHERE o.id = f.id",
                &failed,
                &errors
            )
            .execute(&mut *tx),
        )
        .await?;
    }
    db.within(tx.commit()).await?;
    lease.settle_unless(None);

    metrics::counter!(names::OUTBOX_PUBLISHED).increment(published.len() as u64);
    metrics::histogram!(names::OUTBOX_BATCH_DURATION).record(started.elapsed().as_secs_f64());
    if let Some(oldest) = rows.iter().map(|r| r.created_at).min() {
        metrics::histogram!(names::OUTBOX_PUBLISH_LAG)
            .record((Utc::now() - oldest).to_std().unwrap_or_default().as_secs_f64());
    }
    tracing::debug!(claimed = rows.len(), published = published.len(), failed = failed.len(), released, "outbox batch");
    Ok(Outcome {
        claimed: rows.len(),
        published: published.len(),
        failed: failed.len(),
        released,
        reconnect: !publisher.is_usable(),
    })
}

/// Moves the rows `ids` out of the outbox into `outbox_published`, as published now, with
/// the attempt that published them.
pub async fn move_to_published<'e>(db: impl sqlx::PgExecutor<'e>, ids: &[i64]) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "WITH sent AS (DELETE FROM outbox WHERE id = ANY($1) RETURNING *)
         INSERT INTO outbox_published (id, event_id, aggregate_id, exchange, routing_key, event_type, payload,
                                       headers, created_at, published_at, attempts)
         SELECT id, event_id, aggregate_id, exchange, routing_key, event_type, payload,
                headers, created_at, now(), attempts + 1
           FROM sent",
        ids
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// A row as a message, and its producer span (OpenTelemetry's messaging conventions),
/// which lasts until the batch is moved.
///
/// The span's parent is the row's `traceparent` (the outbox append of the request or
/// reply that caused the event), not a link: each message has exactly one cause, so a
/// parent gives one tree per order from the request to the worker, where a link would
/// leave the relay's spans in traces of their own. The message carries the producer
/// span's context, so its consumer becomes the producer span's child.
fn outgoing(row: &Claimed, topology: &Topology) -> (Outgoing, tracing::Span) {
    // Rows name the contract's exchange; a deployment (or a test) may call it otherwise.
    let exchange = if row.exchange == super::EXCHANGE { topology.exchange.clone() } else { row.exchange.clone() };
    let mut headers: Vec<(String, String)> = row
        .headers
        .as_object()
        .map(|h| h.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default();
    let span = tracing::debug_span!(
        parent: None,
        "amqp.publish",
        otel.name = format!("publish {exchange}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = %exchange,
        messaging.rabbitmq.destination.routing_key = %row.routing_key,
        messaging.message.id = %row.event_id,
    );
    let cause = headers.iter().find(|(k, _)| k == "traceparent").and_then(|(_, v)| TraceContext::parse(v));
    let context = TraceContext::continue_in(&span, cause);
    headers.retain(|(k, _)| k != "traceparent");
    headers.push(("traceparent".to_owned(), context.to_string()));
    let message = Outgoing {
        exchange,
        routing_key: row.routing_key.clone(),
        message_id: row.event_id.to_string(),
        message_type: row.event_type.clone(),
        timestamp: row.created_at.timestamp().max(0) as u64,
        headers,
        body: row.payload.clone().into_bytes(),
    };
    (message, span)
}

/// The relay process: connection supervision, schedule, wake-ups, shutdown.
pub struct Relay {
    pub db: Db,
    pub amqp: Nodes,
    pub topology: Topology,
    pub settings: RelaySettings,
    pub schedule: cron::Schedule,
    /// Set while a broker connection is up: the readiness probe reads it.
    pub broker_up: Arc<AtomicBool>,
}

impl Relay {
    /// Runs until `shutdown` turns true; the batch in hand is finished first.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(listener_pool(&self.db), wake.clone()));
        // Backlog gauges and retention keep going while the broker is away.
        let housekeeping = tokio::spawn(super::housekeeping::run(self.db.clone(), self.settings.retention));
        // Lanes are relays inside one process, each with its own connection: while one
        // waits for its confirms, another claims and moves. What makes several relays
        // safe (SKIP LOCKED, one head per aggregate) makes lanes safe.
        let relay = Arc::new(self);
        let lanes: Vec<_> = (0..relay.settings.lanes.max(1))
            .map(|_| {
                let (relay, wake, shutdown) = (relay.clone(), wake.clone(), shutdown.clone());
                tokio::spawn(async move { relay.run_lane(&wake, shutdown).await })
            })
            .collect();
        for lane in lanes {
            let _ = lane.await;
        }
        relay.broker_up.store(false, Ordering::Relaxed);
        listener.abort();
        housekeeping.abort();
        tracing::info!("relay stopped");
    }

    /// One lane: connect, serve until the connection is of no more use, and again, until
    /// shutdown.
    async fn run_lane(&self, wake: &Notify, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Policy::RECONNECT.backoff();
        while !*shutdown.borrow() {
            let mut publisher = match Publisher::connect(&self.amqp, &self.topology).await {
                Ok(publisher) => publisher,
                Err(e) => {
                    metrics::counter!(names::OUTBOX_PUBLISH_FAILURES, "reason" => "connect").increment(1);
                    let delay = backoff.next_delay();
                    tracing::warn!(error.cause = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ");
                    crate::shutdown::sleep_or_stop(delay, &mut shutdown).await;
                    continue;
                }
            };
            tracing::info!("connected to RabbitMQ");
            self.broker_up.store(true, Ordering::Relaxed);
            let ended = self.serve(&mut publisher, wake, &mut shutdown, &mut backoff).await;
            self.broker_up.store(false, Ordering::Relaxed);
            match ended {
                LaneEnd::Shutdown => publisher.close().await,
                LaneEnd::Blocked => {
                    // A resource alarm: claim nothing until the broker lifts it, then go
                    // on at once on a fresh connection (this one's unconfirmed messages
                    // could be confirmed late, against the wrong rows).
                    metrics::gauge!(names::OUTBOX_BROKER_BLOCKED).set(1.0);
                    tracing::warn!("RabbitMQ blocks publishing (resource alarm); claiming nothing until it lifts");
                    tokio::select! {
                        () = publisher.unblocked() => {}
                        _ = shutdown.changed() => {}
                    }
                    metrics::gauge!(names::OUTBOX_BROKER_BLOCKED).set(0.0);
                    tracing::info!("RabbitMQ alarm lifted, publishing again");
                    backoff.reset();
                }
                LaneEnd::Unusable => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        retry_in_ms = delay.as_millis() as u64,
                        "RabbitMQ connection unusable, reconnecting"
                    );
                    drop(publisher);
                    crate::shutdown::sleep_or_stop(delay, &mut shutdown).await;
                }
            }
        }
    }

    /// Drains the outbox, waits for the schedule, a wake-up or trouble, and again, while
    /// the publisher is of use.
    async fn serve(
        &self,
        publisher: &mut Publisher,
        wake: &Notify,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> LaneEnd {
        loop {
            if let Some(end) = self.drain(publisher, shutdown, backoff).await {
                return end;
            }
            let next_tick = crate::schedule::until_next(&self.schedule, Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep(next_tick) => {}
                () = wake.notified() => {}
                () = publisher.closed() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Steps while rows come (an order's next event is claimable once its previous one
    /// is moved); `Some` when the lane must stop serving on this publisher.
    async fn drain(
        &self,
        publisher: &mut Publisher,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> Option<LaneEnd> {
        loop {
            if *shutdown.borrow() {
                return Some(LaneEnd::Shutdown);
            }
            // Claimed rows would only wait for confirms that cannot come.
            if publisher.is_blocked() {
                return Some(LaneEnd::Blocked);
            }
            if !publisher.is_usable() {
                return Some(LaneEnd::Unusable);
            }
            match relay_batch(&self.db, publisher, &self.topology, &self.settings).await {
                Ok(outcome) if outcome.claimed == 0 => {
                    backoff.reset();
                    return None;
                }
                Ok(outcome) => {
                    if outcome.published > 0 {
                        backoff.reset();
                    }
                }
                Err(e) => {
                    metrics::counter!(names::OUTBOX_PUBLISH_FAILURES, "reason" => "db").increment(1);
                    let delay = backoff.next_delay();
                    tracing::warn!(error.cause = %chain(&e), retry_in_ms = delay.as_millis() as u64, "outbox step failed");
                    crate::shutdown::sleep_or_stop(delay, shutdown).await;
                    return None;
                }
            }
        }
    }
}

/// Why a lane stopped serving on its publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaneEnd {
    Shutdown,
    /// A resource alarm blocks the connection.
    Blocked,
    /// The connection or channel is gone, or a batch went unconfirmed.
    Unusable,
}

/// A pool of one connection for `LISTEN`, with the relay pool's settings: the listener
/// keeps its connection for good, and taking it from the relay's pool left two lanes,
/// housekeeping and `/readyz` three connections of four (`/readyz` said "postgres
/// unavailable" whenever a VACUUM ran). sqlx's `PgListener::connect(url)` does the same,
/// without our connect options.
fn listener_pool(db: &Db) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*db.connect_options()).clone())
}

/// Forwards `NOTIFY outbox` to `wake`, reconnecting as needed. A notification lost while
/// disconnected costs at most one tick of the schedule.
async fn listen(db: PgPool, wake: Arc<Notify>) {
    let mut backoff = Policy::RECONNECT.backoff();
    loop {
        let mut listening = false;
        let listener = async {
            let mut listener = PgListener::connect_with(&db).await?;
            listener.listen(CHANNEL).await?;
            listening = true;
            loop {
                listener.recv().await?;
                // Every waiting lane; and a permit for one that is between its drain and
                // its wait, so that no commit waits for the next tick.
                wake.notify_waiters();
                wake.notify_one();
            }
        };
        let result: Result<(), sqlx::Error> = listener.await;
        let Err(e) = result else { continue };
        // A listener that worked and then failed starts again from the first delay.
        if listening {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(error.cause = %chain(&e), retry_in_ms = delay.as_millis() as u64, "LISTEN outbox failed, relying on the schedule meanwhile");
        tokio::time::sleep(delay).await;
    }
}
