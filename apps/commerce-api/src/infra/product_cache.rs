//! Look-aside cache of product reads: serialized response bodies, two levels.
//!
//! - L1, in this process: a hit costs a hash lookup and a reference-count increment, about what
//!   a hello-world route costs. Entries live [`LOCAL_TTL`]: other instances' writes cannot evict
//!   them, so this bounds how stale they can be.
//! - L2, Redis (shared by all instances): `PRODUCT_CACHE_TTL_SECONDS`, evicted on every product
//!   change by the instance making it.
//!
//! Staleness, as documented for clients: a product's detail is evicted on any change to it
//! (including a like), so it is at most [`LOCAL_TTL`] old. List pages are evicted when a product
//! is created or changed, but *not* on likes (likes are frequent and would empty the cache
//! constantly): a list's `like_count` may lag by up to the Redis TTL (30 s by default).
//!
//! Redis failures never fail a read: they count as misses, are counted in
//! `product_cache_requests_total{result="error"}` and logged at most every ten seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use commerce_cache::{Cache, Local};
use redis::AsyncCommands;

/// Lifetime of in-process entries.
pub const LOCAL_TTL: Duration = Duration::from_secs(1);
/// In-process entries kept at most; the map is cleared when it is full.
const LOCAL_CAPACITY: usize = 20_000;
/// Redis set indexing the cached list keys, so that one change evicts them all.
const LIST_INDEX: &str = "products:list:index";

pub struct ProductCache {
    local: Local<Bytes>,
    redis: Cache,
    ttl: Duration,
    last_warning: AtomicU64,
    started: Instant,
}

impl ProductCache {
    pub fn new(redis: Cache, ttl: Duration) -> Self {
        metrics::describe_counter!(
            "product_cache_requests_total",
            "Product cache lookups by level and result (hit, miss, error)."
        );
        Self {
            local: Local::new(LOCAL_TTL, LOCAL_CAPACITY),
            redis,
            ttl,
            last_warning: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Key of a product's detail.
    pub fn detail_key(id: i64) -> String {
        format!("product:{id}")
    }

    /// Key of a list page.
    pub fn list_key(brand_id: Option<i64>, sort: &str, page: i64, size: i64) -> String {
        match brand_id {
            Some(b) => format!("products:list:b{b}:{sort}:{page}:{size}"),
            None => format!("products:list:all:{sort}:{page}:{size}"),
        }
    }

    /// The cached body under `key`, from L1 or else L2.
    pub async fn get(&self, key: &str) -> Option<Bytes> {
        if let Some(body) = self.local.get(key) {
            metrics::counter!("product_cache_requests_total", "level" => "local", "result" => "hit")
                .increment(1);
            return Some(body);
        }
        let full = self.redis.key(key);
        let result: anyhow::Result<Option<Vec<u8>>> = async {
            let mut conn = self.redis.conn().await?;
            Ok(conn.get(&full).await?)
        }
        .await;
        match result {
            Ok(Some(body)) => {
                metrics::counter!("product_cache_requests_total", "level" => "redis", "result" => "hit")
                    .increment(1);
                let body = Bytes::from(body);
                self.put_local(key, body.clone());
                Some(body)
            }
            Ok(None) => {
                metrics::counter!("product_cache_requests_total", "level" => "redis", "result" => "miss")
                    .increment(1);
                None
            }
            Err(e) => {
                self.redis_failed("get", &e);
                None
            }
        }
    }

    /// Stores `body` under `key` in both levels. A list key is indexed for eviction.
    pub async fn put(&self, key: &str, body: Bytes, is_list: bool) {
        self.put_local(key, body.clone());
        let full = self.redis.key(key);
        let index = self.redis.key(LIST_INDEX);
        let ttl = self.ttl.as_secs();
        let result: anyhow::Result<()> = async {
            let mut conn = self.redis.conn().await?;
            let mut pipe = redis::pipe();
            pipe.set_ex(&full, body.as_ref(), ttl).ignore();
            if is_list {
                pipe.sadd(&index, &full).ignore();
                pipe.expire(&index, (ttl * 2) as i64).ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.redis_failed("put", &e);
        }
    }

    /// Evicts a product's detail (after any change to it, likes included).
    pub async fn evict_product(&self, id: i64) {
        let key = Self::detail_key(id);
        self.local.remove(&key);
        let full = self.redis.key(&key);
        let result: anyhow::Result<()> = async {
            let mut conn = self.redis.conn().await?;
            let () = conn.del(&full).await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.redis_failed("evict", &e);
        }
    }

    /// Evicts every cached list page (after a product is created or changed).
    pub async fn evict_lists(&self) {
        self.local.retain(|k| !k.starts_with("products:list:"));
        let index = self.redis.key(LIST_INDEX);
        let script = redis::Script::new(
            r"local keys = redis.call('SMEMBERS', KEYS[1])
              for i = 1, #keys, 500 do
                redis.call('DEL', unpack(keys, i, math.min(i + 499, #keys)))
              end
              redis.call('DEL', KEYS[1])
              return #keys",
        );
        let result: anyhow::Result<()> = async {
            let mut conn = self.redis.conn().await?;
            let _: i64 = script.key(&index).invoke_async(&mut conn).await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.redis_failed("evict", &e);
        }
    }

    fn put_local(&self, key: &str, body: Bytes) {
        self.local.put(key, body);
    }

    fn redis_failed(&self, op: &'static str, error: &anyhow::Error) {
        metrics::counter!("product_cache_requests_total", "level" => "redis", "result" => "error")
            .increment(1);
        let now = self.started.elapsed().as_secs();
        let last = self.last_warning.load(Ordering::Relaxed);
        if (last == 0 || now >= last + 10)
            && self
                .last_warning
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(op, error = %format!("{error:#}"), "Redis unavailable; serving product reads from PostgreSQL");
        }
    }
}
