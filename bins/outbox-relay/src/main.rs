//! The `outbox-relay` process: publishes the outbox to RabbitMQ with confirms. Any
//! number may run at once.

use std::sync::{Arc, atomic::AtomicBool};

use order_service::{
    config::{FromEnv, RelayConfig},
    outbox::relay::{self, Relay},
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
    let db = config.database.prepare(relay::SESSION_SETTINGS).await?;
    let connection_name = format!("outbox-relay@{}", std::process::id());
    let amqp = config.amqp.connection_args(&connection_name)?;

    let stopped = order_service::shutdown::flag();
    let broker_up = Arc::new(AtomicBool::new(false));
    let probes =
        probes::spawn(config.relay.metrics_addr, db.clone(), broker_up.clone(), metrics, stopped.clone()).await?;

    let relay = Relay {
        db: db.clone(),
        amqp,
        topology: config.amqp.topology(),
        settings: config.relay.relay_settings(),
        schedule: config.relay.schedule,
        broker_up,
    };
    relay.run(stopped).await;
    probes.await??;
    db.close().await;
    sinks.flush().await;
    Ok(())
}
