//! The `saga-worker` process: applies the customer service's replies to orders, and
//! the saga timeout. Any number may run at once.

use std::sync::{Arc, atomic::AtomicBool};

use order_service::{
    amqp::{self, Topology},
    cache::OrderCache,
    config::WorkerConfig,
    db, http,
    saga::worker::{SagaWorker, TimeoutSettings},
    telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig::from_env()?;
    let loki = telemetry::init_tracing(&config.log, "saga-worker")?;
    let metrics = telemetry::metrics();
    telemetry::register_metrics("saga-worker");
    let db = db::connect(&config.database_url, config.db_max_connections)?;
    // Every process applies pending migrations (under the migrator's advisory lock).
    db::create_database_if_missing(&config.database_url).await?;
    db::migrate(&db).await?;
    let name = format!("saga-worker@{}", std::process::id());
    let amqp = amqp::connection_args(&config.amqp_url, &name).map_err(anyhow::Error::msg)?;
    let dead_letter_amqp =
        amqp::connection_args(&config.amqp_url, &format!("{name}-dead-letters")).map_err(anyhow::Error::msg)?;
    let cache = OrderCache::new(&config.redis_url, "order-service", config.cache_ttl)?;

    let stopped = order_service::shutdown_flag();
    let broker_up = Arc::new(AtomicBool::new(false));
    let ops = http::ops::spawn(config.metrics_addr, db.clone(), broker_up.clone(), metrics, stopped.clone()).await?;

    let worker = SagaWorker {
        db: db.clone(),
        amqp,
        dead_letter_amqp,
        topology: Topology::contract(config.amqp_queue_type),
        cache,
        prefetch: config.saga_prefetch,
        timeouts: TimeoutSettings {
            after: config.saga_timeout,
            max_retries: config.saga_max_retries.into(),
            schedule: config.saga_timeout_schedule,
        },
        broker_up,
    };
    worker.run(stopped).await;
    ops.await??;
    db.close().await;
    if let Some(loki) = loki {
        loki.flush().await;
    }
    Ok(())
}
