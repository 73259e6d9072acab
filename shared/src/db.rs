//! The PostgreSQL pool and the migrations.

use crate::telemetry::names;
use std::time::Duration;
use tracing::Instrument;

use backon::Retryable;

use crate::{
    error::{chain, is_lost_connection},
    retry::Policy,
};

use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// The transaction a command runs in. Commands take it, not a bare connection, so
/// every write of a command (its outbox events included) provably commits together.
pub(crate) type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// The migrations of `migrations/`, embedded at build time. `Migrator` takes an advisory
/// lock, so several replicas can start together.
pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// A pool that cannot be poisoned for long: a connection left inside a transaction (a
/// cancelled `begin()`, sqlx #4385) is killed by the server after a few seconds, and
/// every connection is recycled after half an hour.
/// Connects lazily: the process starts even while PostgreSQL is still coming up.
pub fn connect(database_url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    connect_with(database_url, max_connections, &[])
}

/// A connection idle this long is pinged before a request gets it.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// [`connect`], with extra session settings.
pub fn connect_with(
    database_url: &str,
    max_connections: u32,
    settings: &[(&str, &str)],
) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = database_url.parse()?;
    let options = options
        .application_name("order-service")
        .options([("idle_in_transaction_session_timeout", "10s"), ("statement_timeout", "30s")])
        .options(settings.iter().copied());
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .max_lifetime(Duration::from_secs(30 * 60))
        .idle_timeout(Duration::from_secs(10 * 60))
        // No ping before every acquire (a round trip per request under load), but one for
        // a connection that sat idle: one killed server-side while the pool was quiet (a
        // PostgreSQL restart, a failover) is replaced instead of failing the request that
        // finds it with a 503 (measured: 2 of 20 requests, before this).
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}

/// Runs a read, again on another connection while the connection it got turns out dead.
///
/// The pool pings a connection that sat idle (`before_acquire`), but not one used a
/// moment ago: one killed since fails the statement that finds it (measured: a 503 on
/// the first request after the api's connections were killed under load). A read is
/// safe to run twice. At most one try per pooled connection and one more: each dead
/// connection is dropped by the pool when it fails.
pub async fn read<T, F, Fut>(db: &PgPool, read: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let result = on_a_live_connection(db, "read", read).await;
    if result.as_ref().is_err_and(is_lost_connection) {
        metrics::counter!(names::DB_REQUESTS_INTERRUPTED, "kind" => "read").increment(1);
    }
    result
}

/// Begins a transaction, on another connection while the one it got turns out dead:
/// `BEGIN` is the first statement, so nothing was done yet (see [`read`]).
pub async fn begin(db: &PgPool) -> Result<Tx, sqlx::Error> {
    on_a_live_connection(db, "begin", || db.begin()).await
}

/// Runs `op` again while it fails on a lost connection, at most once per pooled
/// connection and once more; each retry is counted by `during`.
async fn on_a_live_connection<T, F, Fut>(db: &PgPool, during: &'static str, mut op: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut lost = 0;
    loop {
        match op().await {
            Err(e) if is_lost_connection(&e) && lost < db.options().get_max_connections() => {
                lost += 1;
                metrics::counter!(names::DB_CONNECTIONS_LOST, "during" => during).increment(1);
                tracing::info!(error.cause = %chain(&e), during, "a pooled connection was dead; trying again on another");
            }
            done => return done,
        }
    }
}

/// Applies pending migrations, waiting (with backoff, logging each try) for PostgreSQL
/// to accept connections, however long it takes: it may still be starting next to us.
pub async fn migrate(db: &PgPool) -> anyhow::Result<()> {
    let run = || async { MIGRATOR.run(db).await };
    run.retry(Policy::STARTUP.builder())
        .sleep(tokio::time::sleep)
        .when(|e| matches!(e, sqlx::migrate::MigrateError::Execute(e) if crate::error::is_unavailable(e)))
        .notify(|e, delay| {
            tracing::warn!(error.cause = %crate::error::chain(e), retry_in_ms = delay.as_millis() as u64,
                "database not ready, retrying migrations");
        })
        .await
        .map_err(|e| anyhow::Error::new(e).context("applying migrations"))
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
