//! The whole saga through real processes: api, outbox-relay, saga-worker and the
//! customer simulator, as built by `make test`, on the test's own database and its own
//! RabbitMQ vhost.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::broker::eventually;

/// Kills the processes it started, also when the test fails.
pub struct Processes(pub Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        for (name, child) in &mut self.0 {
            let stopped = (0..50).any(|_| {
                std::thread::sleep(Duration::from_millis(100));
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !stopped {
                eprintln!("{name} ignored SIGTERM; killing it");
                let _ = child.kill();
            }
        }
    }
}

/// A RabbitMQ vhost of the test's own, deleted afterwards even when the test fails.
struct Vhost(String);

impl Vhost {
    fn create() -> Self {
        let name = format!("e2e-{}", Uuid::new_v4().simple());
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost(name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["delete_vhost", &self.0, "-q"]).status();
    }
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
        .join("debug")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs a checking tool (off the async runtime) and fails the test with its output
/// unless it succeeds.
pub async fn run_to_success(mut command: Command) {
    let program = format!("{:?}", command.get_program());
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap();
    let output = output.unwrap_or_else(|e| panic!("{program} does not run: {e}"));
    assert!(
        output.status.success(),
        "{program} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The real api binary on the test's database and a free port, answering once this
/// returns; it stops when the `Processes` drop. Returns its base URL.
pub async fn spawn_api(db: &sqlx::PgPool, env: &[(&str, &str)]) -> (Processes, String) {
    let database = db.connect_options().get_database().unwrap().to_owned();
    let port = free_port();
    let api = Command::new(target_dir().join("api"))
        .env("DATABASE_URL", format!("postgres://postgres@127.0.0.1:5432/{database}"))
        .env("API_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_LEVEL", "warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the api is built (`make test` builds it)");
    let processes = Processes(vec![("api".into(), api)]);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    assert!(
        crate::broker::eventually(std::time::Duration::from_secs(30), || async {
            client.get(format!("{base}/healthcheck/")).send().await.is_ok()
        })
        .await,
        "the api did not answer"
    );
    (processes, base)
}

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl").args(args).arg("-q").status().expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

fn curl(method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    let mut command = Command::new("curl");
    command.args(["-s", "-X", method, "-w", "\n%{http_code}", url]);
    if let Some(body) = body {
        command.args(["-H", "Content-Type: application/json", "-d", &body.to_string()]);
    }
    let output = command.output().expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(Value::Null))
}

#[sqlx::test(migrations = "../migrations")]
async fn a_saga_runs_end_to_end_through_real_processes(db: PgPool) {
    let bin = target_dir();
    for name in ["api", "outbox-relay", "saga-worker", "examples/customer_simulator"] {
        assert!(bin.join(name).exists(), "{name} is not built: `make test` builds every binary first");
    }
    let database = db.connect_options().get_database().unwrap().to_owned();
    let database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let vhost = Vhost::create();
    let vhost = vhost.0.as_str();
    let amqp_url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
    let (api_port, relay_port, worker_port) = (free_port(), free_port(), free_port());
    let api = format!("http://127.0.0.1:{api_port}");

    let env: Vec<(&str, String)> = vec![
        ("DATABASE_URL", database_url),
        ("AMQP_URL", amqp_url),
        ("REDIS_URL", "redis://127.0.0.1:6379".into()),
        ("LOG_LEVEL", "warn".into()),
        ("CREDIT_LIMIT", "500".into()),
    ];
    let mut processes = Processes(Vec::new());
    for (name, extra) in [
        ("api", vec![("API_ADDR", format!("127.0.0.1:{api_port}"))]),
        ("outbox-relay", vec![("METRICS_ADDR", format!("127.0.0.1:{relay_port}"))]),
        ("saga-worker", vec![("METRICS_ADDR", format!("127.0.0.1:{worker_port}"))]),
        ("examples/customer_simulator", vec![]),
    ] {
        let child = Command::new(bin.join(name))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        processes.0.push((name.to_owned(), child));
    }
    assert!(
        eventually(Duration::from_secs(30), || async { curl("GET", &format!("{api}/healthcheck/"), None).0 == 200 })
            .await,
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
        assert_eq!(curl("POST", &format!("{api}/api/v1/{resource}/"), Some(&body)).0, 204, "{resource}");
    }
    // Read the user's (empty) list first: the cache now holds a page the worker must
    // invalidate when it approves the order.
    assert_eq!(curl("GET", &format!("{api}/api/v1/orders/user/{user}"), None).1["orders"], json!([]));
    let (approved, rejected) = (Uuid::new_v4(), Uuid::new_v4());
    for (order, product) in [(approved, cheap), (rejected, dear)] {
        let body = json!({"orderID": order, "paymentMethod": "Card", "productsIds": [product], "userID": user, "deliveryAddress": address});
        assert_eq!(curl("POST", &format!("{api}/api/v1/orders/"), Some(&body)).0, 204);
    }

    let saga = |order: Uuid| {
        let url = format!("{api}/api/v1/orders/{order}");
        async move {
            let body = curl("GET", &url, None).1;
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
    assert_eq!(ids(curl("GET", &format!("{api}/api/v1/orders/"), None).1), [json!(approved)]);
    assert_eq!(ids(curl("GET", &format!("{api}/api/v1/orders/user/{user}"), None).1), [json!(approved)]);

    // The saga's outcomes were published on `Orders` (bound to `Order.*`).
    let args =
        order_service::amqp::connection_args(&format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"), "e2e-reader")
            .unwrap();
    let connection = order_service::amqp::connect(&args).await.unwrap();
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
    let exported = [api_port, relay_port, worker_port]
        .map(|port| curl_text(&format!("http://127.0.0.1:{port}/metrics")))
        .join("\n");
    for metric in dashboard_metrics() {
        assert!(
            exported
                .lines()
                .any(|line| line.starts_with(&format!("{metric}{{")) || line.starts_with(&format!("{metric} "))),
            "the dashboard queries {metric}, which no process exports"
        );
    }
    scrape_with_prometheus(api_port, relay_port, worker_port).await;

    drop(processes);
}

fn curl_text(url: &str) -> String {
    let output = Command::new("curl").args(["-s", url]).output().expect("curl runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
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
async fn scrape_with_prometheus(api_port: u16, relay_port: u16, worker_port: u16) {
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
            serde_json::from_str::<Value>(&curl_text(&url)).unwrap_or(Value::Null)["data"]["result"]
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
