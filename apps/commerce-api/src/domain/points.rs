//! The points ledger's primitives: every change to a balance writes its ledger row in the same
//! statement sequence, inside the caller's transaction.
//!
//! Points come in four ways only: bought ([`credit_top_up`], when the gateway confirms a
//! top-up's charge), granted by an administrator (`crate::domain::accounts::grant`), earned by a
//! purchase-confirmed partner order ([`earn`]), or given back by an order that no longer stands
//! (`crate::domain::holds::release`). A balance never goes
//! negative: every debit is guarded, and a CHECK constraint backs it.

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::domain::states::LedgerKind;
use crate::domain::{Error, Missing, Result};
use crate::infra::schema::{point_ledger, users};

/// Why points are credited.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Credit<'a> {
    /// A paid top-up's points.
    TopUp { order_id: i64 },
    /// Points an order used, given back.
    Refund { order_id: i64 },
    /// An administrator's grant, and why.
    Grant { by: i64, reason: &'a str },
}

/// Adds `amount` (> 0) to user `user_id`'s balance with its ledger row; returns the ledger row's
/// id and the new balance.
pub(crate) async fn credit(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    amount: i64,
    why: Credit<'_>,
) -> Result<(i64, i64)> {
    let via = match why {
        Credit::TopUp { .. } => Some("top_up"),
        Credit::Grant { .. } => Some("grant"),
        Credit::Refund { .. } => None,
    };
    let (kind, order_id, note, granted_by) = match why {
        Credit::TopUp { order_id } => (LedgerKind::TopUp, Some(order_id), None, None),
        Credit::Refund { order_id } => (LedgerKind::Refund, Some(order_id), None, None),
        Credit::Grant { by, reason } => (LedgerKind::Grant, None, Some(reason), Some(by)),
    };
    let balance: i64 = diesel::update(users::table.find(user_id))
        .set(users::point_balance.eq(users::point_balance + amount))
        .returning(users::point_balance)
        .get_result(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound(Missing::User))?;
    let id = diesel::insert_into(point_ledger::table)
        .values((
            point_ledger::user_id.eq(user_id),
            point_ledger::amount.eq(amount),
            point_ledger::kind.eq(kind),
            point_ledger::order_id.eq(order_id),
            point_ledger::note.eq(note),
            point_ledger::granted_by.eq(granted_by),
        ))
        .returning(point_ledger::id)
        .get_result(conn)
        .await?;
    if let Some(via) = via {
        // Counted as the transaction runs; a rollback after this (rare) over-counts by one.
        metrics::counter!("points_credited_won_total", "via" => via)
            .increment(amount.unsigned_abs());
    }
    Ok((id, balance))
}

/// Credits a paid top-up's points (ledger `TOP_UP`), once: the order's state machine pays an
/// order once, and a unique index backs it.
pub(crate) async fn credit_top_up(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    user_id: i64,
    amount: i64,
) -> Result<()> {
    credit(conn, user_id, amount, Credit::TopUp { order_id }).await?;
    Ok(())
}

/// Points a purchase-confirmed partner order earns its customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Earned {
    pub user_id: i64,
    pub order_id: i64,
    pub partner_order_id: i64,
    pub amount: i64,
}

impl Earned {
    /// `rate_bps` basis points of what was paid for the partner order (its items less its share
    /// of the discount, whichever way it was paid), rounded down; `None` when that is nothing.
    pub fn of(
        user_id: i64,
        order_id: i64,
        partner_order_id: i64,
        paid: i64,
        rate_bps: i64,
    ) -> Option<Self> {
        let amount = i64::try_from(i128::from(paid) * i128::from(rate_bps) / 10_000).ok()?;
        (amount > 0).then_some(Self {
            user_id,
            order_id,
            partner_order_id,
            amount,
        })
    }
}

/// Credits points earned by purchase-confirmed partner orders (ledger `EARN`), inside the
/// transaction that confirms them: the balances of all their customers, locked in user-id order
/// (two batches confirming at once never wait on each other in a cycle), and one ledger row each.
/// A partner order earns once: it is confirmed once, and a unique index backs it.
pub(crate) async fn earn(conn: &mut AsyncPgConnection, earned: &[Earned]) -> Result<()> {
    if earned.is_empty() {
        return Ok(());
    }
    let users: Vec<i64> = earned.iter().map(|e| e.user_id).collect();
    let amounts: Vec<i64> = earned.iter().map(|e| e.amount).collect();
    let orders: Vec<i64> = earned.iter().map(|e| e.order_id).collect();
    let partner_orders: Vec<i64> = earned.iter().map(|e| e.partner_order_id).collect();
    diesel::sql_query("SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind::<Array<BigInt>, _>(&users)
        .execute(conn)
        .await?;
    diesel::sql_query(
        "UPDATE users u SET point_balance = u.point_balance + e.amount
           FROM (SELECT user_id, sum(amount)::bigint AS amount
                   FROM unnest($1::bigint[], $2::bigint[]) AS t(user_id, amount)
                  GROUP BY user_id) e
          WHERE u.id = e.user_id",
    )
    .bind::<Array<BigInt>, _>(&users)
    .bind::<Array<BigInt>, _>(&amounts)
    .execute(conn)
    .await?;
    diesel::sql_query(
        "INSERT INTO point_ledger (user_id, amount, kind, order_id, partner_order_id)
         SELECT user_id, amount, 'EARN', order_id, partner_order_id
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
             AS t(user_id, amount, order_id, partner_order_id)",
    )
    .bind::<Array<BigInt>, _>(&users)
    .bind::<Array<BigInt>, _>(&amounts)
    .bind::<Array<BigInt>, _>(&orders)
    .bind::<Array<BigInt>, _>(&partner_orders)
    .execute(conn)
    .await?;
    metrics::counter!("points_credited_won_total", "via" => "earn")
        .increment(amounts.iter().sum::<i64>().unsigned_abs());
    Ok(())
}

/// Takes back the points partner order `partner_order_id` earned (ledger `EARN_REVERSED`), as
/// far as the balance holds them, once; inside the transaction that adjusts it. Returns the
/// points taken and the shortfall (spent already; logged for an operator).
pub(crate) async fn reverse_earned(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    order_id: i64,
    partner_order_id: i64,
) -> Result<(i64, i64)> {
    let entries: Vec<(LedgerKind, i64)> = point_ledger::table
        .filter(point_ledger::partner_order_id.eq(partner_order_id))
        .select((point_ledger::kind, point_ledger::amount))
        .load(conn)
        .await?;
    let earned = entries
        .iter()
        .find(|(k, _)| *k == LedgerKind::Earn)
        .map(|(_, a)| *a);
    let reversed = entries.iter().any(|(k, _)| *k == LedgerKind::EarnReversed);
    let Some(earned) = earned.filter(|_| !reversed) else {
        return Ok((0, 0));
    };
    let balance: i64 = users::table
        .find(user_id)
        .select(users::point_balance)
        .for_update()
        .first(conn)
        .await?;
    let take = earned.min(balance);
    if take > 0 {
        diesel::update(users::table.find(user_id))
            .set(users::point_balance.eq(users::point_balance - take))
            .execute(conn)
            .await?;
        diesel::insert_into(point_ledger::table)
            .values((
                point_ledger::user_id.eq(user_id),
                point_ledger::amount.eq(-take),
                point_ledger::kind.eq(LedgerKind::EarnReversed),
                point_ledger::order_id.eq(order_id),
                point_ledger::partner_order_id.eq(partner_order_id),
            ))
            .execute(conn)
            .await?;
    }
    let shortfall = earned - take;
    if shortfall > 0 {
        tracing::warn!(
            partner_order.id = partner_order_id,
            user.id = user_id,
            shortfall,
            "earned points taken back after an adjustment were partly spent"
        );
    }
    Ok((take, shortfall))
}

/// What to do when a top-up's points are to be taken back and the balance no longer holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenSpent {
    /// Refuse with [`Error::PointsAlreadySpent`]: the customer's cancel.
    Refuse,
    /// Take what is left and list the shortfall for an operator: the gateway already gave the
    /// money back (a chargeback), so the top-up is undone whatever the balance.
    TakeWhatIsLeft,
}

/// Takes a top-up's credited points back (ledger `TOP_UP_REVERSED`), inside the transaction that
/// cancels or refunds it (which holds the order's row lock). Nothing when nothing was credited
/// or it was taken back already. Returns the shortfall: the points that could not be taken back
/// (only with [`WhenSpent::TakeWhatIsLeft`]).
pub(crate) async fn reverse_top_up(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    user_id: i64,
    when_spent: WhenSpent,
) -> Result<i64> {
    let entries: Vec<(LedgerKind, i64)> = point_ledger::table
        .filter(point_ledger::order_id.eq(order_id))
        .filter(point_ledger::kind.eq_any([LedgerKind::TopUp, LedgerKind::TopUpReversed]))
        .select((point_ledger::kind, point_ledger::amount))
        .load(conn)
        .await?;
    let credited = entries.iter().find(|(k, _)| *k == LedgerKind::TopUp);
    let reversed = entries.iter().any(|(k, _)| *k == LedgerKind::TopUpReversed);
    let Some(&(_, amount)) = credited.filter(|_| !reversed) else {
        return Ok(0);
    };
    let balance: i64 = users::table
        .find(user_id)
        .select(users::point_balance)
        .for_update()
        .first(conn)
        .await?;
    let take = match when_spent {
        WhenSpent::Refuse if balance < amount => return Err(Error::PointsAlreadySpent),
        WhenSpent::Refuse => amount,
        WhenSpent::TakeWhatIsLeft => amount.min(balance),
    };
    if take > 0 {
        diesel::update(users::table.find(user_id))
            .set(users::point_balance.eq(users::point_balance - take))
            .execute(conn)
            .await?;
        diesel::insert_into(point_ledger::table)
            .values((
                point_ledger::user_id.eq(user_id),
                point_ledger::amount.eq(-take),
                point_ledger::kind.eq(LedgerKind::TopUpReversed),
                point_ledger::order_id.eq(order_id),
            ))
            .execute(conn)
            .await?;
        metrics::counter!("points_top_ups_reversed_won_total").increment(take.unsigned_abs());
    }
    let shortfall = amount - take;
    if shortfall > 0 {
        metrics::counter!("points_top_up_shortfall_won_total").increment(shortfall.unsigned_abs());
        tracing::error!(
            order.id = order_id,
            user.id = user_id,
            shortfall,
            "a reversed top-up's points were spent; listed for an operator"
        );
    }
    Ok(shortfall)
}
