//! HTTP at the edge, for the features' operations: tags, response shapes, errors as
//! responses, request bodies, wire formats, and the middleware. The features use it; it
//! uses none of them (the assembly is [`crate::server`]).

pub mod allow;
pub mod body_limit;
pub(crate) mod case_insensitive;
pub mod content_type;
pub mod errors;
pub(crate) mod formats;
pub mod observe;
pub(crate) mod responses;

use poem_openapi::Tags;

/// The groups of operations in the spec and Swagger UI.
#[derive(Tags)]
pub(crate) enum ApiTags {
    /// Liveness, readiness and metrics.
    Health,
    /// The catalogue.
    Products,
    /// Delivery addresses.
    Addresses,
    /// Clients.
    Users,
    /// Orders and their saga.
    Orders,
}
