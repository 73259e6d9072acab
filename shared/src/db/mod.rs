//! The PostgreSQL pool and the migrations.

use std::time::Duration;
use tracing::Instrument;

use backon::Retryable;

use crate::retry::Policy;
use crate::telemetry::names;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

mod lease;
mod schema;

pub(crate) use lease::Lease;
pub use lease::{Db, Limits, Readiness};
pub use schema::{migrate, require};

/// The transaction a command runs in. Commands take it, not a bare connection, so
/// every write of a command (its outbox events included) provably commits together. It
/// borrows a [`Lease`], which decides at the end whether the connection may go back to
/// the pool.
pub(crate) type Tx<'c> = sqlx::Transaction<'c, sqlx::Postgres>;

/// A connection idle this long is pinged before a request gets it.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A pool that cannot be poisoned or starved for long, connected lazily (the process
/// starts even while PostgreSQL is still coming up), with `settings` for its sessions:
/// - a connection left inside a transaction (a cancelled `begin()`, sqlx #4385) is
///   killed by the server after a few seconds, and every connection is recycled after
///   half an hour;
/// - every wait has a bound ([`Limits`]): sqlx has none of its own on a statement, and
///   `statement_timeout` is the server's, of no help when its answer cannot arrive;
/// - a new connection to a server that refuses writes (a standby behind a stale
///   address) is refused: libpq's `target_session_attrs=read-write`, which sqlx ignores.
pub fn connect(
    database_url: &str,
    max_connections: u32,
    settings: &[(&str, &str)],
    limits: Limits,
) -> Result<Db, sqlx::Error> {
    let options: PgConnectOptions = database_url.parse()?;
    let options = options
        .application_name(crate::release::NAME)
        .options([("idle_in_transaction_session_timeout", "10s"), ("statement_timeout", "30s")])
        .options(settings.iter().copied());
    let ping = limits.ping;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(limits.acquire)
        .max_lifetime(Duration::from_secs(30 * 60))
        .idle_timeout(Duration::from_secs(10 * 60))
        .after_connect(move |connection, _| Box::pin(async move { refuse_read_only(connection, ping).await }))
        // No ping before every acquire (a round trip per request under load), but one for
        // a connection that sat idle: one killed server-side while the pool was quiet (a
        // PostgreSQL restart, a failover) is replaced instead of failing the request that
        // finds it with a 503 (measured: 2 of 20 requests, before this). Bounded: a ping
        // of a frozen connection otherwise waits for TCP to give up (15 minutes).
        .test_before_acquire(false)
        .before_acquire(move |connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    tokio::time::timeout(ping, sqlx::Connection::ping(connection))
                        .await
                        .map_err(|_| lease::silent("a ping", ping))??;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options);
    Ok(Db::new(pool, limits))
}

/// `after_connect`: a server whose sessions refuse writes is not one to pool (the pool
/// tries again until its acquire timeout, and the caller answers 503).
async fn refuse_read_only(connection: &mut sqlx::PgConnection, within: Duration) -> Result<(), sqlx::Error> {
    let read_only = tokio::time::timeout(within, is_read_only(connection))
        .await
        .map_err(|_| lease::silent("the read-only check of a new connection", within))??;
    if read_only {
        metrics::counter!(names::DB_CONNECTIONS_DISCARDED, "why" => "read_only").increment(1);
        return Err(sqlx::Error::Configuration("the server refuses writes (transaction_read_only is on)".into()));
    }
    Ok(())
}

/// Whether the session's server takes no writes: a standby, or a server set read-only
/// (what libpq's `target_session_attrs=read-write` asks).
pub(crate) async fn is_read_only(connection: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT current_setting('transaction_read_only') = 'on' AS "read_only!""#)
        .fetch_one(connection)
        .await
}

/// Creates the database named in the URL if it does not exist yet (`make migrate`),
/// waiting like [`migrate`] for a server that is still starting.
pub async fn create_database_if_missing(database_url: &str) -> anyhow::Result<()> {
    use sqlx::{Postgres, migrate::MigrateDatabase};
    let create = || async {
        if !Postgres::database_exists(database_url).await? {
            Postgres::create_database(database_url).await?;
            tracing::info!("database created");
        }
        Ok::<(), sqlx::Error>(())
    };
    create
        .retry(Policy::STARTUP.builder())
        .sleep(tokio::time::sleep)
        .when(crate::error::is_unavailable)
        .notify(|e, delay| {
            tracing::warn!(error.cause = %crate::error::chain(e), retry_in_ms = delay.as_millis() as u64,
                "database server not ready, retrying");
        })
        .await
        .map_err(|e| anyhow::Error::new(e).context("creating the database"))
}

/// Runs `batch` (one bounded DELETE, returning the rows it removed) until a batch
/// removes fewer than `size` rows or `budget` is spent: housekeeping that never holds
/// many locks or runs long, yet keeps up however much is due. Returns how many rows went.
pub(crate) async fn delete_in_batches<F, Fut>(size: u64, budget: Duration, mut batch: F) -> Result<u64, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, sqlx::Error>>,
{
    let started = std::time::Instant::now();
    let mut deleted = 0;
    loop {
        let removed = batch().await?;
        deleted += removed;
        if removed < size || started.elapsed() >= budget {
            return Ok(deleted);
        }
    }
}

/// Runs `work` (one transaction) in a client span of its own, after OpenTelemetry's
/// database conventions: `transaction CreateOrder`, an error status when it fails.
pub(crate) async fn in_transaction_span<T, E>(
    name: &str,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let span = tracing::debug_span!(
        "db.transaction",
        otel.name = format!("transaction {name}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system.name = "postgresql",
        db.operation.name = "transaction",
    );
    let result = work.instrument(span.clone()).await;
    if result.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    result
}
