//! HTTP operations of orders.

use crate::db::Db;
use crate::telemetry::names;
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::Example,
};
use serde::Serialize;
use uuid::Uuid;

use super::{
    CreateOrder, DeleteOrder, ListOrders, OrderById, OrderView, UserOrders,
    domain::{OrderStatus, PaymentMethod, SagaStatus},
};
use crate::{
    auth::{Caller, Scope},
    bus,
    cache::{Filled, Lookup, OrderCache},
    error::AppError,
    http::{
        ApiTags,
        case_insensitive::CaseInsensitive,
        errors::{CommandError, QueryError},
        formats::{JsonDecimal, rfc3339},
        responses::{NoContent, RawJson},
    },
    outbox::RelayWaker,
    pagination::{Page, PageInfo, SortOrder},
    pricing::{MAX_ORDER_LINES, Money},
    trace_context::TraceContext,
    validate,
};

pub struct OrdersApi {
    pub db: Db,
    pub cache: OrderCache,
    pub relays: RelayWaker,
}

/// A new order.
#[derive(Debug, Object)]
#[oai(example)]
pub(crate) struct CreateOrderRequest {
    #[oai(rename = "orderID")]
    pub order_id: Uuid,
    #[oai(rename = "paymentMethod")]
    pub payment_method: PaymentMethod,
    /// Existing products, each at most once; 1 to 1000 of them.
    #[oai(rename = "productsIds", validator(min_items = 1, max_items = 1000, unique_items))]
    pub products_ids: Vec<Uuid>,
    /// An existing user (404 otherwise).
    #[oai(rename = "userID")]
    pub user_id: Uuid,
    /// An existing address to deliver to (404 otherwise).
    #[oai(rename = "deliveryAddress")]
    pub delivery_address: Uuid,
}

const _: () = assert!(MAX_ORDER_LINES == 1000, "keep the productsIds validator in step");

impl Example for CreateOrderRequest {
    fn example() -> Self {
        CreateOrderRequest {
            order_id: Uuid::from_u128(0x1b2b434e_44e8_424c_bb1b_1fe609fc1f7d),
            payment_method: PaymentMethod::Online,
            products_ids: vec![Uuid::from_u128(0xec14f9be_44e3_4ec0_97d3_47fdac6c55c9)],
            user_id: Uuid::from_u128(0x4b2b575e_65e7_427c_bb1b_1fe609fc1f6b),
            delivery_address: Uuid::from_u128(0x7b2b575e_65e7_427c_bb1b_1fe609fc1f6b),
        }
    }
}

/// Which order to delete.
#[derive(Debug, Object)]
pub(crate) struct DeleteOrderRequest {
    #[oai(rename = "orderID")]
    pub order_id: Uuid,
}

/// The client who placed an order.
#[derive(Debug, Object, Serialize)]
pub struct Client {
    #[oai(rename = "ClientID")]
    #[serde(rename = "ClientID")]
    pub client_id: Uuid,
    #[oai(rename = "ClientName")]
    #[serde(rename = "ClientName")]
    pub client_name: String,
}

/// A line of an order, at the price paid.
#[derive(Debug, Object, Serialize)]
pub struct OrderProduct {
    #[oai(rename = "productID")]
    #[serde(rename = "productID")]
    pub product_id: Uuid,
    pub name: String,
    /// Price after discount, when the order was placed.
    #[oai(rename = "actualPrice")]
    #[serde(rename = "actualPrice")]
    pub actual_price: JsonDecimal,
}

/// An order. The mixed casing of the keys is the public contract.
///
/// Sent with `serde` (see [`RawJson`]), so each key is named for both derives; the test
/// `serde_and_the_spec_write_the_same_json` holds them together.
#[derive(Debug, Object, Serialize)]
pub struct Order {
    #[oai(rename = "orderStatus")]
    #[serde(rename = "orderStatus")]
    pub order_status: OrderStatus,
    #[oai(rename = "paymentMethod")]
    #[serde(rename = "paymentMethod")]
    pub payment_method: PaymentMethod,
    pub client: Client,
    /// Delivery address: `country, city, streetName, buildingNumber`.
    pub address: String,
    #[oai(rename = "OrderID")]
    #[serde(rename = "OrderID")]
    pub order_id: Uuid,
    /// 1 to 100, then 1 again.
    #[oai(rename = "serialNumber")]
    #[serde(rename = "serialNumber")]
    pub serial_number: i32,
    pub products: Vec<OrderProduct>,
    #[oai(rename = "createdAt")]
    #[serde(rename = "createdAt", serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Sum of the products' actual prices.
    #[oai(rename = "totalPrice")]
    #[serde(rename = "totalPrice")]
    pub total_price: JsonDecimal,
    #[oai(rename = "sagaStatus")]
    #[serde(rename = "sagaStatus")]
    pub saga_status: SagaStatus,
}

impl TryFrom<OrderView> for Order {
    type Error = AppError;

    fn try_from(view: OrderView) -> Result<Self, AppError> {
        Ok(Order {
            order_status: view.order_status,
            payment_method: view.payment_method,
            client: Client { client_id: view.user_id, client_name: view.client_name },
            address: view.address,
            order_id: view.id,
            serial_number: view.serial_number,
            products: view
                .products
                .0
                .into_iter()
                .map(|line| OrderProduct {
                    product_id: line.product_id,
                    name: line.name,
                    actual_price: Money::from_db(line.actual_price).into(),
                })
                .collect(),
            created_at: view.created_at,
            total_price: Money::from_db(view.total_price).into(),
            saga_status: view.saga_status,
        })
    }
}

#[derive(Debug, Object, Serialize)]
pub struct OrderList {
    pub orders: Vec<Order>,
    #[oai(flatten)]
    #[serde(flatten)]
    pub page: PageInfo,
}

impl OrderList {
    fn new(views: Vec<OrderView>, page: Page) -> Result<Self, AppError> {
        let orders = views.into_iter().map(Order::try_from).collect::<Result<Vec<_>, _>>()?;
        let page = PageInfo { count: orders.len() as i64, limit: page.limit, offset: page.offset, order: page.order };
        Ok(OrderList { orders, page })
    }
}

#[derive(ApiResponse)]
pub(crate) enum OrderResponse {
    #[oai(status = 200)]
    Ok(RawJson<Order>),
}

#[derive(ApiResponse)]
pub(crate) enum OrderListResponse {
    #[oai(status = 200)]
    Ok(RawJson<OrderList>),
}

/// A user's orders: bytes from the cache, or freshly serialized (and cached).
#[derive(ApiResponse)]
pub(crate) enum UserOrdersResponse {
    #[oai(status = 200)]
    Ok(RawJson<OrderList>),
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Orders")]
impl OrdersApi {
    /// Create an order
    ///
    /// Writes the order, its lines and the `Order.Saga.Create` event in one transaction.
    /// The order starts `New`/`Pending`; poll `GET /api/v1/orders/{orderID}` for the saga's answer.
    #[oai(path = "/orders", method = "post")]
    async fn create(
        &self,
        body: Json<CaseInsensitive<CreateOrderRequest>>,
        trace: Data<&TraceContext>,
        caller: Data<&Caller>,
    ) -> Result<NoContent, CommandError> {
        let req = body.0.0;
        caller.acts_for(req.user_id)?;
        let command = CreateOrder::new(
            req.order_id,
            req.user_id,
            req.delivery_address,
            req.payment_method,
            req.products_ids,
            *trace.0,
        )?;
        let relays = self.relays.clone();
        let wake = move |_: &()| {
            relays.wake();
            std::future::ready(())
        };
        bus::dispatch_then(&self.db, command, wake).await?;
        Ok(NoContent::Done)
    }

    /// List approved orders
    ///
    /// Approved, not deleted orders from PostgreSQL, by `createdAt` then `OrderID`.
    #[oai(path = "/orders", method = "get")]
    async fn list(
        &self,
        /// Page size, 1 to 1000 (default 1000).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip, 0 to 10000 (default 0).
        #[oai(validator(minimum(value = "0"), maximum(value = "10000")))]
        offset: Query<Option<i64>>,
        /// `asc` (default) or `desc`.
        order: Query<Option<SortOrder>>,
        caller: Data<&Caller>,
    ) -> Result<OrderListResponse, QueryError> {
        caller.require(Scope::OrdersReadAll)?;
        let page = Page::new(limit.0, offset.0, order.0);
        let orders = ListOrders(page).fetch(&self.db).await?;
        Ok(OrderListResponse::Ok(RawJson::encode(&OrderList::new(orders, page)?)))
    }

    /// Get an order
    ///
    /// In any saga state (`Pending`, `Approved`, `Rejected`); 404 once deleted.
    #[oai(path = "/orders/:orderID", method = "get")]
    async fn by_id(
        &self,
        /// The order's id, a UUID.
        #[oai(name = "orderID")]
        order_id: Path<String>,
        caller: Data<&Caller>,
    ) -> Result<OrderResponse, QueryError> {
        let id = validate::id("orderID", &order_id.0)?;
        let order = OrderById(id).fetch(&self.db).await?;
        // Another user's order answers as a missing one: its existence is not told.
        if !caller.reads_orders_of(order.user_id) {
            return Err(AppError::not_found(super::NOT_FOUND, id).into());
        }
        Ok(OrderResponse::Ok(RawJson::encode(&Order::try_from(order)?)))
    }

    /// List a user's approved orders
    ///
    /// Approved, not deleted orders of one user, by `createdAt` then `OrderID`, read from
    /// the Redis cache (filled from PostgreSQL on a miss, and served from PostgreSQL if
    /// Redis is down). 404 for an unknown user.
    #[oai(path = "/orders/user/:userID", method = "get")]
    async fn by_user(
        &self,
        /// The user's id, a UUID.
        #[oai(name = "userID")]
        user_id: Path<String>,
        /// Page size, 1 to 1000 (default 1000).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip, 0 to 10000 (default 0).
        #[oai(validator(minimum(value = "0"), maximum(value = "10000")))]
        offset: Query<Option<i64>>,
        /// `asc` (default) or `desc`.
        order: Query<Option<SortOrder>>,
        caller: Data<&Caller>,
    ) -> Result<UserOrdersResponse, QueryError> {
        let page = Page::new(limit.0, offset.0, order.0);
        let user_id = validate::id("userID", &user_id.0)?;
        // Whether that user exists or not, another's orders are not there for this caller.
        if !caller.reads_orders_of(user_id) {
            return Err(AppError::not_found(crate::users::NOT_FOUND, user_id).into());
        }
        Ok(UserOrdersResponse::Ok(user_orders(&self.db, &self.cache, user_id, page).await?))
    }

    /// Delete an order
    ///
    /// Soft-deletes an approved, not yet deleted order (404 otherwise) and emits `Order.Delete`.
    #[oai(path = "/orders", method = "delete")]
    async fn delete(
        &self,
        body: Json<CaseInsensitive<DeleteOrderRequest>>,
        trace: Data<&TraceContext>,
        caller: Data<&Caller>,
    ) -> Result<NoContent, CommandError> {
        let command = DeleteOrder { id: body.0.0.order_id, owner: caller.deletes_orders_of(), trace: *trace.0 };
        // The order was in the user's cached list. Invalidated by the task that commits,
        // right after the commit: this handler is dropped if the client goes away.
        let (cache, relays) = (self.cache.clone(), self.relays.clone());
        let after_commit = move |user_id: &Uuid| {
            let user_id = *user_id;
            relays.wake();
            async move { cache.invalidate_after_commit(user_id).await }
        };
        bus::dispatch_then(&self.db, command, after_commit).await?;
        Ok(NoContent::Done)
    }
}

/// Cache-aside read of a user's page (see `cache`): a hit is served as stored; a miss
/// reads PostgreSQL and fills the cache, fenced against a concurrent invalidation; a
/// Redis failure degrades to PostgreSQL alone.
pub async fn user_orders(
    db: &Db,
    cache: &OrderCache,
    user_id: Uuid,
    page: Page,
) -> Result<RawJson<OrderList>, AppError> {
    let seen = match cache.read(user_id, &page).await {
        Ok(Lookup::Hit(body)) => {
            metrics::counter!(names::CACHE_REQUESTS, "result" => "hit").increment(1);
            return Ok(RawJson::from_bytes(body));
        }
        Ok(Lookup::Miss(generation)) => {
            metrics::counter!(names::CACHE_REQUESTS, "result" => "miss").increment(1);
            Some(generation)
        }
        Ok(Lookup::Unsettled) => {
            metrics::counter!(names::CACHE_REQUESTS, "result" => "unsettled").increment(1);
            None
        }
        Err(e) => {
            metrics::counter!(names::CACHE_REQUESTS, "result" => "error").increment(1);
            tracing::warn!(error.cause = %e, "cache unavailable, reading from PostgreSQL");
            None
        }
    };
    let orders = UserOrders { user_id, page }.fetch(db).await?;
    let body = RawJson::encode(&OrderList::new(orders, page)?);
    if let Some(generation) = seen {
        match cache.fill(user_id, &page, &generation, body.bytes()).await {
            Ok(filled) => {
                metrics::counter!(names::CACHE_FILLS, "result" => filled.label()).increment(1);
                if filled == Filled::Raced {
                    tracing::debug!(user.id = %user_id, "page changed while it was read; not cached");
                }
            }
            Err(e) => tracing::warn!(error.cause = %e, "cache fill failed"),
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;
    use proptest::prelude::*;
    use rust_decimal::Decimal;

    use super::*;

    fn order(n: usize, name: String, cents: i64, created_at: DateTime<Utc>) -> Order {
        const ORDER: [OrderStatus; 5] = [
            OrderStatus::New,
            OrderStatus::InProcessing,
            OrderStatus::Processed,
            OrderStatus::Delivered,
            OrderStatus::Canceled,
        ];
        const SAGA: [SagaStatus; 3] = [SagaStatus::Pending, SagaStatus::Approved, SagaStatus::Rejected];
        const PAYMENT: [PaymentMethod; 3] = [PaymentMethod::Online, PaymentMethod::Card, PaymentMethod::Cash];
        let price = JsonDecimal(Decimal::new(cents, 2));
        Order {
            order_status: ORDER[n % ORDER.len()],
            payment_method: PAYMENT[n % PAYMENT.len()],
            client: Client { client_id: Uuid::new_v4(), client_name: name.clone() },
            address: format!("{name}, City, Street, {n}"),
            order_id: Uuid::new_v4(),
            serial_number: n as i32,
            products: (0..n % 4)
                .map(|_| OrderProduct { product_id: Uuid::new_v4(), name: name.clone(), actual_price: price })
                .collect(),
            created_at,
            total_price: price,
            saga_status: SAGA[n % SAGA.len()],
        }
    }

    proptest! {
        /// The bytes sent are the JSON the spec describes: `serde`'s keys, enums, times and
        /// prices are poem-openapi's.
        #[test]
        fn serde_and_the_spec_write_the_same_json(
            names in prop::collection::vec(".{0,12}", 1..8),
            cents in 0i64..10_000_000_000_000,
            nanos in 0i64..4_000_000_000_000_000_000,
            descending in any::<bool>(),
        ) {
            let created_at = DateTime::from_timestamp_nanos(nanos);
            let orders: Vec<Order> =
                names.into_iter().enumerate().map(|(n, name)| order(n, name, cents / (n as i64 + 1), created_at)).collect();
            let order = if descending { SortOrder::Desc } else { SortOrder::Asc };
            let page = PageInfo { count: orders.len() as i64, limit: 20, offset: 3, order };
            let list = OrderList { orders, page };
            let sent: serde_json::Value = serde_json::from_slice(RawJson::encode(&list).bytes()).unwrap();
            prop_assert_eq!(sent, list.to_json().unwrap());
            let sent: serde_json::Value = serde_json::from_slice(RawJson::encode(&list.orders[0]).bytes()).unwrap();
            prop_assert_eq!(sent, list.orders[0].to_json().unwrap());
        }
    }
}
