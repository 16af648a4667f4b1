//! The demo's scripted sign-ins, through the real web flows: the admin signs in to the
//! portal, clicks Admin Grant and Get OAuth Token, and every demo user signs in with
//! "Microsoft" and pairs — each round trip going to the Graph emulator's authorize
//! endpoint and back to the proxy's callback, exactly as a browser would (the emulator's
//! `emulator_user` / `emulator_decision` parameters stand in for clicking on its page).

use std::collections::BTreeMap;

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

use super::DemoError;

/// A minimal browser: keeps the portal's cookies, follows no redirect by itself.
pub(super) struct Browser {
    http: reqwest::Client,
    web: String,
    cookies: BTreeMap<String, String>,
}

struct Reply {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

fn setup_error(what: &str, detail: impl std::fmt::Display) -> DemoError {
    DemoError::Setup(format!("{what}: {detail}"))
}

impl Browser {
    pub(super) fn new(web: &str) -> Result<Self, DemoError> {
        Ok(Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| setup_error("http client", e))?,
            web: web.trim_end_matches('/').to_owned(),
            cookies: BTreeMap::new(),
        })
    }

    fn absolute(&self, path_or_url: &str) -> String {
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

    async fn read(&mut self, response: reqwest::Response) -> Result<Reply, DemoError> {
        if response.url().as_str().starts_with(&self.web) {
            for value in response.headers().get_all(SET_COOKIE) {
                let Ok(text) = value.to_str() else { continue };
                let pair = text.split(';').next().unwrap_or("");
                if let Some((name, value)) = pair.split_once('=') {
                    if text.contains("Max-Age=0") {
                        self.cookies.remove(name.trim());
                    } else {
                        self.cookies
                            .insert(name.trim().to_owned(), value.trim().to_owned());
                    }
                }
            }
        }
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        let body = response
            .text()
            .await
            .map_err(|e| setup_error("reading a page", e))?;
        Ok(Reply {
            status,
            location,
            body,
        })
    }

    async fn get(&mut self, path_or_url: &str) -> Result<Reply, DemoError> {
        let url = self.absolute(path_or_url);
        let mut request = self.http.get(&url);
        if url.starts_with(&self.web) {
            request = request.header(COOKIE, self.cookie_header());
        }
        let response = request
            .send()
            .await
            .map_err(|e| setup_error(&format!("GET {url}"), e))?;
        self.read(response).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Result<Reply, DemoError> {
        let url = self.absolute(path);
        let response = self
            .http
            .post(&url)
            .header(COOKIE, self.cookie_header())
            .form(fields)
            .send()
            .await
            .map_err(|e| setup_error(&format!("POST {url}"), e))?;
        self.read(response).await
    }

    /// The hidden field `name` of the page at `path`.
    async fn field(&mut self, path: &str, name: &str) -> Result<String, DemoError> {
        let page = self.get(path).await?;
        hidden_field(&page.body, name)
            .ok_or_else(|| setup_error(path, format!("no {name} field (status {})", page.status)))
    }

    /// From a redirect to the identity platform, through it (with the emulator's
    /// stand-in for a click), back to the proxy's callback; where the callback sends
    /// the browser next.
    async fn round_trip(&mut self, start: Reply, choice: &str) -> Result<(), DemoError> {
        let to_emulator = start
            .location
            .ok_or_else(|| setup_error("starting a sign-in", start.status))?;
        let at_emulator = self.get(&format!("{to_emulator}&{choice}")).await?;
        let back = at_emulator
            .location
            .ok_or_else(|| setup_error("the emulator's sign-in", at_emulator.body))?;
        let done = self.get(&back).await?;
        if done.status != StatusCode::SEE_OTHER {
            return Err(setup_error(
                "the OAuth callback",
                format!("{} {}", done.status, done.body),
            ));
        }
        Ok(())
    }
}

/// The value of the first hidden input `name` in `html`.
fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

/// The admin's part: sign in, Admin Grant (consent), Get OAuth Token (as `admin_upn`).
pub(super) async fn admin_setup(
    web: &str,
    password: &str,
    admin_upn: &str,
) -> Result<(), DemoError> {
    let mut admin = Browser::new(web)?;
    let token = admin.field("/admin/login", "login_csrf").await?;
    let signed_in = admin
        .post(
            "/admin/login",
            &[("login_csrf", &token), ("password", password)],
        )
        .await?;
    if signed_in.status != StatusCode::SEE_OTHER {
        return Err(setup_error("the admin sign-in", signed_in.status));
    }
    let csrf = admin.field("/admin/teams", "csrf").await?;
    let start = admin.post("/admin/teams/grant", &[("csrf", &csrf)]).await?;
    admin.round_trip(start, "emulator_decision=accept").await?;
    let start = admin.post("/admin/teams/token", &[("csrf", &csrf)]).await?;
    admin
        .round_trip(start, &format!("emulator_user={admin_upn}"))
        .await?;
    Ok(())
}

/// A user's part: sign in with Microsoft as `upn`, then Pair.
pub(super) async fn pair_user(web: &str, upn: &str) -> Result<(), DemoError> {
    let mut user = Browser::new(web)?;
    let start = user.get("/user/sign-in").await?;
    user.round_trip(start, &format!("emulator_user={upn}"))
        .await?;
    let csrf = user.field("/user", "csrf").await?;
    let start = user.post("/user/pair", &[("csrf", &csrf)]).await?;
    user.round_trip(start, &format!("emulator_user={upn}"))
        .await
}

#[cfg(test)]
mod tests {
    use super::hidden_field;

    #[test]
    fn hidden_fields_are_found() {
        let html = r#"<input type="hidden" name="csrf" value="abc-_1"><input name="x" value="y">"#;
        assert_eq!(hidden_field(html, "csrf").as_deref(), Some("abc-_1"));
        assert_eq!(hidden_field(html, "x").as_deref(), Some("y"));
        assert_eq!(hidden_field(html, "nope"), None);
    }
}
