//! The `outbox-relay` binary: its own part, [`OutboxConfig`]:
//! - `METRICS_ADDR`: where `/metrics`, `/healthz` and `/readyz` listen;
//! - `RELAY_SCHEDULE`: when the relay looks at the outbox besides its wake-ups (cron with
//!   a seconds field, e.g. `*/1 * * * * *`: every second);
//! - `RELAY_BATCH_SIZE`: rows claimed per batch;
//! - `RELAY_LANES`: relays side by side in this process, each with its own connection;
//! - `OUTBOX_RETENTION`: how long published rows are kept, e.g. `7d`, `12h`;
//!
//! and the database, amqp, log and traces parts.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

use super::{
    AmqpConfig, ConfigError, DatabaseConfig, FromEnv, LogConfig, TracesConfig, Vars, at_least_one, parse_var,
    parse_var_with, read, variables_of,
};
use crate::outbox::relay::RelaySettings;

const DEFAULT_METRICS_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9101));
const DEFAULT_SCHEDULE: &str = "*/1 * * * * *";
const DEFAULT_BATCH_SIZE: u32 = 500;
/// A batch is published and confirmed inside the claim's transaction, which PostgreSQL
/// kills after 10 s idle: keep batches to what confirms in a few seconds.
const MAX_BATCH_SIZE: u32 = 5000;
const DEFAULT_LANES: u16 = 2;
/// The pool's size: what the default lanes need ([`connections_needed`]).
const DEFAULT_MAX_CONNECTIONS: u32 = DEFAULT_LANES as u32 + 2;

/// Each lane holds a connection through its batch; housekeeping (retention, VACUUM) and
/// `/readyz` need one each besides. The LISTEN connection is not pooled.
fn connections_needed(lanes: u16) -> u32 {
    u32::from(lanes) + 2
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub relay: OutboxConfig,
    pub database: DatabaseConfig,
    pub amqp: AmqpConfig,
    pub log: LogConfig,
    pub traces: TracesConfig,
}

/// The relay's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OutboxConfig {
    #[serde(deserialize_with = "metrics_addr")]
    pub metrics_addr: SocketAddr,
    #[serde(rename = "relay_schedule", deserialize_with = "schedule")]
    pub schedule: cron::Schedule,
    #[serde(rename = "relay_batch_size")]
    pub batch_size: u32,
    #[serde(rename = "relay_lanes")]
    pub lanes: u16,
    #[serde(rename = "outbox_retention", deserialize_with = "retention")]
    pub retention: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            metrics_addr: DEFAULT_METRICS_ADDR,
            schedule: DEFAULT_SCHEDULE.parse().expect("the default schedule parses"),
            batch_size: DEFAULT_BATCH_SIZE,
            lanes: DEFAULT_LANES,
            retention: crate::outbox::DEFAULT_RETENTION,
        }
    }
}

impl OutboxConfig {
    /// What the relay's steps run with; the confirm deadline is the broker's
    /// ([`crate::amqp::CONFIRM_DEADLINE`]), not a setting.
    pub fn relay_settings(&self) -> RelaySettings {
        RelaySettings {
            batch_size: self.batch_size.into(),
            confirm_timeout: crate::amqp::CONFIRM_DEADLINE,
            retention: self.retention,
            lanes: self.lanes.into(),
        }
    }
}

impl FromEnv for RelayConfig {
    fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        let relay: OutboxConfig = read(vars)?;
        at_least_one("RELAY_BATCH_SIZE", relay.batch_size.into())?;
        at_least_one("RELAY_LANES", relay.lanes.into())?;
        if relay.batch_size > MAX_BATCH_SIZE {
            return Err(ConfigError(format!("RELAY_BATCH_SIZE must be at most {MAX_BATCH_SIZE}")));
        }
        let database = DatabaseConfig::from_parts(vars, DEFAULT_MAX_CONNECTIONS)?;
        let needed = connections_needed(relay.lanes);
        if database.max_connections < needed {
            return Err(ConfigError(format!(
                "DB_MAX_CONNECTIONS must be at least RELAY_LANES + 2 = {needed} (each lane, housekeeping and the readiness probe hold a connection), not {}",
                database.max_connections
            )));
        }
        Ok(RelayConfig {
            relay,
            database,
            amqp: AmqpConfig::from_parts(vars)?,
            log: LogConfig::from_parts(vars)?,
            traces: TracesConfig::from_parts(vars)?,
        })
    }

    fn variables() -> Vec<String> {
        [
            variables_of::<OutboxConfig>(),
            DatabaseConfig::variables(),
            variables_of::<AmqpConfig>(),
            variables_of::<LogConfig>(),
            variables_of::<TracesConfig>(),
        ]
        .concat()
    }
}

/// `METRICS_ADDR`, the relay's and the worker's.
pub(super) fn metrics_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parse_var(d, "METRICS_ADDR", "a socket address such as 0.0.0.0:9101")
}

fn schedule<'de, D: Deserializer<'de>>(d: D) -> Result<cron::Schedule, D::Error> {
    parse_var(d, "RELAY_SCHEDULE", "a cron expression with seconds, such as \"*/1 * * * * *\"")
}

fn retention<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_var_with(d, "OUTBOX_RETENTION", "a duration such as 7d or 12h", humantime::parse_duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{amqp::QueueType, config::vars};

    #[test]
    fn relay_defaults_and_bad_values() {
        let config = RelayConfig::from_vars(vars(&[])).unwrap();
        assert_eq!(config.relay.metrics_addr.port(), 9101);
        assert_eq!(config.relay.batch_size, 500);
        assert_eq!(config.relay.retention, Duration::from_secs(7 * 86400));
        assert_eq!(config.amqp.queue_type, QueueType::Quorum);
        assert_eq!(config.database.max_connections, connections_needed(DEFAULT_LANES));
        let config = RelayConfig::from_vars(vars(&[
            ("RELAY_SCHEDULE", "*/5 * * * * *"),
            ("OUTBOX_RETENTION", "12h"),
            ("AMQP_QUEUE_TYPE", "classic"),
        ]))
        .unwrap();
        assert_eq!(config.relay.retention, Duration::from_secs(12 * 3600));
        assert_eq!(config.amqp.queue_type, QueueType::Classic);
        for (var, value) in [
            // A five-field Unix line has no seconds.
            ("RELAY_SCHEDULE", "* * * * *"),
            ("OUTBOX_RETENTION", "a week"),
            ("RELAY_BATCH_SIZE", "0"),
            ("RELAY_BATCH_SIZE", "100000"),
            ("RELAY_LANES", "0"),
            ("METRICS_ADDR", ":x"),
        ] {
            let error = RelayConfig::from_vars(vars(&[(var, value)])).unwrap_err().to_string();
            assert!(error.contains(var), "{error}");
        }
        // Two lanes, housekeeping and the readiness probe need more than two connections.
        let error = RelayConfig::from_vars(vars(&[("RELAY_LANES", "2"), ("DB_MAX_CONNECTIONS", "2")])).unwrap_err();
        assert!(error.to_string().contains("DB_MAX_CONNECTIONS"), "{error}");
        let error = RelayConfig::from_vars(vars(&[("RELAY_LANES", "8")])).unwrap_err();
        assert!(error.to_string().contains("DB_MAX_CONNECTIONS"), "{error}");
    }

    #[test]
    fn the_relay_runs_with_what_was_read() {
        let config = RelayConfig::from_vars(vars(&[("RELAY_BATCH_SIZE", "50"), ("RELAY_LANES", "1")])).unwrap();
        let settings = config.relay.relay_settings();
        assert_eq!((settings.batch_size, settings.lanes), (50, 1));
        assert_eq!(settings.confirm_timeout, crate::amqp::CONFIRM_DEADLINE);
        assert_eq!(settings.retention, crate::outbox::DEFAULT_RETENTION);
    }
}
