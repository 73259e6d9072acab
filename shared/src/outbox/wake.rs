//! Waking the relays after a commit, outside the business transaction.
//!
//! The relays `LISTEN outbox`. A NOTIFY sent inside a business transaction (the
//! `outbox_notify` trigger this replaces) makes that transaction's commit take
//! PostgreSQL's one notify lock and hold it through its WAL flush, so every transaction
//! that wrote the outbox committed one at a time and group commit was lost: with
//! bench/pgbench_order.sql at 64 clients, 1,646 and 1,670 tps without the trigger
//! against 1,061 and 1,103 with it (−35%; 1,932 against 1,481 at 16). Here the process
//! that committed asks for a wake-up afterwards; one task per process sends it as a
//! statement of its own, which writes no WAL, and every wake-up asked for while one is
//! on its way becomes one more NOTIFY, not one each.

use crate::db::Db;
use tokio::sync::mpsc;

use super::relay::CHANNEL;

/// Wakes the outbox relays; cheap to clone. Its task ends with the last clone.
#[derive(Debug, Clone)]
pub struct RelayWaker {
    asked: mpsc::Sender<()>,
}

impl RelayWaker {
    /// Starts the task that sends the NOTIFYs, on `db`.
    pub fn start(db: Db) -> Self {
        // One slot: a wake-up asked for while one is being sent waits there, and the
        // ones after it find the slot taken and are already served by it.
        let (asked, wakes) = mpsc::channel(1);
        tokio::spawn(send_wakes(db, wakes));
        RelayWaker { asked }
    }

    /// After a commit that wrote outbox rows: the relays are woken soon, never waited
    /// for. A lost wake-up costs at most one tick of the relays' schedule.
    pub fn wake(&self) {
        let _ = self.asked.try_send(());
    }
}

async fn send_wakes(db: Db, mut wakes: mpsc::Receiver<()>) {
    while wakes.recv().await.is_some() {
        if let Err(e) = db.run(|c| Box::pin(sqlx::query!("SELECT pg_notify($1, '')", CHANNEL).execute(c))).await {
            tracing::warn!(error.cause = %e, "cannot wake the outbox relays; their schedule will find the rows");
        }
    }
}
