//! The `customer-simulator` binary (the demo's stand-in customer service): its own part,
//! [`CreditConfig`]:
//! - `CREDIT_LIMIT`: orders over this total are `Rejected`;
//!
//! and the amqp, log and traces parts.

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};

use super::{AmqpConfig, ConfigError, FromEnv, LogConfig, TracesConfig, Vars, parse_var, read, variables_of};

const DEFAULT_CREDIT_LIMIT: Decimal = Decimal::from_parts(1000, 0, 0, false, 0);

#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub credit: CreditConfig,
    pub amqp: AmqpConfig,
    pub log: LogConfig,
    pub traces: TracesConfig,
}

/// The simulator's own setting.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CreditConfig {
    #[serde(rename = "credit_limit", deserialize_with = "limit")]
    pub limit: Decimal,
}

impl Default for CreditConfig {
    fn default() -> Self {
        CreditConfig { limit: DEFAULT_CREDIT_LIMIT }
    }
}

impl FromEnv for SimulatorConfig {
    fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(SimulatorConfig {
            credit: read(vars)?,
            amqp: AmqpConfig::from_parts(vars)?,
            log: LogConfig::from_parts(vars)?,
            traces: TracesConfig::from_parts(vars)?,
        })
    }

    fn variables() -> Vec<String> {
        [
            variables_of::<CreditConfig>(),
            variables_of::<AmqpConfig>(),
            variables_of::<LogConfig>(),
            variables_of::<TracesConfig>(),
        ]
        .concat()
    }
}

fn limit<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    parse_var(d, "CREDIT_LIMIT", "a number such as 1000")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{amqp::QueueType, config::vars};

    #[test]
    fn simulator_reads_its_credit_limit_and_the_shared_amqp_settings() {
        let config = SimulatorConfig::from_vars(vars(&[])).unwrap();
        assert_eq!(config.credit.limit, Decimal::from(1000));
        assert_eq!(config.amqp.queue_type, QueueType::Quorum);
        let config =
            SimulatorConfig::from_vars(vars(&[("AMQP_QUEUE_TYPE", "Classic"), ("CREDIT_LIMIT", "25.5")])).unwrap();
        assert_eq!(config.amqp.queue_type, QueueType::Classic);
        assert_eq!(config.credit.limit.to_string(), "25.5");
        for (var, value) in [("CREDIT_LIMIT", "lots"), ("AMQP_QUEUE_TYPE", "stream"), ("AMQP_URL", "http://rabbit")] {
            let error = SimulatorConfig::from_vars(vars(&[(var, value)])).unwrap_err().to_string();
            assert!(error.contains(var), "{error}");
        }
        let simulator = SimulatorConfig::variables();
        for var in ["CREDIT_LIMIT", "AMQP_URL", "AMQP_QUEUE_TYPE", "LOG_FORMAT"] {
            assert!(simulator.contains(&var.to_owned()), "{var} in {simulator:?}");
        }
        assert!(!simulator.contains(&"DATABASE_URL".to_owned()));
    }
}
