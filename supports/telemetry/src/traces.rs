//! W3C trace context across the process's edges: HTTP headers, outbox rows, Kafka headers.
//!
//! A span continues the trace its caller sent ([`continue_trace`], [`continue_from_headers`]),
//! hands its own context on ([`traceparent`], [`inject`]), or, for a batch that serves many
//! traces, links to each of them ([`link`]).
//!
//! When nothing records spans (no exporter), a request gets no span at all ([`mode`]): building one costs a
//! tenth of a cached read's time and nobody would see it. Its trace context is then a
//! [`RequestTrace`] held for the request's future ([`RequestTrace::scope_option`]): the caller's trace
//! id (or a fresh one) and a span id minted for the request. [`current_traceparent`], [`inject`]
//! and the log lines read it first, so log lines, outbox rows, messages and gateway calls stay
//! correlated exactly as with spans.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The [`Mode`], as its discriminant (`Ids` until the subscriber is installed).
static MODE: AtomicU8 = AtomicU8::new(Mode::Ids as u8);

/// How a request is traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Spans are recorded (an exporter is installed): each request gets a span.
    Spans,
    /// Nothing records spans: each request gets a [`RequestTrace`].
    Ids,
    /// `OTEL_SDK_DISABLED=true`: no trace context at all.
    Off,
}

/// See [`Mode`].
pub fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        m if m == Mode::Spans as u8 => Mode::Spans,
        m if m == Mode::Off as u8 => Mode::Off,
        _ => Mode::Ids,
    }
}

pub(crate) fn set_mode(mode: Mode) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

/// A request's trace context when no span is recorded for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestTrace {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

tokio::task_local! {
    static REQUEST: Option<RequestTrace>;
}

impl RequestTrace {
    /// Continues the caller's `traceparent` (its trace id and flags) or starts a trace, with a
    /// span id of its own.
    #[cfg(feature = "http")]
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Self {
        let span_id = nonzero(rand::random::<u64>());
        if headers.contains_key("traceparent") {
            let cx = propagator().extract(&opentelemetry_http::HeaderExtractor(headers));
            let sc = cx.span().span_context().clone();
            if sc.is_valid() {
                return Self {
                    trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
                    span_id,
                    flags: sc.trace_flags().to_u8(),
                };
            }
        }
        Self {
            trace_id: nonzero(rand::random::<u128>()),
            span_id,
            flags: 0,
        }
    }

    /// The 32 hex digits of the trace id.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// As a `traceparent` value (W3C version 00).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// Runs `future` with `trace` (if any) as the current trace context.
    pub fn scope_option<F: Future>(
        trace: Option<Self>,
        future: F,
    ) -> tokio::task::futures::TaskLocalFuture<Option<Self>, F> {
        REQUEST.scope(trace, future)
    }

    /// The trace context of the request being served, if it has no span.
    pub fn current() -> Option<Self> {
        REQUEST.try_with(|t| *t).ok().flatten()
    }
}

fn nonzero<T: PartialEq + From<u8>>(n: T) -> T {
    if n == T::from(0) { T::from(1) } else { n }
}

/// Hands the current request's trace context (if it has one) to `future`, for a task spawned
/// while serving it.
pub fn carry<F: Future>(future: F) -> impl Future<Output = F::Output> {
    RequestTrace::scope_option(RequestTrace::current(), future)
}

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

/// The current trace context as a `traceparent` value: the request's when it has no span,
/// else the current span's.
pub fn current_traceparent() -> Option<String> {
    match RequestTrace::current() {
        Some(t) => Some(t.traceparent()),
        None => traceparent(&Span::current()),
    }
}

/// Writes the current trace context into outgoing request headers.
#[cfg(feature = "http")]
pub fn inject(headers: &mut axum::http::HeaderMap) {
    if let Some(t) = RequestTrace::current() {
        if let Ok(v) = axum::http::HeaderValue::from_str(&t.traceparent()) {
            headers.insert("traceparent", v);
        }
        return;
    }
    propagator().inject_context(
        &Span::current().context(),
        &mut opentelemetry_http::HeaderInjector(headers),
    );
}

/// Renames the current span in its trace (a server span, once its route is known).
pub fn rename_current(name: String) {
    Span::current().context().span().update_name(name);
}
