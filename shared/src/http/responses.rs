//! The shapes of successful answers the features share: no content, and a body already
//! serialized.

use poem_openapi::{
    ApiResponse,
    payload::Payload,
    registry::{MetaSchemaRef, Registry},
    types::Type,
};

/// The answer of a successful command.
#[derive(Debug, ApiResponse)]
pub(crate) enum NoContent {
    /// Done.
    #[oai(status = 204)]
    Done,
}

/// A JSON body that is already serialized (e.g. a page read from the cache), documented
/// in the spec as `T`. Serving the stored bytes as they are is what makes a cache hit
/// cheap.
pub struct RawJson<T> {
    body: bytes::Bytes,
    _schema: std::marker::PhantomData<fn() -> T>,
}

impl<T: serde::Serialize> RawJson<T> {
    pub fn from_bytes(body: impl Into<bytes::Bytes>) -> Self {
        RawJson { body: body.into(), _schema: std::marker::PhantomData }
    }

    /// Serializes `value` once, with `serde`; the bytes can then be both sent and cached.
    /// poem-openapi's `Json` builds a `serde_json::Value` of the whole body first: for a
    /// page of 20 orders that (its maps, then their serialization) was a fifth of the
    /// api's CPU (perf, `GET /api/v1/orders/?limit=20`).
    pub fn encode(value: &T) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
        Self::from_bytes(body)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.body
    }
}

impl<T: Type> Payload for RawJson<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        content_type.starts_with("application/json")
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type> poem::IntoResponse for RawJson<T> {
    fn into_response(self) -> poem::Response {
        poem::Response::builder().content_type(Self::CONTENT_TYPE).body(self.body)
    }
}
