//! Issue 7 interop: BLF lamps through the proxy with a real notifier. Kamailio 5.6 with
//! presence + presence_dialoginfo (`tests/kamailio/presence.cfg`: subscriptions and
//! publications in memory, no database, a dummy terminated dialog while nothing is
//! published) is the PBX's presence server behind the proxy; the sync engine, with a
//! real SQLite store and the Graph emulator as Microsoft, runs beside the proxy as in
//! `e2e_sync.rs`.
//!
//! A SIPp phone (`phone_subscribe_kamailio.xml`) SUBSCRIBEs `Event: dialog` for 201
//! through the proxy to Kamailio and answers Kamailio's first NOTIFY. Then 201's Teams
//! user (bob) goes in a call in the emulator: within a second the phone gets the proxy's
//! NOTIFY with a `teams-201` dialog in state `confirmed`, inside Kamailio's subscription
//! dialog. Bob becomes available: the phone gets Kamailio's document again (terminated
//! dummy dialog, no Teams dialog). Then the PBX PUBLISHes a confirmed call of 201 to
//! Kamailio (SIPp, `pbx_publish_dialog.xml`): Kamailio's own NOTIFY reaches the phone
//! through the proxy. At last the phone ends the subscription (SUBSCRIBE Expires: 0 along
//! the route set) and gets Kamailio's terminated NOTIFY.
//!
//! Checked besides the scenario's own checks: Kamailio got a 200 for each of its three
//! NOTIFYs (and never heard of the proxy's); the CSeq and the dialog-info version the
//! phone sees only go up, though Kamailio and the proxy both number NOTIFYs.
//!
//! Needs `sipp` (Debian: sip-tester), `kamailio` and its presence modules (Debian:
//! kamailio-presence-modules); `scripts/test.sh` installs them.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;
mod emulator_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e_support::{
    DEADLINE, Process, SippRun, assert_success, fail, free_port, logged_messages, require_sipp,
    spawn_kamailio, spawn_sipp, start_proxy, test_dir, wait_bound,
};
use emulator_support::{BOB, Env};
use presence_proxy::config::SyncSettings;
use presence_proxy::graph::{DOMAIN_SCOPES, USER_SCOPES};
use presence_proxy::store::{EncryptionKey, Store, TokenKey};
use presence_proxy::sync::{SyncEngine, SyncHandle, SyncOptions};
use presence_proxy::transport::Transport;

const EXT: &str = "201";
const TENANT: &str = "contoso.example";
/// How often the test looks again.
const LOOK: Duration = Duration::from_millis(5);

// ----------------------------------------------------------------------- Kamailio

/// Writes the presence server's configuration for `port` into `dir`.
fn write_config(dir: &Path, port: u16) -> PathBuf {
    let template = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("kamailio")
        .join("presence.cfg");
    let text = std::fs::read_to_string(&template).expect("tests/kamailio/presence.cfg");
    let modules =
        e2e_support::kamailio_modules(&["tm.so", "presence.so", "presence_dialoginfo.so"]);
    let text = text
        .replace("__SIP_PORT__", &port.to_string())
        .replace("__MODULES_DIR__", &format!("{}/", modules.display()));
    let path = dir.join("presence.cfg");
    std::fs::write(&path, text).expect("write the Kamailio configuration");
    path
}

/// The codes Kamailio logged for the answers to its NOTIFYs (`notify-reply CODE`).
fn notify_replies(dir: &Path) -> Vec<String> {
    let log = std::fs::read_to_string(dir.join("kamailio.stderr")).unwrap_or_default();
    log.lines()
        .filter_map(|line| line.split("notify-reply ").nth(1))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

// -------------------------------------------------------------------- Teams side

fn options() -> SyncOptions {
    let mut settings = SyncSettings {
        poll_interval: Duration::from_millis(200),
        ..SyncSettings::default()
    };
    settings.rules.retry_max = Duration::from_secs(2);
    let mut options = SyncOptions::new(settings);
    // the links (and the directory's resolutions) are read again at every reload
    options.reload_interval = Duration::from_millis(200);
    options
}

/// The proxy relaying to Kamailio, the sync engine and the emulator: 201 is
/// bob@contoso.example, paired; alice signed in for the domain token.
struct World {
    env: Env,
    proxy: e2e_support::Proxy,
    sync: SyncHandle,
    _store_dir: tempfile::TempDir,
}

async fn world(pbx_port: u16) -> World {
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
    let proxy = start_proxy(pbx_port, None).await;
    let sync = SyncEngine::start(
        options(),
        store.clone(),
        graph,
        proxy.phone_events(),
        proxy.control(),
        None,
    );
    // the email resolved to bob and the first poll came back
    let deadline = Instant::now() + Duration::from_secs(10);
    while store
        .extension(EXT)
        .unwrap()
        .and_then(|e| e.graph_user_id)
        .as_deref()
        != Some(BOB)
    {
        assert!(Instant::now() < deadline, "201 never resolved to bob");
        tokio::time::sleep(LOOK).await;
    }
    World {
        env,
        proxy,
        sync,
        _store_dir: store_dir,
    }
}

impl World {
    async fn stop(self) {
        self.sync.shutdown().await;
        self.proxy.shutdown().await;
    }
}

// ---------------------------------------------------------------------- the test

/// Everything running as child processes, stopped (and reported) together.
struct Peers {
    dir: tempfile::TempDir,
    kamailio: Process,
    phone: Option<Process>,
    publisher: Option<Process>,
}

impl Peers {
    fn stop_all(&mut self) {
        for process in [self.phone.as_mut(), self.publisher.as_mut()]
            .into_iter()
            .flatten()
        {
            process.stop();
        }
        self.kamailio.stop();
    }

    /// Fails the test with every log, after stopping everything.
    fn fail(&mut self, what: &str) -> ! {
        self.stop_all();
        fail(&mut self.dir, what)
    }

    /// Waits until `path` exists (the phone's flag); returns when it appeared, relative to
    /// `since`. Fails if the phone exits first or at the deadline.
    async fn wait_for_flag(&mut self, path: &Path, since: Instant, what: &str) -> Duration {
        let mut deadline = Instant::now() + Duration::from_secs(10);
        let mut exited = None;
        loop {
            if path.exists() {
                return since.elapsed();
            }
            if exited.is_none() {
                exited = self.phone.as_mut().and_then(Process::try_status);
                if exited.is_some() {
                    // SIPp touches the flag in a child of its own and may be done with
                    // the rest of the scenario (and gone) before the flag is there
                    deadline = deadline.min(Instant::now() + Duration::from_secs(2));
                }
            }
            if let (Some(status), true) = (exited, Instant::now() >= deadline) {
                self.fail(&format!("the phone exited ({status}) waiting for {what}"));
            }
            if Instant::now() >= deadline {
                self.fail(&format!("timed out waiting for {what}"));
            }
            tokio::time::sleep(LOOK).await;
        }
    }
}

/// The value of header `name` (case-insensitive) in a logged message.
fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// The `version` attribute of a dialog-info body.
fn dialog_info_version(message: &str) -> Option<u64> {
    let root = message.split("<dialog-info").nth(1)?;
    let root = &root[..root.find('>')?];
    let value = root.split("version=").nth(1)?;
    let quote = value.chars().next()?;
    value[1..].split(quote).next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_presence_notifies_and_the_teams_dialog_reach_the_phone_through_the_proxy() {
    require_sipp();
    let program = e2e_support::kamailio_program();
    let dir = test_dir("presence-e2e-kamailio-blf-");
    let kamailio_port = free_port();
    let config = write_config(dir.path(), kamailio_port);
    let kamailio = spawn_kamailio(dir.path(), &program, &config);
    let mut peers = Peers {
        dir,
        kamailio,
        phone: None,
        publisher: None,
    };
    if let Err(e) = wait_bound(&mut peers.kamailio, Transport::Udp, kamailio_port).await {
        peers.fail(&e);
    }
    let world = world(kamailio_port).await;
    let kamailio_addr: SocketAddr = ([127, 0, 0, 1], kamailio_port).into();

    let flag = |name: &str| peers.dir.path().join(format!("{name}.flag"));
    let (ready, busy, idle, published) =
        (flag("ready"), flag("busy"), flag("idle"), flag("published"));
    let args: Vec<String> = [
        ("ready_flag", &ready),
        ("busy_flag", &busy),
        ("idle_flag", &idle),
        ("published_flag", &published),
    ]
    .iter()
    .flat_map(|(key, path)| {
        [
            "-key".to_owned(),
            (*key).to_owned(),
            path.display().to_string(),
        ]
    })
    .collect();
    let mut extra: Vec<&str> = vec!["-s", EXT];
    extra.extend(args.iter().map(String::as_str));
    peers.phone = Some(spawn_sipp(
        peers.dir.path(),
        &SippRun {
            name: "phone",
            scenario: "phone_subscribe_kamailio.xml",
            port: free_port(),
            remote: Some(kamailio_addr),
            send_to: Some(world.proxy.udp),
            extra: &extra,
        },
    ));
    peers
        .wait_for_flag(
            &ready,
            Instant::now(),
            "Kamailio's first NOTIFY at the phone",
        )
        .await;

    let flipped = Instant::now();
    world.env.teams_client(BOB, "in_call").await;
    let to_lamp = peers
        .wait_for_flag(&busy, flipped, "the Teams-busy NOTIFY at the phone")
        .await;
    let flipped_back = Instant::now();
    world.env.teams_client(BOB, "available").await;
    let to_idle = peers
        .wait_for_flag(&idle, flipped_back, "the idle NOTIFY at the phone")
        .await;

    // the PBX publishes a call of 201 to Kamailio, which notifies the phone
    let publishing = Instant::now();
    peers.publisher = Some(spawn_sipp(
        peers.dir.path(),
        &SippRun {
            name: "publisher",
            scenario: "pbx_publish_dialog.xml",
            port: free_port(),
            remote: Some(kamailio_addr),
            send_to: None,
            extra: &["-s", EXT],
        },
    ));
    let to_published = peers
        .wait_for_flag(
            &published,
            publishing,
            "Kamailio's NOTIFY of the PUBLISH at the phone",
        )
        .await;

    let deadline = Instant::now() + DEADLINE;
    let publisher = peers.publisher.as_mut().unwrap().wait_until(deadline).await;
    let phone = peers.phone.as_mut().unwrap().wait_until(deadline).await;
    // Kamailio logs the answer to its last NOTIFY once tm has it: give it a moment
    let replies_deadline = Instant::now() + Duration::from_secs(5);
    while notify_replies(peers.dir.path()).len() < 3 && Instant::now() < replies_deadline {
        tokio::time::sleep(LOOK).await;
    }
    peers.stop_all();
    world.stop().await;
    assert_success("the publisher's SIPp", publisher, &mut peers.dir);
    assert_success("the phone's SIPp", phone, &mut peers.dir);

    let replies = notify_replies(peers.dir.path());
    if replies != ["200", "200", "200"] {
        peers.fail(&format!(
            "Kamailio should have had 200 for its three NOTIFYs (first, PUBLISH, \
             un-SUBSCRIBE) and heard nothing of the proxy's; it logged {replies:?}"
        ));
    }

    // what the phone saw: CSeq and version only go up across both notifiers
    let notifies: Vec<String> = logged_messages(&peers.dir.path().join("phone_messages.log"))
        .into_iter()
        .filter(|(received, text)| *received && text.starts_with("NOTIFY "))
        .map(|(_, text)| text)
        .collect();
    if notifies.len() != 5 {
        peers.fail(&format!(
            "the phone should have received 5 NOTIFYs, not {}",
            notifies.len()
        ));
    }
    let cseqs: Vec<u64> = notifies
        .iter()
        .map(|n| {
            header(n, "CSeq")
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no CSeq in {n}"))
        })
        .collect();
    let versions: Vec<u64> = notifies
        .iter()
        .map(|n| dialog_info_version(n).unwrap_or_else(|| panic!("no version in {n}")))
        .collect();
    println!(
        "Teams busy → lamp: {to_lamp:?}; Teams available → lamp off: {to_idle:?}; \
         PUBLISH → phone: {to_published:?}; CSeqs {cseqs:?}, versions {versions:?}"
    );
    if !cseqs.windows(2).all(|w| w[0] < w[1]) || !versions.windows(2).all(|w| w[0] < w[1]) {
        peers.fail(&format!(
            "CSeq {cseqs:?} and version {versions:?} must only go up at the phone"
        ));
    }
    if to_lamp >= Duration::from_secs(1) {
        peers.fail(&format!("the lamp took {to_lamp:?} to show Teams-busy"));
    }
    // at most one NOTIFY a second per subscription: the lamp goes off a second after it
    // came on, give or take a poll
    if to_idle >= Duration::from_secs(3) {
        peers.fail(&format!("the lamp took {to_idle:?} to go off"));
    }
}
