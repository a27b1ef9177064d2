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
pub mod catalog_rebuilds;
pub mod exports;
pub mod hosts;
pub mod images;
pub mod instances;
pub mod jobs;
pub mod keys;
pub mod leases;
pub mod policies;
pub mod quotas;
pub mod replicas;
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

pub use crate::config::urls::{Backend, DatabaseUrl};
use crate::config::DatabaseOptions;

const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// One connection to either backend; queries are written once against it.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Mysql(MysqlConnection),
    Sqlite(SqliteConnection),
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

/// An insert that may lose a race to an equal key: true if it inserted,
/// false if the row was there already.
pub fn inserted_once(inserted: diesel::QueryResult<usize>) -> DbResult<bool> {
    match inserted.map_err(DbError::from) {
        Ok(_) => Ok(true),
        Err(e) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e),
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
        let url = DatabaseUrl::parse(&opts.connection).map_err(|e| DbError::Url(e.0))?;
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

    /// [`Db::run`] for a closure with its own error type (a use case that
    /// decides inside the transaction).
    pub async fn run_as<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(DbError::from)?;
            f(&mut conn)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// One round trip to the catalog's tables (health checks): a pooled
    /// connection to a database that was dropped still answers `SELECT 1`.
    /// It waits at most a second for a pooled connection: a busy pool is
    /// an answer, and health checks must not queue behind real work.
    pub async fn ping(&self) -> DbResult<()> {
        use diesel::RunQueryDsl;
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get_timeout(std::time::Duration::from_secs(1))?;
            diesel::sql_query("SELECT COUNT(*) FROM __diesel_schema_migrations")
                .execute(&mut *conn)?;
            Ok(())
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

    /// Revert the latest migration applied (`ekko-manage db revert`, and
    /// the tests of a migration on rows written before it); returns its
    /// version.
    pub fn revert_last(&self) -> DbResult<String> {
        let mut conn = self.conn()?;
        let version = match &mut *conn {
            DbConnection::Mysql(c) => c.revert_last_migration(MYSQL_MIGRATIONS),
            DbConnection::Sqlite(c) => c.revert_last_migration(SQLITE_MIGRATIONS),
        }
        .map_err(|e| DbError::Migration(e.to_string()))?;
        Ok(version.to_string())
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
