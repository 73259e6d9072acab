//! The `api` process: REST API, OpenAPI spec and Swagger UI, health and metrics.
//!
//! `api migrate` creates the database if missing, applies the migrations and exits
//! (`make migrate`, the Kubernetes Job, Compose's `migrate` service); `api` waits for the
//! migrations it needs, then serves (db/schema.rs).

use std::time::Duration;

use order_service::{
    cache,
    config::{ApiConfig, Settings},
    db, http, outbox, telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if order_service::release::print_version_if_asked("api") {
        return Ok(());
    }
    let config = ApiConfig::from_env()?;
    let sinks = telemetry::init_tracing(&config.log, &config.traces, "api")?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        db::create_database_if_missing(&config.database.url).await?;
        db::migrate(&config.database.url).await?;
        sinks.flush().await;
        return Ok(());
    }
    let db = db::connect(
        &config.database.url,
        config.database.max_connections,
        http::SESSION_SETTINGS,
        config.database.limits,
    )?;
    db::require(&db).await?;
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
