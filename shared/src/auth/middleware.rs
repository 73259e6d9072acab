//! The api's requests, authenticated: each `/api/` request gets its [`Caller`] (as
//! request data, which the operations take as `Data<&Caller>`), or is refused here,
//! before any operation runs. Health, metrics, the spec and Swagger UI stay public.

use std::sync::Arc;

use poem::{Endpoint, IntoResponse, Request, Response, Result, http::header::AUTHORIZATION};

use super::{Caller, Verifier};
use crate::http::errors;

/// The prefix of every route that needs a caller.
const PROTECTED: &str = "/api/";

pub async fn authenticate<E: Endpoint>(
    next: Arc<E>,
    mut req: Request,
    verifier: Option<Arc<Verifier>>,
) -> Result<Response> {
    if req.uri().path().starts_with(PROTECTED) {
        let caller = match &verifier {
            None => Caller::Anyone,
            Some(verifier) => match verifier.caller(req.headers().get(AUTHORIZATION)).await {
                Ok(caller) => caller,
                Err(rejection) => return Ok(errors::refused(&rejection)),
            },
        };
        req.set_data(caller);
    }
    next.call(req).await.map(IntoResponse::into_response)
}
