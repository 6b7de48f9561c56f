//! Wishlist alerts: a customer is told by email, once, when a product on their wishlist comes
//! back in stock, and once shortly before a limited drop's sale window opens.
//!
//! Three steps, each safe with any number of instances running them and any of them crashing:
//!
//! 1. **Decided** where it happens. A restock is recorded by the database itself: the trigger
//!    `products_restocked` fires on any update that takes a product's stock from none to some (a
//!    partner's or admin's edit, a cancellation, a failed payment, a return), inside that
//!    transaction, and records an *occasion* if anyone is waiting. A drop's occasion is recorded by
//!    the planner once the window opens within [`AlertSettings::drop_lead`], unique per product
//!    and window, so every instance may insert it and one row results.
//! 2. **Fanned out** by the planner, a chunk per transaction (the occasion's row locked, `SKIP
//!    LOCKED`, so instances fan out different occasions): one alert per subscriber, unique per
//!    occasion and customer, numbered in the order customers subscribed. Customers who subscribed
//!    after a restock are not told of it; a drop also tells those who subscribe before its
//!    window opens, and a pre-sale alert not sent by then is withdrawn. A customer told of a
//!    restock within
//!    [`AlertSettings::restock_quiet`] is not told of the next one (stock that flickers through
//!    cancellations and sales sends one message, not one per flicker).
//! 3. **Sent** by the sender, on the leased-work runner ([`commerce_db::worker`]): due alerts are
//!    claimed in queue order with a lease, paced to the send rate shared by every instance (a
//!    schedule in one row, [`claim`]), and each is marked *sending* once the server has agreed
//!    to take it (after DATA) and just before it is handed over (the mark extends the lease over
//!    the hand-over), and *sent* when the server accepts it. A refusal is retried with backoff,
//!    then dead-lettered (`FAILED`). A sender that dies while handing a message over leaves the
//!    alert marked sending: whoever claims it next cannot know whether the server has the
//!    message, so it is dead-lettered as `UNCONFIRMED` rather than sent again. Each alert is
//!    therefore delivered at most once; an admin lists the dead letters and sends one again.
//!
//! When a restock brings back fewer units than there are subscribers, every subscriber is still
//! told, and the message says so: first come, first served.
//!
//! Metrics: `wishlist_alerts_total{result}` ([`AlertAttempt`]), `wishlist_alerts_queued_total{kind}`,
//! and the gauges `wishlist_alerts_pending`, `wishlist_alerts_dead` and
//! `wishlist_alerts_oldest_unsent_seconds` (an occasion not yet fanned out counts as unsent; a
//! drop's only until its first chunk: it stays open for late subscribers until the sale).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use commerce_db::Pool;
use commerce_db::worker::{self, LeasedWork, Schedule};
use diesel::sql_types::{BigInt, Bool, Double, Integer, Nullable, Text, Timestamptz};
use diesel::{OptionalExtension as _, QueryableByName};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::domain::{Error, Missing, Result};
use crate::infra::limits::RateSpec;
use crate::infra::mail::{Mailer, SendError, SmtpSettings};

commerce_enums::text_enum! {
    sql, schema;
    /// `wishlist_occasions.kind`: what customers are told of.
    pub enum OccasionKind {
        /// Back in stock.
        Restock => "RESTOCK",
        /// A limited drop's sale window opens soon.
        Drop => "DROP",
    }
}

commerce_enums::text_enum! {
    sql, schema;
    /// `wishlist_alerts.status`.
    pub enum AlertStatus {
        /// Waiting to be sent (or to be sent again).
        Queued => "QUEUED",
        /// The SMTP server accepted it.
        Sent => "SENT",
        /// Refused by the server for good, or too many times: a dead letter.
        Failed => "FAILED",
        /// Handed to the server by a sender that stopped before the answer: it may have been
        /// delivered, so it is not sent again unless an admin says so. A dead letter.
        Unconfirmed => "UNCONFIRMED",
        /// The customer took the product off their wishlist before it was sent.
        Withdrawn => "WITHDRAWN",
    }
}

commerce_enums::text_enum! {
    /// What one claimed alert came to (`wishlist_alerts_total{result}`).
    pub enum AlertAttempt {
        Sent => "sent",
        /// Refused for now; sent again after a backoff.
        Retried => "retried",
        /// Dead-lettered as `FAILED`.
        Failed => "failed",
        /// Dead-lettered as `UNCONFIRMED`.
        Unconfirmed => "unconfirmed",
        Withdrawn => "withdrawn",
        /// Another instance holds it now (this claim ran out first).
        LostClaim => "lost_claim",
        Error => "error",
    }
}

impl worker::Outcome for AlertAttempt {
    fn as_str(self) -> &'static str {
        AlertAttempt::as_str(self)
    }
    fn error() -> Self {
        AlertAttempt::Error
    }
}

/// How alerts are planned and sent. Not `Debug`: it holds the relay's password.
#[derive(Clone)]
pub struct AlertSettings {
    /// Run the planner and the sender in this instance.
    pub enabled: bool,
    /// How often the planner looks for occasions, and the sender for due alerts when idle.
    pub interval: Duration,
    /// How long before a drop's window opens its subscribers are told.
    pub drop_lead: Duration,
    /// A customer told of a restock is not told of another one within this.
    pub restock_quiet: Duration,
    /// Messages per period, across every instance.
    pub send_rate: RateSpec,
    /// SMTP connections (messages in flight) per instance.
    pub connections: usize,
    /// Attempts before a refused alert is dead-lettered.
    pub max_attempts: i32,
    /// The wait after the first refusal, doubling per attempt up to [`MAX_BACKOFF`].
    pub retry_base: Duration,
    /// The sender of every message.
    pub from: Mailbox,
    /// The product page, with `{id}` for the product's id.
    pub product_url: String,
    /// Drop times are written in this zone.
    pub time_zone: chrono_tz::Tz,
    pub smtp: SmtpSettings,
}

/// The longest wait between two attempts of an alert.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Subscribers given alerts per fan-out transaction.
const CHUNK: i64 = 5_000;
/// Chunks one planner pass fans out at most, before it reports and sleeps.
const CHUNKS_PER_PASS: usize = 40;
/// A claim is refused while the shared schedule is booked further ahead than this (many
/// instances): the sends it would book could not start before its lease ran out.
const MAX_BOOKED_AHEAD: Duration = Duration::from_secs(2);
/// What `sending_since` left set by a stopped sender means.
const INTERRUPTED: &str = "the sender stopped while handing this alert to the SMTP server; it may have been delivered, so it was not sent again";

// --- planning ---------------------------------------------------------------------------------

/// Runs planner passes until `stop` turns true: drops' occasions, then fan-out, then the backlog
/// gauges.
pub async fn run_planner(db: Pool, settings: AlertSettings, mut stop: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        let pause = match plan(&db, &settings).await {
            Ok(()) => {
                failures = 0;
                settings.interval
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let pause = worker::backoff(settings.interval, failures);
                tracing::warn!(error = %e, failures, retry_in = ?pause, "wishlist alert planning failed");
                pause
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One planner pass.
pub async fn plan(db: &Pool, settings: &AlertSettings) -> Result<()> {
    let mut conn = db.get().await?;
    plan_drops(&mut conn, settings.drop_lead).await?;
    // Each occasion with work in turn: one that needs more chunks stays first.
    let mut after = 0;
    for _ in 0..CHUNKS_PER_PASS {
        match fan_out_chunk(&mut conn, settings.restock_quiet, after).await? {
            None => break,
            Some((occasion, seen)) if seen < CHUNK => after = occasion,
            Some(_) => {}
        }
    }
    report_backlog(&mut conn).await
}

/// Records the pre-sale occasion of every drop whose window opens within `lead` and that
/// someone is waiting for (once per product and window: a moved window is a new occasion).
pub async fn plan_drops(conn: &mut AsyncPgConnection, lead: Duration) -> Result<usize> {
    Ok(diesel::sql_query(
        "INSERT INTO wishlist_occasions (product_id, kind, opens_at)
         SELECT p.id, 'DROP', p.sale_starts_at FROM products p
          WHERE p.sale_starts_at > now()
            AND p.sale_starts_at <= now() + $1 * interval '1 millisecond'
            AND EXISTS (SELECT 1 FROM wishlist_items w WHERE w.product_id = p.id)
         ON CONFLICT (product_id, opens_at) WHERE kind = 'DROP' DO NOTHING",
    )
    .bind::<BigInt, _>(lead.as_millis() as i64)
    .execute(conn)
    .await?)
}

#[derive(QueryableByName)]
struct Pending {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = Text)]
    kind: OccasionKind,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    /// A drop whose window has opened: no one else is told.
    #[diesel(sql_type = Bool)]
    opened: bool,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    cursor_subscribed_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<BigInt>)]
    cursor_user_id: Option<i64>,
}

#[derive(QueryableByName)]
struct Chunk {
    #[diesel(sql_type = BigInt)]
    seen: i64,
    #[diesel(sql_type = BigInt)]
    queued: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<BigInt>)]
    last_user: Option<i64>,
}

/// Fans one chunk of the first occasion after `after` that has work out, in one transaction.
/// Returns the occasion and how many subscribers the chunk saw (a full [`CHUNK`]: more to
/// come), or `None` when no occasion has work.
///
/// A restock tells those who had subscribed when it happened; a drop also tells those who
/// subscribe after its occasion and before its window opens (each pass picks them up), so it
/// stays open until then.
pub async fn fan_out_chunk(
    conn: &mut AsyncPgConnection,
    quiet: Duration,
    after: i64,
) -> Result<Option<(i64, i64)>> {
    conn.transaction::<_, Error, _>(async |conn| {
        let Some(occasion) = diesel::sql_query(
            "SELECT id, product_id, kind, created_at, cursor_subscribed_at, cursor_user_id,
                    COALESCE(opens_at <= now(), false) AS opened
               FROM wishlist_occasions WHERE fanned_out_at IS NULL AND id > $1
              ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind::<BigInt, _>(after)
        .get_result::<Pending>(conn)
        .await
        .optional()?
        else {
            return Ok(None);
        };
        // Who is told: those subscribed by the restock; for a drop, by now.
        let cutoff = match occasion.kind {
            OccasionKind::Restock => Some(occasion.created_at),
            OccasionKind::Drop => None,
        };
        if occasion.cursor_user_id.is_none() {
            diesel::sql_query(
                "UPDATE wishlist_occasions SET subscribers =
                    (SELECT count(*) FROM wishlist_items WHERE product_id = $2 AND created_at <= $3)
                  WHERE id = $1",
            )
            .bind::<BigInt, _>(occasion.id)
            .bind::<BigInt, _>(occasion.product_id)
            .bind::<Timestamptz, _>(occasion.created_at)
            .execute(conn)
            .await?;
        }
        // Restocks skip (and mark) customers told of one within the quiet period.
        let told = match occasion.kind {
            OccasionKind::Restock => {
                "UPDATE wishlist_items w SET restock_alerted_at = now() FROM subs
                  WHERE w.product_id = $2 AND w.user_id = subs.user_id
                    AND (w.restock_alerted_at IS NULL
                         OR w.restock_alerted_at < now() - $7 * interval '1 millisecond')
                 RETURNING w.user_id, w.created_at"
            }
            OccasionKind::Drop => "SELECT user_id, created_at FROM subs WHERE $7 IS NOT NULL",
        };
        let chunk: Chunk = diesel::sql_query(format!(
            "WITH subs AS (
                 SELECT user_id, created_at FROM wishlist_items
                  WHERE product_id = $2 AND created_at <= COALESCE($3, now())
                    AND (created_at, user_id)
                        > (COALESCE($4, '-infinity'::timestamptz), COALESCE($5, 0))
                  ORDER BY created_at, user_id
                  LIMIT $6
             ), told AS ({told}), queued AS (
                 INSERT INTO wishlist_alerts (occasion_id, user_id, subscribed_at)
                 SELECT $1, user_id, created_at FROM told ORDER BY created_at, user_id
                 ON CONFLICT (occasion_id, user_id) DO NOTHING
                 RETURNING 1
             ), last AS (
                 SELECT created_at, user_id FROM subs ORDER BY created_at DESC, user_id DESC LIMIT 1
             )
             SELECT (SELECT count(*) FROM subs) AS seen, (SELECT count(*) FROM queued) AS queued,
                    (SELECT created_at FROM last) AS last_at, (SELECT user_id FROM last) AS last_user"
        ))
        .bind::<BigInt, _>(occasion.id)
        .bind::<BigInt, _>(occasion.product_id)
        .bind::<Nullable<Timestamptz>, _>(cutoff)
        .bind::<Nullable<Timestamptz>, _>(occasion.cursor_subscribed_at)
        .bind::<Nullable<BigInt>, _>(occasion.cursor_user_id)
        .bind::<BigInt, _>(CHUNK)
        .bind::<BigInt, _>(quiet.as_millis() as i64)
        .get_result(conn)
        .await?;
        diesel::sql_query(
            "UPDATE wishlist_occasions
                SET cursor_subscribed_at = COALESCE($2, cursor_subscribed_at),
                    cursor_user_id = COALESCE($3, cursor_user_id, 0),
                    fanned_out_at = CASE WHEN $4 THEN now() END
              WHERE id = $1",
        )
        .bind::<BigInt, _>(occasion.id)
        .bind::<Nullable<Timestamptz>, _>(chunk.last_at)
        .bind::<Nullable<BigInt>, _>(chunk.last_user)
        .bind::<Bool, _>(
            chunk.seen < CHUNK && (occasion.kind == OccasionKind::Restock || occasion.opened),
        )
        .execute(conn)
        .await?;
        metrics::counter!("wishlist_alerts_queued_total", "kind" => occasion.kind.as_str())
            .increment(chunk.queued as u64);
        Ok(Some((occasion.id, chunk.seen)))
    })
    .await
}

/// Sets the backlog gauges.
async fn report_backlog(conn: &mut AsyncPgConnection) -> Result<()> {
    #[derive(QueryableByName)]
    struct Backlog {
        #[diesel(sql_type = BigInt)]
        pending: i64,
        #[diesel(sql_type = BigInt)]
        dead: i64,
        #[diesel(sql_type = Double)]
        oldest: f64,
    }
    let b: Backlog = diesel::sql_query(
        "SELECT (SELECT count(*) FROM wishlist_alerts WHERE status = 'QUEUED') AS pending,
                (SELECT count(*) FROM wishlist_alerts WHERE status IN ('FAILED', 'UNCONFIRMED')) AS dead,
                COALESCE(EXTRACT(EPOCH FROM now() - LEAST(
                    (SELECT created_at FROM wishlist_alerts WHERE status = 'QUEUED' ORDER BY id LIMIT 1),
                    (SELECT created_at FROM wishlist_occasions
                      WHERE fanned_out_at IS NULL AND (kind = 'RESTOCK' OR cursor_user_id IS NULL)
                      ORDER BY id LIMIT 1)
                ))::float8, 0) AS oldest",
    )
    .get_result(conn)
    .await?;
    metrics::gauge!("wishlist_alerts_pending").set(b.pending as f64);
    metrics::gauge!("wishlist_alerts_dead").set(b.dead as f64);
    metrics::gauge!("wishlist_alerts_oldest_unsent_seconds").set(b.oldest.max(0.0));
    Ok(())
}

// --- sending ----------------------------------------------------------------------------------

/// An alert claimed for sending, with what its message says.
#[derive(QueryableByName, Debug)]
pub struct Due {
    #[diesel(sql_type = BigInt)]
    id: i64,
    /// The claim: when it ends.
    #[diesel(sql_type = Timestamptz)]
    next_attempt_at: DateTime<Utc>,
    /// Set: an earlier sender stopped while handing it over.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    sending_since: Option<DateTime<Utc>>,
    #[diesel(sql_type = Text)]
    email: String,
    #[diesel(sql_type = Text)]
    user_name: String,
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = Text)]
    product_name: String,
    #[diesel(sql_type = Text)]
    kind: OccasionKind,
    #[diesel(sql_type = Nullable<BigInt>)]
    units: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    subscribers: Option<i64>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    opens_at: Option<DateTime<Utc>>,
    /// Still on the customer's wishlist.
    #[diesel(sql_type = Bool)]
    wanted: bool,
    /// A pre-sale alert whose sale has opened: too late to be news.
    #[diesel(sql_type = Bool)]
    late: bool,
    /// Attempts before this one.
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

/// A claimed alert and when its turn under the send rate comes.
pub struct Claimed {
    due: Due,
    at: Option<Instant>,
}

/// The sender, as leased work.
pub struct Sender {
    pub db: Pool,
    pub mailer: Mailer,
    pub settings: AlertSettings,
}

impl LeasedWork for Sender {
    type Item = Claimed;
    type Outcome = AlertAttempt;
    type Error = Error;
    const NAME: &'static str = "wishlist alert";
    const METRIC: &'static str = "wishlist_alerts_total";

    async fn claim(&self, limit: i64) -> Result<Vec<Claimed>> {
        claim(self, limit).await
    }

    async fn process(&self, claimed: Claimed) -> Result<AlertAttempt> {
        send(self, claimed).await
    }

    fn span(&self, claimed: &Claimed) -> tracing::Span {
        tracing::info_span!("wishlist.alert", alert.id = claimed.due.id)
    }
}

/// Runs the sender until `stop` turns true.
pub async fn run_sender(db: Pool, settings: AlertSettings, stop: watch::Receiver<bool>) {
    let mailer = match Mailer::new(settings.smtp.clone()) {
        Ok(mailer) => mailer,
        Err(e) => {
            tracing::error!(error = %e, "wishlist alerts cannot be sent: the SMTP settings are unusable");
            return;
        }
    };
    let schedule = Schedule {
        interval: settings.interval,
        batch: batch_size(settings.send_rate),
        concurrency: settings.connections,
    };
    let sender = Arc::new(Sender {
        db,
        mailer,
        settings,
    });
    worker::run(sender.clone(), schedule, stop).await;
    sender.mailer.close().await;
}

/// About a second of sends at the rate (1..=200), or 200 when the rate is off.
pub fn batch_size(rate: RateSpec) -> i64 {
    match rate.interval() {
        Some(every) if !every.is_zero() => {
            (Duration::from_secs(1).as_nanos() / every.as_nanos()).clamp(1, 200) as i64
        }
        _ => 200,
    }
}

/// Claims up to `limit` due alerts in queue order and books their moments under the shared
/// send rate, in one transaction (the schedule's row locked, so instances book in turn).
async fn claim(sender: &Sender, limit: i64) -> Result<Vec<Claimed>> {
    #[derive(QueryableByName)]
    struct Booked {
        #[diesel(sql_type = Double)]
        ahead_ms: f64,
    }
    let every = sender.settings.send_rate.interval();
    let mut conn = sender.db.get().await?;
    let (due, ahead) = conn
        .transaction::<_, Error, _>(async |conn| {
            let ahead = match every {
                Some(_) => {
                    let booked: Booked = diesel::sql_query(
                        "SELECT EXTRACT(EPOCH FROM greatest(next_slot, now()) - now())::float8 * 1000
                                AS ahead_ms
                           FROM wishlist_alert_pace FOR UPDATE",
                    )
                    .get_result(conn)
                    .await?;
                    Duration::from_secs_f64(booked.ahead_ms.max(0.0) / 1000.0)
                }
                None => Duration::ZERO,
            };
            if ahead > MAX_BOOKED_AHEAD {
                return Ok((Vec::new(), ahead));
            }
            // The lease covers the wait for the last booked moment and a slow server.
            let lease = ahead
                + every.unwrap_or_default() * limit as u32
                + sender.settings.smtp.timeout * 6
                + Duration::from_secs(1);
            let due: Vec<Due> = diesel::sql_query(
                "WITH due AS (
                     SELECT id FROM wishlist_alerts
                      WHERE status = 'QUEUED' AND next_attempt_at <= now()
                      ORDER BY id LIMIT $2
                      FOR UPDATE SKIP LOCKED
                 ), claimed AS (
                     UPDATE wishlist_alerts a
                        SET next_attempt_at = now() + $1 * interval '1 millisecond'
                       FROM due WHERE a.id = due.id
                     RETURNING a.id, a.occasion_id, a.user_id, a.next_attempt_at, a.sending_since,
                               a.attempts
                 )
                 SELECT c.id, c.next_attempt_at, c.sending_since, c.attempts, u.email,
                        u.name AS user_name, (o.kind = 'DROP' AND o.opens_at <= now()) AS late,
                        p.id AS product_id, p.name AS product_name, o.kind, o.units,
                        o.subscribers, o.opens_at,
                        EXISTS (SELECT 1 FROM wishlist_items w
                                 WHERE w.user_id = c.user_id AND w.product_id = o.product_id)
                            AS wanted
                   FROM claimed c
                   JOIN users u ON u.id = c.user_id
                   JOIN wishlist_occasions o ON o.id = c.occasion_id
                   JOIN products p ON p.id = o.product_id
                  ORDER BY c.id",
            )
            .bind::<BigInt, _>(lease.as_millis() as i64)
            .bind::<BigInt, _>(limit)
            .load(conn)
            .await?;
            if let Some(every) = every
                && !due.is_empty()
            {
                diesel::sql_query(
                    "UPDATE wishlist_alert_pace
                        SET next_slot = greatest(next_slot, now()) + $1 * interval '1 microsecond'",
                )
                .bind::<BigInt, _>((every * due.len() as u32).as_micros() as i64)
                .execute(conn)
                .await?;
            }
            Ok((due, ahead))
        })
        .await?;
    // Booked from the transaction's start, counted from its end here: never early.
    let claimed_at = Instant::now();
    Ok(due
        .into_iter()
        .enumerate()
        .map(|(i, due)| Claimed {
            due,
            at: every.map(|every| claimed_at + ahead + every * i as u32),
        })
        .collect())
}

/// Sends one claimed alert, when its moment comes, and records what the server said.
async fn send(sender: &Sender, claimed: Claimed) -> Result<AlertAttempt> {
    if let Some(at) = claimed.at {
        tokio::time::sleep_until(at.into()).await;
    }
    let due = claimed.due;
    let claim = Held {
        lease: due.next_attempt_at,
        since: None,
    };
    let mut conn = sender.db.get().await?;
    if due.sending_since.is_some() {
        tracing::warn!(alert.id = due.id, "{INTERRUPTED}");
        return settle(&mut conn, due.id, claim, Settled::Unconfirmed(INTERRUPTED)).await;
    }
    if !due.wanted || due.late {
        return settle(&mut conn, due.id, claim, Settled::Withdrawn).await;
    }
    let message = match compose(&sender.settings, &due) {
        Ok(message) => message,
        Err(detail) => {
            return settle(&mut conn, due.id, claim, Settled::Failed(&detail)).await;
        }
    };
    // Not holding a pooled connection while the SMTP server takes its time.
    drop(conn);
    // The mark, set once the server has said it will take the message and just before it is
    // handed over: a crash from then on is visible to whoever claims the alert next. It also
    // extends the lease over the hand-over, so no other instance takes a live attempt over.
    let mut marked: Option<Held> = None;
    let hand_over = sender.settings.smtp.timeout * 2 + Duration::from_secs(30);
    let sent = sender
        .mailer
        .send_marked(message.envelope(), &message.formatted(), async || {
            match mark(sender, &due, hand_over).await {
                Ok(held) => {
                    marked = held;
                    marked.is_some()
                }
                Err(e) => {
                    tracing::warn!(alert.id = due.id, error = %e, "a wishlist alert could not be marked sending; not sent now");
                    false
                }
            }
        })
        .await;
    let attempts = due.attempts + 1;
    let settled = match &sent {
        Ok(()) => Settled::Sent,
        Err(SendError::Withheld) => return Ok(AlertAttempt::LostClaim),
        Err(SendError::NotDelivered {
            permanent: false,
            detail,
        }) if attempts < sender.settings.max_attempts => Settled::Retry {
            detail,
            after: backoff(sender.settings.retry_base, attempts),
        },
        Err(SendError::NotDelivered { detail, .. }) => Settled::Failed(detail),
        Err(SendError::Unknown(detail)) => Settled::Unconfirmed(detail),
    };
    if let Err(e) = &sent {
        tracing::warn!(alert.id = due.id, attempts, error = ?e, "a wishlist alert was not delivered");
    }
    let mut conn = sender.db.get().await?;
    settle(&mut conn, due.id, marked.unwrap_or(claim), settled).await
}

/// Marks a claimed alert sending and extends its lease over the hand-over, if the claim still
/// holds (it has not run out, and nobody took the alert over).
async fn mark(sender: &Sender, due: &Due, hand_over: Duration) -> Result<Option<Held>> {
    #[derive(QueryableByName)]
    struct Marked {
        #[diesel(sql_type = Timestamptz)]
        since: DateTime<Utc>,
        #[diesel(sql_type = Timestamptz)]
        lease: DateTime<Utc>,
    }
    let mut conn = sender.db.get().await?;
    let marked: Option<Marked> = diesel::sql_query(
        "UPDATE wishlist_alerts
            SET sending_since = clock_timestamp(), attempts = attempts + 1,
                next_attempt_at = clock_timestamp() + $3 * interval '1 millisecond'
          WHERE id = $1 AND status = 'QUEUED' AND next_attempt_at = $2
            AND next_attempt_at > clock_timestamp() AND sending_since IS NULL
      RETURNING sending_since AS since, next_attempt_at AS lease",
    )
    .bind::<BigInt, _>(due.id)
    .bind::<Timestamptz, _>(due.next_attempt_at)
    .bind::<BigInt, _>(hand_over.as_millis() as i64)
    .get_result(&mut conn)
    .await
    .optional()?;
    Ok(marked.map(|m| Held {
        lease: m.lease,
        since: Some(m.since),
    }))
}

/// What this sender holds an alert by: its lease, and the mark it set (none before the
/// hand-over).
#[derive(Clone, Copy)]
struct Held {
    lease: DateTime<Utc>,
    since: Option<DateTime<Utc>>,
}

/// How an attempt ends.
enum Settled<'a> {
    Sent,
    Retry { detail: &'a str, after: Duration },
    Failed(&'a str),
    Unconfirmed(&'a str),
    Withdrawn,
}

/// Records how an attempt ended, if this sender still holds the alert. An attempt that failed
/// before the hand-over (no mark) is counted here; a marked one was counted by its mark. A
/// message the server accepted is recorded sent even if the alert was taken over meanwhile: it
/// was delivered, whatever another instance decided.
async fn settle(
    conn: &mut AsyncPgConnection,
    id: i64,
    held: Held,
    settled: Settled<'_>,
) -> Result<AlertAttempt> {
    // Still this sender's: its lease, and the mark it set (if any).
    const HELD: &str = "id = $1 AND status = 'QUEUED' AND next_attempt_at = $2
                        AND sending_since IS NOT DISTINCT FROM $3";
    // An attempt that ended before any mark.
    const COUNTED: &str = "attempts = attempts + CASE WHEN $3 IS NULL THEN 1 ELSE 0 END";
    let query = |sql: String| {
        diesel::sql_query(sql)
            .bind::<BigInt, _>(id)
            .bind::<Timestamptz, _>(held.lease)
            .bind::<Nullable<Timestamptz>, _>(held.since)
    };
    let (changed, outcome) = match settled {
        // Committed without waiting for the WAL flush: a database crash can lose it, which
        // leaves the alert marked sending, so it is dead-lettered UNCONFIRMED and never sent
        // twice. (The mark before sending is committed durably: losing it could.)
        Settled::Sent => (
            conn.transaction::<_, Error, _>(async |conn| {
                diesel::sql_query("SET LOCAL synchronous_commit TO OFF")
                    .execute(conn)
                    .await?;
                Ok(diesel::sql_query(
                    "UPDATE wishlist_alerts SET status = 'SENT', sent_at = now(),
                            sending_since = NULL, last_error = NULL
                      WHERE id = $1 AND status IN ('QUEUED', 'UNCONFIRMED')",
                )
                .bind::<BigInt, _>(id)
                .execute(conn)
                .await?)
            })
            .await?,
            AlertAttempt::Sent,
        ),
        Settled::Retry { detail, after } => (
            query(format!(
                "UPDATE wishlist_alerts SET sending_since = NULL, last_error = $4, {COUNTED},
                        next_attempt_at = now() + $5 * interval '1 millisecond'
                  WHERE {HELD}"
            ))
            .bind::<Text, _>(detail)
            .bind::<BigInt, _>(after.as_millis() as i64)
            .execute(conn)
            .await?,
            AlertAttempt::Retried,
        ),
        Settled::Failed(detail) => (
            query(format!(
                "UPDATE wishlist_alerts
                    SET status = 'FAILED', sending_since = NULL, last_error = $4, {COUNTED}
                  WHERE {HELD}"
            ))
            .bind::<Text, _>(detail)
            .execute(conn)
            .await?,
            AlertAttempt::Failed,
        ),
        Settled::Unconfirmed(detail) => (
            // Claimed with an earlier sender's mark (`since` is None here: the row's mark is
            // that sender's), or this sender's own hand-over that got no answer.
            query(format!(
                "UPDATE wishlist_alerts
                    SET status = 'UNCONFIRMED', sending_since = NULL, last_error = $4
                  WHERE {}",
                if held.since.is_none() {
                    "id = $1 AND status = 'QUEUED' AND next_attempt_at = $2 AND $3 IS NULL"
                } else {
                    HELD
                }
            ))
            .bind::<Text, _>(detail)
            .execute(conn)
            .await?,
            AlertAttempt::Unconfirmed,
        ),
        Settled::Withdrawn => (
            query(format!(
                "UPDATE wishlist_alerts SET status = 'WITHDRAWN' WHERE {HELD}"
            ))
            .execute(conn)
            .await?,
            AlertAttempt::Withdrawn,
        ),
    };
    Ok(if changed == 1 {
        outcome
    } else {
        AlertAttempt::LostClaim
    })
}

/// The wait before attempt `attempts + 1`: the base doubled per attempt, at most
/// [`MAX_BACKOFF`].
pub fn backoff(base: Duration, attempts: i32) -> Duration {
    worker::doubling(base, attempts.max(0) as u32, MAX_BACKOFF)
}

/// The alert's message: to the customer, from the shop, with a Message-ID of its own (a
/// message sent again by an admin carries the same one, so mail systems can tell).
fn compose(settings: &AlertSettings, due: &Due) -> std::result::Result<lettre::Message, String> {
    let address = due
        .email
        .parse()
        .map_err(|_| "the customer's email address is not one an SMTP server takes".to_owned())?;
    let to = Mailbox::new(Some(due.user_name.clone()), address);
    let url = settings
        .product_url
        .replace("{id}", &due.product_id.to_string());
    let product = &due.product_name;
    let (subject, news) = match due.kind {
        OccasionKind::Restock => {
            let units = due.units.unwrap_or_default();
            let waiting = due.subscribers.unwrap_or_default();
            let mut news = format!("{product}, on your wishlist, is back in stock.");
            if units < waiting {
                let noun = if units == 1 { "unit" } else { "units" };
                news.push_str(&format!(
                    "\n\nOnly {units} {noun} came back and {waiting} customers are waiting for \
                     it: first come, first served."
                ));
            }
            (format!("Back in stock: {product}"), news)
        }
        OccasionKind::Drop => {
            let opens = due
                .opens_at
                .unwrap_or_default()
                .with_timezone(&settings.time_zone)
                .format("%Y-%m-%d %H:%M %Z");
            (
                format!("{product} goes on sale at {opens}"),
                format!("The sale of {product}, on your wishlist, opens at {opens}."),
            )
        }
    };
    let body = format!(
        "Hello {name},\n\n{news}\n\n{url}\n\n-- \nYou get this message because {product} is on \
         your wishlist. Remove it from your wishlist to hear no more about it.\n",
        name = due.user_name,
    );
    let domain = settings.from.email.domain().to_owned();
    lettre::Message::builder()
        .from(settings.from.clone())
        .to(to)
        .subject(subject)
        .message_id(Some(format!("<wishlist-alert-{}@{domain}>", due.id)))
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| format!("the message could not be built: {e}"))
}

// --- dead letters -----------------------------------------------------------------------------

/// An alert as an admin sees it.
#[derive(QueryableByName, Serialize, ToSchema, Debug)]
pub struct AlertView {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    pub user_id: i64,
    #[diesel(sql_type = BigInt)]
    pub product_id: i64,
    #[diesel(sql_type = Text)]
    pub kind: OccasionKind,
    #[diesel(sql_type = Text)]
    pub status: AlertStatus,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// Why the last attempt failed.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub sent_at: Option<DateTime<Utc>>,
}

const VIEW: &str = "SELECT a.id, a.user_id, o.product_id, o.kind, a.status, a.attempts,
                           a.last_error, a.created_at, a.sent_at
                      FROM wishlist_alerts a JOIN wishlist_occasions o ON o.id = a.occasion_id";

/// A page of dead letters (`FAILED` and `UNCONFIRMED`, or one of them), oldest first, and how
/// many there are.
pub async fn dead_letters(
    conn: &mut AsyncPgConnection,
    status: Option<AlertStatus>,
    page: i64,
    size: i64,
) -> Result<(Vec<AlertView>, i64)> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let statuses: Vec<&str> = match status {
        Some(s) => vec![s.as_str()],
        None => vec![
            AlertStatus::Failed.as_str(),
            AlertStatus::Unconfirmed.as_str(),
        ],
    };
    let total: Count =
        diesel::sql_query("SELECT count(*) AS n FROM wishlist_alerts WHERE status = ANY($1)")
            .bind::<diesel::sql_types::Array<Text>, _>(&statuses)
            .get_result(conn)
            .await?;
    let rows = diesel::sql_query(format!(
        "{VIEW} WHERE a.status = ANY($1) ORDER BY a.id LIMIT $2 OFFSET $3"
    ))
    .bind::<diesel::sql_types::Array<Text>, _>(&statuses)
    .bind::<BigInt, _>(size)
    .bind::<BigInt, _>(page * size)
    .load(conn)
    .await?;
    Ok((rows, total.n))
}

/// Queues a dead letter to be sent again now, with its attempts counted afresh. An
/// `UNCONFIRMED` alert may then reach the customer twice: the admin decides.
pub async fn retry(conn: &mut AsyncPgConnection, id: i64) -> Result<AlertView> {
    let changed = diesel::sql_query(
        "UPDATE wishlist_alerts SET status = 'QUEUED', attempts = 0, next_attempt_at = now(),
                sending_since = NULL
          WHERE id = $1 AND status IN ('FAILED', 'UNCONFIRMED')",
    )
    .bind::<BigInt, _>(id)
    .execute(conn)
    .await?;
    let view: Option<AlertView> = diesel::sql_query(format!("{VIEW} WHERE a.id = $1"))
        .bind::<BigInt, _>(id)
        .get_result(conn)
        .await
        .optional()?;
    match view {
        None => Err(Error::NotFound(Missing::WishlistAlert)),
        Some(_) if changed == 0 => Err(Error::NotDeadLetter),
        Some(view) => {
            tracing::info!(
                alert.id = id,
                "a dead-lettered wishlist alert was queued again by an admin"
            );
            Ok(view)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn a_batch_is_about_a_second_of_sends() {
        let per = |n: u32| RateSpec::per(NonZeroU32::new(n).unwrap(), Duration::from_secs(1));
        assert_eq!(batch_size(per(50)), 50);
        assert_eq!(batch_size(per(1)), 1);
        assert_eq!(batch_size(per(5000)), 200);
        assert_eq!(
            batch_size(RateSpec::per(
                NonZeroU32::new(60).unwrap(),
                Duration::from_secs(60)
            )),
            1
        );
        assert_eq!(batch_size(RateSpec::OFF), 200);
    }

    #[test]
    fn refusals_back_off_doubling_to_a_ceiling() {
        let base = Duration::from_secs(1);
        assert_eq!(backoff(base, 1), Duration::from_secs(1));
        assert_eq!(backoff(base, 3), Duration::from_secs(4));
        assert_eq!(backoff(base, 30), MAX_BACKOFF);
    }
}
