//! The OAuth round trips: routes, thin handlers, the flows as [`OAuthService`] methods,
//! and the decisions as plain functions.
//!
//! | route | does |
//! |---|---|
//! | `GET /oauth/admin-consent` | new `state` (AdminConsent) → 302 to the admin-consent URL |
//! | `GET /oauth/domain` | `state` + PKCE + nonce (DomainSignIn), [`DOMAIN_SCOPES`] → 302 to authorize |
//! | `GET /oauth/pair/{extension}` | the extension's directory email as `login_hint`; `state` + PKCE + nonce (PairExtension), [`USER_SCOPES`] → 302 |
//! | `GET /oauth/callback` | the registered redirect_uri: takes the `state`, handles `error` first, then finishes the flow the state names |
//! | `POST /oauth/unpair/{extension}` | clearPresence of the app's session (best effort), delete the user's token |
//!
//! Callback, in this order: the `state` is taken from the store (single use; unknown,
//! expired or reused → 400); an `error` in the query is shown and nothing is stored;
//! then per purpose:
//!
//! - admin consent: `admin_consent=True` and a GUID `tenant` (matching the configured
//!   tenant when that is a GUID, and the tenant the store knows) → tenant id and consent
//!   recorded;
//! - domain sign-in: code exchanged with the stored verifier, id_token validated
//!   ([`super::id_token`]), token stored under `TokenKey::domain(tid)`, the owner
//!   recorded, and the tenant id when the store had none;
//! - pairing: the same, then the id_token's `email` or `preferred_username` must be the
//!   extension's directory email (else 403, nothing stored); token stored under
//!   `TokenKey::user(extension)` (which clears a "needs re-pairing" mark), the directory
//!   resolution set to the id_token's `oid`, and the pairing cookie set;
//! - a user's portal sign-in ([`OAuthService::start_user_sign_in`], [`SIGN_IN_SCOPES`]):
//!   code exchanged, id_token validated, the extension whose directory email is the
//!   account's looked up (none → 403), and a portal session started for that user. No
//!   token is stored.
//!
//! A flow started from the portal carries a `redirect_target` (a path under the public
//! base URL); once its callback succeeds the browser is sent back there (303) instead
//! of being shown the completion page.
//!
//! Logs name the flow, the extension and the outcome; never a code, token, verifier,
//! nonce, `state` or cookie secret.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::OAuthService;
use super::access::{Action, PairingSessions, same_origin};
use super::error::WebError;
use super::id_token::IdClaims;
use super::pages::{self, Page};
use super::portal::Who;
use crate::graph::{
    AuthorizeRequest, DOMAIN_SCOPES, Pkce, StoreTokenSink, TokenSet, Tokens, USER_SCOPES,
    random_url_safe,
};
use crate::store::{
    AdminConsent, NewOAuthState, OAuthPurpose, OAuthState, Resolution, Secret, Store, StoreError,
    TokenKey,
};

/// Starts admin consent.
pub const ADMIN_CONSENT_PATH: &str = "/oauth/admin-consent";
/// Starts the domain sign-in.
pub const DOMAIN_SIGN_IN_PATH: &str = "/oauth/domain";
/// Starts pairing an extension: `/oauth/pair/{extension}`.
pub const PAIR_PATH: &str = "/oauth/pair/{extension}";
/// Unpairs an extension (POST): `/oauth/unpair/{extension}`.
pub const UNPAIR_PATH: &str = "/oauth/unpair/{extension}";
/// The OAuth callback; the registered redirect_uri is the public base URL + this.
pub const CALLBACK_PATH: &str = "/oauth/callback";
/// Where the pairing cookies are sent (under the public base path).
pub const COOKIE_PATH: &str = "/oauth";

/// What a portal sign-in asks for: who the user is, nothing more.
pub const SIGN_IN_SCOPES: &str = "openid profile email https://graph.microsoft.com/User.Read";

/// Bytes of randomness in a nonce.
const NONCE_BYTES: usize = 32;

pub(super) fn routes() -> Router<OAuthService> {
    Router::new()
        .route(ADMIN_CONSENT_PATH, get(start_admin_consent))
        .route(DOMAIN_SIGN_IN_PATH, get(start_domain_sign_in))
        .route(PAIR_PATH, get(start_pairing))
        .route(CALLBACK_PATH, get(callback))
        .route(UNPAIR_PATH, post(unpair))
}

// -------------------------------------------------------------------------------------
// handlers: access check, one service call, a response

async fn start_admin_consent(State(service): State<OAuthService>, headers: HeaderMap) -> Response {
    if !service.allows(&Action::StartAdminConsent, &headers) {
        return refuse(Flow::AdminConsent, None, &WebError::Forbidden);
    }
    match service.start_admin_consent() {
        Ok(url) => pages::redirect(&url),
        Err(e) => refuse(Flow::AdminConsent, None, &e),
    }
}

async fn start_domain_sign_in(State(service): State<OAuthService>, headers: HeaderMap) -> Response {
    if !service.allows(&Action::StartDomainSignIn, &headers) {
        return refuse(Flow::DomainSignIn, None, &WebError::Forbidden);
    }
    match service.start_domain_sign_in() {
        Ok(url) => pages::redirect(&url),
        Err(e) => refuse(Flow::DomainSignIn, None, &e),
    }
}

async fn start_pairing(
    State(service): State<OAuthService>,
    Path(extension): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !service.allows(
        &Action::StartPairing {
            extension: &extension,
        },
        &headers,
    ) {
        return refuse(Flow::Pairing, Some(&extension), &WebError::Forbidden);
    }
    match service.start_pairing(&extension) {
        Ok(url) => pages::redirect(&url),
        Err(e) => refuse(Flow::Pairing, Some(&extension), &e),
    }
}

async fn callback(State(service): State<OAuthService>, RawQuery(query): RawQuery) -> Response {
    match service
        .handle_callback(query.as_deref().unwrap_or_default())
        .await
    {
        Ok(done) => service.finished_page(&done),
        // logged by handle_callback
        Err(e) => e.respond(),
    }
}

async fn unpair(
    State(service): State<OAuthService>,
    Path(extension): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !same_origin(&headers, service.public_origin())
        || !service.allows(
            &Action::Unpair {
                extension: &extension,
            },
            &headers,
        )
    {
        return refuse(Flow::Unpair, Some(&extension), &WebError::Forbidden);
    }
    match service.unpair(&extension).await {
        Ok(done) => service.unpaired_page(&done),
        Err(e) => refuse(Flow::Unpair, Some(&extension), &e),
    }
}

fn refuse(flow: Flow, extension: Option<&str>, error: &WebError) -> Response {
    log_refusal(flow, extension, error);
    error.respond()
}

fn log_refusal(flow: Flow, extension: Option<&str>, error: &WebError) {
    let extension = extension.unwrap_or("-");
    if error.status().is_server_error() {
        tracing::error!(flow = flow.name(), extension, outcome = error.outcome(), error = %error, "oauth request failed");
    } else {
        tracing::warn!(flow = flow.name(), extension, outcome = error.outcome(), error = %error, "oauth request refused");
    }
}

// -------------------------------------------------------------------------------------
// decisions (plain functions)

/// Which round trip a request belongs to, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Admin consent.
    AdminConsent,
    /// The domain sign-in.
    DomainSignIn,
    /// Pairing an extension.
    Pairing,
    /// Unpairing an extension.
    Unpair,
    /// A user signing in to the portal.
    UserSignIn,
    /// A callback whose flow is not known yet (no valid state).
    Callback,
}

impl Flow {
    /// The name in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::AdminConsent => "admin_consent",
            Self::DomainSignIn => "domain_sign_in",
            Self::Pairing => "pairing",
            Self::Unpair => "unpair",
            Self::UserSignIn => "user_sign_in",
            Self::Callback => "callback",
        }
    }

    fn of(purpose: &OAuthPurpose) -> (Self, Option<&str>) {
        match purpose {
            OAuthPurpose::AdminConsent => (Self::AdminConsent, None),
            OAuthPurpose::DomainSignIn => (Self::DomainSignIn, None),
            OAuthPurpose::PairExtension { extension } => (Self::Pairing, Some(extension)),
            OAuthPurpose::UserSignIn => (Self::UserSignIn, None),
        }
    }
}

/// The callback's query parameters. `code` is a [`Secret`].
#[derive(Debug, Default)]
pub struct CallbackQuery {
    /// `state`.
    pub state: String,
    /// `code` (code flows).
    pub code: Option<Secret<String>>,
    /// `error`.
    pub error: Option<String>,
    /// `error_description`.
    pub error_description: Option<String>,
    /// `admin_consent` (admin consent).
    pub admin_consent: Option<String>,
    /// `tenant` (admin consent).
    pub tenant: Option<String>,
}

/// Reads the callback's query. A parameter this function reads that appears twice is
/// refused (no guessing which one counts); `state` is required.
pub fn parse_callback_query(raw: &str) -> Result<CallbackQuery, WebError> {
    let mut q = CallbackQuery::default();
    let mut state = None;
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        let slot: &mut Option<String> = match key.as_ref() {
            "state" => &mut state,
            "error" => &mut q.error,
            "error_description" => &mut q.error_description,
            "admin_consent" => &mut q.admin_consent,
            "tenant" => &mut q.tenant,
            "code" => {
                if q.code.is_some() {
                    return Err(WebError::BadCallback("code given twice"));
                }
                q.code = Some(Secret::new(value.into_owned()));
                continue;
            }
            _ => continue,
        };
        if slot.is_some() {
            return Err(if key == "state" {
                WebError::MissingState
            } else {
                WebError::BadCallback("a parameter given twice")
            });
        }
        *slot = Some(value.into_owned());
    }
    q.state = state
        .filter(|s| !s.is_empty())
        .ok_or(WebError::MissingState)?;
    Ok(q)
}

/// What to do with a callback whose state was valid.
#[derive(Debug)]
pub enum Step {
    /// Record admin consent for this tenant (not yet checked against the known one).
    Consent {
        /// The `tenant` of the callback.
        tenant: String,
    },
    /// Exchange this code.
    Exchange {
        /// The code.
        code: Secret<String>,
    },
}

/// Decides the callback's step from its purpose and query. `error` is looked at before
/// anything else (graph.md §6.1: `admin_consent=True` comes with errors too).
pub fn next_step(purpose: &OAuthPurpose, q: CallbackQuery) -> Result<Step, WebError> {
    if let Some(error) = q.error {
        return Err(WebError::Provider {
            error: if error.is_empty() {
                "an unnamed error".into()
            } else {
                error
            },
            description: q.error_description.filter(|d| !d.is_empty()),
        });
    }
    match purpose {
        OAuthPurpose::AdminConsent => {
            if !q
                .admin_consent
                .is_some_and(|a| a.eq_ignore_ascii_case("true"))
            {
                return Err(WebError::BadCallback("admin_consent is not True"));
            }
            let tenant = q
                .tenant
                .filter(|t| !t.is_empty())
                .ok_or(WebError::BadCallback("no tenant"))?;
            Ok(Step::Consent { tenant })
        }
        OAuthPurpose::DomainSignIn
        | OAuthPurpose::PairExtension { .. }
        | OAuthPurpose::UserSignIn => Ok(Step::Exchange {
            code: q
                .code
                .filter(|c| !c.expose().is_empty())
                .ok_or(WebError::BadCallback("no code"))?,
        }),
    }
}

/// Whether `s` is a GUID in the 8-4-4-4-12 hex form (a tenant id).
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The tenant a consent callback may record: a GUID, equal to the configured tenant when
/// that is a GUID, and to the tenant the store already knows. The value of `tenant` can
/// be forged (graph.md §6.1), so it is only accepted under a valid single-use `state`
/// and never widens what the proxy trusts.
pub fn consent_tenant(
    returned: &str,
    configured: &str,
    known: Option<&str>,
) -> Result<String, WebError> {
    let returned = returned.trim();
    if !is_guid(returned) {
        return Err(WebError::BadCallback("tenant is not a tenant id"));
    }
    let expected = known.or(is_guid(configured).then_some(configured));
    match expected {
        Some(want) if !want.eq_ignore_ascii_case(returned) => Err(WebError::TenantMismatch {
            expected: want.to_owned(),
            found: returned.to_owned(),
        }),
        _ => Ok(returned.to_ascii_lowercase()),
    }
}

/// The tenant id an id_token's `tid` must be: the one the store knows, else the
/// configured tenant when it is a GUID; `None` when neither is known.
pub fn expected_tenant(known: Option<&str>, configured: &str) -> Option<String> {
    known
        .map(str::to_owned)
        .or_else(|| is_guid(configured).then(|| configured.to_owned()))
}

/// Pairing: the account that signed in must be the extension's directory email.
pub fn check_pairing_account(
    extension: &str,
    directory_email: &str,
    claims: &IdClaims,
) -> Result<(), WebError> {
    if claims.is_account(directory_email) {
        Ok(())
    } else {
        Err(WebError::WrongUser {
            extension: extension.to_owned(),
            expected: directory_email.to_owned(),
            signed_in: claims.account().to_owned(),
        })
    }
}

/// A path segment, percent-encoded.
fn segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

// -------------------------------------------------------------------------------------
// the flows

/// A callback that completed.
#[derive(Debug)]
pub enum Completed {
    /// Admin consent recorded for this tenant.
    AdminConsent {
        /// The tenant id.
        tenant_id: String,
    },
    /// The domain token stored.
    DomainSignIn {
        /// Who signed in.
        account: String,
        /// The tenant id.
        tenant_id: String,
    },
    /// The extension paired.
    Paired {
        /// The extension.
        extension: String,
        /// Who signed in.
        account: String,
        /// The pairing secret for the cookie (never logged; `Debug` redacts it).
        secret: Secret<String>,
    },
    /// A user signed in to the portal.
    UserSignedIn {
        /// The extension their account's email selected.
        extension: String,
        /// Who signed in.
        account: String,
        /// The portal session's cookie secret (never logged).
        secret: Secret<String>,
    },
}

/// A completed callback and where the browser goes next.
#[derive(Debug)]
pub struct Finished {
    /// What completed.
    pub completed: Completed,
    /// The portal path the flow was started from, to send the browser back to.
    pub back: Option<String>,
}

/// What happened to the app's presence session at unpairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceCleared {
    /// clearPresence succeeded.
    Cleared,
    /// There was no session (404).
    NoSession,
    /// clearPresence failed (logged); the token was deleted anyway.
    Failed,
    /// The token names no Graph user, so nothing was cleared.
    UnknownUser,
}

/// An unpairing that completed.
#[derive(Debug)]
pub struct Unpaired {
    /// The extension.
    pub extension: String,
    /// What happened to the presence session.
    pub presence: PresenceCleared,
}

/// Runs `f` on the store on the blocking pool (token writes fsync).
async fn blocking<R: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, WebError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| WebError::Internal(format!("store task: {e}")))?
        .map_err(WebError::from)
}

fn random_error<E: std::fmt::Display>(e: E) -> WebError {
    WebError::Internal(e.to_string())
}

impl OAuthService {
    /// Starts admin consent: the URL to send the browser to.
    pub fn start_admin_consent(&self) -> Result<String, WebError> {
        self.start_admin_consent_from(None)
    }

    /// Starts admin consent from the portal page `back` (a path), where the browser
    /// returns afterwards.
    pub fn start_admin_consent_from(&self, back: Option<&str>) -> Result<String, WebError> {
        let state = self.store().create_oauth_state(&NewOAuthState {
            purpose: OAuthPurpose::AdminConsent,
            pkce_verifier: None,
            nonce: None,
            redirect_target: back.map(str::to_owned),
            ttl: None,
        })?;
        tracing::info!(
            flow = Flow::AdminConsent.name(),
            outcome = "redirected",
            "oauth start"
        );
        Ok(self.graph().config().admin_consent_url(&state))
    }

    /// Starts the domain sign-in: the URL to send the browser to.
    pub fn start_domain_sign_in(&self) -> Result<String, WebError> {
        self.start_domain_sign_in_from(None)
    }

    /// Starts the domain sign-in from the portal page `back`.
    pub fn start_domain_sign_in_from(&self, back: Option<&str>) -> Result<String, WebError> {
        let url = self.authorize(OAuthPurpose::DomainSignIn, DOMAIN_SCOPES, None, back)?;
        tracing::info!(
            flow = Flow::DomainSignIn.name(),
            outcome = "redirected",
            "oauth start"
        );
        Ok(url)
    }

    /// Starts pairing `extension` (in the directory, with an email): the URL to send the
    /// browser to, with that email as `login_hint`.
    pub fn start_pairing(&self, extension: &str) -> Result<String, WebError> {
        self.start_pairing_from(extension, None)
    }

    /// Starts pairing `extension` from the portal page `back`.
    pub fn start_pairing_from(
        &self,
        extension: &str,
        back: Option<&str>,
    ) -> Result<String, WebError> {
        let entry = self
            .store()
            .extension(extension)?
            .ok_or_else(|| WebError::UnknownExtension(extension.to_owned()))?;
        let email = entry
            .email
            .ok_or_else(|| WebError::NoEmail(extension.to_owned()))?;
        let url = self.authorize(
            OAuthPurpose::PairExtension {
                extension: entry.extension.clone(),
            },
            USER_SCOPES,
            Some(&email),
            back,
        )?;
        tracing::info!(
            flow = Flow::Pairing.name(),
            extension,
            outcome = "redirected",
            "oauth start"
        );
        Ok(url)
    }

    /// Starts a user's portal sign-in: the URL to send the browser to. The account
    /// that signs in selects the extension (by its directory email); the browser comes
    /// back to `back`.
    pub fn start_user_sign_in(&self, back: &str) -> Result<String, WebError> {
        let url = self.authorize(OAuthPurpose::UserSignIn, SIGN_IN_SCOPES, None, Some(back))?;
        tracing::info!(
            flow = Flow::UserSignIn.name(),
            outcome = "redirected",
            "oauth start"
        );
        Ok(url)
    }

    fn authorize(
        &self,
        purpose: OAuthPurpose,
        scope: &str,
        login_hint: Option<&str>,
        back: Option<&str>,
    ) -> Result<String, WebError> {
        let pkce = Pkce::generate().map_err(random_error)?;
        let nonce = random_url_safe(NONCE_BYTES).map_err(random_error)?;
        let state = self.store().create_oauth_state(&NewOAuthState {
            purpose,
            pkce_verifier: Some(pkce.verifier),
            nonce: Some(nonce.clone()),
            redirect_target: back.map(str::to_owned),
            ttl: None,
        })?;
        Ok(self.graph().config().authorize_url(&AuthorizeRequest {
            scope,
            state: &state,
            nonce: &nonce,
            code_challenge: &pkce.challenge,
            login_hint,
            prompt: None,
        }))
    }

    /// Handles the callback's raw query string (logs the outcome).
    pub async fn handle_callback(&self, raw_query: &str) -> Result<Finished, WebError> {
        let pending = parse_callback_query(raw_query).and_then(|q| {
            let pending = self.store().take_oauth_state(&q.state)?;
            Ok((pending, q))
        });
        let (pending, query) = match pending {
            Ok(p) => p,
            Err(e) => {
                log_refusal(Flow::Callback, None, &e);
                return Err(e);
            }
        };
        let (flow, extension) = Flow::of(&pending.purpose);
        let extension = extension.map(str::to_owned);
        let result = self.complete(&pending, query).await;
        match &result {
            Ok(done) => {
                let account = match done {
                    Completed::AdminConsent { .. } => None,
                    Completed::DomainSignIn { account, .. }
                    | Completed::Paired { account, .. }
                    | Completed::UserSignedIn { account, .. } => Some(account.as_str()),
                };
                tracing::info!(
                    flow = flow.name(),
                    extension = extension.as_deref().unwrap_or("-"),
                    account = account.unwrap_or("-"),
                    outcome = "completed",
                    "oauth callback"
                );
            }
            Err(e) => log_refusal(flow, extension.as_deref(), e),
        }
        let back = pending.redirect_target.filter(|t| is_local_path(t));
        result.map(|completed| Finished { completed, back })
    }

    async fn complete(
        &self,
        pending: &OAuthState,
        query: CallbackQuery,
    ) -> Result<Completed, WebError> {
        match (next_step(&pending.purpose, query)?, &pending.purpose) {
            (Step::Consent { tenant }, _) => self.complete_admin_consent(&tenant).await,
            (Step::Exchange { code }, OAuthPurpose::DomainSignIn) => {
                self.complete_domain_sign_in(pending, &code).await
            }
            (Step::Exchange { code }, OAuthPurpose::PairExtension { extension }) => {
                self.complete_pairing(pending, extension, &code).await
            }
            (Step::Exchange { code }, OAuthPurpose::UserSignIn) => {
                self.complete_user_sign_in(pending, &code).await
            }
            (Step::Exchange { .. }, OAuthPurpose::AdminConsent) => {
                Err(WebError::BadCallback("a code for an admin consent request"))
            }
        }
    }

    async fn complete_admin_consent(&self, tenant: &str) -> Result<Completed, WebError> {
        let known = self.store().tenant_id()?;
        let tenant_id = consent_tenant(tenant, &self.graph().config().tenant, known.as_deref())?;
        let record = tenant_id.clone();
        blocking(self.store(), move |store| {
            store.set_tenant_id(&record)?;
            store.set_admin_consent(&AdminConsent {
                tenant_id: record.clone(),
                granted_at: SystemTime::now(),
            })
        })
        .await?;
        Ok(Completed::AdminConsent { tenant_id })
    }

    /// Exchanges the code with the stored verifier and validates the id_token.
    async fn sign_in(
        &self,
        pending: &OAuthState,
        code: &Secret<String>,
        scope: &str,
    ) -> Result<(TokenSet, IdClaims, Option<String>), WebError> {
        let (Some(verifier), Some(nonce)) = (&pending.pkce_verifier, &pending.nonce) else {
            return Err(WebError::Internal(
                "pending sign-in without PKCE verifier or nonce".into(),
            ));
        };
        let tokens = self
            .graph()
            .exchange_code(code, verifier, scope)
            .await
            .map_err(WebError::Exchange)?;
        let id_token = tokens.id_token.as_ref().ok_or(WebError::NoIdToken)?;
        let known = self.store().tenant_id()?;
        let expected = expected_tenant(known.as_deref(), &self.graph().config().tenant);
        let claims = self
            .validator()
            .validate(id_token, nonce, expected.as_deref())
            .await?;
        Ok((tokens, claims, known))
    }

    async fn complete_domain_sign_in(
        &self,
        pending: &OAuthState,
        code: &Secret<String>,
    ) -> Result<Completed, WebError> {
        let (tokens, claims, known) = self.sign_in(pending, code, DOMAIN_SCOPES).await?;
        let account = claims.account().to_owned();
        let tenant_id = claims.tenant_id.to_ascii_lowercase();
        let row = tokens.to_new_token(subject(&claims), Some(claims.object_id.clone()));
        let (owner, tid) = (account.clone(), tenant_id.clone());
        blocking(self.store(), move |store| {
            store.put_token(&TokenKey::domain(&tid), &row)?;
            store.set_domain_token_owner(&owner)?;
            if known.is_none() {
                store.set_tenant_id(&tid)?;
            }
            Ok(())
        })
        .await?;
        Ok(Completed::DomainSignIn { account, tenant_id })
    }

    async fn complete_pairing(
        &self,
        pending: &OAuthState,
        extension: &str,
        code: &Secret<String>,
    ) -> Result<Completed, WebError> {
        let (tokens, claims, _) = self.sign_in(pending, code, USER_SCOPES).await?;
        // the directory as it is now, not as it was when the pairing started
        let entry = self
            .store()
            .extension(extension)?
            .ok_or_else(|| WebError::UnknownExtension(extension.to_owned()))?;
        let email = entry
            .email
            .ok_or_else(|| WebError::NoEmail(extension.to_owned()))?;
        check_pairing_account(extension, &email, &claims)?;
        let row = tokens.to_new_token(subject(&claims), Some(claims.object_id.clone()));
        let resolution = Resolution::Resolved {
            graph_user_id: claims.object_id.clone(),
            display_name: claims.name.clone(),
        };
        let ext = extension.to_owned();
        blocking(self.store(), move |store| {
            store.put_token(&TokenKey::user(&ext), &row)?;
            store.set_resolution(&ext, &resolution)
        })
        .await?;
        let secret = self.sessions().issue(extension).map_err(random_error)?;
        Ok(Completed::Paired {
            extension: extension.to_owned(),
            account: claims.account().to_owned(),
            secret: Secret::new(secret),
        })
    }

    async fn complete_user_sign_in(
        &self,
        pending: &OAuthState,
        code: &Secret<String>,
    ) -> Result<Completed, WebError> {
        let (_tokens, claims, _) = self.sign_in(pending, code, SIGN_IN_SCOPES).await?;
        let account = claims.account().to_owned();
        let mut entry = None;
        for email in [
            claims.preferred_username.as_deref(),
            claims.email.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            entry = self.store().extension_by_email(email)?;
            if entry.is_some() {
                break;
            }
        }
        let entry = entry.ok_or_else(|| WebError::NoExtensionFor(account.clone()))?;
        let secret = self
            .portal_sessions()
            .issue(Who::User {
                extension: entry.extension.clone(),
                account: account.clone(),
            })
            .map_err(random_error)?;
        Ok(Completed::UserSignedIn {
            extension: entry.extension,
            account,
            secret: Secret::new(secret),
        })
    }

    /// Unpairs `extension`: clearPresence of the app's session with the user's own
    /// token (best effort), then deletes the token and forgets the pairing cookies.
    /// Access is the caller's business (the route checks the policies).
    pub async fn unpair(&self, extension: &str) -> Result<Unpaired, WebError> {
        let key = TokenKey::user(extension);
        let record = self
            .store()
            .get_token(&key)?
            .ok_or_else(|| WebError::NotPaired(extension.to_owned()))?;
        let user_id = match record.info.graph_user_oid.clone() {
            Some(id) => Some(id),
            None => self
                .store()
                .extension(extension)?
                .and_then(|e| e.graph_user_id),
        };
        let presence = match user_id {
            None => PresenceCleared::UnknownUser,
            Some(user_id) => {
                let sink =
                    StoreTokenSink::new(self.store().clone(), key.clone(), record.info.generation);
                let tokens = Tokens::delegated(
                    self.graph(),
                    TokenSet::from_record(&record),
                    USER_SCOPES,
                    Arc::new(sink),
                );
                match self.graph().clear_presence(&tokens, &user_id).await {
                    Ok(()) => PresenceCleared::Cleared,
                    Err(e) if e.is_not_found() => PresenceCleared::NoSession,
                    Err(e) => {
                        tracing::warn!(flow = Flow::Unpair.name(), extension, error = %e, "clearPresence failed; unpairing anyway");
                        PresenceCleared::Failed
                    }
                }
            }
        };
        let delete = key.clone();
        blocking(self.store(), move |store| store.delete_token(&delete)).await?;
        let revoked = self.sessions().revoke(extension);
        tracing::info!(
            flow = Flow::Unpair.name(),
            extension,
            presence = ?presence,
            cookies_revoked = revoked,
            outcome = "completed",
            "unpaired"
        );
        Ok(Unpaired {
            extension: extension.to_owned(),
            presence,
        })
    }

    // ---------------------------------------------------------------------------------
    // pages

    /// The completion page, or a 303 back to the portal page the flow started from
    /// (cookies kept).
    fn finished_page(&self, finished: &Finished) -> Response {
        let page = self.completed_page(&finished.completed);
        let Some(back) = &finished.back else {
            return page;
        };
        let mut response = pages::see_other(&self.url(back));
        for cookie in page.headers().get_all(header::SET_COOKIE) {
            response
                .headers_mut()
                .append(header::SET_COOKIE, cookie.clone());
        }
        response
    }

    fn completed_page(&self, done: &Completed) -> Response {
        match done {
            Completed::UserSignedIn {
                extension,
                account,
                secret,
            } => {
                let mut response = Page::new("Signed in")
                    .text_with_id(
                        "result",
                        &format!("{account} signed in for extension {extension}."),
                    )
                    .link(&self.url("/user"), "Continue")
                    .respond(StatusCode::OK);
                let cookie = self.portal_sessions().set_cookie(
                    secret.expose(),
                    &self.session_cookie_path(),
                    self.secure_cookies(),
                );
                set_cookie(&mut response, &cookie);
                response
            }
            Completed::AdminConsent { tenant_id } => Page::new("Admin consent recorded")
                .text_with_id(
                    "result",
                    &format!("Admin consent was granted for tenant {tenant_id}."),
                )
                .link(
                    &self.url(DOMAIN_SIGN_IN_PATH),
                    "Next: sign in for the domain token",
                )
                .respond(StatusCode::OK),
            Completed::DomainSignIn { account, tenant_id } => Page::new("Domain sign-in complete")
                .text_with_id(
                    "result",
                    &format!(
                        "{account} signed in for tenant {tenant_id}: the proxy can now read presence in the organisation."
                    ),
                )
                .respond(StatusCode::OK),
            Completed::Paired {
                extension,
                account,
                secret,
            } => {
                let mut response = Page::new("Extension paired")
                    .text_with_id(
                        "result",
                        &format!("Extension {extension} is now paired with the Teams account {account}."),
                    )
                    .text("This browser can undo it:")
                    .post_button(&self.unpair_url(extension), &format!("Unpair extension {extension}"))
                    .respond(StatusCode::OK);
                let cookie = self.sessions().set_cookie(
                    extension,
                    secret.expose(),
                    &self.cookie_path(),
                    self.secure_cookies(),
                );
                set_cookie(&mut response, &cookie);
                response
            }
        }
    }

    fn unpaired_page(&self, done: &Unpaired) -> Response {
        let note = match done.presence {
            PresenceCleared::Cleared => "Its presence in Teams was cleared.",
            PresenceCleared::NoSession => "It had no presence set in Teams.",
            PresenceCleared::Failed => {
                "Its presence in Teams could not be cleared; it fades on its own within hours."
            }
            PresenceCleared::UnknownUser => "No Teams user was known, so no presence was cleared.",
        };
        let mut response = Page::new("Extension unpaired")
            .text_with_id(
                "result",
                &format!(
                    "Extension {} is no longer paired with Teams.",
                    done.extension
                ),
            )
            .text(note)
            .respond(StatusCode::OK);
        set_cookie(
            &mut response,
            &PairingSessions::clear_cookie(
                &done.extension,
                &self.cookie_path(),
                self.secure_cookies(),
            ),
        );
        response
    }

    /// `{public base}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public_base())
    }

    /// Where the unpair form of `extension` posts to.
    pub fn unpair_url(&self, extension: &str) -> String {
        self.url(&format!("/oauth/unpair/{}", segment(extension)))
    }

    /// Where pairing `extension` starts.
    pub fn pair_url(&self, extension: &str) -> String {
        self.url(&format!("/oauth/pair/{}", segment(extension)))
    }

    /// The path of the portal's session cookie: the whole site under the base path.
    pub fn session_cookie_path(&self) -> String {
        format!("{}/", self.public_path())
    }

    fn cookie_path(&self) -> String {
        format!("{}{COOKIE_PATH}", self.public_path())
    }
}

/// Whether `target` is a path on this site (`/x`, never `//host` or a URL).
fn is_local_path(target: &str) -> bool {
    target.starts_with('/') && !target.starts_with("//") && !target.contains(['\\', '\r', '\n'])
}

/// The UPN (`preferred_username`), else the email, to record as the token's subject.
fn subject(claims: &IdClaims) -> Option<String> {
    claims
        .preferred_username
        .clone()
        .or_else(|| claims.email.clone())
}

fn set_cookie(response: &mut Response, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
        Err(_) => tracing::error!("cannot build the pairing cookie header"),
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        self.respond()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: &str = "7f4e2c1a-5b3d-4e8f-9a6b-0c1d2e3f4a5b";

    fn pair(ext: &str) -> OAuthPurpose {
        OAuthPurpose::PairExtension {
            extension: ext.into(),
        }
    }

    #[test]
    fn callback_query_parsing() {
        let q = parse_callback_query("code=c%2B1&state=s1&session_state=x")
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(q.state, "s1");
        assert_eq!(q.code.as_ref().map(|c| c.expose().as_str()), Some("c+1"));
        assert!(!format!("{q:?}").contains("c+1"), "the code is redacted");
        assert!(matches!(
            parse_callback_query("code=c"),
            Err(WebError::MissingState)
        ));
        assert!(matches!(
            parse_callback_query("state="),
            Err(WebError::MissingState)
        ));
        assert!(matches!(
            parse_callback_query("state=a&state=b"),
            Err(WebError::MissingState)
        ));
        assert!(matches!(
            parse_callback_query("state=a&code=1&code=2"),
            Err(WebError::BadCallback(_))
        ));
        assert!(matches!(
            parse_callback_query("state=a&tenant=1&tenant=2"),
            Err(WebError::BadCallback(_))
        ));
    }

    #[test]
    fn error_comes_before_anything_else() {
        // §6.1: admin_consent=True appears even on error
        let q = parse_callback_query(&format!(
            "admin_consent=True&tenant={TID}&error=consent_required&error_description=AADSTS65004%3A+declined&state=s"
        ))
        .unwrap_or_else(|e| unreachable!("{e}"));
        match next_step(&OAuthPurpose::AdminConsent, q) {
            Err(WebError::Provider { error, description }) => {
                assert_eq!(error, "consent_required");
                assert_eq!(description.as_deref(), Some("AADSTS65004: declined"));
            }
            other => unreachable!("{other:?}"),
        }
        // a code next to an error is not exchanged
        let q = parse_callback_query("code=c&error=access_denied&state=s")
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(matches!(
            next_step(&pair("201"), q),
            Err(WebError::Provider { .. })
        ));
    }

    #[test]
    fn steps_per_purpose() {
        let q = |s: &str| parse_callback_query(s).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(matches!(
            next_step(&OAuthPurpose::AdminConsent, q(&format!("admin_consent=True&tenant={TID}&state=s"))),
            Ok(Step::Consent { tenant }) if tenant == TID
        ));
        assert!(matches!(
            next_step(
                &OAuthPurpose::AdminConsent,
                q(&format!("admin_consent=False&tenant={TID}&state=s"))
            ),
            Err(WebError::BadCallback(_))
        ));
        assert!(matches!(
            next_step(&OAuthPurpose::AdminConsent, q("admin_consent=True&state=s")),
            Err(WebError::BadCallback(_))
        ));
        assert!(matches!(
            next_step(&OAuthPurpose::DomainSignIn, q("code=abc&state=s")),
            Ok(Step::Exchange { .. })
        ));
        assert!(matches!(
            next_step(
                &pair("201"),
                q(&format!("admin_consent=True&tenant={TID}&state=s"))
            ),
            Err(WebError::BadCallback(_))
        ));
    }

    #[test]
    fn consent_tenant_rules() {
        let other = "00000000-1111-2222-3333-444444444444";
        assert_eq!(
            consent_tenant(TID, "contoso.example", None).ok().as_deref(),
            Some(TID)
        );
        assert!(matches!(
            consent_tenant("contoso.example", "contoso.example", None),
            Err(WebError::BadCallback(_))
        ));
        assert!(matches!(
            consent_tenant(other, TID, None),
            Err(WebError::TenantMismatch { .. })
        ));
        assert!(matches!(
            consent_tenant(other, "contoso.example", Some(TID)),
            Err(WebError::TenantMismatch { .. })
        ));
        assert!(consent_tenant(&TID.to_uppercase(), TID, Some(TID)).is_ok());
        assert_eq!(expected_tenant(None, "contoso.example"), None);
        assert_eq!(expected_tenant(None, TID).as_deref(), Some(TID));
        assert_eq!(
            expected_tenant(Some(other), TID).as_deref(),
            Some(other),
            "the store wins"
        );
        assert!(is_guid(TID) && !is_guid("7f4e2c1a5b3d4e8f9a6b0c1d2e3f4a5b") && !is_guid("common"));
    }

    #[test]
    fn pairing_account_must_match() {
        let claims = IdClaims {
            tenant_id: TID.into(),
            object_id: "oid".into(),
            preferred_username: Some("Alice@Contoso.example".into()),
            email: Some("alice.wong@contoso.example".into()),
            name: None,
        };
        assert!(check_pairing_account("201", "alice@contoso.example", &claims).is_ok());
        assert!(check_pairing_account("201", "ALICE.WONG@contoso.example", &claims).is_ok());
        match check_pairing_account("202", "bob@contoso.example", &claims) {
            Err(e @ WebError::WrongUser { .. }) => {
                assert_eq!(e.status(), StatusCode::FORBIDDEN);
                let text = e.to_string();
                assert!(
                    text.contains("202") && text.contains("Alice@Contoso.example"),
                    "{text}"
                );
            }
            other => unreachable!("{other:?}"),
        }
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("201"), "201");
        assert_eq!(segment("1#2+3"), "1%232%2B3");
    }
}
