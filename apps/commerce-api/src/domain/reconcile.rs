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
//! Metrics: `payments_reconciled_total{result}`, `payments_pending` (due or not, as of the last
//! pass) and `payments_pending_oldest_seconds`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bytea, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use futures::StreamExt;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::domain::Result;
use crate::domain::history::{PaymentEventKind as Kind, Source};
use crate::domain::payments::{Payments, Settlement};
use crate::domain::states::{CardType, PaymentStatus};
use crate::infra::gateway::{GatewayError, PaymentRequest, Transaction, TxStatus};

/// Payments claimed per pass. A claim lasts `PAYMENT_RECHECK_AFTER_MS`; a payment still queued
/// in the pass when its claim ends may be claimed by another instance too, which is harmless
/// for lookups and settling (idempotent) and guarded for the one step that is not, requesting
/// the payment again: that needs the claim renewed first, and only its holder can renew it.
const BATCH: i64 = 128;
/// Gateway calls in flight per pass (they hold no database connection while they wait).
const CONCURRENCY: usize = 32;

/// A pending payment claimed for a look at the gateway.
#[derive(QueryableByName, Debug)]
struct Due {
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

/// Runs reconciliation passes until `stop` turns true.
pub async fn run(state: Arc<Payments>, stop: watch::Receiver<bool>) {
    let interval = state.settings.reconcile_interval;
    run_passes(
        "payment reconciliation",
        interval,
        BATCH,
        || pass(&state),
        stop,
    )
    .await
}

/// Runs `pass` until `stop` turns true: again at once after a full batch of `batch`, after
/// `interval` otherwise, and after at least a second when it failed.
pub(crate) async fn run_passes<F, Fut>(
    what: &'static str,
    interval: std::time::Duration,
    batch: i64,
    mut pass: F,
    mut stop: watch::Receiver<bool>,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize>>,
{
    loop {
        let pause = match pass().await {
            Ok(n) if n as i64 == batch => std::time::Duration::ZERO,
            Ok(_) => interval,
            Err(e) => {
                tracing::warn!(error = %e, "{what} pass failed; retrying");
                interval.max(std::time::Duration::from_secs(1))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass: claims up to a batch of due payments and reconciles them. Returns how many.
pub async fn pass(state: &Payments) -> Result<usize> {
    let due = claim(state).await?;
    let n = due.len();
    futures::stream::iter(due)
        .for_each_concurrent(CONCURRENCY, |d| {
            let order_id = d.order_id;
            // A trace of its own per payment looked at: its gateway calls and log lines share it.
            let span = tracing::info_span!("payment.reconcile", order.id = order_id);
            async move {
                let result = reconcile(state, d).await;
                let label = match &result {
                    Ok(label) => *label,
                    Err(e) => {
                        tracing::warn!(order.id = order_id, error = %e, "could not reconcile a payment");
                        "error"
                    }
                };
                metrics::counter!("payments_reconciled_total", "result" => label).increment(1);
            }
            .instrument(span)
        })
        .await;
    Ok(n)
}

async fn claim(state: &Payments) -> Result<Vec<Due>> {
    #[derive(QueryableByName)]
    struct Backlog {
        #[diesel(sql_type = BigInt)]
        pending: i64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        oldest: f64,
    }
    let mut conn = state.db.get().await?;
    let recheck_ms = state.settings.recheck_after.as_millis() as i64;
    let due: Vec<Due> = diesel::sql_query(
        "UPDATE payments p
            SET next_check_at = now() + $1 * interval '1 millisecond', checks = p.checks + 1
          WHERE p.id IN (SELECT id FROM payments
                          WHERE status IN ('PENDING', 'CANCELLED') AND next_check_at <= now()
                          ORDER BY next_check_at
                          LIMIT $2
                          FOR UPDATE SKIP LOCKED)
      RETURNING p.order_id, p.status, p.user_id, p.amount, p.card_type, p.card_no_sealed,
                p.transaction_key, p.created_at, p.next_check_at",
    )
    .bind::<BigInt, _>(recheck_ms)
    .bind::<BigInt, _>(BATCH)
    .load(&mut conn)
    .await?;
    let backlog: Backlog = diesel::sql_query(
        "SELECT count(*) AS pending,
                COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) AS oldest
           FROM payments WHERE status = 'PENDING'",
    )
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
          WHERE order_id = $2 AND status = 'PENDING' AND next_check_at = $3",
    )
    .bind::<BigInt, _>(state.settings.recheck_after.as_millis() as i64)
    .bind::<BigInt, _>(due.order_id)
    .bind::<Timestamptz, _>(due.next_check_at)
    .execute(&mut conn)
    .await?;
    Ok(renewed == 1)
}

/// Stops watching a cancelled payment.
async fn stop_watching(state: &Payments, order_id: i64) -> Result<()> {
    let mut conn = state.db.get().await?;
    diesel::sql_query(
        "UPDATE payments SET next_check_at = 'infinity' WHERE order_id = $1 AND status = 'CANCELLED'",
    )
    .bind::<BigInt, _>(order_id)
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Settles and labels the outcome by what settling did (`already_settled` when a callback or
/// a cancel got there first).
async fn settle_labelled(
    state: &Payments,
    order_id: i64,
    settlement: Settlement,
    label: &'static str,
) -> Result<&'static str> {
    let (_, changed) = state
        .settle_with(order_id, settlement, Source::Reconciliation)
        .await?;
    Ok(if changed { label } else { "already_settled" })
}

/// Settles (or re-requests) one payment according to the gateway. Returns a metrics label.
async fn reconcile(state: &Payments, due: Due) -> Result<&'static str> {
    let gateway = &state.gateway;
    let age = (Utc::now() - due.created_at).to_std().unwrap_or_default();
    let past_deadline = age >= state.settings.request_deadline;
    // Every payment the gateway has for the order, not only the one whose key we know: should
    // there ever be two, a success under either is the order's payment.
    let found = match gateway.by_order(due.user_id, due.order_id).await {
        Ok(found) => found,
        Err(GatewayError::Refused(detail)) => {
            tracing::warn!(order.id = due.order_id, %detail, "the gateway refused a lookup");
            return Ok("gateway_refused");
        }
        Err(_) => return Ok("gateway_unavailable"),
    };
    // A payment belongs to this order only if the gateway agrees on order and amount.
    let found: Vec<Transaction> = found
        .into_iter()
        .filter(|t| t.belongs_to(due.order_id, due.amount))
        .collect();
    let cancelled = due.status == PaymentStatus::Cancelled;
    if let Some(key) = &due.transaction_key
        && !found.iter().any(|t| &t.transaction_key == key)
    {
        // The gateway gave us this key, so it received the payment: never treat it as lost
        // (and release the order) on the gateway's word that it does not know it. A pending
        // one stays visible in `payments_pending_oldest_seconds` for an operator.
        tracing::warn!(order.id = due.order_id, transaction_key = %key, "the gateway does not list a payment it accepted");
        if cancelled && past_deadline {
            stop_watching(state, due.order_id).await?;
        }
        return Ok("key_unknown_at_gateway");
    }
    let successes: Vec<&Transaction> = found.iter().filter(|t| t.status.charged()).collect();
    if let Some((first, extra)) = successes.split_first() {
        let label = settle_labelled(
            state,
            due.order_id,
            Settlement::Paid {
                transaction_key: first.transaction_key.clone(),
            },
            if cancelled { "refund_required" } else { "paid" },
        )
        .await?;
        // Any further success is a second charge: `settle` records it for a refund.
        for t in extra {
            state
                .settle_with(
                    due.order_id,
                    Settlement::Paid {
                        transaction_key: t.transaction_key.clone(),
                    },
                    Source::Reconciliation,
                )
                .await?;
        }
        return Ok(label);
    }
    if cancelled {
        if found.iter().any(|t| t.status == TxStatus::Pending) {
            return Ok("cancelled_pending");
        }
        // Declined, or never received: nothing was charged, nothing more to watch.
        stop_watching(state, due.order_id).await?;
        return Ok("cancelled_closed");
    }
    if let Some(pending) = found.iter().find(|t| t.status == TxStatus::Pending) {
        if due.transaction_key.is_none() {
            state
                .record_transaction(
                    due.order_id,
                    &pending.transaction_key,
                    Source::Reconciliation,
                )
                .await?;
        }
        return Ok("still_pending");
    }
    if found.iter().any(|t| t.status == TxStatus::Unknown) {
        // A status this client does not know: not settled as far as it can tell, and not lost.
        return Ok("unknown_status");
    }
    if let Some(failed) = found.last() {
        return settle_labelled(
            state,
            due.order_id,
            Settlement::Failed {
                transaction_key: Some(failed.transaction_key.clone()),
                reason: failed
                    .reason
                    .clone()
                    .unwrap_or_else(|| "declined".to_owned()),
            },
            "failed",
        )
        .await;
    }
    // The gateway never received this payment: request it again, or give up past the
    // deadline. Both only while this pass still holds the claim.
    let card_no = due
        .card_no_sealed
        .as_deref()
        .and_then(|sealed| state.cards.open(sealed));
    if !renew_claim(state, &due).await? {
        return Ok("claim_lost");
    }
    let card_no = match card_no {
        Some(card_no) if !past_deadline => card_no,
        _ => {
            return settle_labelled(
                state,
                due.order_id,
                Settlement::Failed {
                    transaction_key: None,
                    reason: "the payment never reached the payment gateway".to_owned(),
                },
                "expired",
            )
            .await;
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
    match gateway.request_payment(&request).await {
        Ok(tx) => {
            state
                .record_transaction(due.order_id, &tx.transaction_key, Source::Reconciliation)
                .await?;
            Ok("requested")
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
                "failed",
            )
            .await
        }
        Err(_) => Ok("gateway_unavailable"),
    }
}
