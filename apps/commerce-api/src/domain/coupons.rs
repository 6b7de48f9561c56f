//! Coupons: campaigns, first-come issuing, and the discount a coupon gives.
//!
//! Issuing is a race many lose. Losers are turned away by one atomic Redis script (per-user
//! dedupe plus a count against the limit) without touching the database; only admitted users
//! reach PostgreSQL, which stays the source of truth: a conditional update on `issued_count`
//! and the unique (coupon, user) constraint hold the guarantees on their own. So when Redis is
//! down every attempt takes the database path with the same guarantees, just slower; and when
//! the database write fails after Redis admitted a user, the user is removed from the Redis set
//! so the seat is not lost. The write runs in a task of its own once the gate admitted the user,
//! so a client that disconnects (or a request that times out) cannot abandon it half way: it
//! commits, or it fails and gives the seat back. And the gate is reconciled with the database at
//! start and periodically ([`Coupons::reconcile_gates`]), for whatever a crash left behind.

use chrono::{DateTime, Utc};
use commerce_cache::Cache;
use commerce_db::Pool;
use commerce_web::FieldError;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::states::{CouponStatus, DiscountType};
use crate::domain::{Error, Missing, Result, check, is_foreign_key_violation, is_unique_violation};
use crate::infra::schema::{coupons, user_coupons};

/// A coupon campaign's terms, as stored.
#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = coupons)]
pub struct Terms {
    pub discount_type: DiscountType,
    pub discount_value: i64,
    pub min_order_amount: i64,
    pub max_discount_amount: Option<i64>,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
}

impl Terms {
    /// Whether the coupon can be used (or issued) at `now`.
    pub fn valid_at(&self, now: DateTime<Utc>) -> bool {
        valid_at(self.valid_from, self.valid_until, now)
    }

    /// The discount on `total` won: never more than the total.
    pub fn discount(&self, total: i64) -> i64 {
        discount(
            self.discount_type,
            self.discount_value,
            self.max_discount_amount,
            total,
        )
    }
}

fn valid_at(from: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    !(from.is_some_and(|f| f > now) || until.is_some_and(|u| u <= now))
}

/// The discount a coupon gives on `total` won: never more than the total.
pub fn discount(kind: DiscountType, value: i64, max_discount: Option<i64>, total: i64) -> i64 {
    let raw = match kind {
        DiscountType::Rate => total.saturating_mul(value) / 100,
        DiscountType::Fixed => value,
    };
    let capped = max_discount.map_or(raw, |m| raw.min(m));
    capped.clamp(0, total)
}

/// A campaign, as admins and the storefront see it.
#[derive(Serialize, ToSchema, Debug)]
pub struct CouponView {
    pub id: i64,
    pub name: String,
    pub discount_type: DiscountType,
    pub discount_value: i64,
    pub min_order_amount: i64,
    pub max_discount_amount: Option<i64>,
    pub total_quantity: Option<i64>,
    pub issued_count: i64,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
}

/// The row a [`CouponView`] is read from.
#[derive(Queryable, Selectable)]
#[diesel(table_name = coupons)]
pub(crate) struct CouponRow {
    id: i64,
    name: String,
    discount_type: DiscountType,
    discount_value: i64,
    min_order_amount: i64,
    max_discount_amount: Option<i64>,
    total_quantity: Option<i64>,
    issued_count: i64,
    valid_from: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
}

impl From<CouponRow> for CouponView {
    fn from(row: CouponRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            discount_type: row.discount_type,
            discount_value: row.discount_value,
            min_order_amount: row.min_order_amount,
            max_discount_amount: row.max_discount_amount,
            total_quantity: row.total_quantity,
            issued_count: row.issued_count,
            valid_from: row.valid_from,
            valid_until: row.valid_until,
        }
    }
}

/// A campaign open now, as the storefront lists it.
#[derive(Serialize, ToSchema, Debug)]
pub struct OpenCampaign {
    #[serde(flatten)]
    pub coupon: CouponView,
    /// Coupons left to issue; `null` for an unlimited campaign.
    pub remaining_quantity: Option<i64>,
}

/// A page of the campaigns open at `now` (started, not ended, not sold out), newest first, and
/// how many there are.
pub async fn open_campaigns(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    page: i64,
    size: i64,
) -> Result<(Vec<OpenCampaign>, i64)> {
    let open = || {
        coupons::valid_from
            .is_null()
            .or(coupons::valid_from.le(now))
            .and(
                coupons::valid_until
                    .is_null()
                    .or(coupons::valid_until.gt(now)),
            )
            .and(
                coupons::total_quantity
                    .is_null()
                    .or(coupons::issued_count.nullable().lt(coupons::total_quantity)),
            )
    };
    let total: i64 = coupons::table
        .filter(open())
        .count()
        .get_result(conn)
        .await?;
    let content: Vec<CouponView> = coupons::table
        .filter(open())
        .order(coupons::id.desc())
        .limit(size)
        .offset(page * size)
        .select(CouponRow::as_select())
        .load::<CouponRow>(conn)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok((
        content
            .into_iter()
            .map(|coupon| OpenCampaign {
                remaining_quantity: coupon
                    .total_quantity
                    .map(|q| (q - coupon.issued_count).max(0)),
                coupon,
            })
            .collect(),
        total,
    ))
}

/// A validated new campaign.
#[derive(Debug)]
pub struct NewCoupon {
    pub name: String,
    pub discount_type: DiscountType,
    pub discount_value: i64,
    pub min_order_amount: i64,
    pub max_discount_amount: Option<i64>,
    /// `None`: unlimited.
    pub total_quantity: Option<i64>,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
}

impl NewCoupon {
    /// Validates a campaign's fields; every invalid one is reported.
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        name: &str,
        discount_type: &str,
        discount_value: i64,
        min_order_amount: Option<i64>,
        max_discount_amount: Option<i64>,
        total_quantity: Option<i64>,
        valid_from: Option<DateTime<Utc>>,
        valid_until: Option<DateTime<Utc>>,
    ) -> Result<Self> {
        let mut errors = Vec::new();
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            errors.push(FieldError::new("name", "must be 1-100 characters"));
        }
        let kind = discount_type.parse::<DiscountType>().ok();
        match kind {
            Some(DiscountType::Fixed) if !(1..=1_000_000_000).contains(&discount_value) => errors
                .push(FieldError::new(
                    "discount_value",
                    "must be 1..=1000000000 won for FIXED",
                )),
            Some(DiscountType::Rate) if !(1..=100).contains(&discount_value) => errors.push(
                FieldError::new("discount_value", "must be a percentage 1..=100 for RATE"),
            ),
            Some(_) => {}
            None => errors.push(FieldError::new(
                "discount_type",
                format!("must be {}", DiscountType::expected()),
            )),
        }
        if min_order_amount.is_some_and(|m| !(0..=1_000_000_000).contains(&m)) {
            errors.push(FieldError::new(
                "min_order_amount",
                "must be 0..=1000000000",
            ));
        }
        if max_discount_amount.is_some_and(|m| !(1..=1_000_000_000).contains(&m)) {
            errors.push(FieldError::new(
                "max_discount_amount",
                "must be 1..=1000000000",
            ));
        }
        if total_quantity.is_some_and(|q| !(1..=100_000_000).contains(&q)) {
            errors.push(FieldError::new(
                "total_quantity",
                "must be 1..=100000000 or null",
            ));
        }
        if let (Some(from), Some(until)) = (valid_from, valid_until)
            && from >= until
        {
            errors.push(FieldError::new("valid_until", "must be after valid_from"));
        }
        check(errors)?;
        Ok(Self {
            name: name.to_owned(),
            discount_type: kind.expect("checked above"),
            discount_value,
            min_order_amount: min_order_amount.unwrap_or(0),
            max_discount_amount,
            total_quantity,
            valid_from,
            valid_until,
        })
    }
}

/// Creates a campaign.
pub async fn create(conn: &mut AsyncPgConnection, new: &NewCoupon) -> Result<CouponView> {
    Ok(diesel::insert_into(coupons::table)
        .values((
            coupons::name.eq(&new.name),
            coupons::discount_type.eq(new.discount_type),
            coupons::discount_value.eq(new.discount_value),
            coupons::min_order_amount.eq(new.min_order_amount),
            coupons::max_discount_amount.eq(new.max_discount_amount),
            coupons::total_quantity.eq(new.total_quantity),
            coupons::valid_from.eq(new.valid_from),
            coupons::valid_until.eq(new.valid_until),
        ))
        .returning(CouponRow::as_returning())
        .get_result::<CouponRow>(conn)
        .await?
        .into())
}

/// Where a user's coupon stands, as they see it: `EXPIRED` is an `AVAILABLE` coupon past its
/// validity.
#[derive(Serialize, ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HeldStatus {
    Available,
    Used,
    Expired,
}

/// A coupon a user holds.
#[derive(Serialize, ToSchema, Debug)]
pub struct HeldCoupon {
    pub user_coupon_id: i64,
    pub coupon_id: i64,
    pub name: String,
    pub discount_type: DiscountType,
    pub discount_value: i64,
    pub status: HeldStatus,
}

/// The coupons `user_id` holds, newest first.
pub async fn held_by(conn: &mut AsyncPgConnection, user_id: i64) -> Result<Vec<HeldCoupon>> {
    type Row = (
        i64,
        i64,
        String,
        DiscountType,
        i64,
        CouponStatus,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = user_coupons::table
        .inner_join(coupons::table)
        .filter(user_coupons::user_id.eq(user_id))
        .order(user_coupons::id.desc())
        .select((
            user_coupons::id,
            coupons::id,
            coupons::name,
            coupons::discount_type,
            coupons::discount_value,
            user_coupons::status,
            coupons::valid_until,
        ))
        .load(conn)
        .await?;
    let now = Utc::now();
    Ok(rows
        .into_iter()
        .map(|(uc, c, name, kind, value, status, until)| HeldCoupon {
            user_coupon_id: uc,
            coupon_id: c,
            name,
            discount_type: kind,
            discount_value: value,
            status: match status {
                CouponStatus::Used => HeldStatus::Used,
                CouponStatus::Available if until.is_some_and(|u| u <= now) => HeldStatus::Expired,
                CouponStatus::Available => HeldStatus::Available,
            },
        })
        .collect())
}

/// The terms of a coupon that decide issuing. Coupons never change after creation, so they are
/// kept in memory once read: losers of a rush are then turned away without any database work.
#[derive(Clone, Copy)]
struct IssueTerms {
    total_quantity: Option<i64>,
    valid_from: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
}

/// Issuing first-come coupons: the database, the Redis gate in front of it, and the terms
/// cache.
pub struct Coupons {
    pub db: Pool,
    pub cache: Cache,
    terms: std::sync::RwLock<std::collections::HashMap<i64, IssueTerms>>,
}

/// What the Redis gate said.
enum Gate {
    Admitted,
    AlreadyIssued,
    SoldOut,
    /// Redis unavailable: the database decides alone.
    Bypassed,
}

impl Coupons {
    pub fn new(db: Pool, cache: Cache) -> Self {
        Self {
            db,
            cache,
            terms: Default::default(),
        }
    }

    /// Issues coupon `coupon_id` to `user_id`, first come first served. Returns the user's
    /// coupon id.
    pub async fn issue(&self, coupon_id: i64, user_id: i64) -> Result<i64> {
        let terms = self.issue_terms(coupon_id).await?;
        if !valid_at(terms.valid_from, terms.valid_until, Utc::now()) {
            return Err(Error::CouponNotActive);
        }
        let gate = self.admit(coupon_id, user_id, terms.total_quantity).await;
        let path = match gate {
            Gate::AlreadyIssued => {
                metrics::counter!("coupon_issue_total", "result" => "already_issued", "path" => "redis").increment(1);
                return Err(Error::CouponAlreadyIssued);
            }
            Gate::SoldOut => {
                metrics::counter!("coupon_issue_total", "result" => "sold_out", "path" => "redis")
                    .increment(1);
                return Err(Error::CouponSoldOut);
            }
            Gate::Admitted => "redis",
            Gate::Bypassed => "database",
        };
        // Detached: dropping this request (a client that hung up) must not drop the write with
        // the seat taken; the task commits, or fails and gives the seat back.
        let (db, cache, key) = (
            self.db.clone(),
            self.cache.clone(),
            self.gate_key(coupon_id),
        );
        let admitted = matches!(gate, Gate::Admitted);
        let task = tokio::spawn(async move {
            let result = match db.get().await {
                Ok(mut conn) => issue_in_db(&mut conn, coupon_id, user_id).await,
                Err(e) => Err(e.into()),
            };
            // Give the seat back in Redis unless the user really holds a coupon now.
            if admitted
                && let Err(e) = &result
                && !matches!(e, Error::CouponAlreadyIssued)
            {
                release(&cache, &key, coupon_id, user_id).await;
            }
            result
        });
        let result = task
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("coupon issue task failed: {e}").into()));
        let label = match &result {
            Ok(_) => Some("issued"),
            Err(Error::CouponSoldOut) => Some("sold_out"),
            Err(Error::CouponAlreadyIssued) => Some("already_issued"),
            Err(_) => None,
        };
        if let Some(label) = label {
            metrics::counter!("coupon_issue_total", "result" => label, "path" => path).increment(1);
        }
        result
    }

    /// Makes each open campaign's Redis gate agree with the database: holders missing from the
    /// set are added (the set never admits more than the quantity left), and members without a
    /// coupon are removed once they were missing at the previous pass as well (a member admitted
    /// a moment ago may still be committing). Returns how many seats were given back.
    pub async fn reconcile_gates(&self, suspects: &mut GateSuspects) -> anyhow::Result<usize> {
        let mut conn = self.db.get().await?;
        let open: Vec<i64> = coupons::table
            .filter(
                coupons::valid_until
                    .is_null()
                    .or(coupons::valid_until.gt(diesel::dsl::now)),
            )
            .select(coupons::id)
            .load(&mut conn)
            .await?;
        let mut redis = self.cache.conn().await?;
        let mut released = 0;
        let mut next = GateSuspects::default();
        for coupon_id in open {
            let key = self.gate_key(coupon_id);
            let members: Vec<i64> = redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(&mut redis)
                .await?;
            let holders: std::collections::HashSet<i64> = user_coupons::table
                .filter(user_coupons::coupon_id.eq(coupon_id))
                .select(user_coupons::user_id)
                .load::<i64>(&mut conn)
                .await?
                .into_iter()
                .collect();
            let missing: Vec<i64> = holders
                .iter()
                .filter(|h| !members.contains(h))
                .copied()
                .collect();
            if !missing.is_empty() {
                let _: i64 = redis::cmd("SADD")
                    .arg(&key)
                    .arg(&missing)
                    .query_async(&mut redis)
                    .await?;
            }
            let previous = suspects.0.remove(&coupon_id).unwrap_or_default();
            let (stale, fresh): (Vec<i64>, Vec<i64>) = members
                .into_iter()
                .filter(|m| !holders.contains(m))
                .partition(|m| previous.contains(m));
            if !stale.is_empty() {
                let n: usize = redis::cmd("SREM")
                    .arg(&key)
                    .arg(&stale)
                    .query_async(&mut redis)
                    .await?;
                released += n;
                tracing::warn!(
                    coupon.id = coupon_id,
                    seats = n,
                    "gave back coupon seats held in Redis without a coupon"
                );
                metrics::counter!("coupon_seats_reconciled_total").increment(n as u64);
            }
            if !fresh.is_empty() {
                next.0.insert(coupon_id, fresh.into_iter().collect());
            }
        }
        *suspects = next;
        Ok(released)
    }

    async fn issue_terms(&self, coupon_id: i64) -> Result<IssueTerms> {
        if let Some(terms) = self.terms.read().expect("lock poisoned").get(&coupon_id) {
            return Ok(*terms);
        }
        let mut conn = self.db.get().await?;
        let (total_quantity, valid_from, valid_until) = coupons::table
            .find(coupon_id)
            .select((
                coupons::total_quantity,
                coupons::valid_from,
                coupons::valid_until,
            ))
            .first(&mut conn)
            .await
            .optional()?
            .ok_or(Error::NotFound(Missing::Coupon))?;
        let terms = IssueTerms {
            total_quantity,
            valid_from,
            valid_until,
        };
        self.terms
            .write()
            .expect("lock poisoned")
            .insert(coupon_id, terms);
        Ok(terms)
    }

    fn gate_key(&self, coupon_id: i64) -> String {
        self.cache.key(&format!("coupon:{coupon_id}:issued"))
    }

    async fn admit(&self, coupon_id: i64, user_id: i64, limit: Option<i64>) -> Gate {
        let result: anyhow::Result<i64> = async {
            let mut conn = self.cache.conn().await?;
            Ok(GATE
                .key(self.gate_key(coupon_id))
                .arg(user_id)
                .arg(limit.unwrap_or(-1))
                .invoke_async(&mut conn)
                .await?)
        }
        .await;
        match result {
            Ok(1) => Gate::Admitted,
            Ok(0) => Gate::AlreadyIssued,
            Ok(_) => Gate::SoldOut,
            Err(e) => {
                metrics::counter!("coupon_gate_unavailable_total").increment(1);
                commerce_cache::count_error("coupon_gate");
                tracing::debug!(error = %format!("{e:#}"), coupon.id = coupon_id, "coupon gate unavailable; using the database alone");
                Gate::Bypassed
            }
        }
    }
}

/// Gate members without a coupon at the last reconciliation, per campaign.
#[derive(Default, Debug)]
pub struct GateSuspects(std::collections::HashMap<i64, std::collections::HashSet<i64>>);

/// Reconciles the coupon gates at start and every `every`, until `stop` turns true.
pub async fn run_gate_reconciliation(
    coupons: std::sync::Arc<Coupons>,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut suspects = GateSuspects::default();
    loop {
        if let Err(e) = coupons.reconcile_gates(&mut suspects).await {
            tracing::debug!(error = %format!("{e:#}"), "coupon gate reconciliation skipped");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Removes a user admitted by the gate whose database write failed.
async fn release(cache: &Cache, key: &str, coupon_id: i64, user_id: i64) {
    let result: anyhow::Result<()> = async {
        let mut conn = cache.conn().await?;
        let _: i64 = redis::cmd("SREM")
            .arg(key)
            .arg(user_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        commerce_cache::count_error("coupon_release");
        tracing::warn!(coupon.id = coupon_id, user.id = user_id, error = %format!("{e:#}"), "could not release a coupon seat in Redis");
    }
}

/// The database path: the source of truth on its own.
async fn issue_in_db(conn: &mut AsyncPgConnection, coupon_id: i64, user_id: i64) -> Result<i64> {
    conn.transaction::<_, Error, _>(async |conn| {
        // The unique (coupon, user) row first: a second attempt by the same user fails here
        // without touching the contended coupon row.
        let inserted = diesel::insert_into(user_coupons::table)
            .values((
                user_coupons::coupon_id.eq(coupon_id),
                user_coupons::user_id.eq(user_id),
            ))
            .returning(user_coupons::id)
            .get_result::<i64>(conn)
            .await;
        let user_coupon_id = match inserted {
            Ok(id) => id,
            Err(e) if is_unique_violation(&e) => return Err(Error::CouponAlreadyIssued),
            // The caller's token was checked by its signature only (see `SignedUser`).
            Err(e) if is_foreign_key_violation(&e) => return Err(Error::UnknownUser),
            Err(e) => return Err(e.into()),
        };
        let counted = diesel::update(
            coupons::table.find(coupon_id).filter(
                coupons::total_quantity
                    .is_null()
                    .or(coupons::issued_count.lt(coupons::total_quantity.assume_not_null())),
            ),
        )
        .set(coupons::issued_count.eq(coupons::issued_count + 1))
        .execute(conn)
        .await?;
        if counted == 0 {
            return Err(Error::CouponSoldOut);
        }
        Ok(user_coupon_id)
    })
    .await
}

/// [`GATE_SCRIPT`], hashed once (its SHA-1 names it in `EVALSHA`).
static GATE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(GATE_SCRIPT));

/// The Redis gate: one script, atomic. KEYS[1] is the set of admitted users; ARGV[1] the user,
/// ARGV[2] the limit (-1: unlimited). Returns 1 admitted, 0 already admitted, -1 sold out.
const GATE_SCRIPT: &str = r"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
local limit = tonumber(ARGV[2])
if limit >= 0 and redis.call('SCARD', KEYS[1]) >= limit then return -1 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discounts_are_capped_and_never_exceed_the_total() {
        use DiscountType::{Fixed, Rate};
        assert_eq!(discount(Fixed, 3000, None, 10_000), 3000);
        assert_eq!(discount(Fixed, 3000, None, 2000), 2000);
        assert_eq!(discount(Rate, 10, None, 15_000), 1500);
        assert_eq!(discount(Rate, 50, Some(1000), 15_000), 1000);
        assert_eq!(discount(Rate, 100, None, 700), 700);
    }
}
