//! W3C trace context across the process's edges: HTTP headers, outbox rows, Kafka headers.
//!
//! A span continues the trace its caller sent ([`continue_trace`], [`continue_from_headers`]),
//! hands its own context on ([`traceparent`], [`inject`]), or, for a batch that serves many
//! traces, links to each of them ([`link`]).

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

fn parse(traceparent: &str) -> opentelemetry::Context {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    propagator().extract(&carrier)
}

/// Makes `span` a child of the context in `traceparent`, if it is a valid one (else `span`
/// starts a trace of its own).
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        let cx = parse(tp);
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
}

/// Makes `span` a child of the trace context in `headers`, if they carry a valid one.
#[cfg(feature = "http")]
pub fn continue_from_headers(span: &Span, headers: &axum::http::HeaderMap) {
    let cx = propagator().extract(&opentelemetry_http::HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Links `span` to the span in `traceparent` (a batch span, to each message's trace).
pub fn link(span: &Span, traceparent: &str) {
    let cx = parse(traceparent);
    let linked = cx.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// `span`'s context as a `traceparent` value (W3C version 00), or `None` when it has none (no
/// subscriber).
pub fn traceparent(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The current span's context as a `traceparent` value.
pub fn current_traceparent() -> Option<String> {
    traceparent(&Span::current())
}

/// Writes the current span's context into outgoing request headers.
#[cfg(feature = "http")]
pub fn inject(headers: &mut axum::http::HeaderMap) {
    propagator().inject_context(
        &Span::current().context(),
        &mut opentelemetry_http::HeaderInjector(headers),
    );
}

/// Renames the current span in its trace (a server span, once its route is known).
pub fn rename_current(name: String) {
    Span::current().context().span().update_name(name);
}
