//! Redis for both apps.
//!
//! Redis is never the only record of anything: every value kept here can be recomputed from
//! PostgreSQL. So every command is bounded by a short timeout, and callers treat an error as
//! "cache unavailable" and fall back to the database instead of failing the request.
//!
//! Keys are namespaced by a prefix (`REDIS_KEY_PREFIX`), which lets several environments (and
//! parallel tests) share one server without seeing each other's keys.
//!
//! TLS: a `rediss://` URL connects over TLS (rustls), checking the server's certificate against
//! the system's roots, or against the PEM file given as `ca_file` (`REDIS_CA_FILE`);
//! `rediss://…/#insecure` skips the check (test servers only).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

pub mod local;

pub use local::Local;
pub use redis;

/// How long after a failed connection attempt commands fail fast instead of trying again, so a
/// Redis outage costs requests nothing but a branch.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A namespaced, reconnecting Redis handle. Cheap to clone.
///
/// The connection is opened on first use, not at construction: an app starts (and serves from
/// the database) while Redis is down, and picks Redis up once it answers.
#[derive(Clone)]
pub struct Cache {
    client: redis::Client,
    conn: Arc<OnceCell<ConnectionManager>>,
    last_failure: Arc<Mutex<Option<Instant>>>,
    prefix: Arc<str>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Registers `redis_errors_total{op}` at zero for each of an app's Redis operations.
pub fn register_error_metrics(ops: &[&'static str]) {
    commerce_telemetry::register_counter(
        "redis_errors_total",
        "Redis operations that failed (unreachable, refused or timed out), by operation; each falls back as its caller documents.",
        &[("op", ops)],
    );
}

/// Counts a failed Redis operation `op` in `redis_errors_total`.
pub fn count_error(op: &'static str) {
    metrics::counter!("redis_errors_total", "op" => op).increment(1);
}

impl Cache {
    /// A handle for the server at `url` with keys under `prefix`. Does not connect yet.
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<Self> {
        Self::with_ca(url, prefix, None)
    }

    /// As [`Cache::new`], trusting the root certificates in the PEM file `ca_file` for a
    /// `rediss://` URL.
    pub fn with_ca(url: &str, prefix: &str, ca_file: Option<&str>) -> anyhow::Result<Self> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .context("REDIS_URL is not a valid Redis URL")?;
        let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        if tls {
            // redis builds its rustls client on the process's default provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = match ca_file {
            Some(path) if tls => {
                let root_cert = std::fs::read(path)
                    .with_context(|| format!("REDIS_CA_FILE: reading {path}"))?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(info, certs)
                    .context("REDIS_CA_FILE holds no usable certificate")?
            }
            Some(_) => anyhow::bail!("REDIS_CA_FILE is set but REDIS_URL is not rediss://"),
            None => redis::Client::open(info).context("REDIS_URL is not a valid Redis URL")?,
        };
        Ok(Self {
            client,
            conn: Arc::new(OnceCell::new()),
            last_failure: Arc::new(Mutex::new(None)),
            prefix: prefix.into(),
        })
    }

    /// The full key for `key` in this namespace.
    pub fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// The namespace prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A connection to run commands on (clones share one multiplexed connection that
    /// reconnects by itself). Fails fast while Redis is known to be unreachable.
    pub async fn conn(&self) -> anyhow::Result<ConnectionManager> {
        if let Some(conn) = self.conn.get() {
            return Ok(conn.clone());
        }
        if let Some(at) = *self.last_failure.lock().expect("lock poisoned") {
            anyhow::ensure!(at.elapsed() >= RETRY_AFTER, "Redis is unavailable");
        }
        let client = self.client.clone();
        let result = self
            .conn
            .get_or_try_init(|| async move {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_millis(500)))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(client, config).await
            })
            .await;
        match result {
            Ok(conn) => Ok(conn.clone()),
            Err(e) => {
                *self.last_failure.lock().expect("lock poisoned") = Some(Instant::now());
                Err(anyhow::Error::new(e).context("connecting to Redis"))
            }
        }
    }

    /// `PING`.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .context("Redis PING")?;
        Ok(())
    }
}

/// Readiness check: Redis answers `PING`.
pub struct RedisCheck(pub Cache);

impl commerce_health::ReadinessCheck for RedisCheck {
    fn name(&self) -> &'static str {
        "redis"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.0.ping().await.map_err(|e| format!("{e:#}")) })
    }
}
