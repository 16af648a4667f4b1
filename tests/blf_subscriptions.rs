//! The BLF subscription tracker (`presence_proxy::blf::subscription`), sans-IO, with
//! real SIP text: a phone's SUBSCRIBE, the PBX's 200 and NOTIFYs, the phone's answers,
//! and the NOTIFYs the proxy originates when an extension's Teams user is busy.
//!
//! - tracking and its ends: `Expires: 0`, `terminated`, 481, expiry, refusal, refresh;
//! - numbering: CSeq translated towards the phone and mapped back exactly, answers to
//!   own NOTIFYs absorbed, versions strictly increasing;
//! - the one-per-second rate with a Teams flap; the PBX document re-sent on idle;
//! - bounds under many spoofed SUBSCRIBEs;
//! - a property test over long random interleavings;
//! - the fan-out time of one Teams change to 1,000 watchers (printed; run
//!   `cargo test --release --test blf_subscriptions fan_out -- --nocapture`).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use presence_proxy::blf::subscription::{
    BlfRenderer, EventPackage, Forward, PbxDocument, Rendered, SubscriptionConfig,
    SubscriptionPhase, SubscriptionTracker, SubscriptionView,
};
use presence_proxy::observe::Direction;
use presence_proxy::proxy::{Flow, Transmit};
use presence_proxy::sip::build::ResponseBuilder;
use presence_proxy::sip::{HeaderName, Message};
use presence_proxy::transport::Transport;
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------- test renderer

const TEAMS_DIALOG: &str = "<dialog id=\"teams-";

/// Renders like the document layer will, without XML: the PBX's document with its
/// `version` replaced and, when Teams-busy, a `teams-<ext>` dialog added.
#[derive(Debug, Default)]
struct TestRenderer;

fn version_of(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let root = text.find("<dialog-info")?;
    let at = root + text[root..].find("version=\"")? + "version=\"".len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

impl BlfRenderer for TestRenderer {
    fn document_version(&self, _content_type: &[u8], body: &[u8]) -> Option<u64> {
        version_of(body)
    }

    fn render(
        &self,
        sub: &SubscriptionView<'_>,
        pbx: Option<PbxDocument<'_>>,
        version: u64,
        teams_busy: bool,
    ) -> Option<Rendered> {
        if sub.package == EventPackage::Presence {
            let note = if teams_busy { "Busy (Teams)" } else { "Idle" };
            let body = format!(
                "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:{}@pbx\">\
                 <tuple id=\"t\"><status><basic>open</basic></status></tuple><note>{note}</note></presence>",
                sub.extension
            );
            return Some(Rendered {
                body: Bytes::from(body),
                content_type: "application/pidf+xml",
            });
        }
        let text = match pbx {
            Some(doc) => String::from_utf8(doc.body.to_vec()).ok()?,
            None => format!(
                "<?xml version=\"1.0\"?>\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" \
                 version=\"0\" state=\"full\" entity=\"sip:{}@pbx.example.com\">\n</dialog-info>\n",
                sub.extension
            ),
        };
        let root = text.find("<dialog-info")?;
        let at = root + text[root..].find("version=\"")? + "version=\"".len();
        let len = text[at..].chars().take_while(char::is_ascii_digit).count();
        let mut out = format!("{}{version}{}", &text[..at], &text[at + len..]);
        if teams_busy {
            let end = out.find("</dialog-info>")?;
            out.insert_str(
                end,
                &format!(
                    "{TEAMS_DIALOG}{}\"><state>confirmed</state></dialog>\n",
                    sub.extension
                ),
            );
        }
        Some(Rendered {
            body: Bytes::from(out),
            content_type: "application/dialog-info+xml",
        })
    }
}

// ---------------------------------------------------------------- SIP text

fn sip(head: &str, body: &str) -> Message {
    let text = format!(
        "{}Content-Length: {}\r\n\r\n{body}",
        head.replace('\n', "\r\n"),
        body.len()
    );
    Message::parse(Bytes::from(text)).unwrap()
}

fn dialog_info(ext: &str, version: u64, busy: bool) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"{version}\" \
         state=\"full\" entity=\"sip:{ext}@pbx.example.com\">\n\
         <dialog id=\"{ext}\">\n<state>{}</state>\n</dialog>\n</dialog-info>\n",
        if busy { "confirmed" } else { "terminated" }
    )
}

/// One subscription dialog: a phone watching `ext`.
#[derive(Debug, Clone)]
struct Sub {
    call_id: String,
    phone_tag: String,
    pbx_tag: String,
    ext: String,
    phone: Flow,
    package: &'static str,
}

impl Sub {
    fn new(n: u32, ext: &str, transport: Transport) -> Self {
        Self {
            call_id: format!("blf-{n:06}-7f3a9c@10.1.0.1"),
            phone_tag: format!("ph{n}"),
            pbx_tag: format!("as{n:08x}"),
            ext: ext.to_owned(),
            phone: phone_flow(n, transport),
            package: "dialog",
        }
    }

    fn presence(mut self) -> Self {
        self.package = "presence";
        self
    }

    fn contact(&self) -> String {
        format!("sip:201@{}", self.phone.remote)
    }

    fn subscribe(&self, cseq: u32, expires: u32, in_dialog: bool) -> Message {
        let to_tag = if in_dialog {
            format!(";tag={}", self.pbx_tag)
        } else {
            String::new()
        };
        sip(
            &format!(
                "SUBSCRIBE sip:{ext}@pbx.example.com SIP/2.0\n\
                 Via: SIP/2.0/UDP {r};branch=z9hG4bKs{cseq}{n}\nMax-Forwards: 70\n\
                 From: <sip:201@pbx.example.com>;tag={tag}\nTo: <sip:{ext}@pbx.example.com>{to_tag}\n\
                 Call-ID: {cid}\nCSeq: {cseq} SUBSCRIBE\nContact: <{contact}>\n\
                 Event: {package}\nAccept: application/dialog-info+xml\nExpires: {expires}\n\
                 User-Agent: Yealink SIP-T54W 96.86.0.100\n",
                ext = self.ext,
                r = self.phone.remote,
                n = self.phone_tag,
                tag = self.phone_tag,
                cid = self.call_id,
                contact = self.contact(),
                package = self.package,
            ),
            "",
        )
    }

    fn subscribe_answer(&self, cseq: u32, code: &str, expires: u32) -> Message {
        sip(
            &format!(
                "SIP/2.0 {code}\nVia: SIP/2.0/UDP {r};branch=z9hG4bKs{cseq}{n}\n\
                 From: <sip:201@pbx.example.com>;tag={tag}\nTo: <sip:{ext}@pbx.example.com>;tag={pbx_tag}\n\
                 Call-ID: {cid}\nCSeq: {cseq} SUBSCRIBE\nContact: <sip:{ext}@10.0.0.1:5060>\n\
                 Expires: {expires}\n",
                ext = self.ext,
                r = self.phone.remote,
                n = self.phone_tag,
                tag = self.phone_tag,
                pbx_tag = self.pbx_tag,
                cid = self.call_id,
            ),
            "",
        )
    }

    fn notify(&self, cseq: u32, state: &str, body: &str) -> Message {
        let content_type = if body.is_empty() {
            String::new()
        } else if self.package == "presence" {
            "Content-Type: application/pidf+xml\n".to_owned()
        } else {
            "Content-Type: application/dialog-info+xml\n".to_owned()
        };
        sip(
            &format!(
                "NOTIFY {contact} SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKpbx{cseq}\n\
                 Max-Forwards: 70\nFrom: <sip:{ext}@pbx.example.com>;tag={pbx_tag}\n\
                 To: <sip:201@pbx.example.com>;tag={tag}\nCall-ID: {cid}\nCSeq: {cseq} NOTIFY\n\
                 Contact: <sip:{ext}@10.0.0.1:5060>\nEvent: {package}\n\
                 Subscription-State: {state}\n{content_type}",
                contact = self.contact(),
                ext = self.ext,
                pbx_tag = self.pbx_tag,
                tag = self.phone_tag,
                cid = self.call_id,
                package = self.package,
            ),
            body,
        )
    }
}

fn phone_flow(n: u32, transport: Transport) -> Flow {
    Flow {
        transport,
        remote: SocketAddr::from(([10, 1, (n >> 8) as u8, n as u8], 5060)),
        local: SocketAddr::from(([10, 0, 0, 2], 5060)),
        conn: None,
    }
}

/// The phone's answer to what it received.
fn answer(received: &Message, code: u16, reason: &str) -> Message {
    Message::parse(ResponseBuilder::new(received, code, reason).build()).unwrap()
}

type Tracker = SubscriptionTracker<TestRenderer>;

fn tracker() -> Tracker {
    SubscriptionTracker::new(SubscriptionConfig::default(), TestRenderer)
}

/// What the core would forward: the message with the tracker's changes, or nothing.
fn forwarded(msg: &Message, forward: Forward) -> Option<Message> {
    match forward {
        Forward::Pass => Some(msg.clone()),
        Forward::Rewrite(rewrite) => Some(Message::parse(rewrite.to_bytes(msg).unwrap()).unwrap()),
        Forward::Absorb => None,
    }
}

fn via_for(flow: &Flow) -> String {
    format!(
        "SIP/2.0/{} 10.0.0.2:5060;branch=z9hG4bKppn{:04x};rport",
        flow.transport.via_token(),
        flow.remote.port()
    )
}

fn drain<R: BlfRenderer>(t: &mut SubscriptionTracker<R>, now: Instant) -> Vec<Transmit> {
    std::iter::from_fn(|| t.poll_transmit(now, via_for)).collect()
}

fn cseq(msg: &Message) -> u32 {
    msg.cseq().unwrap().unwrap().seq()
}

fn body_text(msg: &Message) -> &str {
    std::str::from_utf8(msg.body()).unwrap()
}

fn shows_teams(msg: &Message) -> bool {
    body_text(msg).contains(TEAMS_DIALOG)
}

/// Checks an emitted message parses and its Content-Length is its body's length.
fn check_framing(bytes: &Bytes) -> Message {
    let msg = Message::parse(bytes.clone()).unwrap();
    msg.validate().unwrap();
    assert_eq!(
        msg.content_length(),
        Some(msg.body().len()),
        "Content-Length"
    );
    assert_eq!(msg.body_span().end(), bytes.len(), "nothing after the body");
    msg
}

/// SUBSCRIBE, 200, the first NOTIFY (version `version`, CSeq `cseq`) and the phone's 200:
/// an active subscription. Returns the NOTIFY as the phone got it.
fn establish<R: BlfRenderer>(
    t: &mut SubscriptionTracker<R>,
    now: Instant,
    sub: &Sub,
    cseq: u32,
    version: u64,
) -> Message {
    let s = sub.subscribe(1, 3600, false);
    assert_eq!(
        t.on_message(now, Direction::FromPhone, &sub.phone, &s),
        Forward::Pass
    );
    let ok = sub.subscribe_answer(1, "200 OK", 3600);
    assert_eq!(
        t.on_message(now, Direction::ToPhone, &sub.phone, &ok),
        Forward::Pass
    );
    let n = sub.notify(
        cseq,
        "active;expires=3600",
        &dialog_info(&sub.ext, version, false),
    );
    let action = t.on_message(now, Direction::ToPhone, &sub.phone, &n);
    let got = forwarded(&n, action).unwrap();
    let reply = answer(&got, 200, "OK");
    let back = t.on_message(now, Direction::FromPhone, &sub.phone, &reply);
    assert_eq!(back, Forward::Pass);
    got
}

// ---------------------------------------------------------------- tracking

#[test]
fn a_subscription_is_tracked_and_untouched_while_teams_is_idle() {
    let now = Instant::now();
    let mut t = tracker();
    let sub = Sub::new(1, "202", Transport::Udp);
    let got = establish(&mut t, now, &sub, 104, 12);
    assert_eq!(
        got.as_bytes(),
        sub.notify(104, "active;expires=3600", &dialog_info("202", 12, false))
            .as_bytes()
    );
    let view = t
        .subscription(sub.call_id.as_bytes(), sub.phone_tag.as_bytes())
        .unwrap();
    assert_eq!(view.extension, "202");
    assert_eq!(view.package, EventPackage::Dialog);
    assert_eq!(view.phase, SubscriptionPhase::Active);
    assert_eq!(view.notifier_tag, sub.pbx_tag.as_bytes());
    assert_eq!(view.user_agent, Some(&b"Yealink SIP-T54W 96.86.0.100"[..]));
    assert_eq!(view.own_notifies, 0);
    assert_eq!(t.watchers("202"), 1);
    // later NOTIFYs and their answers pass as they are
    for (seq, version) in [(105, 13), (106, 14)] {
        let n = sub.notify(
            seq,
            "active;expires=3500",
            &dialog_info("202", version, true),
        );
        assert_eq!(
            t.on_message(now, Direction::ToPhone, &sub.phone, &n),
            Forward::Pass
        );
        let reply = answer(&n, 200, "OK");
        assert_eq!(
            t.on_message(now, Direction::FromPhone, &sub.phone, &reply),
            Forward::Pass
        );
    }
    assert!(drain(&mut t, now).is_empty());
}

#[test]
fn a_notify_before_the_200_starts_the_dialog() {
    let now = Instant::now();
    let mut t = tracker();
    let sub = Sub::new(2, "203", Transport::Tcp);
    let _ = t.on_message(
        now,
        Direction::FromPhone,
        &sub.phone,
        &sub.subscribe(1, 1800, false),
    );
    assert_eq!(
        t.subscription(sub.call_id.as_bytes(), sub.phone_tag.as_bytes())
            .unwrap()
            .phase,
        SubscriptionPhase::Pending
    );
    let n = sub.notify(1, "active;expires=1800", &dialog_info("203", 0, false));
    assert_eq!(
        t.on_message(now, Direction::ToPhone, &sub.phone, &n),
        Forward::Pass
    );
    let _ = t.on_message(
        now,
        Direction::ToPhone,
        &sub.phone,
        &sub.subscribe_answer(1, "200 OK", 1800),
    );
    let view = t
        .subscription(sub.call_id.as_bytes(), sub.phone_tag.as_bytes())
        .unwrap();
    assert_eq!(view.phase, SubscriptionPhase::Active);
    // and the proxy can notify in it at once
    t.set_teams_busy("203", true, now);
    let out = drain(&mut t, now);
    assert_eq!(out.len(), 1);
    assert_eq!(cseq(&check_framing(&out[0].bytes)), 2);
}

#[test]
fn other_events_and_other_forks_are_not_touched() {
    let now = Instant::now();
    let mut t = tracker();
    let sub = Sub::new(3, "204", Transport::Udp);
    let mwi = sip(
        "SUBSCRIBE sip:204@pbx.example.com SIP/2.0\nVia: SIP/2.0/UDP 10.1.0.3:5060;branch=z9hG4bKm\n\
         Max-Forwards: 70\nFrom: <sip:201@pbx.example.com>;tag=m1\nTo: <sip:204@pbx.example.com>\n\
         Call-ID: mwi-1\nCSeq: 1 SUBSCRIBE\nContact: <sip:201@10.1.0.3>\nEvent: message-summary\n",
        "",
    );
    let _ = t.on_message(now, Direction::FromPhone, &sub.phone, &mwi);
    assert!(t.is_empty());
    establish(&mut t, now, &sub, 10, 1);
    t.set_teams_busy("204", true, now);
    assert_eq!(drain(&mut t, now).len(), 1);
    // a NOTIFY from another fork (another From tag) passes untouched
    let mut fork = sub.clone();
    fork.pbx_tag = "other-fork".into();
    let n = fork.notify(11, "active;expires=3600", &dialog_info("204", 2, false));
    assert_eq!(
        t.on_message(now, Direction::ToPhone, &sub.phone, &n),
        Forward::Pass
    );
}

#[test]
fn expires_zero_ends_tracking_after_the_final_notify() {
    let now = Instant::now();
    let mut t = tracker();
    let sub = Sub::new(4, "205", Transport::Udp);
    establish(&mut t, now, &sub, 20, 3);
    t.set_teams_busy("205", true, now);
    assert_eq!(drain(&mut t, now).len(), 1); // CSeq 21 of the proxy's own
    let unsubscribe = sub.subscribe(2, 0, true);
    let _ = t.on_message(now, Direction::FromPhone, &sub.phone, &unsubscribe);
    assert_eq!(
        t.subscription(sub.call_id.as_bytes(), sub.phone_tag.as_bytes())
            .unwrap()
            .phase,
        SubscriptionPhase::Ending
    );
    let _ = t.on_message(
        now,
        Direction::ToPhone,
        &sub.phone,
        &sub.subscribe_answer(2, "200 OK", 0),
    );
    // the final NOTIFY is still translated, and not injected
    let last = sub.notify(
        21,
        "terminated;reason=timeout",
        &dialog_info("205", 4, false),
    );
    let got = forwarded(
        &last,
        t.on_message(now, Direction::ToPhone, &sub.phone, &last),
    )
    .unwrap();
    assert_eq!(cseq(&got), 22);
    assert!(!shows_teams(&got));
    assert_eq!(version_of(got.body()), Some(5));
    let reply = answer(&got, 200, "OK");
    let back = forwarded(
        &reply,
        t.on_message(now, Direction::FromPhone, &sub.phone, &reply),
    )
    .unwrap();
    assert_eq!(cseq(&back), 21);
    assert!(t.is_empty());
    assert_eq!(t.watchers("205"), 0);
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn a_terminated_notify_ends_tracking() {
    let now = Instant::now();
    let mut t = tracker();
    let sub = Sub::new(5, "206", Transport::Udp);
    establish(&mut t, now, &sub, 1, 0);
    let end = sub.notify(2, "terminated;reason=noresource", "");
    assert_eq!(
        t.on_message(now, Direction::ToPhone, &sub.phone, &end),
        Forward::Pass
    );
    t.set_teams_busy("206", true, now);
    assert!(
        drain(&mut t, now).is_empty(),
        "nothing injected into an ending subscription"
    );
    let _ = t.on_message(
        now,
        Direction::FromPhone,
        &sub.phone,
        &answer(&end, 200, "OK"),
    );
    assert!(t.is_empty());
}

#[test]
fn a_481_from_the_phone_ends_tracking_and_maps_back() {
    let now = Instant::now();
    let mut t = tracker();
    let sub = Sub::new(6, "207", Transport::Tcp);
    establish(&mut t, now, &sub, 50, 7);
    t.set_teams_busy("207", true, now);
    let own = drain(&mut t, now);
    assert_eq!(cseq(&check_framing(&own[0].bytes)), 51);
    let n = sub.notify(51, "active;expires=3000", &dialog_info("207", 8, true));
    let got = forwarded(&n, t.on_message(now, Direction::ToPhone, &sub.phone, &n)).unwrap();
    assert_eq!(cseq(&got), 52);
    let gone = answer(&got, 481, "Subscription does not exist");
    let back = forwarded(
        &gone,
        t.on_message(now, Direction::FromPhone, &sub.phone, &gone),
    )
    .unwrap();
    assert_eq!(cseq(&back), 51, "the PBX sees its own CSeq");
    assert_eq!(back.status(), Some(481));
    assert!(t.is_empty());
}

#[test]
fn a_481_to_an_own_notify_is_absorbed_and_ends_tracking() {
    let now = Instant::now();
    let mut t = tracker();
    let sub = Sub::new(7, "208", Transport::Udp);
    establish(&mut t, now, &sub, 5, 0);
    t.set_teams_busy("208", true, now);
    let own = check_framing(&drain(&mut t, now)[0].bytes);
    let gone = answer(&own, 481, "Subscription does not exist");
    assert_eq!(
        t.on_message(now, Direction::FromPhone, &sub.phone, &gone),
        Forward::Absorb
    );
    assert!(t.is_empty());
}

#[test]
fn expiry_ends_tracking_and_refresh_keeps_it() {
    let start = Instant::now();
    let mut t = tracker();
    let a = Sub::new(8, "209", Transport::Udp);
    let b = Sub::new(9, "209", Transport::Udp);
    for sub in [&a, &b] {
        let _ = t.on_message(
            start,
            Direction::FromPhone,
            &sub.phone,
            &sub.subscribe(1, 600, false),
        );
        let _ = t.on_message(
            start,
            Direction::ToPhone,
            &sub.phone,
            &sub.subscribe_answer(1, "200 OK", 600),
        );
        let n = sub.notify(1, "active;expires=600", &dialog_info("209", 0, false));
        let _ = t.on_message(start, Direction::ToPhone, &sub.phone, &n);
    }
    assert_eq!(t.watchers("209"), 2);
    // b refreshes at 300 s; a does not
    let later = start + Duration::from_secs(300);
    let _ = t.on_message(
        later,
        Direction::FromPhone,
        &b.phone,
        &b.subscribe(2, 600, true),
    );
    let _ = t.on_message(
        later,
        Direction::ToPhone,
        &b.phone,
        &b.subscribe_answer(2, "200 OK", 600),
    );
    let n = b.notify(2, "active;expires=600", &dialog_info("209", 1, false));
    assert_eq!(
        t.on_message(later, Direction::ToPhone, &b.phone, &n),
        Forward::Pass
    );
    // past a's expiry: no injection into a, b is notified
    let expired = start + Duration::from_secs(601);
    t.handle_timeout(expired);
    t.set_teams_busy("209", true, expired);
    let out = drain(&mut t, expired);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].flow, b.phone);
    // a goes once its linger is over; b stays
    let mut now = expired;
    while let Some(at) = t.poll_timeout() {
        if at > start + Duration::from_secs(700) {
            break;
        }
        now = at;
        t.handle_timeout(now);
        drain(&mut t, now);
    }
    assert!(now >= start + Duration::from_secs(600));
    assert_eq!(t.len(), 1);
    assert!(
        t.subscription(b.call_id.as_bytes(), b.phone_tag.as_bytes())
            .is_some()
    );
    // b expires at 900 s (+ linger)
    t.handle_timeout(start + Duration::from_secs(935));
    assert!(t.is_empty());
    assert_eq!(t.watchers("209"), 0);
}

#[test]
fn a_refused_or_unanswered_subscribe_is_forgotten() {
    let now = Instant::now();
    let mut t = tracker();
    let refused = Sub::new(10, "210", Transport::Udp);
    let _ = t.on_message(
        now,
        Direction::FromPhone,
        &refused.phone,
        &refused.subscribe(1, 3600, false),
    );
    let _ = t.on_message(
        now,
        Direction::ToPhone,
        &refused.phone,
        &refused.subscribe_answer(1, "403 Forbidden", 0),
    );
    assert!(t.is_empty());
    let silent = Sub::new(11, "210", Transport::Udp);
    let _ = t.on_message(
        now,
        Direction::FromPhone,
        &silent.phone,
        &silent.subscribe(1, 3600, false),
    );
    assert_eq!(t.len(), 1);
    t.handle_timeout(now + Duration::from_secs(33));
    assert!(t.is_empty());
}

// ---------------------------------------------------------------- numbering and injection

#[test]
fn the_proxy_notifies_inside_the_dialog_and_owns_the_numbering_from_then_on() {
    let now = Instant::now();
    let mut t = tracker();
    let sub = Sub::new(12, "211", Transport::Tcp);
    establish(&mut t, now, &sub, 104, 12);
    t.set_teams_busy("211", true, now);
    let out = drain(&mut t, now);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].flow, sub.phone);
    let own = check_framing(&out[0].bytes);
    let text = std::str::from_utf8(own.as_bytes()).unwrap();
    assert!(
        text.starts_with(&format!("NOTIFY {} SIP/2.0\r\n", sub.contact())),
        "{text}"
    );
    assert_eq!(
        own.header(HeaderName::Via),
        Some(via_for(&sub.phone).as_bytes())
    );
    assert_eq!(
        own.header(HeaderName::From).unwrap(),
        format!("<sip:211@pbx.example.com>;tag={}", sub.pbx_tag).as_bytes()
    );
    assert_eq!(
        own.header(HeaderName::To).unwrap(),
        format!("<sip:201@pbx.example.com>;tag={}", sub.phone_tag).as_bytes()
    );
    assert_eq!(
        own.header(HeaderName::CallId).unwrap(),
        sub.call_id.as_bytes()
    );
    assert_eq!(own.header(HeaderName::CSeq), Some(&b"105 NOTIFY"[..]));
    assert_eq!(own.header(HeaderName::Event), Some(&b"dialog"[..]));
    assert_eq!(
        own.header(HeaderName::SubscriptionState),
        Some(&b"active;expires=3600"[..])
    );
    assert_eq!(
        own.header(HeaderName::Contact),
        Some(&b"<sip:211@10.0.0.1:5060>"[..])
    );
    assert_eq!(own.header(HeaderName::MaxForwards), Some(&b"70"[..]));
    assert_eq!(
        own.header(HeaderName::ContentType),
        Some(&b"application/dialog-info+xml"[..])
    );
    assert!(shows_teams(&own));
    assert_eq!(version_of(own.body()), Some(13));

    // the phone answers the proxy's NOTIFY: absorbed
    let reply = answer(&own, 200, "OK");
    assert_eq!(
        t.on_message(now, Direction::FromPhone, &sub.phone, &reply),
        Forward::Absorb
    );

    // the PBX's next NOTIFY: CSeq +1, version +1, Teams dialog added, length right
    let n = sub.notify(105, "active;expires=3590", &dialog_info("211", 13, false));
    let Forward::Rewrite(rewrite) = t.on_message(now, Direction::ToPhone, &sub.phone, &n) else {
        panic!("the NOTIFY must be rewritten")
    };
    assert_eq!(rewrite.cseq, Some(106));
    let got = check_framing(&rewrite.to_bytes(&n).unwrap());
    assert_eq!(cseq(&got), 106);
    assert_eq!(version_of(got.body()), Some(14));
    assert!(shows_teams(&got));
    assert!(
        body_text(&got).contains("<state>terminated</state>"),
        "the PBX's dialog stays"
    );
    // everything but CSeq, body and its length is byte-exact
    let strip = |m: &Message| -> Vec<Vec<u8>> {
        m.fields()
            .iter()
            .filter(|f| !matches!(f.name(), HeaderName::CSeq | HeaderName::ContentLength))
            .map(|f| m.as_bytes()[f.line_span().range()].to_vec())
            .collect()
    };
    assert_eq!(strip(&got), strip(&n));

    // the phone's 200 goes back with the PBX's number
    let reply = answer(&got, 200, "OK");
    let Forward::Rewrite(back) = t.on_message(now, Direction::FromPhone, &sub.phone, &reply) else {
        panic!("the answer must be mapped back")
    };
    assert_eq!(back.cseq, Some(105));
    assert_eq!(back.body, None);
    let back = check_framing(&back.to_bytes(&reply).unwrap());
    assert_eq!(back.header(HeaderName::CSeq), Some(&b"105 NOTIFY"[..]));
    // the same answer again (a retransmitted NOTIFY was answered twice) maps the same way
    let Forward::Rewrite(again) = t.on_message(now, Direction::FromPhone, &sub.phone, &reply)
    else {
        panic!("a repeated answer must be mapped back too")
    };
    assert_eq!(again.cseq, Some(105));
    // the PBX sending CSeq 105 again gets the same number towards the phone
    let Forward::Rewrite(same) = t.on_message(now, Direction::ToPhone, &sub.phone, &n) else {
        panic!("the NOTIFY must be rewritten")
    };
    assert_eq!(same.cseq, Some(106));
    assert_eq!(
        t.subscription(sub.call_id.as_bytes(), sub.phone_tag.as_bytes())
            .unwrap()
            .own_notifies,
        1
    );
}

#[test]
fn answers_past_the_remembered_64_are_absorbed() {
    let now = Instant::now();
    let mut t = tracker();
    let sub = Sub::new(13, "212", Transport::Tcp);
    establish(&mut t, now, &sub, 10, 1);
    t.set_teams_busy("212", true, now);
    let own = check_framing(&drain(&mut t, now)[0].bytes);
    assert_eq!(cseq(&own), 11);
    // 70 PBX NOTIFYs (CSeq 11..=80, the phone sees 12..=81), none answered yet
    let got: Vec<Message> = (11..=80)
        .map(|seq| {
            let n = sub.notify(
                seq,
                "active;expires=3600",
                &dialog_info("212", seq.into(), false),
            );
            let action = t.on_message(now, Direction::ToPhone, &sub.phone, &n);
            forwarded(&n, action).unwrap()
        })
        .collect();
    let answer_of = |t: &mut Tracker, msg: &Message| {
        let reply = answer(msg, 200, "OK");
        let action = t.on_message(now, Direction::FromPhone, &sub.phone, &reply);
        forwarded(&reply, action).map(|m| cseq(&m))
    };
    // the own NOTIFY and the oldest PBX ones are forgotten: their answers reach nobody,
    // in particular not the PBX under a wrong number
    assert_eq!(answer_of(&mut t, &own), None);
    for msg in &got[..6] {
        assert_eq!(answer_of(&mut t, msg), None, "CSeq {}", cseq(msg));
    }
    // the 64 newest still map back to the PBX's numbers
    for (msg, pbx_seq) in got[6..].iter().zip(17..) {
        assert_eq!(answer_of(&mut t, msg), Some(pbx_seq));
    }
    // an answer from before the takeover still passes with the PBX's own number
    let first = sub.notify(10, "active;expires=3600", &dialog_info("212", 1, false));
    assert_eq!(answer_of(&mut t, &first), Some(10));
    assert_eq!(t.len(), 1);
}

#[test]
fn a_passing_notify_is_injected_before_any_own_notify() {
    let now = Instant::now();
    let mut t = tracker();
    t.set_teams_busy("212", true, now);
    let sub = Sub::new(13, "212", Transport::Udp);
    let got = establish(&mut t, now, &sub, 1, 0);
    // no numbering change yet: same CSeq, same version, Teams dialog in
    assert_eq!(cseq(&got), 1);
    assert_eq!(version_of(got.body()), Some(0));
    assert!(shows_teams(&got));
    assert!(
        drain(&mut t, now).is_empty(),
        "the phone already shows busy"
    );
    let view = t
        .subscription(sub.call_id.as_bytes(), sub.phone_tag.as_bytes())
        .unwrap();
    assert!(view.shows_teams_busy);
    assert_eq!(view.own_notifies, 0);
}

#[test]
fn teams_idle_resends_the_pbx_document_with_the_next_version() {
    let start = Instant::now();
    let mut t = tracker();
    let sub = Sub::new(14, "213", Transport::Tcp);
    let pbx_doc = dialog_info("213", 30, true); // the PBX shows a call of its own
    let _ = t.on_message(
        start,
        Direction::FromPhone,
        &sub.phone,
        &sub.subscribe(1, 3600, false),
    );
    let _ = t.on_message(
        start,
        Direction::ToPhone,
        &sub.phone,
        &sub.subscribe_answer(1, "200 OK", 3600),
    );
    let n = sub.notify(7, "active;expires=3600", &pbx_doc);
    let _ = t.on_message(start, Direction::ToPhone, &sub.phone, &n);
    t.set_teams_busy("213", true, start);
    let busy = check_framing(&drain(&mut t, start)[0].bytes);
    assert!(shows_teams(&busy));
    let later = start + Duration::from_secs(5);
    t.set_teams_busy("213", false, later);
    let idle = check_framing(&drain(&mut t, later)[0].bytes);
    assert_eq!(cseq(&idle), 9);
    assert_eq!(version_of(idle.body()), Some(32));
    assert!(!shows_teams(&idle));
    assert_eq!(
        body_text(&idle),
        pbx_doc.replace("version=\"30\"", "version=\"32\"")
    );
    assert_eq!(
        idle.header(HeaderName::SubscriptionState),
        Some(&b"active;expires=3595"[..])
    );
    // and the PBX's next document keeps its numbering, without the Teams dialog
    let n = sub.notify(8, "active;expires=3590", &dialog_info("213", 31, false));
    let got = forwarded(&n, t.on_message(later, Direction::ToPhone, &sub.phone, &n)).unwrap();
    assert_eq!(cseq(&got), 10);
    assert_eq!(version_of(got.body()), Some(33));
    assert!(!shows_teams(&got));
}

#[test]
fn one_teams_notify_per_second_and_a_flap_sends_only_the_final_state() {
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let mut t = tracker();
    let sub = Sub::new(15, "214", Transport::Tcp);
    establish(&mut t, t0, &sub, 1, 0);

    // busy: at once
    t.set_teams_busy("214", true, ms(0));
    let first = drain(&mut t, ms(0));
    assert_eq!(first.len(), 1);
    assert!(shows_teams(&check_framing(&first[0].bytes)));

    // busy → idle → busy within the second: nothing (the phone shows busy already)
    t.set_teams_busy("214", false, ms(200));
    assert!(drain(&mut t, ms(200)).is_empty(), "rate: not before 1 s");
    assert_eq!(t.poll_timeout(), Some(ms(1000)));
    t.set_teams_busy("214", true, ms(500));
    assert!(drain(&mut t, ms(500)).is_empty());
    t.handle_timeout(ms(1000));
    assert!(
        drain(&mut t, ms(1000)).is_empty(),
        "busy→idle→busy: no NOTIFY"
    );

    // idle → busy → idle within a second of the last NOTIFY: one, at 1 s, idle
    t.set_teams_busy("214", false, ms(1100));
    let idle = drain(&mut t, ms(1100));
    assert_eq!(
        idle.len(),
        1,
        "more than a second since the last one: at once"
    );
    assert!(!shows_teams(&check_framing(&idle[0].bytes)));
    t.set_teams_busy("214", true, ms(1300));
    t.set_teams_busy("214", false, ms(1500));
    t.set_teams_busy("214", true, ms(1700));
    assert!(drain(&mut t, ms(1700)).is_empty());
    t.handle_timeout(ms(2099));
    assert!(drain(&mut t, ms(2099)).is_empty());
    t.handle_timeout(ms(2100));
    let last = drain(&mut t, ms(2100));
    assert_eq!(last.len(), 1, "one NOTIFY for the whole flap");
    let last = check_framing(&last[0].bytes);
    assert!(shows_teams(&last), "showing the final state");
    assert_eq!(cseq(&last), 4);
    assert_eq!(version_of(last.body()), Some(3));
}

#[test]
fn own_notifies_over_udp_are_retransmitted_until_answered() {
    let t0 = Instant::now();
    let mut t = tracker();
    let sub = Sub::new(16, "215", Transport::Udp);
    establish(&mut t, t0, &sub, 1, 0);
    t.set_teams_busy("215", true, t0);
    let sent = drain(&mut t, t0);
    assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    t.handle_timeout(t0 + Duration::from_millis(500));
    let again = drain(&mut t, t0 + Duration::from_millis(500));
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].bytes, sent[0].bytes,
        "a retransmission is the same bytes"
    );
    let own = check_framing(&sent[0].bytes);
    let _ = t.on_message(
        t0,
        Direction::FromPhone,
        &sub.phone,
        &answer(&own, 200, "OK"),
    );
    t.handle_timeout(t0 + Duration::from_millis(1500));
    assert!(drain(&mut t, t0 + Duration::from_millis(1500)).is_empty());
}

#[test]
fn presence_subscriptions_are_tracked_too() {
    let now = Instant::now();
    let mut t = tracker();
    let sub = Sub::new(17, "216", Transport::Tcp).presence();
    let _ = t.on_message(
        now,
        Direction::FromPhone,
        &sub.phone,
        &sub.subscribe(1, 3600, false),
    );
    let _ = t.on_message(
        now,
        Direction::ToPhone,
        &sub.phone,
        &sub.subscribe_answer(1, "200 OK", 3600),
    );
    let pidf = "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:216@pbx\"><tuple id=\"a\"><status><basic>open</basic></status></tuple></presence>";
    let n = sub.notify(3, "active;expires=3600", pidf);
    assert_eq!(
        t.on_message(now, Direction::ToPhone, &sub.phone, &n),
        Forward::Pass
    );
    t.set_teams_busy("216", true, now);
    let own = check_framing(&drain(&mut t, now)[0].bytes);
    assert_eq!(own.header(HeaderName::Event), Some(&b"presence"[..]));
    assert_eq!(
        own.header(HeaderName::ContentType),
        Some(&b"application/pidf+xml"[..])
    );
    assert!(body_text(&own).contains("Busy (Teams)"));
    assert_eq!(cseq(&own), 4);
}

// ---------------------------------------------------------------- bounds

#[test]
fn spoofed_subscribes_never_push_out_accepted_subscriptions() {
    let now = Instant::now();
    let config = SubscriptionConfig {
        max_subscriptions: 100,
        ..SubscriptionConfig::default()
    };
    let mut t = SubscriptionTracker::new(config, TestRenderer);
    let real: Vec<Sub> = (0..10)
        .map(|i| Sub::new(i, "300", Transport::Udp))
        .collect();
    for sub in &real {
        establish(&mut t, now, sub, 1, 0);
    }
    for i in 0..10_000 {
        let spoof = Sub::new(1000 + i, &format!("{}", 4000 + i), Transport::Udp);
        let _ = t.on_message(
            now,
            Direction::FromPhone,
            &spoof.phone,
            &spoof.subscribe(1, 3600, false),
        );
        // NOTIFYs and answers for dialogs nobody accepted create nothing
        let n = spoof.notify(1, "active", &dialog_info("x", 0, false));
        let mut stranger = spoof.clone();
        stranger.call_id = format!("stranger-{i}");
        let _ = t.on_message(
            now,
            Direction::ToPhone,
            &spoof.phone,
            &stranger.notify(1, "active", ""),
        );
        let _ = t.on_message(
            now,
            Direction::FromPhone,
            &spoof.phone,
            &answer(&n, 200, "OK"),
        );
        assert!(t.len() <= 100);
    }
    assert_eq!(t.len(), 100);
    for sub in &real {
        assert!(
            t.subscription(sub.call_id.as_bytes(), sub.phone_tag.as_bytes())
                .is_some()
        );
    }
    t.handle_timeout(now + Duration::from_secs(33));
    assert_eq!(t.len(), 10, "pending ones are gone after 64·T1");
    assert_eq!(t.watchers("300"), 10);
    t.set_teams_busy("300", true, now + Duration::from_secs(33));
    assert_eq!(drain(&mut t, now + Duration::from_secs(33)).len(), 10);
}

// ---------------------------------------------------------------- fan-out

#[test]
fn fan_out_of_one_teams_change_to_1000_watchers() {
    const WATCHERS: u32 = 1000;
    let now = Instant::now();
    let mut t = tracker();
    for i in 0..WATCHERS {
        let sub = Sub::new(i, "500", Transport::Udp);
        establish(&mut t, now, &sub, 100, 40);
    }
    assert_eq!(t.watchers("500"), WATCHERS as usize);
    let mut runs = Vec::new();
    for round in 0..5u64 {
        let at = now + Duration::from_secs(2 * round + 2);
        let started = Instant::now();
        t.set_teams_busy("500", round % 2 == 0, at);
        let sent = drain(&mut t, at);
        let took = started.elapsed();
        assert_eq!(sent.len(), WATCHERS as usize);
        runs.push(took);
    }
    runs.sort();
    let median = runs[runs.len() / 2];
    println!(
        "blf fan-out: one Teams change to {WATCHERS} watchers: median {:.2} ms (min {:.2}, max {:.2}) \
         over {} changes, NOTIFYs built and rendered",
        median.as_secs_f64() * 1e3,
        runs[0].as_secs_f64() * 1e3,
        runs[runs.len() - 1].as_secs_f64() * 1e3,
        runs.len()
    );
    if !cfg!(debug_assertions) {
        assert!(median <= Duration::from_millis(100), "{median:?}");
    }
}

/// The same fan-out with the renderer the proxy core runs: each watcher's document is
/// the PBX's dialog-info parsed, the Teams dialog injected for its phone profile, and
/// written again.
#[test]
fn fan_out_with_the_document_renderer_to_1000_watchers() {
    const WATCHERS: u32 = 1000;
    let now = Instant::now();
    let mut t = SubscriptionTracker::new(
        SubscriptionConfig::default(),
        presence_proxy::blf::DocumentRenderer::default(),
    );
    for i in 0..WATCHERS {
        let sub = Sub::new(i, "500", Transport::Udp);
        establish(&mut t, now, &sub, 100, 40);
    }
    let mut runs = Vec::new();
    for round in 0..5u64 {
        let at = now + Duration::from_secs(2 * round + 2);
        let started = Instant::now();
        t.set_teams_busy("500", round % 2 == 0, at);
        let sent = drain(&mut t, at);
        let took = started.elapsed();
        assert_eq!(sent.len(), WATCHERS as usize);
        if round % 2 == 0 {
            assert!(
                sent.iter()
                    .all(|s| String::from_utf8_lossy(&s.bytes).contains("teams-500"))
            );
        }
        runs.push(took);
    }
    runs.sort();
    let median = runs[runs.len() / 2];
    println!(
        "blf fan-out with the document renderer: one Teams change to {WATCHERS} watchers: median {:.2} ms (min {:.2}, max {:.2})",
        median.as_secs_f64() * 1e3,
        runs[0].as_secs_f64() * 1e3,
        runs[runs.len() - 1].as_secs_f64() * 1e3,
    );
    if !cfg!(debug_assertions) {
        assert!(median <= Duration::from_millis(100), "{median:?}");
    }
}

// ---------------------------------------------------------------- property

#[derive(Debug, Clone)]
enum Op {
    /// The PBX notifies subscription `sub`: the extension in a call or not; the version
    /// steps by 1, or jumps.
    PbxNotify { sub: usize, busy: bool, jump: bool },
    /// The phone of `sub` answers one of its unanswered NOTIFYs (any of them: late and
    /// reordered answers).
    PhoneAnswer { sub: usize, which: Index },
    /// The sync engine's Teams verdict for the extension.
    Teams(bool),
    /// Time passes.
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, any::<bool>(), prop::bool::weighted(0.1))
            .prop_map(|(sub, busy, jump)| Op::PbxNotify { sub, busy, jump }),
        4 => (0..2usize, any::<Index>()).prop_map(|(sub, which)| Op::PhoneAnswer { sub, which }),
        3 => any::<bool>().prop_map(Op::Teams),
        3 => (0..1500u64).prop_map(Op::Advance),
    ]
}

/// How many NOTIFYs a phone of the model leaves unanswered at most.
const PHONE_MAX_UNANSWERED: usize = 32;

/// What one phone has seen of its subscription, and what the PBX has.
#[derive(Debug, Default)]
struct Watcher {
    pbx_cseq: u32,
    pbx_version: u64,
    last_cseq: u32,
    last_version: u64,
    /// NOTIFYs received and not answered yet, with the PBX CSeq they stand for (`None`:
    /// the proxy's own).
    unanswered: Vec<(Message, Option<u32>, Instant)>,
    own_sent_at: Vec<Instant>,
    own_bytes: Vec<Bytes>,
    last_shows_teams: bool,
}

struct World {
    t: Tracker,
    subs: Vec<Sub>,
    watchers: Vec<Watcher>,
    now: Instant,
    teams_busy: bool,
}

impl World {
    /// Checks one message reaching a phone: framing, strictly increasing CSeq and
    /// version, the Teams dialog when it must be there.
    fn phone_receives(&mut self, i: usize, msg: &Message, pbx_cseq: Option<u32>) {
        let w = &mut self.watchers[i];
        let seq = cseq(msg);
        assert!(seq > w.last_cseq, "CSeq {seq} after {}", w.last_cseq);
        w.last_cseq = seq;
        if !msg.body().is_empty() {
            let version = version_of(msg.body()).unwrap();
            assert!(
                version > w.last_version,
                "version {version} after {}",
                w.last_version
            );
            w.last_version = version;
            w.last_shows_teams = shows_teams(msg);
        }
        w.unanswered.push((msg.clone(), pbx_cseq, self.now));
    }

    fn drain_own(&mut self) {
        while let Some(tx) = self.t.poll_transmit(self.now, via_for) {
            let msg = check_framing(&tx.bytes);
            let i = self.subs.iter().position(|s| s.phone == tx.flow).unwrap();
            if self.watchers[i].own_bytes.contains(&tx.bytes) {
                continue; // a UDP retransmission: the same bytes again
            }
            // rate: Teams-driven NOTIFYs at least a second apart
            if let Some(&last) = self.watchers[i].own_sent_at.last() {
                assert!(
                    self.now - last >= Duration::from_secs(1),
                    "two own NOTIFYs within 1 s"
                );
            }
            assert_eq!(
                shows_teams(&msg),
                self.teams_busy,
                "an own NOTIFY shows the current state"
            );
            self.watchers[i].own_sent_at.push(self.now);
            self.watchers[i].own_bytes.push(tx.bytes.clone());
            self.phone_receives(i, &msg, None);
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::PbxNotify { sub, busy, jump } => {
                let w = &mut self.watchers[sub];
                w.pbx_cseq += 1;
                w.pbx_version += if jump { 5 } else { 1 };
                let n = self.subs[sub].notify(
                    w.pbx_cseq,
                    "active;expires=3600",
                    &dialog_info(&self.subs[sub].ext, w.pbx_version, busy),
                );
                let pbx_cseq = w.pbx_cseq;
                let action =
                    self.t
                        .on_message(self.now, Direction::ToPhone, &self.subs[sub].phone, &n);
                assert_ne!(action, Forward::Absorb);
                let got = forwarded(&n, action).unwrap();
                let got = check_framing(got.as_bytes());
                assert_eq!(
                    shows_teams(&got),
                    self.teams_busy,
                    "a passing NOTIFY shows Teams-busy"
                );
                assert!(body_text(&got).contains(if busy { "confirmed" } else { "terminated" }));
                self.phone_receives(sub, &got, Some(pbx_cseq));
            }
            Op::PhoneAnswer { sub, which } => {
                let w = &mut self.watchers[sub];
                if w.unanswered.is_empty() {
                    return;
                }
                let i = which.index(w.unanswered.len());
                self.phone_answers(sub, i);
            }
            Op::Teams(busy) => {
                self.teams_busy = busy;
                self.t.set_teams_busy("600", busy, self.now);
            }
            Op::Advance(ms) => {
                let then = self.now + Duration::from_millis(ms);
                // a phone answers within 30 s (the NOTIFY transaction lives 32 s)
                for sub in 0..self.subs.len() {
                    while let Some(i) = self.watchers[sub]
                        .unanswered
                        .iter()
                        .position(|(_, _, at)| then - *at > Duration::from_secs(30))
                    {
                        self.phone_answers(sub, i);
                    }
                }
                self.now = then;
                if self.t.poll_timeout().is_some_and(|at| at <= self.now) {
                    self.t.handle_timeout(self.now);
                }
            }
        }
        self.drain_own();
        // a phone keeps only so many NOTIFYs unanswered (the tracker remembers 64; what
        // happens past that is `answers_past_the_remembered_64_are_absorbed`)
        for sub in 0..self.subs.len() {
            while self.watchers[sub].unanswered.len() > PHONE_MAX_UNANSWERED {
                self.phone_answers(sub, 0);
            }
        }
    }

    /// The phone of `sub` answers its `i`-th unanswered NOTIFY with a 200.
    fn phone_answers(&mut self, sub: usize, i: usize) {
        {
            {
                let (received, pbx_cseq, _) = self.watchers[sub].unanswered.remove(i);
                let reply = answer(&received, 200, "OK");
                let action = self.t.on_message(
                    self.now,
                    Direction::FromPhone,
                    &self.subs[sub].phone,
                    &reply,
                );
                match (pbx_cseq, forwarded(&reply, action)) {
                    (None, None) => {}
                    (None, Some(m)) => panic!("the PBX saw an answer to an own NOTIFY: {m:?}"),
                    (Some(p), None) => panic!("the answer to PBX CSeq {p} was absorbed"),
                    (Some(p), Some(m)) => {
                        let m = check_framing(m.as_bytes());
                        assert_eq!(cseq(&m), p, "the PBX's CSeq maps back exactly");
                        assert_eq!(m.cseq().unwrap().unwrap().method_bytes(), b"NOTIFY");
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn numbering_holds_over_random_interleavings(ops in prop::collection::vec(op(), 1..300)) {
        let start = Instant::now();
        let subs = vec![Sub::new(1, "600", Transport::Udp), Sub::new(2, "600", Transport::Tcp)];
        let mut world = World {
            t: tracker(),
            subs: subs.clone(),
            watchers: vec![Watcher::default(), Watcher::default()],
            now: start,
            teams_busy: false,
        };
        for (i, sub) in subs.iter().enumerate() {
            establish(&mut world.t, start, sub, 1, 0);
            world.watchers[i].pbx_cseq = 1;
            world.watchers[i].last_cseq = 1;
        }
        for op in &ops {
            world.step(op);
        }
        // once Teams has been quiet for a second, every phone shows the final state
        world.step(&Op::Advance(1000));
        world.step(&Op::Advance(100));
        for w in &world.watchers {
            prop_assert_eq!(w.last_shows_teams, world.teams_busy);
        }
        prop_assert_eq!(world.t.len(), 2);
    }
}
