//! A query-string extractor whose rejection is a [`Problem`] (`VALIDATION_FAILED`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::problem::{FieldError, Problem};

/// Query-string extractor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.query().is_some_and(crate::text::percent_has_nul) {
            return Err(crate::text::invalid_text("query string"));
        }
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => {
                let text = std::error::Error::source(&rejection)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| rejection.body_text());
                Err(Problem::validation(vec![FieldError::new("query", text)]))
            }
        }
    }
}

/// Path-parameter extractor: a malformed id (`/products/abc`) is a 400 problem, not plain text.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if crate::text::percent_has_nul(parts.uri.path()) {
            return Err(crate::text::invalid_text("path"));
        }
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(Problem::validation(vec![FieldError::new(
                "path",
                rejection.body_text(),
            )])),
        }
    }
}
