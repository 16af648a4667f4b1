//! Presence change notifications (graph.md §3): `POST/GET/PATCH/DELETE /subscriptions` for
//! `/communications/presences?$filter=id in (...)` and `communications/presences/{id}`, the
//! validation handshake (§3.2) and delivery of basic notifications with `clientState` (§3.1).
//!
//! Rules enforced: delegated `Presence.Read.All` only, app-only refused (§3.1, §7);
//! `changeType` `updated`; `clientState` required (§3.2); at most 650 ids (§3.1);
//! `expirationDateTime` in the future and at most 60 minutes ahead (§3.1); one subscription
//! per app per delegated user, a second is 409 Conflict (§3.1, §3.2, §8.8); the validation
//! request must be answered within 10 s with 200, `text/plain` and the URL-decoded token,
//! else 400 `ValidationError` (§3.2). Rich notifications (`includeResourceData`) are not
//! emulated and are refused. Unlike Graph, `http://` notification URLs are accepted (the
//! tests' receivers run on loopback without TLS).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::clock::{Instant, graph_datetime, parse_datetime};
use super::graph::{self, Caller, MAX_PRESENCE_IDS, PRESENCE_SUBSCRIBE};
use super::state::Shared;

/// Longest presence subscription (graph.md §3.1).
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(3600);

type Shr = State<Arc<Shared>>;

/// A live subscription.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    /// Its id.
    pub(crate) id: String,
    /// The resource as given.
    pub(crate) resource: String,
    /// The user ids it covers.
    pub(crate) user_ids: Vec<String>,
    /// Where notifications go.
    pub(crate) notification_url: String,
    /// Where lifecycle notifications would go.
    pub(crate) lifecycle_url: Option<String>,
    /// Echoed in every notification; never logged.
    pub(crate) client_state: String,
    /// When it lapses.
    pub(crate) expires_at: Instant,
    /// The app that created it.
    pub(crate) app_id: String,
    /// The delegated user who created it.
    pub(crate) creator_id: String,
}

impl Subscription {
    fn json(&self, base: &str) -> Value {
        json!({
            "@odata.context": format!("{base}/v1.0/$metadata#subscriptions/$entity"),
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.app_id,
            "changeType": "updated",
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": graph_datetime(self.expires_at),
            "creatorId": self.creator_id,
            "includeResourceData": false,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": null,
            "encryptionCertificateId": null,
            "notificationQueryOptions": null,
            "notificationUrlAppId": null,
        })
    }
}

/// A notification to POST.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// The notificationUrl.
    pub(crate) url: String,
    /// The JSON body.
    pub(crate) body: String,
}

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1.0/subscriptions", post(create).get(list))
        .route(
            "/v1.0/subscriptions/{id}",
            get(read).patch(renew).delete(remove),
        )
}

/// Parses the presence resource into user ids (graph.md §3.1's two forms).
fn parse_resource(resource: &str) -> Option<Vec<String>> {
    let r = resource.trim().trim_start_matches('/');
    let lower = r.to_ascii_lowercase();
    if let Some(id) = lower.strip_prefix("communications/presences/") {
        let id = &r[r.len() - id.len()..];
        return (!id.is_empty() && !id.contains(['/', '?'])).then(|| vec![id.to_owned()]);
    }
    let rest = lower.strip_prefix("communications/presences?$filter=")?;
    let filter = r[r.len() - rest.len()..].trim();
    let inner = filter
        .strip_prefix("id in (")
        .or_else(|| filter.strip_prefix("id in("))?
        .strip_suffix(')')?;
    let mut ids = Vec::new();
    for part in inner.split(',') {
        let id = part.trim().strip_prefix('\'')?.strip_suffix('\'')?;
        if id.is_empty() {
            return None;
        }
        ids.push(id.to_owned());
    }
    (!ids.is_empty()).then_some(ids)
}

fn str_field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

fn delegated_reader(shared: &Shared, headers: &HeaderMap) -> Result<(Caller, String), Response> {
    let caller = graph::authenticate(shared, headers)?;
    let Some(user) = caller.user_id.clone() else {
        // §3.1: application permissions are not supported for presence subscriptions
        return Err(graph::error(
            shared,
            StatusCode::FORBIDDEN,
            "ExtensionError",
            "Operation: Create; Exception: [Status Code: Forbidden; Reason: Application permissions are not supported for presence subscriptions; use a delegated token with Presence.Read.All.]",
        ));
    };
    let ok = caller
        .scopes
        .iter()
        .any(|s| PRESENCE_SUBSCRIBE.iter().any(|p| s.eq_ignore_ascii_case(p)));
    if !ok {
        return Err(graph::error(
            shared,
            StatusCode::FORBIDDEN,
            "ExtensionError",
            "Operation: Create; Exception: [Status Code: Forbidden; Reason: The token lacks Presence.Read.All.]",
        ));
    }
    Ok((caller, user))
}

fn check_expiration(shared: &Shared, text: Option<&str>) -> Result<Instant, Response> {
    let Some(text) = text else {
        return Err(graph::error(
            shared,
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "expirationDateTime is required.",
        ));
    };
    let Some(at) = parse_datetime(text) else {
        return Err(graph::error(
            shared,
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "expirationDateTime is not a valid date-time.",
        ));
    };
    let now = shared.now();
    if at <= now {
        return Err(graph::error(
            shared,
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Subscription expiration must be in the future.",
        ));
    }
    if at > now + MAX_LIFETIME {
        return Err(graph::error(
            shared,
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Subscription expiration can only be 60 minutes in the future for presence.",
        ));
    }
    Ok(at)
}

async fn create(State(shared): Shr, headers: HeaderMap, body: Bytes) -> Response {
    let (caller, user) = match delegated_reader(&shared, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let bad =
        |message: &str| graph::error(&shared, StatusCode::BAD_REQUEST, "InvalidRequest", message);
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad("Invalid JSON body.");
    };
    if str_field(&body, "changeType") != Some("updated") {
        return bad("changeType must be 'updated' for presence.");
    }
    let Some(notification_url) = str_field(&body, "notificationUrl").map(str::to_owned) else {
        return bad("notificationUrl is required.");
    };
    let Some(resource) = str_field(&body, "resource").map(str::to_owned) else {
        return bad("resource is required.");
    };
    let client_state = match str_field(&body, "clientState") {
        Some(s) if !s.is_empty() && s.len() <= 128 => s.to_owned(),
        _ => return bad("clientState is required (at most 128 characters)."),
    };
    if body.get("includeResourceData").and_then(Value::as_bool) == Some(true) {
        return bad(
            "includeResourceData (rich notifications) is not supported by the graph emulator.",
        );
    }
    let Some(user_ids) = parse_resource(&resource) else {
        return bad(
            "Invalid resource: expected communications/presences?$filter=id in ('{id}', ...) or communications/presences/{id}.",
        );
    };
    if user_ids.len() > MAX_PRESENCE_IDS {
        return bad(&format!(
            "A presence subscription supports at most {MAX_PRESENCE_IDS} user IDs."
        ));
    }
    let expires_at = match check_expiration(&shared, str_field(&body, "expirationDateTime")) {
        Ok(at) => at,
        Err(r) => return r,
    };
    let lifecycle_url = str_field(&body, "lifecycleNotificationUrl").map(str::to_owned);
    let existing = shared
        .lock()
        .subscriptions
        .values()
        .find(|s| {
            s.app_id.eq_ignore_ascii_case(&caller.app_id)
                && s.creator_id.eq_ignore_ascii_case(&user)
                && s.expires_at > shared.now()
        })
        .map(|s| s.id.clone());
    if let Some(id) = existing {
        return graph::error(
            &shared,
            StatusCode::CONFLICT,
            "ExtensionError",
            &format!("Subscription Id {id} already exists for the requested combination"),
        );
    }
    // §3.2: validate notificationUrl, and lifecycleNotificationUrl when set
    let mut urls = vec![notification_url.clone()];
    urls.extend(lifecycle_url.clone());
    for url in &urls {
        if let Err(message) = validate(&shared, url).await {
            tracing::info!(%message, "graph emulator: subscription validation failed");
            return graph::error(
                &shared,
                StatusCode::BAD_REQUEST,
                "ValidationError",
                &message,
            );
        }
    }
    let sub = Subscription {
        id: shared.signer.guid(),
        resource,
        user_ids,
        notification_url,
        lifecycle_url,
        client_state,
        expires_at,
        app_id: caller.app_id.clone(),
        creator_id: user,
    };
    let json = sub.json(&shared.base);
    shared.lock().subscriptions.insert(sub.id.clone(), sub);
    (StatusCode::CREATED, axum::Json(json)).into_response()
}

fn owned(shared: &Shared, caller: &Caller, user: &str, id: &str) -> Result<Subscription, Response> {
    let now = shared.now();
    let sub = shared
        .lock()
        .subscriptions
        .get(id)
        .filter(|s| s.expires_at > now)
        .filter(|s| {
            s.app_id.eq_ignore_ascii_case(&caller.app_id) && s.creator_id.eq_ignore_ascii_case(user)
        })
        .cloned();
    sub.ok_or_else(|| {
        graph::error(
            shared,
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("The object was not found. Subscription '{id}'."),
        )
    })
}

async fn read(State(shared): Shr, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let (caller, user) = match delegated_reader(&shared, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match owned(&shared, &caller, &user, &id) {
        Ok(sub) => axum::Json(sub.json(&shared.base)).into_response(),
        Err(r) => r,
    }
}

async fn list(State(shared): Shr, headers: HeaderMap) -> Response {
    let (caller, user) = match delegated_reader(&shared, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let now = shared.now();
    let value: Vec<Value> = shared
        .lock()
        .subscriptions
        .values()
        .filter(|s| s.expires_at > now)
        .filter(|s| {
            s.app_id.eq_ignore_ascii_case(&caller.app_id)
                && s.creator_id.eq_ignore_ascii_case(&user)
        })
        .map(|s| s.json(&shared.base))
        .collect();
    axum::Json(json!({ "value": value })).into_response()
}

async fn renew(
    State(shared): Shr,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (caller, user) = match delegated_reader(&shared, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = owned(&shared, &caller, &user, &id) {
        return r;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return graph::error(
            &shared,
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Invalid JSON body.",
        );
    };
    let expires_at = match check_expiration(&shared, str_field(&body, "expirationDateTime")) {
        Ok(at) => at,
        Err(r) => return r,
    };
    let json = {
        let mut inner = shared.lock();
        match inner.subscriptions.get_mut(&id) {
            Some(sub) => {
                sub.expires_at = expires_at;
                Some(sub.json(&shared.base))
            }
            None => None,
        }
    };
    match json {
        Some(json) => axum::Json(json).into_response(),
        None => graph::error(
            &shared,
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The object was not found.",
        ),
    }
}

async fn remove(State(shared): Shr, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let (caller, user) = match delegated_reader(&shared, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = owned(&shared, &caller, &user, &id) {
        return r;
    }
    shared.lock().subscriptions.remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

/// The basic notification for `users` under `sub` (graph.md §3.1).
pub(crate) fn notification(sub: &Subscription, users: &[String], tenant_id: &str) -> Delivery {
    let value: Vec<Value> = users
        .iter()
        .map(|id| {
            json!({
                "subscriptionId": sub.id,
                "clientState": sub.client_state,
                "changeType": "updated",
                "tenantId": tenant_id,
                "resource": format!("communications/presences/{id}"),
                "subscriptionExpirationDateTime": graph_datetime(sub.expires_at),
                "resourceData": {
                    "@odata.id": format!("users/{id}/presence"),
                    "@odata.type": "#microsoft.graph.presence",
                    "id": id,
                },
                "organizationId": tenant_id,
            })
        })
        .collect();
    Delivery {
        url: sub.notification_url.clone(),
        body: json!({ "value": value }).to_string(),
    }
}

/// POSTs a notification; a 2xx within the delivery timeout counts as delivered, else it is
/// retried with exponential backoff (graph.md §3.2), up to the configured attempts.
pub(crate) async fn deliver(shared: Arc<Shared>, delivery: Delivery) {
    let mut backoff = Duration::from_millis(500);
    for attempt in 1..=shared.config.delivery_attempts.max(1) {
        match http_post(
            &delivery.url,
            "application/json; charset=utf-8",
            delivery.body.clone(),
            shared.config.delivery_timeout,
        )
        .await
        {
            Ok(reply) if (200..300).contains(&reply.status) => return,
            Ok(reply) => {
                tracing::info!(
                    status = reply.status,
                    attempt,
                    "graph emulator: notification refused"
                );
            }
            Err(err) => tracing::info!(%err, attempt, "graph emulator: notification not delivered"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// The validation handshake of graph.md §3.2.
async fn validate(shared: &Shared, url: &str) -> Result<(), String> {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        shared.signer.guid()
    );
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("validationToken", &token)
        .finish();
    let sep = if url.contains('?') { '&' } else { '?' };
    let target = format!("{url}{sep}{query}");
    let reply = http_post(
        &target,
        "text/plain; charset=utf-8",
        String::new(),
        shared.config.validation_timeout,
    )
    .await
    .map_err(|e| match e {
        PostError::Timeout => "Subscription validation request timed out.".to_owned(),
        other => format!("Subscription validation request failed. {other}"),
    })?;
    if reply.status != 200 {
        return Err(format!(
            "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request. Got {}.",
            reply.status
        ));
    }
    if !reply
        .content_type
        .as_deref()
        .is_some_and(|c| c.trim().to_ascii_lowercase().starts_with("text/plain"))
    {
        return Err(
            "Subscription validation request failed. Response must have Content-Type text/plain."
                .into(),
        );
    }
    if reply.body != token.as_bytes() {
        return Err("Subscription validation request failed. Response must exactly match validationToken query parameter.".into());
    }
    Ok(())
}

struct Reply {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("only http:// notification URLs are supported by the graph emulator")]
    Url,
    #[error("the endpoint did not answer in time")]
    Timeout,
    #[error("{0}")]
    Io(String),
}

/// One HTTP/1.1 POST over a fresh connection, bounded by `timeout` as a whole.
async fn http_post(
    url: &str,
    content_type: &str,
    body: String,
    timeout: Duration,
) -> Result<Reply, PostError> {
    let uri: axum::http::Uri = url.parse().map_err(|_| PostError::Url)?;
    if uri.scheme_str() != Some("http") {
        return Err(PostError::Url);
    }
    let host = uri.host().ok_or(PostError::Url)?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let work = async move {
        let host_port = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let stream = tokio::net::TcpStream::connect(host_port.as_str())
            .await
            .map_err(|e| PostError::Io(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| PostError::Io(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, host_port)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PostError::Io(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| PostError::Io(e.to_string()))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| PostError::Io(e.to_string()))?
            .to_bytes()
            .to_vec();
        Ok(Reply {
            status,
            content_type,
            body,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| PostError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources() {
        assert_eq!(
            parse_resource("/communications/presences?$filter=id in ('a', 'b')"),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            parse_resource("communications/presences/abc"),
            Some(vec!["abc".into()])
        );
        assert_eq!(parse_resource("/users/abc"), None);
        assert_eq!(
            parse_resource("/communications/presences?$filter=id in ()"),
            None
        );
    }
}
