//! The simulator's dials and its dice.
//!
//! Random decisions come from two generators: one for what a request sees (latency, failure,
//! settlement delay, transaction key), one for settlements (outcome, dropped callback), so
//! settlements running in the background do not shift the requests' draws. With a fixed seed
//! both sequences are fixed: a test that sends requests one after another sees the same answers
//! on every run, and payments settled in the same order get the same outcomes. The dials can be
//! turned while the simulator runs ([`Dice::set`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the simulated gateway behaves. Rates are shares between 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behaviour {
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Extra delay *after* an accepted payment is recorded, before the answer: a client that
    /// times out meanwhile does not learn of a payment the gateway has.
    pub response_delay_ms: u64,
    /// Delay between deciding to accept a payment and recording it. Every request is processed
    /// to the end, as a real gateway does, even when the client has hung up: with a delay longer
    /// than the client's timeout, the payment appears after the client gave up on it.
    pub record_delay_ms: u64,
    /// Share of payment requests answered with HTTP 500 (and not recorded).
    pub request_failure_rate: f64,
    /// Share of refund requests answered with HTTP 500 (and not recorded). Refunds take the same
    /// latency, record delay and response delay as payments.
    pub refund_failure_rate: f64,
    /// The HTTP status of those failures (500 by default; 408, 409, 429 or any 5xx model other
    /// gateways and the proxies in front of them).
    pub failure_status: u16,
    pub settle_min_ms: u64,
    pub settle_max_ms: u64,
    /// Share of settlements that succeed.
    pub success_rate: f64,
    /// Share of settlements failed with `limit exceeded`; the remainder fail with `invalid card`.
    pub limit_exceeded_rate: f64,
    /// Share of callbacks deliberately never sent.
    pub callback_drop_rate: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            latency_min_ms: 100,
            latency_max_ms: 500,
            response_delay_ms: 0,
            record_delay_ms: 0,
            request_failure_rate: 0.4,
            refund_failure_rate: 0.2,
            failure_status: 500,
            settle_min_ms: 1000,
            settle_max_ms: 5000,
            success_rate: 0.7,
            limit_exceeded_rate: 0.2,
            callback_drop_rate: 0.1,
        }
    }
}

impl Behaviour {
    /// A well-behaved gateway: instant, never failing, settling quickly and always calling back.
    pub fn reliable() -> Self {
        Self {
            latency_min_ms: 0,
            latency_max_ms: 0,
            response_delay_ms: 0,
            record_delay_ms: 0,
            request_failure_rate: 0.0,
            refund_failure_rate: 0.0,
            failure_status: 500,
            settle_min_ms: 50,
            settle_max_ms: 150,
            success_rate: 1.0,
            limit_exceeded_rate: 0.0,
            callback_drop_rate: 0.0,
        }
    }

    /// Refuses contradictory dials.
    pub fn validate(&self) -> Result<(), String> {
        if self.latency_min_ms > self.latency_max_ms {
            return Err("latency minimum exceeds the maximum".into());
        }
        if self.settle_min_ms > self.settle_max_ms {
            return Err("settlement delay minimum exceeds the maximum".into());
        }
        if !(400..=599).contains(&self.failure_status) || self.failure_status == 404 {
            return Err("the failure status must be a 4xx or 5xx other than 404".into());
        }
        if self.success_rate + self.limit_exceeded_rate > 1.0 + f64::EPSILON {
            return Err("success and limit-exceeded rates add up to more than 1".into());
        }
        Ok(())
    }
}

/// What a settlement decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed(&'static str),
}

/// The dials plus a (possibly seeded) random generator, shared by every request and worker.
#[derive(Debug)]
pub struct Dice {
    behaviour: RwLock<Behaviour>,
    requests_rng: Mutex<StdRng>,
    settlements_rng: Mutex<StdRng>,
    requests: AtomicU64,
}

impl Dice {
    pub fn new(behaviour: Behaviour, seed: Option<u64>) -> Self {
        let rng = |offset: u64| match seed {
            Some(seed) => StdRng::seed_from_u64(seed.wrapping_add(offset)),
            None => StdRng::from_os_rng(),
        };
        Self {
            behaviour: RwLock::new(behaviour),
            requests_rng: Mutex::new(rng(0)),
            settlements_rng: Mutex::new(rng(1)),
            requests: AtomicU64::new(0),
        }
    }

    /// The current dials.
    pub fn behaviour(&self) -> Behaviour {
        *self
            .behaviour
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Turns the dials (contradictory settings are refused).
    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) -> Result<(), String> {
        let mut b = self
            .behaviour
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = *b;
        change(&mut next);
        next.validate()?;
        *b = next;
        Ok(())
    }

    /// Counts a payment or refund request as received.
    pub fn receive(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Payment and refund requests received so far (accepted, refused, replayed or not).
    pub fn requests_received(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn with_rng<T>(&self, rng: &Mutex<StdRng>, f: impl FnOnce(&mut StdRng, &Behaviour) -> T) -> T {
        let b = self.behaviour();
        let mut rng = rng.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut rng, &b)
    }

    /// The delay between recording an accepted payment and answering.
    pub fn response_delay(&self) -> Duration {
        Duration::from_millis(self.behaviour().response_delay_ms)
    }

    pub fn record_delay(&self) -> Duration {
        Duration::from_millis(self.behaviour().record_delay_ms)
    }

    /// A payment request's latency and whether it fails.
    pub fn request(&self) -> (Duration, bool) {
        self.with_rng(&self.requests_rng, |rng, b| {
            let latency = rng.random_range(b.latency_min_ms..=b.latency_max_ms);
            let fails = rng.random_bool(b.request_failure_rate);
            (Duration::from_millis(latency), fails)
        })
    }

    /// The status a simulated failure is answered with.
    pub fn failure_status(&self) -> axum::http::StatusCode {
        axum::http::StatusCode::from_u16(self.behaviour().failure_status)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// A refund request's latency and whether it fails.
    pub fn refund(&self) -> (Duration, bool) {
        self.with_rng(&self.requests_rng, |rng, b| {
            let latency = rng.random_range(b.latency_min_ms..=b.latency_max_ms);
            let fails = rng.random_bool(b.refund_failure_rate);
            (Duration::from_millis(latency), fails)
        })
    }

    /// How long until an accepted payment settles.
    pub fn settlement_delay(&self) -> Duration {
        self.with_rng(&self.requests_rng, |rng, b| {
            Duration::from_millis(rng.random_range(b.settle_min_ms..=b.settle_max_ms))
        })
    }

    /// A settlement's outcome.
    pub fn outcome(&self) -> Outcome {
        self.with_rng(&self.settlements_rng, |rng, b| {
            let roll: f64 = rng.random();
            if roll < b.success_rate {
                Outcome::Success
            } else if roll < b.success_rate + b.limit_exceeded_rate {
                Outcome::Failed("limit exceeded")
            } else {
                Outcome::Failed("invalid card")
            }
        })
    }

    /// Whether to drop a callback.
    pub fn drop_callback(&self) -> bool {
        self.with_rng(&self.settlements_rng, |rng, b| {
            rng.random_bool(b.callback_drop_rate)
        })
    }

    /// Six hex digits for a transaction key.
    pub fn key_suffix(&self) -> String {
        self.with_rng(&self.requests_rng, |rng, _| {
            format!("{:06x}", rng.random_range(0..0x100_0000u32))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_seed_draws_the_same_sequence() {
        let draw = || {
            let dice = Dice::new(Behaviour::default(), Some(42));
            (0..50)
                .map(|_| (dice.request(), dice.outcome(), dice.key_suffix()))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(), draw());
    }

    #[test]
    fn default_rates_come_out_near_their_settings() {
        let dice = Dice::new(Behaviour::default(), Some(7));
        let n = 20_000;
        let fails = (0..n).filter(|_| dice.request().1).count() as f64 / n as f64;
        assert!((0.37..0.43).contains(&fails), "{fails}");
        let outcomes: Vec<Outcome> = (0..n).map(|_| dice.outcome()).collect();
        let share = |o: Outcome| outcomes.iter().filter(|x| **x == o).count() as f64 / n as f64;
        assert!((0.67..0.73).contains(&share(Outcome::Success)));
        assert!((0.17..0.23).contains(&share(Outcome::Failed("limit exceeded"))));
        assert!((0.08..0.12).contains(&share(Outcome::Failed("invalid card"))));
    }

    #[test]
    fn contradictory_dials_are_refused() {
        let dice = Dice::new(Behaviour::default(), None);
        assert!(dice.set(|b| b.success_rate = 0.9).is_err());
        assert_eq!(dice.behaviour(), Behaviour::default());
        assert!(dice.set(|b| b.request_failure_rate = 1.0).is_ok());
        assert_eq!(dice.behaviour().request_failure_rate, 1.0);
    }
}
