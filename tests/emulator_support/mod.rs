//! Shared helpers of the `emulator_*` tests: start the emulator, sign users in through the
//! real authorize and token endpoints, get app-only tokens, talk to the control API.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use presence_proxy::emulator::{
    CONTOSO_CLIENT_ID, CONTOSO_CLIENT_SECRET, Emulator, EmulatorConfig, EmulatorHandle,
};
use presence_proxy::graph::{GraphClient, GraphConfig};
use presence_proxy::store::{NewToken, Secret, Store, TokenKey};
use serde_json::{Value, json};

pub const REDIRECT: &str = "http://127.0.0.1:8080/oauth/callback";
pub const ALICE: &str = "a1f0c9e2-0001-4c1d-8e2f-000000000001";
pub const BOB: &str = "a1f0c9e2-0002-4c1d-8e2f-000000000002";
pub const CAROL: &str = "a1f0c9e2-0003-4c1d-8e2f-000000000003";
pub const GRAPH: &str = "https://graph.microsoft.com/";

pub struct Env {
    pub emu: EmulatorHandle,
    pub http: reqwest::Client,
}

pub async fn start() -> Env {
    start_with(EmulatorConfig::default()).await
}

pub async fn start_with(config: EmulatorConfig) -> Env {
    let emu = Emulator::start(config).await.expect("emulator starts");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    Env { emu, http }
}

pub fn pkce() -> (String, String) {
    let mut raw = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).expect("rng");
    let verifier = URL_SAFE_NO_PAD.encode(raw);
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    (verifier, challenge)
}

/// Parses the query of a redirect's Location header.
pub fn location_query(response: &reqwest::Response) -> (String, HashMap<String, String>) {
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .expect("a Location header")
        .to_str()
        .expect("ascii")
        .to_owned();
    let url = reqwest::Url::parse(&location).expect("absolute URL");
    let query = url.query_pairs().into_owned().collect();
    let mut base = url.clone();
    base.set_query(None);
    (base.to_string(), query)
}

impl Env {
    pub fn login(&self, path: &str) -> String {
        format!("{}{path}", self.emu.login_url())
    }

    pub fn graph(&self, path: &str) -> String {
        format!("{}{path}", self.emu.graph_url())
    }

    pub fn control(&self, path: &str) -> String {
        format!("{}{path}", self.emu.control_url())
    }

    /// GET authorize for `user` (skipping the page) and return the redirect's query.
    pub async fn authorize(
        &self,
        user: &str,
        scope: &str,
        challenge: &str,
        extra: &[(&str, &str)],
    ) -> HashMap<String, String> {
        let mut params = vec![
            ("client_id", CONTOSO_CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", scope),
            ("state", "st-1"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
            ("emulator_user", user),
        ];
        params.extend_from_slice(extra);
        let response = self
            .http
            .get(self.login("/contoso.example/oauth2/v2.0/authorize"))
            .query(&params)
            .send()
            .await
            .expect("authorize");
        assert_eq!(response.status(), 302, "authorize redirects");
        location_query(&response).1
    }

    pub async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .http
            .post(self.login("/contoso.example/oauth2/v2.0/token"))
            .form(form)
            .send()
            .await
            .expect("token");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON"))
    }

    /// A full code flow with PKCE for `user`; returns the token response.
    pub async fn sign_in(&self, user: &str, scope: &str) -> Value {
        let (verifier, challenge) = pkce();
        let query = self.authorize(user, scope, &challenge, &[]).await;
        let code = query.get("code").expect("a code").clone();
        let (status, body) = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("client_id", CONTOSO_CLIENT_ID),
                ("client_secret", CONTOSO_CLIENT_SECRET),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &verifier),
                ("scope", scope),
            ])
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A delegated access token for `user` with `scopes` (Graph permission names).
    pub async fn user_token(&self, user: &str, scopes: &[&str]) -> String {
        let mut scope = String::from("openid profile offline_access");
        for s in scopes {
            scope.push(' ');
            scope.push_str(GRAPH);
            scope.push_str(s);
        }
        let body = self.sign_in(user, &scope).await;
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// An app-only token after granting admin consent through the control API.
    pub async fn app_token(&self) -> String {
        self.consent(true).await;
        self.app_token_as_is().await
    }

    pub async fn app_token_as_is(&self) -> String {
        let (status, body) = self
            .token(&[
                ("grant_type", "client_credentials"),
                ("client_id", CONTOSO_CLIENT_ID),
                ("client_secret", CONTOSO_CLIENT_SECRET),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    pub async fn consent(&self, granted: bool) {
        let response = self
            .http
            .put(self.control("/admin-consent"))
            .json(&json!({ "granted": granted }))
            .send()
            .await
            .expect("consent");
        assert!(response.status().is_success());
    }

    pub async fn graph_post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.graph(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("graph POST");
        split(response).await
    }

    pub async fn graph_get(&self, token: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.graph(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("graph GET");
        split(response).await
    }

    pub async fn presence(&self, token: &str, user: &str) -> (String, String) {
        let (status, body) = self
            .graph_get(token, &format!("/users/{user}/presence"))
            .await;
        assert_eq!(status, 200, "{body}");
        (
            body["availability"]
                .as_str()
                .expect("availability")
                .to_owned(),
            body["activity"].as_str().expect("activity").to_owned(),
        )
    }

    pub async fn set_presence(
        &self,
        token: &str,
        user: &str,
        availability: &str,
        activity: &str,
        duration: &str,
    ) -> (u16, Value) {
        self.graph_post(
            token,
            &format!("/users/{user}/presence/setPresence"),
            json!({
                "sessionId": CONTOSO_CLIENT_ID,
                "availability": availability,
                "activity": activity,
                "expirationDuration": duration,
            }),
        )
        .await
    }

    pub async fn advance(&self, seconds: u64) {
        let response = self
            .http
            .post(self.control("/clock/advance"))
            .json(&json!({ "seconds": seconds }))
            .send()
            .await
            .expect("advance");
        assert!(response.status().is_success());
    }

    pub async fn teams_client(&self, user: &str, state: &str) -> Value {
        let response = self
            .http
            .put(self.control(&format!("/users/{user}/teams-client")))
            .json(&json!({ "state": state }))
            .send()
            .await
            .expect("teams-client");
        assert!(response.status().is_success());
        response.json().await.expect("JSON")
    }

    pub async fn control_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.control(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("control");
        split(response).await
    }
}

pub async fn split(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// Decodes a JWT's claims without checking it.
pub fn claims(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).expect("three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

/// Asserts the Graph error shape of graph.md §4.2 and returns the code.
pub fn graph_error_code(body: &Value) -> String {
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    assert!(error["innerError"]["request-id"].is_string(), "{body}");
    assert!(error["innerError"]["date"].is_string(), "{body}");
    error["code"].as_str().expect("code").to_owned()
}

/// Asserts the token-error shape of graph.md §6.4 and returns (error, first code).
pub fn token_error(body: &Value) -> (String, u64) {
    for key in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
        assert!(body[key].is_string(), "{key} missing in {body}");
    }
    let code = body["error_codes"][0].as_u64().expect("error_codes");
    let description = body["error_description"].as_str().expect("description");
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    assert!(description.contains("\r\nTrace ID: "), "{description}");
    assert!(
        description.contains("\r\nCorrelation ID: "),
        "{description}"
    );
    assert!(description.contains("\r\nTimestamp: "), "{description}");
    (body["error"].as_str().expect("error").to_owned(), code)
}

/// Where every test of a file logs, at TRACE (see [`capture_logs`]).
#[derive(Clone, Default)]
pub struct Buffer(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Every test of the file logs at TRACE into one buffer. A process-wide subscriber, not
/// a per-test `set_default`: with tests on parallel threads, a callsite first hit on a
/// thread without a subscriber could be cached as disabled.
pub fn capture_logs() -> Buffer {
    static LOGS: std::sync::OnceLock<Buffer> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(buffer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buffer
    })
    .clone()
}

impl Env {
    /// Signs `user` in through the emulator and stores the token under `key`, as a
    /// completed pairing (or domain sign-in) would.
    pub async fn store_token(&self, store: &Store, key: &TokenKey, user: &str, scope: &str) {
        let body = self.sign_in(user, scope).await;
        let id = claims(body["id_token"].as_str().unwrap());
        let expires_in = body["expires_in"].as_u64().unwrap();
        let token = NewToken {
            subject_upn: id["preferred_username"].as_str().map(str::to_owned),
            graph_user_oid: id["oid"].as_str().map(str::to_owned),
            scopes: body["scope"]
                .as_str()
                .unwrap()
                .split(' ')
                .map(str::to_owned)
                .collect(),
            access_token: Secret::new(body["access_token"].as_str().unwrap().to_owned()),
            access_expires_at: SystemTime::now() + Duration::from_secs(expires_in),
            refresh_token: body["refresh_token"]
                .as_str()
                .map(|t| Secret::new(t.to_owned())),
        };
        store.put_token(key, &token).unwrap();
    }

    /// A Graph client of tenant contoso against this emulator, with short retries: an
    /// outage is waited out by the sync engine's own backoff, not by the client's.
    pub fn graph_client(&self) -> GraphClient {
        let mut config = GraphConfig::new(
            "contoso.example",
            CONTOSO_CLIENT_ID,
            CONTOSO_CLIENT_SECRET,
            REDIRECT,
        )
        .with_bases(self.emu.login_url(), self.emu.graph_url());
        config.retry.max_attempts = 2;
        config.retry.base_delay = Duration::from_millis(50);
        config.retry.max_delay = Duration::from_millis(200);
        config.request_timeout = Duration::from_secs(5);
        GraphClient::new(config).unwrap()
    }
}
