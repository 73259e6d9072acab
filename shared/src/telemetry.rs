//! Logs (tracing) and metrics (Prometheus) set-up, shared by every binary.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{LogConfig, LogFormat};

/// Installs the global tracing subscriber: JSON lines on stdout (or pretty text), and,
/// when `LOKI_URL` is set, the same events pushed to Loki labelled `service` and `level`.
/// Keep the returned guard and [`LokiGuard::flush`] it at exit.
pub fn init_tracing(config: &LogConfig, service: &'static str) -> anyhow::Result<Option<LokiGuard>> {
    let filter = EnvFilter::try_new(config.filter()?).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let (loki, guard) = match &config.loki_url {
        Some(url) => {
            let (layer, controller, task) = tracing_loki::builder()
                .label("service", service)?
                .extra_field("pid", std::process::id().to_string())?
                .build_controller_url(url.clone())?;
            let gate = LokiGate::new(url.clone());
            let layer = layer.with_filter(gate.filter());
            let task = tokio::spawn(task);
            let probe = tokio::spawn(gate.probe());
            (Some(layer), Some(LokiGuard { controller, task, probe }))
        }
        None => (None, None),
    };
    let registry = tracing_subscriber::registry().with(filter).with(loki);
    match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()?,
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer()).try_init()?,
    }
    Ok(guard)
}

/// The Loki pipeline: its background task, and the probe that gates it.
pub struct LokiGuard {
    controller: tracing_loki::BackgroundTaskController,
    task: tokio::task::JoinHandle<()>,
    probe: tokio::task::JoinHandle<()>,
}

impl LokiGuard {
    /// Pushes what is queued, for at most two seconds: a Loki that does not answer
    /// must not hold the process at exit.
    pub async fn flush(self) {
        self.probe.abort();
        self.controller.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// Lines let through to Loki per probe interval; beyond, they are dropped and counted.
const LOKI_BUDGET: usize = 20_000;
const LOKI_PROBE_EVERY: Duration = Duration::from_secs(5);

/// tracing-loki never blocks the caller, but its HTTP client has no timeout: against a
/// Loki that accepts connections and never answers, its queue grows without bound. The
/// gate bounds it: events pass only while Loki answered its last `/ready` probe (2 s
/// timeout), and at most [`LOKI_BUDGET`] per probe interval. Everything kept out is
/// counted in `loki_dropped_lines_total`.
#[derive(Clone)]
struct LokiGate {
    url: url::Url,
    open: Arc<AtomicBool>,
    budget: Arc<AtomicUsize>,
}

impl LokiGate {
    fn new(url: url::Url) -> Self {
        LokiGate { url, open: Arc::new(AtomicBool::new(true)), budget: Arc::new(AtomicUsize::new(LOKI_BUDGET)) }
    }

    fn filter<S>(&self) -> impl tracing_subscriber::layer::Filter<S> + use<S> {
        let gate = self.clone();
        tracing_subscriber::filter::dynamic_filter_fn(move |meta, _| {
            if !meta.is_event() {
                return true;
            }
            let admitted = gate.open.load(Ordering::Relaxed)
                && gate.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok();
            if !admitted {
                metrics::counter!("loki_dropped_lines_total").increment(1);
            }
            admitted
        })
    }

    async fn probe(self) {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("a plain HTTP client");
        let ready = self.url.join("ready").expect("a base URL joins a path");
        loop {
            let answered = client.get(ready.clone()).send().await.is_ok_and(|r| r.status().is_success());
            if answered != self.open.swap(answered, Ordering::Relaxed) {
                // Through stdout only: the gate is shut for Loki when this matters.
                tracing::warn!(
                    loki.ready = answered,
                    "Loki availability changed; log push {}",
                    if answered { "resumed" } else { "paused" }
                );
            }
            metrics::gauge!("loki_up").set(if answered { 1.0 } else { 0.0 });
            self.budget.store(LOKI_BUDGET, Ordering::Relaxed);
            tokio::time::sleep(LOKI_PROBE_EVERY).await;
        }
    }
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

/// Creates the series a process exports at zero, so a dashboard shows 0 rather than
/// "no data" before the first event (and a scrape check finds every name).
pub fn register_metrics(process: &str) {
    // The recorder must exist before the series are created.
    let _ = metrics();
    metrics::counter!("loki_dropped_lines_total").absolute(0);
    match process {
        "api" => {
            for result in ["hit", "miss", "unsettled", "error"] {
                metrics::counter!("cache_requests_total", "result" => result).absolute(0);
            }
            for result in ["stored", "stored_evicting", "raced", "too_large"] {
                metrics::counter!("cache_fills_total", "result" => result).absolute(0);
            }
            for during in ["read", "begin"] {
                metrics::counter!("db_connections_lost_total", "during" => during).absolute(0);
            }
            for kind in ["read", "transaction"] {
                metrics::counter!("db_requests_interrupted_total", "kind" => kind).absolute(0);
            }
            for result in ["ok", "error"] {
                metrics::counter!("cache_invalidations_total", "result" => result).absolute(0);
            }
        }
        "outbox-relay" => {
            metrics::counter!("outbox_published_total").absolute(0);
            for reason in ["returned", "nacked", "timeout", "channel_closed", "send", "blocked", "connect", "db"] {
                metrics::counter!("outbox_publish_failures_total", "reason" => reason).absolute(0);
            }
            metrics::gauge!("outbox_pending").set(0.0);
            metrics::gauge!("outbox_oldest_unpublished_age_seconds").set(0.0);
            metrics::gauge!("outbox_broker_blocked").set(0.0);
        }
        "saga-worker" => {
            for outcome in ["approved", "rejected", "duplicate", "stale", "dead_lettered", "retried"] {
                metrics::counter!("saga_replies_total", "outcome" => outcome).absolute(0);
            }
            for action in ["re_requested", "canceled", "postponed"] {
                metrics::counter!("saga_timeouts_total", "action" => action).absolute(0);
            }
            for result in ["ok", "error"] {
                metrics::counter!("cache_invalidations_total", "result" => result).absolute(0);
            }
            metrics::counter!("saga_apply_failures_total").absolute(0);
            metrics::gauge!("saga_dead_letter_queue_depth").set(0.0);
            metrics::gauge!("saga_reply_queue_depth").set(0.0);
            metrics::gauge!("saga_request_queue_depth").set(0.0);
        }
        _ => {}
    }
}
