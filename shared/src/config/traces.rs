//! Spans over OTLP, read alike by every binary from OpenTelemetry's standard variables.
//! No endpoint, no exporter (and no span costs more than a log field):
//! - `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URL, e.g. `http://tempo:4318`
//!   (http/protobuf; `/v1/traces` is appended) or `http://tempo:4317` (grpc);
//! - `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` (the specification's default) or `grpc`;
//! - `OTEL_SERVICE_NAME`: the spans' `service.name`; the binary's own name when unset;
//! - `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`: the specification's samplers, and
//!   the ratio (0 to 1) of the `traceidratio` ones.

use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use super::{ConfigError, Redacted, Vars, optional_http_url, parse_var, parse_var_with, read};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TracesConfig {
    #[serde(rename = "otel_exporter_otlp_endpoint", deserialize_with = "endpoint")]
    pub endpoint: Option<Redacted<url::Url>>,
    #[serde(rename = "otel_exporter_otlp_protocol", deserialize_with = "protocol")]
    pub protocol: OtlpProtocol,
    #[serde(rename = "otel_service_name")]
    pub service_name: Option<String>,
    #[serde(rename = "otel_traces_sampler", deserialize_with = "sampler")]
    pub sampler: SamplerKind,
    #[serde(rename = "otel_traces_sampler_arg", deserialize_with = "sampler_arg")]
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

impl TracesConfig {
    pub(super) fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
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

fn endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Redacted<url::Url>>, D::Error> {
    optional_http_url(d, "OTEL_EXPORTER_OTLP_ENDPOINT", "http://tempo:4318", true)
}

fn protocol<'de, D: Deserializer<'de>>(d: D) -> Result<OtlpProtocol, D::Error> {
    parse_var(d, "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf or grpc")
}

fn sampler<'de, D: Deserializer<'de>>(d: D) -> Result<SamplerKind, D::Error> {
    parse_var(
        d,
        "OTEL_TRACES_SAMPLER",
        "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
    )
}

fn sampler_arg<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    parse_var_with(d, "OTEL_TRACES_SAMPLER_ARG", "a ratio from 0 to 1 such as 0.25", |text| {
        let ratio: f64 = text.parse().map_err(|e: std::num::ParseFloatError| e.to_string())?;
        if (0.0..=1.0).contains(&ratio) { Ok(Some(ratio)) } else { Err("out of range".to_owned()) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiConfig, FromEnv, RelayConfig, WorkerConfig, vars};

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
    }
}
