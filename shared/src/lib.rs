//! order-service: orders with a transactional outbox and a choreography saga.
//!
//! Four binaries run this library (`bins/`): `api` serves [`server`]; `outbox-relay` runs
//! [`outbox::relay`]; `saga-worker` runs [`saga::worker`] (and the operator's tools,
//! [`saga::dlq`] and [`saga::pending_sagas`]); `customer-simulator`, the demo's stand-in
//! customer service, answers sagas over [`amqp`]. Read top-down:
//! - [`server`]: the `api` process: the features' operations assembled into one OpenAPI
//!   service (poem-openapi), with its health API; [`http`]: what the features' operations
//!   share at the edge (tags, response shapes, errors as responses, request bodies,
//!   middleware); [`pagination`]: the `limit`/`offset`/`order` of its lists; [`auth`]:
//!   who may do what (bearer tokens, when configured, and the access rules).
//! - Features, each with its domain rules, its commands and queries (SQL inline), and
//!   its HTTP operations in `api.rs`: [`products`], [`addresses`], [`users`], [`orders`];
//!   [`validate`]: the text and id rules they share.
//! - [`pricing`]: money and discounts, exact decimals.
//! - [`bus`]: the command bus: one transaction per command, and what follows its commit.
//! - [`cache`]: the Redis read side of a user's orders (CQRS), bounded, with its
//!   staleness bound.
//! - [`outbox`]: events written in the same transaction as the change they announce;
//!   `outbox::relay` publishes them.
//! - [`saga`]: the customer service's replies applied once, the timeout sweep, the
//!   dead-letter tool.
//! - [`amqp`]: RabbitMQ plumbing: topology, connections, confirmed publishing, consuming.
//! - [`trace_context`]: the W3C trace carried from a request to its events and replies.
//! - [`retry`]: the one backoff policy (with jitter) of every retry and reconnect loop.
//! - [`error`]: the error every command and query ends in; `http::errors` maps it.
//! - Start-up and running plumbing shared by the binaries: [`config`] (each binary's
//!   settings, one part per file, each part building what it configures), [`db`],
//!   [`telemetry`] (logs, metrics and their names), [`probes`] (the relay's and worker's
//!   `/healthcheck/`, `/readyz`, `/metrics`, and the readiness rule of every process),
//!   [`shutdown`], [`schedule`], [`release`] (the name, version and commit).

pub(crate) mod addresses;
pub mod amqp;
pub mod auth;
pub(crate) mod bus;
pub mod cache;
pub mod config;
pub mod db;
pub(crate) mod error;
pub mod http;
pub mod orders;
pub mod outbox;
pub mod pagination;
pub(crate) mod pricing;
pub mod probes;
pub(crate) mod products;
pub mod release;
pub mod retry;
pub mod saga;
pub(crate) mod schedule;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;
pub(crate) mod users;
pub(crate) mod validate;
