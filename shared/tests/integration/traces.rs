//! Spans over OTLP, received by a real receiver: one trace per order across the four
//! programs and the broker, over both transports; and a collector that is away costs
//! the api nothing but spans (bounded memory, every lost span counted).

use std::{collections::HashMap, time::Duration};

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    helpers::processes::peak_rss_kib,
    helpers::{
        eventually,
        otlp::{OtlpReceiver, Protocol, ReceivedSpan},
        processes::{System, call, spawn_api},
    },
    loki::API_RSS_TARGET_KIB,
};

const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;
const SERVER: i32 = 2;

/// The spans of one trace, by id.
struct Trace(HashMap<String, ReceivedSpan>);

impl Trace {
    fn of(spans: &[ReceivedSpan], trace_id: &str) -> Self {
        Trace(spans.iter().filter(|s| s.trace_id == trace_id).map(|s| (s.span_id.clone(), s.clone())).collect())
    }

    /// The one span matching, or a failure listing the trace.
    #[track_caller]
    fn find(&self, service: &str, name: &str, attribute: Option<(&str, &str)>) -> &ReceivedSpan {
        let found: Vec<&ReceivedSpan> = self
            .0
            .values()
            .filter(|s| s.service == service && s.name == name)
            .filter(|s| attribute.is_none_or(|(k, v)| s.attributes.get(k).map(String::as_str) == Some(v)))
            .collect();
        assert_eq!(found.len(), 1, "one {service} span {name:?} {attribute:?} in\n{}", self.listing());
        found[0]
    }

    #[track_caller]
    fn assert_child(&self, child: &ReceivedSpan, parent: &ReceivedSpan) {
        assert_eq!(
            child.parent_span_id,
            parent.span_id,
            "{} {:?} is not a child of {} {:?} in\n{}",
            child.service,
            child.name,
            parent.service,
            parent.name,
            self.listing()
        );
    }

    /// The trace as a tree: each span under its parent, with its service and kind.
    fn tree(&self) -> String {
        fn walk(trace: &Trace, span: &ReceivedSpan, depth: usize, out: &mut Vec<String>) {
            let kind = ["unspecified", "internal", "server", "client", "producer", "consumer"];
            let kind = kind.get(span.kind as usize).copied().unwrap_or("?");
            out.push(format!("{}{} {:?} ({kind})", "  ".repeat(depth), span.service, span.name));
            let mut children: Vec<&ReceivedSpan> =
                trace.0.values().filter(|child| child.parent_span_id == span.span_id).collect();
            children.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
            for child in children {
                walk(trace, child, depth + 1, out);
            }
        }
        let mut out = Vec::new();
        let roots = self.0.values().filter(|s| !self.0.contains_key(&s.parent_span_id));
        for root in roots {
            walk(self, root, 0, &mut out);
        }
        out.join("\n")
    }

    fn listing(&self) -> String {
        let mut lines: Vec<String> = self
            .0
            .values()
            .map(|s| {
                format!("  {} {:?} kind {} id {} parent {}", s.service, s.name, s.kind, s.span_id, s.parent_span_id)
            })
            .collect();
        lines.sort();
        lines.join("\n")
    }
}

async fn one_trace_per_order(db: PgPool, protocol: Protocol) {
    let receiver = OtlpReceiver::start(protocol).await;
    let system = System::start(
        &db,
        "traces",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.variable().into()),
        ],
    );
    let api = &system.api;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            call(&client, reqwest::Method::GET, &format!("{api}/healthcheck/"), None).await.0 == 200
        })
        .await,
        "the api did not come up"
    );
    let (product, address, user, order) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (resource, body) in [
        ("products", json!({"productID": product, "price": 100, "discount": 0, "name": "Phone"})),
        (
            "address",
            json!({"addressID": address, "buildingNumber": 1, "streetName": "Main", "city": "Oslo", "country": "Norway"}),
        ),
        ("users", json!({"userID": user, "username": "traced", "addressID": address})),
        (
            "orders",
            json!({"orderID": order, "paymentMethod": "Card", "productsIds": [product], "userID": user, "deliveryAddress": address}),
        ),
    ] {
        let (status, _) = call(&client, reqwest::Method::POST, &format!("{api}/api/v1/{resource}/"), Some(&body)).await;
        assert_eq!(status, 204, "{resource}");
    }
    let approved = eventually(Duration::from_secs(30), || async {
        let (_, body) = call(&client, reqwest::Method::GET, &format!("{api}/api/v1/orders/{order}"), None).await;
        body["sagaStatus"] == "Approved"
    })
    .await;
    assert!(approved, "the saga did not finish");

    // The order's POST is the root; its trace must reach the worker's OrderCreated.
    let complete = eventually(Duration::from_secs(30), || async {
        let spans = receiver.spans();
        let Some(root) = spans.iter().find(|s| s.kind == SERVER && s.name == "POST /api/v1/orders") else {
            return false;
        };
        let trace = Trace::of(&spans, &root.trace_id);
        trace
            .0
            .values()
            .any(|s| s.service == "outbox-relay" && s.name.starts_with("publish") && trace_reaches_created(&trace, s))
    })
    .await;
    let spans = receiver.spans();
    let root = spans.iter().find(|s| s.kind == SERVER && s.name == "POST /api/v1/orders").cloned();
    let root = root.unwrap_or_else(|| {
        let names: Vec<String> = spans.iter().map(|s| format!("{} {:?} kind {}", s.service, s.name, s.kind)).collect();
        panic!("no server span for the order's POST among {} spans:\n{}", spans.len(), names.join("\n"))
    });
    let trace = Trace::of(&spans, &root.trace_id);
    assert!(complete, "the order's trace did not reach the worker's OrderCreated:\n{}", trace.listing());
    drop(system);

    // api: server span → the command's transaction → the outbox append.
    assert_eq!(root.service, "api");
    assert_eq!(root.attributes["http.route"], "/api/v1/orders");
    assert_eq!(root.attributes["http.response.status_code"], "204");
    assert_eq!(root.parent_span_id, "", "the POST had no traceparent: it starts the trace");
    let transaction = trace.find("api", "transaction CreateOrder", None);
    trace.assert_child(transaction, &root);
    let request_appended = trace.find("api", "outbox append OrderCreateSaga", None);
    trace.assert_child(request_appended, transaction);

    // outbox-relay: the producer span continues the row's context.
    let request_published = trace.find(
        "outbox-relay",
        "publish Orders",
        Some(("messaging.rabbitmq.destination.routing_key", "Order.Saga.Create")),
    );
    assert_eq!(request_published.kind, PRODUCER);
    assert_eq!(request_published.attributes["messaging.system"], "rabbitmq");
    assert_eq!(request_published.attributes["messaging.destination.name"], "Orders");
    assert!(!request_published.attributes["messaging.message.id"].is_empty());
    trace.assert_child(request_published, request_appended);

    // customer-simulator, across the broker: consumer, then the reply's producer.
    let request_consumed = trace.find("customer-simulator", "process OrderSaga", None);
    assert_eq!(request_consumed.kind, CONSUMER);
    trace.assert_child(request_consumed, request_published);
    let reply_published = trace.find("customer-simulator", "publish Orders", None);
    trace.assert_child(reply_published, request_consumed);

    // saga-worker, across the broker again: consumer → transaction → OrderCreated.
    let reply_consumed = trace.find("saga-worker", "process CustomerSaga", None);
    assert_eq!(reply_consumed.kind, CONSUMER);
    assert_eq!(reply_consumed.attributes["messaging.system"], "rabbitmq");
    trace.assert_child(reply_consumed, reply_published);
    let applied = trace.find("saga-worker", "transaction ApplySagaReply", None);
    trace.assert_child(applied, reply_consumed);
    let created = trace.find("saga-worker", "outbox append OrderCreated", None);
    trace.assert_child(created, applied);
    let invalidated = trace.find("saga-worker", "EVALSHA invalidate", None);
    trace.assert_child(invalidated, reply_consumed);
    let created_published = trace.find(
        "outbox-relay",
        "publish Orders",
        Some(("messaging.rabbitmq.destination.routing_key", "Order.Create")),
    );
    trace.assert_child(created_published, created);
    eprintln!("one order's trace, received over {}:\n{}", protocol.variable(), trace.tree());
}

/// Whether `published` (a relay span) continues the worker's OrderCreated append.
fn trace_reaches_created(trace: &Trace, published: &ReceivedSpan) -> bool {
    trace
        .0
        .get(&published.parent_span_id)
        .is_some_and(|parent| parent.service == "saga-worker" && parent.name == "outbox append OrderCreated")
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries (make test builds them) and rabbitmqctl"]
async fn one_trace_follows_an_order_across_the_broker_over_grpc(db: PgPool) {
    one_trace_per_order(db, Protocol::Grpc).await;
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries (make test builds them) and rabbitmqctl"]
async fn one_trace_follows_an_order_across_the_broker_over_http_protobuf(db: PgPool) {
    one_trace_per_order(db, Protocol::HttpProtobuf).await;
}

/// With the collector gone (a closed port) or hanging (it accepts and never answers), the
/// api keeps answering under load, its memory stays bounded, and every span that did not
/// arrive is counted.
#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries: make test builds them"]
async fn a_collector_that_is_away_costs_the_api_only_spans(db: PgPool) {
    // A port nobody listens on, and one that accepts and never reads.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_addr = hanging.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket);
        }
    });
    for (fault, endpoint, protocol) in [
        ("stopped", format!("http://{closed}"), "grpc"),
        ("hanging", format!("http://{hanging_addr}"), "http/protobuf"),
    ] {
        let (api, base) = spawn_api(
            &db,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)],
        )
        .await;
        let pid = api.0[0].1.id();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        // 20 s of 16 clients: every request makes a server span (the list, its read).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut workers = Vec::new();
        for _ in 0..16 {
            let (client, base) = (client.clone(), base.clone());
            workers.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while tokio::time::Instant::now() < deadline {
                    match client.get(format!("{base}/api/v1/orders/?limit=1")).send().await {
                        Ok(response) if response.status() == 200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            }));
        }
        let (mut ok, mut failed) = (0, 0);
        for worker in workers {
            let (o, f) = worker.await.unwrap();
            ok += o;
            failed += f;
        }
        let peak = peak_rss_kib(pid);
        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        let dropped: f64 = metrics
            .lines()
            .filter(|line| line.starts_with("otel_spans_dropped_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        eprintln!("collector {fault}: {ok} answered, {failed} failed, peak RSS {peak} KiB, {dropped} spans dropped");
        assert_eq!(failed, 0, "collector {fault}: requests failed");
        assert!(ok > 1000, "collector {fault}: only {ok} requests answered in 20 s");
        assert!(dropped > 0.0, "collector {fault}: no dropped span counted\n{metrics}");
        // The span queue holds at most 2,048 spans; unbounded, 20 s of spans would be
        // hundreds of thousands.
        assert!(peak < API_RSS_TARGET_KIB, "collector {fault}: peak RSS {peak} KiB, over {API_RSS_TARGET_KIB} KiB");
        drop(api);
    }
}
