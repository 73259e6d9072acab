//! Errors as HTTP, in one place: every error is one `{"message", "data"}` object.
//!
//! Handlers return [`CommandError`] or [`QueryError`] (their variants document each
//! status in the OpenAPI spec); failures poem detects before a handler runs (malformed
//! JSON, wrong content type, unknown route) go through [`framework_error`].

use poem::{
    IntoResponse, Response,
    http::{
        StatusCode,
        header::{RETRY_AFTER, WWW_AUTHENTICATE},
    },
};
use poem_openapi::{ApiResponse, Object, error::ParseRequestPayloadError, payload::Json};

use crate::{
    auth::Rejection,
    error::{AppError, chain},
};

/// What every error response carries.
#[derive(Debug, Clone, Object)]
pub(crate) struct ErrorBody {
    /// What went wrong, naming the field and the rule for a bad request.
    pub message: String,
    /// The subject of the error: the field, id or name concerned; empty if none.
    pub data: String,
}

impl ErrorBody {
    fn new(message: impl Into<String>, data: impl Into<String>) -> Json<ErrorBody> {
        Json(ErrorBody { message: message.into(), data: data.into() })
    }
}

/// The errors of a command (a request with a body that changes state).
#[derive(Debug, ApiResponse)]
pub(crate) enum CommandError {
    /// Malformed JSON, or a value that breaks a rule.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No bearer token, or one that is malformed, badly signed, expired or for another
    /// audience or issuer (with authentication on): `WWW-Authenticate` says which.
    // In the spec only: `auth::authenticate` answers it before any handler.
    #[expect(dead_code, reason = "documents a response answered by the middleware")]
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// The token's user may not do this: a scope it lacks, or another user's order.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// A referenced id or name does not exist.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The id or unique name is taken.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The body is larger than the limit.
    // In the spec only: `limit_body` and poem answer 413 and 415 before any handler,
    // and `framework_error` gives them this same JSON body.
    #[expect(dead_code, reason = "documents a response answered by the middleware")]
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body is not `application/json`.
    #[expect(dead_code, reason = "documents a response answered by poem")]
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// Unexpected failure; the log has the cause.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// PostgreSQL is unavailable, silent past its deadline, or refusing writes; retry
    /// after `Retry-After` seconds (an order retried with the same id answers 409 if the
    /// first attempt had committed after all).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u32),
}

/// The errors of a query.
#[derive(Debug, ApiResponse)]
pub(crate) enum QueryError {
    /// A bad parameter (`limit`, `offset`, `order`, or an id that is not a UUID).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No bearer token, or one that is malformed, badly signed, expired or for another
    /// audience or issuer (with authentication on): `WWW-Authenticate` says which.
    // In the spec only: `auth::authenticate` answers it before any handler.
    #[expect(dead_code, reason = "documents a response answered by the middleware")]
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// The token's user may not do this: a scope it lacks, or another user's order.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// The id or name does not exist.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// Unexpected failure; the log has the cause.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// PostgreSQL is unavailable, silent past its deadline, or refusing writes; retry
    /// after `Retry-After` seconds (an order retried with the same id answers 409 if the
    /// first attempt had committed after all).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u32),
}

/// The `Retry-After` of a 503: PostgreSQL's outages that end by themselves (a failover,
/// a restart) take seconds, and the api's own bounds (`db::Limits`) are seconds too.
const RETRY_AFTER_SECONDS: u32 = 2;

/// What an error answers. Chosen once for each variant of [`AppError`], with no
/// wildcard: a new variant must choose its answer (and the spec's) here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    BadRequest,
    Forbidden,
    NotFound,
    Conflict,
    Unavailable,
    Internal,
}

/// The answer and body of an error, logging it once: a server fault with its whole
/// cause chain, a client mistake briefly.
fn respond(error: AppError) -> (Answer, Json<ErrorBody>) {
    match error {
        AppError::Invalid { field, rule } => {
            tracing::info!(error.field = field, "rejected: {rule}");
            (Answer::BadRequest, ErrorBody::new(format!("{field}: {rule}"), field))
        }
        AppError::NotFound { message, subject } => {
            tracing::info!(error.subject = %subject, "not found: {message}");
            (Answer::NotFound, ErrorBody::new(message, subject))
        }
        AppError::Forbidden { message, subject } => {
            tracing::info!(error.subject = %subject, "forbidden: {message}");
            (Answer::Forbidden, ErrorBody::new(message, subject))
        }
        AppError::Conflict { message, subject } => {
            tracing::info!(error.subject = %subject, "conflict: {message}");
            (Answer::Conflict, ErrorBody::new(message, subject))
        }
        AppError::Unavailable(ref cause) => {
            tracing::error!(error.cause = %chain(cause), "database unavailable");
            (Answer::Unavailable, ErrorBody::new("Service temporarily unavailable", ""))
        }
        AppError::Internal(ref cause) => {
            tracing::error!(error.cause = %chain(cause.as_ref()), "internal error");
            (Answer::Internal, ErrorBody::new("Internal server error", ""))
        }
    }
}

impl From<AppError> for CommandError {
    fn from(error: AppError) -> Self {
        let (answer, body) = respond(error);
        match answer {
            Answer::BadRequest => CommandError::BadRequest(body),
            Answer::Forbidden => CommandError::Forbidden(body),
            Answer::NotFound => CommandError::NotFound(body),
            Answer::Conflict => CommandError::Conflict(body),
            Answer::Unavailable => CommandError::Unavailable(body, RETRY_AFTER_SECONDS),
            Answer::Internal => CommandError::Internal(body),
        }
    }
}

impl From<AppError> for QueryError {
    fn from(error: AppError) -> Self {
        let (answer, body) = respond(error);
        match answer {
            Answer::BadRequest => QueryError::BadRequest(body),
            Answer::Forbidden => QueryError::Forbidden(body),
            Answer::NotFound => QueryError::NotFound(body),
            Answer::Unavailable => QueryError::Unavailable(body, RETRY_AFTER_SECONDS),
            // A query writes nothing, so it cannot conflict: one that says so is a fault.
            Answer::Conflict | Answer::Internal => QueryError::Internal(body),
        }
    }
}

/// A request the authentication refused, as the same JSON shape: 401 with
/// `WWW-Authenticate` (RFC 6750: a bare `Bearer` when no token came, `invalid_token`
/// otherwise), or 503 while the identity provider's keys cannot be had.
pub(crate) fn refused(rejection: &Rejection) -> Response {
    let challenge = match rejection {
        Rejection::KeysUnavailable(cause) => {
            tracing::error!(error.cause = %cause, "request refused: no key to check its token");
            return ErrorBody::new("Service temporarily unavailable", "")
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
                .with_header(RETRY_AFTER, RETRY_AFTER_SECONDS)
                .into_response();
        }
        Rejection::Missing => "Bearer".to_owned(),
        // The reasons are ours, fixed texts without quotes or backslashes.
        Rejection::Invalid(reason) => format!("Bearer error=\"invalid_token\", error_description=\"{reason}\""),
    };
    tracing::info!("unauthenticated: {rejection}");
    ErrorBody::new(rejection.to_string(), "Authorization")
        .with_status(StatusCode::UNAUTHORIZED)
        .with_header(WWW_AUTHENTICATE, challenge)
        .into_response()
}

/// Turns an error raised by poem before or around a handler into the same JSON shape.
pub(crate) fn framework_error(error: poem::Error) -> Response {
    // An error a handler returned as a `CommandError`/`QueryError` is a finished JSON
    // response (poem-openapi wraps it with no source): pass it through.
    if !error.has_source() {
        return error.into_response();
    }
    let status = error.status();
    let (message, data) = if let Some(payload) = error.downcast_ref::<ParseRequestPayloadError>() {
        (format!("Invalid request body: {}", clean_parse_message(&payload.reason)), String::new())
    } else if status == StatusCode::NOT_FOUND {
        ("Route not found".to_owned(), String::new())
    } else if status == StatusCode::METHOD_NOT_ALLOWED {
        ("Method not allowed".to_owned(), String::new())
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
        ("Request body too large".to_owned(), String::new())
    } else if status.is_server_error() {
        tracing::error!(error.cause = %error, "request failed");
        ("Internal server error".to_owned(), String::new())
    } else {
        (error.to_string(), String::new())
    };
    ErrorBody::new(message, data).with_status(status).into_response()
}

/// poem-openapi wraps messages as `failed to parse "Type": … (occurred while parsing
/// "Type")`; the type names are ours, not the client's, so drop them.
fn clean_parse_message(reason: &str) -> &str {
    let mut text = reason;
    while let Some(rest) = text.strip_prefix("failed to parse \"").and_then(|r| r.split_once("\": ")) {
        text = rest.1;
    }
    match text.find(" (occurred while parsing") {
        Some(end) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_answers_its_status() {
        let errors = || {
            [
                AppError::invalid("name", "must not be empty"),
                AppError::forbidden("this needs the scope catalog:write", "catalog:write"),
                AppError::not_found("Product not found", "x"),
                AppError::conflict("Product already exists", "x"),
                AppError::Unavailable(sqlx::Error::PoolTimedOut),
                AppError::Internal(anyhow::anyhow!("boom")),
            ]
        };
        let commands: Vec<_> = errors().into_iter().map(CommandError::from).collect();
        assert!(matches!(
            commands.as_slice(),
            [
                CommandError::BadRequest(_),
                CommandError::Forbidden(_),
                CommandError::NotFound(_),
                CommandError::Conflict(_),
                CommandError::Unavailable(_, RETRY_AFTER_SECONDS),
                CommandError::Internal(_),
            ]
        ));
        let queries: Vec<_> = errors().into_iter().map(QueryError::from).collect();
        assert!(matches!(
            queries.as_slice(),
            [
                QueryError::BadRequest(_),
                QueryError::Forbidden(_),
                QueryError::NotFound(_),
                QueryError::Internal(_),
                QueryError::Unavailable(_, RETRY_AFTER_SECONDS),
                QueryError::Internal(_),
            ]
        ));
    }

    #[test]
    fn parse_messages_lose_internal_type_names() {
        assert_eq!(
            clean_parse_message(
                r#"failed to parse "CreateProduct": field `price` is required (occurred while parsing "CreateProduct")"#
            ),
            "field `price` is required"
        );
        assert_eq!(clean_parse_message("expected value at line 1 column 1"), "expected value at line 1 column 1");
    }
}
