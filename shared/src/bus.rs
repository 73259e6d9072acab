//! The command bus (the Rust shape of the original's Mediator).
//!
//! A command is a plain struct that changes state; its one [`Command::execute`] impl
//! runs inside the transaction [`dispatch`] opens and commits. Static dispatch only:
//! "go to definition" on `execute` lands on the handler. Queries are plain structs
//! with a `fetch` method and need no bus: they change nothing.

use std::future::Future;

use tracing::Instrument;

use crate::telemetry::names;
use crate::{
    db::{Db, Tx},
    error::AppError,
};

pub(crate) trait Command: Send + 'static {
    type Output: Send + 'static;

    /// Does the work inside the transaction. Returning an error rolls everything back.
    fn execute(self, tx: &mut Tx<'_>) -> impl Future<Output = Result<Self::Output, AppError>> + Send;
}

/// Runs a command in one transaction.
///
/// The transaction lives in its own task: poem drops a handler's future when the
/// client disconnects, and a `begin()` cancelled mid-flight can hand a connection back
/// to the pool inside an open transaction (sqlx #4385). A spawned task runs to commit
/// or rollback whatever the client does.
pub(crate) async fn dispatch<C: Command>(db: &Db, command: C) -> Result<C::Output, AppError> {
    dispatch_then(db, command, |_| std::future::ready(())).await
}

/// [`dispatch`], then `after_commit` with the output, in the same task: what must
/// follow a commit (a cache invalidation) runs even if the caller is dropped.
pub(crate) async fn dispatch_then<C, F, Fut>(db: &Db, command: C, after_commit: F) -> Result<C::Output, AppError>
where
    C: Command,
    F: FnOnce(&C::Output) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let db = db.clone();
    let task = async move {
        // From BEGIN to COMMIT within DB_DEADLINE. A deadline that passes after COMMIT
        // was sent leaves the outcome unknown: the client gets a 503 and retries with the
        // same ids, which answers 409 if the first commit had landed.
        let deadline = db.deadline_from_now();
        let mut lost = 0;
        loop {
            let mut lease = db.lease().await?;
            // BEGIN is the first statement, so nothing was done yet when its connection
            // turns out dead: another may take it (see `Db::read`).
            let tx = match db.by(deadline, lease.begin()).await {
                Ok(tx) => tx,
                Err(e) if db.worth_another_connection(&e, &mut lost, "begin") => continue,
                Err(e) => return Err(e.into()),
            };
            let done = db
                .by(deadline, async {
                    let mut tx = tx;
                    let output = command.execute(&mut tx).await?;
                    tx.commit().await?;
                    Ok(output)
                })
                .await;
            lease.settle_unless(done.as_ref().err().and_then(AppError::unavailable_cause));
            drop(lease);
            return match done {
                Ok(output) => {
                    after_commit(&output).await;
                    Ok(output)
                }
                Err(e) => {
                    // The connection died after the transaction did some work: not safe to
                    // run again, so the client gets a 503 (and may retry: commands are
                    // idempotent by their ids). Counted, so a 503 can be told from a bug.
                    if matches!(&e, AppError::Unavailable(e) if crate::error::is_lost_connection(e)) {
                        metrics::counter!(names::DB_REQUESTS_INTERRUPTED, "kind" => "transaction").increment(1);
                    }
                    Err(e)
                }
            };
        }
    };
    let command = std::any::type_name::<C>().rsplit("::").next().unwrap_or("command");
    tokio::spawn(crate::db::in_transaction_span(command, task).in_current_span())
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("command task failed: {e}")))?
}
