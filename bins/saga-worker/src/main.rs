//! The `saga-worker` process: applies the customer service's replies to orders, and
//! the saga timeout. Any number may run at once.

use std::{
    io::Write,
    sync::{Arc, atomic::AtomicBool},
};

use order_service::{
    amqp::{self, Topology},
    cache::OrderCache,
    config::WorkerConfig,
    db, http,
    saga::{
        dlq,
        worker::{APPLY_ATTEMPTS, SagaWorker, TimeoutSettings},
    },
    telemetry,
};

const USAGE: &str = "usage: saga-worker [dlq list [LIMIT] | dlq replay [LIMIT]]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig::from_env()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => {}
        ["dlq", command, ref limit @ ..] if limit.len() <= 1 => {
            let limit = limit.first().map_or(Ok(u16::MAX), |l| l.parse::<u16>());
            let limit = limit.map_err(|_| anyhow::anyhow!("LIMIT must be a number from 0 to 65535\n{USAGE}"))?;
            return dead_letters(&config, command, limit).await;
        }
        _ => anyhow::bail!(USAGE),
    }
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
        apply_attempts: APPLY_ATTEMPTS,
        halt_after_ack: None,
    };
    worker.run(stopped).await;
    ops.await??;
    db.close().await;
    if let Some(loki) = loki {
        loki.flush().await;
    }
    Ok(())
}

/// `dlq list`: one JSON line per dead-lettered reply, left in the queue. `dlq replay`:
/// moves them back to `CustomerSaga`, one log line each.
async fn dead_letters(config: &WorkerConfig, command: &str, limit: u16) -> anyhow::Result<()> {
    let topology = Topology::contract(config.amqp_queue_type);
    let name = format!("saga-worker-dlq@{}", std::process::id());
    let consume = amqp::connection_args(&config.amqp_url, &name).map_err(anyhow::Error::msg)?;
    match command {
        "list" => {
            // Not println!: a closed pipe (`| head`) is an error to return, not a panic.
            let mut out = std::io::stdout().lock();
            for letter in dlq::list(&consume, &topology, limit).await? {
                writeln!(out, "{}", serde_json::to_string(&letter)?)?;
            }
        }
        "replay" => {
            // Logs only here: the list's stdout is its JSON lines.
            let _loki = telemetry::init_tracing(&config.log, "saga-worker")?;
            let publish =
                amqp::connection_args(&config.amqp_url, &format!("{name}-replay")).map_err(anyhow::Error::msg)?;
            let moved = dlq::replay(&consume, &publish, &topology, limit.into()).await?;
            tracing::info!(replayed = moved.len(), "dead-letter queue replayed");
        }
        _ => anyhow::bail!(USAGE),
    }
    Ok(())
}
