//! Accounts, tokens and points.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use commerce_web::idempotency::IdempotencyKey;

use crate::domain::accounts::{self, LedgerEntry, UserView};
use crate::domain::logins;
use crate::domain::orders::{OrderView, Placed, Placement};
use crate::domain::sessions::{self, EndReason, Refreshed, SessionView};
use crate::domain::topups::{self, TopUpRequest};
use crate::http::auth::{AuthUser, ClientIp, admit};
use crate::http::error::{ApiError, ApiResult};
use crate::http::paging::{Page, PageParams};
use crate::http::{Json, Query};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUp {
    /// 4–32 characters: letters, digits, `_`, `-`, `.`.
    pub(crate) login_id: String,
    /// 8–128 characters.
    pub(crate) password: String,
    pub(crate) name: String,
    pub(crate) email: String,
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
    /// Seconds until the access token expires.
    expires_in: i64,
    /// Exchanged once, at `POST /api/v1/auth/refresh`, for a new pair; keep it secret.
    refresh_token: String,
    /// Seconds until the session's absolute end: no refresh after it.
    refresh_expires_in: i64,
    /// The session these tokens belong to (a UUID).
    #[schema(value_type = String)]
    session_id: uuid::Uuid,
}

impl TokenResponse {
    fn of(state: &AppState, issued: sessions::Issued) -> ApiResult<Self> {
        Ok(Self {
            access_token: state
                .auth
                .issue_in(issued.user_id, issued.role, issued.session_id)?,
            token_type: "Bearer",
            expires_in: state.auth.ttl_seconds(),
            refresh_token: issued.refresh_token.0,
            refresh_expires_in: (issued.expires_at - chrono::Utc::now())
                .num_seconds()
                .max(0),
            session_id: issued.session_id,
        })
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct Balance {
    balance: i64,
}

/// Points to buy, and the card that pays for them. Deliberately not `Serialize` or `Debug`: it
/// holds a card number.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    /// 1 ..= 10,000,000 won: the points bought, and what the card is charged.
    amount: i64,
    /// `SAMSUNG`, `KB` or `HYUNDAI`.
    card_type: Option<String>,
    /// `####-####-####-####`. Never stored in the clear, never logged.
    card_no: Option<String>,
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
/// Rate limited per client address (`RATE_LIMIT_TOKEN`). Failed logins are counted per (login
/// id, client address) and per client address: from the 5th consecutive wrong password for a
/// login id from one address, and from the 20th from one address whatever the login id, further
/// attempts from that address are blocked for 1 s, 2 s, 4 s, … up to 15 minutes (429
/// `LOGIN_THROTTLED` with Retry-After, even with the right password). A stranger's failures
/// never block the owner signing in from another address. A successful login clears its login
/// id's count from that address. Unknown login ids are treated exactly like wrong passwords; a
/// malformed one is refused (400) before anything is looked up.
#[utoipa::path(post, path = "/api/v1/auth/token", tag = "users", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 400, description = "VALIDATION_FAILED: a malformed login id"),
        (status = 401),
        (status = 429, description = "RATE_LIMITED or LOGIN_THROTTLED, with Retry-After"),
        (status = 503, description = "AUTH_BUSY: too many sign-ins at once, with Retry-After")))]
pub async fn token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<TokenRequest>,
) -> ApiResult<Json<TokenResponse>> {
    const WRONG: ApiError = ApiError::Unauthenticated("wrong login id or password");
    admit(&state.limits.token, &ip)?;
    if !accounts::is_login_id(&req.login_id) {
        return Err(ApiError::field("login_id", accounts::LOGIN_ID_RULE));
    }
    let (has_failures, found) = {
        let mut conn = state.db.get().await?;
        let has_failures = logins::check(&mut conn, &req.login_id, ip).await?;
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
        logins::record_failure(&mut conn, &req.login_id, ip).await?;
        return Err(WRONG);
    };
    if has_failures {
        logins::clear(&mut conn, &req.login_id, ip).await?;
    }
    let issued = sessions::start(&mut conn, id, role, state.config.refresh_ttl).await?;
    drop(conn);
    metrics::counter!("auth_sessions_total", "event" => "started").increment(1);
    Ok(Json(TokenResponse::of(&state, issued)?))
}

/// Exchange a refresh token for a new access token and a new refresh token (rotation: each
/// refresh token is good once). A refresh token presented a second time was copied: its whole
/// session ends (401 `REFRESH_TOKEN_REUSED`), the holder's tokens included, on every instance
/// within a second. Rate limited per client address with the logins (`RATE_LIMIT_TOKEN`).
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "users", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse),
        (status = 401, description = "UNAUTHENTICATED: unknown, expired, or of an ended session; REFRESH_TOKEN_REUSED: used before, and its session has now ended"),
        (status = 429, description = "RATE_LIMITED, with Retry-After")))]
pub async fn refresh(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    admit(&state.limits.token, &ip)?;
    let mut conn = state.db.get().await?;
    match sessions::refresh(&mut conn, req.refresh_token.trim()).await? {
        Refreshed::Issued(issued) => {
            metrics::counter!("auth_sessions_total", "event" => "refreshed").increment(1);
            Ok(Json(TokenResponse::of(&state, issued)?))
        }
        Refreshed::Refused => Err(ApiError::Unauthenticated(
            "the refresh token is unknown, expired, or of an ended session",
        )),
        Refreshed::Reused(session, at) => {
            drop(conn);
            tracing::warn!(session.id = %session, "a refresh token was used twice; its session ended");
            metrics::counter!("auth_sessions_total", "event" => "reuse_detected").increment(1);
            state.revocations.announce(&[(session, at)]).await;
            Err(ApiError::RefreshTokenReused)
        }
    }
}

/// End the caller's session (the one its token belongs to): its access and refresh tokens are
/// refused from now on, on every instance within a second (so the same token cannot log out
/// twice: the second time it is refused with 401).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "users", security(("bearer" = [])),
    responses((status = 204, description = "ended"), (status = 401),
        (status = 409, description = "NO_SESSION: the token belongs to no session")))]
pub async fn logout(State(state): State<AppState>, user: AuthUser) -> ApiResult<StatusCode> {
    let session = user.session.ok_or(crate::domain::Error::NoSession)?;
    let mut conn = state.db.get().await?;
    let ended = sessions::end_one(&mut conn, user.id, session, EndReason::Logout).await?;
    drop(conn);
    if let Some(ended) = ended {
        metrics::counter!("auth_sessions_total", "event" => "ended").increment(1);
        state.revocations.announce(&[ended]).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct Ended {
    /// Sessions ended now.
    ended: usize,
}

/// End every session of the caller (logout everywhere), this one included.
#[utoipa::path(post, path = "/api/v1/auth/logout-all", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = Ended), (status = 401)))]
pub async fn logout_all(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Ended>> {
    Ok(Json(
        end_sessions(&state, user.id, EndReason::LogoutAll).await?,
    ))
}

/// Ends every session of `user_id` and announces it.
pub(crate) async fn end_sessions(
    state: &AppState,
    user_id: i64,
    reason: EndReason,
) -> ApiResult<Ended> {
    let mut conn = state.db.get().await?;
    let ended = sessions::end_all(&mut conn, user_id, reason).await?;
    drop(conn);
    state.revocations.announce(&ended).await;
    metrics::counter!("auth_sessions_total", "event" => "ended").increment(ended.len() as u64);
    Ok(Ended { ended: ended.len() })
}

#[derive(Serialize, ToSchema)]
pub struct SessionList {
    /// Newest first (at most 100).
    content: Vec<SessionView>,
}

/// The caller's open sessions.
#[utoipa::path(get, path = "/api/v1/users/me/sessions", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = SessionList), (status = 401)))]
pub async fn my_sessions(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<SessionList>> {
    let mut conn = state.db.get().await?;
    Ok(Json(SessionList {
        content: sessions::open(&mut conn, user.id).await?,
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

/// Buy points by card (1 ..= 10,000,000 won per call). Rate limited per user
/// (`RATE_LIMIT_POINTS_CHARGE`).
///
/// A top-up is an order of kind `POINT_TOP_UP` paid through the payment gateway: it answers as
/// an order does (`PAID` once the gateway confirmed the charge, `PENDING_PAYMENT` while it has
/// not, `PAYMENT_FAILED`), and its points are credited when, and only when, it is `PAID`, by
/// this request, the gateway's callback or reconciliation, once. Cancelling a paid top-up
/// (`POST /api/v1/orders/{id}/cancel`) takes its points back and refunds the card; it is refused
/// with `POINTS_ALREADY_SPENT` while they are spent. With an `Idempotency-Key`, a retry with the
/// same key and request charges once and answers the first top-up.
#[utoipa::path(post, path = "/api/v1/points/charge", tag = "points", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters; a retry with the same key and request charges once")),
    request_body = TopUp, responses((status = 201, body = OrderView),
        (status = 400, description = "VALIDATION_FAILED (a card is required), INVALID_IDEMPOTENCY_KEY"), (status = 401),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED: the key was used with another request"),
        (status = 429, description = "RATE_LIMITED, with Retry-After"),
        (status = 503, description = "ORDER_TIMEOUT: opening the top-up outlasted ORDER_TIMEOUT_MS and was rolled back whole, with Retry-After; SERVICE_UNAVAILABLE")))]
pub async fn charge(
    State(state): State<AppState>,
    user: AuthUser,
    key: Option<IdempotencyKey>,
    Json(req): Json<TopUp>,
) -> ApiResult<(StatusCode, Json<OrderView>)> {
    admit(&state.limits.points_charge, &user.id)?;
    let top_up = TopUpRequest::parse(req.amount, req.card_type.as_deref(), req.card_no.as_deref())?;
    let placement = Placement::of(&state.payments, state.config.order_timeout);
    let placed = {
        let mut conn = state.db.get().await?;
        topups::place(
            &mut conn,
            &placement,
            user.id,
            &top_up,
            key.as_ref().map(IdempotencyKey::as_str),
        )
        .await?
        // The gateway call below must not hold a connection.
    };
    let view = match placed {
        Placed::Created(mut view) => {
            let (status, payment) = state
                .payments
                .submit(
                    view.order_id,
                    user.id,
                    top_up.amount,
                    top_up.card_type,
                    &top_up.card_no,
                )
                .await;
            view.status = status;
            view.payment = Some(payment);
            view
        }
        Placed::Replayed(view) => view,
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// The caller's points ledger, newest first: each entry's amount (signed), the balance after
/// it, its reason (`TOP_UP`, `TOP_UP_REVERSED`, `GRANT`, `USE`, `REFUND`; `CHARGE` for free
/// charges made before points were bought), its order, and a grant's note.
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
