//! The portal over HTTP, as `presence-proxy run` serves it (proxy, store, sync engine,
//! web listener; Graph and sign-ins by the emulator): who may see and do what. Every
//! admin page, action and API refuses without a session (or the API token); forms
//! without their CSRF token, or from another site, are refused and change nothing;
//! password guessing is slowed; a tampered or reused OAuth `state` is refused; a user
//! reaches their own extension only.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;
mod emulator_support;
mod portal_support;

use portal_support::{ADMIN_PASSWORD, API_TOKEN, PortalClient, Reply};
use presence_proxy::store::TokenKey;
use reqwest::StatusCode;

async fn start() -> portal_support::Product {
    portal_support::start_product(e2e_support::free_port()).await
}

fn refused_page(reply: &Reply, what: &str) {
    assert!(
        reply.status == StatusCode::SEE_OTHER
            && reply
                .location
                .as_deref()
                .is_some_and(|l| l.ends_with("/admin/login")),
        "{what}: expected a redirect to the sign-in, got {} {:?}",
        reply.status,
        reply.location
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_page_action_and_api_refuses_without_a_session() {
    let product = start().await;
    let mut anonymous = PortalClient::new(&product.web);
    for page in [
        "/admin",
        "/admin/teams",
        "/admin/directory",
        "/admin/status",
    ] {
        let reply = anonymous.get(page).await;
        if page == "/admin" {
            assert_eq!(reply.status, StatusCode::SEE_OTHER);
            continue;
        }
        refused_page(&reply, page);
        assert!(!reply.body.contains("csrf"), "{page} shows nothing");
    }
    for action in [
        "/admin/teams",
        "/admin/teams/grant",
        "/admin/teams/token",
        "/admin/directory",
        "/admin/directory/delete",
        "/admin/directory/import",
        "/admin/logout",
        "/user/pair",
        "/user/unpair",
        "/user/sign-out",
    ] {
        let reply = anonymous
            .post(
                action,
                &[("csrf", "x"), ("extension", "201"), ("pbx_to_teams", "on")],
            )
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "POST {action}");
    }
    for api in ["/api/status", "/api/actions", "/api/me"] {
        let reply = anonymous.get(api).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{api}");
    }
    // the OAuth starts are not open when the portal runs
    for start in ["/oauth/admin-consent", "/oauth/domain", "/oauth/pair/201"] {
        let reply = anonymous.get(start).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{start}");
    }
    let reply = anonymous.post("/oauth/unpair/201", &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        !product.teams.store.pbx_to_teams_enabled().unwrap(),
        "nothing changed"
    );
    assert_eq!(product.teams.store.list_extensions().unwrap().len(), 2);

    // the monitoring token reads /api/status, and nothing else
    let (status, body) = anonymous.get_bearer("/api/status", API_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    let extensions: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["extension"].as_str().unwrap())
        .collect();
    assert_eq!(extensions, ["201", "202"]);
    for key in [
        "email",
        "registered",
        "call",
        "dnd",
        "teams",
        "paired",
        "pbx_to_teams",
        "last_error",
    ] {
        assert!(rows[0].get(key).is_some(), "{key} in {}", rows[0]);
    }
    assert_eq!(rows[0]["call"], "idle");
    let (status, _) = anonymous.get_bearer("/api/status", "wrong-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = anonymous.get_bearer("/api/actions", API_TOKEN).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // metrics and health need no session
    let metrics = anonymous.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    for family in [
        "presence_proxy_sip_messages_received_total",
        "presence_proxy_graph_requests_total",
        "presence_proxy_sync_lag_seconds_bucket",
    ] {
        assert!(
            metrics.body.contains(family),
            "{family} in {}",
            metrics.body
        );
    }
    assert_eq!(anonymous.get("/healthz").await.body, "ok\n");

    // a user's session is not the admin's
    let (mut bob, _) = product.user("bob@contoso.example").await;
    refused_page(&bob.get("/admin/teams").await, "a user on /admin/teams");
    assert_eq!(
        bob.get("/api/status").await.status,
        StatusCode::UNAUTHORIZED
    );
    product.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_without_their_csrf_token_or_from_another_site_change_nothing() {
    let product = start().await;
    let mut admin = product.admin().await;
    let csrf = admin.csrf("/admin/teams").await;
    let save =
        |token: &'static str| vec![("csrf", token), ("scope", "all"), ("pbx_to_teams", "on")];
    let reply = admin.post("/admin/teams", &save("")[1..]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "no token");
    let reply = admin.post("/admin/teams", &save("forged")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "a wrong token");
    let mut fields = save("");
    fields[0].1 = &csrf;
    let reply = admin.post_cross_site("/admin/teams", &fields).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "from another site");
    // another session's token is not this one's
    let mut other = product.admin().await;
    let other_csrf = other.csrf("/admin/teams").await;
    assert_ne!(other_csrf, csrf);
    let mut with_other = save("");
    with_other[0].1 = &other_csrf;
    let reply = admin.post("/admin/teams", &with_other).await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "another session's token"
    );
    assert!(!product.teams.store.pbx_to_teams_enabled().unwrap());

    let reply = admin.post("/admin/teams", &fields).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert!(product.teams.store.pbx_to_teams_enabled().unwrap());
    let page = admin.get("/admin/teams?notice=saved").await;
    assert!(
        page.body.contains("id=\"pbx-to-teams\" checked"),
        "{}",
        page.body
    );

    // the sign-in form has its own token, tied to a cookie
    let mut fresh = PortalClient::new(&product.web);
    let reply = fresh
        .post("/admin/login", &[("password", ADMIN_PASSWORD)])
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(!fresh.cookies.contains_key("pp_session"));

    // signing out ends the session: its cookie no longer opens anything
    let session = admin.cookies["pp_session"].clone();
    let reply = admin.post("/admin/logout", &[("csrf", &csrf)]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    admin.cookies.insert("pp_session".into(), session);
    refused_page(&admin.get("/admin/teams").await, "after sign-out");
    product.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_refused_and_then_slowed() {
    let product = start().await;
    let mut guesser = PortalClient::new(&product.web);
    for _ in 0..10 {
        let reply = guesser.admin_login("hunter2").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert!(reply.body.contains("Wrong password"));
    }
    let reply = guesser.admin_login(ADMIN_PASSWORD).await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits now"
    );
    assert!(!guesser.cookies.contains_key("pp_session"));
    product.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_reused_oauth_state_is_refused() {
    let product = start().await;
    let mut admin = product.admin().await;
    let csrf = admin.csrf("/admin/teams").await;
    let to_emulator = admin.post("/admin/teams/token", &[("csrf", &csrf)]).await;
    let at_emulator = admin
        .get(&format!(
            "{}&emulator_user=alice@contoso.example",
            to_emulator.location.unwrap()
        ))
        .await;
    let back = at_emulator.location.unwrap();
    let url = reqwest::Url::parse(&back).unwrap();
    let query: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let code = &query.iter().find(|(k, _)| k == "code").unwrap().1;
    let state = &query.iter().find(|(k, _)| k == "state").unwrap().1;
    let tampered = format!(
        "{}/oauth/callback?code={code}&state={}x",
        product.web, state
    );
    let reply = admin.get(&tampered).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert!(product.teams.store.domain_token_owner().unwrap().is_none());
    let reply = admin.get(&back).await;
    assert_eq!(
        reply.status,
        StatusCode::SEE_OTHER,
        "the real one: {}",
        reply.body
    );
    let reply = admin.get(&back).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "used once only");
    product.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_pairs_and_unpairs_their_own_extension_only() {
    let product = start().await;
    let (mut bob, back) = product.user("bob@contoso.example").await;
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    let page = bob.get("/user").await;
    assert!(page.body.contains("Extension 201"), "{}", page.body);
    assert!(page.body.contains("indicator red"), "not paired yet");
    // the OAuth routes for somebody else's extension
    assert_eq!(
        bob.get("/oauth/pair/202").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        bob.post("/oauth/unpair/202", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    // the portal's pair: the session's extension, whatever the form says
    let csrf = bob.csrf("/user").await;
    let to_emulator = bob
        .post("/user/pair", &[("csrf", &csrf), ("extension", "202")])
        .await;
    assert_eq!(to_emulator.status, StatusCode::SEE_OTHER);
    let location = to_emulator.location.unwrap();
    assert!(
        location.contains("login_hint=bob%40contoso.example"),
        "{location}"
    );
    // signing in there as carol does not pair bob's extension with carol
    let reply = bob
        .through_emulator(&location, "emulator_user=carol@contoso.example")
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert!(
        product
            .teams
            .store
            .token_info(&TokenKey::user("201"))
            .unwrap()
            .is_none()
    );
    let to_emulator = bob.post("/user/pair", &[("csrf", &csrf)]).await;
    let reply = bob
        .through_emulator(
            &to_emulator.location.unwrap(),
            "emulator_user=bob@contoso.example",
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let me: serde_json::Value = serde_json::from_str(&bob.get("/api/me").await.body).unwrap();
    assert_eq!(me["paired"], true, "{me}");
    assert_eq!(me["extension"], "201");
    assert!(
        product
            .teams
            .store
            .token_info(&TokenKey::user("202"))
            .unwrap()
            .is_none(),
        "202 untouched"
    );
    // carol (202) cannot unpair bob
    let (mut carol, _) = product.user("carol@contoso.example").await;
    assert_eq!(
        carol.post("/oauth/unpair/201", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    let carol_csrf = carol.csrf("/user").await;
    let reply = carol.post("/user/unpair", &[("csrf", &carol_csrf)]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "carol unpairs herself");
    assert!(
        product
            .teams
            .store
            .token_info(&TokenKey::user("201"))
            .unwrap()
            .is_some(),
        "bob is still paired"
    );
    // bob unpairs: red again
    let reply = bob.post("/user/unpair", &[("csrf", &csrf)]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let me: serde_json::Value = serde_json::from_str(&bob.get("/api/me").await.body).unwrap();
    assert_eq!(me["paired"], false, "{me}");
    // an account that no extension's email names gets no session
    let (mut dave, back) = product.user("dave@contoso.example").await;
    assert_eq!(back.status, StatusCode::FORBIDDEN, "{}", back.body);
    assert!(back.body.contains("dave@contoso.example"));
    assert_eq!(dave.get("/api/me").await.status, StatusCode::UNAUTHORIZED);
    product.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_maps_extensions_by_hand_and_by_csv() {
    let product = start().await;
    let mut admin = product.admin().await;
    let csrf = admin.csrf("/admin/directory").await;
    let reply = admin
        .post(
            "/admin/directory",
            &[
                ("csrf", &csrf),
                ("extension", "203"),
                ("email", "dave@contoso.example"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let store = &product.teams.store;
    assert_eq!(
        store.extension("203").unwrap().unwrap().email.as_deref(),
        Some("dave@contoso.example")
    );
    // edit
    let page = admin.get("/admin/directory?edit=203").await;
    assert!(page.body.contains("Edit extension"));
    let reply = admin
        .post(
            "/admin/directory",
            &[
                ("csrf", &csrf),
                ("extension", "203"),
                ("email", "alice@contoso.example"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(
        store.extension("203").unwrap().unwrap().email.as_deref(),
        Some("alice@contoso.example")
    );
    // a bad row: nothing imported, the error shown with the text kept
    let bad = "extension,email\n204,dave@contoso.example\n205,not-an-email\n";
    let reply = admin
        .post("/admin/directory/import", &[("csrf", &csrf), ("csv", bad)])
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.body.contains("Nothing was imported"),
        "{}",
        reply.body
    );
    assert!(store.extension("204").unwrap().is_none());
    let good = "extension,email\n204,dave@contoso.example\n201,bob@contoso.example\n";
    let reply = admin
        .post("/admin/directory/import", &[("csrf", &csrf), ("csv", good)])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let page = admin.get(&reply.location.unwrap()).await;
    assert!(
        page.body
            .contains("Imported: 1 added, 0 updated, 1 unchanged."),
        "{}",
        page.body
    );
    // delete
    let reply = admin
        .post(
            "/admin/directory/delete",
            &[("csrf", &csrf), ("extension", "204")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(store.extension("204").unwrap().is_none());
    // with the domain token, the sync engine resolves the emails; the page shows whom to
    let teams_csrf = admin.csrf("/admin/teams").await;
    let to_emulator = admin
        .post("/admin/teams/token", &[("csrf", &teams_csrf)])
        .await;
    let reply = admin
        .through_emulator(
            &to_emulator.location.unwrap(),
            "emulator_user=alice@contoso.example",
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let deadline = std::time::Instant::now() + e2e_support::DEADLINE;
    loop {
        let page = admin.get("/admin/directory").await;
        if page.body.contains("Bob") && page.body.contains("Carol") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never resolved: {}",
            page.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = &product.env;
    product.stop().await;
}

#[test]
fn without_a_configured_hash_the_first_start_makes_a_password_and_keeps_it() {
    use presence_proxy::config::WebSettings;
    use presence_proxy::store::{EncryptionKey, Store};
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = EncryptionKey::generate().unwrap();
    let store = Store::open(dir.path().join("store.sqlite3"), key).unwrap();
    let mut web = WebSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        public_url: None,
        admin_password_hash: None,
        api_token_file: None,
        session_minutes: 720,
    };
    let first = presence_proxy::app::portal_options(&web, &store).unwrap();
    let stored = store.admin_password_hash().unwrap().expect("stored");
    assert_eq!(stored.expose(), first.admin_password_hash.expose());
    assert!(presence_proxy::web::check_password_hash(stored.expose()).is_ok());
    let again = presence_proxy::app::portal_options(&web, &store).unwrap();
    assert_eq!(
        again.admin_password_hash.expose(),
        first.admin_password_hash.expose(),
        "kept, not made again"
    );
    // a configured hash wins over the store's
    let configured = portal_support::admin_password_hash();
    web.admin_password_hash = Some(configured.clone());
    let options = presence_proxy::app::portal_options(&web, &store).unwrap();
    assert_eq!(options.admin_password_hash.expose(), &configured);
    // an API token file with an empty first line is an error naming the file
    std::fs::write(dir.path().join("token.txt"), "\n").unwrap();
    web.api_token_file = Some(dir.path().join("token.txt"));
    let err = presence_proxy::app::portal_options(&web, &store).unwrap_err();
    assert!(err.to_string().contains("token.txt"), "{err}");
}

#[test]
fn hash_password_prints_a_hash_the_portal_accepts() {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_presence-proxy"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret words\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(presence_proxy::web::verify_password(hash, "s3cret words"));
    assert!(!presence_proxy::web::verify_password(
        hash,
        "s3cret words\n"
    ));
}
