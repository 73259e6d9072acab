//! order-service: orders with a transactional outbox and a choreography saga.
//!
//! Read top-down:
//! - [`http`]: the REST API (poem-openapi) of the `api` process.
//! - Features, each with its domain rules, its commands and queries (SQL inline), and
//!   its HTTP operations in `api.rs`: [`products`], [`addresses`], [`users`], [`orders`].
//! - [`pricing`]: money and discounts, exact decimals.
//! - [`bus`]: the command bus: one transaction per command.
//! - [`outbox`]: events written in the same transaction as the change they announce;
//!   `outbox::relay` publishes them (the `outbox-relay` process).
//! - [`amqp`]: RabbitMQ plumbing: topology, connections, confirmed publishing, consuming.
//! - [`retry`]: the one backoff policy (with jitter) of every retry and reconnect loop.
//! - [`error`]: the error every command and query ends in; `http::errors` maps it.
//! - [`config`], [`telemetry`], [`db`]: start-up plumbing shared by the binaries.

pub mod addresses;
pub mod amqp;
pub mod bus;
pub mod cache;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod orders;
pub mod outbox;
pub mod pricing;
pub mod products;
pub mod retry;
pub mod saga;
pub mod telemetry;
pub mod trace_context;
pub mod users;
pub mod validate;

/// A flag that turns true on SIGINT or SIGTERM, for loops that finish their work in
/// hand before they stop.
pub fn shutdown_flag() -> tokio::sync::watch::Receiver<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    stopped
}

/// Sleeps for `delay`, or less if shutdown comes first (a retry loop's wait).
pub async fn sleep_or_stop(delay: std::time::Duration, shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}

/// How long until `schedule`'s next tick (`fallback` when it has none).
pub fn until_next(schedule: &cron::Schedule, fallback: std::time::Duration) -> std::time::Duration {
    schedule.upcoming(chrono::Utc).next().and_then(|at| (at - chrono::Utc::now()).to_std().ok()).unwrap_or(fallback)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (`docker stop`).
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
