//! The event contract between commerce-api (producer) and commerce-collector (consumer).
//!
//! Every event travels as one JSON [`Envelope`]:
//! `{event_id, event_type, aggregate_type, aggregate_id, occurred_at, schema_version, payload}`.
//! `event_id` is a UUIDv7 (time-ordered), the consumer's deduplication key; `occurred_at` is
//! RFC 3339 UTC. The payload of each `event_type` is one struct below, and this module is the
//! only definition of it: both apps compile against it, so they cannot drift apart.
//!
//! Rules kept here:
//! - a field is never removed or changes meaning within a `schema_version`; adding an optional
//!   field is compatible, anything else bumps the version;
//! - money is integer won (`i64`), never floating point;
//! - every event names its topic and message key ([`Event::topic`], [`Event::key`]), so all
//!   events of one product or one order land in one partition in commit order.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The current payload schema version.
pub const SCHEMA_VERSION: u32 = 1;

/// Default topic for product events (key: product id).
pub const CATALOG_TOPIC: &str = "catalog-events";
/// Default topic for order and payment events (key: order id).
pub const ORDER_TOPIC: &str = "order-events";

commerce_enums::text_enum! {
    /// Every event type's name, as [`Event::event_type`] gives it and `event_type` carries it.
    pub enum EventType {
        ProductCreated => "ProductCreated",
        ProductUpdated => "ProductUpdated",
        ProductLiked => "ProductLiked",
        ProductUnliked => "ProductUnliked",
        ProductViewed => "ProductViewed",
        OrderCreated => "OrderCreated",
        OrderPaid => "OrderPaid",
        OrderCancelled => "OrderCancelled",
        PaymentCompleted => "PaymentCompleted",
        PaymentFailed => "PaymentFailed",
        PaymentRefunded => "PaymentRefunded",
        PartnerOrderChanged => "PartnerOrderChanged",
        SettlementCompleted => "SettlementCompleted",
    }
}

commerce_enums::text_enum! {
    sql, schema;
    /// How an order is paid, without the card's details (commerce-api's
    /// `orders.payment_method`).
    pub enum PaymentKind {
        Point => "POINT",
        Card => "CARD",
    }
}

commerce_enums::text_enum! {
    sql, schema;
    /// Why money goes back to a customer (commerce-api's `refunds.cause`).
    pub enum RefundCause {
        /// A paid card order was cancelled.
        OrderCancelled => "ORDER_CANCELLED",
        /// The gateway charged an order after it was cancelled or had failed.
        ChargedAfterClose => "CHARGED_AFTER_CLOSE",
        /// A second successful charge of a paid order.
        DuplicateCharge => "DUPLICATE_CHARGE",
        /// The gateway gave a paid order's money back by itself: a refund made at the gateway,
        /// or a chargeback.
        RefundedAtGateway => "REFUNDED_AT_GATEWAY",
        /// One partner order of a paid checkout was cancelled: its card share goes back.
        PartnerOrderCancelled => "PARTNER_ORDER_CANCELLED",
        /// One partner order of a paid checkout was returned: its card share goes back.
        PartnerOrderReturned => "PARTNER_ORDER_RETURNED",
        /// An administrator adjusted a purchase-confirmed partner order: part of its card share
        /// goes back.
        PartnerOrderAdjusted => "PARTNER_ORDER_ADJUSTED",
    }
}

/// Which stream an event belongs to. Topic names are configurable; this picks one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Catalog,
    Order,
}

/// The envelope every event travels in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: i64,
    #[serde(with = "rfc3339_utc")]
    pub occurred_at: DateTime<Utc>,
    pub schema_version: u32,
    /// `event_type` and `payload`.
    #[serde(flatten)]
    pub event: Event,
}

impl Envelope {
    /// Wraps `event` with a fresh UUIDv7 and the current time.
    pub fn new(event: Event) -> Self {
        Self::at(event, Utc::now())
    }

    /// Wraps `event` as having occurred at `occurred_at` (kept to microseconds, the precision
    /// of the wire format and of PostgreSQL).
    pub fn at(event: Event, occurred_at: DateTime<Utc>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            aggregate_type: event.aggregate_type().to_owned(),
            aggregate_id: event.key(),
            occurred_at: occurred_at.trunc_subsecs(6),
            schema_version: SCHEMA_VERSION,
            event,
        }
    }

    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.event.event_type()
    }
}

/// Every event type and its payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload")]
pub enum Event {
    /// A product was created.
    ProductCreated(ProductSnapshot),
    /// A product's name, description, price or stock changed; `version` increased.
    ProductUpdated(ProductSnapshot),
    /// A user liked a product (only on a real change: liking twice emits once).
    ProductLiked(LikeChanged),
    /// A user withdrew a like (only on a real change).
    ProductUnliked(LikeChanged),
    /// A product page was read. Published directly, best effort; may be lost.
    ProductViewed(ProductViewed),
    /// An order was placed (not yet a sale).
    OrderCreated(OrderPlaced),
    /// An order was paid: the sale the collector counts.
    OrderPaid(OrderPlaced),
    /// An order was cancelled; `was_paid` tells the collector whether to subtract a sale.
    OrderCancelled(OrderCancelled),
    /// A card payment succeeded. Emitted with `OrderPaid` (which is what counts as the sale).
    PaymentCompleted(PaymentSettled),
    /// A card payment failed: the order's stock, coupon and points were given back. Not a sale.
    PaymentFailed(PaymentSettled),
    /// The gateway confirmed a card payment's refund. Not a change in sales: a cancelled sale was
    /// subtracted by its `OrderCancelled`, and the other refunds (a second charge, a charge of a
    /// closed order) were never counted.
    PaymentRefunded(PaymentRefunded),
    /// A partner order moved along its life after payment (prepared, shipped, delivered,
    /// purchase-confirmed, …). Keyed by its checkout's order id, so it follows the order's own
    /// events.
    PartnerOrderChanged(PartnerOrderChanged),
    /// A partner's settlement of one business day was written (the day is closed). Keyed by the
    /// partner id, so a partner's settlements follow one another.
    SettlementCompleted(SettlementCompleted),
}

impl Event {
    /// The event's type.
    pub fn event_type(&self) -> EventType {
        match self {
            Event::ProductCreated(_) => EventType::ProductCreated,
            Event::ProductUpdated(_) => EventType::ProductUpdated,
            Event::ProductLiked(_) => EventType::ProductLiked,
            Event::ProductUnliked(_) => EventType::ProductUnliked,
            Event::ProductViewed(_) => EventType::ProductViewed,
            Event::OrderCreated(_) => EventType::OrderCreated,
            Event::OrderPaid(_) => EventType::OrderPaid,
            Event::OrderCancelled(_) => EventType::OrderCancelled,
            Event::PaymentCompleted(_) => EventType::PaymentCompleted,
            Event::PaymentFailed(_) => EventType::PaymentFailed,
            Event::PaymentRefunded(_) => EventType::PaymentRefunded,
            Event::PartnerOrderChanged(_) => EventType::PartnerOrderChanged,
            Event::SettlementCompleted(_) => EventType::SettlementCompleted,
        }
    }

    /// `Product`, `Order` or `Partner`.
    pub fn aggregate_type(&self) -> &'static str {
        match (self, self.stream()) {
            (Event::SettlementCompleted(_), _) => "Partner",
            (_, Stream::Catalog) => "Product",
            (_, Stream::Order) => "Order",
        }
    }

    /// The stream (topic) this event is published to.
    pub fn stream(&self) -> Stream {
        match self {
            Event::ProductCreated(_)
            | Event::ProductUpdated(_)
            | Event::ProductLiked(_)
            | Event::ProductUnliked(_)
            | Event::ProductViewed(_) => Stream::Catalog,
            Event::OrderCreated(_)
            | Event::OrderPaid(_)
            | Event::OrderCancelled(_)
            | Event::PaymentCompleted(_)
            | Event::PaymentFailed(_)
            | Event::PaymentRefunded(_)
            | Event::PartnerOrderChanged(_)
            | Event::SettlementCompleted(_) => Stream::Order,
        }
    }

    /// The aggregate id, also the Kafka message key.
    pub fn key(&self) -> i64 {
        match self {
            Event::ProductCreated(p) | Event::ProductUpdated(p) => p.product_id,
            Event::ProductLiked(l) | Event::ProductUnliked(l) => l.product_id,
            Event::ProductViewed(v) => v.product_id,
            Event::OrderCreated(o) | Event::OrderPaid(o) => o.order_id,
            Event::OrderCancelled(c) => c.order_id,
            Event::PaymentCompleted(p) | Event::PaymentFailed(p) => p.order_id,
            Event::PaymentRefunded(r) => r.order_id,
            Event::PartnerOrderChanged(p) => p.order_id,
            Event::SettlementCompleted(s) => s.partner_id,
        }
    }
}

/// A product as of one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductSnapshot {
    pub product_id: i64,
    pub brand_id: i64,
    pub brand_name: String,
    pub name: String,
    pub price: i64,
    pub stock: i64,
    /// Increases by one with every change; consumers ignore a snapshot older than one applied.
    pub version: i64,
}

/// A like added or withdrawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LikeChanged {
    pub product_id: i64,
    pub user_id: i64,
}

/// Product detail reads: `count` first views (one per viewer and window) of one product,
/// aggregated by the API over at most a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductViewed {
    pub product_id: i64,
    /// The reader, when it is one authenticated reader's view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    /// How many views; absent in a single view's event (and in every event written before views
    /// were aggregated), which counts one.
    #[serde(default = "one_view", skip_serializing_if = "is_one_view")]
    pub count: u32,
}

fn one_view() -> u32 {
    1
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_one_view(count: &u32) -> bool {
    *count == 1
}

/// One order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub product_id: i64,
    pub quantity: i64,
    /// Price per unit at the time of the order, in won.
    pub unit_price: i64,
}

/// An order's lines and amounts (for `OrderCreated` and `OrderPaid`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order_id: i64,
    pub user_id: i64,
    pub lines: Vec<OrderLine>,
    pub total_amount: i64,
    pub discount_amount: i64,
    pub final_amount: i64,
    pub payment_method: PaymentKind,
}

/// An order cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: i64,
    pub user_id: i64,
    pub lines: Vec<OrderLine>,
    /// Whether the order had been paid (a sale to subtract).
    pub was_paid: bool,
    /// When the order was paid, if it was: the sale is subtracted from that business day.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_rfc3339_utc"
    )]
    pub paid_at: Option<DateTime<Utc>>,
}

/// The outcome of an order's card payment (for `PaymentCompleted` and `PaymentFailed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentSettled {
    pub order_id: i64,
    pub user_id: i64,
    /// The amount charged (or that failed to be charged), in won.
    pub amount: i64,
    /// `CARD`.
    pub payment_method: PaymentKind,
    /// The gateway's transaction, when the gateway received the payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_key: Option<String>,
    /// Why a payment failed (`limit exceeded`, `invalid card`, …); absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The lines whose stock was reserved (and, on failure, restored).
    pub lines: Vec<OrderLine>,
}

/// A refund the gateway confirmed (for `PaymentRefunded`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub order_id: i64,
    pub user_id: i64,
    /// The amount given back, in won (refunds are in full).
    pub amount: i64,
    /// The gateway transaction refunded.
    pub transaction_key: String,
    /// The gateway's refund.
    pub refund_key: String,
    pub cause: RefundCause,
}

/// A partner order's new state (for `PartnerOrderChanged`), with its amounts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartnerOrderChanged {
    pub partner_order_id: i64,
    pub order_id: i64,
    pub partner_id: i64,
    pub user_id: i64,
    /// The state it left, and the one it is in now (commerce-api's `partner_orders.status`:
    /// `PREPARING`, `SHIPPED`, `DELIVERED`, `PURCHASE_CONFIRMED`, …).
    pub from: String,
    pub to: String,
    /// Σ quantity × unit price of its lines.
    pub items_total: i64,
    pub discount_share: i64,
    pub points_share: i64,
    pub card_share: i64,
    /// When it changed: a purchase confirmation is counted on this instant's business day.
    #[serde(with = "rfc3339_utc")]
    pub at: DateTime<Utc>,
}

/// One partner's settlement of one business day (for `SettlementCompleted`). Money in won:
/// `payable − deficit = gross − commission − clawbacks − carried`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettlementCompleted {
    pub settlement_id: i64,
    pub partner_id: i64,
    /// The business day settled, `YYYY-MM-DD`.
    pub business_date: chrono::NaiveDate,
    /// Partner orders settled, and how many of them were confirmed on an earlier day that was
    /// closed already.
    pub line_count: i64,
    pub late_count: i64,
    /// Σ of their items; the platform's commission on them.
    pub gross: i64,
    pub commission: i64,
    /// Money confirmed partner orders gave back at the gateway since the last settlement.
    pub clawbacks: i64,
    /// The shortfall carried in from the partner's previous settlement.
    pub carried: i64,
    /// What the partner is paid for this settlement, and the shortfall carried to its next one.
    pub payable: i64,
    pub deficit: i64,
    #[serde(with = "rfc3339_utc")]
    pub at: DateTime<Utc>,
}

mod rfc3339_utc {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

mod opt_rfc3339_utc {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339_utc::serialize(t, s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_documented_shape_and_round_trips() {
        let env = Envelope::new(Event::OrderPaid(OrderPlaced {
            order_id: 7,
            user_id: 3,
            lines: vec![OrderLine {
                product_id: 11,
                quantity: 2,
                unit_price: 1500,
            }],
            total_amount: 3000,
            discount_amount: 0,
            final_amount: 3000,
            payment_method: PaymentKind::Point,
        }));
        let json = serde_json::to_value(&env).unwrap();
        assert_eq!(json["event_type"], "OrderPaid");
        assert_eq!(json["aggregate_type"], "Order");
        assert_eq!(json["aggregate_id"], 7);
        assert_eq!(json["schema_version"], 1);
        assert_eq!(json["payload"]["lines"][0]["unit_price"], 1500);
        assert!(json["occurred_at"].as_str().unwrap().ends_with('Z'));
        let back: Envelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn a_single_view_reads_as_before_and_an_aggregated_one_carries_its_count() {
        let old = serde_json::json!({
            "event_id": Uuid::now_v7(), "aggregate_type": "Product", "aggregate_id": 5,
            "occurred_at": "2026-01-01T00:00:00Z", "schema_version": 1,
            "event_type": "ProductViewed", "payload": {"product_id": 5, "user_id": 9}
        });
        let Event::ProductViewed(v) = serde_json::from_value::<Envelope>(old).unwrap().event else {
            panic!("a view");
        };
        assert_eq!((v.product_id, v.user_id, v.count), (5, Some(9), 1));
        // One view is written exactly as before; an aggregate adds its count.
        let one = |count| {
            serde_json::to_value(Envelope::new(Event::ProductViewed(ProductViewed {
                product_id: 5,
                user_id: None,
                count,
            })))
            .unwrap()["payload"]
                .clone()
        };
        assert_eq!(one(1), serde_json::json!({"product_id": 5}));
        assert_eq!(one(42), serde_json::json!({"product_id": 5, "count": 42}));
    }

    #[test]
    fn unknown_event_type_is_rejected() {
        let json = serde_json::json!({
            "event_id": Uuid::now_v7(), "aggregate_type": "Order", "aggregate_id": 1,
            "occurred_at": "2026-01-01T00:00:00Z", "schema_version": 1,
            "event_type": "OrderTeleported", "payload": {}
        });
        assert!(serde_json::from_value::<Envelope>(json).is_err());
    }
}
