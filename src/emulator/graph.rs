//! Graph v1.0: bearer-token checks (401 with the Graph error body, graph.md §4.2), the
//! permission table of graph.md §7 per endpoint and token kind, the presence throttle
//! (§4.1), users (§5) and presence reads and writes (§1, §2).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::clock::{inner_error_date, parse_iso_duration};
use super::presence::{
    self, AppSession, DEFAULT_SESSION_DURATION, MAX_SESSION_DURATION, MIN_SESSION_DURATION,
    PREFERRED_PAIRS, Preferred, SET_PRESENCE_PAIRS, State as PresenceState,
};
use super::seed::UserSeed;
use super::state::Shared;

/// The audience of Graph access tokens.
pub(crate) const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";
/// Graph's well-known application id, also accepted as audience.
pub(crate) const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// Most ids per getPresencesByUserId request and per presence subscription (§2.2, §3.1).
pub(crate) const MAX_PRESENCE_IDS: usize = 650;

type Shr = State<Arc<Shared>>;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1.0/users", get(list_users))
        .route("/v1.0/users/{id}", get(get_user))
        .route("/v1.0/me", get(get_me))
        .route("/v1.0/users/{id}/presence", get(get_presence))
        .route("/v1.0/me/presence", get(get_my_presence))
        .route("/v1.0/communications/presences/{id}", get(get_presence))
        .route("/v1.0/users/{id}/presence/{action}", post(presence_action))
        .route(
            "/v1.0/communications/presences/{id}/{action}",
            post(presence_action),
        )
        .route(
            "/v1.0/communications/getPresencesByUserId",
            post(get_presences_by_user_id),
        )
}

// ---------------------------------------------------------------------------------------
// errors

/// A Graph error response: `{"error":{"code","message","innerError":{date, request-id,
/// client-request-id}}}` (graph.md §4.2) with `request-id` and `client-request-id` headers.
pub(crate) fn error(shared: &Shared, status: StatusCode, code: &str, message: &str) -> Response {
    let request_id = shared.signer.guid();
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": inner_error_date(shared.now()),
                "request-id": request_id,
                "client-request-id": request_id,
            }
        }
    });
    let mut response = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("request-id", v.clone());
        response.headers_mut().insert("client-request-id", v);
    }
    response
}

/// 429 with Retry-After and the body of graph.md §4.2.
pub(crate) fn too_many_requests(shared: &Shared, retry_after: u64) -> Response {
    let request_id = shared.signer.guid();
    let body = json!({
        "error": {
            "code": "TooManyRequests",
            "innerError": {
                "code": "429",
                "date": inner_error_date(shared.now()),
                "message": "Please retry after",
                "request-id": request_id,
                "status": "429"
            },
            "message": "Please retry again later."
        }
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("request-id", v);
    }
    response
}

fn bad_request(shared: &Shared, message: &str) -> Response {
    error(shared, StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn invalid_argument(shared: &Shared, message: &str) -> Response {
    error(shared, StatusCode::BAD_REQUEST, "InvalidArgument", message)
}

fn forbidden(shared: &Shared) -> Response {
    error(
        shared,
        StatusCode::FORBIDDEN,
        "Forbidden",
        "Insufficient privileges to complete the operation.",
    )
}

fn user_not_found(shared: &Shared, id: &str) -> Response {
    error(
        shared,
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

/// Unknown paths: Graph-shaped under `/v1.0`, a plain 404 elsewhere.
pub(crate) async fn fallback(State(shared): Shr, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/v1.0") {
        error(
            &shared,
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "Resource not found for the segment '{}'.",
                last_segment(path)
            ),
        )
    } else {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    }
}

fn last_segment(path: &str) -> &str {
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("")
}

// ---------------------------------------------------------------------------------------
// the caller

/// Who is calling, from a valid access token.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// `tid`.
    pub(crate) tenant_id: String,
    /// `appid`: the client id.
    pub(crate) app_id: String,
    /// The signed-in user's object id (delegated tokens only).
    pub(crate) user_id: Option<String>,
    /// `scp`, split (delegated).
    pub(crate) scopes: Vec<String>,
    /// `roles` (app-only).
    pub(crate) roles: Vec<String>,
}

impl Caller {
    /// Whether this is an app-only token (no signed-in user).
    pub(crate) fn app_only(&self) -> bool {
        self.user_id.is_none()
    }

    fn has_scope(&self, any: &[&str]) -> bool {
        self.scopes
            .iter()
            .any(|s| any.iter().any(|a| s.eq_ignore_ascii_case(a)))
    }

    fn has_role(&self, any: &[&str]) -> bool {
        self.roles
            .iter()
            .any(|s| any.iter().any(|a| s.eq_ignore_ascii_case(a)))
    }

    fn is_user(&self, id: &str) -> bool {
        self.user_id
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(id))
    }
}

fn unauthorized(shared: &Shared, message: &str) -> Response {
    let mut response = error(
        shared,
        StatusCode::UNAUTHORIZED,
        "InvalidAuthenticationToken",
        message,
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"\", error=\"invalid_token\""),
    );
    response
}

/// Checks the bearer token: signature, audience, tenant, nbf/exp on the emulator clock.
/// A missing, malformed or expired token is 401 `InvalidAuthenticationToken`.
pub(crate) fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Caller, Response> {
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(unauthorized(shared, "Access token is empty."));
    };
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .map(str::trim)
        .unwrap_or("");
    if token.is_empty() {
        return Err(unauthorized(shared, "Access token is empty."));
    }
    let claims = shared.signer.verify(token).map_err(|_| {
        unauthorized(
            shared,
            "IDX14100: JWT is not well formed, or its signature is invalid.",
        )
    })?;
    let str_claim = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let aud = str_claim("aud").unwrap_or_default();
    if aud != GRAPH_AUDIENCE && aud != GRAPH_APP_ID {
        return Err(unauthorized(
            shared,
            "Access token validation failure. Invalid audience.",
        ));
    }
    let now = shared.now().as_secs();
    let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
    let nbf = claims.get("nbf").and_then(Value::as_u64).unwrap_or(0);
    if now >= exp || now < nbf {
        return Err(unauthorized(
            shared,
            "Access token has expired or is not yet valid.",
        ));
    }
    let tenant_id = str_claim("tid").unwrap_or_default();
    if !tenant_id.eq_ignore_ascii_case(&shared.lock().seed.tenant.id) {
        return Err(unauthorized(
            shared,
            "Access token validation failure. Invalid issuer.",
        ));
    }
    let idtyp = str_claim("idtyp").unwrap_or_default();
    let user_id = if idtyp == "app" {
        None
    } else {
        str_claim("oid")
    };
    let scopes = str_claim("scp")
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let roles = claims
        .get("roles")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(Caller {
        tenant_id,
        app_id: str_claim("appid").unwrap_or_default(),
        user_id,
        scopes,
        roles,
    })
}

/// What an endpoint accepts (graph.md §7).
struct Permissions {
    /// Delegated scopes that reach any user.
    delegated_any: &'static [&'static str],
    /// Delegated scopes that reach only the signed-in user.
    delegated_self: &'static [&'static str],
    /// Application roles; empty means app-only tokens are refused.
    application: &'static [&'static str],
}

const PRESENCE_WRITE: Permissions = Permissions {
    delegated_any: &[],
    delegated_self: &["Presence.ReadWrite"],
    application: &["Presence.ReadWrite.All"],
};
const PRESENCE_READ: Permissions = Permissions {
    delegated_any: &["Presence.Read.All"],
    delegated_self: &["Presence.Read", "Presence.ReadWrite"],
    application: &["Presence.Read.All", "Presence.ReadWrite.All"],
};
const PRESENCE_BULK_READ: Permissions = Permissions {
    delegated_any: &["Presence.Read.All"],
    delegated_self: &[],
    application: &["Presence.Read.All", "Presence.ReadWrite.All"],
};
const USER_READ: Permissions = Permissions {
    delegated_any: &[
        "User.ReadBasic.All",
        "User.Read.All",
        "User.ReadWrite.All",
        "Directory.Read.All",
    ],
    delegated_self: &["User.Read", "User.ReadWrite"],
    application: &[
        "User.Read.All",
        "User.ReadBasic.All",
        "User.ReadWrite.All",
        "Directory.Read.All",
    ],
};
/// Presence subscriptions: delegated Presence.Read.All only (graph.md §3.1, §7).
pub(super) const PRESENCE_SUBSCRIBE: &[&str] = &["Presence.Read.All"];

fn permitted(caller: &Caller, perms: &Permissions, target_user: Option<&str>) -> bool {
    if caller.app_only() {
        return caller.has_role(perms.application);
    }
    if caller.has_scope(perms.delegated_any) {
        return true;
    }
    caller.has_scope(perms.delegated_self) && target_user.is_some_and(|t| caller.is_user(t))
}

/// Authenticates, checks the throttle for presence endpoints (§4.1) and nothing else.
fn presence_gate(shared: &Shared, headers: &HeaderMap) -> Result<Caller, Response> {
    let caller = authenticate(shared, headers)?;
    if let Some(retry_after) = shared.throttle(&caller.tenant_id, &caller.app_id) {
        return Err(too_many_requests(shared, retry_after));
    }
    Ok(caller)
}

// ---------------------------------------------------------------------------------------
// users (§5)

fn user_json(user: &UserSeed, select: Option<&str>) -> Value {
    let (given, surname) = match user.display_name.split_once(' ') {
        Some((g, s)) => (Value::from(g), Value::from(s)),
        None => (Value::from(user.display_name.as_str()), Value::Null),
    };
    let full = json!({
        "businessPhones": [],
        "displayName": user.display_name,
        "givenName": given,
        "jobTitle": null,
        "mail": user.mail,
        "mobilePhone": null,
        "officeLocation": null,
        "preferredLanguage": null,
        "surname": surname,
        "userPrincipalName": user.user_principal_name,
        "id": user.id,
    });
    match (select, full) {
        (Some(select), Value::Object(map)) => {
            let wanted: Vec<&str> = select.split(',').map(str::trim).collect();
            let picked: Map<String, Value> = map
                .into_iter()
                .filter(|(k, _)| wanted.iter().any(|w| w.eq_ignore_ascii_case(k)))
                .collect();
            Value::Object(picked)
        }
        (_, full) => full,
    }
}

fn with_context(shared: &Shared, mut value: Value, context: &str) -> Value {
    if let Value::Object(map) = &mut value {
        map.insert(
            "@odata.context".into(),
            Value::from(format!("{}/v1.0/$metadata#{context}", shared.base)),
        );
    }
    value
}

async fn get_user(
    State(shared): Shr,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let caller = match authenticate(&shared, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let user = shared.lock().seed.user(&id).cloned();
    let target = user.as_ref().map(|u| u.id.as_str());
    if !permitted(&caller, &USER_READ, target.or(Some(""))) {
        return forbidden(&shared);
    }
    match user {
        Some(user) => {
            let body = user_json(&user, query.get("$select").map(String::as_str));
            axum::Json(with_context(&shared, body, "users/$entity")).into_response()
        }
        None => user_not_found(&shared, &id),
    }
}

async fn get_me(
    State(shared): Shr,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let caller = match authenticate(&shared, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(me) = caller.user_id.clone() else {
        return bad_request(
            &shared,
            "/me request is only valid with delegated authentication flow.",
        );
    };
    if !permitted(&caller, &USER_READ, Some(&me)) {
        return forbidden(&shared);
    }
    let user = shared.lock().seed.user_by_id(&me).cloned();
    match user {
        Some(user) => {
            let body = user_json(&user, query.get("$select").map(String::as_str));
            axum::Json(with_context(&shared, body, "users/$entity")).into_response()
        }
        None => user_not_found(&shared, &me),
    }
}

/// Parses `prop eq 'value' [or prop eq 'value' ...]` for `mail` and `userPrincipalName`.
fn parse_filter(filter: &str) -> Option<Vec<(String, String)>> {
    let mut clauses = Vec::new();
    for clause in split_or(filter) {
        let clause = clause.trim();
        let (prop, rest) = clause.split_once(char::is_whitespace)?;
        let rest = rest.trim_start();
        let value = rest
            .strip_prefix("eq")
            .or_else(|| rest.strip_prefix("EQ"))?
            .trim();
        let value = value.strip_prefix('\'')?.strip_suffix('\'')?;
        let prop = if prop.eq_ignore_ascii_case("mail") {
            "mail"
        } else if prop.eq_ignore_ascii_case("userPrincipalName") {
            "userPrincipalName"
        } else {
            return None;
        };
        clauses.push((prop.to_owned(), value.replace("''", "'")));
    }
    (!clauses.is_empty()).then_some(clauses)
}

fn split_or(filter: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = filter;
    loop {
        let lower = rest.to_ascii_lowercase();
        match lower.find(" or ") {
            Some(pos) => {
                parts.push(&rest[..pos]);
                rest = &rest[pos + 4..];
            }
            None => {
                parts.push(rest);
                return parts;
            }
        }
    }
}

async fn list_users(
    State(shared): Shr,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let caller = match authenticate(&shared, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !permitted(&caller, &USER_READ, None) {
        return forbidden(&shared);
    }
    let clauses = match query.get("$filter") {
        Some(f) => match parse_filter(f) {
            Some(c) => Some(c),
            None => {
                return error(
                    &shared,
                    StatusCode::BAD_REQUEST,
                    "Request_UnsupportedQuery",
                    "Unsupported or invalid query filter clause specified for property.",
                );
            }
        },
        None => None,
    };
    let users = shared.lock().seed.users.clone();
    let select = query.get("$select").map(String::as_str);
    let value: Vec<Value> = users
        .iter()
        .filter(|u| match &clauses {
            None => true,
            Some(clauses) => clauses.iter().any(|(prop, v)| {
                let field = if prop == "mail" {
                    &u.mail
                } else {
                    &u.user_principal_name
                };
                field.eq_ignore_ascii_case(v)
            }),
        })
        .map(|u| user_json(u, select))
        .collect();
    axum::Json(with_context(&shared, json!({ "value": value }), "users")).into_response()
}

// ---------------------------------------------------------------------------------------
// presence reads (§2)

/// The presence resource of a user at this instant (graph.md §2.1, §2.3).
fn presence_json(shared: &Shared, user_id: &str) -> Value {
    let now = shared.now();
    let mut inner = shared.lock();
    let (state, seq) = match inner.presence.get_mut(&user_id.to_ascii_lowercase()) {
        Some(p) => {
            p.expire(now);
            (p.aggregate(now), p.sequence_number())
        }
        None => (PresenceState::offline(), String::new()),
    };
    json!({
        "id": user_id,
        "availability": state.availability,
        "activity": state.activity,
        "statusMessage": null,
        "outOfOfficeSettings": { "message": null, "isOutOfOffice": false },
        "sequenceNumber": seq,
    })
}

/// Looks up a presence target: it must be a user object id (graph.md §2.1).
fn presence_target(shared: &Shared, id: &str) -> Result<UserSeed, Response> {
    let inner = shared.lock();
    if let Some(user) = inner.user_by_id(id) {
        return Ok(user.clone());
    }
    if inner.seed.user(id).is_some() || id.contains('@') {
        return Err(bad_request(
            shared,
            "The user id must be the user's object id (GUID); UPN and email are not accepted.",
        ));
    }
    Err(user_not_found(shared, id))
}

async fn get_presence(State(shared): Shr, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let caller = match presence_gate(&shared, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    // bring sequence numbers (and notifications) up to date with the clock first
    shared.sweep();
    presence_read(&shared, &caller, &id)
}

async fn get_my_presence(State(shared): Shr, headers: HeaderMap) -> Response {
    let caller = match presence_gate(&shared, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(me) = caller.user_id.clone() else {
        return bad_request(
            &shared,
            "/me request is only valid with delegated authentication flow.",
        );
    };
    shared.sweep();
    presence_read(&shared, &caller, &me)
}

fn presence_read(shared: &Shared, caller: &Caller, id: &str) -> Response {
    let user = match presence_target(shared, id) {
        Ok(u) => u,
        Err(r) => return r,
    };
    if !permitted(caller, &PRESENCE_READ, Some(&user.id)) {
        return forbidden(shared);
    }
    let body = presence_json(shared, &user.id);
    let context = format!("users('{}')/presence/$entity", user.id);
    axum::Json(with_context(shared, body, &context)).into_response()
}

async fn get_presences_by_user_id(State(shared): Shr, headers: HeaderMap, body: Bytes) -> Response {
    let caller = match presence_gate(&shared, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !permitted(&caller, &PRESENCE_BULK_READ, None) {
        return forbidden(&shared);
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return bad_request(&shared, "Invalid JSON body."),
    };
    let Some(ids) = body.get("ids").and_then(Value::as_array) else {
        return invalid_argument(&shared, "[Ids]: The Ids field is required.");
    };
    if ids.len() > MAX_PRESENCE_IDS {
        return bad_request(
            &shared,
            &format!("Maximum of {MAX_PRESENCE_IDS} user IDs are supported per API request."),
        );
    }
    shared.sweep();
    let mut value = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(id) = id.as_str() else {
            return invalid_argument(&shared, "[Ids]: every id must be a string.");
        };
        let known = shared.lock().user_by_id(id).map(|u| u.id.clone());
        match known {
            Some(user_id) => value.push(presence_json(&shared, &user_id)),
            None => value.push(json!({
                "id": id,
                "availability": "PresenceUnknown",
                "activity": "PresenceUnknown",
                "outOfOfficeSettings": { "message": null, "isOutOfOffice": false },
            })),
        }
    }
    axum::Json(with_context(
        &shared,
        json!({ "value": value }),
        "Collection(microsoft.graph.presence)",
    ))
    .into_response()
}

// ---------------------------------------------------------------------------------------
// presence writes (§1.2–§1.5)

async fn presence_action(
    State(shared): Shr,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let caller = match presence_gate(&shared, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return bad_request(&shared, "Invalid JSON body."),
        }
    };
    let response = match action.to_ascii_lowercase().as_str() {
        "setpresence" => set_presence(&shared, &caller, &id, &body),
        "clearpresence" => clear_presence(&shared, &caller, &id, &body),
        "setuserpreferredpresence" => set_preferred(&shared, &caller, &id, &body),
        "clearuserpreferredpresence" => clear_preferred(&shared, &caller, &id),
        _ => {
            return error(
                &shared,
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("Resource not found for the segment '{action}'."),
            );
        }
    };
    shared.sweep();
    response
}

fn str_field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.as_object().and_then(|o| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
    })
}

/// Checks the sessionId: present (400 first, even before permissions: graph.md §1.3) and
/// equal to the calling app's client id (§1.2, §8.1).
fn check_session_id(shared: &Shared, caller: &Caller, body: &Value) -> Result<(), Response> {
    match str_field(body, "sessionId") {
        None | Some("") => Err(invalid_argument(
            shared,
            "[SessionId]: The SessionId field is required.",
        )),
        Some(s) if !s.eq_ignore_ascii_case(&caller.app_id) => Err(invalid_argument(
            shared,
            "[SessionId]: The SessionId must be the application (client) ID of the caller.",
        )),
        Some(_) => Ok(()),
    }
}

fn write_target(shared: &Shared, caller: &Caller, id: &str) -> Result<UserSeed, Response> {
    let user = presence_target(shared, id)?;
    if !permitted(caller, &PRESENCE_WRITE, Some(&user.id)) {
        return Err(forbidden(shared));
    }
    Ok(user)
}

fn duration_field(shared: &Shared, body: &Value, default: Duration) -> Result<Duration, Response> {
    match str_field(body, "expirationDuration") {
        None => Ok(default),
        Some(text) => parse_iso_duration(text).ok_or_else(|| {
            invalid_argument(
                shared,
                "[ExpirationDuration]: The value is not a valid ISO 8601 duration.",
            )
        }),
    }
}

/// The availability/activity pair of a set request, checked against the pairs the
/// endpoint allows and returned in Graph's canonical spelling.
fn requested_pair(
    shared: &Shared,
    body: &Value,
    pairs: &[(&'static str, &'static str)],
) -> Result<(&'static str, &'static str), Response> {
    let (Some(availability), Some(activity)) =
        (str_field(body, "availability"), str_field(body, "activity"))
    else {
        return Err(invalid_argument(
            shared,
            "[Availability, Activity]: The availability and activity fields are required.",
        ));
    };
    presence::canonical_pair(pairs, availability, activity).ok_or_else(|| {
        bad_request(
            shared,
            &format!("Invalid availability/activity combination: {availability}/{activity}."),
        )
    })
}

fn set_presence(shared: &Shared, caller: &Caller, id: &str, body: &Value) -> Response {
    if let Err(r) = check_session_id(shared, caller, body) {
        return r;
    }
    let user = match write_target(shared, caller, id) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let (availability, activity) = match requested_pair(shared, body, SET_PRESENCE_PAIRS) {
        Ok(pair) => pair,
        Err(r) => return r,
    };
    let duration = match duration_field(shared, body, DEFAULT_SESSION_DURATION) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if !(MIN_SESSION_DURATION..=MAX_SESSION_DURATION).contains(&duration) {
        return invalid_argument(
            shared,
            "[ExpirationDuration]: The expiration duration must be between PT5M and PT4H.",
        );
    }
    let now = shared.now();
    let mut inner = shared.lock();
    let presence = inner
        .presence
        .entry(user.id.to_ascii_lowercase())
        .or_default();
    presence.app_sessions.insert(
        caller.app_id.to_ascii_lowercase(),
        AppSession {
            state: PresenceState::new(availability, activity),
            set_at: now,
            expires_at: now + duration,
        },
    );
    StatusCode::OK.into_response()
}

fn clear_presence(shared: &Shared, caller: &Caller, id: &str, body: &Value) -> Response {
    if let Err(r) = check_session_id(shared, caller, body) {
        return r;
    }
    let user = match write_target(shared, caller, id) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let now = shared.now();
    let removed = {
        let mut inner = shared.lock();
        let presence = inner
            .presence
            .entry(user.id.to_ascii_lowercase())
            .or_default();
        presence.expire(now);
        presence
            .app_sessions
            .remove(&caller.app_id.to_ascii_lowercase())
            .is_some()
    };
    if removed {
        StatusCode::OK.into_response()
    } else {
        error(
            shared,
            StatusCode::NOT_FOUND,
            "NotFound",
            "The presence session does not exist.",
        )
    }
}

fn set_preferred(shared: &Shared, caller: &Caller, id: &str, body: &Value) -> Response {
    let user = match write_target(shared, caller, id) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let (availability, activity) = match requested_pair(shared, body, PREFERRED_PAIRS) {
        Ok(pair) => pair,
        Err(r) => return r,
    };
    // §1.4: default 1 day for DoNotDisturb or Busy, 7 days for all others; no maximum
    let default = if matches!(availability, "DoNotDisturb" | "Busy") {
        Duration::from_secs(86_400)
    } else {
        Duration::from_secs(7 * 86_400)
    };
    let duration = match duration_field(shared, body, default) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            return invalid_argument(
                shared,
                "[ExpirationDuration]: The expiration duration must be positive.",
            );
        }
        Err(r) => return r,
    };
    let now = shared.now();
    let mut inner = shared.lock();
    inner
        .presence
        .entry(user.id.to_ascii_lowercase())
        .or_default()
        .preferred = Some(Preferred {
        state: PresenceState::new(availability, activity),
        expires_at: now + duration,
    });
    StatusCode::OK.into_response()
}

fn clear_preferred(shared: &Shared, caller: &Caller, id: &str) -> Response {
    let user = match write_target(shared, caller, id) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let mut inner = shared.lock();
    if let Some(p) = inner.presence.get_mut(&user.id.to_ascii_lowercase()) {
        p.preferred = None;
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert_eq!(
            parse_filter("mail eq 'a@b.c'"),
            Some(vec![("mail".into(), "a@b.c".into())])
        );
        assert_eq!(
            parse_filter("mail eq 'a@b.c' or userPrincipalName eq 'a@b.c'").map(|c| c.len()),
            Some(2)
        );
        assert_eq!(parse_filter("displayName eq 'x'"), None);
        assert_eq!(parse_filter("mail eq a"), None);
    }
}
