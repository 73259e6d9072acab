//! The Redis read side of `GET /api/v1/orders/user/{userID}`.

use std::time::Duration;

use order_service::{
    cache::{Lookup, OrderCache},
    http::pagination::{Page, SortOrder},
    orders::api::user_orders,
};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{TestApp, test_cache};

fn ids(body: &Value) -> Vec<Value> {
    body["orders"].as_array().unwrap().iter().map(|o| o["OrderID"].clone()).collect()
}

fn page() -> Page {
    Page { limit: 1000, offset: 0, order: SortOrder::Asc }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_page_is_served_from_the_cache_until_the_user_is_invalidated(db: PgPool) {
    let cache = test_cache();
    let app = TestApp::with_cache(db, cache.clone());
    let phone = app.create_product("Phone", 10.0, 0).await;
    let (user, address, first) = app.place_order(&[phone]).await;
    app.approve(first).await;
    let path = format!("/api/v1/orders/user/{user}");
    assert_eq!(ids(&app.get(&path).await.body), [json!(first)]);

    // A change the cache is not told about (here, straight in SQL) stays invisible…
    let second = app.order_for(user, address, &[phone]).await;
    app.approve(second).await;
    let reply = app.get(&path).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type.as_deref(), Some("application/json; charset=utf-8"));
    assert_eq!(ids(&reply.body), [json!(first)], "served from the cache");
    // …until the user is invalidated, as the saga worker does after its commit.
    cache.invalidate(user).await.unwrap();
    assert_eq!(ids(&app.get(&path).await.body), [json!(first), json!(second)]);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refill_that_raced_an_invalidation_stores_nothing(db: PgPool) {
    let cache = test_cache();
    let app = TestApp::with_cache(db.clone(), cache.clone());
    let phone = app.create_product("Phone", 10.0, 0).await;
    let (user, _, order) = app.place_order(&[phone]).await;

    // The reader misses and reads PostgreSQL: the order is still pending, so the page is empty.
    let Lookup::Miss(seen) = cache.read(user, &page()).await.unwrap() else { panic!("a cold cache") };
    let stale = br#"{"orders":[],"count":0,"limit":1000,"offset":0,"order":"asc"}"#;
    // The worker commits the approval and invalidates…
    app.approve(order).await;
    cache.invalidate(user).await.unwrap();
    // …then the reader tries to store what it read: refused.
    assert!(!cache.fill(user, &page(), &seen, stale).await.unwrap());
    assert!(matches!(cache.read(user, &page()).await.unwrap(), Lookup::Miss(_)));
    let served = app.get(&format!("/api/v1/orders/user/{user}")).await;
    assert_eq!(ids(&served.body), [json!(order)], "the stale page is never served");

    // Without a race, a fill is kept.
    let Lookup::Miss(seen) = cache.read(user, &Page { limit: 5, ..page() }).await.unwrap() else { panic!() };
    assert!(cache.fill(user, &Page { limit: 5, ..page() }, &seen, b"{}").await.unwrap());
}

#[sqlx::test(migrations = "../migrations")]
async fn the_read_path_fences_its_own_refill(db: PgPool) {
    // The same race through `user_orders`, with the invalidation landing while the
    // reader's query runs: a second connection holds the reader's query back.
    let cache = test_cache();
    let app = TestApp::with_cache(db.clone(), cache.clone());
    let phone = app.create_product("Phone", 10.0, 0).await;
    let (user, _, order) = app.place_order(&[phone]).await;
    let mut lock = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let reader = {
        let (db, cache) = (db.clone(), cache.clone());
        tokio::spawn(async move { user_orders(&db, &cache, user, page()).await.map(|b| b.bytes().to_vec()) })
    };
    // Wait until the reader's query is queued behind the lock.
    let blocked = crate::broker::eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND relation = 'orders'::regclass)",
        )
        .fetch_one(&db)
        .await
        .unwrap()
    })
    .await;
    assert!(blocked, "the reader never queried");
    sqlx::query("UPDATE orders SET saga_status = 'Approved' WHERE id = $1")
        .bind(order)
        .execute(&mut *lock)
        .await
        .unwrap();
    cache.invalidate(user).await.unwrap();
    lock.commit().await.unwrap();
    let _ = reader.await.unwrap().unwrap();
    let served = app.get(&format!("/api/v1/orders/user/{user}")).await;
    assert_eq!(ids(&served.body), [json!(order)]);
}

#[sqlx::test(migrations = "../migrations")]
async fn deleting_an_order_invalidates_its_users_pages(db: PgPool) {
    let app = TestApp::new(db);
    let phone = app.create_product("Phone", 10.0, 0).await;
    let (user, _, order) = app.place_order(&[phone]).await;
    app.approve(order).await;
    let path = format!("/api/v1/orders/user/{user}");
    assert_eq!(ids(&app.get(&path).await.body), [json!(order)]);
    assert_eq!(app.delete("/api/v1/orders/", &json!({"orderID": order})).await.status, 204);
    assert_eq!(ids(&app.get(&path).await.body), Vec::<Value>::new());
}

#[sqlx::test(migrations = "../migrations")]
async fn with_redis_down_the_list_is_served_from_postgres(db: PgPool) {
    // Nothing listens there: every cache call fails at once.
    let down = OrderCache::new("redis://127.0.0.1:1", "down", Duration::from_secs(60)).unwrap();
    let app = TestApp::with_cache(db, down);
    let phone = app.create_product("Phone", 10.0, 0).await;
    let (user, _, order) = app.place_order(&[phone]).await;
    app.approve(order).await;
    let reply = app.get(&format!("/api/v1/orders/user/{user}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(ids(&reply.body), [json!(order)]);
    app.get(&format!("/api/v1/orders/user/{}", Uuid::new_v4())).await.assert_error(404, "User with this id not exist;");
    assert_eq!(app.delete("/api/v1/orders/", &json!({"orderID": order})).await.status, 204);
    let reply = app.get("/readyz").await;
    assert_eq!((reply.status.as_u16(), reply.body), (503, json!({"status": "redis unavailable"})));
}

/// A Redis server of the test's own, on a free port, so it can be stopped and started
/// again without disturbing the other tests.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        OwnRedis { port, child: Some(child) }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn the_api_carries_on_through_a_redis_restart(db: PgPool) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut redis = OwnRedis::start(port);
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let cache = OrderCache::new(&url, "restart", Duration::from_secs(60)).unwrap();
    assert!(crate::broker::eventually(Duration::from_secs(10), || async { cache.ping().await.is_ok() }).await);
    let app = TestApp::with_cache(db, cache.clone());
    let phone = app.create_product("Phone", 10.0, 0).await;
    let (user, _, order) = app.place_order(&[phone]).await;
    app.approve(order).await;
    let path = format!("/api/v1/orders/user/{user}");
    assert_eq!(ids(&app.get(&path).await.body), [json!(order)]);

    redis.stop();
    let reply = app.get(&path).await;
    assert_eq!((reply.status.as_u16(), ids(&reply.body)), (200, vec![json!(order)]), "served from PostgreSQL");

    let _redis = OwnRedis::start(port);
    // Back by itself: the next reads fill and then hit the cache again.
    assert!(
        crate::broker::eventually(Duration::from_secs(10), || async {
            let _ = app.get(&path).await;
            matches!(cache.read(user, &page()).await, Ok(Lookup::Hit(_)))
        })
        .await,
        "the cache did not come back"
    );
    assert_eq!(ids(&app.get(&path).await.body), [json!(order)]);
}
