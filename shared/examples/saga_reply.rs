//! Answers a saga by hand, as the customer service would — the command-line twin of
//! publishing the payload from the RabbitMQ admin panel:
//!
//! ```sh
//! cargo run -q --example saga_reply -- 1b2b434e-44e8-424c-bb1b-1fe609fc1f7d Approved
//! ```
//!
//! Publishes `{"orderID": "<id>", "orderType": "Approved" | "Rejected"}` to the `Orders`
//! exchange with routing key `Customer.Saga.Reply`, and waits for the broker's confirm.
//! Reads `AMQP_URL` and `AMQP_QUEUE_TYPE` like the services.

use order_service::{
    amqp::Publisher,
    config::{AmqpConfig, FromEnv},
};
use serde_json::json;
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: saga_reply <orderID> [Approved|Rejected]";
    let order_id: Uuid = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let answer = args.next().unwrap_or_else(|| "Approved".into());
    anyhow::ensure!(answer == "Approved" || answer == "Rejected", "{usage}");

    // Read as the services read them.
    let amqp = AmqpConfig::from_env()?;
    let topology = amqp.topology();
    let mut publisher = Publisher::connect(&amqp.connection_args("saga-reply")?, &topology).await?;
    let reply = topology
        .customer_reply(Uuid::new_v4().to_string(), json!({"orderID": order_id, "orderType": answer}).to_string());
    publisher.publish_one(&reply).await?;
    publisher.close().await;
    println!("published {answer} for order {order_id}");
    Ok(())
}
