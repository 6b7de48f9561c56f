//! What travels between the client and the gateway: requests, the gateway's transactions and
//! refunds, as JSON.

use serde::{Deserialize, Serialize};

/// Where the gateway says a payment stands.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TxStatus {
    Pending,
    Success,
    Failed,
    /// Charged, then refunded.
    Refunded,
    /// A status this client does not know: treated as not settled.
    #[serde(other)]
    Unknown,
}

/// A payment as the gateway reports it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Transaction {
    pub transaction_key: String,
    pub order_id: String,
    pub status: TxStatus,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub amount: Option<i64>,
    /// The refund that gave the money back, once `REFUNDED` (when the gateway names it).
    #[serde(default)]
    pub refund_key: Option<String>,
}

impl Transaction {
    /// Whether the gateway's payment is this order's: same order id and (when the gateway says)
    /// the same amount.
    pub fn belongs_to(&self, order_id: i64, amount: i64) -> bool {
        self.order_id == order_id.to_string() && self.amount.is_none_or(|a| a == amount)
    }
}

/// What a payment request carries.
pub struct PaymentRequest<'a> {
    pub user_id: i64,
    /// Sent as `Idempotency-Key` on every attempt ([`PaymentRequest::key_for`]).
    pub order_id: i64,
    pub card_type: &'a str,
    pub card_no: &'a str,
    pub amount: i64,
    pub idempotency_key: String,
}

impl PaymentRequest<'_> {
    /// The order's payment key: the same on every attempt, retry, reconciliation re-request
    /// and instance (an order has one payment), so the gateway charges it at most once.
    pub fn key_for(order_id: i64) -> String {
        format!("commerce-order-{order_id}")
    }
}

/// What a refund request carries: what is left of one gateway transaction, or one partner
/// order's share of it.
pub struct RefundRequest<'a> {
    pub user_id: i64,
    pub transaction_key: &'a str,
    pub amount: i64,
    pub reason: &'a str,
    /// The partner order whose share this is; `None` for the transaction's own refund.
    pub partner_order_id: Option<i64>,
}

impl RefundRequest<'_> {
    /// The refund's key: one per refunded transaction, and one per partner order refunded on
    /// its own, the same on every attempt and instance.
    pub fn key_for(transaction_key: &str, partner_order_id: Option<i64>) -> String {
        match partner_order_id {
            None => format!("commerce-refund-{transaction_key}"),
            Some(part) => format!("commerce-refund-{transaction_key}-part-{part}"),
        }
    }
}

/// A refund the gateway confirmed.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ConfirmedRefund {
    pub refund_key: String,
    pub transaction_key: String,
    pub amount: i64,
}

#[derive(Deserialize)]
pub(super) struct Accepted {
    pub(super) transaction_key: String,
    pub(super) status: TxStatus,
    #[serde(default)]
    pub(super) reason: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct OrderTransactions {
    pub(super) transactions: Vec<Transaction>,
}
