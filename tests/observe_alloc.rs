//! What observation costs in memory, counted by a global allocator:
//! - a message that does not start a call allocates nothing (provisional and final
//!   responses, in-dialog requests, BYE, BLF NOTIFYs, OPTIONS), once the extension's
//!   own record exists;
//! - a tracked call costs at most 1 KiB, table included (the figure is printed; run with
//!   `cargo test --release --test observe_alloc -- --nocapture` to see it).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use presence_proxy::observe::{Direction, ObserveConfig, Observer, PhoneAddr};
use presence_proxy::sip::Message;
use presence_proxy::transport::Transport;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The counters are global: the tests of this file run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn message(text: &str) -> Message {
    Message::parse(Bytes::from(text.replace('\n', "\r\n"))).unwrap()
}

fn phone(port: u16) -> PhoneAddr {
    PhoneAddr {
        transport: Transport::Udp,
        remote: SocketAddr::from(([10, 1, (port >> 8) as u8, port as u8], 5060)),
    }
}

fn register(observer: &mut Observer, now: Instant, phone: PhoneAddr, ext: &str) {
    let contact = format!("sip:{ext}@{}", phone.remote);
    let request = message(&format!(
        "REGISTER sip:pbx SIP/2.0\nVia: SIP/2.0/UDP {r};branch=z9hG4bKr\nMax-Forwards: 70\n\
         From: <sip:{ext}@pbx>;tag=r\nTo: <sip:{ext}@pbx>\nCall-ID: reg-{ext}\nCSeq: 1 REGISTER\n\
         Contact: <{contact}>\nExpires: 3600\nContent-Length: 0\n\n",
        r = phone.remote
    ));
    observer.on_message(now, Direction::FromPhone, phone, &request);
    let ok = message(&format!(
        "SIP/2.0 200 OK\nVia: SIP/2.0/UDP {r};branch=z9hG4bKr\nFrom: <sip:{ext}@pbx>;tag=r\n\
         To: <sip:{ext}@pbx>;tag=x\nCall-ID: reg-{ext}\nCSeq: 1 REGISTER\n\
         Contact: <{contact}>;expires=3600\nContent-Length: 0\n\n",
        r = phone.remote
    ));
    observer.on_message(now, Direction::ToPhone, phone, &ok);
}

/// The messages of one outgoing external call, in order, with their direction.
fn call_messages(call_id: &str, ext: &str) -> Vec<(Direction, Message)> {
    let invite = format!(
        "INVITE sip:+4930123456@pbx SIP/2.0\nVia: SIP/2.0/UDP 10.1.0.1;branch=z9hG4bKi\n\
         Max-Forwards: 70\nFrom: <sip:{ext}@pbx>;tag=a\nTo: <sip:+4930123456@pbx>\n\
         Call-ID: {call_id}\nCSeq: 1 INVITE\nContact: <sip:{ext}@10.1.0.1>\nContent-Length: 0\n\n"
    );
    let response = |code: &str, tag: bool| {
        message(&format!(
            "SIP/2.0 {code}\nVia: SIP/2.0/UDP 10.1.0.1;branch=z9hG4bKi\n\
             From: <sip:{ext}@pbx>;tag=a\nTo: <sip:+4930123456@pbx>{}\nCall-ID: {call_id}\n\
             CSeq: 1 INVITE\nContact: <sip:pbx@10.0.0.1>\nContent-Length: 0\n\n",
            if tag { ";tag=b" } else { "" }
        ))
    };
    let in_dialog = |method: &str, seq: u32| {
        message(&format!(
            "{method} sip:pbx@10.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 10.1.0.1;branch=z9hG4bK{seq}\n\
             Max-Forwards: 70\nFrom: <sip:{ext}@pbx>;tag=a\nTo: <sip:+4930123456@pbx>;tag=b\n\
             Call-ID: {call_id}\nCSeq: {seq} {method}\nContact: <sip:{ext}@10.1.0.1>\n\
             Content-Length: 0\n\n"
        ))
    };
    let reinvite_ok = message(&format!(
        "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 10.1.0.1;branch=z9hG4bK2\n\
         From: <sip:{ext}@pbx>;tag=a\nTo: <sip:+4930123456@pbx>;tag=b\nCall-ID: {call_id}\n\
         CSeq: 2 INVITE\nContact: <sip:pbx@10.0.0.1>\nContent-Length: 0\n\n"
    ));
    let blf_notify = message(&format!(
        "NOTIFY sip:{ext}@10.1.0.1 SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKn\n\
         Max-Forwards: 70\nFrom: <sip:202@pbx>;tag=n\nTo: <sip:{ext}@pbx>;tag=m\n\
         Call-ID: blf-{call_id}\nCSeq: 7 NOTIFY\nEvent: dialog\nSubscription-State: active\n\
         Content-Type: application/dialog-info+xml\nContent-Length: 0\n\n"
    ));
    vec![
        (Direction::FromPhone, message(&invite)),
        (Direction::ToPhone, response("100 Trying", false)),
        (Direction::ToPhone, response("180 Ringing", true)),
        (Direction::ToPhone, blf_notify),
        (Direction::ToPhone, response("200 OK", true)),
        (Direction::FromPhone, in_dialog("INVITE", 2)),
        (Direction::ToPhone, reinvite_ok),
        (Direction::FromPhone, in_dialog("OPTIONS", 3)),
        (Direction::FromPhone, in_dialog("BYE", 4)),
    ]
}

#[test]
fn only_the_invite_that_starts_a_call_allocates() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let mut observer = Observer::new(ObserveConfig::default());
    let desk = phone(1);
    register(&mut observer, now, desk, "201");
    // a first call creates the extension's own record and event queues
    for (direction, msg) in call_messages("warm-up", "201") {
        observer.on_message(now, direction, desk, &msg);
    }
    while observer.poll_event().is_some() {}

    let messages = call_messages("second", "201");
    let mut per_message = Vec::new();
    for (direction, msg) in &messages {
        let region = Region::new(GLOBAL);
        observer.on_message(now, *direction, desk, msg);
        let change = region.change();
        per_message.push(change.allocations + change.reallocations);
    }
    let events: Vec<String> = std::iter::from_fn(|| observer.poll_event())
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        events,
        [
            "ExternalCallStarted 201 ringing",
            "ExternalCallStarted 201 connected",
            "ExternalCallEnded 201"
        ],
        "the call was really observed"
    );
    assert!(
        per_message[0] > 0 && per_message[0] <= 6,
        "the INVITE allocates the call's record (call id, other party, dialog slot, table \
         entry): {per_message:?}"
    );
    assert!(
        per_message[1..].iter().all(|&n| n == 0),
        "no other message allocates: {per_message:?}"
    );
}

#[test]
fn a_tracked_call_costs_at_most_one_kib() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const CALLS: usize = 10_000;
    let now = Instant::now();
    let mut observer = Observer::new(ObserveConfig::default());
    let phones: Vec<PhoneAddr> = (0..CALLS as u16).map(phone).collect();
    let ext = |i: usize| format!("{}", 10_000 + i);
    // messages built before counting: only what the observer keeps is measured
    let warm_up: Vec<_> = (0..CALLS).map(|i| call_messages("w", &ext(i))).collect();
    let calls: Vec<Vec<(Direction, Message)>> = (0..CALLS)
        .map(|i| {
            call_messages(&format!("{i:08x}-5a1d3e29c0b74f66@10.1.0.1"), &ext(i))
                .into_iter()
                .take(5) // INVITE … 200: connected, not ended
                .collect()
        })
        .collect();
    // each extension: a registration and one finished call (its record and history)
    let region = Region::new(GLOBAL);
    for (i, p) in phones.iter().enumerate() {
        register(&mut observer, now, *p, &ext(i));
        for (direction, msg) in &warm_up[i] {
            observer.on_message(now, *direction, *p, msg);
        }
    }
    while observer.poll_event().is_some() {}
    let per_extension = live_bytes(&region) as f64 / CALLS as f64;
    // then one connected call each
    let region = Region::new(GLOBAL);
    for (p, messages) in phones.iter().zip(&calls) {
        for (direction, msg) in messages {
            observer.on_message(now, *direction, *p, msg);
        }
    }
    while observer.poll_event().is_some() {}
    let per_call = live_bytes(&region) as f64 / CALLS as f64;
    assert_eq!(observer.call_count(), CALLS);
    println!(
        "observer: {per_call:.0} bytes per tracked call, {per_extension:.0} bytes per \
         extension (binding and event history), {CALLS} extensions with one connected call each"
    );
    assert!(per_call <= 1024.0, "{per_call:.0} bytes per tracked call");
}

fn live_bytes(region: &Region<'_, System>) -> isize {
    let change = region.change();
    change.bytes_allocated as isize - change.bytes_deallocated as isize + change.bytes_reallocated
}
