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
    let status = match (postgres, probe.broker_up.load(Ordering::Relaxed)) {
        (Readiness::Ready, true) => return Json(json!({"status": "OK"})).with_status(StatusCode::OK),
        (Readiness::Ready, false) => "rabbitmq unavailable",
        (Readiness::ReadOnly, true) => "postgres read-only",
        (Readiness::ReadOnly, false) => "postgres read-only and rabbitmq unavailable",
        (Readiness::Unavailable, true) => "postgres unavailable",
        (Readiness::Unavailable, false) => "postgres and rabbitmq unavailable",
    };
    Json(json!({ "status": status })).with_status(StatusCode::SERVICE_UNAVAILABLE)
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
