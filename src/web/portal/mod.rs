//! The portal on the web listener: server-rendered pages for the tenant admin and for
//! every user, the JSON behind their live parts, and the rules of who may see and do
//! what.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Portal`] (what the handlers share), [`router`], the page layout, the guards (session, CSRF, origin) |
//! | `session.rs` | [`PortalSessions`] (admin and user sign-ins, CSRF tokens), [`LoginLimiter`] |
//! | `admin.rs` | `/admin/...`: password sign-in, the Microsoft Teams Presence page, the directory, the status page |
//! | `user.rs` | `/user/...`: sign in with Microsoft, pair, unpair, the green/red indicator |
//! | `api.rs` | `GET /api/status`, `/api/actions`, `/api/me` |
//! | `status.rs` | [`ExtensionStatus`]: one row of the status, from store, observer and sync engine |
//!
//! Rules: every admin page, action and API needs an admin session (`/api/status` also
//! takes the configured bearer token); every POST carries its session's CSRF token and
//! must not come from another site (`Origin`, `Sec-Fetch-Site`); a user session reaches
//! its own extension only (the extension comes from the session, never from the
//! request). Pages carry a Content-Security-Policy allowing scripts and styles from
//! this origin only, and forms to this origin and the identity platform.

mod admin;
mod api;
mod session;
mod status;
mod user;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use parking_lot::RwLock;

pub use session::{
    LoginLimiter, PortalSessions, SESSION_COOKIE, SessionView, Who, constant_time_eq,
};
pub use status::{
    CallSummary, ExtensionStatus, Pairing, StatusError, StatusSource, TeamsView, call_summary,
};

use super::pages::escape;
use super::{OAuthService, same_origin};
use crate::store::Secret;

/// The stylesheet, served at `/portal.css`.
const CSS: &str = include_str!("assets/portal.css");
/// The script, served at `/portal.js`.
const JS: &str = include_str!("assets/portal.js");

/// Failed password sign-ins allowed per address in [`LOGIN_WINDOW`].
const LOGIN_FAILURES: u32 = 10;
/// The window of [`LOGIN_FAILURES`].
const LOGIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// What the portal is configured with.
#[derive(Debug, Clone)]
pub struct PortalOptions {
    /// The admin password's argon2 hash.
    pub admin_password_hash: Secret<String>,
    /// A bearer token that may read `/api/status`.
    pub api_token: Option<Secret<String>>,
}

/// Everything the portal's handlers share. A cheap `Clone`.
#[derive(Debug, Clone)]
pub struct Portal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    service: OAuthService,
    status: StatusSource,
    admin_password_hash: RwLock<Secret<String>>,
    api_token: Option<Secret<String>>,
    limiter: LoginLimiter,
    content_security_policy: HeaderValue,
}

impl Portal {
    /// A portal over the OAuth `service`, reading the status from `status`.
    pub fn new(service: OAuthService, status: StatusSource, options: PortalOptions) -> Self {
        let login = reqwest::Url::parse(&service.graph().config().login_base)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        let csp = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self' {login}; frame-ancestors 'none'; base-uri 'none'"
        );
        let content_security_policy = HeaderValue::from_str(&csp).unwrap_or_else(|_| {
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                 frame-ancestors 'none'; base-uri 'none'",
            )
        });
        Self {
            inner: Arc::new(Inner {
                service,
                status,
                admin_password_hash: RwLock::new(options.admin_password_hash),
                api_token: options.api_token,
                limiter: LoginLimiter::new(LOGIN_FAILURES, LOGIN_WINDOW),
                content_security_policy,
            }),
        }
    }

    /// The OAuth service.
    pub fn service(&self) -> &OAuthService {
        &self.inner.service
    }

    /// Where the status comes from.
    pub fn status(&self) -> &StatusSource {
        &self.inner.status
    }

    fn sessions(&self) -> &PortalSessions {
        self.inner.service.portal_sessions()
    }

    /// `{public base}{path}`.
    fn url(&self, path: &str) -> String {
        self.inner.service.url(path)
    }

    /// The request's session, if it is the admin's.
    fn admin_session(&self, headers: &HeaderMap) -> Option<SessionView> {
        self.sessions()
            .lookup(headers)
            .filter(SessionView::is_admin)
    }

    /// The request's session, if it is a user's.
    fn user_session(&self, headers: &HeaderMap) -> Option<SessionView> {
        self.sessions()
            .lookup(headers)
            .filter(|s| s.extension().is_some())
    }

    /// Whether the request carries the configured API bearer token.
    fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.inner.api_token else {
            return false;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| {
                constant_time_eq(given.trim().as_bytes(), token.expose().as_bytes())
            })
    }

    /// The checks every state-changing form passes: a session (`session`), its CSRF
    /// token in the form, and a same-site origin.
    fn check_form(
        &self,
        session: &SessionView,
        headers: &HeaderMap,
        csrf: Option<&str>,
    ) -> Result<(), Box<Response>> {
        if !same_origin(headers, self.inner.service.public_origin()) {
            tracing::warn!(outcome = "cross_site", "portal form refused");
            return Err(Box::new(self.refusal(
                StatusCode::FORBIDDEN,
                "Not allowed",
                "This form was sent from another site.",
            )));
        }
        if !csrf.is_some_and(|t| session.csrf_matches(t)) {
            tracing::warn!(outcome = "csrf", "portal form refused");
            return Err(Box::new(self.refusal(
                StatusCode::FORBIDDEN,
                "Form expired",
                "This form is not from your current sign-in (its CSRF token is missing or wrong). Reload the page and try again.",
            )));
        }
        Ok(())
    }

    /// A page with `title`, `nav` and `body` (HTML already escaped where needed).
    fn page(&self, status: StatusCode, title: &str, nav: &Nav<'_>, body: &str) -> Response {
        let html = document(
            self.inner.service.public_base(),
            title,
            &nav.html(self),
            body,
        );
        self.secure((status, Html(html)).into_response())
    }

    /// A refusal or error page.
    fn refusal(&self, status: StatusCode, title: &str, text: &str) -> Response {
        self.page(
            status,
            title,
            &Nav::None,
            &format!(
                "<p id=\"error\" class=\"notice error\">{}</p><p><a href=\"{}\">Back to the portal</a></p>",
                escape(text),
                escape(&self.url("/"))
            ),
        )
    }

    /// The headers every portal response carries. The referrer policy is
    /// `same-origin`: nothing leaks to other sites, and the browser's `Origin` on the
    /// portal's own form posts stays a real origin (with `no-referrer` Chromium sends
    /// `Origin: null`, which the origin check refuses).
    fn secure(&self, response: Response) -> Response {
        super::pages::secure_headers_with(
            response,
            HeaderValue::from_static("same-origin"),
            self.inner.content_security_policy.clone(),
        )
    }

    /// A 303 to `path` under the public base.
    fn see_other(&self, path: &str) -> Response {
        super::pages::see_other(&self.url(path))
    }

    /// Ends the request's session, deletes its cookie and sends the browser to `path`.
    fn sign_out(&self, headers: &HeaderMap, path: &str) -> Response {
        self.sessions().end(headers);
        let cookie = PortalSessions::clear_cookie(
            &self.inner.service.session_cookie_path(),
            self.inner.service.secure_cookies(),
        );
        with_cookie(self.see_other(path), &cookie)
    }

    /// Starts the session of `who`: its cookie on a 303 to `path`.
    fn signed_in(&self, who: Who, path: &str) -> Response {
        match self.sessions().issue(who) {
            Ok(secret) => {
                let cookie = self.sessions().set_cookie(
                    &secret,
                    &self.inner.service.session_cookie_path(),
                    self.inner.service.secure_cookies(),
                );
                with_cookie(self.see_other(path), &cookie)
            }
            Err(_) => self.refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The system random generator failed.",
            ),
        }
    }
}

/// `response` with one more `Set-Cookie`.
fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// A 303 to the identity platform for a flow just started, or the flow's refusal.
fn to_identity_platform(started: Result<String, super::WebError>) -> Response {
    match started {
        Ok(url) => super::pages::see_other(&url),
        Err(e) => e.respond(),
    }
}

/// The navigation bar of a page.
enum Nav<'a> {
    /// Nothing (sign-in pages, errors).
    None,
    /// The admin's pages; `current` is underlined.
    Admin {
        current: &'static str,
        csrf: &'a str,
    },
    /// A user's page.
    User { csrf: &'a str },
}

impl Nav<'_> {
    fn html(&self, portal: &Portal) -> String {
        let sign_out = |action: &str, csrf: &str| {
            format!(
                "<form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button type=\"submit\" id=\"sign-out\">Sign out</button></form>",
                escape(&portal.url(action)),
                escape(csrf)
            )
        };
        match self {
            Nav::None => String::new(),
            Nav::Admin { current, csrf } => {
                let links = [
                    ("/admin/teams", "Microsoft Teams Presence"),
                    ("/admin/directory", "Directory"),
                    ("/admin/status", "Status"),
                ]
                .iter()
                .map(|(path, label)| {
                    format!(
                        "<a href=\"{}\"{}>{}</a>",
                        escape(&portal.url(path)),
                        if path == current {
                            " class=\"current\""
                        } else {
                            ""
                        },
                        escape(label)
                    )
                })
                .collect::<String>();
                format!("<nav>{links}</nav>{}", sign_out("/admin/logout", csrf))
            }
            Nav::User { csrf } => format!("<nav></nav>{}", sign_out("/user/sign-out", csrf)),
        }
    }
}

/// A whole portal document: the stylesheet and script of the portal under `base`, a
/// header with `nav_html`, an `<h1>` of `title` and `body` (HTML; the caller escapes).
fn document(base: &str, title: &str, nav_html: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · presence-proxy</title>\n\
         <link rel=\"stylesheet\" href=\"{css}\">\n<script src=\"{js}\" defer></script>\n\
         </head>\n<body>\n<header><span class=\"brand\">presence-proxy</span>{nav_html}</header>\n\
         <main>\n<h1>{title}</h1>\n{body}</main>\n</body>\n</html>\n",
        title = escape(title),
        css = escape(&format!("{base}/portal.css")),
        js = escape(&format!("{base}/portal.js")),
    )
}

/// A page in the portal's look for pages served beside it (the demo's): `body` is HTML
/// the caller escaped. Scripts, styles and forms are limited to this origin.
pub fn standalone_page(public_base: &str, title: &str, nav_html: &str, body: &str) -> Response {
    super::pages::secure_headers_with(
        (
            StatusCode::OK,
            Html(document(public_base, title, nav_html, body)),
        )
            .into_response(),
        HeaderValue::from_static("same-origin"),
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    )
}

/// A hidden CSRF field for `session`'s forms.
fn csrf_field(session: &SessionView) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(&session.csrf)
    )
}

/// The portal's routes (merge them with the OAuth routes of the same service).
pub fn router(portal: Portal) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/portal.css", get(css))
        .route("/portal.js", get(js))
        .merge(admin::routes())
        .merge(user::routes())
        .merge(api::routes())
        .with_state(portal)
}

async fn index(axum::extract::State(portal): axum::extract::State<Portal>) -> Response {
    let body = format!(
        "<section><h2>Administrator</h2><p>Grant consent, get the domain token, switch PBX → Teams on, \
         map extensions to Teams users and watch them sync.</p><p><a class=\"button\" id=\"admin-link\" href=\"{}\">Admin sign-in</a></p></section>\
         <section><h2>Everyone</h2><p>Sign in with your Microsoft account to pair your Teams presence with your desk phone.</p>\
         <p><a class=\"button\" id=\"user-link\" href=\"{}\">Pair my Teams account</a></p></section>",
        escape(&portal.url("/admin/teams")),
        escape(&portal.url("/user"))
    );
    portal.page(
        StatusCode::OK,
        "Desk phones and Microsoft Teams",
        &Nav::None,
        &body,
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

/// `2026-11-24 10:32:05 UTC` (the portal shows times in UTC).
pub fn utc(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // civil from days (H. Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(1_795_523_525)),
            "2026-11-24 12:32:05 UTC"
        );
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29 00:00:00 UTC"
        );
    }
}
