//! The Microsoft Graph client: tokens from the Microsoft identity platform and the
//! presence and user calls the product makes, against the real URL shapes of
//! `shared/reference/graph.md` with configurable bases (the emulator in tests and the demo).
//!
//! ```text
//!  GraphConfig ─▶ GraphClient ─(budget, retries, 401 → refresh)─▶ Graph v1.0
//!                     ▲                         │
//!            Tokens (app-only | delegated) ─────┘  token endpoint (client credentials,
//!                     │                            code + PKCE, refresh with rotation)
//!                TokenSink (the store)
//! ```
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`GraphConfig`], [`RetryPolicy`], the re-exports |
//! | `error.rs` | [`GraphError`]: Graph error bodies (§4.2), token errors (§6.4), `needs_repairing` |
//! | `tokens.rs` | [`TokenSet`], [`Tokens`] (refresh ahead of expiry, rotation through [`TokenSink`]), [`Pkce`], authorize and admin-consent URLs |
//! | `client.rs` | [`GraphClient`]: token-endpoint requests, users (cached), setPresence, clearPresence, preferred presence, GET presence, getPresencesByUserId in batches of 650; retries; the counters of [`GraphClient::metrics`] (attempts by endpoint and status, retries, 429s, token refreshes) |
//! | `budget.rs` | [`RequestBudget`]: at most 1,500 Graph requests per 30 s per tenant (§4.1) |
//! | `store_sink.rs` | [`StoreTokenSink`]: rotations and "needs re-pairing" written to the store by compare-and-swap; `TokenSet` ↔ token row |
//! | `subscriptions.rs` | presence change notifications (§3): create/renew/delete/list on [`GraphClient`], the sans-IO [`PresenceSubscriptions`] manager (slots of ≤ 650 ids, renewal, recreate, catch-up polls), [`SubscriptionDriver`], the webhook ([`notification_routes`], [`NotificationReceiver`]) |
//! | `presence.rs` | [`Availability`], [`Activity`], [`Presence`], the settable pairs [`SessionPresence`] and [`PreferredPresence`], ISO 8601 durations |
//!
//! Resilience: 429 waits Retry-After (seconds; exponential backoff without one) and
//! retries; 5xx and transport errors back off exponentially with full jitter; both are
//! bounded by [`RetryPolicy::max_attempts`]. A 401 from Graph gets one token refresh and
//! one retry. Every attempt takes a slot of the tenant's [`RequestBudget`]. Waiting uses
//! tokio time.
//!
//! No token, code, verifier or client secret is ever logged or part of an error: they
//! are [`Secret`]s, and log lines carry method, path and status only.

mod budget;
mod client;
mod error;
mod presence;
mod store_sink;
mod subscriptions;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

pub use budget::RequestBudget;
pub use client::{GraphClient, User};
pub use error::{GraphError, SubscriptionRefusal};
pub use presence::{
    Activity, Availability, PreferredPresence, Presence, SESSION_MAX, SESSION_MIN, SessionPresence,
    iso8601,
};
pub use store_sink::StoreTokenSink;

pub use crate::metrics::{GraphMetrics, GraphRequestCount, GraphStatus};
pub use subscriptions::{
    CatchUpReason, DriverCommand, MAX_IDS_PER_SUBSCRIPTION, MAX_SUBSCRIPTION_LIFETIME,
    NOTIFICATION_PATH, Notification, NotificationReceiver, PresenceChange, PresenceSubscriptions,
    Subscription, SubscriptionAction, SubscriptionConfig, SubscriptionDriver, SubscriptionEvent,
    SubscriptionRequest, format_datetime, new_client_state, notification_handler,
    notification_routes, parse_datetime, presence_resource,
};
pub use tokens::{
    APP_SCOPE, AuthorizeRequest, DOMAIN_SCOPES, Pkce, TokenSet, TokenSink, Tokens, USER_SCOPES,
    random_url_safe,
};

use crate::store::Secret;

/// The real identity platform.
pub const DEFAULT_LOGIN_BASE: &str = "https://login.microsoftonline.com";
/// The real Graph v1.0.
pub const DEFAULT_GRAPH_BASE: &str = "https://graph.microsoft.com/v1.0";
/// Most user ids per getPresencesByUserId request (graph.md §2.2).
pub const MAX_IDS_PER_REQUEST: usize = 650;

/// How failed requests are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (default 5).
    pub max_attempts: u32,
    /// First backoff for 5xx / transport errors / 429 without Retry-After (default 500 ms);
    /// doubles per attempt, full jitter.
    pub base_delay: Duration,
    /// Longest backoff (default 30 s).
    pub max_delay: Duration,
    /// Longest Retry-After honoured by waiting; longer ones fail at once with
    /// [`GraphError::Throttled`] (default 120 s).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// One tenant's app registration and where to reach the identity platform and Graph.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    /// Tenant id or verified domain (never `common` for admin consent).
    pub tenant: String,
    /// The application (client) id; also the setPresence `sessionId` (graph.md §1.2).
    pub client_id: String,
    /// The client secret.
    pub client_secret: Secret<String>,
    /// The registered redirect URI of the OAuth callback.
    pub redirect_uri: String,
    /// Default [`DEFAULT_LOGIN_BASE`].
    pub login_base: String,
    /// Default [`DEFAULT_GRAPH_BASE`].
    pub graph_base: String,
    /// Refresh an access token this long before it expires (default 5 min).
    pub refresh_ahead: Duration,
    /// How long a resolved user id is trusted (default 1 h).
    pub user_cache_ttl: Duration,
    /// Graph requests per [`GraphConfig::budget_window`] (default 1,500, graph.md §4.1).
    pub budget_limit: usize,
    /// Default 30 s.
    pub budget_window: Duration,
    /// A budget shared with other clients of the same tenant; `None` makes one from
    /// `budget_limit` / `budget_window`.
    pub shared_budget: Option<Arc<RequestBudget>>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Per-request timeout (default 30 s).
    pub request_timeout: Duration,
}

impl GraphConfig {
    /// A configuration with the real bases and default limits.
    pub fn new(
        tenant: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<Secret<String>>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        Self {
            tenant: tenant.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uri: redirect_uri.into(),
            login_base: DEFAULT_LOGIN_BASE.into(),
            graph_base: DEFAULT_GRAPH_BASE.into(),
            refresh_ahead: Duration::from_secs(300),
            user_cache_ttl: Duration::from_secs(3600),
            budget_limit: 1500,
            budget_window: Duration::from_secs(30),
            shared_budget: None,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Replaces both bases (the emulator's `login_url()` and `graph_url()`).
    pub fn with_bases(
        mut self,
        login_base: impl Into<String>,
        graph_base: impl Into<String>,
    ) -> Self {
        self.login_base = login_base.into();
        self.graph_base = graph_base.into();
        self
    }
}
