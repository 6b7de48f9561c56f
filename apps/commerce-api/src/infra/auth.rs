//! Authentication: argon2id password hashes and HS256 bearer tokens.
//!
//! Rules kept here:
//! - the JWT algorithm is pinned (HS256), `exp`, `iss` and `aud` are required and checked, and a
//!   token of a user that no longer exists is refused;
//! - password hashing (deliberately slow) runs on a fixed pool of threads with a bounded queue
//!   ([`crate::infra::passwords`]), so a burst of sign-ups or logins can neither stall the async
//!   workers that serve everything else nor grow the process's memory, and a flood is refused
//!   instead of queued;
//! - a login for an unknown account costs the same argon2 computation as a wrong password;
//! - neither passwords nor tokens are ever logged.

use argon2::Params;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::infra::passwords::{PasswordError, PasswordPool};

/// Token issuer and audience.
const ISSUER: &str = "commerce-api";
const AUDIENCE: &str = "commerce-storefront";

commerce_enums::text_enum! {
    sql, schema;
    /// A user's role (`users.role`, and the token's `role` claim).
    pub enum Role {
        User => "USER",
        Admin => "ADMIN",
        /// A partner's account: sells through `/api/v1/partner/...`, tied to one partner.
        Partner => "PARTNER",
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
    /// The session the token belongs to (`domain::sessions`); absent on tokens minted without
    /// one (tests, tools), which can only expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<uuid::Uuid>,
}

/// A key's id: the first 8 bytes of its SHA-256, in hex (names the key, reveals nothing of it).
pub fn key_id(secret: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(secret)[..8])
}

/// Signs and verifies tokens, hashes and checks passwords.
pub struct Authenticator {
    encoding: EncodingKey,
    /// The signing key's id, sent as the token header's `kid`.
    key_id: String,
    /// Verification keys by id: the signing key first, then the previous ones
    /// (`COMMERCE_JWT_PREVIOUS_SECRETS`) whose tokens are still honoured during a rotation.
    decoding: Vec<(String, DecodingKey)>,
    validation: Validation,
    ttl_seconds: i64,
    passwords: PasswordPool,
    /// Users whose existence and role were checked recently.
    pub checked: UserCheckCache,
}

impl Authenticator {
    /// `secret` must be at least 32 bytes (checked by the config); `hashing` sizes the
    /// password-hashing threads and their queue.
    pub fn new(secret: &[u8], ttl_seconds: i64, hashing: HashingSettings) -> Self {
        crate::infra::jwt::install();
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        // OWASP's minimum for argon2id: 19 MiB, 2 iterations, 1 lane.
        let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
        Self {
            encoding: EncodingKey::from_secret(secret),
            key_id: key_id(secret),
            decoding: vec![(key_id(secret), DecodingKey::from_secret(secret))],
            validation,
            ttl_seconds,
            passwords: PasswordPool::new(params, hashing.threads, hashing.queue),
            checked: UserCheckCache::default(),
        }
    }

    /// Also honours tokens signed with the `previous` secrets (a key rotation: sign with the new
    /// key, keep the old one here until its last tokens expired).
    pub fn accepting(mut self, previous: &[String]) -> Self {
        for secret in previous {
            let secret = secret.as_bytes();
            self.decoding
                .push((key_id(secret), DecodingKey::from_secret(secret)));
        }
        self
    }

    /// Token lifetime in seconds.
    pub fn ttl_seconds(&self) -> i64 {
        self.ttl_seconds
    }

    /// Issues a token for `user_id`, outside any session (it can only expire).
    pub fn issue(&self, user_id: i64, role: Role) -> anyhow::Result<String> {
        self.sign(user_id, role, None)
    }

    /// Issues a token for `user_id` in session `sid`: refused everywhere once it ends.
    pub fn issue_in(&self, user_id: i64, role: Role, sid: uuid::Uuid) -> anyhow::Result<String> {
        self.sign(user_id, role, Some(sid))
    }

    fn sign(&self, user_id: i64, role: Role, sid: Option<uuid::Uuid>) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + self.ttl_seconds,
            sid,
        };
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| anyhow::anyhow!("signing a token: {e}"))
    }

    /// The user id and claimed role of a valid token.
    /// The key is the one the header's `kid` names; a token without one (signed before key ids)
    /// is tried against each key.
    pub fn verify(&self, token: &str) -> Option<(i64, Role)> {
        self.verify_in(token).map(|(id, role, _)| (id, role))
    }

    /// The user id, claimed role and session of a valid token.
    pub fn verify_in(&self, token: &str) -> Option<(i64, Role, Option<uuid::Uuid>)> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let data = match header.kid {
            Some(kid) => {
                let (_, key) = self.decoding.iter().find(|(id, _)| *id == kid)?;
                jsonwebtoken::decode::<Claims>(token, key, &self.validation).ok()?
            }
            None => self.decoding.iter().find_map(|(_, key)| {
                jsonwebtoken::decode::<Claims>(token, key, &self.validation).ok()
            })?,
        };
        Some((
            data.claims.sub.parse().ok()?,
            data.claims.role,
            data.claims.sid,
        ))
    }

    /// Hashes a password (argon2id, random salt) off the async workers.
    pub async fn hash_password(&self, password: String) -> Result<String, PasswordError> {
        self.passwords.hash(password).await
    }

    /// Checks a password against a stored hash off the async workers; with no stored hash (an
    /// unknown account) the same work is done and the answer is `false`.
    pub async fn verify_password(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        self.passwords.verify(password, hash).await
    }

    /// How many argon2 computations this instance has run.
    pub fn password_work_done(&self) -> u64 {
        self.passwords.computed()
    }
}

/// The password-hashing pool's size.
#[derive(Debug, Clone, Copy)]
pub struct HashingSettings {
    /// Threads computing hashes, each holding 19 MiB of working memory.
    pub threads: usize,
    /// Jobs that may wait for a thread; beyond that a sign-up or login is refused with 503.
    pub queue: usize,
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
