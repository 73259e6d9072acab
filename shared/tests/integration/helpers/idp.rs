//! An identity provider of the test's own: signing keys made with openssl (RSA, P-256,
//! Ed25519), tokens minted with them, and a real HTTP server publishing the key set
//! (OpenID Connect discovery and the JWKS) that a test can have answer, fail or hang.

use std::{
    net::SocketAddr,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, jwk::Jwk};
use order_service::auth::{KeySource, Verifier, VerifierSettings, keys::KeyLimits};
use poem::{
    EndpointExt, Route, Server, get, handler,
    listener::{Acceptor, Listener, TcpListener},
    web::{Data, Json},
};
use serde_json::{Value, json};
use uuid::Uuid;

pub const AUDIENCE: &str = "orders-api";

/// A private key made by openssl, PEM.
fn openssl_key(args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl").args(args).output().expect("openssl runs");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// One signing key: its `kid`, algorithm, private key and public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
    /// The public key, PEM (RSA only): what an HS256 forgery would use as its secret.
    pub public_pem: Option<Vec<u8>>,
}

impl SigningKey {
    pub fn new(alg: Algorithm) -> Self {
        let (encoding, public_pem) = match alg {
            Algorithm::RS256 => {
                let private = openssl_key(&["genrsa", "-traditional", "2048"]);
                let path = std::env::temp_dir().join(format!("idp-{}.pem", Uuid::new_v4()));
                std::fs::write(&path, &private).unwrap();
                let public = openssl_key(&["rsa", "-in", path.to_str().unwrap(), "-pubout"]);
                std::fs::remove_file(&path).unwrap();
                (EncodingKey::from_rsa_pem(&private).unwrap(), Some(public))
            }
            Algorithm::ES256 => {
                let private = openssl_key(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
                (EncodingKey::from_ec_pem(&private).unwrap(), None)
            }
            Algorithm::EdDSA => {
                (EncodingKey::from_ed_pem(&openssl_key(&["genpkey", "-algorithm", "ed25519"])).unwrap(), None)
            }
            other => panic!("no test key for {other:?}"),
        };
        let kid = format!("{alg:?}-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let mut jwk: Jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        jwk.common.key_id = Some(kid.clone());
        SigningKey { kid, alg, encoding, jwk: serde_json::to_value(jwk).unwrap(), public_pem }
    }

    /// A token of these claims, signed with this key, naming it.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        encode(&header, claims, &self.encoding).unwrap()
    }
}

/// The claims of a token valid now for `user` with `scope`, from `issuer`.
pub fn claims(issuer: &str, user: Uuid, scope: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": issuer, "aud": AUDIENCE, "sub": user.to_string(), "scope": scope, "iat": now, "nbf": now - 5, "exp": now + 300})
}

/// base64url without padding (RFC 7515), for tokens made by hand.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// How the provider answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Serve,
    /// 500 to every request.
    Fail,
    /// Accepts and never answers.
    Hang,
}

struct State {
    keys: Mutex<Vec<Value>>,
    mode: Mutex<Mode>,
    jwks_fetches: AtomicUsize,
    issuer: String,
}

/// The provider's server, on a port of its own, until dropped.
pub struct Idp {
    pub issuer: String,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

#[handler]
async fn discovery(state: Data<&Arc<State>>) -> poem::Result<Json<Value>> {
    state.answer().await?;
    Ok(Json(json!({"issuer": state.issuer, "jwks_uri": format!("{}/jwks.json", state.issuer)})))
}

#[handler]
async fn jwks(state: Data<&Arc<State>>) -> poem::Result<Json<Value>> {
    state.answer().await?;
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    Ok(Json(json!({"keys": state.keys.lock().unwrap().clone()})))
}

impl State {
    async fn answer(&self) -> poem::Result<()> {
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Serve => Ok(()),
            Mode::Fail => Err(poem::Error::from_status(poem::http::StatusCode::INTERNAL_SERVER_ERROR)),
            Mode::Hang => {
                std::future::pending::<()>().await;
                Ok(())
            }
        }
    }
}

impl Idp {
    /// Starts serving `keys`.
    pub async fn start(keys: &[&SigningKey]) -> Self {
        let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await.unwrap();
        let port = acceptor.local_addr()[0].as_socket_addr().map(SocketAddr::port).unwrap();
        let issuer = format!("http://127.0.0.1:{port}");
        let state = Arc::new(State {
            keys: Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()),
            mode: Mutex::new(Mode::Serve),
            jwks_fetches: AtomicUsize::new(0),
            issuer: issuer.clone(),
        });
        let app = Route::new()
            .at("/.well-known/openid-configuration", get(discovery))
            .at("/jwks.json", get(jwks))
            .data(state.clone());
        let server = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(app).await;
        });
        Idp { issuer, state, server }
    }

    /// Publishes one more key.
    pub fn publish(&self, key: &SigningKey) {
        self.publish_jwk(key.jwk.clone());
    }

    /// Publishes a public key made elsewhere (a JWK).
    pub fn publish_jwk(&self, jwk: Value) {
        self.state.keys.lock().unwrap().push(jwk);
    }

    /// The set becomes `keys` only: the others are withdrawn.
    pub fn replace_keys(&self, keys: &[&SigningKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// How many times the key set was served.
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// A verifier of this provider's tokens through discovery, fetching for unknown keys
    /// at most once per `refresh_interval`.
    pub fn verifier(&self, refresh_interval: Duration) -> Verifier {
        verifier(KeySource::Discovery(self.issuer.clone()), Some(self.issuer.clone()), refresh_interval)
    }

    /// The same, holding a fetched key set for at most `max_age`.
    pub fn verifier_with_max_age(&self, refresh_interval: Duration, max_age: Duration) -> Verifier {
        let mut settings = settings(Some(self.issuer.clone()), refresh_interval);
        settings.keys.max_age = max_age;
        Verifier::new(KeySource::Discovery(self.issuer.clone()), settings).unwrap()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A verifier of `source`'s keys for [`AUDIENCE`], each fetch bounded by 1 s.
pub fn verifier(source: KeySource, issuer: Option<String>, refresh_interval: Duration) -> Verifier {
    Verifier::new(source, settings(issuer, refresh_interval)).unwrap()
}

fn settings(issuer: Option<String>, refresh_interval: Duration) -> VerifierSettings {
    VerifierSettings {
        issuer,
        audience: AUDIENCE.to_owned(),
        leeway: Duration::from_secs(5),
        keys: KeyLimits { timeout: Duration::from_secs(1), refresh_interval, ..KeyLimits::default() },
    }
}
