//! The proxy's web side: for now the OAuth round trips with the Microsoft identity
//! platform (admin consent, the domain sign-in, pairing and unpairing an extension) as an
//! axum [`Router`] the proxy's web listener serves. The portal issue adds its pages and
//! logins next to these routes.
//!
//! ```text
//!  browser ──GET /oauth/pair/201──▶ OAuthService ──302──▶ identity platform (sign-in)
//!     ▲                               │  state + PKCE + nonce in the store
//!     └──── page ◀── GET /oauth/callback?code&state ◀──302──┘
//!                        │ take state, error first, exchange code (GraphClient),
//!                        │ validate id_token (JWKS), check the account, store the token
//!                        ▼
//!                      Store
//! ```
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`OAuthService`] (what the handlers share), [`WebOptions`], [`router`], [`serve`] |
//! | `oauth.rs` | the routes and thin handlers; the flows as [`OAuthService`] methods; the decisions as plain functions ([`parse_callback_query`], [`next_step`], [`consent_tenant`], [`check_pairing_account`], ...) |
//! | `id_token.rs` | id_token validation: RS256 signature against the tenant's JWKS (cached by `kid`, rate-limited refetch), `aud`, `iss`/`tid`, `exp`/`nbf`, `nonce` |
//! | `access.rs` | who may do what: [`AccessPolicy`], [`OpenStarts`], [`PairingSessions`] (the unpair cookie), the same-origin check |
//! | `pages.rs` | minimal HTML pages ([`Page`], every text escaped), redirects, security headers |
//! | `error.rs` | [`WebError`]: refusals and failures, their status and page |
//!
//! Routes (paths relative to the public base URL; the registered redirect_uri must be
//! `{public base}/oauth/callback`):
//!
//! | route | |
//! |---|---|
//! | `GET /oauth/admin-consent` | start admin consent |
//! | `GET /oauth/domain` | start the domain sign-in (an admin, after consent) |
//! | `GET /oauth/pair/{extension}` | start pairing an extension with its user's Teams account |
//! | `GET /oauth/callback` | the redirect_uri of all three |
//! | `POST /oauth/unpair/{extension}` | unpair (needs the pairing cookie, or a policy the portal adds) |
//!
//! The id_token validation lives here rather than in `graph/`: the Graph client only
//! carries the id_token; deciding whom a sign-in belongs to is this layer's job.
//!
//! No code, token, verifier, nonce, `state` or cookie secret is ever logged or shown;
//! log lines name the flow, the extension and the outcome.

mod access;
mod error;
mod id_token;
mod oauth;
mod pages;
mod password;
pub mod portal;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use parking_lot::RwLock;
use reqwest::Url;
use tokio::net::TcpListener;

pub use access::{
    AccessPolicy, Action, OpenStarts, PAIRING_COOKIE_PREFIX, PairingSessions, RandomError,
    cookie_values, pairing_cookie_name, same_origin,
};
pub use error::WebError;
pub use id_token::{
    Expected, IdClaims, IdTokenError, IdTokenValidator, Jwks, JwksClient, KeyCache, Parsed, RsaKey,
    check_claims, check_header, issuer, jwks_url, parse, verify_signature,
};
pub use oauth::{
    ADMIN_CONSENT_PATH, CALLBACK_PATH, COOKIE_PATH, CallbackQuery, Completed, DOMAIN_SIGN_IN_PATH,
    Finished, Flow, PAIR_PATH, PresenceCleared, SIGN_IN_SCOPES, Step, UNPAIR_PATH, Unpaired,
    check_pairing_account, consent_tenant, expected_tenant, is_guid, next_step,
    parse_callback_query,
};
pub use pages::{Page, escape, see_other};
pub use password::{
    PasswordError, check_password_hash, hash_password, random_password, verify_password,
};
pub use portal::{PortalSessions, Who};

use crate::graph::GraphClient;
use crate::store::Store;

/// Tunables of the OAuth routes.
#[derive(Debug, Clone)]
pub struct WebOptions {
    /// Clock difference allowed on id_token `exp`, `nbf` and `iat` (default 5 min).
    pub id_token_skew: Duration,
    /// Shortest time between two JWKS fetches (default 60 s): an unknown `kid` triggers a
    /// refetch only when the last one is at least this old.
    pub jwks_min_refetch: Duration,
    /// Cached signing keys are refetched once this old (default 24 h).
    pub jwks_max_age: Duration,
    /// Timeout of a JWKS request (default 10 s).
    pub http_timeout: Duration,
    /// Lifetime of a pairing cookie (default 7 days; kept in memory, so a restart ends
    /// it sooner).
    pub pairing_cookie_ttl: Duration,
    /// Most pairing cookies remembered at once (default 10,000; the oldest go first).
    pub max_pairing_sessions: usize,
    /// Whether anyone may start the flows ([`OpenStarts`]); default true. The portal
    /// turns it off: its admin and user sessions decide then.
    pub open_starts: bool,
    /// Lifetime of a portal sign-in (default 12 h; in memory, a restart ends it).
    pub portal_session_ttl: Duration,
    /// Most portal sessions at once (default 10,000; the oldest go first).
    pub max_portal_sessions: usize,
}

impl Default for WebOptions {
    fn default() -> Self {
        Self {
            id_token_skew: Duration::from_secs(300),
            jwks_min_refetch: Duration::from_secs(60),
            jwks_max_age: Duration::from_secs(24 * 3600),
            http_timeout: Duration::from_secs(10),
            pairing_cookie_ttl: Duration::from_secs(7 * 24 * 3600),
            max_pairing_sessions: 10_000,
            open_starts: true,
            portal_session_ttl: Duration::from_secs(12 * 3600),
            max_portal_sessions: 10_000,
        }
    }
}

/// Everything the OAuth handlers need: the Graph client, the store, the public base URL,
/// the id_token validator, the pairing cookies and the access policies. A cheap `Clone`.
#[derive(Debug, Clone)]
pub struct OAuthService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    graph: GraphClient,
    store: Store,
    /// Without a trailing slash.
    public_base: String,
    /// `scheme://host[:port]`.
    public_origin: String,
    /// The base URL's path without a trailing slash (`""` at the root).
    public_path: String,
    secure_cookies: bool,
    validator: IdTokenValidator,
    sessions: Arc<PairingSessions>,
    portal_sessions: Arc<PortalSessions>,
    policies: RwLock<Vec<Arc<dyn AccessPolicy>>>,
}

impl OAuthService {
    /// A service with default [`WebOptions`]. `public_base` is the URL browsers reach the
    /// proxy's web listener at (`https://proxy.example.com`, or with a path prefix);
    /// the Graph configuration's redirect_uri must be [`OAuthService::callback_url`] of it.
    pub fn new(graph: GraphClient, store: Store, public_base: &str) -> Result<Self, WebError> {
        Self::with_options(graph, store, public_base, WebOptions::default())
    }

    /// A service with `options`.
    pub fn with_options(
        graph: GraphClient,
        store: Store,
        public_base: &str,
        options: WebOptions,
    ) -> Result<Self, WebError> {
        let public_base = public_base.trim_end_matches('/').to_owned();
        let url = Url::parse(&public_base)
            .map_err(|e| WebError::Config(format!("public base URL {public_base:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(WebError::Config(format!(
                "public base URL {public_base:?} must be http(s)://host[:port][/path] without query or fragment"
            )));
        }
        let expected = Self::callback_url(&public_base);
        if graph.config().redirect_uri != expected {
            return Err(WebError::Config(format!(
                "the redirect URI {:?} must be {expected:?} (the public base URL + {CALLBACK_PATH})",
                graph.config().redirect_uri
            )));
        }
        let config = graph.config();
        let jwks = JwksClient::new(
            &config.login_base,
            &config.tenant,
            options.jwks_min_refetch,
            options.jwks_max_age,
            options.http_timeout,
        )
        .map_err(|e| WebError::Config(e.to_string()))?;
        let validator = IdTokenValidator::new(
            jwks,
            config.client_id.clone(),
            config.login_base.clone(),
            options.id_token_skew,
        );
        let sessions = Arc::new(PairingSessions::new(
            options.pairing_cookie_ttl,
            options.max_pairing_sessions,
        ));
        let portal_sessions = Arc::new(PortalSessions::new(
            options.portal_session_ttl,
            options.max_portal_sessions,
        ));
        let mut policies: Vec<Arc<dyn AccessPolicy>> =
            vec![sessions.clone(), portal_sessions.clone()];
        if options.open_starts {
            policies.push(Arc::new(OpenStarts));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                public_origin: url.origin().ascii_serialization(),
                public_path: url.path().trim_end_matches('/').to_owned(),
                secure_cookies: url.scheme() == "https",
                public_base,
                graph,
                store,
                validator,
                sessions,
                portal_sessions,
                policies: RwLock::new(policies),
            }),
        })
    }

    /// The redirect_uri to register for a proxy reached at `public_base`.
    pub fn callback_url(public_base: &str) -> String {
        format!("{}{CALLBACK_PATH}", public_base.trim_end_matches('/'))
    }

    /// Adds an access policy (e.g. the portal's admin sessions): an action is allowed
    /// when any policy allows it.
    pub fn add_access_policy(&self, policy: Arc<dyn AccessPolicy>) {
        self.inner.policies.write().push(policy);
    }

    /// Whether any policy allows `action` for a request with `headers`.
    pub fn allows(&self, action: &Action<'_>, headers: &HeaderMap) -> bool {
        self.inner
            .policies
            .read()
            .iter()
            .any(|p| p.allows(action, headers))
    }

    /// The Graph client.
    pub fn graph(&self) -> &GraphClient {
        &self.inner.graph
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The public base URL, without a trailing slash.
    pub fn public_base(&self) -> &str {
        &self.inner.public_base
    }

    /// The public origin (`scheme://host[:port]`), what a same-site `Origin` header says.
    pub fn public_origin(&self) -> &str {
        &self.inner.public_origin
    }

    /// The public base URL's path, without a trailing slash (`""` at the root).
    pub fn public_path(&self) -> &str {
        &self.inner.public_path
    }

    /// Whether cookies are marked `Secure` (the public URL is https).
    pub fn secure_cookies(&self) -> bool {
        self.inner.secure_cookies
    }

    /// The id_token validator.
    pub fn validator(&self) -> &IdTokenValidator {
        &self.inner.validator
    }

    /// The pairing cookies.
    pub fn sessions(&self) -> &Arc<PairingSessions> {
        &self.inner.sessions
    }

    /// The portal's admin and user sign-ins.
    pub fn portal_sessions(&self) -> &Arc<PortalSessions> {
        &self.inner.portal_sessions
    }
}

/// The OAuth routes, ready to serve (or to merge into a larger router).
pub fn router(service: OAuthService) -> Router {
    oauth::routes().with_state(service)
}

/// Serves `router` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

/// Serves `router` on `listener` until `shutdown` completes, then drains.
pub async fn serve_until(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
