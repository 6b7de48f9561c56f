//! The collector's one error type for its HTTP routes, and its one mapping to problem+json.
//!
//! Refusals carry their problem (a stable `code`); a database pool that cannot hand out a
//! connection is a 503; anything else is logged once where it becomes a response and answered
//! with the generic 500 body.

use axum::response::{IntoResponse, Response};
use commerce_web::Problem;

/// Every way a collector request can fail.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The request was refused (bad input, unknown resource): sent as it is.
    #[error("{}", .0.detail)]
    Refused(Problem),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl IntoResponse for CollectorError {
    fn into_response(self) -> Response {
        match self {
            CollectorError::Refused(p) => p.into_response(),
            CollectorError::Unavailable(cause) => {
                commerce_web::unavailable_error("commerce-collector", &cause)
            }
            CollectorError::Internal(cause) => {
                commerce_web::internal_error("commerce-collector", &cause)
            }
        }
    }
}

impl From<Problem> for CollectorError {
    fn from(p: Problem) -> Self {
        CollectorError::Refused(p)
    }
}

impl From<diesel::result::Error> for CollectorError {
    fn from(e: diesel::result::Error) -> Self {
        CollectorError::Internal(e.into())
    }
}

impl From<commerce_db::PoolError> for CollectorError {
    fn from(e: commerce_db::PoolError) -> Self {
        commerce_db::count_pool_error("commerce-collector", &e);
        CollectorError::Unavailable(format!("database pool: {e}"))
    }
}
