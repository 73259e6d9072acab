//! The outbox relay in a test: [`TestRelay`] builds one on the test's database and
//! topology; [`settings`] are what its steps run with.

use std::sync::{Arc, atomic::AtomicBool};

use order_service::amqp::{Nodes, Publisher};
use order_service::{
    config::OutboxConfig,
    db::Db,
    outbox::relay::{Relay, RelaySettings, relay_batch},
};
use sqlx::PgPool;

use super::broker::TestBroker;

/// The deployment's defaults ([`OutboxConfig`]).
pub fn settings() -> RelaySettings {
    OutboxConfig::default().relay_settings()
}

/// Relay steps until one claims nothing; returns how many claimed something. A
/// publisher that broke (a connection the broker dropped: missed heartbeats on a loaded
/// machine) is replaced, as a relay lane replaces its own; a test that cannot drain
/// fails after 2,000 steps instead of stepping forever (CI on 6ebb267 spun 24 minutes
/// on a broken publisher).
pub async fn drain(db: &Db, publisher: &mut Publisher, broker: &TestBroker, settings: &RelaySettings) -> usize {
    for steps in 0..2_000 {
        if !publisher.is_usable() {
            *publisher = broker.publisher().await;
        }
        if relay_batch(db, publisher, &broker.topology, settings).await.unwrap().claimed == 0 {
            return steps;
        }
    }
    panic!("the outbox did not drain in 2,000 relay steps");
}

/// A relay on the test's database and topology, under its own connection name, looking
/// every second.
pub struct TestRelay {
    relay: Relay,
}

impl TestRelay {
    pub fn new(db: &PgPool, broker: &TestBroker) -> Self {
        Self::on(db, broker.args("relay"), broker.topology.clone())
    }

    /// A relay on broker nodes and a topology of the test's choosing (a cluster, say).
    pub fn on(db: &PgPool, amqp: Nodes, topology: order_service::amqp::Topology) -> Self {
        TestRelay {
            relay: Relay {
                db: db.clone().into(),
                amqp,
                topology,
                settings: settings(),
                schedule: "*/1 * * * * *".parse().unwrap(),
                broker_up: Arc::new(AtomicBool::new(false)),
            },
        }
    }

    pub fn batch_size(mut self, rows: i64) -> Self {
        self.relay.settings.batch_size = rows;
        self
    }

    pub fn confirm_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.relay.settings.confirm_timeout = timeout;
        self
    }

    /// Relays side by side in the process (the deployment's default is 2).
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.relay.settings.lanes = lanes;
        self
    }

    pub fn schedule(mut self, cron: &str) -> Self {
        self.relay.schedule = cron.parse().unwrap();
        self
    }

    /// The flag the relay's readiness is read from.
    pub fn broker_up(mut self, flag: Arc<AtomicBool>) -> Self {
        self.relay.broker_up = flag;
        self
    }

    /// Reaches PostgreSQL through `db` (a proxy, a pool set up otherwise).
    pub fn db(mut self, db: Db) -> Self {
        self.relay.db = db;
        self
    }

    /// Reaches the broker through `amqp` (a proxy, say).
    pub fn through(mut self, amqp: Nodes) -> Self {
        self.relay.amqp = amqp;
        self
    }

    pub fn build(self) -> Relay {
        self.relay
    }
}

/// Rows waiting in the outbox.
pub async fn unpublished(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(db).await.unwrap()
}
