//! Configuration from the environment, read once at start-up with envy.
//!
//! Every setting has a default that works against the local services, and a bad value
//! stops the process with a message naming the variable. One part per file, each
//! opening with its defaults and listing its variables; each binary's configuration is
//! its own part plus the shared ones it needs:
//!
//! | binary | own part | shared parts |
//! |---|---|---|
//! | `api` | [`HttpConfig`], [`AuthConfig`] | database, cache, log, traces |
//! | `outbox-relay` | [`OutboxConfig`] | database, amqp, log, traces |
//! | `saga-worker` | [`SagaConfig`] | database, amqp, cache, log, traces |
//! | `customer-simulator` | [`CreditConfig`] | amqp, log, traces |
//!
//! A field is named for its variable with the part's prefix dropped
//! (`RELAY_BATCH_SIZE` is `config.relay.batch_size`): `serde(rename)` keeps the
//! variable, and the variable lists ([`FromEnv::variables`]) are asked of serde.

mod amqp;
mod api;
mod auth;
mod cache;
mod database;
mod log;
mod relay;
mod simulator;
mod traces;
mod worker;

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, de::Error as _};

pub use self::{
    amqp::AmqpConfig,
    api::{ApiConfig, HttpConfig},
    auth::AuthConfig,
    cache::CacheConfig,
    database::DatabaseConfig,
    log::{LogConfig, LogFormat},
    relay::{OutboxConfig, RelayConfig},
    simulator::{CreditConfig, SimulatorConfig},
    traces::{OtlpProtocol, SamplerKind, TracesConfig},
    worker::{SagaConfig, WorkerConfig},
};

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// A setting that may hold a password (a URL with credentials): `Debug` never prints
/// it, so a logged configuration cannot leak one; read it through `Deref`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Redacted<T>(pub T);

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> std::ops::Deref for Redacted<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// The environment, as the readers take it.
type Vars = [(String, String)];

/// A configuration read from the environment: each part read from the same variables,
/// so a part shared by several binaries (database, AMQP, cache, logging) is declared and
/// checked once.
pub trait FromEnv: Sized {
    fn from_parts(vars: &Vars) -> Result<Self, ConfigError>;

    /// Every variable the binary reads: the names its parts ask serde for.
    fn variables() -> Vec<String>;

    fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        Self::from_parts(&vars.into_iter().collect::<Vec<_>>())
    }

    fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }
}

/// One part, read by envy; its checks are the part's own.
fn read<T: serde::de::DeserializeOwned>(vars: &Vars) -> Result<T, ConfigError> {
    envy::from_iter(vars.iter().cloned()).map_err(|e| ConfigError(e.to_string()))
}

/// The environment variables a part reads: its fields' names, upper-cased as envy
/// matches them. Asked of serde itself, so the list cannot drift from the struct; the
/// deployment checks (`tests/integration/deploy.rs`) hold Compose and the manifests to it.
fn variables_of<T: serde::de::DeserializeOwned>() -> Vec<String> {
    let mut fields = Vec::new();
    let _ = T::deserialize(FieldNames(&mut fields));
    fields.iter().map(|field| field.to_ascii_uppercase()).collect()
}

/// A deserializer that answers nothing, but notes the fields a struct asks for.
struct FieldNames<'a>(&'a mut Vec<&'static str>);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = FieldError;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(FieldError::custom("only a struct's fields are read"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.extend_from_slice(fields);
        Err(FieldError::custom("fields noted"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

type FieldError = serde::de::value::Error;

// envy names the variable only for numbers; the parsers below name it for the rest.

/// A variable parsed by its type's `FromStr`; see [`parse_var_with`].
fn parse_var<'de, D, T>(d: D, var: &str, expected: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    parse_var_with(d, var, expected, str::parse)
}

/// The one way a variable is parsed: its text, trimmed, through `parse`; an error names
/// the variable, says what was expected and what was given, and keeps the parser's own
/// reason.
fn parse_var_with<'de, D, T, E>(
    d: D,
    var: &str,
    expected: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    E: fmt::Display,
{
    let text = String::deserialize(d)?;
    parse(text.trim()).map_err(|e| D::Error::custom(format!("{var} must be {expected}, not {text:?}: {e}")))
}

/// An optional http(s) URL (`LOKI_URL`, `OTEL_EXPORTER_OTLP_ENDPOINT`): empty is unset.
fn optional_http_url<'de, D: Deserializer<'de>>(
    d: D,
    var: &str,
    example: &str,
    need_host: bool,
) -> Result<Option<Redacted<url::Url>>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    url::Url::parse(text.trim())
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https") && (!need_host || url.host_str().is_some()))
        .map(|url| Some(Redacted(url)))
        .ok_or_else(|| D::Error::custom(format!("{var} must be an http(s) URL such as {example}, not {text:?}")))
}

/// A duration of at least `minimum`.
fn at_least(text: &str, minimum: Duration) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration < minimum {
        return Err(format!(
            "{} is shorter than {}",
            humantime::format_duration(duration),
            humantime::format_duration(minimum)
        ));
    }
    Ok(duration)
}

fn at_least_one(var: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError(format!("{var} must be at least 1")));
    }
    Ok(())
}

/// The environment of a test: pairs of names and values.
#[cfg(test)]
fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_binary_names_the_variables_it_reads() {
        let api = ApiConfig::variables();
        for var in ["DATABASE_URL", "API_ADDR", "REDIS_URL", "CACHE_TTL", "LOG_LEVEL", "RUST_LOG", "LOKI_URL"] {
            assert!(api.contains(&var.to_owned()), "{var} in {api:?}");
        }
        assert!(!api.contains(&"AMQP_URL".to_owned()));
        let relay = RelayConfig::variables();
        assert!(relay.contains(&"RELAY_LANES".to_owned()) && relay.contains(&"LOG_FORMAT".to_owned()));
        assert!(!relay.contains(&"REDIS_URL".to_owned()));
        let worker = WorkerConfig::variables();
        assert!(worker.contains(&"SAGA_TIMEOUT".to_owned()) && worker.contains(&"REDIS_URL".to_owned()));
        assert!(!worker.iter().any(|v| v == "LOG"), "the logging settings' own names, not the field holding them");
        // Logging settings still come from the same variables.
        let config = WorkerConfig::from_vars(vars(&[("LOG_FORMAT", "pretty")])).unwrap();
        assert_eq!(config.log.format, LogFormat::Pretty);
        for binary in
            [ApiConfig::variables(), RelayConfig::variables(), WorkerConfig::variables(), SimulatorConfig::variables()]
        {
            assert!(binary.contains(&"OTEL_EXPORTER_OTLP_ENDPOINT".to_owned()), "{binary:?}");
        }
    }

    #[test]
    fn debug_output_hides_every_url_with_credentials() {
        let secret = [
            ("DATABASE_URL", "postgres://u:hunter2@db/x"),
            ("AMQP_URL", "amqp://u:hunter2@rabbit/%2f"),
            ("REDIS_URL", "redis://:hunter2@cache:6379"),
            ("LOKI_URL", "http://u:hunter2@loki:3100"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://u:hunter2@otlp.example.com"),
        ];
        let api = ApiConfig::from_vars(vars(&secret)).unwrap();
        let relay = RelayConfig::from_vars(vars(&secret)).unwrap();
        let worker = WorkerConfig::from_vars(vars(&secret)).unwrap();
        for printed in [format!("{api:?}"), format!("{relay:?}"), format!("{worker:?}")] {
            assert!(!printed.contains("hunter2"), "{printed}");
            // Derived: every other field is printed, none forgotten.
            assert!(printed.contains("max_connections"), "{printed}");
        }
        assert!(format!("{worker:?}").contains("ttl"));
        assert_eq!(api.database.url.as_str(), "postgres://u:hunter2@db/x");
    }
}
