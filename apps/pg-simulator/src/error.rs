//! The simulator's one error type, and its one mapping to problem+json.
//!
//! Refusals carry their problem (including the simulated `GATEWAY_ERROR` 500, which is part of
//! the gateway's behaviour, not a failure of the simulator); a database pool that cannot hand
//! out a connection is a 503; anything else is logged once where it becomes a response and
//! answered with the generic 500 body.

use axum::response::{IntoResponse, Response};
use commerce_web::Problem;

/// Every way a simulator request can fail.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An answer the gateway gives on purpose: sent as it is.
    #[error("{}", .0.detail)]
    Answer(Problem),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        match self {
            SimError::Answer(p) => p.into_response(),
            SimError::Unavailable(cause) => commerce_web::unavailable_error("pg-simulator", &cause),
            SimError::Internal(cause) => commerce_web::internal_error("pg-simulator", &cause),
        }
    }
}

impl From<Problem> for SimError {
    fn from(p: Problem) -> Self {
        SimError::Answer(p)
    }
}

impl From<diesel::result::Error> for SimError {
    fn from(e: diesel::result::Error) -> Self {
        SimError::Internal(e.into())
    }
}

impl From<commerce_db::PoolError> for SimError {
    fn from(e: commerce_db::PoolError) -> Self {
        commerce_db::count_pool_error("pg-simulator", &e);
        SimError::Unavailable(format!("database pool: {e}"))
    }
}
