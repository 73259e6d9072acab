//! Opening a connection, and what the broker says about it afterwards: that it is gone
//! (closed, heartbeats missed, socket failed) or blocked by a resource alarm.
//!
//! amqprs has no reconnection of its own, and a connection whose callbacks are not
//! registered only logs what the broker says. [`Watched`] turns both kinds of news into
//! watch channels that the publisher and the consumer select on.

use amqprs::{
    callbacks::ConnectionCallback,
    channel::{Channel, QueueDeclareArguments},
    connection::Connection,
};
use async_trait::async_trait;
use tokio::sync::watch;

use super::{BrokerVersion, CLOSE_WITHIN, CONNECT_TIMEOUT, Nodes};

/// A connection with its news: `lost` turns true once it failed, `blocked` holds the
/// broker's reason while a resource alarm (memory, disk) blocks its publishes.
pub(crate) struct Watched {
    pub connection: Connection,
    pub lost: watch::Receiver<bool>,
    pub blocked: watch::Receiver<Option<String>>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Watched {
    /// Opens a connection to one of the nodes and starts listening to what the broker
    /// says about it.
    pub(super) async fn open(nodes: &Nodes) -> Result<Self, amqprs::error::Error> {
        let connection = nodes.open().await?;
        let (lost_sender, lost) = watch::channel(false);
        let (blocked_sender, blocked) = watch::channel(None);
        connection.register_callback(ConnectionNews { lost: lost_sender.clone(), blocked: blocked_sender }).await?;
        // Heartbeats missed or the socket failed: the callback above is not called then.
        let watched = connection.clone();
        let watcher = tokio::spawn(async move {
            watched.listen_network_io_failure().await;
            let _ = lost_sender.send(true);
        });
        Ok(Watched { connection, lost, blocked, watcher })
    }

    /// The broker's major version, which some queue arguments depend on.
    pub(super) fn version(&self) -> BrokerVersion {
        BrokerVersion::parse(self.connection.server_properties().version())
    }

    pub(super) fn is_lost(&self) -> bool {
        *self.lost.borrow() || !self.connection.is_open()
    }

    pub(super) fn is_blocked(&self) -> bool {
        self.blocked.borrow().is_some()
    }

    /// Closes the connection politely.
    /// Closes the connection, within [`CLOSE_WITHIN`]; past it, dropped.
    pub(super) async fn close(&self) {
        let _ = tokio::time::timeout(CLOSE_WITHIN, self.connection.clone().close()).await;
    }

    /// Closes `channel`, then the connection, each within [`CLOSE_WITHIN`].
    pub(super) async fn close_with(&self, channel: &amqprs::channel::Channel) {
        let _ = tokio::time::timeout(CLOSE_WITHIN, channel.clone().close()).await;
        self.close().await;
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // The watcher holds a clone of the connection; without it the connection
        // closes when its owner goes.
        self.watcher.abort();
    }
}

struct ConnectionNews {
    lost: watch::Sender<bool>,
    blocked: watch::Sender<Option<String>>,
}

#[async_trait]
impl ConnectionCallback for ConnectionNews {
    async fn close(&mut self, _connection: &Connection, close: amqprs::Close) -> Result<(), amqprs::error::Error> {
        tracing::warn!(reason = %close, "broker closed the connection");
        let _ = self.lost.send(true);
        Ok(())
    }

    async fn blocked(&mut self, _connection: &Connection, reason: String) {
        tracing::warn!(%reason, "broker blocked the connection (resource alarm): publishing waits");
        let _ = self.blocked.send(Some(reason));
    }

    async fn unblocked(&mut self, _connection: &Connection) {
        tracing::info!("broker unblocked the connection");
        let _ = self.blocked.send(None);
    }

    async fn secret_updated(&mut self, _connection: &Connection) {}
}

/// Opens a plain connection that logs what the broker says about it (tests, tools).
pub async fn connect(nodes: &Nodes) -> Result<Connection, amqprs::error::Error> {
    let watched = Watched::open(nodes).await?;
    Ok(watched.connection.clone())
}

/// Messages ready on `queue`, asked of the broker on a connection of its own (a passive
/// declare), before anything consumes them.
pub async fn queue_depth(nodes: &Nodes, queue: &str) -> Result<u32, amqprs::error::Error> {
    Ok(queue_depths(nodes, &[queue]).await?[0])
}

/// [`queue_depth`] of several queues, on one connection; all or an error, within
/// [`CONNECT_TIMEOUT`] (a broker that does not answer costs the caller no more).
pub async fn queue_depths(nodes: &Nodes, queues: &[&str]) -> Result<Vec<u32>, amqprs::error::Error> {
    let asked = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let connection = nodes.open().await?;
        let channel = connection.open_channel(None).await?;
        let mut depths = Vec::with_capacity(queues.len());
        for queue in queues {
            depths.push(ready_messages(&channel, queue).await?);
        }
        let _ = channel.close().await;
        let _ = connection.close().await;
        Ok(depths)
    })
    .await;
    asked.map_err(|_| timed_out())?
}

/// Messages ready on `queue` (a passive declare: it fails if the queue does not exist).
pub(crate) async fn ready_messages(channel: &Channel, queue: &str) -> Result<u32, amqprs::error::Error> {
    let mut declare = QueueDeclareArguments::new(queue);
    declare.passive(true);
    Ok(channel.queue_declare(declare).await?.map_or(0, |(_, messages, _)| messages))
}

pub(crate) fn timed_out() -> amqprs::error::Error {
    amqprs::error::Error::NetworkError(format!("no answer within {CONNECT_TIMEOUT:?}"))
}
