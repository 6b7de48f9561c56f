//! Sessions that can end.
//!
//! A login starts a *session*: a row, and a family of refresh tokens of which one is current.
//! Access tokens are short-lived (`COMMERCE_JWT_TTL_SECONDS`, 15 minutes) and name their session
//! (`sid`); a refresh token (opaque, 256 random bits, only its SHA-256 stored) is exchanged once
//! for a new access token and a new refresh token (rotation). A refresh token presented a second
//! time was copied, so its whole session ends (`REUSE`): the thief's and the owner's tokens stop
//! working together, and the owner signs in again. A session also ends on logout (this one),
//! logout everywhere (all of a user's), by an admin, or when it reaches its absolute end
//! (`COMMERCE_REFRESH_TTL_SECONDS`, 30 days).
//!
//! Ending a session refuses its access tokens on every instance within a second: the revocation
//! is committed here, then announced ([`crate::infra::revocations`]).

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Bytea, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel::{OptionalExtension as _, QueryableByName};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{Error, Result};
use crate::infra::auth::Role;

commerce_enums::text_enum! {
    sql, schema;
    /// Why a session ended (`auth_sessions.revoked_reason`).
    pub enum EndReason {
        /// Its user logged out of it.
        Logout => "LOGOUT",
        /// Its user logged out everywhere.
        LogoutAll => "LOGOUT_ALL",
        /// An admin ended the user's sessions.
        Admin => "ADMIN",
        /// One of its refresh tokens was used twice.
        Reuse => "REUSE",
    }
}

/// A refresh token as handed to the client: 32 random bytes, hex. Not `Debug`.
pub struct RefreshToken(pub String);

impl RefreshToken {
    fn new() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(hex::encode(bytes))
    }
}

/// What is stored of a refresh token.
fn digest(token: &str) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

/// A session just started or refreshed: who, which session, and the new refresh token.
pub struct Issued {
    pub user_id: i64,
    pub role: Role,
    pub session_id: Uuid,
    pub refresh_token: RefreshToken,
    pub expires_at: DateTime<Utc>,
}

/// Starts a session for `user_id` (its role as given), lasting `lifetime`.
pub async fn start(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    role: Role,
    lifetime: std::time::Duration,
) -> Result<Issued> {
    let session_id = Uuid::now_v7();
    let refresh_token = RefreshToken::new();
    let expires_at = conn
        .transaction::<_, Error, _>(async |conn| {
            #[derive(QueryableByName)]
            struct Started {
                #[diesel(sql_type = Timestamptz)]
                expires_at: DateTime<Utc>,
            }
            let started: Started = diesel::sql_query(
                "INSERT INTO auth_sessions (id, user_id, expires_at)
                 VALUES ($1, $2, now() + $3 * interval '1 second')
                 RETURNING expires_at",
            )
            .bind::<SqlUuid, _>(session_id)
            .bind::<BigInt, _>(user_id)
            .bind::<BigInt, _>(lifetime.as_secs() as i64)
            .get_result(conn)
            .await?;
            diesel::sql_query(
                "INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)",
            )
            .bind::<Bytea, _>(digest(&refresh_token.0))
            .bind::<SqlUuid, _>(session_id)
            .execute(conn)
            .await?;
            Ok(started.expires_at)
        })
        .await?;
    Ok(Issued {
        user_id,
        role,
        session_id,
        refresh_token,
        expires_at,
    })
}

#[derive(QueryableByName)]
struct Presented {
    #[diesel(sql_type = SqlUuid)]
    session_id: Uuid,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    used_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = Text)]
    role: Role,
    #[diesel(sql_type = Timestamptz)]
    expires_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    revoked_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    expired: bool,
}

/// What presenting a refresh token came to.
pub enum Refreshed {
    /// Rotated: the new pair's makings.
    Issued(Issued),
    /// Not a current token of a live session (unknown, expired, or of an ended session).
    Refused,
    /// Used before: its session was ended now. Returns the session and when it ended, to
    /// announce it.
    Reused(Uuid, DateTime<Utc>),
}

/// Exchanges `token` for a new refresh token of the same session, once: under the token's and
/// the session's row locks, so two racing uses of one token rotate once and the other is reuse.
pub async fn refresh(conn: &mut AsyncPgConnection, token: &str) -> Result<Refreshed> {
    conn.transaction::<_, Error, _>(async |conn| {
        let Some(found) = diesel::sql_query(
            "SELECT t.session_id, t.used_at, s.user_id, u.role, s.expires_at, s.revoked_at,
                    s.expires_at <= now() AS expired
               FROM refresh_tokens t
               JOIN auth_sessions s ON s.id = t.session_id
               JOIN users u ON u.id = s.user_id
              WHERE t.token_hash = $1
                FOR UPDATE OF t, s",
        )
        .bind::<Bytea, _>(digest(token))
        .get_result::<Presented>(conn)
        .await
        .optional()?
        else {
            return Ok(Refreshed::Refused);
        };
        if found.revoked_at.is_some() || found.expired {
            return Ok(Refreshed::Refused);
        }
        if found.used_at.is_some() {
            let at = end(conn, found.session_id, EndReason::Reuse).await?;
            return Ok(Refreshed::Reused(found.session_id, at));
        }
        let next = RefreshToken::new();
        diesel::sql_query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
            .bind::<Bytea, _>(digest(token))
            .execute(conn)
            .await?;
        diesel::sql_query("INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)")
            .bind::<Bytea, _>(digest(&next.0))
            .bind::<SqlUuid, _>(found.session_id)
            .execute(conn)
            .await?;
        diesel::sql_query("UPDATE auth_sessions SET refreshed_at = now() WHERE id = $1")
            .bind::<SqlUuid, _>(found.session_id)
            .execute(conn)
            .await?;
        Ok(Refreshed::Issued(Issued {
            user_id: found.user_id,
            role: found.role,
            session_id: found.session_id,
            refresh_token: next,
            expires_at: found.expires_at,
        }))
    })
    .await
}

#[derive(QueryableByName)]
struct Ended {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Timestamptz)]
    revoked_at: DateTime<Utc>,
}

/// Ends one session (if it is `user_id`'s and still open). Returns it and when it ended, or
/// `None` when it had ended before.
pub async fn end_one(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    session_id: Uuid,
    reason: EndReason,
) -> Result<Option<(Uuid, DateTime<Utc>)>> {
    let ended: Option<Ended> = diesel::sql_query(
        "UPDATE auth_sessions SET revoked_at = clock_timestamp(), revoked_reason = $3
          WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL
      RETURNING id, revoked_at",
    )
    .bind::<SqlUuid, _>(session_id)
    .bind::<BigInt, _>(user_id)
    .bind::<Text, _>(reason)
    .get_result(conn)
    .await
    .optional()?;
    Ok(ended.map(|e| (e.id, e.revoked_at)))
}

async fn end(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    reason: EndReason,
) -> Result<DateTime<Utc>> {
    let ended: Ended = diesel::sql_query(
        "UPDATE auth_sessions SET revoked_at = clock_timestamp(), revoked_reason = $2
          WHERE id = $1
      RETURNING id, revoked_at",
    )
    .bind::<SqlUuid, _>(session_id)
    .bind::<Text, _>(reason)
    .get_result(conn)
    .await?;
    Ok(ended.revoked_at)
}

/// Ends every open session of `user_id`. Returns the sessions ended, each with when.
pub async fn end_all(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    reason: EndReason,
) -> Result<Vec<(Uuid, DateTime<Utc>)>> {
    let ended: Vec<Ended> = diesel::sql_query(
        "UPDATE auth_sessions SET revoked_at = clock_timestamp(), revoked_reason = $2
          WHERE user_id = $1 AND revoked_at IS NULL
      RETURNING id, revoked_at",
    )
    .bind::<BigInt, _>(user_id)
    .bind::<Text, _>(reason)
    .load(conn)
    .await?;
    Ok(ended.into_iter().map(|e| (e.id, e.revoked_at)).collect())
}

/// Whether `session` has ended, as PostgreSQL says (for a request while this instance's set of
/// ended sessions is not current). An unknown session counts as ended.
pub async fn has_ended(conn: &mut AsyncPgConnection, session: Uuid) -> Result<bool> {
    #[derive(QueryableByName)]
    struct Open {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        open: bool,
    }
    let open: Option<Open> =
        diesel::sql_query("SELECT revoked_at IS NULL AS open FROM auth_sessions WHERE id = $1")
            .bind::<SqlUuid, _>(session)
            .get_result(conn)
            .await
            .optional()?;
    Ok(!open.is_some_and(|o| o.open))
}

/// Deletes what no session needs any more, a bounded amount per call: the refresh tokens of
/// sessions that ended or expired over a day ago, and sessions gone that way over `history`
/// ago. Returns the rows deleted.
pub async fn purge(conn: &mut AsyncPgConnection, history: std::time::Duration) -> Result<usize> {
    let tokens = diesel::sql_query(
        "DELETE FROM refresh_tokens WHERE token_hash IN (
             SELECT t.token_hash FROM refresh_tokens t JOIN auth_sessions s ON s.id = t.session_id
              WHERE s.revoked_at < now() - interval '1 day'
                 OR s.expires_at < now() - interval '1 day'
              LIMIT 10000)",
    )
    .execute(conn)
    .await?;
    let sessions = diesel::sql_query(
        "DELETE FROM auth_sessions WHERE id IN (
             SELECT s.id FROM auth_sessions s
              WHERE (s.revoked_at < now() - $1 * interval '1 second'
                     OR s.expires_at < now() - $1 * interval '1 second')
                AND NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.session_id = s.id)
              LIMIT 10000)",
    )
    .bind::<BigInt, _>(history.as_secs() as i64)
    .execute(conn)
    .await?;
    Ok(tokens + sessions)
}

/// A session as its user (or an admin) sees it.
#[derive(QueryableByName, Serialize, ToSchema, Debug)]
pub struct SessionView {
    /// A UUID.
    #[diesel(sql_type = SqlUuid)]
    #[schema(value_type = String)]
    pub id: Uuid,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub refreshed_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub expires_at: DateTime<Utc>,
}

/// `user_id`'s open sessions, newest first.
pub async fn open(conn: &mut AsyncPgConnection, user_id: i64) -> Result<Vec<SessionView>> {
    Ok(diesel::sql_query(
        "SELECT id, created_at, refreshed_at, expires_at FROM auth_sessions
          WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()
          ORDER BY created_at DESC LIMIT 100",
    )
    .bind::<BigInt, _>(user_id)
    .load(conn)
    .await?)
}
