//! Every test helper, in one place: `TestApp` (the whole app in-process, with helpers
//! to seed data through the API), a Redis of a test's own, [`eventually`], and
//! - [`broker`]: the broker under test, a topology or a vhost of a test's own;
//! - [`cluster`]: the clusters of scripts/cluster.sh (RabbitMQ, PostgreSQL);
//! - [`saga`]: a worker of the test's ([`saga::TestWorker`]), replies, saga states;
//! - [`relay`]: a relay of the test's ([`relay::TestRelay`]);
//! - [`outbox`]: outbox rows written straight into the table;
//! - [`processes`]: the real binaries, the checking tools, requests to a live process;
//! - [`proxy`]: a TCP proxy that injects faults; [`otlp`]: a real OTLP receiver.

pub mod broker;
pub mod cluster;
pub mod idp;
pub mod otlp;
pub mod outbox;
pub mod processes;
pub mod proxy;
pub mod relay;
pub mod saga;

use poem::{EndpointExt, Response, endpoint::BoxEndpoint, http::StatusCode, test::TestClient};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use std::{sync::Arc, time::Duration};

use order_service::{
    auth::Verifier,
    cache::OrderCache,
    outbox::RelayWaker,
    saga::{Applied, SagaReply},
    server::{self, AppState, app},
    telemetry,
    trace_context::TraceContext,
};

pub struct TestApp {
    pub client: TestClient<BoxEndpoint<'static, Response>>,
    pub db: PgPool,
    pub cache: OrderCache,
}

/// How a [`TestApp`] is set up: a cache and a pool of the test's, or its own.
pub struct TestAppBuilder {
    db: PgPool,
    cache: Option<OrderCache>,
    pool: Option<PgPool>,
    auth: Option<Arc<Verifier>>,
}

impl TestAppBuilder {
    /// The cache the app reads and invalidates (default: [`test_cache`]).
    pub fn cache(mut self, cache: OrderCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The pool the app runs on, as is (default: [`api_pool`] of 10 on the test's
    /// database).
    pub fn pool(mut self, pool: PgPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Requests need a bearer token this verifier accepts.
    pub fn auth(mut self, verifier: Verifier) -> Self {
        self.auth = Some(Arc::new(verifier));
        self
    }

    pub fn build(self) -> TestApp {
        show_logs_if_asked();
        let db = self.pool.unwrap_or_else(|| api_pool(&self.db, 10));
        let cache = self.cache.unwrap_or_else(test_cache);
        let state = AppState {
            db: db.clone().into(),
            cache: cache.clone(),
            relays: RelayWaker::start(db.clone().into()),
            metrics: telemetry::metrics(),
            max_body_bytes: 64 * 1024,
            auth: self.auth,
        };
        TestApp { client: TestClient::new(app(state).map_to_response().boxed()), db, cache }
    }
}

/// Polls `check` until it holds, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// What [`TestApp::place_order`] created.
#[derive(Debug, Clone, Copy)]
pub struct Placed {
    pub user: Uuid,
    pub address: Uuid,
    pub order: Uuid,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub content_type: Option<String>,
    pub headers: poem::http::HeaderMap,
}

impl Reply {
    #[track_caller]
    pub fn assert_error(&self, status: u16, needle: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        let message = self.body["message"].as_str().unwrap_or_else(|| panic!("no message in {}", self.body));
        assert!(self.body["data"].is_string(), "no data in {}", self.body);
        assert_eq!(self.body.as_object().map(|o| o.len()), Some(2), "extra keys in {}", self.body);
        assert!(message.contains(needle), "{message:?} does not contain {needle:?}");
    }
}

/// `TEST_LOG=1` (or a filter such as `TEST_LOG=order_service=debug`) shows the app's logs
/// in the output of a failing test; without it, tests run quiet.
pub fn show_logs_if_asked() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let filter = if filter == "1" { "info".to_owned() } else { filter };
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}

/// A cache under a key prefix of its own, on the local Redis.
pub fn test_cache() -> OrderCache {
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    OrderCache::new(REDIS_URL, &prefix, Duration::from_secs(300)).unwrap()
}

/// A pool of at most `connections` sessions set up as the api's, on the test's database.
pub fn api_pool(db: &PgPool, connections: u32) -> PgPool {
    order_service::db::connect(&processes::database_url(db), connections, server::SESSION_SETTINGS, Default::default())
        .unwrap()
        .pool()
        .clone()
}

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

impl TestApp {
    /// The app on a pool of the api's own sessions (its settings, [`server::SESSION_SETTINGS`])
    /// on the test's database, with a cache of its own.
    pub fn new(db: PgPool) -> Self {
        Self::builder(db).build()
    }

    pub fn builder(db: PgPool) -> TestAppBuilder {
        TestAppBuilder { db, cache: None, pool: None, auth: None }
    }

    /// A request built on [`TestApp::client`] (with headers of its own, say), sent.
    pub async fn send(request: poem::test::TestRequestBuilder<'_, BoxEndpoint<'static, Response>>) -> Reply {
        Self::reply(request.send().await).await
    }

    async fn reply(response: poem::test::TestResponse) -> Reply {
        let response = response.0;
        let status = response.status();
        let content_type = response.content_type().map(str::to_owned);
        let headers = response.headers().clone();
        let text = response.into_body().into_string().await.expect("a body");
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Reply { status, body, content_type, headers }
    }

    pub async fn get(&self, path: &str) -> Reply {
        Self::reply(self.client.get(path).send().await).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        Self::reply(self.client.post(path).body_json(body).send().await).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        Self::reply(self.client.put(path).body_json(body).send().await).await
    }

    pub async fn delete(&self, path: &str, body: &Value) -> Reply {
        Self::reply(self.client.delete(path).body_json(body).send().await).await
    }

    /// A request of `method` (GET unless POST, PUT or DELETE) to `path`, to build on.
    pub fn request(
        &self,
        method: &str,
        path: &str,
    ) -> poem::test::TestRequestBuilder<'_, BoxEndpoint<'static, Response>> {
        match method {
            "POST" => self.client.post(path),
            "PUT" => self.client.put(path),
            "DELETE" => self.client.delete(path),
            _ => self.client.get(path),
        }
    }

    pub async fn raw(&self, method: &str, path: &str, content_type: &str, body: impl Into<poem::Body>) -> Reply {
        Self::send(self.request(method, path).content_type(content_type).body(body)).await
    }

    pub async fn create_product(&self, name: &str, price: f64, discount: i64) -> Uuid {
        let id = Uuid::new_v4();
        let reply = self
            .post(
                "/api/v1/products/",
                &json!({"productID": id, "price": price, "discount": discount, "description": "d", "name": name}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
        id
    }

    pub async fn create_address(&self) -> Uuid {
        let id = Uuid::new_v4();
        let reply = self
            .post(
                "/api/v1/address/",
                &json!({"addressID": id, "buildingNumber": 44, "streetName": "Pushkina", "city": "Moscow", "country": "Russia"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
        id
    }

    pub async fn create_user(&self, username: &str, address: Uuid) -> Uuid {
        let id = Uuid::new_v4();
        let reply =
            self.post("/api/v1/users/", &json!({"userID": id, "username": username, "addressID": address})).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
        id
    }

    /// A user with an address and an order of the given products.
    pub async fn place_order(&self, products: &[Uuid]) -> Placed {
        let address = self.create_address().await;
        let user = self.create_user("test", address).await;
        let order = self.order_for(user, address, products).await;
        Placed { user, address, order }
    }

    /// Another order of an existing user.
    pub async fn order_for(&self, user: Uuid, address: Uuid, products: &[Uuid]) -> Uuid {
        let order = Uuid::new_v4();
        self.post_order(order, user, address, products).await;
        order
    }

    /// `POST /api/v1/orders/`, which must succeed.
    async fn post_order(&self, order: Uuid, user: Uuid, address: Uuid, products: &[Uuid]) {
        let reply = self
            .post(
                "/api/v1/orders/",
                &json!({"orderID": order, "paymentMethod": "Online", "productsIds": products, "userID": user, "deliveryAddress": address}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    }

    /// An order with a chosen id (say one a reply came early for), of a product, an
    /// address and a user of its own.
    pub async fn place_order_with_id(&self, order: Uuid) {
        let product = self.create_product(&format!("Product {}", Uuid::new_v4().simple()), 10.0, 0).await;
        let address = self.create_address().await;
        let user = self.create_user("late", address).await;
        self.post_order(order, user, address, &[product]).await;
    }

    /// Stands in for the customer service and the worker: applies an `Approved` reply as
    /// the worker does (without the worker's cache invalidation, which tests check).
    pub async fn approve(&self, order: Uuid) {
        let reply = SagaReply::Approved { order_id: order };
        let applied = order_service::saga::apply(
            &self.db.clone().into(),
            &format!("test-approve-{order}"),
            reply,
            TraceContext::new_root(),
        )
        .await;
        assert!(matches!(applied, Ok(Applied::Approved { .. })), "{applied:?}");
    }

    /// Row counts of the tables an order writes.
    pub async fn order_tables(&self) -> (i64, i64, i64) {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM order_products), (SELECT count(*) FROM outbox)",
        )
        .fetch_one(&self.db)
        .await
        .unwrap()
    }
}

/// Moves the outbox rows `condition` (SQL) selects to `outbox_published` as the relay
/// does with what the broker confirmed, then dates their publication `published_at` (SQL).
pub async fn publish_rows(db: &PgPool, condition: &str, published_at: &str) {
    let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT id FROM outbox WHERE {condition}")))
        .fetch_all(db)
        .await
        .unwrap();
    order_service::outbox::relay::move_to_published(db, &ids).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE outbox_published SET published_at = {published_at} WHERE id = ANY($1)"
    )))
    .bind(&ids)
    .execute(db)
    .await
    .unwrap();
}

/// A Redis server of the test's own, on a free port, so it can be stopped and started
/// again without disturbing the other tests. With `persistent`, it keeps its data in an
/// append-only file across a stop and a start, as a production Redis with AOF does.
pub struct OwnRedis {
    pub port: u16,
    dir: Option<std::path::PathBuf>,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    pub fn start(port: u16) -> Self {
        Self::launch(port, None)
    }

    pub fn persistent() -> Self {
        let port = processes::free_port();
        let dir = std::env::temp_dir().join(format!("own-redis-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self::launch(port, Some(dir))
    }

    fn launch(port: u16, dir: Option<std::path::PathBuf>) -> Self {
        let child = Self::spawn(port, dir.as_deref());
        OwnRedis { port, dir, child: Some(child) }
    }

    fn spawn(port: u16, dir: Option<&std::path::Path>) -> std::process::Child {
        let mut command = std::process::Command::new("redis-server");
        command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""]);
        match dir {
            Some(dir) => {
                command.args(["--appendonly", "yes", "--appendfsync", "always", "--dir", dir.to_str().unwrap()])
            }
            None => command.args(["--appendonly", "no"]),
        };
        command.stdout(std::process::Stdio::null()).spawn().expect("redis-server runs")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server the way an operator does (SIGTERM: a persistent one saves).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same data if it is persistent.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(Self::spawn(self.port, self.dir.as_deref()));
    }

    pub async fn answers(&self) -> bool {
        let url = self.url();
        eventually(Duration::from_secs(10), || async {
            match redis::Client::open(url.as_str()) {
                Ok(client) => match client.get_multiplexed_async_connection().await {
                    Ok(mut c) => redis::cmd("PING").query_async::<String>(&mut c).await.is_ok(),
                    Err(_) => false,
                },
                Err(_) => false,
            }
        })
        .await
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
