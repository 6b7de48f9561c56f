//! The error envelope: `application/problem+json` (RFC 9457).
//!
//! Rule: a 5xx body never carries internal text. The app logs the cause once where it turns an
//! error into a response and sends a generic `detail`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One field that failed validation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error for a field nested under `prefix` (`"account."` + `"login_id"`).
    pub fn prefixed(self, prefix: &str) -> Self {
        Self {
            field: format!("{prefix}{}", self.field),
            message: self.message,
        }
    }
}

/// A problem details body (`application/problem+json`).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A URI reference naming the problem type; we use `urn:problem:<code>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code, e.g. `INSUFFICIENT_STOCK`. Clients branch on this.
    pub code: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            type_uri: format!(
                "urn:problem:{}",
                code.to_ascii_lowercase().replace('_', "-")
            ),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code,
            errors: Vec::new(),
        }
    }

    /// 400 `VALIDATION_FAILED` with per-field messages.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let mut p = Self::new(
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
            "the request has invalid fields",
        );
        p.errors = errors;
        p
    }

    /// 500 with a generic body; the caller logs the real cause.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "an unexpected error occurred",
        )
    }

    /// 503: a dependency (database pool, gateway) is unavailable right now.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            detail,
        )
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let mut response = (status, axum::Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// The response for an unexpected failure: the cause is logged once, here, with the app's name;
/// the client gets the generic 500 body.
pub fn internal_error(app: &'static str, cause: &anyhow::Error) -> Response {
    tracing::error!(app, error = ?cause, "request failed");
    Problem::internal().into_response()
}

/// The response for a dependency that cannot be reached right now (a pool timeout, a remote
/// service down): logged at WARN, answered with 503 and a generic body.
pub fn unavailable_error(app: &'static str, cause: &str) -> Response {
    tracing::warn!(app, error = %cause, "dependency unavailable");
    Problem::unavailable("a dependency is temporarily unavailable; retry shortly").into_response()
}

/// Fallback for unknown routes: a problem body instead of an empty 404, counted as
/// `route="unmatched"` (the request metrics layer sees matched routes only).
pub async fn route_not_found(method: axum::http::Method) -> Problem {
    let labels = [
        ("method", method.as_str().to_owned()),
        ("route", "unmatched".to_owned()),
        ("status", "404".to_owned()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(0.0);
    Problem::not_found("ROUTE_NOT_FOUND", "no such route")
}
