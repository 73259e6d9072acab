//! The `saga-worker` loop: consume `CustomerSaga` with manual acks, apply each reply,
//! invalidate the user's cache, ack; dead-letter poison; sweep timeouts on a schedule.
//! Up to [`SagaWorker::concurrency`] replies are handled at once, each in a task of its
//! own, so that their commits share WAL flushes; two replies of one order meet at the
//! order's row lock and the inbox, which let one of them through.
//!
//! Order of effects per reply: commit, then invalidate, then ack. A crash between the
//! commit and the ack redelivers the reply, which the inbox turns into a no-op that
//! invalidates again; an invalidation Redis does not take is retried by the cache until
//! it does (`cache`), without holding the reply; a
//! database outage is retried in place a few times, then handed back to the broker,
//! whose delivery count (quorum queues) dead-letters a reply that never gets through.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::amqp::Nodes;
use crate::db::Db;
use crate::telemetry::names;
use chrono::Utc;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use super::{
    Applied, Poison, ReplyBacklog, SagaError, SagaReply, Swept, apply,
    in_hand::{Holding, RepliesInHand},
    probe::{self, Probe},
    prune_inbox, sweep_timeouts,
};
use crate::{
    amqp::{Consumer, Delivery, Outgoing, Publisher, Settler, Topology, queue_depth},
    cache::OrderCache,
    error::chain,
    outbox::RelayWaker,
    retry::Policy,
    trace_context::TraceContext,
};

/// When and how the saga timeout runs.
#[derive(Debug, Clone)]
pub struct TimeoutSettings {
    /// A pending order unanswered this long is re-requested.
    pub after: Duration,
    /// Re-requests before the order is canceled.
    pub max_retries: i32,
    pub schedule: cron::Schedule,
}

pub struct SagaWorker {
    pub db: Db,
    /// Connection arguments; the dead-letter publisher gets its own connection.
    pub amqp: Nodes,
    pub dead_letter_amqp: Nodes,
    pub topology: Topology,
    pub cache: OrderCache,
    /// Woken after each applied reply and each sweep that wrote the outbox.
    pub relays: RelayWaker,
    pub prefetch: u16,
    /// Replies handled at once (at most `prefetch` arrive unacked); each holds one
    /// database connection while it is applied.
    pub concurrency: usize,
    pub timeouts: TimeoutSettings,
    /// Set while the worker consumes `CustomerSaga`: the readiness probe reads it.
    pub broker_up: Arc<AtomicBool>,
}

/// In-place attempts of a reply that fails for another reason than an outage, before it
/// goes back to the queue as a failed delivery.
pub const APPLY_ATTEMPTS: u32 = 5;

/// What a test changes in a worker, and a deployment never sets
/// ([`SagaWorker::run_with`]).
#[doc(hidden)]
#[derive(Clone)]
pub struct Hooks {
    /// [`APPLY_ATTEMPTS`], fewer to reach a dead letter sooner.
    pub apply_attempts: u32,
    /// Notified right after the first ack; then the worker does nothing more, as if its
    /// process died there.
    pub halt_after_ack: Option<Arc<tokio::sync::Notify>>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks { apply_attempts: APPLY_ATTEMPTS, halt_after_ack: None }
    }
}

/// A worker at work: its settings and the hooks it runs with.
struct Running {
    worker: SagaWorker,
    hooks: Hooks,
}

impl std::ops::Deref for Running {
    type Target = SagaWorker;

    fn deref(&self) -> &SagaWorker {
        &self.worker
    }
}

impl SagaWorker {
    /// Runs until `shutdown` turns true; the replies in hand are finished first.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        self.run_with(Hooks::default(), shutdown).await;
    }

    /// [`Self::run`], with a test's hooks.
    #[doc(hidden)]
    pub async fn run_with(self, hooks: Hooks, shutdown: watch::Receiver<bool>) {
        Running { worker: self, hooks }.run(shutdown).await;
    }
}

impl Running {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let worker = Arc::new(self);
        let sweeper = tokio::spawn(sweep_loop(
            worker.db.clone(),
            worker.cache.clone(),
            worker.relays.clone(),
            worker.timeouts.clone(),
            (worker.dead_letter_amqp.clone(), worker.topology.clone()),
            shutdown.clone(),
        ));
        let in_hand = RepliesInHand::start(worker.db.clone());
        let gauges =
            tokio::spawn(queue_gauges(worker.dead_letter_amqp.clone(), worker.topology.clone(), shutdown.clone()));
        let mut backoff = Policy::RECONNECT.backoff();
        while !*shutdown.borrow() {
            let connected = async {
                let consumer = Consumer::connect(
                    &worker.amqp,
                    &worker.topology,
                    &worker.topology.customer_saga_queue,
                    worker.prefetch,
                )
                .await?;
                let dead_letters = Publisher::connect(&worker.dead_letter_amqp, &worker.topology).await?;
                Ok::<_, amqprs::error::Error>((consumer, dead_letters))
            };
            let (mut consumer, dead_letters) = match connected.await {
                Ok(both) => both,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error.cause = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ");
                    crate::shutdown::sleep_or_stop(delay, &mut shutdown).await;
                    continue;
                }
            };
            tracing::info!(queue = %worker.topology.customer_saga_queue, "consuming saga replies");
            worker.broker_up.store(true, Ordering::Relaxed);
            let dead_letters = Arc::new(tokio::sync::Mutex::new(dead_letters));
            if worker.consume(&mut consumer, &dead_letters, &in_hand, &mut shutdown).await {
                backoff.reset();
            }
            // Not ready from here until a consumer runs again: the probe must not say OK
            // for a worker whose consumer the broker cancelled.
            worker.broker_up.store(false, Ordering::Relaxed);
            let why = consumer.stopped().map_or_else(|| "the connection was lost".to_owned(), |s| s.to_string());
            consumer.close().await;
            // Every task that used it has ended (`consume` waits for them).
            if let Ok(dead_letters) = Arc::try_unwrap(dead_letters) {
                dead_letters.into_inner().close().await;
            }
            if !*shutdown.borrow() {
                let delay = backoff.next_delay();
                tracing::warn!(%why, retry_in_ms = delay.as_millis() as u64, "stopped consuming saga replies, reconnecting");
                crate::shutdown::sleep_or_stop(delay, &mut shutdown).await;
            }
        }
        // The sweep stops between runs, never inside its transaction.
        let _ = sweeper.await;
        let _ = gauges.await;
        tracing::info!("saga worker stopped");
    }

    /// Handles replies until the consumer or the dead-letter publisher is of no more use,
    /// or shutdown, then waits for the replies in hand; true if it handled any (the
    /// connection was worth having).
    ///
    /// Every delivery is taken from the consumer as soon as it arrives (at most `prefetch`
    /// are unacked) and recorded in `replies` (`in_hand`), then waits here for one of the
    /// `concurrency` tasks: a reply waiting in the client's buffer was invisible to the
    /// saga timeout.
    async fn consume(
        self: &Arc<Self>,
        consumer: &mut Consumer,
        dead_letters: &Arc<tokio::sync::Mutex<Publisher>>,
        replies: &RepliesInHand,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let settler = consumer.settler();
        let mut in_hand = tokio::task::JoinSet::new();
        let mut waiting = std::collections::VecDeque::new();
        let mut handled = false;
        loop {
            while in_hand.len() < self.concurrency.max(1)
                && let Some((delivery, holding)) = waiting.pop_front()
            {
                let (worker, settler, dead_letters, shutdown) =
                    (self.clone(), settler.clone(), dead_letters.clone(), shutdown.clone());
                in_hand.spawn(async move {
                    let settled = worker.handle(&settler, &dead_letters, delivery, &shutdown).await;
                    (settled, holding)
                });
            }
            tokio::select! {
                delivery = consumer.next() => {
                    let Some(delivery) = delivery else { break };
                    handled = true;
                    let holding = SagaReply::parse(&delivery.body).ok().map(|reply| replies.hold(reply.order_id()));
                    waiting.push_back((delivery, holding));
                }
                Some(done) = in_hand.join_next() => match handled_well(done) {
                    Ok((None, _)) if dead_letters.lock().await.is_usable() => {}
                    // Only a task that saw the shutdown leaves its reply.
                    Ok((Some(left), holding)) => {
                        waiting.push_back((left, holding));
                        break;
                    }
                    _ => break,
                },
                _ = shutdown.changed() => break,
            }
        }
        let stopping = *shutdown.borrow();
        if stopping {
            // No more deliveries: a copy handed back must not come back to this consumer.
            let buffered = consumer.stop_consuming().await;
            waiting.extend(buffered.into_iter().map(|delivery| (delivery, None)));
        }
        // Each reply in hand is settled, or left by a task that saw the shutdown.
        let mut unsettled: Vec<(Delivery, Option<Holding>)> = waiting.drain(..).collect();
        while let Some(done) = in_hand.join_next().await {
            if let Ok((Some(left), holding)) = handled_well(done) {
                unsettled.push((left, holding));
            }
        }
        if stopping && !unsettled.is_empty() {
            let deliveries: Vec<&Delivery> = unsettled.iter().map(|(delivery, _)| delivery).collect();
            if let Err(e) = self.hand_back(&settler, dead_letters, &deliveries).await {
                tracing::warn!(error.cause = %e, "cannot hand back the replies not applied");
            }
        }
        // The holdings end here: after the copies are in the queue, where the sweep sees them.
        drop(unsettled);
        handled
    }

    /// Hands replies this worker will not apply (it is stopping) back to the queue as
    /// fresh copies, then acks them: a reply the channel's close returns counts as a
    /// delivery on RabbitMQ 3.10 and 4.0 alike (`x-delivery-count` 1, seen in
    /// `a_worker_told_to_stop_during_an_outage_stops_and_spends_no_delivery`), so each
    /// rollout during an outage brought healthy replies closer to the dead-letter queue.
    /// A copy not confirmed leaves its original to the channel's close; a copy confirmed
    /// whose original's ack is lost is a duplicate the inbox absorbs.
    async fn hand_back(
        &self,
        settler: &Settler,
        dead_letters: &tokio::sync::Mutex<Publisher>,
        deliveries: &[&Delivery],
    ) -> Result<(), amqprs::error::Error> {
        let queue = &self.topology.customer_saga_queue;
        self.withdraw_barrier().await;
        let copies: Vec<Outgoing> = deliveries.iter().map(|delivery| delivery.copy_for(queue)).collect();
        let mut publisher = dead_letters.lock().await;
        // Within a bound: a broker that blocks publishers (a resource alarm) confirms
        // nothing, and the stop must not wait for it (the originals then go back with the
        // channel's close).
        let handed = tokio::time::timeout(HAND_BACK_WITHIN, async {
            if !publisher.is_usable() {
                // Abandoned by a dead-letter publish that shutdown interrupted, say: a fresh
                // one, or every copy would fail at once.
                match Publisher::connect(&self.dead_letter_amqp, &self.topology).await {
                    Ok(fresh) => std::mem::replace(&mut *publisher, fresh).close().await,
                    Err(e) => tracing::warn!(error.cause = %e, "cannot connect to hand replies back"),
                }
            }
            publisher.publish_all(&copies, crate::amqp::CONFIRM_DEADLINE).await
        })
        .await;
        let published = handed.unwrap_or_else(|_| {
            // Confirms may still come: this publisher cannot be trusted with another batch.
            publisher.abandon();
            Vec::new()
        });
        drop(publisher);
        let mut handed_back = 0;
        for (delivery, published) in deliveries.iter().zip(published) {
            if published.is_ok() {
                settler.ack(delivery.tag).await?;
                handed_back += 1;
            }
        }
        tracing::info!(handed_back, of = deliveries.len(), "stopping: replies not applied handed back to the queue");
        Ok(())
    }

    /// Applies one reply and settles it with the broker; the delivery back if shutdown
    /// came first (the caller hands it back). An error means the broker connection is in
    /// trouble; the reply itself is never lost (unacked, it returns).
    async fn handle(
        &self,
        settler: &Settler,
        dead_letters: &tokio::sync::Mutex<Publisher>,
        delivery: Delivery,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Option<Delivery>, amqprs::error::Error> {
        let started = Instant::now();
        // A consumer span (OpenTelemetry's messaging conventions) continuing the trace the
        // reply carries: the customer service's, which continued the relay's request.
        let queue = &self.topology.customer_saga_queue;
        let span = tracing::info_span!(
            parent: None,
            "saga.reply",
            otel.name = format!("process {queue}"),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.destination.name = %queue,
            messaging.message.id = delivery.message_id().unwrap_or_default(),
            order.id = tracing::field::Empty,
            reply = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let caller = delivery.header("traceparent").as_deref().and_then(TraceContext::parse);
        let trace = TraceContext::continue_in(&span, caller);
        span.record("trace_id", trace.trace_id());
        let handled = async {
            if delivery.properties.message_type().map(String::as_str) == Some(probe::MESSAGE_TYPE) {
                self.pass_probe(settler, &delivery).await?;
                return Ok(Settled::Yes);
            }
            let reply = match SagaReply::parse(&delivery.body) {
                Ok(reply) => reply,
                Err(poison) => {
                    tracing::Span::current().record("otel.status_code", "ERROR");
                    return self.dead_letter(settler, dead_letters, &delivery, &poison, shutdown).await;
                }
            };
            tracing::Span::current().record("order.id", tracing::field::display(reply.order_id()));
            tracing::Span::current().record("reply", reply.as_str());
            self.apply_and_settle(settler, dead_letters, &delivery, reply, trace, shutdown, started).await
        };
        match handled.instrument(span).await? {
            Settled::Yes => Ok(None),
            Settled::NotBeforeShutdown => Ok(Some(delivery)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_and_settle(
        &self,
        settler: &Settler,
        dead_letters: &tokio::sync::Mutex<Publisher>,
        delivery: &Delivery,
        reply: SagaReply,
        trace: TraceContext,
        shutdown: &watch::Receiver<bool>,
        started: Instant,
    ) -> Result<Settled, amqprs::error::Error> {
        let key = reply.inbox_key(delivery.message_id());
        let mut backoff = Policy::APPLY.backoff();
        let mut failures = 0;
        loop {
            match apply(&self.db, &key, reply, trace).await {
                Ok(applied) => {
                    // An approval or a rejection wrote its event to the outbox.
                    if matches!(applied, Applied::Approved { .. } | Applied::Rejected { .. }) {
                        self.relays.wake();
                    }
                    // Before the ack: a worker that dies after its ack leaves nothing
                    // undone, and one that dies before gets the reply redelivered, whose
                    // duplicate invalidates again (every outcome does: it is safe to repeat).
                    self.cache.invalidate_after_commit(applied.user_id()).await;
                    settler.ack(delivery.tag).await?;
                    if let Some(halt) = &self.hooks.halt_after_ack {
                        halt.notify_one();
                        std::future::pending::<()>().await;
                    }
                    metrics::counter!(names::SAGA_REPLIES, "outcome" => applied.label()).increment(1);
                    metrics::histogram!(names::SAGA_REPLY_DURATION).record(started.elapsed().as_secs_f64());
                    match applied {
                        Applied::Approved { .. } | Applied::Rejected { .. } => {
                            tracing::info!(outcome = applied.label(), "saga reply applied");
                        }
                        Applied::Duplicate { .. } => tracing::info!("duplicate saga reply ignored"),
                        Applied::Stale { .. } => tracing::info!("saga reply for an order no longer pending ignored"),
                    }
                    return Ok(Settled::Yes);
                }
                Err(SagaError::Poison(poison)) => {
                    return self.dead_letter(settler, dead_letters, delivery, &poison, shutdown).await;
                }
                Err(SagaError::Database(e)) => {
                    metrics::counter!(names::SAGA_APPLY_FAILURES).increment(1);
                    // PostgreSQL away: hold the reply (and with it the consumer) and wait,
                    // however long; the broker redelivers it if this process dies. Any other
                    // error gets a few tries, then goes back to the broker, which counts it.
                    let outage = crate::error::is_unavailable(&e);
                    failures += 1;
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        attempt = failures,
                        outage,
                        error.cause = %chain(&e),
                        retry_in_ms = delay.as_millis() as u64,
                        "cannot apply saga reply"
                    );
                    if !outage && failures >= self.hooks.apply_attempts {
                        break;
                    }
                    if stopped_first(delay, shutdown).await {
                        return Ok(Settled::NotBeforeShutdown);
                    }
                }
            }
        }
        // Back to the queue, rejected: the broker counts the failed delivery and
        // dead-letters the reply past its delivery limit, so a reply that never gets
        // through is kept, not lost, nor retried forever.
        metrics::counter!(names::SAGA_REPLIES, "outcome" => "retried").increment(1);
        self.withdraw_barrier().await;
        settler.reject_for_retry(delivery.tag).await?;
        Ok(Settled::Yes)
    }

    /// [`probe::reset`] before a reply goes back to the queue; a failure is logged (the
    /// reply goes back all the same).
    async fn withdraw_barrier(&self) {
        if let Err(e) = probe::reset(&self.db).await {
            tracing::warn!(error.cause = %chain(&e), "cannot withdraw the saga reply barrier before handing a reply back");
        }
    }

    /// Records the barrier a probe of the saga timeout carries, then acks it. A probe
    /// that cannot be recorded is acked all the same: the next sweep sends another.
    async fn pass_probe(&self, settler: &Settler, delivery: &Delivery) -> Result<(), amqprs::error::Error> {
        match Probe::parse(&delivery.body) {
            Some(probe) => match probe.record(&self.db).await {
                Ok(()) => tracing::debug!(sent_at = %probe.sent_at, "saga reply probe passed"),
                Err(e) => tracing::warn!(error.cause = %chain(&e), "cannot record a saga reply probe"),
            },
            None => tracing::warn!("a saga reply probe without its time, ignored"),
        }
        settler.ack(delivery.tag).await
    }

    /// Publishes the reply to the dead-letter exchange with its reason, confirmed, and
    /// only then acks it.
    async fn dead_letter(
        &self,
        settler: &Settler,
        dead_letters: &tokio::sync::Mutex<Publisher>,
        delivery: &Delivery,
        poison: &Poison,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Settled, amqprs::error::Error> {
        let mut dead_letters = dead_letters.lock().await;
        let message = Outgoing {
            exchange: self.topology.dead_letter_exchange.clone(),
            routing_key: self.topology.customer_saga_queue.clone(),
            message_id: delivery.message_id().map_or_else(|| format!("poison-{}", Uuid::new_v4()), str::to_owned),
            message_type: delivery.properties.message_type().cloned().unwrap_or_else(|| crate::amqp::REPLY_TYPE.into()),
            timestamp: Utc::now().timestamp().max(0) as u64,
            headers: vec![
                ("x-poison-reason".into(), poison.to_string()),
                ("x-poison-kind".into(), poison.kind().into()),
                ("x-original-queue".into(), self.topology.customer_saga_queue.clone()),
            ],
            body: delivery.body.clone(),
        };
        let mut stop = shutdown.clone();
        let published = tokio::select! {
            published = dead_letters.publish_one(&message) => published,
            _ = stop.wait_for(|stop| *stop) => {
                dead_letters.abandon();
                return Ok(Settled::NotBeforeShutdown);
            }
        };
        match published {
            Ok(()) => {
                settler.ack(delivery.tag).await?;
                metrics::counter!(names::SAGA_REPLIES, "outcome" => "dead_lettered").increment(1);
                metrics::counter!(names::SAGA_DEAD_LETTERED, "reason" => poison.kind()).increment(1);
                tracing::warn!(reason = %poison, "saga reply dead-lettered");
                Ok(Settled::Yes)
            }
            Err(failure) => {
                tracing::warn!(reason = %poison, error = %failure, "could not dead-letter a poison reply; it goes back to the queue");
                if dead_letters.is_blocked() {
                    // A resource alarm: every try would fail the same way and count a
                    // delivery. Hold the reply until the broker lifts it, without the
                    // publisher (the consume loop reads it) and not past shutdown.
                    let unblocked = dead_letters.unblocked_later();
                    drop(dead_letters);
                    let mut shutdown = shutdown.clone();
                    tokio::select! {
                        () = unblocked => {}
                        _ = shutdown.wait_for(|stop| *stop) => return Ok(Settled::NotBeforeShutdown),
                    }
                }
                settler.reject_for_retry(delivery.tag).await?;
                Ok(Settled::Yes)
            }
        }
    }
}

/// How long a stopping worker tries to hand its unapplied replies back as copies (ms
/// when the broker takes publishes; the 5 s stop bound is the test's).
const HAND_BACK_WITHIN: Duration = Duration::from_secs(1);

/// Sleeps `delay`, unless shutdown comes first: then true.
async fn stopped_first(delay: Duration, shutdown: &watch::Receiver<bool>) -> bool {
    let mut shutdown = shutdown.clone();
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        _ = shutdown.wait_for(|stop| *stop) => true,
    }
}

/// Whether a reply was settled with the broker (acked, dead-lettered, or rejected to be
/// counted), or left because the worker is stopping.
enum Settled {
    Yes,
    NotBeforeShutdown,
}

/// What a task that handled a reply gave back: the delivery it left at shutdown, and the
/// reply's holding.
type Handled = (Result<Option<Delivery>, amqprs::error::Error>, Option<Holding>);

/// What a task left unsettled with its holding, or an error if it left the broker
/// connection unfit for more.
fn handled_well(done: Result<Handled, tokio::task::JoinError>) -> Result<(Option<Delivery>, Option<Holding>), ()> {
    match done {
        Ok((Ok(left), holding)) => Ok((left, holding)),
        Ok((Err(e), _)) => {
            tracing::warn!(error.cause = %e, "broker trouble while handling a reply, reconnecting");
            Err(())
        }
        Err(e) => {
            tracing::error!(error.cause = %e, "a reply's task failed; its reply returns to the queue");
            Err(())
        }
    }
}

/// The saga timeout, on its cron schedule, plus pruning the inbox once an hour. Before
/// each sweep it asks the broker how many replies wait in `CustomerSaga` (on a
/// connection of its own: the consumer's channel is busy with deliveries).
async fn sweep_loop(
    db: Db,
    cache: OrderCache,
    relays: RelayWaker,
    settings: TimeoutSettings,
    (amqp, topology): (Nodes, Topology),
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_prune = Instant::now();
    // By then the sweep has canceled an unanswered order: an older pending one means the
    // sweep is not running, or postpones for a backlog (the alert in prometheus/).
    metrics::gauge!(names::SAGA_CANCEL_AFTER)
        .set(settings.after.as_secs_f64() * f64::from(settings.max_retries.saturating_add(1)));
    while !*shutdown.borrow() {
        let wait = crate::schedule::until_next(&settings.schedule, Duration::from_secs(30));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => break,
        }
        match sweep_once(&db, &cache, &settings, &amqp, &topology).await {
            // Re-requests and cancellations are outbox rows.
            Ok(swept) if swept.re_requested > 0 || !swept.canceled.is_empty() => relays.wake(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error.cause = %chain(&e), "saga timeout sweep failed"),
        }
        if *shutdown.borrow() {
            break;
        }
        match super::pending_summary(&db).await {
            Ok((pending, oldest)) => {
                metrics::gauge!(names::SAGA_PENDING).set(pending as f64);
                metrics::gauge!(names::SAGA_OLDEST_PENDING_AGE).set(oldest);
            }
            Err(e) => tracing::warn!(error.cause = %chain(&e), "cannot count pending sagas"),
        }
        if last_prune.elapsed() > Duration::from_secs(3600) {
            last_prune = Instant::now();
            if let Err(e) = prune_inbox(&db, crate::outbox::DEFAULT_RETENTION).await {
                tracing::warn!(error.cause = %chain(&e), "saga inbox pruning failed");
            }
        }
    }
}

/// One sweep of the saga timeout: asks the broker how many replies wait in
/// `CustomerSaga`, sweeps, counts, invalidates the canceled orders' users, and sends a
/// [`Probe`] through a backlog that postponed a cancellation.
pub async fn sweep_once(
    db: &Db,
    cache: &OrderCache,
    settings: &TimeoutSettings,
    amqp: &Nodes,
    topology: &Topology,
) -> Result<Swept, sqlx::Error> {
    // A trace of its own: no request caused it (each re-request it writes starts the
    // order's next hop in this trace).
    let span = tracing::info_span!(parent: None, "saga.timeout_sweep", otel.name = "saga timeout sweep");
    sweep_in(db, cache, settings, amqp, topology).instrument(span).await
}

async fn sweep_in(
    db: &Db,
    cache: &OrderCache,
    settings: &TimeoutSettings,
    amqp: &Nodes,
    topology: &Topology,
) -> Result<Swept, sqlx::Error> {
    let replies = match queue_depth(amqp, &topology.customer_saga_queue).await {
        Ok(depth) => ReplyBacklog::of(Some(depth)),
        Err(e) => {
            tracing::warn!(error.cause = %e, "cannot ask how many saga replies wait; no cancellation this sweep");
            ReplyBacklog::Unknown
        }
    };
    let swept = sweep_timeouts(db, settings.after, settings.max_retries, replies).await?;
    metrics::counter!(names::SAGA_TIMEOUTS, "action" => "re_requested").increment(swept.re_requested as u64);
    metrics::counter!(names::SAGA_TIMEOUTS, "action" => "canceled").increment(swept.canceled.len() as u64);
    metrics::counter!(names::SAGA_TIMEOUTS, "action" => "postponed").increment(swept.postponed as u64);
    if swept.postponed > 0 {
        tracing::info!(postponed = swept.postponed, ?replies, "timed-out orders not canceled while replies wait");
        if matches!(replies, ReplyBacklog::Waiting(_))
            && let Err(e) = send_probe(db, amqp, topology).await
        {
            tracing::warn!(error.cause = %e, "cannot send a probe through the saga replies");
        }
    }
    for user_id in &swept.canceled {
        cache.invalidate_after_commit(*user_id).await;
    }
    Ok(swept)
}

/// Publishes a [`Probe`] stamped with the database's time into `CustomerSaga`.
async fn send_probe(db: &Db, amqp: &Nodes, topology: &Topology) -> Result<(), String> {
    let sent_at = db
        .run(|connection| {
            Box::pin(async move { sqlx::query_scalar!(r#"SELECT now() AS "now!""#).fetch_one(connection).await })
        })
        .await
        .map_err(|e| chain(&e).to_string())?;
    let message = Probe { sent_at }.message(&topology.customer_saga_queue);
    let mut publisher = Publisher::connect(amqp, topology).await.map_err(|e| e.to_string())?;
    let published = publisher.publish_one(&message).await;
    publisher.close().await;
    published.map_err(|e| e.to_string())
}

/// How often the worker reads its queues' depths.
const QUEUE_GAUGES_EVERY: Duration = Duration::from_secs(15);

/// The depths of the saga's queues, every [`QUEUE_GAUGES_EVERY`]: replies waiting for a
/// worker, requests waiting for the customer service (nothing of ours drains `OrderSaga`:
/// its depth is how an operator sees that service fall behind or stop), dead letters.
///
/// On a connection of its own, with a timeout, in a task of its own: asked on the
/// consumer's channel between deliveries, a passive declare the broker did not answer
/// (seen once in a short chaos run, seed 583096772, right after a RabbitMQ restart and a
/// deleted `CustomerSaga`) held the consume loop, and with it the worker's 32 prefetched
/// replies, for the rest of the run.
async fn queue_gauges(amqp: Nodes, topology: Topology, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(QUEUE_GAUGES_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        let queues = [topology.customer_saga_queue.as_str(), &topology.order_saga_queue, &topology.dead_letter_queue];
        match crate::amqp::queue_depths(&amqp, &queues).await {
            Ok(depths) => {
                let gauges = [
                    names::SAGA_REPLY_QUEUE_DEPTH,
                    names::SAGA_REQUEST_QUEUE_DEPTH,
                    names::SAGA_DEAD_LETTER_QUEUE_DEPTH,
                ];
                for (gauge, depth) in gauges.into_iter().zip(depths) {
                    metrics::gauge!(gauge).set(f64::from(depth));
                }
            }
            Err(e) => tracing::warn!(error.cause = %e, "cannot read the saga queues' depths"),
        }
    }
}
