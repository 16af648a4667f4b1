//! An HTTP client for the portal that behaves like a browser where it matters to the
//! server: it keeps cookies (per name, `Max-Age=0` deletes), follows nothing by itself
//! (each redirect is looked at), and fills forms with the CSRF token of the page.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use presence_proxy::app::{self, TeamsSide};
use presence_proxy::config::Config;
use presence_proxy::emulator::{CONTOSO_CLIENT_ID, CONTOSO_CLIENT_SECRET};
use presence_proxy::runtime::{self, RuntimeHandle};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::json;

use crate::emulator_support::Env;

/// The portal test password and its hash (hashing is slow in debug builds: once).
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

pub fn admin_password_hash() -> String {
    presence_proxy::web::hash_password(ADMIN_PASSWORD).unwrap()
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: String,
}

pub struct PortalClient {
    pub http: reqwest::Client,
    pub web: String,
    pub cookies: BTreeMap<String, String>,
}

impl PortalClient {
    pub fn new(web: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            web: web.trim_end_matches('/').to_owned(),
            cookies: BTreeMap::new(),
        }
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.web)
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn reply(&mut self, response: reqwest::Response) -> Reply {
        let to_portal = response.url().as_str().starts_with(&self.web);
        if to_portal {
            for value in response.headers().get_all(SET_COOKIE) {
                let text = value.to_str().unwrap();
                let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
                let (name, value) = pair.split_once('=').unwrap();
                if attributes.contains("Max-Age=0") {
                    self.cookies.remove(name.trim());
                } else {
                    self.cookies
                        .insert(name.trim().to_owned(), value.trim().to_owned());
                }
            }
        }
        Reply {
            status: response.status(),
            location: response
                .headers()
                .get(LOCATION)
                .map(|l| l.to_str().unwrap().to_owned()),
            body: response.text().await.unwrap(),
        }
    }

    /// GET; cookies are sent to the portal only.
    pub async fn get(&mut self, path_or_url: &str) -> Reply {
        let url = self.url(path_or_url);
        let mut request = self.http.get(&url);
        if url.starts_with(&self.web) {
            request = request.header(COOKIE, self.cookie_header());
        }
        let response = request.send().await.unwrap();
        self.reply(response).await
    }

    /// GET with a bearer token and no cookies.
    pub async fn get_bearer(&self, path: &str, token: &str) -> (StatusCode, String) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// POST a form with the portal's cookies (and an `Origin` a browser would send).
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let response = self
            .http
            .post(self.url(path))
            .header(COOKIE, self.cookie_header())
            .header("origin", origin(&self.web))
            .form(fields)
            .send()
            .await
            .unwrap();
        self.reply(response).await
    }

    /// POST a form as another site would make a browser send it.
    pub async fn post_cross_site(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let response = self
            .http
            .post(self.url(path))
            .header(COOKIE, self.cookie_header())
            .header("origin", "https://attacker.example")
            .header("sec-fetch-site", "cross-site")
            .form(fields)
            .send()
            .await
            .unwrap();
        self.reply(response).await
    }

    /// Signs in as the admin with `password`; the reply of the POST.
    pub async fn admin_login(&mut self, password: &str) -> Reply {
        let page = self.get("/admin/login").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let token = field(&page.body, "login_csrf");
        self.post(
            "/admin/login",
            &[("login_csrf", &token), ("password", password)],
        )
        .await
    }

    /// The CSRF token of the page at `path`.
    pub async fn csrf(&mut self, path: &str) -> String {
        let page = self.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        field(&page.body, "csrf")
    }

    /// Follows an OAuth round trip from `to_emulator` (a redirect to the identity
    /// platform) with the emulator's test shortcut (`emulator_user=...` or
    /// `emulator_decision=accept`) back to the portal's callback; the callback's reply.
    pub async fn through_emulator(&mut self, to_emulator: &str, shortcut: &str) -> Reply {
        let at_emulator = self.get(&format!("{to_emulator}&{shortcut}")).await;
        assert_eq!(
            at_emulator.status,
            StatusCode::FOUND,
            "the emulator redirects back: {}",
            at_emulator.body
        );
        let back = at_emulator.location.unwrap();
        assert!(
            back.starts_with(&format!("{}/oauth/callback?", self.web)),
            "{back}"
        );
        self.get(&back).await
    }
}

/// `scheme://host:port` of a URL.
pub fn origin(url: &str) -> String {
    let parsed = reqwest::Url::parse(url).unwrap();
    parsed.origin().ascii_serialization()
}

/// The value of the (first) hidden input `name` in an HTML page.
pub fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no field {name} in {html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_owned()
}

pub const API_TOKEN: &str = "monitoring-token-3f9a";

fn hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(admin_password_hash)
}

pub struct Product {
    pub env: Env,
    pub proxy: RuntimeHandle,
    pub teams: TeamsSide,
    pub web: String,
    _dir: tempfile::TempDir,
}

/// The product of one configuration file on free ports, Graph by the emulator, the
/// PBX expected at udp 127.0.0.1:`pbx_port`; 201 is bob, 202 is carol.
pub async fn start_product(pbx_port: u16) -> Product {
    crate::e2e_support::init_tracing();
    let env = crate::emulator_support::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api-token.txt"), format!("{API_TOKEN}\n")).unwrap();
    let toml = format!(
        r#"
[listen]
udp = ["127.0.0.1:5060"]

[pbx]
host = "127.0.0.1"
port = {pbx_port}
transport = "udp"

[graph]
tenant = "contoso.example"
client_id = "{CONTOSO_CLIENT_ID}"
client_secret = "{CONTOSO_CLIENT_SECRET}"
login_base = "{login}"
graph_base = "{graph}"

[web]
listen = "127.0.0.1:0"
admin_password_hash = "{hash}"
api_token_file = "api-token.txt"

[directory]
"201" = "bob@contoso.example"
"202" = "carol@contoso.example"
"#,
        login = env.emu.login_url(),
        graph = env.emu.graph_url(),
        hash = hash(),
    );
    let file = dir.path().join("presence-proxy.toml");
    std::fs::write(&file, &toml).unwrap();
    let mut config = Config::load(&file).unwrap();
    config.listen.udp = vec!["127.0.0.1:0".parse().unwrap()];
    let proxy = runtime::start(&config).await.unwrap();
    let teams = app::start_teams(&config, proxy.phone_events(), proxy.control())
        .await
        .unwrap()
        .unwrap();
    let web = format!("http://{}", teams.web_addr.unwrap());
    let (status, _) = env
        .control_json(
            reqwest::Method::POST,
            "/app/redirect-uris",
            Some(json!({ "uri": format!("{web}/oauth/callback") })),
        )
        .await;
    assert!(status < 300);
    Product {
        env,
        proxy,
        teams,
        web,
        _dir: dir,
    }
}

impl Product {
    pub async fn stop(self) {
        self.teams.shutdown().await;
        self.proxy.shutdown().await;
    }

    pub async fn admin(&self) -> PortalClient {
        let mut admin = PortalClient::new(&self.web);
        let reply = admin.admin_login(ADMIN_PASSWORD).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
        admin
    }

    /// A user signed in with Microsoft as `upn`.
    pub async fn user(&self, upn: &str) -> (PortalClient, Reply) {
        let mut user = PortalClient::new(&self.web);
        let to_emulator = user.get("/user/sign-in").await;
        assert_eq!(to_emulator.status, StatusCode::SEE_OTHER);
        let back = user
            .through_emulator(
                &to_emulator.location.unwrap(),
                &format!("emulator_user={upn}"),
            )
            .await;
        (user, back)
    }
}
