//! The admin's pages: the password sign-in, the "Microsoft Teams Presence" page (Admin
//! Grant, Get OAuth Token, scope, the PBX → Teams switch), the extension directory (add,
//! edit, delete, CSV import) and the live status page.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Router;
use axum::extract::{ConnectInfo, Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};

use super::session::{SessionView, Who, constant_time_eq, random_token};
use super::{Nav, Portal, csrf_field, to_identity_platform, utc, with_cookie};
use crate::store::{Scope, Store, StoreError, TokenKind, TokenStatus};
use crate::web::cookie_values;
use crate::web::pages::escape;

/// The cookie that ties the sign-in form to the browser that loaded it.
const LOGIN_COOKIE: &str = "pp_login";

type FormData = Form<HashMap<String, String>>;

pub(super) fn routes() -> Router<Portal> {
    Router::new()
        .route("/admin", get(home))
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/teams", get(teams_page).post(save_teams))
        .route("/admin/teams/grant", post(admin_grant))
        .route("/admin/teams/token", post(get_oauth_token))
        .route("/admin/directory", get(directory_page).post(save_extension))
        .route("/admin/directory/delete", post(delete_extension))
        .route("/admin/directory/import", post(import_csv))
        .route("/admin/status", get(status_page))
}

/// The client's address when the server was started with connect info; the limiter
/// counts everyone as one address otherwise.
pub(super) struct Peer(IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip()),
        ))
    }
}

/// The admin session, or the response refusing the request: a GET page sends the
/// browser to the sign-in, anything else is 403.
fn require_admin(
    portal: &Portal,
    headers: &HeaderMap,
    page: bool,
) -> Result<SessionView, Box<Response>> {
    match portal.admin_session(headers) {
        Some(session) => Ok(session),
        None if page => Err(Box::new(portal.see_other("/admin/login"))),
        None => Err(Box::new(portal.refusal(
            StatusCode::FORBIDDEN,
            "Not signed in",
            "Sign in as the administrator first.",
        ))),
    }
}

/// The admin session of a form, its CSRF token and origin checked.
fn admin_form(
    portal: &Portal,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<SessionView, Box<Response>> {
    let session = require_admin(portal, headers, false)?;
    portal.check_form(&session, headers, form.get("csrf").map(String::as_str))?;
    Ok(session)
}

/// Runs `f` on the store off the async threads.
async fn blocking<R: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, String> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("store task: {e}")),
    }
}

fn store_failed(portal: &Portal, error: &str) -> Response {
    tracing::error!(error, "portal: store failed");
    portal.refusal(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The store could not be read or written. The details are in the proxy's log.",
    )
}

/// Makes the sync engine read its links again (after the admin changed them).
fn reload(portal: &Portal) {
    if let Some(sync) = &portal.status().sync {
        sync.reload();
    }
}

// -------------------------------------------------------------------------------------
// sign-in

async fn home(State(portal): State<Portal>) -> Response {
    portal.see_other("/admin/teams")
}

/// The sign-in form. Its token is the browser's `pp_login` cookie when it has a
/// well-formed one (several tabs, a reload), else a new one.
fn login_form(
    portal: &Portal,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let existing = cookie_values(headers, LOGIN_COOKIE)
        .into_iter()
        .find(|c| {
            c.len() == 43
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned);
    let token = match existing {
        Some(t) => t,
        None => match random_token(&ring::rand::SystemRandom::new()) {
            Ok(t) => t,
            Err(_) => return store_failed(portal, "random generator"),
        },
    };
    let notice = error
        .map(|e| format!("<p id=\"error\" class=\"notice error\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "{notice}<section><form method=\"post\" action=\"{action}\" id=\"login\">\
         <input type=\"hidden\" name=\"login_csrf\" value=\"{token}\">\
         <div class=\"row\"><label for=\"password\">Admin password</label>\
         <input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" autofocus required>\
         <button type=\"submit\" id=\"sign-in\">Sign in</button></div></form></section>",
        action = escape(&portal.url("/admin/login")),
        token = escape(&token),
    );
    let response = portal.page(status, "Administrator sign-in", &Nav::None, &body);
    let cookie = format!(
        "{LOGIN_COOKIE}={token}; Path={}; Max-Age=3600; HttpOnly; SameSite=Strict{}",
        portal.service().session_cookie_path(),
        if portal.service().secure_cookies() {
            "; Secure"
        } else {
            ""
        }
    );
    with_cookie(response, &cookie)
}

async fn login_page(State(portal): State<Portal>, headers: HeaderMap) -> Response {
    if portal.admin_session(&headers).is_some() {
        return portal.see_other("/admin/teams");
    }
    login_form(&portal, &headers, StatusCode::OK, None)
}

async fn login(
    State(portal): State<Portal>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    if let Err(wait) = portal.inner.limiter.check(peer) {
        tracing::warn!(%peer, outcome = "rate_limited", "admin sign-in refused");
        return login_form(
            &portal,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many wrong passwords from this address. Try again in {} s.",
                wait.as_secs().max(1)
            )),
        );
    }
    let given = form.get("login_csrf").map(String::as_str).unwrap_or("");
    let cookie_ok = cookie_values(&headers, LOGIN_COOKIE)
        .into_iter()
        .any(|c| !given.is_empty() && constant_time_eq(c.as_bytes(), given.as_bytes()));
    if !cookie_ok || !crate::web::same_origin(&headers, portal.service().public_origin()) {
        tracing::warn!(
            %peer,
            outcome = "csrf",
            has_cookie = !cookie_values(&headers, LOGIN_COOKIE).is_empty(),
            origin = ?headers.get(header::ORIGIN),
            "admin sign-in refused"
        );
        return login_form(
            &portal,
            &headers,
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired. Try again."),
        );
    }
    let password = form.get("password").cloned().unwrap_or_default();
    let hash = portal.inner.admin_password_hash.read().clone();
    let matches =
        tokio::task::spawn_blocking(move || crate::web::verify_password(hash.expose(), &password))
            .await
            .unwrap_or(false);
    if !matches {
        portal.inner.limiter.failed(peer);
        tracing::warn!(%peer, outcome = "wrong_password", "admin sign-in refused");
        return login_form(
            &portal,
            &headers,
            StatusCode::UNAUTHORIZED,
            Some("Wrong password."),
        );
    }
    portal.inner.limiter.succeeded(peer);
    tracing::info!(%peer, outcome = "signed_in", "admin sign-in");
    portal.signed_in(Who::Admin, "/admin/teams")
}

async fn logout(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    if let Err(r) = admin_form(&portal, &headers, &form) {
        return *r;
    }
    portal.sign_out(&headers, "/admin/login")
}

// -------------------------------------------------------------------------------------
// Microsoft Teams Presence

/// Notices the pages show after a redirect, by code (no text is reflected).
fn notice(query: &HashMap<String, String>) -> String {
    let text = match query.get("notice").map(String::as_str) {
        Some("saved") => "Saved.",
        Some("extension-saved") => "Extension saved.",
        Some("extension-deleted") => "Extension deleted.",
        _ => {
            let count = |k: &str| query.get(k).and_then(|v| v.parse::<usize>().ok());
            return match (count("added"), count("updated"), count("unchanged")) {
                (Some(a), Some(u), Some(n)) => format!(
                    "<p id=\"notice\" class=\"notice\">Imported: {a} added, {u} updated, {n} unchanged.</p>"
                ),
                _ => String::new(),
            };
        }
    };
    format!("<p id=\"notice\" class=\"notice\">{text}</p>")
}

async fn teams_page(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let session = match require_admin(&portal, &headers, true) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let read = blocking(&portal.status().store, |store| {
        let domain = store
            .list_tokens()?
            .into_iter()
            .find(|t| t.key.kind == TokenKind::Domain);
        Ok((
            store.admin_consent()?,
            store.domain_token_owner()?,
            domain,
            store.pbx_to_teams_enabled()?,
            store.scope()?,
        ))
    })
    .await;
    let (consent, owner, domain, switch, scope) = match read {
        Ok(r) => r,
        Err(e) => return store_failed(&portal, &e),
    };
    let poll_error = portal
        .status()
        .sync
        .as_ref()
        .and_then(|s| s.last_errors().get("*").cloned());
    let csrf = csrf_field(&session);
    let consent_html = match &consent {
        Some(c) => format!(
            "<p id=\"consent\" class=\"ok\">Granted for tenant {} on {}.</p>",
            escape(&c.tenant_id),
            escape(&utc(c.granted_at))
        ),
        None => "<p id=\"consent\" class=\"bad\">Not granted yet.</p>".to_owned(),
    };
    let token_html = match &domain {
        Some(t) => {
            let (class, state) = match &t.status {
                TokenStatus::Valid => ("ok", "valid".to_owned()),
                TokenStatus::NeedsRepairing { reason } => {
                    ("bad", format!("refused: {reason}; get it again"))
                }
            };
            format!(
                "<table id=\"domain-token\"><tr><th>Signed in as</th><td id=\"token-owner\">{}</td></tr>\
                 <tr><th>Obtained</th><td>{}</td></tr><tr><th>Access token expires</th><td>{}</td></tr>\
                 <tr><th>State</th><td id=\"token-state\" class=\"{class}\">{}</td></tr>\
                 <tr><th>Last error</th><td id=\"token-error\" class=\"bad\">{}</td></tr></table>",
                escape(owner.as_deref().or(t.subject_upn.as_deref()).unwrap_or("?")),
                escape(&utc(t.updated_at)),
                escape(&utc(t.access_expires_at)),
                escape(&state),
                escape(poll_error.as_deref().unwrap_or("none")),
            )
        }
        None => "<p id=\"token-state\" class=\"bad\">No domain token yet.</p>".to_owned(),
    };
    let selected = match &scope {
        Scope::AllAccounts => String::new(),
        Scope::SelectedExtensions { extensions } => extensions.join(", "),
    };
    let all = matches!(scope, Scope::AllAccounts);
    let body = format!(
        "{notice}\
         <section><h2>1. Admin Grant</h2><p>A tenant administrator consents once to the app's permissions for the whole organisation.</p>\
         {consent_html}<form method=\"post\" action=\"{grant}\">{csrf}<button type=\"submit\" id=\"admin-grant\">Admin Grant</button></form></section>\
         <section><h2>2. Domain token</h2><p>An administrator signs in once; the proxy reads everyone's Teams presence with this token (Teams → PBX).</p>\
         {token_html}<p><form method=\"post\" action=\"{token}\">{csrf}<button type=\"submit\" id=\"get-token\">Get OAuth Token</button></form></p></section>\
         <section><h2>3. Settings</h2><form method=\"post\" action=\"{save}\" id=\"settings\">{csrf}\
         <div class=\"row\"><label><input type=\"radio\" name=\"scope\" value=\"all\" id=\"scope-all\"{all_checked}> All accounts</label>\
         <label><input type=\"radio\" name=\"scope\" value=\"selected\" id=\"scope-selected\"{sel_checked}> Selected extensions:</label>\
         <input type=\"text\" name=\"extensions\" id=\"scope-extensions\" value=\"{selected}\" placeholder=\"201, 202\"></div>\
         <div class=\"row\"><label><input type=\"checkbox\" name=\"pbx_to_teams\" value=\"on\" id=\"pbx-to-teams\"{switch_checked}> \
         PBX → Teams: show phone calls and DND in Teams (for paired users)</label></div>\
         <button type=\"submit\" id=\"save\">Save</button></form></section>",
        notice = notice(&query),
        grant = escape(&portal.url("/admin/teams/grant")),
        token = escape(&portal.url("/admin/teams/token")),
        save = escape(&portal.url("/admin/teams")),
        all_checked = if all { " checked" } else { "" },
        sel_checked = if all { "" } else { " checked" },
        selected = escape(&selected),
        switch_checked = if switch { " checked" } else { "" },
    );
    portal.page(
        StatusCode::OK,
        "Microsoft Teams Presence",
        &Nav::Admin {
            current: "/admin/teams",
            csrf: &session.csrf,
        },
        &body,
    )
}

async fn save_teams(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    if let Err(r) = admin_form(&portal, &headers, &form) {
        return *r;
    }
    let switch = form.get("pbx_to_teams").is_some_and(|v| v == "on");
    let scope = match form.get("scope").map(String::as_str) {
        Some("selected") => {
            let mut extensions: Vec<String> = form
                .get("extensions")
                .map(String::as_str)
                .unwrap_or("")
                .split([',', ' ', '\n', ';'])
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect();
            extensions.sort();
            extensions.dedup();
            Scope::SelectedExtensions { extensions }
        }
        _ => Scope::AllAccounts,
    };
    let saved = blocking(&portal.status().store, move |store| {
        store.set_scope(&scope)?;
        store.set_pbx_to_teams_enabled(switch)
    })
    .await;
    if let Err(e) = saved {
        return store_failed(&portal, &e);
    }
    tracing::info!(pbx_to_teams = switch, "portal: settings saved");
    reload(&portal);
    portal.see_other("/admin/teams?notice=saved")
}

async fn admin_grant(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    if let Err(r) = admin_form(&portal, &headers, &form) {
        return *r;
    }
    to_identity_platform(
        portal
            .service()
            .start_admin_consent_from(Some("/admin/teams")),
    )
}

async fn get_oauth_token(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    if let Err(r) = admin_form(&portal, &headers, &form) {
        return *r;
    }
    to_identity_platform(
        portal
            .service()
            .start_domain_sign_in_from(Some("/admin/teams")),
    )
}

// -------------------------------------------------------------------------------------
// directory

async fn directory_page(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let session = match require_admin(&portal, &headers, true) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    render_directory(&portal, &session, &query, StatusCode::OK, None, None).await
}

async fn render_directory(
    portal: &Portal,
    session: &SessionView,
    query: &HashMap<String, String>,
    status: StatusCode,
    error: Option<&str>,
    csv: Option<&str>,
) -> Response {
    let read = blocking(&portal.status().store, |store| {
        Ok((store.list_extensions()?, store.list_tokens()?))
    })
    .await;
    let (entries, tokens) = match read {
        Ok(r) => r,
        Err(e) => return store_failed(portal, &e),
    };
    let tokens: HashMap<String, TokenStatus> = tokens
        .into_iter()
        .filter(|t| t.key.kind == TokenKind::User)
        .map(|t| (t.key.owner, t.status))
        .collect();
    let csrf = csrf_field(session);
    let mut rows = String::new();
    for e in &entries {
        let teams = match (&e.display_name, &e.graph_user_id, &e.last_error) {
            (_, _, Some(err)) => format!("<span class=\"bad\">{}</span>", escape(err)),
            (Some(name), Some(id), None) => format!(
                "<span class=\"ok\">{}</span> <span class=\"muted\">{}</span>",
                escape(name),
                escape(id)
            ),
            (None, Some(id), None) => format!("<span class=\"ok\">{}</span>", escape(id)),
            _ if e.email.is_none() => "<span class=\"muted\">no email</span>".to_owned(),
            _ => "<span class=\"muted\">not resolved yet</span>".to_owned(),
        };
        let paired = match tokens.get(&e.extension) {
            Some(TokenStatus::Valid) => "<span class=\"ok\">paired</span>".to_owned(),
            Some(TokenStatus::NeedsRepairing { reason }) => {
                format!("<span class=\"bad\">re-pair: {}</span>", escape(reason))
            }
            None => "<span class=\"muted\">not paired</span>".to_owned(),
        };
        rows.push_str(&format!(
            "<tr data-extension=\"{ext}\"><td>{ext}</td><td class=\"email\">{email}</td><td class=\"teams-user\">{teams}</td><td>{paired}</td>\
             <td><a href=\"{edit}\">Edit</a> <form class=\"inline\" method=\"post\" action=\"{delete}\">{csrf}\
             <input type=\"hidden\" name=\"extension\" value=\"{ext}\"><button class=\"danger\" type=\"submit\">Delete</button></form></td></tr>",
            ext = escape(&e.extension),
            email = escape(e.email.as_deref().unwrap_or("")),
            edit = escape(&portal.url(&format!(
                "/admin/directory?edit={}",
                form_urlencoded::byte_serialize(e.extension.as_bytes()).collect::<String>()
            ))),
            delete = escape(&portal.url("/admin/directory/delete")),
        ));
    }
    let editing = query
        .get("edit")
        .and_then(|x| entries.iter().find(|e| &e.extension == x));
    let error_html = error
        .map(|e| format!("<p id=\"error\" class=\"notice error\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "{error_html}{notice}<section><h2>Extensions</h2><table id=\"directory\"><thead><tr><th>Extension</th><th>Email (UPN)</th>\
         <th>Teams user</th><th>Pairing</th><th></th></tr></thead><tbody>{rows}</tbody></table></section>\
         <section><h2>{form_title}</h2><form method=\"post\" action=\"{save}\" id=\"extension-form\">{csrf}<div class=\"row\">\
         <label>Extension <input type=\"text\" name=\"extension\" id=\"new-extension\" value=\"{ext}\" required></label>\
         <label>Email <input type=\"email\" name=\"email\" id=\"new-email\" value=\"{email}\" required></label>\
         <button type=\"submit\" id=\"save-extension\">Save</button></div></form></section>\
         <section><h2>Import CSV</h2><p class=\"muted\">One line per extension: <code>extension,email</code> (a header line is allowed).</p>\
         <form method=\"post\" action=\"{import}\" id=\"import-form\">{csrf}<p><input type=\"file\" accept=\".csv,text/csv\" data-fills=\"csv\"></p>\
         <textarea name=\"csv\" id=\"csv\">{csv}</textarea><p><button type=\"submit\" id=\"import\">Import</button></p></form></section>",
        notice = notice(query),
        form_title = if editing.is_some() {
            "Edit extension"
        } else {
            "Add an extension"
        },
        save = escape(&portal.url("/admin/directory")),
        import = escape(&portal.url("/admin/directory/import")),
        ext = escape(editing.map_or("", |e| e.extension.as_str())),
        email = escape(editing.and_then(|e| e.email.as_deref()).unwrap_or("")),
        csv = escape(csv.unwrap_or("")),
    );
    portal.page(
        status,
        "Directory",
        &Nav::Admin {
            current: "/admin/directory",
            csrf: &session.csrf,
        },
        &body,
    )
}

async fn save_extension(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    let session = match admin_form(&portal, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let extension = form.get("extension").map_or("", |e| e.trim()).to_owned();
    let email = form.get("email").map_or("", |e| e.trim()).to_owned();
    let ext = extension.clone();
    let saved = blocking(&portal.status().store, move |store| {
        store.upsert_extension(&ext, (!email.is_empty()).then_some(email.as_str()))
    })
    .await;
    match saved {
        Ok(outcome) => {
            tracing::info!(extension, ?outcome, "portal: extension saved");
            reload(&portal);
            portal.see_other("/admin/directory?notice=extension-saved")
        }
        Err(e) => {
            render_directory(
                &portal,
                &session,
                &HashMap::new(),
                StatusCode::BAD_REQUEST,
                Some(&e),
                None,
            )
            .await
        }
    }
}

async fn delete_extension(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    if let Err(r) = admin_form(&portal, &headers, &form) {
        return *r;
    }
    let extension = form.get("extension").cloned().unwrap_or_default();
    let ext = extension.clone();
    match blocking(&portal.status().store, move |store| {
        store.delete_extension(&ext)
    })
    .await
    {
        Ok(_) => {
            tracing::info!(extension, "portal: extension deleted");
            reload(&portal);
            portal.see_other("/admin/directory?notice=extension-deleted")
        }
        Err(e) => store_failed(&portal, &e),
    }
}

async fn import_csv(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    let session = match admin_form(&portal, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let csv = form.get("csv").cloned().unwrap_or_default();
    let data = csv.clone().into_bytes();
    match blocking(&portal.status().store, move |store| {
        store.import_directory_csv(&data)
    })
    .await
    {
        Ok(report) => {
            tracing::info!(
                added = report.added,
                updated = report.updated,
                unchanged = report.unchanged,
                "portal: directory imported"
            );
            reload(&portal);
            portal.see_other(&format!(
                "/admin/directory?added={}&updated={}&unchanged={}",
                report.added, report.updated, report.unchanged
            ))
        }
        Err(e) => {
            render_directory(
                &portal,
                &session,
                &HashMap::new(),
                StatusCode::BAD_REQUEST,
                Some(&format!("Nothing was imported: {e}")),
                Some(&csv),
            )
            .await
        }
    }
}

// -------------------------------------------------------------------------------------
// status

async fn status_page(State(portal): State<Portal>, headers: HeaderMap) -> Response {
    let session = match require_admin(&portal, &headers, true) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let rows = match portal.status().extensions().await {
        Ok(rows) => rows,
        Err(e) => return store_failed(&portal, &e.to_string()),
    };
    let mut html_rows = String::new();
    for s in &rows {
        html_rows.push_str(&format!(
            "<tr data-extension=\"{ext}\"><td class=\"ext\">{ext}</td><td class=\"email\">{email}</td><td class=\"registered\">{registered}</td>\
             <td class=\"call\">{call}</td><td class=\"dnd\">{dnd}</td><td class=\"teams\">{teams}</td><td class=\"paired\">{pairing}</td>\
             <td class=\"pbx-to-teams\">{p2t}</td><td class=\"last-error bad\">{error}</td></tr>",
            ext = escape(&s.extension),
            email = escape(s.email.as_deref().unwrap_or("")),
            registered = s.registered,
            call = s.call.as_str(),
            dnd = if s.dnd { "on" } else { "off" },
            teams = escape(
                &s.teams
                    .as_ref()
                    .map(|t| format!("{} / {}", t.availability, t.activity))
                    .unwrap_or_else(|| "–".to_owned())
            ),
            pairing = s.pairing.as_str(),
            p2t = if s.pbx_to_teams { "on" } else { "off" },
            error = escape(s.last_error.as_deref().unwrap_or("")),
        ));
    }
    let body = format!(
        "<section><h2>Extensions <span class=\"muted\">(live)</span></h2>\
         <table id=\"status\" data-source=\"{status}\"><thead><tr><th>Ext.</th><th>Email</th><th>Phones</th><th>Call</th><th>DND</th>\
         <th>Teams</th><th>Pairing</th><th>PBX → Teams</th><th>Last error</th></tr></thead><tbody>{html_rows}</tbody></table></section>\
         <section><h2>Recent sync actions</h2><ol class=\"log\" id=\"actions\" reversed data-source=\"{actions}\"></ol></section>",
        status = escape(&portal.url("/api/status")),
        actions = escape(&portal.url("/api/actions")),
    );
    portal.page(
        StatusCode::OK,
        "Status",
        &Nav::Admin {
            current: "/admin/status",
            csrf: &session.csrf,
        },
        &body,
    )
}
