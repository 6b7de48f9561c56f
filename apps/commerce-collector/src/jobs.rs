//! Scheduled jobs that run once per period across all collector instances: the instance whose
//! insert into `scheduled_job_runs` succeeds runs it (in the spirit of ShedLock), and records
//! when it finished.

use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Claims `(job, period_key)` for this instance; false when another instance ran it.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    job: &str,
    period_key: &str,
) -> anyhow::Result<bool> {
    let n = diesel::sql_query(
        "INSERT INTO scheduled_job_runs (job, period_key, instance) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind::<Text, _>(job)
    .bind::<Text, _>(period_key)
    .bind::<Text, _>(instance_name())
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
    job: &str,
    period_key: &str,
) -> anyhow::Result<()> {
    diesel::sql_query(
        "UPDATE scheduled_job_runs SET finished_at = now() WHERE job = $1 AND period_key = $2",
    )
    .bind::<Text, _>(job)
    .bind::<Text, _>(period_key)
    .execute(conn)
    .await?;
    Ok(())
}
