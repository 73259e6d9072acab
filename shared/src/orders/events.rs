//! The events an order emits (routing key → `eventType`), as published on `Orders`.

use serde::Serialize;
use uuid::Uuid;

use crate::{
    orders::domain::{OrderStatus, PaymentMethod, SagaStatus},
    outbox::Event,
    pricing::Money,
};

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
    /// On a re-request by the saga timeout only: the `eventID` of the first request, so
    /// the customer service can answer it without checking the customer again.
    #[serde(rename = "originalEventID", skip_serializing_if = "Option::is_none")]
    pub original_event_id: Option<Uuid>,
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

/// The client of an order, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EventClient {
    #[serde(rename = "ClientID")]
    pub client_id: Uuid,
    #[serde(rename = "ClientName")]
    pub client_name: String,
}

/// A line of an order, in events.
#[derive(Debug, Clone, Serialize)]
pub struct OrderLine {
    #[serde(rename = "productID")]
    pub product_id: Uuid,
    pub name: String,
    #[serde(rename = "actualPrice")]
    pub actual_price: Money,
}

/// The saga approved the order: its full data, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OrderCreated {
    #[serde(rename = "orderID")]
    pub order_id: Uuid,
    #[serde(rename = "userID")]
    pub user_id: Uuid,
    #[serde(rename = "orderStatus")]
    pub order_status: OrderStatus,
    #[serde(rename = "sagaStatus")]
    pub saga_status: SagaStatus,
    #[serde(rename = "paymentMethod")]
    pub payment_method: PaymentMethod,
    pub client: EventClient,
    pub address: String,
    #[serde(rename = "serialNumber")]
    pub serial_number: i32,
    pub products: Vec<OrderLine>,
    #[serde(rename = "totalPrice")]
    pub total_price: Money,
    #[serde(rename = "createdAt")]
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl Event for OrderCreated {
    const ROUTING_KEY: &'static str = "Order.Create";
    const EVENT_TYPE: &'static str = "OrderCreated";

    fn aggregate_id(&self) -> Uuid {
        self.order_id
    }
}

/// The saga rejected the order, or it timed out: it is canceled (the row stays).
#[derive(Debug, Clone, Serialize)]
pub struct OrderCanceled {
    #[serde(rename = "orderID")]
    pub order_id: Uuid,
    #[serde(rename = "userID")]
    pub user_id: Uuid,
    pub reason: String,
}

impl Event for OrderCanceled {
    const ROUTING_KEY: &'static str = "Order.Cancel";
    const EVENT_TYPE: &'static str = "OrderCanceled";

    fn aggregate_id(&self) -> Uuid {
        self.order_id
    }
}
