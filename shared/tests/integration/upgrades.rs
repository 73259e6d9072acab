//! Upgrades without downtime: old binaries beside a newer schema, and migrations that
//! finish on a database of real size (shared/src/db/schema.rs, README "Upgrading").

use std::time::Duration;

use order_service::db;
use sqlx::PgPool;

use crate::helpers::processes::{database_url, target_dir};

/// A migration of a later release, as `_sqlx_migrations` records it.
const LATER: i64 = 20270101000000;

async fn record_a_later_migration(db: &PgPool) {
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
              VALUES ($1, 'from a later release', true, '\\x00'::bytea, 0)",
    )
    .bind(LATER)
    .execute(db)
    .await
    .unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn this_release_migrates_and_starts_on_a_schema_a_release_ahead(db: PgPool) {
    record_a_later_migration(&db).await;
    // Before: every process ran sqlx's migrator as it comes, which refuses a database
    // that applied a migration it does not know: old pods crash-looped during a rollout,
    // and a rollback could not start.
    let refused = sqlx::migrate!("../migrations").run(&db).await;
    assert!(
        matches!(refused, Err(sqlx::migrate::MigrateError::VersionMissing(LATER))),
        "sqlx's defaults no longer refuse: {refused:?}"
    );

    db::migrate(&database_url(&db)).await.expect("a rollback's `api migrate` succeeds");
    tokio::time::timeout(Duration::from_secs(5), db::require(&db))
        .await
        .expect("the processes do not wait for a migration they know nothing of")
        .unwrap();
    // The binary itself, as the Job and Compose's `migrate` service run it.
    let status = std::process::Command::new(target_dir().join("api"))
        .arg("migrate")
        .env("DATABASE_URL", database_url(&db))
        .env("LOG_LEVEL", "warn")
        .status()
        .expect("the api is built (`make test` builds it)");
    assert!(status.success(), "`api migrate` on a newer schema: {status}");
}

#[sqlx::test(migrations = false)]
async fn the_processes_wait_for_the_migrations_they_need(db: PgPool) {
    let waiting = tokio::spawn({
        let db = db.clone();
        async move { db::require(&db).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "a process started on a database without its migrations");
    db::migrate(&database_url(&db)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("still waiting after the migrations were applied")
        .unwrap()
        .unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn a_migration_applied_with_other_contents_stops_the_process(db: PgPool) {
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea WHERE version = 20261125000001")
        .execute(&db)
        .await
        .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), db::require(&db)).await.unwrap();
    let message = format!("{:#}", refused.unwrap_err());
    assert!(message.contains("20261125000001"), "{message}");
}

#[sqlx::test(migrations = "../migrations")]
async fn every_binary_says_which_release_it_is(db: PgPool) {
    for program in ["api", "outbox-relay", "saga-worker", "customer-simulator"] {
        let out = std::process::Command::new(target_dir().join(program)).arg("--version").output().unwrap();
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(out.status.success(), "{program} --version: {}", out.status);
        assert_eq!(line, order_service::release::describe(program));
    }
    // And the running process, to Prometheus.
    let (_api, base) = crate::helpers::processes::spawn_api(&db, &[]).await;
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let expected = format!(
        "build_info{{version=\"{}\",commit=\"{}\"}} 1",
        order_service::release::VERSION,
        order_service::release::COMMIT
    );
    assert!(metrics.lines().any(|line| line == expected), "no `{expected}` in /metrics");
}

/// Where `scripts/previous-release.sh` puts the previous release's binaries.
fn previous_release() -> std::path::PathBuf {
    target_dir().join("../previous-release/bin")
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries and the previous release's (make test builds both)"]
async fn a_rolling_update_then_a_rollback_completes_every_order(db: PgPool) {
    use crate::helpers::{
        broker::OwnVhost,
        eventually,
        processes::{call, free_port, spawn_programs},
    };
    use reqwest::Method;
    use serde_json::json;
    use uuid::Uuid;

    let previous = previous_release();
    assert!(previous.join("api").exists(), "scripts/previous-release.sh has not built {}", previous.display());
    let vhost = OwnVhost::create("rolling");
    let common: Vec<(&str, String)> = vec![
        ("DATABASE_URL", database_url(&db)),
        ("AMQP_URL", vhost.url.clone()),
        ("REDIS_URL", "redis://127.0.0.1:6379".into()),
        ("LOG_LEVEL", "warn".into()),
        ("CREDIT_LIMIT", "1000000".into()),
        ("RELAY_SCHEDULE", "*/1 * * * * *".into()),
    ];
    let processes = |bin: &std::path::Path, api_port: u16| {
        spawn_programs(
            bin,
            &[
                ("api", vec![("API_ADDR", format!("127.0.0.1:{api_port}"))]),
                ("outbox-relay", vec![("METRICS_ADDR", format!("127.0.0.1:{}", free_port()))]),
                ("saga-worker", vec![("METRICS_ADDR", format!("127.0.0.1:{}", free_port()))]),
            ],
            &common,
        )
    };
    // Mid-rollout: the previous release and this one on one database (migrated by this
    // release) and one broker; the customer service apart from both.
    let (old_port, new_port) = (free_port(), free_port());
    let mut old = processes(&previous, old_port);
    let new = processes(&target_dir(), new_port);
    let _customer = spawn_programs(&target_dir(), &[("customer-simulator", vec![])], &common);
    let (old_api, new_api) = (format!("http://127.0.0.1:{old_port}"), format!("http://127.0.0.1:{new_port}"));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    for api in [&old_api, &new_api] {
        let up = eventually(Duration::from_secs(30), || async {
            call(&client, Method::GET, &format!("{api}/healthcheck/"), None).await.0 == 200
        })
        .await;
        assert!(up, "{api} did not come up");
    }
    let (product, address, user) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (resource, body) in [
        ("products", json!({"productID": product, "price": 10, "discount": 0, "name": "Phone"})),
        (
            "address",
            json!({"addressID": address, "buildingNumber": 1, "streetName": "Street", "city": "City", "country": "Country"}),
        ),
        ("users", json!({"userID": user, "username": "rolling", "addressID": address})),
    ] {
        let (status, _) = call(&client, Method::POST, &format!("{new_api}/api/v1/{resource}/"), Some(&body)).await;
        assert_eq!(status, 204, "{resource}");
    }
    let place = |api: String| {
        let client = client.clone();
        async move {
            let order = Uuid::new_v4();
            let body = json!({"orderID": order, "paymentMethod": "Card", "productsIds": [product], "userID": user, "deliveryAddress": address});
            let (status, answer) = call(&client, Method::POST, &format!("{api}/api/v1/orders/"), Some(&body)).await;
            assert_eq!(status, 204, "{api}: {answer}");
            order
        }
    };
    let all_done = |orders: Vec<Uuid>| {
        let db = db.clone();
        async move {
            eventually(Duration::from_secs(60), || async {
                let (approved, waiting): (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT count(*) FROM orders WHERE id = ANY($1) AND saga_status = 'Approved'),
                            (SELECT count(*) FROM outbox)",
                )
                .bind(&orders)
                .fetch_one(&db)
                .await
                .unwrap();
                approved == orders.len() as i64 && waiting == 0
            })
            .await
        }
    };
    let mut orders = Vec::new();
    for n in 0..20 {
        orders.push(place(if n % 2 == 0 { old_api.clone() } else { new_api.clone() }).await);
    }
    assert!(all_done(orders.clone()).await, "orders placed through both releases did not all complete");

    // The rollback: this release's processes stop; the previous release carries on alone.
    drop(new);
    let mut after = Vec::new();
    for _ in 0..20 {
        after.push(place(old_api.clone()).await);
    }
    assert!(all_done(after).await, "orders placed after the rollback did not all complete");
    for (name, child) in &mut old.0 {
        assert!(matches!(child.try_wait(), Ok(None)), "the previous release's {name} exited: {:?}", child.try_wait());
    }
}
