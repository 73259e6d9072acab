//! The `saga-worker` binary: its own part, [`SagaConfig`]:
//! - `METRICS_ADDR`: where `/metrics`, `/healthz` and `/readyz` listen;
//! - `SAGA_PREFETCH`: unacked replies the broker may hand this worker at once;
//! - `SAGA_CONCURRENCY`: replies applied at once (each in its own transaction, on its own
//!   connection), so that their commits share WAL flushes;
//! - `SAGA_TIMEOUT`: a pending order unanswered this long gets its customer check
//!   requested again;
//! - `SAGA_MAX_RETRIES`: re-requests before an unanswered order is canceled;
//! - `SAGA_TIMEOUT_SCHEDULE`: when the timeout sweep runs (cron with seconds);
//!
//! and the database, amqp, cache, log and traces parts.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

use super::{
    AmqpConfig, CacheConfig, ConfigError, DatabaseConfig, FromEnv, LogConfig, TracesConfig, Vars, at_least,
    at_least_one, parse_var, parse_var_with, read, relay::metrics_addr, variables_of,
};
use crate::saga::worker::TimeoutSettings;

const DEFAULT_METRICS_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9102));
const DEFAULT_PREFETCH: u16 = 32;
/// One reply at a time, the worker waited for each commit's WAL flush in turn: orders
/// taken for 10 s at 16 connections needed 16.7 s more for their sagas (`make bench`).
const DEFAULT_CONCURRENCY: u16 = 8;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const DEFAULT_MAX_RETRIES: u16 = 3;
const DEFAULT_TIMEOUT_SCHEDULE: &str = "*/30 * * * * *";

/// The shortest `SAGA_TIMEOUT`: shorter, and an answer on its normal way (seconds,
/// through two queues and the customer service) would be re-requested, and after
/// `SAGA_MAX_RETRIES` sweeps every pending order canceled; 0 did that within minutes.
const MIN_SAGA_TIMEOUT: Duration = Duration::from_secs(10);

/// Each reply being applied holds a connection; the timeout sweep and `/readyz` need one
/// each besides. That is also the pool's default, so raising SAGA_CONCURRENCY alone is
/// enough.
fn connections_needed(concurrency: u16) -> u32 {
    u32::from(concurrency) + 2
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub saga: SagaConfig,
    pub database: DatabaseConfig,
    pub amqp: AmqpConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
    pub traces: TracesConfig,
}

/// The worker's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SagaConfig {
    #[serde(deserialize_with = "metrics_addr")]
    pub metrics_addr: SocketAddr,
    #[serde(rename = "saga_prefetch")]
    pub prefetch: u16,
    #[serde(rename = "saga_concurrency")]
    pub concurrency: u16,
    #[serde(rename = "saga_timeout", deserialize_with = "timeout")]
    pub timeout: Duration,
    #[serde(rename = "saga_max_retries")]
    pub max_retries: u16,
    #[serde(rename = "saga_timeout_schedule", deserialize_with = "timeout_schedule")]
    pub timeout_schedule: cron::Schedule,
}

impl Default for SagaConfig {
    fn default() -> Self {
        SagaConfig {
            metrics_addr: DEFAULT_METRICS_ADDR,
            prefetch: DEFAULT_PREFETCH,
            concurrency: DEFAULT_CONCURRENCY,
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            timeout_schedule: DEFAULT_TIMEOUT_SCHEDULE.parse().expect("the default schedule parses"),
        }
    }
}

impl SagaConfig {
    /// When and how the saga timeout runs.
    pub fn timeout_settings(&self) -> TimeoutSettings {
        TimeoutSettings {
            after: self.timeout,
            max_retries: self.max_retries.into(),
            schedule: self.timeout_schedule.clone(),
        }
    }
}

impl FromEnv for WorkerConfig {
    fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        let saga: SagaConfig = read(vars)?;
        at_least_one("SAGA_PREFETCH", saga.prefetch.into())?;
        at_least_one("SAGA_CONCURRENCY", saga.concurrency.into())?;
        let needed = connections_needed(saga.concurrency);
        let database = DatabaseConfig::from_parts(vars, needed)?;
        if database.max_connections < needed {
            return Err(ConfigError(format!(
                "DB_MAX_CONNECTIONS must be at least SAGA_CONCURRENCY + 2 = {needed} (each reply being applied, the timeout sweep and the readiness probe hold a connection), not {}",
                database.max_connections
            )));
        }
        Ok(WorkerConfig {
            saga,
            database,
            amqp: AmqpConfig::from_parts(vars)?,
            cache: CacheConfig::from_parts(vars)?,
            log: LogConfig::from_parts(vars)?,
            traces: TracesConfig::from_parts(vars)?,
        })
    }

    fn variables() -> Vec<String> {
        [
            variables_of::<SagaConfig>(),
            DatabaseConfig::variables(),
            variables_of::<AmqpConfig>(),
            variables_of::<CacheConfig>(),
            variables_of::<LogConfig>(),
            variables_of::<TracesConfig>(),
        ]
        .concat()
    }
}

fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let expected = format!("a duration of at least {}s such as 10m", MIN_SAGA_TIMEOUT.as_secs());
    parse_var_with(d, "SAGA_TIMEOUT", &expected, |text| at_least(text, MIN_SAGA_TIMEOUT))
}

fn timeout_schedule<'de, D: Deserializer<'de>>(d: D) -> Result<cron::Schedule, D::Error> {
    parse_var(d, "SAGA_TIMEOUT_SCHEDULE", "a cron expression with seconds, such as \"*/30 * * * * *\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars;

    #[test]
    fn worker_defaults_and_bad_values() {
        let config = WorkerConfig::from_vars(vars(&[])).unwrap();
        assert_eq!(config.saga.metrics_addr.port(), 9102);
        assert_eq!((config.saga.prefetch, config.saga.max_retries), (32, 3));
        assert_eq!((config.saga.concurrency, config.database.max_connections), (8, 10));
        let config = WorkerConfig::from_vars(vars(&[("SAGA_CONCURRENCY", "16")])).unwrap();
        assert_eq!(config.database.max_connections, 18);
        assert_eq!(config.saga.timeout, Duration::from_secs(600));
        for (var, value) in [
            ("SAGA_PREFETCH", "0"),
            ("SAGA_PREFETCH", "lots"),
            ("SAGA_CONCURRENCY", "0"),
            // Eight replies, the sweep and the readiness probe need more than four connections.
            ("DB_MAX_CONNECTIONS", "4"),
            ("SAGA_TIMEOUT", "soon"),
            // Zero would cancel every pending order within a few sweeps.
            ("SAGA_TIMEOUT", "0"),
            ("SAGA_TIMEOUT", "0s"),
            ("SAGA_MAX_RETRIES", "-1"),
            ("SAGA_TIMEOUT_SCHEDULE", "*/5 * * * *"),
            ("AMQP_URL", "amqp://rabbit/%2f?heartbeat=0"),
        ] {
            let error = WorkerConfig::from_vars(vars(&[(var, value)])).unwrap_err().to_string();
            assert!(error.contains(var), "{error}");
        }
    }

    #[test]
    fn the_timeout_runs_with_what_was_read() {
        let config = WorkerConfig::from_vars(vars(&[("SAGA_TIMEOUT", "1m"), ("SAGA_MAX_RETRIES", "5")])).unwrap();
        let settings = config.saga.timeout_settings();
        assert_eq!((settings.after, settings.max_retries), (Duration::from_secs(60), 5));
    }
}
