//! jsonwebtoken's cryptography, HS256 only.
//!
//! jsonwebtoken 10 takes its signing backend from a process-wide `CryptoProvider`. Its bundled
//! `rust_crypto` provider brings RSA, ECDSA and EdDSA along (and with them `rsa`'s
//! RUSTSEC-2023-0071), none of which this API uses: tokens are HS256. This provider answers HS256
//! with `hmac` + `sha2` (verification is `hmac`'s constant-time comparison) and refuses every
//! other algorithm.

use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

struct Hs256(HmacSha256);

impl Hs256 {
    fn new(secret: &[u8]) -> Result<Self> {
        HmacSha256::new_from_slice(secret)
            .map(Self)
            .map_err(|_| ErrorKind::InvalidKeyFormat.into())
    }

    fn mac(&self, message: &[u8]) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(message);
        mac
    }
}

impl signature::Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        Ok(self.mac(message).finalize().into_bytes().to_vec())
    }
}

impl signature::Verifier<Vec<u8>> for Hs256 {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), signature::Error> {
        self.mac(message)
            .verify_slice(signature)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    match algorithm {
        Algorithm::HS256 => Ok(Box::new(Hs256::new(key.try_get_hmac_secret()?)?)),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    match algorithm {
        Algorithm::HS256 => Ok(Box::new(Hs256::new(key.try_get_hmac_secret()?)?)),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

static HS256_ONLY: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    jwk_utils: JwkUtils::new_unimplemented(),
};

/// Installs the provider for this process (once; later calls change nothing).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = HS256_ONLY.install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Header, Validation, decode, encode};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Claims {
        sub: String,
        exp: u64,
    }

    #[test]
    fn hs256_signs_and_verifies_and_nothing_else_is_offered() {
        install();
        let key = b"0123456789abcdef0123456789abcdef";
        let claims = Claims {
            sub: "7".into(),
            exp: 4_000_000_000,
        };
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key),
        )
        .unwrap();
        let validation = Validation::new(Algorithm::HS256);
        let decoded = decode::<Claims>(&token, &DecodingKey::from_secret(key), &validation);
        assert_eq!(decoded.unwrap().claims.sub, "7");
        let other_key = decode::<Claims>(
            &token,
            &DecodingKey::from_secret(b"another-secret-another-secret-xx"),
            &validation,
        );
        assert!(
            other_key.is_err(),
            "a token signed with another key is refused"
        );
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(decode::<Claims>(&tampered, &DecodingKey::from_secret(key), &validation).is_err());
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(key),
        );
        assert!(hs384.is_err(), "only HS256 is provided");
    }
}
