//! Logging, tracing and metrics shared by every app.
//!
//! Rules kept here:
//! - one Prometheus recorder per process, installed once (tests start several apps in one
//!   process and share it);
//! - every `*_seconds` metric is a real histogram with `_bucket` series, not a summary;
//! - HTTP metrics are labelled by the matched route template, never the raw path, so label
//!   cardinality stays bounded whatever URLs clients send.

pub mod http;
mod logs;
pub mod traces;

#[cfg(feature = "testing")]
pub use logs::capture_spans;
pub use logs::{init_tracing, shutdown_tracing};
#[cfg(feature = "testing")]
pub use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};

use std::sync::OnceLock;

use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Pipeline-delay buckets in seconds (an event's commit to its application: milliseconds when
/// healthy, minutes in an outage).
pub const PIPELINE_DELAY_BUCKETS_SECONDS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Latency buckets in seconds: fine-grained below 10 ms where cached reads live, coarse up to
/// the gateway timeouts.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".to_owned()),
                    LATENCY_BUCKETS_SECONDS,
                )
                .expect("bucket list is non-empty")
                .set_buckets_for_metric(
                    Matcher::Full("collector_event_age_seconds".to_owned()),
                    PIPELINE_DELAY_BUCKETS_SECONDS,
                )
                .expect("bucket list is non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe_http_metrics();
            handle
        })
        .clone()
}

fn describe_http_metrics() {
    metrics::describe_counter!(
        "http_requests_total",
        "HTTP requests handled, by method, route template and status code."
    );
    metrics::describe_histogram!(
        "http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency from first byte in to response head out."
    );
}

/// `GET /metrics` handler: Prometheus text exposition format.
pub async fn render_metrics() -> impl IntoResponse {
    let handle = metrics_handle();
    handle.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}
