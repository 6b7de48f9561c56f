//! The live rankings: the current day, three days, week and month and the best sellers, as
//! Redis sorted sets.
//!
//! **Keys** (one hash slot per ranking: every command, script and `MULTI` touches one ranking's
//! keys only, so each runs on a single node of a Redis Cluster): for the ranking
//! `daily:2026-12-02`,
//! - `{prefix}ranking:{daily:2026-12-02}`: the sorted set, member = the product id zero-padded to
//!   19 digits, score = the *negated* score. `ZRANGE` then lists score descending and, within a
//!   tie, member ascending, which is product id ascending: exactly the ranking's order, so a page
//!   is `ZRANGE start stop` and a rank is `ZRANK + 1`, both O(log N + page).
//! - `…:ready`: written in the same `MULTI` that installs a complete rebuild. A set without it
//!   (Redis flushed or restarted, a new period just begun) is never served.
//! - `…:build:{uuid}`: a rebuild in progress, renamed over the set when complete.
//!
//! **Updates.** After a batch commits, the consumer [`Live::mark`]s the (day, product) pairs it
//! changed, and after a fold ([`crate::fold`]) the folder marks the weeks and months it changed;
//! this instance's refresher reads those products' scores back from PostgreSQL (the
//! truth, so a write that Redis lost heals on the next one) and sets them with `ZADD`. It reads
//! them again two seconds later, which repairs the one reordering it cannot prevent: another
//! collector's older `ZADD` for the same product landing after this one's newer one.
//!
//! **Rebuilds.** At start, when a set's `ready` marker is missing, when the node serving the set
//! answers with a new `run_id` (it restarted, possibly from an old snapshot, or a replica took
//! over from a failed master and may lack the master's last writes), and after an update
//! failed, the set is rebuilt whole from PostgreSQL. The refresher checks once a second, each
//! set with one script on the node that holds it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{NaiveDate, Utc};
use chrono_tz::Tz;
use commerce_cache::Cache;
use commerce_db::Pool;
use diesel::sql_types::{Array, BigInt, Double};
use diesel_async::RunQueryDsl;
use tokio::sync::{Notify, watch};

use super::{Period, Ranking, Weights, score_sql, scored_query};

/// How often the refresher checks that every live set is there and complete.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// When a refreshed product is read again (see the module documentation).
const SECOND_PASS_AFTER: Duration = Duration::from_secs(2);
/// A live read slower than this is abandoned for the snapshot (Redis answers in well under a
/// millisecond when healthy).
const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// After a failed Redis read, reads go straight to PostgreSQL for this long.
const READ_BACKOFF: Duration = Duration::from_secs(1);

/// Members per `ZADD` command in a rebuild.
const CHUNK: usize = 1000;

/// Handle to the live rankings. Cheap to clone.
#[derive(Clone)]
pub struct Live(Arc<Inner>);

struct Inner {
    cache: Cache,
    /// Connections for reads (`RANKING_REDIS_CONNECTIONS`), taken in turn.
    readers: Vec<Cache>,
    next_reader: AtomicUsize,
    /// Each ranking's keys, formatted once.
    keys: RwLock<HashMap<Ranking, Arc<Keys>>>,
    /// When each set was last seen ready, and its size then.
    markers: RwLock<HashMap<Ranking, (Instant, i64)>>,
    /// How long a set seen ready (and its size) is trusted without asking again: as long as a
    /// response is reused (`RANKING_CACHE_TTL_MS`), so no answer is staler than a reused
    /// response could be.
    marker_ttl: Duration,
    db: Pool,
    weights: Weights,
    time_zone: Tz,
    dirty: Mutex<BTreeSet<(Ranking, i64)>>,
    wake: Notify,
    /// Set when an update failed (the sets may miss it) or the sets were invalidated: rebuild
    /// them when Redis answers.
    stale: AtomicBool,
    started: Instant,
    /// Reads skip Redis until this many milliseconds after `started`.
    reads_paused_until: AtomicU64,
}

/// A page of a live ranking.
pub struct LivePage {
    /// (product id, score), best first.
    pub entries: Vec<(i64, f64)>,
    pub total: i64,
}

/// A product's place in a live ranking.
pub struct LiveRank {
    /// 1-based; `None` when the product has no figures in the period.
    pub rank: Option<i64>,
    pub score: f64,
    pub total: i64,
}

/// A ranking's Redis keys.
struct Keys {
    set: String,
    ready: String,
}

impl Live {
    /// Live rankings in `cache`, read over `read_connections` connections of their own,
    /// trusting a set seen ready for `marker_ttl`.
    pub fn new(
        cache: Cache,
        db: Pool,
        weights: Weights,
        time_zone: Tz,
        read_connections: usize,
        marker_ttl: Duration,
    ) -> Self {
        Self(Arc::new(Inner {
            marker_ttl,
            // Connections of their own, so reads never queue behind the refresher's pipelines
            // (see `read` for what happens after a failover).
            readers: cache.pool(read_connections),
            next_reader: AtomicUsize::new(0),
            keys: RwLock::new(HashMap::new()),
            markers: RwLock::new(HashMap::new()),
            cache,
            db,
            weights,
            time_zone,
            dirty: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
            stale: AtomicBool::new(false),
            started: Instant::now(),
            reads_paused_until: AtomicU64::new(0),
        }))
    }

    /// Today, in the business time zone.
    pub fn today(&self) -> NaiveDate {
        super::business_date(Utc::now(), self.0.time_zone)
    }

    /// Queues the rankings the daily figures move, of the (day, product) pairs a committed
    /// batch changed, for the refresher: the day, the three days ending today, and the best
    /// sellers (whose all-time figures a read sums from the folded totals and the unfolded day
    /// rows, so they move with the batch, not with the fold).
    pub fn mark(&self, touched: &BTreeSet<(NaiveDate, i64)>) {
        let today = self.today();
        let window = Ranking::of(Period::ThreeDay, today);
        let best = Ranking::of(Period::BestSellers, today);
        self.queue(touched.iter().flat_map(|&(day, product)| {
            let in_window = day >= window.start && day <= today;
            [
                Some((Ranking::of(Period::Daily, day), product)),
                in_window.then_some((window, product)),
                Some((best, product)),
            ]
            .into_iter()
            .flatten()
        }));
    }

    /// Queues the week and month rankings of the (day, product) pairs a fold carried into them.
    pub fn mark_folded(&self, folded: &BTreeSet<(NaiveDate, i64)>) {
        self.queue(folded.iter().flat_map(|&(day, product)| {
            [Period::Weekly, Period::Monthly].map(|period| (Ranking::of(period, day), product))
        }));
    }

    fn queue(&self, changed: impl Iterator<Item = (Ranking, i64)>) {
        let mut dirty = self.0.dirty.lock().expect("lock poisoned");
        let before = dirty.len();
        dirty.extend(changed);
        if dirty.len() > before {
            drop(dirty);
            self.0.wake.notify_one();
        }
    }

    /// Has the refresher rebuild every current set at its next check (after a change that
    /// moves many scores at once, such as the day's carry-over).
    pub fn invalidate(&self) {
        self.0.stale.store(true, Ordering::Relaxed);
    }

    /// The refresher: applies marked changes, repeats them once, and rebuilds missing or stale
    /// sets. Runs until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut second_pass: VecDeque<(Instant, BTreeSet<(Ranking, i64)>)> = VecDeque::new();
        let mut run_ids: HashMap<Ranking, String> = HashMap::new();
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = second_pass.front().map(|(at, _)| *at);
            tokio::select! {
                _ = self.0.wake.notified() => {
                    let dirty = std::mem::take(&mut *self.0.dirty.lock().expect("lock poisoned"));
                    if self.refresh(&dirty).await {
                        second_pass.push_back((Instant::now() + SECOND_PASS_AFTER, dirty));
                    }
                }
                _ = sleep_until(due) => {
                    if let Some((_, again)) = second_pass.pop_front() {
                        self.refresh(&again).await;
                    }
                }
                _ = check.tick() => {
                    if let Err(e) = self.check(&mut run_ids).await {
                        tracing::debug!(error = %format!("{e:#}"), "live ranking check failed");
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }

    /// Sets the current scores of `dirty`'s products in the live sets. False on failure.
    async fn refresh(&self, dirty: &BTreeSet<(Ranking, i64)>) -> bool {
        let started = Instant::now();
        let current = Ranking::current(self.today());
        let mut products: BTreeMap<Ranking, Vec<i64>> = BTreeMap::new();
        for (ranking, product) in dirty {
            if current.contains(ranking) {
                products.entry(*ranking).or_default().push(*product);
            }
        }
        if products.is_empty() {
            return true;
        }
        let result = async {
            let mut conn = self.0.db.get().await?;
            // One pipeline per ranking (its own slot in a cluster), all in flight at once.
            let mut pipes = Vec::with_capacity(products.len());
            for (ranking, ids) in &products {
                let scores = scores(&mut conn, *ranking, self.0.weights, Some(ids)).await?;
                let mut pipe = redis::pipe();
                add_members(&mut pipe, &self.key(*ranking), &scores);
                // A product no longer ranked (a best seller whose sales were all cancelled).
                let ranked: BTreeSet<i64> = scores.iter().map(|(id, _)| *id).collect();
                let gone: Vec<String> = ids
                    .iter()
                    .filter(|id| !ranked.contains(id))
                    .map(|id| encode(*id))
                    .collect();
                if !gone.is_empty() {
                    pipe.zrem(self.key(*ranking), gone).ignore();
                }
                expire(&mut pipe, &self.key(*ranking), *ranking, self.today());
                pipes.push(pipe);
            }
            let redis = self.0.cache.conn().await?;
            futures::future::try_join_all(pipes.into_iter().map(|pipe| {
                let mut redis = redis.clone();
                async move { pipe.query_async::<()>(&mut redis).await }
            }))
            .await?;
            anyhow::Ok(())
        }
        .await;
        metrics::histogram!("ranking_live_refresh_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => true,
            Err(e) => {
                metrics::counter!("ranking_live_refresh_failures_total").increment(1);
                tracing::debug!(error = %format!("{e:#}"), "could not update the live rankings");
                self.0.stale.store(true, Ordering::Relaxed);
                false
            }
        }
    }

    /// Rebuilds every current set that is missing, incomplete or possibly stale. `run_ids`
    /// holds, per set, the `run_id` of the node that served it at the last check.
    async fn check(&self, run_ids: &mut HashMap<Ranking, String>) -> anyhow::Result<()> {
        let current = Ranking::current(self.today());
        let mut redis = self.0.cache.conn().await?;
        let first = run_ids.is_empty();
        let stale = self.0.stale.swap(false, Ordering::Relaxed);
        run_ids.retain(|ranking, _| current.contains(ranking));
        for ranking in current {
            let checked: anyhow::Result<(bool, String)> = CHECK
                .key(&self.keys(ranking).ready)
                .invoke_async(&mut redis)
                .await
                .context("checking a live ranking");
            let (ready, run_id) = match checked {
                Ok(checked) => checked,
                Err(e) => {
                    self.0.stale.store(stale, Ordering::Relaxed);
                    return Err(e);
                }
            };
            let restarted = run_ids.get(&ranking).is_some_and(|seen| *seen != run_id);
            let reason = if first {
                Some("start")
            } else if restarted {
                Some("redis_restarted")
            } else if stale {
                Some("invalidated")
            } else if !ready {
                Some("missing")
            } else {
                None
            };
            if reason.is_some() {
                self.forget_markers();
            }
            if let Some(reason) = reason
                && let Err(e) = self.rebuild(ranking, reason).await
            {
                self.0.stale.store(true, Ordering::Relaxed);
                return Err(e);
            }
            run_ids.insert(ranking, run_id);
        }
        Ok(())
    }

    /// Rebuilds a ranking's set whole from PostgreSQL; returns the number of products.
    pub async fn rebuild(&self, ranking: Ranking, reason: &'static str) -> anyhow::Result<usize> {
        let scores = {
            let mut conn = self.0.db.get().await?;
            scores(&mut conn, ranking, self.0.weights, None).await?
        };
        let key = self.key(ranking);
        let ready = self.keys(ranking).ready.clone();
        let mut redis = self.0.cache.conn().await?;
        let mut install = redis::pipe();
        install.atomic();
        if scores.is_empty() {
            install.del(&key).ignore();
        } else {
            let building = format!("{key}:build:{}", uuid::Uuid::now_v7());
            let mut fill = redis::pipe();
            for chunk in scores.chunks(CHUNK) {
                add_members(&mut fill, &building, chunk);
            }
            fill.expire(&building, 600).ignore();
            let () = fill
                .query_async(&mut redis)
                .await
                .context("filling a live ranking")?;
            install.rename(&building, &key).ignore();
        }
        install.set(&ready, 1).ignore();
        expire(&mut install, &key, ranking, self.today());
        expire(&mut install, &ready, ranking, self.today());
        let () = install
            .query_async(&mut redis)
            .await
            .context("installing a live ranking")?;
        metrics::counter!("ranking_live_rebuilds_total", "reason" => reason).increment(1);
        tracing::info!(%ranking, products = scores.len(), reason, "live ranking rebuilt");
        Ok(scores.len())
    }

    /// A page of a live ranking, or `None` when the set is not ready to be served. One round
    /// trip: the page, and the ready marker and size unless seen in the last [``RANKING_CACHE_TTL_MS``].
    pub async fn page(
        &self,
        ranking: Ranking,
        offset: i64,
        size: i64,
    ) -> anyhow::Result<Option<LivePage>> {
        let keys = self.keys(ranking);
        let mut pipe = redis::pipe();
        pipe.zrange_withscores(&keys.set, offset as isize, (offset + size - 1) as isize);
        let (members, total): (Vec<(String, f64)>, i64) = match self.marker(ranking) {
            Some(total) => {
                let (members,): (Vec<(String, f64)>,) = self.read(pipe).await?;
                (members, total)
            }
            None => {
                pipe.exists(&keys.ready).zcard(&keys.set);
                let (members, ready, total): (Vec<(String, f64)>, bool, i64) =
                    self.read(pipe).await?;
                if !ready {
                    return Ok(None);
                }
                self.seen_ready(ranking, total);
                (members, total)
            }
        };
        let entries: Vec<(i64, f64)> = members
            .into_iter()
            .map(|(m, s)| Ok((decode(&m)?, 0.0 - s)))
            .collect::<anyhow::Result<_>>()?;
        // A size read up to `RANKING_CACHE_TTL_MS` ago can lag products added since.
        let total = if entries.is_empty() {
            total
        } else {
            total.max(offset + entries.len() as i64)
        };
        Ok(Some(LivePage { entries, total }))
    }

    /// A product's place in a live ranking, or `None` when the set is not ready to be served.
    /// One round trip: `ZRANK` and `ZSCORE`, and the ready marker and size unless seen in the
    /// last [``RANKING_CACHE_TTL_MS``].
    pub async fn rank(&self, ranking: Ranking, product: i64) -> anyhow::Result<Option<LiveRank>> {
        let keys = self.keys(ranking);
        let mut member = [0u8; 24];
        let member = encode_into(product, &mut member);
        let mut pipe = redis::pipe();
        pipe.zrank(&keys.set, member).zscore(&keys.set, member);
        let (rank, score, total): (Option<i64>, Option<f64>, i64) = match self.marker(ranking) {
            Some(total) => {
                let (rank, score) = self.read(pipe).await?;
                (rank, score, total)
            }
            None => {
                pipe.exists(&keys.ready).zcard(&keys.set);
                let (rank, score, ready, total): (Option<i64>, Option<f64>, bool, i64) =
                    self.read(pipe).await?;
                if !ready {
                    return Ok(None);
                }
                self.seen_ready(ranking, total);
                (rank, score, total)
            }
        };
        let rank = rank.map(|r| r + 1);
        Ok(Some(LiveRank {
            rank,
            score: score.map_or(0.0, |s| 0.0 - s),
            // A size read up to `RANKING_CACHE_TTL_MS` ago can lag products added since.
            total: total.max(rank.unwrap_or(0)),
        }))
    }

    /// The size of `ranking`'s set if it was seen ready less than [``RANKING_CACHE_TTL_MS``] ago.
    fn marker(&self, ranking: Ranking) -> Option<i64> {
        let markers = self.0.markers.read().expect("lock poisoned");
        let (at, total) = markers.get(&ranking)?;
        (at.elapsed() < self.0.marker_ttl).then_some(*total)
    }

    fn seen_ready(&self, ranking: Ranking, total: i64) {
        let mut markers = self.0.markers.write().expect("lock poisoned");
        if markers.len() > 64 {
            markers.clear();
        }
        markers.insert(ranking, (Instant::now(), total));
    }

    /// Forgets every set's ready marker (a rebuild or a failure may have changed them).
    fn forget_markers(&self) {
        self.0.markers.write().expect("lock poisoned").clear();
    }

    /// `ranking`'s keys, formatted on first use.
    fn keys(&self, ranking: Ranking) -> Arc<Keys> {
        if let Some(keys) = self.0.keys.read().expect("lock poisoned").get(&ranking) {
            return keys.clone();
        }
        let set = self.key(ranking);
        let keys = Arc::new(Keys {
            ready: format!("{set}:ready"),
            set,
        });
        let mut all = self.0.keys.write().expect("lock poisoned");
        if all.len() > 64 {
            all.clear();
        }
        all.insert(ranking, keys.clone());
        keys
    }

    /// Runs a read, unless a read failed less than [`READ_BACKOFF`] ago. A read that fails on
    /// its own connection is tried once more on the refresher's, which the refresher's checks
    /// keep repaired: a connection used only for reads learns of a Redis Cluster failover on a
    /// read. A read that fails there too or takes longer than [`READ_TIMEOUT`] in all (Redis
    /// stopped, or reconnecting) pauses reads, so an outage costs requests a branch, not a
    /// wait.
    async fn read<T: redis::FromRedisValue>(&self, pipe: redis::Pipeline) -> anyhow::Result<T> {
        let now = self.0.started.elapsed().as_millis() as u64;
        anyhow::ensure!(
            now >= AtomicU64::load(&self.0.reads_paused_until, Ordering::Relaxed),
            "Redis failed a moment ago"
        );
        let reader = self.0.next_reader.fetch_add(1, Ordering::Relaxed) % self.0.readers.len();
        let attempt = async {
            let own = async {
                let mut redis = self.0.readers[reader].conn().await?;
                anyhow::Ok(pipe.query_async::<T>(&mut redis).await?)
            };
            match own.await {
                Ok(value) => Ok(value),
                Err(_) => {
                    let mut redis = self.0.cache.conn().await?;
                    anyhow::Ok(pipe.query_async::<T>(&mut redis).await?)
                }
            }
        };
        match tokio::time::timeout(READ_TIMEOUT, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                commerce_cache::count_error("ranking_read");
                self.pause_reads();
                Err(e.context("reading a live ranking"))
            }
            Err(_) => {
                commerce_cache::count_error("ranking_read");
                self.pause_reads();
                anyhow::bail!("Redis did not answer within {READ_TIMEOUT:?}")
            }
        }
    }

    fn pause_reads(&self) {
        self.forget_markers();
        let until = self.0.started.elapsed() + READ_BACKOFF;
        self.0
            .reads_paused_until
            .store(until.as_millis() as u64, Ordering::Relaxed);
    }

    fn key(&self, ranking: Ranking) -> String {
        key(&self.0.cache, ranking)
    }
}

/// Whether a set's `ready` marker (KEYS[1]) is there, and the `run_id` of the node that holds
/// it: runs on that node, whether Redis is one server or a cluster.
static CHECK: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"local info = redis.call('INFO', 'server')
          return {redis.call('EXISTS', KEYS[1]), string.match(info, 'run_id:(%w+)')}",
    )
});

/// The sorted set of `ranking` (its hash tag is the ranking: `{daily:2026-12-02}`).
pub fn key(cache: &Cache, ranking: Ranking) -> String {
    cache.key(&format!("ranking:{{{ranking}}}"))
}

/// A ranking's scores from PostgreSQL, for `products` or for all of its products.
async fn scores(
    conn: &mut diesel_async::AsyncPgConnection,
    ranking: Ranking,
    weights: Weights,
    products: Option<&[i64]>,
) -> anyhow::Result<Vec<(i64, f64)>> {
    #[derive(diesel::QueryableByName)]
    struct Scored {
        #[diesel(sql_type = BigInt)]
        product_id: i64,
        #[diesel(sql_type = Double)]
        score: f64,
    }
    let filter = products.is_some().then_some("ANY($5)");
    let query = scored_query(score_sql(ranking.period, filter), ranking, weights);
    let rows: Vec<Scored> = match products {
        Some(ids) => query.bind::<Array<BigInt>, _>(ids).load(conn).await?,
        None => query.load(conn).await?,
    };
    Ok(rows.into_iter().map(|s| (s.product_id, s.score)).collect())
}

fn add_members(pipe: &mut redis::Pipeline, key: &str, scores: &[(i64, f64)]) {
    if scores.is_empty() {
        return;
    }
    let members: Vec<(f64, String)> = scores
        .iter()
        .map(|(product, score)| (0.0 - score, encode(*product)))
        .collect();
    pipe.zadd_multiple(key, &members).ignore();
}

/// Keeps a set two days past its period's end (the best sellers' for good: a rebuild renames
/// its build key, whose expiry `RENAME` keeps, over the set, so that expiry is removed).
fn expire(pipe: &mut redis::Pipeline, key: &str, ranking: Ranking, today: NaiveDate) {
    if ranking.period == Period::BestSellers {
        pipe.persist(key).ignore();
        return;
    }
    let days = (ranking.end() - today).num_days().max(0) + 2;
    pipe.expire(key, days * 24 * 3600).ignore();
}

/// A product id as a member whose byte order is numeric order.
fn encode(product: i64) -> String {
    format!("{product:019}")
}

/// [`encode`] into `buf`, without allocating.
fn encode_into(product: i64, buf: &mut [u8; 24]) -> &[u8] {
    use std::io::Write as _;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    write!(cursor, "{product:019}").expect("an i64 fits in 24 bytes");
    let len = cursor.position() as usize;
    &buf[..len]
}

fn decode(member: &str) -> anyhow::Result<i64> {
    member
        .parse()
        .with_context(|| format!("a live ranking member is not a product id: {member:?}"))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_encode_alike_on_the_heap_and_on_the_stack() {
        for product in [0, 7, 1_234_567, i64::MAX, -5, i64::MIN] {
            let mut buf = [0u8; 24];
            assert_eq!(encode_into(product, &mut buf), encode(product).as_bytes());
        }
    }

    #[test]
    fn members_sort_as_numbers() {
        let mut members = [encode(10), encode(9), encode(100), encode(1)];
        members.sort();
        let ids: Vec<i64> = members.iter().map(|m| decode(m).unwrap()).collect();
        assert_eq!(ids, [1, 9, 10, 100]);
    }
}
