//! A manual-ack consumer that notices every way the broker can stop it: the connection
//! lost, the channel closed, or the consumer cancelled (its queue deleted, a node gone).
//!
//! Without a channel callback amqprs only logs a server `basic.cancel` and keeps the
//! receiver open, so a worker whose queue was deleted and recreated waited forever on a
//! consumer that no longer existed while its readiness probe said OK.

use std::collections::HashMap;

use amqprs::{
    Ack, BasicProperties, Cancel, CloseChannel, FieldValue, Nack, Return,
    callbacks::ChannelCallback,
    channel::{
        BasicAckArguments, BasicCancelArguments, BasicConsumeArguments, BasicQosArguments, BasicRejectArguments,
        Channel, ConsumerMessage,
    },
};
use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use super::{
    CONNECT_TIMEOUT, Nodes, Outgoing, Topology,
    connection::{Watched, timed_out},
};

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

    /// A header as text (strings as they are, numbers written out), e.g. `traceparent`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers().find(|(key, _)| key == name).map(|(_, value)| value)
    }

    /// Every header that reads as text, by name.
    fn headers(&self) -> impl Iterator<Item = (String, String)> + '_ {
        let headers: Option<&HashMap<amqprs::FieldName, FieldValue>> = self.properties.headers().map(AsRef::as_ref);
        headers.into_iter().flatten().filter_map(|(key, value)| {
            let value = match value {
                FieldValue::S(text) => text.to_string(),
                FieldValue::l(n) => n.to_string(),
                FieldValue::I(n) => n.to_string(),
                FieldValue::i(n) => n.to_string(),
                _ => return None,
            };
            Some((key.to_string(), value))
        })
    }

    /// A copy of this message for `queue` (through the default exchange): the same id,
    /// type, timestamp, body and headers, less the broker's own (`x-…`, such as the
    /// delivery count).
    pub fn copy_for(&self, queue: &str) -> Outgoing {
        let headers = self.headers().filter(|(name, _)| !name.starts_with("x-")).collect();
        Outgoing {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            message_id: self.message_id().unwrap_or_default().to_owned(),
            message_type: self.properties.message_type().cloned().unwrap_or_default(),
            timestamp: self.properties.timestamp().unwrap_or_default(),
            headers,
            body: self.body.clone(),
        }
    }
}

/// Why a consumer stopped: the broker's words, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// `basic.cancel` from the broker: the queue was deleted, or its node went away.
    Cancelled,
    /// `channel.close` from the broker.
    ChannelClosed(String),
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Cancelled => f.write_str("the broker cancelled the consumer"),
            Stopped::ChannelClosed(reason) => write!(f, "the broker closed the channel: {reason}"),
        }
    }
}

struct ConsumerCallback {
    stopped: watch::Sender<Option<Stopped>>,
}

#[async_trait]
impl ChannelCallback for ConsumerCallback {
    async fn close(&mut self, _channel: &Channel, close: CloseChannel) -> Result<(), amqprs::error::Error> {
        tracing::warn!(reason = %close, "broker closed the consuming channel");
        let _ = self.stopped.send(Some(Stopped::ChannelClosed(close.to_string())));
        Ok(())
    }

    async fn cancel(&mut self, _channel: &Channel, cancel: Cancel) -> Result<(), amqprs::error::Error> {
        tracing::warn!(consumer = %cancel.consumer_tag(), "broker cancelled the consumer");
        let _ = self.stopped.send(Some(Stopped::Cancelled));
        Ok(())
    }

    async fn flow(&mut self, _channel: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _channel: &Channel, _ack: Ack) {}

    async fn publish_nack(&mut self, _channel: &Channel, _nack: Nack) {}

    async fn publish_return(&mut self, _channel: &Channel, _ret: Return, _props: BasicProperties, _body: Vec<u8>) {}
}

/// Acks or hands back deliveries of one [`Consumer`] (on its channel).
#[derive(Clone)]
pub struct Settler {
    channel: Channel,
}

impl Settler {
    pub async fn ack(&self, tag: u64) -> Result<(), amqprs::error::Error> {
        self.channel.basic_ack(BasicAckArguments::new(tag, false)).await
    }

    /// Gives the message back to the queue as a failed delivery: `basic.reject` with
    /// requeue, which every RabbitMQ version counts towards a quorum queue's delivery
    /// limit. Not `basic.nack`: from 4.3 a nack no longer counts ("Quorum queues now
    /// allow unlimited explicit message returns", 4.3.0 release notes), so a message
    /// that keeps failing would come back forever.
    pub async fn reject_for_retry(&self, tag: u64) -> Result<(), amqprs::error::Error> {
        self.channel.basic_reject(BasicRejectArguments::new(tag, true)).await
    }
}

/// A manual-ack consumer of one queue on its own connection, with a prefetch (so the
/// unbounded receiver amqprs hands out holds at most that many messages).
pub struct Consumer {
    connection: Watched,
    channel: Channel,
    deliveries: mpsc::UnboundedReceiver<ConsumerMessage>,
    stopped: watch::Receiver<Option<Stopped>>,
    tag: String,
}

impl Consumer {
    /// Connects, declares the topology and starts consuming `queue`.
    pub async fn connect(
        nodes: &Nodes,
        topology: &Topology,
        queue: &str,
        prefetch: u16,
    ) -> Result<Self, amqprs::error::Error> {
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let connection = Watched::open(nodes).await?;
            let channel = connection.connection.open_channel(None).await?;
            let (stopped_sender, stopped) = watch::channel(None);
            channel.register_callback(ConsumerCallback { stopped: stopped_sender }).await?;
            topology.declare(&channel, connection.version()).await?;
            channel.basic_qos(BasicQosArguments::new(0, prefetch, false)).await?;
            let mut consume = BasicConsumeArguments::new(queue, "");
            consume.manual_ack(true);
            let (tag, deliveries) = channel.basic_consume_rx(consume.finish()).await?;
            Ok::<_, amqprs::error::Error>(Consumer { connection, channel, deliveries, stopped, tag })
        })
        .await;
        opened.map_err(|_| timed_out())?
    }

    /// The next message; `None` once the consumer, its channel or its connection is gone.
    pub async fn next(&mut self) -> Option<Delivery> {
        let mut lost = self.connection.lost.clone();
        let mut stopped = self.stopped.clone();
        loop {
            let message = tokio::select! {
                biased;
                message = self.deliveries.recv() => message?,
                _ = lost.wait_for(|lost| *lost) => return None,
                _ = stopped.wait_for(Option::is_some) => {
                    // A cancelled consumer's channel is still open: deliveries already
                    // here are ours to apply and ack (their queue may be gone, and with
                    // it any other copy).
                    if self.stopped() != Some(Stopped::Cancelled) {
                        return None;
                    }
                    self.deliveries.try_recv().ok()?
                }
            };
            if let Some(delivery) = Self::delivery(message) {
                return Some(delivery);
            }
        }
    }

    /// Asks the broker for no more deliveries (`basic.cancel`, within [`CONNECT_TIMEOUT`])
    /// and returns those already received and not yet taken; they stay unacked, to be
    /// settled on this channel.
    pub async fn stop_consuming(&mut self) -> Vec<Delivery> {
        let cancel = self.channel.basic_cancel(BasicCancelArguments::new(&self.tag));
        if let Err(e) = tokio::time::timeout(CONNECT_TIMEOUT, cancel).await.unwrap_or_else(|_| Err(timed_out())) {
            tracing::warn!(error.cause = %e, "cannot stop consuming");
        }
        let mut buffered = Vec::new();
        while let Ok(message) = self.deliveries.try_recv() {
            buffered.extend(Self::delivery(message));
        }
        buffered
    }

    fn delivery(message: ConsumerMessage) -> Option<Delivery> {
        let (deliver, properties, body) = (message.deliver?, message.basic_properties?, message.content?);
        Some(Delivery { tag: deliver.delivery_tag(), redelivered: deliver.redelivered(), properties, body })
    }

    /// Why the broker stopped this consumer, if it did.
    pub fn stopped(&self) -> Option<Stopped> {
        self.stopped.borrow().clone()
    }

    pub async fn ack(&self, tag: u64) -> Result<(), amqprs::error::Error> {
        self.settler().ack(tag).await
    }

    /// See [`Settler::reject_for_retry`].
    pub async fn reject_for_retry(&self, tag: u64) -> Result<(), amqprs::error::Error> {
        self.settler().reject_for_retry(tag).await
    }

    /// A handle that settles this consumer's deliveries, for tasks that handle them while
    /// the consumer takes the next.
    pub fn settler(&self) -> Settler {
        Settler { channel: self.channel.clone() }
    }

    pub fn is_usable(&self) -> bool {
        !self.connection.is_lost() && self.stopped.borrow().is_none() && self.channel.is_open()
    }

    /// Closes the channel (unacked messages go back to the queue) and the connection.
    pub async fn close(self) {
        self.connection.close_with(&self.channel).await;
    }
}
