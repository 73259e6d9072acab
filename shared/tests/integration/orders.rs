use std::{collections::HashSet, sync::Arc};

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{Placed, TestApp};

fn order_body(order: Uuid, products: &[Uuid], user: Uuid, address: Uuid) -> Value {
    json!({"orderID": order, "paymentMethod": "Card", "productsIds": products, "userID": user, "deliveryAddress": address})
}

#[sqlx::test(migrations = "../migrations")]
async fn an_order_reads_back_exactly_as_the_contract_says(db: PgPool) {
    let app = TestApp::new(db);
    let phone = app.create_product("he3444443h1", 100.0, 10).await;
    let case = app.create_product("Case", 0.25, 50).await;
    let Placed { user, order, .. } = app.place_order(&[phone, case]).await;

    let reply = app.get(&format!("/api/v1/orders/{order}/")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let created_at = reply.body["createdAt"].as_str().unwrap().to_owned();
    assert!(chrono::DateTime::parse_from_rfc3339(&created_at).is_ok(), "{created_at}");
    assert_eq!(
        reply.body,
        json!({
            "orderStatus": "New", "paymentMethod": "Online",
            "client": {"ClientID": user, "ClientName": "test"},
            "address": "Russia, Moscow, Pushkina, 44",
            "OrderID": order, "serialNumber": 1,
            "products": [
                {"productID": phone, "name": "he3444443h1", "actualPrice": 90},
                // 0.25 × 50% = 0.125 → 0.12, half to even.
                {"productID": case, "name": "Case", "actualPrice": 0.12}
            ],
            "createdAt": created_at, "totalPrice": 90.12, "sagaStatus": "Pending"
        })
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn the_order_and_its_saga_event_are_written_together(db: PgPool) {
    let app = TestApp::new(db);
    let phone = app.create_product("Phone", 100.0, 10).await;
    let Placed { user, order, .. } = app.place_order(&[phone]).await;

    let (exchange, routing_key, event_type, aggregate, payload, headers): (
        String,
        String,
        String,
        Uuid,
        String,
        Value,
    ) = sqlx::query_as("SELECT exchange, routing_key, event_type, aggregate_id, payload::text, headers FROM outbox")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        (exchange.as_str(), routing_key.as_str(), event_type.as_str()),
        ("Orders", "Order.Saga.Create", "OrderCreateSaga")
    );
    assert_eq!(aggregate, order);
    assert!(payload.starts_with(r#"{"eventID":""#), "{payload}");
    let body: Value = serde_json::from_str(&payload).unwrap();
    assert!(Uuid::parse_str(body["eventID"].as_str().unwrap()).is_ok());
    assert!(chrono::DateTime::parse_from_rfc3339(body["eventTimeStamp"].as_str().unwrap()).is_ok());
    assert_eq!(body["eventType"], "OrderCreateSaga");
    assert_eq!(body["orderID"], json!(order));
    assert_eq!(body["userID"], json!(user));
    assert_eq!(body["productsIDs"], json!([phone]));
    assert_eq!(body["totalPrice"], json!(90));
    let traceparent = headers["traceparent"].as_str().unwrap();
    assert!(order_service::trace_context::TraceContext::parse(traceparent).is_some(), "{traceparent}");
}

#[sqlx::test(migrations = "../migrations")]
async fn the_event_carries_the_trace_of_the_request(db: PgPool) {
    let app = TestApp::new(db);
    let phone = app.create_product("Phone", 1.0, 0).await;
    let address = app.create_address().await;
    let user = app.create_user("u", address).await;
    let response = app
        .client
        .post("/api/v1/orders")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .body_json(&order_body(Uuid::new_v4(), &[phone], user, address))
        .send()
        .await;
    response.assert_status(poem::http::StatusCode::NO_CONTENT);
    let traceparent: String =
        sqlx::query_scalar("SELECT headers->>'traceparent' FROM outbox").fetch_one(&app.db).await.unwrap();
    assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{traceparent}");
}

#[sqlx::test(migrations = "../migrations")]
async fn order_rules_are_400_naming_the_field(db: PgPool) {
    let app = TestApp::new(db);
    let phone = app.create_product("Phone", 1.0, 0).await;
    let address = app.create_address().await;
    let user = app.create_user("u", address).await;
    let valid = order_body(Uuid::new_v4(), &[phone], user, address);
    for (field, value, message) in [
        ("paymentMethod", json!("Bitcoin"), "field `paymentMethod` must be one of"),
        ("paymentMethod", json!("string"), "field `paymentMethod` must be one of"),
        ("productsIds", json!([]), "field `productsIds` verification failed"),
        ("productsIds", json!([phone, phone]), "field `productsIds` verification failed"),
        ("productsIds", json!(["x"]), "field `productsIds[0]` must be a UUID"),
        ("productsIds", json!(phone), "field `productsIds` must be an array"),
        ("userID", json!(1), "field `userID` must be a string"),
    ] {
        let mut body = valid.clone();
        body[field] = value;
        app.post("/api/v1/orders/", &body).await.assert_error(400, message);
    }
    let too_many: Vec<Uuid> = (0..1001).map(|_| Uuid::new_v4()).collect();
    let mut body = valid.clone();
    body["productsIds"] = json!(too_many);
    app.post("/api/v1/orders/", &body).await.assert_error(400, "productsIds");
    assert_eq!(app.order_tables().await, (0, 0, 0));
}

#[sqlx::test(migrations = "../migrations")]
async fn unknown_references_are_404_and_write_nothing(db: PgPool) {
    let app = TestApp::new(db);
    let phone = app.create_product("Phone", 1.0, 0).await;
    let address = app.create_address().await;
    let user = app.create_user("u", address).await;
    let unknown = Uuid::new_v4();
    for (body, message) in [
        (order_body(Uuid::new_v4(), &[phone, unknown], user, address), "Product with this id not exist;"),
        (order_body(Uuid::new_v4(), &[phone], unknown, address), "User with this id not exist;"),
        (order_body(Uuid::new_v4(), &[phone], user, unknown), "Address with this id not exist;"),
    ] {
        let reply = app.post("/api/v1/orders/", &body).await;
        reply.assert_error(404, message);
        assert_eq!(reply.body["data"], json!(unknown));
    }
    assert_eq!(app.order_tables().await, (0, 0, 0));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_duplicate_order_id_is_409_and_leaves_the_tables_as_they_were(db: PgPool) {
    let app = TestApp::new(db);
    let phone = app.create_product("Phone", 1.0, 0).await;
    let other = app.create_product("Other", 2.0, 0).await;
    let Placed { user, address, order } = app.place_order(&[phone]).await;
    let before = app.order_tables().await;
    assert_eq!(before, (1, 1, 1));
    app.post("/api/v1/orders/", &order_body(order, &[phone, other], user, address))
        .await
        .assert_error(409, "Order with this id already exists;");
    assert_eq!(app.order_tables().await, before);
}

#[sqlx::test(migrations = "../migrations")]
async fn lists_show_approved_live_orders_only(db: PgPool) {
    let app = TestApp::new(db);
    let phone = app.create_product("Phone", 10.0, 0).await;
    let Placed { user, address, order: first } = app.place_order(&[phone]).await;
    let second = Uuid::new_v4();
    assert_eq!(app.post("/api/v1/orders/", &order_body(second, &[phone], user, address)).await.status, 204);
    let Placed { order: pending, .. } = app.place_order(&[phone]).await;
    app.approve(first).await;
    app.approve(second).await;

    let reply = app.get("/api/v1/orders/?limit=10&order=asc").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let ids: Vec<Value> = reply.body["orders"].as_array().unwrap().iter().map(|o| o["OrderID"].clone()).collect();
    assert_eq!(ids, [json!(first), json!(second)]);
    assert_eq!(
        (&reply.body["count"], &reply.body["limit"], &reply.body["order"]),
        (&json!(2), &json!(10), &json!("asc"))
    );
    assert_eq!(reply.body["orders"][0]["sagaStatus"], "Approved");

    let reply = app.get(&format!("/api/v1/orders/user/{user}?limit=1&order=desc")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["orders"][0]["OrderID"], json!(second));
    assert_eq!((&reply.body["count"], &reply.body["offset"]), (&json!(1), &json!(0)));

    // A pending order is readable by id, but in no list.
    assert_eq!(app.get(&format!("/api/v1/orders/{pending}")).await.body["sagaStatus"], "Pending");
    let reply = app.get("/api/v1/orders?offset=2").await;
    assert_eq!(reply.body["orders"], json!([]));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_users_orders_need_a_known_user(db: PgPool) {
    let app = TestApp::new(db);
    let address = app.create_address().await;
    let user = app.create_user("u", address).await;
    let reply = app.get(&format!("/api/v1/orders/user/{user}/")).await;
    assert_eq!((reply.status.as_u16(), &reply.body["orders"]), (200, &json!([])));
    app.get(&format!("/api/v1/orders/user/{}", Uuid::new_v4())).await.assert_error(404, "User with this id not exist;");
    app.get("/api/v1/orders/user/not-a-uuid").await.assert_error(400, "userID");
    app.get(&format!("/api/v1/orders/{}", Uuid::new_v4())).await.assert_error(404, "Order with this id not exist;");
}

#[sqlx::test(migrations = "../migrations")]
async fn only_an_approved_live_order_can_be_deleted(db: PgPool) {
    let app = TestApp::new(db);
    let phone = app.create_product("Phone", 10.0, 0).await;
    let Placed { user, order, .. } = app.place_order(&[phone]).await;

    app.delete("/api/v1/orders/", &json!({"orderID": order})).await.assert_error(404, "Order with this id not exist;");
    app.approve(order).await;
    let reply = app.delete("/api/v1/orders/", &json!({"OrderID": order})).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    app.delete("/api/v1/orders/", &json!({"orderID": order})).await.assert_error(404, "Order with this id not exist;");
    app.delete("/api/v1/orders/", &json!({"orderID": Uuid::new_v4()})).await.assert_error(404, "not exist");

    let (deleted, deleted_at_set): (bool, bool) =
        sqlx::query_as("SELECT deleted, deleted_at IS NOT NULL FROM orders WHERE id = $1")
            .bind(order)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(deleted && deleted_at_set, "the row stays, marked deleted");
    let events: Vec<(String, Value)> =
        sqlx::query_as("SELECT routing_key, payload::jsonb FROM outbox ORDER BY id").fetch_all(&app.db).await.unwrap();
    // The saga's request, the approval's `OrderCreated`, then the deletion.
    let keys: Vec<&str> = events.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["Order.Saga.Create", "Order.Create", "Order.Delete"]);
    assert_eq!(events[2].1["eventType"], "OrderDeleted");
    assert_eq!(events[2].1["userID"], json!(user));
    assert_eq!(app.get(&format!("/api/v1/orders/user/{user}")).await.body["orders"], json!([]));
    app.get(&format!("/api/v1/orders/{order}")).await.assert_error(404, "not exist");
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_orders_each_get_a_row_an_event_and_a_distinct_serial(db: PgPool) {
    let app = Arc::new(TestApp::new(db));
    let phone = app.create_product("Phone", 10.0, 0).await;
    let address = app.create_address().await;
    let user = app.create_user("u", address).await;

    // Start near the end of the cycle, so the 50 orders wrap from 100 to 1.
    sqlx::query("SELECT setval('order_serial_number', 80)").execute(&app.db).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let app = app.clone();
        tasks.spawn(async move {
            let reply = app.post("/api/v1/orders/", &order_body(Uuid::new_v4(), &[phone], user, address)).await;
            assert_eq!(reply.status, 204, "{}", reply.body);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(app.order_tables().await, (50, 50, 50));
    let serials: Vec<i32> = sqlx::query_scalar("SELECT serial_number FROM orders").fetch_all(&app.db).await.unwrap();
    let distinct: HashSet<i32> = serials.iter().copied().collect();
    assert_eq!(distinct.len(), 50, "a serial number repeated: {serials:?}");
    let expected: HashSet<i32> = (81..=100).chain(1..=30).collect();
    assert_eq!(distinct, expected);
}

#[sqlx::test(migrations = "../migrations")]
async fn serial_numbers_cycle_after_100(db: PgPool) {
    let app = TestApp::new(db);
    sqlx::query("SELECT setval('order_serial_number', 99)").execute(&app.db).await.unwrap();
    let phone = app.create_product("Phone", 1.0, 0).await;
    let Placed { user, address, order: a } = app.place_order(&[phone]).await;
    let b = Uuid::new_v4();
    assert_eq!(app.post("/api/v1/orders/", &order_body(b, &[phone], user, address)).await.status, 204);
    assert_eq!(app.get(&format!("/api/v1/orders/{a}")).await.body["serialNumber"], 100);
    assert_eq!(app.get(&format!("/api/v1/orders/{b}")).await.body["serialNumber"], 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn an_order_failing_at_its_last_write_leaves_no_row_behind(db: PgPool) {
    let app = TestApp::new(db);
    let phone = app.create_product("Phone", 1.0, 0).await;
    let address = app.create_address().await;
    let user = app.create_user("u", address).await;
    // The outbox insert, the last write of the command, fails.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'outbox down'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let reply = app.post("/api/v1/orders/", &order_body(Uuid::new_v4(), &[phone], user, address)).await;
    reply.assert_error(500, "Internal server error");
    assert!(!reply.body.to_string().contains("outbox down"), "a 5xx body leaked the cause: {}", reply.body);
    assert_eq!(app.order_tables().await, (0, 0, 0));
}

#[sqlx::test(migrations = "../migrations")]
async fn every_id_must_be_a_uuid(db: PgPool) {
    let app = TestApp::new(db);
    let id = Uuid::new_v4();
    let valid = order_body(id, &[id], id, id);
    for field in ["orderID", "userID", "deliveryAddress"] {
        let mut body = valid.clone();
        body[field] = json!("nope");
        app.post("/api/v1/orders/", &body).await.assert_error(400, &format!("field `{field}` must be a UUID"));
    }
    app.delete("/api/v1/orders/", &json!({"orderID": "nope"}))
        .await
        .assert_error(400, "field `orderID` must be a UUID");
    app.delete("/api/v1/orders/", &json!({})).await.assert_error(400, "field `orderID` is required");
    app.get("/api/v1/orders/nope").await.assert_error(400, "orderID: must be a UUID");
    app.post("/api/v1/users/", &json!({"userID": "nope", "username": "u", "addressID": id}))
        .await
        .assert_error(400, "field `userID` must be a UUID");
    app.post("/api/v1/users/", &json!({"userID": id, "username": "u", "addressID": "nope"}))
        .await
        .assert_error(400, "field `addressID` must be a UUID");
    let address = json!({"addressID": "nope", "buildingNumber": 1, "streetName": "s", "city": "c", "country": "k"});
    app.post("/api/v1/address/", &address).await.assert_error(400, "field `addressID` must be a UUID");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_users_list_validates_its_paging_too(db: PgPool) {
    let app = TestApp::new(db);
    let address = app.create_address().await;
    let user = app.create_user("u", address).await;
    for (query, field) in
        [("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset"), ("order=up", "order")]
    {
        app.get(&format!("/api/v1/orders/user/{user}?{query}")).await.assert_error(400, field);
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_list_reads_back_exactly(db: PgPool) {
    let app = TestApp::new(db);
    let phone = app.create_product("Phone", 19.99, 15).await;
    let Placed { user, order, .. } = app.place_order(&[phone]).await;
    app.approve(order).await;
    for path in [
        "/api/v1/orders/?limit=5&offset=0&order=desc".to_owned(),
        format!("/api/v1/orders/user/{user}?limit=5&order=desc"),
    ] {
        let reply = app.get(&path).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let created_at = reply.body["orders"][0]["createdAt"].clone();
        assert_eq!(
            reply.body,
            json!({"orders": [{
                "orderStatus": "New", "paymentMethod": "Online",
                "client": {"ClientID": user, "ClientName": "test"},
                "address": "Russia, Moscow, Pushkina, 44",
                "OrderID": order, "serialNumber": 1,
                // 19.99 × 0.85 = 16.9915 → 16.99
                "products": [{"productID": phone, "name": "Phone", "actualPrice": 16.99}],
                "createdAt": created_at, "totalPrice": 16.99, "sagaStatus": "Approved"
            }], "count": 1, "limit": 5, "offset": 0, "order": "desc"})
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn an_order_keeps_the_name_and_price_it_was_placed_with(db: PgPool) {
    let app = TestApp::new(db);
    let phone = app.create_product("Phone", 10.0, 0).await;
    let Placed { order, .. } = app.place_order(&[phone]).await;
    let reply = app.put(&format!("/api/v1/products/{phone}/productName"), &json!({"productName": "Phone X"})).await;
    assert_eq!(reply.status, 204);
    let line = app.get(&format!("/api/v1/orders/{order}")).await.body["products"][0].clone();
    assert_eq!(line, json!({"productID": phone, "name": "Phone", "actualPrice": 10}));
}

/// Every page of both lists, in both directions, is the slice of the approved, live
/// orders in (createdAt, OrderID) order: ties on createdAt go by id, pending and deleted
/// orders are in no page, and a page past the end is empty.
#[sqlx::test(migrations = "../migrations")]
async fn every_page_is_its_slice_of_the_visible_orders(db: PgPool) {
    let app = TestApp::new(db);
    let phone = app.create_product("Phone", 10.0, 0).await;
    let Placed { user, address, order: first } = app.place_order(&[phone]).await;
    let mut mine = vec![first];
    for _ in 0..8 {
        mine.push(app.order_for(user, address, &[phone]).await);
    }
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(app.place_order(&[phone]).await.order);
    }
    for order in mine.iter().chain(&others).skip(2) {
        app.approve(*order).await;
    }
    assert_eq!(app.delete("/api/v1/orders/", &json!({"orderID": mine[5]})).await.status, 204);
    // Four orders created in the same instant: their order is their ids'.
    sqlx::query("UPDATE orders SET created_at = '2026-01-01T00:00:00Z' WHERE id = ANY($1)")
        .bind(vec![mine[3], mine[4], mine[6], others[1]])
        .execute(&app.db)
        .await
        .unwrap();

    let visible = |user: Option<Uuid>| {
        let db = app.db.clone();
        async move {
            let mut rows: Vec<(chrono::DateTime<chrono::Utc>, Uuid)> = sqlx::query_as(
                "SELECT created_at, id FROM orders
                  WHERE saga_status = 'Approved' AND NOT deleted AND ($1::uuid IS NULL OR user_id = $1)",
            )
            .bind(user)
            .fetch_all(&db)
            .await
            .unwrap();
            rows.sort();
            rows.into_iter().map(|(_, id)| json!(id)).collect::<Vec<Value>>()
        }
    };
    for (path, mut expected) in [
        ("/api/v1/orders/".to_owned(), visible(None).await),
        (format!("/api/v1/orders/user/{user}"), visible(Some(user)).await),
    ] {
        assert_eq!(expected.len(), if path.contains("user") { 6 } else { 10 });
        for order in ["asc", "desc"] {
            if order == "desc" {
                expected.reverse();
            }
            for limit in [1, 3, 4, 20] {
                for offset in 0..=expected.len() + 1 {
                    let reply = app.get(&format!("{path}?limit={limit}&offset={offset}&order={order}")).await;
                    assert_eq!(reply.status, 200, "{}", reply.body);
                    let ids: Vec<Value> =
                        reply.body["orders"].as_array().unwrap().iter().map(|o| o["OrderID"].clone()).collect();
                    let want: Vec<Value> = expected.iter().skip(offset).take(limit).cloned().collect();
                    assert_eq!(ids, want, "{path} limit={limit} offset={offset} order={order}");
                }
            }
        }
    }
}

/// Both lists are planned once per session, and their one plan goes by the indexes:
/// planning a list (the view's joins and its product lines) cost PostgreSQL as much as
/// running it, each time, as sqlx's statement with a LIMIT parameter got a custom plan
/// per request; and a generic plan of the previous statement joined every order.
#[sqlx::test(migrations = "../migrations")]
async fn the_lists_are_planned_once_per_session_by_the_indexes(db: PgPool) {
    let app = TestApp::builder(db.clone()).pool(crate::helpers::api_pool(&db, 1)).build();
    let phone = app.create_product("Phone", 10.0, 0).await;
    let Placed { user, order, .. } = app.place_order(&[phone]).await;
    app.approve(order).await;
    // Enough orders, users and addresses for the planner to weigh a join of all of them
    // against lookups by key, as it would in production.
    sqlx::raw_sql(
        "INSERT INTO addresses (id, building_number, street_name, city, country)
         SELECT gen_random_uuid(), i, 'Street', 'City', 'Country' FROM generate_series(1, 2000) AS i;
         INSERT INTO users (id, username, address_id)
         SELECT gen_random_uuid(), 'user' || row_number() OVER (), id FROM addresses;
         INSERT INTO orders (id, user_id, delivery_address_id, payment_method, order_status, saga_status,
                             total_price, created_at)
         SELECT gen_random_uuid(), u.id, u.address_id, 'Card', 'New', 'Approved', 10, now() - make_interval(secs => n)
           FROM users u, generate_series(1, 10) AS n;
         INSERT INTO order_products (order_id, position, product_id, name, actual_price)
         SELECT o.id, 1, p.id, p.name, 10 FROM orders o, products p
          WHERE NOT EXISTS (SELECT FROM order_products l WHERE l.order_id = o.id);
         ANALYZE;",
    )
    .execute(&db)
    .await
    .unwrap();

    const REQUESTS: i64 = 6;
    for offset in 0..REQUESTS {
        for path in ["/api/v1/orders/".to_owned(), format!("/api/v1/orders/user/{user}")] {
            for order in ["asc", "desc"] {
                // A new page each time: a page in the cache would not reach PostgreSQL.
                let reply = app.get(&format!("{path}?limit=20&offset={offset}&order={order}")).await;
                assert_eq!(reply.status, 200, "{}", reply.body);
            }
        }
    }

    // The api's one session: its prepared statements, and their plans.
    let mut session = app.db.acquire().await.unwrap();
    let lists: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT name, statement, generic_plans, custom_plans FROM pg_prepared_statements
          WHERE statement LIKE '%FROM order_views WHERE id%LIMIT%' AND statement NOT LIKE '%pg_prepared%'",
    )
    .fetch_all(&mut *session)
    .await
    .unwrap();
    assert_eq!(lists.len(), 4, "{lists:?}");
    for (name, statement, generic, custom) in lists {
        assert_eq!((generic, custom), (REQUESTS, 0), "plans of {statement}");
        let arguments = if statement.contains("user_id = $1") { format!("'{user}', 20, 0") } else { "20, 0".into() };
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN EXECUTE {name}({arguments})")))
            .fetch_all(&mut *session)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan"), "the plan of {statement} reads a whole table:\n{plan}");
    }
}
