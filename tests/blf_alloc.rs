//! What BLF subscription tracking costs in memory, counted by a global allocator:
//! - while the proxy has injected nothing, a tracked subscription's NOTIFYs and the
//!   phone's answers allocate nothing (once its body buffer exists), and messages that
//!   concern no subscription allocate nothing;
//! - bytes per tracked subscription, live heap and process RSS, for 100,000
//!   subscriptions (goal: 100,000 in at most 200 MB). The figures are printed; run
//!   `cargo test --release --test blf_alloc -- --nocapture --test-threads 1`.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use presence_proxy::blf::subscription::{
    BlfRenderer, Forward, PbxDocument, Rendered, SubscriptionConfig, SubscriptionTracker,
    SubscriptionView,
};
use presence_proxy::observe::Direction;
use presence_proxy::proxy::Flow;
use presence_proxy::sip::Message;
use presence_proxy::sip::build::ResponseBuilder;
use presence_proxy::transport::Transport;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The counters are global: the tests of this file run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A renderer that reads the version like the document layer and renders a small
/// document (the allocation tests never inject, except the "touched" figure).
struct Renderer;

impl BlfRenderer for Renderer {
    fn document_version(&self, _content_type: &[u8], body: &[u8]) -> Option<u64> {
        let text = std::str::from_utf8(body).ok()?;
        let root = text.find("<dialog-info")?;
        let at = root + text[root..].find("version=\"")? + 9;
        text[at..].split('"').next().and_then(|v| v.parse().ok())
    }

    fn render(
        &self,
        sub: &SubscriptionView<'_>,
        _pbx: Option<PbxDocument<'_>>,
        version: u64,
        teams_busy: bool,
    ) -> Option<Rendered> {
        let state = if teams_busy {
            "confirmed"
        } else {
            "terminated"
        };
        Some(Rendered {
            body: Bytes::from(format!(
                "<?xml version=\"1.0\"?>\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" \
                 version=\"{version}\" state=\"full\" entity=\"sip:{e}@pbx.example.com\">\n\
                 <dialog id=\"teams-{e}\"><state>{state}</state></dialog>\n</dialog-info>\n",
                e = sub.extension
            )),
            content_type: "application/dialog-info+xml",
        })
    }
}

fn sip(head: &str, body: &str) -> Message {
    let text = format!(
        "{}Content-Length: {}\r\n\r\n{body}",
        head.replace('\n', "\r\n"),
        body.len()
    );
    Message::parse(Bytes::from(text)).unwrap()
}

fn phone(n: u32) -> Flow {
    Flow {
        transport: Transport::Udp,
        remote: SocketAddr::from(([10, 1 + (n >> 16) as u8, (n >> 8) as u8, n as u8], 5060)),
        local: SocketAddr::from(([10, 0, 0, 2], 5060)),
        conn: None,
    }
}

/// An Asterisk-style document (one dialog per extension, `state="full"`): 283 bytes.
fn body(ext: &str, version: u32) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"{version}\" \
         state=\"full\" entity=\"sip:{ext}@pbx.example.com:5060\">\n \
         <dialog id=\"{ext}\">\n  <state>terminated</state>\n </dialog>\n</dialog-info>\n"
    )
}

/// The messages of one subscription as a Yealink and Asterisk write them: SUBSCRIBE,
/// 200, NOTIFY (CSeq `seq`, version `version`), and the phone's 200.
struct Dialog {
    n: u32,
    ext: String,
}

impl Dialog {
    fn call_id(&self) -> String {
        format!("{:08x}-7d3b2c9a@10.1.0.1", self.n)
    }

    fn subscribe(&self) -> Message {
        sip(
            &format!(
                "SUBSCRIBE sip:{ext}@pbx.example.com SIP/2.0\n\
                 Via: SIP/2.0/UDP 10.1.0.1:5060;branch=z9hG4bK{n:x}\nMax-Forwards: 70\n\
                 From: \"Desk 201\" <sip:201@pbx.example.com>;tag=2398{n:x}\n\
                 To: <sip:{ext}@pbx.example.com>\nCall-ID: {cid}\nCSeq: 1 SUBSCRIBE\n\
                 Contact: <sip:201@10.1.0.1:5060>\nEvent: dialog\n\
                 Accept: application/dialog-info+xml\nExpires: 1800\n\
                 User-Agent: Yealink SIP-T54W 96.86.0.100\n",
                ext = self.ext,
                n = self.n,
                cid = self.call_id()
            ),
            "",
        )
    }

    fn ok(&self) -> Message {
        sip(
            &format!(
                "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 10.1.0.1:5060;branch=z9hG4bK{n:x}\n\
                 From: \"Desk 201\" <sip:201@pbx.example.com>;tag=2398{n:x}\n\
                 To: <sip:{ext}@pbx.example.com>;tag=as5c2f{n:x}\nCall-ID: {cid}\n\
                 CSeq: 1 SUBSCRIBE\nContact: <sip:{ext}@10.0.0.1:5060>\nExpires: 1800\n",
                ext = self.ext,
                n = self.n,
                cid = self.call_id()
            ),
            "",
        )
    }

    fn notify(&self, seq: u32, version: u32) -> Message {
        sip(
            &format!(
                "NOTIFY sip:201@10.1.0.1:5060 SIP/2.0\n\
                 Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKn{seq}{n:x}\nMax-Forwards: 70\n\
                 From: <sip:{ext}@pbx.example.com>;tag=as5c2f{n:x}\n\
                 To: \"Desk 201\" <sip:201@pbx.example.com>;tag=2398{n:x}\nCall-ID: {cid}\n\
                 CSeq: {seq} NOTIFY\nContact: <sip:{ext}@10.0.0.1:5060>\nEvent: dialog\n\
                 Subscription-State: active;expires=1800\n\
                 Content-Type: application/dialog-info+xml\n",
                ext = self.ext,
                n = self.n,
                cid = self.call_id()
            ),
            &body(&self.ext, version),
        )
    }
}

fn answer(msg: &Message) -> Message {
    Message::parse(ResponseBuilder::new(msg, 200, "OK").build()).unwrap()
}

type Tracker = SubscriptionTracker<Renderer>;

fn establish(t: &mut Tracker, now: Instant, d: &Dialog) {
    let flow = phone(d.n);
    let _ = t.on_message(now, Direction::FromPhone, &flow, &d.subscribe());
    let _ = t.on_message(now, Direction::ToPhone, &flow, &d.ok());
    let notify = d.notify(102, 9);
    let _ = t.on_message(now, Direction::ToPhone, &flow, &notify);
    let _ = t.on_message(now, Direction::FromPhone, &flow, &answer(&notify));
}

/// Bytes still allocated: `stats_alloc` already counts a reallocation's growth in
/// `bytes_allocated` (and its shrinking in `bytes_deallocated`).
fn live_bytes(region: &Region<'_, System>) -> isize {
    let change = region.change();
    change.bytes_allocated as isize - change.bytes_deallocated as isize
}

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn untouched_notifies_and_unrelated_messages_allocate_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let mut t = SubscriptionTracker::new(SubscriptionConfig::default(), Renderer);
    let d = Dialog {
        n: 1,
        ext: "203".into(),
    };
    establish(&mut t, now, &d);
    let flow = phone(1);
    // built before counting: only the tracker is measured
    let notifies: Vec<Message> = (0..5).map(|i| d.notify(103 + i, 10 + i)).collect();
    let answers: Vec<Message> = notifies.iter().map(answer).collect();
    let stranger = Dialog {
        n: 99,
        ext: "204".into(),
    };
    let unrelated = [
        (Direction::ToPhone, stranger.notify(5, 5)),
        (Direction::FromPhone, answer(&stranger.notify(5, 5))),
        (Direction::ToPhone, stranger.ok()),
        (
            Direction::FromPhone,
            sip(
                "OPTIONS sip:pbx.example.com SIP/2.0\nVia: SIP/2.0/UDP 10.1.0.1;branch=z9hG4bKo\n\
                 Max-Forwards: 70\nFrom: <sip:201@pbx.example.com>;tag=o\nTo: <sip:pbx.example.com>\n\
                 Call-ID: opt-1\nCSeq: 1 OPTIONS\n",
                "",
            ),
        ),
        (
            Direction::FromPhone,
            sip(
                "SUBSCRIBE sip:201@pbx.example.com SIP/2.0\nVia: SIP/2.0/UDP 10.1.0.1;branch=z9hG4bKm\n\
                 Max-Forwards: 70\nFrom: <sip:201@pbx.example.com>;tag=m\nTo: <sip:201@pbx.example.com>\n\
                 Call-ID: mwi-1\nCSeq: 1 SUBSCRIBE\nContact: <sip:201@10.1.0.1>\nEvent: message-summary\n",
                "",
            ),
        ),
    ];
    let mut counts = Vec::new();
    for (notify, reply) in notifies.iter().zip(&answers) {
        let region = Region::new(GLOBAL);
        let forward = t.on_message(now, Direction::ToPhone, &flow, notify);
        let back = t.on_message(now, Direction::FromPhone, &flow, reply);
        let change = region.change();
        assert_eq!((forward, back), (Forward::Pass, Forward::Pass));
        counts.push(change.allocations + change.reallocations);
    }
    for (direction, msg) in &unrelated {
        let region = Region::new(GLOBAL);
        let forward = t.on_message(now, *direction, &flow, msg);
        let change = region.change();
        assert_eq!(forward, Forward::Pass);
        counts.push(change.allocations + change.reallocations);
    }
    assert!(counts.iter().all(|&n| n == 0), "allocations: {counts:?}");
    assert_eq!(t.len(), 1);
}

#[test]
fn a_tracked_subscription_costs_less_than_two_kib() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 100,000 in release (the figure in BENCHMARKS.md); fewer in a debug build
    const SUBSCRIPTIONS: u32 = if cfg!(debug_assertions) {
        20_000
    } else {
        100_000
    };
    const EXTENSIONS: u32 = 1_000;
    let now = Instant::now();
    let mut t = SubscriptionTracker::new(SubscriptionConfig::default(), Renderer);
    let rss_before = rss_bytes();
    let region = Region::new(GLOBAL);
    // phones watching each of 1,000 extensions (100 each in release); the messages are made and dropped
    // as they go, so what stays is what the tracker keeps
    for n in 0..SUBSCRIPTIONS {
        let d = Dialog {
            n,
            ext: format!("{}", 2000 + n % EXTENSIONS),
        };
        establish(&mut t, now, &d);
    }
    let per_sub = live_bytes(&region) as f64 / f64::from(SUBSCRIPTIONS);
    let rss_per_sub = match (rss_before, rss_bytes()) {
        (Some(before), Some(after)) => {
            after.saturating_sub(before) as f64 / f64::from(SUBSCRIPTIONS)
        }
        _ => f64::NAN,
    };
    assert_eq!(t.len(), SUBSCRIPTIONS as usize);
    assert_eq!(t.watchers("2000"), (SUBSCRIPTIONS / EXTENSIONS) as usize);

    // then the proxy notifies in every one of them once (numbering, in-flight record)
    let region = Region::new(GLOBAL);
    for ext in 0..EXTENSIONS {
        t.set_teams_busy(&format!("{}", 2000 + ext), true, now);
    }
    let mut sent = 0;
    while let Some(transmit) = t.poll_transmit(now, |_| {
        "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKppn0;rport".to_owned()
    }) {
        let own = Message::parse(transmit.bytes).unwrap();
        let _ = t.on_message(now, Direction::FromPhone, &transmit.flow, &answer(&own));
        sent += 1;
    }
    assert_eq!(sent, SUBSCRIPTIONS);
    let touched = live_bytes(&region) as f64 / f64::from(SUBSCRIPTIONS);
    let rss_total = match (rss_before, rss_bytes()) {
        (Some(before), Some(after)) => after.saturating_sub(before) as f64 / 1e6,
        _ => f64::NAN,
    };
    println!(
        "blf: {per_sub:.0} bytes of live heap per tracked subscription ({SUBSCRIPTIONS} \
         subscriptions, 283-byte PBX documents, tables included); RSS growth {rss_per_sub:.0} \
         bytes per subscription, {:.0} MB for 100,000; +{touched:.0} bytes of heap once the \
         proxy has notified in it (RSS growth then {rss_total:.0} MB in all)",
        rss_per_sub * 100_000.0 / 1e6
    );
    assert!(
        rss_total.is_nan() || rss_total <= 200.0,
        "{rss_total:.0} MB"
    );
    assert!(
        per_sub + touched <= 2048.0,
        "{per_sub:.0} + {touched:.0} bytes"
    );
}
