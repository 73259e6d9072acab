//! The request body limit (`MAX_BODY_BYTES`).

use poem::{Body, Endpoint, Middleware, Request, Result, http::StatusCode};

/// Answers 413 to a body larger than the limit, whether or not it declares its length
/// (a chunked body is read up to the limit, not trusted).
pub struct BodyLimit(pub usize);

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint { inner, limit: self.0 }
    }
}

pub struct BodyLimitEndpoint<E> {
    inner: E,
    limit: usize,
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> Result<Self::Output> {
        let declared = req
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.limit as u64) {
            return Err(poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE));
        }
        if declared != Some(0) && req.method() != poem::http::Method::GET {
            let body = req.take_body().into_bytes_limit(self.limit).await.map_err(|e| match e {
                poem::error::ReadBodyError::PayloadTooLarge => poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE),
                other => other.into(),
            })?;
            req.set_body(Body::from_bytes(body));
        }
        self.inner.call(req).await
    }
}
