//! The whole saga through real processes: api, outbox-relay, saga-worker and the
//! customer simulator, as built by `make test`, on the test's own database and its own
//! RabbitMQ vhost.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{
    eventually,
    processes::{Processes, System, call, free_port},
};

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries (make test builds them), rabbitmqctl and Prometheus"]
async fn a_saga_runs_end_to_end_through_real_processes(db: PgPool) {
    let system = System::start(&db, "e2e", &[("CREDIT_LIMIT", "500".into())]);
    let (api, api_port, relay_port, worker_port) =
        (&system.api, system.api_port, system.relay_port, system.worker_port);
    let vhost = &system.vhost;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let get = |url: String| {
        let client = &client;
        async move { call(client, reqwest::Method::GET, &url, None).await }
    };
    let post = |url: String, body: Value| {
        let client = &client;
        async move { call(client, reqwest::Method::POST, &url, Some(&body)).await.0 }
    };
    assert!(
        eventually(Duration::from_secs(30), || async { get(format!("{api}/healthcheck/")).await.0 == 200 }).await,
        "the api did not come up"
    );

    let (cheap, dear, address, user) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let posts = [
        ("products", json!({"productID": cheap, "price": 100, "discount": 10, "name": "Phone"})),
        ("products", json!({"productID": dear, "price": 1000, "discount": 0, "name": "Car"})),
        (
            "address",
            json!({"addressID": address, "buildingNumber": 44, "streetName": "Pushkina", "city": "Moscow", "country": "Russia"}),
        ),
        ("users", json!({"userID": user, "username": "test", "addressID": address})),
    ];
    for (resource, body) in posts {
        assert_eq!(post(format!("{api}/api/v1/{resource}/"), body).await, 204, "{resource}");
    }
    // Read the user's (empty) list first: the cache now holds a page the worker must
    // invalidate when it approves the order.
    assert_eq!(get(format!("{api}/api/v1/orders/user/{user}")).await.1["orders"], json!([]));
    let (approved, rejected) = (Uuid::new_v4(), Uuid::new_v4());
    for (order, product) in [(approved, cheap), (rejected, dear)] {
        let body = json!({"orderID": order, "paymentMethod": "Card", "productsIds": [product], "userID": user, "deliveryAddress": address});
        assert_eq!(post(format!("{api}/api/v1/orders/"), body).await, 204);
    }

    let saga = |order: Uuid| {
        let url = format!("{api}/api/v1/orders/{order}");
        let get = &get;
        async move {
            let body = get(url).await.1;
            (
                body["sagaStatus"].as_str().unwrap_or_default().to_owned(),
                body["orderStatus"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            saga(approved).await.0 == "Approved" && saga(rejected).await.0 == "Rejected"
        })
        .await,
        "the saga did not finish: {:?} {:?}",
        saga(approved).await,
        saga(rejected).await
    );
    assert_eq!(saga(rejected).await.1, "Canceled");
    let ids = |body: Value| body["orders"].as_array().unwrap().iter().map(|o| o["OrderID"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(get(format!("{api}/api/v1/orders/")).await.1), [json!(approved)]);
    assert_eq!(ids(get(format!("{api}/api/v1/orders/user/{user}")).await.1), [json!(approved)]);

    // The saga's outcomes were published on `Orders` (bound to `Order.*`).
    let connection = order_service::amqp::connect(&vhost.args("e2e-reader")).await.unwrap();
    let channel = connection.open_channel(None).await.unwrap();
    let types = std::cell::RefCell::new(Vec::new());
    let mut get = amqprs::channel::BasicGetArguments::new("Orders");
    get.no_ack = true;
    let arrived = eventually(Duration::from_secs(10), || async {
        while let Some((_, properties, _)) = channel.basic_get(get.clone()).await.unwrap() {
            types.borrow_mut().push(properties.message_type().cloned().unwrap_or_default());
        }
        types.borrow().len() >= 2
    })
    .await;
    let mut types = types.into_inner();
    assert!(arrived, "events on Orders: {types:?}");
    types.sort();
    assert_eq!(types, ["OrderCanceled", "OrderCreated"]);
    let _ = connection.close().await;

    // Observability, against these live processes: every metric the dashboard queries
    // is exported, and Prometheus with the deployment's scrape settings reads all three.
    let mut exported = String::new();
    for port in [api_port, relay_port, worker_port] {
        exported += &text(&client, &format!("http://127.0.0.1:{port}/metrics")).await;
        exported.push('\n');
    }
    for metric in dashboard_metrics() {
        assert!(
            exported
                .lines()
                .any(|line| line.starts_with(&format!("{metric}{{")) || line.starts_with(&format!("{metric} "))),
            "the dashboard queries {metric}, which no process exports"
        );
    }
    scrape_with_prometheus(&client, api_port, relay_port, worker_port).await;

    drop(system);
}

async fn text(client: &reqwest::Client, url: &str) -> String {
    match client.get(url).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Metric names in the dashboard's Prometheus queries: the identifiers with an
/// underscore, less PromQL's functions; a histogram's name is checked by its buckets.
fn dashboard_metrics() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../grafana/dashboards/order-service.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["datasource"]["type"] != "prometheus" {
            continue;
        }
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            // Drop quoted label values first ("4..|5..").
            let unquoted: String = expr.split('"').step_by(2).collect::<Vec<_>>().join(" ");
            for token in unquoted.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if token.contains('_')
                    && !["histogram_quantile", "label_replace"].contains(&token)
                    && !names.iter().any(|n| n == token)
                {
                    names.push(token.to_owned());
                }
            }
        }
    }
    assert!(names.len() >= 8, "found only {names:?}");
    names
}

/// Runs Debian's Prometheus on loopback with prometheus/prometheus.yml, its Docker DNS
/// discovery swapped for these processes' addresses, and reads a metric of each back.
async fn scrape_with_prometheus(client: &reqwest::Client, api_port: u16, relay_port: u16, worker_port: u16) {
    let mut config =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../prometheus/prometheus.yml")).unwrap();
    for (service, port, local) in
        [("api", 8000, api_port), ("outbox-relay", 9101, relay_port), ("saga-worker", 9102, worker_port)]
    {
        let discovered =
            format!("dns_sd_configs:\n      - names: [\"{service}\"]\n        type: A\n        port: {port}");
        assert!(config.contains(&discovered), "prometheus.yml no longer discovers {service} as expected");
        config = config.replace(&discovered, &format!("static_configs:\n      - targets: [\"127.0.0.1:{local}\"]"));
    }
    let dir = std::env::temp_dir().join(format!("e2e-prometheus-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Debian's prometheus is installed (scripts/tools.sh)");
    let _prometheus = Processes(vec![("prometheus".into(), prometheus)]);
    let query = |q: &str| {
        let url = format!("http://127.0.0.1:{port}/api/v1/query?query={q}");
        async move {
            serde_json::from_str::<Value>(&text(client, &url).await).unwrap_or(Value::Null)["data"]["result"]
                .as_array()
                .map_or(0, Vec::len)
        }
    };
    for (job, metric) in [
        ("api", "http_requests_total"),
        ("outbox-relay", "outbox_published_total"),
        ("saga-worker", "saga_replies_total"),
    ] {
        let q = format!("{metric}%7Bjob%3D%22{job}%22%7D");
        let scraped = eventually(Duration::from_secs(30), || async { query(&q).await > 0 }).await;
        assert!(scraped, "Prometheus has no {metric} from {job}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
