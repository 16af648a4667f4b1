//! Signing and checking the emulator's JWTs, the JWKS, random identifiers and PKCE.
//!
//! The key is `test-signing-key.pk8` next to this file: a fixed 2048-bit RSA key in DER
//! (an RSAPrivateKey, despite the extension) that is **published with the emulator's source and is never a secret**. It signs id_tokens
//! and access tokens (RS256); its public half is served at `/{tenant}/discovery/v2.0/keys`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::rsa::PublicKeyComponents;
use ring::signature::{self, RsaKeyPair, UnparsedPublicKey};
use serde_json::{Value, json};

use super::EmulatorError;

/// The emulator's published test signing key (DER). Not a secret.
const SIGNING_KEY: &[u8] = include_bytes!("test-signing-key.pk8");

/// Base64url without padding, as JWTs and JWKS use it.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding.
pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

/// SHA-256, as PKCE S256 uses it.
pub(crate) fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// Checks a PKCE verifier against the challenge (RFC 7636 §4.6).
pub(crate) fn pkce_matches(verifier: &str, challenge: &str, method: &str) -> bool {
    if method.eq_ignore_ascii_case("plain") {
        verifier == challenge
    } else {
        b64url(&sha256(verifier.as_bytes())) == challenge
    }
}

/// The RS256 signer and its public key.
pub(crate) struct Signer {
    key: RsaKeyPair,
    public_der: Vec<u8>,
    kid: String,
    n: Vec<u8>,
    e: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

/// Why a JWT was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwtError {
    /// Not three base64url parts of JSON.
    Malformed,
    /// The signature does not verify with the emulator's key.
    BadSignature,
}

impl Signer {
    /// Loads the built-in test key.
    pub(crate) fn new() -> Result<Self, EmulatorError> {
        // the file holds an RSAPrivateKey (PKCS#1 DER); PKCS#8 is accepted too
        let key = RsaKeyPair::from_pkcs8(SIGNING_KEY)
            .or_else(|_| RsaKeyPair::from_der(SIGNING_KEY))
            .map_err(|e| EmulatorError::Key(e.to_string()))?;
        let public_der = key.public().as_ref().to_vec();
        let components: PublicKeyComponents<Vec<u8>> = key.public().into();
        let kid = b64url(&sha256(&components.n)[..16]);
        Ok(Self {
            key,
            public_der,
            kid,
            n: components.n,
            e: components.e,
            rng: SystemRandom::new(),
        })
    }

    /// The JWKS document (`{"keys":[{kty,use,kid,n,e,alg}]}`).
    pub(crate) fn jwks(&self, issuer: &str) -> Value {
        json!({
            "keys": [{
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": self.kid,
                "x5t": self.kid,
                "n": b64url(&self.n),
                "e": b64url(&self.e),
                "issuer": issuer,
            }]
        })
    }

    /// Signs `claims` as an RS256 JWT.
    pub(crate) fn sign(&self, claims: &Value) -> Result<String, EmulatorError> {
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| EmulatorError::Key("RSA signing failed".into()))?;
        Ok(format!("{signing_input}.{}", b64url(&sig)))
    }

    /// Checks the signature of a JWT this emulator issued and returns its claims.
    pub(crate) fn verify(&self, token: &str) -> Result<Value, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Value = b64url_decode(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        let claims: Value = b64url_decode(c)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        let sig = b64url_decode(s).ok_or(JwtError::Malformed)?;
        if header.get("alg").and_then(Value::as_str) != Some("RS256") {
            return Err(JwtError::BadSignature);
        }
        let signing_input = &token[..h.len() + 1 + c.len()];
        UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &self.public_der)
            .verify(signing_input.as_bytes(), &sig)
            .map_err(|_| JwtError::BadSignature)?;
        Ok(claims)
    }

    /// `n` random bytes.
    pub(crate) fn random_bytes(&self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        // SystemRandom only fails when the OS has no randomness source at all
        if self.rng.fill(&mut buf).is_err() {
            buf.iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = i as u8 ^ 0x5a);
        }
        buf
    }

    /// A random opaque token (codes, refresh tokens): base64url of 32 random bytes,
    /// behind a prefix that says what it is.
    pub(crate) fn opaque(&self, prefix: &str) -> String {
        format!("{prefix}{}", b64url(&self.random_bytes(32)))
    }

    /// A random GUID in the 8-4-4-4-12 form (version 4).
    pub(crate) fn guid(&self) -> String {
        let mut b = self.random_bytes(16);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify() -> Result<(), EmulatorError> {
        let signer = Signer::new()?;
        let token = signer.sign(&json!({"a": 1}))?;
        assert_eq!(signer.verify(&token), Ok(json!({"a": 1})));
        let mut tampered = token.clone();
        tampered.push('A');
        assert!(signer.verify(&tampered).is_err());
        assert_eq!(signer.verify("a.b"), Err(JwtError::Malformed));
        assert_eq!(signer.guid().len(), 36);
        Ok(())
    }

    #[test]
    fn pkce_s256_rfc7636_appendix_b() {
        assert!(pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "S256"
        ));
        assert!(!pkce_matches(
            "other",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "S256"
        ));
    }
}
