use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestApp;

#[sqlx::test(migrations = "../migrations")]
async fn addresses_and_users_are_created_with_original_payloads(db: PgPool) {
    let app = TestApp::new(db);
    let address = Uuid::new_v4();
    let reply = app
        .post(
            "/api/v1/address",
            &json!({"addressID": address, "buildingNumber": 44, "streetName": "Pushkina", "city": "Moscow", "country": "Russia"}),
        )
        .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let user = Uuid::new_v4();
    let reply = app.post("/api/v1/users/", &json!({"UserID": user, "USERNAME": "test", "addressid": address})).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let stored: (String, Uuid) = sqlx::query_as("SELECT username, address_id FROM users WHERE id = $1")
        .bind(user)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, ("test".to_owned(), address));
}

#[sqlx::test(migrations = "../migrations")]
async fn address_rules_are_400_naming_the_field(db: PgPool) {
    let app = TestApp::new(db);
    let valid =
        json!({"addressID": Uuid::new_v4(), "buildingNumber": 1, "streetName": "s", "city": "c", "country": "k"});
    for (field, value, message) in [
        ("buildingNumber", json!(0), "field `buildingNumber` verification failed"),
        ("buildingNumber", json!("1"), "field `buildingNumber` must be an integer"),
        ("streetName", json!(""), "streetName: must not be empty"),
        ("city", json!(" "), "city: must not be empty"),
        ("country", json!(7), "field `country` must be a string"),
    ] {
        let mut body = valid.clone();
        body[field] = value;
        app.post("/api/v1/address/", &body).await.assert_error(400, message);
    }
    assert_eq!(app.post("/api/v1/address/", &valid).await.status, 204);
    app.post("/api/v1/address/", &valid).await.assert_error(409, "Address with this id already exists;");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_user_needs_a_name_and_an_existing_address(db: PgPool) {
    let app = TestApp::new(db);
    let address = app.create_address().await;
    let unknown = Uuid::new_v4();
    let reply =
        app.post("/api/v1/users/", &json!({"userID": Uuid::new_v4(), "username": "u", "addressID": unknown})).await;
    reply.assert_error(404, "Address with this id not exist;");
    assert_eq!(reply.body["data"], json!(unknown.to_string()));
    app.post("/api/v1/users/", &json!({"userID": Uuid::new_v4(), "username": "", "addressID": address}))
        .await
        .assert_error(400, "username: must not be empty");
    let user = app.create_user("u", address).await;
    app.post("/api/v1/users/", &json!({"userID": user, "username": "u", "addressID": address}))
        .await
        .assert_error(409, "User with this id already exists;");
}
