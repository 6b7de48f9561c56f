//! Every state an order, a payment and a coupon can be in, and how an order is paid.
//!
//! Each is mapped to its `TEXT` column and its JSON string once (see [`commerce_enums::text_enum`]); the
//! tables' CHECK constraints list the same values.

pub use commerce_events::{PaymentKind, RefundCause};

use crate::domain::card::CardNumber;

commerce_enums::text_enum! {
    sql, schema;
    /// `orders.status`.
    pub enum OrderStatus {
        /// Placed by card; the gateway has not settled the payment yet.
        PendingPayment => "PENDING_PAYMENT",
        Paid => "PAID",
        /// The card payment failed; everything the order held was given back.
        PaymentFailed => "PAYMENT_FAILED",
        Cancelled => "CANCELLED",
        /// Cancelled after it was paid by card, and the gateway confirmed the refund.
        Refunded => "REFUNDED",
    }
}

commerce_enums::text_enum! {
    sql, schema;
    /// `payments.status`: a card payment at the gateway, as this API knows it.
    pub enum PaymentStatus {
        Pending => "PENDING",
        Success => "SUCCESS",
        Failed => "FAILED",
        /// The order was cancelled while the payment was pending; still watched at the gateway.
        Cancelled => "CANCELLED",
        /// Money was taken for an order that is no longer payable: it must go back (a
        /// `refunds` row carries it to the gateway).
        RefundRequired => "REFUND_REQUIRED",
        /// The gateway confirmed the refund of this payment's transaction.
        Refunded => "REFUNDED",
    }
}

commerce_enums::text_enum! {
    sql, schema;
    /// `refunds.status`.
    pub enum RefundStatus {
        /// To be sent to the gateway, or being retried.
        Requested => "REQUESTED",
        /// The gateway refused it: an operator's turn (the admin retry sends it again).
        Failed => "FAILED",
        /// The gateway confirmed it.
        Refunded => "REFUNDED",
    }
}

commerce_enums::text_enum! {
    sql, schema;
    /// The card types the gateway accepts (`payments.card_type`).
    pub enum CardType {
        Samsung => "SAMSUNG",
        Kb => "KB",
        Hyundai => "HYUNDAI",
    }
}

commerce_enums::text_enum! {
    sql, schema;
    /// `user_coupons.status`.
    pub enum CouponStatus {
        Available => "AVAILABLE",
        Used => "USED",
    }
}

commerce_enums::text_enum! {
    sql, schema;
    /// `coupons.discount_type`.
    pub enum DiscountType {
        /// Won off.
        Fixed => "FIXED",
        /// Percent off, 1..=100.
        Rate => "RATE",
    }
}

commerce_enums::text_enum! {
    sql, schema;
    /// `point_ledger.kind`.
    pub enum LedgerKind {
        /// A free charge, from before points were bought (kept in old ledgers).
        Charge => "CHARGE",
        /// Points spent on an order.
        Use => "USE",
        /// Points given back by a cancelled or failed order.
        Refund => "REFUND",
        /// Points bought: a top-up's card payment was confirmed by the gateway.
        TopUp => "TOP_UP",
        /// A top-up's points taken back: it was cancelled or refunded.
        TopUpReversed => "TOP_UP_REVERSED",
        /// Points an administrator granted, with a reason.
        Grant => "GRANT",
        /// Points earned by a purchase-confirmed partner order (it names the partner order).
        Earn => "EARN",
        /// Earned points taken back: the confirmed partner order was adjusted.
        EarnReversed => "EARN_REVERSED",
    }
}

commerce_enums::text_enum! {
    sql, schema;
    /// `orders.kind`: what an order buys.
    pub enum OrderKind {
        /// Products, from the catalog.
        Goods => "GOODS",
        /// Points, paid by card: credited when the gateway confirms the charge.
        PointTopUp => "POINT_TOP_UP",
    }
}

/// How an order is paid, with the card's details inside the card variant. Deliberately neither
/// `Serialize` nor `Clone`: it holds a card number.
pub enum PaymentMethod {
    Point,
    Card {
        card_type: CardType,
        card_no: CardNumber,
    },
}

impl PaymentMethod {
    /// The stored kind.
    pub fn kind(&self) -> PaymentKind {
        match self {
            PaymentMethod::Point => PaymentKind::Point,
            PaymentMethod::Card { .. } => PaymentKind::Card,
        }
    }
}

impl std::fmt::Debug for PaymentMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PaymentMethod::Point => f.write_str("Point"),
            PaymentMethod::Card { card_type, card_no } => f
                .debug_struct("Card")
                .field("card_type", card_type)
                .field("card_no", &card_no.masked())
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_text() {
        for s in OrderStatus::ALL {
            assert_eq!(s.as_str().parse::<OrderStatus>(), Ok(*s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        for s in PaymentStatus::ALL {
            assert_eq!(s.as_str().parse::<PaymentStatus>(), Ok(*s));
        }
        assert_eq!(OrderStatus::PendingPayment.as_str(), "PENDING_PAYMENT");
        assert!("PAYED".parse::<OrderStatus>().is_err());
    }
}
