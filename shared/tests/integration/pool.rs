//! The api's PostgreSQL pool after its idle connections were killed server-side (a
//! PostgreSQL restart or failover does that): the next requests must not pay for it.

use std::time::Duration;

use sqlx::PgPool;

use crate::helpers::processes::spawn_api;

/// Eight requests at once: each holds one of the api's four connections for a while.
async fn fill_the_pool(client: &reqwest::Client, list: &str) {
    let warm: Vec<_> = (0..8)
        .map(|_| {
            let (client, list) = (client.clone(), list.to_owned());
            tokio::spawn(async move { client.get(&list).send().await.unwrap().status() })
        })
        .collect();
    for answer in warm {
        assert_eq!(answer.await.unwrap(), 200);
    }
}

/// Has the server kill the api's connections (as a restart or a failover does).
pub(crate) async fn kill_api_connections(db: &PgPool, database: &str) -> i64 {
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE datname = $1 AND application_name = 'order-service'",
    )
    .bind(database)
    .fetch_one(db)
    .await
    .unwrap();
    assert!(killed > 0, "the api held no connection to kill");
    killed
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries: make test builds them"]
async fn killed_idle_connections_cost_no_request(db: PgPool) {
    let database = db.connect_options().get_database().unwrap().to_owned();
    let (_api, base) = spawn_api(&db, &[("DB_MAX_CONNECTIONS", "4")]).await;
    let client = reqwest::Client::new();
    let list = format!("{base}/api/v1/products/?limit=10");
    fill_the_pool(&client, &list).await;
    // The pool sits idle, then the server kills its connections.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = kill_api_connections(&db, &database).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(client.get(&list).send().await.unwrap().status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 200), "after {killed} idle connections were killed: {statuses:?}");
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries: make test builds them"]
async fn connections_killed_right_after_use_cost_no_request(db: PgPool) {
    // Killed while the pool is busy, so no connection has sat idle long enough to be
    // pinged before reuse: the request that finds one dead must still be answered.
    let database = db.connect_options().get_database().unwrap().to_owned();
    let (_api, base) = spawn_api(&db, &[("DB_MAX_CONNECTIONS", "4")]).await;
    let client = reqwest::Client::new();
    let product = uuid::Uuid::new_v4();
    let reply = client
        .post(format!("{base}/api/v1/products/"))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"productID": product, "price": 1, "discount": 0, "description": "d", "name": "Phone"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 204);
    let list = format!("{base}/api/v1/products/?limit=10");
    let mut statuses = Vec::new();
    for round in 0..5 {
        fill_the_pool(&client, &list).await;
        kill_api_connections(&db, &database).await;
        // A read, a write, and a read of a row that is not there.
        statuses.push(client.get(&list).send().await.unwrap().status().as_u16());
        let name = format!("Rename{round}");
        let rename = client
            .put(format!("{base}/api/v1/products/{product}/productName"))
            .header("content-type", "application/json")
            .body(serde_json::json!({"productName": name}).to_string())
            .send()
            .await
            .unwrap();
        statuses.push(rename.status().as_u16());
        statuses.push(client.get(format!("{base}/api/v1/products/Nothing")).send().await.unwrap().status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s < 500), "after connections were killed right after use: {statuses:?}");
}
