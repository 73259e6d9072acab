//! RabbitMQ, read alike by every binary that talks to it:
//! - `AMQP_URL`: `amqp://user:password@host:port/vhost`, with a heartbeat (a half-open
//!   connection is noticed only by one); the nodes of a cluster as
//!   `amqp://user:password@host1:port1,host2:port2,host3:port3/vhost`, each connection
//!   to one of them at random (`amqp/nodes.rs`);
//! - `AMQP_QUEUE_TYPE`: `quorum` (the default) or `classic`, for the queues the system
//!   declares.

use serde::{Deserialize, Deserializer};

use super::{ConfigError, FromEnv, Redacted, Vars, parse_var, read};
use crate::amqp::{QueueType, Topology};

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AmqpConfig {
    #[serde(rename = "amqp_url")]
    pub url: Redacted<String>,
    #[serde(rename = "amqp_queue_type", deserialize_with = "queue_type")]
    pub queue_type: QueueType,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig { url: Redacted(DEFAULT_URL.into()), queue_type: QueueType::default() }
    }
}

/// Alone, for the tools that only talk to the broker (`saga_reply`); the binaries read it
/// as one of their parts.
impl FromEnv for AmqpConfig {
    fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        let config: Self = read(vars)?;
        config.connection_args("check")?;
        Ok(config)
    }

    fn variables() -> Vec<String> {
        super::variables_of::<AmqpConfig>()
    }
}

impl AmqpConfig {
    /// The broker's address and credentials, under a connection name the management
    /// UI shows (`outbox-relay@<pid>`).
    pub fn connection_args(&self, name: &str) -> Result<crate::amqp::Nodes, ConfigError> {
        crate::amqp::connection_args(&self.url, name)
            .map_err(|e| ConfigError(format!("AMQP_URL is not a valid amqp:// URL: {e}")))
    }

    /// The contract's exchanges and queues, declared with this queue type.
    pub fn topology(&self) -> Topology {
        Topology::contract(self.queue_type)
    }
}

fn queue_type<'de, D: Deserializer<'de>>(d: D) -> Result<QueueType, D::Error> {
    parse_var(d, "AMQP_QUEUE_TYPE", "quorum or classic")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RelayConfig, vars};

    #[test]
    fn defaults_and_bad_values() {
        let config = AmqpConfig::from_vars(vars(&[])).unwrap();
        assert_eq!(config.queue_type, QueueType::Quorum);
        // `Classic` is classic, as for every binary (the examples once read any text but
        // "classic" as quorum).
        let config = AmqpConfig::from_vars(vars(&[("AMQP_QUEUE_TYPE", "Classic")])).unwrap();
        assert_eq!(config.queue_type, QueueType::Classic);
        for (var, value) in [
            ("AMQP_QUEUE_TYPE", "stream"),
            ("AMQP_URL", "http://rabbit"),
            // No heartbeat: a half-open connection would never be noticed.
            ("AMQP_URL", "amqp://guest:guest@rabbit/%2f?heartbeat=0"),
        ] {
            let error = RelayConfig::from_vars(vars(&[(var, value)])).unwrap_err().to_string();
            assert!(error.contains(var), "{error}");
        }
        let config = RelayConfig::from_vars(vars(&[("AMQP_URL", "amqp://u:hunter2@rabbit/%2f")])).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
