//! HTTP plumbing shared by every app.
//!
//! - [`Problem`]: the one error body every app returns (RFC 9457 `application/problem+json`)
//!   with a stable machine-readable `code`;
//! - [`Json`]: a JSON extractor whose rejections are [`Problem`]s, so a malformed body gets the
//!   same envelope as any other error;
//! - [`health`]: liveness and readiness routes;
//! - [`signature`]: signed webhooks (HMAC-SHA256 over timestamp and body) and API key checks;
//! - [`Server`]: the one runner every app starts through: bind, serve, run background tasks,
//!   and stop them all in order on SIGTERM/Ctrl-C.

mod error;
pub mod health;
pub mod idempotency;
mod json;
#[cfg(feature = "openapi")]
pub mod openapi;
mod problem;
mod query;
mod serve;
pub mod signature;
pub mod text;

#[doc(hidden)]
pub use axum as __axum;
pub use json::Json;
pub use problem::{FieldError, Problem, internal_error, route_not_found, unavailable_error};
pub use query::{Path, Query};
pub use serve::{Drain, Server, shutdown_signal, stop_flag};

use axum::Router;
use axum::routing::get;

/// Adds what every app serves besides its own API: `/health/*`, `/metrics`, request metrics on
/// every matched route, a problem+json 404 for unknown routes, a request body limit, a panic
/// guard (a panicking handler answers 500 instead of dropping the connection), and each request's
/// trace context (continuing the caller's `traceparent` and echoing it) and access line.
pub fn with_platform_routes<S: Clone + Send + Sync + 'static>(
    api: Router<S>,
    dependencies: Vec<health::Dependency>,
    body_limit_bytes: usize,
) -> Router<S> {
    with_api_layers(api.merge(management_routes(dependencies)), body_limit_bytes)
}

/// As [`with_platform_routes`], for an app with a management listener: the public router
/// (the API, without `/health/*` and `/metrics`) and the management router (just those).
pub fn split_platform_routes<S: Clone + Send + Sync + 'static>(
    api: Router<S>,
    dependencies: Vec<health::Dependency>,
    body_limit_bytes: usize,
) -> (Router<S>, Router<S>) {
    (
        with_api_layers(api, body_limit_bytes),
        management_routes(dependencies).fallback(route_not_found),
    )
}

/// `/health/*` and `/metrics`.
fn management_routes<S: Clone + Send + Sync + 'static>(
    dependencies: Vec<health::Dependency>,
) -> Router<S> {
    health::router(dependencies).route("/metrics", get(commerce_telemetry::render_metrics))
}

fn with_api_layers<S: Clone + Send + Sync + 'static>(
    api: Router<S>,
    body_limit_bytes: usize,
) -> Router<S> {
    api.route_layer(commerce_telemetry::http::TrackHttpLayer)
        .fallback(route_not_found)
        // axum's own limit (not tower-http's), so an oversized body is refused by our JSON
        // extractor with a problem+json 413.
        .layer(axum::extract::DefaultBodyLimit::max(body_limit_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(commerce_telemetry::http::ObserveLayer)
}
