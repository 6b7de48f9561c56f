//! HTTP request instrumentation: a span and a log line per request, and the request metrics.
//!
//! [`request_trace_layer`] (tower-http's `TraceLayer`) opens a server span per request,
//! continuing the caller's `traceparent`, and logs one line when the response head is sent:
//! route template, status and latency, with the method and path in the span. Health checks and
//! metric scrapes log at DEBUG, server errors at WARN, everything else at INFO, all under the
//! `request` target (`RUST_LOG=info,request=warn` keeps only the failures).
//!
//! [`track_http`] (a route layer, so it runs once the route is matched) names the span after
//! the route template and records `http_requests_total` and `http_request_duration_seconds`,
//! labelled by the template, never the raw path, so label cardinality stays bounded.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http;
use axum::middleware::Next;
use axum::response::Response;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::Span;
use tracing::field::Empty;

/// The matched route template, left on the response for the request log.
#[derive(Clone, Debug)]
pub struct MatchedRoute(pub String);

/// The request span and log layer every app's router is wrapped in.
pub type RequestTraceLayer =
    TraceLayer<SharedClassifier<ServerErrorsAsFailures>, RequestSpan, (), LogResponse, (), (), ()>;

/// See the module documentation.
pub fn request_trace_layer() -> RequestTraceLayer {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(LogResponse)
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

/// Opens the server span of a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, req: &http::Request<B>) -> Span {
        let span = tracing::info_span!(
            "request",
            otel.name = %req.method(),
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = %req.method(),
            url.path = req.uri().path(),
            http.route = Empty,
            http.response.status_code = Empty,
        );
        crate::traces::continue_from_headers(&span, req.headers());
        span
    }
}

/// Logs the request's line when its response head is sent.
#[derive(Clone, Copy, Debug)]
pub struct LogResponse;

impl<B> OnResponse<B> for LogResponse {
    fn on_response(self, res: &http::Response<B>, latency: Duration, span: &Span) {
        let route = res
            .extensions()
            .get::<MatchedRoute>()
            .map_or("unmatched", |r| r.0.as_str());
        let status = res.status().as_u16();
        span.record("http.response.status_code", status);
        let latency_ms = (latency.as_secs_f64() * 1e6).round() / 1e3;
        if res.status().is_server_error() {
            span.record("otel.status_code", "error");
            tracing::warn!(target: "request", route, status, latency_ms, "failed");
        } else if route.starts_with("/health") || route == "/metrics" {
            tracing::debug!(target: "request", route, status, latency_ms, "served");
        } else {
            tracing::info!(target: "request", route, status, latency_ms, "served");
        }
    }
}

/// Axum route middleware: names the request span after its route and records
/// `http_requests_total` and `http_request_duration_seconds`.
///
/// Requests that match no route are counted by the router's fallback, as `route="unmatched"`.
pub async fn track_http(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let span = Span::current();
    span.record("http.route", route.as_str());
    crate::traces::rename_current(format!("{method} {route}"));
    let mut response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    response
        .extensions_mut()
        .insert(MatchedRoute(route.clone()));
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}

/// Axum middleware: echoes the request span's `traceparent` on the response, so a client can
/// quote the trace of any answer it got.
pub async fn echo_traceparent(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    if let Some(tp) = crate::traces::current_traceparent()
        && let Ok(v) = http::HeaderValue::from_str(&tp)
    {
        response.headers_mut().insert("traceparent", v);
    }
    response
}
