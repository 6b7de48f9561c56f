//! HTTP request instrumentation: trace context, one access line and the request metrics.
//!
//! [`ObserveLayer`] (the outermost layer) gives each request its trace context, continuing the
//! caller's `traceparent`: a server span when spans are recorded, else a
//! [`RequestTrace`](crate::traces::RequestTrace) (see [`crate::traces`]); answers with the
//! request's own `traceparent`; and writes its access line ([`AccessLog`]).
//!
//! [`TrackHttpLayer`] (a route layer, so it runs once the route is matched) names the span after
//! the route template and records `http_requests_total` and `http_request_duration_seconds`,
//! labelled by the template, never the raw path, so label cardinality stays bounded.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{MatchedPath, Request};
use axum::http::{self, Method, StatusCode, Uri};
use axum::response::Response;
use metrics::{Counter, Histogram};
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};
use tracing::field::Empty;
use tracing::instrument::Instrumented;
use tracing::{Instrument as _, Level, Span};

use crate::traces::{Mode, RequestTrace};

/// The route a request matched, left on the response for the access line.
#[derive(Clone, Debug)]
struct MatchedRoute(MatchedPath);

/// The outermost layer: trace context, `traceparent` on the answer, the access line. A plain
/// tower layer (no boxed future or cloned inner service per request, as `from_fn` has).
#[derive(Clone, Copy, Debug, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// See [`ObserveLayer`].
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let start = Instant::now();
        let method = req.method().clone();
        let uri = req.uri().clone();
        let (span, trace) = match crate::traces::mode() {
            Mode::Spans => (request_span(&req), None),
            Mode::Ids => (
                Span::none(),
                Some(RequestTrace::from_headers(req.headers())),
            ),
            Mode::Off => (Span::none(), None),
        };
        let inner = {
            let _in_span = span.enter();
            self.inner.call(req)
        };
        ObserveFuture {
            inner: RequestTrace::scope_option(trace, inner.instrument(span.clone())),
            done: Some(Observed {
                span,
                trace,
                start,
                method,
                uri,
            }),
        }
    }
}

/// What [`ObserveFuture`] finishes a response with.
struct Observed {
    span: Span,
    trace: Option<RequestTrace>,
    start: Instant,
    method: Method,
    uri: Uri,
}

pin_project_lite::pin_project! {
    /// See [`ObserveLayer`].
    pub struct ObserveFuture<F> {
        #[pin]
        inner: TaskLocalFuture<Option<RequestTrace>, Instrumented<F>>,
        done: Option<Observed>,
    }
}

impl<F, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let done = this.done.take().expect("polled after completion");
        Poll::Ready(result.map(|response| done.finish(response)))
    }
}

impl Observed {
    fn finish(self, mut response: Response) -> Response {
        let status = response.status();
        let traceparent = match self.trace {
            Some(trace) => Some(trace.traceparent()),
            None if self.span.is_none() => None,
            None => {
                self.span
                    .record("http.response.status_code", status.as_u16());
                if status.is_server_error() {
                    self.span.record("otel.status_code", "error");
                }
                crate::traces::traceparent(&self.span)
            }
        };
        if let Some(tp) = &traceparent
            && let Ok(v) = http::HeaderValue::from_str(tp)
        {
            response.headers_mut().insert("traceparent", v);
        }
        let route = response
            .extensions()
            .get::<MatchedRoute>()
            .map_or("unmatched", |r| r.0.as_str());
        ACCESS.log(&Access {
            method: &self.method,
            path: self.uri.path(),
            route,
            status,
            latency: self.start.elapsed(),
            trace_id: traceparent.as_deref().and_then(|tp| tp.get(3..35)),
        });
        response
    }
}

fn request_span(req: &Request) -> Span {
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

/// One request, as the access line sees it.
struct Access<'a> {
    method: &'a Method,
    path: &'a str,
    route: &'a str,
    status: StatusCode,
    latency: Duration,
    trace_id: Option<&'a str>,
}

/// The access log: one compact line per request, formatted on the request's thread into a
/// reused buffer and handed to the log writer ([`crate::output`]), which drops it (counted)
/// rather than wait when its queue is full.
///
/// Which requests get a line:
/// - every server error (WARN), client error, request slower than `ACCESS_LOG_SLOW_MS`
///   (default 500) and request that is not a `GET` or `HEAD` (INFO);
/// - of the rest (fast successful reads), a fraction `ACCESS_LOG_SAMPLE` (0 to 1, default 1:
///   all of them);
/// - never a health check or a metrics scrape that succeeded.
///
/// `RUST_LOG` still applies to the `request` target (`RUST_LOG=info,request=warn` keeps the
/// server errors only). A text line is
/// `<time>  INFO request: GET /api/v1/products/7 200 0.412ms route=/api/v1/products/{id} trace_id=<32 hex>`
/// (the route template only when it differs from the path); `LOG_FORMAT=json` writes the same
/// fields in the shape of the other JSON lines.
pub struct AccessLog {
    sample: f64,
    slow: Duration,
    json: bool,
}

static ACCESS: LazyLock<AccessLog> = LazyLock::new(AccessLog::from_env);

impl AccessLog {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            sample: var("ACCESS_LOG_SAMPLE")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite())
                .map_or(1.0, |s| s.clamp(0.0, 1.0)),
            slow: Duration::from_millis(
                var("ACCESS_LOG_SLOW_MS")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(500),
            ),
            json: crate::logs::json_lines(),
        }
    }

    /// The level of `a`'s line, or `None` when it gets none.
    fn level(&self, a: &Access<'_>) -> Option<Level> {
        if a.status.is_server_error() {
            return tracing::enabled!(target: "request", Level::WARN).then_some(Level::WARN);
        }
        let kept = a.status.is_client_error()
            || a.latency >= self.slow
            || !(a.method == Method::GET || a.method == Method::HEAD);
        if !kept {
            if a.route.starts_with("/health") || a.route == "/metrics" {
                return None;
            }
            if self.sample < 1.0 && (self.sample <= 0.0 || rand::random::<f64>() >= self.sample) {
                return None;
            }
        }
        tracing::enabled!(target: "request", Level::INFO).then_some(Level::INFO)
    }

    fn log(&self, a: &Access<'_>) {
        let Some(level) = self.level(a) else {
            return;
        };
        thread_local! {
            static LINE: RefCell<String> = RefCell::new(String::with_capacity(256));
        }
        let line = LINE.with_borrow_mut(|line| {
            line.clear();
            let _ = if self.json {
                write_json(line, level, a)
            } else {
                write_text(line, level, a)
            };
            line.as_bytes().to_vec()
        });
        crate::output::output().offer(line);
    }
}

fn write_text(out: &mut String, level: Level, a: &Access<'_>) -> std::fmt::Result {
    write_timestamp(out)?;
    let micros = a.latency.as_micros();
    write!(
        out,
        " {level:>5} request: {} {} {} {}.{:03}ms",
        a.method,
        a.path,
        a.status.as_u16(),
        micros / 1000,
        micros % 1000
    )?;
    if a.route != a.path {
        write!(out, " route={}", a.route)?;
    }
    if let Some(id) = a.trace_id {
        write!(out, " trace_id={id}")?;
    }
    out.push('\n');
    Ok(())
}

fn write_json(out: &mut String, level: Level, a: &Access<'_>) -> std::fmt::Result {
    out.push_str("{\"timestamp\":\"");
    write_timestamp(out)?;
    let micros = a.latency.as_micros();
    write!(
        out,
        "\",\"level\":\"{level}\",\"fields\":{{\"method\":\"{}\",\"path\":\"",
        a.method
    )?;
    json_escaped(out, a.path);
    out.push_str("\",\"route\":\"");
    json_escaped(out, a.route);
    write!(
        out,
        "\",\"status\":{},\"latency_ms\":{}.{:03}}},\"target\":\"request\"",
        a.status.as_u16(),
        micros / 1000,
        micros % 1000
    )?;
    if let Some(id) = a.trace_id {
        write!(out, ",\"trace_id\":\"{id}\"")?;
    }
    out.push_str("}\n");
    Ok(())
}

fn json_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// `2026-12-05T15:04:05.123456Z`, RFC 3339 in UTC as the other lines; the part down to the
/// second is formatted once a second per thread.
fn write_timestamp(out: &mut String) -> std::fmt::Result {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            *cached = secs;
            text.clear();
            let at = chrono::DateTime::from_timestamp(secs as i64, 0).unwrap_or_default();
            let _ = write!(text, "{}", at.format("%Y-%m-%dT%H:%M:%S"));
        }
        out.push_str(text);
    });
    write!(out, ".{:06}Z", now.subsec_micros())
}

/// A route layer (so it runs once the route is matched): names the request span after its
/// route and records `http_requests_total` and `http_request_duration_seconds`.
///
/// Requests that match no route are counted by the router's fallback, as `route="unmatched"`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackHttpLayer;

impl<S> Layer<S> for TrackHttpLayer {
    type Service = TrackHttp<S>;

    fn layer(&self, inner: S) -> TrackHttp<S> {
        TrackHttp { inner }
    }
}

/// See [`TrackHttpLayer`].
#[derive(Clone, Debug)]
pub struct TrackHttp<S> {
    inner: S,
}

impl<S> Service<Request> for TrackHttp<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let start = Instant::now();
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        if crate::traces::mode() == Mode::Spans {
            let name = route.as_ref().map_or("unmatched", MatchedPath::as_str);
            Span::current().record("http.route", name);
            crate::traces::rename_current(format!("{method} {name}"));
        }
        TrackFuture {
            inner: self.inner.call(req),
            done: Some((start, route, method)),
        }
    }
}

pin_project_lite::pin_project! {
    /// See [`TrackHttpLayer`].
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        done: Option<(Instant, Option<MatchedPath>, Method)>,
    }
}

impl<F, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let (start, route, method) = this.done.take().expect("polled after completion");
        Poll::Ready(result.map(|mut response| {
            let name = route.as_ref().map_or("unmatched", MatchedPath::as_str);
            with_route_metrics(
                name,
                &method,
                response.status().as_u16(),
                |requests, duration| {
                    requests.increment(1);
                    duration.record(start.elapsed().as_secs_f64());
                },
            );
            if let Some(route) = route {
                response.extensions_mut().insert(MatchedRoute(route));
            }
            response
        }))
    }
}

/// The two request metrics of (`route`, `method`, `status`): looked up in the recorder once
/// per thread and kept, since building a labelled key costs more than the request it counts
/// on the cheapest routes.
fn with_route_metrics(
    route: &str,
    method: &Method,
    status: u16,
    f: impl FnOnce(&Counter, &Histogram),
) {
    type Series = (Method, u16, Counter, Histogram);
    thread_local! {
        static SERIES: RefCell<HashMap<Box<str>, Vec<Series>>> = RefCell::new(HashMap::new());
    }
    SERIES.with_borrow_mut(|series| {
        if !series.contains_key(route) {
            series.insert(route.into(), Vec::new());
        }
        let of_route = series.get_mut(route).expect("inserted above");
        let i = match of_route
            .iter()
            .position(|(m, s, _, _)| m == method && *s == status)
        {
            Some(i) => i,
            None => {
                let labels = [
                    ("method", method.as_str().to_owned()),
                    ("route", route.to_owned()),
                    ("status", status.to_string()),
                ];
                of_route.push((
                    method.clone(),
                    status,
                    metrics::counter!("http_requests_total", &labels),
                    metrics::histogram!("http_request_duration_seconds", &labels),
                ));
                of_route.len() - 1
            }
        };
        let (_, _, requests, duration) = &of_route[i];
        f(requests, duration);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access<'a>(method: &'a Method, status: u16, latency_us: u64, route: &'a str) -> Access<'a> {
        Access {
            method,
            path: "/api/v1/products/42",
            route,
            status: StatusCode::from_u16(status).unwrap(),
            latency: Duration::from_micros(latency_us),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        }
    }

    #[test]
    fn a_text_line_names_each_field_once_in_under_200_bytes() {
        let mut line = String::new();
        let get = Method::GET;
        write_text(
            &mut line,
            Level::INFO,
            &access(&get, 200, 412, "/api/v1/products/{product_id}"),
        )
        .unwrap();
        assert!(line.len() < 200, "{} bytes: {line}", line.len());
        let (ts, rest) = line.split_once(' ').unwrap();
        assert_eq!(ts.len(), "2026-12-05T15:04:05.123456Z".len(), "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        assert_eq!(
            rest,
            " INFO request: GET /api/v1/products/42 200 0.412ms route=/api/v1/products/{product_id} trace_id=4bf92f3577b34da6a3ce929d0e0e4736\n"
        );
        // A route without parameters is not repeated.
        line.clear();
        let mut same = access(&get, 200, 1_250_000, "/api/v1/products/42");
        same.trace_id = None;
        write_text(&mut line, Level::INFO, &same).unwrap();
        assert!(
            line.ends_with(" INFO request: GET /api/v1/products/42 200 1250.000ms\n"),
            "{line}"
        );
    }

    #[test]
    fn a_json_line_parses_with_the_fields_of_the_other_json_lines() {
        let mut line = String::new();
        let post = Method::POST;
        let mut a = access(&post, 503, 7, "/api/v1/\"odd\"");
        a.path = "/api/v1/\"odd\"\\";
        write_json(&mut line, Level::WARN, &a).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "request");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["fields"]["method"], "POST");
        assert_eq!(v["fields"]["path"], "/api/v1/\"odd\"\\");
        assert_eq!(v["fields"]["route"], "/api/v1/\"odd\"");
        assert_eq!(v["fields"]["status"], 503);
        assert_eq!(v["fields"]["latency_ms"], 0.007);
    }

    #[test]
    fn errors_slow_requests_and_writes_are_kept_and_fast_reads_sampled() {
        let none = AccessLog {
            sample: 0.0,
            slow: Duration::from_millis(100),
            json: false,
        };
        let (get, post, head) = (Method::GET, Method::POST, Method::HEAD);
        let route = "/api/v1/products/{id}";
        // A subscriber that takes every level, as with `RUST_LOG=info`.
        let _all = tracing::subscriber::set_default(tracing_subscriber::registry());
        let kept = |log: &AccessLog, a: Access<'_>| log.level(&a).is_some();
        assert!(!kept(&none, access(&get, 200, 50, route)));
        assert!(!kept(&none, access(&head, 304, 50, route)));
        assert!(kept(&none, access(&get, 404, 50, route)));
        assert!(kept(&none, access(&get, 200, 100_000, route)));
        assert!(kept(&none, access(&post, 201, 50, route)));
        assert_eq!(none.level(&access(&get, 500, 50, route)), Some(Level::WARN));
        assert!(!kept(&none, access(&get, 200, 50, "/health/ready")));
        let all = AccessLog {
            sample: 1.0,
            ..none
        };
        assert!(kept(&all, access(&get, 200, 50, route)));
        assert!(!kept(&all, access(&get, 200, 50, "/metrics")));
        let half = AccessLog { sample: 0.5, ..all };
        let n = (0..10_000)
            .filter(|_| kept(&half, access(&get, 200, 50, route)))
            .count();
        assert!((4_500..5_500).contains(&n), "{n} of 10,000 kept at 0.5");
    }
}
