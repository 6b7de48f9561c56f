//! Authentication: argon2id password hashes and HS256 bearer tokens.
//!
//! Rules kept here:
//! - the JWT algorithm is pinned (HS256), `exp`, `iss` and `aud` are required and checked, and a
//!   token of a user that no longer exists is refused;
//! - password hashing (deliberately slow) runs on the blocking pool behind a semaphore, so a
//!   burst of sign-ups or logins cannot stall the async workers that serve everything else;
//! - neither passwords nor tokens are ever logged.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::error::{ApiError, ApiResult};
use crate::schema::users;
use crate::state::AppState;

/// Token issuer and audience.
const ISSUER: &str = "commerce-api";
const AUDIENCE: &str = "commerce-storefront";

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "USER",
            Role::Admin => "ADMIN",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
}

/// Signs and verifies tokens, hashes and checks passwords.
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_seconds: i64,
    argon2: Argon2<'static>,
    hashing: Arc<Semaphore>,
    checked: UserCheckCache,
}

impl Authenticator {
    /// `secret` must be at least 32 bytes (checked by the config).
    pub fn new(secret: &[u8], ttl_seconds: i64) -> Self {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        // OWASP's minimum for argon2id: 19 MiB, 2 iterations, 1 lane.
        let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_seconds,
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            hashing: Arc::new(Semaphore::new(workers)),
            checked: UserCheckCache::default(),
        }
    }

    /// Token lifetime in seconds.
    pub fn ttl_seconds(&self) -> i64 {
        self.ttl_seconds
    }

    /// Issues a token for `user_id`.
    pub fn issue(&self, user_id: i64, role: Role) -> ApiResult<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + self.ttl_seconds,
        };
        jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.encoding,
        )
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("signing a token: {e}")))
    }

    fn verify(&self, token: &str) -> Option<(i64, Role)> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        Some((data.claims.sub.parse().ok()?, data.claims.role))
    }

    /// Hashes a password (argon2id, random salt) off the async workers.
    pub async fn hash_password(self: &Arc<Self>, password: String) -> ApiResult<String> {
        let _permit = self.hashing.acquire().await.map_err(anyhow::Error::new)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            this.argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("hashing a password: {e}")))
        })
        .await
        .map_err(anyhow::Error::new)?
    }

    /// Checks a password against a stored hash off the async workers.
    pub async fn verify_password(self: &Arc<Self>, password: String, hash: String) -> bool {
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    this.argon2
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }
}

/// How long a verified user's existence and role are trusted without asking the database.
/// Bounds how long a deleted or demoted user's token keeps working.
const USER_CHECK_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Recently verified users (id → role), so an authenticated request does not always cost a
/// database read: the hot paths (a coupon rush, cached reads) then never touch PostgreSQL.
#[derive(Default)]
pub struct UserCheckCache {
    entries: std::sync::RwLock<std::collections::HashMap<i64, (std::time::Instant, Role)>>,
}

impl UserCheckCache {
    fn get(&self, id: i64) -> Option<Role> {
        let entries = self.entries.read().expect("lock poisoned");
        entries
            .get(&id)
            .filter(|(at, _)| at.elapsed() < USER_CHECK_TTL)
            .map(|(_, role)| *role)
    }

    fn put(&self, id: i64, role: Role) {
        let mut entries = self.entries.write().expect("lock poisoned");
        if entries.len() >= 100_000 {
            entries.clear();
        }
        entries.insert(id, (std::time::Instant::now(), role));
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub id: i64,
    pub role: Role,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or(ApiError::Unauthenticated("a bearer token is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthenticated("a bearer token is required"))?;
        let (id, _claimed_role) = state
            .auth
            .verify(token.trim())
            .ok_or(ApiError::Unauthenticated("the token is invalid or expired"))?;
        // The token of a deleted user is refused, and the role is the current one (as of at
        // most USER_CHECK_TTL ago).
        if let Some(role) = state.auth.checked.get(id) {
            return Ok(AuthUser { id, role });
        }
        let mut conn = state.db.get().await?;
        let role: Option<String> = users::table
            .find(id)
            .select(users::role)
            .first(&mut conn)
            .await
            .optional()?;
        let role = match role.as_deref() {
            Some("ADMIN") => Role::Admin,
            Some(_) => Role::User,
            None => return Err(ApiError::Unauthenticated("the token's user does not exist")),
        };
        state.auth.checked.put(id, role);
        Ok(AuthUser { id, role })
    }
}

/// The authenticated caller, required to be an admin (403 otherwise).
#[derive(Debug, Clone, Copy)]
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            return Err(ApiError::Forbidden);
        }
        Ok(AdminUser(user))
    }
}
