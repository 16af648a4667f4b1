//! The sync engine's status end to end: a SIPp phone calls out through the proxy, the
//! engine writes Teams presence to the Graph emulator, and `SyncHandle` shows what it
//! did (recent actions), what it saw of Teams (presences per extension) and how long
//! it took (sync lag); the Graph client counts its requests; the exposition renders
//! all of it.
//!
//! Extension 201 is bob@contoso.example, paired; alice signed in for the domain token
//! that reads presence. Every wait has a deadline and looks at its condition again
//! every few milliseconds. Needs `sipp` (Debian: sip-tester); `scripts/test.sh`
//! installs it.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;
mod emulator_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e_support::{
    DEADLINE, SippRun, assert_success, fail, free_port, require_sipp, spawn_sipp, start_proxy,
    test_dir, wait_bound,
};
use emulator_support::BOB;
use presence_proxy::config::SyncSettings;
use presence_proxy::graph::{DOMAIN_SCOPES, USER_SCOPES};
use presence_proxy::metrics::render;
use presence_proxy::store::{EncryptionKey, Store, TokenKey};
use presence_proxy::sync::{SyncAction, SyncActionKind, SyncEngine, SyncHandle, SyncOptions};
use presence_proxy::transport::Transport;

const EXT: &str = "201";
const TENANT: &str = "contoso.example";
/// How often the test looks again.
const LOOK: Duration = Duration::from_millis(5);
/// How long one wait may take.
const WITHIN: Duration = Duration::from_secs(10);

fn options() -> SyncOptions {
    let settings = SyncSettings {
        poll_interval: Duration::from_millis(200),
        ..SyncSettings::default()
    };
    let mut options = SyncOptions::new(settings);
    options.reload_interval = Duration::from_millis(500);
    options
}

async fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(start.elapsed() < WITHIN, "timed out waiting for {what}");
        tokio::time::sleep(LOOK).await;
    }
}

/// The first action of `kind` for 201 whose detail contains `text`.
fn action(sync: &SyncHandle, kind: SyncActionKind, text: &str) -> Option<SyncAction> {
    sync.recent_actions()
        .into_iter()
        .find(|a| a.extension == EXT && a.kind == kind && a.detail.contains(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_shows_in_recent_actions_teams_presence_and_sync_lag() {
    require_sipp();
    let env = emulator_support::start().await;
    let store_dir = tempfile::tempdir().unwrap();
    let (key, _) = EncryptionKey::generate().unwrap();
    let store = Store::open(store_dir.path().join("store.sqlite3"), key).unwrap();
    store
        .upsert_extension(EXT, Some("bob@contoso.example"))
        .unwrap();
    store.set_pbx_to_teams_enabled(true).unwrap();
    env.store_token(
        &store,
        &TokenKey::user(EXT),
        "bob@contoso.example",
        USER_SCOPES,
    )
    .await;
    env.store_token(
        &store,
        &TokenKey::domain(TENANT),
        "alice@contoso.example",
        DOMAIN_SCOPES,
    )
    .await;
    let graph = env.graph_client();
    let pbx_port = free_port();
    let proxy = start_proxy(pbx_port, None).await;
    let sync = SyncEngine::start(
        options(),
        store.clone(),
        graph.clone(),
        proxy.phone_events(),
        proxy.control(),
        None,
    );

    // the email resolves to bob, and the first poll shows him available
    let resolved = wait_for("201's email resolved", || {
        action(&sync, SyncActionKind::EmailResolved, "bob@contoso.example")
    })
    .await;
    assert!(resolved.detail.contains(BOB), "{}", resolved.detail);
    let idle = wait_for("bob's presence", || sync.teams_presences().remove(EXT)).await;
    assert_eq!(idle.user_id, BOB);
    assert!(idle.seen_at >= idle.since);
    assert_eq!(sync.metrics().lag.count(), 0, "no write yet, no lag");

    // an external call of 201: setPresence Busy/InACall sent, confirmed, with a lag
    let mut dir = test_dir("presence-sync-status-");
    let mut pbx = spawn_sipp(
        dir.path(),
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
        fail(&mut dir, &e);
    }
    let pbx_addr: SocketAddr = ([127, 0, 0, 1], pbx_port).into();
    let mut phone = spawn_sipp(
        dir.path(),
        &SippRun {
            name: "phone",
            scenario: "phone_call_hold.xml",
            port: free_port(),
            remote: Some(pbx_addr),
            send_to: Some(proxy.udp),
            extra: &["-s", "004930123456", "-key", "caller", EXT, "-d", "1500"],
        },
    );
    let sent = wait_for("setPresence sent", || {
        action(&sync, SyncActionKind::WriteSent, "setPresence Busy/InACall")
    })
    .await;
    let confirmed = wait_for("setPresence confirmed", || {
        action(
            &sync,
            SyncActionKind::WriteConfirmed,
            "setPresence Busy/InACall",
        )
    })
    .await;
    assert!(confirmed.at >= sent.at);
    assert!(
        confirmed.detail.contains("after the phone event"),
        "{}",
        confirmed.detail
    );
    let metrics = sync.metrics();
    assert_eq!(metrics.lag.count(), 1, "{metrics:?}");
    let lag = metrics.last_lag.expect("a lag sample");
    assert!(lag < Duration::from_secs(5), "{lag:?}");
    assert!(metrics.writes_ok >= 1);
    assert_eq!(metrics.writes_failed, 0);
    // the poll reads the proxy's own session back: 201's Teams presence is in a call
    let in_call = wait_for("bob Busy/InACall", || {
        sync.teams_presences()
            .remove(EXT)
            .filter(|p| p.availability == "Busy" && p.activity == "InACall")
    })
    .await;
    assert_eq!(in_call.user_id, BOB);
    assert!(in_call.since >= idle.since);

    // the call ends: clearPresence confirmed, a second lag sample
    wait_for("clearPresence confirmed", || {
        action(&sync, SyncActionKind::WriteConfirmed, "clearPresence")
    })
    .await;
    assert_eq!(sync.metrics().lag.count(), 2);
    let deadline = Instant::now() + DEADLINE;
    let phone_status = phone.wait_until(deadline).await;
    let pbx_status = pbx.wait_until(deadline).await;
    phone.stop();
    pbx.stop();
    assert_success("the phone's SIPp", phone_status, &mut dir);
    assert_success("the PBX's SIPp", pbx_status, &mut dir);
    assert!(
        action(&sync, SyncActionKind::TeamsBusyStarted, "").is_none(),
        "the proxy's own session is no Teams call"
    );

    // DND set in Teams makes 201 DND, and clearing it gives it back (a Teams call this
    // soon after 201's own would be taken for the echo of it, sync.echo_grace)
    env.teams_client(BOB, "dnd").await;
    let started = wait_for("Teams-busy started", || {
        action(&sync, SyncActionKind::TeamsBusyStarted, "")
    })
    .await;
    assert!(
        started.detail.contains("DoNotDisturb/DoNotDisturb"),
        "{}",
        started.detail
    );
    assert_eq!(sync.metrics().teams_busy, 1);
    env.teams_client(BOB, "available").await;
    wait_for("Teams-busy ended", || {
        action(&sync, SyncActionKind::TeamsBusyEnded, "")
    })
    .await;
    assert_eq!(sync.metrics().teams_busy, 0);

    // newest last, and serialisable for the status API
    let actions = sync.recent_actions();
    for a in &actions {
        println!("{:?} {} {:?}: {}", a.at, a.extension, a.kind, a.detail);
    }
    assert!(actions.windows(2).all(|w| w[0].at <= w[1].at));
    let json = serde_json::to_value(&actions).unwrap();
    assert_eq!(json[0]["kind"], "email_resolved");
    assert!(json[0]["at"].as_str().unwrap().ends_with('Z'));
    let presences = serde_json::to_value(sync.teams_presences()).unwrap();
    assert_eq!(presences[EXT]["availability"], "Available");

    // the Graph client counted its requests, and everything renders
    let graph_metrics = graph.metrics();
    let count = |endpoint: &str, status: &str| {
        graph_metrics
            .requests
            .iter()
            .find(|r| r.endpoint == endpoint && r.status == status)
            .map_or(0, |r| r.count)
    };
    assert_eq!(count("setPresence", "200"), 1, "{graph_metrics:?}");
    assert_eq!(count("clearPresence", "200"), 1, "{graph_metrics:?}");
    assert!(
        count("getPresencesByUserId", "200") >= 1,
        "{graph_metrics:?}"
    );
    assert!(count("users", "200") >= 1, "{graph_metrics:?}");
    assert_eq!(graph_metrics.throttled, 0);
    let proxy_metrics = proxy.control().metrics().await.unwrap();
    assert_eq!(proxy_metrics.calls.external, 1);
    let text = render(
        Some(&proxy_metrics),
        Some(&graph_metrics),
        Some(&sync.metrics()),
    );
    for line in [
        r#"presence_proxy_graph_requests_total{endpoint="setPresence",status="200"} 1"#,
        r#"presence_proxy_sync_lag_seconds_count 2"#,
        r#"presence_proxy_sync_lag_seconds_bucket{le="+Inf"} 2"#,
        r#"presence_proxy_calls_total{class="external"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }

    sync.shutdown().await;
    proxy.shutdown().await;
}
