//! Ended sessions, known to every instance within a second, with no round trip per request.
//!
//! An instance that ends a session (logout, logout everywhere, an admin, a reused refresh
//! token: `domain::sessions`) commits it in PostgreSQL, remembers it at once, and adds it to a
//! Redis sorted set (`<prefix>sessions:ended`, scored by when it ended). Every instance polls
//! that set every [`POLL`] for what ended since it last looked (with an overlap, so an
//! announcement that arrived late is still read) into an in-process set, which a request checks
//! with a local lookup. When Redis does not answer within [`REDIS_WAIT`], the poll reads the
//! ended sessions from PostgreSQL instead; and every [`SWEEP`] it reads them from PostgreSQL
//! anyway, so an announcement Redis lost is found there. Entries are scored by the database's
//! time of the end, and a poll never reads from later than its own clock, so a fast clock on
//! one instance moves nobody's cursor past the others' announcements. While neither source has
//! answered for a second (or before the first answer), the set is not trusted: a request with a
//! session asks PostgreSQL itself ([`Revocations::fresh`]). An ended session is remembered for as long as its
//! access tokens can live (their lifetime plus the verifier's leeway), then forgotten: its
//! tokens have expired by then.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use commerce_cache::Cache;
use commerce_db::Pool;
use tokio::sync::watch;
use uuid::Uuid;

/// How often each instance asks Redis what ended.
pub const POLL: Duration = Duration::from_millis(250);
/// How often each instance asks PostgreSQL, whatever Redis says.
pub const SWEEP: Duration = Duration::from_secs(5);
/// How long a poll waits for Redis before it asks PostgreSQL.
pub const REDIS_WAIT: Duration = Duration::from_millis(200);
/// How old the last answer may be for the set to be trusted.
const TRUSTED_FOR: Duration = Duration::from_secs(1);
/// How far back each look reaches before the last one: announcements may arrive out of order.
const OVERLAP: chrono::Duration = chrono::Duration::seconds(10);

pub struct Revocations {
    /// Session → when it ended.
    ended: RwLock<HashMap<Uuid, DateTime<Utc>>>,
    cache: Cache,
    db: Pool,
    /// How long an ended session is remembered: the access tokens' lifetime and leeway.
    keep: chrono::Duration,
    /// When Redis or PostgreSQL last answered a poll.
    synced: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Revocations {
    pub fn new(cache: Cache, db: Pool, access_ttl_seconds: i64) -> Self {
        Self {
            ended: RwLock::default(),
            cache,
            db,
            keep: chrono::Duration::seconds(access_ttl_seconds + 60),
            synced: std::sync::Mutex::new(None),
        }
    }

    /// Whether the set is current (a poll was answered within the last second): otherwise a
    /// request with a session must ask PostgreSQL.
    pub fn fresh(&self) -> bool {
        self.synced
            .lock()
            .expect("lock poisoned")
            .is_some_and(|at| at.elapsed() < TRUSTED_FOR)
    }

    fn synced_now(&self) {
        *self.synced.lock().expect("lock poisoned") = Some(std::time::Instant::now());
    }

    fn key(&self) -> String {
        self.cache.key("sessions:ended")
    }

    /// Whether `session` has ended (as this instance knows, at most a second late).
    pub fn has_ended(&self, session: &Uuid) -> bool {
        self.ended
            .read()
            .expect("lock poisoned")
            .contains_key(session)
    }

    fn remember(&self, ended: impl IntoIterator<Item = (Uuid, DateTime<Utc>)>) {
        let mut map = self.ended.write().expect("lock poisoned");
        for (session, at) in ended {
            map.insert(session, at);
        }
    }

    /// After sessions' ends were committed (each with the database's time of its end):
    /// remembered here at once and announced to the other instances. An announcement Redis does
    /// not take is found in PostgreSQL by their sweeps.
    pub async fn announce(&self, sessions: &[(Uuid, DateTime<Utc>)]) {
        if sessions.is_empty() {
            return;
        }
        self.remember(sessions.iter().copied());
        let mut command = redis::cmd("ZADD");
        command.arg(self.key());
        for (session, at) in sessions {
            command.arg(at.timestamp_millis()).arg(session.to_string());
        }
        let added = async {
            let mut conn = self.cache.conn().await?;
            conn.each::<i64>(vec![command]).await?;
            anyhow::Ok(())
        };
        if let Err(e) = added.await {
            metrics::counter!("session_revocations_unannounced_total").increment(1);
            tracing::warn!(error = %e, "an ended session was not announced in Redis; other instances find it in the database within {} s", SWEEP.as_secs());
        }
    }

    /// What ended since `since`, from Redis.
    async fn read_redis(&self, since: DateTime<Utc>) -> anyhow::Result<Vec<(Uuid, DateTime<Utc>)>> {
        let mut conn = self.cache.conn().await?;
        let mut read = redis::cmd("ZRANGEBYSCORE");
        read.arg(self.key())
            .arg(since.timestamp_millis())
            .arg("+inf")
            .arg("WITHSCORES");
        let mut prune = redis::cmd("ZREMRANGEBYSCORE");
        prune
            .arg(self.key())
            .arg("-inf")
            .arg(format!("({}", (Utc::now() - self.keep).timestamp_millis()));
        let mut replies = conn.each::<redis::Value>(vec![read, prune]).await?;
        let entries: Vec<(String, f64)> = redis::from_redis_value(replies.swap_remove(0))?;
        Ok(entries
            .into_iter()
            .filter_map(|(member, score)| {
                let at = DateTime::from_timestamp_millis(score as i64)?;
                Some((member.parse().ok()?, at))
            })
            .collect())
    }

    /// What ended since `since`, from PostgreSQL.
    async fn read_database(
        &self,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Vec<(Uuid, DateTime<Utc>)>> {
        use diesel::sql_types::{Timestamptz, Uuid as SqlUuid};
        use diesel_async::RunQueryDsl as _;
        #[derive(diesel::QueryableByName)]
        struct Ended {
            #[diesel(sql_type = SqlUuid)]
            id: Uuid,
            #[diesel(sql_type = Timestamptz)]
            revoked_at: DateTime<Utc>,
        }
        let mut conn = self.db.get().await?;
        let rows: Vec<Ended> = diesel::sql_query(
            "SELECT id, revoked_at FROM auth_sessions WHERE revoked_at > $1 ORDER BY revoked_at",
        )
        .bind::<Timestamptz, _>(since)
        .load(&mut conn)
        .await?;
        Ok(rows.into_iter().map(|r| (r.id, r.revoked_at)).collect())
    }

    fn forget_old(&self) {
        let horizon = Utc::now() - self.keep;
        self.ended
            .write()
            .expect("lock poisoned")
            .retain(|_, at| *at > horizon);
    }

    /// Keeps this instance's set current until `stop` turns true.
    pub async fn watch(&self, mut stop: watch::Receiver<bool>) {
        // What ended within the tokens' lifetime before this instance started.
        let mut redis_since = Utc::now() - self.keep;
        let mut database_since = redis_since;
        let mut last_sweep: Option<tokio::time::Instant> = None;
        let mut ticks = tokio::time::interval(POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let read = tokio::time::timeout(
                REDIS_WAIT,
                self.read_redis(redis_since.min(Utc::now()) - OVERLAP),
            );
            let redis_ok = match read.await {
                Ok(Ok(ended)) => {
                    self.synced_now();
                    if let Some(latest) = ended.iter().map(|(_, at)| *at).max() {
                        redis_since = redis_since.max(latest);
                    }
                    self.remember(ended);
                    true
                }
                _ => false,
            };
            let sweep_due = last_sweep.is_none_or(|at| at.elapsed() >= SWEEP);
            if !redis_ok || sweep_due {
                match self
                    .read_database(database_since.min(Utc::now()) - OVERLAP)
                    .await
                {
                    Ok(ended) => {
                        self.synced_now();
                        if let Some(latest) = ended.iter().map(|(_, at)| *at).max() {
                            database_since = database_since.max(latest);
                        }
                        self.remember(ended);
                        last_sweep = Some(tokio::time::Instant::now());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ended sessions could be read from neither Redis nor PostgreSQL");
                    }
                }
                self.forget_old();
            }
            metrics::gauge!("sessions_ended_known")
                .set(self.ended.read().expect("lock poisoned").len() as f64);
        }
    }
}
