//! The portal admin's password: argon2id hashes in PHC string form
//! (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`), checked in constant time by the argon2
//! crate. The password itself is never stored or logged; only its hash is, in the
//! configuration (`web.admin_password_hash`) or in the store.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

use super::RandomError;

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The system random generator failed (salt).
    #[error("the system random generator failed")]
    Random,
    /// argon2 refused (e.g. an empty password).
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Whether `hash` is an argon2 PHC string this build can verify against; the reason
/// when not (for the configuration error).
pub fn check_password_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| format!("expected an argon2 PHC string such as $argon2id$v=19$...: {e}"))?;
    match Algorithm::try_from(parsed.algorithm) {
        Ok(_) => {}
        Err(_) => {
            return Err(format!(
                "{} is not an argon2 algorithm (argon2id, argon2i or argon2d)",
                parsed.algorithm
            ));
        }
    }
    if parsed.hash.is_none() {
        return Err("the PHC string has no hash part".to_owned());
    }
    Ok(())
}

/// An argon2id hash (default parameters, random 16-byte salt) of `password`.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Hash("the password is empty".to_owned()));
    }
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| PasswordError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches `hash` (false for a hash that does not parse).
pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A random password of 18 URL-safe characters (108 bits).
pub fn random_password() -> Result<String, RandomError> {
    let mut raw = [0u8; 14];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| RandomError)?;
    let mut text = URL_SAFE_NO_PAD.encode(raw);
    text.truncate(18);
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let hash = hash_password("correct horse").unwrap_or_else(|e| unreachable!("{e}"));
        assert!(hash.starts_with("$argon2id$v=19$"));
        assert!(check_password_hash(&hash).is_ok());
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct horse "));
        assert!(!verify_password(&hash, ""));
        let again = hash_password("correct horse").unwrap_or_else(|e| unreachable!("{e}"));
        assert_ne!(hash, again, "a fresh salt each time");
    }

    #[test]
    fn bad_hashes_are_refused_with_a_reason() {
        assert!(check_password_hash("hunter2").is_err());
        assert!(check_password_hash("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
        assert!(!verify_password("hunter2", "hunter2"));
        assert!(hash_password("").is_err());
    }

    #[test]
    fn random_passwords_differ() {
        let a = random_password().unwrap_or_else(|e| unreachable!("{e}"));
        let b = random_password().unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(a.len(), 18);
        assert_ne!(a, b);
    }
}
