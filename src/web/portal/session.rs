//! Portal sign-ins: who a browser is ([`Who`]: the admin, or the user of one extension),
//! kept in memory behind a random cookie secret ([`PortalSessions`]), each with its own
//! CSRF token that every form of the portal carries; and [`LoginLimiter`], which slows
//! password guessing per source address.
//!
//! Only the SHA-256 of a cookie secret is kept, sessions expire, at most `max` are held
//! (the oldest go first) and a restart ends them all. The cookie is `HttpOnly;
//! SameSite=Lax` (and `Secure` behind https), scoped to the portal's base path.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::time::Instant;

use crate::web::access::digest;
use crate::web::{AccessPolicy, Action, RandomError, cookie_values};

/// The name of the portal's session cookie.
pub const SESSION_COOKIE: &str = "pp_session";

/// Who a portal session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// The tenant admin (password sign-in).
    Admin,
    /// A user, by their Microsoft sign-in; the account's email selected the extension.
    User {
        /// Their extension.
        extension: String,
        /// The account that signed in.
        account: String,
    },
}

/// A live session as a handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// Whose it is.
    pub who: Who,
    /// The CSRF token its forms must carry.
    pub csrf: String,
}

impl SessionView {
    /// Whether `token` (a form's `csrf` field) is this session's, compared in constant
    /// time.
    pub fn csrf_matches(&self, token: &str) -> bool {
        constant_time_eq(self.csrf.as_bytes(), token.as_bytes())
    }

    /// Whether this is the admin.
    pub fn is_admin(&self) -> bool {
        self.who == Who::Admin
    }

    /// The user's extension, for a user session.
    pub fn extension(&self) -> Option<&str> {
        match &self.who {
            Who::User { extension, .. } => Some(extension),
            Who::Admin => None,
        }
    }
}

/// Byte-wise equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug)]
struct Entry {
    who: Who,
    csrf: String,
    expires_at: Instant,
}

/// The portal's sessions: SHA-256(cookie secret) → who, CSRF token, expiry.
pub struct PortalSessions {
    sessions: Mutex<HashMap<[u8; 32], Entry>>,
    ttl: Duration,
    max: usize,
    rng: SystemRandom,
}

impl fmt::Debug for PortalSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortalSessions")
            .field("sessions", &self.sessions.lock().len())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// 256 random bits, base64url.
pub(crate) fn random_token(rng: &SystemRandom) -> Result<String, RandomError> {
    let mut raw = [0u8; 32];
    rng.fill(&mut raw).map_err(|_| RandomError)?;
    Ok(URL_SAFE_NO_PAD.encode(raw))
}

impl PortalSessions {
    /// Sessions lasting `ttl`; at most `max` at once.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            ttl,
            max: max.max(1),
            rng: SystemRandom::new(),
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session for `who`: the cookie secret to set.
    pub fn issue(&self, who: Who) -> Result<String, RandomError> {
        let secret = random_token(&self.rng)?;
        let csrf = random_token(&self.rng)?;
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
            Entry {
                who,
                csrf,
                expires_at: now + self.ttl,
            },
        );
        Ok(secret)
    }

    /// The live session of the request's cookie, if any.
    pub fn lookup(&self, headers: &HeaderMap) -> Option<SessionView> {
        let now = Instant::now();
        let sessions = self.sessions.lock();
        cookie_values(headers, SESSION_COOKIE)
            .into_iter()
            .find_map(|secret| {
                sessions
                    .get(&digest(secret))
                    .filter(|s| s.expires_at > now)
                    .map(|s| SessionView {
                        who: s.who.clone(),
                        csrf: s.csrf.clone(),
                    })
            })
    }

    /// Ends the request's session (sign-out); whether there was one.
    pub fn end(&self, headers: &HeaderMap) -> bool {
        let mut sessions = self.sessions.lock();
        cookie_values(headers, SESSION_COOKIE)
            .into_iter()
            .any(|secret| sessions.remove(&digest(secret)).is_some())
    }

    /// Sessions alive now.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.sessions
            .lock()
            .values()
            .filter(|s| s.expires_at > now)
            .count()
    }

    /// Whether no session is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `Set-Cookie` carrying `secret`, for `path`.
    pub fn set_cookie(&self, secret: &str, path: &str, secure: bool) -> String {
        format!(
            "{SESSION_COOKIE}={secret}; Path={path}; Max-Age={}; HttpOnly; SameSite=Lax{}",
            self.ttl.as_secs(),
            if secure { "; Secure" } else { "" }
        )
    }

    /// `Set-Cookie` deleting the session cookie.
    pub fn clear_cookie(path: &str, secure: bool) -> String {
        format!(
            "{SESSION_COOKIE}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Lax{}",
            if secure { "; Secure" } else { "" }
        )
    }
}

/// The admin may start and undo every flow; a user may pair and unpair their own
/// extension only.
impl AccessPolicy for PortalSessions {
    fn allows(&self, action: &Action<'_>, headers: &HeaderMap) -> bool {
        let Some(session) = self.lookup(headers) else {
            return false;
        };
        match (&session.who, action) {
            (Who::Admin, _) => true,
            (
                Who::User { extension, .. },
                Action::StartPairing { extension: wanted } | Action::Unpair { extension: wanted },
            ) => extension == wanted,
            (Who::User { .. }, _) => false,
        }
    }
}

/// Failed password sign-ins per source address: after `max_failures` within `window`,
/// that address is refused until the window has passed. At most 10,000 addresses are
/// remembered (the stalest go first).
#[derive(Debug)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    max_failures: u32,
    window: Duration,
}

const MAX_LIMITED_ADDRESSES: usize = 10_000;

impl LoginLimiter {
    /// A limiter allowing `max_failures` per `window`.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            failures: Mutex::new(HashMap::new()),
            max_failures: max_failures.max(1),
            window,
        }
    }

    /// Whether `addr` may try now; when not, how long until it may.
    pub fn check(&self, addr: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        match self.failures.lock().get(&addr) {
            Some(&(count, since)) if count >= self.max_failures && now < since + self.window => {
                Err(since + self.window - now)
            }
            _ => Ok(()),
        }
    }

    /// Records a failed attempt from `addr`.
    pub fn failed(&self, addr: IpAddr) {
        let now = Instant::now();
        let mut failures = self.failures.lock();
        if failures.len() >= MAX_LIMITED_ADDRESSES && !failures.contains_key(&addr) {
            failures.retain(|_, (_, since)| now < *since + self.window);
            if failures.len() >= MAX_LIMITED_ADDRESSES {
                let stalest = failures.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| *k);
                if let Some(k) = stalest {
                    failures.remove(&k);
                }
            }
        }
        let entry = failures.entry(addr).or_insert((0, now));
        if now >= entry.1 + self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    /// A successful sign-in from `addr` forgets its failures.
    pub fn succeeded(&self, addr: IpAddr) {
        self.failures.lock().remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, header};

    use super::*;

    fn cookie(secret: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {SESSION_COOKIE}={secret}"))
                .unwrap_or_else(|e| unreachable!("{e}")),
        );
        h
    }

    fn user(ext: &str) -> Who {
        Who::User {
            extension: ext.to_owned(),
            account: format!("{ext}@example.test"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_expire_and_end() {
        let sessions = PortalSessions::new(Duration::from_secs(60), 10);
        let secret = sessions
            .issue(Who::Admin)
            .unwrap_or_else(|e| unreachable!("{e}"));
        let view = sessions
            .lookup(&cookie(&secret))
            .unwrap_or_else(|| unreachable!("live"));
        assert!(view.is_admin());
        assert!(view.csrf_matches(&view.csrf.clone()));
        assert!(!view.csrf_matches("guess"));
        assert!(!view.csrf_matches(""));
        assert!(sessions.lookup(&cookie("guess")).is_none());
        assert!(sessions.lookup(&HeaderMap::new()).is_none());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(sessions.lookup(&cookie(&secret)).is_none(), "expired");
        let secret = sessions
            .issue(Who::Admin)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(sessions.end(&cookie(&secret)));
        assert!(sessions.lookup(&cookie(&secret)).is_none(), "signed out");
        assert!(!format!("{sessions:?}").contains(&secret));
    }

    #[test]
    fn users_reach_their_own_extension_only() {
        let sessions = PortalSessions::new(Duration::from_secs(60), 10);
        let alice = cookie(
            &sessions
                .issue(user("201"))
                .unwrap_or_else(|e| unreachable!("{e}")),
        );
        let admin = cookie(
            &sessions
                .issue(Who::Admin)
                .unwrap_or_else(|e| unreachable!("{e}")),
        );
        let pair = |e| Action::StartPairing { extension: e };
        let unpair = |e| Action::Unpair { extension: e };
        assert!(sessions.allows(&pair("201"), &alice));
        assert!(sessions.allows(&unpair("201"), &alice));
        assert!(!sessions.allows(&pair("202"), &alice));
        assert!(!sessions.allows(&unpair("202"), &alice));
        assert!(!sessions.allows(&Action::StartAdminConsent, &alice));
        assert!(!sessions.allows(&Action::StartDomainSignIn, &alice));
        assert!(sessions.allows(&Action::StartAdminConsent, &admin));
        assert!(sessions.allows(&unpair("202"), &admin));
        assert!(!sessions.allows(&pair("201"), &HeaderMap::new()));
    }

    #[test]
    fn capacity_drops_the_oldest() {
        let sessions = PortalSessions::new(Duration::from_secs(60), 2);
        let a = sessions
            .issue(user("201"))
            .unwrap_or_else(|e| unreachable!("{e}"));
        let _b = sessions
            .issue(user("202"))
            .unwrap_or_else(|e| unreachable!("{e}"));
        let _c = sessions
            .issue(user("203"))
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(sessions.len(), 2);
        assert!(sessions.lookup(&cookie(&a)).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn guessing_is_slowed_per_address() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(300));
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
            limiter.failed(a);
        }
        assert!(limiter.check(a).is_err());
        assert!(limiter.check(b).is_ok(), "per address");
        tokio::time::advance(Duration::from_secs(301)).await;
        assert!(limiter.check(a).is_ok(), "the window passed");
        limiter.failed(a);
        limiter.succeeded(a);
        assert!(limiter.check(a).is_ok());
    }
}
