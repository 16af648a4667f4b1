//! The emulator's shared state, and the cross-cutting parts of request handling: the
//! request log, injected faults, the presence throttle (graph.md §4.1) and the sweep that
//! turns presence changes into change notifications.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::clock::{Clock, Instant, graph_datetime};
use super::crypto::Signer;
use super::presence::UserPresence;
use super::seed::{Seed, UserSeed};
use super::subscriptions::{self, Subscription};
use super::{EmulatorConfig, EmulatorError, graph};

/// Most entries the request log keeps (oldest dropped first).
const LOG_CAPACITY: usize = 10_000;

/// An authorization code waiting for its exchange (graph.md §6.2).
#[derive(Debug, Clone)]
pub(crate) struct AuthCode {
    /// The app it was issued to.
    pub(crate) client_id: String,
    /// The redirect URI of the authorize request; the exchange must repeat it.
    pub(crate) redirect_uri: String,
    /// The requested scopes, as given.
    pub(crate) scopes: Vec<String>,
    /// The signed-in user's object id.
    pub(crate) user_id: String,
    /// The authorize request's nonce, echoed in the id_token.
    pub(crate) nonce: Option<String>,
    /// `(code_challenge, code_challenge_method)`.
    pub(crate) challenge: Option<(String, String)>,
    /// When the code lapses (about 10 minutes, §6.2).
    pub(crate) expires_at: Instant,
}

/// A live refresh token's grant (graph.md §6.5).
#[derive(Debug, Clone)]
pub(crate) struct RefreshGrant {
    /// The app it was issued to.
    pub(crate) client_id: String,
    /// The user.
    pub(crate) user_id: String,
    /// The scopes of the original request.
    pub(crate) scopes: Vec<String>,
    /// When it lapses.
    pub(crate) expires_at: Instant,
}

/// Why a refresh token is no longer accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadRefresh {
    /// Replaced by a newer one (rotation, §6.5).
    Rotated,
    /// Revoked through the control API (an admin revoke, §6.5).
    Revoked,
}

/// One request-log entry: never a query string, header or body.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LogEntry {
    /// Position in the log since start.
    pub(crate) seq: u64,
    /// Emulator time.
    pub(crate) at: String,
    /// HTTP method.
    pub(crate) method: String,
    /// Path without the query string.
    pub(crate) path: String,
    /// Response status.
    pub(crate) status: u16,
    /// When the request reached the emulator (its head parsed, before faults and the
    /// handler), in microseconds since the Unix epoch on the real wall clock, not the
    /// emulator clock: for latency measurements from the same machine.
    pub(crate) received_unix_us: u64,
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FaultScope {
    /// Graph (`/v1.0/...`) only.
    #[default]
    Graph,
    /// Login (`/{tenant}/...`) only.
    Login,
    /// Both.
    All,
}

impl FaultScope {
    fn covers(self, path: &str) -> bool {
        let graph = path.starts_with("/v1.0/") || path == "/v1.0";
        match self {
            FaultScope::Graph => graph,
            FaultScope::Login => !graph,
            FaultScope::All => true,
        }
    }
}

/// Fail the next `count` requests in `scope` with `status`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct FailNext {
    /// How many requests.
    pub(crate) count: u32,
    /// The status (default 503).
    #[serde(default = "default_fail_status")]
    pub(crate) status: u16,
    /// Retry-After seconds to send with it, if any.
    #[serde(default)]
    pub(crate) retry_after: Option<u64>,
    /// Which requests.
    #[serde(default)]
    pub(crate) scope: FaultScope,
}

fn default_fail_status() -> u16 {
    503
}

/// Faults to inject (control API `PUT /_emulator/faults`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub(crate) struct Faults {
    /// Delay added before every login and Graph response.
    #[serde(default)]
    pub(crate) latency_ms: u64,
    /// Fail the next requests with a 5xx (or any status).
    #[serde(default)]
    pub(crate) fail_next: Option<FailNext>,
    /// Throttle the next requests: 429 with Retry-After (`status` is ignored).
    #[serde(default)]
    pub(crate) throttle_next: Option<FailNext>,
}

/// Mutable state behind one lock. No lock is held across an await.
#[derive(Debug)]
pub(crate) struct Inner {
    /// Tenant, app and users (the control API may add redirect URIs).
    pub(crate) seed: Seed,
    /// Whether the tenant admin granted consent to the app.
    pub(crate) admin_consent: bool,
    /// Codes waiting for exchange.
    pub(crate) codes: HashMap<String, AuthCode>,
    /// Codes already redeemed (a second use is refused).
    pub(crate) used_codes: HashSet<String>,
    /// Live refresh tokens.
    pub(crate) refresh_tokens: HashMap<String, RefreshGrant>,
    /// Dead refresh tokens and why.
    pub(crate) dead_refresh_tokens: HashMap<String, DeadRefresh>,
    /// Presence per user object id (lower case).
    pub(crate) presence: HashMap<String, UserPresence>,
    /// Subscriptions by id.
    pub(crate) subscriptions: BTreeMap<String, Subscription>,
    /// Presence request times per (tenant, app) for the throttle.
    pub(crate) throttle: HashMap<(String, String), VecDeque<Instant>>,
    /// Injected faults.
    pub(crate) faults: Faults,
    /// The request log.
    pub(crate) log: VecDeque<LogEntry>,
    /// Requests logged so far.
    pub(crate) log_seq: u64,
    /// Lower-case user object id → index in `seed.users` (the seed's users do not change
    /// after start): lookups of 10,000 users stay cheap.
    user_index: HashMap<String, usize>,
}

impl Inner {
    /// A user by object id, case-insensitive, through the index.
    pub(crate) fn user_by_id(&self, id: &str) -> Option<&UserSeed> {
        self.user_index
            .get(&id.to_ascii_lowercase())
            .and_then(|&i| self.seed.users.get(i))
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Configuration (the seed in it is the initial one; see [`Inner::seed`]).
    pub(crate) config: EmulatorConfig,
    /// `http://127.0.0.1:P`.
    pub(crate) base: String,
    /// The clock.
    pub(crate) clock: Clock,
    /// The token signer.
    pub(crate) signer: Signer,
    inner: Mutex<Inner>,
}

impl Shared {
    /// Builds the state from a configuration.
    pub(crate) fn new(config: EmulatorConfig, base: String) -> Result<Self, EmulatorError> {
        let clock = Clock::default();
        let now = clock.now();
        let mut presence = HashMap::new();
        for user in &config.seed.users {
            let mut p = UserPresence::default();
            p.observe(now);
            presence.insert(user.id.to_ascii_lowercase(), p);
        }
        let inner = Inner {
            seed: config.seed.clone(),
            admin_consent: config.seed.app.admin_consent,
            codes: HashMap::new(),
            used_codes: HashSet::new(),
            refresh_tokens: HashMap::new(),
            dead_refresh_tokens: HashMap::new(),
            presence,
            subscriptions: BTreeMap::new(),
            throttle: HashMap::new(),
            faults: Faults::default(),
            log: VecDeque::new(),
            log_seq: 0,
            user_index: config
                .seed
                .users
                .iter()
                .enumerate()
                .map(|(i, u)| (u.id.to_ascii_lowercase(), i))
                .collect(),
        };
        Ok(Self {
            config,
            base,
            clock,
            signer: Signer::new()?,
            inner: Mutex::new(inner),
        })
    }

    /// Locks the mutable state (a poisoned lock is taken over: the state stays usable).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Now, in emulator time.
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The issuer of every token: `{login_base}/{tenant id}/v2.0`.
    pub(crate) fn issuer(&self, tenant_id: &str) -> String {
        format!("{}/{tenant_id}/v2.0", self.base)
    }

    /// Counts one presence request of (tenant, app) and says whether it is over the limit:
    /// `Some(retry_after_seconds)` when it must be refused (graph.md §4.1, §4.2).
    pub(crate) fn throttle(&self, tenant: &str, app: &str) -> Option<u64> {
        let now = self.now();
        let window = self.config.presence_window;
        let limit = self.config.presence_rate_limit;
        let mut inner = self.lock();
        let times = inner
            .throttle
            .entry((tenant.to_owned(), app.to_owned()))
            .or_default();
        while times
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= window)
        {
            times.pop_front();
        }
        if times.len() >= limit {
            let oldest = times.front().copied().unwrap_or(now);
            let wait = (oldest + window).saturating_sub(now);
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Some(secs.max(1));
        }
        times.push_back(now);
        None
    }

    /// Re-aggregates every user's presence; for each change, sends a notification to every
    /// live subscription that covers the user (graph.md §3.1). Also drops lapsed
    /// subscriptions and expired codes.
    pub(crate) fn sweep(self: &Arc<Self>) {
        let now = self.now();
        let deliveries = {
            let mut inner = self.lock();
            inner.subscriptions.retain(|_, s| s.expires_at > now);
            inner.codes.retain(|_, c| c.expires_at > now);
            let mut changed = Vec::new();
            for (id, p) in inner.presence.iter_mut() {
                if p.observe(now) {
                    changed.push(id.clone());
                }
            }
            changed.sort();
            let tenant_id = inner.seed.tenant.id.clone();
            let mut deliveries = Vec::new();
            for sub in inner.subscriptions.values() {
                let users: Vec<String> = changed
                    .iter()
                    .filter(|id| sub.user_ids.iter().any(|u| u.eq_ignore_ascii_case(id)))
                    .map(|id| {
                        inner
                            .user_by_id(id)
                            .map_or_else(|| id.clone(), |u| u.id.clone())
                    })
                    .collect();
                if !users.is_empty() {
                    deliveries.push(subscriptions::notification(sub, &users, &tenant_id));
                }
            }
            deliveries
        };
        for delivery in deliveries {
            tokio::spawn(subscriptions::deliver(self.clone(), delivery));
        }
    }

    /// Current emulator time as Graph writes it.
    pub(crate) fn now_string(&self) -> String {
        graph_datetime(self.now())
    }
}

/// The background sweep: notices fading and expiry as time passes.
pub(crate) async fn sweep_loop(shared: Arc<Shared>) {
    let mut tick =
        tokio::time::interval(shared.config.sweep_interval.max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        shared.sweep();
    }
}

/// Middleware: applies injected faults to login and Graph requests, then logs every
/// request's method, path and status (never the query string: it may carry a code).
pub(crate) async fn log_and_faults(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let received_unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let control = path.starts_with("/_emulator");
    let mut injected = None;
    let mut latency = 0;
    if !control {
        let mut inner = shared.lock();
        latency = inner.faults.latency_ms;
        injected = take_fault(&mut inner.faults.throttle_next, &path)
            .map(|f| (429, f.retry_after.or(Some(1))))
            .or_else(|| {
                take_fault(&mut inner.faults.fail_next, &path).map(|f| (f.status, f.retry_after))
            });
    }
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let response = match injected {
        Some((status, retry_after)) => injected_response(&shared, status, retry_after),
        None => next.run(request).await,
    };
    let status = response.status().as_u16();
    tracing::debug!(%method, %path, status, "graph emulator request");
    let at = shared.now_string();
    let mut inner = shared.lock();
    inner.log_seq += 1;
    let seq = inner.log_seq;
    inner.log.push_back(LogEntry {
        seq,
        at,
        method,
        path,
        status,
        received_unix_us,
    });
    while inner.log.len() > LOG_CAPACITY {
        inner.log.pop_front();
    }
    response
}

fn take_fault(slot: &mut Option<FailNext>, path: &str) -> Option<FailNext> {
    let fault = slot.as_mut()?;
    if !fault.scope.covers(path) || fault.count == 0 {
        return None;
    }
    fault.count -= 1;
    let taken = fault.clone();
    if fault.count == 0 {
        *slot = None;
    }
    Some(taken)
}

fn injected_response(shared: &Shared, status: u16, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = if status == StatusCode::TOO_MANY_REQUESTS {
        graph::too_many_requests(shared, retry_after.unwrap_or(1))
    } else {
        let code = match status.as_u16() {
            500 => "generalException",
            502 => "BadGateway",
            503 => "ServiceUnavailable",
            504 => "GatewayTimeout",
            _ => "UnknownError",
        };
        graph::error(shared, status, code, "Injected fault (graph emulator).")
    };
    if let Some(secs) = retry_after {
        if let Ok(value) = axum::http::HeaderValue::from_str(&secs.to_string()) {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
    }
    response.into_response()
}
