//! A stand-in for the external customer service, so the whole saga runs without
//! publishing replies by hand (`make run-demo`, `docker compose --profile demo`, the
//! end-to-end test, chaos and bench). Not part of the order service itself: shipped in
//! the image for the demo profile.
//!
//! It consumes `OrderSaga` and answers each `OrderCreateSaga` on the `Orders` exchange
//! (routing key `Customer.Saga.Reply`): `Approved`, or `Rejected` when the order's
//! total is over `CREDIT_LIMIT`. The reply's message id is derived from the request's,
//! so a redelivered request yields the very same reply, which the worker ignores.
//!
//! Environment ([`SimulatorConfig`]): `AMQP_URL`, `AMQP_QUEUE_TYPE` (as the other
//! processes), `CREDIT_LIMIT` (default 1000), `LOG_LEVEL`, `LOG_FORMAT`, `LOKI_URL`.

use std::str::FromStr;

use order_service::{
    amqp::{Consumer, Publisher, REPLY_ROUTING_KEY},
    config::{FromEnv, SimulatorConfig},
    retry::Policy,
    telemetry,
    trace_context::TraceContext,
};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tracing::Instrument;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if order_service::release::print_version_if_asked("customer-simulator") {
        return Ok(());
    }
    let config = SimulatorConfig::from_env()?;
    let sinks = telemetry::init_tracing(&config.log, &config.traces, "customer-simulator")?;
    // SIGTERM (docker stop) as well as Ctrl-C.
    let stop = order_service::shutdown::signal();
    tokio::pin!(stop);
    let limit = config.credit.limit;
    let topology = config.amqp.topology();
    let name = format!("customer-simulator@{}", std::process::id());
    let consume = config.amqp.connection_args(&name)?;
    let publish = config.amqp.connection_args(&format!("{name}-replies"))?;
    tracing::info!(credit_limit = %limit, "customer simulator answering OrderSaga");

    let mut backoff = Policy::RECONNECT.backoff();
    loop {
        let connected = async {
            let consumer = Consumer::connect(&consume, &topology, &topology.order_saga_queue, 16).await?;
            let publisher = Publisher::connect(&publish, &topology).await?;
            Ok::<_, amqprs::error::Error>((consumer, publisher))
        };
        let (mut consumer, mut publisher) = match connected.await {
            Ok(both) => both,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error.cause = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        backoff.reset();
        loop {
            let delivery = tokio::select! {
                delivery = consumer.next() => delivery,
                () = &mut stop => {
                    consumer.close().await;
                    publisher.close().await;
                    sinks.flush().await;
                    return Ok(());
                }
            };
            let Some(delivery) = delivery else { break };
            let request: Value = serde_json::from_slice(&delivery.body).unwrap_or(Value::Null);
            let (Some(order_id), Some(total)) = (request["orderID"].as_str(), request["totalPrice"].as_number()) else {
                tracing::warn!("not an OrderCreateSaga request; dropped");
                if consumer.ack(delivery.tag).await.is_err() {
                    break;
                }
                continue;
            };
            let total = Decimal::from_str(&total.to_string()).unwrap_or(Decimal::MAX);
            let answer = if total > limit { "Rejected" } else { "Approved" };
            // A re-request by the saga timeout names the first request: answer it with
            // the same reply id, which the worker applies at most once.
            let request_id = request["originalEventID"].as_str().or(delivery.message_id()).unwrap_or(order_id);
            let message_id = format!("reply-{request_id}");
            // The customer service's hop of the order's trace: a consumer span continuing
            // the request's context, and a producer span whose context the reply carries.
            let queue = &topology.order_saga_queue;
            let consumed = tracing::info_span!(
                parent: None,
                "customer.request",
                otel.name = format!("process {queue}"),
                otel.kind = "consumer",
                messaging.system = "rabbitmq",
                messaging.operation.type = "process",
                messaging.destination.name = %queue,
                messaging.message.id = delivery.message_id().unwrap_or_default(),
            );
            let request_trace = delivery.header("traceparent").as_deref().and_then(TraceContext::parse);
            let request_trace = TraceContext::continue_in(&consumed, request_trace);
            let published = tracing::info_span!(
                parent: &consumed,
                "customer.reply",
                otel.name = format!("publish {}", topology.exchange),
                otel.kind = "producer",
                messaging.system = "rabbitmq",
                messaging.operation.type = "send",
                messaging.destination.name = %topology.exchange,
                messaging.rabbitmq.destination.routing_key = REPLY_ROUTING_KEY,
                messaging.message.id = %message_id,
            );
            let reply_trace = TraceContext::of(&published).unwrap_or(request_trace);
            let mut reply =
                topology.customer_reply(message_id, json!({"orderID": order_id, "orderType": answer}).to_string());
            reply.headers.push(("traceparent".to_owned(), reply_trace.to_string()));
            match publisher.publish_one(&reply).instrument(published).await {
                // A lost ack means a redelivery, answered again with the same reply id.
                Ok(()) if consumer.ack(delivery.tag).await.is_err() => break,
                Ok(()) => tracing::info!(order.id = order_id, %total, answer, "answered"),
                Err(e) => {
                    tracing::warn!(error = %e, "reply not confirmed; the request goes back to the queue");
                    if publisher.is_blocked() {
                        // A resource alarm: wait for the broker to lift it, holding the
                        // request, instead of failing it once a connection.
                        publisher.unblocked().await;
                    }
                    let _ = consumer.reject_for_retry(delivery.tag).await;
                    break;
                }
            }
        }
        let why = consumer.stopped().map_or_else(|| "connection lost".to_owned(), |s| s.to_string());
        tracing::warn!(%why, "stopped consuming OrderSaga, reconnecting");
        consumer.close().await;
        publisher.close().await;
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
