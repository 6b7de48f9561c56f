//! The payment gateway's client: per-call timeouts, bounded retries with exponential backoff and
//! jitter, and a circuit breaker.
//!
//! - Every call carries the merchant's API key (`X-API-KEY`) and has a connect timeout and a
//!   total timeout.
//! - A 5xx, a timeout or a broken connection is retried (up to `max_attempts` in all), with
//!   exponential backoff and jitter ([`backon`]). A 4xx is final.
//! - Every payment request carries the order's `Idempotency-Key` ([`PaymentRequest::key_for`]), so
//!   the gateway charges an order once however often it is asked. Besides, a retry after an
//!   *unknown* outcome (a timeout or a connection lost after the request was sent) first looks the
//!   order up at the gateway and adopts the payment it finds.
//! - A refund carries its transaction's key ([`RefundRequest::key_for`]): the gateway refunds a
//!   charge once however often, from however many instances, it is asked.
//! - A 409 (the gateway still processing a request with the same key) is retried too, and is an
//!   answer, not a failure: the breaker counts timeouts, broken connections, 408, 429 and 5xx.
//! - The breaker ([`failsafe`]) sees each call's final outcome after retries: the gateway's
//!   everyday transient failures are absorbed by retrying, and the breaker opens when retrying
//!   stops helping (by default when at least half of the last 20 calls failed, once 10 were
//!   made), then lets calls through again after a wait (half-open); a success closes it, a
//!   failure opens it again. While it is open,
//!   calls fail at once with [`GatewayError::BreakerOpen`] and nothing waits on the gateway.
//!
//! Metrics: `payment_gateway_calls_total{operation,outcome}`,
//! `payment_gateway_call_duration_seconds{operation}`, `payment_gateway_retries_total{operation}`,
//! `payment_gateway_circuit_state` (0 closed, 1 open, 2 half-open) and
//! `payment_gateway_rejected_total` (calls refused by the open breaker).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use tracing::Instrument as _;

mod breaker;
mod wire;

use breaker::Breaker;
use wire::{Accepted, OrderTransactions};
pub use wire::{ConfirmedRefund, PaymentRequest, RefundRequest, Transaction, TxStatus};

/// How the client talks to the gateway.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub base_url: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Attempts per call, the first included.
    pub max_attempts: usize,
    pub retry_base_delay: Duration,
    /// The breaker opens when the share of failed calls among the last `breaker_window_calls`
    /// reaches this ...
    pub breaker_failure_rate: f64,
    /// ... once at least this many calls were made.
    pub breaker_min_calls: usize,
    pub breaker_window_calls: usize,
    /// How long the breaker stays open before letting calls through again.
    pub breaker_open_for: Duration,
    /// The merchant key sent with every call (`X-API-KEY`). Never printed: `Debug` hides it.
    pub api_key: ApiKey,
}

/// The merchant's API key at the gateway.
#[derive(Clone)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl GatewaySettings {
    /// The longest a lookup can take: every attempt timing out, plus the backoff between them
    /// (jitter at most doubles a delay).
    pub fn worst_case_lookup(&self) -> Duration {
        let attempts = self.max_attempts.max(1) as u32;
        self.timeout * attempts + self.worst_case_backoff()
    }

    /// The longest a payment request can take: every attempt timing out, and each retry after
    /// the first looking the order up before requesting again.
    pub fn worst_case_request(&self) -> Duration {
        let attempts = self.max_attempts.max(1) as u32;
        self.timeout * (2 * attempts - 1) + self.worst_case_backoff()
    }

    fn worst_case_backoff(&self) -> Duration {
        let mut backoff = Duration::ZERO;
        let mut delay = self.retry_base_delay;
        for _ in 1..self.max_attempts.max(1) {
            backoff += delay.min(self.retry_base_delay * 16) * 2;
            delay *= 2;
        }
        backoff
    }
}

/// Why a gateway call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// The breaker is open: the gateway was not called.
    #[error("the payment gateway's circuit breaker is open")]
    BreakerOpen,
    /// 5xx, timeout or connection failure, after every attempt.
    #[error("the payment gateway is unavailable: {detail}")]
    Unavailable {
        detail: String,
        /// The request may have reached the gateway (timeout or connection lost after sending).
        unknown_outcome: bool,
    },
    /// HTTP 409: the gateway holds the request (a request with the same idempotency key is still
    /// being processed, or the payment to refund is not settled yet) and asks to come back.
    /// Retried; the gateway is answering, so the breaker does not count it as a failure.
    #[error("the payment gateway asks to retry later: {detail}")]
    Busy { detail: String },
    /// The gateway refused the request (a 4xx other than 404, 408, 409 and 429): final, retrying
    /// cannot help.
    #[error("the payment gateway refused the request: {0}")]
    Refused(String),
}

impl GatewayError {
    fn retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::Unavailable { .. } | GatewayError::Busy { .. }
        )
    }

    /// Whether the call's outcome says the gateway is unwell (what the breaker counts).
    fn gateway_unwell(&self) -> bool {
        matches!(self, GatewayError::Unavailable { .. })
    }

    fn outcome(&self) -> &'static str {
        match self {
            GatewayError::BreakerOpen => "rejected",
            GatewayError::Unavailable { .. } => "unavailable",
            GatewayError::Busy { .. } => "busy",
            GatewayError::Refused(_) => "refused",
        }
    }
}

/// The gateway client. Cheap to share (`Arc`); one per process.
pub struct Gateway {
    http: reqwest::Client,
    base: reqwest::Url,
    callback_url: String,
    settings: GatewaySettings,
    breaker: Breaker,
    state: Arc<AtomicU8>,
}

impl Gateway {
    pub fn new(settings: GatewaySettings, callback_url: String) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(&settings.base_url)?;
        anyhow::ensure!(!base.cannot_be_a_base(), "the gateway URL must be http(s)");
        let mut key = reqwest::header::HeaderValue::from_str(&settings.api_key.0)
            .map_err(|_| anyhow::anyhow!("PG_API_KEY must be visible ASCII"))?;
        key.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .pool_max_idle_per_host(64)
            .default_headers(reqwest::header::HeaderMap::from_iter([(
                reqwest::header::HeaderName::from_static("x-api-key"),
                key,
            )]))
            .build()?;
        let (breaker, state) = breaker::new(&settings);
        Ok(Self {
            http,
            base,
            callback_url,
            settings,
            breaker,
            state,
        })
    }

    /// `closed`, `open` or `half-open`.
    pub fn breaker_state(&self) -> &'static str {
        breaker::state_name(self.state.load(Ordering::Relaxed))
    }

    /// Runs one logical call through the breaker and the retry policy.
    async fn call<T, F, Fut>(&self, operation: &'static str, attempt: F) -> Result<T, GatewayError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, GatewayError>>,
    {
        let span = tracing::info_span!(
            "payment_gateway",
            otel.name = format!("payment gateway {operation}"),
            otel.kind = "client",
            operation,
            outcome = tracing::field::Empty,
        );
        async {
            if !self.breaker.is_call_permitted() {
                metrics::counter!("payment_gateway_calls_total", "operation" => operation, "outcome" => "rejected")
                    .increment(1);
                return Err(GatewayError::BreakerOpen);
            }
            let started = Instant::now();
            let policy = ExponentialBuilder::default()
                .with_min_delay(self.settings.retry_base_delay)
                .with_max_delay(self.settings.retry_base_delay * 16)
                .with_max_times(self.settings.max_attempts.saturating_sub(1))
                .with_jitter();
            let result = attempt
                .retry(policy)
                .when(GatewayError::retryable)
                .notify(|e, delay| {
                    metrics::counter!("payment_gateway_retries_total", "operation" => operation)
                        .increment(1);
                    tracing::debug!(operation, error = %e, ?delay, "retrying the payment gateway");
                })
                .await;
            match &result {
                Err(e) if e.gateway_unwell() => self.breaker.on_error(),
                _ => self.breaker.on_success(),
            }
            metrics::histogram!("payment_gateway_call_duration_seconds", "operation" => operation)
                .record(started.elapsed().as_secs_f64());
            let outcome = result.as_ref().map_or_else(GatewayError::outcome, |_| "ok");
            metrics::counter!("payment_gateway_calls_total", "operation" => operation, "outcome" => outcome)
                .increment(1);
            tracing::Span::current().record("outcome", outcome);
            result
        }
        .instrument(span)
        .await
    }

    /// Requests a payment. Retries never create a second gateway payment for an attempt whose
    /// outcome is unknown: the order is looked up first, and a payment found there is adopted.
    pub async fn request_payment(
        &self,
        req: &PaymentRequest<'_>,
    ) -> Result<Transaction, GatewayError> {
        let unknown = AtomicBool::new(false);
        let body = serde_json::json!({
            "order_id": req.order_id.to_string(),
            "card_type": req.card_type,
            "card_no": req.card_no,
            "amount": req.amount,
            "callback_url": self.callback_url,
        });
        self.call("request", || async {
            if unknown.load(Ordering::Relaxed) {
                // A refused lookup (a proxy's 403 or 429, say) says nothing about the payment.
                let found = self
                    .fetch_by_order(req.user_id, req.order_id)
                    .await
                    .map_err(|e| match e {
                        GatewayError::Refused(detail) => GatewayError::Unavailable {
                            detail: format!("lookup refused: {detail}"),
                            unknown_outcome: true,
                        },
                        other => other,
                    })?;
                if let Some(found) = found.into_iter().next() {
                    return Ok(found);
                }
            }
            let sent = self
                .http
                .post(endpoint(&self.base, &[]))
                .header("X-USER-ID", req.user_id.to_string())
                .header("Idempotency-Key", &req.idempotency_key)
                .headers(trace_headers())
                .json(&body)
                .send()
                .await;
            let result = match parse::<Accepted>(sent).await {
                Ok(Some(a)) => Ok(Transaction {
                    transaction_key: a.transaction_key,
                    order_id: req.order_id.to_string(),
                    status: a.status,
                    reason: a.reason,
                    amount: Some(req.amount),
                    refund_key: None,
                }),
                // A 404 from the payment endpoint is a misrouted or misconfigured gateway, not a
                // decline: leave the payment for reconciliation rather than fail the order.
                Ok(None) => Err(GatewayError::Unavailable {
                    detail: "payment endpoint not found (HTTP 404)".into(),
                    unknown_outcome: false,
                }),
                Err(e) => Err(e),
            };
            if let Err(
                GatewayError::Unavailable {
                    unknown_outcome: true,
                    ..
                }
                | GatewayError::Busy { .. },
            ) = &result
            {
                unknown.store(true, Ordering::Relaxed);
            }
            // Once an attempt's outcome is unknown, a refusal of a later one does not mean the
            // payment failed: the first may have been recorded and may still be charged.
            if unknown.load(Ordering::Relaxed)
                && let Err(GatewayError::Refused(detail)) = &result
            {
                return Err(GatewayError::Unavailable {
                    detail: format!("refused after an attempt with an unknown outcome: {detail}"),
                    unknown_outcome: true,
                });
            }
            result
        })
        .await
    }

    /// Refunds a transaction in full. Retried (with the same key) like any call: the gateway
    /// answers a repeat with the original refund.
    pub async fn refund(&self, req: &RefundRequest<'_>) -> Result<ConfirmedRefund, GatewayError> {
        let key = RefundRequest::key_for(req.transaction_key, req.partner_order_id);
        let body = serde_json::json!({ "amount": req.amount, "reason": req.reason });
        self.call("refund", || async {
            let sent = self
                .http
                .post(endpoint(&self.base, &[req.transaction_key, "refunds"]))
                .header("X-USER-ID", req.user_id.to_string())
                .header("Idempotency-Key", &key)
                .headers(trace_headers())
                .json(&body)
                .send()
                .await;
            parse::<ConfirmedRefund>(sent)
                .await?
                .ok_or_else(|| GatewayError::Refused("HTTP 404 PAYMENT_NOT_FOUND".into()))
        })
        .await
    }

    /// Every payment the gateway has for an order, oldest first.
    pub async fn by_order(
        &self,
        user_id: i64,
        order_id: i64,
    ) -> Result<Vec<Transaction>, GatewayError> {
        self.call("list", || self.fetch_by_order(user_id, order_id))
            .await
    }

    async fn fetch_by_order(
        &self,
        user_id: i64,
        order_id: i64,
    ) -> Result<Vec<Transaction>, GatewayError> {
        let sent = self
            .http
            .get(endpoint(&self.base, &[]))
            .query(&[("order_id", order_id.to_string())])
            .header("X-USER-ID", user_id.to_string())
            .headers(trace_headers())
            .send()
            .await;
        Ok(parse::<OrderTransactions>(sent)
            .await?
            .map(|o| o.transactions)
            .unwrap_or_default())
    }
}

/// The current span's trace context, for a request to the gateway (which continues the trace
/// and hands it on to the payment's callback).
fn trace_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    commerce_telemetry::traces::inject(&mut headers);
    headers
}

/// `{base}/api/v1/payments[/{segment}...]`, each segment percent-encoded by the URL crate.
fn endpoint(base: &reqwest::Url, segments: &[&str]) -> reqwest::Url {
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("checked in Gateway::new: a base URL")
        .pop_if_empty()
        .extend(["api", "v1", "payments"])
        .extend(segments);
    url
}

/// What an unsuccessful HTTP status means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 404: no such payment.
    NotFound,
    /// 409: the gateway holds the request and asks to come back ([`GatewayError::Busy`]).
    Busy,
    /// Worth retrying; `unknown_outcome` when the request may have been acted on.
    Retry { unknown_outcome: bool },
    /// An explicit refusal: final.
    Refused,
}

/// 408 (the gateway gave up reading), 429 (rate limited) and 500/503 say the request was not
/// acted on, and so do 401 and 403 (the gateway did not accept this merchant's key: a
/// configuration fault, not the customer's, so the payment waits for reconciliation rather than
/// failing); other 5xx (a proxy's 502 or 504 after forwarding it) say it may have been; 409 is
/// the gateway still at work on it. Every other 4xx is an explicit refusal.
fn classify(status: reqwest::StatusCode) -> Answer {
    use reqwest::StatusCode as S;
    match status {
        S::NOT_FOUND => Answer::NotFound,
        S::CONFLICT => Answer::Busy,
        S::REQUEST_TIMEOUT
        | S::TOO_MANY_REQUESTS
        | S::INTERNAL_SERVER_ERROR
        | S::SERVICE_UNAVAILABLE
        | S::UNAUTHORIZED
        | S::FORBIDDEN => Answer::Retry {
            unknown_outcome: false,
        },
        s if s.is_server_error() => Answer::Retry {
            unknown_outcome: true,
        },
        _ => Answer::Refused,
    }
}

/// Reads a response: `Ok(None)` for 404, `Busy` for 409, `Unavailable` for the other retryable
/// statuses ([`classify`]) and transport failures, `Refused` for other 4xx.
async fn parse<T: serde::de::DeserializeOwned>(
    sent: reqwest::Result<reqwest::Response>,
) -> Result<Option<T>, GatewayError> {
    let response = sent.map_err(|e| GatewayError::Unavailable {
        // A refused connection never carried the request; anything later may have.
        unknown_outcome: !e.is_connect(),
        detail: if e.is_timeout() {
            "timed out".into()
        } else {
            "connection failed".into()
        },
    })?;
    let status = response.status();
    if !status.is_success() {
        match classify(status) {
            Answer::NotFound => return Ok(None),
            Answer::Busy => {
                return Err(GatewayError::Busy {
                    detail: format!("HTTP {status}"),
                });
            }
            Answer::Retry { unknown_outcome } => {
                return Err(GatewayError::Unavailable {
                    detail: format!("HTTP {status}"),
                    unknown_outcome,
                });
            }
            Answer::Refused => {}
        }
        // Only the status and the problem's code: a gateway's body may echo the request, and
        // with it the card number.
        let code = response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|b| b.get("code")?.as_str().map(str::to_owned))
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .unwrap_or_default();
        return Err(GatewayError::Refused(format!("HTTP {status} {code}")));
    }
    response
        .json::<T>()
        .await
        .map(Some)
        .map_err(|e| GatewayError::Unavailable {
            detail: format!("unreadable response: {e}"),
            unknown_outcome: true,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_cases_count_every_attempt_its_lookups_and_backoff() {
        let settings = GatewaySettings {
            base_url: String::new(),
            connect_timeout: Duration::from_millis(300),
            timeout: Duration::from_secs(1),
            max_attempts: 3,
            retry_base_delay: Duration::from_millis(100),
            breaker_failure_rate: 0.5,
            breaker_min_calls: 10,
            breaker_window_calls: 20,
            breaker_open_for: Duration::from_secs(10),
            api_key: ApiKey("k".repeat(16)),
        };
        // 3 attempts; backoff at most 2 × (100 + 200) ms.
        assert_eq!(settings.worst_case_lookup(), Duration::from_millis(3600));
        // And two lookups between them.
        assert_eq!(settings.worst_case_request(), Duration::from_millis(5600));
    }

    #[test]
    fn only_explicit_refusals_are_final() {
        use reqwest::StatusCode as S;
        let not_acted_on = Answer::Retry {
            unknown_outcome: false,
        };
        for status in [
            S::REQUEST_TIMEOUT,
            S::TOO_MANY_REQUESTS,
            S::INTERNAL_SERVER_ERROR,
            S::SERVICE_UNAVAILABLE,
            S::UNAUTHORIZED,
            S::FORBIDDEN,
        ] {
            assert_eq!(classify(status), not_acted_on, "{status}");
        }
        for status in [S::BAD_GATEWAY, S::GATEWAY_TIMEOUT] {
            let maybe_acted_on = Answer::Retry {
                unknown_outcome: true,
            };
            assert_eq!(classify(status), maybe_acted_on, "{status}");
        }
        assert_eq!(classify(S::CONFLICT), Answer::Busy);
        assert_eq!(classify(S::NOT_FOUND), Answer::NotFound);
        for status in [S::BAD_REQUEST, S::UNPROCESSABLE_ENTITY, S::PAYMENT_REQUIRED] {
            assert_eq!(classify(status), Answer::Refused, "{status}");
        }
        // A gateway at work on a request is answering: only unwell answers count for the breaker.
        let busy = GatewayError::Busy {
            detail: "HTTP 409".into(),
        };
        assert!(busy.retryable() && !busy.gateway_unwell());
        let down = GatewayError::Unavailable {
            detail: "timed out".into(),
            unknown_outcome: true,
        };
        assert!(down.retryable() && down.gateway_unwell());
        assert!(!GatewayError::Refused("HTTP 422".into()).retryable());
    }

    #[test]
    fn transaction_keys_are_encoded_for_the_path() {
        let base = reqwest::Url::parse("http://127.0.0.1:8082/").unwrap();
        assert_eq!(
            endpoint(&base, &["20261121:TR:9577c5"]).as_str(),
            "http://127.0.0.1:8082/api/v1/payments/20261121:TR:9577c5"
        );
        assert_eq!(
            endpoint(&base, &["a/b?c"]).as_str(),
            "http://127.0.0.1:8082/api/v1/payments/a%2Fb%3Fc"
        );
    }
}
