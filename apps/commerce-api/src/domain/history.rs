//! Payment history: every change of a card payment is appended to `payment_events` in the
//! transaction that makes it, with what happened, where it came from, the payment's status
//! afterwards, the gateway transaction concerned and why. Nothing here is ever updated, and no
//! card number is ever written: an order's owner reads the history with the order.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::Result;
use crate::domain::states::PaymentStatus;
use crate::infra::schema::payment_events;

commerce_enums::text_enum! {
    sql, schema;
    /// `payment_events.kind`: what happened to the payment.
    pub enum PaymentEventKind {
        /// The order opened the payment, or reconciliation asked the gateway again.
        Requested => "REQUESTED",
        /// The gateway accepted the request and named its transaction.
        Accepted => "ACCEPTED",
        /// The gateway could not be reached or did not answer; the payment is retried.
        GatewayUnavailable => "GATEWAY_UNAVAILABLE",
        Paid => "PAID",
        /// Declined, refused, or never received by the gateway before the deadline.
        Failed => "FAILED",
        /// The order was cancelled while the payment was pending.
        Cancelled => "CANCELLED",
        /// The gateway charged the order after it was cancelled or had failed.
        ChargedAfterClose => "CHARGED_AFTER_CLOSE",
        /// A second successful charge of the paid order.
        DuplicateCharge => "DUPLICATE_CHARGE",
        RefundRequested => "REFUND_REQUESTED",
        /// The gateway refused a refund: an operator's turn.
        RefundRefused => "REFUND_REFUSED",
        RefundConfirmed => "REFUND_CONFIRMED",
        /// An operator asked for the payment's refunds or lookup to be retried now.
        RetryRequested => "RETRY_REQUESTED",
        /// The state a payment was in when its history began (payments older than it).
        Recorded => "RECORDED",
        /// The gateway gave a paid order's money back by itself (a refund from its console, a
        /// chargeback).
        ReversedAtGateway => "REVERSED_AT_GATEWAY",
    }
}

commerce_enums::text_enum! {
    sql, schema;
    /// `payment_events.source`: what made the change.
    pub enum Source {
        /// The order request itself.
        Order => "order",
        /// The gateway's callback (verified at the gateway).
        Callback => "callback",
        /// Reconciliation's look at the gateway.
        Reconciliation => "reconciliation",
        /// The customer's cancellation.
        Cancel => "cancel",
        RefundWorker => "refund_worker",
        Admin => "admin",
        Migration => "migration",
    }
}

/// One entry of a payment's history.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct PaymentEvent {
    pub at: DateTime<Utc>,
    pub kind: PaymentEventKind,
    pub source: Source,
    /// The payment's status after this.
    pub status: PaymentStatus,
    /// The gateway transaction concerned, when there is one.
    pub transaction_key: Option<String>,
    pub reason: Option<String>,
}

/// The columns of `payment_events` a [`PaymentEvent`] shows.
#[derive(Queryable, Selectable)]
#[diesel(table_name = payment_events)]
struct EventRow {
    at: DateTime<Utc>,
    kind: PaymentEventKind,
    source: Source,
    status: PaymentStatus,
    transaction_key: Option<String>,
    reason: Option<String>,
}

impl From<EventRow> for PaymentEvent {
    fn from(row: EventRow) -> Self {
        Self {
            at: row.at,
            kind: row.kind,
            source: row.source,
            status: row.status,
            transaction_key: row.transaction_key,
            reason: row.reason,
        }
    }
}

/// Appends an entry to the history of `order_id`'s payment, with the payment's status as it
/// stands in the caller's transaction.
pub async fn append(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    kind: PaymentEventKind,
    source: Source,
    transaction_key: Option<&str>,
    reason: Option<&str>,
) -> Result<()> {
    diesel::sql_query(
        "INSERT INTO payment_events (payment_id, order_id, kind, source, status, transaction_key, reason)
         SELECT id, order_id, $2, $3, status, $4, $5 FROM payments WHERE order_id = $1",
    )
    .bind::<BigInt, _>(order_id)
    .bind::<Text, _>(kind)
    .bind::<Text, _>(source)
    .bind::<Nullable<Text>, _>(transaction_key)
    .bind::<Nullable<Text>, _>(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// The history of an order's payment, oldest first.
pub async fn of_order(conn: &mut AsyncPgConnection, order_id: i64) -> Result<Vec<PaymentEvent>> {
    Ok(payment_events::table
        .filter(payment_events::order_id.eq(order_id))
        .order(payment_events::id)
        .select(EventRow::as_select())
        .load::<EventRow>(conn)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}
