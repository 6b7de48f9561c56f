//! The failed-login backoff.
//!
//! Failures are counted twice: per (login id, client address), and per client address whatever
//! the login id. Each count is free up to its threshold ([`PAIR`]: 4 failures, [`ADDRESS`]: 19);
//! from there on each failure blocks further attempts for 1 s, then 2 s, 4 s, … up to
//! [`MAX_BLOCK`] (15 minutes). While either count of an attempt is blocked, the attempt is
//! refused with 429 and `Retry-After`, without checking the password.
//!
//! So a stranger who floods an account with wrong passwords blocks only themselves: the owner,
//! from another address, signs in as usual; and one address cannot try many accounts either.
//! A successful login clears its (login id, address) count but not the address's, so an
//! attacker cannot reset their address by signing into an account of their own. A count idle
//! for [`FORGET_AFTER`] starts over.
//!
//! The counts are kept in PostgreSQL, so they hold across every API instance, and for any
//! login id tried, whether or not an account has it: an unknown login id backs off exactly like
//! a real one, and the backoff tells nothing about which accounts exist.

use std::net::IpAddr;
use std::time::Duration;

use diesel::sql_types::{Double, Integer, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::domain::{Error, Result};

/// When a count starts to block.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The failure that first blocks (the ones before it cost nothing).
    pub first_blocking: i32,
}

/// Per (login id, client address): the 5th consecutive failure blocks.
pub const PAIR: Policy = Policy { first_blocking: 5 };
/// Per client address, whatever the login id: the 20th failure blocks.
pub const ADDRESS: Policy = Policy { first_blocking: 20 };
/// The longest block.
pub const MAX_BLOCK: Duration = Duration::from_secs(15 * 60);
/// A count is forgotten after this long without a failure.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The login id an address's own count is kept under.
const ANY_LOGIN: &str = "";

/// How an address is counted: as the rate limits key it (IPv6 by its /64, so a client cannot
/// step around its count by changing the host part).
fn address(addr: IpAddr) -> String {
    crate::infra::limits::limit_key(addr).to_string()
}

#[derive(diesel::QueryableByName)]
struct Blocked {
    #[diesel(sql_type = Nullable<Double>)]
    blocked_seconds: Option<f64>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pair: bool,
}

/// Refuses with [`Error::LoginThrottled`] while `login_id` from `addr`, or `addr` itself, is
/// blocked. `Ok(true)` when the pair has failures on record (a successful login must then
/// clear them).
pub async fn check(conn: &mut AsyncPgConnection, login_id: &str, addr: IpAddr) -> Result<bool> {
    let rows: Vec<Blocked> = diesel::sql_query(
        "SELECT CASE WHEN blocked_until > now()
                     THEN extract(epoch FROM blocked_until - now())::float8 END AS blocked_seconds,
                login_id <> '' AS pair
           FROM login_failures
          WHERE client_addr = $2 AND login_id IN ($1, '')",
    )
    .bind::<Text, _>(login_id)
    .bind::<Text, _>(address(addr))
    .load(conn)
    .await?;
    let blocked = rows
        .iter()
        .filter_map(|r| r.blocked_seconds)
        .fold(None, |longest: Option<f64>, s| {
            Some(longest.map_or(s, |l| l.max(s)))
        });
    if let Some(s) = blocked {
        return Err(Error::LoginThrottled(Duration::from_secs_f64(s)));
    }
    Ok(rows.iter().any(|r| r.pair))
}

/// Records a wrong password (or an unknown login id) for `login_id` from `addr`, in both counts,
/// atomically under any number of instances, and blocks as the policies say.
pub async fn record_failure(
    conn: &mut AsyncPgConnection,
    login_id: &str,
    addr: IpAddr,
) -> Result<()> {
    let addr = address(addr);
    for (login, policy) in [(login_id, PAIR), (ANY_LOGIN, ADDRESS)] {
        count(conn, login, &addr, policy).await?;
    }
    Ok(())
}

async fn count(
    conn: &mut AsyncPgConnection,
    login: &str,
    addr: &str,
    policy: Policy,
) -> Result<()> {
    diesel::sql_query(
        "INSERT INTO login_failures AS f (login_id, client_addr, failures, last_failed_at)
         VALUES ($1, $2, 1, now())
         ON CONFLICT (login_id, client_addr) DO UPDATE SET (failures, blocked_until, last_failed_at) = (
           SELECT n,
                  CASE WHEN n >= $3
                       THEN now() + make_interval(secs => least($4, 2 ^ least(n - $3, 30))) END,
                  now()
             FROM (SELECT CASE WHEN f.last_failed_at < now() - make_interval(secs => $5)
                               THEN 1 ELSE f.failures + 1 END AS n) AS counted)",
    )
    .bind::<Text, _>(login)
    .bind::<Text, _>(addr)
    .bind::<Integer, _>(policy.first_blocking)
    .bind::<Double, _>(MAX_BLOCK.as_secs_f64())
    .bind::<Double, _>(FORGET_AFTER.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

/// Clears the failures of `login_id` from `addr` after a successful login (the address's own
/// count stays).
pub async fn clear(conn: &mut AsyncPgConnection, login_id: &str, addr: IpAddr) -> Result<()> {
    diesel::sql_query("DELETE FROM login_failures WHERE login_id = $1 AND client_addr = $2")
        .bind::<Text, _>(login_id)
        .bind::<Text, _>(address(addr))
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
