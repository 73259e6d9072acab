//! The identity provider's signing keys (its JWKS), fetched and cached. jsonwebtoken
//! parses a key set but neither fetches nor caches one.
//!
//! A token naming a key the cache lacks (the provider rotated its keys) has the set
//! fetched again, at most once per [`KeyLimits::refresh_interval`] however many such
//! tokens arrive (one fetch at a time; the others wait for it), so that tokens with
//! made-up `kid`s cannot have the api hammer the provider. A set older than
//! [`KeyLimits::max_age`] is fetched again in the background, so that a key the provider
//! withdrew stops being trusted. Each fetch (discovery and key set together) is bounded
//! in time and size, and runs in a task of its own: a client that goes away cannot cancel
//! it half-way and leave the interval used up for nothing. While the provider is down or
//! silent, the cached keys keep working; with none cached yet, a request gets
//! [`KeysUnavailable`] (503) within one fetch's bound, and further attempts wait
//! [`KeyLimits::retry_interval`].

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{JwkSet, KeyAlgorithm, PublicKeyUse},
};
use serde::Deserialize;

/// Where the keys are.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The key set's URL.
    Jwks(url::Url),
    /// An issuer (as its tokens name it) whose OpenID Connect discovery document names
    /// the key set.
    Discovery(String),
}

/// The bounds of fetching the keys.
#[derive(Debug, Clone, Copy)]
pub struct KeyLimits {
    /// Each fetch, discovery included, connection to last byte.
    pub timeout: Duration,
    /// The largest discovery document or key set read (a key set holds a few keys of a
    /// few hundred bytes each).
    pub max_bytes: usize,
    /// At most one fetch for unknown keys per this.
    pub refresh_interval: Duration,
    /// While no key was ever fetched, at most one attempt per this.
    pub retry_interval: Duration,
    /// A set older than this is fetched again (in the background) at the next token.
    pub max_age: Duration,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            timeout: Duration::from_secs(3),
            max_bytes: 256 * 1024,
            refresh_interval: Duration::from_secs(60),
            retry_interval: Duration::from_secs(2),
            max_age: Duration::from_secs(10 * 60),
        }
    }
}

/// No key could be had: none was ever fetched, and the provider does not answer.
#[derive(Debug, thiserror::Error)]
#[error("the identity provider's keys are unavailable: {0}")]
pub struct KeysUnavailable(String);

/// One verification key, with the algorithm its JWK pins, if any.
#[derive(Debug)]
pub struct Key {
    pub decoding: DecodingKey,
    pub algorithm: Option<Algorithm>,
}

type Keys = HashMap<String, Arc<Key>>;

#[derive(Default)]
struct Cached {
    keys: Keys,
    /// When the set in `keys` was fetched; `None` before the first success.
    fetched_at: Option<Instant>,
}

/// Fetches the key set: cheap to clone into the task that runs a fetch.
#[derive(Clone)]
struct Fetcher {
    source: KeySource,
    limits: KeyLimits,
    http: reqwest::Client,
}

/// The key set, cached.
pub struct KeySet {
    fetcher: Fetcher,
    cached: Arc<RwLock<Cached>>,
    /// When the last fetch started; held during a fetch, so one runs at a time.
    last_fetch: Arc<tokio::sync::Mutex<Option<Instant>>>,
}

impl KeySet {
    pub fn new(source: KeySource, limits: KeyLimits) -> Result<Self, reqwest::Error> {
        // No redirects: one could take the fetch from https to http.
        let http =
            reqwest::Client::builder().timeout(limits.timeout).redirect(reqwest::redirect::Policy::none()).build()?;
        Ok(KeySet { fetcher: Fetcher { source, limits, http }, cached: Arc::default(), last_fetch: Arc::default() })
    }

    fn cached(&self, kid: &str) -> (Option<Arc<Key>>, Option<Instant>) {
        let cached = self.cached.read().unwrap_or_else(|e| e.into_inner());
        (cached.keys.get(kid).cloned(), cached.fetched_at)
    }

    /// The key named `kid`: from the cache, or from a fetch if the cache lacks it and
    /// none ran in the last refresh interval. `Ok(None)`: the provider has no such key.
    pub async fn key(&self, kid: &str) -> Result<Option<Arc<Key>>, KeysUnavailable> {
        let limits = self.fetcher.limits;
        if let (Some(key), fetched_at) = self.cached(kid) {
            if fetched_at.is_some_and(|at| at.elapsed() > limits.max_age) {
                self.refresh_in_background();
            }
            return Ok(Some(key));
        }
        let mut last_fetch = self.last_fetch.lock().await;
        // Another request's fetch may have brought it while this one waited.
        let (key, fetched_at) = self.cached(kid);
        if key.is_some() {
            return Ok(key);
        }
        let ever = fetched_at.is_some();
        let wait = if ever { limits.refresh_interval } else { limits.retry_interval };
        if last_fetch.is_some_and(|at| at.elapsed() < wait) {
            return if ever { Ok(None) } else { Err(KeysUnavailable("the last attempt failed".into())) };
        }
        *last_fetch = Some(Instant::now());
        let fetched = tokio::spawn(fetch_into(self.fetcher.clone(), self.cached.clone())).await;
        match fetched.unwrap_or_else(|e| Err(format!("the fetch failed: {e}"))) {
            Ok(()) => Ok(self.cached(kid).0),
            Err(_) if ever => Ok(None),
            Err(e) => Err(KeysUnavailable(e)),
        }
    }

    /// Fetches the set again without waiting for it, unless a fetch runs or ran within
    /// the refresh interval.
    fn refresh_in_background(&self) {
        let Ok(mut last_fetch) = self.last_fetch.clone().try_lock_owned() else { return };
        if last_fetch.is_some_and(|at| at.elapsed() < self.fetcher.limits.refresh_interval) {
            return;
        }
        *last_fetch = Some(Instant::now());
        let (fetcher, cached) = (self.fetcher.clone(), self.cached.clone());
        tokio::spawn(async move {
            let _held = last_fetch;
            let _ = fetch_into(fetcher, cached).await;
        });
    }
}

/// One fetch, its outcome logged; a new set replaces the cached one.
async fn fetch_into(fetcher: Fetcher, cached: Arc<RwLock<Cached>>) -> Result<(), String> {
    let fetched = tokio::time::timeout(fetcher.limits.timeout, fetcher.fetch())
        .await
        .unwrap_or_else(|_| Err(format!("no key set within {:?}", fetcher.limits.timeout)));
    match fetched {
        Ok(keys) => {
            tracing::info!(keys = keys.len(), "identity provider's keys fetched");
            *cached.write().unwrap_or_else(|e| e.into_inner()) = Cached { keys, fetched_at: Some(Instant::now()) };
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error.cause = %e, "identity provider's keys not fetched; any cached ones stay");
            Err(e)
        }
    }
}

impl Fetcher {
    async fn fetch(&self) -> Result<Keys, String> {
        let jwks_url = match &self.source {
            KeySource::Jwks(url) => url.clone(),
            KeySource::Discovery(issuer) => {
                let base = issuer.trim_end_matches('/');
                let document: Discovery = self.get_json(&format!("{base}/.well-known/openid-configuration")).await?;
                // OpenID Connect Discovery 1.0, 4.3: the document's issuer is the one asked.
                if document.issuer != *issuer {
                    return Err(format!("the discovery document is for issuer {:?}", document.issuer));
                }
                let url = url::Url::parse(&document.jwks_uri)
                    .map_err(|e| format!("jwks_uri {:?}: {e}", document.jwks_uri))?;
                // An https issuer's keys come over https too.
                if issuer.starts_with("https:") && url.scheme() != "https" {
                    return Err(format!("jwks_uri {:?} is not https", document.jwks_uri));
                }
                url
            }
        };
        let set: JwkSet = self.get_json(jwks_url.as_str()).await?;
        Ok(usable_keys(&set))
    }

    /// GET `url` as JSON, at most `max_bytes`.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let mut response =
            self.http.get(url).send().await.and_then(|r| r.error_for_status()).map_err(|e| format!("{url}: {e}"))?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: {e}"))? {
            if body.len() + chunk.len() > self.limits.max_bytes {
                return Err(format!("{url}: larger than {} bytes", self.limits.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not the JSON expected: {e}"))
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// The set's signing keys that have a `kid` and a type jsonwebtoken verifies with, and
/// pin no algorithm or one we accept; encryption keys and keys it cannot read are left out.
fn usable_keys(set: &JwkSet) -> Keys {
    set.keys
        .iter()
        .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let algorithm = match jwk.common.key_algorithm {
                None => None,
                Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
                Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
                Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
                Some(_) => return None,
            };
            let decoding = DecodingKey::from_jwk(jwk).ok()?;
            Some((kid, Arc::new(Key { decoding, algorithm })))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signing_keys_with_an_id_are_kept() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed", "alg": "EdDSA", "use": "sig"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "any"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "hs", "alg": "HS256"}
        ]}))
        .unwrap();
        let keys = usable_keys(&set);
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["any", "ed"]);
        assert_eq!(keys["ed"].algorithm, Some(Algorithm::EdDSA));
        assert_eq!(keys["any"].algorithm, None);
    }
}
