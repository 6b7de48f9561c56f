//! The storefront's business rules: accounts and points, catalog writes, coupons, orders and
//! their payments.
//!
//! Rules kept here:
//! - functions take a connection (a transactional body runs inside the caller's transaction) or
//!   a context holding what they need, and return [`Error`], never an HTTP type;
//! - every change another service cares about writes its outbox event in the same transaction;
//! - the domain calls `crate::infra` (schema, outbox, gateway) and nothing above it: handlers
//!   (`crate::http`) and background jobs call the domain, never the other way.

pub mod accounts;
pub mod alerts;
pub mod allocation;
pub mod attention;
pub mod card;
pub mod catalog;
pub mod coupons;
pub mod fulfilment;
pub mod history;
pub mod holds;
pub mod lifecycle;
pub mod logins;
pub mod orders;
pub mod partner_orders;
pub mod partners;
pub mod payments;
pub mod points;
pub mod reconcile;
pub mod refund_worker;
pub mod refunds;
pub mod sessions;
pub mod settlement;
pub mod settlement_job;
pub mod states;
pub mod topups;
pub mod wishlist;

use commerce_web::FieldError;

/// What a domain operation can refuse, or fail with. Every refusal changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input does not describe a valid request.
    #[error("validation failed")]
    Invalid(Vec<FieldError>),
    #[error("no such {}", .0.noun())]
    NotFound(Missing),
    #[error("not enough stock for an ordered product")]
    InsufficientStock,
    /// The order would take the user above a product's `max_per_user`.
    #[error("this order would exceed how many units of a product one customer may hold")]
    PurchaseLimitExceeded,
    /// An ordered product's sale has not started or has ended.
    #[error("an ordered product is not on sale now")]
    ProductNotOnSale,
    #[error("the point balance does not cover the order")]
    InsufficientPoints,
    /// A top-up cannot be taken back: its points are spent.
    #[error("the points this top-up bought are spent; it cannot be cancelled")]
    PointsAlreadySpent,
    /// Why the coupon cannot be used for this order.
    #[error("{0}")]
    CouponNotUsable(&'static str),
    /// The token's user is not in the database (a write found no row to refer to).
    #[error("the token's user does not exist")]
    UnknownUser,
    #[error("no coupons are left")]
    CouponSoldOut,
    #[error("this coupon was already issued to you")]
    CouponAlreadyIssued,
    #[error("the coupon cannot be issued now")]
    CouponNotActive,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("an order in status {0} cannot be cancelled")]
    OrderNotCancellable(states::OrderStatus),
    /// Part of the order has shipped: the order as a whole cannot be cancelled any more.
    #[error("part of this order has shipped; cancel the partner orders that have not")]
    OrderPartlyShipped,
    /// Only a purchase-confirmed partner order is adjusted, once.
    #[error("{0}")]
    NotAdjustable(&'static str),
    /// The return window of a delivered partner order has passed.
    #[error("the return window of this partner order has closed")]
    ReturnWindowClosed,
    /// A partner order's status refuses the step.
    #[error("a {0} partner order cannot be {past}", past = .1.past())]
    IllegalTransition(partner_orders::PartnerOrderStatus, fulfilment::Step),
    #[error("that login id is already taken")]
    LoginIdTaken,
    /// A wishlist holds at most this many products.
    #[error("a wishlist holds at most {0} products; remove one first")]
    WishlistFull(i64),
    #[error("a partner with this business number exists")]
    BusinessNumberTaken,
    /// The calling partner is suspended: it cannot change its catalog.
    #[error("the partner is suspended")]
    PartnerSuspended,
    /// Too many wrong passwords for this login id: wait this long (see [`logins`]).
    #[error("too many failed logins for this login id; retry later")]
    LoginThrottled(std::time::Duration),
    /// The gateway does not confirm what a callback claims.
    #[error("{0}")]
    PaymentNotVerified(&'static str),
    /// The gateway has not settled the payment yet.
    #[error("{0}")]
    PaymentNotSettled(&'static str),
    /// The settlement was paid out already: a payout is recorded once.
    #[error("this settlement was paid out already")]
    AlreadyPaidOut,
    /// The settlement owes the partner nothing (its day's earnings went to a shortfall).
    #[error("this settlement has nothing to pay out")]
    NothingToPayOut,
    /// Another payout was recorded under this reference.
    #[error("a payout with this reference is recorded already")]
    PayoutReferenceUsed,
    /// The business day is settled: what applies to it can no longer change.
    #[error("business day {0} is settled already; choose a later day")]
    DayClosed(chrono::NaiveDate),
    /// A commission policy version starting that day exists for that partner.
    #[error("a commission policy version starting that day exists already")]
    PolicyVersionExists,
    /// An operator asked to retry a payment that has nothing left to retry.
    #[error("this payment has no refund or lookup to retry")]
    NothingToRetry,
    #[error("only a FAILED or UNCONFIRMED alert can be sent again")]
    NotDeadLetter,
    #[error("this token belongs to no session; nothing to log out of")]
    NoSession,
    /// Placing an order took longer than `ORDER_TIMEOUT_MS`: it was rolled back whole.
    #[error("the order could not be placed within {} ms and was rolled back: nothing was reserved or charged; retry shortly", .0.as_millis())]
    OrderTimedOut(std::time::Duration),
    /// A dependency (the database pool, the gateway) cannot be reached right now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// What [`Error::NotFound`] did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Brand,
    Product,
    Coupon,
    Order,
    Payment,
    User,
    Partner,
    PartnerOrder,
    Settlement,
    WishlistAlert,
}

impl Missing {
    /// The thing, as a word for messages.
    pub fn noun(self) -> &'static str {
        match self {
            Missing::Brand => "brand",
            Missing::Product => "product",
            Missing::Coupon => "coupon",
            Missing::Order => "order",
            Missing::Payment => "card payment",
            Missing::User => "user",
            Missing::Partner => "partner",
            Missing::PartnerOrder => "partner order",
            Missing::Settlement => "settlement",
            Missing::WishlistAlert => "wishlist alert",
        }
    }
}

impl Error {
    /// One invalid field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        Error::Internal(anyhow::Error::new(e))
    }
}

impl From<commerce_db::PoolError> for Error {
    fn from(e: commerce_db::PoolError) -> Self {
        commerce_db::count_pool_error("commerce-api", &e);
        Error::Unavailable(format!("database pool: {e}"))
    }
}

/// The result of domain operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Collects field errors: `Ok(())` when there are none.
pub fn check(errors: Vec<FieldError>) -> Result<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(errors))
    }
}

/// Whether a database error is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
    )
}

/// Whether a database error is a foreign-key violation (a referenced row does not exist).
pub(crate) fn is_foreign_key_violation(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ForeignKeyViolation,
            _
        )
    )
}
