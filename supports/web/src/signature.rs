//! Signed webhooks, and API keys compared without leaking them through timing.
//!
//! A webhook's sender signs `"<unix seconds>.<raw body>"` with HMAC-SHA256 under a shared secret
//! and sends `X-Signature: t=<unix seconds>,v1=<hex digest>`. The receiver checks, before it
//! reads anything the body names: the header is present and well formed, the timestamp is
//! within the tolerance of its own clock (a captured request cannot be replayed later), and the
//! digest matches under one of its secrets. Two secrets are accepted at once so that a secret can
//! be rotated without dropping a webhook: the receiver adds the new one, the sender switches to
//! it, the receiver drops the old one.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The header carrying a webhook's signature.
pub const HEADER: &str = "x-signature";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Signature` value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(digest))
}

/// Why a webhook's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No `X-Signature` header.
    Missing,
    /// Not `t=<unix seconds>,v1=<hex>`.
    Malformed,
    /// Signed too long ago, or too far in the future.
    Stale,
    /// No secret produces this digest.
    Mismatch,
}

impl Refused {
    /// A short label (metrics, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Missing => "missing",
            Refused::Malformed => "malformed",
            Refused::Stale => "stale",
            Refused::Mismatch => "mismatch",
        }
    }
}

/// Checks `header` (the `X-Signature` value) over `body` against each of `secrets`, at `now`
/// (unix seconds), accepting timestamps at most `tolerance_seconds` away. The digest comparison
/// is constant-time.
pub fn verify<K: AsRef<[u8]>>(
    header: Option<&str>,
    body: &[u8],
    secrets: &[K],
    now: i64,
    tolerance_seconds: i64,
) -> Result<(), Refused> {
    let header = header.ok_or(Refused::Missing)?;
    let mut timestamp = None;
    let mut digests = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", d)) => digests.push(hex::decode(d).map_err(|_| Refused::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(Refused::Malformed)?;
    if digests.is_empty() {
        return Err(Refused::Malformed);
    }
    if (now - timestamp).abs() > tolerance_seconds {
        return Err(Refused::Stale);
    }
    let matches = secrets.iter().any(|secret| {
        digests.iter().any(|d| {
            mac(secret.as_ref(), timestamp, body)
                .verify_slice(d)
                .is_ok()
        })
    });
    if matches {
        Ok(())
    } else {
        Err(Refused::Mismatch)
    }
}

/// HMAC-SHA256 under `key` of `parts`, each length-prefixed (so parts cannot run into each
/// other), in hex: a digest of secret-bearing input that cannot be reversed by guessing it.
pub fn keyed_digest(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `presented` is one of `keys`. Compares SHA-256 digests, so the time taken says nothing
/// about how much of a key was right.
pub fn is_one_of<K: AsRef<[u8]>>(presented: &[u8], keys: &[K]) -> bool {
    let presented = Sha256::digest(presented);
    keys.iter().fold(false, |found, k| {
        found | (Sha256::digest(k.as_ref()) == presented)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_signature_verifies_under_either_secret_and_nothing_else_does() {
        let body = br#"{"transaction_key":"T1","order_id":"7"}"#;
        let header = sign(b"new-secret", NOW, body);
        let secrets = ["old-secret", "new-secret"];
        assert_eq!(verify(Some(&header), body, &secrets, NOW, 300), Ok(()));
        assert_eq!(
            verify(Some(&header), body, &secrets, NOW + 300, 300),
            Ok(())
        );
        assert_eq!(
            verify(Some(&header), body, &["old-secret"], NOW, 300),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            verify(
                Some(&header),
                br#"{"transaction_key":"T2"}"#,
                &secrets,
                NOW,
                300
            ),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            verify(Some(&header), body, &secrets, NOW + 301, 300),
            Err(Refused::Stale)
        );
        assert_eq!(
            verify(Some(&header), body, &secrets, NOW - 301, 300),
            Err(Refused::Stale)
        );
        // The timestamp is signed: moving it breaks the digest.
        let moved = header.replace(&NOW.to_string(), &(NOW + 100).to_string());
        assert_eq!(
            verify(Some(&moved), body, &secrets, NOW, 300),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            verify(None, body, &secrets, NOW, 300),
            Err(Refused::Missing)
        );
        for bad in ["", "t=abc,v1=00", "v1=00", "t=1", "t=1,v1=zz"] {
            assert_eq!(
                verify(Some(bad), body, &secrets, NOW, 300),
                Err(Refused::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn keyed_digests_depend_on_the_key_and_part_boundaries() {
        let a = keyed_digest(b"key-1", &[b"ab", b"c"]);
        assert_eq!(a, keyed_digest(b"key-1", &[b"ab", b"c"]));
        assert_ne!(a, keyed_digest(b"key-2", &[b"ab", b"c"]));
        assert_ne!(a, keyed_digest(b"key-1", &[b"a", b"bc"]));
    }

    #[test]
    fn keys_are_matched_whole() {
        let keys = ["key-one", "key-two"];
        assert!(is_one_of(b"key-two", &keys));
        assert!(!is_one_of(b"key-tw", &keys));
        assert!(!is_one_of(b"", &keys));
        assert!(!is_one_of(b"key-one", &[] as &[&str]));
    }
}
