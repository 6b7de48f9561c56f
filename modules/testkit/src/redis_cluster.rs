//! A Redis Cluster of the test's own: three masters with a replica each, from the installed
//! `redis-server`, on free ports, killed when dropped. Tests kill a master to make its replica
//! take over without disturbing the tests sharing the main Redis.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use commerce_cache::Cache;
use commerce_cache::redis;

use crate::{START_HINT, eventually, unique_suffix};

/// Milliseconds without an answer before the cluster fails a master over to its replica.
const NODE_TIMEOUT_MS: u64 = 1000;

/// A running local Redis Cluster.
pub struct RedisCluster {
    dir: PathBuf,
    ports: Vec<u16>,
    nodes: Vec<Option<Child>>,
}

impl RedisCluster {
    /// Starts six nodes, joins them into three masters with a replica each and waits until every
    /// slot is served.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("redis-cluster-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster's files");
        let ports = free_ports(6);
        let mut cluster = Self {
            dir,
            nodes: ports.iter().map(|_| None).collect(),
            ports,
        };
        for node in 0..cluster.ports.len() {
            cluster.spawn(node);
        }
        for &port in &cluster.ports {
            wait_listening(port).await;
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("running redis-cli --cluster create: {e}; {START_HINT}"));
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        cluster.wait_healthy().await;
        cluster
    }

    fn spawn(&mut self, node: usize) {
        let port = self.ports[node].to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            // A replica takes over however long it was cut off from its master.
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--save", "", "--appendonly", "no"])
            // Replicas sync at once (the default waits 5 s for more replicas to share a transfer).
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting redis-server (is it installed?): {e}; {START_HINT}")
            });
        self.nodes[node] = Some(child);
    }

    /// The seed list for `REDIS_URL` (with `REDIS_CLUSTER=true`).
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A cluster handle with keys under `prefix`.
    pub fn cache(&self, prefix: &str) -> Cache {
        Cache::connect(&self.url(), prefix, None, true).expect("a valid cluster URL")
    }

    /// The node (index) that serves `key` as master now.
    pub async fn master_of(&self, key: &str) -> usize {
        eventually(
            "a master serves the key's slot",
            Duration::from_secs(15),
            async || {
                let node = (0..self.ports.len())
                    .find(|n| self.nodes[*n].is_some())
                    .ok_or("no node runs")?;
                let mut conn = self
                    .node_connection(node)
                    .await
                    .map_err(|e| e.to_string())?;
                let slot: u16 = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                self.master_of_slot(slot).await
            },
        )
        .await
    }

    async fn master_of_slot(&self, slot: u16) -> Result<usize, String> {
        for node in (0..self.ports.len()).filter(|n| self.nodes[*n].is_some()) {
            let Ok(mut conn) = self.node_connection(node).await else {
                continue;
            };
            let Ok(shards) = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Vec<redis::Value>>(&mut conn)
                .await
            else {
                continue;
            };
            for shard in shards {
                let redis::Value::Array(fields) = shard else {
                    continue;
                };
                let (Some(start), Some(end), Some(master)) =
                    (fields.first(), fields.get(1), fields.get(2))
                else {
                    continue;
                };
                let start: i64 = redis::from_redis_value(start.clone()).unwrap_or(-1);
                let end: i64 = redis::from_redis_value(end.clone()).unwrap_or(-1);
                if !(start..=end).contains(&i64::from(slot)) {
                    continue;
                }
                let redis::Value::Array(address) = master else {
                    continue;
                };
                let port: i64 = address
                    .get(1)
                    .and_then(|p| redis::from_redis_value(p.clone()).ok())
                    .unwrap_or(-1);
                if let Some(found) = self.ports.iter().position(|p| i64::from(*p) == port)
                    && self.nodes[found].is_some()
                {
                    return Ok(found);
                }
            }
        }
        Err(format!("no live master serves slot {slot}"))
    }

    /// Kills a node (SIGKILL: no chance to hand over).
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again; it rejoins the cluster (as a replica of whoever took over).
    pub async fn restart(&mut self, node: usize) {
        self.spawn(node);
        wait_listening(self.ports[node]).await;
        self.wait_healthy().await;
    }

    /// Waits until every live node reports every slot served and every replica is in sync with
    /// its master (so a master killed afterwards loses only what it was writing then).
    pub async fn wait_healthy(&self) {
        for node in (0..self.ports.len()).filter(|n| self.nodes[*n].is_some()) {
            self.wait_state_ok(node).await;
            self.wait_replica_synced(node).await;
        }
    }

    async fn wait_replica_synced(&self, node: usize) {
        self.wait_info(
            node,
            "a Redis Cluster replica is in sync with its master",
            &["INFO", "replication"],
            |info| {
                let replica = info.lines().any(|l| l.trim() == "role:slave");
                !replica || info.lines().any(|l| l.trim() == "master_link_status:up")
            },
        )
        .await;
    }

    async fn wait_state_ok(&self, node: usize) {
        self.wait_info(
            node,
            "the Redis Cluster serves every slot",
            &["CLUSTER", "INFO"],
            |info| info.lines().any(|l| l.trim() == "cluster_state:ok"),
        )
        .await;
    }

    /// Polls `command` on `node` until its text answer satisfies `done`.
    async fn wait_info(&self, node: usize, what: &str, command: &[&str], done: fn(&str) -> bool) {
        eventually(what, Duration::from_secs(30), async || {
            let mut conn = self
                .node_connection(node)
                .await
                .map_err(|e| e.to_string())?;
            let info: String = redis::cmd(command[0])
                .arg(&command[1..])
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            if done(&info) { Ok(()) } else { Err(info) }
        })
        .await;
    }

    async fn node_connection(
        &self,
        node: usize,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.ports[node]))?;
        tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill(node);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` free ports whose cluster bus ports (+10000) are free as well.
fn free_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(n);
    let mut held = Vec::new();
    while ports.len() < n {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        if port > 55_000 || ports.contains(&port) {
            continue;
        }
        let Ok(bus) = std::net::TcpListener::bind(("127.0.0.1", port + 10_000)) else {
            continue;
        };
        ports.push(port);
        held.push((listener, bus));
    }
    ports
}

async fn wait_listening(port: u16) {
    eventually(
        "redis-server listens",
        Duration::from_secs(10),
        async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(|_| ())
        },
    )
    .await;
}
