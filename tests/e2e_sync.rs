//! The sync engine end to end on loopback: SIPp phones → the proxy → a SIPp PBX, the
//! sync engine with a real SQLite store, and the Graph emulator as Microsoft.
//!
//! Extension 201 is bob@contoso.example, paired (his own delegated token in the
//! store); alice signed in for the domain token that reads presence. Every wait has a
//! deadline and looks at its condition again every few milliseconds.
//!
//! Needs `sipp` (Debian: sip-tester); `scripts/test.sh` installs it.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;
mod emulator_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e_support::{
    DEADLINE, Process, SippRun, assert_success, fail, free_port, require_sipp, spawn_sipp,
    start_proxy, test_dir, wait_bound,
};
use emulator_support::{BOB, Env};
use presence_proxy::config::SyncSettings;
use presence_proxy::emulator::CONTOSO_CLIENT_ID;
use presence_proxy::graph::{DOMAIN_SCOPES, GraphClient, USER_SCOPES};
use presence_proxy::store::{EncryptionKey, Store, TokenKey};
use presence_proxy::sync::{SyncEngine, SyncHandle, SyncOptions};
use presence_proxy::transport::Transport;
use serde_json::{Value, json};

const EXT: &str = "201";
const TENANT: &str = "contoso.example";
/// How often the tests look again.
const LOOK: Duration = Duration::from_millis(5);

/// Everything but the SIP peers.
struct World {
    env: Env,
    store: Store,
    graph: GraphClient,
    proxy: e2e_support::Proxy,
    sync: SyncHandle,
    pbx_port: u16,
    _store_dir: tempfile::TempDir,
}

fn options() -> SyncOptions {
    let mut settings = SyncSettings {
        poll_interval: Duration::from_millis(200),
        ..SyncSettings::default()
    };
    settings.rules.retry_max = Duration::from_secs(2);
    let mut options = SyncOptions::new(settings);
    options.reload_interval = Duration::from_millis(500);
    options
}

async fn world() -> World {
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
    let world = start_world(env, store, graph, free_port(), store_dir).await;
    // the email resolved to bob and the first poll came back
    world
        .wait_for("201 resolved to bob", Duration::from_secs(10), || async {
            world
                .store
                .extension(EXT)
                .unwrap()
                .and_then(|e| e.graph_user_id)
                .as_deref()
                == Some(BOB)
        })
        .await;
    world
}

/// A proxy relaying to a PBX on `pbx_port` and a sync engine over `store`.
async fn start_world(
    env: Env,
    store: Store,
    graph: GraphClient,
    pbx_port: u16,
    store_dir: tempfile::TempDir,
) -> World {
    let proxy = start_proxy(pbx_port, None).await;
    let sync = SyncEngine::start(
        options(),
        store.clone(),
        graph.clone(),
        proxy.phone_events(),
        proxy.control(),
        None,
    );
    World {
        env,
        store,
        graph,
        proxy,
        sync,
        pbx_port,
        _store_dir: store_dir,
    }
}

impl World {
    async fn wait_for<F, Fut>(&self, what: &str, within: Duration, mut condition: F) -> Duration
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            if condition().await {
                return start.elapsed();
            }
            assert!(start.elapsed() < within, "timed out waiting for {what}");
            tokio::time::sleep(LOOK).await;
        }
    }

    /// bob's presence as the emulator holds it: aggregate and sessions.
    async fn bob(&self) -> Value {
        let (status, body) = self
            .env
            .control_json(
                reqwest::Method::GET,
                &format!("/users/{BOB}/presence"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The proxy's app session on bob, as (availability, activity), if any.
    async fn app_session(&self) -> Option<(String, String)> {
        env_session(&self.env).await
    }

    async fn writes(&self) -> Vec<String> {
        let (_, body) = self
            .env
            .control_json(reqwest::Method::GET, "/requests", None)
            .await;
        body["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_owned())
            .filter(|p| p.contains("/presence/set") || p.contains("/presence/clear"))
            .collect()
    }

    async fn clear_log(&self) {
        self.env
            .control_json(reqwest::Method::DELETE, "/requests", None)
            .await;
    }

    async fn faults(&self, body: Option<Value>) {
        let method = if body.is_some() {
            reqwest::Method::PUT
        } else {
            reqwest::Method::DELETE
        };
        let (status, body) = self.env.control_json(method, "/faults", body).await;
        assert!(status < 300, "{body}");
    }

    fn teams_busy(&self) -> bool {
        self.sync.teams_busy().iter().any(|e| e == EXT)
    }

    async fn stop(self) {
        self.sync.shutdown().await;
        self.proxy.shutdown().await;
    }
}

/// A phone and a PBX SIPp running; [`Peers::finish`] waits for both.
struct Peers {
    dir: tempfile::TempDir,
    phone: Process,
    pbx: Process,
}

async fn start_peers(
    world: &World,
    pbx_scenario: &str,
    phone_scenario: &str,
    phone_extra: &[&str],
) -> Peers {
    let mut dir = test_dir("presence-e2e-sync-");
    let mut pbx = spawn_sipp(
        dir.path(),
        &SippRun {
            name: "pbx",
            scenario: pbx_scenario,
            port: world.pbx_port,
            remote: None,
            send_to: None,
            extra: &[],
        },
    );
    if let Err(e) = wait_bound(&mut pbx, Transport::Udp, world.pbx_port).await {
        fail(&mut dir, &e);
    }
    let pbx_addr: SocketAddr = ([127, 0, 0, 1], world.pbx_port).into();
    let phone = spawn_sipp(
        dir.path(),
        &SippRun {
            name: "phone",
            scenario: phone_scenario,
            port: free_port(),
            remote: Some(pbx_addr),
            send_to: Some(world.proxy.udp),
            extra: phone_extra,
        },
    );
    Peers { dir, phone, pbx }
}

impl Peers {
    async fn finish(mut self) {
        let deadline = Instant::now() + DEADLINE;
        let phone = self.phone.wait_until(deadline).await;
        let pbx_deadline = match phone {
            Some(s) if s.success() => deadline,
            _ => Instant::now() + Duration::from_secs(2),
        };
        let pbx = self.pbx.wait_until(pbx_deadline).await;
        self.phone.stop();
        self.pbx.stop();
        assert_success("the phone's SIPp", phone, &mut self.dir);
        assert_success("the PBX's SIPp", pbx, &mut self.dir);
    }

    fn kill(mut self) {
        self.phone.stop();
        self.pbx.stop();
    }
}

/// An external call of 201 held for `hold_ms`.
async fn external_call(world: &World, hold_ms: u64) -> Peers {
    let hold = hold_ms.to_string();
    start_peers(
        world,
        "pbx_call.xml",
        "phone_call_hold.xml",
        &["-s", "004930123456", "-key", "caller", EXT, "-d", &hold],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_call_shows_busy_in_a_call_in_teams_and_clears_when_it_ends() {
    let world = world().await;
    let mut events = world.proxy.phone_events();
    let peers = external_call(&world, 1500).await;
    // ExternalCallStarted goes out as the 180 is relayed
    let started = tokio::time::timeout(DEADLINE, events.recv())
        .await
        .unwrap()
        .unwrap();
    let ringing_at = Instant::now();
    assert_eq!(started.to_string(), "ExternalCallStarted 201 ringing");
    world
        .wait_for("Busy/InACall", Duration::from_secs(5), || async {
            world.app_session().await == Some(("Busy".into(), "InACall".into()))
        })
        .await;
    let to_busy = ringing_at.elapsed();
    // the proxy's own session, read back by the 200 ms poll, is an echo
    let mut ended_at = None;
    while ended_at.is_none() {
        assert!(!world.teams_busy(), "the proxy's own session made 201 DND");
        if let Ok(Ok(event)) = tokio::time::timeout(LOOK, events.recv()).await {
            if event.to_string() == "ExternalCallEnded 201" {
                ended_at = Some(Instant::now());
            }
        }
    }
    world
        .wait_for("the session cleared", Duration::from_secs(5), || async {
            world.app_session().await.is_none()
        })
        .await;
    let to_clear = ended_at.unwrap().elapsed();
    peers.finish().await;
    println!("ringing → Busy/InACall seen: {to_busy:?}; BYE → cleared seen: {to_clear:?}");
    assert!(to_busy < Duration::from_millis(100), "{to_busy:?}");
    assert!(to_clear < Duration::from_millis(100), "{to_clear:?}");
    assert_eq!(
        world.writes().await.len(),
        2,
        "one setPresence (ringing and answered coalesce) and one clearPresence"
    );
    // later calls to 201 are not refused: the echo never made it DND
    tokio::time::sleep(Duration::from_millis(600)).await; // three more polls of the echo-free state
    assert!(!world.teams_busy());
    start_peers(
        &world,
        "pbx_register_call.xml",
        "phone_register_answer.xml",
        &[],
    )
    .await
    .finish()
    .await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_calls_and_star_codes_never_touch_teams_but_dnd_codes_do() {
    let world = world().await;
    for number in ["202", "*97", "%2A97"] {
        start_peers(
            &world,
            "pbx_call.xml",
            "phone_call_hold.xml",
            &["-s", number, "-key", "caller", EXT, "-d", "300"],
        )
        .await
        .finish()
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // beyond the coalescing window
    assert_eq!(world.writes().await, Vec::<String>::new());

    // *78 accepted by the PBX: DND on, shown as DoNotDisturb/Presenting; *79 clears it
    start_peers(
        &world,
        "pbx_call.xml",
        "phone_call_hold.xml",
        &["-s", "*78", "-key", "caller", EXT, "-d", "0"],
    )
    .await
    .finish()
    .await;
    world
        .wait_for("Teams DND", Duration::from_secs(5), || async {
            world.app_session().await == Some(("DoNotDisturb".into(), "Presenting".into()))
        })
        .await;
    assert_eq!(
        world.bob().await["aggregate"]["availability"],
        "DoNotDisturb"
    );
    assert!(!world.teams_busy(), "the proxy's own DND is no Teams DND");
    start_peers(
        &world,
        "pbx_call.xml",
        "phone_call_hold.xml",
        &["-s", "*79", "-key", "caller", EXT, "-d", "0"],
    )
    .await
    .finish()
    .await;
    world
        .wait_for("DND cleared", Duration::from_secs(5), || async {
            world.app_session().await.is_none()
        })
        .await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teams_call_makes_the_extension_refuse_calls_until_it_ends() {
    let world = world().await;
    world.env.teams_client(BOB, "in_call").await;
    world
        .wait_for("201 Teams-busy", Duration::from_secs(5), || async {
            world.teams_busy()
        })
        .await;
    // the PBX calls 201: the proxy answers 486 and the phone never sees the INVITE
    start_peers(
        &world,
        "pbx_register_call_refused.xml",
        "phone_register_idle.xml",
        &["-d", "1000"],
    )
    .await
    .finish()
    .await;
    world.env.teams_client(BOB, "available").await;
    world
        .wait_for(
            "201 no longer Teams-busy",
            Duration::from_secs(5),
            || async { !world.teams_busy() },
        )
        .await;
    assert_eq!(
        world.writes().await,
        Vec::<String>::new(),
        "Teams → PBX writes nothing to Teams, and a refused call is no call"
    );
    start_peers(
        &world,
        "pbx_register_call.xml",
        "phone_register_answer.xml",
        &[],
    )
    .await
    .finish()
    .await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_ten_seconds_of_503_during_a_call_the_final_state_is_right() {
    let world = world().await;
    world
        .faults(Some(
            json!({ "fail_next": { "count": 100000, "status": 503 } }),
        ))
        .await;
    let outage = Instant::now();
    // a call that starts and ends inside the outage...
    external_call(&world, 500).await.finish().await;
    // ...and one still going when Graph answers again
    let long = external_call(&world, 15000).await;
    let mut events = world.proxy.phone_events();
    loop {
        let event = tokio::time::timeout(DEADLINE, events.recv())
            .await
            .unwrap()
            .unwrap();
        if event.to_string() == "ExternalCallStarted 201 connected" {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed())).await; // the outage's length is the test's input
    assert!(world.app_session().await.is_none(), "nothing got through");
    world.faults(None).await;
    world
        .wait_for(
            "Busy/InACall after recovery",
            Duration::from_secs(10),
            || async { world.app_session().await == Some(("Busy".into(), "InACall".into())) },
        )
        .await;
    long.kill();
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_mid_call_clears_the_session_when_it_starts_again() {
    let world = world().await;
    let peers = external_call(&world, 20000).await;
    world
        .wait_for("Busy/InACall", Duration::from_secs(5), || async {
            world.app_session().await == Some(("Busy".into(), "InACall".into()))
        })
        .await;
    // a crash: every task stops at once, nothing is cleaned up
    let World {
        env,
        store,
        graph,
        proxy,
        sync,
        pbx_port,
        _store_dir,
    } = world;
    sync.shutdown().await;
    proxy.shutdown().await;
    peers.kill();
    assert_eq!(
        env_session(&env).await,
        Some(("Busy".into(), "InACall".into())),
        "the session outlives the proxy"
    );
    let world = start_world(env, store, graph, pbx_port, _store_dir).await;
    world
        .wait_for(
            "the session cleared after the restart",
            Duration::from_secs(5),
            || async { world.app_session().await.is_none() },
        )
        .await;
    world.stop().await;
}

/// The proxy's app session on bob, as (availability, activity), if any.
async fn env_session(env: &Env) -> Option<(String, String)> {
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
        .map(|s| {
            (
                s["set"]["availability"].as_str().unwrap().to_owned(),
                s["set"]["activity"].as_str().unwrap().to_owned(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_that_takes_ten_seconds_does_not_slow_calls_down() {
    let world = world().await;
    let timed_call = || async {
        let started = Instant::now();
        external_call(&world, 200).await.finish().await;
        started.elapsed()
    };
    let normal = timed_call().await;
    world.faults(Some(json!({ "latency_ms": 10000 }))).await;
    world.clear_log().await;
    let slow_graph = timed_call().await;
    println!(
        "a call through the proxy: {normal:?} with Graph answering at once, {slow_graph:?} with Graph taking 10 s"
    );
    // SIPp's process start dominates both; a call that waited on Graph would take 10 s
    assert!(
        slow_graph < normal + Duration::from_secs(1),
        "{slow_graph:?} vs {normal:?}"
    );
    world.faults(None).await;
    world.stop().await;
}

/// The engine with presence change notifications: the webhook on a loopback listener,
/// polling slowed to once an hour, so only notifications (and the catch-up poll after a
/// subscription is made) can tell it anything.
async fn world_with_notifications() -> World {
    use presence_proxy::graph::{NotificationReceiver, new_client_state, notification_routes};
    use presence_proxy::sync::NotificationSetup;
    let mut world = world().await;
    world.sync.shutdown().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/graph/notifications",
        listener.local_addr().unwrap()
    );
    let client_state = new_client_state().unwrap();
    let (receiver, notifications) = NotificationReceiver::new(&client_state, 64);
    tokio::spawn(async move {
        axum::serve(listener, notification_routes(receiver))
            .await
            .unwrap();
    });
    let mut options = options();
    options.settings.poll_interval = Duration::from_secs(3600);
    options.settings.catch_up_poll = Duration::from_secs(3600);
    world.sync = SyncEngine::start(
        options,
        world.store.clone(),
        world.graph.clone(),
        world.proxy.phone_events(),
        world.proxy.control(),
        Some(NotificationSetup {
            notification_url: url,
            client_state,
            notifications,
        }),
    );
    world
        .wait_for(
            "a presence subscription at Graph",
            Duration::from_secs(10),
            || async {
                let (_, body) = world
                    .env
                    .control_json(reqwest::Method::GET, "/subscriptions", None)
                    .await;
                body.to_string().contains(BOB)
            },
        )
        .await;
    world
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_notifications_drive_teams_busy_and_the_proxys_own_echo_is_ignored() {
    let world = world_with_notifications().await;
    world.env.teams_client(BOB, "dnd").await;
    let took = world
        .wait_for(
            "201 Teams-busy by notification",
            Duration::from_secs(5),
            || async { world.teams_busy() },
        )
        .await;
    println!("Teams DND → 201 DND by notification in {took:?} (polling is hourly)");
    world.env.teams_client(BOB, "available").await;
    world
        .wait_for("201 free again", Duration::from_secs(5), || async {
            !world.teams_busy()
        })
        .await;
    // the proxy's own Busy/InACall comes back as a notification: an echo
    let mut events = world.proxy.phone_events();
    let peers = external_call(&world, 1500).await;
    world
        .wait_for("Busy/InACall", Duration::from_secs(5), || async {
            world.app_session().await == Some(("Busy".into(), "InACall".into()))
        })
        .await;
    loop {
        assert!(!world.teams_busy(), "the proxy's own session made 201 DND");
        if let Ok(Ok(event)) = tokio::time::timeout(LOOK, events.recv()).await {
            if event.to_string() == "ExternalCallEnded 201" {
                break;
            }
        }
    }
    peers.finish().await;
    world
        .wait_for("the session cleared", Duration::from_secs(5), || async {
            world.app_session().await.is_none()
        })
        .await;
    assert!(!world.teams_busy());
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_with_no_teams_user_is_reported_not_retried() {
    let world = world().await;
    world
        .store
        .upsert_extension("202", Some("nobody@contoso.example"))
        .unwrap();
    world.sync.reload();
    world
        .wait_for("202 reported", Duration::from_secs(10), || async {
            world
                .store
                .extension("202")
                .unwrap()
                .and_then(|e| e.last_error)
                .is_some()
        })
        .await;
    let error = world
        .store
        .extension("202")
        .unwrap()
        .unwrap()
        .last_error
        .unwrap();
    assert!(error.contains("nobody@contoso.example"), "{error}");
    let lookups = || async {
        let (_, body) = world
            .env
            .control_json(reqwest::Method::GET, "/requests", None)
            .await;
        body["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["path"].as_str().unwrap().contains("nobody"))
            .count()
    };
    let first = lookups().await;
    assert!(first >= 1);
    // several reloads later (every 500 ms here), no new lookup
    for _ in 0..4 {
        world.sync.reload();
        tokio::time::sleep(Duration::from_millis(500)).await; // reload rounds to let pass
    }
    assert_eq!(lookups().await, first, "looked up again");
    world.stop().await;
}

/// Waits until `path` exists; returns when it appeared, relative to `since`. On a
/// timeout the SIPp logs are printed and kept.
async fn wait_for_file(
    peers: &mut Peers,
    path: &std::path::Path,
    since: Instant,
    what: &str,
) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() >= deadline {
            peers.phone.stop();
            peers.pbx.stop();
            fail(&mut peers.dir, &format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(LOOK).await;
    }
    since.elapsed()
}

/// Issue 7 end to end: a SIPp phone watches 201 through the proxy; 201's user goes
/// busy in Teams (the emulator), and the phone's lamp follows inside its own
/// subscription, while the PBX's NOTIFYs keep flowing and are answered throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blf_lamp_shows_a_teams_call_within_a_second_and_clears() {
    let world = world().await;
    let flags = tempfile::tempdir().unwrap();
    let ready = flags.path().join("ready");
    let busy = flags.path().join("busy");
    let idle = flags.path().join("idle");
    let (ready_s, busy_s, idle_s) = (
        ready.display().to_string(),
        busy.display().to_string(),
        idle.display().to_string(),
    );
    let mut peers = start_peers(
        &world,
        "pbx_subscribe_notify_teams.xml",
        "phone_subscribe_teams.xml",
        &[
            "-s",
            EXT,
            "-key",
            "ready_flag",
            &ready_s,
            "-key",
            "busy_flag",
            &busy_s,
            "-key",
            "idle_flag",
            &idle_s,
        ],
    )
    .await;
    wait_for_file(
        &mut peers,
        &ready,
        Instant::now(),
        "the PBX's first NOTIFY at the phone",
    )
    .await;
    let flipped = Instant::now();
    world.env.teams_client(BOB, "in_call").await;
    let to_lamp = wait_for_file(
        &mut peers,
        &busy,
        flipped,
        "the Teams-busy NOTIFY at the phone",
    )
    .await;
    let flipped_back = Instant::now();
    world.env.teams_client(BOB, "available").await;
    let to_idle = wait_for_file(
        &mut peers,
        &idle,
        flipped_back,
        "the idle NOTIFY at the phone",
    )
    .await;
    peers.finish().await;
    println!("Teams busy → lamp: {to_lamp:?}; Teams available → lamp off: {to_idle:?}");
    assert!(to_lamp < Duration::from_secs(1), "{to_lamp:?}");
    world.stop().await;
}
