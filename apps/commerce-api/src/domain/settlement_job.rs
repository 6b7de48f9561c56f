//! The daily settlement job: at `SETTLEMENT_CRON` (default 04:00 in the business time zone), and
//! once when the instance starts, every business day that has ended and is not closed yet is
//! settled ([`settlement::settle_through`]). Every instance runs it; closing a day holds the
//! settlement lock and checks the day first, so each day is closed once and the other instances
//! find it closed. A failed run is retried with backoff. Each instance also reports the end of
//! the last closed day (`settlement_closed_through_timestamp_seconds`) every minute, for the
//! alert on a late settlement.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use chrono::{DateTime, NaiveDate, TimeZone as _, Utc};
use commerce_db::Pool;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::domain::settlement::{self, DayClosed};
use crate::infra::outbox::Topics;

/// When and where the settlement job runs.
#[derive(Debug, Clone)]
pub struct SettlementSettings {
    /// Run the job in this instance.
    pub enabled: bool,
    /// 6-field cron (seconds first), in `time_zone`.
    pub cron: String,
    /// The time zone of business days.
    pub time_zone: chrono_tz::Tz,
    /// PostgreSQL parallel workers that may help close a day.
    pub workers: settlement::Workers,
}

/// The business day `now` falls on.
pub fn business_date(now: DateTime<Utc>, time_zone: chrono_tz::Tz) -> NaiveDate {
    now.with_timezone(&time_zone).date_naive()
}

/// The instant business day `day` ends (its next midnight, in `time_zone`).
pub fn day_end(day: NaiveDate, time_zone: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    let next = day.succ_opt()?.and_hms_opt(0, 0, 0)?;
    time_zone
        .from_local_datetime(&next)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// Settles every open business day that ended before `now`.
pub async fn settle_due(
    db: &Pool,
    topics: &Topics,
    settings: &SettlementSettings,
    now: DateTime<Utc>,
) -> crate::domain::Result<Vec<DayClosed>> {
    let today = business_date(now, settings.time_zone);
    let Some(yesterday) = today.pred_opt() else {
        return Ok(Vec::new());
    };
    let mut conn = db.get().await?;
    let closed =
        settlement::settle_through(&mut conn, topics, yesterday, settings.workers, |_, _, _| {})
            .await?;
    report_closed_through(&mut conn, settings.time_zone).await;
    Ok(closed)
}

/// Sets `settlement_closed_through_timestamp_seconds` from the database (left unset before any
/// day is closed).
async fn report_closed_through(
    conn: &mut diesel_async::AsyncPgConnection,
    time_zone: chrono_tz::Tz,
) {
    match settlement::last_closed(conn).await {
        Ok(Some(day)) => {
            if let Some(end) = day_end(day, time_zone) {
                metrics::gauge!("settlement_closed_through_timestamp_seconds")
                    .set(end.timestamp() as f64);
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "could not read the last settled day"),
    }
}

/// One run with retries: 30 s after a failure, doubling up to 30 minutes, ten times.
async fn run_with_retries(db: Pool, topics: Topics, settings: SettlementSettings) {
    let attempt = || async { settle_due(&db, &topics, &settings, Utc::now()).await };
    let outcome = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_secs(30))
                .with_max_delay(Duration::from_secs(1800))
                .with_max_times(10)
                .with_jitter(),
        )
        .notify(|e, wait| {
            tracing::warn!(error = %e, retry_in = ?wait, "settlement run failed; retrying");
        })
        .await;
    if let Err(e) = outcome {
        tracing::error!(error = %e, "settlement run failed; the next scheduled run retries it");
    }
}

/// The job, until `stop` turns.
pub async fn run(
    db: Pool,
    topics: Topics,
    settings: SettlementSettings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let scheduler = async {
        let scheduler = JobScheduler::new().await?;
        let (d, t, s) = (db.clone(), topics.clone(), settings.clone());
        scheduler
            .add(Job::new_async_tz(
                settings.cron.as_str(),
                settings.time_zone,
                move |_, _| {
                    let (db, topics, settings) = (d.clone(), t.clone(), s.clone());
                    Box::pin(run_with_retries(db, topics, settings))
                },
            )?)
            .await?;
        scheduler.start().await?;
        anyhow::Ok(scheduler)
    }
    .await;
    let mut scheduler = match scheduler {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the settlement job could not be scheduled");
            None
        }
    };
    // A day that ended while no instance ran is settled at start, not a day late.
    tokio::spawn(run_with_retries(
        db.clone(),
        topics.clone(),
        settings.clone(),
    ));
    let mut ticks = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if let Ok(mut conn) = db.get().await {
                    report_closed_through(&mut conn, settings.time_zone).await;
                }
            }
            _ = async { drop(stop.wait_for(|s| *s).await) } => break,
        }
    }
    if let Some(s) = scheduler.as_mut()
        && let Err(e) = s.shutdown().await
    {
        tracing::debug!(error = %e, "stopping the settlement scheduler");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_days_end_at_midnight_in_their_time_zone() {
        let seoul = chrono_tz::Asia::Seoul;
        let day = NaiveDate::from_ymd_opt(2026, 12, 4).unwrap();
        // Midnight after 4 December in Seoul is 15:00 UTC on the 4th.
        assert_eq!(
            day_end(day, seoul).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 4, 15, 0, 0).unwrap()
        );
        let at = Utc.with_ymd_and_hms(2026, 12, 4, 15, 0, 0).unwrap();
        assert_eq!(business_date(at, seoul), day.succ_opt().unwrap());
        assert_eq!(
            business_date(at - chrono::Duration::microseconds(1), seoul),
            day
        );
    }
}
