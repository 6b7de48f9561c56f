//! Accounts, tokens and points.

use axum::extract::State;
use axum::http::StatusCode;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{AuthUser, Role};
use crate::error::{ApiError, ApiResult};
use crate::routes::{Json, is_unique_violation};
use crate::schema::{point_ledger, users};
use crate::state::AppState;

/// Largest single charge, in won.
pub const MAX_CHARGE: i64 = 10_000_000;

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

#[derive(Serialize, ToSchema)]
pub struct UserView {
    id: i64,
    login_id: String,
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

fn validate_sign_up(req: &SignUp) -> ApiResult<()> {
    let mut errors = Vec::new();
    let login_ok = (4..=32).contains(&req.login_id.chars().count())
        && req
            .login_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !login_ok {
        errors.push(commerce_web::FieldError::new(
            "login_id",
            "must be 4-32 characters of letters, digits, '_', '-' or '.'",
        ));
    }
    if !(8..=128).contains(&req.password.chars().count()) {
        errors.push(commerce_web::FieldError::new(
            "password",
            "must be 8-128 characters",
        ));
    }
    if req.name.trim().is_empty() || req.name.chars().count() > 100 {
        errors.push(commerce_web::FieldError::new(
            "name",
            "must be 1-100 characters",
        ));
    }
    let email_ok = req.email.len() <= 254
        && req.email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !req.email.contains(char::is_whitespace);
    if !email_ok {
        errors.push(commerce_web::FieldError::new(
            "email",
            "must be an email address",
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Sign up.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = SignUp,
    responses((status = 201, body = UserView), (status = 400), (status = 409, description = "LOGIN_ID_TAKEN")))]
pub async fn sign_up(
    State(state): State<AppState>,
    Json(req): Json<SignUp>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    validate_sign_up(&req)?;
    let hash = state.auth.hash_password(req.password).await?;
    let mut conn = state.db.get().await?;
    let inserted = diesel::insert_into(users::table)
        .values((
            users::login_id.eq(&req.login_id),
            users::password_hash.eq(hash),
            users::name.eq(req.name.trim()),
            users::email.eq(&req.email),
        ))
        .returning(users::id)
        .get_result::<i64>(&mut conn)
        .await;
    let id = match inserted {
        Ok(id) => id,
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::conflict(
                "LOGIN_ID_TAKEN",
                "that login id is already taken",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(user.id = id, "user signed up");
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            id,
            login_id: req.login_id,
            name: req.name.trim().to_owned(),
            email: req.email,
        }),
    ))
}

/// Exchange a login id and password for a bearer token.
#[utoipa::path(post, path = "/api/v1/auth/token", tag = "users", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 401)))]
pub async fn token(
    State(state): State<AppState>,
    Json(req): Json<TokenRequest>,
) -> ApiResult<Json<TokenResponse>> {
    const WRONG: ApiError = ApiError::Unauthenticated("wrong login id or password");
    let mut conn = state.db.get().await?;
    let found: Option<(i64, String, String)> = users::table
        .filter(users::login_id.eq(&req.login_id))
        .select((users::id, users::password_hash, users::role))
        .first(&mut conn)
        .await
        .optional()?;
    drop(conn);
    let Some((id, hash, role)) = found else {
        return Err(WRONG);
    };
    if !state.auth.verify_password(req.password, hash).await {
        return Err(WRONG);
    }
    let role = if role == "ADMIN" {
        Role::Admin
    } else {
        Role::User
    };
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
    let (id, login_id, name, email) = users::table
        .find(user.id)
        .select((users::id, users::login_id, users::name, users::email))
        .first::<(i64, String, String, String)>(&mut conn)
        .await?;
    Ok(Json(UserView {
        id,
        login_id,
        name,
        email,
    }))
}

/// The caller's point balance.
#[utoipa::path(get, path = "/api/v1/points", tag = "points", security(("bearer" = [])),
    responses((status = 200, body = Balance), (status = 401)))]
pub async fn balance(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Balance>> {
    let mut conn = state.db.get().await?;
    let balance = users::table
        .find(user.id)
        .select(users::point_balance)
        .first(&mut conn)
        .await?;
    Ok(Json(Balance { balance }))
}

/// Charge points (1 ..= 10,000,000 won per call).
#[utoipa::path(post, path = "/api/v1/points/charge", tag = "points", security(("bearer" = [])),
    request_body = Charge, responses((status = 200, body = Balance), (status = 400), (status = 401)))]
pub async fn charge(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<Charge>,
) -> ApiResult<Json<Balance>> {
    if !(1..=MAX_CHARGE).contains(&req.amount) {
        return Err(ApiError::field(
            "amount",
            format!("must be between 1 and {MAX_CHARGE}"),
        ));
    }
    let mut conn = state.db.get().await?;
    let balance = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let balance: i64 = diesel::update(users::table.find(user.id))
                .set(users::point_balance.eq(users::point_balance + req.amount))
                .returning(users::point_balance)
                .get_result(conn)
                .await?;
            diesel::insert_into(point_ledger::table)
                .values((
                    point_ledger::user_id.eq(user.id),
                    point_ledger::amount.eq(req.amount),
                    point_ledger::kind.eq("CHARGE"),
                ))
                .execute(conn)
                .await?;
            Ok(balance)
        })
        .await?;
    Ok(Json(Balance { balance }))
}

/// Creates the admin account from configuration if it does not exist (several instances may
/// start at once: the unique login id makes that safe).
pub async fn ensure_admin(state: &AppState) -> anyhow::Result<()> {
    let mut conn = state.db.get().await?;
    let exists: Option<i64> = users::table
        .filter(users::login_id.eq(&state.config.admin_login_id))
        .select(users::id)
        .first(&mut conn)
        .await
        .optional()?;
    if exists.is_some() {
        return Ok(());
    }
    let hash = state
        .auth
        .hash_password(state.config.admin_password.clone())
        .await
        .map_err(|e| anyhow::anyhow!("hashing the admin password: {e}"))?;
    diesel::insert_into(users::table)
        .values((
            users::login_id.eq(&state.config.admin_login_id),
            users::password_hash.eq(hash),
            users::name.eq("Administrator"),
            users::email.eq("admin@localhost"),
            users::role.eq("ADMIN"),
        ))
        .on_conflict(users::login_id)
        .do_nothing()
        .execute(&mut conn)
        .await?;
    tracing::info!(login_id = %state.config.admin_login_id, "admin account ensured");
    Ok(())
}
