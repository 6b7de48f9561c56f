//! An in-process map whose entries expire: the first level in front of Redis or PostgreSQL for
//! reads that are hit far more often than they change.
//!
//! A hit costs a read lock, a hash lookup and a clone (make `V` cheap to clone, e.g. `Bytes`).
//! Other instances cannot evict an entry here, so the TTL is the bound on how stale it can be.
//! When the map is full it is cleared rather than evicting one by one: simple, and the hot keys
//! come back at once.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

pub struct Local<V> {
    ttl: Duration,
    capacity: usize,
    map: RwLock<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> Local<V> {
    /// Entries live `ttl`; at most `capacity` are kept. A zero `ttl` keeps nothing.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            map: RwLock::new(HashMap::new()),
        }
    }

    /// The entry under `key`, if younger than the TTL.
    pub fn get(&self, key: &str) -> Option<V> {
        let map = self.map.read().expect("lock poisoned");
        let (at, value) = map.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    pub fn put(&self, key: impl Into<String>, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.write().expect("lock poisoned");
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(key.into(), (Instant::now(), value));
    }

    pub fn remove(&self, key: &str) {
        self.map.write().expect("lock poisoned").remove(key);
    }

    /// Keeps only the entries whose key satisfies `keep`.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.map
            .write()
            .expect("lock poisoned")
            .retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_a_full_map_starts_over() {
        let local = Local::new(Duration::from_millis(50), 2);
        local.put("a", 1);
        local.put("b", 2);
        assert_eq!(local.get("a"), Some(1));
        local.put("c", 3);
        assert_eq!(local.get("a"), None, "cleared when full");
        assert_eq!(local.get("c"), Some(3));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(local.get("c"), None, "expired");
        let off = Local::new(Duration::ZERO, 10);
        off.put("a", 1);
        assert_eq!(off.get("a"), None);
    }
}
