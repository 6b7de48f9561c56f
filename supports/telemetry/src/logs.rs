//! The process's tracing subscriber: log lines on stdout, spans to OpenTelemetry.
//!
//! - `RUST_LOG` filters the log lines (default `info`); `LOG_FORMAT=json` switches to JSON lines.
//!   No colour codes, so a log file or a collector gets plain text. Lines are written by one
//!   thread ([`crate::output`]), to stdout or a capped `LOG_FILE`.
//! - Every line logged inside a traced span carries the span's trace id (`trace_id=` at the end
//!   of a text line, a `trace_id` field in JSON), so a log line leads to its trace and back.
//! - Spans of this workspace's crates go to OpenTelemetry. They are exported over OTLP/HTTP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and not
//!   recorded when it is not: trace ids are still minted and propagated (unsampled, unless the
//!   caller's trace is sampled), so logs and events stay correlated. With an exporter,
//!   `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` choose the sampler (default:
//!   parent-based, always on).

use std::cell::RefCell;
use std::fmt;
use std::sync::OnceLock;

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, format};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber for app `service` (the `service.name` of its spans). Safe to
/// call more than once: later calls are no-ops.
pub fn init_tracing(service: &'static str) {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    let recording = otlp_configured();
    if recording {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            // Logged once the subscriber is up, below.
            Err(e) => {
                install(service, builder.build(), false);
                tracing::error!(error = %e, "the OTLP span exporter could not be built; spans are not exported");
                return;
            }
        }
    } else {
        // Nothing would receive the spans: mint and propagate ids (logs and events stay
        // correlated) without recording spans that would only be dropped. A caller's sampled
        // trace is still followed, so its flags travel on unchanged.
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
    }
    install(service, builder.build(), recording);
}

/// Installs the subscriber with spans kept in memory, for tests that assert on spans. Returns
/// `None` if a subscriber was already installed in this process (then nothing is captured).
#[cfg(feature = "testing")]
pub fn capture_spans(
    service: &'static str,
) -> Option<opentelemetry_sdk::trace::InMemorySpanExporter> {
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build())
        .with_simple_exporter(exporter.clone())
        .build();
    install(service, provider, true).then_some(exporter)
}

/// Flushes spans not yet exported. Call once the app has stopped.
pub fn shutdown_tracing() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
    crate::output::output().flush(std::time::Duration::from_secs(2));
}

/// `LOG_FORMAT=json`: every line, access lines included, is a JSON object.
pub(crate) fn json_lines() -> bool {
    std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"))
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

fn install(service: &'static str, provider: SdkTracerProvider, recording: bool) -> bool {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = json_lines();
    let tracer = provider.tracer(service);
    // Spans of this workspace only (libraries' spans would add cost and no story), and only
    // warnings and errors as span events: the log lines carry the rest.
    let traced = filter_fn(|meta| {
        let ours =
            meta.target().starts_with("commerce_") || meta.target().starts_with("pg_simulator");
        if meta.is_span() {
            ours && *meta.level() <= tracing::Level::INFO
        } else {
            *meta.level() <= tracing::Level::WARN
        }
    });
    // OTEL_SDK_DISABLED=true (the OpenTelemetry standard switch): no spans and no trace ids.
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let otel = (!disabled).then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(traced)
    });
    let lines = if json {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(crate::output::Lines)
            .event_format(WithTraceId {
                inner: format().json().with_current_span(false),
                json: true,
            })
            .fmt_fields(format::JsonFields::new())
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(crate::output::Lines)
            .event_format(WithTraceId {
                inner: format().with_ansi(false),
                json: false,
            })
            .with_filter(filter)
            .boxed()
    };
    let mode = if disabled {
        crate::traces::Mode::Off
    } else if recording {
        crate::traces::Mode::Spans
    } else {
        crate::traces::Mode::Ids
    };
    let installed = Registry::default()
        .with(otel)
        .with(lines)
        .try_init()
        .is_ok();
    if installed {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
        let _ = PROVIDER.set(provider);
        crate::traces::set_mode(mode);
    }
    installed
}

/// An event format that adds the trace id of the span the event is logged in.
struct WithTraceId<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The request's trace when it has no span, else the innermost span of the event's
        // scope that OpenTelemetry knows.
        let trace_id = match crate::traces::RequestTrace::current() {
            Some(t) => Some(t.trace_id()),
            None => {
                let mut scope = ctx.event_scope();
                tracing::dispatcher::get_default(|dispatch| {
                    scope.take()?.into_iter().find_map(|span| {
                        let cx = tracing_opentelemetry::get_otel_context(&span.id(), dispatch)?;
                        let sc = cx.span().span_context().clone();
                        sc.is_valid().then(|| sc.trace_id().to_string())
                    })
                })
            }
        };
        let Some(trace_id) = trace_id else {
            return self.inner.format_event(ctx, writer, event);
        };
        thread_local! {
            static LINE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            self.inner.format_event(ctx, Writer::new(line), event)?;
            let body = line.trim_end_matches('\n');
            if self.json {
                match body.strip_prefix('{') {
                    Some(rest) => writeln!(writer, "{{\"trace_id\":\"{trace_id}\",{rest}"),
                    None => writeln!(writer, "{body}"),
                }
            } else {
                writeln!(writer, "{body} trace_id={trace_id}")
            }
        })
    }
}
