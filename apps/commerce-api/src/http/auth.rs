//! Who is calling: the bearer-token extractors, and the client address rate limits key by.
//!
//! A valid token is not enough: the user must still exist, and the role is the current one (as
//! of at most `USER_CHECK_TTL` ago, see [`crate::infra::auth::UserCheckCache`]).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::domain::partners::{self, PartnerStatus};
use crate::domain::{self, accounts};
use crate::http::error::{ApiError, ApiResult};
use crate::infra::auth::Role;
use crate::infra::limits::{self, Limit};
use crate::state::AppState;

/// The authenticated caller.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub id: i64,
    pub role: Role,
    /// The token's session (`None`: a token minted outside sessions).
    pub session: Option<uuid::Uuid>,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let SignedUser { id, session } = SignedUser::from_request_parts(parts, state).await?;
        // The token of a deleted user is refused, and the role is the current one (as of at
        // most USER_CHECK_TTL ago).
        if let Some(role) = state.auth.checked.get(id) {
            return Ok(AuthUser { id, role, session });
        }
        let mut conn = state.db.get().await?;
        let role = accounts::role_of(&mut conn, id)
            .await?
            .ok_or(ApiError::Unauthenticated("the token's user does not exist"))?;
        state.auth.checked.put(id, role);
        Ok(AuthUser { id, role, session })
    }
}

/// The caller as its token says, without confirming that the user still exists: for a route
/// whose write confirms it in its own transaction (a foreign key to `users`), so a read per
/// attempt does not stand between a rush and its gate. Users are never deleted, so what this
/// gives up is only the check of a token minted for a user a database no longer has; the
/// write refuses that one ([`domain::Error::UnknownUser`], 401).
#[derive(Debug, Clone, Copy)]
pub struct SignedUser {
    pub id: i64,
    /// The token's session (`None`: a token minted outside sessions).
    pub session: Option<uuid::Uuid>,
}

impl FromRequestParts<AppState> for SignedUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = bearer(parts)?;
        let (id, _role, session) = state
            .auth
            .verify_in(token)
            .ok_or(ApiError::Unauthenticated("the token is invalid or expired"))?;
        // A local lookup: ended sessions reach every instance within a second. While this
        // instance's set is not current (neither Redis nor PostgreSQL answered its polls for a
        // second, or it has just started), PostgreSQL is asked.
        if let Some(s) = session {
            let ended = if state.revocations.fresh() {
                state.revocations.has_ended(&s)
            } else {
                let mut conn = state.db.get().await?;
                crate::domain::sessions::has_ended(&mut conn, s).await?
            };
            if ended {
                return Err(ApiError::Unauthenticated(
                    "the token's session has ended; sign in again",
                ));
            }
        }
        Ok(SignedUser { id, session })
    }
}

/// The bearer token of a request.
fn bearer(parts: &Parts) -> ApiResult<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthenticated("a bearer token is required"))
}

/// The authenticated caller, required to be an admin (403 otherwise).
#[derive(Debug, Clone, Copy)]
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            return Err(ApiError::Forbidden("this route needs the admin role"));
        }
        Ok(AdminUser(user))
    }
}

/// The authenticated caller, required to be a partner account (403 otherwise), with the partner
/// it acts for. The partner and its status are read on every request: a suspension takes effect
/// at once.
#[derive(Debug, Clone, Copy)]
pub struct PartnerUser {
    pub user_id: i64,
    pub partner_id: i64,
    pub status: PartnerStatus,
}

impl PartnerUser {
    /// Refuses a suspended partner ([`domain::Error::PartnerSuspended`]): for catalog changes.
    pub fn active(self) -> ApiResult<Self> {
        match self.status {
            PartnerStatus::Active => Ok(self),
            PartnerStatus::Suspended => Err(domain::Error::PartnerSuspended.into()),
        }
    }
}

impl FromRequestParts<AppState> for PartnerUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        const NOT_PARTNER: ApiError = ApiError::Forbidden("this route needs a partner account");
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Partner {
            return Err(NOT_PARTNER);
        }
        let mut conn = state.db.get().await?;
        let (partner_id, status) = partners::of_user(&mut conn, user.id)
            .await?
            .ok_or(NOT_PARTNER)?;
        Ok(PartnerUser {
            user_id: user.id,
            partner_id,
            status,
        })
    }
}

/// The client's address, as the rate limits key it (see [`crate::infra::limits`]): the
/// connection's peer, or what trusted proxies forwarded.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        // Absent only when the router is called without a listener (in-process unit tests).
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.ip());
        let proxies = &state.config.trusted_proxies;
        // The header only matters behind a trusted proxy.
        let forwarded: Vec<&str> = if proxies.is_empty() {
            Vec::new()
        } else {
            parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        let client = proxies.client(peer, &forwarded);
        Ok(ClientIp(limits::limit_key(client)))
    }
}

/// Admits one request under `limit` for `key`, or refuses it with 429 and `Retry-After`.
pub fn admit<K: std::hash::Hash + Eq + Clone>(limit: &Limit<K>, key: &K) -> ApiResult<()> {
    limit.check(key).map_err(ApiError::RateLimited)
}
