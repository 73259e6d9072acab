//! The broker as the settings name it: one node, or the nodes of a cluster. amqprs takes
//! one host and has no recovery of its own (its issue #156), so the choice of node is
//! ours: every connection (a first one, and each after a loss) tries the nodes in a
//! random order, as RabbitMQ's clustering guide asks of clients and as Spring AMQP's
//! shuffled `addresses` and NServiceBus's transport do. The load spreads over the
//! cluster, and a node that is down costs a connection one refused attempt.

use amqprs::connection::{Connection, OpenConnectionArguments};

use super::CONNECT_TIMEOUT;

/// The nodes a connection may go to, with the same credentials, vhost, heartbeat and
/// connection name.
#[derive(Clone)]
pub struct Nodes(Vec<OpenConnectionArguments>);

impl Nodes {
    /// At least one node.
    pub fn new(nodes: Vec<OpenConnectionArguments>) -> Option<Self> {
        (!nodes.is_empty()).then_some(Nodes(nodes))
    }

    pub fn nodes(&self) -> &[OpenConnectionArguments] {
        &self.0
    }

    /// The same nodes, each changed by `change` (a test points them through a proxy).
    pub fn map(mut self, change: impl Fn(&mut OpenConnectionArguments)) -> Self {
        self.0.iter_mut().for_each(change);
        self
    }

    /// Opens a connection to the first node of a random order that takes one; the error
    /// of the last one tried otherwise. Each try gets its share of [`CONNECT_TIMEOUT`],
    /// so that a node that does not answer at all leaves time for the others.
    pub(crate) async fn open(&self) -> Result<Connection, amqprs::error::Error> {
        let mut order: Vec<&OpenConnectionArguments> = self.0.iter().collect();
        fastrand::shuffle(&mut order);
        let share = CONNECT_TIMEOUT / order.len() as u32;
        let mut last = None;
        for node in order {
            match tokio::time::timeout(share, Connection::open(node)).await {
                Ok(Ok(connection)) => return Ok(connection),
                Ok(Err(e)) => {
                    tracing::debug!(node = %address(node), error = %e, "a broker node refused the connection");
                    last = Some(e);
                }
                Err(_) => last = Some(super::connection::timed_out()),
            }
        }
        Err(last.expect("at least one node"))
    }
}

fn address(node: &OpenConnectionArguments) -> String {
    format!("{}:{}", node.get_host(), node.get_port())
}

impl From<OpenConnectionArguments> for Nodes {
    fn from(node: OpenConnectionArguments) -> Self {
        Nodes(vec![node])
    }
}

/// The addresses only: the credentials stay out of the logs.
impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(address)).finish()
    }
}
