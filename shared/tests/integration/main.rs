//! Integration tests against the real PostgreSQL and RabbitMQ: every test gets its own
//! migrated database from `#[sqlx::test]` and, where it publishes, its own exchange and
//! queues (a name prefix).

// Test code: a panic is how a failed expectation reports itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A test crate has no public API: `pub` here only shares helpers between its modules.
#![allow(unreachable_pub)]

mod auth;
mod broker_faults;
mod cache;
mod clusters;
mod deploy;
mod e2e;
mod helpers;
mod hostile;
mod loki;
mod metrics;
mod openapi;
mod operators;
mod orders;
mod original_readme;
mod pool;
mod products;
mod rabbitmq_admin;
mod relay;
mod saga;
mod schemathesis;
mod silent_networks;
mod swagger;
mod traces;
mod upgrades;
mod users;
