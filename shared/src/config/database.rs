//! PostgreSQL, read alike by every binary:
//! - `DATABASE_URL`;
//! - `DB_MAX_CONNECTIONS`: the pool's size; its default is each binary's own (the api
//!   serves many requests at once; the relay and the worker hold a connection per lane
//!   or reply), and each binary checks it against what it needs;
//! - `DB_ACQUIRE_TIMEOUT`, `DB_DEADLINE`, `DB_PING_TIMEOUT`: the bounds of every wait on
//!   it ([`db::Limits`], whose defaults they are).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{ConfigError, Redacted, Vars, at_least, at_least_one, parse_var_with, read};
use crate::db::{self, Db};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/orders";

/// The shortest bound of a wait on PostgreSQL: less would fail healthy work under load.
const MIN_BOUND: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: Redacted<String>,
    pub max_connections: u32,
    pub limits: db::Limits,
}

/// The variables as serde reads them: the pool's size and the bounds are optional, their
/// defaults are the binary's and [`db::Limits`]'s.
#[derive(Deserialize)]
#[serde(default)]
struct DatabaseVars {
    database_url: Redacted<String>,
    db_max_connections: Option<u32>,
    #[serde(deserialize_with = "acquire_timeout")]
    db_acquire_timeout: Option<Duration>,
    #[serde(deserialize_with = "deadline")]
    db_deadline: Option<Duration>,
    #[serde(deserialize_with = "ping_timeout")]
    db_ping_timeout: Option<Duration>,
}

impl Default for DatabaseVars {
    fn default() -> Self {
        DatabaseVars {
            database_url: Redacted(DEFAULT_URL.into()),
            db_max_connections: None,
            db_acquire_timeout: None,
            db_deadline: None,
            db_ping_timeout: None,
        }
    }
}

impl DatabaseConfig {
    pub(super) fn from_parts(vars: &Vars, default_max_connections: u32) -> Result<Self, ConfigError> {
        let read: DatabaseVars = read(vars)?;
        let max_connections = read.db_max_connections.unwrap_or(default_max_connections);
        at_least_one("DB_MAX_CONNECTIONS", max_connections.into())?;
        let defaults = db::Limits::default();
        let limits = db::Limits {
            acquire: read.db_acquire_timeout.unwrap_or(defaults.acquire),
            deadline: read.db_deadline.unwrap_or(defaults.deadline),
            ping: read.db_ping_timeout.unwrap_or(defaults.ping),
        };
        Ok(DatabaseConfig { url: read.database_url, max_connections, limits })
    }

    pub(super) fn variables() -> Vec<String> {
        super::variables_of::<DatabaseVars>()
    }

    /// The pool of a serving process, with `settings` for its sessions, once the database
    /// holds the migrations this release needs. Only `api migrate` migrates (the Job,
    /// Compose's `migrate` service); this waits for it and tolerates later migrations
    /// (db/schema.rs).
    pub async fn prepare(&self, settings: &[(&str, &str)]) -> anyhow::Result<Db> {
        let db = self.pool(settings)?;
        db::require(&db).await?;
        Ok(db)
    }

    /// The pool alone, connected lazily: for the operator's commands, which read what
    /// is there.
    pub fn pool(&self, settings: &[(&str, &str)]) -> Result<Db, sqlx::Error> {
        db::connect(&self.url, self.max_connections, settings, self.limits)
    }

    /// `api migrate`: creates the database if missing and applies the migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        db::create_database_if_missing(&self.url).await?;
        db::migrate(&self.url).await
    }
}

fn acquire_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    bound(d, "DB_ACQUIRE_TIMEOUT", "3s")
}

fn deadline<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    bound(d, "DB_DEADLINE", "5s")
}

fn ping_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    bound(d, "DB_PING_TIMEOUT", "1s")
}

fn bound<'de, D: Deserializer<'de>>(d: D, var: &str, example: &str) -> Result<Option<Duration>, D::Error> {
    let expected = format!("a duration of at least {} such as {example}", humantime::format_duration(MIN_BOUND));
    parse_var_with(d, var, &expected, |text| at_least(text, MIN_BOUND)).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiConfig, FromEnv, WorkerConfig, vars};

    #[test]
    fn defaults_work_against_the_local_server() {
        let config = ApiConfig::from_vars(vars(&[])).unwrap();
        assert_eq!(config.database.url.as_str(), "postgres://postgres@127.0.0.1:5432/orders");
        assert_eq!(config.database.max_connections, 16);
        assert_eq!(config.database.limits, db::Limits::default());
        let config = ApiConfig::from_vars(vars(&[("DB_MAX_CONNECTIONS", "4")])).unwrap();
        assert_eq!(config.database.max_connections, 4);
    }

    #[test]
    fn every_wait_on_postgresql_has_a_bound_with_a_default() {
        let config = WorkerConfig::from_vars(vars(&[
            ("DB_ACQUIRE_TIMEOUT", "2s"),
            ("DB_DEADLINE", "8s"),
            ("DB_PING_TIMEOUT", "300ms"),
        ]))
        .unwrap();
        let limits = config.database.limits;
        assert_eq!(
            (limits.acquire, limits.deadline, limits.ping),
            (Duration::from_secs(2), Duration::from_secs(8), Duration::from_millis(300))
        );
        for var in ["DB_ACQUIRE_TIMEOUT", "DB_DEADLINE", "DB_PING_TIMEOUT"] {
            let error = ApiConfig::from_vars(vars(&[(var, "1ms")])).unwrap_err().to_string();
            assert!(error.contains(var), "{error}");
            assert!(ApiConfig::variables().contains(&var.to_owned()), "{var}");
        }
        for value in ["many", "0"] {
            let error = ApiConfig::from_vars(vars(&[("DB_MAX_CONNECTIONS", value)])).unwrap_err().to_string();
            assert!(error.contains("DB_MAX_CONNECTIONS"), "{error}");
        }
    }
}
