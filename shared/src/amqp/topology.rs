//! The exchanges, queues and bindings of the wire contract (SPEC "Messaging"), with the
//! queue arguments that make them safe on RabbitMQ 3.10 to 4.x alike.
//!
//! What the arguments guarantee, and why (RabbitMQ release notes 3.10.0, 4.0.1, 4.3.0;
//! the quorum-queue and dead-lettering guides):
//! - `CustomerSaga` dead-letters a reply after [`DELIVERY_LIMIT`] failed deliveries, and
//!   does it **at least once** (`x-dead-letter-strategy: at-least-once`, which needs
//!   `x-overflow: reject-publish`; the default, at-most-once, drops a dead letter the
//!   dead-letter exchange cannot take at that moment).
//! - `CustomerSaga.dlq` has **no** delivery limit. RabbitMQ 4 gives every quorum queue a
//!   default limit of 20, and a dead letter listed by get-then-close counts a delivery
//!   each time: measured on 4.0.5, a dead letter was gone after 25 listings. The way to
//!   say "no limit" differs: `-1` on 4.x, no argument on 3.x (where `-1` means "drop on
//!   the first return": 3.10's `return_one` compares `count > -1`).
//! - `Orders` is bounded ([`ORDERS_MAX_LENGTH`], oldest dropped first): nothing in the
//!   system consumes it (the Go original's read-model projector has no counterpart
//!   here), and an unbounded queue that nobody drains grows until a memory or disk alarm
//!   blocks every publisher of the broker.
//! - `OrderSaga` belongs to the customer service and is never bounded, nor limited in
//!   deliveries: dropping a request would leave its order waiting for the saga timeout.

use amqprs::{
    FieldTable, FieldValue,
    channel::{Channel, ExchangeDeclareArguments, ExchangeType, QueueBindArguments, QueueDeclareArguments},
};

use super::Outgoing;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated, with a delivery count that survives consumer crashes.
    #[default]
    Quorum,
    Classic,
}

/// `quorum` or `classic`, any case: what `AMQP_QUEUE_TYPE` holds, for every binary and
/// example alike.
impl std::str::FromStr for QueueType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "quorum" => Ok(QueueType::Quorum),
            "classic" => Ok(QueueType::Classic),
            _ => Err("unknown queue type".to_owned()),
        }
    }
}

/// Failed deliveries of one reply before the broker dead-letters it (quorum queues
/// count them across consumer crashes; the worker settles a failure with
/// `basic.reject`, which every version counts, and not with `basic.nack`, which
/// RabbitMQ 4.3 no longer counts).
pub(crate) const DELIVERY_LIMIT: i64 = 10;

/// Messages `Orders` keeps before it drops the oldest: a day of events at about one
/// order a second, well under a broker's memory.
pub(crate) const ORDERS_MAX_LENGTH: i64 = 100_000;

/// The broker we talk to, as far as queue arguments care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerVersion {
    pub major: u32,
}

impl BrokerVersion {
    /// From the server's `version` property (`"3.10.8"`, `"4.0.5"`); an unreadable one
    /// is taken as 4, whose "no limit" is the safe reading.
    pub fn parse(version: &str) -> Self {
        let major = version.split('.').next().and_then(|m| m.trim().parse().ok()).unwrap_or(4);
        BrokerVersion { major }
    }

    /// The `x-delivery-limit` that means "no limit", if this version needs one.
    fn unlimited_deliveries(self) -> Option<FieldValue> {
        (self.major >= 4).then_some(FieldValue::l(-1))
    }
}

/// The customer service's reply (SPEC "Messaging"): its routing key on the exchange,
/// which `Customer.Saga.*` binds to `CustomerSaga`, and its message type.
pub const REPLY_ROUTING_KEY: &str = "Customer.Saga.Reply";
pub const REPLY_TYPE: &str = "CustomerSagaReply";

/// Exchange, queues and bindings of the wire contract (SPEC "Messaging"). The names are
/// fields so that tests can give each run its own.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    /// `Order.*` events (created, canceled, deleted).
    pub orders_queue: String,
    /// `Order.Saga.*`: what the customer service consumes.
    pub order_saga_queue: String,
    /// `Customer.Saga.*`: the customer service's replies.
    pub customer_saga_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub queue_type: QueueType,
    /// Messages `Orders` keeps (the oldest go first); tests make it small.
    pub orders_max_length: i64,
}

impl Topology {
    /// The names of the contract.
    pub fn contract(queue_type: QueueType) -> Self {
        Self::named("", queue_type)
    }

    /// The contract's names behind a prefix, for tests that share a broker.
    pub fn named(prefix: &str, queue_type: QueueType) -> Self {
        Topology {
            exchange: format!("{prefix}Orders"),
            orders_queue: format!("{prefix}Orders"),
            order_saga_queue: format!("{prefix}OrderSaga"),
            customer_saga_queue: format!("{prefix}CustomerSaga"),
            dead_letter_exchange: format!("{prefix}CustomerSaga.dlx"),
            dead_letter_queue: format!("{prefix}CustomerSaga.dlq"),
            queue_type,
            orders_max_length: ORDERS_MAX_LENGTH,
        }
    }

    /// A reply of the customer service, as it publishes one: `body` is the contract's
    /// `{"orderID": …, "orderType": "Approved"|"Rejected"}` (or, in tests, anything).
    pub fn customer_reply(&self, message_id: impl Into<String>, body: impl Into<Vec<u8>>) -> Outgoing {
        Outgoing {
            exchange: self.exchange.clone(),
            routing_key: REPLY_ROUTING_KEY.into(),
            message_id: message_id.into(),
            message_type: REPLY_TYPE.into(),
            timestamp: chrono::Utc::now().timestamp().max(0) as u64,
            headers: vec![],
            body: body.into(),
        }
    }

    /// The arguments of each queue, by name, for this broker version.
    pub fn queue_arguments(&self, broker: BrokerVersion) -> Vec<(&str, Vec<(&'static str, FieldValue)>)> {
        let quorum = self.queue_type == QueueType::Quorum;
        let queue_type: FieldValue = match self.queue_type {
            QueueType::Quorum => "quorum".into(),
            QueueType::Classic => "classic".into(),
        };
        // Every quorum queue but CustomerSaga keeps 3.x's "no delivery limit" on 4.x:
        // past the default 20, a message of a queue without a dead-letter target is
        // dropped (a customer-service request that failed 20 times, a dead letter
        // listed 20 times).
        let unlimited: Vec<(&'static str, FieldValue)> = match broker.unlimited_deliveries() {
            Some(unlimited) if quorum => vec![("x-delivery-limit", unlimited)],
            _ => vec![],
        };
        let mut dead_letters = vec![("x-queue-type", queue_type.clone())];
        dead_letters.extend(unlimited.clone());
        let mut customer_saga = vec![
            ("x-queue-type", queue_type.clone()),
            ("x-dead-letter-exchange", self.dead_letter_exchange.as_str().into()),
        ];
        if quorum {
            customer_saga.extend([
                ("x-delivery-limit", FieldValue::l(DELIVERY_LIMIT)),
                ("x-dead-letter-strategy", "at-least-once".into()),
                ("x-overflow", "reject-publish".into()),
            ]);
        }
        let mut orders = vec![
            ("x-queue-type", queue_type.clone()),
            ("x-max-length", FieldValue::l(self.orders_max_length)),
            ("x-overflow", "drop-head".into()),
        ];
        orders.extend(unlimited.clone());
        let mut order_saga = vec![("x-queue-type", queue_type)];
        order_saga.extend(unlimited);
        vec![
            (self.dead_letter_queue.as_str(), dead_letters),
            (self.orders_queue.as_str(), orders),
            (self.order_saga_queue.as_str(), order_saga),
            (self.customer_saga_queue.as_str(), customer_saga),
        ]
    }

    /// Declares everything, idempotently, one after the other on one channel
    /// (concurrent declares can panic amqprs, issue #145). A queue that exists with
    /// other arguments (declared by an earlier version) fails with PRECONDITION_FAILED,
    /// whose message names it: see the README, "Upgrading the queues".
    pub async fn declare(&self, channel: &Channel, broker: BrokerVersion) -> Result<(), amqprs::error::Error> {
        let durable_exchange = |name: &str, kind: ExchangeType| {
            let mut args = ExchangeDeclareArguments::of_type(name, kind);
            args.durable(true);
            args
        };
        channel.exchange_declare(durable_exchange(&self.exchange, ExchangeType::Topic)).await?;
        channel.exchange_declare(durable_exchange(&self.dead_letter_exchange, ExchangeType::Fanout)).await?;
        let bindings = [
            (&self.dead_letter_queue, &self.dead_letter_exchange, ""),
            (&self.orders_queue, &self.exchange, "Order.*"),
            (&self.order_saga_queue, &self.exchange, "Order.Saga.*"),
            (&self.customer_saga_queue, &self.exchange, "Customer.Saga.*"),
        ];
        for (name, arguments) in self.queue_arguments(broker) {
            let mut table = FieldTable::new();
            for (key, value) in arguments {
                table.insert(key.try_into().expect("argument names are short ASCII literals"), value);
            }
            channel.queue_declare(QueueDeclareArguments::durable_client_named(name).arguments(table).finish()).await?;
            if let Some((queue, exchange, key)) = bindings.iter().find(|(queue, ..)| queue.as_str() == name) {
                channel.queue_bind(QueueBindArguments::new(queue, exchange, key)).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_types_parse_in_any_case_and_nothing_else_does() {
        assert_eq!("quorum".parse(), Ok(QueueType::Quorum));
        assert_eq!(" Classic ".parse(), Ok(QueueType::Classic));
        assert_eq!("CLASSIC".parse(), Ok(QueueType::Classic));
        assert!("stream".parse::<QueueType>().is_err());
    }

    fn arguments(topology: &Topology, version: &str, queue: &str) -> Vec<(&'static str, String)> {
        let all = topology.queue_arguments(BrokerVersion::parse(version));
        let (_, args) = all.into_iter().find(|(name, _)| *name == queue).unwrap();
        args.into_iter().map(|(k, v)| (k, v.to_string())).collect()
    }

    #[test]
    fn prefixed_topology_keeps_the_contract_names() {
        let t = Topology::named("t1.", QueueType::Classic);
        assert_eq!((t.exchange.as_str(), t.dead_letter_queue.as_str()), ("t1.Orders", "t1.CustomerSaga.dlq"));
        assert_eq!(Topology::contract(QueueType::Quorum).customer_saga_queue, "CustomerSaga");
    }

    #[test]
    fn the_dead_letter_queue_has_no_delivery_limit_on_either_major_version() {
        let t = Topology::contract(QueueType::Quorum);
        // 4.x: -1 lifts the default limit of 20.
        assert!(arguments(&t, "4.0.5", "CustomerSaga.dlq").contains(&("x-delivery-limit", "-1".into())));
        // 3.x: no argument is no limit; -1 would drop a dead letter on its first return.
        assert!(arguments(&t, "3.10.8", "CustomerSaga.dlq").iter().all(|(k, _)| *k != "x-delivery-limit"));
    }

    #[test]
    fn replies_are_dead_lettered_at_least_once_after_the_limit() {
        let t = Topology::contract(QueueType::Quorum);
        for version in ["3.10.8", "4.0.5"] {
            let args = arguments(&t, version, "CustomerSaga");
            for expected in [
                ("x-delivery-limit", DELIVERY_LIMIT.to_string()),
                ("x-dead-letter-strategy", "at-least-once".into()),
                ("x-overflow", "reject-publish".into()),
                ("x-dead-letter-exchange", "CustomerSaga.dlx".into()),
            ] {
                assert!(args.contains(&expected), "{version}: {expected:?} missing from {args:?}");
            }
        }
    }

    #[test]
    fn only_orders_is_bounded() {
        let t = Topology::contract(QueueType::Quorum);
        assert!(arguments(&t, "4.0.5", "Orders").contains(&("x-max-length", ORDERS_MAX_LENGTH.to_string())));
        assert!(arguments(&t, "4.0.5", "OrderSaga").iter().all(|(k, _)| !k.starts_with("x-max")));
    }

    #[test]
    fn versions_parse_leniently() {
        assert_eq!(BrokerVersion::parse("3.10.8").major, 3);
        assert_eq!(BrokerVersion::parse("4.0.5").major, 4);
        assert_eq!(BrokerVersion::parse("garbage").major, 4);
    }
}
