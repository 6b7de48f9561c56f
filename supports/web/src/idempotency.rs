//! The `Idempotency-Key` request header, read and checked in one place for every app: 1-255
//! visible ASCII characters (no spaces), else 400 `INVALID_IDEMPOTENCY_KEY`. A handler takes
//! `Option<IdempotencyKey>` (the header is optional) or `IdempotencyKey` (required). What a key
//! replays is the route's business: `commerce_db::idempotency` locks it and finds the earlier
//! request; [`reused`] is the one answer to a key sent again with a different request.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;

use crate::Problem;

/// The header's name.
pub const HEADER: &str = "idempotency-key";

/// The longest key accepted.
pub const MAX_LEN: usize = 255;

/// A valid `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key, if `value` is one: 1-[`MAX_LEN`] visible ASCII characters.
    pub fn parse(value: &[u8]) -> Result<Self, Problem> {
        if (1..=MAX_LEN).contains(&value.len()) && value.iter().all(u8::is_ascii_graphic) {
            // Visible ASCII is UTF-8.
            Ok(Self(String::from_utf8_lossy(value).into_owned()))
        } else {
            Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "INVALID_IDEMPOTENCY_KEY",
                format!("Idempotency-Key must be 1-{MAX_LEN} visible ASCII characters"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Problem> {
        parts
            .headers
            .get(HEADER)
            .map(|v| Self::parse(v.as_bytes()))
            .transpose()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        <Self as OptionalFromRequestParts<S>>::from_request_parts(parts, state)
            .await?
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_IDEMPOTENCY_KEY",
                    "an Idempotency-Key header is required",
                )
            })
    }
}

/// 422 `IDEMPOTENCY_KEY_REUSED`: the key was used with a different request.
pub fn reused() -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "IDEMPOTENCY_KEY_REUSED",
        "this Idempotency-Key was used with a different request",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert_eq!(IdempotencyKey::parse(b"c-1").unwrap().as_str(), "c-1");
        assert!(IdempotencyKey::parse(&[b'k'; MAX_LEN]).is_ok());
        for bad in [
            &b""[..],
            b"has space",
            b"tab\there",
            "é".as_bytes(),
            &[b'k'; MAX_LEN + 1],
        ] {
            let p = IdempotencyKey::parse(bad).unwrap_err();
            assert_eq!(
                (p.status, p.code),
                (400, "INVALID_IDEMPOTENCY_KEY"),
                "{bad:?}"
            );
        }
    }
}
