//! Bearer-token authentication and per-user access (issue #28), against an identity
//! provider of the test's own (helpers/idp.rs: keys made by openssl, a real HTTP server
//! publishing them through OpenID Connect discovery). Every refusal is the usual error
//! object, a 401 carries `WWW-Authenticate`, and nothing changes in the database.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use order_service::auth::KeySource;
use poem::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{
    Reply, TestApp,
    idp::{self, Idp, Mode, SigningKey, base64url},
    processes::spawn_api,
};

/// A request to `app` with `token` as its bearer token (none if `None`).
async fn call(app: &TestApp, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
    let request = app.request(method, path);
    let request = match token {
        Some(token) => request.header("Authorization", format!("Bearer {token}")),
        None => request,
    };
    TestApp::send(match body {
        Some(body) => request.body_json(body),
        None => request,
    })
    .await
}

#[track_caller]
fn assert_unauthenticated(reply: &Reply, challenge: &str) {
    reply.assert_error(401, "");
    assert_eq!(reply.body["data"], "Authorization", "{}", reply.body);
    let header = reply.headers.get("WWW-Authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let expected = if challenge == "Bearer" { header == "Bearer" } else { header.starts_with(challenge) };
    assert!(expected, "WWW-Authenticate {header:?} is not {challenge:?}");
}

/// Products, two users each with an address and an approved order, made through an
/// open api on the same database.
struct Shop {
    product: Uuid,
    alice: (Uuid, Uuid, Uuid),
    bob: (Uuid, Uuid, Uuid),
}

async fn shop(db: &PgPool) -> Shop {
    let open = TestApp::new(db.clone());
    let product = open.create_product("Phone", 10.0, 0).await;
    let mut users = Vec::new();
    for name in ["alice", "bob"] {
        let address = open.create_address().await;
        let user = open.create_user(name, address).await;
        let order = open.order_for(user, address, &[product]).await;
        open.approve(order).await;
        users.push((user, address, order));
    }
    Shop { product, alice: users[0], bob: users[1] }
}

fn order_body(order: Uuid, (user, address, _): (Uuid, Uuid, Uuid), product: Uuid) -> Value {
    json!({"orderID": order, "paymentMethod": "Card", "productsIds": [product], "userID": user, "deliveryAddress": address})
}

#[sqlx::test(migrations = "../migrations")]
async fn tokens_of_each_algorithm_are_accepted_and_the_api_is_closed_without_one(db: PgPool) {
    let keys =
        [SigningKey::new(Algorithm::RS256), SigningKey::new(Algorithm::ES256), SigningKey::new(Algorithm::EdDSA)];
    let idp = Idp::start(&keys.iter().collect::<Vec<_>>()).await;
    let app = TestApp::builder(db).auth(idp.verifier(Duration::from_secs(60))).build();
    for key in &keys {
        let token = key.sign(&idp::claims(&idp.issuer, Uuid::new_v4(), ""));
        let reply = call(&app, "GET", "/api/v1/products", Some(&token), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}: {}", key.alg, reply.body);
    }
    assert_eq!(idp.jwks_fetches(), 1, "the keys are fetched once and cached");
    assert_unauthenticated(&call(&app, "GET", "/api/v1/products", None, None).await, "Bearer");
    for public in ["/healthcheck/", "/readyz", "/metrics", "/openapi.json", "/docs"] {
        let reply = call(&app, "GET", public, None, None).await;
        assert_ne!(reply.status, StatusCode::UNAUTHORIZED, "{public} stays public");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_tokens_are_refused_and_change_nothing(db: PgPool) {
    let shop = shop(&db).await;
    // ES256 signs (an RSA signature costs seconds in a debug build); the RSA key is
    // published for the HS256 forgery, whose "secret" is that key's public half.
    let (ec, rsa) = (SigningKey::new(Algorithm::ES256), SigningKey::new(Algorithm::RS256));
    let idp = Idp::start(&[&ec, &rsa]).await;
    // A provider that (wrongly) publishes a symmetric key: only the algorithm allow-list
    // keeps a token signed with it out.
    let secret = b"a symmetric key a provider should never publish";
    idp.publish_jwk(json!({"kty": "oct", "k": base64url(secret), "kid": "oct"}));
    let app = TestApp::builder(db.clone()).auth(idp.verifier(Duration::from_secs(60))).build();
    let alice = shop.alice.0;
    let valid = || idp::claims(&idp.issuer, alice, "catalog:write orders:read-all");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = valid();
        change(&mut claims);
        ec.sign(&claims)
    };
    let now = chrono::Utc::now().timestamp();
    let header = |json: Value| base64url(json.to_string().as_bytes());
    let payload = base64url(valid().to_string().as_bytes());
    let hs256_with_the_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(rsa.kid.clone());
        encode(&header, &valid(), &EncodingKey::from_secret(rsa.public_pem.as_ref().unwrap()).unwrap()).unwrap()
    };
    let hs256_with_a_published_secret = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("oct".to_owned());
        encode(&header, &valid(), &EncodingKey::from_secret(secret).unwrap()).unwrap()
    };
    let good = ec.sign(&valid());
    let tampered = {
        let (signed, _) = good.rsplit_once('.').unwrap();
        let other = ec.sign(&idp::claims(&idp.issuer, shop.bob.0, ""));
        format!("{signed}.{}", other.rsplit_once('.').unwrap().1)
    };
    let cases: Vec<(&str, String)> = vec![
        ("expired", with(&|c| c["exp"] = json!(now - 120))),
        ("not valid yet", with(&|c| c["nbf"] = json!(now + 120))),
        ("another audience", with(&|c| c["aud"] = json!("another-api"))),
        ("another issuer", with(&|c| c["iss"] = json!("https://evil.example.com"))),
        ("no exp", with(&|c| drop(c.as_object_mut().unwrap().remove("exp")))),
        ("no sub", with(&|c| drop(c.as_object_mut().unwrap().remove("sub")))),
        ("alg none", format!("{}.{payload}.", header(json!({"alg": "none", "kid": ec.kid})))),
        ("HS256 signed with the public key", hs256_with_the_public_key),
        ("HS256 signed with a published secret", hs256_with_a_published_secret),
        ("a signature of other claims", tampered),
        ("no kid", format!("{}.{payload}.{}", header(json!({"alg": "ES256"})), good.rsplit_once('.').unwrap().1)),
        ("not a JWT", "not-a-jwt".to_owned()),
        ("100 KB", "a".repeat(100 * 1024)),
    ];
    let before = app.order_tables().await;
    for (what, token) in &cases {
        for (method, path, body) in [
            ("POST", "/api/v1/orders", Some(order_body(Uuid::new_v4(), shop.alice, shop.product))),
            ("DELETE", "/api/v1/orders", Some(json!({"orderID": shop.alice.2}))),
            ("GET", &format!("/api/v1/orders/{}", shop.alice.2)[..], None),
        ] {
            let started = Instant::now();
            let reply = call(&app, method, path, Some(token), body.as_ref()).await;
            assert_unauthenticated(&reply, "Bearer error=\"invalid_token\"");
            assert!(started.elapsed() < Duration::from_secs(2), "{what}: answered after {:?}", started.elapsed());
        }
    }
    for (scheme, value) in [("Basic", "YWxpY2U6c2VjcmV0"), ("Bearer", ""), ("Bearer", "a b")] {
        let request = app.client.get("/api/v1/products").header("Authorization", format!("{scheme} {value}"));
        assert_unauthenticated(&TestApp::send(request).await, "Bearer error=\"invalid_token\"");
    }
    assert_eq!(app.order_tables().await, before, "a refused request changed the database");
    let deleted: bool =
        sqlx::query_scalar("SELECT deleted FROM orders WHERE id = $1").bind(shop.alice.2).fetch_one(&db).await.unwrap();
    assert!(!deleted);
    // The same request with the good token goes through: the refusals were the tokens'.
    let reply = call(&app, "GET", &format!("/api/v1/orders/{}", shop.alice.2), Some(&good), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[sqlx::test(migrations = "../migrations")]
async fn an_unknown_key_is_refused_until_published_and_fetched_at_most_once_per_interval(db: PgPool) {
    let (old, new) = (SigningKey::new(Algorithm::EdDSA), SigningKey::new(Algorithm::ES256));
    let idp = Idp::start(&[&old]).await;
    let interval = Duration::from_secs(2);
    let app = TestApp::builder(db).auth(idp.verifier(interval)).build();
    let user = Uuid::new_v4();
    let ok = |token: &str| {
        let token = token.to_owned();
        let app = &app;
        async move { call(app, "GET", "/api/v1/products", Some(&token), None).await }
    };
    assert_eq!(ok(&old.sign(&idp::claims(&idp.issuer, user, ""))).await.status, StatusCode::OK);
    let started = Instant::now();
    let rotated = new.sign(&idp::claims(&idp.issuer, user, ""));
    assert_unauthenticated(&ok(&rotated).await, "Bearer error=\"invalid_token\"");
    // Made-up keys do not have the api fetch again within the interval.
    let payload = rotated.split('.').nth(1).unwrap();
    for _ in 0..20 {
        let header = json!({"alg": "EdDSA", "kid": Uuid::new_v4().to_string()}).to_string();
        let forged = format!("{}.{payload}.AAAA", base64url(header.as_bytes()));
        assert_unauthenticated(&ok(&forged).await, "Bearer error=\"invalid_token\"");
    }
    idp.publish(&new);
    assert_unauthenticated(&ok(&rotated).await, "Bearer error=\"invalid_token\"");
    assert_eq!(idp.jwks_fetches(), 1, "no fetch within {interval:?} of the last");
    tokio::time::sleep(interval.saturating_sub(started.elapsed()) + Duration::from_millis(200)).await;
    assert_eq!(ok(&rotated).await.status, StatusCode::OK, "the published key is fetched once the interval is over");
    assert_eq!(idp.jwks_fetches(), 2);

    // Once the interval is over again, twenty unknown keys at once cost one fetch: the
    // others wait for it.
    tokio::time::sleep(interval + Duration::from_millis(200)).await;
    let forged: Vec<String> = (0..20)
        .map(|_| {
            let header = json!({"alg": "EdDSA", "kid": Uuid::new_v4().to_string()}).to_string();
            format!("{}.{payload}.AAAA", base64url(header.as_bytes()))
        })
        .collect();
    let app = std::sync::Arc::new(app);
    let requests: Vec<_> = forged
        .into_iter()
        .map(|token| {
            let app = app.clone();
            tokio::spawn(async move { call(&app, "GET", "/api/v1/products", Some(&token), None).await.status })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(idp.jwks_fetches(), 3, "one fetch for twenty unknown keys at once");
}

/// A key the provider withdraws stops being trusted once the cached set is older than
/// its maximum age: the next token has the set fetched again (in the background).
#[sqlx::test(migrations = "../migrations")]
async fn a_key_the_provider_withdraws_stops_being_trusted(db: PgPool) {
    let (withdrawn, kept) = (SigningKey::new(Algorithm::EdDSA), SigningKey::new(Algorithm::EdDSA));
    let idp = Idp::start(&[&withdrawn, &kept]).await;
    let app = TestApp::builder(db).auth(idp.verifier_with_max_age(Duration::ZERO, Duration::from_secs(1))).build();
    let token = withdrawn.sign(&idp::claims(&idp.issuer, Uuid::new_v4(), ""));
    let status = || async { call(&app, "GET", "/api/v1/products", Some(&token), None).await.status };
    assert_eq!(status().await, StatusCode::OK);
    idp.replace_keys(&[&kept]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        crate::helpers::eventually(Duration::from_secs(5), || async { status().await == StatusCode::UNAUTHORIZED })
            .await,
        "a withdrawn key is still trusted"
    );
    assert!(idp.jwks_fetches() >= 2);
}

#[sqlx::test(migrations = "../migrations")]
async fn cached_keys_outlive_a_provider_that_fails_or_hangs_and_without_any_the_answer_is_503(db: PgPool) {
    let key = SigningKey::new(Algorithm::EdDSA);
    let idp = Idp::start(&[&key]).await;
    let token = key.sign(&idp::claims(&idp.issuer, Uuid::new_v4(), ""));
    let cached = TestApp::builder(db.clone()).auth(idp.verifier(Duration::ZERO)).build();
    assert_eq!(call(&cached, "GET", "/api/v1/products", Some(&token), None).await.status, StatusCode::OK);

    for mode in [Mode::Fail, Mode::Hang] {
        idp.set_mode(mode);
        // The key the cache holds needs no fetch.
        let started = Instant::now();
        assert_eq!(call(&cached, "GET", "/api/v1/products", Some(&token), None).await.status, StatusCode::OK);
        assert!(started.elapsed() < Duration::from_millis(500), "{mode:?}: {:?}", started.elapsed());
        // An unknown key has it fetch, bounded (1 s here), and keep what it had.
        let other = SigningKey::new(Algorithm::EdDSA).sign(&idp::claims(&idp.issuer, Uuid::new_v4(), ""));
        let started = Instant::now();
        assert_unauthenticated(
            &call(&cached, "GET", "/api/v1/products", Some(&other), None).await,
            "Bearer error=\"invalid_token\"",
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{mode:?}: {:?}", started.elapsed());
        assert_eq!(call(&cached, "GET", "/api/v1/products", Some(&token), None).await.status, StatusCode::OK);

        // With no key cached yet: 503 with Retry-After within the fetch's bound, then at
        // once while the retry interval runs.
        let fresh = TestApp::builder(db.clone()).auth(idp.verifier(Duration::ZERO)).build();
        for bound in [Duration::from_secs(3), Duration::from_millis(500)] {
            let started = Instant::now();
            let reply = call(&fresh, "GET", "/api/v1/products", Some(&token), None).await;
            reply.assert_error(503, "unavailable");
            assert!(reply.headers.contains_key("Retry-After"));
            assert!(started.elapsed() < bound, "{mode:?}: 503 after {:?}", started.elapsed());
        }
    }
    // A provider nobody listens for.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", closed.local_addr().unwrap());
    drop(closed);
    let verifier = idp::verifier(KeySource::Jwks(url.parse().unwrap()), None, Duration::ZERO);
    let down = TestApp::builder(db).auth(verifier).build();
    call(&down, "GET", "/api/v1/products", Some(&token), None).await.assert_error(503, "unavailable");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_user_reaches_only_its_own_orders_and_scopes_open_the_rest(db: PgPool) {
    let shop = shop(&db).await;
    let key = SigningKey::new(Algorithm::ES256);
    let idp = Idp::start(&[&key]).await;
    let app = TestApp::builder(db.clone()).auth(idp.verifier(Duration::from_secs(60))).build();
    let token = |user: Uuid, scope: &str| key.sign(&idp::claims(&idp.issuer, user, scope));
    let (alice, bob) = (token(shop.alice.0, ""), shop.bob);
    let get = |path: String, token: String| {
        let app = &app;
        async move { call(app, "GET", &path, Some(&token), None).await }
    };

    // Another's order and orders answer as missing ones; one's own as usual.
    get(format!("/api/v1/orders/{}", bob.2), alice.clone()).await.assert_error(404, "not exist");
    get(format!("/api/v1/orders/user/{}", bob.0), alice.clone()).await.assert_error(404, "not exist");
    assert_eq!(get(format!("/api/v1/orders/{}", shop.alice.2), alice.clone()).await.status, StatusCode::OK);
    let own = get(format!("/api/v1/orders/user/{}", shop.alice.0), alice.clone()).await;
    assert_eq!(own.body["orders"].as_array().map(Vec::len), Some(1), "{}", own.body);
    get("/api/v1/orders".into(), alice.clone()).await.assert_error(403, "scope");
    assert_eq!(get("/api/v1/products".into(), alice.clone()).await.status, StatusCode::OK);

    // Writes: for itself only; the catalogue with its scope only.
    let before = app.order_tables().await;
    let as_bob = order_body(Uuid::new_v4(), bob, shop.product);
    call(&app, "POST", "/api/v1/orders", Some(&alice), Some(&as_bob)).await.assert_error(403, "own user");
    call(&app, "DELETE", "/api/v1/orders", Some(&alice), Some(&json!({"orderID": bob.2})))
        .await
        .assert_error(404, "not exist");
    let product = json!({"productID": Uuid::new_v4(), "price": 1.0, "discount": 0, "description": "d", "name": "Mug"});
    call(&app, "POST", "/api/v1/products", Some(&alice), Some(&product)).await.assert_error(403, "catalog:write");
    let address =
        json!({"addressID": Uuid::new_v4(), "buildingNumber": 1, "streetName": "S", "city": "C", "country": "R"});
    call(&app, "POST", "/api/v1/address", Some(&alice), Some(&address)).await.assert_error(403, "catalog:write");
    let user = json!({"userID": Uuid::new_v4(), "username": "eve", "addressID": shop.alice.1});
    call(&app, "POST", "/api/v1/users", Some(&alice), Some(&user)).await.assert_error(403, "catalog:write");
    let rename = json!({"productName": "Renamed"});
    call(&app, "PUT", &format!("/api/v1/products/{}/productName", shop.product), Some(&alice), Some(&rename))
        .await
        .assert_error(403, "catalog:write");
    assert_eq!(app.order_tables().await, before, "a refused request changed the database");
    let products: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&db).await.unwrap();
    assert_eq!(products, 1);

    // What the token allows goes through.
    let mine = order_body(Uuid::new_v4(), shop.alice, shop.product);
    assert_eq!(call(&app, "POST", "/api/v1/orders", Some(&alice), Some(&mine)).await.status, StatusCode::NO_CONTENT);
    let delete = json!({"orderID": shop.alice.2});
    assert_eq!(
        call(&app, "DELETE", "/api/v1/orders", Some(&alice), Some(&delete)).await.status,
        StatusCode::NO_CONTENT
    );
    let admin = token(Uuid::new_v4(), "catalog:write orders:read-all");
    assert_eq!(
        call(&app, "POST", "/api/v1/products", Some(&admin), Some(&product)).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(get("/api/v1/orders".into(), admin.clone()).await.status, StatusCode::OK);
    assert_eq!(get(format!("/api/v1/orders/{}", bob.2), admin.clone()).await.status, StatusCode::OK);
    // Reading every order is not deleting another's.
    call(&app, "DELETE", "/api/v1/orders", Some(&admin), Some(&json!({"orderID": bob.2})))
        .await
        .assert_error(404, "not exist");
    let bob_deleted: bool =
        sqlx::query_scalar("SELECT deleted FROM orders WHERE id = $1").bind(bob.2).fetch_one(&db).await.unwrap();
    assert!(!bob_deleted);
}

/// The README's example, as written: `scripts/dev-token.sh` mints tokens with a key of
/// its own, and the real api binary, given the key set's URL and the audience, takes
/// them (and nothing without one).
#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs the binaries (make test builds them) and openssl"]
async fn the_readmes_example_mints_tokens_the_real_api_accepts(db: PgPool) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dev-token.sh");
    let mint = |sub: &str, scope: &str| {
        let output = std::process::Command::new(script).args([sub, scope]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let admin = mint(&Uuid::new_v4().to_string(), "catalog:write");
    let jwks: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dev-idp/public/jwks.json")).unwrap(),
    )
    .unwrap();
    let idp = Idp::start(&[]).await;
    for key in jwks["keys"].as_array().unwrap() {
        idp.publish_jwk(key.clone());
    }
    let jwks_url = format!("{}/jwks.json", idp.issuer);
    let (_api, base) = spawn_api(&db, &[("AUTH_JWKS_URL", jwks_url.as_str()), ("AUTH_AUDIENCE", idp::AUDIENCE)]).await;
    let client = reqwest::Client::new();
    let product = json!({"productID": Uuid::new_v4(), "price": 1.0, "discount": 0, "description": "d", "name": "Mug"});
    let post = |token: Option<String>| {
        let request = client
            .post(format!("{base}/api/v1/products"))
            .header("Content-Type", "application/json")
            .body(product.to_string());
        async move {
            match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            }
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
        }
    };
    assert_eq!(post(None).await, 401);
    assert_eq!(post(Some(mint(&Uuid::new_v4().to_string(), ""))).await, 403, "no catalog:write");
    assert_eq!(post(Some(admin)).await, 204);
}
