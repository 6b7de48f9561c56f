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
//!
//! **Redis Cluster** (`REDIS_CLUSTER=true`, `REDIS_URL` a comma-separated list of seed nodes):
//! commands go to the node that owns their key's slot and follow `MOVED`/`ASK` through resharding
//! and failover. A cluster refuses a command, script, `MULTI` or pipeline whose keys live in
//! different slots, so every caller keeps the keys it uses together under one hash tag (the part
//! of a key between the first `{` and `}`), and sends commands on unrelated keys one by one
//! ([`Conn::each`]). `docs/scaling.md` lists the key layout. A key prefix must not contain `{`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub mod local;
pub mod memory;

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
    client: Client,
    conn: Arc<RwLock<Option<Conn>>>,
    /// Held while a connection is being made, so concurrent first uses make one.
    connecting: Arc<tokio::sync::Mutex<()>>,
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

// One per app, made at start: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// A connection to a single server or to a cluster; commands and pipelines run on either with
/// `query_async(&mut conn)`. Cheap to clone: clones share the multiplexed connections.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConn),
}

/// A cluster connection, and whether a command on it failed for want of a node.
///
/// The cluster client refreshes its slot map on `MOVED`, but a map read while a failed master
/// still owned its slots (mid-failover) keeps sending those slots to the dead node, which fails
/// every command without another refresh. So a connection that fails on I/O or a timeout is
/// dropped and the next [`Cache::conn`] makes a new one, which reads the slots afresh.
#[derive(Clone)]
pub struct ClusterConn {
    conn: redis::cluster_async::ClusterConnection,
    broken: Arc<AtomicBool>,
}

impl ClusterConn {
    fn watch<T>(broken: &AtomicBool, result: &redis::RedisResult<T>) {
        if let Err(e) = result
            && (e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_unrecoverable_error())
        {
            broken.store(true, Ordering::Relaxed);
        }
    }
}

impl Conn {
    /// Runs commands on unrelated keys: one pipeline on a single server, each command on its
    /// own slot's node in a cluster (all in flight at once). Replies in the commands' order.
    pub async fn each<T: redis::FromRedisValue>(
        &mut self,
        commands: Vec<redis::Cmd>,
    ) -> redis::RedisResult<Vec<T>> {
        match self {
            Conn::Single(conn) => {
                let mut pipe = redis::pipe();
                for command in commands {
                    pipe.add_command(command);
                }
                pipe.query_async(conn).await
            }
            Conn::Cluster(conn) => {
                futures::future::try_join_all(commands.into_iter().map(|command| {
                    let mut conn = Conn::Cluster(conn.clone());
                    async move { command.query_async::<T>(&mut conn).await }
                }))
                .await
            }
        }
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(ClusterConn { conn, broken }) => {
                let broken = broken.clone();
                let sent = conn.req_packed_command(cmd);
                Box::pin(async move {
                    let result = sent.await;
                    ClusterConn::watch(&broken, &result);
                    result
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Conn::Cluster(ClusterConn { conn, broken }) => {
                let broken = broken.clone();
                let sent = conn.req_packed_commands(cmd, offset, count);
                Box::pin(async move {
                    let result = sent.await;
                    ClusterConn::watch(&broken, &result);
                    result
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.conn.get_db(),
        }
    }
}

impl Cache {
    /// A handle for the server at `url` with keys under `prefix`. Does not connect yet.
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<Self> {
        Self::with_ca(url, prefix, None)
    }

    /// As [`Cache::new`], trusting the root certificates in the PEM file `ca_file` for a
    /// `rediss://` URL.
    pub fn with_ca(url: &str, prefix: &str, ca_file: Option<&str>) -> anyhow::Result<Self> {
        Self::connect(url, prefix, ca_file, false)
    }

    /// A handle for a single server at `url`, or, when `cluster`, for the Redis Cluster whose
    /// seed nodes `url` lists (comma-separated); keys under `prefix`, trusting `ca_file` for
    /// `rediss://`. Does not connect yet.
    pub fn connect(
        url: &str,
        prefix: &str,
        ca_file: Option<&str>,
        cluster: bool,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !prefix.contains('{') && !prefix.contains('}'),
            "REDIS_KEY_PREFIX must not contain braces: they would become every key's hash tag"
        );
        let nodes = url
            .split(',')
            .map(|u| {
                redis::IntoConnectionInfo::into_connection_info(u.trim())
                    .context("REDIS_URL is not a valid Redis URL")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            cluster || nodes.len() == 1,
            "REDIS_URL lists several servers; set REDIS_CLUSTER=true for a Redis Cluster"
        );
        let tls = nodes
            .iter()
            .any(|info| matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }));
        if tls {
            // redis builds its rustls client on the process's default provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let root_cert = match ca_file {
            Some(path) if tls => Some(
                std::fs::read(path).with_context(|| format!("REDIS_CA_FILE: reading {path}"))?,
            ),
            Some(_) => anyhow::bail!("REDIS_CA_FILE is set but REDIS_URL is not rediss://"),
            None => None,
        };
        let certs = root_cert.map(|root_cert| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        });
        let client = if cluster {
            let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(Duration::from_millis(500))
                // MOVED, ASK and a failing-over node are retried briefly; longer outages fall
                // back as for a single server.
                .retries(3)
                .min_retry_wait(50)
                .max_retry_wait(500);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            Client::Cluster(
                builder
                    .build()
                    .context("REDIS_URL: invalid cluster nodes")?,
            )
        } else {
            let info = nodes.into_iter().next().expect("one node");
            Client::Single(match certs {
                Some(certs) => redis::Client::build_with_tls(info, certs)
                    .context("REDIS_CA_FILE holds no usable certificate")?,
                None => redis::Client::open(info).context("REDIS_URL is not a valid Redis URL")?,
            })
        };
        Ok(Self::unconnected(client, prefix.into()))
    }

    /// A handle on `client` that has not connected yet.
    fn unconnected(client: Client, prefix: Arc<str>) -> Self {
        Self {
            client,
            conn: Arc::new(RwLock::new(None)),
            connecting: Arc::new(tokio::sync::Mutex::new(())),
            last_failure: Arc::new(Mutex::new(None)),
            prefix,
        }
    }

    /// `n` handles on the same servers and namespace, each with a connection of its own: a
    /// small pool for a hot read path, so its requests are not all queued on one socket.
    pub fn pool(&self, n: usize) -> Vec<Cache> {
        (0..n.max(1))
            .map(|_| Self::unconnected(self.client.clone(), self.prefix.clone()))
            .collect()
    }

    /// The server's address (`host:port`) for a single server; `cluster` for a cluster, whose
    /// replies name each node.
    pub fn node_name(&self) -> String {
        match &self.client {
            Client::Single(client) => client.get_connection_info().addr().to_string(),
            Client::Cluster(_) => "cluster".to_owned(),
        }
    }

    /// Whether this handle talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.client, Client::Cluster(_))
    }

    /// The full key for `key` in this namespace.
    pub fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// The namespace prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A connection to run commands on (clones share one multiplexed connection per server
    /// that reconnects by itself). Fails fast while Redis is known to be unreachable.
    pub async fn conn(&self) -> anyhow::Result<Conn> {
        if let Some(conn) = self.usable() {
            return Ok(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.usable() {
            return Ok(conn);
        }
        if let Some(at) = *self.last_failure.lock().expect("lock poisoned") {
            anyhow::ensure!(at.elapsed() >= RETRY_AFTER, "Redis is unavailable");
        }
        let made = match &self.client {
            Client::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_millis(500)))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(Conn::Single)
            }
            Client::Cluster(client) => {
                // Remade after a failure (see `ClusterConn`): not sooner than `RETRY_AFTER`.
                *self.last_failure.lock().expect("lock poisoned") = Some(Instant::now());
                client.get_async_connection().await.map(|conn| {
                    Conn::Cluster(ClusterConn {
                        conn,
                        broken: Arc::new(AtomicBool::new(false)),
                    })
                })
            }
        };
        match made {
            Ok(conn) => {
                *self.conn.write().expect("lock poisoned") = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                *self.last_failure.lock().expect("lock poisoned") = Some(Instant::now());
                Err(anyhow::Error::new(e).context("connecting to Redis"))
            }
        }
    }

    /// The current connection, unless a cluster connection failed over a second ago and is due
    /// to be remade.
    fn usable(&self) -> Option<Conn> {
        let conn = self.conn.read().expect("lock poisoned").clone()?;
        match &conn {
            Conn::Cluster(cluster) if cluster.broken.load(Ordering::Relaxed) => {
                let due = self
                    .last_failure
                    .lock()
                    .expect("lock poisoned")
                    .is_none_or(|at| at.elapsed() >= RETRY_AFTER);
                // Until due, the broken one serves: it may have healed by itself.
                (!due).then_some(conn)
            }
            _ => Some(conn),
        }
    }

    /// `PING`; for a cluster, `CLUSTER INFO` reporting every slot served (`cluster_state:ok`).
    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        if self.is_cluster() {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .context("Redis CLUSTER INFO")?;
            anyhow::ensure!(
                info.lines().any(|l| l.trim() == "cluster_state:ok"),
                "the Redis Cluster does not serve every slot (cluster_state is not ok)"
            );
            return Ok(());
        }
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
