//! Logs (tracing), spans (OTLP) and metrics (Prometheus) set-up, shared by every binary.

pub mod loki;
pub mod names;
pub mod traces;

pub use names::Process;

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterExt, Targets, dynamic_filter_fn, filter_fn},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

use crate::config::{LogConfig, LogFormat, TracesConfig};

/// What a process keeps of its telemetry to flush at exit: the Loki shipper and the
/// span exporter, when configured.
#[must_use = "flush it at exit, or the last lines and spans are lost"]
pub struct Telemetry {
    loki: Option<loki::Shipper>,
    traces: Option<traces::Exporting>,
}

impl Telemetry {
    /// Sends what is still queued (each waits a few seconds at most).
    pub async fn flush(self) {
        if let Some(traces) = self.traces {
            traces.flush().await;
        }
        if let Some(loki) = self.loki {
            loki.flush().await;
        }
    }
}

/// Installs the global tracing subscriber: JSON lines on stdout (or pretty text), and,
/// when `LOKI_URL` is set, the same JSON lines pushed to Loki labelled `service` and
/// `level` (see [`loki`]); when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the spans of this
/// crate exported over OTLP (see [`traces`]). The log level filters the log lines only:
/// spans are exported whatever `LOG_LEVEL` says. Must run inside the tokio runtime.
pub fn init_tracing(log: &LogConfig, spans: &TracesConfig, service: &'static str) -> anyhow::Result<Telemetry> {
    let lines = || EnvFilter::try_new(log.filter()?).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"));
    let (loki, shipper) = match &log.loki_url {
        Some(url) => {
            let (sink, shipper) = loki::start(url, service)?;
            let gate = sink.clone();
            let layer = json_lines()
                .with_writer(sink)
                .with_filter(lines()?.and(dynamic_filter_fn(move |meta, _| !meta.is_event() || gate.admits_event())));
            (Some(layer), Some(shipper))
        }
        None => (None, None),
    };
    let (otel, exporting) = match traces::start(spans, service)? {
        Some((exporting, tracer)) => {
            // Our spans only (not sqlx's, hyper's or the exporter's own, which would
            // trace every export), and no events: the lines are in Loki, linked by
            // trace_id. The inner spans (transaction, outbox append, publish, cache) are
            // at debug: without an exporter no layer wants them and they cost nothing.
            // The binary's own crate is named for the service (`customer-simulator`'s
            // spans have the target `customer_simulator`).
            let ours = Targets::new()
                .with_target("order_service", tracing::Level::DEBUG)
                .with_target(service.replace('-', "_"), tracing::Level::DEBUG);
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(ours.and(filter_fn(|meta| meta.is_span())));
            (Some(layer), Some(exporting))
        }
        None => (None, None),
    };
    let registry = tracing_subscriber::registry().with(otel).with(loki);
    match log.format {
        LogFormat::Json => registry.with(json_lines().with_filter(lines()?)).try_init()?,
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer().with_filter(lines()?)).try_init()?,
    }
    Ok(Telemetry { loki: shipper, traces: exporting })
}

/// One JSON object per event, the span's fields (`trace_id` among them) flattened in.
fn json_lines<S>() -> tracing_subscriber::fmt::Layer<
    S,
    tracing_subscriber::fmt::format::JsonFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer().json().flatten_event(true).with_current_span(true).with_span_list(false)
}

/// Latency buckets in seconds, so histograms aggregate across replicas.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process-wide Prometheus recorder. Installed once (a second install fails), so
/// tests that build several apps in one process share it.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .install_recorder()
                .expect("the metrics recorder is installed once, here");
            // Without upkeep, histogram samples pile up between scrapes
            // (metrics-rs/metrics#467).
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawning the upkeep thread");
            handle
        })
        .clone()
}

/// Describes every metric (the HELP lines of `/metrics`) and creates `process`'s series
/// at zero; see [`names`].
pub fn register_metrics(process: Process) {
    // The recorder must exist before the series are created.
    let _ = metrics();
    names::register(process);
}
