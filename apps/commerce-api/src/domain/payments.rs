//! Card payments: opening an order's payment, submitting it to the gateway, verifying the
//! gateway's callbacks, and settling it exactly once.
//!
//! A card order commits as `PENDING_PAYMENT` with a `PENDING` payment row ([`open`]) *before*
//! the gateway is called ([`Payments::submit`] runs after the commit, holding no connection
//! while it waits), so a crash or an outage during the call loses nothing: reconciliation
//! (`crate::domain::reconcile`) finds the payment later.
//!
//! [`settle`] is the one place a pending payment ends. It locks the order row and acts only while
//! the order is still `PENDING_PAYMENT`, so however often and from wherever it is triggered
//! (callback, reconciliation, the order request itself) and whatever races it (a cancel), an
//! order is paid or compensated once:
//! - paid: order `PAID`, payment `SUCCESS`, outbox `OrderPaid` + `PaymentCompleted`;
//! - failed: stock restored, coupon back to `AVAILABLE`, points refunded if any were used, order
//!   `PAYMENT_FAILED`, payment `FAILED`, outbox `PaymentFailed`.
//!
//! A success reported for an order that was cancelled or failed meanwhile marks the payment
//! `REFUND_REQUIRED` and requires its refund (`crate::domain::refunds`, counted in
//! `payments_refund_required_total`); a second success for a paid order requires a refund of that
//! charge (`payments_duplicate_charges_total`).

use std::sync::Arc;

use commerce_db::Pool;
use commerce_events::{Event, OrderPlaced, PaymentSettled};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::card::{CardNumber, CardVault};
use crate::domain::history::{self, PaymentEventKind as Kind, Source};
use crate::domain::holds;
use crate::domain::refunds::{self, Refundable};
use crate::domain::states::{CardType, OrderStatus, PaymentKind, PaymentStatus, RefundCause};
use crate::domain::{Error, Missing, Result};
use crate::infra::gateway::{Gateway, GatewayError, PaymentRequest, Transaction, TxStatus};
use crate::infra::outbox::{self, Topics};
use crate::infra::schema::{orders as order_rows, payments};

/// The payment of an order, as the storefront sees it.
#[derive(Serialize, ToSchema, Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = payments)]
pub struct PaymentView {
    pub status: PaymentStatus,
    pub card_type: CardType,
    /// Masked: `1234-****-****-3456`.
    #[diesel(column_name = card_no_masked)]
    pub card_no: String,
    pub transaction_key: Option<String>,
    /// Why the payment failed, or why it is still pending.
    pub reason: Option<String>,
}

/// How a pending payment ends.
#[derive(Debug, Clone)]
pub enum Settlement {
    Paid {
        transaction_key: String,
    },
    Failed {
        transaction_key: Option<String>,
        reason: String,
    },
}

/// When and how often pending card payments are looked at.
#[derive(Debug, Clone)]
pub struct PaymentSettings {
    pub reconcile_enabled: bool,
    pub reconcile_interval: std::time::Duration,
    pub recheck_after: std::time::Duration,
    pub request_deadline: std::time::Duration,
    /// Refunds: the wait after a refund's first failed attempt, doubled per attempt.
    pub refund_retry_base: std::time::Duration,
    pub refunds_enabled: bool,
}

/// Shown while a payment waits for the gateway to come back.
pub const GATEWAY_UNAVAILABLE_REASON: &str =
    "the payment gateway is unavailable; the payment will be retried automatically";

/// Everything card payments need: the database, the outbox topics, the gateway's client and
/// the card vault.
pub struct Payments {
    pub db: Pool,
    pub topics: Topics,
    pub gateway: Arc<Gateway>,
    pub cards: CardVault,
    pub settings: PaymentSettings,
}

/// Opens a `PENDING` payment for a card order, inside the order's transaction: the masked
/// number for display and the sealed one until the gateway has it.
#[allow(clippy::too_many_arguments)]
pub async fn open(
    conn: &mut AsyncPgConnection,
    cards: &CardVault,
    recheck_after: std::time::Duration,
    order_id: i64,
    user_id: i64,
    amount: i64,
    card_type: CardType,
    card_no: &CardNumber,
) -> Result<PaymentView> {
    let masked = card_no.masked();
    diesel::insert_into(payments::table)
        .values((
            payments::order_id.eq(order_id),
            payments::user_id.eq(user_id),
            payments::amount.eq(amount),
            payments::card_type.eq(card_type),
            payments::card_no_masked.eq(&masked),
            payments::card_no_sealed.eq(cards.seal(card_no)),
            // The database's clock, the one reconciliation compares it with.
            payments::next_check_at.eq(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
                &format!(
                    // clock_timestamp(): the time of this statement, not of the
                    // transaction's start (which may have waited on row locks).
                    "clock_timestamp() + interval '{} milliseconds'",
                    recheck_after.as_millis()
                ),
            )),
        ))
        .execute(conn)
        .await?;
    history::append(conn, order_id, Kind::Requested, Source::Order, None, None).await?;
    Ok(PaymentView {
        status: PaymentStatus::Pending,
        card_type,
        card_no: masked,
        transaction_key: None,
        reason: None,
    })
}

impl Payments {
    /// Sends a freshly committed card order's payment to the gateway and records the outcome.
    /// Returns the order status and payment as they stand afterwards. Never fails: a payment
    /// that could not be submitted stays `PENDING` for reconciliation.
    pub async fn submit(
        &self,
        order_id: i64,
        user_id: i64,
        amount: i64,
        card_type: CardType,
        card_no: &CardNumber,
    ) -> (OrderStatus, PaymentView) {
        let request = PaymentRequest {
            user_id,
            order_id,
            card_type: card_type.as_str(),
            card_no: card_no.expose(),
            amount,
            idempotency_key: PaymentRequest::key_for(order_id),
        };
        let result = self.gateway.request_payment(&request).await;
        let outcome = match result {
            Ok(tx) => self
                .record_transaction(order_id, &tx.transaction_key, Source::Order)
                .await
                .map(|()| None),
            Err(GatewayError::Refused(detail)) => {
                tracing::warn!(order.id = order_id, %detail, "the gateway refused the payment");
                self.settle_with(
                    order_id,
                    Settlement::Failed {
                        transaction_key: None,
                        reason: "the payment gateway refused the payment".into(),
                    },
                    Source::Order,
                )
                .await
                .map(|_| None)
            }
            Err(e) => {
                tracing::info!(order.id = order_id, error = %e, "payment left for reconciliation");
                self.note(
                    order_id,
                    Kind::GatewayUnavailable,
                    Source::Order,
                    &e.to_string(),
                )
                .await
                .map(|()| Some(GATEWAY_UNAVAILABLE_REASON))
            }
        };
        if let Err(e) = &outcome {
            // The payment row is committed; reconciliation will pick it up.
            tracing::warn!(order.id = order_id, error = %e, "could not record the gateway's answer");
        }
        match self.current(order_id).await {
            Ok((status, mut payment)) => {
                if let (Ok(Some(reason)), PaymentStatus::Pending) = (&outcome, payment.status) {
                    payment.reason = Some((*reason).to_owned());
                }
                (status, payment)
            }
            Err(e) => {
                tracing::warn!(order.id = order_id, error = %e, "could not read the payment back");
                (
                    OrderStatus::PendingPayment,
                    PaymentView {
                        status: PaymentStatus::Pending,
                        card_type,
                        card_no: card_no.masked(),
                        transaction_key: None,
                        reason: Some(GATEWAY_UNAVAILABLE_REASON.into()),
                    },
                )
            }
        }
    }

    /// The order's status and payment.
    pub async fn current(&self, order_id: i64) -> Result<(OrderStatus, PaymentView)> {
        let mut conn = self.db.get().await?;
        Ok(order_rows::table
            .inner_join(payments::table.on(payments::order_id.eq(order_rows::id)))
            .filter(order_rows::id.eq(order_id))
            .select((order_rows::status, PaymentView::as_select()))
            .first(&mut conn)
            .await?)
    }

    /// Records the gateway's transaction key for a still-pending payment and erases the sealed
    /// card number (the gateway has it now).
    pub async fn record_transaction(&self, order_id: i64, key: &str, source: Source) -> Result<()> {
        let mut conn = self.db.get().await?;
        conn.transaction::<_, Error, _>(async |conn| {
            let recorded = diesel::update(
                payments::table
                    .filter(payments::order_id.eq(order_id))
                    .filter(payments::status.eq(PaymentStatus::Pending))
                    .filter(payments::transaction_key.is_distinct_from(key)),
            )
            .set((
                payments::transaction_key.eq(key),
                payments::card_no_sealed.eq(None::<Vec<u8>>),
                payments::reason.eq(None::<String>),
            ))
            .execute(conn)
            .await?;
            if recorded == 1 {
                history::append(conn, order_id, Kind::Accepted, source, Some(key), None).await?;
            }
            Ok(())
        })
        .await
    }

    /// Appends a history entry that changes nothing else (a gateway outage, a request made
    /// again).
    pub async fn note(
        &self,
        order_id: i64,
        kind: Kind,
        source: Source,
        reason: &str,
    ) -> Result<()> {
        let mut conn = self.db.get().await?;
        history::append(&mut conn, order_id, kind, source, None, Some(reason)).await
    }

    /// [`settle`] in a transaction of its own, counting the outcome under its source. Returns
    /// the order's status afterwards and whether this call changed it.
    pub async fn settle_with(
        &self,
        order_id: i64,
        settlement: Settlement,
        source: Source,
    ) -> Result<(OrderStatus, bool)> {
        let mut conn = self.db.get().await?;
        let topics = &self.topics;
        let (status, changed) = conn
            .transaction::<_, Error, _>(async |conn| {
                settle(conn, topics, order_id, &settlement, source).await
            })
            .await?;
        let via = source.as_str();
        if changed {
            metrics::counter!("payments_settled_total", "status" => status.as_str(), "via" => via)
                .increment(1);
            tracing::info!(order.id = order_id, status = %status, via, "payment settled");
        }
        Ok((status, changed))
    }

    /// Handles the gateway's report that payment `key` of order `order_id` changed. The report
    /// is not authenticated, so it is never trusted: the payment is looked up at the gateway (as
    /// the order's owner) and settled from what the gateway says, only if the gateway agrees on
    /// the order and the amount. A repeat of the report that settled the payment is answered
    /// without asking the gateway again. Returns the order's status afterwards.
    pub async fn verify_callback(
        &self,
        order_id: i64,
        key: &str,
        claimed: Option<&str>,
    ) -> Result<OrderStatus> {
        let payment: Option<(i64, i64, PaymentStatus, Option<String>, OrderStatus)> = {
            let mut conn = self.db.get().await?;
            payments::table
                .inner_join(order_rows::table.on(order_rows::id.eq(payments::order_id)))
                .filter(payments::order_id.eq(order_id))
                .select((
                    payments::user_id,
                    payments::amount,
                    payments::status,
                    payments::transaction_key,
                    order_rows::status,
                ))
                .first(&mut conn)
                .await
                .optional()?
        };
        let Some((user_id, amount, payment_status, known_key, order_status)) = payment else {
            metrics::counter!("payment_callbacks_total", "result" => "unknown_order").increment(1);
            return Err(Error::NotFound(Missing::Payment));
        };
        // Repeats and floods of a settled callback cost the gateway nothing.
        if payment_status != PaymentStatus::Pending && known_key.as_deref() == Some(key) {
            metrics::counter!("payment_callbacks_total", "result" => "repeat").increment(1);
            return Ok(order_status);
        }
        let tx = match self.gateway.transaction(user_id, key).await {
            Ok(Some(tx)) => tx,
            Ok(None) => return Err(not_verified("the gateway has no such payment")),
            Err(GatewayError::Refused(_)) => {
                return Err(not_verified("the gateway refused to confirm the payment"));
            }
            Err(e) => return Err(Error::Unavailable(e.to_string())),
        };
        if !tx.belongs_to(order_id, amount) {
            return Err(not_verified(
                "the gateway's payment does not match this order",
            ));
        }
        let settlement = match tx.status {
            TxStatus::Success | TxStatus::Refunded => Settlement::Paid {
                transaction_key: tx.transaction_key,
            },
            TxStatus::Failed => {
                // Before giving the order's stock back, make sure no other payment of this order
                // is still open or went through at the gateway.
                let all = self
                    .gateway
                    .by_order(user_id, order_id)
                    .await
                    .map_err(|e| Error::Unavailable(e.to_string()))?;
                let mine = |t: &&Transaction| t.belongs_to(order_id, amount);
                if let Some(paid) = all.iter().filter(mine).find(|t| t.status.charged()) {
                    Settlement::Paid {
                        transaction_key: paid.transaction_key.clone(),
                    }
                } else if all
                    .iter()
                    .filter(mine)
                    .any(|t| t.status == TxStatus::Pending)
                {
                    metrics::counter!("payment_callbacks_total", "result" => "not_settled")
                        .increment(1);
                    return Err(Error::PaymentNotSettled(
                        "another payment of this order is still pending at the gateway",
                    ));
                } else {
                    Settlement::Failed {
                        transaction_key: Some(tx.transaction_key),
                        reason: tx.reason.unwrap_or_else(|| "declined".to_owned()),
                    }
                }
            }
            TxStatus::Pending | TxStatus::Unknown => {
                metrics::counter!("payment_callbacks_total", "result" => "not_settled")
                    .increment(1);
                tracing::info!(order.id = order_id, claimed = ?claimed, "callback for a payment the gateway has not settled");
                return Err(Error::PaymentNotSettled(
                    "the gateway has not settled this payment yet",
                ));
            }
        };
        let (order_status, _) = self
            .settle_with(order_id, settlement, Source::Callback)
            .await?;
        metrics::counter!("payment_callbacks_total", "result" => "accepted").increment(1);
        Ok(order_status)
    }
}

fn not_verified(detail: &'static str) -> Error {
    metrics::counter!("payment_callbacks_total", "result" => "not_verified").increment(1);
    Error::PaymentNotVerified(detail)
}

#[derive(Queryable)]
struct Locked {
    user_id: i64,
    status: OrderStatus,
    total_amount: i64,
    discount_amount: i64,
    final_amount: i64,
    payment_method: PaymentKind,
}

/// Ends a pending payment inside the caller's transaction, in the history under `source`.
/// Returns the order's status afterwards and whether this call changed it.
pub async fn settle(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    order_id: i64,
    settlement: &Settlement,
    source: Source,
) -> Result<(OrderStatus, bool)> {
    // The order row lock serialises every settlement and cancellation of this order.
    let order: Locked = order_rows::table
        .find(order_id)
        .select((
            order_rows::user_id,
            order_rows::status,
            order_rows::total_amount,
            order_rows::discount_amount,
            order_rows::final_amount,
            order_rows::payment_method,
        ))
        .for_update()
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound(Missing::Order))?;
    let (payment_id, payment_status, amount, current_key): (
        i64,
        PaymentStatus,
        i64,
        Option<String>,
    ) = payments::table
        .filter(payments::order_id.eq(order_id))
        .select((
            payments::id,
            payments::status,
            payments::amount,
            payments::transaction_key,
        ))
        .for_update()
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound(Missing::Payment))?;
    match order.status {
        OrderStatus::PendingPayment => {}
        OrderStatus::Paid
        | OrderStatus::PaymentFailed
        | OrderStatus::Cancelled
        | OrderStatus::Refunded => {
            if let Settlement::Paid { transaction_key } = settlement {
                let payment = Refundable {
                    payment_id,
                    order_id,
                    user_id: order.user_id,
                    amount,
                };
                charged_after_close(
                    conn,
                    &payment,
                    payment_status,
                    current_key,
                    transaction_key,
                    source,
                )
                .await?;
            }
            return Ok((order.status, false));
        }
    }
    let lines = holds::lines(conn, order_id).await?;
    let settled = |transaction_key: Option<String>, reason: Option<String>| PaymentSettled {
        order_id,
        user_id: order.user_id,
        amount,
        payment_method: order.payment_method.as_str().to_owned(),
        transaction_key,
        reason,
        lines: lines.clone(),
    };
    match settlement {
        Settlement::Paid { transaction_key } => {
            // The sale's instant: the column and the events carry the same one.
            let paid_at = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
            diesel::update(order_rows::table.find(order_id))
                .set((
                    order_rows::status.eq(OrderStatus::Paid),
                    order_rows::paid_at.eq(paid_at),
                ))
                .execute(conn)
                .await?;
            close(
                conn,
                order_id,
                PaymentStatus::Success,
                Some(transaction_key),
                None,
            )
            .await?;
            history::append(
                conn,
                order_id,
                Kind::Paid,
                source,
                Some(transaction_key),
                None,
            )
            .await?;
            let placed = OrderPlaced {
                order_id,
                user_id: order.user_id,
                lines: lines.clone(),
                total_amount: order.total_amount,
                discount_amount: order.discount_amount,
                final_amount: order.final_amount,
                payment_method: order.payment_method.as_str().to_owned(),
            };
            outbox::record_at(
                conn,
                topics,
                vec![
                    Event::OrderPaid(placed),
                    Event::PaymentCompleted(settled(Some(transaction_key.clone()), None)),
                ],
                paid_at,
            )
            .await?;
            Ok((OrderStatus::Paid, true))
        }
        Settlement::Failed {
            transaction_key,
            reason,
        } => {
            holds::release(conn, order_id).await?;
            diesel::update(order_rows::table.find(order_id))
                .set(order_rows::status.eq(OrderStatus::PaymentFailed))
                .execute(conn)
                .await?;
            close(
                conn,
                order_id,
                PaymentStatus::Failed,
                transaction_key.as_deref(),
                Some(reason),
            )
            .await?;
            history::append(
                conn,
                order_id,
                Kind::Failed,
                source,
                transaction_key.as_deref(),
                Some(reason),
            )
            .await?;
            outbox::record(
                conn,
                topics,
                vec![Event::PaymentFailed(settled(
                    transaction_key.clone(),
                    Some(reason.clone()),
                ))],
            )
            .await?;
            Ok((OrderStatus::PaymentFailed, true))
        }
    }
}

/// A success reported for an order that is no longer pending: a second charge of a paid order,
/// or a charge of a closed one. Either way the money must go back: a refund is required (once per
/// charge, however often it is reported).
async fn charged_after_close(
    conn: &mut AsyncPgConnection,
    payment: &Refundable,
    payment_status: PaymentStatus,
    current_key: Option<String>,
    transaction_key: &str,
    source: Source,
) -> Result<()> {
    let order_id = payment.order_id;
    match payment_status {
        PaymentStatus::Success | PaymentStatus::RefundRequired | PaymentStatus::Refunded
            if current_key.as_deref() != Some(transaction_key) =>
        {
            // Two successful gateway payments for one order: the second goes back.
            if refunds::require(
                conn,
                payment,
                transaction_key,
                RefundCause::DuplicateCharge,
                source,
            )
            .await?
            {
                history::append(
                    conn,
                    order_id,
                    Kind::DuplicateCharge,
                    source,
                    Some(transaction_key),
                    None,
                )
                .await?;
                tracing::error!(order.id = order_id, transaction_key = %transaction_key, "a second gateway payment succeeded for a paid order; refunding it");
                metrics::counter!("payments_duplicate_charges_total").increment(1);
            }
        }
        PaymentStatus::Cancelled | PaymentStatus::Failed => {
            tracing::warn!(order.id = order_id, transaction_key = %transaction_key, "the gateway charged an order that is no longer payable; refunding it");
            metrics::counter!("payments_refund_required_total").increment(1);
            diesel::update(payments::table.find(payment.payment_id))
                .set((
                    payments::status.eq(PaymentStatus::RefundRequired),
                    payments::transaction_key.eq(transaction_key),
                    payments::reason.eq("charged after the order was closed; refund required"),
                ))
                .execute(conn)
                .await?;
            history::append(
                conn,
                order_id,
                Kind::ChargedAfterClose,
                source,
                Some(transaction_key),
                None,
            )
            .await?;
            refunds::require(
                conn,
                payment,
                transaction_key,
                RefundCause::ChargedAfterClose,
                source,
            )
            .await?;
        }
        PaymentStatus::Success
        | PaymentStatus::Pending
        | PaymentStatus::RefundRequired
        | PaymentStatus::Refunded => {}
    }
    Ok(())
}

/// Requires the refund of a paid card order's payment, inside the cancellation's transaction.
pub async fn require_refund(conn: &mut AsyncPgConnection, order_id: i64) -> Result<()> {
    let (payment_id, user_id, amount, key): (i64, i64, i64, Option<String>) = payments::table
        .filter(payments::order_id.eq(order_id))
        .select((
            payments::id,
            payments::user_id,
            payments::amount,
            payments::transaction_key,
        ))
        .for_update()
        .first(conn)
        .await?;
    // A paid card payment always has its transaction key: the gateway's success names it.
    let key =
        key.ok_or_else(|| anyhow::anyhow!("paid card order {order_id} has no transaction"))?;
    diesel::update(payments::table.find(payment_id))
        .set((
            payments::status.eq(PaymentStatus::RefundRequired),
            payments::reason.eq("the paid order was cancelled; refund requested"),
        ))
        .execute(conn)
        .await?;
    let payment = Refundable {
        payment_id,
        order_id,
        user_id,
        amount,
    };
    refunds::require(
        conn,
        &payment,
        &key,
        RefundCause::OrderCancelled,
        Source::Cancel,
    )
    .await?;
    metrics::counter!("payments_refund_required_total").increment(1);
    Ok(())
}

/// Final state of a payment row; the sealed card number goes with it.
pub async fn close(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    status: PaymentStatus,
    transaction_key: Option<&str>,
    reason: Option<&str>,
) -> Result<()> {
    diesel::update(payments::table.filter(payments::order_id.eq(order_id)))
        .set((
            payments::status.eq(status),
            payments::reason.eq(reason),
            payments::card_no_sealed.eq(None::<Vec<u8>>),
            payments::settled_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    if let Some(key) = transaction_key {
        diesel::update(payments::table.filter(payments::order_id.eq(order_id)))
            .set(payments::transaction_key.eq(key))
            .execute(conn)
            .await?;
    }
    Ok(())
}
