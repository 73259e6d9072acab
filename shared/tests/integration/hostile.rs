//! Hostile input, by hand: every case is a clear 4xx JSON error that writes nothing, or
//! data stored and read back exactly as sent (all SQL takes bound parameters).

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{Placed, TestApp};

/// Strings that break naive SQL, JSON or terminals.
const NASTY: [&str; 6] = [
    "Robert'); DROP TABLE orders;--",
    "\" OR 1=1 --",
    "Ünïcødé ✓ 🚀 中文 עברית",
    "%_\\ LIKE '%'",
    "\u{202e}reversed\u{200b}zero-width",
    "$1 $$ :name ?",
];

async fn row_counts(app: &TestApp) -> Value {
    let counts: (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM products), (SELECT count(*) FROM addresses), (SELECT count(*) FROM users),
                (SELECT count(*) FROM orders), (SELECT count(*) FROM order_products), (SELECT count(*) FROM outbox)",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    json!([counts.0, counts.1, counts.2, counts.3, counts.4, counts.5])
}

#[sqlx::test(migrations = "../migrations")]
async fn sql_and_unicode_metacharacters_are_stored_and_read_back_verbatim(db: PgPool) {
    let app = TestApp::new(db);
    for (i, nasty) in NASTY.iter().enumerate() {
        // A product name must start with a capital letter.
        let name = format!("P{i} {nasty}");
        let id = Uuid::new_v4();
        let reply = app
            .post(
                "/api/v1/products/",
                &json!({"productID": id, "price": 1, "discount": 0, "description": nasty, "name": name}),
            )
            .await;
        assert_eq!(reply.status.as_u16(), 204, "{}", reply.body);
        let path = format!(
            "/api/v1/products/{}",
            percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
        );
        let product = app.get(&path).await;
        assert_eq!(product.status.as_u16(), 200, "{path}: {}", product.body);
        assert_eq!((product.body["name"].as_str(), product.body["description"].as_str()), (Some(&*name), Some(*nasty)));

        let address = Uuid::new_v4();
        let reply = app
            .post(
                "/api/v1/address/",
                &json!({"addressID": address, "buildingNumber": 1, "streetName": nasty, "city": nasty, "country": nasty}),
            )
            .await;
        assert_eq!(reply.status.as_u16(), 204, "{}", reply.body);
        let user = app.create_user(nasty, address).await;
        let order = app.order_for(user, address, &[id]).await;
        let shown = app.get(&format!("/api/v1/orders/{order}")).await;
        assert_eq!(shown.body["client"]["ClientName"], json!(nasty));
        assert_eq!(shown.body["address"], json!(format!("{nasty}, {nasty}, {nasty}, 1")));
    }
    // A name that looks like a pattern finds nothing, rather than everything.
    app.get("/api/v1/products/P%25").await.assert_error(404, "not exist");
}

#[sqlx::test(migrations = "../migrations")]
async fn nul_characters_and_lone_surrogates_are_refused_by_field(db: PgPool) {
    let app = TestApp::new(db);
    let address = app.create_address().await;
    let before = row_counts(&app).await;
    let cases = [
        (
            "/api/v1/products/",
            json!({"productID": Uuid::new_v4(), "price": 1, "discount": 0, "description": "a\u{0}b", "name": "Nul"}),
            "description",
        ),
        (
            "/api/v1/products/",
            json!({"productID": Uuid::new_v4(), "price": 1, "discount": 0, "description": "d", "name": "N\u{0}"}),
            "name",
        ),
        (
            "/api/v1/address/",
            json!({"addressID": Uuid::new_v4(), "buildingNumber": 1, "streetName": "\u{0}", "city": "c", "country": "k"}),
            "streetName",
        ),
        ("/api/v1/users/", json!({"userID": Uuid::new_v4(), "username": "x\u{0}", "addressID": address}), "username"),
    ];
    for (path, body, field) in cases {
        let reply = app.post(path, &body).await;
        reply.assert_error(400, field);
        assert_eq!(reply.body["data"], json!(field));
    }
    // A lone surrogate is not a string JSON can carry.
    let lone = r#"{"productID":"00000000-0000-4000-8000-000000000001","price":1,"discount":0,"description":"d","name":"A\ud800"}"#;
    app.raw("POST", "/api/v1/products/", "application/json", lone).await.assert_error(400, "Invalid request body");
    assert_eq!(row_counts(&app).await, before);
}

#[sqlx::test(migrations = "../migrations")]
async fn wrong_types_name_the_field_and_write_nothing(db: PgPool) {
    let app = TestApp::new(db);
    let product = app.create_product("Typed", 10.0, 0).await;
    let address = app.create_address().await;
    let user = app.create_user("typed", address).await;
    let order = |field: &str, value: Value| {
        let mut body = json!({"orderID": Uuid::new_v4(), "paymentMethod": "Card", "productsIds": [product], "userID": user, "deliveryAddress": address});
        body[field] = value;
        body
    };
    let before = row_counts(&app).await;
    let cases = [
        (
            "/api/v1/products/",
            json!({"productID": Uuid::new_v4(), "price": "ten", "discount": 0, "description": "d", "name": "X"}),
            "price",
        ),
        (
            "/api/v1/products/",
            json!({"productID": Uuid::new_v4(), "price": 1, "discount": 1.5, "description": "d", "name": "X"}),
            "discount",
        ),
        (
            "/api/v1/products/",
            json!({"productID": 42, "price": 1, "discount": 0, "description": "d", "name": "X"}),
            "productID",
        ),
        (
            "/api/v1/products/",
            json!({"productID": Uuid::new_v4(), "price": 1, "discount": 0, "description": ["d"], "name": "X"}),
            "description",
        ),
        (
            "/api/v1/address/",
            json!({"addressID": Uuid::new_v4(), "buildingNumber": "1", "streetName": "s", "city": "c", "country": "k"}),
            "buildingNumber",
        ),
        (
            "/api/v1/address/",
            json!({"addressID": Uuid::new_v4(), "buildingNumber": 99_999_999_999i64, "streetName": "s", "city": "c", "country": "k"}),
            "buildingNumber",
        ),
        ("/api/v1/users/", json!({"userID": Uuid::new_v4(), "username": null, "addressID": address}), "username"),
        ("/api/v1/orders/", order("productsIds", json!(product.to_string())), "productsIds"),
        ("/api/v1/orders/", order("productsIds", json!([product, product])), "productsIds"),
        ("/api/v1/orders/", order("productsIds", json!([])), "productsIds"),
        ("/api/v1/orders/", order("paymentMethod", json!("Bitcoin")), "paymentMethod"),
        ("/api/v1/orders/", order("userID", json!({"id": user})), "userID"),
        ("/api/v1/orders/", order("orderID", json!(1e300)), "orderID"),
    ];
    for (path, body, field) in cases {
        let reply = app.post(path, &body).await;
        assert_eq!(reply.status.as_u16(), 400, "{path} {body}: {}", reply.body);
        let message = reply.body["message"].as_str().unwrap();
        assert!(message.contains(field), "{message:?} does not name {field}");
    }
    app.raw("POST", "/api/v1/products/", "application/json", r#"{"price": 1e400}"#)
        .await
        .assert_error(400, "Invalid request body");
    assert_eq!(row_counts(&app).await, before);
}

#[sqlx::test(migrations = "../migrations")]
async fn too_many_product_ids_are_refused_before_any_lookup(db: PgPool) {
    let app = TestApp::new(db);
    let address = app.create_address().await;
    let user = app.create_user("greedy", address).await;
    let before = row_counts(&app).await;
    let order = |n: usize| {
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        json!({"orderID": Uuid::new_v4(), "paymentMethod": "Card", "productsIds": ids, "userID": user, "deliveryAddress": address})
    };
    // 1,001 ids fit in the body limit and fail the rule; 10,000 do not fit at all.
    app.post("/api/v1/orders/", &order(1001)).await.assert_error(400, "productsIds");
    app.post("/api/v1/orders/", &order(10_000)).await.assert_error(413, "too large");
    assert_eq!(row_counts(&app).await, before);
}

#[sqlx::test(migrations = "../migrations")]
async fn query_parameters_out_of_range_are_400(db: PgPool) {
    let app = TestApp::new(db);
    for route in ["/api/v1/orders/", "/api/v1/products/"] {
        for query in [
            "limit=-1",
            "limit=0",
            "limit=1001",
            "limit=99999999999999999999999",
            "limit=ten",
            "offset=-5",
            "offset=1.5",
            "order=asc';--",
            "order=ASC%20NULLS%20FIRST",
            "order=%F0%9F%9A%80",
        ] {
            let reply = app.get(&format!("{route}?{query}")).await;
            reply.assert_error(400, "");
            let param = query.split('=').next().unwrap();
            assert!(reply.body["message"].as_str().unwrap().contains(param), "{route}?{query}: {}", reply.body);
        }
        // A deep offset costs the database a join per skipped row: past the deepest
        // page, a 400 naming the parameter, not a query that holds a connection.
        for deep in ["10001", "9223372036854775807"] {
            app.get(&format!("{route}?offset={deep}")).await.assert_error(400, "offset");
        }
        let reply = app.get(&format!("{route}?offset=10000")).await;
        assert_eq!((reply.status.as_u16(), &reply.body["count"]), (200, &json!(0)), "{}", reply.body);
    }
    let user = Uuid::new_v4();
    app.get(&format!("/api/v1/orders/user/{user}?limit=0")).await.assert_error(400, "limit");
    app.get("/api/v1/orders/user/';DROP%20TABLE%20users;--").await.assert_error(400, "userID");
    app.get("/api/v1/orders/%00").await.assert_error(400, "orderID");
    app.get(&format!("/api/v1/orders/user/{user}?offset=10001")).await.assert_error(400, "offset");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_product_name_with_a_nul_is_a_4xx_like_any_other_bad_name(db: PgPool) {
    let app = TestApp::new(db);
    // PostgreSQL refuses a NUL in text: it must never get the chance to.
    for path in ["/api/v1/products/%00", "/api/v1/products/A%00B", "/api/v1/products/%00%00"] {
        let reply = app.get(path).await;
        reply.assert_error(400, "productName");
    }
    app.get("/api/v1/products/Nothing%20here").await.assert_error(404, "");
}

#[sqlx::test(migrations = "../migrations")]
async fn ordinary_requests_keep_answering_while_the_deepest_pages_are_read(db: PgPool) {
    let app = std::sync::Arc::new(TestApp::new(db.clone()));
    let phone = app.create_product("Phone", 1.0, 0).await;
    let Placed { user, address, order } = app.place_order(&[phone]).await;
    // 10,500 approved orders, so the deepest allowed page skips 10,000 real rows.
    sqlx::query(
        "INSERT INTO orders (id, user_id, delivery_address_id, payment_method, order_status, saga_status, total_price, serial_number)
         SELECT gen_random_uuid(), $1, $2, 'Online', 'New', 'Approved', 1, 1 + i % 100 FROM generate_series(1, 10500) AS i",
    )
    .bind(user)
    .bind(address)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO order_products (order_id, position, product_id, name, actual_price)
         SELECT id, 1, $1, 'Phone', 1 FROM orders WHERE id <> $2",
    )
    .bind(phone)
    .bind(order)
    .execute(&db)
    .await
    .unwrap();
    let deep: Vec<_> = (0..16)
        .map(|i| {
            let app = app.clone();
            let order = if i % 2 == 0 { "asc" } else { "desc" };
            tokio::spawn(
                async move { app.get(&format!("/api/v1/orders/?offset=10000&limit=1000&order={order}")).await },
            )
        })
        .collect();
    // Meanwhile, reads and writes of every kind answer.
    for _ in 0..10 {
        let reply = app.get(&format!("/api/v1/orders/{order}")).await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
        let reply = app.get("/api/v1/products/?limit=5").await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    }
    for request in deep {
        let reply = request.await.unwrap();
        assert_eq!((reply.status.as_u16(), &reply.body["count"]), (200, &json!(500)), "{}", reply.body);
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn unknown_routes_and_methods_answer_json(db: PgPool) {
    let app = TestApp::new(db);
    for path in
        ["/api/v2/orders/", "/api/v1/order/", "/api/v1/orders/user/", "/../../etc/passwd", "/api/v1/products/x/y/z"]
    {
        let reply = app.get(path).await;
        assert!(matches!(reply.status.as_u16(), 404 | 400), "{path}: {}", reply.status);
        reply.assert_error(reply.status.as_u16(), "");
    }
    for (method, path) in [
        ("PUT", "/api/v1/orders/"),
        ("DELETE", "/api/v1/products/"),
        ("PUT", "/api/v1/address/"),
        ("DELETE", "/api/v1/users/"),
        ("POST", "/healthcheck/"),
        ("DELETE", "/openapi.json"),
        ("POST", "/docs"),
    ] {
        app.raw(method, path, "application/json", "{}").await.assert_error(405, "Method not allowed");
    }
    for method in ["PATCH", "OPTIONS", "TRACE"] {
        let request = app.client.request(method.parse().unwrap(), "/api/v1/orders/");
        let response = request.send().await.0;
        assert_eq!(response.status().as_u16(), 405, "{method}");
        assert_eq!(response.headers().get("allow").map(|v| v.to_str().unwrap()), Some("DELETE, GET, POST"));
        let body: Value = serde_json::from_str(&response.into_body().into_string().await.unwrap()).unwrap();
        assert_eq!(body["message"], json!("Method not allowed"), "{method}");
    }
}

/// Racing duplicates: only a constraint can refuse the second of two requests that both
/// looked first and found nothing.
#[sqlx::test(migrations = "../migrations")]
async fn every_uniqueness_rule_holds_under_racing_duplicates(db: PgPool) {
    let app = std::sync::Arc::new(TestApp::new(db));
    let product = app.create_product("Racer", 1.0, 0).await;
    let address = app.create_address().await;
    let user = app.create_user("racer", address).await;
    let (order, taken_id) = (Uuid::new_v4(), Uuid::new_v4());
    let cases: Vec<(&str, Vec<Value>)> = vec![
        // The same name under ten ids, and one id under ten names.
        ("/api/v1/products/", (0..10).map(|_| json!({"productID": Uuid::new_v4(), "price": 1, "discount": 0, "name": "Twin"})).collect()),
        ("/api/v1/products/", (0..10).map(|i| json!({"productID": taken_id, "price": 1, "discount": 0, "name": format!("Name {i}")})).collect()),
        ("/api/v1/address/", (0..10).map(|_| json!({"addressID": taken_id, "buildingNumber": 1, "streetName": "s", "city": "c", "country": "k"})).collect()),
        ("/api/v1/users/", (0..10).map(|_| json!({"userID": taken_id, "username": "twin", "addressID": address})).collect()),
        ("/api/v1/orders/", (0..10).map(|_| json!({"orderID": order, "paymentMethod": "Card", "productsIds": [product], "userID": user, "deliveryAddress": address})).collect()),
    ];
    for (path, bodies) in cases {
        let mut tasks = tokio::task::JoinSet::new();
        for body in bodies {
            let app = app.clone();
            tasks.spawn(async move { app.post(path, &body).await.status.as_u16() });
        }
        let mut statuses = Vec::new();
        while let Some(status) = tasks.join_next().await {
            statuses.push(status.unwrap());
        }
        statuses.sort_unstable();
        assert_eq!(statuses, [204, 409, 409, 409, 409, 409, 409, 409, 409, 409], "{path}");
    }
    assert_eq!(app.order_tables().await, (1, 1, 1), "one order, one line, one event");

    let constraints: Vec<String> = sqlx::query_scalar(
        "SELECT conrelid::regclass || '(' || string_agg(a.attname, ',' ORDER BY k.n) || ')'
           FROM pg_constraint c CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
           JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
          WHERE c.contype IN ('p', 'u') GROUP BY c.oid, conrelid ORDER BY 1",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    for expected in [
        "products(id)",
        "products(name)",
        "addresses(id)",
        "users(id)",
        "orders(id)",
        "order_products(order_id,product_id)",
        "outbox(event_id)",
        "saga_inbox(message_id)",
    ] {
        assert!(constraints.iter().any(|c| c == expected), "no constraint on {expected}: {constraints:?}");
    }
}
