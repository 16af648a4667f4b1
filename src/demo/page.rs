//! The demo's page, served beside the portal: every simulated phone with its call and
//! its BLF lamps (as the phone itself computed them from the NOTIFYs it received through
//! the proxy), every user's Teams presence (as the Graph emulator shows it to Teams),
//! and buttons to place and end calls, dial `*78`/`*79`, and put a user "in a Teams
//! call". `GET /demo`, `GET /demo/state` (JSON the page polls), `POST /demo/action`.
//!
//! The page is for a demo on loopback; its one form still carries a per-run token and
//! must come from the same origin, so another site cannot press its buttons.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use super::EXTERNAL_NUMBER;
use super::phones::{CallView, Lamp, PhoneHandle};
use crate::web::escape;
use crate::web::portal::{constant_time_eq, standalone_page};

/// A demo user: extension, UPN, display name.
#[derive(Debug, Clone)]
pub struct DemoUser {
    /// The extension.
    pub ext: &'static str,
    /// The Teams account.
    pub upn: &'static str,
    /// The name shown.
    pub name: &'static str,
}

/// The phones, once they run (the page is served before they start).
pub(super) type PhoneSlot = Arc<parking_lot::Mutex<Option<Arc<Vec<PhoneHandle>>>>>;

/// What the demo page's handlers share.
#[derive(Clone)]
pub(super) struct DemoPage {
    pub(super) phones: PhoneSlot,
    pub(super) users: Arc<Vec<DemoUser>>,
    /// The emulator's control API base (`http://.../_emulator`).
    pub(super) emulator_control: String,
    pub(super) http: reqwest::Client,
    /// The per-run token of the page's forms.
    pub(super) token: String,
}

pub(super) fn routes(page: DemoPage) -> Router {
    Router::new()
        .route("/demo", get(show))
        .route("/demo/state", get(state))
        .route("/demo/action", post(action))
        .with_state(page)
}

/// Whether a form comes from this site: its `Origin`, when sent, is `http://{Host}`.
fn same_site(headers: &HeaderMap) -> bool {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    match (headers.get(axum::http::header::ORIGIN), host) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .to_str()
            .is_ok_and(|o| o.eq_ignore_ascii_case(&format!("http://{host}"))),
        (Some(_), None) => false,
    }
}

#[derive(Debug, Serialize)]
struct PhoneState {
    ext: String,
    registered: bool,
    call_text: String,
    lamps: BTreeMap<String, Lamp>,
}

#[derive(Debug, Serialize)]
struct UserState {
    ext: String,
    teams: String,
}

#[derive(Debug, Serialize)]
struct DemoState {
    phones: Vec<PhoneState>,
    users: Vec<UserState>,
}

fn call_text(call: &CallView) -> String {
    match call {
        CallView::Idle => "idle".to_owned(),
        CallView::Ringing { peer, .. } => format!("ringing: {peer}"),
        CallView::Connected { peer, .. } => format!("in a call with {peer}"),
    }
}

impl DemoPage {
    fn user(&self, ext: &str) -> Option<&DemoUser> {
        self.users.iter().find(|u| u.ext == ext)
    }

    fn phones(&self) -> Arc<Vec<PhoneHandle>> {
        self.phones.lock().clone().unwrap_or_default()
    }

    /// The user's presence as Teams shows it (the emulator's aggregate).
    async fn teams_presence(&self, upn: &str) -> String {
        let url = format!("{}/users/{upn}/presence", self.emulator_control);
        let Ok(response) = self.http.get(url).send().await else {
            return "unknown".to_owned();
        };
        let Ok(body) = response.json::<Value>().await else {
            return "unknown".to_owned();
        };
        let part = |k: &str| body["aggregate"][k].as_str().unwrap_or("?").to_owned();
        format!("{} / {}", part("availability"), part("activity"))
    }

    async fn snapshot(&self) -> DemoState {
        let phones = self
            .phones()
            .iter()
            .map(|p| {
                let s = p.snapshot();
                PhoneState {
                    call_text: call_text(&s.call),
                    ext: s.ext,
                    registered: s.registered,
                    lamps: s.lamps,
                }
            })
            .collect();
        let mut users = Vec::new();
        for user in self.users.iter() {
            users.push(UserState {
                ext: user.ext.to_owned(),
                teams: self.teams_presence(user.upn).await,
            });
        }
        DemoState { phones, users }
    }
}

fn lamp_class(lamp: Lamp) -> &'static str {
    match lamp {
        Lamp::Unknown => "unknown",
        Lamp::Idle => "idle",
        Lamp::Ringing => "ringing",
        Lamp::Busy => "busy",
    }
}

async fn show(State(page): State<DemoPage>) -> Response {
    let state = page.snapshot().await;
    let teams: HashMap<&str, &str> = state
        .users
        .iter()
        .map(|u| (u.ext.as_str(), u.teams.as_str()))
        .collect();
    let action = "/demo/action";
    let button = |ext: &str, what: &str, target: &str, label: &str, id: &str| {
        format!(
            "<form class=\"inline\" method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"token\" value=\"{token}\">\
             <input type=\"hidden\" name=\"ext\" value=\"{ext}\"><input type=\"hidden\" name=\"what\" value=\"{what}\">\
             <input type=\"hidden\" name=\"target\" value=\"{target}\"><button type=\"submit\" class=\"secondary\" id=\"{id}\">{label}</button></form>",
            token = escape(&page.token),
            ext = escape(ext),
            what = escape(what),
            target = escape(target),
            label = escape(label),
            id = escape(id),
        )
    };
    let mut cards = String::new();
    for phone in &state.phones {
        let name = page.user(&phone.ext).map_or("", |u| u.name);
        let mut lamps = String::new();
        for (ext, lamp) in &phone.lamps {
            let who = page.user(ext).map_or(ext.as_str(), |u| u.name);
            lamps.push_str(&format!(
                "<span class=\"lamp {class}\" data-lamp=\"{ext}\" data-state=\"{class}\">{ext} {who}</span>",
                class = lamp_class(*lamp),
                ext = escape(ext),
                who = escape(who),
            ));
        }
        let mut calls = button(
            &phone.ext,
            "dial",
            EXTERNAL_NUMBER,
            "Call outside",
            &format!("dial-external-{}", phone.ext),
        );
        for other in page.users.iter().filter(|u| u.ext != phone.ext) {
            calls.push_str(&button(
                &phone.ext,
                "dial",
                other.ext,
                &format!("Call {}", other.ext),
                &format!("dial-{}-{}", phone.ext, other.ext),
            ));
        }
        calls.push_str(&button(
            &phone.ext,
            "hangup",
            "",
            "Hang up",
            &format!("hangup-{}", phone.ext),
        ));
        let dnd = format!(
            "{}{}",
            button(
                &phone.ext,
                "dial",
                "*78",
                "DND on (*78)",
                &format!("dnd-on-{}", phone.ext)
            ),
            button(
                &phone.ext,
                "dial",
                "*79",
                "DND off (*79)",
                &format!("dnd-off-{}", phone.ext)
            ),
        );
        let teams_buttons = format!(
            "{}{}",
            button(
                &phone.ext,
                "teams",
                "in_call",
                "Teams: in a call",
                &format!("teams-call-{}", phone.ext)
            ),
            button(
                &phone.ext,
                "teams",
                "available",
                "Teams: available",
                &format!("teams-available-{}", phone.ext)
            ),
        );
        cards.push_str(&format!(
            "<div class=\"phone\" data-phone=\"{ext}\"><h2>{ext} · {name}</h2>\
             <p>Desk phone: <span class=\"call\">{call}</span></p><div class=\"lamps\">{lamps}</div>\
             <p class=\"row\">{calls}</p><p class=\"row\">{dnd}</p>\
             <p>Teams: <strong data-teams=\"{ext}\">{teams}</strong></p><p class=\"row\">{teams_buttons}</p></div>",
            ext = escape(&phone.ext),
            name = escape(name),
            call = escape(&phone.call_text),
            teams = escape(teams.get(phone.ext.as_str()).copied().unwrap_or("?")),
        ));
    }
    let body = format!(
        "<section><p>Three desk phones send everything through presence-proxy to a PBX stand-in; each watches the \
         others' BLF lamps. Microsoft Teams is played by the Graph emulator. Place a call from a phone and watch the lamps \
         and the caller's Teams presence; put a user in a Teams call and watch every lamp of that extension turn busy and \
         calls to it get 486 Busy Here.</p><p><a href=\"{admin}\">Admin portal</a> · <a href=\"{status}\">Status</a> · \
         <a href=\"{user}\">User pairing</a></p></section>\
         <div id=\"demo\" class=\"phones\" data-source=\"{source}\">{cards}</div>",
        admin = "/admin/teams",
        status = "/admin/status",
        user = "/user",
        source = "/demo/state",
    );
    standalone_page("", "Demo: desk phones and Teams", "", &body)
}

async fn state(State(page): State<DemoPage>) -> Response {
    let mut response = Json(page.snapshot().await).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

async fn action(
    State(page): State<DemoPage>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let token_ok = form
        .get("token")
        .is_some_and(|t| constant_time_eq(t.as_bytes(), page.token.as_bytes()));
    if !token_ok || !same_site(&headers) {
        return (StatusCode::FORBIDDEN, "not from the demo page\n").into_response();
    }
    let ext = form.get("ext").map_or("", String::as_str);
    let target = form.get("target").map_or("", String::as_str);
    let phones = page.phones();
    let phone = phones.iter().find(|p| p.ext() == ext);
    let outcome = match form.get("what").map(String::as_str) {
        Some("dial") => match phone {
            Some(phone) => phone.dial(target).await.map_err(|e| e.to_string()),
            None => Err(format!("no phone {ext}")),
        },
        Some("hangup") => match phone {
            Some(phone) => phone.hang_up().await.map_err(|e| e.to_string()),
            None => Err(format!("no phone {ext}")),
        },
        Some("teams") => match page.user(ext) {
            Some(user) if matches!(target, "in_call" | "available") => {
                let url = format!("{}/users/{}/teams-client", page.emulator_control, user.upn);
                page.http
                    .put(url)
                    .json(&serde_json::json!({ "state": target }))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            _ => Err(format!("no user {ext} or state {target}")),
        },
        _ => Err("unknown action".to_owned()),
    };
    if let Err(e) = outcome {
        tracing::info!(ext, error = e, "demo action not done");
    }
    crate::web::see_other("/demo")
}
