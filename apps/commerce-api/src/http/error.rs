//! The API's one error type and its one mapping to HTTP.
//!
//! Handlers return `Result<_, ApiError>`. Domain refusals ([`domain::Error`]) are mapped to a
//! status and a stable `code` here, in one exhaustive `match`, so a new refusal cannot reach a
//! client without a code. Anything unexpected is logged once here (where it turns into a
//! response) and answered with a generic 500 body: internal text never reaches the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use commerce_web::{FieldError, Problem};

use std::time::Duration;

use crate::domain::{self, Missing};
use crate::infra::passwords::PasswordError;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A header or query parameter failed validation.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("authentication required: {0}")]
    Unauthenticated(&'static str),
    /// The caller's role may not use this route (which role it needs).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// A rate limit refused the request; retry after this long.
    #[error("rate limited")]
    RateLimited(std::time::Duration),
    /// A refresh token was used a second time: its session has ended.
    #[error("a refresh token was reused")]
    RefreshTokenReused,
    /// Password hashing is saturated: retry shortly.
    #[error("password hashing is saturated")]
    HashingBusy,
    /// A rejection that already carries its problem (malformed JSON, body too large, …).
    #[error("{}", .0.detail)]
    Rejected(Problem),
    #[error(transparent)]
    Domain(#[from] domain::Error),
}

impl ApiError {
    /// One invalid field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    fn problem(&self) -> Problem {
        use domain::Error as E;
        let conflict = |code, detail: String| Problem::new(StatusCode::CONFLICT, code, detail);
        match self {
            ApiError::Validation(errors) => Problem::validation(errors.clone()),
            ApiError::Unauthenticated(detail) => {
                Problem::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", *detail)
            }
            ApiError::RefreshTokenReused => Problem::new(
                StatusCode::UNAUTHORIZED,
                "REFRESH_TOKEN_REUSED",
                "this refresh token was used before, so its session has ended; sign in again",
            ),
            ApiError::Forbidden(detail) => {
                Problem::new(StatusCode::FORBIDDEN, "FORBIDDEN", *detail)
            }
            ApiError::RateLimited(_) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                "too many requests; retry after the time in Retry-After",
            ),
            ApiError::HashingBusy => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "AUTH_BUSY",
                "too many sign-ins at once; retry shortly",
            ),
            ApiError::Rejected(p) => p.clone(),
            ApiError::Domain(e) => {
                let detail = e.to_string();
                match e {
                    E::Invalid(errors) => Problem::validation(errors.clone()),
                    E::NotFound(missing) => Problem::not_found(not_found_code(*missing), detail),
                    E::InsufficientStock => conflict("INSUFFICIENT_STOCK", detail),
                    E::PurchaseLimitExceeded => conflict("PURCHASE_LIMIT_EXCEEDED", detail),
                    E::ProductNotOnSale => conflict("PRODUCT_NOT_ON_SALE", detail),
                    E::InsufficientPoints => conflict("INSUFFICIENT_POINTS", detail),
                    E::PointsAlreadySpent => conflict("POINTS_ALREADY_SPENT", detail),
                    E::CouponNotUsable(_) => conflict("COUPON_NOT_USABLE", detail),
                    E::CouponSoldOut => conflict("COUPON_SOLD_OUT", detail),
                    E::UnknownUser => {
                        Problem::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", detail)
                    }
                    E::CouponAlreadyIssued => conflict("COUPON_ALREADY_ISSUED", detail),
                    E::CouponNotActive => conflict("COUPON_NOT_ACTIVE", detail),
                    E::OrderNotCancellable(_) | E::OrderPartlyShipped => {
                        conflict("ORDER_NOT_CANCELLABLE", detail)
                    }
                    E::IllegalTransition(..) => conflict("ILLEGAL_TRANSITION", detail),
                    E::ReturnWindowClosed => conflict("RETURN_WINDOW_CLOSED", detail),
                    E::NotAdjustable(_) => conflict("NOT_ADJUSTABLE", detail),
                    E::LoginIdTaken => conflict("LOGIN_ID_TAKEN", detail),
                    E::WishlistFull(_) => conflict("WISHLIST_FULL", detail),
                    E::BusinessNumberTaken => conflict("BUSINESS_NUMBER_TAKEN", detail),
                    E::PartnerSuspended => {
                        Problem::new(StatusCode::FORBIDDEN, "PARTNER_SUSPENDED", detail)
                    }
                    E::LoginThrottled(_) => {
                        Problem::new(StatusCode::TOO_MANY_REQUESTS, "LOGIN_THROTTLED", detail)
                    }
                    E::PaymentNotSettled(_) => conflict("PAYMENT_NOT_SETTLED", detail),
                    E::NothingToRetry | E::NotDeadLetter => conflict("NOTHING_TO_RETRY", detail),
                    E::NoSession => conflict("NO_SESSION", detail),
                    E::AlreadyPaidOut => conflict("ALREADY_PAID_OUT", detail),
                    E::NothingToPayOut => conflict("NOTHING_TO_PAY_OUT", detail),
                    E::PayoutReferenceUsed => conflict("PAYOUT_REFERENCE_USED", detail),
                    E::DayClosed(_) => conflict("SETTLEMENT_DAY_CLOSED", detail),
                    E::PolicyVersionExists => conflict("POLICY_VERSION_EXISTS", detail),
                    E::IdempotencyKeyReused => Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "IDEMPOTENCY_KEY_REUSED",
                        detail,
                    ),
                    E::PaymentNotVerified(_) => {
                        Problem::new(StatusCode::BAD_REQUEST, "PAYMENT_NOT_VERIFIED", detail)
                    }
                    E::OrderTimedOut(_) => {
                        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "ORDER_TIMEOUT", detail)
                    }
                    E::Unavailable(_) => Problem::unavailable(
                        "a dependency is temporarily unavailable; retry shortly",
                    ),
                    E::Internal(_) => Problem::internal(),
                }
            }
        }
    }
}

fn not_found_code(missing: Missing) -> &'static str {
    match missing {
        Missing::Brand => "BRAND_NOT_FOUND",
        Missing::Product => "PRODUCT_NOT_FOUND",
        Missing::Coupon => "COUPON_NOT_FOUND",
        Missing::Order => "ORDER_NOT_FOUND",
        Missing::Payment => "PAYMENT_NOT_FOUND",
        Missing::User => "USER_NOT_FOUND",
        Missing::Partner => "PARTNER_NOT_FOUND",
        Missing::PartnerOrder => "PARTNER_ORDER_NOT_FOUND",
        Missing::Settlement => "SETTLEMENT_NOT_FOUND",
        Missing::WishlistAlert => "WISHLIST_ALERT_NOT_FOUND",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Domain(domain::Error::Internal(e)) => {
                tracing::error!(error = ?e, "request failed");
            }
            ApiError::Domain(domain::Error::Unavailable(e)) => {
                tracing::warn!(error = %e, "dependency unavailable");
            }
            ApiError::Domain(e @ domain::Error::OrderTimedOut(_)) => {
                tracing::warn!(error = %e, "order placement timed out");
            }
            _ => {}
        }
        let mut response = self.problem().into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::Unauthenticated(_)
            | ApiError::RefreshTokenReused
            | ApiError::Domain(domain::Error::UnknownUser) => {
                headers.insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
            }
            ApiError::RateLimited(wait) | ApiError::Domain(domain::Error::LoginThrottled(wait)) => {
                headers.insert(axum::http::header::RETRY_AFTER, retry_after(wait));
            }
            ApiError::HashingBusy | ApiError::Domain(domain::Error::OrderTimedOut(_)) => {
                headers.insert(axum::http::header::RETRY_AFTER, retry_after(Duration::ZERO));
            }
            _ => {}
        }
        response
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn retry_after(wait: Duration) -> axum::http::HeaderValue {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    axum::http::HeaderValue::from(seconds.max(1))
}

impl From<PasswordError> for ApiError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy => ApiError::HashingBusy,
            PasswordError::Failed(e) => ApiError::Domain(anyhow::anyhow!(e).into()),
        }
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        ApiError::Domain(e.into())
    }
}

impl From<commerce_db::PoolError> for ApiError {
    fn from(e: commerce_db::PoolError) -> Self {
        ApiError::Domain(e.into())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Domain(e.into())
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError::Rejected(p)
    }
}

/// The result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_stable_codes() {
        let cases = [
            (domain::Error::InsufficientStock, 409, "INSUFFICIENT_STOCK"),
            (
                domain::Error::NotFound(Missing::Product),
                404,
                "PRODUCT_NOT_FOUND",
            ),
            (
                domain::Error::IdempotencyKeyReused,
                422,
                "IDEMPOTENCY_KEY_REUSED",
            ),
            (
                domain::Error::PaymentNotVerified("no"),
                400,
                "PAYMENT_NOT_VERIFIED",
            ),
            (
                domain::Error::LoginThrottled(Duration::from_secs(3)),
                429,
                "LOGIN_THROTTLED",
            ),
            (
                domain::Error::Unavailable("pool".into()),
                503,
                "SERVICE_UNAVAILABLE",
            ),
            (
                domain::Error::Internal(anyhow::anyhow!("secret detail")),
                500,
                "INTERNAL_ERROR",
            ),
        ];
        for (error, status, code) in cases {
            let problem = ApiError::from(error).problem();
            assert_eq!((problem.status, problem.code), (status, code));
            assert!(!problem.detail.contains("secret"), "{}", problem.detail);
        }
    }

    #[test]
    fn refusals_to_retry_say_when() {
        let after = |e: ApiError| {
            let response = e.into_response();
            let status = response.status().as_u16();
            let header = response.headers()[axum::http::header::RETRY_AFTER].clone();
            (status, header.to_str().unwrap().to_owned())
        };
        assert_eq!(
            after(ApiError::RateLimited(Duration::from_millis(5_200))),
            (429, "6".into())
        );
        assert_eq!(
            after(ApiError::RateLimited(Duration::from_millis(10))),
            (429, "1".into())
        );
        assert_eq!(after(ApiError::HashingBusy), (503, "1".into()));
        assert_eq!(
            after(domain::Error::LoginThrottled(Duration::from_secs(4)).into()),
            (429, "4".into())
        );
    }
}
