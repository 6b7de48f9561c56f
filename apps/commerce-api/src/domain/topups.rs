//! Buying points.
//!
//! Points are bought, never handed out: a top-up is an order of kind
//! [`OrderKind::PointTopUp`] paid by card, so it takes a card order's path end to end. It commits
//! as `PENDING_PAYMENT` with a `PENDING` payment before the gateway is called ([`place`]); the
//! request itself, the gateway's callback or reconciliation settles it once
//! ([`crate::domain::payments::settle`]); cancelling a paid one refunds its charge through the
//! refund worker. Only what paying and undoing do differs from an order of goods:
//! - paid: its points are credited (ledger `TOP_UP`, [`crate::domain::points::credit_top_up`]);
//! - cancelled or refunded: they are taken back first (`TOP_UP_REVERSED`), and the cancel is
//!   refused with [`Error::PointsAlreadySpent`] while they are spent;
//! - only payment events reach the outbox: a top-up is no sale, and no product changes.
//!
//! The only other credit is an administrator's grant (`crate::domain::accounts::grant`).

use commerce_db::idempotency::{self, Replay};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use sha2::{Digest, Sha256};

use crate::domain::card::CardNumber;
use crate::domain::orders::{self, OrderView, Placed, Placement, deadline, parse_card};
use crate::domain::payments;
use crate::domain::states::{CardType, OrderKind, OrderStatus, PaymentKind};
use crate::domain::{Error, Result, check};
use crate::infra::schema::orders as order_rows;

/// Largest single top-up, in won.
pub const MAX_TOP_UP: i64 = 10_000_000;

/// A validated top-up. Deliberately not `Debug` or `Clone`: it holds a card number.
pub struct TopUpRequest {
    pub amount: i64,
    pub card_type: CardType,
    pub card_no: CardNumber,
}

impl TopUpRequest {
    /// Validates every field; all invalid ones are reported.
    pub fn parse(amount: i64, card_type: Option<&str>, card_no: Option<&str>) -> Result<Self> {
        let mut errors = Vec::new();
        if !(1..=MAX_TOP_UP).contains(&amount) {
            errors.push(commerce_web::FieldError::new(
                "amount",
                format!("must be between 1 and {MAX_TOP_UP}"),
            ));
        }
        let card = parse_card(card_type, card_no, "", &mut errors);
        check(errors)?;
        let (card_type, card_no) = card.expect("a valid card when no field failed");
        Ok(Self {
            amount,
            card_type,
            card_no,
        })
    }

    /// SHA-256 of the request, for idempotency-key replays. The card number enters masked: the
    /// full number is never kept, not even hashed.
    pub fn hash(&self) -> String {
        let canonical = serde_json::json!({
            "kind": OrderKind::PointTopUp.as_str(),
            "amount": self.amount,
            "card_type": self.card_type.as_str(),
            "card_no": self.card_no.masked(),
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// Opens a top-up for `user_id` in one transaction on `conn`: the order (`PENDING_PAYMENT`) and
/// its `PENDING` payment. The caller then submits the payment, holding no connection. With an
/// idempotency `key` (shared with orders: one key names one request), a repeat of the same
/// request answers the first top-up and a different request is refused.
#[tracing::instrument(name = "top_up.place", skip_all, fields(user.id = user_id))]
pub async fn place(
    conn: &mut AsyncPgConnection,
    ctx: &Placement<'_>,
    user_id: i64,
    req: &TopUpRequest,
    key: Option<&str>,
) -> Result<Placed> {
    let hash = req.hash();
    let started = std::time::Instant::now();
    let placed = conn
        .transaction::<_, Error, _>(async |conn| {
            deadline::arm(conn, ctx.timeout).await?;
            deadline::within(ctx.timeout, async {
                if let Some(key) = key {
                    let earlier = async |conn: &mut AsyncPgConnection| {
                        order_rows::table
                            .filter(order_rows::user_id.eq(user_id))
                            .filter(order_rows::idempotency_key.eq(key))
                            .select((order_rows::id, order_rows::request_hash))
                            .first::<(i64, Option<String>)>(conn)
                            .await
                            .optional()
                            .map(|o| o.map(|(id, hash)| (hash, id)))
                    };
                    // The orders' scope: a key names one request, whichever route it was sent to.
                    match idempotency::lock_and_find(conn, "", user_id, key, &hash, earlier).await?
                    {
                        Replay::New => {}
                        Replay::Same(id) => {
                            return Ok(Placed::Replayed(orders::get(conn, user_id, id).await?));
                        }
                        Replay::Reused => return Err(Error::IdempotencyKeyReused),
                    }
                }
                let (id, created_at): (i64, chrono::DateTime<chrono::Utc>) =
                    diesel::insert_into(order_rows::table)
                        .values((
                            order_rows::user_id.eq(user_id),
                            order_rows::kind.eq(OrderKind::PointTopUp),
                            order_rows::status.eq(OrderStatus::PendingPayment),
                            order_rows::total_amount.eq(req.amount),
                            order_rows::discount_amount.eq(0),
                            order_rows::final_amount.eq(req.amount),
                            order_rows::points_used.eq(0),
                            order_rows::payment_method.eq(PaymentKind::Card),
                            order_rows::idempotency_key.eq(key),
                            order_rows::request_hash.eq(&hash),
                        ))
                        .returning((order_rows::id, order_rows::created_at))
                        .get_result(conn)
                        .await?;
                let (_, payment) = payments::open(
                    conn,
                    ctx.cards,
                    ctx.recheck_after,
                    id,
                    user_id,
                    req.amount,
                    req.card_type,
                    &req.card_no,
                )
                .await?;
                Ok(Placed::Created(OrderView {
                    order_id: id,
                    kind: OrderKind::PointTopUp,
                    status: OrderStatus::PendingPayment,
                    total_amount: req.amount,
                    discount_amount: 0,
                    final_amount: req.amount,
                    payment_method: PaymentKind::Card,
                    user_coupon_id: None,
                    items: Vec::new(),
                    payment: Some(payment),
                    partner_orders: Vec::new(),
                    fulfilment_status: None,
                    payment_history: None,
                    created_at,
                }))
            })
            .await
        })
        .await
        .map_err(|e| deadline::timed_out(e, started, ctx.timeout))?;
    if let Placed::Created(order) = &placed {
        tracing::info!(
            order.id = order.order_id,
            user.id = user_id,
            amount = order.final_amount,
            "top-up opened"
        );
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_top_up_needs_an_amount_in_range_and_a_card() {
        let Err(Error::Invalid(errors)) = TopUpRequest::parse(0, Some("VISA"), None) else {
            panic!("expected a validation error");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["amount", "card_type", "card_no"]);
        assert!(
            TopUpRequest::parse(MAX_TOP_UP + 1, Some("KB"), Some("1234-5678-9012-3456")).is_err()
        );
        let ok = TopUpRequest::parse(MAX_TOP_UP, Some("KB"), Some("1234-5678-9012-3456"))
            .expect("valid");
        assert_eq!(ok.amount, MAX_TOP_UP);
        assert!(!ok.hash().contains("5678"));
    }
}
