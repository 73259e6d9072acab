//! Every metric of the system: its name, once, and what it means, once (the HELP line
//! `/metrics` prints). Code records through these constants; `register` describes them
//! and creates a process's series at zero (a dashboard shows 0, not "no data", and a
//! scrape check finds every name).

use metrics::{describe_counter, describe_gauge, describe_histogram};

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub(crate) const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
pub(crate) const CACHE_REQUESTS: &str = "cache_requests_total";
pub(crate) const CACHE_FILLS: &str = "cache_fills_total";
pub(crate) const CACHE_INVALIDATIONS: &str = "cache_invalidations_total";
pub(crate) const DB_CONNECTIONS_LOST: &str = "db_connections_lost_total";
pub(crate) const DB_REQUESTS_INTERRUPTED: &str = "db_requests_interrupted_total";
pub(crate) const DB_DEADLINES_PASSED: &str = "db_deadlines_passed_total";
pub(crate) const DB_CONNECTIONS_DISCARDED: &str = "db_connections_discarded_total";
pub(crate) const LOKI_DROPPED_LINES: &str = "loki_dropped_lines_total";
pub(crate) const LOKI_UP: &str = "loki_up";
pub const OTEL_SPANS_EXPORTED: &str = "otel_spans_exported_total";
pub const OTEL_SPANS_DROPPED: &str = "otel_spans_dropped_total";
pub(crate) const OUTBOX_PUBLISHED: &str = "outbox_published_total";
pub(crate) const OUTBOX_PUBLISH_FAILURES: &str = "outbox_publish_failures_total";
pub(crate) const OUTBOX_PUBLISH_LAG: &str = "outbox_publish_lag_seconds";
pub(crate) const OUTBOX_BATCH_DURATION: &str = "outbox_batch_duration_seconds";
pub(crate) const OUTBOX_PENDING: &str = "outbox_pending";
pub(crate) const OUTBOX_OLDEST_UNPUBLISHED_AGE: &str = "outbox_oldest_unpublished_age_seconds";
pub(crate) const OUTBOX_BROKER_BLOCKED: &str = "outbox_broker_blocked";
pub(crate) const SAGA_REPLIES: &str = "saga_replies_total";
pub(crate) const SAGA_REPLY_DURATION: &str = "saga_reply_duration_seconds";
pub(crate) const SAGA_APPLY_FAILURES: &str = "saga_apply_failures_total";
pub(crate) const SAGA_DEAD_LETTERED: &str = "saga_dead_lettered_total";
pub(crate) const SAGA_TIMEOUTS: &str = "saga_timeouts_total";
pub const BUILD_INFO: &str = "build_info";
pub const SAGA_PENDING: &str = "saga_pending";
pub const SAGA_OLDEST_PENDING_AGE: &str = "saga_oldest_pending_age_seconds";
pub(crate) const SAGA_CANCEL_AFTER: &str = "saga_cancel_after_seconds";
pub(crate) const SAGA_REPLY_QUEUE_DEPTH: &str = "saga_reply_queue_depth";
pub(crate) const SAGA_REQUEST_QUEUE_DEPTH: &str = "saga_request_queue_depth";
pub(crate) const SAGA_DEAD_LETTER_QUEUE_DEPTH: &str = "saga_dead_letter_queue_depth";

/// The processes that export metrics, each with its own series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    Api,
    OutboxRelay,
    SagaWorker,
}

/// Describes every metric and creates `process`'s series at zero.
pub(crate) fn register(process: Process) {
    describe();
    // Which release runs where, during a rollout or after a rollback.
    metrics::gauge!(BUILD_INFO, "version" => crate::release::VERSION, "commit" => crate::release::COMMIT).set(1.0);
    metrics::counter!(LOKI_DROPPED_LINES).absolute(0);
    metrics::counter!(OTEL_SPANS_EXPORTED).absolute(0);
    for reason in ["queue_full", "export_failed", "export_timeout"] {
        metrics::counter!(OTEL_SPANS_DROPPED, "reason" => reason).absolute(0);
    }
    let zero = |name: &'static str, label: &'static str, values: &[&'static str]| {
        for value in values {
            metrics::counter!(name, label => *value).absolute(0);
        }
    };
    // Every process waits on PostgreSQL under the same bounds.
    metrics::counter!(DB_DEADLINES_PASSED).absolute(0);
    zero(DB_CONNECTIONS_DISCARDED, "why", &["unsettled", "silent_on_release", "read_only"]);
    match process {
        Process::Api => {
            zero(CACHE_REQUESTS, "result", &["hit", "miss", "unsettled", "error"]);
            zero(CACHE_FILLS, "result", &["stored", "stored_evicting", "raced", "too_large"]);
            zero(CACHE_INVALIDATIONS, "result", &["ok", "error"]);
            zero(DB_CONNECTIONS_LOST, "during", &["read", "begin"]);
            zero(DB_REQUESTS_INTERRUPTED, "kind", &["read", "transaction"]);
        }
        Process::OutboxRelay => {
            metrics::counter!(OUTBOX_PUBLISHED).absolute(0);
            let reasons = ["returned", "nacked", "timeout", "channel_closed", "send", "blocked", "connect", "db"];
            zero(OUTBOX_PUBLISH_FAILURES, "reason", &reasons);
            for gauge in [OUTBOX_PENDING, OUTBOX_OLDEST_UNPUBLISHED_AGE, OUTBOX_BROKER_BLOCKED] {
                metrics::gauge!(gauge).set(0.0);
            }
        }
        Process::SagaWorker => {
            let outcomes = ["approved", "rejected", "duplicate", "stale", "dead_lettered", "retried"];
            zero(SAGA_REPLIES, "outcome", &outcomes);
            zero(SAGA_TIMEOUTS, "action", &["re_requested", "canceled", "postponed"]);
            zero(CACHE_INVALIDATIONS, "result", &["ok", "error"]);
            metrics::counter!(SAGA_APPLY_FAILURES).absolute(0);
            for gauge in [
                SAGA_DEAD_LETTER_QUEUE_DEPTH,
                SAGA_PENDING,
                SAGA_OLDEST_PENDING_AGE,
                SAGA_CANCEL_AFTER,
                SAGA_REPLY_QUEUE_DEPTH,
                SAGA_REQUEST_QUEUE_DEPTH,
            ] {
                metrics::gauge!(gauge).set(0.0);
            }
        }
    }
}

fn describe() {
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by method, route template and status.");
    describe_histogram!(HTTP_REQUEST_DURATION, "Time to answer an HTTP request, by method, route and status.");
    describe_counter!(
        CACHE_REQUESTS,
        "Reads of a user's orders from the Redis cache, by result (hit, miss, unsettled: skipped while an invalidation is owed, error)."
    );
    describe_counter!(
        CACHE_FILLS,
        "Pages offered to the cache after a miss, by result (stored, stored_evicting, raced: invalidated meanwhile, too_large)."
    );
    describe_counter!(
        CACHE_INVALIDATIONS,
        "Invalidations of a user's cached pages after a commit, by result (an error is retried until Redis takes it)."
    );
    describe_counter!(
        DB_CONNECTIONS_LOST,
        "Pooled PostgreSQL connections found dead before any work, replaced without failing the request, by when (read, begin)."
    );
    describe_counter!(
        DB_REQUESTS_INTERRUPTED,
        "Requests answered 503 because their PostgreSQL connection died after work began, by kind (read, transaction)."
    );
    describe_counter!(
        DB_DEADLINES_PASSED,
        "Units of PostgreSQL work (a read, a transaction, a relay statement) that passed DB_DEADLINE; each answered 503 or was retried."
    );
    describe_counter!(
        DB_CONNECTIONS_DISCARDED,
        "PostgreSQL connections closed instead of pooled, by why (unsettled: after a deadline, a lost connection, a refused write or a cancel; silent_on_release: no answer to the ping when given back; read_only: a new connection to a server that refuses writes)."
    );
    describe_counter!(
        LOKI_DROPPED_LINES,
        "Log lines that did not reach Loki (breaker open, queue full, push failed or timed out)."
    );
    describe_gauge!(LOKI_UP, "1 while pushes to Loki succeed, 0 after a failed one.");
    describe_counter!(OTEL_SPANS_EXPORTED, "Spans the OTLP collector accepted.");
    describe_counter!(
        OTEL_SPANS_DROPPED,
        "Spans that did not reach the OTLP collector, by reason (queue_full: the bounded queue was full; export_failed, export_timeout)."
    );
    describe_counter!(OUTBOX_PUBLISHED, "Outbox events published and confirmed by the broker.");
    describe_counter!(OUTBOX_PUBLISH_FAILURES, "Outbox events not confirmed, by reason.");
    describe_histogram!(OUTBOX_PUBLISH_LAG, "Time from an event's commit to its confirmed publish.");
    describe_histogram!(OUTBOX_BATCH_DURATION, "Time to claim, publish and move one relay batch.");
    describe_gauge!(OUTBOX_PENDING, "Outbox rows not yet published.");
    describe_gauge!(OUTBOX_OLDEST_UNPUBLISHED_AGE, "Age of the oldest outbox row not yet published.");
    describe_gauge!(OUTBOX_BROKER_BLOCKED, "Relay lanes held by a broker resource alarm (connection.blocked).");
    describe_counter!(SAGA_REPLIES, "Customer service replies handled, by outcome.");
    describe_histogram!(SAGA_REPLY_DURATION, "Time from a reply's delivery to its ack.");
    describe_gauge!(BUILD_INFO, "1, labelled with the process's release (version) and the commit it was built from.");
    describe_counter!(SAGA_APPLY_FAILURES, "Attempts to apply a reply that failed on the database.");
    describe_counter!(SAGA_DEAD_LETTERED, "Replies dead-lettered as poison, by reason.");
    describe_counter!(
        SAGA_TIMEOUTS,
        "Timed-out sagas, by action (re_requested, canceled, postponed: past the last retry and left pending by a sweep, their answer possibly waiting in CustomerSaga or held by a worker)."
    );
    describe_gauge!(SAGA_PENDING, "Orders waiting for the customer service's answer.");
    describe_gauge!(SAGA_OLDEST_PENDING_AGE, "Age of the oldest order waiting for the customer service.");
    describe_gauge!(
        SAGA_CANCEL_AFTER,
        "SAGA_TIMEOUT x (SAGA_MAX_RETRIES + 1): by then the sweep cancels an unanswered order."
    );
    describe_gauge!(SAGA_REPLY_QUEUE_DEPTH, "Replies waiting in CustomerSaga for a worker.");
    describe_gauge!(SAGA_REQUEST_QUEUE_DEPTH, "Requests waiting in OrderSaga for the customer service.");
    describe_gauge!(SAGA_DEAD_LETTER_QUEUE_DEPTH, "Dead letters waiting in CustomerSaga.dlq.");
}
