//! Partner settlement: commission policies, the daily settlement and the partner ledger.
//!
//! **Accrual.** A purchase confirmation writes its partner order's settlement line in the
//! confirming transaction ([`accrue`]): the commission policy in force on the business day of the
//! confirmation (the partner's own version, else the platform default), frozen on the line with
//! its rate, fixed fee and amount ([`commission`]), and the day whose settlement pays it
//! (`settle_on`): the confirmation's day, or, when that day is closed already (a confirmation
//! that committed after its day was settled), the first day not yet closed. Lines are never
//! changed afterwards.
//!
//! **Closing a day** ([`settle_through`]) is one transaction per business day, in day order, under
//! the exclusive [`SETTLEMENT_LOCK`] (accruals and clawbacks take it shared, so none is in flight
//! while a day closes and none can land in a closed day): one set-based statement sums the
//! day's lines and clawbacks per partner through covering indexes into one settlement each, with
//! its ledger entry; the day's row marks it closed; one `SettlementCompleted` per settlement goes
//! to the outbox. A crash leaves nothing of the day; a re-run of a closed day changes nothing;
//! two instances closing the same day wait on the lock, and the second finds it closed.
//!
//! **The ledger** has three kinds of entries: `EARNING` (+, a settlement's gross less commission:
//! the settlement row itself), and in the append-only `partner_ledger`, `CLAWBACK` (−, money a
//! confirmed partner order gave back at the gateway after confirmation: a chargeback, a refund
//! made at the gateway, an adjustment) and `PAYOUT` (−, a settlement paid out). The view
//! `partner_ledger_entries` lists them together. A settlement pays `gross − commission − clawbacks − carried` when that
//! is positive; otherwise it pays nothing and carries the shortfall (`deficit`) into the
//! partner's next settlement. So for each partner, at every moment:
//! `balance = Σ entries = outstanding payouts − deficit − clawbacks not yet netted` ([`balance`]).
//!
//! **Rounding.** A line's commission is `rate_bps` of its gross rounded half to even, plus the
//! fixed fee, capped at the gross. A settlement's amounts are sums of its lines' (so the lines
//! add up to the settlement exactly). A clawback is the partner's part of what went back, in
//! proportion to what the customer paid: `⌊net × refunded / paid⌋` cumulatively, each entry the
//! step from the previous one, so a full refund takes back exactly the line's net.
//!
//! Coupons are the platform's: a partner is settled on its items at their price; the discount a
//! coupon gave is the platform's cost, as points are the platform's currency.

use chrono::{DateTime, NaiveDate, Utc};
use commerce_db::XactLock;
use commerce_events::{Event, SettlementCompleted};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Date, Integer, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{Error, Missing, Result, is_unique_violation};
use crate::infra::outbox::{self, Topics};
use crate::infra::schema::{
    commission_policies, partner_ledger, payment_splits, settlement_days, settlements,
};

/// Closing a day takes it exclusively; accruing a line or a clawback takes it shared.
pub const SETTLEMENT_LOCK: XactLock = XactLock::named("commerce-api:settlement");

/// A line's commission: `rate_bps` of `gross` rounded half to even, plus `fixed_fee`, at most
/// `gross`. (The database's `commission_of` is the same function; the tests hold them equal.)
pub fn commission(gross: i64, rate_bps: i32, fixed_fee: i64) -> i64 {
    let product = i128::from(gross) * i128::from(rate_bps);
    let (q, r) = (product / 10_000, product % 10_000);
    let rounded = q + i128::from(r * 2 > 10_000 || (r * 2 == 10_000 && q % 2 == 1));
    i64::try_from((rounded + i128::from(fixed_fee)).min(i128::from(gross))).unwrap_or(gross)
}

/// What a partner gives back of `net` when `refunded` of the `paid` it was settled on went back
/// (cumulative; rounded down).
pub fn clawed_back(net: i64, refunded: i64, paid: i64) -> i64 {
    if paid <= 0 {
        return 0;
    }
    let refunded = refunded.clamp(0, paid);
    i64::try_from(i128::from(net) * i128::from(refunded) / i128::from(paid)).unwrap_or(net)
}

/// Writes the settlement lines of purchase-confirmed partner orders `ids` (those without one),
/// inside their confirming transaction. Business days are taken in `time_zone`.
pub async fn accrue(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
    time_zone: chrono_tz::Tz,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    SETTLEMENT_LOCK.share(conn).await?;
    diesel::sql_query(
        "INSERT INTO settlement_lines (partner_order_id, partner_id, settle_on, confirmed_on,
                                       policy_id, rate_bps, fixed_fee, gross, commission)
         SELECT p.id, p.partner_id,
                greatest(d.day, (SELECT max(business_date) + 1 FROM settlement_days)), d.day,
                coalesce(own.id, def.id), coalesce(own.rate_bps, def.rate_bps),
                coalesce(own.fixed_fee, def.fixed_fee), p.items_total,
                commission_of(p.items_total, coalesce(own.rate_bps, def.rate_bps),
                              coalesce(own.fixed_fee, def.fixed_fee))
           FROM partner_orders p
          CROSS JOIN LATERAL (SELECT (p.confirmed_at AT TIME ZONE $2)::date AS day) d
           LEFT JOIN LATERAL (SELECT id, rate_bps, fixed_fee FROM commission_policies
                               WHERE partner_id = p.partner_id AND valid_from <= d.day
                               ORDER BY valid_from DESC LIMIT 1) own ON true
          CROSS JOIN LATERAL (SELECT id, rate_bps, fixed_fee FROM commission_policies
                               WHERE partner_id IS NULL AND valid_from <= d.day
                               ORDER BY valid_from DESC LIMIT 1) def
          WHERE p.id = ANY($1) AND p.status = 'PURCHASE_CONFIRMED' AND p.confirmed_at IS NOT NULL
         ON CONFLICT (partner_order_id) DO NOTHING",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Text, _>(time_zone.name())
    .execute(conn)
    .await?;
    // Money that went back before the confirmation is clawed back at once (rare: look first).
    let refunded: Vec<i64> = payment_splits::table
        .filter(payment_splits::partner_order_id.eq_any(ids))
        .filter(payment_splits::refunded.gt(0))
        .select(payment_splits::partner_order_id)
        .load(conn)
        .await?;
    clawback(conn, &refunded).await
}

/// Records what the settled partner orders `ids` owe back for money their checkouts gave back
/// at the gateway since they were confirmed (chargebacks, refunds made at the gateway,
/// adjustments), inside the transaction that recorded the refund. Each entry takes the
/// cumulative clawback up to what has been refunded now, once ([`clawed_back`]); partner orders
/// without a settlement line (not confirmed) are skipped. It is netted by the settlement of the
/// first day not yet closed (or the line's own day, if that is still open).
pub(crate) async fn clawback(conn: &mut AsyncPgConnection, ids: &[i64]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    SETTLEMENT_LOCK.share(conn).await?;
    // One clawback at a time per line: the line's row lock.
    diesel::sql_query(
        "SELECT partner_order_id FROM settlement_lines WHERE partner_order_id = ANY($1)
          ORDER BY partner_order_id FOR UPDATE",
    )
    .bind::<Array<BigInt>, _>(ids)
    .execute(conn)
    .await?;
    diesel::sql_query(
        "INSERT INTO partner_ledger (partner_id, kind, amount, partner_order_id, settle_on, refunded_to)
         SELECT t.partner_id, 'CLAWBACK', t.done - t.target, t.partner_order_id,
                greatest(t.settle_on, (SELECT max(business_date) + 1 FROM settlement_days)),
                t.refunded
           FROM (SELECT l.partner_id, l.partner_order_id, l.settle_on, s.refunded,
                        div((l.gross - l.commission)::numeric * least(s.refunded, s.paid), s.paid)::bigint AS target,
                        coalesce((SELECT -sum(amount) FROM partner_ledger c
                                   WHERE c.kind = 'CLAWBACK' AND c.partner_order_id = l.partner_order_id), 0)::bigint AS done
                   FROM settlement_lines l
                   JOIN (SELECT partner_order_id, sum(captured) AS paid, sum(refunded) AS refunded
                           FROM payment_splits WHERE partner_order_id = ANY($1)
                          GROUP BY partner_order_id) s ON s.partner_order_id = l.partner_order_id
                  WHERE l.partner_order_id = ANY($1) AND s.paid > 0) t
          WHERE t.target > t.done
         ON CONFLICT DO NOTHING",
    )
    .bind::<Array<BigInt>, _>(ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// A commission policy version.
#[derive(Serialize, ToSchema, Debug, Clone, QueryableByName)]
pub struct PolicyView {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// The partner it applies to; none: the platform default.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub partner_id: Option<i64>,
    /// Commission in basis points of a partner order's items (1,000 = 10 %).
    #[diesel(sql_type = Integer)]
    pub rate_bps: i32,
    /// Added per partner order, in won.
    #[diesel(sql_type = BigInt)]
    pub fixed_fee: i64,
    /// The first business day it applies to.
    #[diesel(sql_type = Date)]
    pub valid_from: NaiveDate,
    /// The first business day the next version applies to; none: in force from `valid_from` on.
    #[diesel(sql_type = Nullable<Date>)]
    pub valid_to: Option<NaiveDate>,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub created_at: DateTime<Utc>,
}

/// A new commission policy version.
#[derive(Debug, Clone)]
pub struct NewPolicy {
    pub partner_id: Option<i64>,
    pub rate_bps: i32,
    pub fixed_fee: i64,
    pub valid_from: NaiveDate,
}

/// Adds a commission policy version (scheduled, when `valid_from` is in the future). Versions
/// are never changed; one may not start on a settled day (409 `SETTLEMENT_DAY_CLOSED`) or on a day
/// another version of the same partner starts (409 `POLICY_VERSION_EXISTS`).
pub async fn add_policy(
    conn: &mut AsyncPgConnection,
    admin_id: i64,
    policy: &NewPolicy,
) -> Result<PolicyView> {
    let mut errors = Vec::new();
    if !(0..=10_000).contains(&policy.rate_bps) {
        errors.push(commerce_web::FieldError::new(
            "rate_bps",
            "must be 0..=10000",
        ));
    }
    if !(0..=1_000_000_000).contains(&policy.fixed_fee) {
        errors.push(commerce_web::FieldError::new(
            "fixed_fee",
            "must be 0..=1000000000",
        ));
    }
    crate::domain::check(errors)?;
    let id = conn
        .transaction::<_, Error, _>(async |conn| {
            // Lines are accrued under the shared lock: no confirmation of `valid_from` can be
            // accrued while this decides whether that day is still open.
            SETTLEMENT_LOCK.share(conn).await?;
            if let Some(partner_id) = policy.partner_id {
                crate::domain::partners::get(conn, partner_id).await?;
            }
            if let Some(closed) = last_closed(conn).await?
                && policy.valid_from <= closed
            {
                return Err(Error::DayClosed(closed));
            }
            diesel::insert_into(commission_policies::table)
                .values((
                    commission_policies::partner_id.eq(policy.partner_id),
                    commission_policies::rate_bps.eq(policy.rate_bps),
                    commission_policies::fixed_fee.eq(policy.fixed_fee),
                    commission_policies::valid_from.eq(policy.valid_from),
                    commission_policies::created_by.eq(admin_id),
                ))
                .returning(commission_policies::id)
                .get_result::<i64>(conn)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        Error::PolicyVersionExists
                    } else {
                        e.into()
                    }
                })
        })
        .await?;
    tracing::info!(
        policy.id = id,
        partner.id = policy.partner_id,
        rate_bps = policy.rate_bps,
        fixed_fee = policy.fixed_fee,
        valid_from = %policy.valid_from,
        admin.id = admin_id,
        "commission policy version added"
    );
    let (versions, _) = policies(conn, policy.partner_id, 0, 10_000).await?;
    versions
        .into_iter()
        .find(|v| v.id == id)
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("policy {id} vanished")))
}

/// The commission policy versions of `partner_id` (none: the platform default), newest first,
/// each with the day the next one takes over.
pub async fn policies(
    conn: &mut AsyncPgConnection,
    partner_id: Option<i64>,
    page: i64,
    size: i64,
) -> Result<(Vec<PolicyView>, i64)> {
    let rows: Vec<PolicyView> = diesel::sql_query(
        "SELECT id, partner_id, rate_bps, fixed_fee, valid_from,
                lead(valid_from) OVER (ORDER BY valid_from) AS valid_to, created_at
           FROM commission_policies WHERE partner_id IS NOT DISTINCT FROM $1
          ORDER BY valid_from DESC LIMIT $2 OFFSET $3",
    )
    .bind::<Nullable<BigInt>, _>(partner_id)
    .bind::<BigInt, _>(size)
    .bind::<BigInt, _>(page * size)
    .load(conn)
    .await?;
    let total: i64 = commission_policies::table
        .filter(commission_policies::partner_id.is_not_distinct_from(partner_id))
        .count()
        .get_result(conn)
        .await?;
    Ok((rows, total))
}

/// The last closed business day, if any.
pub async fn last_closed(conn: &mut AsyncPgConnection) -> Result<Option<NaiveDate>> {
    Ok(settlement_days::table
        .select(diesel::dsl::max(settlement_days::business_date))
        .first(conn)
        .await?)
}

/// How closing one day went.
#[derive(Serialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct DayClosed {
    pub business_date: NaiveDate,
    /// Settlements written (one per partner with lines or clawbacks that day).
    pub settlements: i64,
    pub lines: i64,
    pub gross: i64,
    pub commission: i64,
    pub clawbacks: i64,
    pub payable: i64,
    /// It was closed before this run: nothing was written.
    pub already_closed: bool,
}

#[derive(QueryableByName)]
struct Written {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    partner_id: i64,
    #[diesel(sql_type = Integer)]
    line_count: i32,
    #[diesel(sql_type = Integer)]
    late_count: i32,
    #[diesel(sql_type = BigInt)]
    gross: i64,
    #[diesel(sql_type = BigInt)]
    commission: i64,
    #[diesel(sql_type = BigInt)]
    clawbacks: i64,
    #[diesel(sql_type = BigInt)]
    carried: i64,
    #[diesel(sql_type = BigInt)]
    payable: i64,
    #[diesel(sql_type = BigInt)]
    deficit: i64,
}

/// The days [`settle_through`] would close, in order: from the day after the last closed one
/// (or, before any, the first day with a line or a clawback) through `through`.
pub async fn open_days_through(
    conn: &mut AsyncPgConnection,
    through: NaiveDate,
) -> Result<Vec<NaiveDate>> {
    let from = match last_closed(conn).await? {
        Some(closed) => closed.succ_opt().unwrap_or(closed),
        None => first_open_day(conn).await?.unwrap_or(through).min(through),
    };
    Ok(from.iter_days().take_while(|d| *d <= through).collect())
}

#[derive(QueryableByName)]
struct FirstDay {
    #[diesel(sql_type = Nullable<Date>)]
    day: Option<NaiveDate>,
}

async fn first_open_day(conn: &mut AsyncPgConnection) -> Result<Option<NaiveDate>> {
    let first: FirstDay = diesel::sql_query(
        "SELECT least((SELECT min(settle_on) FROM settlement_lines),
                      (SELECT min(settle_on) FROM partner_ledger WHERE kind = 'CLAWBACK')) AS day",
    )
    .get_result(conn)
    .await?;
    Ok(first.day)
}

/// Closes every open business day through `through`, one transaction per day, in order
/// ([`open_days_through`]); `progress` hears of each day as it closes. Days another instance
/// closed meanwhile come back `already_closed`. Callers decide whether `through` has ended (the
/// job and the command settle only past days).
pub async fn settle_through(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    through: NaiveDate,
    workers: Workers,
    mut progress: impl FnMut(&DayClosed, usize, usize),
) -> Result<Vec<DayClosed>> {
    let days = open_days_through(conn, through).await?;
    let mut closed = Vec::with_capacity(days.len());
    for (i, day) in days.iter().enumerate() {
        let outcome = settle_day(conn, topics, *day, workers).await?;
        progress(&outcome, i + 1, days.len());
        closed.push(outcome);
    }
    if days.is_empty()
        && let Some(done) = day_closed(conn, through).await?
    {
        closed.push(done);
    }
    Ok(closed)
}

async fn day_closed(conn: &mut AsyncPgConnection, day: NaiveDate) -> Result<Option<DayClosed>> {
    let row: Option<(NaiveDate, i32, i64, i64, i64, i64, i64)> = settlement_days::table
        .find(day)
        .select((
            settlement_days::business_date,
            settlement_days::settlements,
            settlement_days::lines,
            settlement_days::gross,
            settlement_days::commission,
            settlement_days::clawbacks,
            settlement_days::payable,
        ))
        .first(conn)
        .await
        .optional()?;
    Ok(row.map(
        |(business_date, settlements, lines, gross, commission, clawbacks, payable)| DayClosed {
            business_date,
            settlements: settlements.into(),
            lines,
            gross,
            commission,
            clawbacks,
            payable,
            already_closed: true,
        },
    ))
}

/// How many PostgreSQL parallel workers may help sum a day's lines (`SETTLEMENT_PARALLEL_WORKERS`;
/// 0, the default: the closing session alone, which was faster on two cores). They share the
/// closing transaction's snapshot: the day still closes in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Workers(pub u8);

/// Closes business day `day` in one transaction (see the module documentation). The day must be
/// the next open one: the day after the last closed, or, before any, a day no line or clawback
/// precedes.
///
/// The day's lines are summed per partner by an index-only scan of `settlement_lines_day` in
/// partner order streamed into a group aggregate (the planner is held to that plan: memory does
/// not grow with the day), in the one statement that writes the settlements. With `workers`, the
/// sums are taken first into a temporary table by a `CREATE TABLE … AS`, which PostgreSQL may run
/// with parallel workers (an `INSERT … SELECT` never runs in parallel).
pub async fn settle_day(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    day: NaiveDate,
    workers: Workers,
) -> Result<DayClosed> {
    let started = std::time::Instant::now();
    let outcome = conn
        .transaction::<_, Error, _>(async |conn| {
            SETTLEMENT_LOCK.exclusive(conn).await?;
            if let Some(done) = day_closed(conn, day).await? {
                return Ok(done);
            }
            let next = match last_closed(conn).await? {
                Some(closed) => closed.succ_opt(),
                None => first_open_day(conn).await?.filter(|first| *first < day),
            };
            if let Some(next) = next
                && next != day
            {
                return Err(Error::Internal(anyhow::anyhow!(
                    "business day {day} cannot close before {next}: days close in order"
                )));
            }
            // The covering-index plan whatever the statistics say (a day just written may look
            // like the whole table), streamed into a group aggregate; no JIT for a plan whose
            // cost those settings inflate.
            conn.batch_execute(
                "SET LOCAL jit = off; SET LOCAL enable_seqscan = off; SET LOCAL enable_hashagg = off",
            )
            .await?;
            let sums = if workers.0 == 0 {
                LINES_INLINE
            } else {
                conn.batch_execute(&format!(
                    "SET LOCAL max_parallel_workers_per_gather = {workers};
                     CREATE TEMPORARY TABLE settlement_day_lines ON COMMIT DROP AS
                     SELECT partner_id, count(*)::int AS n, sum(gross)::bigint AS gross,
                            sum(commission)::bigint AS commission
                       FROM settlement_lines WHERE settle_on = DATE '{day}'
                      GROUP BY partner_id",
                    workers = workers.0,
                    day = day.format("%Y-%m-%d"),
                ))
                .await?;
                LINES_PARALLEL
            };
            let written: Vec<Written> = diesel::sql_query(SETTLE_DAY.replace("{lines}", sums))
                .bind::<Date, _>(day)
                .load(conn)
                .await?;
            let at = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
            let mut totals = DayClosed {
                business_date: day,
                settlements: written.len() as i64,
                lines: 0,
                gross: 0,
                commission: 0,
                clawbacks: 0,
                payable: 0,
                already_closed: false,
            };
            let events: Vec<Event> = written
                .iter()
                .map(|w| {
                    totals.lines += i64::from(w.line_count);
                    totals.gross += w.gross;
                    totals.commission += w.commission;
                    totals.clawbacks += w.clawbacks;
                    totals.payable += w.payable;
                    Event::SettlementCompleted(SettlementCompleted {
                        settlement_id: w.id,
                        partner_id: w.partner_id,
                        business_date: day,
                        line_count: w.line_count.into(),
                        late_count: w.late_count.into(),
                        gross: w.gross,
                        commission: w.commission,
                        clawbacks: w.clawbacks,
                        carried: w.carried,
                        payable: w.payable,
                        deficit: w.deficit,
                        at,
                    })
                })
                .collect();
            if !events.is_empty() {
                outbox::record_at(conn, topics, events, at).await?;
            }
            // The day's row last, with its totals: it is what marks the day closed.
            diesel::insert_into(settlement_days::table)
                .values((
                    settlement_days::business_date.eq(day),
                    settlement_days::settlements
                        .eq(i32::try_from(totals.settlements).unwrap_or(i32::MAX)),
                    settlement_days::lines.eq(totals.lines),
                    settlement_days::gross.eq(totals.gross),
                    settlement_days::commission.eq(totals.commission),
                    settlement_days::clawbacks.eq(totals.clawbacks),
                    settlement_days::payable.eq(totals.payable),
                    settlement_days::closed_at.eq(at),
                ))
                .execute(conn)
                .await?;
            Ok(totals)
        })
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    match &outcome {
        Ok(done) if done.already_closed => {
            metrics::counter!("settlement_runs_total", "result" => "already_closed").increment(1);
        }
        Ok(done) => {
            metrics::counter!("settlement_runs_total", "result" => "success").increment(1);
            metrics::histogram!("settlement_run_duration_seconds").record(elapsed);
            metrics::counter!("settlement_settlements_total").increment(done.settlements as u64);
            metrics::counter!("settlement_lines_total").increment(done.lines as u64);
            metrics::counter!("settlement_commission_won_total")
                .increment(done.commission.max(0) as u64);
            metrics::counter!("settlement_payable_won_total").increment(done.payable.max(0) as u64);
            metrics::counter!("settlement_clawbacks_won_total")
                .increment(done.clawbacks.max(0) as u64);
            metrics::gauge!("settlement_last_success_timestamp_seconds")
                .set(Utc::now().timestamp() as f64);
            tracing::info!(
                business_date = %day,
                settlements = done.settlements,
                lines = done.lines,
                gross = done.gross,
                commission = done.commission,
                clawbacks = done.clawbacks,
                payable = done.payable,
                seconds = elapsed,
                "business day settled"
            );
        }
        Err(e) => {
            metrics::counter!("settlement_runs_total", "result" => "failure").increment(1);
            tracing::warn!(business_date = %day, error = %e, "settling a business day failed");
        }
    }
    outcome
}

/// A day's line sums per partner, by the closing session alone.
const LINES_INLINE: &str = "SELECT partner_id, count(*)::int AS n, sum(gross)::bigint AS gross,
                                   sum(commission)::bigint AS commission
                              FROM settlement_lines WHERE settle_on = $1 GROUP BY partner_id";
/// A day's line sums per partner, as parallel workers wrote them.
const LINES_PARALLEL: &str = "SELECT partner_id, n, gross, commission FROM settlement_day_lines";

/// The day's settlements in one statement: the day's line sums (`settlement_day_lines`), its late
/// lines and clawbacks summed per partner (partial indexes), each partner's shortfall carried in
/// from its previous settlement, the settlements (each its partner's `EARNING` entry) written and
/// returned.
const SETTLE_DAY: &str = "
    WITH lines AS ({lines}),
    late AS (
        SELECT partner_id, count(*)::int AS n
          FROM settlement_lines WHERE settle_on = $1 AND confirmed_on < settle_on
         GROUP BY partner_id),
    claws AS (
        SELECT partner_id, (-sum(amount))::bigint AS clawbacks
          FROM partner_ledger WHERE kind = 'CLAWBACK' AND settle_on = $1
         GROUP BY partner_id),
    day AS (
        SELECT coalesce(l.partner_id, c.partner_id) AS partner_id,
               coalesce(l.n, 0) AS n, coalesce(t.n, 0) AS late,
               coalesce(l.gross, 0) AS gross, coalesce(l.commission, 0) AS commission,
               coalesce(c.clawbacks, 0) AS clawbacks
          FROM lines l
          FULL JOIN claws c ON c.partner_id = l.partner_id
          LEFT JOIN late t ON t.partner_id = l.partner_id),
    shortfalls AS (
        SELECT s.partner_id, s.deficit
          FROM (SELECT DISTINCT ON (partner_id) partner_id, deficit, business_date
                  FROM settlements WHERE deficit > 0
                 ORDER BY partner_id, business_date DESC) s
         WHERE NOT EXISTS (SELECT 1 FROM settlements later
                            WHERE later.partner_id = s.partner_id
                              AND later.business_date > s.business_date)),
    carried AS (
        SELECT d.*, coalesce(f.deficit, 0) AS carried
          FROM day d LEFT JOIN shortfalls f ON f.partner_id = d.partner_id),
    written AS (
        INSERT INTO settlements (partner_id, business_date, line_count, late_count, gross,
                                 commission, clawbacks, carried, payable, deficit)
        SELECT partner_id, $1, n, late, gross, commission, clawbacks, carried,
               greatest(0, gross - commission - clawbacks - carried),
               greatest(0, commission + clawbacks + carried - gross)
          FROM carried
        RETURNING id, partner_id, line_count, late_count, gross, commission, clawbacks, carried,
                  payable, deficit)
    SELECT * FROM written";

/// A partner's settlement of one business day.
#[derive(Serialize, ToSchema, Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = settlements)]
pub struct SettlementView {
    pub id: i64,
    pub partner_id: i64,
    pub business_date: NaiveDate,
    /// Partner orders settled; of them, confirmed on an earlier day that was closed already.
    pub line_count: i32,
    pub late_count: i32,
    /// Σ of their items, and the platform's commission on them (fixed fees included).
    pub gross: i64,
    pub commission: i64,
    /// Money confirmed partner orders gave back at the gateway, netted here.
    pub clawbacks: i64,
    /// The shortfall carried in from the partner's previous settlement.
    pub carried: i64,
    /// What the partner is paid: `gross − commission − clawbacks − carried` when positive.
    pub payable: i64,
    /// The shortfall carried into the partner's next settlement (when the above is negative).
    pub deficit: i64,
    pub paid_out_at: Option<DateTime<Utc>>,
    pub payout_reference: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Partner `partner_id`'s settlements, newest first.
pub async fn of_partner(
    conn: &mut AsyncPgConnection,
    partner_id: i64,
    page: i64,
    size: i64,
) -> Result<(Vec<SettlementView>, i64)> {
    let rows = settlements::table
        .filter(settlements::partner_id.eq(partner_id))
        .order(settlements::business_date.desc())
        .limit(size)
        .offset(page * size)
        .select(SettlementView::as_select())
        .load(conn)
        .await?;
    let total = settlements::table
        .filter(settlements::partner_id.eq(partner_id))
        .count()
        .get_result(conn)
        .await?;
    Ok((rows, total))
}

/// Every partner's settlement of business day `day`, by partner.
pub async fn of_day(
    conn: &mut AsyncPgConnection,
    day: NaiveDate,
    page: i64,
    size: i64,
) -> Result<(Vec<SettlementView>, i64)> {
    let rows = settlements::table
        .filter(settlements::business_date.eq(day))
        .order(settlements::partner_id)
        .limit(size)
        .offset(page * size)
        .select(SettlementView::as_select())
        .load(conn)
        .await?;
    let total = settlements::table
        .filter(settlements::business_date.eq(day))
        .count()
        .get_result(conn)
        .await?;
    Ok((rows, total))
}

/// Settlement `id`; with `partner`, only if it is that partner's (another's is not found).
pub async fn one(
    conn: &mut AsyncPgConnection,
    id: i64,
    partner: Option<i64>,
) -> Result<SettlementView> {
    settlements::table
        .find(id)
        .select(SettlementView::as_select())
        .first(conn)
        .await
        .optional()?
        .filter(|s| partner.is_none_or(|p| p == s.partner_id))
        .ok_or(Error::NotFound(Missing::Settlement))
}

/// A settled partner order, with the commission that applied to it.
#[derive(Serialize, ToSchema, Debug, Clone, QueryableByName)]
pub struct LineView {
    #[diesel(sql_type = BigInt)]
    pub partner_order_id: i64,
    #[diesel(sql_type = BigInt)]
    pub order_id: i64,
    /// The business day it was confirmed (earlier than the settlement's: confirmed after that
    /// day was closed).
    #[diesel(sql_type = Date)]
    pub confirmed_on: NaiveDate,
    /// The commission policy version that applied, with its rate and fee as they were.
    #[diesel(sql_type = BigInt)]
    pub policy_id: i64,
    #[diesel(sql_type = Integer)]
    pub rate_bps: i32,
    #[diesel(sql_type = BigInt)]
    pub fixed_fee: i64,
    #[diesel(sql_type = BigInt)]
    pub gross: i64,
    #[diesel(sql_type = BigInt)]
    pub commission: i64,
    /// `gross − commission`.
    #[diesel(sql_type = BigInt)]
    pub net: i64,
}

/// Up to `size` lines of settlement `s`, in partner order id order, after `after`.
pub async fn lines(
    conn: &mut AsyncPgConnection,
    s: &SettlementView,
    after: i64,
    size: i64,
) -> Result<Vec<LineView>> {
    Ok(diesel::sql_query(
        "SELECT l.partner_order_id, p.order_id, l.confirmed_on, l.policy_id, l.rate_bps,
                l.fixed_fee, l.gross, l.commission, l.gross - l.commission AS net
           FROM settlement_lines l JOIN partner_orders p ON p.id = l.partner_order_id
          WHERE l.settle_on = $1 AND l.partner_id = $2 AND l.partner_order_id > $3
          ORDER BY l.partner_order_id LIMIT $4",
    )
    .bind::<Date, _>(s.business_date)
    .bind::<BigInt, _>(s.partner_id)
    .bind::<BigInt, _>(after)
    .bind::<BigInt, _>(size)
    .load(conn)
    .await?)
}

/// Records settlement `id` paid out under `reference` (the bank transfer's, say), once: its
/// `PAYOUT` ledger entry and its paid-out mark in one transaction.
pub async fn pay_out(
    conn: &mut AsyncPgConnection,
    admin_id: i64,
    id: i64,
    reference: &str,
) -> Result<SettlementView> {
    let reference = reference.trim();
    if reference.is_empty() || reference.len() > 100 || reference.chars().any(char::is_control) {
        return Err(Error::field(
            "reference",
            "must be 1 to 100 printable characters",
        ));
    }
    conn.transaction::<_, Error, _>(async |conn| {
        let s: SettlementView = settlements::table
            .find(id)
            .select(SettlementView::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()?
            .ok_or(Error::NotFound(Missing::Settlement))?;
        if s.paid_out_at.is_some() {
            return Err(Error::AlreadyPaidOut);
        }
        if s.payable == 0 {
            return Err(Error::NothingToPayOut);
        }
        diesel::insert_into(partner_ledger::table)
            .values((
                partner_ledger::partner_id.eq(s.partner_id),
                partner_ledger::kind.eq("PAYOUT"),
                partner_ledger::amount.eq(-s.payable),
                partner_ledger::settlement_id.eq(id),
                partner_ledger::reference.eq(reference),
            ))
            .execute(conn)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::PayoutReferenceUsed
                } else {
                    e.into()
                }
            })?;
        let paid = diesel::update(settlements::table.find(id))
            .set((
                settlements::paid_out_at.eq(diesel::dsl::now),
                settlements::payout_reference.eq(reference),
            ))
            .returning(SettlementView::as_returning())
            .get_result(conn)
            .await?;
        tracing::info!(
            settlement.id = id,
            partner.id = s.partner_id,
            amount = s.payable,
            admin.id = admin_id,
            "settlement paid out"
        );
        metrics::counter!("settlement_payouts_won_total").increment(s.payable as u64);
        Ok(paid)
    })
    .await
}

/// A partner's money with the platform, from its ledger, and the reconciliation of the two sides.
#[derive(Serialize, ToSchema, Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct PartnerBalance {
    #[diesel(sql_type = BigInt)]
    pub partner_id: i64,
    /// Σ `EARNING`: settled items less commission.
    #[diesel(sql_type = BigInt)]
    pub earnings: i64,
    /// Σ `PAYOUT`, as a positive amount: what was paid out.
    #[diesel(sql_type = BigInt)]
    pub payouts: i64,
    /// Σ `CLAWBACK`, as a positive amount: what confirmed partner orders gave back.
    #[diesel(sql_type = BigInt)]
    pub clawbacks: i64,
    /// `earnings − payouts − clawbacks`: the sum of the ledger.
    #[diesel(sql_type = BigInt)]
    pub balance: i64,
    /// Settlements not paid out yet: Σ payable.
    #[diesel(sql_type = BigInt)]
    pub outstanding: i64,
    /// The shortfall the latest settlement carries forward.
    #[diesel(sql_type = BigInt)]
    pub deficit: i64,
    /// Clawbacks recorded for days not settled yet.
    #[diesel(sql_type = BigInt)]
    pub pending_clawbacks: i64,
    /// `balance = outstanding − deficit − pending_clawbacks`.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub reconciled: bool,
}

/// Partner `partner_id`'s balance, reconciled ([`PartnerBalance`]).
pub async fn balance(conn: &mut AsyncPgConnection, partner_id: i64) -> Result<PartnerBalance> {
    crate::domain::partners::get(conn, partner_id).await?;
    Ok(diesel::sql_query(
        "WITH l AS (
            SELECT coalesce(sum(amount) FILTER (WHERE kind = 'EARNING'), 0)::bigint AS earnings,
                   coalesce(-sum(amount) FILTER (WHERE kind = 'PAYOUT'), 0)::bigint AS payouts,
                   coalesce(-sum(amount) FILTER (WHERE kind = 'CLAWBACK'), 0)::bigint AS clawbacks,
                   coalesce(-sum(amount) FILTER (WHERE kind = 'CLAWBACK' AND settle_on >
                       coalesce((SELECT max(business_date) FROM settlement_days), '-infinity')), 0)::bigint
                       AS pending_clawbacks,
                   coalesce(sum(amount), 0)::bigint AS balance
              FROM partner_ledger_entries WHERE partner_id = $1),
         s AS (
            SELECT coalesce(sum(payable) FILTER (WHERE paid_out_at IS NULL), 0)::bigint AS outstanding,
                   coalesce((SELECT deficit FROM settlements WHERE partner_id = $1
                              ORDER BY business_date DESC LIMIT 1), 0)::bigint AS deficit
              FROM settlements WHERE partner_id = $1)
         SELECT $1 AS partner_id, l.earnings, l.payouts, l.clawbacks, l.balance, s.outstanding,
                s.deficit, l.pending_clawbacks,
                l.balance = s.outstanding - s.deficit - l.pending_clawbacks AS reconciled
           FROM l, s",
    )
    .bind::<BigInt, _>(partner_id)
    .get_result(conn)
    .await?)
}

/// A partner whose settlements leave a shortfall: its clawbacks exceed what it earned since.
#[derive(Serialize, ToSchema, Debug, Clone, QueryableByName)]
pub struct NegativeBalance {
    #[diesel(sql_type = BigInt)]
    pub partner_id: i64,
    #[diesel(sql_type = Text)]
    pub name: String,
    /// The shortfall its latest settlement carries forward.
    #[diesel(sql_type = BigInt)]
    pub deficit: i64,
    /// The first business day of the run of settlements that carried a shortfall.
    #[diesel(sql_type = Date)]
    pub since: NaiveDate,
    /// Its latest settlement's day.
    #[diesel(sql_type = Date)]
    pub latest: NaiveDate,
}

/// Partners whose latest settlement carries a shortfall, longest-standing first.
pub async fn negative_balances(
    conn: &mut AsyncPgConnection,
    page: i64,
    size: i64,
) -> Result<(Vec<NegativeBalance>, i64)> {
    let rows: Vec<NegativeBalance> = diesel::sql_query(
        "WITH latest AS (
            SELECT DISTINCT ON (partner_id) partner_id, deficit, business_date
              FROM settlements ORDER BY partner_id, business_date DESC)
         SELECT l.partner_id, p.name, l.deficit, l.business_date AS latest,
                (SELECT min(x.business_date) FROM settlements x
                  WHERE x.partner_id = l.partner_id
                    AND x.business_date > coalesce((SELECT max(y.business_date) FROM settlements y
                                                     WHERE y.partner_id = l.partner_id AND y.deficit = 0),
                                                   '-infinity')) AS since
           FROM latest l JOIN partners p ON p.id = l.partner_id
          WHERE l.deficit > 0
          ORDER BY since, l.partner_id",
    )
    .load(conn)
    .await?;
    let total = rows.len() as i64;
    let page = rows
        .into_iter()
        .skip(usize::try_from(page * size).unwrap_or(usize::MAX))
        .take(usize::try_from(size).unwrap_or(0))
        .collect();
    Ok((page, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commission_rounds_half_to_even_and_adds_the_fee_up_to_the_gross() {
        // 10,005 × 10 % = 1,000.5 → 1,000 (even); 10,015 × 10 % = 1,001.5 → 1,002.
        assert_eq!(commission(10_005, 1_000, 0), 1_000);
        assert_eq!(commission(10_015, 1_000, 0), 1_002);
        assert_eq!(commission(10_016, 1_000, 0), 1_002);
        assert_eq!(commission(10_014, 1_000, 0), 1_001);
        assert_eq!(commission(10_000, 1_250, 300), 1_550);
        assert_eq!(commission(200, 1_000, 500), 200);
        assert_eq!(commission(0, 1_000, 500), 0);
        assert_eq!(commission(7, 10_000, 0), 7);
        assert_eq!(commission(i64::MAX / 2, 10_000, 0), i64::MAX / 2);
    }

    #[test]
    fn clawbacks_are_proportional_and_whole_at_a_full_refund() {
        assert_eq!(clawed_back(9_000, 5_000, 5_000), 9_000);
        assert_eq!(clawed_back(9_000, 2_500, 5_000), 4_500);
        assert_eq!(clawed_back(9_000, 1, 3), 3_000);
        assert_eq!(clawed_back(10, 1, 3), 3);
        assert_eq!(clawed_back(10, 0, 3), 0);
        assert_eq!(clawed_back(10, 5, 0), 0);
        // Steps add up to the cumulative figure whatever the order of partial refunds.
        let steps = [1, 1, 1];
        let mut done = 0;
        let mut refunded = 0;
        for s in steps {
            refunded += s;
            done += clawed_back(10, refunded, 3) - done;
        }
        assert_eq!(done, 10);
    }
}
