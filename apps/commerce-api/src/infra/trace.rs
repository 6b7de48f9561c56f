//! W3C trace context for events.
//!
//! Each request runs with a `traceparent`: the caller's, when it sent a valid one, or a fresh
//! one. Outbox rows written while serving the request store it, and the relay sends it as a
//! Kafka header, so a trace crosses the broker into the collector's logs.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

tokio::task_local! {
    static TRACEPARENT: String;
}

/// The current request's `traceparent`, if any.
pub fn current() -> Option<String> {
    TRACEPARENT.try_with(Clone::clone).ok()
}

/// Whether `value` is a well-formed version-00 `traceparent`.
fn valid(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 4
        && parts[0] == "00"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts[1..].iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

fn fresh() -> String {
    let trace: u128 = rand::random::<u128>() | 1;
    let span: u64 = rand::random::<u64>() | 1;
    format!("00-{trace:032x}-{span:016x}-01")
}

/// Middleware: runs the request with its trace context and echoes it in the response.
pub async fn propagate(req: Request, next: Next) -> Response {
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid(v))
        .map(str::to_owned)
        .unwrap_or_else(fresh);
    let mut response = TRACEPARENT.scope(traceparent.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&traceparent) {
        response.headers_mut().insert("traceparent", v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_trace_contexts_are_kept() {
        assert!(valid(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid("garbage"));
        assert!(valid(&fresh()));
    }
}
