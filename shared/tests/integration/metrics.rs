//! `/metrics` explains itself: every series has a HELP line, from one place
//! (`telemetry::names`).

use order_service::telemetry::{self, Process};
use sqlx::PgPool;

use crate::helpers::TestApp;

#[sqlx::test(migrations = "../migrations")]
async fn every_metric_says_what_it_means(db: PgPool) {
    // The tests share one recorder: it holds every process's series by now, or soon.
    for process in [Process::Api, Process::OutboxRelay, Process::SagaWorker] {
        telemetry::register_metrics(process);
    }
    let app = TestApp::new(db);
    let _ = app.get("/api/v1/products/").await;
    let reply = app.get("/metrics").await;
    let text = reply.body.as_str().expect("the Prometheus text format");
    let typed: Vec<&str> =
        text.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.split_whitespace().next()).collect();
    // Every series `register` creates: all of them but `loki_up`, set once a Loki answers.
    assert!(typed.len() >= 24, "{typed:?}");
    for name in typed {
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP line");
    }
    for name in [
        telemetry::names::SAGA_PENDING,
        telemetry::names::SAGA_OLDEST_PENDING_AGE,
        telemetry::names::HTTP_REQUESTS,
        telemetry::names::OTEL_SPANS_DROPPED,
        telemetry::names::OTEL_SPANS_EXPORTED,
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} is not exported");
    }
}
