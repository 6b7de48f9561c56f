//! The order's life as one state machine: pure functions, no I/O.
//!
//! Two decisions are made here and nowhere else:
//! - [`verdict`]: what the gateway's transactions for one order amount to (charged, still open,
//!   not charged, never received, or a transaction it accepted and no longer lists);
//! - [`decide`]: given the order's status, its card payment's status and what happened (the
//!   gateway charged it or will not, the customer cancels, the gateway confirmed a refund),
//!   which [`Transition`] to apply, or why it is refused.
//!
//! The code around them (`payments::settle`, `orders::cancel`, `refunds`, `reconcile`, the
//! callback) only reads the rows under the order's lock, asks, and executes the transition: rows,
//! history and outbox in one transaction. A new state or fact is a new variant here, and the
//! compiler points at every `match` that must say what it means.

use crate::domain::states::{OrderStatus, PaymentStatus};
use crate::domain::{Error, Missing};
use crate::infra::gateway::{Transaction, TxStatus};

/// What the gateway's transactions for one order amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The gateway holds the money under `key` (the payment's own transaction when it is one
    /// of them); every further successful transaction in `duplicates` is a second charge.
    Charged {
        key: String,
        duplicates: Vec<String>,
    },
    /// The gateway accepted the payment under `key` (told to this API) and no longer lists it:
    /// never read as lost, since the gateway received it. Watched, for an operator.
    Unlisted { key: String },
    /// A transaction is still open at the gateway (`key`: the first, to adopt).
    Pending { key: String },
    /// A transaction is in a status this client does not know: not settled as far as it can
    /// tell, and not lost.
    Unknown,
    /// The payment's own transaction (`key`) was refunded or charged back at the gateway, by
    /// the gateway itself or by this API, and nothing else holds money: the money is back with
    /// the customer. `refund_key`: the gateway's refund, when it names it.
    Reversed {
        key: String,
        refund_key: Option<String>,
    },
    /// Every transaction ended without the gateway keeping money: declined, or charged and
    /// refunded at the gateway before the order was paid. `key`/`reason`: the last one.
    NotCharged { key: String, reason: String },
    /// The gateway has no transaction for the order.
    NotReceived,
}

/// Why a transaction refunded at the gateway does not pay for an order.
pub const REFUNDED_AT_GATEWAY: &str = "the gateway refunded the payment before the order was paid";

/// Turns the gateway's transactions into one verdict for order `order_id` of `amount`, whose
/// payment this API knows by `known_key` (if the gateway named it). Transactions for another
/// order or amount are not this order's and are ignored.
///
/// Precedence: money held (a `SUCCESS` anywhere) over everything; then a known transaction the
/// gateway no longer lists; then anything still open (`PENDING`, or a status this client does
/// not know); then the payment's own transaction refunded at the gateway; only when every
/// transaction has ended without money held is the order not charged. A `REFUNDED` transaction
/// is never money held.
pub fn verdict(
    transactions: &[Transaction],
    order_id: i64,
    amount: i64,
    known_key: Option<&str>,
) -> Verdict {
    let mine: Vec<&Transaction> = transactions
        .iter()
        .filter(|t| t.belongs_to(order_id, amount))
        .collect();
    let mut successes: Vec<&str> = mine
        .iter()
        .filter(|t| t.status == TxStatus::Success)
        .map(|t| t.transaction_key.as_str())
        .collect();
    if !successes.is_empty() {
        // The payment's own transaction, when it succeeded, is the order's; others are extra.
        if let Some(own) = successes.iter().position(|k| Some(*k) == known_key) {
            successes.swap(0, own);
        }
        let (key, duplicates) = successes.split_first().expect("not empty");
        return Verdict::Charged {
            key: (*key).to_owned(),
            duplicates: duplicates.iter().map(|k| (*k).to_owned()).collect(),
        };
    }
    if let Some(key) = known_key
        && !mine.iter().any(|t| t.transaction_key == key)
    {
        return Verdict::Unlisted {
            key: key.to_owned(),
        };
    }
    if let Some(pending) = mine.iter().find(|t| t.status == TxStatus::Pending) {
        return Verdict::Pending {
            key: pending.transaction_key.clone(),
        };
    }
    if mine.iter().any(|t| t.status == TxStatus::Unknown) {
        return Verdict::Unknown;
    }
    if let Some(own) = mine
        .iter()
        .find(|t| Some(t.transaction_key.as_str()) == known_key && t.status == TxStatus::Refunded)
    {
        return Verdict::Reversed {
            key: own.transaction_key.clone(),
            refund_key: own.refund_key.clone(),
        };
    }
    match mine.last() {
        Some(last) => Verdict::NotCharged {
            key: last.transaction_key.clone(),
            reason: match last.status {
                TxStatus::Refunded => REFUNDED_AT_GATEWAY.to_owned(),
                _ => last.reason.clone().unwrap_or_else(|| "declined".to_owned()),
            },
        },
        None => Verdict::NotReceived,
    }
}

/// An order as the state machine sees it: its status and, for a card order with something to
/// pay, its payment's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderState {
    pub order: OrderStatus,
    pub payment: Option<PaymentStatus>,
}

/// What happened to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    /// The gateway charged the order; `own`: under the transaction the payment already names.
    Charged { own: bool },
    /// The gateway will not charge it: declined, refused, refunded at the gateway, or never
    /// received before the deadline.
    NotCharged,
    /// The customer cancels the order.
    Cancel,
    /// The gateway confirmed a refund; `own`: of the payment's own transaction.
    RefundConfirmed { own: bool },
    /// The gateway reports the payment's own transaction refunded or charged back: whoever
    /// asked for it, the money is back with the customer.
    Reversed,
}

/// What to do. Each variant names every row it changes; executing it is the caller's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Order `PAID` (with its sale instant), payment `SUCCESS`; `OrderPaid` + `PaymentCompleted`.
    Pay,
    /// Holds given back, order `PAYMENT_FAILED`, payment `FAILED`; `PaymentFailed`.
    FailPayment,
    /// Holds given back, order `CANCELLED`; a pending payment `CANCELLED` (still watched at the
    /// gateway); `OrderCancelled`.
    Cancel,
    /// Holds given back, order `CANCELLED`, the paid card payment `REFUND_REQUIRED` with its
    /// refund; `OrderCancelled`.
    CancelAndRefund,
    /// The gateway charged an order that is no longer payable: payment `REFUND_REQUIRED` under
    /// that transaction, and its refund.
    RefundLateCharge,
    /// A second charge of a paid order: its refund (the payment keeps its own transaction).
    RefundDuplicate,
    /// The payment's own refund was confirmed: payment `REFUNDED`, and a cancelled order
    /// `REFUNDED`.
    MarkRefunded { order_too: bool },
    /// The gateway gave a paid order's money back by itself (a refund from its console, a
    /// chargeback): holds given back (a top-up's points taken back, as far as they are left),
    /// order and payment `REFUNDED`, the refund recorded as confirmed; `OrderCancelled` +
    /// `PaymentRefunded`.
    AcceptReversal,
    /// Nothing to change: a repeat, or news that no longer matters to this order.
    Nothing,
}

/// Why a fact cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The order's status does not allow a cancellation.
    NotCancellable(OrderStatus),
    /// A payment fact for an order with no card payment.
    NoPayment,
    /// The order and its payment disagree: a state no transition leads to. Nothing is changed;
    /// an operator must look.
    Inconsistent(OrderState),
}

/// The one place the order's life is decided. Pure and exhaustive: every combination of order
/// status, payment status and fact has an answer here (see the table in the tests).
pub fn decide(state: OrderState, fact: Fact) -> Result<Transition, Refusal> {
    use OrderStatus as O;
    use PaymentStatus as P;
    use Transition as T;
    let inconsistent = Err(Refusal::Inconsistent(state));
    match fact {
        Fact::Charged { own } => {
            let Some(payment) = state.payment else {
                return Err(Refusal::NoPayment);
            };
            match (state.order, payment) {
                (O::PendingPayment, P::Pending) => Ok(T::Pay),
                (O::PendingPayment, _) | (_, P::Pending) => inconsistent,
                // Closed before the money arrived: it goes back.
                (_, P::Cancelled | P::Failed) => Ok(T::RefundLateCharge),
                // The payment has its charge: the same one again is a repeat, another one a
                // second charge.
                (_, P::Success | P::RefundRequired | P::Refunded) if own => Ok(T::Nothing),
                (_, P::Success | P::RefundRequired | P::Refunded) => Ok(T::RefundDuplicate),
            }
        }
        Fact::NotCharged => {
            let Some(payment) = state.payment else {
                return Err(Refusal::NoPayment);
            };
            match (state.order, payment) {
                (O::PendingPayment, P::Pending) => Ok(T::FailPayment),
                (O::PendingPayment, _) | (_, P::Pending) => inconsistent,
                // Already settled one way or another: a late decline changes nothing.
                (
                    O::Paid | O::PaymentFailed | O::Cancelled | O::Refunded,
                    P::Success | P::Failed | P::Cancelled | P::RefundRequired | P::Refunded,
                ) => Ok(T::Nothing),
            }
        }
        Fact::Cancel => match (state.order, state.payment) {
            (O::Cancelled | O::Refunded, _) => Ok(T::Nothing),
            (O::PaymentFailed, _) => Err(Refusal::NotCancellable(state.order)),
            (O::PendingPayment, Some(P::Pending)) => Ok(T::Cancel),
            (O::PendingPayment, _) => inconsistent,
            // Paid by points (or nothing left to pay by card).
            (O::Paid, None) => Ok(T::Cancel),
            (O::Paid, Some(P::Success)) => Ok(T::CancelAndRefund),
            (
                O::Paid,
                Some(P::Pending | P::Failed | P::Cancelled | P::RefundRequired | P::Refunded),
            ) => inconsistent,
        },
        Fact::RefundConfirmed { own } => {
            let Some(payment) = state.payment else {
                return Err(Refusal::NoPayment);
            };
            match (state.order, payment) {
                // A duplicate's refund: the order and its payment are not concerned.
                _ if !own => Ok(T::Nothing),
                (O::Cancelled, P::RefundRequired) => Ok(T::MarkRefunded { order_too: true }),
                // Charged after the payment failed: the money is back, the order stays failed.
                (O::PaymentFailed, P::RefundRequired) => Ok(T::MarkRefunded { order_too: false }),
                // Confirmed before (another instance, an earlier attempt).
                (O::Cancelled | O::Refunded | O::PaymentFailed, P::Refunded) => Ok(T::Nothing),
                (O::Refunded, P::RefundRequired) => inconsistent,
                (O::PendingPayment | O::Paid, _)
                | (
                    O::Cancelled | O::Refunded | O::PaymentFailed,
                    P::Pending | P::Success | P::Failed | P::Cancelled,
                ) => inconsistent,
            }
        }
        Fact::Reversed => {
            let Some(payment) = state.payment else {
                return Err(Refusal::NoPayment);
            };
            match (state.order, payment) {
                // Charged and given back before the order was paid: it never was.
                (O::PendingPayment, P::Pending) => Ok(T::FailPayment),
                (O::Paid, P::Success) => Ok(T::AcceptReversal),
                // The refund this API asked for, or the gateway's own, got there first: either
                // way it is the money this API owed back.
                (O::Cancelled, P::RefundRequired) => Ok(T::MarkRefunded { order_too: true }),
                (O::PaymentFailed, P::RefundRequired) => Ok(T::MarkRefunded { order_too: false }),
                // Known already, or a charge of a closed payment that the gateway gave back.
                (
                    O::Cancelled | O::Refunded | O::PaymentFailed,
                    P::Refunded | P::Failed | P::Cancelled,
                ) => Ok(T::Nothing),
                (O::PendingPayment | O::Paid, _)
                | (_, P::Pending | P::Success)
                | (O::Refunded, P::RefundRequired) => inconsistent,
            }
        }
    }
}

impl Refusal {
    /// The refusal as the domain's error (an inconsistent state is logged: an operator's turn).
    pub fn into_error(self, order_id: i64) -> Error {
        match self {
            Refusal::NotCancellable(status) => Error::OrderNotCancellable(status),
            Refusal::NoPayment => Error::NotFound(Missing::Payment),
            Refusal::Inconsistent(state) => {
                tracing::error!(
                    order.id = order_id,
                    ?state,
                    "the order and its payment disagree; nothing changed"
                );
                Error::Internal(anyhow::anyhow!(
                    "order {order_id} is in an inconsistent state {state:?}"
                ))
            }
        }
    }
}

impl Transition {
    /// The error for a transition [`decide`] never returns for `fact`, should an executor meet
    /// one.
    pub fn unexpected(self, order_id: i64, fact: Fact) -> Error {
        Error::Internal(anyhow::anyhow!(
            "order {order_id}: {self:?} does not follow from {fact:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus as O;
    use PaymentStatus as P;
    use Transition as T;

    fn tx(key: &str, order: i64, status: TxStatus, amount: i64) -> Transaction {
        Transaction {
            transaction_key: key.to_owned(),
            order_id: order.to_string(),
            status,
            reason: (status == TxStatus::Failed).then(|| "limit exceeded".to_owned()),
            amount: Some(amount),
            refund_key: (status == TxStatus::Refunded).then(|| format!("rf-{key}")),
        }
    }

    #[test]
    fn verdicts_over_the_gateways_transactions() {
        use TxStatus::*;
        let charged = |key: &str, dups: &[&str]| Verdict::Charged {
            key: key.into(),
            duplicates: dups.iter().map(|d| (*d).into()).collect(),
        };
        let declined = |key: &str, reason: &str| Verdict::NotCharged {
            key: key.into(),
            reason: reason.into(),
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<Transaction>, Option<&str>, Verdict)> = vec![
            ("nothing at the gateway", vec![], None, Verdict::NotReceived),
            ("one success", vec![tx("a", 1, Success, 100)], None, charged("a", &[])),
            ("two successes: the second is a duplicate",
             vec![tx("a", 1, Success, 100), tx("b", 1, Success, 100)], None, charged("a", &["b"])),
            ("the known key comes first among successes",
             vec![tx("a", 1, Success, 100), tx("b", 1, Success, 100)], Some("b"), charged("b", &["a"])),
            ("a success beside a failure", vec![tx("a", 1, Failed, 100), tx("b", 1, Success, 100)],
             Some("a"), charged("b", &[])),
            ("a success beside an unknown status",
             vec![tx("a", 1, Unknown, 100), tx("b", 1, Success, 100)], None, charged("b", &[])),
            ("pending", vec![tx("a", 1, Pending, 100)], None, Verdict::Pending { key: "a".into() }),
            ("a failure beside a pending one is not settled",
             vec![tx("a", 1, Failed, 100), tx("b", 1, Pending, 100)], Some("a"),
             Verdict::Pending { key: "b".into() }),
            ("a failure beside an unknown status is not settled",
             vec![tx("a", 1, Failed, 100), tx("b", 1, Unknown, 100)], Some("a"), Verdict::Unknown),
            ("declined", vec![tx("a", 1, Failed, 100)], Some("a"), declined("a", "limit exceeded")),
            ("the payment's own transaction refunded at the gateway", vec![tx("a", 1, Refunded, 100)],
             Some("a"), Verdict::Reversed { key: "a".into(), refund_key: Some("rf-a".into()) }),
            ("a refunded transaction the API never learned of is not charged",
             vec![tx("a", 1, Refunded, 100)], None, declined("a", REFUNDED_AT_GATEWAY)),
            ("another transaction refunded is not the payment's reversal",
             vec![tx("a", 1, Failed, 100), tx("b", 1, Refunded, 100)], Some("a"),
             declined("b", REFUNDED_AT_GATEWAY)),
            ("refunded beside a pending one", vec![tx("a", 1, Refunded, 100), tx("b", 1, Pending, 100)],
             None, Verdict::Pending { key: "b".into() }),
            ("the known key is not listed", vec![tx("b", 1, Failed, 100)], Some("a"),
             Verdict::Unlisted { key: "a".into() }),
            ("another order's success is not this order's",
             vec![tx("a", 2, Success, 100)], None, Verdict::NotReceived),
            ("another amount's success is not this order's",
             vec![tx("a", 1, Success, 999), tx("b", 1, Failed, 100)], None,
             declined("b", "limit exceeded")),
        ];
        for (what, txs, known, expected) in cases {
            assert_eq!(verdict(&txs, 1, 100, known), expected, "{what}");
        }
    }

    #[test]
    fn an_unknown_amount_is_not_a_mismatch() {
        let mut t = tx("a", 1, TxStatus::Success, 0);
        t.amount = None;
        assert!(matches!(
            verdict(&[t], 1, 100, None),
            Verdict::Charged { .. }
        ));
    }

    fn state(order: OrderStatus, payment: Option<PaymentStatus>) -> OrderState {
        OrderState { order, payment }
    }

    /// Every order status × payment status (or none) × fact, with its one answer.
    #[test]
    fn every_combination_has_one_answer() {
        let inconsistent = |o, p| Err(Refusal::Inconsistent(state(o, p)));
        let facts = [
            Fact::Charged { own: true },
            Fact::Charged { own: false },
            Fact::NotCharged,
            Fact::Cancel,
            Fact::RefundConfirmed { own: true },
            Fact::RefundConfirmed { own: false },
            Fact::Reversed,
        ];
        let payments: Vec<Option<PaymentStatus>> = std::iter::once(None)
            .chain(PaymentStatus::ALL.iter().copied().map(Some))
            .collect();
        let mut checked = 0;
        for &order in OrderStatus::ALL {
            for &payment in &payments {
                for fact in facts {
                    let got = decide(state(order, payment), fact);
                    let want = expected(order, payment, fact);
                    let want = want.unwrap_or_else(|| inconsistent(order, payment));
                    assert_eq!(got, want, "{order} / {payment:?} / {fact:?}");
                    checked += 1;
                }
            }
        }
        assert_eq!(
            checked,
            OrderStatus::ALL.len() * (PaymentStatus::ALL.len() + 1) * 7
        );
    }

    /// The table, written out: `None` means the combination cannot arise and is refused as
    /// inconsistent.
    fn expected(
        order: OrderStatus,
        payment: Option<PaymentStatus>,
        fact: Fact,
    ) -> Option<Result<Transition, Refusal>> {
        let closed = matches!(
            order,
            O::Paid | O::PaymentFailed | O::Cancelled | O::Refunded
        );
        Some(match (fact, payment) {
            (
                Fact::Charged { .. }
                | Fact::NotCharged
                | Fact::RefundConfirmed { .. }
                | Fact::Reversed,
                None,
            ) => Err(Refusal::NoPayment),
            (Fact::Charged { .. }, Some(P::Pending)) if order == O::PendingPayment => Ok(T::Pay),
            (Fact::Charged { .. }, Some(P::Cancelled | P::Failed)) if closed => {
                Ok(T::RefundLateCharge)
            }
            (Fact::Charged { own: true }, Some(P::Success | P::RefundRequired | P::Refunded))
                if closed =>
            {
                Ok(T::Nothing)
            }
            (Fact::Charged { own: false }, Some(P::Success | P::RefundRequired | P::Refunded))
                if closed =>
            {
                Ok(T::RefundDuplicate)
            }
            (Fact::NotCharged, Some(P::Pending)) if order == O::PendingPayment => {
                Ok(T::FailPayment)
            }
            (Fact::NotCharged, Some(p)) if closed && p != P::Pending => Ok(T::Nothing),
            (Fact::Cancel, _) if matches!(order, O::Cancelled | O::Refunded) => Ok(T::Nothing),
            (Fact::Cancel, _) if order == O::PaymentFailed => {
                Err(Refusal::NotCancellable(O::PaymentFailed))
            }
            (Fact::Cancel, Some(P::Pending)) if order == O::PendingPayment => Ok(T::Cancel),
            (Fact::Cancel, None) if order == O::Paid => Ok(T::Cancel),
            (Fact::Cancel, Some(P::Success)) if order == O::Paid => Ok(T::CancelAndRefund),
            (Fact::RefundConfirmed { own: false }, Some(_)) => Ok(T::Nothing),
            (Fact::RefundConfirmed { own: true }, Some(P::RefundRequired))
                if order == O::Cancelled =>
            {
                Ok(T::MarkRefunded { order_too: true })
            }
            (Fact::RefundConfirmed { own: true }, Some(P::RefundRequired))
                if order == O::PaymentFailed =>
            {
                Ok(T::MarkRefunded { order_too: false })
            }
            (Fact::RefundConfirmed { own: true }, Some(P::Refunded))
                if matches!(order, O::Cancelled | O::Refunded | O::PaymentFailed) =>
            {
                Ok(T::Nothing)
            }
            (Fact::Reversed, Some(P::Pending)) if order == O::PendingPayment => Ok(T::FailPayment),
            (Fact::Reversed, Some(P::Success)) if order == O::Paid => Ok(T::AcceptReversal),
            (Fact::Reversed, Some(P::RefundRequired)) if order == O::Cancelled => {
                Ok(T::MarkRefunded { order_too: true })
            }
            (Fact::Reversed, Some(P::RefundRequired)) if order == O::PaymentFailed => {
                Ok(T::MarkRefunded { order_too: false })
            }
            (Fact::Reversed, Some(P::Refunded | P::Failed | P::Cancelled))
                if matches!(order, O::Cancelled | O::Refunded | O::PaymentFailed) =>
            {
                Ok(T::Nothing)
            }
            _ => return None,
        })
    }

    #[test]
    fn a_refunded_transaction_never_pays_a_pending_order_and_reverses_a_paid_one() {
        let v = verdict(&[tx("a", 7, TxStatus::Refunded, 100)], 7, 100, Some("a"));
        assert!(matches!(v, Verdict::Reversed { .. }), "{v:?}");
        let pending = state(O::PendingPayment, Some(P::Pending));
        assert_eq!(decide(pending, Fact::Reversed), Ok(T::FailPayment));
        let paid = state(O::Paid, Some(P::Success));
        assert_eq!(decide(paid, Fact::Reversed), Ok(T::AcceptReversal));
    }
}
