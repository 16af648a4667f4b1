//! The whole product from one configuration file, as `presence-proxy run` starts it:
//! the proxy, the store, the Graph client (against the emulator), the sync engine and
//! the web listener. A tenant admin grants consent and signs in for the domain token,
//! a user pairs extension 201, all through the web listener and the emulator's sign-in;
//! then a SIPp call of 201 shows in Teams, and a Teams call of 201's user makes the
//! proxy refuse calls to 201.
//!
//! Needs `sipp` (Debian: sip-tester); `scripts/test.sh` installs it.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;
mod emulator_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e_support::{
    DEADLINE, SippRun, assert_success, fail, free_port, require_sipp, spawn_sipp, test_dir,
    wait_bound,
};
use emulator_support::{BOB, Env};
use presence_proxy::app;
use presence_proxy::config::Config;
use presence_proxy::emulator::{CONTOSO_CLIENT_ID, CONTOSO_CLIENT_SECRET};
use presence_proxy::runtime;
use presence_proxy::store::TokenKind;
use presence_proxy::transport::Transport;
use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::json;

fn location(response: &reqwest::Response) -> String {
    response.headers()[LOCATION].to_str().unwrap().to_owned()
}

/// A flow started at the web listener, through the emulator's sign-in (with its test
/// shortcut), back to the callback; returns the callback's status and page.
async fn round_trip(env: &Env, web: &str, start: &str, shortcut: &str) -> (StatusCode, String) {
    let response = env.http.get(format!("{web}{start}")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND, "{start}");
    let at_emulator = location(&response);
    let response = env
        .http
        .get(format!("{at_emulator}&{shortcut}"))
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
        back.starts_with(&format!("{web}/oauth/callback?")),
        "{back}"
    );
    let response = env.http.get(back).send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

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

    // the tenant admin: Admin Grant, then the domain token
    let (status, page) = round_trip(
        &env,
        &web,
        "/oauth/admin-consent",
        "emulator_decision=accept",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (status, page) = round_trip(
        &env,
        &web,
        "/oauth/domain",
        "emulator_user=alice@contoso.example",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    // the user of 201 pairs
    let (status, page) = round_trip(
        &env,
        &web,
        "/oauth/pair/201",
        "emulator_user=bob@contoso.example",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
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
