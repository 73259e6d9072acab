//! The `api` process: REST API, OpenAPI spec and Swagger UI, health and metrics.
//!
//! `api migrate` creates the database if missing, applies the migrations and exits
//! (`make migrate`); `api` does the same, then serves.

use std::time::Duration;

use order_service::{
    cache,
    config::{ApiConfig, Settings},
    db, http, outbox, telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ApiConfig::from_env()?;
    let sinks = telemetry::init_tracing(&config.log, &config.traces, "api")?;
    db::create_database_if_missing(&config.database.url).await?;
    let db = db::connect(
        &config.database.url,
        config.database.max_connections,
        http::SESSION_SETTINGS,
        config.database.limits,
    )?;
    db::migrate(&db).await?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        tracing::info!("migrations applied");
        return Ok(());
    }
    telemetry::register_metrics(telemetry::Process::Api);
    let cache = cache::OrderCache::with_limits(
        &config.cache.url,
        "order-service",
        config.cache.ttl,
        cache::Limits { timeout: config.cache.timeout, ..cache::Limits::default() },
    )?;
    let state = http::AppState {
        db: db.clone(),
        cache,
        relays: outbox::RelayWaker::start(db.clone()),
        metrics: telemetry::metrics(),
        max_body_bytes: config.http.max_body_bytes,
    };
    http::serve(config.http.api_addr, state, Duration::from_secs(config.http.shutdown_grace_secs)).await?;
    db.close().await;
    tracing::info!("api stopped");
    sinks.flush().await;
    Ok(())
}
