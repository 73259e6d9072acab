//! The command bus (the Rust shape of the original's Mediator).
//!
//! A command is a plain struct that changes state; its one [`Command::execute`] impl
//! runs inside the transaction [`dispatch`] opens and commits. Static dispatch only:
//! "go to definition" on `execute` lands on the handler. Queries are plain structs
//! with a `fetch` method and need no bus: they change nothing.

use crate::telemetry::names;
use std::future::Future;

use sqlx::PgPool;
use tracing::Instrument;

use crate::{db::Tx, error::AppError};

pub(crate) trait Command: Send + 'static {
    type Output: Send + 'static;

    /// Does the work inside the transaction. Returning an error rolls everything back.
    fn execute(self, tx: &mut Tx) -> impl Future<Output = Result<Self::Output, AppError>> + Send;
}

/// Runs a command in one transaction.
///
/// The transaction lives in its own task: poem drops a handler's future when the
/// client disconnects, and a `begin()` cancelled mid-flight can hand a connection back
/// to the pool inside an open transaction (sqlx #4385). A spawned task runs to commit
/// or rollback whatever the client does.
pub(crate) async fn dispatch<C: Command>(db: &PgPool, command: C) -> Result<C::Output, AppError> {
    dispatch_then(db, command, |_| std::future::ready(())).await
}

/// [`dispatch`], then `after_commit` with the output, in the same task: what must
/// follow a commit (a cache invalidation) runs even if the caller is dropped.
pub(crate) async fn dispatch_then<C, F, Fut>(db: &PgPool, command: C, after_commit: F) -> Result<C::Output, AppError>
where
    C: Command,
    F: FnOnce(&C::Output) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let db = db.clone();
    let task = async move {
        let mut tx = crate::db::begin(&db).await?;
        let done = async {
            let output = command.execute(&mut tx).await?;
            tx.commit().await?;
            Ok(output)
        };
        match done.await {
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
        }
    };
    let command = std::any::type_name::<C>().rsplit("::").next().unwrap_or("command");
    tokio::spawn(crate::db::in_transaction_span(command, task).in_current_span())
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("command task failed: {e}")))?
}
