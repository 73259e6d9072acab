//! A publisher that only calls a message sent once the broker confirmed it.
//!
//! `basic_publish` returns `Ok` even on a dead connection, so the owner of a
//! [`Publisher`] builds a new one (connection, channel, topology) whenever
//! [`Publisher::closed`] fires or a batch was not confirmed.

use std::{collections::HashMap, time::Duration};

use amqprs::{
    Ack, BasicProperties, Cancel, CloseChannel, FieldTable, Nack, Return,
    callbacks::ChannelCallback,
    channel::{BasicPublishArguments, Channel, ConfirmSelectArguments},
};
use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use super::{CONNECT_TIMEOUT, Nodes, Topology, connection::Watched, connection::timed_out};

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
    /// A resource alarm (memory, disk) blocks every publisher of the broker.
    #[error("connection blocked by the broker: {0}")]
    Blocked(String),
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
            PublishError::Blocked(_) => "blocked",
        }
    }

    /// Whether the failure belongs to this message (the broker answered about it: a
    /// nack, a return) rather than to the broker or the connection (no answer, a closed
    /// channel, an alarm), which says nothing about the message and passes with a new
    /// connection.
    pub fn is_about_the_message(&self) -> bool {
        matches!(self, PublishError::Returned(_) | PublishError::Nacked)
    }
}

/// What the broker tells a confirm-mode channel about the messages published on it.
#[derive(Debug)]
enum Confirm {
    Ack { tag: u64, multiple: bool },
    Nack { tag: u64, multiple: bool },
    Return { message_id: Option<String>, reason: String },
}

struct ConfirmCallback {
    confirms: mpsc::UnboundedSender<Confirm>,
    closed: watch::Sender<Option<String>>,
}

// The confirms of one batch at most: the channel is bounded by what we publish.
#[async_trait]
impl ChannelCallback for ConfirmCallback {
    async fn close(&mut self, _channel: &Channel, close: CloseChannel) -> Result<(), amqprs::error::Error> {
        tracing::warn!(reason = %close, "broker closed the publishing channel");
        let _ = self.closed.send(Some(close.to_string()));
        Ok(())
    }

    async fn cancel(&mut self, _channel: &Channel, _cancel: Cancel) -> Result<(), amqprs::error::Error> {
        // Nothing consumes on a publishing channel.
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

/// A confirm-mode channel on its own connection. Dropping it closes both.
///
/// Once a batch went unconfirmed or the channel closed, the publisher is *broken*: it
/// refuses to publish (late confirms or returns could be pinned on the wrong message),
/// and its owner must connect a new one.
pub struct Publisher {
    connection: Watched,
    channel: Channel,
    confirms: mpsc::UnboundedReceiver<Confirm>,
    /// The broker's reason once it closed the channel.
    channel_closed: watch::Receiver<Option<String>>,
    /// Delivery tag of the last message published on the channel (they count from 1).
    last_tag: u64,
    broken: Option<PublishError>,
}

impl Publisher {
    /// Connects, declares the topology and switches the channel to confirm mode.
    pub async fn connect(nodes: &Nodes, topology: &Topology) -> Result<Self, amqprs::error::Error> {
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let connection = Watched::open(nodes).await?;
            let channel = connection.connection.open_channel(None).await?;
            topology.declare(&channel, connection.version()).await?;
            let (sender, confirms) = mpsc::unbounded_channel();
            let (closed, channel_closed) = watch::channel(None);
            channel.register_callback(ConfirmCallback { confirms: sender, closed }).await?;
            channel.confirm_select(ConfirmSelectArguments::default()).await?;
            Ok::<_, amqprs::error::Error>(Publisher {
                connection,
                channel,
                confirms,
                channel_closed,
                last_tag: 0,
                broken: None,
            })
        })
        .await;
        opened.map_err(|_| timed_out())?
    }

    /// Whether this publisher can still be trusted with a batch.
    pub fn is_usable(&self) -> bool {
        self.broken.is_none()
            && !self.connection.is_lost()
            && self.channel_closed.borrow().is_none()
            && self.channel.is_open()
    }

    /// Whether a resource alarm blocks the connection (publishes would wait).
    pub fn is_blocked(&self) -> bool {
        self.connection.is_blocked()
    }

    /// Resolves when the connection fails (heartbeats missed, socket closed) or the
    /// broker closes the channel.
    pub async fn closed(&self) {
        let mut lost = self.connection.lost.clone();
        let mut channel_closed = self.channel_closed.clone();
        tokio::select! {
            _ = lost.wait_for(|lost| *lost) => {}
            _ = channel_closed.wait_for(Option::is_some) => {}
        }
    }

    /// Resolves once the broker lifts its alarm on this connection, or the connection
    /// is gone (then a new one is the way on).
    pub async fn unblocked(&self) {
        self.unblocked_later().await;
    }

    /// [`Self::unblocked`] as a future that does not borrow the publisher, so that its
    /// owner can wait for it without holding the publisher.
    pub fn unblocked_later(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut blocked = self.connection.blocked.clone();
        let mut lost = self.connection.lost.clone();
        let mut channel_closed = self.channel_closed.clone();
        async move {
            tokio::select! {
                _ = blocked.wait_for(Option::is_none) => {}
                _ = lost.wait_for(|lost| *lost) => {}
                _ = channel_closed.wait_for(Option::is_some) => {}
            }
        }
    }

    /// Marks the publisher broken, for an owner that dropped a [`Self::publish_all`]
    /// before it ended: confirms still on their way could be pinned on the next batch.
    pub fn abandon(&mut self) {
        self.broken.get_or_insert(PublishError::Send("a batch was abandoned before its confirms".into()));
    }

    /// Publishes one message as [`Self::publish_all`] does, within the broker's
    /// [`CONFIRM_DEADLINE`](super::CONFIRM_DEADLINE).
    pub async fn publish_one(&mut self, message: &Outgoing) -> Result<(), PublishError> {
        let mut results = self.publish_all(std::slice::from_ref(message), super::CONFIRM_DEADLINE).await;
        results.pop().expect("one result per message")
    }

    /// Publishes every message (persistent, `mandatory`), without waiting between them,
    /// and waits for the broker's confirms; sending and confirming together take at most
    /// `deadline`. Each result says whether that message is safe: acked and not returned.
    /// A resource alarm ends the wait at once: the messages are not confirmed, and no
    /// confirm will come while it lasts.
    pub async fn publish_all(&mut self, messages: &[Outgoing], deadline: Duration) -> Vec<Result<(), PublishError>> {
        if let Some(error) = &self.broken {
            return vec![Err(error.clone()); messages.len()];
        }
        let deadline_at = tokio::time::Instant::now() + deadline;
        let mut results: Vec<Option<Result<(), PublishError>>> = vec![None; messages.len()];
        let first_tag = self.last_tag + 1;
        let mut by_message_id: HashMap<&str, usize> = HashMap::with_capacity(messages.len());
        let mut returned: HashMap<usize, String> = HashMap::new();
        let mut blocked = self.connection.blocked.clone();
        let mut channel_closed = self.channel_closed.clone();
        let mut sent = 0;
        for (index, message) in messages.iter().enumerate() {
            let mut args = BasicPublishArguments::new(&message.exchange, &message.routing_key);
            args.mandatory(true);
            // The send itself can stall (flow control, a full socket): it counts against
            // the deadline too.
            let publish = self.channel.basic_publish(properties(message), message.body.clone(), args);
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
            let confirm = tokio::select! {
                biased;
                confirm = self.confirms.recv() => confirm,
                Ok(reason) = blocked.wait_for(Option::is_some) => {
                    self.broken = Some(PublishError::Blocked(reason.clone().unwrap_or_default()));
                    break;
                }
                Ok(reason) = channel_closed.wait_for(Option::is_some) => {
                    self.broken = Some(PublishError::ChannelClosed(reason.clone().unwrap_or_default()));
                    break;
                }
                () = tokio::time::sleep_until(deadline_at) => {
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
        self.connection.close_with(&self.channel).await;
    }
}

/// Persistent JSON with the message's id, type, timestamp and string headers.
fn properties(message: &Outgoing) -> BasicProperties {
    let mut headers = FieldTable::new();
    for (key, value) in &message.headers {
        if let Ok(key) = key.as_str().try_into() {
            headers.insert(key, value.as_str().into());
        }
    }
    BasicProperties::default()
        .with_content_type("application/json")
        .with_persistence(true)
        .with_message_id(&message.message_id)
        .with_message_type(&message.message_type)
        .with_timestamp(message.timestamp)
        .with_headers(headers)
        .finish()
}
