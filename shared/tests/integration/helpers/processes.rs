//! The real binaries as separate processes, for the tests that need them (`make test`
//! builds them first), and the external checking tools.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use super::broker::OwnVhost;

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

/// The URL of the test's own database, for a program or a pool of its own.
pub fn database_url(db: &sqlx::PgPool) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{}", db.connect_options().get_database().unwrap())
}

/// The real api binary on the test's database and a free port, answering once this
/// returns; it stops when the `Processes` drop. Returns its base URL.
pub async fn spawn_api(db: &sqlx::PgPool, env: &[(&str, &str)]) -> (Processes, String) {
    let port = free_port();
    let api = Command::new(target_dir().join("api"))
        .env("DATABASE_URL", database_url(db))
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
        super::eventually(std::time::Duration::from_secs(30), || async {
            client.get(format!("{base}/healthcheck/")).send().await.is_ok()
        })
        .await,
        "the api did not answer"
    );
    (processes, base)
}

/// The four programs (api, outbox-relay, saga-worker, customer-simulator) on the test's
/// database and a vhost of its own, on free ports; stopped (SIGTERM) when dropped.
pub struct System {
    /// Stops the programs when the system is dropped (before the vhost goes).
    _processes: Processes,
    pub vhost: OwnVhost,
    /// The api's base URL.
    pub api: String,
    pub api_port: u16,
    pub relay_port: u16,
    pub worker_port: u16,
}

impl System {
    /// Starts them with `env` added to every program's environment.
    pub fn start(db: &sqlx::PgPool, vhost_prefix: &str, env: &[(&str, String)]) -> Self {
        let bin = target_dir();
        for name in ["api", "outbox-relay", "saga-worker", "customer-simulator"] {
            assert!(bin.join(name).exists(), "{name} is not built: `make test` builds every binary first");
        }
        let vhost = OwnVhost::create(vhost_prefix);
        let (api_port, relay_port, worker_port) = (free_port(), free_port(), free_port());
        let mut common: Vec<(&str, String)> = vec![
            ("DATABASE_URL", database_url(db)),
            ("AMQP_URL", vhost.url.clone()),
            ("REDIS_URL", "redis://127.0.0.1:6379".into()),
            ("LOG_LEVEL", "warn".into()),
        ];
        common.extend(env.iter().cloned());
        let processes = spawn_programs(
            &bin,
            &[
                ("api", vec![("API_ADDR", format!("127.0.0.1:{api_port}"))]),
                ("outbox-relay", vec![("METRICS_ADDR", format!("127.0.0.1:{relay_port}"))]),
                ("saga-worker", vec![("METRICS_ADDR", format!("127.0.0.1:{worker_port}"))]),
                ("customer-simulator", vec![]),
            ],
            &common,
        );
        System {
            _processes: processes,
            vhost,
            api: format!("http://127.0.0.1:{api_port}"),
            api_port,
            relay_port,
            worker_port,
        }
    }
}

/// Starts each program of `bin` (a directory of binaries) with `common` and its own
/// variables; stopped (SIGTERM) when the result is dropped.
pub fn spawn_programs(
    bin: &std::path::Path,
    programs: &[(&str, Vec<(&str, String)>)],
    common: &[(&str, String)],
) -> Processes {
    let mut processes = Processes(Vec::new());
    for (name, own) in programs {
        let child = Command::new(bin.join(name))
            .envs(common.iter().chain(own).map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start from {}: {e}", bin.display()));
        processes.0.push(((*name).to_owned(), child));
    }
    processes
}

/// A request to a live process: its status and its body as JSON (`Null` when there is
/// none).
pub async fn call(client: &reqwest::Client, method: reqwest::Method, url: &str, body: Option<&Value>) -> (u16, Value) {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// A process's peak resident memory so far, in KiB (0 once it is gone).
pub fn peak_rss_kib(pid: u32) -> u64 {
    memory_kib(pid, "VmHWM:")
}

/// A process's resident memory now, in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    memory_kib(pid, "VmRSS:")
}

/// One `/proc/<pid>/status` figure, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
