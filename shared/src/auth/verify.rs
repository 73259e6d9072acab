//! A bearer token, checked: the `Authorization` header's form, the algorithm against an
//! allow-list, the signature against the provider's key the token names, then `exp`,
//! `nbf` (with a leeway), `iss` and `aud`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation, decode, decode_header, errors::ErrorKind};
use poem::http::HeaderValue;

use super::{
    Caller,
    claims::Claims,
    keys::{KeyLimits, KeySet, KeySource, KeysUnavailable},
};

/// The algorithms a token may be signed with: asymmetric only. Never `none`, and never
/// an HMAC, whose "secret" an attacker could take from the provider's public key.
const ALLOWED: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// The longest `Authorization` header read. Tokens of the providers we map are 1-2 KB;
/// a larger header is refused before it is decoded.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Why a request's token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// No `Authorization` header: 401 with a bare `WWW-Authenticate: Bearer`.
    #[error("no bearer token")]
    Missing,
    /// A token that is malformed, badly signed, expired, or for someone else: 401,
    /// `error="invalid_token"`. The text is for the log and the `message`.
    #[error("{0}")]
    Invalid(&'static str),
    /// The provider's keys cannot be had: 503.
    #[error(transparent)]
    KeysUnavailable(#[from] KeysUnavailable),
}

/// What a verifier checks, besides the keys.
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    /// The `iss` required; `None` checks none (keys named by URL only).
    pub issuer: Option<String>,
    /// The `aud` required.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// How the keys are fetched and kept.
    pub keys: KeyLimits,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        VerifierSettings {
            issuer: None,
            audience: String::new(),
            leeway: Duration::from_secs(30),
            keys: KeyLimits::default(),
        }
    }
}

/// Checks bearer tokens against one provider's keys.
pub struct Verifier {
    keys: KeySet,
    settings: VerifierSettings,
}

impl Verifier {
    pub fn new(source: KeySource, settings: VerifierSettings) -> Result<Self, reqwest::Error> {
        Ok(Verifier { keys: KeySet::new(source, settings.keys)?, settings })
    }

    /// The caller a request's `Authorization` header names.
    pub async fn caller(&self, authorization: Option<&HeaderValue>) -> Result<Caller, Rejection> {
        let header = authorization.ok_or(Rejection::Missing)?;
        if header.len() > MAX_HEADER_BYTES {
            return Err(Rejection::Invalid("the Authorization header is too long"));
        }
        let token =
            bearer_token(header).ok_or(Rejection::Invalid("the Authorization header is not `Bearer <token>`"))?;
        let header = decode_header(token).map_err(|_| Rejection::Invalid("the token is not a JWT"))?;
        if !ALLOWED.contains(&header.alg) {
            return Err(Rejection::Invalid("the token's algorithm is not accepted"));
        }
        let kid = header.kid.ok_or(Rejection::Invalid("the token names no key (kid)"))?;
        let key = self.keys.key(&kid).await?.ok_or(Rejection::Invalid("the token's key (kid) is unknown"))?;
        if key.algorithm.is_some_and(|pinned| pinned != header.alg) || key.decoding.family() != header.alg.family() {
            return Err(Rejection::Invalid("the token's algorithm does not match its key"));
        }
        let claims = decode::<Claims>(token, &key.decoding, &self.validation(header.alg))
            .map_err(|e| Rejection::Invalid(reason(e.kind())))?
            .claims;
        Ok(Caller::Token { user: claims.user(), scopes: claims.scopes() })
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_audience(&[&self.settings.audience]);
        let mut required = vec!["exp", "aud", "sub"];
        if let Some(issuer) = &self.settings.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

/// The token of `Bearer <token>` (the scheme in any case, RFC 7235).
fn bearer_token(header: &HeaderValue) -> Option<&str> {
    let (scheme, token) = header.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' ')).then_some(token)
}

/// Why jsonwebtoken refused a token, in words a client can act on.
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidAudience => "the token is for another audience (aud)",
        ErrorKind::InvalidIssuer => "the token is from another issuer (iss)",
        ErrorKind::InvalidSignature => "the token's signature does not verify",
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (exp, aud, sub or iss)",
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key",
        _ => "the token is malformed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_must_be_one_bearer_token() {
        let token = |text: &str| bearer_token(&HeaderValue::from_str(text).unwrap()).map(str::to_owned);
        assert_eq!(token("Bearer abc.def.ghi").as_deref(), Some("abc.def.ghi"));
        assert_eq!(token("bearer abc").as_deref(), Some("abc"));
        for bad in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer a b", "abc"] {
            assert_eq!(token(bad), None, "{bad}");
        }
    }
}
