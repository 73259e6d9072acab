//! RabbitMQ plumbing, in one place: connecting, the topology of the wire contract, and
//! a publisher that only calls a message sent once the broker confirmed it.
//!
//! amqprs has no reconnection of its own and `basic_publish` returns `Ok` even on a dead
//! connection, so the callers own a [`Publisher`] per connection and build a new one
//! (connection, channel, topology) whenever [`Publisher::closed`] fires or a confirm
//! does not come.

use std::{collections::HashMap, time::Duration};

use amqprs::{
    Ack, BasicProperties, Cancel, CloseChannel, FieldTable, FieldValue, Nack, Return,
    callbacks::{ChannelCallback, ConnectionCallback},
    channel::{
        BasicPublishArguments, Channel, ConfirmSelectArguments, ExchangeDeclareArguments, ExchangeType,
        QueueBindArguments, QueueDeclareArguments,
    },
    connection::{Connection, OpenConnectionArguments},
};
use async_trait::async_trait;
use percent_encoding::percent_decode_str;
use tokio::sync::{mpsc, watch};

/// Parses `amqp://user:pass@host:port/vhost?heartbeat=N`. The vhost is percent-decoded
/// (`%2f` is `/`), which amqprs's own URI parsing does not do.
pub fn connection_args(amqp_url: &str, connection_name: &str) -> Result<OpenConnectionArguments, String> {
    let url = url::Url::parse(amqp_url).map_err(|e| e.to_string())?;
    if url.scheme() != "amqp" {
        return Err(format!("scheme must be amqp, not {}", url.scheme()));
    }
    let decode = |s: &str| percent_decode_str(s).decode_utf8().map(|s| s.into_owned()).map_err(|e| e.to_string());
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("no host")?;
    let user = match url.username() {
        "" => "guest".to_owned(),
        user => decode(user)?,
    };
    let password = decode(url.password().unwrap_or("guest"))?;
    let vhost = match url.path() {
        "" | "/" => "/".to_owned(),
        path => decode(&path[1..])?,
    };
    let heartbeat = url
        .query_pairs()
        .find(|(key, _)| key == "heartbeat")
        // amqprs waits heartbeat/2 whole seconds between beats: 1 would spin.
        .map(|(_, value)| {
            value
                .parse::<u16>()
                .ok()
                .filter(|s| *s == 0 || *s >= 2)
                .ok_or(format!("heartbeat must be 0 or at least 2 seconds, not {value:?}"))
        })
        .transpose()?
        // A lost broker is noticed within two heartbeats.
        .unwrap_or(5);
    let mut args = OpenConnectionArguments::new(host, url.port().unwrap_or(5672), &user, &password);
    args.virtual_host(&vhost).heartbeat(heartbeat).connection_name(connection_name);
    Ok(args)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated, with a delivery count that survives consumer crashes.
    #[default]
    Quorum,
    Classic,
}

/// Exchange, queues and bindings of the wire contract (SPEC "Messaging"). The names are
/// fields so that tests can give each run its own.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    /// `Order.*` events (created, canceled, deleted).
    pub orders_queue: String,
    /// `Order.Saga.*`: what the customer service consumes.
    pub order_saga_queue: String,
    /// `Customer.Saga.*`: the customer service's replies.
    pub customer_saga_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub queue_type: QueueType,
}

/// Deliveries of one reply before the broker dead-letters it (quorum queues count them
/// even across consumer crashes).
pub const DELIVERY_LIMIT: i64 = 10;

impl Topology {
    /// The names of the contract.
    pub fn contract(queue_type: QueueType) -> Self {
        Self::named("", queue_type)
    }

    /// The contract's names behind a prefix, for tests that share a broker.
    pub fn named(prefix: &str, queue_type: QueueType) -> Self {
        Topology {
            exchange: format!("{prefix}Orders"),
            orders_queue: format!("{prefix}Orders"),
            order_saga_queue: format!("{prefix}OrderSaga"),
            customer_saga_queue: format!("{prefix}CustomerSaga"),
            dead_letter_exchange: format!("{prefix}CustomerSaga.dlx"),
            dead_letter_queue: format!("{prefix}CustomerSaga.dlq"),
            queue_type,
        }
    }

    /// Declares everything, idempotently, one after the other on one channel
    /// (concurrent declares can panic amqprs, issue #145).
    pub async fn declare(&self, channel: &Channel) -> Result<(), amqprs::error::Error> {
        let durable_exchange = |name: &str, kind: ExchangeType| {
            let mut args = ExchangeDeclareArguments::of_type(name, kind);
            args.durable(true);
            args
        };
        channel.exchange_declare(durable_exchange(&self.exchange, ExchangeType::Topic)).await?;
        channel.exchange_declare(durable_exchange(&self.dead_letter_exchange, ExchangeType::Fanout)).await?;

        let queue_type = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        let queue = |name: &str, extra: &[(&str, FieldValue)]| {
            let mut arguments = FieldTable::new();
            arguments.insert(field_name("x-queue-type"), queue_type.into());
            for (key, value) in extra {
                arguments.insert(field_name(key), value.clone());
            }
            QueueDeclareArguments::durable_client_named(name).arguments(arguments).finish()
        };
        channel.queue_declare(queue(&self.dead_letter_queue, &[])).await?;
        channel.queue_bind(QueueBindArguments::new(&self.dead_letter_queue, &self.dead_letter_exchange, "")).await?;

        let mut customer_saga: Vec<(&str, FieldValue)> =
            vec![("x-dead-letter-exchange", self.dead_letter_exchange.as_str().into())];
        if self.queue_type == QueueType::Quorum {
            customer_saga.push(("x-delivery-limit", FieldValue::l(DELIVERY_LIMIT)));
        }
        for (name, key, extra) in [
            (&self.orders_queue, "Order.*", &[][..]),
            (&self.order_saga_queue, "Order.Saga.*", &[][..]),
            (&self.customer_saga_queue, "Customer.Saga.*", &customer_saga[..]),
        ] {
            channel.queue_declare(queue(name, extra)).await?;
            channel.queue_bind(QueueBindArguments::new(name, &self.exchange, key)).await?;
        }
        Ok(())
    }
}

fn field_name(name: &str) -> amqprs::FieldName {
    name.try_into().expect("field names here are short ASCII literals")
}

/// A message to publish: where, what, and its AMQP properties.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: String,
    pub message_type: String,
    pub timestamp: u64,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a message was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The broker could not route it (`mandatory`, no queue bound): it went nowhere.
    #[error("unroutable: {0}")]
    Returned(String),
    /// The broker refused it.
    #[error("nacked by the broker")]
    Nacked,
    /// No confirm before the deadline; the connection is suspect.
    #[error("no confirm within {0:?}")]
    Timeout(Duration),
    /// The broker closed the channel (e.g. an exchange that does not exist).
    #[error("channel closed: {0}")]
    ChannelClosed(String),
    /// The frame could not be sent.
    #[error("send failed: {0}")]
    Send(String),
}

impl PublishError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PublishError::Returned(_) => "returned",
            PublishError::Nacked => "nacked",
            PublishError::Timeout(_) => "timeout",
            PublishError::ChannelClosed(_) => "channel_closed",
            PublishError::Send(_) => "send",
        }
    }
}

/// What the broker tells a confirm-mode channel about the messages published on it.
#[derive(Debug)]
enum Confirm {
    Ack { tag: u64, multiple: bool },
    Nack { tag: u64, multiple: bool },
    Return { message_id: Option<String>, reason: String },
    Closed(String),
}

struct ConfirmCallback {
    confirms: mpsc::UnboundedSender<Confirm>,
}

// The confirms of one batch at most: the channel is bounded by what we publish.
#[async_trait]
impl ChannelCallback for ConfirmCallback {
    async fn close(&mut self, _channel: &Channel, close: CloseChannel) -> Result<(), amqprs::error::Error> {
        tracing::warn!(reason = %close, "broker closed the channel");
        let _ = self.confirms.send(Confirm::Closed(close.to_string()));
        Ok(())
    }

    async fn cancel(&mut self, _channel: &Channel, _cancel: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }

    async fn flow(&mut self, _channel: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        tracing::warn!(active, "broker asked for flow control");
        Ok(true)
    }

    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        let _ = self.confirms.send(Confirm::Ack { tag: ack.delivery_tag(), multiple: ack.mutiple() });
    }

    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        let _ = self.confirms.send(Confirm::Nack { tag: nack.delivery_tag(), multiple: nack.multiple() });
    }

    async fn publish_return(
        &mut self,
        _channel: &Channel,
        ret: Return,
        properties: BasicProperties,
        _content: Vec<u8>,
    ) {
        let _ = self.confirms.send(Confirm::Return {
            message_id: properties.message_id().cloned(),
            reason: format!("{} {}", ret.reply_code(), ret.reply_text()),
        });
    }
}

struct ConnectionLog;

#[async_trait]
impl ConnectionCallback for ConnectionLog {
    async fn close(&mut self, _connection: &Connection, close: amqprs::Close) -> Result<(), amqprs::error::Error> {
        tracing::warn!(reason = %close, "broker closed the connection");
        Ok(())
    }

    async fn blocked(&mut self, _connection: &Connection, reason: String) {
        tracing::warn!(%reason, "broker blocked the connection");
    }

    async fn unblocked(&mut self, _connection: &Connection) {
        tracing::info!("broker unblocked the connection");
    }

    async fn secret_updated(&mut self, _connection: &Connection) {}
}

/// Opens a connection that logs what the broker says about it.
pub async fn connect(args: &OpenConnectionArguments) -> Result<Connection, amqprs::error::Error> {
    let connection = Connection::open(args).await?;
    connection.register_callback(ConnectionLog).await?;
    Ok(connection)
}

/// Messages ready on `queue`, asked of the broker on a connection of its own (a passive
/// declare), before anything consumes them.
pub async fn queue_depth(args: &OpenConnectionArguments, queue: &str) -> Result<u32, amqprs::error::Error> {
    let asked = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let connection = connect(args).await?;
        let channel = connection.open_channel(None).await?;
        let depth = ready_messages(&channel, queue).await?;
        let _ = channel.close().await;
        let _ = connection.close().await;
        Ok(depth)
    })
    .await;
    asked.map_err(|_| amqprs::error::Error::NetworkError(format!("no answer within {CONNECT_TIMEOUT:?}")))?
}

/// Messages ready on `queue` (a passive declare: it fails if the queue does not exist).
async fn ready_messages(channel: &Channel, queue: &str) -> Result<u32, amqprs::error::Error> {
    let mut declare = QueueDeclareArguments::new(queue);
    declare.passive(true);
    Ok(channel.queue_declare(declare).await?.map_or(0, |(_, messages, _)| messages))
}

/// A confirm-mode channel on its own connection. Dropping it closes both.
///
/// Once a batch went unconfirmed or the channel closed, the publisher is *broken*: it
/// refuses to publish (late confirms or returns could be pinned on the wrong message),
/// and its owner must connect a new one.
pub struct Publisher {
    connection: Connection,
    channel: Channel,
    confirms: mpsc::UnboundedReceiver<Confirm>,
    /// Delivery tag of the last message published on the channel (they count from 1).
    last_tag: u64,
    broken: Option<PublishError>,
    /// Turns true when the connection fails; watched from the moment it opened, so a
    /// failure during a batch is not missed.
    lost: watch::Receiver<bool>,
    watcher: tokio::task::JoinHandle<()>,
}

/// How long opening a connection (TCP, handshake, topology) may take: amqprs has no
/// timeout of its own, and heartbeats start only once the connection is open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Publisher {
    /// Connects, declares the topology and switches the channel to confirm mode.
    pub async fn connect(args: &OpenConnectionArguments, topology: &Topology) -> Result<Self, amqprs::error::Error> {
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let connection = connect(args).await?;
            let channel = connection.open_channel(None).await?;
            topology.declare(&channel).await?;
            let (sender, confirms) = mpsc::unbounded_channel();
            channel.register_callback(ConfirmCallback { confirms: sender }).await?;
            channel.confirm_select(ConfirmSelectArguments::default()).await?;
            Ok::<_, amqprs::error::Error>((connection, channel, confirms))
        })
        .await
        .map_err(|_| amqprs::error::Error::NetworkError(format!("no answer within {CONNECT_TIMEOUT:?}")))??;
        let (connection, channel, confirms) = opened;
        let (lost, watcher) = watch_connection(&connection);
        Ok(Publisher { connection, channel, confirms, last_tag: 0, broken: None, lost, watcher })
    }

    /// Whether this publisher can still be trusted with a batch.
    pub fn is_usable(&self) -> bool {
        self.broken.is_none() && !*self.lost.borrow() && self.connection.is_open() && self.channel.is_open()
    }

    /// Resolves when the connection fails (heartbeats missed, socket closed).
    pub async fn closed(&self) {
        let _ = self.lost.clone().wait_for(|lost| *lost).await;
    }

    /// Publishes every message (persistent, `mandatory`), without waiting between them,
    /// and waits for the broker's confirms; sending and confirming together take at most
    /// `deadline`. Each result says whether that message is safe: acked and not returned.
    pub async fn publish_all(&mut self, messages: &[Outgoing], deadline: Duration) -> Vec<Result<(), PublishError>> {
        if let Some(error) = &self.broken {
            return vec![Err(error.clone()); messages.len()];
        }
        let deadline_at = tokio::time::Instant::now() + deadline;
        let mut results: Vec<Option<Result<(), PublishError>>> = vec![None; messages.len()];
        let first_tag = self.last_tag + 1;
        let mut by_message_id: HashMap<&str, usize> = HashMap::with_capacity(messages.len());
        let mut returned: HashMap<usize, String> = HashMap::new();
        let mut sent = 0;
        for (index, message) in messages.iter().enumerate() {
            let mut headers = FieldTable::new();
            for (key, value) in &message.headers {
                if let Ok(key) = key.as_str().try_into() {
                    headers.insert(key, value.as_str().into());
                }
            }
            let properties = BasicProperties::default()
                .with_content_type("application/json")
                .with_persistence(true)
                .with_message_id(&message.message_id)
                .with_message_type(&message.message_type)
                .with_timestamp(message.timestamp)
                .with_headers(headers)
                .finish();
            let mut args = BasicPublishArguments::new(&message.exchange, &message.routing_key);
            args.mandatory(true);
            // The send itself can stall (flow control, a full socket): it counts against
            // the deadline too.
            let publish = self.channel.basic_publish(properties, message.body.clone(), args);
            let failure = match tokio::time::timeout_at(deadline_at, publish).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(PublishError::Send(e.to_string())),
                Err(_) => Some(PublishError::Timeout(deadline)),
            };
            if let Some(error) = failure {
                // Nothing after this message can be trusted to be on the wire either.
                for result in &mut results[index..] {
                    *result = Some(Err(error.clone()));
                }
                self.broken = Some(error);
                break;
            }
            self.last_tag += 1;
            by_message_id.insert(&message.message_id, index);
            sent += 1;
        }

        let mut pending = sent;
        while pending > 0 {
            let confirm = match tokio::time::timeout_at(deadline_at, self.confirms.recv()).await {
                Ok(confirm) => confirm,
                Err(_) => {
                    self.broken = Some(PublishError::Timeout(deadline));
                    break;
                }
            };
            let (tag, multiple, acked) = match confirm {
                Some(Confirm::Ack { tag, multiple }) => (tag, multiple, true),
                Some(Confirm::Nack { tag, multiple }) => (tag, multiple, false),
                Some(Confirm::Return { message_id, reason }) => {
                    // A return comes before the ack of the same message.
                    if let Some(&index) = message_id.as_deref().and_then(|id| by_message_id.get(id)) {
                        returned.insert(index, reason);
                    }
                    continue;
                }
                Some(Confirm::Closed(reason)) => {
                    self.broken = Some(PublishError::ChannelClosed(reason));
                    break;
                }
                None => {
                    self.broken = Some(PublishError::ChannelClosed("callback gone".into()));
                    break;
                }
            };
            let range = if multiple { first_tag..=tag } else { tag..=tag };
            for confirmed in range {
                let Some(index) = confirmed.checked_sub(first_tag).map(|i| i as usize) else { continue };
                let Some(slot) = results.get_mut(index).filter(|slot| slot.is_none()) else { continue };
                *slot = Some(match (acked, returned.remove(&index)) {
                    (true, None) => Ok(()),
                    (true, Some(reason)) => Err(PublishError::Returned(reason)),
                    (false, _) => Err(PublishError::Nacked),
                });
                pending -= 1;
            }
        }
        let unconfirmed = self.broken.clone().unwrap_or(PublishError::Timeout(deadline));
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(unconfirmed.clone()))).collect()
    }

    /// Closes the channel and the connection politely.
    pub async fn close(self) {
        let _ = self.channel.clone().close().await;
        let _ = self.connection.clone().close().await;
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // The watcher holds a clone of the connection; without it the connection
        // closes when the publisher goes.
        self.watcher.abort();
    }
}

/// Watches a connection from now on: the receiver turns true when it fails. The task
/// holds a clone of the connection: abort it when the owner goes.
fn watch_connection(connection: &Connection) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (lost_sender, lost) = watch::channel(false);
    let watched = connection.clone();
    let watcher = tokio::spawn(async move {
        watched.listen_network_io_failure().await;
        let _ = lost_sender.send(true);
    });
    (lost, watcher)
}

/// A message taken from a queue, to be acked or nacked by its tag.
#[derive(Debug)]
pub struct Delivery {
    pub tag: u64,
    pub redelivered: bool,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

impl Delivery {
    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id().map(String::as_str).filter(|id| !id.is_empty())
    }

    /// A string header, e.g. `traceparent`.
    pub fn header(&self, name: &str) -> Option<String> {
        let headers: &HashMap<amqprs::FieldName, FieldValue> = self.properties.headers()?.as_ref();
        headers.iter().find(|(key, _)| key.to_string() == name).and_then(|(_, value)| match value {
            FieldValue::S(text) => Some(text.to_string()),
            _ => None,
        })
    }
}

/// A manual-ack consumer of one queue on its own connection, with a prefetch (so the
/// unbounded receiver amqprs hands out holds at most that many messages).
pub struct Consumer {
    connection: Connection,
    channel: Channel,
    deliveries: mpsc::UnboundedReceiver<amqprs::channel::ConsumerMessage>,
    lost: watch::Receiver<bool>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Consumer {
    /// Connects, declares the topology and starts consuming `queue`.
    pub async fn connect(
        args: &OpenConnectionArguments,
        topology: &Topology,
        queue: &str,
        prefetch: u16,
    ) -> Result<Self, amqprs::error::Error> {
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let connection = connect(args).await?;
            let channel = connection.open_channel(None).await?;
            topology.declare(&channel).await?;
            channel.basic_qos(amqprs::channel::BasicQosArguments::new(0, prefetch, false)).await?;
            let mut consume = amqprs::channel::BasicConsumeArguments::new(queue, "");
            consume.manual_ack(true);
            let (_, deliveries) = channel.basic_consume_rx(consume.finish()).await?;
            Ok::<_, amqprs::error::Error>((connection, channel, deliveries))
        })
        .await
        .map_err(|_| amqprs::error::Error::NetworkError(format!("no answer within {CONNECT_TIMEOUT:?}")))??;
        let (connection, channel, deliveries) = opened;
        let (lost, watcher) = watch_connection(&connection);
        Ok(Consumer { connection, channel, deliveries, lost, watcher })
    }

    /// The next message; `None` once the channel or the connection is gone.
    pub async fn next(&mut self) -> Option<Delivery> {
        let mut lost = self.lost.clone();
        loop {
            let message = tokio::select! {
                message = self.deliveries.recv() => message?,
                _ = lost.wait_for(|lost| *lost) => return None,
            };
            if let (Some(deliver), Some(properties), Some(body)) =
                (message.deliver, message.basic_properties, message.content)
            {
                return Some(Delivery {
                    tag: deliver.delivery_tag(),
                    redelivered: deliver.redelivered(),
                    properties,
                    body,
                });
            }
        }
    }

    /// Messages ready on `queue`, asked of the broker (a passive declare).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, amqprs::error::Error> {
        ready_messages(&self.channel, queue).await
    }

    pub async fn ack(&self, tag: u64) -> Result<(), amqprs::error::Error> {
        self.channel.basic_ack(amqprs::channel::BasicAckArguments::new(tag, false)).await
    }

    /// Gives the message back to the queue; the broker counts the delivery.
    pub async fn requeue(&self, tag: u64) -> Result<(), amqprs::error::Error> {
        self.channel.basic_nack(amqprs::channel::BasicNackArguments::new(tag, false, true)).await
    }

    pub fn is_usable(&self) -> bool {
        !*self.lost.borrow() && self.connection.is_open() && self.channel.is_open()
    }

    /// Closes the channel (unacked messages go back to the queue) and the connection.
    pub async fn close(self) {
        let _ = self.channel.clone().close().await;
        let _ = self.connection.clone().close().await;
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_url_means_the_root_vhost() {
        let args = connection_args("amqp://guest:guest@127.0.0.1:5672/%2f", "t").unwrap();
        assert_eq!(args.get_virtual_host(), "/");
        assert_eq!(args.get_host(), "127.0.0.1");
        assert_eq!(args.get_port(), 5672);
        assert_eq!(args.get_heartbeat(), 5);
    }

    #[test]
    fn urls_are_percent_decoded() {
        let args = connection_args("amqp://us%40r:p%3Ass@rabbit/orders%2Fprod?heartbeat=10", "t").unwrap();
        assert_eq!(args.get_virtual_host(), "orders/prod");
        assert_eq!(args.get_port(), 5672);
        assert_eq!(args.get_heartbeat(), 10);
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(connection_args("http://x", "t").is_err());
        assert!(connection_args("amqp://", "t").is_err());
        assert!(connection_args("amqp://h/?heartbeat=often", "t").is_err());
        assert!(connection_args("amqp://h/?heartbeat=1", "t").is_err());
    }

    #[test]
    fn prefixed_topology_keeps_the_contract_names() {
        let t = Topology::named("t1.", QueueType::Classic);
        assert_eq!((t.exchange.as_str(), t.dead_letter_queue.as_str()), ("t1.Orders", "t1.CustomerSaga.dlq"));
        assert_eq!(Topology::contract(QueueType::Quorum).customer_saga_queue, "CustomerSaga");
    }
}
