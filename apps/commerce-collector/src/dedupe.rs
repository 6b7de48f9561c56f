//! The dedupe log, `event_handled`: which events have been applied, whatever the consumer group.
//!
//! The contract:
//! - An event is identified by its `event_id`, a UUIDv7. Its **recorded time** is the timestamp
//!   inside that id (when the API recorded it), so it is the same on every delivery.
//! - A row is written in the same statement as the figures the event changes. An event whose
//!   row exists changes nothing, whichever group, instance or offset delivers it again: a
//!   renamed group, a second deployment on the same database, an offset reset or a dead-letter
//!   replay.
//! - Rows are kept for the **horizon** (`EVENT_HANDLED_RETENTION_HOURS`, 192 h by default), which
//!   must exceed the topics' retention (`KAFKA_TOPIC_RETENTION_HOURS`, checked at start), in day
//!   partitions of the recorded time. Retention drops whole partitions.
//! - An event recorded before the horizon can no longer be deduplicated, so it is never applied:
//!   it goes to the dead-letter topic (`reason="past_horizon"`). So does an id that is not a
//!   UUIDv7 or is dated more than a day ahead (its partition would be created far ahead of time).

use chrono::{DateTime, Duration, NaiveDate, Utc};
use commerce_db::Pool;
use commerce_events::Envelope;
use diesel::sql_types::{Date, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use crate::dlq::Reason;
use crate::jobs;

/// How far ahead of this clock an event may be dated (clock skew between the apps).
const MAX_AHEAD: Duration = Duration::days(1);

/// Why an event is refused before it reaches the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Recorded before the horizon: its dedupe row may already be gone.
    PastHorizon { recorded_at: DateTime<Utc> },
    /// Dated implausibly far ahead of this clock.
    Future { recorded_at: DateTime<Utc> },
    /// The id carries no time.
    NotTimeOrdered,
}

impl Refusal {
    /// Why the message is dead-lettered.
    pub fn reason(&self) -> Reason {
        match self {
            Self::PastHorizon { .. } => Reason::PastHorizon,
            Self::Future { .. } | Self::NotTimeOrdered => Reason::InvalidEventId,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PastHorizon { recorded_at } => write!(
                f,
                "recorded at {recorded_at}, before the dedupe horizon: it can no longer be deduplicated"
            ),
            Self::Future { recorded_at } => {
                write!(f, "recorded at {recorded_at}, more than a day ahead")
            }
            Self::NotTimeOrdered => write!(f, "event_id is not a UUIDv7"),
        }
    }
}

/// The recorded time of an event: the Unix milliseconds in its UUIDv7 id.
pub fn recorded_at(envelope: &Envelope) -> Option<DateTime<Utc>> {
    if envelope.event_id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = envelope.event_id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(secs as i64, nanos)
}

/// The dedupe horizon: how long an event's row is kept.
#[derive(Debug, Clone, Copy)]
pub struct Horizon(pub Duration);

impl Horizon {
    pub fn hours(hours: u64) -> Self {
        Self(Duration::hours(hours as i64))
    }

    /// Whether the event may be applied at `now`, and when it was recorded.
    pub fn admit(&self, envelope: &Envelope, now: DateTime<Utc>) -> Result<DateTime<Utc>, Refusal> {
        let recorded_at = recorded_at(envelope).ok_or(Refusal::NotTimeOrdered)?;
        if recorded_at < now - self.0 {
            Err(Refusal::PastHorizon { recorded_at })
        } else if recorded_at > now + MAX_AHEAD {
            Err(Refusal::Future { recorded_at })
        } else {
            Ok(recorded_at)
        }
    }

    /// The first day whose partition must be kept at `now`. A partition is dropped only once its
    /// whole day is an hour past the horizon, so a batch admitted just before cannot lose its
    /// row's partition while it commits.
    pub fn first_kept_day(&self, now: DateTime<Utc>) -> NaiveDate {
        (now - self.0 - Duration::hours(1)).date_naive()
    }
}

/// Creates the partitions for these UTC days if missing (idempotent, safe concurrently).
pub async fn ensure_partitions(
    conn: &mut AsyncPgConnection,
    days: impl IntoIterator<Item = NaiveDate>,
) -> anyhow::Result<()> {
    for day in days {
        diesel::sql_query("SELECT event_handled_ensure_partition($1)")
            .bind::<Date, _>(day)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Drops the partitions wholly before the horizon and creates the next days', once per day
/// across instances. Returns the partitions dropped.
pub async fn prune(pool: &Pool, horizon: Horizon, day: NaiveDate) -> anyhow::Result<Vec<String>> {
    let mut dropped = Vec::new();
    jobs::run(
        pool,
        jobs::Job::PruneEventHandled,
        &day.to_string(),
        jobs::LEASE,
        async {
            let mut conn = pool.get().await?;
            let now = Utc::now();
            ensure_partitions(
                &mut conn,
                (0..3).map(|i| now.date_naive() + Duration::days(i)),
            )
            .await?;
            let keep = horizon.first_kept_day(now);
            #[derive(diesel::QueryableByName)]
            struct Partition {
                #[diesel(sql_type = Text)]
                name: String,
            }
            // Partitions are named by their day, so names sort by day.
            let old: Vec<Partition> = diesel::sql_query(
                "SELECT c.relname AS name
                   FROM pg_inherits i
                   JOIN pg_class c ON c.oid = i.inhrelid
                  WHERE i.inhparent = 'event_handled'::regclass
                    AND c.relname < 'event_handled_p' || to_char($1::date, 'YYYYMMDD')
                  ORDER BY 1",
            )
            .bind::<Date, _>(keep)
            .load(&mut conn)
            .await?;
            for Partition { name } in old {
                // A short lock wait: a batch in flight keeps its partition until it commits,
                // and the next day's run tries again.
                conn.batch_execute(&format!(
                    "SET lock_timeout = '5s'; DROP TABLE IF EXISTS \"{name}\"; RESET lock_timeout"
                ))
                .await?;
                dropped.push(name);
            }
            Ok(())
        },
    )
    .await?;
    if !dropped.is_empty() {
        tracing::info!(partitions = ?dropped, "dropped event_handled partitions past the horizon");
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use commerce_events::{Event, ProductViewed};
    use uuid::{NoContext, Timestamp, Uuid};

    fn recorded(at: DateTime<Utc>) -> Envelope {
        let mut e = Envelope::new(Event::ProductViewed(ProductViewed {
            product_id: 1,
            user_id: None,
            count: 1,
        }));
        e.event_id = Uuid::new_v7(Timestamp::from_unix(
            NoContext,
            at.timestamp() as u64,
            at.timestamp_subsec_nanos(),
        ));
        e
    }

    #[test]
    fn the_recorded_time_is_the_ids_millisecond() {
        let at = "2026-12-01T10:20:30.456Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(recorded_at(&recorded(at)), Some(at));
        let mut v4 = recorded(at);
        v4.event_id = Uuid::new_v4();
        assert_eq!(recorded_at(&v4), None);
    }

    #[test]
    fn events_past_the_horizon_or_far_ahead_are_refused() {
        let now = "2026-12-10T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let h = Horizon::hours(192);
        let inside = now - Duration::hours(191);
        assert_eq!(h.admit(&recorded(inside), now), Ok(inside));
        let outside = now - Duration::hours(193);
        assert_eq!(
            h.admit(&recorded(outside), now),
            Err(Refusal::PastHorizon {
                recorded_at: outside
            })
        );
        let ahead = now + Duration::hours(25);
        assert_eq!(
            h.admit(&recorded(ahead), now).unwrap_err().reason(),
            Reason::InvalidEventId
        );
    }

    #[test]
    fn a_partition_is_kept_while_any_admitted_event_can_land_in_it() {
        let h = Horizon::hours(192);
        let now = "2026-12-10T00:30:00Z".parse::<DateTime<Utc>>().unwrap();
        // Horizon at 2026-12-02T00:30; an hour's margin puts the first kept day on the 1st.
        assert_eq!(
            h.first_kept_day(now),
            NaiveDate::from_ymd_opt(2026, 12, 1).unwrap()
        );
        let later = "2026-12-10T01:30:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            h.first_kept_day(later),
            NaiveDate::from_ymd_opt(2026, 12, 2).unwrap()
        );
    }
}
