//! Storage on SQLite (the embedded default) or PostgreSQL, through one set of portable
//! queries: `$n` placeholders, integer times and flags, text columns.

pub(crate) mod approvals;
pub(crate) mod client_keys;
pub(crate) mod clients;
pub(crate) mod console;
pub(crate) mod federation;
pub(crate) mod keys;
pub(crate) mod passkeys;
pub(crate) mod revocations;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

/// A database URL; its password never reaches Debug output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }
    /// The URL itself, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether it names PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }
    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match (self.0.find("://"), self.0.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                let userinfo = &self.0[scheme_end + 3..at];
                match userinfo.find(':') {
                    Some(colon) => format!("{}{}:***{}", &self.0[..scheme_end + 3], &userinfo[..colon], &self.0[at..]),
                    None => self.0.clone(),
                }
            }
            _ => self.0.clone(),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// A connection, pooled or inside a transaction, that the store's functions run on.
pub type Conn = sqlx::AnyConnection;
/// The SQLite connection the audit writer owns.
pub type EmbeddedConn = rusqlite::Connection;

/// A storage failure. Its Display never includes credentials.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the schema failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database URL or its folder is unusable.
    #[error("{0}")]
    Setup(String),
    /// A stored row could not be understood.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The audit writer's own SQLite connection failed.
    #[error("database error: {0}")]
    Embedded(#[from] rusqlite::Error),
}

impl StoreError {
    /// Whether this is a unique-constraint violation.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

/// Which database engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The connection pool and what it is connected to.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    sqlite: Option<SqliteFile>,
    committed: std::sync::Arc<std::sync::OnceLock<tokio::sync::broadcast::Sender<Committed>>>,
}

/// One audit record this process committed, as the server's notifications read it (design
/// §19: each webhook event follows the record of what happened, whichever path wrote it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The event's stored name.
    pub event: String,
    /// Who did it.
    pub actor: String,
    /// The tenant.
    pub tenant: String,
    /// What it happened to.
    pub subject: String,
    /// Its details, canonical JSON text.
    pub detail: String,
}

/// The SQLite database file behind the pool, for a connection of one's own outside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteFile {
    /// Its path.
    pub path: std::path::PathBuf,
    /// Whether commits skip the fsync (`synchronous=normal` in the URL).
    pub synchronous_normal: bool,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Creates the SQLite file (mode 0600) and its folder (mode 0700) when they do not exist, so
/// the database, and the `-wal` and `-shm` files SQLite gives the same mode, are never readable
/// by other users. An existing file readable by others is left as it is, with a warning.
fn create_private(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let setup =
        |what: &std::path::Path, e: std::io::Error| StoreError::Setup(format!("cannot create {}: {e}", what.display()));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(|e| setup(parent, e))?;
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "the database file is readable by other users; run chmod 600 on it and its -wal and -shm files"
                );
            }
        }
        Err(e) => return Err(setup(path, e)),
    }
    Ok(())
}

impl Store {
    /// Subscribes to the records this process commits from now on (through any clone of this
    /// store). A slow subscriber misses the oldest, and is told how many.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Committed> {
        self.committed.get_or_init(|| tokio::sync::broadcast::channel(1024).0).subscribe()
    }

    /// Tells the subscribers, if any, of committed records.
    pub(crate) fn publish(&self, records: impl IntoIterator<Item = Committed>) {
        if let Some(tx) = self.committed.get()
            && tx.receiver_count() > 0
        {
            for r in records {
                let _ = tx.send(r);
            }
        }
    }

    /// Connects, creating the SQLite file and its folder if needed. Does not migrate.
    pub async fn connect(url: &DatabaseUrl) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let raw = url.expose();
        // SQLite commits are fsynced (`synchronous = FULL`) unless the URL says
        // `synchronous=normal`: see docs/performance.md for what that trades.
        let mut synchronous = "PRAGMA synchronous = FULL";
        let mut sqlite = None;
        let (backend, conn_url) = if url.is_postgres() {
            (Backend::Postgres, raw.to_owned())
        } else if let Some(rest) = raw.strip_prefix("sqlite://").or_else(|| raw.strip_prefix("sqlite:")) {
            let (rest, sync) = take_query_param(rest, "synchronous");
            match sync.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("full") => {}
                Some("normal") => synchronous = "PRAGMA synchronous = NORMAL",
                Some(_) => return Err(StoreError::Setup("synchronous must be full or normal".into())),
            }
            let rest = rest.as_str();
            let path = rest.split('?').next().unwrap_or_default();
            if path.is_empty() || path == ":memory:" {
                return Err(StoreError::Setup(
                    "an in-memory SQLite database would give each pooled connection its own database; use a file"
                        .into(),
                ));
            }
            create_private(std::path::Path::new(path))?;
            sqlite = Some(SqliteFile {
                path: std::path::PathBuf::from(path),
                synchronous_normal: synchronous.ends_with("NORMAL"),
            });
            let sep = if rest.contains('?') { '&' } else { '?' };
            let with_mode = if rest.contains("mode=") {
                format!("sqlite://{rest}")
            } else {
                format!("sqlite://{rest}{sep}mode=rwc")
            };
            (Backend::Sqlite, with_mode)
        } else {
            return Err(StoreError::Setup(format!(
                "unsupported database URL {:?}: use sqlite://PATH or postgres://…",
                url.redacted()
            )));
        };
        let options = AnyConnectOptions::from_str(&conn_url)?;
        let pool_options = AnyPoolOptions::new()
            .acquire_timeout(Duration::from_secs(5))
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 });
        let pool = match backend {
            Backend::Sqlite => {
                pool_options
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            // The wait first: switching a new file to WAL takes a lock that
                            // another process opening it at the same moment may hold.
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute(synchronous).await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Backend::Postgres => pool_options.connect_with(options).await?,
        };
        Ok(Store { pool, backend, sqlite, committed: Default::default() })
    }

    /// Connects and applies the schema.
    pub async fn open(url: &DatabaseUrl) -> Result<Store, StoreError> {
        let store = Store::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations for this backend, under a lock held for the whole run, so
    /// that processes starting together (a replica and a CLI command, two replicas) apply each
    /// migration once: the others wait, then find nothing left to do. On SQLite the lock is
    /// an exclusive transaction around every migration (each runs in a savepoint of it); on
    /// PostgreSQL a session advisory lock, taken by the migrator on its connection.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => {
                let mut tx = self.pool.begin_with("BEGIN EXCLUSIVE").await?;
                SQLITE_MIGRATIONS.run_direct(&mut *tx).await?;
                tx.commit().await?;
            }
            // `migrate!` migrators lock (`pg_advisory_lock`) around the whole run.
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// The pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The SQLite file, when the backend is SQLite.
    pub fn sqlite_file(&self) -> Option<&SqliteFile> {
        self.sqlite.as_ref()
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so a read-then-write transaction cannot fail half-way on a
    /// stale snapshot.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Removes `name=value` from the query of `rest` (a URL after its scheme); returns the rest
/// and the value.
fn take_query_param(rest: &str, name: &str) -> (String, Option<String>) {
    let Some((path, query)) = rest.split_once('?') else { return (rest.to_owned(), None) };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => {
                value = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    let out = if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) };
    (out, value)
}

/// Reads a text column that must hold a value of type `T`.
pub(crate) fn parse_col<T: FromStr>(what: &str, value: &str) -> Result<T, StoreError> {
    value.parse().map_err(|_| StoreError::Corrupt(format!("{what} {:?}", value.chars().take(40).collect::<String>())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_one_query_parameter() {
        assert_eq!(take_query_param("a.db", "synchronous"), ("a.db".to_owned(), None));
        assert_eq!(
            take_query_param("a.db?synchronous=normal", "synchronous"),
            ("a.db".to_owned(), Some("normal".into()))
        );
        assert_eq!(
            take_query_param("a.db?mode=rwc&synchronous=full", "synchronous"),
            ("a.db?mode=rwc".to_owned(), Some("full".into()))
        );
    }
}
