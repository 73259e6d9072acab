//! The spec, the framework-level errors and the plumbing routes.

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::TestApp;

#[sqlx::test(migrations = "../migrations")]
async fn the_spec_documents_every_route_and_its_error_statuses(db: PgPool) {
    let app = TestApp::new(db);
    let reply = app.get("/openapi.json").await;
    assert_eq!(reply.status, 200);
    let spec = reply.body;
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."), "{}", spec["openapi"]);

    let command = ["204", "400", "401", "403", "404", "409", "413", "415", "500", "503"];
    let read = ["200", "400", "401", "403", "404", "500", "503"];
    let expected: &[(&str, &str, &[&str])] = &[
        ("/healthcheck", "get", &["200"]),
        ("/readyz", "get", &["200", "503"]),
        ("/metrics", "get", &["200"]),
        ("/api/v1/products", "post", &command),
        ("/api/v1/products", "get", &read),
        ("/api/v1/products/{productName}", "get", &read),
        ("/api/v1/products/{productID}/productName", "put", &command),
        ("/api/v1/address", "post", &command),
        ("/api/v1/users", "post", &command),
        ("/api/v1/orders", "post", &command),
        ("/api/v1/orders", "get", &read),
        ("/api/v1/orders/{orderID}", "get", &read),
        ("/api/v1/orders/user/{userID}", "get", &read),
        ("/api/v1/orders", "delete", &command),
    ];
    for (path, method, statuses) in expected {
        let operation = &spec["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let documented: Vec<&String> = operation["responses"].as_object().unwrap().keys().collect();
        for status in *statuses {
            assert!(
                documented.iter().any(|d| d == status),
                "{method} {path} does not document {status}: {documented:?}"
            );
        }
        assert!(operation["summary"].is_string(), "{method} {path} has no summary");
    }
    let documented_operations: usize =
        spec["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented_operations, expected.len(), "an undocumented or unexpected operation");

    // Response field names are the contract's, mixed casing included.
    let order = &spec["components"]["schemas"]["Order"]["properties"];
    for key in [
        "orderStatus",
        "paymentMethod",
        "client",
        "address",
        "OrderID",
        "serialNumber",
        "products",
        "createdAt",
        "totalPrice",
        "sagaStatus",
    ] {
        assert!(order[key].is_object(), "Order has no {key}");
    }
    assert!(spec["components"]["schemas"]["Client"]["properties"]["ClientID"].is_object());
    assert_eq!(spec["components"]["schemas"]["CreateProductRequest"]["properties"]["price"]["type"], "number");
}

#[sqlx::test(migrations = "../migrations")]
async fn swagger_ui_health_and_metrics_are_served(db: PgPool) {
    let app = TestApp::new(db);
    let reply = app.get("/docs").await;
    assert_eq!(reply.status, 200);
    assert!(reply.content_type.unwrap().starts_with("text/html"));

    let reply = app.get("/healthcheck/").await;
    assert_eq!((reply.status.as_u16(), reply.body.clone()), (200, json!({"status": "OK"})));
    let reply = app.get("/readyz").await;
    assert_eq!((reply.status.as_u16(), reply.body.clone()), (200, json!({"status": "OK"})));

    app.get("/api/v1/products/").await;
    app.get(&format!("/api/v1/orders/{}", uuid::Uuid::new_v4())).await;
    let reply = app.get("/metrics").await;
    let Value::String(text) = reply.body else { panic!("metrics are text") };
    assert!(text.contains(r#"http_requests_total{method="GET",route="/api/v1/products",status="200"}"#), "{text}");
    assert!(text.contains("http_request_duration_seconds_bucket{"), "histograms have buckets");
    // Routes are labelled by their template, spelled as in the spec.
    assert!(text.contains(r#"route="/api/v1/orders/{orderID}",status="404"}"#), "{text}");
    // Unknown paths share one label.
    app.get("/no/such/route").await;
    let Value::String(text) = app.get("/metrics").await.body else { panic!("metrics are text") };
    assert!(text.contains(r#"route="unmatched",status="404"}"#), "{text}");
    assert!(!text.contains("/no/such/route"), "{text}");
}

#[sqlx::test(migrations = "../migrations")]
async fn readiness_names_postgres_when_it_is_down(db: PgPool) {
    let app = TestApp::new(db);
    app.db.close().await;
    let reply = app.get("/readyz").await;
    assert_eq!((reply.status.as_u16(), reply.body.clone()), (503, json!({"status": "postgres unavailable"})));
    // A command against a closed pool is a 503 that says nothing internal.
    let reply = app.post("/api/v1/address/", &json!({"addressID": uuid::Uuid::new_v4(), "buildingNumber": 1, "streetName": "s", "city": "c", "country": "k"})).await;
    reply.assert_error(503, "Service temporarily unavailable");
    // So is a query.
    app.get("/api/v1/orders/").await.assert_error(503, "Service temporarily unavailable");
    app.get("/api/v1/products/Phone").await.assert_error(503, "Service temporarily unavailable");
}

#[sqlx::test(migrations = "../migrations")]
async fn framework_errors_are_json_too(db: PgPool) {
    let app = TestApp::new(db);
    app.raw("POST", "/api/v1/products/", "application/json", "{not json")
        .await
        .assert_error(400, "Invalid request body");
    app.raw("POST", "/api/v1/products/", "application/json", "").await.assert_error(400, "Invalid request body");
    app.raw("POST", "/api/v1/products/", "application/json", "[1]").await.assert_error(400, "JSON object");
    app.raw("POST", "/api/v1/products/", "text/plain", "{}").await.assert_error(415, "");
    app.raw("POST", "/api/v1/products/", "application/x-www-form-urlencoded", "a=1").await.assert_error(415, "");
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(70 * 1024));
    app.raw("POST", "/api/v1/products/", "application/json", big).await.assert_error(413, "too large");
    app.get("/api/v1/nothing").await.assert_error(404, "Route not found");
    app.get("/nothing/at/all").await.assert_error(404, "Route not found");
    app.raw("PUT", "/api/v1/orders/", "application/json", "{}").await.assert_error(405, "Method not allowed");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    app.raw("POST", "/api/v1/orders/", "application/json", deep).await.assert_error(400, "Invalid request body");
}
