//! `TestBroker`: the contract's topology under a unique prefix on the local RabbitMQ,
//! and a way to read back what was published.
//!
//! `make test` runs the broker tests twice: against the machine's RabbitMQ 3.10 and
//! against RabbitMQ 4 (scripts/rabbitmq4.sh), chosen by `TEST_AMQP_URL` and
//! `TEST_RABBITMQCTL` (the command that manages that node).

use std::{collections::HashMap, process::Command, sync::LazyLock};

use amqprs::{
    BasicProperties, FieldValue,
    channel::{BasicGetArguments, Channel, ExchangeDeleteArguments, QueueDeleteArguments},
    connection::Connection,
};
use order_service::amqp::{self, Publisher, QueueType, Topology};
use serde_json::Value;
use uuid::Uuid;

/// The broker under test: `TEST_AMQP_URL`, or the local RabbitMQ on its usual port.
pub static AMQP_URL: LazyLock<String> =
    LazyLock::new(|| std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()));

/// `rabbitmqctl` for the broker under test (`TEST_RABBITMQCTL`, split on spaces).
pub fn rabbitmqctl() -> Command {
    let line = std::env::var("TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let mut words = line.split_whitespace();
    let mut command = Command::new(words.next().unwrap_or("rabbitmqctl"));
    command.args(words);
    command
}

pub struct TestBroker {
    pub topology: Topology,
    /// Names the test's connections, so a test can close exactly its own.
    pub tag: String,
    connection: Connection,
    channel: Channel,
}

/// A message read back from a queue.
#[derive(Debug, Clone)]
pub struct Received {
    pub properties: BasicProperties,
    pub body: Value,
}

impl Received {
    pub fn message_id(&self) -> String {
        self.properties.message_id().cloned().unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers()?;
        let map: &HashMap<amqprs::FieldName, FieldValue> = headers.as_ref();
        map.iter().find(|(k, _)| k.to_string() == name).map(|(_, v)| match v {
            FieldValue::S(s) => s.to_string(),
            other => other.to_string(),
        })
    }
}

impl TestBroker {
    /// Quorum queues, as a deployment has them.
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// The test's topology, adjusted by `adjust` before it is declared.
    pub async fn with(adjust: impl FnOnce(&mut Topology)) -> Self {
        let tag = format!("test-{}", &Uuid::new_v4().simple().to_string()[..12]);
        let mut topology = Topology::named(&format!("{tag}."), QueueType::Quorum);
        adjust(&mut topology);
        let connection = amqp::connect(&Self::args_named(&format!("{tag}-reader"))).await.expect("RabbitMQ is up");
        let channel = connection.open_channel(None).await.unwrap();
        let version = amqp::BrokerVersion::parse(connection.server_properties().version());
        topology.declare(&channel, version).await.unwrap();
        TestBroker { topology, tag, connection, channel }
    }

    pub fn args_named(name: &str) -> amqp::Nodes {
        amqp::connection_args(&AMQP_URL, name).unwrap()
    }

    /// Connection arguments for a component under test, named after this test.
    pub fn args(&self, component: &str) -> amqp::Nodes {
        Self::args_named(&format!("{}-{component}", self.tag))
    }

    /// The major version of the broker under test.
    pub fn version(&self) -> amqp::BrokerVersion {
        amqp::BrokerVersion::parse(self.connection.server_properties().version())
    }

    /// A plain channel on the test's reading connection, for extra declarations.
    pub async fn channel(&self) -> Channel {
        self.connection.open_channel(None).await.unwrap()
    }

    pub async fn publisher(&self) -> Publisher {
        Publisher::connect(&self.args("publisher"), &self.topology).await.unwrap()
    }

    /// Messages ready on `queue` (not counting those delivered and unacked).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let mut args = amqprs::channel::QueueDeclareArguments::new(queue);
        args.passive(true);
        let (_, messages, _) = self.channel.queue_declare(args).await.unwrap().unwrap();
        messages
    }

    /// Takes every message waiting on `queue`, in order.
    pub async fn drain(&self, queue: &str) -> Vec<Received> {
        let mut received = Vec::new();
        let mut args = BasicGetArguments::new(queue);
        args.no_ack = true;
        while let Some((_, properties, content)) = self.channel.basic_get(args.clone()).await.unwrap() {
            received.push(Received { properties, body: serde_json::from_slice(&content).unwrap_or(Value::Null) });
        }
        received
    }

    /// Closes, from the broker's side, every connection whose name starts with this
    /// test's tag and `component`.
    pub fn close_connections(&self, component: &str) -> usize {
        let prefix = format!("{}-{component}", self.tag);
        let listing = rabbitmqctl()
            .args(["list_connections", "pid", "client_properties", "-q", "--no-table-headers"])
            .output()
            .expect("rabbitmqctl runs");
        let text = String::from_utf8_lossy(&listing.stdout);
        let mut closed = 0;
        for line in text.lines().filter(|line| line.contains(&format!("\"{prefix}"))) {
            let pid = line.split_whitespace().next().unwrap_or_default();
            let status = rabbitmqctl()
                .args(["close_connection", pid, "closed by a chaos test", "-q"])
                .status()
                .expect("rabbitmqctl runs");
            if status.success() {
                closed += 1;
            }
        }
        closed
    }

    /// Deletes the test's exchanges and queues.
    pub async fn cleanup(self) {
        let t = &self.topology;
        for queue in [&t.orders_queue, &t.order_saga_queue, &t.customer_saga_queue, &t.dead_letter_queue] {
            let _ = self.channel.queue_delete(QueueDeleteArguments::new(queue)).await;
        }
        for exchange in [&t.exchange, &t.dead_letter_exchange] {
            let _ = self.channel.exchange_delete(ExchangeDeleteArguments::new(exchange)).await;
        }
        let _ = self.channel.close().await;
        let _ = self.connection.close().await;
    }
}

/// A vhost of the test's own on the broker under test, deleted afterwards even when the
/// test fails: for the real binaries, which use the contract's names as in production.
pub struct OwnVhost {
    pub name: String,
    pub url: String,
}

impl OwnVhost {
    pub fn create(prefix: &str) -> Self {
        let name = format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..12]);
        for args in [&["add_vhost", &name][..], &["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]] {
            let status = rabbitmqctl().args(args).arg("-q").status().expect("rabbitmqctl runs");
            assert!(status.success(), "rabbitmqctl {args:?}");
        }
        let base = AMQP_URL.rsplit_once('/').unwrap().0;
        OwnVhost { url: format!("{base}/{name}"), name }
    }

    /// Declares the contract's topology, as the binaries would, for a tool that expects
    /// it to be there.
    pub async fn declare_contract(&self) {
        let connection = amqp::connect(&self.args("declare")).await.unwrap();
        let channel = connection.open_channel(None).await.unwrap();
        let version = amqp::BrokerVersion::parse(connection.server_properties().version());
        Topology::contract(QueueType::Quorum).declare(&channel, version).await.unwrap();
        let _ = connection.close().await;
    }

    pub fn args(&self, name: &str) -> amqp::Nodes {
        amqp::connection_args(&self.url, name).unwrap()
    }

    pub async fn depth(&self, queue: &str) -> u32 {
        amqp::queue_depth(&self.args("depth"), queue).await.unwrap()
    }
}

impl Drop for OwnVhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl().args(["delete_vhost", &self.name, "-q"]).status();
    }
}
