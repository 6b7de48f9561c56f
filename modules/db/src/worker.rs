//! One runner for leased background work: rows claimed from a table with a lease (`FOR UPDATE
//! SKIP LOCKED`, the lease pushed forward in the claiming statement), processed concurrently,
//! each outcome counted under its typed label, until shutdown.
//!
//! Every instance runs the same loop and they share the work: a row is claimed by one instance
//! per lease, and a crashed instance's lease runs out, so another instance takes the row over.
//! The work itself says how to claim, how to process one row and what its outcomes are
//! ([`LeasedWork`]); the runner owns the loop: passes back to back while batches come full,
//! the interval otherwise, a doubling backoff after failed passes, a trace per item, the
//! outcome counter and a prompt stop.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::watch;
use tracing::Instrument as _;

/// A closed set of outcomes, each with its metric label.
pub trait Outcome: Copy + Send + 'static {
    /// The label under which the outcome is counted.
    fn as_str(self) -> &'static str;
    /// The outcome of an item whose processing returned an error.
    fn error() -> Self;
}

/// A kind of leased work.
pub trait LeasedWork: Send + Sync + 'static {
    /// One claimed row.
    type Item: Send;
    type Outcome: Outcome;
    type Error: Display + Send;

    /// Says what the work is in logs ("payment reconciliation").
    const NAME: &'static str;
    /// The counter of outcomes (`<METRIC>{result}`).
    const METRIC: &'static str;

    /// Claims up to `limit` due rows, each with a lease that keeps other instances off it. Also
    /// the moment to refresh the work's backlog gauges.
    fn claim(
        &self,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Self::Item>, Self::Error>> + Send;

    /// Processes one claimed row.
    fn process(
        &self,
        item: Self::Item,
    ) -> impl Future<Output = Result<Self::Outcome, Self::Error>> + Send;

    /// The span each item is processed in: a trace of its own, so its calls and log lines share
    /// one trace id.
    fn span(&self, item: &Self::Item) -> tracing::Span;
}

/// How often and how much a runner claims.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// The pause after a pass that found less than a full batch.
    pub interval: Duration,
    /// Rows claimed per pass.
    pub batch: i64,
    /// Rows processed at once within a pass.
    pub concurrency: usize,
}

/// The longest pause after failed passes.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs passes of `work` until `stop` turns true: again at once after a full batch, after the
/// interval otherwise, and after a pause that doubles per failed pass in a row (at least a
/// second, at most [`MAX_BACKOFF`]).
pub async fn run<W: LeasedWork>(work: Arc<W>, schedule: Schedule, mut stop: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        let pause = match pass(work.as_ref(), schedule).await {
            Ok(n) => {
                failures = 0;
                if n as i64 >= schedule.batch {
                    Duration::ZERO
                } else {
                    schedule.interval
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let pause = backoff(schedule.interval, failures);
                tracing::warn!(error = %e, failures, retry_in = ?pause, "{} pass failed", W::NAME);
                pause
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass: claims up to a batch and processes it. Returns how many rows were claimed.
pub async fn pass<W: LeasedWork>(work: &W, schedule: Schedule) -> Result<usize, W::Error> {
    let due = work.claim(schedule.batch).await?;
    let n = due.len();
    futures::stream::iter(due)
        .for_each_concurrent(schedule.concurrency, |item| {
            let span = work.span(&item);
            async move {
                let outcome = match work.process(item).await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        tracing::warn!(error = %e, "{}: an item failed", W::NAME);
                        W::Outcome::error()
                    }
                };
                metrics::counter!(W::METRIC, "result" => outcome.as_str()).increment(1);
            }
            .instrument(span)
        })
        .await;
    Ok(n)
}

/// The pause after `failures` failed passes in a row: the interval (at least a second) doubled
/// per further failure, at most [`MAX_BACKOFF`].
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    doubling(interval.max(Duration::from_secs(1)), failures, MAX_BACKOFF)
}

/// The wait before try `tries + 1`: `base` after the first, doubled per try after that, at
/// most `ceiling` (the first try's wait for `tries` 0 or 1).
pub fn doubling(base: Duration, tries: u32, ceiling: Duration) -> Duration {
    let doublings = tries.saturating_sub(1).min(20);
    base.saturating_mul(1 << doublings).min(ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn failed_passes_back_off_doubling_to_a_ceiling() {
        let i = Duration::from_millis(100);
        assert_eq!(backoff(i, 1), Duration::from_secs(1));
        assert_eq!(backoff(i, 2), Duration::from_secs(2));
        assert_eq!(backoff(i, 4), Duration::from_secs(8));
        assert_eq!(backoff(i, 100), MAX_BACKOFF);
        assert_eq!(backoff(Duration::from_secs(5), 1), Duration::from_secs(5));
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Done {
        Ok,
        Failed,
    }

    impl Outcome for Done {
        fn as_str(self) -> &'static str {
            match self {
                Done::Ok => "ok",
                Done::Failed => "error",
            }
        }
        fn error() -> Self {
            Done::Failed
        }
    }

    /// A queue of numbers; odd ones fail.
    struct Queue {
        left: Mutex<Vec<u32>>,
        processed: AtomicUsize,
    }

    impl LeasedWork for Queue {
        type Item = u32;
        type Outcome = Done;
        type Error = String;
        const NAME: &'static str = "test queue";
        const METRIC: &'static str = "test_queue_total";

        async fn claim(&self, limit: i64) -> Result<Vec<u32>, String> {
            let mut left = self.left.lock().unwrap();
            let n = left.len().min(limit as usize);
            Ok(left.drain(..n).collect())
        }

        async fn process(&self, item: u32) -> Result<Done, String> {
            self.processed.fetch_add(1, Ordering::SeqCst);
            if item % 2 == 1 {
                Err(format!("{item} is odd"))
            } else {
                Ok(Done::Ok)
            }
        }

        fn span(&self, _: &u32) -> tracing::Span {
            tracing::Span::none()
        }
    }

    #[tokio::test]
    async fn full_batches_run_back_to_back_and_stop_ends_the_loop() {
        let queue = Arc::new(Queue {
            left: Mutex::new((0..10).collect()),
            processed: AtomicUsize::new(0),
        });
        let schedule = Schedule {
            // Only back-to-back passes can drain ten rows in three-row batches before the stop.
            interval: Duration::from_secs(3600),
            batch: 3,
            concurrency: 2,
        };
        let (tx, rx) = watch::channel(false);
        let runner = tokio::spawn(run(queue.clone(), schedule, rx));
        tokio::time::timeout(Duration::from_secs(10), async {
            while queue.processed.load(Ordering::SeqCst) < 10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("every row is processed");
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), runner)
            .await
            .expect("the runner stops when told")
            .unwrap();
        assert_eq!(queue.processed.load(Ordering::SeqCst), 10);
        assert!(queue.left.lock().unwrap().is_empty());
    }
}
