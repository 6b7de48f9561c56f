//! The client's circuit breaker ([`failsafe`]): it sees each call's final outcome after retries
//! and opens when at least `breaker_failure_rate` of the last `breaker_window_calls` calls failed
//! (once `breaker_min_calls` were made); its state is the gauge `payment_gateway_circuit_state`
//! (0 closed, 1 open, 2 half-open).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use failsafe::{FailurePolicy, Instrument, StateMachine};

use super::GatewaySettings;

pub(super) type Breaker = StateMachine<FailureRateOverLastCalls, BreakerMetrics>;

/// The breaker's failure policy: a count-based sliding window of the last calls' outcomes.
#[derive(Debug)]
pub(super) struct FailureRateOverLastCalls {
    outcomes: VecDeque<bool>,
    window: usize,
    min_calls: usize,
    max_failure_rate: f64,
    open_for: Duration,
}

impl FailureRateOverLastCalls {
    fn record(&mut self, failed: bool) {
        if self.outcomes.len() == self.window {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back(failed);
    }
}

impl FailurePolicy for FailureRateOverLastCalls {
    fn record_success(&mut self) {
        self.record(false);
    }

    fn mark_dead_on_failure(&mut self) -> Option<Duration> {
        self.record(true);
        let calls = self.outcomes.len();
        let failed = self.outcomes.iter().filter(|f| **f).count();
        (calls >= self.min_calls && failed as f64 >= self.max_failure_rate * calls as f64)
            .then_some(self.open_for)
    }

    fn revived(&mut self) {
        self.outcomes.clear();
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Publishes the breaker's state as a gauge and keeps it readable.
#[derive(Debug, Clone)]
pub(super) struct BreakerMetrics(Arc<AtomicU8>);

impl BreakerMetrics {
    fn set(&self, state: u8) {
        self.0.store(state, Ordering::Relaxed);
        metrics::gauge!("payment_gateway_circuit_state").set(f64::from(state));
    }
}

impl Instrument for BreakerMetrics {
    fn on_call_rejected(&self) {
        metrics::counter!("payment_gateway_rejected_total").increment(1);
    }
    fn on_open(&self) {
        tracing::warn!("payment gateway circuit breaker opened");
        self.set(OPEN);
    }
    fn on_half_open(&self) {
        tracing::info!("payment gateway circuit breaker half-open: letting calls through");
        self.set(HALF_OPEN);
    }
    fn on_closed(&self) {
        tracing::info!("payment gateway circuit breaker closed");
        self.set(CLOSED);
    }
}

/// A closed breaker for `settings`, and its state as the client reads it.
pub(super) fn new(settings: &GatewaySettings) -> (Breaker, Arc<AtomicU8>) {
    let state = Arc::new(AtomicU8::new(CLOSED));
    let policy = FailureRateOverLastCalls {
        outcomes: VecDeque::with_capacity(settings.breaker_window_calls),
        window: settings.breaker_window_calls,
        min_calls: settings
            .breaker_min_calls
            .min(settings.breaker_window_calls),
        max_failure_rate: settings.breaker_failure_rate,
        open_for: settings.breaker_open_for,
    };
    let breaker = failsafe::Config::new()
        .failure_policy(policy)
        .instrument(BreakerMetrics(state.clone()))
        .build();
    metrics::gauge!("payment_gateway_circuit_state").set(f64::from(CLOSED));
    (breaker, state)
}

/// `closed`, `open` or `half-open`.
pub(super) fn state_name(state: u8) -> &'static str {
    match state {
        OPEN => "open",
        HALF_OPEN => "half-open",
        _ => "closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> FailureRateOverLastCalls {
        FailureRateOverLastCalls {
            outcomes: VecDeque::new(),
            window: 10,
            min_calls: 4,
            max_failure_rate: 0.5,
            open_for: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_breaker_opens_at_half_failures_over_the_last_calls() {
        let mut p = policy();
        assert_eq!(p.mark_dead_on_failure(), None, "too few calls");
        p.record_success();
        p.record_success();
        assert_eq!(
            p.mark_dead_on_failure(),
            Some(Duration::from_secs(5)),
            "2 of 4"
        );

        let mut p = policy();
        for _ in 0..10 {
            p.record_success();
        }
        for _ in 0..4 {
            assert_eq!(p.mark_dead_on_failure(), None);
        }
        assert!(p.mark_dead_on_failure().is_some(), "5 of the last 10");
        p.revived();
        assert_eq!(p.mark_dead_on_failure(), None, "history cleared on closing");
    }
}
