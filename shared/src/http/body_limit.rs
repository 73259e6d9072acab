//! The request body limit (`MAX_BODY_BYTES`).

use std::sync::Arc;

use poem::{Body, Endpoint, Request, Result, http::StatusCode};

/// Answers 413 to a body larger than `limit`, whether or not it declares its length (a
/// chunked body is read up to the limit, not trusted); else passes the request on.
pub(crate) async fn limit_body<E: Endpoint>(next: Arc<E>, mut req: Request, limit: usize) -> Result<E::Output> {
    let declared = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE));
    }
    if declared != Some(0) && req.method() != poem::http::Method::GET {
        let body = req.take_body().into_bytes_limit(limit).await.map_err(|e| match e {
            poem::error::ReadBodyError::PayloadTooLarge => poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE),
            other => other.into(),
        })?;
        req.set_body(Body::from_bytes(body));
    }
    next.call(req).await
}
