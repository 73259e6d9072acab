//! The `api` process's server: the features' operations and the health API assembled
//! into one OpenAPI service, with Swagger UI, the spec and the middleware of [`crate::http`].

mod health;

use std::{sync::Arc, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;
use poem::{
    Endpoint, EndpointExt, Route, Server,
    listener::TcpListener,
    middleware::{NormalizePath, TrailingSlash},
};
use poem_openapi::OpenApiService;

use crate::{
    addresses,
    db::Db,
    http::{allow, body_limit, content_type, errors, observe},
    orders, products, users,
};

/// How the api's PostgreSQL sessions are set up.
///
/// `plan_cache_mode = force_generic_plan`: each statement is planned once per session.
/// With the default, a statement with a LIMIT parameter (both order lists) is planned
/// afresh at every request, as PostgreSQL guesses a tenth of the table for an unknown
/// LIMIT, which makes the generic plan look dearer than any custom one; and planning a
/// list (the view's joins and its product lines) cost as much as running it: pgbench,
/// the list's SELECT at 8 clients on 100,000 orders, 1,441 tps planned per request
/// against 2,320 planned once. Every statement of the api looks rows up by key or walks
/// an index under a LIMIT, so its generic plan is the plan: the lists are written so
/// that it is (`orders::ListOrders`), and
/// `the_lists_are_planned_once_per_session_by_the_indexes` checks their plans.
pub const SESSION_SETTINGS: &[(&str, &str)] = &[("plan_cache_mode", "force_generic_plan")];

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub cache: crate::cache::OrderCache,
    /// Woken after each commit that wrote the outbox.
    pub relays: crate::outbox::RelayWaker,
    pub metrics: PrometheusHandle,
    pub max_body_bytes: usize,
    /// Checks bearer tokens; `None`: the api is open (`AUTH_*` unset).
    pub auth: Option<Arc<crate::auth::Verifier>>,
}

pub(crate) type Apis = (
    health::HealthApi,
    products::api::ProductsApi,
    addresses::api::AddressesApi,
    users::api::UsersApi,
    orders::api::OrdersApi,
);

/// The OpenAPI service: every route, documented.
pub fn openapi(state: &AppState) -> OpenApiService<Apis, ()> {
    let apis = (
        health::HealthApi { db: state.db.clone(), cache: state.cache.clone(), metrics: state.metrics.clone() },
        products::api::ProductsApi { db: state.db.clone() },
        addresses::api::AddressesApi { db: state.db.clone() },
        users::api::UsersApi { db: state.db.clone() },
        orders::api::OrdersApi { db: state.db.clone(), cache: state.cache.clone(), relays: state.relays.clone() },
    );
    OpenApiService::new(apis, crate::release::NAME, crate::release::VERSION).description(
        "Orders with a transactional outbox and a choreography saga. Every error is \
             `{\"message\", \"data\"}`; request keys match case-insensitively; a trailing \
             slash is accepted on every route.",
    )
}

/// The whole application as one endpoint.
pub fn app(state: AppState) -> impl Endpoint {
    let api = openapi(&state);
    let spec: serde_json::Value = serde_json::from_str(&api.spec()).unwrap_or_default();
    let routes = Arc::new(observe::RouteNames::from_spec_paths(
        spec["paths"].as_object().into_iter().flat_map(|paths| paths.keys().map(String::as_str)),
    ));
    let allowed = Arc::new(allow::AllowedMethods::from_spec(&spec));
    let max_body_bytes = state.max_body_bytes;
    let verifier = state.auth.clone();
    let spec_endpoint = api.spec_endpoint();
    let docs = api.swagger_ui();
    Route::new()
        .nest("/", api)
        // The spec and Swagger UI answer any method on their own: GET only, like the rest.
        .at("/openapi.json", poem::get(spec_endpoint))
        .nest("/docs", poem::get(docs))
        .around(content_type::json_by_default)
        .around(move |next, req| body_limit::limit_body(next, req, max_body_bytes))
        // Before the body is read: a caller without a token costs no more than its headers.
        .around(move |next, req| crate::auth::authenticate(next, req, verifier.clone()))
        .around(move |next, req| observe::observe(next, req, routes.clone()))
        .catch_all_error(|e| async move { errors::framework_error(e) })
        .around(move |next, req| allow::add_allow_header(next, req, allowed.clone()))
        // Trims a trailing slash in place (no redirect): `/api/v1/products/` is `/api/v1/products`.
        .with(NormalizePath::new(TrailingSlash::Trim))
}

/// Serves until SIGINT or SIGTERM, then lets in-flight requests finish (up to `grace`).
pub async fn serve(addr: std::net::SocketAddr, state: AppState, grace: Duration) -> std::io::Result<()> {
    tracing::info!(%addr, "api listening");
    Server::new(TcpListener::bind(addr))
        .run_with_graceful_shutdown(app(state), crate::shutdown::signal(), Some(grace))
        .await
}
