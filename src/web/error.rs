//! [`WebError`]: every way an OAuth route refuses or fails, with the status and the page
//! it answers with. No variant carries a code, token, verifier, nonce, `state` or secret,
//! so `Display` is safe in a log line and on a page.

use axum::http::StatusCode;
use axum::response::Response;

use super::id_token::IdTokenError;
use super::pages::Page;
use crate::graph::GraphError;
use crate::store::StoreError;

/// A refused or failed OAuth request.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The service cannot be built from these arguments.
    #[error("web configuration: {0}")]
    Config(String),
    /// The callback has no `state`, or one given twice.
    #[error("the callback carries no usable state")]
    MissingState,
    /// No pending sign-in has this `state`: never issued, already used, or swept.
    #[error("unknown or already used sign-in request")]
    StateUnknown,
    /// The pending sign-in expired.
    #[error("the sign-in request expired")]
    StateExpired,
    /// A callback parameter is missing, repeated or does not fit the flow.
    #[error("the callback is not valid for this sign-in: {0}")]
    BadCallback(&'static str),
    /// The identity platform redirected back with `error`.
    #[error("the identity platform answered {error}")]
    Provider {
        /// The OAuth `error` (`access_denied`, `consent_required`, ...).
        error: String,
        /// `error_description`, as sent (AADSTS text, no secrets).
        description: Option<String>,
    },
    /// Admin consent came back for another tenant than this proxy's.
    #[error("consent was granted for tenant {found}, but this proxy belongs to tenant {expected}")]
    TenantMismatch {
        /// The tenant this proxy belongs to.
        expected: String,
        /// The tenant in the callback.
        found: String,
    },
    /// The code exchange failed (bad code, PKCE mismatch, unreachable endpoint, ...).
    #[error("the sign-in could not be completed: {0}")]
    Exchange(#[source] GraphError),
    /// The token response has no id_token (`openid` was asked for).
    #[error("the identity platform sent no id_token")]
    NoIdToken,
    /// The id_token was refused.
    #[error("the sign-in could not be verified: {0}")]
    IdToken(#[from] IdTokenError),
    /// Pairing: the account that signed in is not the extension's.
    #[error("extension {extension} belongs to {expected}, but {signed_in} signed in")]
    WrongUser {
        /// The extension being paired.
        extension: String,
        /// Its directory email.
        expected: String,
        /// The account in the id_token.
        signed_in: String,
    },
    /// The extension is not in the directory.
    #[error("extension {0} is not in the directory")]
    UnknownExtension(String),
    /// The extension has no email to pair with.
    #[error("extension {0} has no email address in the directory")]
    NoEmail(String),
    /// A portal sign-in by an account that no extension's email names.
    #[error("no extension in the directory has the email {0}")]
    NoExtensionFor(String),
    /// The extension has no paired token.
    #[error("extension {0} is not paired")]
    NotPaired(String),
    /// No access policy allows this request.
    #[error("not allowed")]
    Forbidden,
    /// Too many sign-ins are pending.
    #[error("too many sign-ins are pending; try again later")]
    Busy,
    /// The store failed.
    #[error("store: {0}")]
    Store(#[source] StoreError),
    /// Something else failed (random generator, a blocking task).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for WebError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::OAuthStateUnknown => Self::StateUnknown,
            StoreError::OAuthStateExpired => Self::StateExpired,
            StoreError::TooManyPendingOAuthStates(_) => Self::Busy,
            StoreError::UnknownExtension(ext) => Self::UnknownExtension(ext),
            other => Self::Store(other),
        }
    }
}

impl WebError {
    /// The HTTP status of the refusal page.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingState
            | Self::StateUnknown
            | Self::StateExpired
            | Self::BadCallback(_)
            | Self::Provider { .. }
            | Self::IdToken(_)
            | Self::Exchange(GraphError::Token { .. }) => StatusCode::BAD_REQUEST,
            Self::TenantMismatch { .. }
            | Self::WrongUser { .. }
            | Self::Forbidden
            | Self::NoExtensionFor(_) => StatusCode::FORBIDDEN,
            Self::UnknownExtension(_) | Self::NotPaired(_) => StatusCode::NOT_FOUND,
            Self::NoEmail(_) => StatusCode::CONFLICT,
            Self::Exchange(_) | Self::NoIdToken => StatusCode::BAD_GATEWAY,
            Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::Config(_) | Self::Store(_) | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// A short name for logs (`outcome = ...`).
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::MissingState | Self::StateUnknown => "state_refused",
            Self::StateExpired => "state_expired",
            Self::BadCallback(_) => "bad_callback",
            Self::Provider { .. } => "provider_error",
            Self::TenantMismatch { .. } => "tenant_mismatch",
            Self::Exchange(_) => "exchange_failed",
            Self::NoIdToken | Self::IdToken(_) => "id_token_refused",
            Self::WrongUser { .. } => "wrong_user",
            Self::UnknownExtension(_) => "unknown_extension",
            Self::NoEmail(_) => "no_email",
            Self::NotPaired(_) => "not_paired",
            Self::NoExtensionFor(_) => "no_extension",
            Self::Forbidden => "forbidden",
            Self::Busy => "busy",
            Self::Store(_) => "store_error",
            Self::Internal(_) => "internal_error",
        }
    }

    /// The refusal page.
    pub fn page(&self) -> Page {
        match self {
            Self::MissingState | Self::StateUnknown => Page::new("Sign-in refused")
                .text_with_id(
                    "error",
                    "This sign-in link is unknown or was already used. Start again from the beginning.",
                ),
            Self::StateExpired => Page::new("Sign-in expired").text_with_id(
                "error",
                "This sign-in took too long and has expired. Start again.",
            ),
            Self::Provider { error, description } => {
                let page = Page::new("Sign-in not completed").text_with_id(
                    "error",
                    &format!("Microsoft answered: {error}. Nothing was changed."),
                );
                match description {
                    Some(d) => page.text_with_id("error-description", d),
                    None => page,
                }
            }
            Self::WrongUser {
                extension,
                expected,
                signed_in,
            } => Page::new("Wrong account")
                .text_with_id(
                    "error",
                    &format!(
                        "Extension {extension} can only be paired by {expected}, but you signed in as {signed_in}. Nothing was stored."
                    ),
                )
                .text("Sign out of that account, or choose the right one, and start the pairing again."),
            Self::Forbidden => Page::new("Not allowed").text_with_id(
                "error",
                "You are not allowed to do this from this browser.",
            ),
            Self::Store(_) | Self::Internal(_) | Self::Config(_) => {
                Page::new("Something went wrong").text_with_id(
                    "error",
                    "The proxy could not complete this request. The details are in its log.",
                )
            }
            other => Page::new("Sign-in not completed").text_with_id("error", &other.to_string()),
        }
    }

    /// The refusal page with its status.
    pub fn respond(&self) -> Response {
        self.page().respond(self.status())
    }
}
