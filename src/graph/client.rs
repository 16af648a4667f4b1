//! [`GraphClient`]: the HTTP side. Token-endpoint requests (client credentials, code +
//! PKCE, refresh), the user and presence calls of graph.md §1, §2 and §5, and the one
//! request loop they all go through: the tenant's [`RequestBudget`], 429 → Retry-After,
//! 5xx/transport → backoff with jitter, 401 → one refresh and retry.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use reqwest::header::RETRY_AFTER;
use reqwest::{Method, Url};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::presence::session_duration;
use super::tokens::APP_SCOPE;
use super::{
    GraphConfig, GraphError, MAX_IDS_PER_REQUEST, PreferredPresence, Presence, RequestBudget,
    SessionPresence, TokenSet, Tokens, iso8601,
};
use crate::metrics::{GraphMetrics, GraphRequestCount, GraphStatus};
use crate::store::Secret;

/// A Graph user, as far as the product needs one (graph.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    /// The object id: what presence calls take.
    pub id: String,
    /// The UPN.
    #[serde(default, rename = "userPrincipalName")]
    pub user_principal_name: Option<String>,
    /// The mail address.
    #[serde(default)]
    pub mail: Option<String>,
    /// The display name.
    #[serde(default, rename = "displayName")]
    pub display_name: Option<String>,
}

const USER_SELECT: &str = "id,userPrincipalName,mail,displayName";

/// The Graph client of one tenant. A cheap `Clone` (an `Arc`).
#[derive(Debug, Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: GraphConfig,
    graph_base: Url,
    http: reqwest::Client,
    budget: Arc<RequestBudget>,
    users: Mutex<HashMap<String, (User, Instant)>>,
    counters: Counters,
}

/// What the request loop and the credentials count (read by [`GraphClient::metrics`]).
#[derive(Debug, Default)]
struct Counters {
    /// Attempts by (endpoint, status).
    requests: Mutex<HashMap<(&'static str, GraphStatus), u64>>,
    retries: AtomicU64,
    throttled: AtomicU64,
    token_refreshes_ok: AtomicU64,
    token_refreshes_failed: AtomicU64,
}

impl Counters {
    fn request(&self, endpoint: &'static str, status: GraphStatus) {
        *self.requests.lock().entry((endpoint, status)).or_insert(0) += 1;
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whom a request goes to.
#[derive(Clone, Copy)]
pub(super) enum Target<'a> {
    Graph(&'a Tokens),
    Login,
}

/// A request body.
pub(super) enum Body<'a> {
    None,
    Json(&'a Value),
    Form(&'a [(&'a str, &'a str)]),
}

impl GraphClient {
    /// A client for `config`'s tenant (rustls, no redirects followed).
    pub fn new(config: GraphConfig) -> Result<Self, GraphError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.request_timeout)
            .user_agent(concat!("presence-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(GraphError::transport)?;
        let mut graph_base = Url::parse(config.graph_base.trim_end_matches('/'))
            .map_err(|e| GraphError::InvalidRequest(format!("graph_base: {e}")))?;
        if graph_base.cannot_be_a_base() {
            return Err(GraphError::InvalidRequest(
                "graph_base is not a base URL".into(),
            ));
        }
        graph_base.set_query(None);
        let budget = config.shared_budget.clone().unwrap_or_else(|| {
            Arc::new(RequestBudget::new(
                config.budget_limit,
                config.budget_window,
            ))
        });
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                graph_base,
                http,
                budget,
                users: Mutex::new(HashMap::new()),
                counters: Counters::default(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GraphConfig {
        &self.inner.config
    }

    /// The tenant's request budget (share it with other clients of the tenant).
    pub fn budget(&self) -> &Arc<RequestBudget> {
        &self.inner.budget
    }

    /// A snapshot of the client's counters: every attempt by endpoint and status,
    /// retries, 429 answers and token refreshes, since the client was made (clones
    /// share them).
    pub fn metrics(&self) -> GraphMetrics {
        let c = &self.inner.counters;
        let mut requests: Vec<((&'static str, GraphStatus), u64)> = c
            .requests
            .lock()
            .iter()
            .map(|(key, count)| (*key, *count))
            .collect();
        requests.sort();
        GraphMetrics {
            requests: requests
                .into_iter()
                .map(|((endpoint, status), count)| GraphRequestCount {
                    endpoint: endpoint.to_owned(),
                    status: status.label(),
                    count,
                })
                .collect(),
            retries: c.retries.load(Ordering::Relaxed),
            throttled: c.throttled.load(Ordering::Relaxed),
            token_refreshes_ok: c.token_refreshes_ok.load(Ordering::Relaxed),
            token_refreshes_failed: c.token_refreshes_failed.load(Ordering::Relaxed),
        }
    }

    /// Counts a token refresh by a credential of this client ([`Tokens`]).
    pub(super) fn count_token_refresh(&self, ok: bool) {
        let c = &self.inner.counters;
        Counters::bump(if ok {
            &c.token_refreshes_ok
        } else {
            &c.token_refreshes_failed
        });
    }

    /// The metrics label of a request: `token` for the token endpoint, else named after
    /// the Graph resource or action its path ends in. A fixed set, so label values
    /// never grow with user ids.
    fn endpoint(&self, target: Target<'_>, url: &Url) -> &'static str {
        if let Target::Login = target {
            return "token";
        }
        let base = self.inner.graph_base.path().trim_end_matches('/');
        let rest = url.path().strip_prefix(base).unwrap_or(url.path());
        endpoint_label(rest)
    }

    // -----------------------------------------------------------------------------------
    // token endpoint (graph.md §6)

    /// An app-only token by client credentials, scope `.default` (graph.md §6.3).
    pub async fn client_credentials(&self) -> Result<TokenSet, GraphError> {
        let config = &self.inner.config;
        self.token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", &config.client_id),
            ("client_secret", config.client_secret.expose()),
            ("scope", APP_SCOPE),
        ])
        .await
    }

    /// Exchanges an authorization code with its PKCE verifier (graph.md §6.2). `scope`
    /// should be what authorize asked for.
    pub async fn exchange_code(
        &self,
        code: &Secret<String>,
        verifier: &Secret<String>,
        scope: &str,
    ) -> Result<TokenSet, GraphError> {
        let config = &self.inner.config;
        self.token_request(&[
            ("grant_type", "authorization_code"),
            ("client_id", &config.client_id),
            ("client_secret", config.client_secret.expose()),
            ("code", code.expose()),
            ("redirect_uri", &config.redirect_uri),
            ("code_verifier", verifier.expose()),
            ("scope", scope),
        ])
        .await
    }

    /// Redeems a refresh token (graph.md §6.2). The result carries the *new* refresh
    /// token: persist it, the old one is spent. `invalid_grant` →
    /// [`GraphError::needs_repairing`]. [`Tokens`] calls this for you.
    pub async fn refresh(
        &self,
        refresh_token: &Secret<String>,
        scope: &str,
    ) -> Result<TokenSet, GraphError> {
        let config = &self.inner.config;
        self.token_request(&[
            ("grant_type", "refresh_token"),
            ("client_id", &config.client_id),
            ("client_secret", config.client_secret.expose()),
            ("refresh_token", refresh_token.expose()),
            ("scope", scope),
        ])
        .await
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenSet, GraphError> {
        let url = Url::parse(&self.inner.config.token_url())
            .map_err(|e| GraphError::InvalidRequest(format!("login_base: {e}")))?;
        let body = self
            .execute(Target::Login, Method::POST, url, Body::Form(form))
            .await?;
        TokenSet::from_response(&body)
    }

    // -----------------------------------------------------------------------------------
    // users (graph.md §5)

    /// `GET /users/{upn}`; `None` when there is no such user.
    pub async fn user_by_upn(
        &self,
        tokens: &Tokens,
        upn: &str,
    ) -> Result<Option<User>, GraphError> {
        let segment = if upn.starts_with('$') {
            format!("('{}')", upn.replace('\'', "''"))
        } else {
            upn.to_owned()
        };
        let mut url = self.url(&["users"]);
        if segment.starts_with('(') {
            // `/users('$x@y')` (graph.md §5): one segment, appended to `users`
            url.set_path(&format!("{}{}", url.path(), segment));
        } else if let Ok(mut segs) = url.path_segments_mut() {
            segs.push(&segment);
        }
        url.set_query(Some(&format!("$select={USER_SELECT}")));
        match self.get_json::<User>(tokens, url).await {
            Ok(user) => Ok(Some(user)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /users?$filter=mail eq '…'`; the first match.
    pub async fn user_by_mail(
        &self,
        tokens: &Tokens,
        mail: &str,
    ) -> Result<Option<User>, GraphError> {
        #[derive(Deserialize)]
        struct List {
            value: Vec<User>,
        }
        let mut url = self.url(&["users"]);
        let filter = format!("mail eq '{}'", mail.replace('\'', "''"));
        url.set_query(Some(&format!(
            "$filter={}&$select={USER_SELECT}",
            encode(&filter)
        )));
        let list: List = self.get_json(tokens, url).await?;
        Ok(list.value.into_iter().next())
    }

    /// The user an extension's email names: the cache, else by UPN, else by mail
    /// (graph.md §5). Cached for [`GraphConfig::user_cache_ttl`].
    pub async fn resolve_user(
        &self,
        tokens: &Tokens,
        email: &str,
    ) -> Result<Option<User>, GraphError> {
        let key = email.to_ascii_lowercase();
        if let Some((user, at)) = self.inner.users.lock().get(&key) {
            if at.elapsed() < self.inner.config.user_cache_ttl {
                return Ok(Some(user.clone()));
            }
        }
        let found = match self.user_by_upn(tokens, email).await? {
            Some(user) => Some(user),
            None => self.user_by_mail(tokens, email).await?,
        };
        let mut cache = self.inner.users.lock();
        match &found {
            Some(user) => {
                cache.insert(key, (user.clone(), Instant::now()));
            }
            None => {
                cache.remove(&key);
            }
        }
        Ok(found)
    }

    /// Drops `email` from the user cache (e.g. after a 404 on its id).
    pub fn forget_user(&self, email: &str) {
        self.inner.users.lock().remove(&email.to_ascii_lowercase());
    }

    // -----------------------------------------------------------------------------------
    // presence (graph.md §1, §2)

    /// `POST /users/{id}/presence/setPresence` with sessionId = the client id;
    /// `expiration` must be within PT5M–PT4H (graph.md §1.2).
    pub async fn set_presence(
        &self,
        tokens: &Tokens,
        user_id: &str,
        presence: SessionPresence,
        expiration: Duration,
    ) -> Result<(), GraphError> {
        let duration = session_duration(expiration)?;
        let (availability, activity) = presence.pair();
        let body = json!({
            "sessionId": self.inner.config.client_id,
            "availability": availability,
            "activity": activity,
            "expirationDuration": duration,
        });
        self.post(
            tokens,
            &["users", user_id, "presence", "setPresence"],
            &body,
        )
        .await
    }

    /// `POST /users/{id}/presence/clearPresence` (graph.md §1.3). A 404 (no session) is a
    /// [`GraphError::Http`] with status 404 ([`GraphError::is_not_found`]).
    pub async fn clear_presence(&self, tokens: &Tokens, user_id: &str) -> Result<(), GraphError> {
        let body = json!({ "sessionId": self.inner.config.client_id });
        self.post(
            tokens,
            &["users", user_id, "presence", "clearPresence"],
            &body,
        )
        .await
    }

    /// `POST /users/{id}/presence/setUserPreferredPresence` (graph.md §1.4); `None`
    /// leaves the expiration to Graph (1 day for DND/Busy, 7 days otherwise).
    pub async fn set_user_preferred_presence(
        &self,
        tokens: &Tokens,
        user_id: &str,
        presence: PreferredPresence,
        expiration: Option<Duration>,
    ) -> Result<(), GraphError> {
        let (availability, activity) = presence.pair();
        let mut body = json!({ "availability": availability, "activity": activity });
        if let Some(d) = expiration {
            body["expirationDuration"] = Value::String(iso8601(d));
        }
        self.post(
            tokens,
            &["users", user_id, "presence", "setUserPreferredPresence"],
            &body,
        )
        .await
    }

    /// `POST /users/{id}/presence/clearUserPreferredPresence` with `{}` (graph.md §1.5).
    pub async fn clear_user_preferred_presence(
        &self,
        tokens: &Tokens,
        user_id: &str,
    ) -> Result<(), GraphError> {
        self.post(
            tokens,
            &["users", user_id, "presence", "clearUserPreferredPresence"],
            &json!({}),
        )
        .await
    }

    /// `GET /users/{id}/presence` (graph.md §2.1; `id` is the object id).
    pub async fn presence(&self, tokens: &Tokens, user_id: &str) -> Result<Presence, GraphError> {
        let url = self.url(&["users", user_id, "presence"]);
        self.get_json(tokens, url).await
    }

    /// `POST /communications/getPresencesByUserId`, `ids` split into requests of at most
    /// 650 (graph.md §2.2), sent one after the other; results in response order.
    pub async fn presences_by_user_id(
        &self,
        tokens: &Tokens,
        ids: &[String],
    ) -> Result<Vec<Presence>, GraphError> {
        #[derive(Deserialize)]
        struct List {
            value: Vec<Presence>,
        }
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(MAX_IDS_PER_REQUEST) {
            let url = self.url(&["communications", "getPresencesByUserId"]);
            let body = json!({ "ids": batch });
            let bytes = self
                .execute(Target::Graph(tokens), Method::POST, url, Body::Json(&body))
                .await?;
            let list: List = decode(&bytes)?;
            out.extend(list.value);
        }
        Ok(out)
    }

    // -----------------------------------------------------------------------------------
    // the request loop

    pub(super) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.graph_base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty();
            for s in segments {
                segs.push(s);
            }
        }
        url
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        tokens: &Tokens,
        url: Url,
    ) -> Result<T, GraphError> {
        let bytes = self
            .execute(Target::Graph(tokens), Method::GET, url, Body::None)
            .await?;
        decode(&bytes)
    }

    async fn post(
        &self,
        tokens: &Tokens,
        segments: &[&str],
        body: &Value,
    ) -> Result<(), GraphError> {
        let url = self.url(segments);
        self.execute(Target::Graph(tokens), Method::POST, url, Body::Json(body))
            .await
            .map(|_| ())
    }

    /// The request loop every Graph and token-endpoint call goes through (budget,
    /// retries, 401 → refresh); the body of a 2xx answer.
    pub(super) async fn execute(
        &self,
        target: Target<'_>,
        method: Method,
        url: Url,
        body: Body<'_>,
    ) -> Result<Bytes, GraphError> {
        let policy = &self.inner.config.retry;
        let max_attempts = policy.max_attempts.max(1);
        let mut failures = 0u32;
        let mut refreshed = false;
        let mut token = match target {
            Target::Graph(tokens) => Some(tokens.access_token().await?),
            Target::Login => None,
        };
        let counters = &self.inner.counters;
        let endpoint = self.endpoint(target, &url);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            if attempts > 1 {
                Counters::bump(&counters.retries);
            }
            if let Target::Graph(_) = target {
                self.inner.budget.acquire().await;
            }
            let mut request = self.inner.http.request(method.clone(), url.clone());
            if let Some(t) = &token {
                request = request.bearer_auth(t.expose());
            }
            request = match &body {
                Body::None => request,
                Body::Json(v) => request.json(v),
                Body::Form(f) => request.form(f),
            };
            let started = Instant::now();
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    response.bytes().await.map(|b| (status, retry_after, b))
                }
                Err(e) => Err(e),
            };
            let (status, retry_after, bytes) = match outcome {
                Ok(o) => o,
                Err(e) => {
                    counters.request(endpoint, GraphStatus::TransportError);
                    failures += 1;
                    let e = GraphError::transport(e);
                    tracing::debug!(%method, path = url.path(), error = %e, failures, "graph request failed");
                    if failures >= max_attempts {
                        return Err(e);
                    }
                    tokio::time::sleep(self.backoff(failures)?).await;
                    continue;
                }
            };
            counters.request(endpoint, GraphStatus::Http(status));
            if status == 429 {
                Counters::bump(&counters.throttled);
            }
            tracing::debug!(
                %method,
                path = url.path(),
                status,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "graph request"
            );
            if (200..300).contains(&status) {
                return Ok(bytes);
            }
            let error = || match target {
                Target::Graph(_) => GraphError::from_graph_body(status, &bytes),
                Target::Login => GraphError::from_token_body(status, &bytes),
            };
            match (status, target) {
                (401, Target::Graph(tokens)) if !refreshed => {
                    refreshed = true;
                    let used = token.take().unwrap_or_else(|| Secret::new(String::new()));
                    token = Some(tokens.refresh_after_401(&used).await?);
                }
                (429, _) => {
                    failures += 1;
                    let wait = match retry_after {
                        Some(w) => w,
                        None => self.backoff(failures)?,
                    };
                    if failures >= max_attempts || wait > policy.max_retry_after {
                        return Err(GraphError::Throttled { retry_after });
                    }
                    tracing::info!(
                        path = url.path(),
                        wait_ms = wait.as_millis() as u64,
                        "throttled by Graph, waiting Retry-After"
                    );
                    tokio::time::sleep(wait).await;
                }
                (500..=599, _) => {
                    failures += 1;
                    if failures >= max_attempts {
                        return Err(error());
                    }
                    let wait = match retry_after {
                        Some(w) if w <= policy.max_retry_after => w,
                        _ => self.backoff(failures)?,
                    };
                    tracing::debug!(
                        path = url.path(),
                        status,
                        wait_ms = wait.as_millis() as u64,
                        "server error, backing off"
                    );
                    tokio::time::sleep(wait).await;
                }
                _ => return Err(error()),
            }
        }
    }

    /// Exponential backoff with jitter: a random point in [d/2, d], d = base · 2^(n-1)
    /// capped at `max_delay`.
    fn backoff(&self, failures: u32) -> Result<Duration, GraphError> {
        let policy = &self.inner.config.retry;
        let exp = policy
            .base_delay
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let full = exp.min(policy.max_delay);
        let mut b = [0u8; 4];
        SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| GraphError::Random)?;
        let fraction = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX);
        Ok(full / 2 + full.mul_f64(fraction / 2.0))
    }
}

/// The label of a Graph path below the base (`/users/{id}/presence/setPresence` →
/// `setPresence`).
fn endpoint_label(path: &str) -> &'static str {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let below_user = match segments.as_slice() {
        ["subscriptions", ..] => return "subscriptions",
        ["communications", "getPresencesByUserId", ..] => return "getPresencesByUserId",
        ["communications", "presences", ..] => return "presence",
        ["me", rest @ ..] | ["users", _, rest @ ..] => rest,
        // `/users?$filter=…`, `/users('$x@y')`
        [first, ..] if first.starts_with("users") => return "users",
        _ => return "other",
    };
    match below_user {
        [] => "users",
        ["presence"] => "presence",
        ["presence", action, ..] => match *action {
            "setPresence" => "setPresence",
            "clearPresence" => "clearPresence",
            "setUserPreferredPresence" => "setUserPreferredPresence",
            "clearUserPreferredPresence" => "clearUserPreferredPresence",
            "setStatusMessage" => "setStatusMessage",
            _ => "other",
        },
        _ => "other",
    }
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, GraphError> {
    serde_json::from_slice(bytes).map_err(|e| GraphError::Decode(e.to_string()))
}

/// Percent-encodes a query value, spaces as `%20`.
fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::endpoint_label;

    #[test]
    fn endpoints_have_short_stable_labels() {
        for (path, label) in [
            ("/users/a1f0/presence/setPresence", "setPresence"),
            ("/users/a1f0/presence/clearPresence", "clearPresence"),
            (
                "/users/a1f0/presence/setUserPreferredPresence",
                "setUserPreferredPresence",
            ),
            (
                "/users/a1f0/presence/clearUserPreferredPresence",
                "clearUserPreferredPresence",
            ),
            ("/users/a1f0/presence", "presence"),
            ("/me/presence", "presence"),
            ("/communications/presences/a1f0", "presence"),
            (
                "/communications/getPresencesByUserId",
                "getPresencesByUserId",
            ),
            ("/users", "users"),
            ("/users/bob@contoso.example", "users"),
            ("/users('$x@contoso.example')", "users"),
            ("/me", "users"),
            ("/subscriptions", "subscriptions"),
            ("/subscriptions/9f1c", "subscriptions"),
            ("/users/a1f0/calendar", "other"),
            ("/", "other"),
        ] {
            assert_eq!(endpoint_label(path), label, "{path}");
        }
    }
}
