//! A user's page: sign in with Microsoft (the account's email selects the extension),
//! then Pair (Get User Token) and Unpair (Remove User Token) for that extension only,
//! and an indicator that is green while a valid token is held and red, with the
//! reason, when not.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Serialize;

use super::session::SessionView;
use super::{Nav, Portal, csrf_field, to_identity_platform};
use crate::store::{TokenKey, TokenStatus};
use crate::web::WebError;
use crate::web::pages::escape;

type FormData = Form<HashMap<String, String>>;

pub(super) fn routes() -> Router<Portal> {
    Router::new()
        .route("/user", get(user_page))
        .route("/user/sign-in", get(sign_in))
        .route("/user/pair", post(pair))
        .route("/user/unpair", post(unpair))
        .route("/user/sign-out", post(sign_out))
}

/// What the indicator shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct PairingState {
    /// The extension.
    pub extension: String,
    /// Who signed in to the portal.
    pub account: String,
    /// A valid token is held.
    pub paired: bool,
    /// The sentence beside the lamp.
    pub summary: String,
}

/// The pairing state of the session's extension.
pub(super) async fn pairing_state(
    portal: &Portal,
    session: &SessionView,
) -> Result<PairingState, String> {
    let super::Who::User { extension, account } = &session.who else {
        return Err("not a user session".to_owned());
    };
    let store = portal.status().store.clone();
    let key = TokenKey::user(extension.clone());
    let info = tokio::task::spawn_blocking(move || store.token_info(&key))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let (paired, summary) = match info {
        Some(info) => match info.status {
            TokenStatus::Valid => (
                true,
                format!(
                    "Paired with {}: your phone and Teams are in step.",
                    info.subject_upn.as_deref().unwrap_or(account)
                ),
            ),
            TokenStatus::NeedsRepairing { reason } => (false, format!("Pair again: {reason}")),
        },
        None => (false, "Not paired.".to_owned()),
    };
    Ok(PairingState {
        extension: extension.clone(),
        account: account.clone(),
        paired,
        summary,
    })
}

fn user_form(
    portal: &Portal,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<SessionView, Box<Response>> {
    let Some(session) = portal.user_session(headers) else {
        return Err(Box::new(portal.refusal(
            StatusCode::FORBIDDEN,
            "Not signed in",
            "Sign in with your Microsoft account first.",
        )));
    };
    portal.check_form(&session, headers, form.get("csrf").map(String::as_str))?;
    Ok(session)
}

async fn user_page(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(session) = portal.user_session(&headers) else {
        let body = format!(
            "<section><p>Sign in with the Microsoft account of your Teams user. Its email address selects your extension.</p>\
             <p><a class=\"button\" id=\"microsoft-sign-in\" href=\"{}\">Sign in with Microsoft</a></p></section>",
            escape(&portal.url("/user/sign-in"))
        );
        return portal.page(StatusCode::OK, "Pair your Teams account", &Nav::None, &body);
    };
    let state = match pairing_state(&portal, &session).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = e, "portal: cannot read the pairing");
            return portal.refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The proxy could not read your pairing. The details are in its log.",
            );
        }
    };
    let csrf = csrf_field(&session);
    let notice = match query.get("notice").map(String::as_str) {
        Some("unpaired") => "<p id=\"notice\" class=\"notice\">Unpaired.</p>",
        _ => "",
    };
    let body = format!(
        "{notice}<section><h2>Extension {ext}</h2><p>Signed in as <span id=\"account\">{account}</span>.</p>\
         <p><span id=\"pairing-status\" class=\"indicator {color}\" data-paired=\"{paired}\" data-source=\"{me}\">{summary}</span></p>\
         <div class=\"row\"><form method=\"post\" action=\"{pair}\">{csrf}<button type=\"submit\" id=\"pair\">Pair (Get User Token)</button></form>\
         <form method=\"post\" action=\"{unpair}\">{csrf}<button type=\"submit\" class=\"danger\" id=\"unpair\">Unpair (Remove User Token)</button></form></div>\
         <p class=\"muted\">Pairing lets the proxy show your desk phone's calls and DND in Teams. Your Teams calls make your desk phone busy either way.</p></section>",
        ext = escape(&state.extension),
        account = escape(&state.account),
        color = if state.paired { "green" } else { "red" },
        paired = state.paired,
        me = escape(&portal.url("/api/me")),
        summary = escape(&state.summary),
        pair = escape(&portal.url("/user/pair")),
        unpair = escape(&portal.url("/user/unpair")),
    );
    portal.page(
        StatusCode::OK,
        "Your Teams pairing",
        &Nav::User {
            csrf: &session.csrf,
        },
        &body,
    )
}

async fn sign_in(State(portal): State<Portal>) -> Response {
    to_identity_platform(portal.service().start_user_sign_in("/user"))
}

async fn pair(State(portal): State<Portal>, headers: HeaderMap, Form(form): FormData) -> Response {
    let session = match user_form(&portal, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(extension) = session.extension() else {
        return WebError::Forbidden.respond();
    };
    match portal
        .service()
        .start_pairing_from(extension, Some("/user"))
    {
        Ok(url) => crate::web::pages::see_other(&url),
        Err(e) => {
            tracing::warn!(extension, error = %e, "portal: pairing not started");
            e.respond()
        }
    }
}

async fn unpair(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    let session = match user_form(&portal, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(extension) = session.extension() else {
        return WebError::Forbidden.respond();
    };
    match portal.service().unpair(extension).await {
        Ok(_) | Err(WebError::NotPaired(_)) => {
            if let Some(sync) = &portal.status().sync {
                sync.reload();
            }
            portal.see_other("/user?notice=unpaired")
        }
        Err(e) => {
            tracing::warn!(extension, error = %e, "portal: unpairing failed");
            e.respond()
        }
    }
}

async fn sign_out(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Form(form): FormData,
) -> Response {
    if let Err(r) = user_form(&portal, &headers, &form) {
        return *r;
    }
    portal.sign_out(&headers, "/user")
}
