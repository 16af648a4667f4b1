//! The key that encrypts secrets at rest, and sealing/opening values with it.
//!
//! AES-256-GCM (`ring::aead`), a fresh random 96-bit nonce per value, and the value's
//! identity (table, row, field) as associated data, so a ciphertext copied into
//! another row or field fails to decrypt. A sealed value is
//! `version (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes)`.

use std::fmt;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::Path;

use base64::Engine;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE_NO_PAD,
};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::error::{KeyError, StoreError};

/// The environment variable [`KeySource::default_env`] reads the key from.
pub const KEY_ENV: &str = "PRESENCE_PROXY_STORE_KEY";

/// Key length in bytes (AES-256).
pub const KEY_LEN: usize = 32;

const FORMAT_V1: u8 = 1;

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// The 32-byte key that encrypts tokens and PKCE verifiers in the store.
///
/// `Debug` never shows the key.
pub struct EncryptionKey {
    key: LessSafeKey,
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey([redacted])")
    }
}

/// Where the key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding the key as base64 text (or as 32 raw bytes). Created with a new
    /// random key and mode 0600 when missing; never overwritten.
    File(std::path::PathBuf),
    /// An environment variable holding the key as base64. Never created.
    Env(String),
}

impl KeySource {
    /// [`KeySource::Env`] with [`KEY_ENV`].
    pub fn default_env() -> Self {
        Self::Env(KEY_ENV.to_owned())
    }

    /// Loads the key (creating the file when it is missing).
    pub fn load(&self) -> Result<EncryptionKey, KeyError> {
        match self {
            Self::File(path) => EncryptionKey::load_or_create(path),
            Self::Env(var) => EncryptionKey::from_env(var),
        }
    }
}

impl EncryptionKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        // AES_256_GCM accepts exactly 32 bytes, which the array type guarantees.
        match UnboundKey::new(&AES_256_GCM, bytes) {
            Ok(k) => Self {
                key: LessSafeKey::new(k),
            },
            Err(_) => unreachable!("AES-256-GCM takes a 32-byte key"),
        }
    }

    /// A new random key.
    pub fn generate() -> Result<(Self, [u8; KEY_LEN]), KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        Ok((Self::from_bytes(&bytes), bytes))
    }

    /// A key from base64 text (standard or URL-safe alphabet, padding optional,
    /// surrounding whitespace ignored). `origin` names where it came from, for errors.
    pub fn from_base64(text: &str, origin: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let decoded = STANDARD_LENIENT
            .decode(text)
            .or_else(|_| URL_SAFE_LENIENT.decode(text))
            .map_err(|_| KeyError::Base64 {
                origin: origin.to_owned(),
            })?;
        Self::from_slice(&decoded, origin)
    }

    fn from_slice(bytes: &[u8], origin: &str) -> Result<Self, KeyError> {
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::Length {
            origin: origin.to_owned(),
            len: bytes.len(),
        })?;
        Ok(Self::from_bytes(&array))
    }

    /// The key from the environment variable `var` (base64).
    pub fn from_env(var: &str) -> Result<Self, KeyError> {
        let value = std::env::var(var).map_err(|_| KeyError::EnvMissing {
            var: var.to_owned(),
        })?;
        Self::from_base64(&value, &format!("environment variable {var}"))
    }

    /// The key from `path`, which holds it as base64 text (or as exactly 32 raw
    /// bytes). When the file does not exist, a new random key is written to it, with
    /// mode 0600 on Unix (its directory is created if needed). An existing file is
    /// never overwritten, even a bad one: that is an error to fix by hand.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        match fs::read(path) {
            Ok(bytes) => return Self::from_file_bytes(path, &bytes),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let (key, bytes) = Self::generate()?;
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = match options.open(path) {
            Ok(f) => f,
            // Someone else created it in between: use theirs.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let bytes = fs::read(path).map_err(io)?;
                return Self::from_file_bytes(path, &bytes);
            }
            Err(e) => return Err(io(e)),
        };
        let mut text = STANDARD.encode(bytes);
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        tracing::info!(path = %path.display(), "created a new store encryption key file");
        Ok(key)
    }

    fn from_file_bytes(path: &Path, bytes: &[u8]) -> Result<Self, KeyError> {
        warn_if_readable_by_others(path);
        let origin = format!("file {}", path.display());
        if bytes.len() == KEY_LEN {
            return Self::from_slice(bytes, &origin);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| KeyError::Base64 {
            origin: origin.clone(),
        })?;
        Self::from_base64(text, &origin)
    }

    /// Encrypts `plaintext`, bound to `aad` (the value's identity).
    pub(crate) fn seal(
        &self,
        rng: &SystemRandom,
        aad: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| StoreError::Random)?;
        let mut in_out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| StoreError::Random)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&in_out);
        Ok(out)
    }

    /// Decrypts a value sealed by [`EncryptionKey::seal`] with the same `aad`. `None`
    /// when it does not authenticate (wrong key, wrong row, altered bytes, unknown
    /// format).
    pub(crate) fn open(&self, aad: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if version != FORMAT_V1 || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut in_out = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut in_out)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "the store key file can be read by other users; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// `n` random bytes as URL-safe base64 without padding (OAuth `state`, PKCE
/// verifiers, nonces).
pub fn random_url_safe(n: usize) -> Result<String, StoreError> {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_aad_binding() {
        let rng = SystemRandom::new();
        let (key, _) = EncryptionKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let sealed = key
            .seal(&rng, "row-a", b"hello")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sealed.len(), 1 + 12 + 5 + 16);
        assert_eq!(key.open("row-a", &sealed).as_deref(), Some(&b"hello"[..]));
        assert_eq!(key.open("row-b", &sealed), None);
        let (other, _) = EncryptionKey::generate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(other.open("row-a", &sealed), None);
        assert_eq!(key.open("row-a", &sealed[..10]), None);
        assert_eq!(key.open("row-a", &[]), None);
        // Two seals of the same value differ (random nonce).
        let again = key
            .seal(&rng, "row-a", b"hello")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(sealed, again);
    }

    #[test]
    fn base64_forms() {
        let bytes = [7u8; 32];
        let std = STANDARD.encode(bytes);
        let url = URL_SAFE_NO_PAD.encode(bytes);
        assert!(EncryptionKey::from_base64(&format!(" {std}\n"), "t").is_ok());
        assert!(EncryptionKey::from_base64(&url, "t").is_ok());
        assert!(matches!(
            EncryptionKey::from_base64(&STANDARD.encode([1u8; 16]), "t"),
            Err(KeyError::Length { len: 16, .. })
        ));
        assert!(matches!(
            EncryptionKey::from_base64("not base64!!", "t"),
            Err(KeyError::Base64 { .. })
        ));
    }

    #[test]
    fn debug_hides_key() {
        let key = EncryptionKey::from_bytes(&[1u8; 32]);
        assert_eq!(format!("{key:?}"), "EncryptionKey([redacted])");
    }
}
