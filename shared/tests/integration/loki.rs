//! Log shipping to Loki, against a stand-in receiver: the real `api` binary pushes
//! labelled lines, and keeps serving, within bounded memory, when Loki hangs, refuses
//! (429) or fails (500) its pushes while its `/ready` says all is well.

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

use crate::helpers::{
    eventually,
    processes::{Processes, database_url, free_port, peak_rss_kib, rss_kib, target_dir},
};

#[derive(Clone, Default)]
struct StandIn {
    /// Push bodies (JSON).
    pushes: Arc<Mutex<Vec<Vec<u8>>>>,
    /// While set, the receiver accepts connections and never answers.
    hang: Arc<AtomicBool>,
    /// While set, pushes (only) hang, or answer with this status; `/ready` answers 200.
    push_fault: Arc<Mutex<Option<PushFault>>>,
}

#[derive(Clone, Copy, Debug)]
enum PushFault {
    Status(u16),
    Hang,
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
    let fault = *state.push_fault.lock().unwrap();
    match fault {
        Some(PushFault::Status(status)) => return poem::http::StatusCode::from_u16(status).unwrap(),
        Some(PushFault::Hang) => std::future::pending::<()>().await,
        None => {}
    }
    // Loki's JSON push API: every stream labelled, every value a [timestamp, line] pair.
    let Ok(push) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return poem::http::StatusCode::BAD_REQUEST;
    };
    let well_formed = push["streams"].as_array().is_some_and(|streams| {
        streams.iter().all(|stream| {
            stream["stream"].is_object()
                && stream["values"].as_array().is_some_and(|values| {
                    values.iter().all(|v| v[0].as_str().is_some_and(|t| t.parse::<u128>().is_ok()) && v[1].is_string())
                })
        })
    });
    if !well_formed {
        return poem::http::StatusCode::BAD_REQUEST;
    }
    state.pushes.lock().unwrap().push(body);
    poem::http::StatusCode::NO_CONTENT
}

/// The stand-in, serving on a free port, and the real api pushing its logs there; returns
/// the api (stopped when dropped), its pid and its port, once it answers.
async fn api_logging_to(stand_in: &StandIn, db: &PgPool) -> (Processes, u32, u16) {
    let loki_port = free_port();
    let app = Route::new().at("/ready", get(ready)).at("/loki/api/v1/push", post(receive_push)).data(stand_in.clone());
    tokio::spawn(Server::new(TcpListener::bind(format!("127.0.0.1:{loki_port}"))).run(app));
    let api_port = free_port();
    let child = Command::new(target_dir().join("api"))
        .env("DATABASE_URL", database_url(db))
        .env("API_ADDR", format!("127.0.0.1:{api_port}"))
        .env("LOKI_URL", format!("http://127.0.0.1:{loki_port}"))
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .spawn()
        .expect("the api is built (`make test` builds it)");
    let pid = child.id();
    let api = Processes(vec![("api".into(), child)]);
    let health = format!("http://127.0.0.1:{api_port}/healthcheck/");
    assert!(eventually(Duration::from_secs(30), || async { reqwest::get(&health).await.is_ok() }).await);
    (api, pid, api_port)
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries: make test builds them"]
async fn logs_reach_loki_labelled_and_a_hanging_loki_costs_nothing_but_lines(db: PgPool) {
    let stand_in = StandIn::default();
    let (_api, pid, api_port) = api_logging_to(&stand_in, &db).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let health = format!("http://127.0.0.1:{api_port}/healthcheck/");

    // Lines arrive, labelled with the service and the level.
    let labelled = eventually(Duration::from_secs(15), || async {
        let _ = client.get(&health).send().await;
        stand_in.pushes.lock().unwrap().iter().any(|push| {
            let push: serde_json::Value = serde_json::from_slice(push).unwrap();
            push["streams"].as_array().unwrap().iter().any(|stream| {
                stream["stream"] == serde_json::json!({"service": "api", "level": "info"})
                    && stream["values"].as_array().unwrap().iter().any(|v| {
                        let line: serde_json::Value = serde_json::from_str(v[1].as_str().unwrap()).unwrap();
                        line["message"] == "request finished"
                    })
            })
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
    // Lines let in while the breaker was half-open wait for the hung push to time out
    // (5 s), then are dropped with it, and counted.
    assert!(
        eventually(Duration::from_secs(15), || async { dropped().await >= 5000.0 }).await,
        "lines kept out of the hung pipeline are counted"
    );
    assert!(after < before + 32 * 1024, "memory grew from {before} KiB to {after} KiB");
}

/// The api's memory target (docs/performance.md: peak RSS under load ≤ 64 MB).
pub const API_RSS_TARGET_KIB: u64 = 64 * 1024;

/// An api logging to a stand-in whose pushes fail with `fault` while its `/ready` answers,
/// loaded from 32 connections for `seconds`: it answers every request, counts the lines
/// it could not ship, and stays within its memory target.
async fn under_a_failing_push(db: PgPool, fault: PushFault, seconds: u64) {
    let stand_in = StandIn::default();
    *stand_in.push_fault.lock().unwrap() = Some(fault);
    let (_api, pid, api_port) = api_logging_to(&stand_in, &db).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let health = format!("http://127.0.0.1:{api_port}/healthcheck/");

    let until = std::time::Instant::now() + Duration::from_secs(seconds);
    let load: Vec<_> = (0..32)
        .map(|_| {
            let (client, health) = (client.clone(), health.clone());
            tokio::spawn(async move {
                let (mut answered, mut failed) = (0u64, 0u64);
                while std::time::Instant::now() < until {
                    match client.get(&health).send().await {
                        Ok(response) if response.status() == 200 => answered += 1,
                        _ => failed += 1,
                    }
                }
                (answered, failed)
            })
        })
        .collect();
    let (mut answered, mut failed) = (0, 0);
    for task in load {
        let (a, f) = task.await.unwrap();
        (answered, failed) = (answered + a, failed + f);
    }
    let peak = peak_rss_kib(pid);
    let text = client.get(format!("http://127.0.0.1:{api_port}/metrics")).send().await.unwrap().text().await.unwrap();
    let dropped = text
        .lines()
        .find_map(|line| line.strip_prefix("loki_dropped_lines_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    eprintln!("{fault:?}: {answered} answered, {failed} failed, peak RSS {} KiB, {dropped} lines dropped", peak);
    assert_eq!(failed, 0, "requests failed while Loki misbehaved");
    assert!(answered > 1000, "too little load to mean anything: {answered} requests");
    assert!(dropped > 0.0, "lines Loki never took are not counted");
    assert!(peak < API_RSS_TARGET_KIB, "{fault:?}: peak RSS {peak} KiB, over the target of {API_RSS_TARGET_KIB} KiB");
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries: make test builds them"]
async fn a_loki_that_refuses_pushes_with_429_costs_only_lines(db: PgPool) {
    under_a_failing_push(db, PushFault::Status(429), 25).await;
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries: make test builds them"]
async fn a_loki_that_fails_pushes_with_500_costs_only_lines(db: PgPool) {
    under_a_failing_push(db, PushFault::Status(500), 10).await;
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries: make test builds them"]
async fn a_loki_whose_pushes_hang_while_it_says_ready_costs_only_lines(db: PgPool) {
    under_a_failing_push(db, PushFault::Hang, 10).await;
}
