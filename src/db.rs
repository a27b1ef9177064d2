//! The catalog database: MariaDB/MySQL (Galera at scale) or SQLite (the
//! single-machine default) behind one diesel connection type.
//!
//! * The only module that holds SQL. One file per table family.
//! * diesel is synchronous: async callers go through [`Db::run`], which runs
//!   the closure on tokio's blocking pool with a pooled connection.
//! * Migrations live in `migrations/mysql` and `migrations/sqlite` (same
//!   version names) and are applied by `ekko-manage db sync`; services call
//!   [`Db::check_schema`] and refuse to start on an older schema.

/// Keyset pagination of a boxed query over `(created_at, id)`: the rows
/// after `$marker` (a `(created_at, id)` pair) in the chosen order, at most
/// `$limit`. Used by every list call of the API.
macro_rules! keyset_page {
    ($q:expr, $table:ident, $marker:expr, $ascending:expr, $limit:expr) => {{
        let mut q = $q;
        if let Some((at, id)) = $marker {
            q = if $ascending {
                q.filter(
                    $table::created_at
                        .gt(at)
                        .or($table::created_at.eq(at).and($table::id.gt(id))),
                )
            } else {
                q.filter(
                    $table::created_at
                        .lt(at)
                        .or($table::created_at.eq(at).and($table::id.lt(id))),
                )
            };
        }
        q = if $ascending {
            q.order(($table::created_at.asc(), $table::id.asc()))
        } else {
            q.order(($table::created_at.desc(), $table::id.desc()))
        };
        q.limit($limit)
    }};
}

pub mod backups;
pub mod hosts;
pub mod instances;
pub mod jobs;
pub mod keys;
pub mod policies;
pub mod quotas;
pub mod restores;
pub mod schema;
pub mod segments;

use std::fmt;
use std::time::Duration;

use chrono::{NaiveDateTime, Timelike, Utc};
use diesel::connection::SimpleConnection;
use diesel::mysql::MysqlConnection;
use diesel::r2d2::{self, ManageConnection, Pool, PooledConnection};
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::config::{redact_url, DatabaseOptions};

const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// One connection to either backend; queries are written once against it.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Mysql(MysqlConnection),
    Sqlite(SqliteConnection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Mysql,
    Sqlite,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database connection URL: {0}")]
    Url(String),
    #[error("cannot connect to database {url}: {message}")]
    Connect { url: String, message: String },
    #[error("database pool: {0}")]
    Pool(#[from] r2d2::PoolError),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error(
        "the database schema is older than this Ekko ({} migration(s) pending: {}); run `ekko-manage db sync`",
        .0.len(), .0.join(", ")
    )]
    SchemaOutdated(Vec<String>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A quota would be exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    #[error("database task failed: {0}")]
    Task(String),
    #[error("{0}")]
    Unavailable(String),
}

impl DbError {
    /// Unique-key violations, for find-or-create races.
    pub fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            DbError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            ))
        )
    }
}

pub type DbResult<T> = Result<T, DbError>;

/// A parsed `[database] connection` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    pub backend: Backend,
    /// What diesel's `establish` takes: a `mysql://` URL or a file path.
    pub target: String,
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl DatabaseUrl {
    /// Accepts the SQLAlchemy forms OpenStack deployments use:
    /// `mysql+pymysql://u:p@host[:port]/db?charset=utf8`, `mysql://…`,
    /// `sqlite:////absolute/path` and `sqlite:///relative/path`.
    pub fn parse(raw: &str) -> Result<DatabaseUrl, DbError> {
        let (scheme, rest) = raw.split_once("://").ok_or_else(|| {
            DbError::Url(format!(
                "{raw:?} has no scheme; expected mysql+pymysql://… or sqlite:///…"
            ))
        })?;
        let dialect = scheme.split('+').next().unwrap_or(scheme);
        match dialect {
            "mysql" | "mariadb" => {
                let mut url = url::Url::parse(&format!("mysql://{rest}"))
                    .map_err(|e| DbError::Url(format!("{}: {e}", redact_url(raw))))?;
                if url.host_str().unwrap_or("").is_empty() {
                    return Err(DbError::Url(format!("{}: no host", redact_url(raw))));
                }
                if url.path().trim_matches('/').is_empty() {
                    return Err(DbError::Url(format!("{}: no database name", redact_url(raw))));
                }
                // Keep only the query parameters diesel's MySQL driver knows;
                // drop SQLAlchemy ones such as charset=utf8.
                let keep: Vec<(String, String)> = url
                    .query_pairs()
                    .filter(|(k, _)| matches!(k.as_ref(), "unix_socket" | "ssl_mode" | "ssl_ca"))
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                url.set_query(None);
                if !keep.is_empty() {
                    url.query_pairs_mut().extend_pairs(keep);
                }
                Ok(DatabaseUrl {
                    backend: Backend::Mysql,
                    target: url.to_string(),
                })
            }
            "sqlite" => {
                // sqlite:///relative or sqlite:////absolute (SQLAlchemy).
                let path = rest
                    .strip_prefix('/')
                    .ok_or_else(|| DbError::Url(format!("{raw:?}: expected sqlite:///path")))?;
                if path.is_empty() {
                    return Err(DbError::Url(
                        "in-memory SQLite (sqlite://) is not supported; give a file path".into(),
                    ));
                }
                Ok(DatabaseUrl {
                    backend: Backend::Sqlite,
                    target: path.to_string(),
                })
            }
            other => Err(DbError::Url(format!(
                "unsupported database {other:?}: expected mysql+pymysql://…, mysql://… or sqlite:///…"
            ))),
        }
    }

    /// The URL with any password hidden, for logs and errors.
    pub fn redacted(&self) -> String {
        redact_url(&self.target)
    }
}

/// r2d2 manager that opens the right backend and prepares each connection.
#[derive(Debug, Clone)]
pub struct ConnectionManager {
    url: DatabaseUrl,
}

impl ManageConnection for ConnectionManager {
    type Connection = DbConnection;
    type Error = diesel::ConnectionError;

    fn connect(&self) -> Result<DbConnection, Self::Error> {
        match self.url.backend {
            Backend::Mysql => Ok(DbConnection::Mysql(MysqlConnection::establish(
                &self.url.target,
            )?)),
            Backend::Sqlite => {
                let mut conn = SqliteConnection::establish(&self.url.target)?;
                // Per connection: referential integrity, concurrent readers
                // with one writer, and waiting instead of failing on a lock.
                conn.batch_execute(
                    "PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 30000;",
                )
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), Self::Error> {
        conn.batch_execute("SELECT 1")
            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)
    }

    fn has_broken(&self, _conn: &mut DbConnection) -> bool {
        false
    }
}

/// The connection pool; cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool<ConnectionManager>,
    pub url: DatabaseUrl,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db").field("url", &self.url).finish()
    }
}

impl Db {
    /// Open a pool, retrying the first connection as `[database]` says.
    pub fn open(opts: &DatabaseOptions) -> DbResult<Db> {
        let url = DatabaseUrl::parse(&opts.connection)?;
        if url.backend == Backend::Sqlite {
            if let Some(dir) = std::path::Path::new(&url.target).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| DbError::Connect {
                        url: url.redacted(),
                        message: format!("cannot create {}: {e}", dir.display()),
                    })?;
                }
            }
        }
        let manager = ConnectionManager { url: url.clone() };
        let mut attempt: i64 = 0;
        loop {
            // Probe first so the error says why, not just "timed out".
            match manager.connect() {
                Ok(_) => break,
                Err(e) => {
                    attempt += 1;
                    if opts.max_retries >= 0 && attempt > opts.max_retries {
                        return Err(DbError::Connect {
                            url: url.redacted(),
                            message: e.to_string(),
                        });
                    }
                    tracing::warn!(url = %url.redacted(), attempt, error = %e, "database not reachable, retrying");
                    std::thread::sleep(Duration::from_secs(opts.retry_interval));
                }
            }
        }
        let max_size = match url.backend {
            Backend::Mysql => opts.max_pool_size.max(1),
            // SQLite has one writer; a small pool avoids lock convoys.
            Backend::Sqlite => opts.max_pool_size.clamp(1, 4),
        };
        let pool = Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(opts.pool_timeout.max(1)))
            .test_on_check_out(true)
            .build(manager)
            .map_err(|e| DbError::Connect {
                url: url.redacted(),
                message: e.to_string(),
            })?;
        Ok(Db { pool, url })
    }

    pub fn backend(&self) -> Backend {
        self.url.backend
    }

    pub fn conn(&self) -> DbResult<PooledConnection<ConnectionManager>> {
        Ok(self.pool.get()?)
    }

    /// Run blocking database work from async code.
    pub async fn run<T, F>(&self, f: F) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> DbResult<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            f(&mut conn)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Apply pending migrations; returns the versions applied.
    pub fn sync(&self) -> DbResult<Vec<String>> {
        let mut conn = self.conn()?;
        let applied = match &mut *conn {
            DbConnection::Mysql(c) => c.run_pending_migrations(MYSQL_MIGRATIONS),
            DbConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS),
        }
        .map_err(|e| DbError::Migration(e.to_string()))?;
        Ok(applied.iter().map(|v| v.to_string()).collect())
    }

    /// Migrations the code has and the database has not applied.
    pub fn pending_migrations(&self) -> DbResult<Vec<String>> {
        let mut conn = self.conn()?;
        let names = match &mut *conn {
            DbConnection::Mysql(c) => c
                .pending_migrations(MYSQL_MIGRATIONS)
                .map(|p| p.iter().map(|m| m.name().to_string()).collect()),
            DbConnection::Sqlite(c) => c
                .pending_migrations(SQLITE_MIGRATIONS)
                .map(|p| p.iter().map(|m| m.name().to_string()).collect()),
        };
        names.map_err(|e| DbError::Migration(e.to_string()))
    }

    /// Refuse to run on a schema older than the code.
    pub fn check_schema(&self) -> DbResult<()> {
        let pending = self.pending_migrations()?;
        if pending.is_empty() {
            Ok(())
        } else {
            Err(DbError::SchemaOutdated(pending))
        }
    }
}

/// Current UTC time at the microsecond precision both backends store.
pub fn now() -> NaiveDateTime {
    let t = Utc::now().naive_utc();
    t.with_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t)
}

/// Map "no row" to a named not-found error.
pub(crate) trait OptionalRow<T> {
    fn found(self, what: impl FnOnce() -> String) -> DbResult<T>;
}

impl<T> OptionalRow<T> for Result<T, diesel::result::Error> {
    fn found(self, what: impl FnOnce() -> String) -> DbResult<T> {
        match self {
            Ok(v) => Ok(v),
            Err(diesel::result::Error::NotFound) => Err(DbError::NotFound(what())),
            Err(e) => Err(DbError::Query(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_openstack_forms() {
        let u = DatabaseUrl::parse("mysql+pymysql://ekko:s3cret@db.example:3306/ekko?charset=utf8")
            .unwrap();
        assert_eq!(u.backend, Backend::Mysql);
        assert_eq!(u.target, "mysql://ekko:s3cret@db.example:3306/ekko");
        assert!(!format!("{u:?}").contains("s3cret"));
        let u =
            DatabaseUrl::parse("mysql://ekko@127.0.0.1/ekko?unix_socket=/run/mysqld/mysqld.sock")
                .unwrap();
        assert!(u.target.contains("unix_socket="));
        let u = DatabaseUrl::parse("sqlite:////var/lib/ekko/ekko.sqlite").unwrap();
        assert_eq!(
            (u.backend, u.target.as_str()),
            (Backend::Sqlite, "/var/lib/ekko/ekko.sqlite")
        );
        let u = DatabaseUrl::parse("sqlite:///ekko.sqlite").unwrap();
        assert_eq!(u.target, "ekko.sqlite");
        for bad in [
            "postgresql://x/y",
            "sqlite://",
            "mysql://host",
            "nonsense",
            "mysql:///db",
        ] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
