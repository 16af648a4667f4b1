//! The whole product from one configuration file, as `presence-proxy run` starts it:
//! the proxy, the store, the Graph client (against the emulator), the sync engine and
//! the web listener. A tenant admin signs in to the portal, grants consent and signs in
//! for the domain token; the user of extension 201 signs in with Microsoft and pairs it,
//! all through the portal and the emulator's sign-in;
//! then a SIPp call of 201 shows in Teams, and a Teams call of 201's user makes the
//! proxy refuse calls to 201.
//!
//! Needs `sipp` (Debian: sip-tester); `scripts/test.sh` installs it.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;
mod emulator_support;
mod portal_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e_support::{
    DEADLINE, SippRun, assert_success, fail, free_port, require_sipp, spawn_sipp, test_dir,
    wait_bound,
};
use emulator_support::{BOB, Env};
use portal_support::{ADMIN_PASSWORD, PortalClient, admin_password_hash};
use presence_proxy::app;
use presence_proxy::config::Config;
use presence_proxy::emulator::{CONTOSO_CLIENT_ID, CONTOSO_CLIENT_SECRET};
use presence_proxy::runtime;
use presence_proxy::store::TokenKind;
use presence_proxy::transport::Transport;
use reqwest::StatusCode;
use serde_json::json;

async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn app_session(env: &Env) -> Option<String> {
    let (_, body) = env
        .control_json(
            reqwest::Method::GET,
            &format!("/users/{BOB}/presence"),
            None,
        )
        .await;
    body["app_sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["app_id"] == CONTOSO_CLIENT_ID)
        .map(|s| format!("{}/{}", s["set"]["availability"], s["set"]["activity"]).replace('"', ""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_one_configuration_file_sign_ins_pairing_and_both_directions_work() {
    require_sipp();
    e2e_support::init_tracing();
    let env = emulator_support::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pbx_port = free_port();
    let toml = format!(
        r#"
[listen]
udp = ["127.0.0.1:5060"]

[pbx]
host = "127.0.0.1"
port = {pbx_port}
transport = "udp"

[phones]
allowed_networks = ["127.0.0.0/8"]

[graph]
tenant = "contoso.example"
client_id = "{CONTOSO_CLIENT_ID}"
client_secret = "{CONTOSO_CLIENT_SECRET}"
login_base = "{login}"
graph_base = "{graph}"

[web]
listen = "127.0.0.1:0"
admin_password_hash = "{hash}"

[store]
path = "state/store.sqlite3"

[sync]
pbx_to_teams = true
poll_interval_ms = 200

[directory]
"201" = "bob@contoso.example"
"#,
        login = env.emu.login_url(),
        graph = env.emu.graph_url(),
        hash = admin_password_hash(),
    );
    let file = dir.path().join("presence-proxy.toml");
    std::fs::write(&file, &toml).unwrap();
    let mut config = Config::load(&file).unwrap();
    assert_eq!(
        config.store.path,
        dir.path().join("state/store.sqlite3"),
        "store paths are relative to the file"
    );
    config.listen.udp = vec!["127.0.0.1:0".parse().unwrap()];
    let proxy = runtime::start(&config).await.unwrap();
    let teams = app::start_teams(&config, proxy.phone_events(), proxy.control())
        .await
        .unwrap()
        .expect("[graph] starts the Teams side");
    assert!(
        config.store.key_file.exists(),
        "the store key is created on first run"
    );
    let web = format!("http://{}", teams.web_addr.unwrap());
    let (status, _) = env
        .control_json(
            reqwest::Method::POST,
            "/app/redirect-uris",
            Some(json!({ "uri": format!("{web}/oauth/callback") })),
        )
        .await;
    assert!(status < 300);

    // the tenant admin, in the portal: Admin Grant, then the domain token
    let mut admin = PortalClient::new(&web);
    let signed_in = admin.admin_login(ADMIN_PASSWORD).await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    let csrf = admin.csrf("/admin/teams").await;
    let to_emulator = admin.post("/admin/teams/grant", &[("csrf", &csrf)]).await;
    assert_eq!(
        to_emulator.status,
        StatusCode::SEE_OTHER,
        "{}",
        to_emulator.body
    );
    let back = admin
        .through_emulator(&to_emulator.location.unwrap(), "emulator_decision=accept")
        .await;
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    assert_eq!(
        back.location.as_deref(),
        Some(&*format!("{web}/admin/teams"))
    );
    let to_emulator = admin.post("/admin/teams/token", &[("csrf", &csrf)]).await;
    let back = admin
        .through_emulator(
            &to_emulator.location.unwrap(),
            "emulator_user=alice@contoso.example",
        )
        .await;
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    let page = admin.get("/admin/teams").await;
    assert!(page.body.contains("alice@contoso.example"), "{}", page.body);
    // the user of 201 signs in with Microsoft and pairs
    let mut user = PortalClient::new(&web);
    let to_emulator = user.get("/user/sign-in").await;
    assert_eq!(
        to_emulator.status,
        StatusCode::SEE_OTHER,
        "{}",
        to_emulator.body
    );
    let back = user
        .through_emulator(
            &to_emulator.location.unwrap(),
            "emulator_user=bob@contoso.example",
        )
        .await;
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    let csrf = user.csrf("/user").await;
    let to_emulator = user.post("/user/pair", &[("csrf", &csrf)]).await;
    assert_eq!(
        to_emulator.status,
        StatusCode::SEE_OTHER,
        "{}",
        to_emulator.body
    );
    let back = user
        .through_emulator(
            &to_emulator.location.unwrap(),
            "emulator_user=bob@contoso.example",
        )
        .await;
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    let page = user.get("/user").await;
    assert!(
        page.body.contains("indicator green"),
        "the indicator is green: {}",
        page.body
    );
    let kinds: Vec<TokenKind> = teams
        .store
        .list_tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.key.kind)
        .collect();
    assert!(kinds.contains(&TokenKind::Domain) && kinds.contains(&TokenKind::User));

    // PBX → Teams: an external call of 201
    let mut logs = test_dir("presence-e2e-app-");
    let mut pbx = spawn_sipp(
        logs.path(),
        &SippRun {
            name: "pbx",
            scenario: "pbx_call.xml",
            port: pbx_port,
            remote: None,
            send_to: None,
            extra: &[],
        },
    );
    if let Err(e) = wait_bound(&mut pbx, Transport::Udp, pbx_port).await {
        fail(&mut logs, &e);
    }
    let pbx_addr: SocketAddr = ([127, 0, 0, 1], pbx_port).into();
    let mut phone = spawn_sipp(
        logs.path(),
        &SippRun {
            name: "phone",
            scenario: "phone_call_hold.xml",
            port: free_port(),
            remote: Some(pbx_addr),
            send_to: Some(proxy.local_addr(Transport::Udp).unwrap()),
            extra: &["-s", "004930123456", "-key", "caller", "201", "-d", "2000"],
        },
    );
    wait_for("Busy/InACall in Teams", || async {
        app_session(&env).await.as_deref() == Some("Busy/InACall")
    })
    .await;
    // the admin's status API shows the call
    let mut admin = admin;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = admin.get("/api/status").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let rows: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["extension"] == "201")
            .cloned()
            .unwrap();
        if row["call"] == "connected" {
            assert_eq!(row["paired"], true, "{row}");
            assert_eq!(row["pbx_to_teams"], true, "{row}");
            assert_eq!(row["email"], "bob@contoso.example", "{row}");
            break;
        }
        assert!(Instant::now() < deadline, "201 never connected: {row}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + DEADLINE;
    let phone_status = phone.wait_until(deadline).await;
    let pbx_status = pbx.wait_until(deadline).await;
    phone.stop();
    pbx.stop();
    assert_success("the phone's SIPp", phone_status, &mut logs);
    assert_success("the PBX's SIPp", pbx_status, &mut logs);
    wait_for("the session cleared", || async {
        app_session(&env).await.is_none()
    })
    .await;

    // Teams → PBX: bob sets DND in Teams, which makes 201 DND, read with the domain
    // token (a Teams call right after the proxy's own Busy/InACall would be taken for
    // its echo for `sync.echo_grace_seconds`)
    env.teams_client(BOB, "dnd").await;
    wait_for("201 Teams-busy", || async {
        teams.sync.teams_busy() == ["201"]
    })
    .await;
    let views = proxy.control().extensions().await.unwrap();
    let view = views.iter().find(|v| &*v.extension == "201").unwrap();
    assert!(view.teams_busy, "the proxy's observer knows it");
    teams.shutdown().await;
    proxy.shutdown().await;
}
