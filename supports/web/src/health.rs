//! Liveness and readiness.
//!
//! `GET /health/live` answers 200 while the process serves HTTP at all. `GET /health/ready` runs
//! every registered [`ReadinessCheck`] concurrently (each bounded by a timeout) and answers 503
//! naming the dependencies that failed, so a load balancer stops routing to an instance that
//! cannot do its work.
//!
//! A check may be *non-critical*: a dependency the app keeps working without (Redis is only an
//! accelerator for the API; the outbox absorbs a Kafka outage). Its failure is reported in the
//! body (`"status": "DEGRADED"`) but keeps the answer 200: taking every instance out of the load
//! balancer because the cache is down would turn a slowdown into an outage.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

pub use commerce_health::{CheckFuture, ReadinessCheck};

/// A check together with whether its failure makes the app unready.
#[derive(Clone)]
pub struct Dependency {
    check: Arc<dyn ReadinessCheck>,
    critical: bool,
}

impl Dependency {
    /// A dependency without which the app cannot serve: its failure answers 503.
    pub fn critical(check: impl ReadinessCheck) -> Self {
        Self {
            check: Arc::new(check),
            critical: true,
        }
    }

    /// A dependency the app degrades without: reported, but readiness stays 200.
    pub fn optional(check: impl ReadinessCheck) -> Self {
        Self {
            check: Arc::new(check),
            critical: false,
        }
    }
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct CheckResult {
    name: &'static str,
    status: &'static str,
    critical: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    checks: Vec<CheckResult>,
}

/// How often the readiness gauges are refreshed.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Routes `/health/live` and `/health/ready`, and keeps `app_ready` (1 ready, 0 not) and
/// `health_dependency_up{dependency}` current every few seconds while the routes exist, so an
/// alert sees an unready instance whether or not a load balancer is probing it.
pub fn router<S: Clone + Send + Sync + 'static>(checks: Vec<Dependency>) -> Router<S> {
    let checks = Arc::new(checks);
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        metrics::describe_gauge!(
            "app_ready",
            "1 while every critical dependency answers (what /health/ready says), else 0."
        );
        metrics::describe_gauge!(
            "health_dependency_up",
            "1 while a dependency answers its readiness check, else 0, by dependency."
        );
        runtime.spawn(report(Arc::downgrade(&checks)));
    }
    Router::new()
        .route(
            "/health/live",
            get(|| async { axum::Json(serde_json::json!({"status": "UP"})) }),
        )
        .route(
            "/health/ready",
            get(move || {
                let checks = checks.clone();
                async move { ready(&checks).await }
            }),
        )
}

/// A further check route (`path`) over `checks`, answered like `/health/ready` (503 while a
/// critical check fails), for a duty the instance's readiness does not depend on; its checks
/// should also be in the main router (as optional) so their gauges are reported.
pub fn checks_route<S: Clone + Send + Sync + 'static>(
    path: &'static str,
    checks: Vec<Dependency>,
) -> Router<S> {
    let checks = Arc::new(checks);
    Router::new().route(
        path,
        get(move || {
            let checks = checks.clone();
            async move { ready(&checks).await }
        }),
    )
}

/// Refreshes the readiness gauges until the router holding `checks` is gone.
async fn report(checks: std::sync::Weak<Vec<Dependency>>) {
    loop {
        let Some(deps) = checks.upgrade() else {
            return;
        };
        let results = evaluate(&deps, false).await;
        drop(deps);
        for r in &results {
            metrics::gauge!("health_dependency_up", "dependency" => r.name)
                .set(if r.error.is_none() { 1.0 } else { 0.0 });
        }
        let ready = !results.iter().any(|r| r.critical && r.error.is_some());
        metrics::gauge!("app_ready").set(if ready { 1.0 } else { 0.0 });
        tokio::time::sleep(REPORT_EVERY).await;
    }
}

async fn ready(deps: &[Dependency]) -> Response {
    let results = evaluate(deps, true).await;
    let critical_down = results.iter().any(|r| r.critical && r.error.is_some());
    let any_down = results.iter().any(|r| r.error.is_some());
    let (status, label) = match (critical_down, any_down) {
        (true, _) => (StatusCode::SERVICE_UNAVAILABLE, "DOWN"),
        (false, true) => (StatusCode::OK, "DEGRADED"),
        (false, false) => (StatusCode::OK, "UP"),
    };
    let body = Readiness {
        status: label,
        checks: results,
    };
    (status, axum::Json(body)).into_response()
}

/// Runs every check concurrently, each bounded by the timeout.
async fn evaluate(deps: &[Dependency], log: bool) -> Vec<CheckResult> {
    futures::future::join_all(deps.iter().map(|d| async move {
        let c = &d.check;
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, c.check()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
        };
        if log && let Err(reason) = &outcome {
            tracing::warn!(dependency = c.name(), %reason, "readiness check failed");
        }
        CheckResult {
            name: c.name(),
            status: if outcome.is_ok() { "UP" } else { "DOWN" },
            critical: d.critical,
            error: outcome.err(),
        }
    }))
    .await
}
