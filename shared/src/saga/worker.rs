//! The `saga-worker` loop: consume `CustomerSaga` with manual acks, apply each reply,
//! ack, invalidate the user's cache; dead-letter poison; sweep timeouts on a schedule.
//!
//! Order of effects per reply: commit, then ack, then invalidate. A crash between the
//! commit and the ack redelivers the reply, which the inbox turns into a no-op; a
//! database outage is retried in place a few times, then handed back to the broker,
//! whose delivery count (quorum queues) dead-letters a reply that never gets through.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use amqprs::connection::OpenConnectionArguments;
use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use super::{Applied, Poison, SagaError, SagaReply, apply, prune_inbox, sweep_timeouts};
use crate::{
    amqp::{Consumer, Delivery, Outgoing, Publisher, Topology},
    cache::OrderCache,
    error::chain,
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
    pub db: PgPool,
    /// Connection arguments; the dead-letter publisher gets its own connection.
    pub amqp: OpenConnectionArguments,
    pub dead_letter_amqp: OpenConnectionArguments,
    pub topology: Topology,
    pub cache: OrderCache,
    pub prefetch: u16,
    pub timeouts: TimeoutSettings,
    /// Set while the broker connections are up: the readiness probe reads it.
    pub broker_up: Arc<AtomicBool>,
}

/// In-place attempts of a reply that fails for another reason than an outage, before it
/// goes back to the queue.
const ATTEMPTS: u32 = 5;

impl SagaWorker {
    /// Runs until `shutdown` turns true; the reply in hand is finished first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let sweeper =
            tokio::spawn(sweep_loop(self.db.clone(), self.cache.clone(), self.timeouts.clone(), shutdown.clone()));
        let mut backoff = Duration::from_millis(500);
        'connect: while !*shutdown.borrow() {
            let connected = async {
                let consumer =
                    Consumer::connect(&self.amqp, &self.topology, &self.topology.customer_saga_queue, self.prefetch)
                        .await?;
                let dead_letters = Publisher::connect(&self.dead_letter_amqp, &self.topology).await?;
                Ok::<_, amqprs::error::Error>((consumer, dead_letters))
            };
            let (mut consumer, mut dead_letters) = match connected.await {
                Ok(both) => both,
                Err(e) => {
                    tracing::warn!(error.cause = %e, retry_in_ms = backoff.as_millis() as u64, "cannot reach RabbitMQ");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            tracing::info!(queue = %self.topology.customer_saga_queue, "consuming saga replies");
            self.broker_up.store(true, Ordering::Relaxed);
            backoff = Duration::from_millis(500);
            let mut gauge_every = tokio::time::interval(Duration::from_secs(15));
            loop {
                let delivery = tokio::select! {
                    delivery = consumer.next() => delivery,
                    _ = gauge_every.tick() => {
                        match consumer.queue_depth(&self.topology.dead_letter_queue).await {
                            Ok(depth) => metrics::gauge!("saga_dead_letter_queue_depth").set(f64::from(depth)),
                            Err(e) => tracing::warn!(error.cause = %e, "cannot read the dead-letter queue depth"),
                        }
                        continue;
                    }
                    _ = shutdown.changed() => None,
                };
                let Some(delivery) = delivery else { break };
                if let Err(e) = self.handle(&consumer, &mut dead_letters, delivery, &shutdown).await {
                    tracing::warn!(error.cause = %e, "broker trouble while handling a reply, reconnecting");
                    break;
                }
                if !dead_letters.is_usable() {
                    break;
                }
            }
            self.broker_up.store(false, Ordering::Relaxed);
            consumer.close().await;
            dead_letters.close().await;
            if !*shutdown.borrow() {
                tracing::warn!("lost the connection to RabbitMQ, reconnecting");
                continue 'connect;
            }
        }
        // The sweep stops between runs, never inside its transaction.
        let _ = sweeper.await;
        tracing::info!("saga worker stopped");
    }

    /// Applies one reply and settles it with the broker. An error means the broker
    /// connection is in trouble; the reply itself is never lost (unacked, it returns).
    async fn handle(
        &self,
        consumer: &Consumer,
        dead_letters: &mut Publisher,
        delivery: Delivery,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), amqprs::error::Error> {
        let started = Instant::now();
        let reply = match SagaReply::parse(&delivery.body) {
            Ok(reply) => reply,
            Err(poison) => return self.dead_letter(consumer, dead_letters, &delivery, &poison).await,
        };
        let trace = TraceContext::from_header(delivery.header("traceparent").as_deref());
        let span = tracing::info_span!(
            "saga.reply",
            order.id = %reply.order_id(),
            reply = reply.as_str(),
            trace_id = %trace.trace_id()
        );
        self.apply_and_settle(consumer, dead_letters, &delivery, reply, trace, shutdown, started).instrument(span).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_and_settle(
        &self,
        consumer: &Consumer,
        dead_letters: &mut Publisher,
        delivery: &Delivery,
        reply: SagaReply,
        trace: TraceContext,
        shutdown: &watch::Receiver<bool>,
        started: Instant,
    ) -> Result<(), amqprs::error::Error> {
        let key = reply.inbox_key(delivery.message_id());
        let mut delay = Duration::from_millis(500);
        let mut failures = 0;
        loop {
            match apply(&self.db, &key, reply, trace).await {
                Ok(applied) => {
                    let acked = consumer.ack(delivery.tag).await;
                    // Every outcome invalidates (one INCR): a duplicate may be the
                    // redelivery of a reply whose first worker died before it could.
                    self.cache.invalidate_after_commit(applied.user_id()).await;
                    acked?;
                    metrics::counter!("saga_replies_total", "outcome" => applied.label()).increment(1);
                    metrics::histogram!("saga_reply_duration_seconds").record(started.elapsed().as_secs_f64());
                    match applied {
                        Applied::Approved { .. } | Applied::Rejected { .. } => {
                            tracing::info!(outcome = applied.label(), "saga reply applied");
                        }
                        Applied::Duplicate { .. } => tracing::info!("duplicate saga reply ignored"),
                        Applied::Stale { .. } => tracing::info!("saga reply for an order no longer pending ignored"),
                    }
                    return Ok(());
                }
                Err(SagaError::Poison(poison)) => {
                    return self.dead_letter(consumer, dead_letters, delivery, &poison).await;
                }
                Err(SagaError::Database(e)) => {
                    metrics::counter!("saga_apply_failures_total").increment(1);
                    // PostgreSQL away: hold the reply (and with it the consumer) and wait,
                    // however long; the broker redelivers it if this process dies. Any other
                    // error gets a few tries, then goes back to the broker, which counts it.
                    let outage = crate::error::is_unavailable(&e);
                    failures += 1;
                    tracing::warn!(
                        attempt = failures,
                        outage,
                        error.cause = %chain(&e),
                        retry_in_ms = delay.as_millis() as u64,
                        "cannot apply saga reply"
                    );
                    if (!outage && failures >= ATTEMPTS) || *shutdown.borrow() {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        // Back to the queue: the broker counts the delivery and dead-letters the reply
        // past its delivery limit, so a reply that never gets through is kept, not lost.
        metrics::counter!("saga_replies_total", "outcome" => "retried").increment(1);
        consumer.requeue(delivery.tag).await
    }

    /// Publishes the reply to the dead-letter exchange with its reason, confirmed, and
    /// only then acks it.
    async fn dead_letter(
        &self,
        consumer: &Consumer,
        dead_letters: &mut Publisher,
        delivery: &Delivery,
        poison: &Poison,
    ) -> Result<(), amqprs::error::Error> {
        let message = Outgoing {
            exchange: self.topology.dead_letter_exchange.clone(),
            routing_key: self.topology.customer_saga_queue.clone(),
            message_id: delivery.message_id().map_or_else(|| format!("poison-{}", Uuid::new_v4()), str::to_owned),
            message_type: delivery.properties.message_type().cloned().unwrap_or_else(|| "CustomerSagaReply".into()),
            timestamp: Utc::now().timestamp().max(0) as u64,
            headers: vec![
                ("x-poison-reason".into(), poison.to_string()),
                ("x-poison-kind".into(), poison.kind().into()),
                ("x-original-queue".into(), self.topology.customer_saga_queue.clone()),
            ],
            body: delivery.body.clone(),
        };
        let published = dead_letters.publish_all(std::slice::from_ref(&message), Duration::from_secs(5)).await;
        match published.into_iter().next() {
            Some(Ok(())) => {
                consumer.ack(delivery.tag).await?;
                metrics::counter!("saga_replies_total", "outcome" => "dead_lettered").increment(1);
                metrics::counter!("saga_dead_lettered_total", "reason" => poison.kind()).increment(1);
                tracing::warn!(reason = %poison, "saga reply dead-lettered");
                Ok(())
            }
            failure => {
                tracing::warn!(reason = %poison, error = ?failure, "could not dead-letter a poison reply; it goes back to the queue");
                consumer.requeue(delivery.tag).await
            }
        }
    }
}

/// The saga timeout, on its cron schedule, plus pruning the inbox once an hour.
async fn sweep_loop(db: PgPool, cache: OrderCache, settings: TimeoutSettings, mut shutdown: watch::Receiver<bool>) {
    let mut last_prune = Instant::now();
    while !*shutdown.borrow() {
        let wait = settings
            .schedule
            .upcoming(Utc)
            .next()
            .and_then(|at| (at - Utc::now()).to_std().ok())
            .unwrap_or(Duration::from_secs(30));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => break,
        }
        match sweep_timeouts(&db, settings.after, settings.max_retries).await {
            Ok(swept) => {
                metrics::counter!("saga_timeouts_total", "action" => "re_requested")
                    .increment(swept.re_requested as u64);
                metrics::counter!("saga_timeouts_total", "action" => "canceled").increment(swept.canceled.len() as u64);
                for user_id in swept.canceled {
                    cache.invalidate_after_commit(user_id).await;
                }
            }
            Err(e) => tracing::warn!(error.cause = %chain(&e), "saga timeout sweep failed"),
        }
        if last_prune.elapsed() > Duration::from_secs(3600) {
            last_prune = Instant::now();
            if let Err(e) = prune_inbox(&db, Duration::from_secs(7 * 86400)).await {
                tracing::warn!(error.cause = %chain(&e), "saga inbox pruning failed");
            }
        }
    }
}
