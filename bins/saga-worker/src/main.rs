//! The `saga-worker` process: applies the customer service's replies to orders, and
//! the saga timeout. Any number may run at once.

use std::{
    io::Write,
    sync::{Arc, atomic::AtomicBool},
};

use order_service::{
    config::{DatabaseConfig, FromEnv, WorkerConfig},
    outbox, probes,
    saga::{self, dlq, worker::SagaWorker},
    telemetry,
};

mod cli;

use cli::{Invocation, USAGE};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if order_service::release::print_version_if_asked("saga-worker") {
        return Ok(());
    }
    let config = WorkerConfig::from_env()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match cli::parse(&args).map_err(anyhow::Error::msg)? {
        Invocation::Run => {}
        Invocation::PendingSagas { older_than, limit } => return pending_sagas(&config, older_than, limit).await,
        operator => return dead_letters(&config, operator).await,
    }
    let sinks = telemetry::init_tracing(&config.log, &config.traces, "saga-worker")?;
    let metrics = telemetry::metrics();
    telemetry::register_metrics(telemetry::Process::SagaWorker);
    let db = config.database.prepare(&[]).await?;
    let name = format!("saga-worker@{}", std::process::id());
    let amqp = config.amqp.connection_args(&name)?;
    let dead_letter_amqp = config.amqp.connection_args(&format!("{name}-dead-letters"))?;
    let cache = config.cache.order_cache()?;

    let stopped = order_service::shutdown::flag();
    let broker_up = Arc::new(AtomicBool::new(false));
    let probes =
        probes::spawn(config.saga.metrics_addr, db.clone(), broker_up.clone(), metrics, stopped.clone()).await?;

    let worker = SagaWorker {
        db: db.clone(),
        amqp,
        dead_letter_amqp,
        topology: config.amqp.topology(),
        cache,
        relays: outbox::RelayWaker::start(db.clone()),
        prefetch: config.saga.prefetch,
        concurrency: config.saga.concurrency.into(),
        timeouts: config.saga.timeout_settings(),
        broker_up,
    };
    worker.run(stopped).await;
    probes.await??;
    db.close().await;
    sinks.flush().await;
    Ok(())
}

/// `sagas pending`: one JSON line per order waiting on the customer service, oldest first.
async fn pending_sagas(config: &WorkerConfig, older_than: std::time::Duration, limit: i64) -> anyhow::Result<()> {
    let db = DatabaseConfig { max_connections: 1, ..config.database.clone() }.pool(&[])?;
    let pending = saga::pending_sagas(&db, older_than, limit).await?;
    // Not println!: a closed pipe (`| head`) is an error to return, not a panic.
    let mut out = std::io::stdout().lock();
    for saga in pending {
        writeln!(out, "{}", serde_json::to_string(&saga)?)?;
    }
    Ok(())
}

/// `dlq list`: a JSON line per kind with its count, then one per dead-lettered reply,
/// all left in the queue. `dlq replay`: moves them back to `CustomerSaga`, one log line
/// each. `dlq replay|discard --id`: one message, and a JSON line saying what was done.
async fn dead_letters(config: &WorkerConfig, operator: Invocation) -> anyhow::Result<()> {
    let topology = config.amqp.topology();
    let name = format!("saga-worker-dlq@{}", std::process::id());
    let consume = config.amqp.connection_args(&name)?;
    let publish = || config.amqp.connection_args(&format!("{name}-replay"));
    let mut out = std::io::stdout().lock();
    if let Invocation::DlqList { limit } = operator {
        let letters = dlq::list(&consume, &topology, limit).await?;
        for (kind, count) in dlq::by_kind(&letters) {
            writeln!(out, "{}", serde_json::json!({"kind": kind, "count": count}))?;
        }
        for letter in letters {
            writeln!(out, "{}", serde_json::to_string(&letter)?)?;
        }
        return Ok(());
    }
    // Logs (and a trace per action) only for the actions: the list's stdout is its JSON lines.
    let sinks = telemetry::init_tracing(&config.log, &config.traces, "saga-worker")?;
    let acted = async {
        let (action, letter) = match operator {
            Invocation::DlqReplay { limit } => {
                let moved = dlq::replay(&consume, &publish()?, &topology, limit.into()).await?;
                tracing::info!(replayed = moved.len(), "dead-letter queue replayed");
                return Ok(());
            }
            Invocation::DlqReplayOne { message_id } => {
                ("replayed", dlq::replay_one(&consume, &publish()?, &topology, &message_id).await?)
            }
            Invocation::DlqDiscardOne { message_id } => {
                ("discarded", dlq::discard_one(&consume, &topology, &message_id).await?)
            }
            _ => anyhow::bail!(USAGE),
        };
        let mut line = serde_json::to_value(&letter)?;
        line["action"] = action.into();
        writeln!(out, "{line}")?;
        Ok(())
    }
    .await;
    sinks.flush().await;
    acted
}
