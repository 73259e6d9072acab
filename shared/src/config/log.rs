//! Logging, the same for every binary:
//! - `RUST_LOG`: tracing's own filter syntax, taken as it is; wins when set;
//! - `LOG_LEVEL`: a level, or `target=level` directives;
//! - `LOG_FORMAT`: `json` (one object a line: what Loki and Vector want) or `pretty`;
//! - `LOKI_URL`: Loki's base URL (e.g. `http://loki:3100`); unset, logs are not pushed.

use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use super::{ConfigError, Redacted, Vars, optional_http_url, parse_var, read};

/// sqlx logs PostgreSQL's NOTICEs ("relation … already exists, skipping") at info.
const DEFAULT_LEVEL: &str = "info,sqlx::postgres::notice=warn";

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    #[serde(rename = "log_level")]
    pub level: String,
    pub rust_log: Option<String>,
    #[serde(rename = "log_format", deserialize_with = "format")]
    pub format: LogFormat,
    #[serde(deserialize_with = "loki_url")]
    pub loki_url: Option<Redacted<url::Url>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line: what Loki and Vector want.
    #[default]
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: DEFAULT_LEVEL.into(), rust_log: None, format: LogFormat::default(), loki_url: None }
    }
}

impl LogConfig {
    pub(super) fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        let config: Self = read(vars)?;
        config.filter()?;
        Ok(config)
    }

    /// The tracing filter: `RUST_LOG` when set, else `LOG_LEVEL`. A bare word in
    /// `LOG_LEVEL` must be a level: tracing would take `verbose` for a target name and
    /// silently log nothing.
    pub fn filter(&self) -> Result<String, ConfigError> {
        if let Some(filter) = &self.rust_log {
            return Ok(filter.clone());
        }
        const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
        for directive in self.level.split(',').map(str::trim) {
            let level = directive.rsplit_once('=').map_or(directive, |(_, level)| level);
            if !LEVELS.iter().any(|known| known.eq_ignore_ascii_case(level)) {
                return Err(ConfigError(format!(
                    "LOG_LEVEL must be a level (error, warn, info, debug, trace, off) or target=level \
                     directives, not {:?}",
                    self.level
                )));
            }
        }
        Ok(self.level.clone())
    }
}

/// `json` or `pretty`, any case.
impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(LogFormat::Json),
            "pretty" => Ok(LogFormat::Pretty),
            _ => Err("unknown log format".to_owned()),
        }
    }
}

fn format<'de, D: Deserializer<'de>>(d: D) -> Result<LogFormat, D::Error> {
    parse_var(d, "LOG_FORMAT", "json or pretty")
}

fn loki_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Redacted<url::Url>>, D::Error> {
    optional_http_url(d, "LOKI_URL", "http://loki:3100", false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiConfig, FromEnv, vars};

    #[test]
    fn defaults_and_every_variable() {
        let config = ApiConfig::from_vars(vars(&[])).unwrap();
        assert_eq!(config.log.format, LogFormat::Json);
        let config = ApiConfig::from_vars(vars(&[("LOG_FORMAT", "pretty"), ("LOG_LEVEL", "debug")])).unwrap();
        assert_eq!(config.log.format, LogFormat::Pretty);
        assert_eq!(config.log.level, "debug");
        for (var, value) in [
            ("LOG_FORMAT", "xml"),
            ("LOG_LEVEL", "verbose"),
            ("LOG_LEVEL", "info,sqlx=loud"),
            ("LOKI_URL", "loki:3100"),
        ] {
            let error = ApiConfig::from_vars(vars(&[(var, value)])).unwrap_err().to_string();
            assert!(error.contains(var), "{error}");
        }
    }

    #[test]
    fn log_level_takes_levels_and_directives() {
        for ok in ["debug", "WARN", "info,sqlx::postgres::notice=warn", "order_service=trace"] {
            assert!(ApiConfig::from_vars(vars(&[("LOG_LEVEL", ok)])).is_ok(), "{ok}");
        }
        // RUST_LOG is tracing's own syntax, taken as it is.
        let config = ApiConfig::from_vars(vars(&[("RUST_LOG", "sqlx"), ("LOG_LEVEL", "debug")])).unwrap();
        assert_eq!(config.log.filter().unwrap(), "sqlx");
        assert_eq!(LogConfig::default().filter().unwrap(), DEFAULT_LEVEL);
    }
}
