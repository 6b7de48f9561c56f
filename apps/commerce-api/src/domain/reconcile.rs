//! Payment reconciliation: every card payment still `PENDING` after `PAYMENT_RECHECK_AFTER_MS`
//! is looked up at the gateway and settled the way a callback would settle it.
//!
//! Every API instance runs this loop, and the instances share the work: a pass *claims* due
//! payments by pushing their `next_check_at` forward in one statement (`FOR UPDATE SKIP
//! LOCKED`), so each due payment is looked at by one instance per round, and settling is
//! idempotent anyway ([`crate::domain::payments::settle`]).
//!
//! For each claimed payment:
//! - the gateway has it `SUCCESS` → paid; `FAILED` → failed and compensated; `PENDING` → wait
//!   (adopting its transaction key if the API never learned it);
//! - the gateway has never received it (a crash before the call, an outage, an open breaker) →
//!   requested again with the sealed card number, or, past `PAYMENT_REQUEST_DEADLINE_SECONDS`,
//!   failed and compensated;
//! - the gateway cannot be asked (breaker open, unavailable) → looked at again next round.
//!
//! A payment whose order was cancelled while it was pending is looked up too, until the gateway
//! has settled it: a success there is a charge for a closed order, refunded
//! (`crate::domain::refunds`) even when its callback was lost.
//!
//! Paid payments are *audited*: looked up again every `PAYMENT_AUDIT_INTERVAL_SECONDS` for
//! `PAYMENT_AUDIT_WINDOW_HOURS` after they were paid (a share of each pass, so pending payments
//! come first), so a refund or chargeback the gateway made by itself is found even when its
//! webhook was lost (the order ends `REFUNDED`), and so is a second charge (refunded).
//!
//! Metrics: `payments_reconciled_total{result}`, `payments_pending` (due or not, as of the last
//! pass) and `payments_pending_oldest_seconds`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use commerce_db::worker::{self, LeasedWork, Schedule};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bytea, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use tokio::sync::watch;

use crate::domain::history::{PaymentEventKind as Kind, Source};
use crate::domain::lifecycle::{Transition, Verdict, verdict};
use crate::domain::payments::{Payments, Settlement};
use crate::domain::states::{CardType, PaymentStatus};
use crate::domain::{Error, Result};
use crate::infra::gateway::{GatewayError, PaymentRequest};

/// Payments claimed per pass. A claim lasts `PAYMENT_RECHECK_AFTER_MS`; a payment still queued
/// in the pass when its claim ends may be claimed by another instance too, which is harmless
/// for lookups and settling (idempotent) and guarded for the one step that is not, requesting
/// the payment again: that needs the claim renewed first, and only its holder can renew it.
const BATCH: i64 = 128;
/// Gateway calls in flight per pass (they hold no database connection while they wait).
const CONCURRENCY: usize = 32;

/// A pending payment claimed for a look at the gateway.
#[derive(QueryableByName, Debug)]
pub struct Due {
    #[diesel(sql_type = BigInt)]
    order_id: i64,
    #[diesel(sql_type = Text)]
    status: PaymentStatus,
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = BigInt)]
    amount: i64,
    #[diesel(sql_type = Text)]
    card_type: CardType,
    #[diesel(sql_type = Nullable<Bytea>)]
    card_no_sealed: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Text>)]
    transaction_key: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    /// The claim: when it ends.
    #[diesel(sql_type = Timestamptz)]
    next_check_at: DateTime<Utc>,
}

/// Reconciliation, as leased work.
pub struct Reconciliation(pub Arc<Payments>);

impl LeasedWork for Reconciliation {
    type Item = Due;
    type Outcome = Reconciled;
    type Error = Error;
    const NAME: &'static str = "payment reconciliation";
    const METRIC: &'static str = "payments_reconciled_total";

    async fn claim(&self, limit: i64) -> Result<Vec<Due>> {
        claim(&self.0, limit).await
    }

    async fn process(&self, due: Due) -> Result<Reconciled> {
        reconcile(&self.0, due).await
    }

    fn span(&self, due: &Due) -> tracing::Span {
        tracing::info_span!("payment.reconcile", order.id = due.order_id)
    }
}

impl worker::Outcome for Reconciled {
    fn as_str(self) -> &'static str {
        Reconciled::as_str(self)
    }
    fn error() -> Self {
        Reconciled::Error
    }
}

fn schedule(state: &Payments) -> Schedule {
    Schedule {
        interval: state.settings.reconcile_interval,
        batch: BATCH,
        concurrency: CONCURRENCY,
    }
}

/// Runs reconciliation passes until `stop` turns true.
pub async fn run(state: Arc<Payments>, stop: watch::Receiver<bool>) {
    let schedule = schedule(&state);
    worker::run(Arc::new(Reconciliation(state)), schedule, stop).await
}

/// One pass: claims up to a batch of due payments and reconciles them. Returns how many.
pub async fn pass(state: &Arc<Payments>) -> Result<usize> {
    worker::pass(&Reconciliation(state.clone()), schedule(state)).await
}

async fn claim(state: &Payments, limit: i64) -> Result<Vec<Due>> {
    #[derive(QueryableByName)]
    struct Backlog {
        #[diesel(sql_type = BigInt)]
        pending: i64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        oldest: f64,
    }
    let mut conn = state.db.get().await?;
    let recheck_ms = state.settings.recheck_after.as_millis() as i64;
    // Audits of paid payments take at most a quarter of a pass: pending payments come first.
    let due: Vec<Due> = diesel::sql_query(
        "WITH due AS (SELECT id FROM payments
                       WHERE status IN ($3, $4) AND next_check_at <= now()
                       ORDER BY next_check_at
                       LIMIT $2
                       FOR UPDATE SKIP LOCKED),
              audit AS (SELECT id FROM payments
                         WHERE status = $5 AND next_check_at <= now()
                         ORDER BY next_check_at
                         LIMIT greatest($2 / 4, 1)
                         FOR UPDATE SKIP LOCKED)
         UPDATE payments p
            SET next_check_at = now() + $1 * interval '1 millisecond', checks = p.checks + 1
          WHERE p.id IN (SELECT id FROM due UNION ALL SELECT id FROM audit)
      RETURNING p.order_id, p.status, p.user_id, p.amount, p.card_type, p.card_no_sealed,
                p.transaction_key, p.created_at, p.next_check_at",
    )
    .bind::<BigInt, _>(recheck_ms)
    .bind::<BigInt, _>(limit)
    .bind::<Text, _>(PaymentStatus::Pending)
    .bind::<Text, _>(PaymentStatus::Cancelled)
    .bind::<Text, _>(PaymentStatus::Success)
    .load(&mut conn)
    .await?;
    let backlog: Backlog = diesel::sql_query(
        "SELECT count(*) AS pending,
                COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) AS oldest
           FROM payments WHERE status = $1",
    )
    .bind::<Text, _>(PaymentStatus::Pending)
    .get_result(&mut conn)
    .await?;
    metrics::gauge!("payments_pending").set(backlog.pending as f64);
    metrics::gauge!("payments_pending_oldest_seconds").set(backlog.oldest);
    Ok(due)
}

/// Renews a claim, only if it is still this pass's: before a step that must not happen twice
/// (requesting the payment again, or giving up on it), so an instance whose claim ran out
/// during a slow pass cannot act on a payment another instance has claimed since.
async fn renew_claim(state: &Payments, due: &Due) -> Result<bool> {
    let mut conn = state.db.get().await?;
    let renewed = diesel::sql_query(
        "UPDATE payments SET next_check_at = now() + $1 * interval '1 millisecond'
          WHERE order_id = $2 AND status = $4 AND next_check_at = $3",
    )
    .bind::<BigInt, _>(state.settings.recheck_after.as_millis() as i64)
    .bind::<BigInt, _>(due.order_id)
    .bind::<Timestamptz, _>(due.next_check_at)
    .bind::<Text, _>(PaymentStatus::Pending)
    .execute(&mut conn)
    .await?;
    Ok(renewed == 1)
}

/// Schedules a paid payment's next audit: one interval on while it is recent, never once it is
/// not.
async fn next_audit(state: &Payments, order_id: i64) -> Result<()> {
    let mut conn = state.db.get().await?;
    diesel::sql_query(
        "UPDATE payments
            SET next_check_at = CASE WHEN settled_at > now() - $2 * interval '1 second'
                                     THEN now() + $3 * interval '1 second'
                                     ELSE 'infinity' END
          WHERE order_id = $1 AND status = $4",
    )
    .bind::<BigInt, _>(order_id)
    .bind::<BigInt, _>(state.settings.audit_for.as_secs() as i64)
    .bind::<BigInt, _>(state.settings.audit_every.as_secs() as i64)
    .bind::<Text, _>(PaymentStatus::Success)
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Stops watching a cancelled payment.
async fn stop_watching(state: &Payments, order_id: i64) -> Result<()> {
    let mut conn = state.db.get().await?;
    diesel::sql_query(
        "UPDATE payments SET next_check_at = 'infinity' WHERE order_id = $1 AND status = $2",
    )
    .bind::<BigInt, _>(order_id)
    .bind::<Text, _>(PaymentStatus::Cancelled)
    .execute(&mut conn)
    .await?;
    Ok(())
}

commerce_enums::text_enum! {
    /// What one look at a payment did (`payments_reconciled_total{result}`).
    pub enum Reconciled {
        Paid => "paid",
        Failed => "failed",
        /// Charged after its order was closed: refund required.
        RefundRequired => "refund_required",
        /// A callback or a cancel got there first.
        AlreadySettled => "already_settled",
        /// A paid payment looked up again: the gateway still holds the money.
        Audited => "audited",
        /// The gateway gave a paid order's money back by itself: the order is `REFUNDED`.
        Reversed => "reversed_at_gateway",
        /// A paid payment the gateway reports oddly (pending, unknown, unlisted, declined):
        /// logged, audited again.
        AuditUnclear => "audit_unclear",
        StillPending => "still_pending",
        /// The gateway reports a status this client does not know: watched.
        UnknownStatus => "unknown_status",
        /// The gateway does not list a payment it accepted: watched.
        KeyUnknownAtGateway => "key_unknown_at_gateway",
        /// A cancelled order's payment is still open at the gateway: watched.
        CancelledPending => "cancelled_pending",
        /// A cancelled order's payment ended without a charge: no longer watched.
        CancelledClosed => "cancelled_closed",
        /// The gateway never received it: requested again.
        Requested => "requested",
        /// The gateway never received it before the deadline: failed.
        Expired => "expired",
        /// Another instance claimed it since.
        ClaimLost => "claim_lost",
        GatewayRefused => "gateway_refused",
        GatewayUnavailable => "gateway_unavailable",
        Error => "error",
    }
}

/// Settles and names the outcome by what settling did (`AlreadySettled` when a callback or a
/// cancel got there first).
async fn settle_labelled(
    state: &Payments,
    order_id: i64,
    settlement: Settlement,
) -> Result<Reconciled> {
    let (_, transition) = state
        .settle_with(order_id, settlement, Source::Reconciliation)
        .await?;
    Ok(outcome_of(transition))
}

fn outcome_of(transition: Transition) -> Reconciled {
    match transition {
        Transition::Pay => Reconciled::Paid,
        Transition::FailPayment => Reconciled::Failed,
        Transition::RefundLateCharge => Reconciled::RefundRequired,
        Transition::AcceptReversal => Reconciled::Reversed,
        Transition::Nothing
        | Transition::RefundDuplicate
        | Transition::Cancel
        | Transition::CancelAndRefund
        | Transition::MarkRefunded { .. } => Reconciled::AlreadySettled,
    }
}

/// Settles (or re-requests) one payment according to the gateway's [`verdict`].
async fn reconcile(state: &Payments, due: Due) -> Result<Reconciled> {
    let gateway = &state.gateway;
    let age = (Utc::now() - due.created_at).to_std().unwrap_or_default();
    let past_deadline = age >= state.settings.request_deadline;
    // Every payment the gateway has for the order, not only the one whose key we know: should
    // there ever be two, a success under either is the order's payment.
    let found = match gateway.by_order(due.user_id, due.order_id).await {
        Ok(found) => found,
        Err(GatewayError::Refused(detail)) => {
            tracing::warn!(order.id = due.order_id, %detail, "the gateway refused a lookup");
            return Ok(Reconciled::GatewayRefused);
        }
        Err(_) => return Ok(Reconciled::GatewayUnavailable),
    };
    let cancelled = due.status == PaymentStatus::Cancelled;
    let verdict = verdict(
        &found,
        due.order_id,
        due.amount,
        due.transaction_key.as_deref(),
    );
    if due.status == PaymentStatus::Success {
        return audit(state, due.order_id, &verdict).await;
    }
    match &verdict {
        Verdict::Charged { .. } => {
            let settled = state
                .settle_verdict(due.order_id, &verdict, Source::Reconciliation)
                .await?;
            Ok(settled.map_or(Reconciled::AlreadySettled, |(_, t)| outcome_of(t)))
        }
        Verdict::Unlisted { key } => {
            // The gateway gave us this key, so it received the payment: never treat it as lost
            // (and release the order) on the gateway's word that it does not know it. A pending
            // one stays visible in `payments_pending_oldest_seconds` for an operator.
            tracing::warn!(order.id = due.order_id, transaction_key = %key, "the gateway does not list a payment it accepted");
            if cancelled && past_deadline {
                stop_watching(state, due.order_id).await?;
            }
            Ok(Reconciled::KeyUnknownAtGateway)
        }
        Verdict::Pending { .. } if cancelled => Ok(Reconciled::CancelledPending),
        Verdict::Pending { key } => {
            if due.transaction_key.is_none() {
                state
                    .record_transaction(due.order_id, key, Source::Reconciliation)
                    .await?;
            }
            Ok(Reconciled::StillPending)
        }
        // Not settled as far as this client can tell, and not lost: watched, cancelled or not.
        Verdict::Unknown => Ok(Reconciled::UnknownStatus),
        Verdict::NotCharged { .. } | Verdict::NotReceived | Verdict::Reversed { .. }
            if cancelled =>
        {
            // Declined, refunded at the gateway, or never received: nothing more to watch.
            stop_watching(state, due.order_id).await?;
            Ok(Reconciled::CancelledClosed)
        }
        Verdict::NotCharged { key, reason } => {
            settle_labelled(
                state,
                due.order_id,
                Settlement::Failed {
                    transaction_key: Some(key.clone()),
                    reason: reason.clone(),
                },
            )
            .await
        }
        Verdict::Reversed { key, refund_key } => {
            settle_labelled(
                state,
                due.order_id,
                Settlement::Reversed {
                    transaction_key: key.clone(),
                    refund_key: refund_key.clone(),
                },
            )
            .await
        }
        Verdict::NotReceived => request_again(state, due, past_deadline).await,
    }
}

/// Audits a paid payment: the gateway gave the money back (the order is reversed), still holds
/// it (a second charge is refunded), or says something else (logged). Schedules the next audit
/// unless the order was reversed.
async fn audit(state: &Payments, order_id: i64, verdict: &Verdict) -> Result<Reconciled> {
    let outcome = match verdict {
        Verdict::Reversed { .. } => {
            let settled = state
                .settle_verdict(order_id, verdict, Source::Reconciliation)
                .await?;
            match settled.map(|(_, t)| t) {
                Some(Transition::AcceptReversal) => return Ok(Reconciled::Reversed),
                _ => Reconciled::AlreadySettled,
            }
        }
        Verdict::Charged { .. } => {
            state
                .settle_verdict(order_id, verdict, Source::Reconciliation)
                .await?;
            Reconciled::Audited
        }
        Verdict::Unlisted { .. }
        | Verdict::Pending { .. }
        | Verdict::Unknown
        | Verdict::NotCharged { .. }
        | Verdict::NotReceived => {
            tracing::warn!(
                order.id = order_id,
                ?verdict,
                "the gateway reports a paid payment oddly"
            );
            Reconciled::AuditUnclear
        }
    };
    next_audit(state, order_id).await?;
    Ok(outcome)
}

/// The gateway never received this payment: requests it again, or gives up past the deadline.
/// Both only while this pass still holds the claim.
async fn request_again(state: &Payments, due: Due, past_deadline: bool) -> Result<Reconciled> {
    let card_no = due
        .card_no_sealed
        .as_deref()
        .and_then(|sealed| state.cards.open(sealed));
    if !renew_claim(state, &due).await? {
        return Ok(Reconciled::ClaimLost);
    }
    let card_no = match card_no {
        Some(card_no) if !past_deadline => card_no,
        _ => {
            let failed = settle_labelled(
                state,
                due.order_id,
                Settlement::Failed {
                    transaction_key: None,
                    reason: "the payment never reached the payment gateway".to_owned(),
                },
            )
            .await?;
            return Ok(match failed {
                Reconciled::Failed => Reconciled::Expired,
                other => other,
            });
        }
    };
    let request = PaymentRequest {
        user_id: due.user_id,
        order_id: due.order_id,
        card_type: due.card_type.as_str(),
        card_no: card_no.expose(),
        amount: due.amount,
        idempotency_key: PaymentRequest::key_for(due.order_id),
    };
    state
        .note(
            due.order_id,
            Kind::Requested,
            Source::Reconciliation,
            "the gateway never received the payment: requested again",
        )
        .await?;
    match state.gateway.request_payment(&request).await {
        Ok(tx) => {
            state
                .record_transaction(due.order_id, &tx.transaction_key, Source::Reconciliation)
                .await?;
            Ok(Reconciled::Requested)
        }
        Err(GatewayError::Refused(detail)) => {
            tracing::warn!(order.id = due.order_id, %detail, "the gateway refused the payment");
            settle_labelled(
                state,
                due.order_id,
                Settlement::Failed {
                    transaction_key: None,
                    reason: "the payment gateway refused the payment".to_owned(),
                },
            )
            .await
        }
        Err(_) => Ok(Reconciled::GatewayUnavailable),
    }
}
