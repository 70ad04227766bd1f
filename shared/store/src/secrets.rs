//! Secret values at rest: sealed with ChaCha20-Poly1305 under the control plane's key
//! (`SLIPWAY_SECRETS_KEY`, 32 bytes as 64 hex digits), a random nonce per value and the
//! variable's name as associated data, so a sealed value cannot be passed off under another
//! name. Stored as `v1:` + base64(nonce ‖ ciphertext ‖ tag).

use base64::{engine::general_purpose::STANDARD, Engine as _};
use ring::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN},
    rand::{SecureRandom, SystemRandom},
};

const PREFIX: &str = "v1:";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("SLIPWAY_SECRETS_KEY must be 64 hex digits (32 bytes)")]
    BadKey,
    #[error("secret variables need a key: start the control plane with SLIPWAY_SECRETS_KEY")]
    NoKey,
    #[error("secret {0} cannot be opened: sealed under another key, or damaged")]
    Unsealable(String),
    #[error("no randomness for a nonce")]
    Random,
}

/// The key secret values are sealed under.
pub struct SecretsKey {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(…)")
    }
}

impl SecretsKey {
    /// A key from its 64 hex digits.
    pub fn parse(hex: &str) -> Result<Self, SecretsError> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(SecretsError::BadKey);
        }
        let bytes = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| SecretsError::BadKey)?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| SecretsError::BadKey)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        })
    }

    /// A new random key, as 64 hex digits (what `slipway dev` keeps in its state directory).
    pub fn generate() -> Result<String, SecretsError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretsError::Random)?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn seal(&self, name: &str, value: &str) -> Result<String, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SecretsError::Random)?;
        let mut sealed = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| SecretsError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    pub fn open(&self, name: &str, sealed: &str) -> Result<String, SecretsError> {
        let unsealable = || SecretsError::Unsealable(name.to_string());
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| STANDARD.decode(b).ok())
            .filter(|b| b.len() >= NONCE_LEN)
            .ok_or_else(unsealable)?;
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unsealable())?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buf)
            .map_err(|_| unsealable())?;
        String::from_utf8(plain.to_vec()).map_err(|_| unsealable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretsKey {
        SecretsKey::parse(&SecretsKey::generate().unwrap()).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_under_its_key_and_name_only() {
        let k = key();
        let sealed = k.seal("DB_PASSWORD", "hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_ne!(
            sealed,
            k.seal("DB_PASSWORD", "hunter2").unwrap(),
            "fresh nonce"
        );
        assert_eq!(k.open("DB_PASSWORD", &sealed).unwrap(), "hunter2");
        assert!(k.open("OTHER", &sealed).is_err());
        assert!(key().open("DB_PASSWORD", &sealed).is_err());
        assert!(k.open("DB_PASSWORD", "v1:AAAA").is_err());
    }

    #[test]
    fn keys_are_64_hex_digits() {
        assert!(SecretsKey::parse(&"ab".repeat(32)).is_ok());
        for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(SecretsKey::parse(bad).is_err(), "{bad}");
        }
    }
}
