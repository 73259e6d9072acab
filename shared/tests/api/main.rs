//! Integration tests of the HTTP API, against the real PostgreSQL: every test gets its
//! own migrated database from `#[sqlx::test]`.

// Test code: a panic is how a failed expectation reports itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;
mod openapi;
mod orders;
mod products;
mod users;
