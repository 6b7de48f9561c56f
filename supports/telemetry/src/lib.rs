//! Logging, tracing and metrics shared by every app.
//!
//! Rules kept here:
//! - one Prometheus recorder per process, installed once (tests start several apps in one
//!   process and share it);
//! - every histogram is a real histogram with `_bucket` series, not a summary;
//! - every metric is described and its series registered at start ([`register_counter`] and
//!   kin), so dashboards and alerts read 0, not "no data", before the first event;
//! - HTTP metrics are labelled by the matched route template, never the raw path, so label
//!   cardinality stays bounded whatever URLs clients send.

#[cfg(feature = "http")]
pub mod http;
mod logs;
pub mod output;
pub mod traces;

#[cfg(feature = "testing")]
pub use logs::capture_spans;
pub use logs::{init_tracing, shutdown_tracing};
#[cfg(feature = "testing")]
pub use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Pipeline-delay buckets in seconds (an event's commit to its application: milliseconds when
/// healthy, minutes in an outage).
pub const PIPELINE_DELAY_BUCKETS_SECONDS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Batch-size buckets (the collector's batches hold up to 100 messages by default).
pub const BATCH_SIZE_BUCKETS: &[f64] =
    &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0];

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
                .set_buckets_for_metric(
                    Matcher::Full("collector_batch_size".to_owned()),
                    BATCH_SIZE_BUCKETS,
                )
                .expect("bucket list is non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe_http_metrics();
            register_counter(
                "log_lines_dropped_total",
                "Access log lines dropped because the log writer's queue was full.",
                &[],
            );
            handle
        })
        .clone()
}

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`,
/// `process_threads` and their kin, read from the operating system at every scrape.
fn process_metrics() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let collector = metrics_process::Collector::default();
        collector.describe();
        collector
    })
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

/// Label keys and every value each takes, for registering a metric's series at start.
pub type LabelValues<'a> = &'a [(&'static str, &'a [&'static str])];

/// Every combination of `labels`' values (one empty combination when there are no labels).
fn combinations(labels: LabelValues<'_>) -> Vec<Vec<(&'static str, &'static str)>> {
    labels.iter().fold(vec![Vec::new()], |acc, (key, values)| {
        acc.into_iter()
            .flat_map(|combo| {
                values.iter().map(move |v| {
                    let mut next = combo.clone();
                    next.push((*key, *v));
                    next
                })
            })
            .collect()
    })
}

fn owned(combo: &[(&'static str, &'static str)]) -> Vec<metrics::Label> {
    combo
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, *v))
        .collect()
}

/// Describes a counter and registers every series of it at zero, so a panel or an alert reads 0
/// from the start instead of "no data" until the first event.
pub fn register_counter(name: &'static str, help: &'static str, labels: LabelValues<'_>) {
    metrics::describe_counter!(name, help);
    for combo in combinations(labels) {
        metrics::counter!(name, owned(&combo)).increment(0);
    }
}

/// Describes a histogram (in seconds when its name ends in `_seconds`) and registers every
/// series of it, empty.
pub fn register_histogram(name: &'static str, help: &'static str, labels: LabelValues<'_>) {
    if name.ends_with("_seconds") {
        metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
    } else {
        metrics::describe_histogram!(name, help);
    }
    for combo in combinations(labels) {
        let _ = metrics::histogram!(name, owned(&combo));
    }
}

/// Describes a gauge and sets it to zero (for gauges a loop keeps current).
pub fn register_gauge(name: &'static str, help: &'static str) {
    metrics::describe_gauge!(name, help);
    metrics::gauge!(name).set(0.0);
}

/// `GET /metrics` handler: Prometheus text exposition format.
#[cfg(feature = "http")]
pub async fn render_metrics() -> impl axum::response::IntoResponse {
    let handle = metrics_handle();
    process_metrics().collect();
    handle.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}
