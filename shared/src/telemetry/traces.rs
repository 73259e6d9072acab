//! Spans over OTLP (`OTEL_EXPORTER_OTLP_ENDPOINT`), to Tempo or any collector.
//!
//! `tracing` spans become OpenTelemetry spans (tracing-opentelemetry); this module
//! exports them. Two choices, both measured against what the SDK offers:
//!
//! - **Our own batch processor, on the tokio runtime.** The SDK's `BatchSpanProcessor`
//!   exports from a thread of its own, where an async exporter (tonic, or an async HTTP
//!   client) finds no reactor: the first export panics and every later span is lost
//!   silently. Its queue is bounded, but what it drops is only logged, once. Here spans
//!   go into a bounded channel (`try_send`, never a wait: a collector that is down or
//!   slow costs a request nothing) and a task on the runtime exports them in batches;
//!   every span that does not arrive is counted in `otel_spans_dropped_total{reason}`.
//! - **Our own HTTP client for http/protobuf.** opentelemetry-http's reqwest is 0.13, a
//!   second copy of the HTTP and TLS stack; [`ReqwestClient`] lends the exporter the
//!   reqwest 0.12 the service already has, with a timeout.

use std::{borrow::Cow, time::Duration};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor},
};
use tokio::sync::{mpsc, oneshot};

use super::names;
use crate::config::{OtlpProtocol, SamplerKind, TracesConfig};

/// Spans held while the collector is slow or away: about 2 MiB at the ~1 KiB a span
/// takes here; past it new spans are dropped (and counted), never waited for.
const QUEUE_SPANS: usize = 2048;
/// Spans per export request.
const BATCH_SPANS: usize = 512;
/// How long a span may wait for a batch to fill.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// One export, retries included; then its spans are counted lost.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Exporting::flush`] waits at exit: a collector that is away must not hold
/// a stopping process past its orchestrator's patience.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The span pipeline of a process: keep it, and [`Exporting::flush`] it at exit.
pub struct Exporting {
    provider: SdkTracerProvider,
    flush: mpsc::Sender<oneshot::Sender<()>>,
}

impl Exporting {
    /// Exports what is queued (waiting up to 2 s), then shuts the provider down.
    pub async fn flush(self) {
        let (done, exported) = oneshot::channel();
        if self.flush.send(done).await.is_ok() {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, exported).await;
        }
        let _ = self.provider.shutdown();
    }
}

/// Builds the exporter, the processor and the provider for `service`; `None` without
/// an endpoint. Must run inside the tokio runtime (the export task and tonic's channel
/// live there). Returns the tracer spans are recorded with.
pub(crate) fn start(
    config: &TracesConfig,
    service: &'static str,
) -> anyhow::Result<Option<(Exporting, opentelemetry_sdk::trace::Tracer)>> {
    let Some(endpoint) = &config.endpoint else { return Ok(None) };
    let name: Cow<'static, str> = config.service_name.clone().map_or(Cow::Borrowed(service), Cow::Owned);
    let resource = Resource::builder_empty().with_service_name(name).build();
    let mut exporter = match config.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(ReqwestClient::new()?)
            .with_endpoint(format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/')))
            .with_timeout(EXPORT_TIMEOUT)
            .build()?,
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.as_str())
            .with_timeout(EXPORT_TIMEOUT)
            .build()?,
    };
    exporter.set_resource(&resource);
    let (queue, spans) = mpsc::channel(QUEUE_SPANS);
    let (flush, flushes) = mpsc::channel(1);
    tokio::spawn(export_loop(exporter, spans, flushes));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BoundedBatch { queue })
        .with_sampler(sampler(config))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(crate::release::NAME);
    Ok(Some((Exporting { provider, flush }, tracer)))
}

/// Renames an exported span once it has started (tracing-opentelemetry applies a later
/// `otel.name` only before the span starts): the server span learns its route only after
/// routing. When spans are not exported, `name` is never built (this runs per request).
pub(crate) fn rename(span: &tracing::Span, name: impl FnOnce() -> String) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    let exported = context.span();
    if exported.span_context().is_valid() {
        exported.update_name(name());
    }
}

fn sampler(config: &TracesConfig) -> Sampler {
    match config.sampler {
        SamplerKind::AlwaysOn => Sampler::AlwaysOn,
        SamplerKind::AlwaysOff => Sampler::AlwaysOff,
        SamplerKind::TraceIdRatio => Sampler::TraceIdRatioBased(config.ratio()),
        SamplerKind::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerKind::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerKind::ParentBasedTraceIdRatio => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.ratio())))
        }
    }
}

/// Hands each ended, sampled span to the export task, or counts it dropped when the
/// queue is full: `on_end` runs in whatever thread ends the span, and never waits.
#[derive(Debug)]
struct BoundedBatch {
    queue: mpsc::Sender<SpanData>,
}

impl SpanProcessor for BoundedBatch {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.try_send(span).is_err() {
            metrics::counter!(names::OTEL_SPANS_DROPPED, "reason" => "queue_full").increment(1);
        }
    }

    /// Flushing needs the runtime: [`Exporting::flush`] does it.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Batches spans (up to [`BATCH_SPANS`], or what came within [`BATCH_DELAY`]) and
/// exports them one request at a time, until the processor is gone.
async fn export_loop<E: SpanExporter + 'static>(
    exporter: E,
    mut spans: mpsc::Receiver<SpanData>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut batch = Vec::with_capacity(BATCH_SPANS);
    loop {
        tokio::select! {
            received = spans.recv_many(&mut batch, BATCH_SPANS) => {
                if received == 0 {
                    return;
                }
                let filled = tokio::time::sleep(BATCH_DELAY);
                tokio::pin!(filled);
                while batch.len() < BATCH_SPANS {
                    let room = BATCH_SPANS - batch.len();
                    tokio::select! {
                        received = spans.recv_many(&mut batch, room) => {
                            if received == 0 { break }
                        }
                        () = &mut filled => break,
                    }
                }
                export(&exporter, std::mem::take(&mut batch)).await;
            }
            Some(done) = flushes.recv() => {
                while let Ok(span) = spans.try_recv() {
                    batch.push(span);
                    if batch.len() == BATCH_SPANS {
                        export(&exporter, std::mem::take(&mut batch)).await;
                    }
                }
                if !batch.is_empty() {
                    export(&exporter, std::mem::take(&mut batch)).await;
                }
                let _ = done.send(());
            }
        }
    }
}

async fn export<E: SpanExporter>(exporter: &E, batch: Vec<SpanData>) {
    let spans = batch.len() as u64;
    match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(batch)).await {
        Ok(Ok(())) => metrics::counter!(names::OTEL_SPANS_EXPORTED).increment(spans),
        Ok(Err(_)) => metrics::counter!(names::OTEL_SPANS_DROPPED, "reason" => "export_failed").increment(spans),
        Err(_) => metrics::counter!(names::OTEL_SPANS_DROPPED, "reason" => "export_timeout").increment(spans),
    }
}

/// The exporter's HTTP client: the service's reqwest, with a timeout of its own.
#[derive(Debug)]
struct ReqwestClient(reqwest::Client);

impl ReqwestClient {
    fn new() -> anyhow::Result<Self> {
        Ok(ReqwestClient(reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build()?))
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ReqwestClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let response =
            self.0.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body).send().await?;
        let mut answer = opentelemetry_http::Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            headers.extend(response.headers().iter().map(|(name, value)| (name.clone(), value.clone())));
        }
        Ok(answer.body(response.bytes().await?)?)
    }
}
