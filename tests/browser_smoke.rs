//! The real-browser harness (`tests/browser_support`) against the Graph emulator's
//! sign-in page: headless Chromium opens the emulator's authorize endpoint, shows "Pick an
//! account", a click on a user lands on the redirect URI (a small HTTP server in the test)
//! with `code` and the request's `state`, and the code is good at the token endpoint.
//! Also: two browsers at once, each with its own ChromeDriver and profile, filling and
//! submitting a form; nothing left running once they are gone; a missing ChromeDriver
//! fails the test, naming scripts/test.sh.
//!
//! Needs Chromium and ChromeDriver (Debian: chromium, chromium-driver);
//! `scripts/test.sh` installs them.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod browser_support;
mod emulator_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::Html;
use axum::routing::get;
use browser_support::{Browser, BrowserConfig, Url, png_size, processes_naming};
use emulator_support::{Env, claims, pkce};
use presence_proxy::emulator::{CONTOSO_CLIENT_ID, CONTOSO_CLIENT_SECRET};
use serde_json::json;

/// The redirect URI's server: answers `/callback` (the query it got shown on the page
/// and kept) and `/form` (a form that submits to `/submitted`).
struct Site {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Site {
    async fn start() -> Site {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/callback", get(callback))
            .route("/form", get(form))
            .route("/submitted", get(submitted))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Site { addr, seen, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Seen = State<Arc<Mutex<Vec<String>>>>;

async fn callback(State(seen): Seen, RawQuery(query): RawQuery) -> Html<String> {
    let query = query.unwrap_or_default();
    seen.lock().unwrap().push(query.clone());
    Html(format!(
        "<!doctype html><html><head><title>Callback</title></head><body>\
         <h1 id=\"done\">signed in</h1><p id=\"query\">{}</p></body></html>",
        query.replace('&', "&amp;").replace('<', "&lt;")
    ))
}

async fn form() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>Form</title></head><body>\
         <form action=\"/submitted\" method=\"get\">\
         <label>Name <input id=\"name\" name=\"name\" value=\"prefilled\"></label>\
         <button id=\"go\" type=\"submit\">Go</button></form></body></html>",
    )
}

async fn submitted(RawQuery(query): RawQuery) -> Html<String> {
    let name = query
        .unwrap_or_default()
        .split('&')
        .find_map(|p| p.strip_prefix("name=").map(str::to_owned))
        .unwrap_or_default();
    Html(format!(
        "<!doctype html><html><body><p id=\"hello\">hello {}</p></body></html>",
        name.replace('<', "&lt;")
    ))
}

/// Allows `uri` as a redirect URI of the emulator's app registration.
async fn allow_redirect(env: &Env, uri: &str) {
    let (status, body) = env
        .control_json(
            reqwest::Method::POST,
            "/app/redirect-uris",
            Some(json!({ "uri": uri })),
        )
        .await;
    assert!(status < 300, "{body}");
}

/// Asserts ChromeDriver and every Chromium process of a browser are gone.
fn assert_gone(driver_pid: u32, dir: &Path) {
    assert!(
        !Path::new(&format!("/proc/{driver_pid}")).exists(),
        "ChromeDriver ({driver_pid}) still running"
    );
    assert!(!dir.exists(), "{} not removed", dir.display());
    let left = processes_naming(dir);
    assert!(left.is_empty(), "processes left running: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_on_a_user_of_the_sign_in_page_lands_on_the_redirect_uri_with_code_and_state() {
    let env = emulator_support::start().await;
    let site = Site::start().await;
    let redirect = site.url("/callback");
    allow_redirect(&env, &redirect).await;
    let (verifier, challenge) = pkce();
    let state = format!("smoke-{}", std::process::id());
    let authorize = Url::parse_with_params(
        &env.login("/contoso.example/oauth2/v2.0/authorize"),
        [
            ("client_id", CONTOSO_CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", redirect.as_str()),
            ("scope", "openid profile offline_access"),
            ("state", state.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    )
    .unwrap();

    let started = Instant::now();
    let browser = Browser::start().await;
    let startup = started.elapsed();
    let (driver_pid, dir) = (browser.driver_pid(), browser.dir().to_path_buf());

    browser.goto(authorize.as_str()).await;
    assert_eq!(browser.title().await, "Sign in to your account");
    browser.wait_for_text("h1", "Pick an account").await;
    let bob = "a.user[data-upn=\"bob@contoso.example\"]";
    assert_eq!(browser.text(bob).await, "Bob Martin (bob@contoso.example)");
    browser
        .wait_for("a.user[data-upn=\"alice@contoso.example\"]")
        .await;

    let shots = tempfile::tempdir().unwrap();
    let shot = shots.path().join("sign-in.png");
    browser.screenshot(&shot).await;
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(
        png_size(&png),
        Some(browser_support::WINDOW),
        "a PNG of the window"
    );
    assert!(png.len() > 5_000, "a PNG of {} bytes only", png.len());

    browser.click(bob).await;
    let landed = browser
        .wait_for_url(|u| u.path() == "/callback" && u.port() == Some(site.addr.port()))
        .await;
    let query: std::collections::HashMap<String, String> =
        landed.query_pairs().into_owned().collect();
    assert_eq!(query.get("state"), Some(&state), "{landed}");
    let code = query.get("code").cloned().unwrap_or_default();
    assert!(!code.is_empty(), "{landed}");
    assert!(!query.contains_key("error"), "{landed}");
    browser.wait_for_text("#done", "signed in").await;
    assert_eq!(
        site.seen.lock().unwrap().clone(),
        vec![landed.query().unwrap().to_owned()],
        "the redirect URI was fetched once, with that query"
    );

    // the code is a real one: bob's, redeemable once with the PKCE verifier
    let (status, body) = env
        .token(&[
            ("grant_type", "authorization_code"),
            ("client_id", CONTOSO_CLIENT_ID),
            ("client_secret", CONTOSO_CLIENT_SECRET),
            ("code", &code),
            ("redirect_uri", &redirect),
            ("code_verifier", &verifier),
            ("scope", "openid profile offline_access"),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    let id = claims(body["id_token"].as_str().unwrap());
    assert_eq!(id["preferred_username"], "bob@contoso.example");

    let closing = Instant::now();
    browser.close().await;
    println!(
        "browser started in {startup:?}, closed in {:?}, test took {:?}",
        closing.elapsed(),
        started.elapsed()
    );
    assert_gone(driver_pid, &dir);
}

/// Fills the form of `site` with `name` and submits it.
async fn submit_form(browser: &Browser, site: &Site, name: &str) {
    browser.goto(&site.url("/form")).await;
    browser.fill("#name", name).await;
    browser.click("#go").await;
    let url = browser.wait_for_url(|u| u.path() == "/submitted").await;
    assert_eq!(url.query(), Some(format!("name={name}").as_str()));
    let text = browser
        .wait_for_text("#hello", &format!("hello {name}"))
        .await;
    assert_eq!(text, format!("hello {name}"));
    assert_eq!(browser.current_url().await, url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_at_once_each_have_their_own_driver_and_profile_and_leave_nothing() {
    let site = Site::start().await;
    let started = Instant::now();
    let (one, two) = tokio::join!(Browser::start(), Browser::start());
    println!("two browsers started in {:?}", started.elapsed());
    assert_ne!(one.driver_port(), two.driver_port());
    assert_ne!(one.dir(), two.dir());
    let gone: Vec<(u32, PathBuf)> = [&one, &two]
        .iter()
        .map(|b| (b.driver_pid(), b.dir().to_path_buf()))
        .collect();
    tokio::join!(
        submit_form(&one, &site, "alice"),
        submit_form(&two, &site, "bob")
    );
    // one closes gently, the other is just dropped (as when a test fails)
    one.close().await;
    drop(two);
    for (pid, dir) in &gone {
        assert_gone(*pid, dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_chromedriver_fails_the_test_and_says_how_to_install_it() {
    let config = BrowserConfig {
        chromedriver: PathBuf::from("/nonexistent/chromedriver"),
        ..BrowserConfig::default()
    };
    let outcome = tokio::spawn(async move {
        Browser::start_with(config).await;
    })
    .await;
    let message = panic_text(
        &*outcome
            .expect_err("no browser without ChromeDriver")
            .into_panic(),
    );
    assert!(message.contains("scripts/test.sh"), "{message}");
    assert!(message.contains("/nonexistent/chromedriver"), "{message}");
}

/// Text of a panic payload.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_times_out_fails_with_what_the_page_shows_and_cleans_up() {
    let site = Site::start().await;
    let form = site.url("/form");
    let mut browser = Browser::start().await;
    let (driver_pid, dir) = (browser.driver_pid(), browser.dir().to_path_buf());
    browser.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    // the browser unwinds with the task, as in a failing test
    let url = form.clone();
    let outcome = tokio::spawn(async move {
        browser.goto(&url).await;
        browser.wait_for("#no-such-thing").await;
    })
    .await;
    let waited = started.elapsed();
    let message = panic_text(&*outcome.expect_err("the wait fails").into_panic());
    assert!(
        message.contains("no element matches `#no-such-thing`"),
        "{message}"
    );
    assert!(message.contains(&format!("URL: {form}")), "{message}");
    assert!(message.contains("title: \"Form\""), "{message}");
    assert!(message.contains("<input id=\"name\""), "{message}");
    let shot = message
        .lines()
        .find_map(|l| l.strip_prefix("screenshot: "))
        .and_then(|l| l.strip_suffix(" (kept)"))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no screenshot named in {message}"));
    let png = std::fs::read(&shot).unwrap();
    std::fs::remove_file(&shot).unwrap();
    assert_eq!(png_size(&png), Some(browser_support::WINDOW));
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert_gone(driver_pid, &dir);
}
