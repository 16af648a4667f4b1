#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
//! The OAuth round trips of `src/web/` over real HTTP on loopback: the emulator in-process,
//! the router served on a port from binding 127.0.0.1:0, and a browser played by reqwest
//! following every redirect by hand (the emulator's `emulator_user=` / `emulator_decision=`
//! shortcuts stand for its sign-in and consent pages).
//!
//! Admin consent (granted, denied), the domain sign-in (stored, owner recorded, usable),
//! pairing (stored, setPresence with it shows in the emulator), `state` unknown and reused,
//! PKCE mismatch, the wrong account, a tenant other than the store's, unpair (session
//! cleared, token deleted; refused without the cookie or cross-origin), the JWKS fetched
//! once, and no secret in the logs.

mod emulator_support;

use std::sync::Arc;
use std::time::Duration;

use emulator_support::{ALICE, BOB, Env, capture_logs, start_with};
use presence_proxy::emulator::{
    CONTOSO_CLIENT_ID, CONTOSO_CLIENT_SECRET, CONTOSO_TENANT_ID, EmulatorConfig, Seed,
};
use presence_proxy::graph::{
    GraphClient, GraphConfig, SessionPresence, StoreTokenSink, TokenSet, Tokens, USER_SCOPES,
};
use presence_proxy::store::{EncryptionKey, Store, TokenKey, TokenStatus};
use presence_proxy::web::{OAuthService, router, serve};
use reqwest::StatusCode;
use reqwest::header::{LOCATION, SET_COOKIE};
use tokio::net::TcpListener;

const HOUR: Duration = Duration::from_secs(3600);

struct Web {
    env: Env,
    base: String,
    store: Store,
    graph: GraphClient,
    _dir: tempfile::TempDir,
}

/// The emulator (with our callback registered), a store with extensions 201 (alice),
/// 202 (bob) and 203 (no email), and the router on a free loopback port.
async fn web() -> Web {
    capture_logs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let redirect = OAuthService::callback_url(&base);
    let mut seed = Seed::default();
    seed.app.redirect_uris.push(redirect.clone());
    let env = start_with(EmulatorConfig {
        seed,
        ..EmulatorConfig::default()
    })
    .await;
    let mut config = GraphConfig::new(
        "contoso.example",
        CONTOSO_CLIENT_ID,
        CONTOSO_CLIENT_SECRET,
        redirect,
    )
    .with_bases(env.emu.login_url(), env.emu.graph_url());
    config.retry.base_delay = Duration::from_millis(20);
    config.retry.max_delay = Duration::from_millis(200);
    let graph = GraphClient::new(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path().join("store.sqlite"),
        EncryptionKey::from_bytes(&[9; 32]),
    )
    .unwrap();
    store
        .add_extension("201", Some("Alice@Contoso.example"))
        .unwrap();
    store
        .add_extension("202", Some("bob@contoso.example"))
        .unwrap();
    store.add_extension("203", None).unwrap();
    let service = OAuthService::new(graph.clone(), store.clone(), &base).unwrap();
    tokio::spawn(serve(listener, router(service)));
    Web {
        env,
        base,
        store,
        graph,
        _dir: dir,
    }
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(LOCATION)
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_owned()
}

/// What the browser ends up with at the callback.
struct Landing {
    status: StatusCode,
    cookie: Option<String>,
    body: String,
}

impl Web {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET a start route: a 302 to the emulator; returns where it points.
    async fn start(&self, path: &str) -> String {
        let response = self.env.http.get(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FOUND, "{path} redirects");
        assert_eq!(response.headers()["referrer-policy"], "no-referrer");
        let to = location(&response);
        assert!(to.starts_with(&self.env.emu.login_url()), "{to}");
        to
    }

    /// At the emulator, with a test shortcut: a 302 back to our callback; returns it.
    async fn at_emulator(&self, url: &str, shortcut: &str) -> String {
        let response = self
            .env
            .http
            .get(format!("{url}&{shortcut}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "the emulator redirects"
        );
        let back = location(&response);
        assert!(
            back.starts_with(&self.url("/oauth/callback?")),
            "back to the callback: {back}"
        );
        back
    }

    async fn land(&self, callback: &str) -> Landing {
        let response = self.env.http.get(callback).send().await.unwrap();
        let status = response.status();
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert_eq!(response.headers()["referrer-policy"], "no-referrer");
        let cookie = response
            .headers()
            .get(SET_COOKIE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.text().await.unwrap();
        assert!(body.starts_with("<!DOCTYPE html>"), "{body}");
        Landing {
            status,
            cookie,
            body,
        }
    }

    /// The whole pairing of `extension`, signing in as `user`.
    async fn pair(&self, extension: &str, user: &str) -> Landing {
        let authorize = self.start(&format!("/oauth/pair/{extension}")).await;
        let back = self
            .at_emulator(&authorize, &format!("emulator_user={user}"))
            .await;
        self.land(&back).await
    }

    async fn unpair(&self, extension: &str, cookie: Option<&str>) -> (StatusCode, String) {
        let mut request = self
            .env
            .http
            .post(self.url(&format!("/oauth/unpair/{extension}")));
        if let Some(c) = cookie {
            request = request.header(reqwest::header::COOKIE, c);
        }
        let response = request.send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// A delegated credential from a stored token row.
    fn tokens(&self, key: &TokenKey, scope: &str) -> Arc<Tokens> {
        let record = self.store.get_token(key).unwrap().expect("a stored token");
        let sink = StoreTokenSink::new(self.store.clone(), key.clone(), record.info.generation);
        Tokens::delegated(
            &self.graph,
            TokenSet::from_record(&record),
            scope,
            Arc::new(sink),
        )
    }

    async fn emulator_presence(&self, user: &str) -> serde_json::Value {
        let (status, body) = self
            .env
            .control_json(
                reqwest::Method::GET,
                &format!("/users/{user}/presence"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        body
    }

    /// How many times the emulator served the JWKS.
    async fn jwks_fetches(&self) -> usize {
        let (_, body) = self
            .env
            .control_json(reqwest::Method::GET, "/requests", None)
            .await;
        body["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["path"]
                    .as_str()
                    .unwrap()
                    .ends_with("/discovery/v2.0/keys")
            })
            .count()
    }

    fn nothing_stored(&self) {
        assert!(self.store.list_tokens().unwrap().is_empty(), "no token row");
        assert_eq!(self.store.tenant_id().unwrap(), None);
        assert_eq!(self.store.admin_consent().unwrap(), None);
        assert_eq!(self.store.domain_token_owner().unwrap(), None);
    }
}

/// `name=value` of a Set-Cookie header.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_owned()
}

fn query_of(url: &str) -> std::collections::HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// graph.md §6.1: admin consent round trip; the tenant GUID and the consent are recorded.
#[tokio::test]
async fn admin_consent_end_to_end() {
    let w = web().await;
    let consent = w.start("/oauth/admin-consent").await;
    assert!(
        consent.contains("/contoso.example/v2.0/adminconsent?"),
        "{consent}"
    );
    let q = query_of(&consent);
    assert_eq!(q["client_id"], CONTOSO_CLIENT_ID);
    assert_eq!(q["scope"], "https://graph.microsoft.com/.default");
    assert!(q["state"].len() >= 43);

    let back = w.at_emulator(&consent, "emulator_decision=accept").await;
    let landing = w.land(&back).await;
    assert_eq!(landing.status, StatusCode::OK, "{}", landing.body);
    assert!(landing.body.contains(CONTOSO_TENANT_ID), "{}", landing.body);
    assert_eq!(
        w.store.tenant_id().unwrap().as_deref(),
        Some(CONTOSO_TENANT_ID)
    );
    let consent = w.store.admin_consent().unwrap().expect("consent recorded");
    assert_eq!(consent.tenant_id, CONTOSO_TENANT_ID);
    assert!(w.store.list_tokens().unwrap().is_empty());
}

/// graph.md §6.1, §6.2: a denied consent (`consent_required`, with `admin_consent=True`
/// alongside) and a denied sign-in (`access_denied`) are shown, and nothing is stored.
#[tokio::test]
async fn denied_consent_and_sign_in_store_nothing() {
    let w = web().await;
    let consent = w.start("/oauth/admin-consent").await;
    let back = w.at_emulator(&consent, "emulator_decision=deny").await;
    let q = query_of(&back);
    assert_eq!(q["admin_consent"], "True", "the trap of §6.1");
    assert_eq!(q["error"], "consent_required");
    let landing = w.land(&back).await;
    assert_eq!(landing.status, StatusCode::BAD_REQUEST);
    assert!(
        landing.body.contains("consent_required"),
        "{}",
        landing.body
    );
    assert!(landing.body.contains("AADSTS65004"), "{}", landing.body);
    w.nothing_stored();

    let authorize = w.start("/oauth/pair/201").await;
    let back = w.at_emulator(&authorize, "emulator_decision=deny").await;
    assert_eq!(query_of(&back)["error"], "access_denied");
    let landing = w.land(&back).await;
    assert_eq!(landing.status, StatusCode::BAD_REQUEST);
    assert!(landing.body.contains("access_denied"), "{}", landing.body);
    assert!(landing.cookie.is_none());
    w.nothing_stored();

    // an injected error with markup is escaped
    let authorize = w.start("/oauth/domain").await;
    let state = query_of(&authorize)["state"].clone();
    let landing = w
        .land(&format!(
            "{}?state={state}&error=%3Cscript%3Ex&error_description=%3Cb%3Ey",
            w.url("/oauth/callback")
        ))
        .await;
    assert_eq!(landing.status, StatusCode::BAD_REQUEST);
    assert!(!landing.body.contains("<script>") && !landing.body.contains("<b>y"));
    assert!(landing.body.contains("&lt;script&gt;x"), "{}", landing.body);
    w.nothing_stored();
}

/// graph.md §6.2, §6.6, §2.2: the domain sign-in stores the domain token under the
/// tenant id, records its owner, and the token reads presence in bulk.
#[tokio::test]
async fn domain_sign_in_end_to_end() {
    let w = web().await;
    let authorize = w.start("/oauth/domain").await;
    let q = query_of(&authorize);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["scope"].contains("Presence.Read.All"), "{}", q["scope"]);
    assert!(q["nonce"].len() >= 43);
    let back = w
        .at_emulator(&authorize, "emulator_user=carol@contoso.example")
        .await;
    let landing = w.land(&back).await;
    assert_eq!(landing.status, StatusCode::OK, "{}", landing.body);
    assert!(landing.body.contains("carol@contoso.example"));

    let key = TokenKey::domain(CONTOSO_TENANT_ID);
    let info = w.store.token_info(&key).unwrap().expect("domain token");
    assert_eq!(info.subject_upn.as_deref(), Some("carol@contoso.example"));
    assert!(info.has_refresh_token);
    assert_eq!(info.status, TokenStatus::Valid);
    assert_eq!(
        w.store.domain_token_owner().unwrap().as_deref(),
        Some("carol@contoso.example")
    );
    assert_eq!(
        w.store.tenant_id().unwrap().as_deref(),
        Some(CONTOSO_TENANT_ID),
        "the validated tid is recorded when none was known"
    );

    let tokens = w.tokens(&key, presence_proxy::graph::DOMAIN_SCOPES);
    let presences = w
        .graph
        .presences_by_user_id(&tokens, &[ALICE.to_owned(), BOB.to_owned()])
        .await
        .unwrap();
    assert_eq!(presences.len(), 2);
}

/// Pairing end to end: the user token is stored (encrypted, with the id_token's oid), the
/// directory resolution is the oid, the cookie is HttpOnly and SameSite=Lax, a
/// setPresence with the token shows in the emulator, and re-pairing clears a
/// "needs re-pairing" mark. The JWKS is fetched once for both sign-ins.
#[tokio::test]
async fn pairing_end_to_end() {
    let w = web().await;
    let authorize = w.start("/oauth/pair/201").await;
    let q = query_of(&authorize);
    assert_eq!(q["login_hint"], "Alice@Contoso.example");
    assert!(q["scope"].contains("Presence.ReadWrite"));
    let back = w
        .at_emulator(&authorize, "emulator_user=alice@contoso.example")
        .await;
    let landing = w.land(&back).await;
    assert_eq!(landing.status, StatusCode::OK, "{}", landing.body);
    assert!(landing.body.contains("Extension 201 is now paired"));
    assert!(landing.body.contains("action=\"http://127.0.0.1:"));
    let cookie = landing.cookie.expect("a pairing cookie");
    assert!(cookie.starts_with("pp_pair_201="), "{cookie}");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/oauth"] {
        assert!(cookie.contains(attr), "{cookie}");
    }

    let key = TokenKey::user("201");
    let info = w.store.token_info(&key).unwrap().expect("user token");
    assert_eq!(info.graph_user_oid.as_deref(), Some(ALICE));
    assert_eq!(info.subject_upn.as_deref(), Some("alice@contoso.example"));
    assert_eq!(
        w.store
            .extension("201")
            .unwrap()
            .unwrap()
            .graph_user_id
            .as_deref(),
        Some(ALICE)
    );

    let tokens = w.tokens(&key, USER_SCOPES);
    w.graph
        .set_presence(&tokens, ALICE, SessionPresence::InACall, HOUR)
        .await
        .unwrap();
    let view = w.emulator_presence(ALICE).await;
    assert_eq!(view["app_sessions"][0]["app_id"], CONTOSO_CLIENT_ID);
    assert_eq!(view["aggregate"]["activity"], "InACall");

    // re-pairing after the token went bad makes it valid again
    let generation = w.store.token_info(&key).unwrap().unwrap().generation;
    assert!(
        w.store
            .mark_needs_repairing(&key, generation, "test")
            .unwrap()
            .replaced()
    );
    let landing = w.pair("201", "alice@contoso.example").await;
    assert_eq!(landing.status, StatusCode::OK, "{}", landing.body);
    assert_eq!(
        w.store.token_info(&key).unwrap().unwrap().status,
        TokenStatus::Valid
    );
    assert_eq!(w.jwks_fetches().await, 1, "the keys are cached by kid");
}

/// An unknown `state`, a reused one and none at all are refused before anything else;
/// the reused callback does not pair a second time.
#[tokio::test]
async fn state_mismatch_and_reuse_refused() {
    let w = web().await;
    let authorize = w.start("/oauth/pair/201").await;
    let back = w
        .at_emulator(&authorize, "emulator_user=alice@contoso.example")
        .await;
    let q = query_of(&back);
    let code = &q["code"];

    // the right code under a made-up state
    let forged = format!(
        "{}?code={code}&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        w.url("/oauth/callback")
    );
    let landing = w.land(&forged).await;
    assert_eq!(landing.status, StatusCode::BAD_REQUEST);
    assert!(landing.body.contains("unknown or was already used"));
    let no_state = format!("{}?code={code}", w.url("/oauth/callback"));
    assert_eq!(w.land(&no_state).await.status, StatusCode::BAD_REQUEST);
    w.nothing_stored();

    // the real callback works once
    let landing = w.land(&back).await;
    assert_eq!(landing.status, StatusCode::OK, "{}", landing.body);
    let generation = w
        .store
        .token_info(&TokenKey::user("201"))
        .unwrap()
        .unwrap()
        .generation;

    // and is refused when replayed
    let landing = w.land(&back).await;
    assert_eq!(landing.status, StatusCode::BAD_REQUEST);
    assert!(landing.cookie.is_none());
    assert_eq!(
        w.store
            .token_info(&TokenKey::user("201"))
            .unwrap()
            .unwrap()
            .generation,
        generation,
        "nothing written by the replay"
    );
}

/// PKCE (graph.md §6.2): a code obtained under one sign-in's challenge, delivered with
/// another sign-in's `state`, is exchanged with the wrong verifier; the emulator refuses
/// it (S256 mismatch) and nothing is stored.
#[tokio::test]
async fn pkce_mismatch_refused() {
    let w = web().await;
    let first = w.start("/oauth/pair/201").await;
    let second = w.start("/oauth/pair/201").await;
    let back = w
        .at_emulator(&first, "emulator_user=alice@contoso.example")
        .await;
    let code = query_of(&back)["code"].clone();
    let other_state = query_of(&second)["state"].clone();
    let spliced = format!(
        "{}?code={}&state={}",
        w.url("/oauth/callback"),
        urlencode(&code),
        urlencode(&other_state)
    );
    let landing = w.land(&spliced).await;
    assert_eq!(landing.status, StatusCode::BAD_REQUEST, "{}", landing.body);
    assert!(landing.body.contains("invalid_grant"), "{}", landing.body);
    assert!(landing.body.contains("AADSTS501481"), "{}", landing.body);
    assert!(landing.cookie.is_none());
    w.nothing_stored();
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Pairing extension 201 (alice) while signed in as bob: a 403 page naming the extension
/// and bob's account, and nothing stored.
#[tokio::test]
async fn pairing_as_the_wrong_user_refused() {
    let w = web().await;
    let landing = w.pair("201", "bob@contoso.example").await;
    assert_eq!(landing.status, StatusCode::FORBIDDEN, "{}", landing.body);
    assert!(landing.body.contains("Extension 201"), "{}", landing.body);
    assert!(
        landing.body.contains("bob@contoso.example"),
        "{}",
        landing.body
    );
    assert!(landing.cookie.is_none());
    w.nothing_stored();
    assert_eq!(
        w.store.extension("201").unwrap().unwrap().graph_user_id,
        None
    );
}

/// Pairing needs a directory entry with an email; both refusals happen before any
/// redirect.
#[tokio::test]
async fn pairing_unknown_or_emailless_extension_refused() {
    let w = web().await;
    let r = w
        .env
        .http
        .get(w.url("/oauth/pair/999"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = w
        .env
        .http
        .get(w.url("/oauth/pair/203"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = w
        .env
        .http
        .get(w.url("/oauth/pair/%3Cscript%3E"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!r.text().await.unwrap().contains("<script>"));
}

/// An id_token of the right issuer but a tenant other than the one the store knows is
/// refused (the `tid` check of §6.6), and nothing is stored.
#[tokio::test]
async fn sign_in_for_another_tenant_refused() {
    let w = web().await;
    let other = "00000000-1111-2222-3333-444444444444";
    w.store.set_tenant_id(other).unwrap();
    let landing = w.pair("201", "alice@contoso.example").await;
    assert_eq!(landing.status, StatusCode::BAD_REQUEST, "{}", landing.body);
    assert!(landing.body.contains(other), "{}", landing.body);
    assert!(w.store.list_tokens().unwrap().is_empty());
}

/// Unpair: refused without the cookie, with another extension's cookie and cross-origin;
/// with the cookie it clears the app's presence session and deletes the token, and the
/// cookie is spent afterwards.
#[tokio::test]
async fn unpair_clears_the_session_and_deletes_the_token() {
    let w = web().await;
    let alice = w.pair("201", "alice@contoso.example").await;
    let alice_cookie = cookie_pair(&alice.cookie.unwrap());
    let bob = w.pair("202", "bob@contoso.example").await;
    let bob_cookie = cookie_pair(&bob.cookie.unwrap());
    let key = TokenKey::user("201");
    let tokens = w.tokens(&key, USER_SCOPES);
    w.graph
        .set_presence(&tokens, ALICE, SessionPresence::InACall, HOUR)
        .await
        .unwrap();
    assert_eq!(
        w.emulator_presence(ALICE).await["app_sessions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let (status, _) = w.unpair("201", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = w.unpair("201", Some(&bob_cookie)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "bob's cookie is for 202");
    let renamed = bob_cookie.replace("pp_pair_202", "pp_pair_201");
    let (status, _) = w.unpair("201", Some(&renamed)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the secret is bound to 202");
    let cross = w
        .env
        .http
        .post(w.url("/oauth/unpair/201"))
        .header(reqwest::header::COOKIE, &alice_cookie)
        .header(reqwest::header::ORIGIN, "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    assert!(w.store.token_info(&key).unwrap().is_some(), "still paired");

    let response = w
        .env
        .http
        .post(w.url("/oauth/unpair/201"))
        .header(reqwest::header::COOKIE, &alice_cookie)
        .header(reqwest::header::ORIGIN, &w.base)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cleared = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(cleared.starts_with("pp_pair_201=;") && cleared.contains("Max-Age=0"));
    let body = response.text().await.unwrap();
    assert!(body.contains("presence in Teams was cleared"), "{body}");
    assert!(w.store.token_info(&key).unwrap().is_none(), "token deleted");
    assert!(
        w.emulator_presence(ALICE).await["app_sessions"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the app's session is gone"
    );
    assert!(
        w.store
            .token_info(&TokenKey::user("202"))
            .unwrap()
            .is_some()
    );

    // the cookie died with the pairing
    let (status, _) = w.unpair("201", Some(&alice_cookie)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // unpairing without a presence session is fine (clearPresence 404)
    let (status, body) = w.unpair("202", Some(&bob_cookie)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("had no presence set"), "{body}");
    assert!(w.store.list_tokens().unwrap().is_empty());
}

/// A full pairing and unpairing at TRACE: the code, `state`, nonce, access and refresh
/// tokens and the cookie secret appear nowhere in the log; the flow, the extension and
/// the outcome do.
#[tokio::test]
async fn no_secret_in_the_logs() {
    let buffer = capture_logs();
    let w = web().await;
    let authorize = w.start("/oauth/pair/202").await;
    let q = query_of(&authorize);
    let mut secrets = vec![q["state"].clone(), q["nonce"].clone()];
    let back = w
        .at_emulator(&authorize, "emulator_user=bob@contoso.example")
        .await;
    secrets.push(query_of(&back)["code"].clone());
    let landing = w.land(&back).await;
    assert_eq!(landing.status, StatusCode::OK, "{}", landing.body);
    let cookie = cookie_pair(&landing.cookie.unwrap());
    secrets.push(cookie.split_once('=').unwrap().1.to_owned());
    let record = w.store.get_token(&TokenKey::user("202")).unwrap().unwrap();
    secrets.push(record.access_token.expose().clone());
    secrets.push(record.refresh_token.clone().unwrap().expose().clone());
    let (status, _) = w.unpair("202", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    secrets.push(CONTOSO_CLIENT_SECRET.to_owned());

    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("flow=\"pairing\""), "{log}");
    assert!(log.contains("extension=\"202\""), "{log}");
    assert!(log.contains("outcome=\"completed\""), "{log}");
    assert!(log.contains("flow=\"unpair\""), "{log}");
    for secret in &secrets {
        assert!(secret.len() >= 8, "a real secret");
        assert!(
            !log.contains(secret.as_str()),
            "a secret leaked into the log"
        );
        if let Some(sig) = secret.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(!log.contains(sig), "a token signature leaked into the log");
        }
    }
}
