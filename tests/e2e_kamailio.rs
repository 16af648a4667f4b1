//! End to end with a real registrar: Kamailio 5.6 plays the PBX behind the proxy
//! (`tests/kamailio/registrar.cfg`: in-memory location table, no authentication,
//! Record-Route on INVITE, lookup and stateful relay), and two SIPp phones sit in
//! front of the proxy.
//!
//! Phone A registers as 201 through the proxy, so Kamailio stores the proxy's contact
//! alias. Phone B calls sip:201@<kamailio> through the proxy; Kamailio looks 201 up
//! and sends the INVITE to the alias, that is back to the proxy, which restores phone
//! A's own Contact and delivers it. Phone A answers; phone B sends ACK and BYE along
//! the route set (proxy, Kamailio, proxy) and phone A answers the BYE. Both SIPp runs
//! must exit 0; phone A then unregisters. It is played twice: phone A on UDP, and
//! phone A on TCP (Kamailio, like the configured PBX transport, is UDP only).
//!
//! Needs `sipp` (Debian: sip-tester) and `kamailio`; `scripts/test.sh` installs both.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

mod e2e_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e_support::{
    DEADLINE, SippRun, assert_success, fail, free_port, require_sipp, spawn_kamailio, spawn_sipp,
    start_proxy, test_dir, wait_bound,
};
use presence_proxy::transport::Transport;

/// Writes the registrar configuration for `port` into `dir`.
fn write_config(dir: &Path, port: u16) -> PathBuf {
    let template = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("kamailio")
        .join("registrar.cfg");
    let text = std::fs::read_to_string(&template).expect("tests/kamailio/registrar.cfg");
    let modules = e2e_support::kamailio_modules(&["tm.so", "registrar.so"]);
    let text = text
        .replace("__SIP_PORT__", &port.to_string())
        .replace("__MODULES_DIR__", &format!("{}/", modules.display()));
    let path = dir.join("registrar.cfg");
    std::fs::write(&path, text).expect("write the Kamailio configuration");
    path
}

/// Waits for `flag` to exist, or `process` to exit, or the deadline.
async fn wait_for_file(
    flag: &Path,
    process: &mut e2e_support::Process,
    deadline: Instant,
) -> Result<(), String> {
    loop {
        if flag.exists() {
            return Ok(());
        }
        if let Some(status) = process.try_status() {
            return Err(format!(
                "{} exited ({status}) before registering",
                process.name
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!("{} did not register in time", process.name));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How phone A reaches the proxy (phone B and Kamailio are on UDP).
#[derive(Clone, Copy, PartialEq, Eq)]
enum PhoneA {
    Udp,
    Tcp,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_kamailio_reaches_the_phone_registered_through_the_proxy() {
    call_registered_phone(PhoneA::Udp).await;
}

/// Kamailio listens on UDP only, as `pbx.transport = "udp"` says the PBX does: the
/// alias it stores for a phone on TCP must still send it to the proxy over UDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_kamailio_reaches_a_phone_registered_over_tcp() {
    call_registered_phone(PhoneA::Tcp).await;
}

async fn call_registered_phone(transport: PhoneA) {
    require_sipp();
    let program = e2e_support::kamailio_program();
    let mut dir = test_dir("presence-e2e-kamailio-");

    let kamailio_port = free_port();
    let config = write_config(dir.path(), kamailio_port);
    let mut kamailio = spawn_kamailio(dir.path(), &program, &config);
    if let Err(e) = wait_bound(&mut kamailio, Transport::Udp, kamailio_port).await {
        fail(&mut dir, &e);
    }
    let proxy = start_proxy(kamailio_port, None).await;
    let kamailio_addr: SocketAddr = ([127, 0, 0, 1], kamailio_port).into();

    // phone A: registers, answers the call in its out-of-call scenario, unregisters
    let registered = dir.path().join("phone_a.registered");
    let ooc = e2e_support::scenario("phone_answer_ooc.xml");
    let registered_arg = registered.display().to_string();
    let mut extra = vec!["-oocsf", &ooc, "-key", "registered_flag", &registered_arg];
    let send_to = match transport {
        PhoneA::Udp => proxy.udp,
        PhoneA::Tcp => {
            extra.extend(["-t", "t1"]);
            proxy.tcp
        }
    };
    let mut phone_a = spawn_sipp(
        dir.path(),
        &SippRun {
            name: "phone_a",
            scenario: "phone_register_wait.xml",
            port: free_port(),
            remote: Some(kamailio_addr),
            send_to: Some(send_to),
            extra: &extra,
        },
    );
    let deadline = Instant::now() + DEADLINE;
    if let Err(e) = wait_for_file(&registered, &mut phone_a, deadline).await {
        phone_a.stop();
        kamailio.stop();
        fail(&mut dir, &e);
    }

    // phone B: calls 201 at Kamailio, through the proxy
    let mut phone_b = spawn_sipp(
        dir.path(),
        &SippRun {
            name: "phone_b",
            scenario: "phone_call.xml",
            port: free_port(),
            remote: Some(kamailio_addr),
            send_to: Some(proxy.udp),
            extra: &["-s", "201"],
        },
    );

    let b_status = phone_b.wait_until(deadline).await;
    // once the caller has failed, phone A waits for a call that will not come
    let a_deadline = match b_status {
        Some(s) if s.success() => deadline,
        _ => Instant::now() + Duration::from_secs(2),
    };
    let a_status = phone_a.wait_until(a_deadline).await;
    phone_b.stop();
    phone_a.stop();
    kamailio.stop();
    proxy.shutdown().await;
    assert_success("phone B's SIPp (the caller)", b_status, &mut dir);
    assert_success("phone A's SIPp (registered, called)", a_status, &mut dir);
}
