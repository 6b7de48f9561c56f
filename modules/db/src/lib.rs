//! PostgreSQL for both apps, on diesel-async (no libpq).
//!
//! Rules kept here:
//! - one pool per app, with a bounded wait so an exhausted pool answers 503 quickly instead of
//!   queueing requests forever;
//! - migrations run under a PostgreSQL advisory lock, so two instances starting at once never
//!   apply the same migration twice;
//! - a connection returned to the pool while a transaction is still open (a cancelled request)
//!   is discarded by the pool's recycle check rather than reused;
//! - every connection, pooled or not, is opened by [`connect`], which honours the URL's
//!   `sslmode` and `sslrootcert` ([`tls`]).

pub mod idempotency;
pub mod tls;
pub mod worker;

use std::time::Duration;

use anyhow::Context as _;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel::{QueryResult, QueryableByName, sql_query};
use std::sync::Arc;

use diesel_async::pooled_connection::deadpool as pooled;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::EmbeddedMigrations;
use futures::future::BoxFuture;

pub use diesel_async;
pub use tls::{ConnectOptions, SslMode};

/// Opens one connection to `url`, with TLS as its `sslmode` asks.
pub async fn connect(url: &str) -> anyhow::Result<AsyncPgConnection> {
    let options = ConnectOptions::from_url(url).map_err(anyhow::Error::msg)?;
    options.connect().await.map_err(anyhow::Error::new)
}

/// The connection pool.
pub type Pool = pooled::Pool<AsyncPgConnection>;
/// A connection checked out of the pool.
pub type PooledConn = pooled::Object<AsyncPgConnection>;
/// Error from checking a connection out of the pool.
pub type PoolError = pooled::PoolError;

/// Builds a pool of at most `max_size` connections. Connections are opened lazily, each by the
/// same [`ConnectOptions`] (the URL and trusted roots are read once, here).
pub fn pool(url: &str, max_size: usize) -> anyhow::Result<Pool> {
    let options = Arc::new(ConnectOptions::from_url(url).map_err(anyhow::Error::msg)?);
    let mut setup = ManagerConfig::default();
    setup.custom_setup = Box::new(move |_url| {
        let options = options.clone();
        Box::pin(async move { options.connect().await })
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, setup);
    pooled::Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .context("building the database pool")
}

/// Publishes `pool`'s state every second until `stop` turns true, labelled `pool=name`:
/// `db_pool_connections{state="in_use"|"idle"}`, `db_pool_max_connections` and
/// `db_pool_waiting` (tasks queued for a connection). Failed checkouts are counted by
/// [`count_pool_error`] as `db_pool_errors_total{kind}`, registered here at zero.
pub async fn report_pool_until_stopped(
    pool: Pool,
    name: &'static str,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    metrics::describe_gauge!(
        "db_pool_connections",
        "Open database connections of the pool, by state (in_use, idle)."
    );
    metrics::describe_gauge!("db_pool_max_connections", "The pool's size limit.");
    metrics::describe_gauge!(
        "db_pool_waiting",
        "Tasks waiting for a database connection (non-zero: the pool is too small or the database slow)."
    );
    commerce_telemetry::register_counter(
        "db_pool_errors_total",
        "Failed connection checkouts, by kind (timeout_wait, timeout_create, timeout_recycle, backend, closed).",
        &[("pool", &[name]), ("kind", &POOL_ERROR_KINDS)],
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let status = pool.status();
        let in_use = status.size.saturating_sub(status.available);
        metrics::gauge!("db_pool_connections", "pool" => name, "state" => "in_use")
            .set(in_use as f64);
        metrics::gauge!("db_pool_connections", "pool" => name, "state" => "idle")
            .set(status.available as f64);
        metrics::gauge!("db_pool_max_connections", "pool" => name).set(status.max_size as f64);
        metrics::gauge!("db_pool_waiting", "pool" => name).set(status.waiting as f64);
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
    }
}

const POOL_ERROR_KINDS: [&str; 5] = [
    "timeout_wait",
    "timeout_create",
    "timeout_recycle",
    "backend",
    "closed",
];

/// Counts a failed checkout from `pool` in `db_pool_errors_total`.
pub fn count_pool_error(pool: &'static str, e: &PoolError) {
    use deadpool::managed::{PoolError as E, TimeoutType};
    let kind = match e {
        E::Timeout(TimeoutType::Wait) => "timeout_wait",
        E::Timeout(TimeoutType::Create) => "timeout_create",
        E::Timeout(TimeoutType::Recycle) => "timeout_recycle",
        E::Closed => "closed",
        _ => "backend",
    };
    metrics::counter!("db_pool_errors_total", "pool" => pool, "kind" => kind).increment(1);
}

/// Checks that the variable `var` holds a `postgres://` URL naming a database.
pub fn validate_url(var: &str, url: String) -> Result<String, commerce_config::ConfigError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(commerce_config::ConfigError::new(
            var,
            "must be a postgres:// URL",
        ));
    }
    if database_name(&url).is_none() {
        return Err(commerce_config::ConfigError::new(
            var,
            "must name a database",
        ));
    }
    ConnectOptions::from_url(&url).map_err(|e| commerce_config::ConfigError::new(var, e))?;
    Ok(url)
}

/// Replaces the database name in a `postgres://` URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // The database is the path after the authority: `scheme://authority/db`.
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..authority_end], database);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The database name in a `postgres://` URL.
pub fn database_name(url: &str) -> Option<&str> {
    let base = url.split('?').next()?;
    let after_scheme = &base[base.find("://")? + 3..];
    let name = &after_scheme[after_scheme.find('/')? + 1..];
    (!name.is_empty()).then_some(name)
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates the database named in `url` if it does not exist, connecting through the server's
/// `postgres` maintenance database only when the database itself cannot be reached (managed
/// services often forbid the maintenance database to applications).
pub async fn create_database_if_missing(url: &str) -> anyhow::Result<bool> {
    let name = database_name(url).context("DATABASE_URL names no database")?;
    if connect(url).await.is_ok() {
        return Ok(false);
    }
    let mut admin = connect(&with_database(url, "postgres"))
        .await
        .context("connecting to the `postgres` maintenance database")?;
    let found: Exists =
        sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<Text, _>(name)
            .get_result(&mut admin)
            .await?;
    if found.exists {
        return Ok(false);
    }
    match admin
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
        .await
    {
        Ok(()) => Ok(true),
        // Another instance created it between our check and our CREATE.
        Err(e) if e.to_string().contains("already exists") => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating database {name}")),
    }
}

/// `<app> migrate`: creates the database named in `url` if it is missing (unless
/// `create_database` is false: `--no-create-database`, for a database provisioned by the
/// operator), then applies the pending migrations.
pub async fn migrate(
    url: &str,
    migrations: EmbeddedMigrations,
    create_database: bool,
) -> anyhow::Result<()> {
    if create_database && create_database_if_missing(url).await? {
        tracing::info!(
            database = database_name(url).unwrap_or_default(),
            "created the database"
        );
    }
    let applied = run_migrations(url, migrations).await?;
    tracing::info!(count = applied.len(), versions = ?applied, "migrations applied");
    Ok(())
}

/// A stable advisory-lock key for `name`.
const fn lock_key(name: &str) -> i64 {
    // FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
    let bytes = name.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash as i64
}

/// A transaction-scoped advisory lock: held from the statement that takes it until the
/// transaction ends, so it cannot leak past a failed transaction or a lost connection.
#[derive(Debug, Clone, Copy)]
pub struct XactLock(i64);

impl XactLock {
    /// The lock named `name` (the same name is the same lock in every process).
    pub const fn named(name: &str) -> Self {
        Self(lock_key(name))
    }

    /// The lock's key, for statements that take it themselves.
    pub const fn key(self) -> i64 {
        self.0
    }

    /// Takes the lock shared: shared holders run together, and wait for an exclusive holder.
    pub async fn share(self, conn: &mut AsyncPgConnection) -> QueryResult<()> {
        sql_query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind::<BigInt, _>(self.0)
            .execute(conn)
            .await
            .map(drop)
    }

    /// Takes the lock exclusively, waiting for every holder.
    pub async fn exclusive(self, conn: &mut AsyncPgConnection) -> QueryResult<()> {
        sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<BigInt, _>(self.0)
            .execute(conn)
            .await
            .map(drop)
    }

    /// Takes the lock exclusively if no one holds it; false (without waiting) otherwise.
    pub async fn try_exclusive(self, conn: &mut AsyncPgConnection) -> QueryResult<bool> {
        #[derive(diesel::QueryableByName)]
        struct Taken {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            taken: bool,
        }
        sql_query("SELECT pg_try_advisory_xact_lock($1) AS taken")
            .bind::<BigInt, _>(self.0)
            .get_result::<Taken>(conn)
            .await
            .map(|t| t.taken)
    }
}

/// Applies pending migrations to the database at `url`, holding an advisory lock so that
/// concurrent starts serialise. Returns the versions applied.
pub async fn run_migrations(
    url: &str,
    migrations: EmbeddedMigrations,
) -> anyhow::Result<Vec<String>> {
    let mut lock_conn = connect(url)
        .await
        .context("connecting to the database to migrate")?;
    let key = lock_key("commerce:migrations");
    sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(key)
        .execute(&mut lock_conn)
        .await
        .context("taking the migration lock")?;

    let result = apply(url, migrations).await;

    // Closing the session releases the lock even if the unlock fails.
    let _ = sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(key)
        .execute(&mut lock_conn)
        .await;
    result
}

async fn apply(url: &str, migrations: EmbeddedMigrations) -> anyhow::Result<Vec<String>> {
    use diesel_migrations::MigrationHarness;
    let url = url.to_owned();
    // The harness drives the async connection from synchronous diesel code through
    // `block_in_place`, which needs a multi-thread runtime. Callers may be on any runtime (tests
    // use current-thread ones), so it runs on a thread with a small runtime of its own.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = (|| -> anyhow::Result<Vec<String>> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("starting the migration runtime")?;
            rt.block_on(async move {
                let conn = connect(&url)
                    .await
                    .context("connecting to the database to migrate")?;
                let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
                harness
                    .run_pending_migrations(migrations)
                    .map(|versions| versions.iter().map(ToString::to_string).collect())
                    .map_err(|e| anyhow::anyhow!("applying migrations: {e}"))
            })
        })();
        let _ = tx.send(result);
    });
    rx.await
        .context("the migration thread stopped unexpectedly")?
}

/// Readiness check: a pooled connection answers `SELECT 1`.
pub struct DbCheck(pub Pool);

impl commerce_health::ReadinessCheck for DbCheck {
    fn name(&self) -> &'static str {
        "database"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.0.get().await.map_err(|e| e.to_string())?;
            conn.batch_execute("SELECT 1")
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_keeping_credentials_and_query() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/commerce?sslmode=disable", "postgres"),
            "postgres://u:p@h:5432/postgres?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            database_name("postgres://u@h/commerce?a=b"),
            Some("commerce")
        );
        assert_eq!(database_name("postgres://u@h"), None);
    }

    #[test]
    fn lock_key_is_stable() {
        assert_eq!(lock_key("a"), lock_key("a"));
        assert_ne!(lock_key("a"), lock_key("b"));
    }
}
