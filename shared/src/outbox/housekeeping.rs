//! The outbox's housekeeping, in every relay process: the backlog gauges, deleting
//! published rows past `OUTBOX_RETENTION` from `outbox_published`, and vacuuming the
//! outbox when published rows left enough dead versions behind. Relays running it
//! together skip each other's rows.

use std::time::{Duration, Instant};

use crate::db::Db;

use crate::{error::chain, retry::Policy, telemetry::names};

/// Refreshes `outbox_pending` and `outbox_oldest_unpublished_age_seconds`.
pub async fn record_backlog(db: &Db) -> Result<(), sqlx::Error> {
    let backlog = db
        .run(|c| {
            Box::pin(
                sqlx::query!(
                    r#"SELECT count(*) AS "pending!",
                  COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS "oldest_age!"
             FROM outbox"#
                )
                .fetch_one(c),
            )
        })
        .await?;
    metrics::gauge!(names::OUTBOX_PENDING).set(backlog.pending as f64);
    metrics::gauge!(names::OUTBOX_OLDEST_UNPUBLISHED_AGE).set(backlog.oldest_age);
    Ok(())
}

/// Deletes published rows older than the retention, in batches of [`RETENTION_BATCH`]
/// so no statement holds many locks or runs long, until none is left or
/// [`RETENTION_BUDGET`] is spent; relays running it together skip each other's rows.
/// Returns how many went.
///
/// Capped at ten batches of 1,000 every 30 s, it deleted 333 rows/s, less than one relay
/// publishes: a busy outbox grew without bound.
pub async fn delete_published(db: &Db, retention: Duration) -> Result<u64, sqlx::Error> {
    crate::db::delete_in_batches(RETENTION_BATCH as u64, RETENTION_BUDGET, || {
        db.run(|c| {
            Box::pin(async move {
                Ok(sqlx::query!(
                    "DELETE FROM outbox_published WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM outbox_published
                  WHERE published_at < now() - make_interval(secs => $1)
                  ORDER BY published_at
                  LIMIT $2
                    FOR UPDATE SKIP LOCKED))",
                    retention.as_secs_f64(),
                    RETENTION_BATCH
                )
                .execute(c)
                .await?
                .rows_affected())
            })
        })
    })
    .await
}

/// Rows per retention statement.
const RETENTION_BATCH: i64 = 5_000;
/// The longest a retention pass runs before housekeeping moves on (it runs every 30 s).
const RETENTION_BUDGET: Duration = Duration::from_secs(10);

/// Every 30 s: the backlog gauges, and deleting published rows past the retention;
/// every 5 s: whether the outbox needs a vacuum.
pub async fn run(db: Db, retention: Duration) {
    let mut every = tokio::time::interval(Duration::from_secs(30));
    let mut vacuum_check = tokio::time::interval(VACUUM_CHECK);
    let (mut vacuum_backoff, mut vacuum_not_before) = (Policy::HOUSEKEEPING.backoff(), Instant::now());
    loop {
        tokio::select! {
            _ = every.tick() => {
                if let Err(e) = record_backlog(&db).await {
                    tracing::warn!(error.cause = %chain(&e), "cannot measure the outbox backlog");
                }
                match delete_published(&db, retention).await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::info!(deleted, "old published outbox rows deleted"),
                    Err(e) => tracing::warn!(error.cause = %chain(&e), "outbox retention failed"),
                }
            }
            _ = vacuum_check.tick() => {
                let started = Instant::now();
                if started < vacuum_not_before {
                    continue;
                }
                match vacuum_if_needed(&db).await {
                    Ok(None) => vacuum_backoff.reset(),
                    Ok(Some(dead)) => {
                        vacuum_backoff.reset();
                        tracing::info!(dead, duration_ms = started.elapsed().as_millis() as u64, "outbox vacuumed");
                    }
                    Err(e) => {
                        let delay = vacuum_backoff.next_delay();
                        vacuum_not_before = Instant::now() + delay;
                        tracing::warn!(error.cause = %chain(&e), retry_in_ms = delay.as_millis() as u64, "outbox vacuum failed");
                    }
                }
            }
        }
    }
}

/// How often the relay looks at the outbox's dead rows.
const VACUUM_CHECK: Duration = Duration::from_secs(5);
/// Dead rows (published rows, deleted) at which the relay vacuums the outbox.
pub const VACUUM_AFTER_DEAD_ROWS: i64 = 5_000;

/// Vacuums the outbox once enough published rows left dead versions behind. Their
/// entries stay in the primary key until a vacuum, and every claim walks them from the
/// oldest id: with 88,000 of them (in the partial index it replaced) each claim took
/// 10 ms, most of PostgreSQL's time at one order at a time. Autovacuum normally keeps up
/// (the migrations make it eager for this table); where it is off or behind, this does.
/// `SKIP_LOCKED`: when another relay is vacuuming, this one does not queue behind it.
pub async fn vacuum_if_needed(db: &Db) -> Result<Option<i64>, sqlx::Error> {
    let dead = db
        .run(|c| {
            Box::pin(
                sqlx::query_scalar!(
                    r#"SELECT n_dead_tup AS "dead!" FROM pg_stat_user_tables WHERE relid = 'outbox'::regclass"#
                )
                .fetch_optional(c),
            )
        })
        .await?;
    match dead {
        Some(dead) if dead >= VACUUM_AFTER_DEAD_ROWS => {
            // Without the pool's statement timeout (30 s): a vacuum of a large outbox
            // outlasted it and was cancelled, and restarted 5 s later, forever. On a
            // connection of its own, taken out of the pool and closed after, so no
            // request ever gets a session without a timeout.
            let mut connection = db.acquire().await?.detach();
            sqlx::raw_sql("SET statement_timeout = 0").execute(&mut connection).await?;
            // VACUUM cannot run in a transaction block: the simple protocol, one statement.
            let vacuumed = sqlx::raw_sql("VACUUM (SKIP_LOCKED) outbox").execute(&mut connection).await;
            let _ = sqlx::Connection::close(connection).await;
            vacuumed?;
            Ok(Some(dead))
        }
        _ => Ok(None),
    }
}
