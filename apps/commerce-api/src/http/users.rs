//! Accounts, tokens and points.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use commerce_web::idempotency::IdempotencyKey;

use crate::domain::accounts::{self, LedgerEntry, UserView};
use crate::domain::logins;
use crate::http::auth::{AuthUser, ClientIp, admit};
use crate::http::error::{ApiError, ApiResult};
use crate::http::paging::{Page, PageParams};
use crate::http::{Json, Query};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUp {
    /// 4–32 characters: letters, digits, `_`, `-`, `.`.
    login_id: String,
    /// 8–128 characters.
    password: String,
    name: String,
    email: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    login_id: String,
    password: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the token expires.
    expires_in: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Balance {
    balance: i64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Charge {
    /// 1 ..= 10,000,000 won.
    amount: i64,
}

/// Sign up. Rate limited per client address (`RATE_LIMIT_SIGN_UP`).
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = SignUp,
    responses((status = 201, body = UserView), (status = 400), (status = 409, description = "LOGIN_ID_TAKEN"),
        (status = 429, description = "RATE_LIMITED, with Retry-After"),
        (status = 503, description = "AUTH_BUSY: too many sign-ins at once, with Retry-After")))]
pub async fn sign_up(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<SignUp>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    admit(&state.limits.sign_up, &ip)?;
    let new = accounts::SignUp::parse(req.login_id, req.password, &req.name, req.email)?;
    let hash = state.auth.hash_password(new.password.clone()).await?;
    let mut conn = state.db.get().await?;
    let user = accounts::create(&mut conn, &new, &hash).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Exchange a login id and password for a bearer token.
///
/// Rate limited per client address (`RATE_LIMIT_TOKEN`). From the 5th consecutive wrong
/// password for a login id on, that login id is blocked for 1 s, 2 s, 4 s, … up to 15 minutes
/// (429 `LOGIN_THROTTLED` with Retry-After, even with the right password); a successful login
/// clears the count. Unknown login ids are treated exactly like wrong passwords.
#[utoipa::path(post, path = "/api/v1/auth/token", tag = "users", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 401),
        (status = 429, description = "RATE_LIMITED or LOGIN_THROTTLED, with Retry-After"),
        (status = 503, description = "AUTH_BUSY: too many sign-ins at once, with Retry-After")))]
pub async fn token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<TokenRequest>,
) -> ApiResult<Json<TokenResponse>> {
    const WRONG: ApiError = ApiError::Unauthenticated("wrong login id or password");
    admit(&state.limits.token, &ip)?;
    let (has_failures, found) = {
        let mut conn = state.db.get().await?;
        let has_failures = logins::check(&mut conn, &req.login_id).await?;
        (
            has_failures,
            accounts::credentials(&mut conn, &req.login_id).await?,
        )
    };
    // An unknown login id costs the same argon2 run as a wrong password.
    let (account, hash) = match found {
        Some((id, hash, role)) => (Some((id, role)), Some(hash)),
        None => (None, None),
    };
    let verified = state.auth.verify_password(req.password, hash).await?;
    let mut conn = state.db.get().await?;
    let Some((id, role)) = account.filter(|_| verified) else {
        logins::record_failure(&mut conn, &req.login_id).await?;
        return Err(WRONG);
    };
    if has_failures {
        logins::clear(&mut conn, &req.login_id).await?;
    }
    drop(conn);
    Ok(Json(TokenResponse {
        access_token: state.auth.issue(id, role)?,
        token_type: "Bearer",
        expires_in: state.auth.ttl_seconds(),
    }))
}

/// The caller's account.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 401)))]
pub async fn me(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<UserView>> {
    let mut conn = state.db.get().await?;
    Ok(Json(accounts::user(&mut conn, user.id).await?))
}

/// The caller's point balance.
#[utoipa::path(get, path = "/api/v1/points", tag = "points", security(("bearer" = [])),
    responses((status = 200, body = Balance), (status = 401)))]
pub async fn balance(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Balance>> {
    let mut conn = state.db.get().await?;
    let balance = accounts::balance(&mut conn, user.id).await?;
    Ok(Json(Balance { balance }))
}

/// Charge points (1 ..= 10,000,000 won per call). Rate limited per user
/// (`RATE_LIMIT_POINTS_CHARGE`). With an `Idempotency-Key`, a retry with the same key and amount
/// charges nothing more and answers the balance the first one answered.
#[utoipa::path(post, path = "/api/v1/points/charge", tag = "points", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters; a retry with the same key and amount charges once")),
    request_body = Charge, responses((status = 200, body = Balance),
        (status = 400, description = "VALIDATION_FAILED, INVALID_IDEMPOTENCY_KEY"), (status = 401),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED: the key was used with another amount"),
        (status = 429, description = "RATE_LIMITED, with Retry-After")))]
pub async fn charge(
    State(state): State<AppState>,
    user: AuthUser,
    key: Option<IdempotencyKey>,
    Json(req): Json<Charge>,
) -> ApiResult<Json<Balance>> {
    admit(&state.limits.points_charge, &user.id)?;
    let mut conn = state.db.get().await?;
    let key = key.as_ref().map(IdempotencyKey::as_str);
    let balance = accounts::charge(&mut conn, user.id, req.amount, key).await?;
    Ok(Json(Balance { balance }))
}

/// The caller's points ledger, newest first: each entry's amount (signed), the balance after
/// it, its reason (`CHARGE`, `USE`, `REFUND`) and its order.
#[utoipa::path(get, path = "/api/v1/points/history", tag = "points", security(("bearer" = [])),
    params(PageParams), responses((status = 200, body = Page<LedgerEntry>), (status = 401)))]
pub async fn points_history(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<LedgerEntry>>> {
    let (page, size) = params.parse()?;
    let mut conn = state.db.get().await?;
    let (entries, total) = accounts::points_history(&mut conn, user.id, page, size).await?;
    Ok(Json(Page::new(entries, page, size, total)))
}
