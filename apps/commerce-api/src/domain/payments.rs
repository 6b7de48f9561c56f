//! Card payments: opening an order's payment, submitting it to the gateway, verifying the
//! gateway's callbacks, and settling it exactly once.
//!
//! A card order commits as `PENDING_PAYMENT` with a `PENDING` payment row ([`open`]) *before*
//! the gateway is called ([`Payments::submit`] runs after the commit, holding no connection
//! while it waits), so a crash or an outage during the call loses nothing: reconciliation
//! (`crate::domain::reconcile`) finds the payment later.
//!
//! [`settle`] is the one place a pending payment ends. It locks the order row and its payment,
//! asks the order's state machine ([`crate::domain::lifecycle::decide`]) what the gateway's word
//! means for them, and executes the answer, so however often and from wherever it is triggered
//! (callback, reconciliation, the order request itself) and whatever races it (a cancel), an
//! order is paid or compensated once:
//! - paid: order `PAID`, payment `SUCCESS`, outbox `OrderPaid` + `PaymentCompleted`;
//! - failed: stock restored, coupon back to `AVAILABLE`, points refunded if any were used, order
//!   `PAYMENT_FAILED`, payment `FAILED`, outbox `PaymentFailed`.
//!
//! A success reported for an order that was cancelled or failed meanwhile marks the payment
//! `REFUND_REQUIRED` and requires its refund (`crate::domain::refunds`, counted in
//! `payments_refund_required_total`); a second success for a paid order requires a refund of that
//! charge (`payments_duplicate_charges_total`). What a set of gateway transactions amounts to is
//! [`crate::domain::lifecycle::verdict`]'s call, for callbacks and reconciliation alike.

use std::sync::Arc;

use commerce_db::Pool;
use commerce_events::{Event, OrderCancelled, OrderPlaced, PaymentSettled};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::card::{CardNumber, CardVault};
use crate::domain::history::{self, PaymentEventKind as Kind, Source};
use crate::domain::holds::{self, WhenSpent};
use crate::domain::lifecycle::{
    Fact, OrderState, REFUNDED_AT_GATEWAY, Transition, Verdict, decide, verdict,
};
use crate::domain::partner_orders;
use crate::domain::points;
use crate::domain::refunds::{self, Refundable};
use crate::domain::states::{
    CardType, OrderKind, OrderStatus, PaymentKind, PaymentStatus, RefundCause,
};
use crate::domain::{Error, Missing, Result};
use crate::infra::gateway::{Gateway, GatewayError, PaymentRequest};
use crate::infra::outbox::{self, Topics};
use crate::infra::schema::{orders as order_rows, payments};

/// The payment of an order, as the storefront sees it.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct PaymentView {
    pub status: PaymentStatus,
    pub card_type: CardType,
    /// Masked: `1234-****-****-3456`.
    pub card_no: String,
    pub transaction_key: Option<String>,
    /// Why the payment failed, or why it is still pending.
    pub reason: Option<String>,
}

/// The columns of `payments` a [`PaymentView`] shows.
#[derive(Queryable, Selectable)]
#[diesel(table_name = payments)]
pub(crate) struct PaymentRow {
    status: PaymentStatus,
    card_type: CardType,
    card_no_masked: String,
    transaction_key: Option<String>,
    reason: Option<String>,
}

impl From<PaymentRow> for PaymentView {
    fn from(row: PaymentRow) -> Self {
        Self {
            status: row.status,
            card_type: row.card_type,
            card_no: row.card_no_masked,
            transaction_key: row.transaction_key,
            reason: row.reason,
        }
    }
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
    /// The payment's own transaction was refunded or charged back at the gateway.
    Reversed {
        transaction_key: String,
        /// The gateway's refund, when it names it.
        refund_key: Option<String>,
    },
}

impl Settlement {
    /// What a payment that ends without a charge records: the transaction and why.
    fn failure(&self) -> Option<(Option<&str>, &str)> {
        match self {
            Settlement::Paid { .. } => None,
            Settlement::Failed {
                transaction_key,
                reason,
            } => Some((transaction_key.as_deref(), reason.as_str())),
            Settlement::Reversed {
                transaction_key, ..
            } => Some((Some(transaction_key.as_str()), REFUNDED_AT_GATEWAY)),
        }
    }
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
    /// Paid payments are looked up at the gateway again this often ...
    pub audit_every: std::time::Duration,
    /// ... for this long after they were paid.
    pub audit_for: std::time::Duration,
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
/// number for display and the sealed one until the gateway has it. Returns the payment's id
/// and view.
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
) -> Result<(i64, PaymentView)> {
    let masked = card_no.masked();
    let id: i64 = diesel::insert_into(payments::table)
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
        .returning(payments::id)
        .get_result(conn)
        .await?;
    history::append(conn, order_id, Kind::Requested, Source::Order, None, None).await?;
    Ok((
        id,
        PaymentView {
            status: PaymentStatus::Pending,
            card_type,
            card_no: masked,
            transaction_key: None,
            reason: None,
        },
    ))
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
        let (status, payment): (OrderStatus, PaymentRow) = order_rows::table
            .inner_join(payments::table.on(payments::order_id.eq(order_rows::id)))
            .filter(order_rows::id.eq(order_id))
            .select((order_rows::status, PaymentRow::as_select()))
            .first(&mut conn)
            .await?;
        Ok((status, payment.into()))
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
    /// the order's status afterwards and the transition this call applied.
    pub async fn settle_with(
        &self,
        order_id: i64,
        settlement: Settlement,
        source: Source,
    ) -> Result<(OrderStatus, Transition)> {
        let mut conn = self.db.get().await?;
        let topics = &self.topics;
        let audit = (!self.settings.audit_for.is_zero()).then_some(self.settings.audit_every);
        let (status, transition) = conn
            .transaction::<_, Error, _>(async |conn| {
                settle(conn, topics, audit, order_id, &settlement, source).await
            })
            .await?;
        let via = source.as_str();
        if matches!(transition, Transition::Pay | Transition::FailPayment) {
            metrics::counter!("payments_settled_total", "status" => status.as_str(), "via" => via)
                .increment(1);
            tracing::info!(order.id = order_id, status = %status, via, "payment settled");
        }
        Ok((status, transition))
    }

    /// Settles an order from the gateway's verdict: its charge (and any second charge, to be
    /// refunded), or its end without a charge. Returns the order's status afterwards and the
    /// transition applied to the order's own payment; `None` when the verdict settles nothing.
    pub async fn settle_verdict(
        &self,
        order_id: i64,
        verdict: &Verdict,
        source: Source,
    ) -> Result<Option<(OrderStatus, Transition)>> {
        match verdict {
            Verdict::Charged { key, duplicates } => {
                let settled = self
                    .settle_with(
                        order_id,
                        Settlement::Paid {
                            transaction_key: key.clone(),
                        },
                        source,
                    )
                    .await?;
                // Any further success is a second charge: `settle` requires its refund.
                for key in duplicates {
                    self.settle_with(
                        order_id,
                        Settlement::Paid {
                            transaction_key: key.clone(),
                        },
                        source,
                    )
                    .await?;
                }
                Ok(Some(settled))
            }
            Verdict::NotCharged { key, reason } => self
                .settle_with(
                    order_id,
                    Settlement::Failed {
                        transaction_key: Some(key.clone()),
                        reason: reason.clone(),
                    },
                    source,
                )
                .await
                .map(Some),
            Verdict::Reversed { key, refund_key } => self
                .settle_with(
                    order_id,
                    Settlement::Reversed {
                        transaction_key: key.clone(),
                        refund_key: refund_key.clone(),
                    },
                    source,
                )
                .await
                .map(Some),
            Verdict::Unlisted { .. }
            | Verdict::Pending { .. }
            | Verdict::Unknown
            | Verdict::NotReceived => Ok(None),
        }
    }

    /// Handles the gateway's report that payment `key` of order `order_id` changed. The report's
    /// signature was checked (`crate::http::payments`), but what it says is still not trusted: the order's payments are looked up at the
    /// gateway (as the order's owner), the reported one must be among them, and the order is
    /// settled from the gateway's [`verdict`] over all of them. A repeat of the report that
    /// settled the payment is answered without asking the gateway again. Returns the order's
    /// status afterwards.
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
            CallbackOutcome::UnknownOrder.count();
            return Err(Error::NotFound(Missing::Payment));
        };
        // Repeats and floods of a settled callback cost the gateway nothing; a report that a
        // charge this API still counts on was refunded is news, and is looked up.
        let news = claimed == Some("REFUNDED")
            && matches!(
                payment_status,
                PaymentStatus::Success | PaymentStatus::RefundRequired
            );
        if payment_status != PaymentStatus::Pending && known_key.as_deref() == Some(key) && !news {
            CallbackOutcome::Repeat.count();
            return Ok(order_status);
        }
        let all = match self.gateway.by_order(user_id, order_id).await {
            Ok(all) => all,
            Err(GatewayError::Refused(_)) => {
                return Err(not_verified("the gateway refused to confirm the payment"));
            }
            Err(e) => return Err(Error::Unavailable(e.to_string())),
        };
        match all.iter().find(|t| t.transaction_key == key) {
            None => return Err(not_verified("the gateway has no such payment")),
            Some(tx) if !tx.belongs_to(order_id, amount) => {
                return Err(not_verified(
                    "the gateway's payment does not match this order",
                ));
            }
            Some(_) => {}
        }
        let verdict = verdict(&all, order_id, amount, known_key.as_deref());
        let Some((order_status, _)) = self
            .settle_verdict(order_id, &verdict, Source::Callback)
            .await?
        else {
            CallbackOutcome::NotSettled.count();
            tracing::info!(order.id = order_id, claimed = ?claimed, ?verdict, "callback for a payment the gateway has not settled");
            return Err(Error::PaymentNotSettled(match verdict {
                Verdict::Pending { .. } => "the gateway has not settled this payment yet",
                _ => "the gateway's payments of this order are not settled",
            }));
        };
        CallbackOutcome::Accepted.count();
        Ok(order_status)
    }
}

commerce_enums::text_enum! {
    /// How a gateway callback was answered (`payment_callbacks_total{result}`).
    pub enum CallbackOutcome {
        /// Settled from the gateway's answer (or found settled already).
        Accepted => "accepted",
        /// The callback that settled the payment, again: answered without the gateway.
        Repeat => "repeat",
        UnknownOrder => "unknown_order",
        /// The gateway does not confirm it.
        NotVerified => "not_verified",
        /// The gateway has not settled the payment.
        NotSettled => "not_settled",
        /// Refused before anything was read: no valid signature.
        BadSignature => "bad_signature",
    }
}

impl CallbackOutcome {
    pub fn count(self) {
        metrics::counter!("payment_callbacks_total", "result" => self.as_str()).increment(1);
    }
}

fn not_verified(detail: &'static str) -> Error {
    CallbackOutcome::NotVerified.count();
    Error::PaymentNotVerified(detail)
}

#[derive(Queryable)]
struct Locked {
    id: i64,
    user_id: i64,
    status: OrderStatus,
    total_amount: i64,
    discount_amount: i64,
    final_amount: i64,
    payment_method: PaymentKind,
    kind: OrderKind,
    paid_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The order's card payment, locked.
#[derive(Queryable)]
pub(crate) struct LockedPayment {
    pub id: i64,
    pub status: PaymentStatus,
    pub amount: i64,
    pub transaction_key: Option<String>,
}

/// Locks and reads the order's card payment, if it has one (after the order's row: every
/// path locks in that order).
pub(crate) async fn lock_payment(
    conn: &mut AsyncPgConnection,
    order_id: i64,
) -> Result<Option<LockedPayment>> {
    Ok(payments::table
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
        .optional()?)
}

/// Applies the gateway's word on a payment inside the caller's transaction, in the history under
/// `source`: [`decide`] says what it means for the order, this executes it. A payment paid now is
/// first audited `audit` later (`None`: never). Returns the order's status afterwards and the
/// transition applied.
pub async fn settle(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    audit: Option<std::time::Duration>,
    order_id: i64,
    settlement: &Settlement,
    source: Source,
) -> Result<(OrderStatus, Transition)> {
    // The order row lock serialises every settlement and cancellation of this order.
    let order: Locked = order_rows::table
        .find(order_id)
        .select((
            order_rows::id,
            order_rows::user_id,
            order_rows::status,
            order_rows::total_amount,
            order_rows::discount_amount,
            order_rows::final_amount,
            order_rows::payment_method,
            order_rows::kind,
            order_rows::paid_at,
        ))
        .for_update()
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound(Missing::Order))?;
    let payment = lock_payment(conn, order_id)
        .await?
        .ok_or(Error::NotFound(Missing::Payment))?;
    let fact = match settlement {
        Settlement::Paid { transaction_key } => Fact::Charged {
            own: payment.transaction_key.as_deref() == Some(transaction_key.as_str()),
        },
        Settlement::Failed { .. } => Fact::NotCharged,
        Settlement::Reversed { .. } => Fact::Reversed,
    };
    let state = OrderState {
        order: order.status,
        payment: Some(payment.status),
    };
    // A paid payment whose partner orders took all of it back, each by a refund of its own:
    // the gateway's word that it is refunded is those refunds' (the worker confirms them).
    if let Settlement::Reversed { .. } = settlement
        && (order.status, payment.status) == (OrderStatus::Paid, PaymentStatus::Success)
        && partner_orders::card_refunds_owed(conn, payment.id).await? >= payment.amount
    {
        return Ok((order.status, Transition::Nothing));
    }
    let transition = decide(state, fact).map_err(|r| r.into_error(order_id))?;
    let refundable = Refundable {
        payment_id: payment.id,
        order_id,
        user_id: order.user_id,
        amount: payment.amount,
    };
    let status = match (transition, settlement) {
        (Transition::Nothing, _) => order.status,
        (Transition::Pay, Settlement::Paid { transaction_key }) => {
            let lines = holds::lines(conn, order_id).await?;
            // The sale's instant: the column and the events carry the same one.
            let paid_at = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
            diesel::update(order_rows::table.find(order_id))
                .set((
                    order_rows::status.eq(OrderStatus::Paid),
                    order_rows::paid_at.eq(paid_at),
                ))
                .execute(conn)
                .await?;
            partner_orders::paid(conn, topics, order_id, paid_at).await?;
            close(
                conn,
                order_id,
                PaymentStatus::Success,
                Some(transaction_key),
                None,
            )
            .await?;
            let first_audit = match audit {
                Some(every) => {
                    format!("clock_timestamp() + interval '{} seconds'", every.as_secs())
                }
                None => "'infinity'".to_owned(),
            };
            diesel::update(payments::table.find(payment.id))
                .set(payments::next_check_at.eq(
                    diesel::dsl::sql::<diesel::sql_types::Timestamptz>(&first_audit),
                ))
                .execute(conn)
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
            let completed = PaymentSettled {
                order_id,
                user_id: order.user_id,
                amount: payment.amount,
                payment_method: order.payment_method,
                transaction_key: Some(transaction_key.clone()),
                reason: None,
                lines: lines.clone(),
            };
            let events = match order.kind {
                OrderKind::Goods => vec![
                    Event::OrderPaid(OrderPlaced {
                        order_id,
                        user_id: order.user_id,
                        lines,
                        total_amount: order.total_amount,
                        discount_amount: order.discount_amount,
                        final_amount: order.final_amount,
                        payment_method: order.payment_method,
                    }),
                    Event::PaymentCompleted(completed),
                ],
                // Points bought: credited now; no sale for the collector.
                OrderKind::PointTopUp => {
                    points::credit_top_up(conn, order_id, order.user_id, order.final_amount)
                        .await?;
                    vec![Event::PaymentCompleted(completed)]
                }
            };
            outbox::record_at(conn, topics, events, paid_at).await?;
            OrderStatus::Paid
        }
        (Transition::FailPayment, Settlement::Failed { .. } | Settlement::Reversed { .. }) => {
            let (transaction_key, reason) = settlement.failure().expect("a failure");
            let lines = holds::lines(conn, order_id).await?;
            holds::release(conn, order_id, WhenSpent::Refuse).await?;
            diesel::update(order_rows::table.find(order_id))
                .set(order_rows::status.eq(OrderStatus::PaymentFailed))
                .execute(conn)
                .await?;
            partner_orders::payment_failed(conn, topics, order_id).await?;
            close(
                conn,
                order_id,
                PaymentStatus::Failed,
                transaction_key,
                Some(reason),
            )
            .await?;
            history::append(
                conn,
                order_id,
                Kind::Failed,
                source,
                transaction_key,
                Some(reason),
            )
            .await?;
            let failed = PaymentSettled {
                order_id,
                user_id: order.user_id,
                amount: payment.amount,
                payment_method: order.payment_method,
                transaction_key: transaction_key.map(str::to_owned),
                reason: Some(reason.to_owned()),
                lines,
            };
            outbox::record(conn, topics, vec![Event::PaymentFailed(failed)]).await?;
            OrderStatus::PaymentFailed
        }
        (
            Transition::MarkRefunded { .. },
            Settlement::Reversed {
                transaction_key,
                refund_key,
            },
        ) => {
            // The refund this API required, confirmed by the gateway's word that the money is
            // back (whoever made it).
            let refund_key = reversal_key(transaction_key, refund_key.as_deref());
            refunds::confirm_key_in(conn, topics, transaction_key, &refund_key, source).await?;
            order_rows::table
                .find(order_id)
                .select(order_rows::status)
                .first(conn)
                .await?
        }
        (
            Transition::AcceptReversal,
            Settlement::Reversed {
                transaction_key,
                refund_key,
            },
        ) => {
            accept_reversal(
                conn,
                topics,
                &order,
                &refundable,
                transaction_key,
                refund_key.as_deref(),
                source,
            )
            .await?;
            OrderStatus::Refunded
        }
        (Transition::RefundLateCharge, Settlement::Paid { transaction_key }) => {
            tracing::warn!(order.id = order_id, transaction_key = %transaction_key, "the gateway charged an order that is no longer payable; refunding it");
            metrics::counter!("payments_refund_required_total").increment(1);
            diesel::update(payments::table.find(payment.id))
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
                &refundable,
                transaction_key,
                RefundCause::ChargedAfterClose,
                source,
            )
            .await?;
            order.status
        }
        (Transition::RefundDuplicate, Settlement::Paid { transaction_key }) => {
            // Two successful gateway payments for one order: the second goes back (once per
            // charge, however often it is reported).
            if refunds::require(
                conn,
                &refundable,
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
            order.status
        }
        (transition, _) => return Err(transition.unexpected(order_id, fact)),
    };
    Ok((status, transition))
}

/// The refund key recorded for a reversal: the gateway's, or `<transaction>:reversed` when the
/// gateway did not name it.
fn reversal_key(transaction_key: &str, refund_key: Option<&str>) -> String {
    refund_key.map_or_else(|| format!("{transaction_key}:reversed"), str::to_owned)
}

/// Executes [`Transition::AcceptReversal`]: the gateway gave a paid order's money back by itself.
/// Holds given back (a top-up's points taken back as far as they are left; a shortfall is listed
/// for an operator), order and payment `REFUNDED`, the refund recorded as confirmed, history,
/// and `OrderCancelled` (goods: the sale is subtracted) + `PaymentRefunded`.
async fn accept_reversal(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    order: &Locked,
    refundable: &Refundable,
    transaction_key: &str,
    refund_key: Option<&str>,
    source: Source,
) -> Result<()> {
    let order_id = order.id;
    let lines = holds::release(conn, order_id, WhenSpent::TakeWhatIsLeft).await?;
    partner_orders::cancelled(conn, topics, order_id).await?;
    partner_orders::card_refunded(conn, refundable.payment_id).await?;
    diesel::update(order_rows::table.find(order_id))
        .set((
            order_rows::status.eq(OrderStatus::Refunded),
            order_rows::cancelled_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    diesel::update(payments::table.find(refundable.payment_id))
        .set((
            payments::status.eq(PaymentStatus::Refunded),
            payments::reason.eq("refunded or charged back at the gateway"),
            // No more audits: the payment has ended.
            payments::next_check_at.eq(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
                "'infinity'",
            )),
        ))
        .execute(conn)
        .await?;
    history::append(
        conn,
        order_id,
        Kind::ReversedAtGateway,
        source,
        Some(transaction_key),
        refund_key,
    )
    .await?;
    if order.kind == OrderKind::Goods {
        outbox::record(
            conn,
            topics,
            vec![Event::OrderCancelled(OrderCancelled {
                order_id,
                user_id: order.user_id,
                lines,
                was_paid: true,
                paid_at: order.paid_at,
            })],
        )
        .await?;
    }
    let refund_key = reversal_key(transaction_key, refund_key);
    // What partner orders refunded on their own went back with them; the gateway took the rest.
    let owed = partner_orders::card_refunds_owed(conn, refundable.payment_id).await?;
    let rest = Refundable {
        amount: refundable.amount - owed,
        ..*refundable
    };
    if rest.amount > 0 {
        refunds::record_reversal(conn, topics, &rest, transaction_key, &refund_key).await?;
    }
    tracing::warn!(order.id = order_id, %transaction_key, %refund_key, "the gateway gave a paid order's money back by itself");
    Ok(())
}

/// Requires the refund of a paid card order's `payment` (locked by the caller), inside the
/// cancellation's transaction.
pub(crate) async fn require_refund(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    user_id: i64,
    payment: &LockedPayment,
) -> Result<()> {
    // A paid card payment always has its transaction key: the gateway's success names it.
    let key = payment
        .transaction_key
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("paid card order {order_id} has no transaction"))?;
    diesel::update(payments::table.find(payment.id))
        .set((
            payments::status.eq(PaymentStatus::RefundRequired),
            payments::reason.eq("the paid order was cancelled; refund requested"),
        ))
        .execute(conn)
        .await?;
    // What partner orders cancelled or returned on their own owe back is refunded with them;
    // the rest goes back now (nothing, when they took all of it: the payment is closed once
    // their refunds are confirmed).
    let remaining = payment.amount - partner_orders::card_refunds_owed(conn, payment.id).await?;
    if remaining > 0 {
        let refundable = Refundable {
            payment_id: payment.id,
            order_id,
            user_id,
            amount: remaining,
        };
        refunds::require(
            conn,
            &refundable,
            key,
            RefundCause::OrderCancelled,
            Source::Cancel,
        )
        .await?;
    }
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
