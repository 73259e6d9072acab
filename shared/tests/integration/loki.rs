//! Log shipping to Loki, against a stand-in receiver: the real `api` binary pushes
//! labelled lines, and keeps serving, within bounded memory, when Loki hangs.

use std::{
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use poem::{EndpointExt, Route, Server, get, handler, listener::TcpListener, post, web::Data};
use sqlx::PgPool;

use crate::{
    broker::eventually,
    e2e::{Processes, free_port, target_dir},
};

#[derive(Clone, Default)]
struct StandIn {
    /// Decompressed push bodies (protobuf: the labels are plain text in it).
    pushes: Arc<Mutex<Vec<Vec<u8>>>>,
    /// While set, the receiver accepts connections and never answers.
    hang: Arc<AtomicBool>,
}

impl StandIn {
    async fn maybe_hang(&self) {
        if self.hang.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    }
}

#[handler]
async fn ready(state: Data<&StandIn>) -> &'static str {
    state.maybe_hang().await;
    "ready"
}

#[handler]
async fn receive_push(state: Data<&StandIn>, body: Vec<u8>) -> poem::http::StatusCode {
    state.maybe_hang().await;
    match snap::raw::Decoder::new().decompress_vec(&body) {
        Ok(decoded) => {
            state.pushes.lock().unwrap().push(decoded);
            poem::http::StatusCode::NO_CONTENT
        }
        Err(_) => poem::http::StatusCode::BAD_REQUEST,
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[sqlx::test(migrations = "../migrations")]
async fn logs_reach_loki_labelled_and_a_hanging_loki_costs_nothing_but_lines(db: PgPool) {
    let stand_in = StandIn::default();
    let loki_port = free_port();
    let app = Route::new().at("/ready", get(ready)).at("/loki/api/v1/push", post(receive_push)).data(stand_in.clone());
    tokio::spawn(Server::new(TcpListener::bind(format!("127.0.0.1:{loki_port}"))).run(app));

    let database = db.connect_options().get_database().unwrap().to_owned();
    let api_port = free_port();
    let child = Command::new(target_dir().join("api"))
        .env("DATABASE_URL", format!("postgres://postgres@127.0.0.1:5432/{database}"))
        .env("API_ADDR", format!("127.0.0.1:{api_port}"))
        .env("LOKI_URL", format!("http://127.0.0.1:{loki_port}"))
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .spawn()
        .expect("the api is built (`make test` builds it)");
    let pid = child.id();
    let _api = Processes(vec![("api".into(), child)]);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let health = format!("http://127.0.0.1:{api_port}/healthcheck/");
    assert!(eventually(Duration::from_secs(30), || async { client.get(&health).send().await.is_ok() }).await);

    // Lines arrive, labelled with the service and the level.
    let labelled = eventually(Duration::from_secs(15), || async {
        let _ = client.get(&health).send().await;
        stand_in.pushes.lock().unwrap().iter().any(|push| {
            let text = String::from_utf8_lossy(push);
            text.contains(r#"service="api""#) && text.contains(r#"level="info""#)
        })
    })
    .await;
    assert!(labelled, "no labelled push reached the stand-in");

    // Loki hangs: the api keeps answering, drops lines (and counts them), and its
    // memory stays bounded while it logs thousands of lines.
    stand_in.hang.store(true, Ordering::Relaxed);
    let metrics = format!("http://127.0.0.1:{api_port}/metrics");
    let dropped = || async {
        let text = client.get(&metrics).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix("loki_dropped_lines_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        eventually(Duration::from_secs(20), || async {
            let _ = client.get(&health).send().await;
            dropped().await > 0.0
        })
        .await,
        "the api never noticed that Loki hangs"
    );
    let before = rss_kib(pid);
    for _ in 0..5000 {
        let response = client.get(&health).send().await.expect("the api answers while Loki hangs");
        assert_eq!(response.status(), 200);
    }
    let after = rss_kib(pid);
    assert!(dropped().await >= 5000.0, "lines kept out of the hung pipeline are counted");
    assert!(after < before + 32 * 1024, "memory grew from {before} KiB to {after} KiB");
}
