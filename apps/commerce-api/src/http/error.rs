//! The API's one error type and its one mapping to HTTP.
//!
//! Handlers return `Result<_, ApiError>`. Client errors carry a stable `code`; anything
//! unexpected becomes `Internal`, is logged once here (where it turns into a response) and is
//! answered with a generic 500 body: internal text never reaches the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use commerce_web::{FieldError, Problem};

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("{1}")]
    BadRequest(&'static str, String),
    #[error("authentication required")]
    Unauthenticated(&'static str),
    #[error("forbidden")]
    Forbidden,
    #[error("{1}")]
    NotFound(&'static str, String),
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("{1}")]
    Unprocessable(&'static str, String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A rejection that already carries its problem (malformed JSON, body too large, …).
    #[error("{}", .0.detail)]
    Rejected(Problem),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// One invalid field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Conflict(code, detail.into())
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::NotFound(code, detail.into())
    }

    fn problem(&self) -> Problem {
        match self {
            ApiError::Validation(errors) => Problem::validation(errors.clone()),
            ApiError::BadRequest(code, detail) => {
                Problem::new(StatusCode::BAD_REQUEST, code, detail.clone())
            }
            ApiError::Unauthenticated(detail) => {
                Problem::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", *detail)
            }
            ApiError::Forbidden => Problem::new(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "this route needs the admin role",
            ),
            ApiError::NotFound(code, detail) => Problem::not_found(code, detail.clone()),
            ApiError::Conflict(code, detail) => {
                Problem::new(StatusCode::CONFLICT, code, detail.clone())
            }
            ApiError::Unprocessable(code, detail) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail.clone())
            }
            ApiError::Unavailable(_) => {
                Problem::unavailable("a dependency is temporarily unavailable; retry shortly")
            }
            ApiError::Rejected(p) => p.clone(),
            ApiError::Internal(_) => Problem::internal(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(e) => tracing::error!(error = ?e, "request failed"),
            ApiError::Unavailable(e) => tracing::warn!(error = %e, "dependency unavailable"),
            _ => {}
        }
        let mut response = self.problem().into_response();
        if matches!(self, ApiError::Unauthenticated(_)) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        match e {
            diesel::result::Error::NotFound => {
                ApiError::not_found("NOT_FOUND", "the resource does not exist")
            }
            other => ApiError::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<commerce_db::PoolError> for ApiError {
    fn from(e: commerce_db::PoolError) -> Self {
        ApiError::Unavailable(format!("database pool: {e}"))
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError::Rejected(p)
    }
}

/// The result type of handlers and domain functions.
pub type ApiResult<T> = Result<T, ApiError>;
