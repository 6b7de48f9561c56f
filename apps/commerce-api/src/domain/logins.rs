//! The failed-login backoff.
//!
//! Policy: the first [`FREE_FAILURES`]` - 1` consecutive wrong passwords for a login id cost
//! nothing; from the [`FREE_FAILURES`]th on, each one blocks further attempts for that login
//! id for 1 s, then 2 s, 4 s, … up to [`MAX_BLOCK`] (15 minutes). While blocked, every attempt
//! (even with the right password) is refused with 429 and `Retry-After`, without checking the
//! password. A successful login clears the count; a count idle for [`FORGET_AFTER`] starts over.
//!
//! The count is kept in PostgreSQL, so it holds across every API instance, and for any login id
//! tried, whether or not an account has it: an unknown login id backs off exactly like a real
//! one, and the backoff tells nothing about which accounts exist.

use std::time::Duration;

use diesel::OptionalExtension;
use diesel::sql_types::{Double, Integer, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::domain::{Error, Result};

/// Consecutive failures before the first block.
pub const FREE_FAILURES: i32 = 5;
/// The longest block.
pub const MAX_BLOCK: Duration = Duration::from_secs(15 * 60);
/// A login id's count is forgotten after this long without a failure.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(diesel::QueryableByName)]
struct Blocked {
    #[diesel(sql_type = Nullable<Double>)]
    blocked_seconds: Option<f64>,
}

/// Refuses with [`Error::LoginThrottled`] while `login_id` is blocked. `Ok(true)` when it has
/// failures on record (a successful login must then clear them).
pub async fn check(conn: &mut AsyncPgConnection, login_id: &str) -> Result<bool> {
    let row: Option<Blocked> = diesel::sql_query(
        "SELECT CASE WHEN blocked_until > now()
                     THEN extract(epoch FROM blocked_until - now())::float8 END AS blocked_seconds
           FROM login_failures WHERE login_id = $1",
    )
    .bind::<Text, _>(login_id)
    .get_result(conn)
    .await
    .optional()?;
    match row {
        None => Ok(false),
        Some(Blocked {
            blocked_seconds: Some(s),
        }) => Err(Error::LoginThrottled(Duration::from_secs_f64(s))),
        Some(_) => Ok(true),
    }
}

/// Records a wrong password (or an unknown login id) for `login_id`, atomically under any
/// number of instances, and blocks it as the policy says.
pub async fn record_failure(conn: &mut AsyncPgConnection, login_id: &str) -> Result<()> {
    diesel::sql_query(
        "INSERT INTO login_failures AS f (login_id, failures, last_failed_at)
         VALUES ($1, 1, now())
         ON CONFLICT (login_id) DO UPDATE SET (failures, blocked_until, last_failed_at) = (
           SELECT n,
                  CASE WHEN n >= $2
                       THEN now() + make_interval(secs => least($3, 2 ^ least(n - $2, 30))) END,
                  now()
             FROM (SELECT CASE WHEN f.last_failed_at < now() - make_interval(secs => $4)
                               THEN 1 ELSE f.failures + 1 END AS n) AS counted)",
    )
    .bind::<Text, _>(login_id)
    .bind::<Integer, _>(FREE_FAILURES)
    .bind::<Double, _>(MAX_BLOCK.as_secs_f64())
    .bind::<Double, _>(FORGET_AFTER.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

/// Clears `login_id`'s failures after a successful login.
pub async fn clear(conn: &mut AsyncPgConnection, login_id: &str) -> Result<()> {
    diesel::sql_query("DELETE FROM login_failures WHERE login_id = $1")
        .bind::<Text, _>(login_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Purges counts idle for longer than [`FORGET_AFTER`]; returns how many.
pub async fn purge_idle(conn: &mut AsyncPgConnection) -> Result<usize> {
    Ok(diesel::sql_query(
        "DELETE FROM login_failures WHERE last_failed_at < now() - make_interval(secs => $1)",
    )
    .bind::<Double, _>(FORGET_AFTER.as_secs_f64())
    .execute(conn)
    .await?)
}
