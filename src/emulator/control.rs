//! The control API under `/_emulator/`: acts as Teams itself (a user's own Teams-client
//! session, the preference a user picks in Teams) and as the test harness (faults, clock,
//! request log, consent, redirect URIs). JSON in and out; never exposes a secret or token.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::clock::graph_datetime;
use super::presence::{ClientSession, Preferred, State as PresenceState};
use super::state::{DeadRefresh, Faults, Shared};

type Shr = State<Arc<Shared>>;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_emulator/info", get(info))
        .route("/_emulator/users/{id}/presence", get(user_presence))
        .route(
            "/_emulator/users/{id}/teams-client",
            put(set_client).delete(clear_client),
        )
        .route(
            "/_emulator/users/{id}/preferred-presence",
            put(set_preferred).delete(clear_preferred),
        )
        .route(
            "/_emulator/users/{id}/revoke-refresh-tokens",
            post(revoke_refresh_tokens),
        )
        .route("/_emulator/clock", get(clock))
        .route("/_emulator/clock/advance", post(advance_clock))
        .route(
            "/_emulator/faults",
            get(get_faults).put(set_faults).delete(clear_faults),
        )
        .route("/_emulator/requests", get(requests).delete(clear_requests))
        .route("/_emulator/admin-consent", put(set_consent))
        .route("/_emulator/app/redirect-uris", post(add_redirect_uri))
        .route("/_emulator/subscriptions", get(subscriptions))
}

fn bad(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": message })),
    )
        .into_response()
}

fn not_found(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({ "error": format!("no user {id}") })),
    )
        .into_response()
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| bad(&format!("invalid JSON: {e}")))
}

/// Resolves a user by id or UPN to its object id.
fn user_id(shared: &Shared, id: &str) -> Result<String, Response> {
    shared
        .lock()
        .seed
        .user(id)
        .map(|u| u.id.clone())
        .ok_or_else(|| not_found(id))
}

async fn info(State(shared): Shr) -> Response {
    let inner = shared.lock();
    let users: Vec<Value> = inner
        .seed
        .users
        .iter()
        .map(|u| {
            json!({
                "id": u.id,
                "userPrincipalName": u.user_principal_name,
                "mail": u.mail,
                "displayName": u.display_name,
            })
        })
        .collect();
    axum::Json(json!({
        "tenant": { "id": inner.seed.tenant.id, "domain": inner.seed.tenant.domain },
        "app": {
            "client_id": inner.seed.app.client_id,
            "redirect_uris": inner.seed.app.redirect_uris,
            "application_permissions": inner.seed.app.application_permissions,
            "admin_consent": inner.admin_consent,
        },
        "users": users,
        "login_url": shared.base,
        "graph_url": format!("{}/v1.0", shared.base),
    }))
    .into_response()
}

fn state_json(state: &PresenceState) -> Value {
    json!({ "availability": state.availability, "activity": state.activity })
}

async fn user_presence(State(shared): Shr, Path(id): Path<String>) -> Response {
    let id = match user_id(&shared, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    shared.sweep();
    let now = shared.now();
    let mut inner = shared.lock();
    let p = inner.presence.entry(id.to_ascii_lowercase()).or_default();
    p.expire(now);
    let aggregate = p.aggregate(now);
    let sessions: Vec<Value> = p
        .app_sessions
        .iter()
        .map(|(app, s)| {
            json!({
                "app_id": app,
                "set": state_json(&s.state),
                "effective": state_json(&s.effective(now)),
                "set_at": graph_datetime(s.set_at),
                "expires_at": graph_datetime(s.expires_at),
            })
        })
        .collect();
    axum::Json(json!({
        "id": id,
        "aggregate": state_json(&aggregate),
        "sequence_number": p.sequence_number(),
        "app_sessions": sessions,
        "teams_client": p.client.as_ref().map(|c| state_json(&c.state)),
        "preferred": p.preferred.as_ref().map(|pr| json!({
            "availability": pr.state.availability,
            "activity": pr.state.activity,
            "expires_at": graph_datetime(pr.expires_at),
        })),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct ClientBody {
    state: String,
}

/// The Teams-client states the control API knows.
fn client_state(name: &str) -> Option<Option<PresenceState>> {
    let s = |a: &str, b: &str| Some(Some(PresenceState::new(a, b)));
    match name {
        "available" => s("Available", "Available"),
        "busy" => s("Busy", "Busy"),
        "in_call" => s("Busy", "InACall"),
        "in_conference_call" => s("Busy", "InAConferenceCall"),
        "in_meeting" => s("Busy", "InAMeeting"),
        "dnd" => s("DoNotDisturb", "DoNotDisturb"),
        "presenting" => s("DoNotDisturb", "Presenting"),
        "away" => s("Away", "Away"),
        "be_right_back" => s("BeRightBack", "BeRightBack"),
        "offline" => Some(None),
        _ => None,
    }
}

async fn set_client(State(shared): Shr, Path(id): Path<String>, body: Bytes) -> Response {
    let id = match user_id(&shared, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let body: ClientBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(state) = client_state(&body.state) else {
        return bad(
            "state must be one of available, busy, in_call, in_conference_call, in_meeting, dnd, presenting, away, be_right_back, offline",
        );
    };
    let now = shared.now();
    {
        let mut inner = shared.lock();
        let p = inner.presence.entry(id.to_ascii_lowercase()).or_default();
        p.client = state.map(|state| ClientSession { state, set_at: now });
    }
    shared.sweep();
    user_presence(State(shared), Path(id)).await
}

async fn clear_client(State(shared): Shr, Path(id): Path<String>) -> Response {
    set_client(
        State(shared),
        Path(id),
        Bytes::from_static(b"{\"state\":\"offline\"}"),
    )
    .await
}

#[derive(Deserialize)]
struct PreferredBody {
    availability: String,
    activity: String,
    #[serde(default)]
    expiration_seconds: Option<u64>,
}

async fn set_preferred(State(shared): Shr, Path(id): Path<String>, body: Bytes) -> Response {
    let id = match user_id(&shared, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let body: PreferredBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some((av, ac)) = super::presence::canonical_pair(
        super::presence::PREFERRED_PAIRS,
        &body.availability,
        &body.activity,
    ) else {
        return bad("not a setUserPreferredPresence pair (graph.md §1.4)");
    };
    let lifetime = Duration::from_secs(body.expiration_seconds.unwrap_or(7 * 86_400));
    let now = shared.now();
    {
        let mut inner = shared.lock();
        inner
            .presence
            .entry(id.to_ascii_lowercase())
            .or_default()
            .preferred = Some(Preferred {
            state: PresenceState::new(av, ac),
            expires_at: now + lifetime,
        });
    }
    shared.sweep();
    user_presence(State(shared), Path(id)).await
}

async fn clear_preferred(State(shared): Shr, Path(id): Path<String>) -> Response {
    let id = match user_id(&shared, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    if let Some(p) = shared.lock().presence.get_mut(&id.to_ascii_lowercase()) {
        p.preferred = None;
    }
    shared.sweep();
    user_presence(State(shared), Path(id)).await
}

async fn revoke_refresh_tokens(State(shared): Shr, Path(id): Path<String>) -> Response {
    let id = match user_id(&shared, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let mut inner = shared.lock();
    let revoked: Vec<String> = inner
        .refresh_tokens
        .iter()
        .filter(|(_, g)| g.user_id.eq_ignore_ascii_case(&id))
        .map(|(t, _)| t.clone())
        .collect();
    for token in &revoked {
        inner.refresh_tokens.remove(token);
        inner
            .dead_refresh_tokens
            .insert(token.clone(), DeadRefresh::Revoked);
    }
    axum::Json(json!({ "revoked": revoked.len() })).into_response()
}

fn clock_json(shared: &Shared) -> Value {
    json!({
        "now": graph_datetime(shared.now()),
        "offset_seconds": shared.clock.offset().as_secs_f64(),
    })
}

async fn clock(State(shared): Shr) -> Response {
    axum::Json(clock_json(&shared)).into_response()
}

#[derive(Deserialize)]
struct AdvanceBody {
    seconds: f64,
}

async fn advance_clock(State(shared): Shr, body: Bytes) -> Response {
    let body: AdvanceBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !body.seconds.is_finite() || body.seconds < 0.0 || body.seconds > 1.0e9 {
        return bad("seconds must be a non-negative number");
    }
    shared.clock.advance(Duration::from_secs_f64(body.seconds));
    shared.sweep();
    axum::Json(clock_json(&shared)).into_response()
}

async fn get_faults(State(shared): Shr) -> Response {
    axum::Json(json!(shared.lock().faults.clone())).into_response()
}

async fn set_faults(State(shared): Shr, body: Bytes) -> Response {
    let faults: Faults = match parse(&body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    shared.lock().faults = faults.clone();
    axum::Json(json!(faults)).into_response()
}

async fn clear_faults(State(shared): Shr) -> Response {
    shared.lock().faults = Faults::default();
    StatusCode::NO_CONTENT.into_response()
}

async fn requests(State(shared): Shr) -> Response {
    let log: Vec<_> = shared.lock().log.iter().cloned().collect();
    axum::Json(json!({ "value": log })).into_response()
}

async fn clear_requests(State(shared): Shr) -> Response {
    shared.lock().log.clear();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct ConsentBody {
    granted: bool,
}

async fn set_consent(State(shared): Shr, body: Bytes) -> Response {
    let body: ConsentBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    shared.lock().admin_consent = body.granted;
    axum::Json(json!({ "admin_consent": body.granted })).into_response()
}

#[derive(Deserialize)]
struct RedirectBody {
    uri: String,
}

async fn add_redirect_uri(State(shared): Shr, body: Bytes) -> Response {
    let body: RedirectBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut inner = shared.lock();
    if !inner.seed.app.redirect_uris.contains(&body.uri) {
        inner.seed.app.redirect_uris.push(body.uri);
    }
    axum::Json(json!({ "redirect_uris": inner.seed.app.redirect_uris })).into_response()
}

async fn subscriptions(State(shared): Shr) -> Response {
    let now = shared.now();
    let value: Vec<Value> = shared
        .lock()
        .subscriptions
        .values()
        .filter(|s| s.expires_at > now)
        .map(|s| {
            json!({
                "id": s.id,
                "resource": s.resource,
                "user_ids": s.user_ids,
                "app_id": s.app_id,
                "creator_id": s.creator_id,
                "notification_url": s.notification_url,
                "expires_at": graph_datetime(s.expires_at),
            })
        })
        .collect();
    axum::Json(json!({ "value": value })).into_response()
}
