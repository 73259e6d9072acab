//! The replies a worker holds: delivered by the broker, not yet settled. RabbitMQ counts
//! them as unacked, which the saga timeout's depth read (ready messages only) cannot see;
//! an approval waiting in a worker's prefetch buffer, or held through a database outage,
//! looked like no answer, and the timeout canceled an order the customer service had
//! approved (`an_approval_a_worker_holds_unacked_keeps_its_order_from_the_timeout`).
//!
//! So each worker holds, on one PostgreSQL session of its own, a shared advisory lock per
//! order whose reply it holds; the sweep skips orders whose lock any session holds
//! (`pg_locks`). Taking it costs no WAL and no table: a batch of locks or unlocks is one
//! statement, issued whenever the set changed. The session ending (a crash, a lost
//! connection) releases its locks, which is right for a crash (the broker hands the
//! replies to another worker, which locks them) and repaired for a lost connection: the
//! keeper connects again and takes every lock its worker still needs.
//!
//! What it does not cover: the moment between the broker's delivery and the lock (one
//! round trip), and a worker whose session to PostgreSQL is lost for good while it still
//! holds replies (the sweep of another worker can then cancel one of those orders; its
//! approval is recorded as stale).

use std::{collections::HashMap, time::Duration};

use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{db::Db, error::chain};

/// The advisory lock's first key, "SAGA": it keeps these locks apart from any other
/// advisory lock on the database (sqlx's migrator takes one of the one-key form).
pub const NAMESPACE: i32 = 0x5341_4741;

/// The lock's second key for `order`: the first four bytes of its id. Two orders sharing
/// them (one pair in 4 billion) only postpone each other's timeout while one is held.
/// The sweep computes the same in SQL: `('x' || left(id::text, 8))::bit(32)`.
pub fn key(order: Uuid) -> i32 {
    let bytes = order.as_bytes();
    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The handle a worker holds replies through; cheap to clone.
#[derive(Clone)]
pub struct RepliesInHand {
    changes: mpsc::UnboundedSender<Change>,
}

/// One reply held: dropping it (the reply settled, or handed back) releases its lock.
pub struct Holding {
    key: i32,
    changes: mpsc::UnboundedSender<Change>,
}

impl Drop for Holding {
    fn drop(&mut self) {
        let _ = self.changes.send(Change::Release(self.key));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Hold(i32),
    Release(i32),
}

impl RepliesInHand {
    /// Starts the keeper task; it ends once every handle and holding is dropped.
    pub fn start(db: Db) -> Self {
        let (changes, received) = mpsc::unbounded_channel();
        tokio::spawn(keep(db, received));
        RepliesInHand { changes }
    }

    /// Records that this worker holds a reply of `order` until the holding is dropped.
    pub fn hold(&self, order: Uuid) -> Holding {
        let key = key(order);
        let _ = self.changes.send(Change::Hold(key));
        Holding { key, changes: self.changes.clone() }
    }
}

/// The keys held, counted (two replies of one order are two holdings of one lock), and
/// which of them the session holds.
#[derive(Debug, Default)]
struct Ledger {
    wanted: HashMap<i32, usize>,
    locked: std::collections::HashSet<i32>,
}

impl Ledger {
    fn record(&mut self, change: Change) {
        match change {
            Change::Hold(key) => *self.wanted.entry(key).or_default() += 1,
            Change::Release(key) => {
                if let Some(count) = self.wanted.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        self.wanted.remove(&key);
                    }
                }
            }
        }
    }

    /// Keys to lock and to unlock for the session to match what is held.
    fn diff(&self) -> (Vec<i32>, Vec<i32>) {
        let lock = self.wanted.keys().filter(|key| !self.locked.contains(key)).copied().collect();
        let unlock = self.locked.iter().filter(|key| !self.wanted.contains_key(key)).copied().collect();
        (lock, unlock)
    }

    fn in_sync(&self) -> bool {
        self.wanted.len() == self.locked.len() && self.wanted.keys().all(|key| self.locked.contains(key))
    }
}

/// How long the keeper waits before trying a lost session again, and how often it checks
/// a session that holds locks is still there (its end released them).
const RETRY: Duration = Duration::from_secs(1);
const CHECK_EVERY: Duration = Duration::from_secs(5);

async fn keep(db: Db, mut changes: mpsc::UnboundedReceiver<Change>) {
    let mut ledger = Ledger::default();
    let mut session: Option<PgConnection> = None;
    // Said once per outage, not at every retry.
    let mut failing = false;
    loop {
        let wait = if ledger.in_sync() { CHECK_EVERY } else { RETRY };
        tokio::select! {
            change = changes.recv() => match change {
                Some(change) => ledger.record(change),
                None => break,
            },
            () = tokio::time::sleep(wait) => {
                if ledger.locked.is_empty() && ledger.wanted.is_empty() {
                    continue;
                }
            }
        }
        while let Ok(change) = changes.try_recv() {
            ledger.record(change);
        }
        match sync(&db, &mut session, &mut ledger).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(held = ledger.locked.len(), "saga replies in hand recorded again");
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(error.cause = %chain(&e), "cannot record the saga replies in hand; retrying every second");
                }
                failing = true;
                session = None;
                ledger.locked.clear();
            }
        }
    }
    if let Some(session) = session {
        let _ = session.close().await;
    }
}

/// Brings the session's locks to what the ledger wants, or checks it is alive; each step
/// within the database deadline (a silent session must not hold the keeper).
async fn sync(db: &Db, session: &mut Option<PgConnection>, ledger: &mut Ledger) -> Result<(), sqlx::Error> {
    let connection = match session {
        Some(connection) => connection,
        None => {
            let options = db.connect_options();
            session.insert(db.within(async { PgConnection::connect_with(&options).await }).await?)
        }
    };
    let (lock, unlock) = ledger.diff();
    if lock.is_empty() && unlock.is_empty() {
        db.within(connection.ping()).await?;
        return Ok(());
    }
    if !unlock.is_empty() {
        db.within(
            sqlx::query!(
                "SELECT count(pg_advisory_unlock_shared($1, key)) FROM unnest($2::int4[]) AS key",
                NAMESPACE,
                &unlock
            )
            .fetch_one(&mut *connection),
        )
        .await?;
        for key in &unlock {
            ledger.locked.remove(key);
        }
    }
    if !lock.is_empty() {
        // Never waits: only shared locks are taken on this namespace (the sweep reads
        // `pg_locks`).
        db.within(
            sqlx::query!(
                "SELECT count(pg_advisory_lock_shared($1, key)) FROM unnest($2::int4[]) AS key",
                NAMESPACE,
                &lock
            )
            .fetch_one(&mut *connection),
        )
        .await?;
        ledger.locked.extend(lock);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_held_while_any_of_its_replies_is() {
        let mut ledger = Ledger::default();
        ledger.record(Change::Hold(7));
        ledger.record(Change::Hold(7));
        assert_eq!(ledger.diff(), (vec![7], vec![]));
        ledger.locked.insert(7);
        ledger.record(Change::Release(7));
        assert!(ledger.in_sync());
        ledger.record(Change::Release(7));
        assert_eq!(ledger.diff(), (vec![], vec![7]));
    }

    #[test]
    fn a_release_of_what_is_not_held_changes_nothing() {
        let mut ledger = Ledger::default();
        ledger.record(Change::Release(3));
        assert!(ledger.in_sync());
        assert_eq!(ledger.diff(), (vec![], vec![]));
    }

    #[test]
    fn the_key_is_the_ids_first_four_bytes_as_the_sweep_reads_them() {
        let order: Uuid = "ff000001-0000-4000-8000-000000000000".parse().unwrap();
        assert_eq!(key(order), i32::from_be_bytes([0xff, 0, 0, 1]));
        // As `pg_locks.objid` shows it, and `('x' || 'ff000001')::bit(32)::bigint` reads it.
        assert_eq!(u32::from_ne_bytes(key(order).to_ne_bytes()), 0xff00_0001);
    }
}
