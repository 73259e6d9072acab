//! The saga worker in a test: [`TestWorker`] builds one (with the hooks a test may set),
//! [`RunningWorker`] stops it; replies sent as the customer service sends them; what an
//! order's saga came to.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use order_service::amqp::Nodes;
use order_service::{
    amqp::Topology,
    saga::worker::{Hooks, SagaWorker, TimeoutSettings},
};
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinHandle};
use uuid::Uuid;

use super::{TestApp, broker::TestBroker, eventually};

/// A saga worker for a test: on the test's database, cache and topology, with no timeout
/// sweep in the test's lifetime unless [`Self::timeouts`] says otherwise.
pub struct TestWorker<'a> {
    app: &'a TestApp,
    amqp: Nodes,
    dead_letter_amqp: Nodes,
    topology: Topology,
    timeouts: TimeoutSettings,
    hooks: Hooks,
}

impl<'a> TestWorker<'a> {
    /// Replies a test worker applies at once.
    pub const CONCURRENCY: usize = 4;

    pub fn new(app: &'a TestApp, broker: &TestBroker) -> Self {
        Self::on(app, broker.args("worker"), broker.args("worker-dlq"), broker.topology.clone())
    }

    /// A worker on connections of the test's choosing (a vhost of its own, say).
    pub fn on(app: &'a TestApp, amqp: Nodes, dead_letter_amqp: Nodes, topology: Topology) -> Self {
        TestWorker { app, amqp, dead_letter_amqp, topology, timeouts: no_sweep(), hooks: Hooks::default() }
    }

    /// Consumes through `amqp` (a proxy, say).
    pub fn through(mut self, amqp: Nodes) -> Self {
        self.amqp = amqp;
        self
    }

    /// Gives a failing reply `attempts` tries in place before it goes back to the queue.
    pub fn apply_attempts(mut self, attempts: u32) -> Self {
        self.hooks.apply_attempts = attempts;
        self
    }

    /// Stops doing anything right after the first ack, as if the process died there;
    /// `died` is notified then.
    pub fn halt_after_first_ack(mut self, died: Arc<tokio::sync::Notify>) -> Self {
        self.hooks.halt_after_ack = Some(died);
        self
    }

    pub fn start(self) -> RunningWorker {
        let (stop, stopped) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(false));
        let db = self.app.db.clone().into();
        let worker = SagaWorker {
            relays: order_service::outbox::RelayWaker::start(self.app.db.clone().into()),
            db,
            amqp: self.amqp,
            dead_letter_amqp: self.dead_letter_amqp,
            topology: self.topology,
            cache: self.app.cache.clone(),
            prefetch: 8,
            concurrency: Self::CONCURRENCY,
            timeouts: self.timeouts,
            broker_up: ready.clone(),
        };
        RunningWorker { stop, task: tokio::spawn(worker.run_with(self.hooks, stopped)), ready }
    }
}

/// A sweep that never runs while a test does.
pub fn no_sweep() -> TimeoutSettings {
    TimeoutSettings { after: Duration::from_secs(3600), max_retries: 3, schedule: "0 0 0 1 1 * 2099".parse().unwrap() }
}

pub struct RunningWorker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The readiness the worker reports (true while it consumes).
    pub ready: Arc<AtomicBool>,
}

impl RunningWorker {
    /// A worker as [`TestWorker::new`] builds it.
    pub fn start(app: &TestApp, broker: &TestBroker) -> Self {
        TestWorker::new(app, broker).start()
    }

    /// Ends it at once, as a crash would: nothing it holds is handed back.
    pub fn abort(self) {
        self.task.abort();
    }

    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

/// The body of a customer service's reply.
pub fn reply(order: Uuid, answer: &str) -> String {
    json!({"orderID": order, "orderType": answer}).to_string()
}

/// Publishes `body` as the customer service's reply, confirmed.
pub async fn send_reply(broker: &TestBroker, body: &str, message_id: &str) {
    let mut publisher = broker.publisher().await;
    let message = broker.topology.customer_reply(message_id, body);
    assert_eq!(publisher.publish_one(&message).await, Ok(()));
    publisher.close().await;
}

/// (saga status, order status).
pub async fn saga_status(app: &TestApp, order: Uuid) -> (String, String) {
    sqlx::query_as("SELECT saga_status, order_status FROM orders WHERE id = $1")
        .bind(order)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// The payloads of the events of `event_type` written so far, published or not.
pub async fn events(app: &TestApp, event_type: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT payload::jsonb FROM (SELECT id, event_type, payload FROM outbox
                                     UNION ALL
                                     SELECT id, event_type, payload FROM outbox_published) AS e
          WHERE event_type = $1 ORDER BY id",
    )
    .bind(event_type)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

/// Whether the order's saga reaches `saga` within 10 s.
pub async fn settled(app: &TestApp, order: Uuid, saga: &str) -> bool {
    eventually(Duration::from_secs(10), || async { saga_status(app, order).await.0 == saga }).await
}
