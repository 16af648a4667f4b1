//! End to end with real SIP peers: the proxy runs in this process on free loopback
//! ports, SIPp plays the phone on one side and the PBX on the other (scenarios in
//! `tests/sipp/`, each saying what it plays and checks). A test passes when both SIPp
//! runs exit 0, which they do only when every message they expected came, in order,
//! and every check in the scenario held; on failure the test prints every SIPp log
//! (errors, message traces, final screens).
//!
//! Needs `sipp` (Debian: sip-tester); `scripts/test.sh` installs it.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

mod e2e_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e_support::{
    DEADLINE, Process, SippRun, assert_success, count_received, fail, free_port, require_sipp,
    spawn_sipp, start_proxy, test_dir, wait_bound,
};
use presence_proxy::transport::Transport;

/// How the phone reaches the proxy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PhoneTransport {
    Udp,
    Tcp,
}

/// One phone/PBX pair of scenarios.
struct Call<'a> {
    pbx: &'a str,
    pbx_extra: &'a [&'a str],
    phone: &'a str,
    phone_extra: &'a [&'a str],
    transport: PhoneTransport,
}

/// What a call left behind.
struct Outcome {
    /// The SIPp logs.
    dir: tempfile::TempDir,
    /// The observer's events during the call, as text (`ExternalCallStarted 201 ringing`).
    phone_events: Vec<String>,
}

/// Runs the PBX scenario, then the phone scenario through the proxy, and asserts
/// both succeed. Returns the directory holding their logs and the observer's events.
async fn run_call(call: Call<'_>) -> Outcome {
    require_sipp();
    let mut dir = test_dir("presence-e2e-");
    let pbx_port = free_port();
    let proxy = start_proxy(pbx_port, None).await;
    let mut events = proxy.phone_events();

    let mut pbx = spawn_sipp(
        dir.path(),
        &SippRun {
            name: "pbx",
            scenario: call.pbx,
            port: pbx_port,
            remote: None,
            send_to: None,
            extra: call.pbx_extra,
        },
    );
    if let Err(e) = wait_bound(&mut pbx, Transport::Udp, pbx_port).await {
        fail(&mut dir, &e);
    }

    let (send_to, mut extra) = match call.transport {
        PhoneTransport::Udp => (proxy.udp, vec![]),
        PhoneTransport::Tcp => (proxy.tcp, vec!["-t", "t1"]),
    };
    extra.extend_from_slice(call.phone_extra);
    let pbx_addr: SocketAddr = ([127, 0, 0, 1], pbx_port).into();
    let mut phone = spawn_sipp(
        dir.path(),
        &SippRun {
            name: "phone",
            scenario: call.phone,
            port: free_port(),
            remote: Some(pbx_addr),
            send_to: Some(send_to),
            extra: &extra,
        },
    );

    let deadline = Instant::now() + DEADLINE;
    let phone_status = phone.wait_until(deadline).await;
    // once the phone has failed, the PBX only waits for messages that will not come:
    // give it a moment to log what it got, not its whole timeout
    let pbx_deadline = match phone_status {
        Some(s) if s.success() => deadline,
        _ => Instant::now() + Duration::from_secs(2),
    };
    let pbx_status = pbx.wait_until(pbx_deadline).await;
    stop_all(&mut [&mut phone, &mut pbx]);
    proxy.shutdown().await;
    assert_success("the phone's SIPp", phone_status, &mut dir);
    assert_success("the PBX's SIPp", pbx_status, &mut dir);
    // every event was sent before the message that caused it was forwarded, so before
    // either SIPp could finish
    let mut phone_events = Vec::new();
    while let Ok(event) = events.try_recv() {
        phone_events.push(event.to_string());
    }
    Outcome { dir, phone_events }
}

fn stop_all(processes: &mut [&mut Process]) {
    for p in processes {
        p.stop();
    }
}

fn log(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}_messages.log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_call_over_udp() {
    let outcome = run_call(Call {
        pbx: "pbx_call.xml",
        pbx_extra: &[],
        phone: "phone_call.xml",
        phone_extra: &["-s", "201"],
        transport: PhoneTransport::Udp,
    })
    .await;
    assert!(
        outcome.phone_events.is_empty(),
        "an internal call (200 calls 201) never shows: {:?}",
        outcome.phone_events
    );
}

/// The observer on real traffic: an external number dialled by a phone is ringing,
/// connected and ended for the phone's extension (200: it did not register, so its From).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_call_placed_through_the_proxy_is_observed() {
    let outcome = run_call(Call {
        pbx: "pbx_call.xml",
        pbx_extra: &[],
        phone: "phone_call.xml",
        phone_extra: &["-s", "004930123456"],
        transport: PhoneTransport::Udp,
    })
    .await;
    assert_eq!(
        outcome.phone_events,
        [
            "ExternalCallStarted 200 ringing",
            "ExternalCallStarted 200 connected",
            "ExternalCallEnded 200"
        ]
    );
}

/// `*78` answered 200 by the PBX: DND on, and no call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dnd_star_code_accepted_by_the_pbx_is_observed() {
    let outcome = run_call(Call {
        pbx: "pbx_call.xml",
        pbx_extra: &[],
        phone: "phone_call.xml",
        phone_extra: &["-s", "*78"],
        transport: PhoneTransport::Udp,
    })
    .await;
    assert_eq!(outcome.phone_events, ["DndChanged 200 on"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_call_with_the_phone_on_tcp_and_the_pbx_on_udp() {
    let outcome = run_call(Call {
        pbx: "pbx_call.xml",
        pbx_extra: &[],
        phone: "phone_call.xml",
        phone_extra: &["-s", "201"],
        transport: PhoneTransport::Tcp,
    })
    .await;
    // the transports differ on the two sides: the proxy Record-Routes twice (RFC
    // 5658), the top entry facing the PBX (UDP), the next facing the phone (TCP)
    let invite = e2e_support::logged_messages(&log(outcome.dir.path(), "pbx"))
        .into_iter()
        .find(|(received, text)| *received && text.starts_with("INVITE "))
        .map(|(_, text)| text)
        .expect("the PBX logged the INVITE");
    let record_routes: Vec<&str> = invite
        .lines()
        .filter(|l| l.starts_with("Record-Route:"))
        .collect();
    assert_eq!(
        record_routes.len(),
        2,
        "double Record-Route expected:\n{invite}"
    );
    assert!(
        !record_routes[0].contains("transport=tcp")
            && record_routes[1].contains(";transport=tcp;lr"),
        "top faces the PBX (UDP), second the phone (TCP):\n{invite}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_phone_is_called_by_the_pbx_through_its_contact_alias() {
    let outcome = run_call(Call {
        pbx: "pbx_register_call.xml",
        pbx_extra: &[],
        phone: "phone_register_answer.xml",
        phone_extra: &[],
        transport: PhoneTransport::Udp,
    })
    .await;
    // the caller ("pbx") is no extension: an external call of the registered 201
    assert_eq!(
        outcome.phone_events,
        [
            "ExternalCallStarted 201 ringing",
            "ExternalCallStarted 201 connected",
            "ExternalCallEnded 201"
        ]
    );
}

/// A phone on TCP behind a PBX on UDP: the alias the PBX stores must name the proxy's
/// side towards the PBX (UDP, as `pbx.transport` says), not the phone's TCP listener,
/// or the PBX calls the phone over a transport it was never configured for (see
/// `tests/e2e_kamailio.rs`, where Kamailio answers 500 for exactly this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_registered_over_tcp_is_called_by_a_udp_pbx_through_its_contact_alias() {
    run_call(Call {
        pbx: "pbx_register_call.xml",
        pbx_extra: &[],
        phone: "phone_register_answer.xml",
        phone_extra: &[],
        transport: PhoneTransport::Tcp,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blf_subscription_is_record_routed_and_the_notify_reaches_the_phone() {
    run_call(Call {
        pbx: "pbx_subscribe_notify.xml",
        pbx_extra: &[],
        phone: "phone_subscribe.xml",
        phone_extra: &["-s", "202"],
        transport: PhoneTransport::Udp,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_ringing_gets_200_and_487_and_the_proxy_takes_the_ack() {
    let outcome = run_call(Call {
        pbx: "pbx_cancel.xml",
        pbx_extra: &[],
        phone: "phone_cancel.xml",
        phone_extra: &["-s", "201"],
        transport: PhoneTransport::Udp,
    })
    .await;
    // the phone stayed 800 ms after its ACK: had the proxy not taken it, timer G would
    // have sent the 487 again within that time
    let phone = log(outcome.dir.path(), "phone");
    assert_eq!(
        count_received(&phone, "SIP/2.0 487", "INVITE"),
        1,
        "one 487, not retransmitted"
    );
    assert_eq!(count_received(&phone, "SIP/2.0 200", "CANCEL"), 1);
    let pbx = log(outcome.dir.path(), "pbx");
    assert_eq!(count_received(&pbx, "CANCEL ", "CANCEL"), 1);
    assert_eq!(count_received(&pbx, "ACK ", "ACK"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_lost_towards_the_pbx_is_retransmitted_and_the_call_succeeds_once() {
    let outcome = run_call(Call {
        pbx: "pbx_drop_first_invite.xml",
        // no SIPp retransmission detection, so the scenario sees the retransmission
        pbx_extra: &["-nr"],
        phone: "phone_call.xml",
        phone_extra: &["-s", "201"],
        transport: PhoneTransport::Udp,
    })
    .await;
    let pbx = log(outcome.dir.path(), "pbx");
    assert_eq!(
        count_received(&pbx, "INVITE ", "INVITE"),
        2,
        "the INVITE and its one retransmission"
    );
    let phone = log(outcome.dir.path(), "phone");
    assert_eq!(count_received(&phone, "SIP/2.0 100", "INVITE"), 1);
    assert_eq!(count_received(&phone, "SIP/2.0 180", "INVITE"), 1);
    assert_eq!(
        count_received(&phone, "SIP/2.0 200", "INVITE"),
        1,
        "exactly one call answered"
    );
    assert_eq!(count_received(&phone, "SIP/2.0 200", "BYE"), 1);
}
