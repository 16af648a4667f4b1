//! The portal's JSON: `GET /api/status` (admin session or the configured bearer
//! token), `GET /api/actions` (admin session) and `GET /api/me` (a user session).
//! Refusals are JSON too: `401 {"error": "..."}`.

use std::time::UNIX_EPOCH;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;

use super::Portal;

pub(super) fn routes() -> Router<Portal> {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/actions", get(actions))
        .route("/api/me", get(me))
}

fn json_response(status: StatusCode, body: impl Serialize) -> Response {
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn unauthorized(what: &str) -> Response {
    let mut response = json_response(StatusCode::UNAUTHORIZED, json!({ "error": what }));
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"presence-proxy\""),
    );
    response
}

async fn status(State(portal): State<Portal>, headers: HeaderMap) -> Response {
    if portal.admin_session(&headers).is_none() && !portal.bearer_ok(&headers) {
        return unauthorized("an admin session or the API bearer token is needed");
    }
    match portal.status().extensions().await {
        Ok(rows) => json_response(StatusCode::OK, rows),
        Err(e) => {
            tracing::error!(error = %e, "api/status failed");
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": "the status could not be read" }),
            )
        }
    }
}

/// One recent sync action as the portal's log shows it.
#[derive(Debug, Serialize)]
struct ActionView {
    at_ms: u64,
    extension: String,
    kind: crate::sync::SyncActionKind,
    detail: String,
}

async fn actions(State(portal): State<Portal>, headers: HeaderMap) -> Response {
    if portal.admin_session(&headers).is_none() {
        return unauthorized("an admin session is needed");
    }
    let actions: Vec<ActionView> = portal
        .status()
        .sync
        .as_ref()
        .map(|sync| {
            sync.recent_actions()
                .into_iter()
                .map(|a| ActionView {
                    at_ms: a
                        .at
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    extension: a.extension,
                    kind: a.kind,
                    detail: a.detail,
                })
                .collect()
        })
        .unwrap_or_default();
    json_response(StatusCode::OK, actions)
}

async fn me(State(portal): State<Portal>, headers: HeaderMap) -> Response {
    let Some(session) = portal.user_session(&headers) else {
        return unauthorized("a user session is needed");
    };
    match super::user::pairing_state(&portal, &session).await {
        Ok(state) => json_response(StatusCode::OK, state),
        Err(e) => {
            tracing::error!(error = e, "api/me failed");
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": "the pairing could not be read" }),
            )
        }
    }
}
