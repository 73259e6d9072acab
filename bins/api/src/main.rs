//! The `api` process: REST API, OpenAPI spec and Swagger UI, health and metrics.
//!
//! `api migrate` creates the database if missing, applies the migrations and exits
//! (`make migrate`, the Kubernetes Job, Compose's `migrate` service); `api` waits for the
//! migrations it needs, then serves (db/schema.rs).

use order_service::{
    config::{ApiConfig, FromEnv},
    outbox, server, telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if order_service::release::print_version_if_asked("api") {
        return Ok(());
    }
    let config = ApiConfig::from_env()?;
    let sinks = telemetry::init_tracing(&config.log, &config.traces, "api")?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        config.database.migrate().await?;
        sinks.flush().await;
        return Ok(());
    }
    let db = config.database.prepare(server::SESSION_SETTINGS).await?;
    telemetry::register_metrics(telemetry::Process::Api);
    let cache = config.cache.order_cache()?;
    let auth = config.auth.verifier()?.map(std::sync::Arc::new);
    if auth.is_none() {
        tracing::warn!(
            "authentication is off (AUTH_ISSUER and AUTH_JWKS_URL unset): anyone who reaches the api may do anything"
        );
    }
    let state = server::AppState {
        db: db.clone(),
        cache,
        relays: outbox::RelayWaker::start(db.clone()),
        metrics: telemetry::metrics(),
        max_body_bytes: config.http.max_body_bytes,
        auth,
    };
    server::serve(config.http.addr, state, config.http.shutdown_grace()).await?;
    db.close().await;
    tracing::info!("api stopped");
    sinks.flush().await;
    Ok(())
}
