//! The schema's migrations: who applies them, and what a process checks before it works.
//!
//! The rule is expand/contract (README, "Upgrading"): a release adds to the schema and
//! never drops or renames what the release before it reads; the contract step comes a
//! release later, once no old binary is left. So during a rollout, and after a rollback,
//! old binaries run on a schema newer than they know.
//!
//! Only `api migrate` applies migrations (the Kubernetes Job, `make migrate`, Compose's
//! `migrate` service), on a session of its own without the pool's `statement_timeout` (a
//! backfill must finish, not be cancelled at 30 s), and it tolerates migrations it does
//! not know: an older release's Job, run by a rollback, applies nothing and succeeds.
//! Before this, every process migrated at start with sqlx's defaults, and with one later
//! migration in the database `api migrate` and `outbox-relay` exited with "migration
//! 20270101000000 was previously applied but is missing in the resolved migrations": any
//! old pod that restarted during a rollout crash-looped, and a rollback could not start.
//!
//! The processes only [`require`] that every migration they were built with is applied
//! (a later one is fine), waiting for the Job while one is missing.

use std::time::Duration;

use anyhow::Context;
use backon::Retryable;
use sqlx::{Connection, PgConnection, migrate::Migrator, postgres::PgConnectOptions};

use crate::{error::chain, retry::Policy};

/// The migrations of `migrations/`, embedded at build time. `Migrator` takes an advisory
/// lock, so two Jobs cannot apply them at once.
pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Checksums a migration had before it was rewritten, before the first release: a
/// database that applied the old text is repaired to the new checksum instead of
/// refusing to start (sqlx refuses any changed checksum).
///
/// 20261130000003 backfilled `orders.saga_event_id` with one correlated subquery per
/// order, with no index to serve it, under the pool's 30 s `statement_timeout`: on a
/// database of real size it was cancelled and the Job failed all its retries. Its new
/// text does the same work set-based; a database that already ran the old text has the
/// same schema and data, so only its recorded checksum changes.
///
/// 20261203000001 gained its `lock_timeout` between two commits of main before 0.1.0.
const SUPERSEDED: &[(i64, &str)] = &[
    (
        20261130000003,
        "1801be88d9886e3753ccf82435a0f0abc79d583b7187c438d9e3bb11047bb09ad5d24a69849ee4d564f6e7839dfe4332",
    ),
    (
        20261203000001,
        "195ab75296f2a679cdc29ba7409a18a449705815312a55fec8ef7b9900796c264ece10102973dab210baca8ed209d1f9",
    ),
];

/// A migration as the database records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    pub version: i64,
    pub checksum: Vec<u8>,
    pub success: bool,
}

/// How the database's schema stands against the migrations this binary knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Every migration known is applied (later ones may be too).
    Ready,
    /// The first known migration not applied yet: run `api migrate`.
    Behind { version: i64, description: String },
    /// A known migration was applied with other contents, or failed half-way: a person
    /// must look.
    Diverged { version: i64, why: &'static str },
}

/// Compares what the database applied with what this binary knows.
pub(crate) fn standing(known: &Migrator, applied: &[Applied]) -> Standing {
    for migration in known.iter().filter(|m| !m.migration_type.is_down_migration()) {
        let Some(record) = applied.iter().find(|a| a.version == migration.version) else {
            return Standing::Behind { version: migration.version, description: migration.description.to_string() };
        };
        if !record.success {
            return Standing::Diverged { version: migration.version, why: "it failed half-way" };
        }
        let superseded =
            SUPERSEDED.iter().any(|(version, old)| *version == migration.version && hex(&record.checksum) == *old);
        if record.checksum != *migration.checksum && !superseded {
            return Standing::Diverged { version: migration.version, why: "it was applied with other contents" };
        }
    }
    Standing::Ready
}

/// SQLSTATE `undefined_table`.
const UNDEFINED_TABLE: &str = "42P01";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Applies the pending migrations (`api migrate`), waiting for a server that is still
/// starting. See the module's doc.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let options: PgConnectOptions = database_url.parse().context("DATABASE_URL")?;
    let options = options
        .application_name("order-service-migrate")
        // A backfill runs as long as it takes; a lock it waits for is the rollout's
        // business (the Job's own deadline), not a cancel at 30 s.
        .options([("statement_timeout", "0")]);
    let connect = || async { PgConnection::connect_with(&options).await };
    let mut connection = connect
        .retry(Policy::STARTUP.builder())
        .sleep(tokio::time::sleep)
        .when(crate::error::is_unavailable)
        .notify(|e, delay| {
            tracing::warn!(error.cause = %chain(e), retry_in_ms = delay.as_millis() as u64, "database not ready, retrying");
        })
        .await
        .context("connecting to apply the migrations")?;
    repair_superseded(&mut connection).await.context("repairing the checksum of a rewritten migration")?;
    // The same migrations as `MIGRATOR`, tolerating later ones.
    let mut migrator = sqlx::migrate!("../migrations");
    migrator.set_ignore_missing(true);
    let started = std::time::Instant::now();
    migrator.run(&mut connection).await.context("applying migrations")?;
    tracing::info!(took_ms = started.elapsed().as_millis() as u64, "migrations applied");
    let _ = connection.close().await;
    Ok(())
}

async fn repair_superseded(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    for (version, old) in SUPERSEDED {
        let Some(current) = MIGRATOR.iter().find(|m| m.version == *version) else { continue };
        // Not `query!`, as in `applied`. A database never migrated has no table yet.
        let repaired = sqlx::query(
            "UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2 AND encode(checksum, 'hex') = $3",
        )
        .bind(&*current.checksum)
        .bind(version)
        .bind(old)
        .execute(&mut *connection)
        .await;
        let repaired = match repaired {
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_TABLE) => return Ok(()),
            other => other?,
        };
        if repaired.rows_affected() > 0 {
            tracing::warn!(
                version,
                "the recorded checksum of a rewritten migration updated (its effects are the same)"
            );
        }
    }
    Ok(())
}

/// Waits until the database holds every migration this binary was built with (run
/// `api migrate`, the Job); an error if one was applied with other contents.
pub async fn require(db: &sqlx::PgPool) -> anyhow::Result<()> {
    let mut backoff = Policy::STARTUP.backoff();
    loop {
        let standing = applied(db).await.map(|applied| standing(&MIGRATOR, &applied));
        match standing {
            Ok(Standing::Ready) => return Ok(()),
            Ok(Standing::Diverged { version, why }) => {
                anyhow::bail!("migration {version} in the database does not match this release's: {why}")
            }
            Ok(Standing::Behind { version, description }) => {
                let delay = backoff.next_delay();
                tracing::warn!(version, %description, retry_in_ms = delay.as_millis() as u64,
                    "the database lacks a migration this release needs: waiting for `api migrate` (the migrate Job)");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error.cause = %chain(&e), retry_in_ms = delay.as_millis() as u64,
                    "cannot read the applied migrations yet, retrying");
                tokio::time::sleep(delay.min(Duration::from_secs(10))).await;
            }
        }
    }
}

/// The migrations the database recorded; none before the first `api migrate`.
async fn applied(db: &sqlx::PgPool) -> Result<Vec<Applied>, sqlx::Error> {
    // Not `query!`: sqlx creates this table, not `migrations/`, and the offline data is
    // prepared from `migrations/` alone.
    let rows: Result<Vec<(i64, Vec<u8>, bool)>, sqlx::Error> =
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations").fetch_all(db).await;
    match rows {
        Ok(rows) => {
            Ok(rows.into_iter().map(|(version, checksum, success)| Applied { version, checksum, success }).collect())
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_TABLE) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_applied() -> Vec<Applied> {
        MIGRATOR.iter().map(|m| Applied { version: m.version, checksum: m.checksum.to_vec(), success: true }).collect()
    }

    #[test]
    fn a_later_release_s_migration_is_no_reason_to_stop() {
        let mut applied = all_applied();
        applied.push(Applied { version: 20991231000000, checksum: vec![1], success: true });
        assert_eq!(standing(&MIGRATOR, &applied), Standing::Ready);
    }

    #[test]
    fn a_missing_migration_is_named() {
        let mut applied = all_applied();
        let last = applied.pop().unwrap();
        assert!(matches!(standing(&MIGRATOR, &applied), Standing::Behind { version, .. } if version == last.version));
        assert!(matches!(standing(&MIGRATOR, &[]), Standing::Behind { .. }));
    }

    #[test]
    fn changed_contents_are_refused_unless_superseded_before_the_first_release() {
        let mut applied = all_applied();
        applied[0].checksum = vec![0; 48];
        assert!(matches!(standing(&MIGRATOR, &applied), Standing::Diverged { .. }));
        let mut applied = all_applied();
        let rewritten = applied.iter_mut().find(|a| a.version == SUPERSEDED[0].0).unwrap();
        rewritten.checksum = (0..SUPERSEDED[0].1.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&SUPERSEDED[0].1[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(standing(&MIGRATOR, &applied), Standing::Ready);
    }

    #[test]
    fn a_migration_that_failed_half_way_is_refused() {
        let mut applied = all_applied();
        applied[1].success = false;
        assert!(matches!(standing(&MIGRATOR, &applied), Standing::Diverged { why: "it failed half-way", .. }));
    }
}
