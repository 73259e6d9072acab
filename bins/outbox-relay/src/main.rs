//! The `outbox-relay` process: publishes the outbox to RabbitMQ with confirms. Any
//! number may run at once.

use std::sync::{Arc, atomic::AtomicBool};

use order_service::{
    amqp::Topology,
    config::{RelayConfig, Settings},
    db,
    outbox::relay::{self, Relay, RelaySettings},
    probes, telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if order_service::release::print_version_if_asked("outbox-relay") {
        return Ok(());
    }
    let config = RelayConfig::from_env()?;
    let sinks = telemetry::init_tracing(&config.log, &config.traces, "outbox-relay")?;
    let metrics = telemetry::metrics();
    telemetry::register_metrics(telemetry::Process::OutboxRelay);
    let db = db::connect(
        &config.database.url,
        config.database.max_connections,
        relay::SESSION_SETTINGS,
        config.database.limits,
    )?;
    // Only `api migrate` (the Job) migrates; this waits for the migrations this release
    // needs, tolerating later ones (db/schema.rs).
    db::require(&db).await?;
    let connection_name = format!("outbox-relay@{}", std::process::id());
    let amqp = config.amqp.connection_args(&connection_name)?;

    let stopped = order_service::shutdown::flag();
    let broker_up = Arc::new(AtomicBool::new(false));
    let ops =
        probes::spawn(config.outbox.metrics_addr, db.clone(), broker_up.clone(), metrics, stopped.clone()).await?;

    let relay = Relay {
        db: db.clone(),
        amqp,
        topology: Topology::contract(config.amqp.queue_type),
        settings: RelaySettings {
            batch_size: config.outbox.relay_batch_size.into(),
            retention: config.outbox.outbox_retention,
            lanes: config.outbox.relay_lanes.into(),
            ..RelaySettings::default()
        },
        schedule: config.outbox.relay_schedule,
        broker_up,
    };
    relay.run(stopped).await;
    ops.await??;
    db.close().await;
    sinks.flush().await;
    Ok(())
}
