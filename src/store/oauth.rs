//! Pending OAuth requests: `state` → PKCE verifier, nonce, purpose; single use.

use std::time::{Duration, SystemTime};

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::directory::validate_extension;
use super::{Secret, Store, StoreError, corrupt, from_millis, invalid, random_url_safe, to_millis};

/// What a pending OAuth request is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "purpose", rename_all = "snake_case")]
pub enum OAuthPurpose {
    /// A tenant admin granting consent to the app.
    AdminConsent,
    /// An admin signing in for the domain token.
    DomainSignIn,
    /// A user pairing their Teams account with this extension.
    PairExtension {
        /// The extension being paired.
        extension: String,
    },
    /// A user signing in to the portal (their account's email selects the extension).
    UserSignIn,
}

/// A request about to be sent to the authorize (or admin consent) endpoint.
#[derive(Debug, Clone)]
pub struct NewOAuthState {
    /// What it is for.
    pub purpose: OAuthPurpose,
    /// The PKCE code verifier (none for admin consent). Stored encrypted.
    pub pkce_verifier: Option<Secret<String>>,
    /// The OpenID Connect nonce sent in the request.
    pub nonce: Option<String>,
    /// Where to send the browser once the callback is handled.
    pub redirect_target: Option<String>,
    /// How long the request stays valid; `None` is the store's default (10 minutes).
    pub ttl: Option<Duration>,
}

/// A pending request, taken back by its `state`.
#[derive(Debug, Clone)]
pub struct OAuthState {
    /// What it is for.
    pub purpose: OAuthPurpose,
    /// The PKCE code verifier.
    pub pkce_verifier: Option<Secret<String>>,
    /// The nonce to find in the id_token.
    pub nonce: Option<String>,
    /// Where to send the browser afterwards.
    pub redirect_target: Option<String>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it expires.
    pub expires_at: SystemTime,
}

/// Random bytes in a `state` (256 bits, 43 URL-safe characters).
const STATE_BYTES: usize = 32;
const MAX_STATE_LEN: usize = 128;

fn verifier_aad(state: &str) -> String {
    format!("presence-proxy oauth-state v1\u{1f}{state}\u{1f}pkce_verifier")
}

impl Store {
    /// Records a pending request and returns its new random, URL-safe `state`. Expired
    /// requests are swept first; [`StoreError::TooManyPendingOAuthStates`] when too
    /// many are still pending.
    pub fn create_oauth_state(&self, request: &NewOAuthState) -> Result<String, StoreError> {
        if let OAuthPurpose::PairExtension { extension } = &request.purpose {
            validate_extension(extension)?;
        }
        let purpose = serde_json::to_string(&request.purpose)
            .map_err(|e| invalid("OAuth purpose", e.to_string()))?;
        let state = random_url_safe(STATE_BYTES)?;
        let verifier = request
            .pkce_verifier
            .as_ref()
            .map(|v| self.seal(&verifier_aad(&state), v.expose()))
            .transpose()?;
        let now = self.now();
        let ttl = request.ttl.unwrap_or(self.inner.oauth_state_ttl);
        let expires = now.checked_add(ttl).unwrap_or(now);
        let (now, expires) = (to_millis(now), to_millis(expires));
        let max = self.inner.max_pending_oauth_states;
        self.write(|tx| {
            tx.execute("DELETE FROM oauth_states WHERE expires_at <= ?1", [now])?;
            let pending: i64 = tx.query_row("SELECT count(*) FROM oauth_states", [], |r| r.get(0))?;
            if usize::try_from(pending).unwrap_or(usize::MAX) >= max {
                return Err(StoreError::TooManyPendingOAuthStates(max));
            }
            tx.execute(
                "INSERT INTO oauth_states (state, pkce_verifier, nonce, purpose, redirect_target, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![state, verifier, request.nonce, purpose, request.redirect_target, now, expires],
            )?;
            Ok(())
        })?;
        Ok(state)
    }

    /// Takes the pending request with this `state` out of the store: it is returned
    /// once, and a second call is [`StoreError::OAuthStateUnknown`]. An expired request
    /// is removed and refused ([`StoreError::OAuthStateExpired`]); other expired
    /// requests are swept on the way.
    pub fn take_oauth_state(&self, state: &str) -> Result<OAuthState, StoreError> {
        if state.is_empty() || state.len() > MAX_STATE_LEN {
            return Err(StoreError::OAuthStateUnknown);
        }
        let now = to_millis(self.now());
        type Raw = (
            Option<Vec<u8>>,
            Option<String>,
            String,
            Option<String>,
            i64,
            i64,
        );
        let raw: Option<Raw> = self.write(|tx| {
            let raw = tx
                .query_row(
                    "DELETE FROM oauth_states WHERE state = ?1
                     RETURNING pkce_verifier, nonce, purpose, redirect_target, created_at, expires_at",
                    [state],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )
                .optional()?;
            tx.execute("DELETE FROM oauth_states WHERE expires_at <= ?1", [now])?;
            Ok(raw)
        })?;
        let Some((verifier, nonce, purpose, redirect_target, created_at, expires_at)) = raw else {
            return Err(StoreError::OAuthStateUnknown);
        };
        if expires_at <= now {
            return Err(StoreError::OAuthStateExpired);
        }
        let purpose = serde_json::from_str(&purpose)
            .map_err(|e| corrupt("pending OAuth request", e.to_string()))?;
        let pkce_verifier = verifier
            .map(|v| {
                self.open_secret(
                    &verifier_aad(state),
                    &v,
                    "pending OAuth request's PKCE verifier",
                )
            })
            .transpose()?;
        Ok(OAuthState {
            purpose,
            pkce_verifier,
            nonce,
            redirect_target,
            created_at: from_millis(created_at),
            expires_at: from_millis(expires_at),
        })
    }

    /// Removes expired pending requests; how many.
    pub fn sweep_oauth_states(&self) -> Result<usize, StoreError> {
        let now = to_millis(self.now());
        self.write(|tx| Ok(tx.execute("DELETE FROM oauth_states WHERE expires_at <= ?1", [now])?))
    }
}
