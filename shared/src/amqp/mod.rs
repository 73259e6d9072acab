//! RabbitMQ plumbing: the URL of the settings ([`url`]), connections and what the broker
//! says about them ([`connection`]), the contract's topology ([`topology`]), a publisher
//! that only calls a message sent once the broker confirmed it ([`publisher`]), and a
//! consumer that notices when the broker stops it ([`consumer`]).
//!
//! amqprs has no reconnection of its own: the owners of a [`Publisher`] or a
//! [`Consumer`] build a new one (connection, channel, topology) whenever the old one
//! reports that it is gone.

mod connection;
mod consumer;
mod publisher;
mod topology;
mod url;

use std::time::Duration;

pub use connection::{connect, queue_depth, queue_depths};
pub use consumer::{Consumer, Delivery, Settler, Stopped};
pub use publisher::{Outgoing, PublishError, Publisher};
pub use topology::{BrokerVersion, QueueType, Topology};
pub use url::connection_args;

/// How long opening a connection (TCP, handshake, topology) may take: amqprs has no
/// timeout of its own, and heartbeats start only once the connection is open.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
