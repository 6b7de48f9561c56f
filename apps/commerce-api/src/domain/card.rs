//! Card numbers: validated, masked for display, and sealed (AES-256-GCM) for the short time a
//! payment has not yet reached the gateway. Never logged, never stored in the clear.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};

/// A well-formed card number, `####-####-####-####`. Its `Debug` shows only the masked form,
/// and it has no `Display` or `Serialize`: the digits reach only the gateway and the vault.
#[derive(PartialEq, Eq)]
pub struct CardNumber(String);

impl CardNumber {
    /// Parses `####-####-####-####`.
    pub fn parse(s: &str) -> Option<Self> {
        let well_formed = s.len() == 19
            && s.split('-').count() == 4
            && s.split('-')
                .all(|g| g.len() == 4 && g.bytes().all(|b| b.is_ascii_digit()));
        well_formed.then(|| Self(s.to_owned()))
    }

    /// `1234-5678-9012-3456` → `1234-****-****-3456`.
    pub fn masked(&self) -> String {
        format!("{}-****-****-{}", &self.0[..4], &self.0[15..])
    }

    /// The full number, for the gateway and the vault only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CardNumber({})", self.masked())
    }
}

/// Seals card numbers with the configured key and opens them with it or a previous one
/// (`PAYMENT_PREVIOUS_CARD_KEYS`, kept during a key rotation until nothing sealed with them is
/// left unpaid).
pub struct CardVault {
    current: Aes256Gcm,
    previous: Vec<Aes256Gcm>,
}

impl CardVault {
    /// `key`: 32 bytes.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            current: Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)),
            previous: Vec::new(),
        }
    }

    /// Also opens what the `previous` keys sealed.
    pub fn opening(mut self, previous: &[[u8; 32]]) -> Self {
        self.previous.extend(
            previous
                .iter()
                .map(|key| Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key))),
        );
        self
    }

    /// Nonce (12 bytes) followed by the ciphertext and tag.
    pub fn seal(&self, card_no: &CardNumber) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let mut sealed = nonce.to_vec();
        sealed.extend(
            self.current
                .encrypt(&nonce, card_no.expose().as_bytes())
                .expect("AES-GCM encryption of a short message cannot fail"),
        );
        sealed
    }

    /// The card number, or `None` when the data was not sealed with this key.
    pub fn open(&self, sealed: &[u8]) -> Option<CardNumber> {
        if sealed.len() < 12 {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(12);
        let nonce = Nonce::from(<[u8; 12]>::try_from(nonce).ok()?);
        // GCM's tag tells the right key: any other fails to decrypt.
        let plain = std::iter::once(&self.current)
            .chain(&self.previous)
            .find_map(|key| key.decrypt(&nonce, ciphertext).ok())?;
        CardNumber::parse(std::str::from_utf8(&plain).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_validated_and_masked() {
        let card = CardNumber::parse("1234-5678-9012-3456").expect("valid");
        for bad in [
            "1234567890123456",
            "1234-5678-9012-345",
            "1234-5678-9012-34567",
            "abcd-5678-9012-3456",
            "1234-5678-9012-3456-",
        ] {
            assert!(CardNumber::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(card.masked(), "1234-****-****-3456");
        assert_eq!(format!("{card:?}"), "CardNumber(1234-****-****-3456)");
    }

    #[test]
    fn sealed_numbers_open_only_with_their_key_and_hide_the_number() {
        let vault = CardVault::new(&[7; 32]);
        let card = || CardNumber::parse("1234-5678-9012-3456").unwrap();
        let sealed = vault.seal(&card());
        assert!(!String::from_utf8_lossy(&sealed).contains("5678"));
        assert_eq!(vault.open(&sealed), Some(card()));
        assert_eq!(CardVault::new(&[8; 32]).open(&sealed), None);
        assert_ne!(vault.seal(&card()), sealed, "fresh nonce each time");
    }

    #[test]
    fn after_a_key_rotation_old_seals_still_open_and_new_ones_use_the_new_key() {
        let old = CardVault::new(&[7; 32]);
        let card = || CardNumber::parse("1234-5678-9012-3456").unwrap();
        let sealed_before = old.seal(&card());
        let rotated = CardVault::new(&[9; 32]).opening(&[[7; 32]]);
        assert_eq!(rotated.open(&sealed_before), Some(card()));
        let sealed_after = rotated.seal(&card());
        assert_eq!(old.open(&sealed_after), None, "sealed with the new key");
        assert_eq!(CardVault::new(&[9; 32]).open(&sealed_after), Some(card()));
    }
}
