//! The identity platform (graph.md §6): admin consent (§6.1), the authorize endpoint with a
//! plain sign-in page (§6.2), the token endpoint for `authorization_code` with PKCE,
//! `refresh_token` with rotation (§6.5) and `client_credentials` (§6.3), its error JSON
//! (§6.4), id_tokens (§6.6) and the JWKS that verifies them.
//!
//! The consent and sign-in pages are plain HTML with links, so a headless browser or a
//! test can follow them; a test can also skip the page: `emulator_decision=accept|deny` on
//! the adminconsent URL, `emulator_user={id or UPN}` (or `emulator_decision=deny`) on the
//! authorize URL.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::clock::aad_timestamp;
use super::crypto::{b64url, pkce_matches, sha256};
use super::graph::GRAPH_AUDIENCE;
use super::state::{AuthCode, DeadRefresh, RefreshGrant, Shared};

type Shr = State<Arc<Shared>>;
type Params = Query<HashMap<String, String>>;

/// Graph's resource prefix in scopes.
const GRAPH_PREFIX: &str = "https://graph.microsoft.com/";
/// OpenID Connect scopes (not Graph permissions).
const OIDC_SCOPES: &[&str] = &["openid", "profile", "email", "offline_access"];
/// Delegated Graph permissions the emulator knows; others are `invalid_scope`.
const KNOWN_DELEGATED: &[&str] = &[
    "Presence.Read",
    "Presence.Read.All",
    "Presence.ReadWrite",
    "User.Read",
    "User.ReadBasic.All",
    "User.Read.All",
];
/// What `https://graph.microsoft.com/.default` grants a delegated request (the app's
/// configured delegated permissions).
const DEFAULT_DELEGATED: &[&str] = &[
    "Presence.Read.All",
    "Presence.ReadWrite",
    "User.Read",
    "User.ReadBasic.All",
];

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/{tenant}/v2.0/adminconsent", get(admin_consent))
        .route("/{tenant}/oauth2/v2.0/authorize", get(authorize))
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/discovery/v2.0/keys", get(jwks))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
}

/// Resolves the tenant path segment: the tenant id, its domain, or (where `allow_multi`)
/// `organizations` / `common`. Returns the tenant id.
fn resolve_tenant(shared: &Shared, segment: &str, allow_common: bool) -> Option<String> {
    let inner = shared.lock();
    let t = &inner.seed.tenant;
    let ok = segment.eq_ignore_ascii_case(&t.id)
        || segment.eq_ignore_ascii_case(&t.domain)
        || segment.eq_ignore_ascii_case("organizations")
        || (allow_common && segment.eq_ignore_ascii_case("common"));
    ok.then(|| t.id.clone())
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn error_page(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html><head><title>Sign in error</title></head><body>\
         <h1>Sorry, but we're having trouble signing you in.</h1>\
         <p id=\"error\">{}: {}</p></body></html>",
        html_escape(code),
        html_escape(message)
    );
    (status, Html(body)).into_response()
}

/// `redirect_uri` + `?`/`&` + the encoded pairs.
fn redirect_with(redirect_uri: &str, pairs: &[(&str, &str)]) -> Response {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k, v);
    }
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!("{redirect_uri}{sep}{}", ser.finish());
    // 302 Found, as the identity platform answers
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

fn query_string(params: &HashMap<String, String>, skip: &[&str]) -> String {
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for k in keys {
        if !skip.contains(&k.as_str()) {
            ser.append_pair(k, &params[k]);
        }
    }
    ser.finish()
}

// ---------------------------------------------------------------------------------------
// admin consent (§6.1)

async fn admin_consent(
    State(shared): Shr,
    Path(tenant): Path<String>,
    Query(q): Params,
) -> Response {
    // §6.1: tenant is a GUID, a domain or `organizations`, not `common`
    let Some(tenant_id) = resolve_tenant(&shared, &tenant, false) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "AADSTS90002",
            &format!("Tenant '{tenant}' not found, or 'common' used where it is not allowed."),
        );
    };
    let (client_id, redirect_ok) = {
        let inner = shared.lock();
        let app = &inner.seed.app;
        (
            q.get("client_id")
                .is_some_and(|c| c.eq_ignore_ascii_case(&app.client_id)),
            q.get("redirect_uri")
                .is_some_and(|r| app.redirect_uris.iter().any(|u| u == r)),
        )
    };
    if !client_id {
        return error_page(
            StatusCode::BAD_REQUEST,
            "AADSTS700016",
            "Application with the given client_id was not found in the directory.",
        );
    }
    if !redirect_ok {
        return error_page(
            StatusCode::BAD_REQUEST,
            "AADSTS50011",
            "The redirect URI specified in the request does not match the redirect URIs configured for the application.",
        );
    }
    let Some(redirect_uri) = q.get("redirect_uri").cloned() else {
        return error_page(StatusCode::BAD_REQUEST, "AADSTS900144", "redirect_uri");
    };
    let state = q.get("state").cloned().unwrap_or_default();
    let Some(scope) = q.get("scope").cloned().filter(|s| !s.trim().is_empty()) else {
        return redirect_with(
            &redirect_uri,
            &[
                ("error", "invalid_request"),
                (
                    "error_description",
                    "AADSTS900144: The request body must contain the following parameter: 'scope'.",
                ),
                ("state", &state),
            ],
        );
    };
    match q.get("emulator_decision").map(String::as_str) {
        Some("accept") => {
            shared.lock().admin_consent = true;
            tracing::info!("graph emulator: admin consent granted");
            redirect_with(
                &redirect_uri,
                &[
                    ("admin_consent", "True"),
                    ("tenant", &tenant_id),
                    ("scope", &scope),
                    ("state", &state),
                ],
            )
        }
        // §6.1: admin_consent=True appears even on error
        Some("deny") => redirect_with(
            &redirect_uri,
            &[
                ("admin_consent", "True"),
                ("error", "consent_required"),
                (
                    "error_description",
                    "AADSTS65004: User declined to consent to access the app.",
                ),
                ("state", &state),
            ],
        ),
        _ => {
            let path = format!("/{tenant}/v2.0/adminconsent");
            let base = query_string(&q, &["emulator_decision"]);
            let body = format!(
                "<!doctype html><html><head><title>Permissions requested</title></head><body>\
                 <h1>Permissions requested</h1>\
                 <p>An app wants these permissions for your whole organisation:</p>\
                 <pre id=\"scope\">{}</pre>\
                 <p><a id=\"accept\" href=\"{path}?{base}&amp;emulator_decision=accept\">Accept</a> \
                 <a id=\"deny\" href=\"{path}?{base}&amp;emulator_decision=deny\">Cancel</a></p>\
                 </body></html>",
                html_escape(&scope),
                path = html_escape(&path),
                base = html_escape(&base),
            );
            Html(body).into_response()
        }
    }
}

// ---------------------------------------------------------------------------------------
// authorize (§6.2)

/// Splits a scope string into (oidc scopes, Graph permissions), or the bad scope.
fn parse_scopes(scope: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let mut oidc = Vec::new();
    let mut graph = Vec::new();
    for s in scope.split_whitespace() {
        if let Some(o) = OIDC_SCOPES.iter().find(|o| o.eq_ignore_ascii_case(s)) {
            oidc.push((*o).to_owned());
            continue;
        }
        let name = match s.get(..GRAPH_PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(GRAPH_PREFIX) => &s[GRAPH_PREFIX.len()..],
            _ if s.contains("://") => return Err(s.to_owned()),
            _ => s,
        };
        if name == ".default" {
            graph.extend(DEFAULT_DELEGATED.iter().map(|p| (*p).to_owned()));
        } else if let Some(k) = KNOWN_DELEGATED
            .iter()
            .find(|k| k.eq_ignore_ascii_case(name))
        {
            graph.push((*k).to_owned());
        } else {
            return Err(s.to_owned());
        }
    }
    graph.dedup();
    Ok((oidc, graph))
}

async fn authorize(State(shared): Shr, Path(tenant): Path<String>, Query(q): Params) -> Response {
    if resolve_tenant(&shared, &tenant, true).is_none() {
        return error_page(
            StatusCode::BAD_REQUEST,
            "AADSTS90002",
            &format!("Tenant '{tenant}' not found."),
        );
    }
    let (client_ok, redirect_ok, users) = {
        let inner = shared.lock();
        let app = &inner.seed.app;
        (
            q.get("client_id")
                .is_some_and(|c| c.eq_ignore_ascii_case(&app.client_id)),
            q.get("redirect_uri")
                .is_some_and(|r| app.redirect_uris.iter().any(|u| u == r)),
            inner.seed.users.clone(),
        )
    };
    if !client_ok {
        return error_page(
            StatusCode::BAD_REQUEST,
            "AADSTS700016",
            "Application with the given client_id was not found in the directory.",
        );
    }
    if !redirect_ok {
        return error_page(
            StatusCode::BAD_REQUEST,
            "AADSTS50011",
            "The redirect URI specified in the request does not match the redirect URIs configured for the application.",
        );
    }
    let redirect_uri = q.get("redirect_uri").cloned().unwrap_or_default();
    let state = q.get("state").cloned().unwrap_or_default();
    let fail = |error: &str, description: &str| {
        redirect_with(
            &redirect_uri,
            &[
                ("error", error),
                ("error_description", description),
                ("state", &state),
            ],
        )
    };
    if q.get("response_type").map(String::as_str) != Some("code") {
        return fail(
            "unsupported_response_type",
            "AADSTS70005: The provided value for the input parameter 'response_type' is not allowed for this request. Expected value: code.",
        );
    }
    if let Some(mode) = q.get("response_mode") {
        if mode != "query" {
            return fail(
                "invalid_request",
                "AADSTS900144: The emulator supports response_mode=query only.",
            );
        }
    }
    let scope = q.get("scope").cloned().unwrap_or_default();
    if scope.trim().is_empty() {
        return fail(
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'scope'.",
        );
    }
    if let Err(bad) = parse_scopes(&scope) {
        return fail(
            "invalid_scope",
            &format!(
                "AADSTS70011: The provided value for the input parameter 'scope' is not valid. The scope {bad} is not valid."
            ),
        );
    }
    let challenge = match (q.get("code_challenge"), q.get("code_challenge_method")) {
        (Some(c), m) if !c.is_empty() => {
            let method = m.map_or("plain", String::as_str);
            if method != "S256" && method != "plain" {
                return fail(
                    "invalid_request",
                    "AADSTS501491: Invalid size of Code_Challenge parameter or unsupported code_challenge_method.",
                );
            }
            Some((c.clone(), method.to_owned()))
        }
        _ if shared.config.require_pkce => {
            return fail(
                "invalid_request",
                "AADSTS9002325: Proof Key for Code Exchange is required for cross-origin authorization code redemption.",
            );
        }
        _ => None,
    };
    if q.get("emulator_decision").map(String::as_str) == Some("deny") {
        return fail(
            "access_denied",
            "AADSTS65004: User declined to consent to access the app.",
        );
    }
    let prompt_none = q.get("prompt").map(String::as_str) == Some("none");
    let chosen = q.get("emulator_user").map(String::as_str).or_else(|| {
        if prompt_none {
            q.get("login_hint").map(String::as_str)
        } else {
            None
        }
    });
    let Some(chosen) = chosen else {
        if prompt_none {
            return fail(
                "login_required",
                "AADSTS50058: A silent sign-in request was sent but no user is signed in.",
            );
        }
        return sign_in_page(&tenant, &q, &users);
    };
    let Some(user) = users.iter().find(|u| {
        u.id.eq_ignore_ascii_case(chosen) || u.user_principal_name.eq_ignore_ascii_case(chosen)
    }) else {
        return fail(
            "access_denied",
            "AADSTS50020: User account does not exist in tenant.",
        );
    };
    let code = shared.signer.opaque("emu-code.");
    let auth = AuthCode {
        client_id: q.get("client_id").cloned().unwrap_or_default(),
        redirect_uri: redirect_uri.clone(),
        scopes: scope.split_whitespace().map(str::to_owned).collect(),
        user_id: user.id.clone(),
        nonce: q.get("nonce").cloned(),
        challenge,
        expires_at: shared.now() + shared.config.code_lifetime,
    };
    shared.lock().codes.insert(code.clone(), auth);
    tracing::info!(user = %user.user_principal_name, "graph emulator: user signed in");
    redirect_with(&redirect_uri, &[("code", &code), ("state", &state)])
}

fn sign_in_page(
    tenant: &str,
    q: &HashMap<String, String>,
    users: &[super::seed::UserSeed],
) -> Response {
    let base = format!(
        "/{}/oauth2/v2.0/authorize?{}",
        tenant,
        query_string(q, &["emulator_user", "emulator_decision"])
    );
    let hint = q.get("login_hint");
    let mut items = String::new();
    for user in users {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        ser.append_pair("emulator_user", &user.user_principal_name);
        let hinted = hint.is_some_and(|h| h.eq_ignore_ascii_case(&user.user_principal_name));
        items.push_str(&format!(
            "<li><a class=\"user{}\" data-upn=\"{upn}\" href=\"{href}\">{name} ({upn})</a></li>",
            if hinted { " hinted" } else { "" },
            upn = html_escape(&user.user_principal_name),
            name = html_escape(&user.display_name),
            href = html_escape(&format!("{base}&{}", ser.finish())),
        ));
    }
    let body = format!(
        "<!doctype html><html><head><title>Sign in to your account</title></head><body>\
         <h1>Pick an account</h1><ul id=\"users\">{items}</ul>\
         <p><a id=\"deny\" href=\"{deny}\">Cancel</a></p></body></html>",
        deny = html_escape(&format!("{base}&emulator_decision=deny")),
    );
    Html(body).into_response()
}

// ---------------------------------------------------------------------------------------
// token (§6.2–§6.5)

/// The `invalid_grant` token error (400) with its AADSTS code (graph.md §6.4).
fn invalid_grant(shared: &Shared, aadsts: u32, description: &str) -> Response {
    token_error(
        shared,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        aadsts,
        description,
    )
}

/// A token-endpoint error with the JSON of graph.md §6.4.
fn token_error(
    shared: &Shared,
    status: StatusCode,
    error: &str,
    aadsts: u32,
    text: &str,
) -> Response {
    let trace_id = shared.signer.guid();
    let correlation_id = shared.signer.guid();
    let timestamp = aad_timestamp(shared.now());
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{aadsts}: {text}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        ),
        "error_codes": [aadsts],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": format!("{}/error?code={aadsts}", shared.base),
    });
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store, no-cache"),
    );
    response
}

fn missing(shared: &Shared, name: &str) -> Response {
    token_error(
        shared,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900_144,
        &format!("The request body must contain the following parameter: '{name}'."),
    )
}

/// Client authentication: `client_secret` in the body or HTTP Basic (§6.2, §6.3).
fn authenticate_client(
    shared: &Shared,
    form: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<String, Response> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (id, secret) = s.split_once(':')?;
            let decode = |t: &str| {
                form_urlencoded::parse(format!("x={t}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((decode(id)?, decode(secret)?))
        });
    let client_id = basic
        .as_ref()
        .map(|(id, _)| id.clone())
        .or_else(|| form.get("client_id").cloned());
    let Some(client_id) = client_id else {
        return Err(missing(shared, "client_id"));
    };
    let (app_id, app_secret) = {
        let inner = shared.lock();
        (
            inner.seed.app.client_id.clone(),
            inner.seed.app.client_secret.clone(),
        )
    };
    if !client_id.eq_ignore_ascii_case(&app_id) {
        return Err(token_error(
            shared,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700_016,
            &format!("Application with identifier '{client_id}' was not found in the directory."),
        ));
    }
    let secret = basic
        .map(|(_, s)| s)
        .or_else(|| form.get("client_secret").cloned());
    match secret {
        None => Err(token_error(
            shared,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )),
        Some(s) if s != app_secret => Err(token_error(
            shared,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        )),
        Some(_) => Ok(app_id),
    }
}

async fn token(
    State(shared): Shr,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let Some(tenant_id) = resolve_tenant(&shared, &tenant, true) else {
        return token_error(
            &shared,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90_002,
            &format!("Tenant '{tenant}' not found."),
        );
    };
    let Some(grant_type) = form.get("grant_type").cloned() else {
        return missing(&shared, "grant_type");
    };
    let client_id = match authenticate_client(&shared, &form, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match grant_type.as_str() {
        "authorization_code" => code_grant(&shared, &tenant_id, &client_id, &form),
        "refresh_token" => refresh_grant(&shared, &tenant_id, &client_id, &form),
        "client_credentials" => client_credentials(&shared, &tenant_id, &client_id, &form),
        other => token_error(
            &shared,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70_003,
            &format!("The app requested an unsupported grant type '{other}'."),
        ),
    }
}

fn code_grant(
    shared: &Arc<Shared>,
    tenant_id: &str,
    client_id: &str,
    form: &HashMap<String, String>,
) -> Response {
    let Some(code) = form.get("code") else {
        return missing(shared, "code");
    };
    let Some(redirect_uri) = form.get("redirect_uri") else {
        return missing(shared, "redirect_uri");
    };
    let now = shared.now();
    let grant = {
        let mut inner = shared.lock();
        if inner.used_codes.contains(code) {
            None
        } else {
            let g = inner.codes.remove(code);
            if g.is_some() {
                inner.used_codes.insert(code.clone());
            }
            g.map(Ok).or(Some(Err(())))
        }
    };
    let grant = match grant {
        None => {
            return invalid_grant(
                shared,
                54_005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
            );
        }
        Some(Err(())) => {
            return invalid_grant(
                shared,
                70_000,
                "The provided authorization code is invalid or has expired.",
            );
        }
        Some(Ok(g)) => g,
    };
    if grant.expires_at <= now {
        return invalid_grant(
            shared,
            70_008,
            "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
        );
    }
    if !grant.client_id.eq_ignore_ascii_case(client_id) {
        return invalid_grant(
            shared,
            70_000,
            "The authorization code was issued to another client.",
        );
    }
    if &grant.redirect_uri != redirect_uri {
        return invalid_grant(
            shared,
            500_117,
            "The reply uri specified in the request does not match the reply uri used in the authorization request.",
        );
    }
    if let Some((challenge, method)) = &grant.challenge {
        let Some(verifier) = form.get("code_verifier") else {
            return missing(shared, "code_verifier");
        };
        if !pkce_matches(verifier, challenge, method) {
            return invalid_grant(
                shared,
                501_481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            );
        }
    }
    issue_user_tokens(
        shared,
        tenant_id,
        client_id,
        &grant.user_id,
        &grant.scopes,
        grant.nonce.as_deref(),
    )
}

fn refresh_grant(
    shared: &Arc<Shared>,
    tenant_id: &str,
    client_id: &str,
    form: &HashMap<String, String>,
) -> Response {
    let Some(token) = form.get("refresh_token") else {
        return missing(shared, "refresh_token");
    };
    let now = shared.now();
    let (grant, dead) = {
        let mut inner = shared.lock();
        let grant = inner.refresh_tokens.remove(token);
        if grant.is_some() {
            inner
                .dead_refresh_tokens
                .insert(token.clone(), DeadRefresh::Rotated);
        }
        let dead = inner.dead_refresh_tokens.get(token).copied();
        (grant, dead)
    };
    let grant = match (grant, dead) {
        (Some(g), _) if g.expires_at > now => g,
        (Some(_), _) | (None, Some(DeadRefresh::Rotated)) => {
            return invalid_grant(
                shared,
                70_008,
                "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
            );
        }
        (None, Some(DeadRefresh::Revoked)) => {
            return invalid_grant(
                shared,
                50_173,
                "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
            );
        }
        (None, None) => {
            return invalid_grant(
                shared,
                9_002_313,
                "Invalid request. Request is malformed or invalid.",
            );
        }
    };
    if !grant.client_id.eq_ignore_ascii_case(client_id) {
        return invalid_grant(
            shared,
            70_000,
            "The refresh token was issued to another client.",
        );
    }
    // §6.2: the scopes must equal or be a subset of the original request
    let scopes = match form.get("scope") {
        None => grant.scopes.clone(),
        Some(requested) => {
            let Ok((_, wanted)) = parse_scopes(requested) else {
                return token_error(
                    shared,
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    70_011,
                    "The provided value for the input parameter 'scope' is not valid.",
                );
            };
            let original = parse_scopes(&grant.scopes.join(" "))
                .map(|(_, g)| g)
                .unwrap_or_default();
            if wanted.iter().any(|w| !original.contains(w)) {
                return invalid_grant(
                    shared,
                    65_001,
                    "The user or administrator has not consented to use the application for the requested scopes.",
                );
            }
            requested.split_whitespace().map(str::to_owned).collect()
        }
    };
    let mut scopes = scopes;
    if !scopes
        .iter()
        .any(|s| s.eq_ignore_ascii_case("offline_access"))
    {
        scopes.push("offline_access".into());
    }
    issue_user_tokens(shared, tenant_id, client_id, &grant.user_id, &scopes, None)
}

fn issue_user_tokens(
    shared: &Arc<Shared>,
    tenant_id: &str,
    client_id: &str,
    user_id: &str,
    scopes: &[String],
    nonce: Option<&str>,
) -> Response {
    let (oidc, graph) = parse_scopes(&scopes.join(" ")).unwrap_or_default();
    let Some(user) = shared.lock().seed.user_by_id(user_id).cloned() else {
        return invalid_grant(shared, 50_020, "User account does not exist in tenant.");
    };
    let now = shared.now().as_secs();
    let lifetime = shared.config.access_token_lifetime.as_secs();
    let has = |s: &str| oidc.iter().any(|o| o == s);
    let mut scp: Vec<String> = oidc
        .iter()
        .filter(|o| o.as_str() != "offline_access")
        .cloned()
        .collect();
    scp.extend(graph.iter().cloned());
    let access = json!({
        "aud": GRAPH_AUDIENCE,
        "iss": shared.issuer(tenant_id),
        "iat": now, "nbf": now, "exp": now + lifetime,
        "tid": tenant_id,
        "oid": user.id,
        "sub": b64url(&sha256(format!("{}:{client_id}:graph", user.id).as_bytes())),
        "appid": client_id,
        "azp": client_id,
        "idtyp": "user",
        "scp": scp.join(" "),
        "upn": user.user_principal_name,
        "unique_name": user.user_principal_name,
        "name": user.display_name,
        "uti": shared.signer.opaque(""),
        "ver": "1.0",
    });
    let access_token = match shared.signer.sign(&access) {
        Ok(t) => t,
        Err(err) => return server_error(shared, &err.to_string()),
    };
    let mut body = json!({
        "token_type": "Bearer",
        "scope": graph.iter().map(|g| format!("{GRAPH_PREFIX}{g}"))
            .chain(oidc.iter().cloned()).collect::<Vec<_>>().join(" "),
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    });
    if has("openid") {
        // §6.6: oid and preferred_username need `profile`; email needs `email`
        let mut id = json!({
            "aud": client_id,
            "iss": shared.issuer(tenant_id),
            "iat": now, "nbf": now, "exp": now + lifetime,
            "tid": tenant_id,
            "sub": b64url(&sha256(format!("{}:{client_id}", user.id).as_bytes())),
            "ver": "2.0",
        });
        if let Value::Object(map) = &mut id {
            if has("profile") {
                map.insert("oid".into(), Value::from(user.id.clone()));
                map.insert(
                    "preferred_username".into(),
                    Value::from(user.user_principal_name.clone()),
                );
                map.insert("name".into(), Value::from(user.display_name.clone()));
            }
            if has("email") {
                map.insert("email".into(), Value::from(user.mail.clone()));
            }
            if let Some(nonce) = nonce {
                map.insert("nonce".into(), Value::from(nonce));
            }
        }
        match shared.signer.sign(&id) {
            Ok(t) => body["id_token"] = Value::from(t),
            Err(err) => return server_error(shared, &err.to_string()),
        }
    }
    if has("offline_access") {
        let refresh = shared.signer.opaque("emu-rt.");
        shared.lock().refresh_tokens.insert(
            refresh.clone(),
            RefreshGrant {
                client_id: client_id.to_owned(),
                user_id: user.id.clone(),
                scopes: scopes.to_vec(),
                expires_at: shared.now() + shared.config.refresh_token_lifetime,
            },
        );
        body["refresh_token"] = Value::from(refresh);
    }
    no_store(axum::Json(body).into_response())
}

fn client_credentials(
    shared: &Arc<Shared>,
    tenant_id: &str,
    client_id: &str,
    form: &HashMap<String, String>,
) -> Response {
    // §6.3: the scope must be https://graph.microsoft.com/.default
    let Some(scope) = form.get("scope") else {
        return missing(shared, "scope");
    };
    if scope.trim() != format!("{GRAPH_PREFIX}.default") {
        return token_error(
            shared,
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70_011,
            &format!(
                "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid. Use {GRAPH_PREFIX}.default."
            ),
        );
    }
    let (roles, sp_id) = {
        let inner = shared.lock();
        let roles = if inner.admin_consent {
            inner.seed.app.application_permissions.clone()
        } else {
            Vec::new()
        };
        (roles, format!("sp-{}", inner.seed.app.client_id))
    };
    let now = shared.now().as_secs();
    let lifetime = shared.config.access_token_lifetime.as_secs();
    let mut claims = json!({
        "aud": GRAPH_AUDIENCE,
        "iss": shared.issuer(tenant_id),
        "iat": now, "nbf": now, "exp": now + lifetime,
        "tid": tenant_id,
        "oid": sp_id,
        "sub": sp_id,
        "appid": client_id,
        "azp": client_id,
        "idtyp": "app",
        "uti": shared.signer.opaque(""),
        "ver": "1.0",
    });
    // without admin consent the token carries no roles at all, and Graph answers 403
    if !roles.is_empty() {
        claims["roles"] = json!(roles);
    }
    match shared.signer.sign(&claims) {
        Ok(token) => no_store(
            axum::Json(json!({
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            }))
            .into_response(),
        ),
        Err(err) => server_error(shared, &err.to_string()),
    }
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store, no-cache"),
    );
    response
}

fn server_error(shared: &Shared, message: &str) -> Response {
    tracing::error!(%message, "graph emulator: token issue failed");
    token_error(
        shared,
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        50_000,
        "There was an error issuing a token.",
    )
}

// ---------------------------------------------------------------------------------------
// keys and metadata

async fn jwks(State(shared): Shr, Path(tenant): Path<String>) -> Response {
    let tenant_id = resolve_tenant(&shared, &tenant, true)
        .unwrap_or_else(|| shared.lock().seed.tenant.id.clone());
    axum::Json(shared.signer.jwks(&shared.issuer(&tenant_id))).into_response()
}

async fn openid_configuration(State(shared): Shr, Path(tenant): Path<String>) -> Response {
    let Some(tenant_id) = resolve_tenant(&shared, &tenant, true) else {
        return (StatusCode::BAD_REQUEST, "unknown tenant\n").into_response();
    };
    let base = &shared.base;
    axum::Json(json!({
        "issuer": shared.issuer(&tenant_id),
        "authorization_endpoint": format!("{base}/{tenant_id}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{base}/{tenant_id}/oauth2/v2.0/token"),
        "jwks_uri": format!("{base}/{tenant_id}/discovery/v2.0/keys"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "code_challenge_methods_supported": ["S256", "plain"],
        "tenant_region_scope": "EU",
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_split() {
        let (oidc, graph) =
            parse_scopes("openid offline_access https://graph.microsoft.com/Presence.ReadWrite")
                .unwrap_or_default();
        assert_eq!(oidc, vec!["openid", "offline_access"]);
        assert_eq!(graph, vec!["Presence.ReadWrite"]);
        assert!(parse_scopes("https://other.example/x").is_err());
        assert!(parse_scopes("Mail.Send").is_err());
    }
}
