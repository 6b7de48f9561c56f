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
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// Token issuer and audience.
const ISSUER: &str = "commerce-api";
const AUDIENCE: &str = "commerce-storefront";

crate::text_enum! {
    /// A user's role (`users.role`, and the token's `role` claim).
    pub enum Role {
        User => "USER",
        Admin => "ADMIN",
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
    /// Users whose existence and role were checked recently.
    pub checked: UserCheckCache,
}

impl Authenticator {
    /// `secret` must be at least 32 bytes (checked by the config).
    pub fn new(secret: &[u8], ttl_seconds: i64) -> Self {
        crate::infra::jwt::install();
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
    pub fn issue(&self, user_id: i64, role: Role) -> anyhow::Result<String> {
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
        .map_err(|e| anyhow::anyhow!("signing a token: {e}"))
    }

    /// The user id and claimed role of a valid token.
    pub fn verify(&self, token: &str) -> Option<(i64, Role)> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        Some((data.claims.sub.parse().ok()?, data.claims.role))
    }

    /// Hashes a password (argon2id, random salt) off the async workers.
    pub async fn hash_password(self: &Arc<Self>, password: String) -> anyhow::Result<String> {
        let _permit = self.hashing.acquire().await.map_err(anyhow::Error::new)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            this.argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
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
    /// The role of a user checked less than `USER_CHECK_TTL` ago.
    pub fn get(&self, id: i64) -> Option<Role> {
        let entries = self.entries.read().expect("lock poisoned");
        entries
            .get(&id)
            .filter(|(at, _)| at.elapsed() < USER_CHECK_TTL)
            .map(|(_, role)| *role)
    }

    /// Records that `id` exists with `role`.
    pub fn put(&self, id: i64, role: Role) {
        let mut entries = self.entries.write().expect("lock poisoned");
        if entries.len() >= 100_000 {
            entries.clear();
        }
        entries.insert(id, (std::time::Instant::now(), role));
    }
}
