//! Look-aside cache of product reads: serialized response bodies, two levels.
//!
//! - L1, in this process: a hit costs a hash lookup and a reference-count increment, about what
//!   a hello-world route costs. Entries live [`LOCAL_TTL`]: other instances' writes cannot evict
//!   them, so this bounds how stale they can be.
//! - L2, Redis (shared by all instances): `PRODUCT_CACHE_TTL_SECONDS`, evicted on every product
//!   change by the instance making it.
//!
//! Staleness, as documented for clients: a product's detail is evicted on any change to its row
//! (stock taken by an order or given back by a cancellation or a failed payment, an admin edit,
//! a like), on every instance: a trigger NOTIFYs `product_changed` at commit and each instance's
//! listener ([`listen`]) evicts its own L1 and the shared L2. A detail is therefore at most
//! [`LOCAL_TTL`] old. Fills are versioned: every eviction bumps the product's generation in
//! Redis, and a fill is stored only if the generation it read before loading is still current,
//! so a slow fill that loaded before a change never puts the older body back. Concurrent misses
//! of one product on one instance wait for a single load (single flight).
//!
//! List pages are versioned by a generation (`products:list:gen` in Redis): a product created or
//! edited by an admin moves it on, so every page cached under the old one is no longer read and
//! simply expires with its TTL. Nothing has to find and delete the old pages, so no index grows
//! with the pages requested and no eviction blocks Redis. Each instance reads the generation at
//! most every [`LOCAL_TTL`] (and its own moves at once), so another instance's edit shows in a
//! list within [`LOCAL_TTL`]. Likes, sales and stock changes do *not* move it (they are frequent
//! and would empty the cache constantly): a list's `like_count`, `sales_count` and `stock` may lag
//! by up to the Redis TTL (30 s by default).
//!
//! Redis failures never fail a read: they count as misses, are counted in
//! `product_cache_requests_total{result="error"}` and logged at most every ten seconds.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use commerce_cache::{Cache, Local};
use redis::AsyncCommands;
use tokio::sync::{OnceCell, watch};

use crate::infra::listener::Heard;

/// Lifetime of in-process entries.
pub const LOCAL_TTL: Duration = Duration::from_secs(1);
/// In-process entries kept at most; the map is cleared when it is full.
const LOCAL_CAPACITY: usize = 20_000;
/// The list pages' generation in Redis.
const LIST_GENERATION: &str = "products:list:gen";

/// How long a product's generation outlives its last eviction (far longer than any fill).
const GENERATION_TTL_SECONDS: i64 = 3600;

/// Stores KEYS[1] = ARGV[1] for ARGV[3] seconds unless the generation KEYS[2] moved away from
/// ARGV[2]. Both keys carry the product's hash tag.
static PUT_IF_GENERATION: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"local current = redis.call('GET', KEYS[2]) or ''
          if current ~= ARGV[2] then return 0 end
          redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
          return 1",
    )
});

/// One load in flight per key; its result is shared with every caller that waited for it.
type Flight = Arc<OnceCell<Option<Bytes>>>;

pub struct ProductCache {
    local: Local<Bytes>,
    redis: Cache,
    ttl: Duration,
    last_warning: AtomicU64,
    started: Instant,
    flights: Mutex<HashMap<i64, Flight>>,
    loads: AtomicU64,
    /// The list generation as last read, and when.
    list_generation: Mutex<(u64, Option<Instant>)>,
}

impl ProductCache {
    pub fn new(redis: Cache, ttl: Duration) -> Self {
        Self {
            local: Local::new(LOCAL_TTL, LOCAL_CAPACITY),
            redis,
            ttl,
            last_warning: AtomicU64::new(0),
            started: Instant::now(),
            flights: Mutex::new(HashMap::new()),
            loads: AtomicU64::new(0),
            list_generation: Mutex::new((0, None)),
        }
    }

    /// How many product details this instance has loaded from the database.
    pub fn detail_loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// A product's detail body: from L1, else L2, else `load`d from the database. Concurrent
    /// misses on this instance share one `load`; a body loaded while the product changed is
    /// returned but not cached.
    pub async fn detail<F, Fut, E>(&self, id: i64, load: F) -> Result<Bytes, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        let key = Self::detail_key(id);
        if let Some(body) = self.local.get(&key) {
            metrics::counter!("product_cache_requests_total", "level" => "local", "result" => "hit")
                .increment(1);
            return Ok(body);
        }
        let flight = self
            .flights
            .lock()
            .expect("lock poisoned")
            .entry(id)
            .or_default()
            .clone();
        let mut load = Some(load);
        let mut failure = None;
        let shared = flight
            .get_or_init(|| async {
                let load = load.take().expect("the first caller loads");
                match self.fill_detail(id, &key, load).await {
                    Ok(body) => Some(body),
                    Err(e) => {
                        failure = Some(e);
                        None
                    }
                }
            })
            .await
            .clone();
        {
            let mut flights = self.flights.lock().expect("lock poisoned");
            if flights.get(&id).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                flights.remove(&id);
            }
        }
        match (shared, failure, load) {
            (Some(body), _, _) => Ok(body),
            (None, Some(e), _) => Err(e),
            // The load this caller waited for failed: it tries on its own, for its own error.
            (None, None, Some(load)) => self.fill_detail(id, &key, load).await,
            (None, None, None) => unreachable!("a failed load reports its error"),
        }
    }

    /// L2, else `load` (stored in L2 only if the product's generation did not move meanwhile).
    async fn fill_detail<F, Fut, E>(&self, id: i64, key: &str, load: F) -> Result<Bytes, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        let full = self.redis.key(key);
        let generation_key = self.redis.key(&Self::generation_key(id));
        let looked: anyhow::Result<(Option<Vec<u8>>, Option<String>)> = async {
            let mut conn = self.redis.conn().await?;
            Ok(redis::cmd("MGET")
                .arg(&full)
                .arg(&generation_key)
                .query_async(&mut conn)
                .await?)
        }
        .await;
        let generation = match looked {
            Ok((Some(body), _)) => {
                metrics::counter!("product_cache_requests_total", "level" => "redis", "result" => "hit")
                    .increment(1);
                let body = Bytes::from(body);
                self.put_local(key, body.clone());
                return Ok(body);
            }
            Ok((None, generation)) => {
                metrics::counter!("product_cache_requests_total", "level" => "redis", "result" => "miss")
                    .increment(1);
                Some(generation.unwrap_or_default())
            }
            Err(e) => {
                self.redis_failed("get", &e);
                None
            }
        };
        self.loads.fetch_add(1, Ordering::Relaxed);
        let body = load().await?;
        let cached = match generation {
            Some(generation) => {
                self.put_if_generation(&full, &generation_key, &body, &generation)
                    .await
            }
            // Redis is down: this instance's L1 only (bounded by LOCAL_TTL).
            None => true,
        };
        if cached {
            self.put_local(key, body.clone());
        }
        Ok(body)
    }

    /// Stores `body` under `full` unless the generation moved away from `generation` (`""`:
    /// none yet); whether it was stored.
    async fn put_if_generation(
        &self,
        full: &str,
        generation_key: &str,
        body: &Bytes,
        generation: &str,
    ) -> bool {
        let result: anyhow::Result<i64> = async {
            let mut conn = self.redis.conn().await?;
            Ok(PUT_IF_GENERATION
                .key(full)
                .key(generation_key)
                .arg(body.as_ref())
                .arg(generation)
                .arg(self.ttl.as_secs())
                .invoke_async(&mut conn)
                .await?)
        }
        .await;
        match result {
            Ok(stored) => stored == 1,
            Err(e) => {
                self.redis_failed("put", &e);
                false
            }
        }
    }

    /// Key of a product's generation: in its detail's hash slot (tag `{<id>}`), so the read,
    /// the versioned fill and the eviction each touch one slot of a Redis Cluster.
    fn generation_key(id: i64) -> String {
        format!("product:{{{id}}}:gen")
    }

    /// Key of a product's detail (hash tag `{<id>}`).
    pub fn detail_key(id: i64) -> String {
        format!("product:{{{id}}}")
    }

    /// Key of a list page under the current list generation.
    pub async fn list_key(
        &self,
        brand_id: Option<i64>,
        sort: &str,
        page: i64,
        size: i64,
    ) -> String {
        let generation = self.list_generation().await;
        match brand_id {
            Some(b) => format!("products:list:g{generation}:b{b}:{sort}:{page}:{size}"),
            None => format!("products:list:g{generation}:all:{sort}:{page}:{size}"),
        }
    }

    /// The list generation, read from Redis at most every [`LOCAL_TTL`]; with Redis down, the
    /// last one read (only this instance's memory caches then, for [`LOCAL_TTL`]).
    async fn list_generation(&self) -> u64 {
        let (last, read_at) = *self.list_generation.lock().expect("lock poisoned");
        if read_at.is_some_and(|at| at.elapsed() < LOCAL_TTL) {
            return last;
        }
        let key = self.redis.key(LIST_GENERATION);
        let read: anyhow::Result<Option<u64>> = async {
            let mut conn = self.redis.conn().await?;
            Ok(conn.get(&key).await?)
        }
        .await;
        match read {
            Ok(generation) => {
                let generation = generation.unwrap_or(0);
                *self.list_generation.lock().expect("lock poisoned") =
                    (generation, Some(Instant::now()));
                generation
            }
            Err(e) => {
                self.redis_failed("get", &e);
                last
            }
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

    /// Stores `body` under `key` in both levels, for the TTL.
    pub async fn put(&self, key: &str, body: Bytes) {
        self.put_local(key, body.clone());
        let full = self.redis.key(key);
        let ttl = self.ttl.as_secs();
        let result: anyhow::Result<()> = async {
            let mut conn = self.redis.conn().await?;
            let () = conn.set_ex(&full, body.as_ref(), ttl).await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.redis_failed("put", &e);
        }
    }

    /// Evicts a product's detail (after any change to it) and moves its generation on, so that
    /// no fill that loaded before the change can store its body.
    pub async fn evict_product(&self, id: i64) {
        let key = Self::detail_key(id);
        self.local.remove(&key);
        let full = self.redis.key(&key);
        let generation = self.redis.key(&Self::generation_key(id));
        let result: anyhow::Result<()> = async {
            let mut conn = self.redis.conn().await?;
            let () = redis::pipe()
                .atomic()
                .incr(&generation, 1)
                .ignore()
                .expire(&generation, GENERATION_TTL_SECONDS)
                .ignore()
                .del(&full)
                .ignore()
                .query_async(&mut conn)
                .await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.redis_failed("evict", &e);
        }
    }

    /// Retires every cached list page (after a product is created or changed) by moving the list
    /// generation on: O(1) in Redis whatever the number of pages cached.
    pub async fn evict_lists(&self) {
        self.local.retain(|k| !k.starts_with("products:list:"));
        let key = self.redis.key(LIST_GENERATION);
        let result: anyhow::Result<u64> = async {
            let mut conn = self.redis.conn().await?;
            Ok(conn.incr(&key, 1).await?)
        }
        .await;
        match result {
            Ok(generation) => {
                *self.list_generation.lock().expect("lock poisoned") =
                    (generation, Some(Instant::now()));
            }
            Err(e) => {
                // Read again next time rather than trust the old generation.
                self.list_generation.lock().expect("lock poisoned").1 = None;
                self.redis_failed("evict", &e);
            }
        }
    }

    fn put_local(&self, key: &str, body: Bytes) {
        self.local.put(key, body);
    }

    fn redis_failed(&self, op: &'static str, error: &anyhow::Error) {
        commerce_cache::count_error(match op {
            "get" => "product_cache_get",
            "put" => "product_cache_put",
            _ => "product_cache_evict",
        });
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

/// Evicts every product detail whose row changes, on this instance and in Redis, for as long as
/// the app runs: `LISTEN product_changed` (a trigger NOTIFYs at commit). Notifications sent while
/// the session was down are lost, so this instance's L1 details are dropped at every
/// (re)connect; other instances' listeners evict L2.
pub async fn listen(cache: Arc<ProductCache>, database_url: String, stop: watch::Receiver<bool>) {
    let on = |heard: Heard| {
        let cache = cache.clone();
        async move {
            match heard {
                Heard::Connected => cache.local.retain(|k| !k.starts_with("product:")),
                Heard::Notified(payload) => {
                    if let Ok(id) = payload.parse::<i64>() {
                        cache.evict_product(id).await;
                    }
                }
            }
        }
    };
    crate::infra::listener::listen(database_url, "product_changed", on, stop).await;
}
