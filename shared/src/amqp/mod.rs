//! RabbitMQ plumbing: the URL of the settings ([`url`]) and the nodes it names
//! ([`nodes`]: one, or a cluster's), connections and what the broker
//! says about them ([`connection`]), the contract's topology ([`topology`]), a publisher
//! that only calls a message sent once the broker confirmed it ([`publisher`]), and a
//! consumer that notices when the broker stops it ([`consumer`]).
//!
//! amqprs has no reconnection of its own: the owners of a [`Publisher`] or a
//! [`Consumer`] build a new one (connection, channel, topology) whenever the old one
//! reports that it is gone.

mod connection;
mod consumer;
mod nodes;
mod publisher;
mod topology;
mod url;

use std::time::Duration;

pub use connection::{connect, queue_depth, queue_depths};
pub use consumer::{Consumer, Delivery, Settler, Stopped};
pub use nodes::Nodes;
pub use publisher::{Outgoing, PublishError, Publisher};
pub use topology::{BrokerVersion, QueueType, REPLY_ROUTING_KEY, REPLY_TYPE, Topology};
pub use url::connection_args;

/// How long a publisher waits for the broker's confirm of a message (the relay's default
/// too): past it, the connection is suspect.
pub const CONFIRM_DEADLINE: Duration = Duration::from_secs(5);

/// How long closing a channel and its connection may take before they are dropped: a
/// broker that blocked a connection for a resource alarm stops reading it, and the close
/// waited for an answer for as long as the alarm lasted (a saga worker told to stop never
/// did: `broker_wide_a_worker_holding_a_poison_reply_through_an_alarm_stops_when_told`).
pub(crate) const CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// How long opening a connection (TCP, handshake, topology) may take: amqprs has no
/// timeout of its own, and heartbeats start only once the connection is open.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
