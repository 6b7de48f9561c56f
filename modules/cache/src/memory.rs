//! Redis's memory and evictions as gauges, beside the other dependency metrics.
//!
//! Everything kept in Redis can be recomputed, but an instance that runs out of memory evicts
//! (or, with `maxmemory-policy noeviction`, refuses writes): rankings are rebuilt and coupon
//! gates reconciled, at a cost an operator wants to see coming. Every few seconds each app reads
//! `INFO memory` and `INFO stats` from every node it uses (each master of a cluster) and
//! publishes, labelled `node`:
//! - `redis_used_memory_bytes`, `redis_max_memory_bytes` (`maxmemory`; 0: no limit);
//! - `redis_evicted_keys_total`: keys the node evicted since it started (its own counter);
//! - `redis_memory_report_failures_total` (unlabelled): reads that failed (Redis unreachable).

use std::time::Duration;

use redis::Value;

use crate::Cache;

/// How often the apps read the figures (`INFO` is cheap, but not free on a busy node).
pub const EVERY: Duration = Duration::from_secs(10);

/// One node's figures from `INFO`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub used: u64,
    pub max: u64,
    pub evicted_keys: u64,
}

impl Memory {
    /// Reads the figures from an `INFO` reply's text.
    pub fn parse(info: &str) -> Self {
        let mut m = Memory::default();
        for line in info.lines() {
            let Some((name, value)) = line.trim().split_once(':') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            match name {
                "used_memory" => m.used = value,
                "maxmemory" => m.max = value,
                "evicted_keys" => m.evicted_keys = value,
                _ => {}
            }
        }
        m
    }
}

/// Each node's `INFO` text from a reply: a single server's string, or a cluster's map of node
/// address to reply. `single` names the single server.
pub fn per_node(reply: Value, single: &str) -> Vec<(String, String)> {
    fn text(v: Value) -> Option<String> {
        match v {
            Value::BulkString(b) => String::from_utf8(b).ok(),
            Value::SimpleString(s) => Some(s),
            Value::VerbatimString { text, .. } => Some(text),
            _ => None,
        }
    }
    match reply {
        Value::Map(nodes) => nodes
            .into_iter()
            .filter_map(|(node, info)| Some((text(node)?, text(info)?)))
            .collect(),
        other => text(other)
            .map(|info| vec![(single.to_owned(), info)])
            .unwrap_or_default(),
    }
}

/// Registers the metrics (so they read 0 failures before the first report).
pub fn describe() {
    metrics::describe_gauge!(
        "redis_used_memory_bytes",
        "Memory the Redis node uses (INFO used_memory), by node."
    );
    metrics::describe_gauge!(
        "redis_max_memory_bytes",
        "The Redis node's maxmemory (0: no limit), by node."
    );
    metrics::describe_counter!(
        "redis_evicted_keys_total",
        "Keys the Redis node evicted since it started (INFO evicted_keys), by node."
    );
    commerce_telemetry::register_counter(
        "redis_memory_report_failures_total",
        "Reads of the Redis nodes' memory figures that failed (Redis unreachable).",
        &[],
    );
}

/// Publishes the figures of every node `cache` uses every `every` until `stop` turns true.
pub async fn report_until_stopped(
    cache: Cache,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    describe();
    let single = cache.node_name();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let read = async {
            let mut conn = cache.conn().await?;
            let reply: Value = redis::cmd("INFO")
                .arg("memory")
                .arg("stats")
                .query_async(&mut conn)
                .await?;
            anyhow::Ok(reply)
        };
        match tokio::time::timeout(Duration::from_secs(2), read).await {
            Ok(Ok(reply)) => {
                for (node, info) in per_node(reply, &single) {
                    let m = Memory::parse(&info);
                    metrics::gauge!("redis_used_memory_bytes", "node" => node.clone())
                        .set(m.used as f64);
                    metrics::gauge!("redis_max_memory_bytes", "node" => node.clone())
                        .set(m.max as f64);
                    metrics::counter!("redis_evicted_keys_total", "node" => node)
                        .absolute(m.evicted_keys);
                }
            }
            _ => metrics::counter!("redis_memory_report_failures_total").increment(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_from_info_text() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:4194304\r\n\
                    maxmemory_policy:allkeys-lru\r\n\r\n# Stats\r\nevicted_keys:7\r\nexpired_keys:3\r\n";
        assert_eq!(
            Memory::parse(info),
            Memory {
                used: 1_048_576,
                max: 4_194_304,
                evicted_keys: 7
            }
        );
    }

    #[test]
    fn a_cluster_reply_is_one_text_per_node_and_a_single_server_is_named() {
        let cluster = Value::Map(vec![
            (
                Value::BulkString(b"10.0.0.1:7000".to_vec()),
                Value::VerbatimString {
                    format: redis::VerbatimFormat::Text,
                    text: "used_memory:1".into(),
                },
            ),
            (
                Value::BulkString(b"10.0.0.2:7000".to_vec()),
                Value::BulkString(b"used_memory:2".to_vec()),
            ),
        ]);
        assert_eq!(
            per_node(cluster, "unused"),
            vec![
                ("10.0.0.1:7000".to_owned(), "used_memory:1".to_owned()),
                ("10.0.0.2:7000".to_owned(), "used_memory:2".to_owned()),
            ]
        );
        assert_eq!(
            per_node(
                Value::BulkString(b"used_memory:3".to_vec()),
                "127.0.0.1:6379"
            ),
            vec![("127.0.0.1:6379".to_owned(), "used_memory:3".to_owned())]
        );
    }
}
