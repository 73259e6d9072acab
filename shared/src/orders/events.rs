//! The events an order emits (routing key → `eventType`), as published on `Orders`.

use serde::Serialize;
use uuid::Uuid;

use crate::{outbox::Event, pricing::Money};

/// Starts the saga: asks the customer service to approve the order.
#[derive(Debug, Clone, Serialize)]
pub struct OrderCreateSaga {
    #[serde(rename = "orderID")]
    pub order_id: Uuid,
    #[serde(rename = "userID")]
    pub user_id: Uuid,
    #[serde(rename = "productsIDs")]
    pub products_ids: Vec<Uuid>,
    #[serde(rename = "totalPrice")]
    pub total_price: Money,
}

impl Event for OrderCreateSaga {
    const ROUTING_KEY: &'static str = "Order.Saga.Create";
    const EVENT_TYPE: &'static str = "OrderCreateSaga";

    fn aggregate_id(&self) -> Uuid {
        self.order_id
    }
}

/// An approved order was (softly) deleted.
#[derive(Debug, Clone, Serialize)]
pub struct OrderDeleted {
    #[serde(rename = "orderID")]
    pub order_id: Uuid,
    #[serde(rename = "userID")]
    pub user_id: Uuid,
}

impl Event for OrderDeleted {
    const ROUTING_KEY: &'static str = "Order.Delete";
    const EVENT_TYPE: &'static str = "OrderDeleted";

    fn aggregate_id(&self) -> Uuid {
        self.order_id
    }
}
