//! Every wait on PostgreSQL bounded, and a connection that may be mid-protocol never
//! given back to the pool.
//!
//! sqlx bounds only the acquire. A statement whose answer cannot arrive (a host gone
//! without a word, a failover behind a stable address, a partition) waits until TCP gives
//! up, about 15 minutes; and a pooled connection dropped mid-statement goes back through
//! a ping with no bound either, holding its pool slot meanwhile (sqlx-core 0.9
//! `Floating::return_to_pool`). So each unit of work runs on a [`Lease`]: under a
//! deadline ([`Limits::deadline`]); given back through a bounded ping once its work ended
//! in a known state; dropped (its socket closed, its slot freed at once) otherwise —
//! after a deadline, a lost connection, a server that refuses writes, or a cancelled
//! future.

use std::{
    ops::Deref,
    time::{Duration, Instant},
};

use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};

use crate::{
    error::{chain, is_lost_connection, must_discard},
    telemetry::names,
};

/// The work [`Db::run`] and [`Db::read`] do on the connection they lend it.
pub(crate) type Work<'c, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'c>>;

/// How long PostgreSQL may keep a process waiting (README, "Settings").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `DB_ACQUIRE_TIMEOUT`: for a pooled connection, or a new one.
    pub acquire: Duration,
    /// `DB_DEADLINE`: for one read, or one transaction from `BEGIN` to `COMMIT` (the
    /// relay's claim, which stays open while the broker confirms: per statement).
    pub deadline: Duration,
    /// `DB_PING_TIMEOUT`: for the ping of a connection before reuse or when it is given
    /// back, and the read-only check of a new one.
    pub ping: Duration,
}

impl Default for Limits {
    /// Together, a request answers within 10 s whatever PostgreSQL does: 3 s for a
    /// connection, then 5 s of work.
    fn default() -> Self {
        Limits { acquire: Duration::from_secs(3), deadline: Duration::from_secs(5), ping: Duration::from_secs(1) }
    }
}

/// The pool, with the [`Limits`] its work runs under. Derefs to the pool for what needs
/// no bound of ours (migrations, closing).
#[derive(Debug, Clone)]
pub struct Db {
    pool: PgPool,
    limits: Limits,
}

impl Deref for Db {
    type Target = PgPool;

    fn deref(&self) -> &PgPool {
        &self.pool
    }
}

impl From<PgPool> for Db {
    /// A pool made elsewhere (a test's), under the default limits.
    fn from(pool: PgPool) -> Self {
        Db::new(pool, Limits::default())
    }
}

/// The error of a wait that passed its bound: an I/O timeout, so it reads as "the
/// database is unavailable" (503) and its connection as lost.
pub(crate) fn silent(what: &str, limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("PostgreSQL did not answer {what} within {limit:?}"),
    ))
}

/// Whether `error` is a bound of ours that passed (not worth trying again at once: the
/// next try would wait as long).
pub(crate) fn is_silence(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut)
}

impl Db {
    pub fn new(pool: PgPool, limits: Limits) -> Self {
        Db { pool, limits }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection of the pool, for one unit of work.
    pub(crate) async fn lease(&self) -> Result<Lease, sqlx::Error> {
        let connection = self.pool.acquire().await?;
        Ok(Lease { connection: Some(connection), settled: false, ping: self.limits.ping })
    }

    /// The instant a unit of work starting now must be done by.
    pub(crate) fn deadline_from_now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.limits.deadline
    }

    /// `work`, failing with [`silent`] if it is not done by `deadline`.
    pub(crate) async fn by<T, E: From<sqlx::Error>>(
        &self,
        deadline: tokio::time::Instant,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        match tokio::time::timeout_at(deadline, work).await {
            Ok(done) => done,
            Err(_) => {
                metrics::counter!(names::DB_DEADLINES_PASSED).increment(1);
                Err(silent("in time (DB_DEADLINE)", self.limits.deadline).into())
            }
        }
    }

    /// `work` under the deadline, from now.
    pub(crate) async fn within<T, E: From<sqlx::Error>>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        self.by(self.deadline_from_now(), work).await
    }

    /// Runs one statement (or a few, without a transaction) on a leased connection,
    /// under the deadline.
    pub(crate) async fn run<T, F>(&self, mut work: F) -> Result<T, sqlx::Error>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> Work<'c, T>,
    {
        let deadline = self.deadline_from_now();
        self.by(deadline, async {
            let mut lease = self.lease().await?;
            let done = work(lease.connection()).await;
            lease.settle(&done);
            done
        })
        .await
    }

    /// Runs a read, again on another connection while the connection it got turns out
    /// dead, all under one deadline.
    ///
    /// The pool pings a connection that sat idle, but not one used a moment ago: one
    /// killed since fails the statement that finds it (measured: a 503 on the first
    /// request after the api's connections were killed under load). A read is safe to
    /// run twice. At most one try per pooled connection and one more: each dead
    /// connection is dropped when it fails.
    pub(crate) async fn read<T, F>(&self, mut read: F) -> Result<T, sqlx::Error>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> Work<'c, T>,
    {
        let deadline = self.deadline_from_now();
        let result = self
            .by(deadline, async {
                let mut lost = 0;
                loop {
                    let mut lease = self.lease().await?;
                    let done = read(lease.connection()).await;
                    lease.settle(&done);
                    match done {
                        Err(e) if self.worth_another_connection(&e, &mut lost, "read") => {}
                        done => return done,
                    }
                }
            })
            .await;
        if result.as_ref().is_err_and(is_lost_connection) {
            metrics::counter!(names::DB_REQUESTS_INTERRUPTED, "kind" => "read").increment(1);
        }
        result
    }

    /// Whether a unit of work that failed with `error` before it did anything may run
    /// again on another connection: its connection died (not a deadline, which would
    /// pass again), at most once per pooled connection and once more.
    pub(crate) fn worth_another_connection(&self, error: &sqlx::Error, lost: &mut u32, during: &'static str) -> bool {
        if !is_lost_connection(error) || is_silence(error) || *lost >= self.pool.options().get_max_connections() {
            return false;
        }
        *lost += 1;
        metrics::counter!(names::DB_CONNECTIONS_LOST, "during" => during).increment(1);
        tracing::info!(error.cause = %chain(error), during, "a pooled connection was dead; trying again on another");
        true
    }

    /// Readiness: whether PostgreSQL answers, and takes writes; within [`READY_WITHIN`].
    pub async fn readiness(&self) -> Readiness {
        let (started, limit) = (Instant::now(), READY_WITHIN);
        let pooled = tokio::time::timeout(limit / 2, async {
            let mut lease = self.lease().await?;
            let read_only = super::is_read_only(lease.connection()).await;
            lease.settle(&read_only);
            read_only
        })
        .await;
        match pooled {
            Ok(Ok(false)) => return Readiness::Ready,
            Ok(Ok(true)) => return Readiness::ReadOnly,
            _ => {}
        }
        // The pool refuses a read-only server's connections, so it cannot tell "silent"
        // from "read-only": one connection of its own, outside the pool, can.
        let rest = limit.saturating_sub(started.elapsed());
        let direct = tokio::time::timeout(rest, async {
            let mut connection: PgConnection = sqlx::ConnectOptions::connect(&*self.pool.connect_options()).await?;
            let read_only = super::is_read_only(&mut connection).await;
            drop(connection);
            read_only
        })
        .await;
        match direct {
            Ok(Ok(true)) => Readiness::ReadOnly,
            _ => Readiness::Unavailable,
        }
    }
}

/// How long [`Db::readiness`] may take: within the 5 s both `/readyz` promise, with
/// room for Redis's answer (the api) beside it.
const READY_WITHIN: Duration = Duration::from_secs(4);

/// What [`Db::readiness`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// It answers, but refuses writes (a standby behind the address).
    ReadOnly,
    /// It does not answer in time, or refuses connections.
    Unavailable,
}

/// A pooled connection for one unit of work. Given back to the pool only once
/// [`Lease::settle`] says its work ended in a known state; dropped otherwise.
pub(crate) struct Lease {
    connection: Option<PoolConnection<Postgres>>,
    settled: bool,
    ping: Duration,
}

impl Lease {
    pub(crate) fn connection(&mut self) -> &mut PgConnection {
        // Only `Drop` takes it.
        self.connection.as_deref_mut().unwrap_or_else(|| unreachable!("a lease holds its connection until dropped"))
    }

    /// A transaction on the leased connection.
    pub(crate) async fn begin(&mut self) -> Result<super::Tx<'_>, sqlx::Error> {
        sqlx::Connection::begin(self.connection()).await
    }

    /// The work ended with `result`: the connection may go back to the pool unless the
    /// result says it cannot be trusted (lost, silent, or on a server refusing writes).
    pub(crate) fn settle<T>(&mut self, result: &Result<T, sqlx::Error>) {
        self.settle_unless(result.as_ref().err());
    }

    /// The work ended, failing with `error` if any: the connection may go back to the
    /// pool unless that error says it cannot be trusted.
    pub(crate) fn settle_unless(&mut self, error: Option<&sqlx::Error>) {
        self.settled = !error.is_some_and(must_discard);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut connection) = self.connection.take() else { return };
        if !self.settled {
            // Its socket closes now and its slot is free for a new connection; the server
            // rolls back whatever it had open.
            metrics::counter!(names::DB_CONNECTIONS_DISCARDED, "why" => "unsettled").increment(1);
            drop(connection.detach());
            return;
        }
        // What sqlx's own drop does (a ping, which also flushes a queued rollback), but
        // bounded: past it, the future is dropped and with it the connection and its slot.
        let back = connection.return_to_pool();
        drop(connection);
        let ping = self.ping;
        tokio::spawn(async move {
            if tokio::time::timeout(ping, back).await.is_err() {
                metrics::counter!(names::DB_CONNECTIONS_DISCARDED, "why" => "silent_on_release").increment(1);
            }
        });
    }
}
