//! Scheduled jobs that run once per period across all collector instances, and are never lost.
//!
//! A run is a row of `scheduled_job_runs` keyed by `(job, period_key)`. An instance *claims* it
//! with a lease: by inserting the row, or by taking over a row whose run never finished and
//! whose lease has expired (its claimer crashed, or failed and let go). The claimer does the work
//! and records `finished_at`; on failure it records the error and ends its lease at once, so the
//! next firing on any instance retries it. Every job's steps are idempotent, so a run repeated
//! after a crash half-way does no harm.
//!
//! Metrics per job: `collector_job_runs_total{job, result}` (success, failure),
//! `collector_job_duration_seconds{job}`, `collector_job_last_success_timestamp_seconds{job}`.

use std::time::{Duration, Instant};

use commerce_db::Pool;
use diesel::sql_types::{Double, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tracing::Instrument as _;

/// How long a claimed run of a job may take before another instance may take it over: far
/// longer than any run takes (a takeover while the first still runs is harmless, as every step
/// is idempotent, but wasted work).
pub(crate) const LEASE: Duration = Duration::from_secs(600);

commerce_enums::text_enum! {
    sql;
    /// The scheduled jobs (`scheduled_job_runs.job`, the `task` label of their metrics).
    pub enum Job {
        /// Weekly and monthly figures from the daily ones.
        Rollup => "rollup",
        /// Materialised ranks of the rankings whose days changed.
        RankSnapshot => "rank-snapshot",
        /// Yesterday's ranks, and its scores carried into today.
        CloseDay => "close-day",
        /// `event_handled` partitions past the dedupe horizon dropped, the next days' created.
        PruneEventHandled => "prune-event-handled",
    }
}

commerce_enums::text_enum! {
    /// How a claimed run ended (`collector_job_runs_total{result}`).
    pub enum RunResult {
        Success => "success",
        /// Recorded, and the lease ended at once: the next firing on any instance retries it.
        Failure => "failure",
    }
}

/// Registers every job's metrics at zero.
pub fn describe() {
    metrics::describe_counter!(
        "collector_job_runs_total",
        "Scheduled job runs this instance claimed, by task (the job; Prometheus keeps `job` for the scrape target) and result."
    );
    metrics::describe_gauge!(
        "collector_job_last_success_timestamp_seconds",
        "Unix time of this instance's last successful run of each job (0: none yet)."
    );
    for job in Job::ALL {
        let task = job.as_str();
        for result in RunResult::TEXTS {
            metrics::counter!("collector_job_runs_total", "task" => task, "result" => *result)
                .increment(0);
        }
        metrics::gauge!("collector_job_last_success_timestamp_seconds", "task" => task).set(0.0);
    }
}

/// Runs `work` as the run `(job, period_key)` if this instance can claim it; `lease` must
/// exceed the longest the work takes. Returns whether it ran here.
pub async fn run(
    pool: &Pool,
    job: Job,
    period_key: &str,
    lease: Duration,
    work: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<bool> {
    {
        let mut conn = pool.get().await?;
        if !claim(&mut conn, job, period_key, lease).await? {
            return Ok(false);
        }
    }
    let task = job.as_str();
    let started = Instant::now();
    // Each claimed run is a trace of its own; its log lines carry the trace id.
    let result = work
        .instrument(tracing::info_span!(
            "scheduled_job",
            task,
            period = period_key
        ))
        .await;
    metrics::histogram!("collector_job_duration_seconds", "task" => task)
        .record(started.elapsed().as_secs_f64());
    let mut conn = pool.get().await?;
    match result {
        Ok(()) => {
            finish(&mut conn, job, period_key).await?;
            metrics::counter!("collector_job_runs_total", "task" => task, "result" => RunResult::Success.as_str())
                .increment(1);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            metrics::gauge!("collector_job_last_success_timestamp_seconds", "task" => task)
                .set(now.as_secs_f64());
            Ok(true)
        }
        Err(e) => {
            metrics::counter!("collector_job_runs_total", "task" => task, "result" => RunResult::Failure.as_str())
                .increment(1);
            release(&mut conn, job, period_key, &format!("{e:#}")).await?;
            Err(e)
        }
    }
}

/// Claims `(job, period_key)` for `lease`: true when this instance got it.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    job: Job,
    period_key: &str,
    lease: Duration,
) -> anyhow::Result<bool> {
    let n = diesel::sql_query(
        "INSERT INTO scheduled_job_runs AS r (job, period_key, instance, lease_until)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))
         ON CONFLICT (job, period_key) DO UPDATE
            SET instance = EXCLUDED.instance, started_at = now(),
                lease_until = EXCLUDED.lease_until, attempts = r.attempts + 1
          WHERE r.finished_at IS NULL AND r.lease_until < now()",
    )
    .bind::<Text, _>(job)
    .bind::<Text, _>(period_key)
    .bind::<Text, _>(instance_name())
    .bind::<Double, _>(lease.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(n == 1)
}

fn instance_name() -> String {
    format!(
        "{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
        std::process::id()
    )
}

/// Records that this instance's claimed run of `(job, period_key)` finished.
pub async fn finish(
    conn: &mut AsyncPgConnection,
    job: Job,
    period_key: &str,
) -> anyhow::Result<()> {
    diesel::sql_query(
        "UPDATE scheduled_job_runs SET finished_at = now(), last_error = NULL
          WHERE job = $1 AND period_key = $2",
    )
    .bind::<Text, _>(job)
    .bind::<Text, _>(period_key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a failed run and ends its lease, so the next firing (on any instance) retries it.
async fn release(
    conn: &mut AsyncPgConnection,
    job: Job,
    period_key: &str,
    error: &str,
) -> anyhow::Result<()> {
    diesel::sql_query(
        "UPDATE scheduled_job_runs SET lease_until = now(), last_error = left($3, 2000)
          WHERE job = $1 AND period_key = $2 AND finished_at IS NULL",
    )
    .bind::<Text, _>(job)
    .bind::<Text, _>(period_key)
    .bind::<Text, _>(error)
    .execute(conn)
    .await?;
    Ok(())
}
