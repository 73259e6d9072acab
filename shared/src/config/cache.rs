//! The Redis read cache, read alike by the api and the worker:
//! - `REDIS_URL`;
//! - `REDIS_TIMEOUT`: the bound of each wait on Redis (`cache::Limits::timeout`);
//! - `CACHE_TTL`: how long a cached page of a user's orders lives (the worker retries a
//!   failed invalidation as long).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{ConfigError, Redacted, Vars, at_least, parse_var_with, read};
use crate::cache::{self, OrderCache};

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CacheConfig {
    #[serde(rename = "redis_url")]
    pub url: Redacted<String>,
    #[serde(rename = "redis_timeout", deserialize_with = "timeout")]
    pub timeout: Duration,
    #[serde(rename = "cache_ttl", deserialize_with = "ttl")]
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { url: Redacted(DEFAULT_URL.into()), timeout: cache::Limits::default().timeout, ttl: DEFAULT_TTL }
    }
}

impl CacheConfig {
    pub(super) fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        let config: Self = read(vars)?;
        redis::Client::open(config.url.as_str())
            .map_err(|e| ConfigError(format!("REDIS_URL is not a valid redis:// URL: {e}")))?;
        Ok(config)
    }

    /// The cache of a user's orders, under the system's key prefix.
    pub fn order_cache(&self) -> redis::RedisResult<OrderCache> {
        let limits = cache::Limits { timeout: self.timeout, ..cache::Limits::default() };
        OrderCache::with_limits(&self.url, crate::release::NAME, self.ttl, limits)
    }
}

fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_var_with(d, "REDIS_TIMEOUT", "a duration of at least 10ms such as 500ms", |text| {
        at_least(text, Duration::from_millis(10))
    })
}

fn ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_var_with(d, "CACHE_TTL", "a duration of at least 1s such as 5m", |text| {
        at_least(text, Duration::from_secs(1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiConfig, FromEnv, WorkerConfig, vars};

    #[test]
    fn defaults_and_bad_values() {
        let config = ApiConfig::from_vars(vars(&[])).unwrap();
        assert_eq!((config.cache.timeout, config.cache.ttl), (Duration::from_millis(500), Duration::from_secs(300)));
        let config = WorkerConfig::from_vars(vars(&[("REDIS_TIMEOUT", "1s"), ("CACHE_TTL", "1m")])).unwrap();
        assert_eq!((config.cache.timeout, config.cache.ttl), (Duration::from_secs(1), Duration::from_secs(60)));
        for (var, value) in [("REDIS_TIMEOUT", "1ms"), ("CACHE_TTL", "0s"), ("REDIS_URL", "http://cache")] {
            let error = WorkerConfig::from_vars(vars(&[(var, value)])).unwrap_err().to_string();
            assert!(error.contains(var), "{error}");
        }
        assert!(ApiConfig::variables().contains(&"REDIS_TIMEOUT".to_owned()));
    }
}
