//! `TestBroker`: the contract's topology under a unique prefix on the local RabbitMQ,
//! and a way to read back what was published.

use std::{collections::HashMap, process::Command, time::Duration};

use amqprs::{
    BasicProperties, FieldValue,
    channel::{BasicGetArguments, Channel, ExchangeDeleteArguments, QueueDeleteArguments},
    connection::{Connection, OpenConnectionArguments},
};
use order_service::amqp::{self, Publisher, QueueType, Topology};
use serde_json::Value;
use uuid::Uuid;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

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
    pub async fn new() -> Self {
        let tag = format!("test-{}", &Uuid::new_v4().simple().to_string()[..12]);
        let topology = Topology::named(&format!("{tag}."), QueueType::Classic);
        let connection = amqp::connect(&Self::args_named(&format!("{tag}-reader"))).await.expect("RabbitMQ is up");
        let channel = connection.open_channel(None).await.unwrap();
        topology.declare(&channel).await.unwrap();
        TestBroker { topology, tag, connection, channel }
    }

    pub fn args_named(name: &str) -> OpenConnectionArguments {
        amqp::connection_args(AMQP_URL, name).unwrap()
    }

    /// Connection arguments for a component under test, named after this test.
    pub fn args(&self, component: &str) -> OpenConnectionArguments {
        Self::args_named(&format!("{}-{component}", self.tag))
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
        let listing = Command::new("rabbitmqctl")
            .args(["list_connections", "pid", "client_properties", "-q", "--no-table-headers"])
            .output()
            .expect("rabbitmqctl runs");
        let text = String::from_utf8_lossy(&listing.stdout);
        let mut closed = 0;
        for line in text.lines().filter(|line| line.contains(&format!("\"{prefix}"))) {
            let pid = line.split_whitespace().next().unwrap_or_default();
            let status = Command::new("rabbitmqctl")
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

/// Polls `check` until it holds, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
