//! Log lines to Loki: the same JSON lines as stdout, pushed in batches to Loki's JSON
//! push API, and bounded everywhere.
//!
//! This replaced tracing-loki 0.2.7, which cannot be bounded from outside: its send
//! queue has no limit ("TODO: Add limit"), its HTTP client no timeout, a failed batch is
//! kept and retried for about a minute, and lines past its 512-slot channel are dropped
//! without a count. Against a Loki that answered `/ready` but 429 to every push, the
//! api grew to 157 MB in 25 s (96 MB in `loki::a_loki_that_refuses_pushes_with_429…`,
//! whose target is 64 MB), and no dropped line was counted.
//!
//! Here: at most [`QUEUE_LINES`] lines ([`QUEUE_BYTES`]) wait; a push times out after
//! [`PUSH_TIMEOUT`]; a push that fails or times out opens a breaker that keeps lines out
//! (they are not even formatted) until a backoff has passed, then lets lines in again
//! and the next push decides. Every line that does not reach Loki is counted in
//! `loki_dropped_lines_total`.

use std::{
    collections::VecDeque,
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use crate::retry::Policy;
use crate::telemetry::names;

/// Lines waiting for a push, at most.
pub(crate) const QUEUE_LINES: usize = 10_000;
/// Bytes of lines waiting for a push, at most.
pub(crate) const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Lines per push, at most; a push leaves at least every [`PUSH_EVERY`].
const BATCH_LINES: usize = 2_000;
const PUSH_EVERY: Duration = Duration::from_secs(1);
/// The longest a push may take: past it, it counts as failed.
pub(crate) const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest the last push may take at exit.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The side of the pipeline the tracing layer writes into.
#[derive(Clone)]
pub struct Sink {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The breaker: lines are let in while it is closed (`true`).
    admitting: AtomicBool,
    /// A batch is full: push now rather than at the next tick.
    full: Notify,
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<Line>,
    bytes: usize,
}

struct Line {
    level: Level,
    /// Unix nanoseconds, as Loki wants them (a string).
    at: String,
    text: String,
}

/// The pipeline's background task: it pushes until [`Shipper::flush`].
pub struct Shipper {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Shipper {
    /// Pushes what is queued (for at most [`FLUSH_TIMEOUT`]) and stops: a Loki that does
    /// not answer must not hold the process at exit.
    pub async fn flush(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(FLUSH_TIMEOUT + Duration::from_millis(500), self.task).await;
    }
}

/// Starts the pipeline to `loki` (its base URL), labelling every line `service` and
/// `level`. Must run inside the Tokio runtime.
pub fn start(loki: &url::Url, service: &'static str) -> anyhow::Result<(Sink, Shipper)> {
    let push_url = loki.join("loki/api/v1/push")?;
    let client = reqwest::Client::builder().timeout(PUSH_TIMEOUT).connect_timeout(Duration::from_secs(1)).build()?;
    let shared = Arc::new(Shared { queue: Mutex::default(), admitting: AtomicBool::new(true), full: Notify::new() });
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(ship(shared.clone(), Pusher { client, url: push_url, service }, stopped));
    Ok((Sink { shared }, Shipper { stop, task }))
}

impl Sink {
    /// Whether an event may enter the pipeline; counts it as dropped if not. The layer's
    /// filter asks this before the event is formatted.
    pub fn admits_event(&self) -> bool {
        let admitted = self.shared.admitting.load(Ordering::Relaxed);
        if !admitted {
            metrics::counter!(names::LOKI_DROPPED_LINES).increment(1);
        }
        admitted
    }
}

impl Shared {
    fn enqueue(&self, level: Level, text: String) {
        let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos().to_string();
        let mut queue = self.queue.lock().expect("never poisoned");
        if queue.lines.len() >= QUEUE_LINES || queue.bytes + text.len() > QUEUE_BYTES {
            drop(queue);
            metrics::counter!(names::LOKI_DROPPED_LINES).increment(1);
            return;
        }
        queue.bytes += text.len();
        queue.lines.push_back(Line { level, at, text });
        if queue.lines.len() >= BATCH_LINES {
            self.full.notify_one();
        }
    }

    fn take(&self, most: usize) -> Vec<Line> {
        let mut queue = self.queue.lock().expect("never poisoned");
        let n = queue.lines.len().min(most);
        let batch: Vec<Line> = queue.lines.drain(..n).collect();
        queue.bytes -= batch.iter().map(|line| line.text.len()).sum::<usize>();
        batch
    }

    fn discard_queued(&self) -> usize {
        let mut queue = self.queue.lock().expect("never poisoned");
        queue.bytes = 0;
        std::mem::take(&mut queue.lines).len()
    }
}

/// Each formatted event: the writer collects its bytes and queues them when dropped
/// (tracing-subscriber writes one event per writer).
pub struct LineWriter {
    shared: Arc<Shared>,
    level: Level,
    buffer: Vec<u8>,
}

impl io::Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buffer);
        let text = text.trim_end();
        if !text.is_empty() {
            self.shared.enqueue(self.level, text.to_owned());
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { shared: self.shared.clone(), level: Level::INFO, buffer: Vec::new() }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        LineWriter { shared: self.shared.clone(), level: *meta.level(), buffer: Vec::new() }
    }
}

struct Pusher {
    client: reqwest::Client,
    url: url::Url,
    service: &'static str,
}

impl Pusher {
    /// One push of Loki's JSON API: a stream per level.
    async fn push(&self, lines: &[Line]) -> Result<(), String> {
        let mut streams: Vec<(Level, Vec<Value>)> = Vec::new();
        for line in lines {
            let entry = json!([line.at, line.text]);
            match streams.iter_mut().find(|(level, _)| *level == line.level) {
                Some((_, values)) => values.push(entry),
                None => streams.push((line.level, vec![entry])),
            }
        }
        let streams: Vec<Value> = streams
            .into_iter()
            .map(|(level, values)| {
                json!({"stream": {"service": self.service, "level": level_label(level)}, "values": values})
            })
            .collect();
        let body = serde_json::to_vec(&json!({ "streams": streams })).map_err(|e| e.to_string())?;
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| if e.is_timeout() { "timed out".to_owned() } else { e.to_string() })?;
        if response.status().is_success() { Ok(()) } else { Err(format!("answered {}", response.status())) }
    }
}

fn level_label(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// Pushes a batch every [`PUSH_EVERY`] (or as soon as one is full) until stopped, then
/// one last time. A failed push drops its batch and what is queued, and opens the
/// breaker for a backoff.
async fn ship(shared: Arc<Shared>, pusher: Pusher, mut stopped: watch::Receiver<bool>) {
    let mut backoff = Policy::RECONNECT.backoff();
    metrics::gauge!(names::LOKI_UP).set(1.0);
    loop {
        let stopping = tokio::select! {
            () = shared.full.notified() => false,
            () = tokio::time::sleep(PUSH_EVERY) => false,
            _ = stopped.changed() => true,
        };
        if stopping {
            let batch = shared.take(QUEUE_LINES);
            if !batch.is_empty() && tokio::time::timeout(FLUSH_TIMEOUT, pusher.push(&batch)).await.is_err() {
                metrics::counter!(names::LOKI_DROPPED_LINES).increment(batch.len() as u64);
            }
            return;
        }
        let batch = shared.take(BATCH_LINES);
        if batch.is_empty() {
            continue;
        }
        match pusher.push(&batch).await {
            Ok(()) => {
                backoff.reset();
                metrics::gauge!(names::LOKI_UP).set(1.0);
            }
            Err(why) => {
                shared.admitting.store(false, Ordering::Relaxed);
                let dropped = batch.len() + shared.discard_queued();
                metrics::counter!(names::LOKI_DROPPED_LINES).increment(dropped as u64);
                metrics::gauge!(names::LOKI_UP).set(0.0);
                let delay = backoff.next_delay();
                // On stdout only: the breaker keeps this line out of Loki.
                tracing::warn!(%why, dropped, retry_in_ms = delay.as_millis() as u64, "Loki push failed; log lines to Loki paused");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stopped.changed() => return,
                }
                // Half-open: lines come in again, and the next push decides.
                shared.admitting.store(true, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn sink() -> Sink {
        Sink {
            shared: Arc::new(Shared { queue: Mutex::default(), admitting: AtomicBool::new(true), full: Notify::new() }),
        }
    }

    #[test]
    fn the_queue_holds_at_most_its_lines_and_bytes() {
        let sink = sink();
        for _ in 0..QUEUE_LINES + 50 {
            let mut writer = sink.make_writer();
            writer.write_all(b"{\"message\":\"x\"}\n").unwrap();
        }
        assert_eq!(sink.shared.queue.lock().unwrap().lines.len(), QUEUE_LINES);
        let taken = sink.shared.take(BATCH_LINES);
        assert_eq!(taken.len(), BATCH_LINES);
        assert_eq!(taken[0].text, "{\"message\":\"x\"}", "one line per event, without its newline");

        let sink = self::sink();
        let big = vec![b'x'; 1024 * 1024];
        for _ in 0..20 {
            sink.make_writer().write_all(&big).unwrap();
        }
        let queue = sink.shared.queue.lock().unwrap();
        assert!(queue.bytes <= QUEUE_BYTES && queue.lines.len() == 8, "{} lines", queue.lines.len());
    }

    #[test]
    fn an_open_breaker_keeps_events_out() {
        let sink = sink();
        assert!(sink.admits_event());
        sink.shared.admitting.store(false, Ordering::Relaxed);
        assert!(!sink.admits_event());
    }
}
