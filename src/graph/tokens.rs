//! Tokens (graph.md §6): [`TokenSet`] (what the token endpoint returned, knowing its
//! expiry), [`Tokens`] (one credential — app-only or delegated — that hands out a valid
//! access token, refreshing ahead of expiry and rotating the refresh token through a
//! [`TokenSink`]), [`Pkce`], and the authorize / admin-consent URLs.
//!
//! Every token, code and verifier is a [`Secret`]: `Debug` prints `[redacted]`, and
//! nothing here logs one.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{GraphClient, GraphConfig, GraphError};
use crate::store::Secret;

/// The scope of the client-credentials grant: every application permission consented
/// (graph.md §6.3).
pub const APP_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Scopes of a user's pairing: write their own presence (graph.md §7).
pub const USER_SCOPES: &str =
    "openid profile email offline_access https://graph.microsoft.com/Presence.ReadWrite";
/// Scopes of the domain token an admin signs in for: read everyone's presence and resolve
/// users (graph.md §7).
pub const DOMAIN_SCOPES: &str = "openid profile email offline_access https://graph.microsoft.com/Presence.Read.All https://graph.microsoft.com/User.ReadBasic.All";

/// What a successful token request returned.
#[derive(Clone)]
pub struct TokenSet {
    /// The bearer token for Graph.
    pub access_token: Secret<String>,
    /// The refresh token (delegated grants with `offline_access`), replacing the old one.
    pub refresh_token: Option<Secret<String>>,
    /// The id_token (with `openid`); validate it before trusting its claims.
    pub id_token: Option<Secret<String>>,
    /// The scopes granted (space-separated in the response).
    pub scopes: Vec<String>,
    /// `expires_in` as received.
    pub expires_in: Duration,
    /// When the access token expires, on the monotonic clock (for refreshing ahead).
    pub expires_at: Instant,
    /// When the access token expires, on the wall clock (for the store).
    pub expires_at_wall: SystemTime,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &self.access_token)
            .field("refresh_token", &self.refresh_token)
            .field("id_token", &self.id_token)
            .field("scopes", &self.scopes)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

impl TokenSet {
    /// Whether the access token should be replaced now: less than `ahead` left (capped at
    /// half its lifetime, so short-lived tokens are not refreshed on every call).
    pub fn needs_refresh(&self, ahead: Duration) -> bool {
        let ahead = ahead.min(self.expires_in / 2);
        Instant::now() + ahead >= self.expires_at
    }

    pub(crate) fn from_response(body: &[u8]) -> Result<Self, GraphError> {
        #[derive(Deserialize)]
        struct Response {
            access_token: String,
            #[serde(default)]
            refresh_token: Option<String>,
            #[serde(default)]
            id_token: Option<String>,
            #[serde(default)]
            scope: String,
            expires_in: serde_json::Value,
        }
        // the error text of serde_json names a position, never the input
        let r: Response = serde_json::from_slice(body)
            .map_err(|e| GraphError::Decode(format!("token response: {e}")))?;
        // some identity-platform versions send expires_in as a string
        let secs = match &r.expires_in {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| GraphError::Decode("token response: bad expires_in".into()))?;
        let expires_in = Duration::from_secs(secs);
        Ok(TokenSet {
            access_token: Secret::new(r.access_token),
            refresh_token: r.refresh_token.map(Secret::new),
            id_token: r.id_token.map(Secret::new),
            scopes: r.scope.split_whitespace().map(str::to_owned).collect(),
            expires_in,
            expires_at: Instant::now() + expires_in,
            expires_at_wall: SystemTime::now() + expires_in,
        })
    }
}

/// Where a delegated credential's rotated tokens go (the store). Called synchronously
/// under the credential's lock, so a rotation is persisted before any other task can
/// refresh again; keep it short (the store's `replace_refresh_token` is one fsync).
pub trait TokenSink: Send + Sync {
    /// The refresh token was used and `tokens` replaces it: persist
    /// `tokens.refresh_token` now (graph.md §6.5: the old one may be dead already).
    fn rotated(&self, tokens: &TokenSet) -> Result<(), String>;

    /// The refresh token was refused with `invalid_grant`: mark the user (or domain)
    /// "needs re-pairing".
    fn needs_repairing(&self, _error: &GraphError) {}
}

enum Kind {
    AppOnly,
    Delegated {
        scope: String,
        sink: Arc<dyn TokenSink>,
    },
}

/// One credential: app-only (client credentials) or delegated (a refresh token). Hands out
/// a valid access token, getting a new one ahead of expiry ([`GraphConfig::refresh_ahead`])
/// and when Graph answers 401. Share it with `Arc`; refreshes are serialised.
pub struct Tokens {
    client: GraphClient,
    kind: Kind,
    current: Mutex<Option<TokenSet>>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field(
                "kind",
                &match self.kind {
                    Kind::AppOnly => "app-only",
                    Kind::Delegated { .. } => "delegated",
                },
            )
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// An app-only credential; the first call gets a token by client credentials.
    pub fn app_only(client: &GraphClient) -> Arc<Self> {
        Arc::new(Self {
            client: client.clone(),
            kind: Kind::AppOnly,
            current: Mutex::new(None),
        })
    }

    /// A delegated credential from a sign-in or the store. `scope` is what refreshes ask
    /// for (the original scopes or a subset, graph.md §6.2); `sink` persists rotations.
    pub fn delegated(
        client: &GraphClient,
        tokens: TokenSet,
        scope: impl Into<String>,
        sink: Arc<dyn TokenSink>,
    ) -> Arc<Self> {
        Arc::new(Self {
            client: client.clone(),
            kind: Kind::Delegated {
                scope: scope.into(),
                sink,
            },
            current: Mutex::new(Some(tokens)),
        })
    }

    /// True for an app-only (client credentials) credential; presence subscriptions need
    /// a delegated one (graph.md §3.1).
    pub fn is_app_only(&self) -> bool {
        matches!(self.kind, Kind::AppOnly)
    }

    /// A valid access token, refreshed first when it is within
    /// [`GraphConfig::refresh_ahead`] of expiry.
    pub async fn access_token(&self) -> Result<Secret<String>, GraphError> {
        let mut current = self.current.lock().await;
        if let Some(set) = current.as_ref() {
            if !set.needs_refresh(self.client.config().refresh_ahead) {
                return Ok(set.access_token.clone());
            }
        }
        self.renew_counted(&mut current).await
    }

    /// Graph refused `used` (401): get a new access token unless another task already did.
    pub(crate) async fn refresh_after_401(
        &self,
        used: &Secret<String>,
    ) -> Result<Secret<String>, GraphError> {
        let mut current = self.current.lock().await;
        if let Some(set) = current.as_ref() {
            if set.access_token.expose() != used.expose() {
                return Ok(set.access_token.clone());
            }
        }
        tracing::debug!("graph refused the access token, refreshing");
        self.renew_counted(&mut current).await
    }

    /// Refreshes now, whatever the expiry (e.g. after scopes changed).
    pub async fn refresh_now(&self) -> Result<(), GraphError> {
        let mut current = self.current.lock().await;
        self.renew_counted(&mut current).await.map(|_| ())
    }

    /// The current token set, if any (e.g. to read the id_token after a sign-in).
    pub async fn current(&self) -> Option<TokenSet> {
        self.current.lock().await.clone()
    }

    /// Gets a new access token and makes it current; counted in the client's
    /// metrics as a token refresh, ok or failed (refused, unreachable, or the rotation
    /// not persisted).
    async fn renew_counted(
        &self,
        current: &mut Option<TokenSet>,
    ) -> Result<Secret<String>, GraphError> {
        let result = match self.renew(current.as_ref()).await {
            Ok(fresh) => self.install(current, fresh),
            Err(e) => Err(e),
        };
        self.client.count_token_refresh(result.is_ok());
        result
    }

    /// Boxed: the token request goes through the client's request loop, which calls
    /// back here on a 401, so the future types would be recursive.
    fn renew<'a>(
        &'a self,
        current: Option<&'a TokenSet>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<TokenSet, GraphError>> + Send + 'a>> {
        Box::pin(self.renew_inner(current))
    }

    async fn renew_inner(&self, current: Option<&TokenSet>) -> Result<TokenSet, GraphError> {
        match &self.kind {
            Kind::AppOnly => self.client.client_credentials().await,
            Kind::Delegated { scope, sink } => {
                let Some(refresh) = current.and_then(|c| c.refresh_token.clone()) else {
                    return Err(GraphError::InvalidRequest(
                        "delegated credential without a refresh token".into(),
                    ));
                };
                match self.client.refresh(&refresh, scope).await {
                    Ok(mut fresh) => {
                        if fresh.refresh_token.is_none() {
                            fresh.refresh_token = Some(refresh);
                        }
                        Ok(fresh)
                    }
                    Err(e) => {
                        if e.needs_repairing() {
                            tracing::warn!(error = %e, "refresh token refused: needs re-pairing");
                            sink.needs_repairing(&e);
                        }
                        Err(e)
                    }
                }
            }
        }
    }

    /// Makes `fresh` current and hands a delegated rotation to the sink. The new tokens
    /// stay in memory even when the sink fails (the old refresh token is spent), and the
    /// failure is returned as [`GraphError::Persist`].
    fn install(
        &self,
        current: &mut Option<TokenSet>,
        fresh: TokenSet,
    ) -> Result<Secret<String>, GraphError> {
        let token = fresh.access_token.clone();
        let persisted = match &self.kind {
            Kind::AppOnly => Ok(()),
            Kind::Delegated { sink, .. } => sink.rotated(&fresh),
        };
        *current = Some(fresh);
        match persisted {
            Ok(()) => Ok(token),
            Err(e) => {
                tracing::warn!(error = %e, "rotated refresh token not persisted");
                Err(GraphError::Persist(e))
            }
        }
    }
}

/// A PKCE pair (RFC 7636, S256): keep the verifier with the `state`, send the challenge.
#[derive(Debug, Clone)]
pub struct Pkce {
    /// 43 characters of base64url (32 random bytes).
    pub verifier: Secret<String>,
    /// base64url(SHA-256(verifier)).
    pub challenge: String,
}

impl Pkce {
    /// A fresh random verifier and its S256 challenge.
    pub fn generate() -> Result<Self, GraphError> {
        let verifier = random_url_safe(32)?;
        let challenge = Self::challenge_for(&verifier);
        Ok(Self {
            verifier: Secret::new(verifier),
            challenge,
        })
    }

    /// The S256 challenge of `verifier`.
    pub fn challenge_for(verifier: &str) -> String {
        URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            verifier.as_bytes(),
        ))
    }
}

/// `n` random bytes as base64url: for `state` and `nonce`.
pub fn random_url_safe(n: usize) -> Result<String, GraphError> {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| GraphError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn query(pairs: &[(&str, &str)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k, v);
    }
    out.finish().replace('+', "%20")
}

/// What to put in an authorize URL besides the configuration.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizeRequest<'a> {
    /// Space-separated scopes ([`USER_SCOPES`], [`DOMAIN_SCOPES`]).
    pub scope: &'a str,
    /// The anti-forgery state, kept by the caller.
    pub state: &'a str,
    /// The nonce the id_token must carry.
    pub nonce: &'a str,
    /// [`Pkce::challenge`].
    pub code_challenge: &'a str,
    /// Pre-fills the sign-in (the extension's email), optional.
    pub login_hint: Option<&'a str>,
    /// `select_account`, `login`, `consent`, optional.
    pub prompt: Option<&'a str>,
}

impl GraphConfig {
    /// `{login}/{tenant}/oauth2/v2.0/authorize?...` with `response_type=code`,
    /// `response_mode=query` and PKCE S256 (graph.md §6.2).
    pub fn authorize_url(&self, req: &AuthorizeRequest<'_>) -> String {
        let mut pairs = vec![
            ("client_id", self.client_id.as_str()),
            ("response_type", "code"),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("response_mode", "query"),
            ("scope", req.scope),
            ("state", req.state),
            ("nonce", req.nonce),
            ("code_challenge", req.code_challenge),
            ("code_challenge_method", "S256"),
        ];
        if let Some(hint) = req.login_hint {
            pairs.push(("login_hint", hint));
        }
        if let Some(prompt) = req.prompt {
            pairs.push(("prompt", prompt));
        }
        format!(
            "{}/{}/oauth2/v2.0/authorize?{}",
            self.login_base.trim_end_matches('/'),
            self.tenant,
            query(&pairs)
        )
    }

    /// `{login}/{tenant}/v2.0/adminconsent?...` asking for the app's application
    /// permissions (`.default`) (graph.md §6.1; `tenant` must not be `common`).
    pub fn admin_consent_url(&self, state: &str) -> String {
        format!(
            "{}/{}/v2.0/adminconsent?{}",
            self.login_base.trim_end_matches('/'),
            self.tenant,
            query(&[
                ("client_id", self.client_id.as_str()),
                ("scope", APP_SCOPE),
                ("redirect_uri", self.redirect_uri.as_str()),
                ("state", state),
            ])
        )
    }

    pub(crate) fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.login_base.trim_end_matches('/'),
            self.tenant
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_rfc7636_vector() {
        // RFC 7636 appendix B
        assert_eq!(
            Pkce::challenge_for("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let p = Pkce::generate().unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(p.verifier.expose().len(), 43);
        assert_eq!(p.challenge, Pkce::challenge_for(p.verifier.expose()));
    }

    #[test]
    fn urls_have_the_real_shape() {
        let config = GraphConfig::new("contoso.example", "cid", "s", "https://p.example/cb");
        let url = config.authorize_url(&AuthorizeRequest {
            scope: USER_SCOPES,
            state: "st",
            nonce: "n",
            code_challenge: "ch",
            login_hint: Some("a@contoso.example"),
            prompt: None,
        });
        assert!(url.starts_with(
            "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/authorize?client_id=cid&response_type=code&redirect_uri=https%3A%2F%2Fp.example%2Fcb&response_mode=query&scope=openid%20profile"
        ), "{url}");
        assert!(url.contains(
            "&code_challenge=ch&code_challenge_method=S256&login_hint=a%40contoso.example"
        ));
        assert_eq!(
            config.admin_consent_url("x"),
            "https://login.microsoftonline.com/contoso.example/v2.0/adminconsent?client_id=cid&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&redirect_uri=https%3A%2F%2Fp.example%2Fcb&state=x"
        );
        assert_eq!(
            config.token_url(),
            "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token"
        );
    }

    #[test]
    fn token_set_parses_and_redacts() {
        let set = TokenSet::from_response(
            br#"{"token_type":"Bearer","expires_in":3599,"access_token":"AT.x","refresh_token":"RT.y","scope":"a b"}"#,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(set.scopes, ["a", "b"]);
        assert!(!set.needs_refresh(Duration::from_secs(300)));
        let short = TokenSet::from_response(br#"{"expires_in":"0","access_token":"AT.z"}"#)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(short.needs_refresh(Duration::from_secs(300)));
        let debug = format!("{set:?}");
        assert!(
            !debug.contains("AT.x") && !debug.contains("RT.y"),
            "{debug}"
        );
    }
}
