//! The errors a command or query can end in. `http::errors` turns them into responses,
//! in one place.

use std::fmt::Write;

/// The error of every command and query.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A value broke a rule: 400, naming the field.
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    /// A referenced id or name does not exist: 404.
    #[error("{message}")]
    NotFound { message: &'static str, subject: String },
    /// The caller may not do this (a scope it lacks, another user it cannot act for): 403.
    #[error("{message}")]
    Forbidden { message: &'static str, subject: String },
    /// A duplicate id or unique name: 409.
    #[error("{message}")]
    Conflict { message: &'static str, subject: String },
    /// PostgreSQL cannot be reached, does not answer in time, or answers "not now"
    /// (read-only, disk full, shutting down): 503 with `Retry-After`.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else: 500, with the cause in the log only.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    /// The database error behind a 503, if that is what this is.
    pub(crate) fn unavailable_cause(&self) -> Option<&sqlx::Error> {
        match self {
            AppError::Unavailable(e) => Some(e),
            _ => None,
        }
    }

    pub fn invalid(field: &'static str, rule: impl ToString) -> Self {
        AppError::Invalid { field, rule: rule.to_string() }
    }

    pub fn not_found(message: &'static str, subject: impl ToString) -> Self {
        AppError::NotFound { message, subject: subject.to_string() }
    }

    pub fn forbidden(message: &'static str, subject: impl ToString) -> Self {
        AppError::Forbidden { message, subject: subject.to_string() }
    }

    pub fn conflict(message: &'static str, subject: impl ToString) -> Self {
        AppError::Conflict { message, subject: subject.to_string() }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) { AppError::Unavailable(error) } else { AppError::Internal(error.into()) }
    }
}

/// Whether an error means "the database is not there right now" rather than "this
/// request is wrong": the former is worth a 503 and a retry.
pub(crate) fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exceptions; 53: insufficient resources (disk full, out of
            // memory, too many connections); 57P01..03: admin shutdown, crash shutdown,
            // cannot connect now; 25006: a read-only transaction (a standby, or a demoted
            // primary, behind the address).
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | READ_ONLY)
        }),
        _ => false,
    }
}

/// SQLSTATE `read_only_sql_transaction`.
const READ_ONLY: &str = "25006";

/// Whether a connection that failed with `error` must not go back to the pool: it died,
/// fell silent (a deadline, `db::lease`), or sits on a server that refuses writes, which
/// it would keep doing for every request it served (sqlx pools stuck for days on a
/// demoted primary this way: CRATES.md, round three).
pub(crate) fn must_discard(error: &sqlx::Error) -> bool {
    is_lost_connection(error)
        || matches!(error, sqlx::Error::Database(db) if db.code().is_some_and(|code| code == READ_ONLY))
}

/// The connection died under the statement: killed by an operator, a PostgreSQL restart
/// or a failover. Another connection may well succeed.
pub(crate) fn is_lost_connection(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|code| code.starts_with("08") || matches!(&*code, "57P01" | "57P02"))
        }
        _ => false,
    }
}

/// The name of the constraint a database error violated, if any.
pub(crate) fn violated_constraint(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

/// `error: cause: cause…`, the whole chain on one line for the log.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}
