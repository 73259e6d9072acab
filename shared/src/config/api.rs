//! The `api` binary: its own part, [`HttpConfig`]:
//! - `API_ADDR`: where it listens;
//! - `MAX_BODY_BYTES`: the largest request body accepted, in bytes; larger ones get 413;
//! - `SHUTDOWN_GRACE_SECS`: seconds in-flight requests get to finish after SIGTERM;
//!
//! its authentication, [`AuthConfig`]; and the database, cache, log and
//! traces parts.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

use super::{
    AuthConfig, CacheConfig, ConfigError, DatabaseConfig, FromEnv, LogConfig, TracesConfig, Vars, at_least_one,
    parse_var, read, variables_of,
};

const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8000));
const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 20;
/// The pool's size: requests served at once.
const DEFAULT_MAX_CONNECTIONS: u32 = 16;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub database: DatabaseConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
    pub traces: TracesConfig,
}

/// The api's own settings: its listener and request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    #[serde(rename = "api_addr", deserialize_with = "addr")]
    pub addr: SocketAddr,
    pub max_body_bytes: usize,
    pub shutdown_grace_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: DEFAULT_ADDR,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
        }
    }
}

impl HttpConfig {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

impl FromEnv for ApiConfig {
    fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        let http: HttpConfig = read(vars)?;
        at_least_one("MAX_BODY_BYTES", http.max_body_bytes as u64)?;
        Ok(ApiConfig {
            http,
            auth: AuthConfig::from_parts(vars)?,
            database: DatabaseConfig::from_parts(vars, DEFAULT_MAX_CONNECTIONS)?,
            cache: CacheConfig::from_parts(vars)?,
            log: LogConfig::from_parts(vars)?,
            traces: TracesConfig::from_parts(vars)?,
        })
    }

    fn variables() -> Vec<String> {
        [
            variables_of::<HttpConfig>(),
            variables_of::<AuthConfig>(),
            DatabaseConfig::variables(),
            variables_of::<CacheConfig>(),
            variables_of::<LogConfig>(),
            variables_of::<TracesConfig>(),
        ]
        .concat()
    }
}

fn addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parse_var(d, "API_ADDR", "a socket address such as 0.0.0.0:8000")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars;

    #[test]
    fn defaults_work_against_local_services() {
        let config = ApiConfig::from_vars(vars(&[])).unwrap();
        assert_eq!(config.http.addr.to_string(), "0.0.0.0:8000");
        assert_eq!(config.http.max_body_bytes, 65536);
        assert_eq!(config.http.shutdown_grace(), Duration::from_secs(20));
    }

    #[test]
    fn reads_every_variable_and_names_a_bad_one() {
        let config = ApiConfig::from_vars(vars(&[
            ("API_ADDR", "127.0.0.1:9000"),
            ("MAX_BODY_BYTES", "1024"),
            ("SHUTDOWN_GRACE_SECS", "5"),
        ]))
        .unwrap();
        assert_eq!(config.http.addr.port(), 9000);
        assert_eq!((config.http.max_body_bytes, config.http.shutdown_grace_secs), (1024, 5));
        for (var, value) in [("API_ADDR", "nowhere"), ("MAX_BODY_BYTES", "0"), ("SHUTDOWN_GRACE_SECS", "soon")] {
            let error = ApiConfig::from_vars(vars(&[(var, value)])).unwrap_err().to_string();
            assert!(error.contains(var), "{error}");
        }
    }
}
