//! Configuration from the environment, read once at start-up with envy.
//!
//! Every setting has a default that works against the local services, and a bad value
//! stops the process with a message naming the variable.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, de::Error as _};

use crate::amqp::QueueType;

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

/// Settings of the `api` binary.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
    pub traces: TracesConfig,
}

/// The api's own settings: its listener and request limits.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpConfig {
    #[serde(default = "default_api_addr", deserialize_with = "api_addr")]
    pub api_addr: SocketAddr,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
}

/// Settings of the `outbox-relay` binary.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub outbox: OutboxConfig,
    pub database: DatabaseConfig,
    pub amqp: AmqpConfig,
    pub log: LogConfig,
    pub traces: TracesConfig,
}

/// The relay's own settings.
#[derive(Debug, Clone, Deserialize)]
pub struct OutboxConfig {
    #[serde(default = "default_relay_metrics_addr", deserialize_with = "metrics_addr")]
    pub metrics_addr: SocketAddr,
    /// Cron expression with a seconds field, e.g. `*/1 * * * * *` (every second).
    #[serde(default = "default_relay_schedule", deserialize_with = "relay_schedule")]
    pub relay_schedule: cron::Schedule,
    /// Rows claimed per batch.
    #[serde(default = "default_relay_batch_size")]
    pub relay_batch_size: u32,
    /// Relays side by side in this process, each with its own connection.
    #[serde(default = "default_relay_lanes")]
    pub relay_lanes: u16,
    /// How long published rows are kept, e.g. `7d`, `12h`.
    #[serde(default = "default_outbox_retention", deserialize_with = "outbox_retention")]
    pub outbox_retention: Duration,
}

/// Settings of the `saga-worker` binary.
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
pub struct SagaConfig {
    #[serde(default = "default_worker_metrics_addr", deserialize_with = "metrics_addr")]
    pub metrics_addr: SocketAddr,
    /// Unacked replies the broker may hand this worker at once.
    #[serde(default = "default_saga_prefetch")]
    pub saga_prefetch: u16,
    /// Replies applied at once (each in its own transaction, on its own connection), so
    /// that their commits share WAL flushes.
    #[serde(default = "default_saga_concurrency")]
    pub saga_concurrency: u16,
    /// A pending order unanswered this long gets its customer check requested again.
    #[serde(default = "default_saga_timeout", deserialize_with = "saga_timeout")]
    pub saga_timeout: Duration,
    /// Re-requests before an unanswered order is canceled.
    #[serde(default = "default_saga_max_retries")]
    pub saga_max_retries: u16,
    /// When the timeout sweep runs: cron with seconds.
    #[serde(default = "default_saga_timeout_schedule", deserialize_with = "saga_timeout_schedule")]
    pub saga_timeout_schedule: cron::Schedule,
}

/// Settings of the `customer-simulator` binary (the demo's stand-in customer service).
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub credit: CreditConfig,
    pub amqp: AmqpConfig,
    pub log: LogConfig,
    pub traces: TracesConfig,
}

/// The simulator's own setting.
#[derive(Debug, Clone, Deserialize)]
pub struct CreditConfig {
    /// Orders over this total are `Rejected`.
    #[serde(default = "default_credit_limit", deserialize_with = "credit_limit")]
    pub credit_limit: rust_decimal::Decimal,
}

/// PostgreSQL, read alike by every binary: `DATABASE_URL`, `DB_MAX_CONNECTIONS`, and the
/// bounds of every wait on it (`DB_ACQUIRE_TIMEOUT`, `DB_DEADLINE`, `DB_PING_TIMEOUT`,
/// `db::Limits`). The pool's default size is each binary's own (the api serves many
/// requests at once; the relay and the worker hold a connection per lane or batch).
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: Redacted<String>,
    pub max_connections: u32,
    pub limits: crate::db::Limits,
}

#[derive(Deserialize)]
struct DatabaseVars {
    #[serde(default = "default_database_url")]
    database_url: Redacted<String>,
    db_max_connections: Option<u32>,
    #[serde(default, deserialize_with = "db_acquire_timeout")]
    db_acquire_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "db_deadline")]
    db_deadline: Option<Duration>,
    #[serde(default, deserialize_with = "db_ping_timeout")]
    db_ping_timeout: Option<Duration>,
}

fn db_acquire_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    db_bound(d, "DB_ACQUIRE_TIMEOUT", "3s")
}

fn db_deadline<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    db_bound(d, "DB_DEADLINE", "5s")
}

fn db_ping_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    db_bound(d, "DB_PING_TIMEOUT", "1s")
}

/// One of `db::Limits`: at least 100 ms (less would fail healthy work under load).
fn db_bound<'de, D: Deserializer<'de>>(d: D, var: &str, example: &str) -> Result<Option<Duration>, D::Error> {
    let expected = format!("a duration of at least 100ms such as {example}");
    parse_var_with(d, var, &expected, |text| at_least(text, Duration::from_millis(100))).map(Some)
}

/// RabbitMQ, read alike by every binary that talks to it: `AMQP_URL`, `AMQP_QUEUE_TYPE`.
#[derive(Debug, Clone, Deserialize)]
pub struct AmqpConfig {
    #[serde(rename = "amqp_url", default = "default_amqp_url")]
    pub url: Redacted<String>,
    #[serde(rename = "amqp_queue_type", default, deserialize_with = "amqp_queue_type")]
    pub queue_type: QueueType,
}

/// The Redis read cache, read alike by the api and the worker: `REDIS_URL`, `CACHE_TTL`,
/// `REDIS_TIMEOUT`.
#[derive(Debug, Clone, Deserialize)]
pub struct CacheConfig {
    #[serde(rename = "redis_url", default = "default_redis_url")]
    pub url: Redacted<String>,
    /// The bound of each wait on Redis (`cache::Limits::timeout`), e.g. `500ms`.
    #[serde(rename = "redis_timeout", default = "default_redis_timeout", deserialize_with = "redis_timeout")]
    pub timeout: Duration,
    /// How long a cached page of a user's orders lives, e.g. `5m` (the worker retries a
    /// failed invalidation as long).
    #[serde(rename = "cache_ttl", default = "default_cache_ttl", deserialize_with = "cache_ttl")]
    pub ttl: Duration,
}

/// Logging settings, the same for every binary.
#[derive(Debug, Clone, Deserialize)]
pub struct LogConfig {
    /// `RUST_LOG` wins when set; else `LOG_LEVEL` (a level or a full filter).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    pub rust_log: Option<String>,
    #[serde(default, deserialize_with = "log_format")]
    pub log_format: LogFormat,
    /// Loki base URL (e.g. `http://loki:3100`); unset, logs are not pushed.
    #[serde(default, deserialize_with = "loki_url")]
    pub loki_url: Option<Redacted<url::Url>>,
}

/// Spans over OTLP, read alike by every binary from OpenTelemetry's standard variables.
/// No endpoint, no exporter (and no span costs more than a log field).
#[derive(Debug, Clone, Deserialize)]
pub struct TracesConfig {
    /// The collector's base URL, e.g. `http://tempo:4318` (http/protobuf; `/v1/traces` is
    /// appended) or `http://tempo:4317` (grpc).
    #[serde(rename = "otel_exporter_otlp_endpoint", default, deserialize_with = "otlp_endpoint")]
    pub endpoint: Option<Redacted<url::Url>>,
    #[serde(rename = "otel_exporter_otlp_protocol", default, deserialize_with = "otlp_protocol")]
    pub protocol: OtlpProtocol,
    /// The `service.name` of the spans; the binary's own name when unset.
    #[serde(rename = "otel_service_name", default)]
    pub service_name: Option<String>,
    #[serde(rename = "otel_traces_sampler", default, deserialize_with = "traces_sampler")]
    pub sampler: SamplerKind,
    /// The ratio of the `traceidratio` samplers, 0 to 1.
    #[serde(rename = "otel_traces_sampler_arg", default, deserialize_with = "traces_sampler_arg")]
    pub sampler_arg: Option<f64>,
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`: the two OTLP transports this service speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`, the specification's default.
    #[default]
    HttpProtobuf,
    /// `grpc`.
    Grpc,
}

impl FromStr for OtlpProtocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            "grpc" => Ok(OtlpProtocol::Grpc),
            // The specification's third value; not built in (it would bring serde for
            // every OTLP message).
            "http/json" => Err("http/json is not supported".to_owned()),
            _ => Err("unknown protocol".to_owned()),
        }
    }
}

/// `OTEL_TRACES_SAMPLER`, the specification's names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SamplerKind {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio,
    /// The specification's default: follow the caller's decision, sample new traces.
    #[default]
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio,
}

impl FromStr for SamplerKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text.trim() {
            "always_on" => SamplerKind::AlwaysOn,
            "always_off" => SamplerKind::AlwaysOff,
            "traceidratio" => SamplerKind::TraceIdRatio,
            "parentbased_always_on" => SamplerKind::ParentBasedAlwaysOn,
            "parentbased_always_off" => SamplerKind::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => SamplerKind::ParentBasedTraceIdRatio,
            _ => return Err("unknown sampler".to_owned()),
        })
    }
}

impl TracesConfig {
    fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        let config: Self = read(vars)?;
        let ratio_sampler = matches!(config.sampler, SamplerKind::TraceIdRatio | SamplerKind::ParentBasedTraceIdRatio);
        if config.sampler_arg.is_some() && !ratio_sampler {
            return Err(ConfigError(format!(
                "OTEL_TRACES_SAMPLER_ARG is set, but OTEL_TRACES_SAMPLER {:?} takes no argument",
                config.sampler
            )));
        }
        Ok(config)
    }

    /// The ratio a `traceidratio` sampler keeps: the argument, else all (the
    /// specification's default of 1.0).
    pub fn ratio(&self) -> f64 {
        self.sampler_arg.unwrap_or(1.0)
    }
}

/// The environment, as the readers below take it.
type Vars = [(String, String)];

/// A binary's settings: each part read from the same variables, so a part shared by
/// several binaries (database, AMQP, cache, logging) is declared and checked once.
pub trait Settings: Sized {
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

impl Settings for ApiConfig {
    fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        let http: HttpConfig = read(vars)?;
        at_least_one("MAX_BODY_BYTES", http.max_body_bytes as u64)?;
        Ok(ApiConfig {
            http,
            database: DatabaseConfig::from_parts(vars, 16)?,
            cache: CacheConfig::from_parts(vars)?,
            log: LogConfig::from_parts(vars)?,
            traces: TracesConfig::from_parts(vars)?,
        })
    }

    fn variables() -> Vec<String> {
        [
            variables_of::<HttpConfig>(),
            variables_of::<DatabaseVars>(),
            variables_of::<CacheConfig>(),
            variables_of::<LogConfig>(),
            variables_of::<TracesConfig>(),
        ]
        .concat()
    }
}

impl Settings for RelayConfig {
    fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        let outbox: OutboxConfig = read(vars)?;
        at_least_one("RELAY_BATCH_SIZE", outbox.relay_batch_size.into())?;
        at_least_one("RELAY_LANES", outbox.relay_lanes.into())?;
        // A batch is published and confirmed inside the claim's transaction, which
        // PostgreSQL kills after 10 s idle: keep batches to what confirms in a few seconds.
        if outbox.relay_batch_size > 5000 {
            return Err(ConfigError("RELAY_BATCH_SIZE must be at most 5000".into()));
        }
        let database = DatabaseConfig::from_parts(vars, 4)?;
        // Each lane holds a connection through its batch; housekeeping (retention, VACUUM)
        // and `/readyz` need one each besides. The LISTEN connection is not pooled.
        let needed = u32::from(outbox.relay_lanes) + 2;
        if database.max_connections < needed {
            return Err(ConfigError(format!(
                "DB_MAX_CONNECTIONS must be at least RELAY_LANES + 2 = {needed} (each lane, housekeeping and the readiness probe hold a connection), not {}",
                database.max_connections
            )));
        }
        Ok(RelayConfig {
            outbox,
            database,
            amqp: AmqpConfig::from_parts(vars)?,
            log: LogConfig::from_parts(vars)?,
            traces: TracesConfig::from_parts(vars)?,
        })
    }

    fn variables() -> Vec<String> {
        [
            variables_of::<OutboxConfig>(),
            variables_of::<DatabaseVars>(),
            variables_of::<AmqpConfig>(),
            variables_of::<LogConfig>(),
            variables_of::<TracesConfig>(),
        ]
        .concat()
    }
}

impl Settings for WorkerConfig {
    fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        let saga: SagaConfig = read(vars)?;
        at_least_one("SAGA_PREFETCH", saga.saga_prefetch.into())?;
        at_least_one("SAGA_CONCURRENCY", saga.saga_concurrency.into())?;
        // Each reply being applied holds a connection; the timeout sweep and `/readyz`
        // need one each besides. That is also the pool's default, so raising
        // SAGA_CONCURRENCY alone is enough.
        let needed = u32::from(saga.saga_concurrency) + 2;
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
            variables_of::<DatabaseVars>(),
            variables_of::<AmqpConfig>(),
            variables_of::<CacheConfig>(),
            variables_of::<LogConfig>(),
            variables_of::<TracesConfig>(),
        ]
        .concat()
    }
}

impl Settings for SimulatorConfig {
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

impl DatabaseConfig {
    fn from_parts(vars: &Vars, default_max_connections: u32) -> Result<Self, ConfigError> {
        let read: DatabaseVars = read(vars)?;
        let max_connections = read.db_max_connections.unwrap_or(default_max_connections);
        at_least_one("DB_MAX_CONNECTIONS", max_connections.into())?;
        let defaults = crate::db::Limits::default();
        let limits = crate::db::Limits {
            acquire: read.db_acquire_timeout.unwrap_or(defaults.acquire),
            deadline: read.db_deadline.unwrap_or(defaults.deadline),
            ping: read.db_ping_timeout.unwrap_or(defaults.ping),
        };
        Ok(DatabaseConfig { url: read.database_url, max_connections, limits })
    }
}

/// Alone, for the tools that only talk to the broker (`saga_reply`).
impl Settings for AmqpConfig {
    fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        let config: Self = read(vars)?;
        config.connection_args("check")?;
        Ok(config)
    }

    fn variables() -> Vec<String> {
        variables_of::<AmqpConfig>()
    }
}

impl AmqpConfig {
    /// The broker's address and credentials, under a connection name the management
    /// UI shows (`outbox-relay@<pid>`).
    pub fn connection_args(&self, name: &str) -> Result<amqprs::connection::OpenConnectionArguments, ConfigError> {
        crate::amqp::connection_args(&self.url, name)
            .map_err(|e| ConfigError(format!("AMQP_URL is not a valid amqp:// URL: {e}")))
    }
}

impl CacheConfig {
    fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        let config: Self = read(vars)?;
        redis::Client::open(config.url.as_str())
            .map_err(|e| ConfigError(format!("REDIS_URL is not a valid redis:// URL: {e}")))?;
        Ok(config)
    }
}

impl LogConfig {
    fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        let config: Self = read(vars)?;
        config.filter()?;
        Ok(config)
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig::from_parts(&[]).expect("every logging setting has a default")
    }
}

/// The environment variables a settings struct reads: its fields' names, upper-cased as
/// envy matches them. Asked of serde itself, so the list cannot drift from the struct;
/// the deployment checks (`tests/integration/deploy.rs`) hold Compose and the manifests
/// to it.
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line: what Loki and Vector want.
    #[default]
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

fn at_least_one(var: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError(format!("{var} must be at least 1")));
    }
    Ok(())
}

impl LogConfig {
    /// The tracing filter: `RUST_LOG` when set, else `LOG_LEVEL`. A bare word in
    /// `LOG_LEVEL` must be a level: tracing would take `verbose` for a target name and
    /// silently log nothing.
    pub fn filter(&self) -> Result<String, ConfigError> {
        if let Some(filter) = &self.rust_log {
            return Ok(filter.clone());
        }
        const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
        for directive in self.log_level.split(',').map(str::trim) {
            let level = directive.rsplit_once('=').map_or(directive, |(_, level)| level);
            if !LEVELS.iter().any(|known| known.eq_ignore_ascii_case(level)) {
                return Err(ConfigError(format!(
                    "LOG_LEVEL must be a level (error, warn, info, debug, trace, off) or target=level \
                     directives, not {:?}",
                    self.log_level
                )));
            }
        }
        Ok(self.log_level.clone())
    }
}

fn default_redis_url() -> Redacted<String> {
    Redacted("redis://127.0.0.1:6379".into())
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(5 * 60)
}

fn default_redis_timeout() -> Duration {
    crate::cache::Limits::default().timeout
}

fn redis_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_var_with(d, "REDIS_TIMEOUT", "a duration of at least 10ms such as 500ms", |text| {
        at_least(text, Duration::from_millis(10))
    })
}

fn cache_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_var_with(d, "CACHE_TTL", "a duration of at least 1s such as 5m", |text| {
        at_least(text, Duration::from_secs(1))
    })
}

fn otlp_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Redacted<url::Url>>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    url::Url::parse(text.trim())
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some())
        .map(|url| Some(Redacted(url)))
        .ok_or_else(|| {
            D::Error::custom(format!(
                "OTEL_EXPORTER_OTLP_ENDPOINT must be an http(s) URL such as http://tempo:4318, not {text:?}"
            ))
        })
}

fn otlp_protocol<'de, D: Deserializer<'de>>(d: D) -> Result<OtlpProtocol, D::Error> {
    parse_var(d, "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf or grpc")
}

fn traces_sampler<'de, D: Deserializer<'de>>(d: D) -> Result<SamplerKind, D::Error> {
    parse_var(
        d,
        "OTEL_TRACES_SAMPLER",
        "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
    )
}

fn traces_sampler_arg<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    parse_var_with(d, "OTEL_TRACES_SAMPLER_ARG", "a ratio from 0 to 1 such as 0.25", |text| {
        let ratio: f64 = text.parse().map_err(|e: std::num::ParseFloatError| e.to_string())?;
        if (0.0..=1.0).contains(&ratio) { Ok(Some(ratio)) } else { Err("out of range".to_owned()) }
    })
}

fn default_credit_limit() -> rust_decimal::Decimal {
    rust_decimal::Decimal::from(1000)
}

fn credit_limit<'de, D: Deserializer<'de>>(d: D) -> Result<rust_decimal::Decimal, D::Error> {
    parse_var(d, "CREDIT_LIMIT", "a number such as 1000")
}

fn default_worker_metrics_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9102))
}

fn default_saga_prefetch() -> u16 {
    32
}

/// One reply at a time, the worker waited for each commit's WAL flush in turn: orders
/// taken for 10 s at 16 connections needed 16.7 s more for their sagas (`make bench`).
fn default_saga_concurrency() -> u16 {
    8
}

fn default_saga_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}

fn default_saga_max_retries() -> u16 {
    3
}

fn default_saga_timeout_schedule() -> cron::Schedule {
    "*/30 * * * * *".parse().expect("the default schedule parses")
}

/// The shortest `SAGA_TIMEOUT`: shorter, and an answer on its normal way (seconds,
/// through two queues and the customer service) would be re-requested, and after
/// `SAGA_MAX_RETRIES` sweeps every pending order canceled; 0 did that within minutes.
pub(crate) const MIN_SAGA_TIMEOUT: Duration = Duration::from_secs(10);

fn saga_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let expected = format!("a duration of at least {}s such as 10m", MIN_SAGA_TIMEOUT.as_secs());
    parse_var_with(d, "SAGA_TIMEOUT", &expected, |text| at_least(text, MIN_SAGA_TIMEOUT))
}

fn saga_timeout_schedule<'de, D: Deserializer<'de>>(d: D) -> Result<cron::Schedule, D::Error> {
    parse_var(d, "SAGA_TIMEOUT_SCHEDULE", "a cron expression with seconds, such as \"*/30 * * * * *\"")
}

fn default_amqp_url() -> Redacted<String> {
    Redacted("amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn default_relay_metrics_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9101))
}

fn default_relay_schedule() -> cron::Schedule {
    "*/1 * * * * *".parse().expect("the default schedule parses")
}

fn default_relay_lanes() -> u16 {
    2
}

fn default_relay_batch_size() -> u32 {
    500
}

fn default_outbox_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn metrics_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parse_var(d, "METRICS_ADDR", "a socket address such as 0.0.0.0:9101")
}

fn relay_schedule<'de, D: Deserializer<'de>>(d: D) -> Result<cron::Schedule, D::Error> {
    parse_var(d, "RELAY_SCHEDULE", "a cron expression with seconds, such as \"*/1 * * * * *\"")
}

fn outbox_retention<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_var_with(d, "OUTBOX_RETENTION", "a duration such as 7d or 12h", humantime::parse_duration)
}

fn amqp_queue_type<'de, D: Deserializer<'de>>(d: D) -> Result<QueueType, D::Error> {
    parse_var(d, "AMQP_QUEUE_TYPE", "quorum or classic")
}

fn default_database_url() -> Redacted<String> {
    Redacted("postgres://postgres@127.0.0.1:5432/orders".into())
}

fn default_api_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8000))
}

fn default_max_body_bytes() -> usize {
    64 * 1024
}

fn default_shutdown_grace_secs() -> u64 {
    20
}

fn default_log_level() -> String {
    // sqlx logs PostgreSQL's NOTICEs ("relation … already exists, skipping") at info.
    "info,sqlx::postgres::notice=warn".into()
}

// envy names the variable only for numbers; these name it for the rest.

fn api_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parse_var(d, "API_ADDR", "a socket address such as 0.0.0.0:8000")
}

fn loki_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Redacted<url::Url>>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    url::Url::parse(text.trim())
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https"))
        .map(|url| Some(Redacted(url)))
        .ok_or_else(|| {
            D::Error::custom(format!("LOKI_URL must be an http(s) URL such as http://loki:3100, not {text:?}"))
        })
}

fn log_format<'de, D: Deserializer<'de>>(d: D) -> Result<LogFormat, D::Error> {
    parse_var(d, "LOG_FORMAT", "json or pretty")
}

/// A variable parsed by its type's `FromStr`; see [`parse_var_with`].
pub(crate) fn parse_var<'de, D, T>(d: D, var: &str, expected: &str) -> Result<T, D::Error>
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn defaults_work_against_local_services() {
        let config = ApiConfig::from_vars(vars(&[])).unwrap();
        assert_eq!(config.database.url.as_str(), "postgres://postgres@127.0.0.1:5432/orders");
        assert_eq!(config.database.max_connections, 16);
        assert_eq!(config.http.api_addr.to_string(), "0.0.0.0:8000");
        assert_eq!(config.http.max_body_bytes, 65536);
        assert_eq!(config.log.log_format, LogFormat::Json);
    }

    #[test]
    fn reads_every_variable() {
        let config = ApiConfig::from_vars(vars(&[
            ("API_ADDR", "127.0.0.1:9000"),
            ("DB_MAX_CONNECTIONS", "4"),
            ("LOG_FORMAT", "pretty"),
            ("LOG_LEVEL", "debug"),
        ]))
        .unwrap();
        assert_eq!(config.http.api_addr.port(), 9000);
        assert_eq!(config.database.max_connections, 4);
        assert_eq!(config.log.log_format, LogFormat::Pretty);
        assert_eq!(config.log.log_level, "debug");
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (var, value) in [
            ("API_ADDR", "nowhere"),
            ("DB_MAX_CONNECTIONS", "many"),
            ("DB_MAX_CONNECTIONS", "0"),
            ("MAX_BODY_BYTES", "0"),
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
    }

    #[test]
    fn relay_defaults_and_bad_values() {
        let config = RelayConfig::from_vars(vars(&[])).unwrap();
        assert_eq!(config.outbox.metrics_addr.port(), 9101);
        assert_eq!(config.outbox.relay_batch_size, 500);
        assert_eq!(config.outbox.outbox_retention, Duration::from_secs(7 * 86400));
        assert_eq!(config.amqp.queue_type, QueueType::Quorum);
        assert_eq!(config.database.max_connections, 4);
        let config = RelayConfig::from_vars(vars(&[
            ("RELAY_SCHEDULE", "*/5 * * * * *"),
            ("OUTBOX_RETENTION", "12h"),
            ("AMQP_QUEUE_TYPE", "classic"),
        ]))
        .unwrap();
        assert_eq!(config.outbox.outbox_retention, Duration::from_secs(12 * 3600));
        assert_eq!(config.amqp.queue_type, QueueType::Classic);
        for (var, value) in [
            // A five-field Unix line has no seconds.
            ("RELAY_SCHEDULE", "* * * * *"),
            ("OUTBOX_RETENTION", "a week"),
            ("AMQP_QUEUE_TYPE", "stream"),
            ("AMQP_URL", "http://rabbit"),
            // No heartbeat: a half-open connection would never be noticed.
            ("AMQP_URL", "amqp://guest:guest@rabbit/%2f?heartbeat=0"),
            ("RELAY_BATCH_SIZE", "0"),
            ("RELAY_BATCH_SIZE", "100000"),
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
        let config = RelayConfig::from_vars(vars(&[("AMQP_URL", "amqp://u:hunter2@rabbit/%2f")])).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn worker_defaults_and_bad_values() {
        let config = WorkerConfig::from_vars(vars(&[])).unwrap();
        assert_eq!(config.saga.metrics_addr.port(), 9102);
        assert_eq!((config.saga.saga_prefetch, config.saga.saga_max_retries), (32, 3));
        assert_eq!((config.saga.saga_concurrency, config.database.max_connections), (8, 10));
        let config = WorkerConfig::from_vars(vars(&[("SAGA_CONCURRENCY", "16")])).unwrap();
        assert_eq!(config.database.max_connections, 18);
        assert_eq!(config.saga.saga_timeout, Duration::from_secs(600));
        assert_eq!(config.cache.ttl, Duration::from_secs(300));
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
            ("REDIS_URL", "http://cache"),
            ("AMQP_URL", "amqp://rabbit/%2f?heartbeat=0"),
        ] {
            let error = WorkerConfig::from_vars(vars(&[(var, value)])).unwrap_err().to_string();
            assert!(error.contains(var), "{error}");
        }
    }

    #[test]
    fn every_wait_on_postgresql_and_redis_has_a_bound_with_a_default() {
        let config = ApiConfig::from_vars(vars(&[])).unwrap();
        assert_eq!(config.database.limits, crate::db::Limits::default());
        assert_eq!(config.cache.timeout, Duration::from_millis(500));
        let config = WorkerConfig::from_vars(vars(&[
            ("DB_ACQUIRE_TIMEOUT", "2s"),
            ("DB_DEADLINE", "8s"),
            ("DB_PING_TIMEOUT", "300ms"),
            ("REDIS_TIMEOUT", "1s"),
        ]))
        .unwrap();
        let limits = config.database.limits;
        assert_eq!(
            (limits.acquire, limits.deadline, limits.ping),
            (Duration::from_secs(2), Duration::from_secs(8), Duration::from_millis(300))
        );
        assert_eq!(config.cache.timeout, Duration::from_secs(1));
        for var in ["DB_ACQUIRE_TIMEOUT", "DB_DEADLINE", "DB_PING_TIMEOUT", "REDIS_TIMEOUT"] {
            let error = ApiConfig::from_vars(vars(&[(var, "1ms")])).unwrap_err().to_string();
            assert!(error.contains(var), "{error}");
            assert!(ApiConfig::variables().contains(&var.to_owned()), "{var}");
        }
    }

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
        assert_eq!(config.log.log_format, LogFormat::Pretty);
    }

    #[test]
    fn simulator_reads_its_credit_limit_and_the_shared_amqp_settings() {
        let config = SimulatorConfig::from_vars(vars(&[])).unwrap();
        assert_eq!(config.credit.credit_limit, rust_decimal::Decimal::from(1000));
        assert_eq!(config.amqp.queue_type, QueueType::Quorum);
        // `Classic` is classic, as for every other binary (the examples once read any
        // text but "classic" as quorum).
        let config =
            SimulatorConfig::from_vars(vars(&[("AMQP_QUEUE_TYPE", "Classic"), ("CREDIT_LIMIT", "25.5")])).unwrap();
        assert_eq!(config.amqp.queue_type, QueueType::Classic);
        assert_eq!(config.credit.credit_limit.to_string(), "25.5");
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

    #[test]
    fn traces_are_read_from_opentelemetrys_variables() {
        let config = ApiConfig::from_vars(vars(&[])).unwrap();
        assert!(config.traces.endpoint.is_none(), "no endpoint, no exporter");
        assert_eq!(config.traces.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(config.traces.sampler, SamplerKind::ParentBasedAlwaysOn);
        let config = WorkerConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://tempo:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "worker-7"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]))
        .unwrap();
        assert_eq!(config.traces.endpoint.as_deref().map(url::Url::as_str), Some("http://tempo:4317/"));
        assert_eq!(config.traces.protocol, OtlpProtocol::Grpc);
        assert_eq!(config.traces.service_name.as_deref(), Some("worker-7"));
        assert_eq!(config.traces.ratio(), 0.25);
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "tempo:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ] {
            let sampler = if var == "OTEL_TRACES_SAMPLER" { value } else { "traceidratio" };
            let error = RelayConfig::from_vars(vars(&[("OTEL_TRACES_SAMPLER", sampler), (var, value)]))
                .unwrap_err()
                .to_string();
            assert!(error.contains(var), "{error}");
        }
        // An argument the sampler would silently ignore is refused.
        let error = ApiConfig::from_vars(vars(&[("OTEL_TRACES_SAMPLER_ARG", "0.5")])).unwrap_err().to_string();
        assert!(error.contains("OTEL_TRACES_SAMPLER_ARG"), "{error}");
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
