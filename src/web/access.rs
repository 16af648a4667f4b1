//! Who may do what on the OAuth routes, pluggable: the service asks every registered
//! [`AccessPolicy`] and allows an [`Action`] when one of them does.
//!
//! There is no login system yet (the portal issue adds admin and user sessions as further
//! policies). Until then:
//!
//! - [`OpenStarts`] lets anyone *start* admin consent, the domain sign-in or a pairing:
//!   each ends at the identity platform, which decides who may consent or sign in, and a
//!   pairing is refused unless the account that signs in is the extension's.
//! - [`PairingSessions`] lets the browser that paired an extension unpair it: the pairing
//!   callback sets an `HttpOnly; SameSite=Lax` cookie holding a random secret, bound in
//!   memory (expiring, lost on restart) to that extension. Only the SHA-256 of a secret
//!   is kept.
//!
//! Unpair is a POST; SameSite=Lax keeps the cookie off cross-site POSTs, and the handler
//! also refuses a cross-origin `Origin` or `Sec-Fetch-Site: cross-site`.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::time::Instant;

/// Something a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Start admin consent.
    StartAdminConsent,
    /// Start the domain sign-in.
    StartDomainSignIn,
    /// Start pairing this extension.
    StartPairing {
        /// The extension.
        extension: &'a str,
    },
    /// Unpair this extension.
    Unpair {
        /// The extension.
        extension: &'a str,
    },
}

/// One rule of who may do what. `allows` is called with the request's headers (cookies
/// included); an action is allowed when any registered policy allows it.
pub trait AccessPolicy: Send + Sync + fmt::Debug {
    /// Whether this policy allows `action` for a request with `headers`.
    fn allows(&self, action: &Action<'_>, headers: &HeaderMap) -> bool;
}

/// Allows starting every flow, to anyone (the default until the portal has logins).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenStarts;

impl AccessPolicy for OpenStarts {
    fn allows(&self, action: &Action<'_>, _headers: &HeaderMap) -> bool {
        matches!(
            action,
            Action::StartAdminConsent | Action::StartDomainSignIn | Action::StartPairing { .. }
        )
    }
}

/// Name prefix of the pairing cookies: `pp_pair_{extension}` (extensions are cookie-name
/// tokens: `A-Z a-z 0-9 . _ - + * #`).
pub const PAIRING_COOKIE_PREFIX: &str = "pp_pair_";

/// The cookie name for `extension`.
pub fn pairing_cookie_name(extension: &str) -> String {
    format!("{PAIRING_COOKIE_PREFIX}{extension}")
}

/// The values of cookie `name` in the request (every `Cookie` header; duplicates kept).
pub fn cookie_values<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
        .collect()
}

#[derive(Debug)]
struct Session {
    extension: String,
    expires_at: Instant,
}

/// Why a pairing secret could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomError;

/// The in-memory pairing secrets: SHA-256(secret) → extension, expiring.
pub struct PairingSessions {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    ttl: Duration,
    max: usize,
    rng: SystemRandom,
}

impl fmt::Debug for PairingSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingSessions")
            .field("sessions", &self.sessions.lock().len())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// SHA-256 of a cookie secret: what the in-memory session tables keep.
pub(crate) fn digest(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl PairingSessions {
    /// Secrets valid for `ttl`; at most `max` kept (the oldest go first).
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            ttl,
            max: max.max(1),
            rng: SystemRandom::new(),
        }
    }

    /// How long a secret lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new random secret (256 bits, base64url) bound to `extension`.
    pub fn issue(&self, extension: &str) -> Result<String, RandomError> {
        let mut raw = [0u8; 32];
        self.rng.fill(&mut raw).map_err(|_| RandomError)?;
        let secret = URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, s| s.expires_at > now);
        while sessions.len() >= self.max {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => sessions.remove(&k),
                None => break,
            };
        }
        sessions.insert(
            digest(&secret),
            Session {
                extension: extension.to_owned(),
                expires_at: now + self.ttl,
            },
        );
        Ok(secret)
    }

    /// Whether `secret` is a live secret of `extension`.
    pub fn check(&self, secret: &str, extension: &str) -> bool {
        let now = Instant::now();
        self.sessions
            .lock()
            .get(&digest(secret))
            .is_some_and(|s| s.extension == extension && s.expires_at > now)
    }

    /// Whether the request carries a live pairing cookie of `extension`.
    pub fn holds(&self, headers: &HeaderMap, extension: &str) -> bool {
        cookie_values(headers, &pairing_cookie_name(extension))
            .into_iter()
            .any(|secret| self.check(secret, extension))
    }

    /// Forgets every secret of `extension` (after unpairing); how many.
    pub fn revoke(&self, extension: &str) -> usize {
        let mut sessions = self.sessions.lock();
        let before = sessions.len();
        sessions.retain(|_, s| s.extension != extension);
        before - sessions.len()
    }

    /// `Set-Cookie` value carrying `secret` for `extension`, scoped to `path`.
    pub fn set_cookie(&self, extension: &str, secret: &str, path: &str, secure: bool) -> String {
        format!(
            "{}={secret}; Path={path}; Max-Age={}; HttpOnly; SameSite=Lax{}",
            pairing_cookie_name(extension),
            self.ttl.as_secs(),
            if secure { "; Secure" } else { "" }
        )
    }

    /// `Set-Cookie` value deleting the cookie of `extension`.
    pub fn clear_cookie(extension: &str, path: &str, secure: bool) -> String {
        format!(
            "{}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Lax{}",
            pairing_cookie_name(extension),
            if secure { "; Secure" } else { "" }
        )
    }
}

impl AccessPolicy for PairingSessions {
    fn allows(&self, action: &Action<'_>, headers: &HeaderMap) -> bool {
        match action {
            Action::Unpair { extension } => self.holds(headers, extension),
            _ => false,
        }
    }
}

/// Whether a state-changing request comes from this site: an `Origin` header, when sent,
/// must be `origin`, and `Sec-Fetch-Site`, when sent, must not be `cross-site`.
pub fn same_origin(headers: &HeaderMap, origin: &str) -> bool {
    let origin_ok = headers
        .get(header::ORIGIN)
        .is_none_or(|o| o.to_str().is_ok_and(|o| o.eq_ignore_ascii_case(origin)));
    let fetch_ok = headers
        .get("sec-fetch-site")
        .is_none_or(|v| v.to_str().is_ok_and(|v| v != "cross-site"));
    origin_ok && fetch_ok
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_str(value).unwrap_or_else(|e| unreachable!("{e}")),
        );
        h
    }

    #[tokio::test(start_paused = true)]
    async fn a_secret_unpairs_its_extension_only_until_it_expires() {
        let sessions = PairingSessions::new(Duration::from_secs(60), 10);
        let secret = sessions
            .issue("201")
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(secret.len(), 43);
        let h = with_cookie(&format!("other=1; pp_pair_201={secret}; x=y"));
        let unpair = |ext| Action::Unpair { extension: ext };
        assert!(sessions.allows(&unpair("201"), &h));
        assert!(
            !sessions.allows(&unpair("202"), &h),
            "bound to its extension"
        );
        let h202 = with_cookie(&format!("pp_pair_202={secret}"));
        assert!(
            !sessions.allows(&unpair("202"), &h202),
            "not a secret of 202"
        );
        assert!(!sessions.allows(&unpair("201"), &with_cookie("pp_pair_201=guess")));
        assert!(!sessions.allows(&unpair("201"), &HeaderMap::new()));
        assert!(!sessions.allows(&Action::StartDomainSignIn, &h));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!sessions.allows(&unpair("201"), &h), "expired");
    }

    #[tokio::test]
    async fn revoke_and_capacity() {
        let sessions = PairingSessions::new(Duration::from_secs(60), 2);
        let a = sessions
            .issue("201")
            .unwrap_or_else(|e| unreachable!("{e}"));
        let b = sessions
            .issue("201")
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(sessions.check(&a, "201") && sessions.check(&b, "201"));
        let c = sessions
            .issue("202")
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(!sessions.check(&a, "201"), "the oldest made room");
        assert!(sessions.check(&c, "202"));
        assert_eq!(sessions.revoke("201"), 1);
        assert!(!sessions.check(&b, "201"));
        let cookie = sessions.set_cookie("201", "s", "/oauth", true);
        assert_eq!(
            cookie,
            "pp_pair_201=s; Path=/oauth; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(!format!("{sessions:?}").contains(&c));
    }

    #[test]
    fn open_starts_allows_starts_only() {
        let h = HeaderMap::new();
        assert!(OpenStarts.allows(&Action::StartAdminConsent, &h));
        assert!(OpenStarts.allows(&Action::StartPairing { extension: "201" }, &h));
        assert!(!OpenStarts.allows(&Action::Unpair { extension: "201" }, &h));
    }

    #[test]
    fn origin_checks() {
        let origin = "http://127.0.0.1:8080";
        assert!(same_origin(&HeaderMap::new(), origin));
        let mut h = HeaderMap::new();
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h, origin));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h, origin));
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h, origin));
    }
}
