//! Bearer-token authentication of the api (off unless an issuer or a key set is named):
//! - `AUTH_ISSUER`: the identity provider's issuer URL; its keys are found through
//!   OpenID Connect discovery (`<issuer>/.well-known/openid-configuration`), and every
//!   token's `iss` must equal it;
//! - `AUTH_JWKS_URL`: the key set (JWKS) itself, instead of discovery; with no
//!   `AUTH_ISSUER`, `iss` is not checked;
//! - `AUTH_AUDIENCE`: the `aud` every token must name (required once either is set);
//! - `AUTH_LEEWAY`: the clock skew allowed on `exp` and `nbf`;
//! - `AUTH_JWKS_TIMEOUT`: the bound of each fetch of the discovery document or the keys.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{ConfigError, Redacted, Vars, optional_http_url, parse_var_with, read};
use crate::auth::{KeySource, Verifier, VerifierSettings, keys::KeyLimits};

const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// As the provider's tokens name it, trailing slash and all (Auth0's has one).
    #[serde(rename = "auth_issuer", deserialize_with = "issuer")]
    pub issuer: Option<String>,
    #[serde(rename = "auth_jwks_url", deserialize_with = "jwks_url")]
    pub jwks_url: Option<Redacted<url::Url>>,
    #[serde(rename = "auth_audience")]
    pub audience: Option<String>,
    #[serde(rename = "auth_leeway", deserialize_with = "leeway")]
    pub leeway: Duration,
    #[serde(rename = "auth_jwks_timeout", deserialize_with = "jwks_timeout")]
    pub jwks_timeout: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: None,
            jwks_url: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
            jwks_timeout: DEFAULT_JWKS_TIMEOUT,
        }
    }
}

impl AuthConfig {
    pub(super) fn from_parts(vars: &Vars) -> Result<Self, ConfigError> {
        let config: Self = read(vars)?;
        let audience = config.audience.as_deref().map(str::trim).filter(|a| !a.is_empty());
        match (config.issuer.is_some() || config.jwks_url.is_some(), audience) {
            (true, None) => Err(ConfigError("AUTH_AUDIENCE must be set with AUTH_ISSUER or AUTH_JWKS_URL".into())),
            (false, Some(_)) => {
                Err(ConfigError("AUTH_AUDIENCE is set, but neither AUTH_ISSUER nor AUTH_JWKS_URL is".into()))
            }
            _ => Ok(config),
        }
    }

    /// Whether requests must carry a token.
    pub fn enabled(&self) -> bool {
        self.issuer.is_some() || self.jwks_url.is_some()
    }

    /// The verifier of the api's tokens, or `None` when authentication is off.
    pub fn verifier(&self) -> Result<Option<Verifier>, ConfigError> {
        let Some(audience) = self.audience.as_deref().map(str::trim).filter(|_| self.enabled()) else {
            return Ok(None);
        };
        let issuer = self.issuer.clone();
        let source = match (&self.jwks_url, &issuer) {
            (Some(url), _) => KeySource::Jwks(url.0.clone()),
            (None, Some(issuer)) => KeySource::Discovery(issuer.clone()),
            (None, None) => unreachable!("enabled() says one is set"),
        };
        let settings = VerifierSettings {
            issuer,
            audience: audience.to_owned(),
            leeway: self.leeway,
            keys: KeyLimits { timeout: self.jwks_timeout, ..KeyLimits::default() },
        };
        Verifier::new(source, settings)
            .map(Some)
            .map_err(|e| ConfigError(format!("AUTH_JWKS_URL/AUTH_ISSUER: cannot build the key fetcher: {e}")))
    }
}

/// An http(s) URL, kept as written: `iss` is compared with it character for character.
fn issuer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?.trim().to_owned();
    if text.is_empty() {
        return Ok(None);
    }
    let valid = url::Url::parse(&text).is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host());
    if !valid {
        return Err(serde::de::Error::custom(format!(
            "AUTH_ISSUER must be an http(s) URL such as https://id.example.com/realms/orders, not {text:?}"
        )));
    }
    Ok(Some(text))
}

fn jwks_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Redacted<url::Url>>, D::Error> {
    optional_http_url(d, "AUTH_JWKS_URL", "https://id.example.com/.well-known/jwks.json", true)
}

fn leeway<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_var_with(d, "AUTH_LEEWAY", "a duration of at most 5m such as 30s", |text| {
        let leeway = humantime::parse_duration(text).map_err(|e| e.to_string())?;
        if leeway > Duration::from_secs(300) {
            return Err("longer than 5m".to_owned());
        }
        Ok(leeway)
    })
}

fn jwks_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_var_with(d, "AUTH_JWKS_TIMEOUT", "a duration of at least 100ms such as 3s", |text| {
        super::at_least(text, Duration::from_millis(100))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiConfig, FromEnv, vars};

    #[test]
    fn off_by_default_and_on_with_an_issuer_and_an_audience() {
        let config = ApiConfig::from_vars(vars(&[])).unwrap();
        assert!(!config.auth.enabled());
        assert!(config.auth.verifier().unwrap().is_none());
        let config = ApiConfig::from_vars(vars(&[
            ("AUTH_ISSUER", "https://id.example.com/realms/orders/"),
            ("AUTH_AUDIENCE", "orders"),
            ("AUTH_LEEWAY", "10s"),
        ]))
        .unwrap();
        assert!(config.auth.enabled());
        assert_eq!(config.auth.leeway, Duration::from_secs(10));
        assert!(config.auth.verifier().unwrap().is_some());
    }

    #[test]
    fn a_half_configuration_or_a_bad_value_names_the_variable() {
        for (pairs, var) in [
            (&[("AUTH_ISSUER", "https://id.example.com")][..], "AUTH_AUDIENCE"),
            (&[("AUTH_JWKS_URL", "https://id.example.com/jwks"), ("AUTH_AUDIENCE", " ")][..], "AUTH_AUDIENCE"),
            (&[("AUTH_AUDIENCE", "orders")][..], "AUTH_AUDIENCE"),
            (&[("AUTH_ISSUER", "id.example.com"), ("AUTH_AUDIENCE", "orders")][..], "AUTH_ISSUER"),
            (&[("AUTH_JWKS_URL", "ftp://x/jwks"), ("AUTH_AUDIENCE", "orders")][..], "AUTH_JWKS_URL"),
            (&[("AUTH_LEEWAY", "1h")][..], "AUTH_LEEWAY"),
            (&[("AUTH_JWKS_TIMEOUT", "1ms")][..], "AUTH_JWKS_TIMEOUT"),
        ] {
            let error = ApiConfig::from_vars(vars(pairs)).unwrap_err().to_string();
            assert!(error.contains(var), "{pairs:?}: {error}");
        }
    }
}
