//! The small HTTP server of the background processes (relay, worker): liveness,
//! readiness and Prometheus metrics on `METRICS_ADDR`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::db::{Db, Readiness};
use metrics_exporter_prometheus::PrometheusHandle;
use poem::{
    Endpoint, EndpointExt, IntoResponse, Route, Server, get, handler,
    http::StatusCode,
    listener::{Acceptor, Listener, TcpListener},
    middleware::{NormalizePath, TrailingSlash},
    web::{Data, Json},
};
use serde_json::json;

#[derive(Clone)]
struct Probe {
    db: Db,
    broker_up: Arc<AtomicBool>,
    metrics: PrometheusHandle,
}

#[handler]
fn healthcheck() -> Json<serde_json::Value> {
    Json(json!({"status": "OK"}))
}

/// Ready when PostgreSQL answers and the broker connection is up; names what is not.
#[handler]
async fn readyz(probe: Data<&Probe>) -> impl IntoResponse {
    let postgres = probe.db.readiness().await;
    match not_ready(postgres, "rabbitmq", probe.broker_up.load(Ordering::Relaxed)) {
        None => Json(json!({"status": "OK"})).with_status(StatusCode::OK),
        Some(status) => Json(json!({ "status": status })).with_status(StatusCode::SERVICE_UNAVAILABLE),
    }
}

/// The one readiness rule of every process: PostgreSQL answers and takes writes, and the
/// other server it needs (`other`: the api's Redis, the relay's and the worker's
/// RabbitMQ) is up. `None` when ready; else the status naming what is not.
pub(crate) fn not_ready(postgres: Readiness, other: &str, other_up: bool) -> Option<String> {
    match (postgres, other_up) {
        (Readiness::Ready, true) => None,
        (Readiness::Ready, false) => Some(format!("{other} unavailable")),
        (Readiness::ReadOnly, true) => Some("postgres read-only".into()),
        (Readiness::ReadOnly, false) => Some(format!("postgres read-only and {other} unavailable")),
        (Readiness::Unavailable, true) => Some("postgres unavailable".into()),
        (Readiness::Unavailable, false) => Some(format!("postgres and {other} unavailable")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_names_what_is_not_ready() {
        let cases = [
            (Readiness::Ready, true, None),
            (Readiness::Ready, false, Some("redis unavailable")),
            (Readiness::ReadOnly, true, Some("postgres read-only")),
            (Readiness::ReadOnly, false, Some("postgres read-only and redis unavailable")),
            (Readiness::Unavailable, true, Some("postgres unavailable")),
            (Readiness::Unavailable, false, Some("postgres and redis unavailable")),
        ];
        for (postgres, redis, expected) in cases {
            assert_eq!(not_ready(postgres, "redis", redis).as_deref(), expected, "{postgres:?}, {redis}");
        }
    }
}

#[handler]
fn metrics(probe: Data<&Probe>) -> String {
    probe.metrics.render()
}

/// `/healthcheck/`, `/readyz` and `/metrics`.
pub fn app(db: Db, broker_up: Arc<AtomicBool>, metrics_handle: PrometheusHandle) -> impl Endpoint {
    Route::new()
        .at("/healthcheck", get(healthcheck))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics))
        .data(Probe { db, broker_up, metrics: metrics_handle })
        .with(NormalizePath::new(TrailingSlash::Trim))
}

/// Binds `addr` now, so a port in use stops the process at start rather than later.
pub async fn bind(addr: SocketAddr) -> std::io::Result<impl Acceptor> {
    TcpListener::bind(addr).into_acceptor().await
}

/// Serves [`app`] until `shutdown` resolves.
pub async fn serve(
    acceptor: impl Acceptor + 'static,
    db: Db,
    broker_up: Arc<AtomicBool>,
    metrics_handle: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let app = app(db, broker_up, metrics_handle);
    tracing::info!(addr = ?acceptor.local_addr(), "health and metrics listening");
    Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(app, shutdown, Some(Duration::from_secs(2))).await
}

/// Binds `addr` (failing now if it is taken) and serves [`app`] in a task until
/// `stopped` turns true.
pub async fn spawn(
    addr: SocketAddr,
    db: Db,
    broker_up: Arc<AtomicBool>,
    metrics_handle: PrometheusHandle,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let acceptor = bind(addr).await?;
    Ok(tokio::spawn(serve(acceptor, db, broker_up, metrics_handle, async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    })))
}
