use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestApp;

#[sqlx::test(migrations = "../migrations")]
async fn create_then_get_by_name(db: PgPool) {
    let app = TestApp::new(db);
    let id = Uuid::new_v4();
    // The original README's body: capitalised keys, trailing slash.
    let reply = app
        .post(
            "/api/v1/products/",
            &json!({"productID": id, "price": 100, "discount": 10, "Description": "string", "Name": "Phone"}),
        )
        .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(reply.body, serde_json::Value::Null);

    for path in ["/api/v1/products/Phone", "/api/v1/products/Phone/"] {
        let reply = app.get(path).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let created_at = reply.body["createdAt"].as_str().unwrap().to_owned();
        assert!(chrono::DateTime::parse_from_rfc3339(&created_at).is_ok(), "{created_at}");
        assert_eq!(
            reply.body,
            json!({"productID": id, "name": "Phone", "price": 100, "discount": 10, "description": "string",
                   "quantity": 1, "availability": true, "createdAt": created_at})
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn names_are_looked_up_exactly_and_url_decoded(db: PgPool) {
    let app = TestApp::new(db);
    app.create_product("Big phone", 1.5, 0).await;
    let reply = app.get("/api/v1/products/Big%20phone").await;
    assert_eq!(reply.body["name"], "Big phone");
    assert_eq!(reply.body["price"], json!(1.5));
    app.get("/api/v1/products/big%20phone").await.assert_error(404, "Product with this name not exist;");
}

#[sqlx::test(migrations = "../migrations")]
async fn every_product_rule_is_a_400_naming_the_field(db: PgPool) {
    let app = TestApp::new(db);
    let valid = json!({"productID": Uuid::new_v4(), "price": 10, "discount": 5, "description": "", "name": "Ok"});
    let cases = [
        ("price", json!(-1), "price: Price cannot be negative;"),
        ("price", json!(0.001), "price: Price must have at most 2 decimal places;"),
        ("price", json!(100000000), "price: Price must be at most"),
        ("price", json!("10"), "field `price` must be a number"),
        ("price", json!(1e30), "field `price` is out of range"),
        ("discount", json!(100), "field `discount` verification failed"),
        ("discount", json!(-1), "field `discount` verification failed"),
        ("discount", json!(1.5), "field `discount` must be an integer"),
        ("name", json!("  "), "name: must not be empty"),
        ("name", json!("a\u{0}b"), "name: must not contain NUL"),
        ("name", json!("x".repeat(201)), "name: must be at most 200 characters"),
        ("description", json!("x".repeat(2001)), "description: must be at most 2000 characters"),
        ("productID", json!("not-a-uuid"), "field `productID` must be a UUID"),
    ];
    for (field, value, message) in cases {
        let mut body = valid.clone();
        body[field] = value;
        app.post("/api/v1/products/", &body).await.assert_error(400, message);
    }
    let mut missing = valid.clone();
    missing.as_object_mut().unwrap().remove("name");
    app.post("/api/v1/products/", &missing).await.assert_error(400, "field `name` is required");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 0, "a rejected request wrote a row");
}

#[sqlx::test(migrations = "../migrations")]
async fn zero_price_and_zero_discount_are_allowed(db: PgPool) {
    let app = TestApp::new(db);
    app.create_product("Free", 0.0, 0).await;
    let reply = app.get("/api/v1/products/Free").await;
    assert_eq!((reply.body["price"].clone(), reply.body["discount"].clone()), (json!(0), json!(0)));
}

#[sqlx::test(migrations = "../migrations")]
async fn duplicate_ids_and_names_conflict(db: PgPool) {
    let app = TestApp::new(db);
    let id = app.create_product("Phone", 10.0, 0).await;
    let same_id = json!({"productID": id, "price": 1, "discount": 0, "name": "Other"});
    app.post("/api/v1/products/", &same_id).await.assert_error(409, "Product with this id already exists;");
    let same_name = json!({"productID": Uuid::new_v4(), "price": 1, "discount": 0, "name": "Phone"});
    let reply = app.post("/api/v1/products/", &same_name).await;
    reply.assert_error(409, "Product with this name already exists;");
    assert_eq!(reply.body["data"], "Phone");
}

#[sqlx::test(migrations = "../migrations")]
async fn list_pages_by_price_then_id(db: PgPool) {
    let app = TestApp::new(db);
    let cheap = app.create_product("Cheap", 1.0, 0).await;
    let dear = app.create_product("Dear", 30.0, 0).await;
    let mid = app.create_product("Mid", 20.5, 0).await;

    let reply = app.get("/api/v1/products/").await;
    assert_eq!(reply.status, 200);
    let ids: Vec<_> = reply.body["products"].as_array().unwrap().iter().map(|p| p["productID"].clone()).collect();
    assert_eq!(ids, [json!(cheap), json!(mid), json!(dear)]);
    assert_eq!(
        (&reply.body["count"], &reply.body["limit"], &reply.body["offset"], &reply.body["order"]),
        (&json!(3), &json!(1000), &json!(0), &json!("asc"))
    );

    let reply = app.get("/api/v1/products?limit=1&offset=1&order=desc").await;
    assert_eq!(reply.body["products"][0]["productID"], json!(mid));
    assert_eq!((&reply.body["count"], &reply.body["order"]), (&json!(1), &json!("desc")));
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_paging_parameters_are_400(db: PgPool) {
    let app = TestApp::new(db);
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        ("offset=-1", "offset"),
        ("order=price", "order"),
        ("order=asc%3BDROP%20TABLE%20products", "order"),
    ] {
        app.get(&format!("/api/v1/products/?{query}")).await.assert_error(400, field);
        app.get(&format!("/api/v1/orders/?{query}")).await.assert_error(400, field);
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn rename_requires_a_capital_letter_an_existing_id_and_a_free_name(db: PgPool) {
    let app = TestApp::new(db);
    let id = app.create_product("phone", 10.0, 0).await;
    app.create_product("Taken", 10.0, 0).await;
    let path = format!("/api/v1/products/{id}/productName/");

    app.put(&path, &json!({"productName": "tablet"})).await.assert_error(400, "capital letter");
    app.put(&path, &json!({"productName": "Taken"})).await.assert_error(409, "name already exists");
    let unknown = format!("/api/v1/products/{}/productName", Uuid::new_v4());
    app.put(&unknown, &json!({"productName": "Tablet"})).await.assert_error(404, "Product with this id not exist;");
    app.put("/api/v1/products/nope/productName", &json!({"productName": "Tablet"}))
        .await
        .assert_error(400, "productID");

    let reply = app.put(&path, &json!({"ProductName": "Tablet"})).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(app.get("/api/v1/products/Tablet").await.body["productID"], json!(id));
}
