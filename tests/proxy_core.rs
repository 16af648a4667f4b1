//! The sans-IO proxy core driven with a fake clock and a fake network: transactions and
//! their timers, CANCEL, ACK, forking, Record-Route and Route handling both ways,
//! registration aliases, access control and limits.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use presence_proxy::config::Cidr;
use presence_proxy::proxy::{Flow, Listener, Proxy, ProxyConfig, Transmit};
use presence_proxy::sip::{HeaderName, Message, Method};
use presence_proxy::transport::Transport;

const PROXY: &str = "10.0.0.1:5060";
const PBX: &str = "10.0.0.100:5070";
const PHONE: &str = "10.1.0.5:5062";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn config() -> ProxyConfig {
    ProxyConfig {
        listeners: vec![
            Listener {
                transport: Transport::Udp,
                local: addr(PROXY),
                advertised: addr(PROXY),
            },
            Listener {
                transport: Transport::Tcp,
                local: addr(PROXY),
                advertised: addr(PROXY),
            },
        ],
        pbx: addr(PBX),
        pbx_transport: Transport::Udp,
        pbx_path: false,
        allowed_networks: vec!["10.1.0.0/16".parse::<Cidr>().unwrap()],
        max_transactions: 1000,
        max_bindings: 1000,
        max_requests_per_second_per_source: 1000,
        seed: 7,
        observe: presence_proxy::observe::ObserveConfig::default(),
        teams_busy_response: Some((486, "Busy Here")),
        blf: presence_proxy::blf::DocumentRenderer::default(),
    }
}

/// The proxy, a clock and what it has sent.
struct Net {
    proxy: Proxy,
    now: Instant,
}

impl Net {
    fn new() -> Self {
        Self::with(config())
    }

    fn with(config: ProxyConfig) -> Self {
        Self {
            proxy: Proxy::new(config),
            now: Instant::now(),
        }
    }

    fn udp(remote: &str) -> Flow {
        Flow {
            transport: Transport::Udp,
            remote: addr(remote),
            local: addr(PROXY),
            conn: None,
        }
    }

    fn receive(&mut self, remote: &str, text: &str) -> Vec<Transmit> {
        self.receive_on(Self::udp(remote), text)
    }

    fn receive_on(&mut self, flow: Flow, text: &str) -> Vec<Transmit> {
        self.proxy
            .handle_datagram(self.now, flow, Bytes::from(text.replace('\n', "\r\n")));
        self.drain()
    }

    fn drain(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.proxy.poll_transmit()).collect()
    }

    /// Advances the clock by `d`, firing every deadline on the way in order.
    fn advance(&mut self, d: Duration) -> Vec<Transmit> {
        let end = self.now + d;
        let mut out = Vec::new();
        while let Some(at) = self.proxy.poll_timeout().filter(|&at| at <= end) {
            self.now = self.now.max(at);
            self.proxy.handle_timeout(self.now);
            out.extend(self.drain());
        }
        self.now = end;
        out
    }
}

fn parse(t: &Transmit) -> Message {
    Message::parse(t.bytes.clone())
        .unwrap_or_else(|e| panic!("proxy sent an unparseable message: {e}"))
}

fn to<'a>(out: &'a [Transmit], remote: &str) -> Vec<&'a Transmit> {
    out.iter()
        .filter(|t| t.flow.remote == addr(remote))
        .collect()
}

fn only_to(out: &[Transmit], remote: &str) -> Message {
    let sent = to(out, remote);
    assert_eq!(
        sent.len(),
        1,
        "expected one message to {remote}, got {}: {out:#?}",
        sent.len()
    );
    parse(sent[0])
}

fn status(m: &Message) -> u16 {
    m.status().expect("a response")
}

fn values(msg: &Message, name: HeaderName) -> Vec<String> {
    msg.values(name)
        .map(|(_, s)| String::from_utf8_lossy(msg.slice(s)).into_owned())
        .collect()
}

fn invite(call: &str, branch: &str) -> String {
    format!(
        "INVITE sip:+4930123456@pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 192.168.1.5:5062;branch={branch};rport
Max-Forwards: 70
From: <sip:201@pbx.example.com>;tag=ph1
To: <sip:+4930123456@pbx.example.com>
Call-ID: {call}
CSeq: 1 INVITE
Contact: <sip:201@192.168.1.5:5062>
Content-Length: 0

"
    )
}

/// A response from the PBX to the forwarded request `req`, copying its Vias.
fn answer(req: &Message, code: u16, reason: &str, to_tag: Option<&str>, extra: &str) -> String {
    let mut s = format!("SIP/2.0 {code} {reason}\n");
    for v in values(req, HeaderName::Via) {
        s += &format!("Via: {v}\n");
    }
    for rr in values(req, HeaderName::RecordRoute) {
        s += &format!("Record-Route: {rr}\n");
    }
    let to = String::from_utf8_lossy(req.header(HeaderName::To).unwrap()).into_owned();
    let to = match to_tag {
        Some(tag) => format!("{to};tag={tag}"),
        None => to,
    };
    s += &format!(
        "From: {}\nTo: {to}\nCall-ID: {}\nCSeq: {}\n{extra}Content-Length: 0\n\n",
        String::from_utf8_lossy(req.header(HeaderName::From).unwrap()),
        String::from_utf8_lossy(req.header(HeaderName::CallId).unwrap()),
        String::from_utf8_lossy(req.header(HeaderName::CSeq).unwrap()),
    );
    s
}

#[test]
fn an_invite_is_answered_100_and_forwarded_with_via_rport_record_route_and_max_forwards() {
    let mut net = Net::new();
    let out = net.receive(PHONE, &invite("c1", "z9hG4bK-a"));
    let trying = only_to(&out, PHONE);
    assert_eq!(status(&trying), 100);
    let fwd = only_to(&out, PBX);
    let vias: Vec<_> = fwd.vias().map(|v| v.unwrap()).collect();
    assert_eq!(vias.len(), 2);
    assert_eq!(vias[0].host(), b"10.0.0.1");
    assert_eq!(vias[0].port(), Some(5060));
    assert!(vias[0].branch().unwrap().starts_with(b"z9hG4bK"));
    assert_eq!(
        vias[1].received(),
        Some(&b"10.1.0.5"[..]),
        "NAT: where it really came from"
    );
    assert_eq!(vias[1].rport(), Some(Some(5062)));
    assert_eq!(fwd.max_forwards().unwrap().unwrap(), 69);
    let rr: Vec<_> = fwd.record_routes().map(|r| r.unwrap()).collect();
    assert_eq!(rr.len(), 1, "same socket both ways: one Record-Route");
    assert_eq!(rr[0].uri().host(), b"10.0.0.1");
    assert!(rr[0].uri().params().contains("lr"));
    assert_eq!(
        rr[0].uri().user().map(<[u8]>::len),
        Some(16),
        "flow token in the user part"
    );
    assert_eq!(
        fwd.request_uri_bytes(),
        Some(&b"sip:+4930123456@pbx.example.com"[..])
    );
    assert_eq!(fwd.body(), b"");
}

#[test]
fn provisional_and_final_responses_are_relayed_with_our_via_popped_and_100_absorbed() {
    let mut net = Net::new();
    let out = net.receive(PHONE, &invite("c2", "z9hG4bK-b"));
    let fwd = only_to(&out, PBX);
    assert!(
        net.receive(PBX, &answer(&fwd, 100, "Trying", None, ""))
            .is_empty(),
        "100 is hop by hop"
    );
    let ringing = only_to(
        &net.receive(PBX, &answer(&fwd, 180, "Ringing", Some("pbx1"), "")),
        PHONE,
    );
    assert_eq!(status(&ringing), 180);
    assert_eq!(values(&ringing, HeaderName::Via).len(), 1);
    assert!(values(&ringing, HeaderName::Via)[0].contains("branch=z9hG4bK-b"));
    let ok = only_to(
        &net.receive(PBX, &answer(&fwd, 200, "OK", Some("pbx1"), "")),
        PHONE,
    );
    assert_eq!(status(&ok), 200);
    assert_eq!(
        ok.record_routes().count(),
        1,
        "Record-Route reaches the caller"
    );
    // a retransmitted 2xx is forwarded again (the caller's ACK is what stops it)
    let again = only_to(
        &net.receive(PBX, &answer(&fwd, 200, "OK", Some("pbx1"), "")),
        PHONE,
    );
    assert_eq!(status(&again), 200);
}

#[test]
fn after_a_2xx_a_retransmitted_invite_is_absorbed_without_an_answer() {
    // RFC 6026 §8.7: in Accepted the INVITE server transaction absorbs retransmissions;
    // the UAS, not the proxy, retransmits its 2xx
    let mut net = Net::new();
    let text = invite("c3a", "z9hG4bK-c3a");
    let fwd = only_to(&net.receive(PHONE, &text), PBX);
    let ok = only_to(
        &net.receive(PBX, &answer(&fwd, 200, "OK", Some("pbx1"), "")),
        PHONE,
    );
    assert_eq!(status(&ok), 200);
    let again = net.receive(PHONE, &text);
    assert!(
        again.is_empty(),
        "neither forwarded nor answered: {again:#?}"
    );
    assert_eq!(net.proxy.transaction_count(), 1, "the transaction lingers");
    // the UAS's own 2xx retransmission still reaches the caller
    let resent = only_to(
        &net.receive(PBX, &answer(&fwd, 200, "OK", Some("pbx1"), "")),
        PHONE,
    );
    assert_eq!(status(&resent), 200);
}

#[test]
fn a_retransmitted_invite_is_absorbed_and_answered_with_the_last_response() {
    let mut net = Net::new();
    let text = invite("c3", "z9hG4bK-c");
    let out = net.receive(PHONE, &text);
    assert_eq!(to(&out, PBX).len(), 1);
    let again = net.receive(PHONE, &text);
    assert!(to(&again, PBX).is_empty(), "not forwarded twice");
    assert_eq!(status(&only_to(&again, PHONE)), 100);
    assert_eq!(net.proxy.transaction_count(), 1);
}

#[test]
fn udp_requests_are_retransmitted_on_timer_a_and_time_out_with_408() {
    let mut net = Net::new();
    net.receive(PHONE, &invite("c4", "z9hG4bK-d"));
    let mut retransmit_times = Vec::new();
    let start = net.now;
    let mut timeout = None;
    for _ in 0..40 {
        let out = net.advance(Duration::from_millis(250));
        for t in &out {
            if t.flow.remote == addr(PBX) {
                retransmit_times.push((net.now - start).as_millis());
            }
            if t.flow.remote == addr(PHONE) && status(&parse(t)) == 408 {
                timeout = Some((net.now - start).as_secs());
            }
        }
    }
    // timer A: 0.5 s, then doubling: 1.5, 3.5, 7.5 s ...
    assert_eq!(&retransmit_times[..4], &[500, 1500, 3500, 7500]);
    assert_eq!(timeout, None, "still within timer B");
    let mut four_oh_eight = None;
    for _ in 0..100 {
        for t in net.advance(Duration::from_millis(250)) {
            if t.flow.remote == addr(PHONE) {
                let m = parse(&t);
                assert_eq!(status(&m), 408);
                assert!(m.to().unwrap().unwrap().tag().is_some());
                four_oh_eight = Some(net.now - start);
            }
        }
        if four_oh_eight.is_some() {
            break;
        }
    }
    let at = four_oh_eight.expect("408 after timer B");
    assert!(
        at >= Duration::from_secs(32) && at < Duration::from_secs(33),
        "{at:?}"
    );
    // and the transaction eventually goes away
    net.advance(Duration::from_secs(40));
    assert_eq!(net.proxy.transaction_count(), 0);
}

#[test]
fn a_provisional_stops_invite_retransmissions() {
    let mut net = Net::new();
    let fwd = only_to(&net.receive(PHONE, &invite("c5", "z9hG4bK-e")), PBX);
    net.receive(PBX, &answer(&fwd, 100, "Trying", None, ""));
    let later = net.advance(Duration::from_secs(10));
    assert!(
        to(&later, PBX).is_empty(),
        "no retransmission after a provisional: {later:#?}"
    );
}

#[test]
fn cancel_before_any_provisional_waits_and_then_goes_downstream() {
    let mut net = Net::new();
    let fwd = only_to(&net.receive(PHONE, &invite("c6", "z9hG4bK-f")), PBX);
    let cancel = "CANCEL sip:+4930123456@pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 192.168.1.5:5062;branch=z9hG4bK-f;rport
Max-Forwards: 70
From: <sip:201@pbx.example.com>;tag=ph1
To: <sip:+4930123456@pbx.example.com>
Call-ID: c6
CSeq: 1 CANCEL
Content-Length: 0

";
    let out = net.receive(PHONE, cancel);
    let ok = only_to(&out, PHONE);
    assert_eq!(
        (status(&ok), ok.cseq().unwrap().unwrap().method()),
        (200, Method::Cancel)
    );
    assert!(
        to(&out, PBX).is_empty(),
        "no CANCEL before a provisional (RFC 3261 §9.1)"
    );
    let out = net.receive(PBX, &answer(&fwd, 180, "Ringing", Some("t1"), ""));
    let down = only_to(&out, PBX);
    assert_eq!(down.method(), Some(Method::Cancel));
    assert_eq!(
        values(&down, HeaderName::Via),
        values(&fwd, HeaderName::Via)[..1].to_vec(),
        "same branch as the INVITE"
    );
    // the PBX ends the INVITE with 487: ACKed here, relayed to the phone
    let out = net.receive(
        PBX,
        &answer(&fwd, 487, "Request Terminated", Some("t1"), ""),
    );
    let ack = only_to(&out, PBX);
    assert_eq!(ack.method(), Some(Method::Ack));
    assert_eq!(ack.to().unwrap().unwrap().tag(), Some(&b"t1"[..]));
    assert_eq!(status(&only_to(&out, PHONE)), 487);
}

#[test]
fn a_cancel_racing_a_200_is_answered_but_not_forwarded() {
    let mut net = Net::new();
    let fwd = only_to(&net.receive(PHONE, &invite("c7", "z9hG4bK-g")), PBX);
    net.receive(PBX, &answer(&fwd, 180, "Ringing", Some("t"), ""));
    net.receive(PBX, &answer(&fwd, 200, "OK", Some("t"), ""));
    let out = net.receive(
        PHONE,
        "CANCEL sip:+4930123456@pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 192.168.1.5:5062;branch=z9hG4bK-g;rport
From: <sip:201@pbx.example.com>;tag=ph1
To: <sip:+4930123456@pbx.example.com>
Call-ID: c7
CSeq: 1 CANCEL
Content-Length: 0

",
    );
    assert_eq!(status(&only_to(&out, PHONE)), 200);
    assert!(to(&out, PBX).is_empty());
}

#[test]
fn a_cancel_for_nothing_gets_481() {
    let mut net = Net::new();
    let out = net.receive(
        PHONE,
        "CANCEL sip:x@pbx SIP/2.0
Via: SIP/2.0/UDP 192.168.1.5:5062;branch=z9hG4bK-none
From: <sip:201@pbx>;tag=1
To: <sip:x@pbx>
Call-ID: nothing
CSeq: 1 CANCEL
Content-Length: 0

",
    );
    assert_eq!(status(&only_to(&out, PHONE)), 481);
}

#[test]
fn a_non_2xx_final_is_acked_hop_by_hop_and_retransmitted_upstream_until_acked() {
    let mut net = Net::new();
    let fwd = only_to(&net.receive(PHONE, &invite("c8", "z9hG4bK-h")), PBX);
    let busy = answer(&fwd, 486, "Busy Here", Some("b"), "");
    let out = net.receive(PBX, &busy);
    assert_eq!(only_to(&out, PBX).method(), Some(Method::Ack));
    assert_eq!(status(&only_to(&out, PHONE)), 486);
    // the PBX retransmits its 486: ACK again, nothing new upstream
    let out = net.receive(PBX, &busy);
    assert_eq!(only_to(&out, PBX).method(), Some(Method::Ack));
    assert!(to(&out, PHONE).is_empty());
    // the phone has not ACKed: timer G resends the 486 at 0.5 s, 1.5 s ...
    let out = net.advance(Duration::from_millis(600));
    assert_eq!(status(&only_to(&out, PHONE)), 486);
    // the phone's ACK (same branch) is absorbed and stops timer G
    let ack = "ACK sip:+4930123456@pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 192.168.1.5:5062;branch=z9hG4bK-h;rport
Max-Forwards: 70
From: <sip:201@pbx.example.com>;tag=ph1
To: <sip:+4930123456@pbx.example.com>;tag=b
Call-ID: c8
CSeq: 1 ACK
Content-Length: 0

";
    assert!(
        net.receive(PHONE, ack).is_empty(),
        "ACK for a non-2xx stops here"
    );
    assert!(net.advance(Duration::from_secs(5)).is_empty());
}

#[test]
fn forked_early_dialogs_and_two_200s_are_all_relayed() {
    let mut net = Net::new();
    let fwd = only_to(&net.receive(PHONE, &invite("c9", "z9hG4bK-i")), PBX);
    for tag in ["deskA", "softB"] {
        let r = only_to(
            &net.receive(PBX, &answer(&fwd, 180, "Ringing", Some(tag), "")),
            PHONE,
        );
        assert_eq!(r.to().unwrap().unwrap().tag(), Some(tag.as_bytes()));
    }
    for tag in ["deskA", "softB"] {
        let r = only_to(
            &net.receive(PBX, &answer(&fwd, 200, "OK", Some(tag), "")),
            PHONE,
        );
        assert_eq!(
            (status(&r), r.to().unwrap().unwrap().tag()),
            (200, Some(tag.as_bytes()))
        );
    }
}

#[test]
fn an_in_dialog_ack_and_bye_follow_the_route_set_both_ways() {
    let mut net = Net::new();
    let fwd = only_to(&net.receive(PHONE, &invite("c10", "z9hG4bK-j")), PBX);
    let rr = values(&fwd, HeaderName::RecordRoute)[0].clone();
    net.receive(
        PBX,
        &answer(
            &fwd,
            200,
            "OK",
            Some("t"),
            "Contact: <sip:pbx@10.0.0.100:5070>\n",
        ),
    );
    // the phone's 2xx ACK, through our Record-Route: forwarded statelessly, route popped
    let ack = format!(
        "ACK sip:pbx@10.0.0.100:5070 SIP/2.0
Via: SIP/2.0/UDP 192.168.1.5:5062;branch=z9hG4bK-ack1;rport
Route: {rr}
Max-Forwards: 70
From: <sip:201@pbx.example.com>;tag=ph1
To: <sip:+4930123456@pbx.example.com>;tag=t
Call-ID: c10
CSeq: 1 ACK
Content-Length: 0

"
    );
    let out = net.receive(PHONE, &ack);
    let fwd_ack = only_to(&out, PBX);
    assert_eq!(fwd_ack.routes().count(), 0, "our Route popped");
    assert_eq!(
        fwd_ack.request_uri_bytes(),
        Some(&b"sip:pbx@10.0.0.100:5070"[..])
    );
    assert_eq!(fwd_ack.vias().count(), 2);
    assert_eq!(
        net.receive(PHONE, &ack).len(),
        1,
        "a retransmitted ACK is forwarded the same way"
    );
    // the PBX hangs up: its BYE carries our Record-Route as Route and reaches the phone's
    // real address (the flow token), whatever the Contact said (192.168.1.5 is behind NAT)
    let bye = format!(
        "BYE sip:201@192.168.1.5:5062 SIP/2.0
Via: SIP/2.0/UDP 10.0.0.100:5070;branch=z9hG4bK-pbxbye
Route: {rr}
Max-Forwards: 70
From: <sip:+4930123456@pbx.example.com>;tag=t
To: <sip:201@pbx.example.com>;tag=ph1
Call-ID: c10
CSeq: 5 BYE
Content-Length: 0

"
    );
    let out = net.receive(PBX, &bye);
    let to_phone = only_to(&out, PHONE);
    assert_eq!(to_phone.method(), Some(Method::Bye));
    assert_eq!(to_phone.routes().count(), 0);
    assert_eq!(
        to_phone.request_uri_bytes(),
        Some(&b"sip:201@192.168.1.5:5062"[..])
    );
    let ok = format!(
        "SIP/2.0 200 OK\n{}From: <sip:+4930123456@pbx.example.com>;tag=t\nTo: <sip:201@pbx.example.com>;tag=ph1\nCall-ID: c10\nCSeq: 5 BYE\nContent-Length: 0\n\n",
        values(&to_phone, HeaderName::Via)
            .iter()
            .map(|v| format!("Via: {v}\n"))
            .collect::<String>()
    );
    let back = only_to(&net.receive(PHONE, &ok), PBX);
    assert_eq!(status(&back), 200);
    assert!(values(&back, HeaderName::Via)[0].contains("z9hG4bK-pbxbye"));
}

fn register(expires: u32, branch: &str) -> String {
    format!(
        "REGISTER sip:pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 192.168.1.5:5062;branch={branch};rport
Max-Forwards: 70
From: <sip:201@pbx.example.com>;tag=r1
To: <sip:201@pbx.example.com>
Call-ID: reg-1
CSeq: 2 REGISTER
Contact: <sip:201@192.168.1.5:5062;line=x1>;+sip.instance=\"<urn:uuid:1>\"
Expires: {expires}
Content-Length: 0

"
    )
}

/// The PBX's 200 to a forwarded REGISTER, echoing its (aliased) Contact.
fn register_ok(fwd: &Message, expires: u32) -> String {
    let contact = values(fwd, HeaderName::Contact)[0].clone();
    answer(
        fwd,
        200,
        "OK",
        Some("reg"),
        &format!("Contact: {contact};expires={expires}\n"),
    )
}

#[test]
fn registration_aliases_the_contact_and_the_pbx_reaches_the_phone_through_it() {
    let mut net = Net::new();
    let fwd = only_to(&net.receive(PHONE, &register(3600, "z9hG4bK-r1")), PBX);
    let contact = fwd.contacts().next().unwrap().unwrap();
    let alias = contact.address().unwrap();
    assert_eq!(alias.uri().host(), b"10.0.0.1", "the PBX sees the proxy");
    assert_eq!(alias.uri().user(), Some(&b"201"[..]));
    assert!(alias.uri().params().value("ppa").is_some());
    assert_eq!(
        alias.params().value("+sip.instance"),
        Some(&b"\"<urn:uuid:1>\""[..]),
        "header params kept"
    );
    let alias_uri = String::from_utf8_lossy(alias.uri().as_bytes()).into_owned();

    let ok = only_to(&net.receive(PBX, &register_ok(&fwd, 3600)), PHONE);
    assert_eq!(status(&ok), 200);
    let back = ok.contacts().next().unwrap().unwrap();
    assert_eq!(
        back.address().unwrap().uri().as_bytes(),
        b"sip:201@192.168.1.5:5062;line=x1",
        "the phone sees its own Contact"
    );
    assert_eq!(net.proxy.binding_count(), 1);

    // the PBX calls the registered contact: reaches the phone's real address
    let call = format!(
        "INVITE {alias_uri} SIP/2.0
Via: SIP/2.0/UDP 10.0.0.100:5070;branch=z9hG4bK-pbxinv
Max-Forwards: 70
From: <sip:+4930999@pbx.example.com>;tag=p1
To: <sip:201@pbx.example.com>
Call-ID: in-1
CSeq: 1 INVITE
Contact: <sip:pbx@10.0.0.100:5070>
Content-Length: 0

"
    );
    let out = net.receive(PBX, &call);
    assert_eq!(status(&only_to(&out, PBX)), 100);
    let inv = only_to(&out, PHONE);
    assert_eq!(
        inv.request_uri_bytes(),
        Some(&b"sip:201@192.168.1.5:5062;line=x1"[..])
    );
    assert_eq!(inv.record_routes().count(), 1);
    // the AoR works too (a PBX that addresses sip:201@proxy)
    let by_aor = call
        .replace(&alias_uri, "sip:201@10.0.0.1:5060")
        .replace("z9hG4bK-pbxinv", "z9hG4bK-pbxinv2")
        .replace("in-1", "in-2");
    let inv = only_to(&net.receive(PBX, &by_aor), PHONE);
    assert_eq!(
        inv.request_uri_bytes(),
        Some(&b"sip:201@192.168.1.5:5062;line=x1"[..])
    );
}

#[test]
fn an_unregistered_or_expired_binding_gets_404() {
    let mut net = Net::new();
    let fwd = only_to(&net.receive(PHONE, &register(60, "z9hG4bK-r2")), PBX);
    let alias = values(&fwd, HeaderName::Contact)[0].clone();
    let alias_uri = alias
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();
    net.receive(PBX, &register_ok(&fwd, 60));
    let call = |n: u32| {
        format!(
            "OPTIONS {alias_uri} SIP/2.0
Via: SIP/2.0/UDP 10.0.0.100:5070;branch=z9hG4bK-o{n}
From: <sip:pbx@pbx.example.com>;tag=p
To: <sip:201@pbx.example.com>
Call-ID: opt-{n}
CSeq: 1 OPTIONS
Content-Length: 0

"
        )
    };
    assert_eq!(
        only_to(&net.receive(PBX, &call(1)), PHONE).method(),
        Some(Method::Options)
    );
    net.advance(Duration::from_secs(75));
    assert_eq!(net.proxy.binding_count(), 0, "expired after 60 s");
    assert_eq!(status(&only_to(&net.receive(PBX, &call(2)), PBX)), 404);
    let bogus = call(3)
        .replace("ppa=", "ppa=0000")
        .replace("z9hG4bK-o3", "z9hG4bK-o4");
    assert_eq!(status(&only_to(&net.receive(PBX, &bogus), PBX)), 404);
}

#[test]
fn expires_zero_removes_the_binding() {
    let mut net = Net::new();
    let fwd = only_to(&net.receive(PHONE, &register(3600, "z9hG4bK-r3")), PBX);
    net.receive(PBX, &register_ok(&fwd, 3600));
    assert_eq!(net.proxy.binding_count(), 1);
    let fwd = only_to(
        &net.receive(
            PHONE,
            &register(0, "z9hG4bK-r4").replace("CSeq: 2", "CSeq: 3"),
        ),
        PBX,
    );
    net.receive(PBX, &register_ok(&fwd, 0));
    assert_eq!(net.proxy.binding_count(), 0);
}

#[test]
fn path_mode_adds_path_and_leaves_contacts_alone() {
    let mut cfg = config();
    cfg.pbx_path = true;
    let mut net = Net::with(cfg);
    let fwd = only_to(&net.receive(PHONE, &register(3600, "z9hG4bK-p1")), PBX);
    let path = fwd.paths().next().expect("a Path").unwrap();
    assert_eq!(path.uri().host(), b"10.0.0.1");
    assert!(path.uri().params().contains("lr"));
    assert_eq!(
        values(&fwd, HeaderName::Contact)[0],
        "<sip:201@192.168.1.5:5062;line=x1>;+sip.instance=\"<urn:uuid:1>\""
    );
    // the PBX routes a call through the Path: it reaches the phone's real address
    let path_uri = String::from_utf8_lossy(path.uri().as_bytes()).into_owned();
    let call = format!(
        "INVITE sip:201@192.168.1.5:5062;line=x1 SIP/2.0
Via: SIP/2.0/UDP 10.0.0.100:5070;branch=z9hG4bK-pp1
Route: <{path_uri}>
Max-Forwards: 70
From: <sip:+4930999@pbx.example.com>;tag=p1
To: <sip:201@pbx.example.com>
Call-ID: in-p
CSeq: 1 INVITE
Content-Length: 0

"
    );
    let inv = only_to(&net.receive(PBX, &call), PHONE);
    assert_eq!(inv.routes().count(), 0);
}

#[test]
fn strangers_get_403_and_only_phones_and_the_pbx_are_served() {
    let mut net = Net::new();
    let out = net.receive("203.0.113.9:5060", &invite("x1", "z9hG4bK-s"));
    assert_eq!(status(&only_to(&out, "203.0.113.9:5060")), 403);
    assert!(to(&out, PBX).is_empty());
    // a response from a stranger that names no transaction of ours goes nowhere
    let out = net.receive(
        "203.0.113.9:5060",
        "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKpp0000\nVia: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK-v\nFrom: <sip:a@b>;tag=1\nTo: <sip:c@d>;tag=2\nCall-ID: r\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
    );
    assert!(
        out.is_empty(),
        "not relayed to an address outside the allowed networks"
    );
}

#[test]
fn max_forwards_zero_gets_483() {
    let mut net = Net::new();
    let out = net.receive(
        PHONE,
        &invite("mf", "z9hG4bK-mf").replace("Max-Forwards: 70", "Max-Forwards: 0"),
    );
    assert_eq!(status(&only_to(&out, PHONE)), 483);
    assert!(to(&out, PBX).is_empty());
}

#[test]
fn transaction_and_rate_limits_answer_503_with_retry_after() {
    let mut cfg = config();
    cfg.max_transactions = 2;
    let mut net = Net::with(cfg);
    net.receive(PHONE, &invite("l1", "z9hG4bK-l1"));
    net.receive(PHONE, &invite("l2", "z9hG4bK-l2"));
    let out = net.receive(PHONE, &invite("l3", "z9hG4bK-l3"));
    let refused = only_to(&out, PHONE);
    assert_eq!(status(&refused), 503);
    assert!(refused.header(HeaderName::RetryAfter).is_some());
    assert!(to(&out, PBX).is_empty());

    let mut cfg = config();
    cfg.max_requests_per_second_per_source = 5;
    let mut net = Net::with(cfg);
    let mut refused = 0;
    for i in 0..20 {
        let out = net.receive(PHONE, &invite(&format!("r{i}"), &format!("z9hG4bK-r{i}")));
        refused += to(&out, PHONE)
            .iter()
            .filter(|t| parse(t).status() == Some(503))
            .count();
    }
    assert_eq!(
        refused, 15,
        "a burst of 5, then refused within the same second"
    );
    net.advance(Duration::from_secs(2));
    let out = net.receive(PHONE, &invite("after", "z9hG4bK-after"));
    assert_eq!(
        to(&out, PBX).len(),
        1,
        "allowed again after the bucket refills"
    );
}

#[test]
fn a_malformed_request_gets_400_naming_the_defect_and_a_malformed_response_is_dropped() {
    let mut net = Net::new();
    let out = net.receive(
        PHONE,
        &invite("bad", "z9hG4bK-bad").replace("CSeq: 1 INVITE", "CSeq: 1 BYE"),
    );
    let r = only_to(&out, PHONE);
    assert_eq!(status(&r), 400);
    assert!(String::from_utf8_lossy(r.reason().unwrap()).contains("CSeq"));
    let out = net.receive(PBX, "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKpp1\nCSeq: 1 INVITE\nContent-Length: 0\n\n");
    assert!(out.is_empty());
    assert!(net.receive(PHONE, "this is not SIP at all\n\n").is_empty());
    assert_eq!(net.proxy.stats().parse_errors, 3);
}

#[test]
fn a_response_with_a_malformed_lower_via_is_relayed_through_its_transaction() {
    // the lower Via is the phone's own, echoed by the PBX: the proxy routes the
    // response by its transaction (RFC 3261 §16.7) and needs only its own, top Via
    let mut net = Net::new();
    let out = net.receive(PHONE, &invite("lowvia", "z9hG4bK-lv"));
    let fwd = only_to(&out, PBX);
    let phone_via = values(&fwd, HeaderName::Via)[1].clone();
    let response = answer(&fwd, 180, "Ringing", Some("pbx1"), "")
        .replace(&phone_via, "SIP/2.0/UDP [not-an-address;branch=z9hG4bK-lv");
    let relayed = only_to(&net.receive(PBX, &response), PHONE);
    assert_eq!(status(&relayed), 180);
    assert_eq!(
        values(&relayed, HeaderName::Via),
        vec!["SIP/2.0/UDP [not-an-address;branch=z9hG4bK-lv".to_owned()],
        "our Via popped, the phone's left as it came"
    );
    assert_eq!(net.proxy.stats().parse_errors, 0);
    // a malformed *top* Via still drops the response: it names the transaction
    let response = answer(&fwd, 200, "OK", Some("pbx1"), "").replacen(
        "Via: SIP/2.0/UDP 10.0.0.1:5060",
        "Via: SIP/2.0/UDP [10.0.0.1:5060",
        1,
    );
    assert!(net.receive(PBX, &response).is_empty());
    assert_eq!(net.proxy.stats().parse_errors, 1);
}

#[test]
fn over_tcp_responses_return_on_the_same_connection_and_record_route_is_doubled() {
    let mut net = Net::new();
    let flow = Flow {
        transport: Transport::Tcp,
        remote: addr(PHONE),
        local: addr(PROXY),
        conn: Some(42),
    };
    let out = net.receive_on(
        flow,
        &invite("t1", "z9hG4bK-t1").replace("SIP/2.0/UDP 192.168.1.5", "SIP/2.0/TCP 192.168.1.5"),
    );
    let trying = out.iter().find(|t| t.flow.remote == addr(PHONE)).unwrap();
    assert_eq!(
        (trying.flow.transport, trying.flow.conn),
        (Transport::Tcp, Some(42))
    );
    let fwd = only_to(&out, PBX);
    let rr: Vec<_> = fwd
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.unwrap().uri().as_bytes()).into_owned())
        .collect();
    assert_eq!(
        rr.len(),
        2,
        "phone on TCP, PBX on UDP: double Record-Route (RFC 5658)"
    );
    assert!(
        rr[0].ends_with(";lr;r2=on") && !rr[0].contains("transport="),
        "top faces the PBX (UDP): {rr:?}"
    );
    assert!(
        rr[1].contains(";transport=tcp;lr;r2=on"),
        "second faces the phone (TCP): {rr:?}"
    );
    let ringing = net.receive(PBX, &answer(&fwd, 180, "Ringing", Some("x"), ""));
    assert_eq!(ringing[0].flow.conn, Some(42));
    // the PBX's in-dialog request with both routes: both popped, sent over the connection
    let bye = format!(
        "BYE sip:201@192.168.1.5:5062;transport=tcp SIP/2.0
Via: SIP/2.0/UDP 10.0.0.100:5070;branch=z9hG4bK-tb
Route: <{}>, <{}>
From: <sip:x@pbx>;tag=x
To: <sip:201@pbx>;tag=ph1
Call-ID: t1
CSeq: 9 BYE
Content-Length: 0

",
        rr[0], rr[1]
    );
    let out = net.receive(PBX, &bye);
    let sent = out
        .iter()
        .find(|t| t.flow.remote == addr(PHONE))
        .expect("to the phone");
    assert_eq!(
        (sent.flow.transport, sent.flow.conn),
        (Transport::Tcp, Some(42))
    );
    assert_eq!(parse(sent).routes().count(), 0);
}

#[test]
fn transactions_are_gone_after_their_linger_time() {
    let mut net = Net::new();
    for i in 0..10 {
        let fwd = only_to(
            &net.receive(PHONE, &invite(&format!("g{i}"), &format!("z9hG4bK-g{i}"))),
            PBX,
        );
        net.receive(PBX, &answer(&fwd, 200, "OK", Some("t"), ""));
    }
    assert_eq!(net.proxy.transaction_count(), 10);
    net.advance(Duration::from_secs(33));
    assert_eq!(net.proxy.transaction_count(), 0);
}

#[test]
fn the_ack_for_a_response_the_proxy_generated_is_absorbed() {
    let mut net = Net::new();
    let text = invite("own", "z9hG4bK-own").replace("Max-Forwards: 70", "Max-Forwards: 0");
    let r = only_to(&net.receive(PHONE, &text), PHONE);
    assert_eq!(status(&r), 483);
    let tag = String::from_utf8_lossy(r.to().unwrap().unwrap().tag().unwrap()).into_owned();
    let ack = format!(
        "ACK sip:+4930123456@pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 192.168.1.5:5062;branch=z9hG4bK-own;rport
Max-Forwards: 70
From: <sip:201@pbx.example.com>;tag=ph1
To: <sip:+4930123456@pbx.example.com>;tag={tag}
Call-ID: own
CSeq: 1 ACK
Content-Length: 0

"
    );
    assert!(
        net.receive(PHONE, &ack).is_empty(),
        "not forwarded to the PBX"
    );
}

#[test]
fn draining_refuses_new_requests_but_finishes_open_ones() {
    let mut net = Net::new();
    let fwd = only_to(&net.receive(PHONE, &invite("d1", "z9hG4bK-d1")), PBX);
    assert_eq!(net.proxy.pending_transaction_count(), 1);
    net.proxy.set_draining(true);
    let out = net.receive(PHONE, &invite("d2", "z9hG4bK-d2"));
    assert_eq!(status(&only_to(&out, PHONE)), 503);
    assert!(to(&out, PBX).is_empty());
    assert_eq!(
        status(&only_to(
            &net.receive(PBX, &answer(&fwd, 200, "OK", Some("t"), "")),
            PHONE
        )),
        200
    );
    assert_eq!(
        net.proxy.pending_transaction_count(),
        0,
        "nothing left to wait for"
    );
}

#[test]
fn a_phone_registered_over_tcp_gets_an_alias_the_udp_pbx_can_reach() {
    let mut net = Net::new();
    let flow = Flow {
        transport: Transport::Tcp,
        remote: addr(PHONE),
        local: addr(PROXY),
        conn: Some(9),
    };
    let out = net.receive_on(
        flow,
        &register(3600, "z9hG4bK-tr").replace("SIP/2.0/UDP 192.168.1.5", "SIP/2.0/TCP 192.168.1.5"),
    );
    let fwd = only_to(&out, PBX);
    let contact = fwd.contacts().next().unwrap().unwrap();
    let uri = contact.address().unwrap().uri();
    assert_eq!(
        uri.params().value("transport"),
        None,
        "the alias faces the PBX, which is on UDP"
    );
    let alias_uri = String::from_utf8_lossy(uri.as_bytes()).into_owned();
    net.receive(PBX, &register_ok(&fwd, 3600));
    let call = format!(
        "INVITE {alias_uri} SIP/2.0
Via: SIP/2.0/UDP 10.0.0.100:5070;branch=z9hG4bK-tcpin
From: <sip:+4930999@pbx.example.com>;tag=p1
To: <sip:201@pbx.example.com>
Call-ID: in-tcp
CSeq: 1 INVITE
Content-Length: 0

"
    );
    let out = net.receive(PBX, &call);
    let sent = out
        .iter()
        .find(|t| t.flow.remote == addr(PHONE))
        .expect("to the phone");
    assert_eq!(
        (sent.flow.transport, sent.flow.conn),
        (Transport::Tcp, Some(9)),
        "over the phone's own connection"
    );
}

#[test]
fn an_unreachable_next_hop_is_answered_503_at_once() {
    let mut cfg = config();
    cfg.pbx_transport = Transport::Tcp;
    let mut net = Net::with(cfg);
    let out = net.receive(PHONE, &invite("unreach", "z9hG4bK-u"));
    let fwd = out
        .iter()
        .find(|t| t.flow.remote == addr(PBX))
        .expect("sent towards the PBX");
    assert_eq!(fwd.flow.transport, Transport::Tcp);
    assert!(parse(fwd).top_via().unwrap().unwrap().transport() == b"TCP");
    net.proxy
        .transport_error(net.now, Transport::Tcp, addr(PBX));
    let answer = only_to(&net.drain(), PHONE);
    assert_eq!(status(&answer), 503);
    assert!(answer.to().unwrap().unwrap().tag().is_some());
    assert_eq!(
        values(&answer, HeaderName::Via).len(),
        1,
        "our own Via is not in the answer"
    );
    assert_eq!(net.proxy.pending_transaction_count(), 0);
}

// ------------------------------------------------------ RFC 3263 failover of a request

const PBX_B: &str = "10.0.0.101:5070";

/// The proxy with a PBX of two targets, A (PBX) over `a` and B (PBX_B), A in use.
fn two_target_pbx(a: Transport) -> Net {
    let mut cfg = config();
    cfg.pbx_transport = a;
    let mut net = Net::with(cfg);
    net.proxy.set_pbx_addresses(vec![addr(PBX), addr(PBX_B)]);
    net
}

fn top_branch(msg: &Message) -> Vec<u8> {
    msg.top_via().unwrap().unwrap().branch().unwrap().to_vec()
}

fn cancel_for(call: &str, branch: &str) -> String {
    format!(
        "CANCEL sip:+4930123456@pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 192.168.1.5:5062;branch={branch};rport
Max-Forwards: 70
From: <sip:201@pbx.example.com>;tag=ph1
To: <sip:+4930123456@pbx.example.com>
Call-ID: {call}
CSeq: 1 CANCEL
Content-Length: 0

"
    )
}

#[test]
fn a_request_whose_pbx_target_is_unreachable_goes_to_the_next_target() {
    let mut net = two_target_pbx(Transport::Tcp);
    let out = net.receive(PHONE, &invite("fo1", "z9hG4bK-fo1"));
    let to_a = only_to(&out, PBX);
    // the driver's failover: the next target first, then the error
    net.proxy.set_pbx(addr(PBX_B), Transport::Tcp);
    net.proxy
        .transport_error(net.now, Transport::Tcp, addr(PBX));
    let out = net.drain();
    assert!(to(&out, PHONE).is_empty(), "no 503 for the phone: {out:#?}");
    let sent = to(&out, PBX_B);
    assert_eq!(sent.len(), 1, "{out:#?}");
    assert_eq!(sent[0].flow.transport, Transport::Tcp);
    let to_b = parse(sent[0]);
    assert_eq!(to_b.method(), Some(Method::Invite));
    for name in [
        HeaderName::CallId,
        HeaderName::CSeq,
        HeaderName::From,
        HeaderName::To,
    ] {
        assert_eq!(to_b.header(name), to_a.header(name), "{name:?}");
    }
    assert_eq!(
        values(&to_b, HeaderName::RecordRoute),
        values(&to_a, HeaderName::RecordRoute),
        "same listener towards B: same Record-Route"
    );
    assert_eq!(to_b.max_forwards().unwrap().unwrap(), 69);
    let (vias_a, vias_b) = (
        values(&to_a, HeaderName::Via),
        values(&to_b, HeaderName::Via),
    );
    assert_eq!(vias_b.len(), 2);
    assert_eq!(vias_b[1], vias_a[1], "the phone's Via as forwarded");
    assert!(vias_b[0].starts_with("SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKpp"));
    assert_ne!(top_branch(&to_b), top_branch(&to_a), "a new branch (§4.3)");
    assert_eq!(net.proxy.stats().requests_forwarded, 2);
    assert_eq!(net.proxy.transaction_count(), 1);

    // a retransmission from the phone still finds the transaction
    let again = net.receive(PHONE, &invite("fo1", "z9hG4bK-fo1"));
    assert_eq!(status(&only_to(&again, PHONE)), 100);
    assert!(to(&again, PBX_B).is_empty() && to(&again, PBX).is_empty());

    // B answers: relayed to the phone
    let out = net.receive(PBX_B, &answer(&to_b, 180, "Ringing", Some("b"), ""));
    let ringing = only_to(&out, PHONE);
    assert_eq!(status(&ringing), 180);
    assert_eq!(values(&ringing, HeaderName::Via), vias_a[1..].to_vec());
    let out = net.receive(PBX_B, &answer(&to_b, 200, "OK", Some("b"), ""));
    assert_eq!(status(&only_to(&out, PHONE)), 200);
    // nothing more: no 408 from A's old timers
    let later = net.advance(Duration::from_secs(200));
    assert!(to(&later, PHONE).is_empty(), "{later:#?}");
}

#[test]
fn a_request_is_answered_503_once_every_pbx_target_failed() {
    // B fails too and there is no other target: 503
    let mut net = two_target_pbx(Transport::Tcp);
    net.receive(PHONE, &invite("fo2", "z9hG4bK-fo2"));
    net.proxy.set_pbx(addr(PBX_B), Transport::Tcp);
    net.proxy
        .transport_error(net.now, Transport::Tcp, addr(PBX));
    assert_eq!(to(&net.drain(), PBX_B).len(), 1);
    net.proxy
        .transport_error(net.now, Transport::Tcp, addr(PBX_B));
    let answer = only_to(&net.drain(), PHONE);
    assert_eq!(status(&answer), 503);
    assert_eq!(values(&answer, HeaderName::Via).len(), 1);
    assert_eq!(net.proxy.pending_transaction_count(), 0);

    // the target list wraps round to A (every target failed): no second failover,
    // the request has been tried on as many targets as the PBX has
    let mut net = two_target_pbx(Transport::Tcp);
    net.receive(PHONE, &invite("fo3", "z9hG4bK-fo3"));
    net.proxy.set_pbx(addr(PBX_B), Transport::Tcp);
    net.proxy
        .transport_error(net.now, Transport::Tcp, addr(PBX));
    assert_eq!(to(&net.drain(), PBX_B).len(), 1);
    net.proxy.set_pbx(addr(PBX), Transport::Tcp);
    net.proxy
        .transport_error(net.now, Transport::Tcp, addr(PBX_B));
    let out = net.drain();
    assert!(to(&out, PBX).is_empty(), "not back to A: {out:#?}");
    assert_eq!(status(&only_to(&out, PHONE)), 503);

    // a single PBX address: nowhere else to go
    let mut cfg = config();
    cfg.pbx_transport = Transport::Tcp;
    let mut net = Net::with(cfg);
    net.receive(PHONE, &invite("fo4", "z9hG4bK-fo4"));
    net.proxy.set_pbx(addr(PBX_B), Transport::Tcp);
    net.proxy
        .transport_error(net.now, Transport::Tcp, addr(PBX));
    let out = net.drain();
    assert!(to(&out, PBX_B).is_empty(), "{out:#?}");
    assert_eq!(status(&only_to(&out, PHONE)), 503);
}

#[test]
fn a_request_that_had_a_response_is_not_sent_to_another_target() {
    let mut net = two_target_pbx(Transport::Tcp);
    let fwd = only_to(&net.receive(PHONE, &invite("fo5", "z9hG4bK-fo5")), PBX);
    net.receive(PBX, &answer(&fwd, 100, "Trying", None, ""));
    net.proxy.set_pbx(addr(PBX_B), Transport::Tcp);
    net.proxy
        .transport_error(net.now, Transport::Tcp, addr(PBX));
    let out = net.drain();
    assert!(to(&out, PBX_B).is_empty(), "A took it: {out:#?}");
    assert_eq!(status(&only_to(&out, PHONE)), 503);
}

#[test]
fn a_pbx_request_to_an_unreachable_phone_is_still_answered_503() {
    let mut net = two_target_pbx(Transport::Tcp);
    let call = "INVITE sip:201@10.1.0.5:5062;transport=tcp SIP/2.0
Via: SIP/2.0/UDP 10.0.0.100:5070;branch=z9hG4bK-pbxfo
Max-Forwards: 70
From: <sip:+4930999@pbx.example.com>;tag=p1
To: <sip:201@pbx.example.com>
Call-ID: pbx-fo
CSeq: 1 INVITE
Content-Length: 0

";
    let out = net.receive(PBX, call);
    assert_eq!(to(&out, PHONE).len(), 1);
    net.proxy.set_pbx(addr(PBX_B), Transport::Tcp);
    net.proxy
        .transport_error(net.now, Transport::Tcp, addr(PHONE));
    let out = net.drain();
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(status(&only_to(&out, PBX)), 503);
}

#[test]
fn failing_over_from_udp_to_tcp_rewrites_via_and_record_route_for_the_new_transport() {
    let mut net = two_target_pbx(Transport::Udp);
    let to_a = only_to(&net.receive(PHONE, &invite("fo6", "z9hG4bK-fo6")), PBX);
    assert_eq!(values(&to_a, HeaderName::RecordRoute).len(), 1);
    net.proxy.set_pbx(addr(PBX_B), Transport::Tcp);
    net.proxy
        .transport_error(net.now, Transport::Udp, addr(PBX));
    let out = net.drain();
    assert!(to(&out, PHONE).is_empty(), "{out:#?}");
    let sent = to(&out, PBX_B);
    assert_eq!(sent.len(), 1, "{out:#?}");
    assert_eq!(sent[0].flow.transport, Transport::Tcp);
    let to_b = parse(sent[0]);
    let via = to_b.top_via().unwrap().unwrap();
    assert_eq!(
        via.transport(),
        b"TCP",
        "the transport the request now goes over"
    );
    assert_ne!(top_branch(&to_b), top_branch(&to_a));
    // phone on UDP, PBX now on TCP: double Record-Route, the same flow token
    let rr = values(&to_b, HeaderName::RecordRoute);
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert!(
        rr[0].contains(";transport=tcp;lr;r2=on"),
        "top faces the PBX: {rr:?}"
    );
    assert!(
        rr[1].ends_with(";lr;r2=on>") && !rr[1].contains("transport="),
        "{rr:?}"
    );
    let token = |v: &str| v.split('@').next().unwrap().to_owned();
    assert_eq!(
        token(&rr[0]),
        token(&values(&to_a, HeaderName::RecordRoute)[0])
    );
    assert_eq!(token(&rr[1]), token(&rr[0]));
    // over TCP nothing is retransmitted, and A's UDP retransmissions stopped
    let later = net.advance(Duration::from_secs(5));
    assert!(later.is_empty(), "{later:#?}");
    let out = net.receive(PBX_B, &answer(&to_b, 200, "OK", Some("b"), ""));
    let ok = only_to(&out, PHONE);
    assert_eq!(status(&ok), 200);
    assert_eq!(
        values(&ok, HeaderName::RecordRoute),
        rr,
        "the PBX's route set"
    );
}

#[test]
fn failing_over_from_tcp_to_udp_retransmits_on_timer_a_and_times_out() {
    let mut net = two_target_pbx(Transport::Tcp);
    let to_a = only_to(&net.receive(PHONE, &invite("fo7", "z9hG4bK-fo7")), PBX);
    net.advance(Duration::from_secs(10));
    net.proxy.set_pbx(addr(PBX_B), Transport::Udp);
    net.proxy
        .transport_error(net.now, Transport::Tcp, addr(PBX));
    let to_b = only_to(&net.drain(), PBX_B);
    assert_eq!(to_b.top_via().unwrap().unwrap().transport(), b"UDP");
    assert_ne!(top_branch(&to_b), top_branch(&to_a));
    // timers from scratch: A at T1, 2·T1, ...; B (408) 32 s after the failover
    let out = net.advance(Duration::from_millis(500));
    let again = only_to(&out, PBX_B);
    assert_eq!(again.as_bytes(), to_b.as_bytes());
    let out = net.advance(Duration::from_millis(31_000));
    assert!(to(&out, PHONE).is_empty(), "{out:#?}");
    let out = net.advance(Duration::from_millis(600));
    assert_eq!(status(&only_to(&out, PHONE)), 408);
}

#[test]
fn a_cancel_waiting_for_a_provisional_follows_the_request_to_the_next_target() {
    let mut net = two_target_pbx(Transport::Tcp);
    only_to(&net.receive(PHONE, &invite("fo8", "z9hG4bK-fo8")), PBX);
    let out = net.receive(PHONE, &cancel_for("fo8", "z9hG4bK-fo8"));
    assert_eq!(status(&only_to(&out, PHONE)), 200);
    assert!(to(&out, PBX).is_empty());
    net.proxy.set_pbx(addr(PBX_B), Transport::Tcp);
    net.proxy
        .transport_error(net.now, Transport::Tcp, addr(PBX));
    let to_b = only_to(&net.drain(), PBX_B);
    let out = net.receive(PBX_B, &answer(&to_b, 180, "Ringing", Some("b"), ""));
    let down = to(&out, PBX_B);
    assert_eq!(down.len(), 1, "{out:#?}");
    assert_eq!(down[0].flow.transport, Transport::Tcp);
    let cancel = parse(down[0]);
    assert_eq!(cancel.method(), Some(Method::Cancel));
    assert_eq!(
        values(&cancel, HeaderName::Via),
        values(&to_b, HeaderName::Via)[..1].to_vec(),
        "the branch of the INVITE sent to B"
    );
    let out = net.receive(
        PBX_B,
        &answer(&to_b, 487, "Request Terminated", Some("b"), ""),
    );
    assert_eq!(only_to(&out, PBX_B).method(), Some(Method::Ack));
    assert_eq!(status(&only_to(&out, PHONE)), 487);
}

#[test]
fn a_register_failing_over_to_another_transport_names_the_new_listener() {
    // alias mode: the aliased Contact names the TCP listener, with the same alias
    let mut net = two_target_pbx(Transport::Udp);
    let to_a = only_to(&net.receive(PHONE, &register(3600, "z9hG4bK-fo9")), PBX);
    let contact_a = values(&to_a, HeaderName::Contact)[0].clone();
    assert!(!contact_a.contains("transport="), "{contact_a}");
    net.proxy.set_pbx(addr(PBX_B), Transport::Tcp);
    net.proxy
        .transport_error(net.now, Transport::Udp, addr(PBX));
    let to_b = only_to(&net.drain(), PBX_B);
    assert_eq!(to_b.top_via().unwrap().unwrap().transport(), b"TCP");
    let contact_b = values(&to_b, HeaderName::Contact)[0].clone();
    assert_eq!(
        contact_b,
        contact_a.replace(";ppa=", ";transport=tcp;ppa="),
        "same alias, TCP listener"
    );
    let ok = only_to(&net.receive(PBX_B, &register_ok(&to_b, 3600)), PHONE);
    assert_eq!(status(&ok), 200);
    assert_eq!(
        values(&ok, HeaderName::Contact)[0],
        "<sip:201@192.168.1.5:5062;line=x1>;+sip.instance=\"<urn:uuid:1>\";expires=3600",
        "the phone gets its own Contact back"
    );
    assert_eq!(net.proxy.binding_count(), 1);

    // Path mode: our Path names the TCP listener, with the same flow token
    let mut cfg = config();
    cfg.pbx_path = true;
    let mut net = Net::with(cfg);
    net.proxy.set_pbx_addresses(vec![addr(PBX), addr(PBX_B)]);
    let to_a = only_to(&net.receive(PHONE, &register(3600, "z9hG4bK-fo10")), PBX);
    net.proxy.set_pbx(addr(PBX_B), Transport::Tcp);
    net.proxy
        .transport_error(net.now, Transport::Udp, addr(PBX));
    let to_b = only_to(&net.drain(), PBX_B);
    let (path_a, path_b) = (
        values(&to_a, HeaderName::Path),
        values(&to_b, HeaderName::Path),
    );
    assert_eq!(path_b.len(), 1, "{path_b:?}");
    assert_eq!(path_b[0], path_a[0].replace(";lr>", ";transport=tcp;lr>"));
    assert_eq!(
        values(&to_b, HeaderName::Contact),
        values(&to_a, HeaderName::Contact)
    );
}

// ------------------------------------------------------------ observation of calls

fn events(net: &mut Net) -> Vec<String> {
    std::iter::from_fn(|| net.proxy.poll_event())
        .map(|e| e.to_string())
        .collect()
}

/// Registers PHONE as extension 201 through the proxy (alias mode).
fn register_201(net: &mut Net) {
    let fwd = only_to(&net.receive(PHONE, &register(3600, "z9hG4bK-reg201")), PBX);
    let ok = only_to(&net.receive(PBX, &register_ok(&fwd, 3600)), PHONE);
    assert_eq!(status(&ok), 200);
    assert_eq!(net.proxy.observer().binding_count(), 1);
}

#[test]
fn an_outgoing_external_call_through_the_core_is_observed_from_ringing_to_its_bye() {
    let mut net = Net::new();
    register_201(&mut net);
    let fwd = only_to(&net.receive(PHONE, &invite("obs-out", "z9hG4bK-o1")), PBX);
    assert!(events(&mut net).is_empty(), "a 100 Trying is not ringing");
    net.receive(PBX, &answer(&fwd, 180, "Ringing", Some("t"), ""));
    assert_eq!(events(&mut net), ["ExternalCallStarted 201 ringing"]);
    net.receive(
        PBX,
        &answer(
            &fwd,
            200,
            "OK",
            Some("t"),
            "Contact: <sip:pbx@10.0.0.100:5070>\n",
        ),
    );
    assert_eq!(events(&mut net), ["ExternalCallStarted 201 connected"]);
    let view = net.proxy.observer().extension("201").unwrap();
    assert_eq!(view.registered, 1);
    assert_eq!(view.calls.len(), 1);
    assert_eq!(view.calls[0].other_party, "+4930123456");
    let bye = "BYE sip:pbx@10.0.0.100:5070 SIP/2.0
Via: SIP/2.0/UDP 192.168.1.5:5062;branch=z9hG4bK-obye;rport
Max-Forwards: 70
From: <sip:201@pbx.example.com>;tag=ph1
To: <sip:+4930123456@pbx.example.com>;tag=t
Call-ID: obs-out
CSeq: 2 BYE
Content-Length: 0

";
    only_to(&net.receive(PHONE, bye), PBX);
    assert_eq!(events(&mut net), ["ExternalCallEnded 201"]);
    assert_eq!(net.proxy.observer().call_count(), 0);
}

#[test]
fn an_incoming_call_belongs_to_the_binding_it_reaches_and_ends_with_the_proxys_own_408() {
    let mut net = Net::new();
    register_201(&mut net);
    // the PBX addresses the AoR with a DID in To: the binding decides the extension
    let call = "INVITE sip:201@10.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 10.0.0.100:5070;branch=z9hG4bK-pin1
Max-Forwards: 70
From: \"Queue\" <sip:600@pbx.example.com>;tag=p1
To: <sip:+4930777000@pbx.example.com>
P-Asserted-Identity: <sip:+4917012345@pbx.example.com;user=phone>
Diversion: <sip:600@pbx.example.com>;reason=unconditional
Call-ID: obs-in
CSeq: 1 INVITE
Contact: <sip:pbx@10.0.0.100:5070>
Content-Length: 0

";
    let out = net.receive(PBX, call);
    assert_eq!(only_to(&out, PHONE).method(), Some(Method::Invite));
    assert_eq!(events(&mut net), ["ExternalCallStarted 201 ringing"]);
    // the phone never answers: timer B ends the INVITE with a 408 the proxy writes
    let out = net.advance(Duration::from_secs(40));
    let answers: Vec<u16> = to(&out, PBX)
        .into_iter()
        .map(|t| status(&parse(t)))
        .collect();
    assert!(
        !answers.is_empty() && answers.iter().all(|&s| s == 408),
        "the PBX gets a 408 (retransmitted until it ACKs): {answers:?}"
    );
    assert_eq!(events(&mut net), ["ExternalCallEnded 201"]);
}

#[test]
fn a_star_code_accepted_by_the_pbx_switches_dnd_and_is_never_a_call() {
    let mut net = Net::new();
    register_201(&mut net);
    let star = invite("obs-star", "z9hG4bK-s1").replace(
        "sip:+4930123456@pbx.example.com SIP",
        "sip:%2A78@pbx.example.com SIP",
    );
    let fwd = only_to(&net.receive(PHONE, &star), PBX);
    net.receive(PBX, &answer(&fwd, 183, "Session Progress", Some("s"), ""));
    assert!(events(&mut net).is_empty());
    net.receive(
        PBX,
        &answer(
            &fwd,
            200,
            "OK",
            Some("s"),
            "Contact: <sip:pbx@10.0.0.100:5070>\n",
        ),
    );
    assert_eq!(events(&mut net), ["DndChanged 201 on"]);
    assert!(net.proxy.observer().extension("201").unwrap().dnd);
}

#[test]
fn calls_from_ever_new_unregistered_users_leave_no_extension_records_behind() {
    let mut net = Net::new();
    for i in 0..50 {
        let call = invite(&format!("spray-{i}"), &format!("z9hG4bK-sp{i}")).replace(
            "<sip:201@pbx.example.com>;tag=ph1",
            &format!("<sip:9{i:03}@pbx.example.com>;tag=ph1"),
        );
        let fwd = only_to(&net.receive(PHONE, &call), PBX);
        net.receive(PBX, &answer(&fwd, 404, "Not Found", Some("nf"), ""));
    }
    assert_eq!(net.proxy.observer().call_count(), 0);
    assert!(
        net.proxy.observer().extensions().is_empty(),
        "{:?}",
        net.proxy.observer().extensions()
    );
}

#[test]
fn a_response_quoting_our_branch_from_another_host_is_dropped() {
    let mut net = Net::new();
    let fwd = only_to(&net.receive(PHONE, &invite("forged", "z9hG4bK-fg")), PBX);
    // a stranger, and another phone, answer the PBX-bound INVITE with its branch
    for forger in ["203.0.113.9:5060", "10.1.0.77:5062"] {
        let out = net.receive(forger, &answer(&fwd, 486, "Busy Here", Some("x"), ""));
        assert!(
            to(&out, PHONE).is_empty(),
            "nothing relayed to the phone: {out:#?}"
        );
    }
    // the PBX itself still can
    let ok = only_to(
        &net.receive(PBX, &answer(&fwd, 180, "Ringing", Some("t"), "")),
        PHONE,
    );
    assert_eq!(status(&ok), 180);
}

// ---------------------------------------------------------------------------------
// BLF (issue 7): Teams-busy shown inside the phone's own dialog subscription

fn dialog_notify(cseq: u32, version: u32, branch: &str, record_route: &str) -> String {
    dialog_notify_with(
        cseq,
        version,
        "full",
        r#"<dialog id="201"><state>terminated</state></dialog>"#,
        branch,
        record_route,
    )
}

fn dialog_notify_with(
    cseq: u32,
    version: u32,
    state: &str,
    dialogs: &str,
    branch: &str,
    record_route: &str,
) -> String {
    let body = format!(
        "<?xml version=\"1.0\"?>\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"{version}\" state=\"{state}\" entity=\"sip:201@pbx.example.com\">{dialogs}</dialog-info>\n"
    );
    format!(
        "NOTIFY sip:200@10.1.0.5:5062 SIP/2.0
Via: SIP/2.0/UDP 10.0.0.100:5070;branch=z9hG4bKn{branch}
Route: {record_route}
From: <sip:201@pbx.example.com>;tag=pbx1
To: <sip:200@pbx.example.com>;tag=ph1
Call-ID: blf-1
CSeq: {cseq} NOTIFY
Event: dialog
Subscription-State: active;expires=600
Contact: <sip:pbx@10.0.0.100:5070>
Max-Forwards: 70
Content-Type: application/dialog-info+xml
Content-Length: {}

{body}",
        body.len() + body.matches('\n').count()
    )
}

fn cseq_number(msg: &Message) -> u32 {
    msg.cseq().unwrap().unwrap().seq()
}

fn body_text(msg: &Message) -> String {
    String::from_utf8_lossy(msg.body()).into_owned()
}

/// Phone 200 at 10.1.0.5 subscribes to 201's dialog state through the proxy and the PBX
/// accepts with `code`; returns the Record-Route the PBX's NOTIFYs must carry back.
fn blf_subscribe(net: &mut Net, extra_headers: &str, code: u16) -> String {
    let subscribe = format!(
        "SUBSCRIBE sip:201@pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 10.1.0.5:5062;branch=z9hG4bKs1
From: <sip:200@pbx.example.com>;tag=ph1
To: <sip:201@pbx.example.com>
Call-ID: blf-1
CSeq: 1 SUBSCRIBE
Contact: <sip:200@10.1.0.5:5062>
Event: dialog
Expires: 600
{extra_headers}Max-Forwards: 70
Content-Length: 0

"
    );
    let out = net.receive(PHONE, &subscribe);
    let forwarded = only_to(&out, PBX);
    let record_route = values(&forwarded, HeaderName::RecordRoute).join(", ");
    let reason = if code == 202 { "Accepted" } else { "OK" };
    let ok = answer(
        &forwarded,
        code,
        reason,
        Some("pbx1"),
        "Contact: <sip:pbx@10.0.0.100:5070>\nExpires: 600\n",
    );
    let out = net.receive(PBX, &ok);
    assert_eq!(status(&only_to(&out, PHONE)), code);
    record_route
}

#[test]
fn blf_teams_busy_is_injected_into_the_phones_dialog_subscription() {
    let mut net = Net::new();
    let record_route = blf_subscribe(
        &mut net,
        "Accept: application/dialog-info+xml\nUser-Agent: Yealink SIP-T54W 96.86.0.100\n",
        202,
    );

    // the PBX's first NOTIFY passes as it is
    let out = net.receive(PBX, &dialog_notify(1, 0, "a", &record_route));
    let notify = only_to(&out, PHONE);
    assert_eq!(cseq_number(&notify), 1);
    assert!(!body_text(&notify).contains("teams-201"));
    let out = net.receive(PHONE, &answer(&notify, 200, "OK", None, ""));
    assert_eq!(cseq_number(&only_to(&out, PBX)), 1);
    assert_eq!(net.proxy.blf().watchers("201"), 1);

    // Teams busy: the proxy notifies the phone itself, inside the same dialog
    let now = net.now;
    net.proxy.set_teams_busy(now, "201", true);
    let out = net.drain();
    assert!(
        to(&out, PBX).is_empty(),
        "the PBX never sees the proxy's NOTIFY"
    );
    let own = only_to(&out, PHONE);
    assert_eq!(own.method(), Some(Method::Notify));
    assert_eq!(cseq_number(&own), 2, "the next CSeq in the phone's view");
    let text = body_text(&own);
    assert!(text.contains(r#"<dialog id="teams-201""#), "{text}");
    assert!(text.contains("<state>confirmed</state>"), "{text}");
    assert!(text.contains(r#"version="1""#), "{text}");
    assert_eq!(
        values(&own, HeaderName::CallId),
        ["blf-1"],
        "inside the phone's subscription dialog"
    );
    // the phone's 200 to it is absorbed
    let out = net.receive(PHONE, &answer(&own, 200, "OK", None, ""));
    assert!(out.is_empty(), "{out:#?}");
    // a new PBX call to 201 is refused too: the same verdict
    let out = net.receive(
        PBX,
        &invite("blf-call", "c1")
            .replace("sip:+4930123456@pbx.example.com", "sip:201@10.1.0.5:5062"),
    );
    assert!(to(&out, PHONE).is_empty(), "{out:#?}");
    assert_eq!(status(&only_to(&out, PBX)), 486);

    // the PBX's next NOTIFY: CSeq shifted past the proxy's, body injected, version up
    let out = net.receive(PBX, &dialog_notify(2, 1, "b", &record_route));
    let notify = only_to(&out, PHONE);
    assert_eq!(cseq_number(&notify), 3);
    let text = body_text(&notify);
    assert!(text.contains("teams-201"), "{text}");
    assert!(text.contains(r#"version="2""#), "{text}");
    assert_eq!(
        values(&notify, HeaderName::ContentLength),
        [notify.body().len().to_string()]
    );
    // the phone's answer goes back to the PBX with the PBX's own CSeq
    let out = net.receive(PHONE, &answer(&notify, 200, "OK", None, ""));
    assert_eq!(cseq_number(&only_to(&out, PBX)), 2);

    // Teams idle again: the PBX's document is sent again without the Teams dialog,
    // once the one-second rate allows
    let now = net.now;
    net.proxy.set_teams_busy(now, "201", false);
    let mut out = net.drain();
    out.extend(net.advance(Duration::from_millis(1100)));
    let back = only_to(&out, PHONE);
    assert_eq!(cseq_number(&back), 4);
    let text = body_text(&back);
    assert!(!text.contains("teams-201"), "{text}");
    assert!(text.contains(r#"version="3""#), "{text}");
}

/// While the extension is Teams-busy the proxy renders every PBX document for the
/// phone; a PBX that sends partial state must still be shown in full (RFC 4235 §4.3):
/// the call it reported earlier stays on the lamp when it adds another.
#[test]
fn blf_a_partial_state_pbx_is_shown_in_full_while_teams_busy() {
    let mut net = Net::new();
    let record_route = blf_subscribe(&mut net, "", 200);
    let in_call = r#"<dialog id="d1"><state>confirmed</state></dialog>"#;
    let out = net.receive(
        PBX,
        &dialog_notify_with(1, 5, "full", in_call, "p1", &record_route),
    );
    let notify = only_to(&out, PHONE);
    net.receive(PHONE, &answer(&notify, 200, "OK", None, ""));
    let now = net.now;
    net.proxy.set_teams_busy(now, "201", true);
    for own in net.drain() {
        let own = parse(&own);
        net.receive(PHONE, &answer(&own, 200, "OK", None, ""));
    }
    // the PBX reports a second call in a partial document
    let ringing = r#"<dialog id="d2"><state>early</state></dialog>"#;
    let out = net.receive(
        PBX,
        &dialog_notify_with(2, 6, "partial", ringing, "p2", &record_route),
    );
    let notify = only_to(&out, PHONE);
    let text = body_text(&notify);
    assert!(text.contains(r#"state="full""#), "{text}");
    assert!(
        text.contains(r#"id="d1""#) && text.contains(r#"id="d2""#),
        "both calls: {text}"
    );
}

/// Every notifier style of `sip-traces/blf/` (Asterisk, FreeSWITCH, Kamailio with several
/// dialogs, a partial-state notifier) through the core while the watched extension is
/// Teams-busy: the phone sees the Teams dialog exactly while the PBX shows the
/// extension idle, the PBX's own dialogs otherwise, and CSeq and version only go up.
#[test]
fn blf_every_notifier_style_through_the_core_while_teams_busy() {
    use presence_proxy::blf::parse_dialog_info;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-traces/blf");
    for style in ["asterisk", "freeswitch", "kamailio", "partial"] {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("notify-{style}-"))
            })
            .collect();
        files.sort();
        assert!(files.len() >= 4, "{style}: {files:?}");
        let mut net = Net::new();
        let record_route = blf_subscribe(&mut net, "", 200);
        let (mut last_cseq, mut last_version) = (0u32, None::<u32>);
        let mut pbx_view = presence_proxy::blf::DialogInfoState::new();
        for (n, file) in files.iter().enumerate() {
            let text = std::fs::read_to_string(file).unwrap();
            let body = text
                .split_once("\n\n")
                .or_else(|| text.split_once("\r\n\r\n"))
                .unwrap()
                .1;
            let _ = pbx_view.apply_body(body.as_bytes());
            let pbx_shows_call = pbx_view.shows_call();
            let cseq = n as u32 + 1;
            let notify = format!(
                "NOTIFY sip:200@10.1.0.5:5062 SIP/2.0
Via: SIP/2.0/UDP 10.0.0.100:5070;branch=z9hG4bKq{style}{n}
Route: {record_route}
From: <sip:201@pbx.example.com>;tag=pbx1
To: <sip:200@pbx.example.com>;tag=ph1
Call-ID: blf-1
CSeq: {cseq} NOTIFY
Event: dialog
Subscription-State: active;expires=600
Contact: <sip:pbx@10.0.0.100:5070>
Max-Forwards: 70
Content-Type: application/dialog-info+xml
Content-Length: {}

",
                body.len() + body.matches('\n').count()
            ) + body;
            let mut seen = net.receive(PBX, &notify);
            if n == 0 {
                let now = net.now;
                net.proxy.set_teams_busy(now, "201", true);
                seen.extend(net.drain());
            }
            for sent in to(&seen, PHONE) {
                let msg = parse(sent);
                let phone_cseq = cseq_number(&msg);
                assert!(
                    phone_cseq > last_cseq,
                    "{style} {file:?}: CSeq {phone_cseq} after {last_cseq}"
                );
                last_cseq = phone_cseq;
                let doc = parse_dialog_info(msg.body())
                    .unwrap_or_else(|e| panic!("{style} {file:?}: {e}"));
                let version = doc.version.unwrap();
                assert!(
                    last_version.is_none_or(|v| version > v),
                    "{style} {file:?}: version {version} after {last_version:?}"
                );
                last_version = Some(version);
                net.receive(PHONE, &answer(&msg, 200, "OK", None, ""));
            }
            // the last document the phone got for this PBX NOTIFY (or the proxy's own)
            let shown = to(&seen, PHONE)
                .last()
                .map(|t| body_text(&parse(t)))
                .unwrap_or_default();
            let teams = shown.contains("teams-201");
            assert_eq!(
                teams, !pbx_shows_call,
                "{style} {file:?}: PBX shows a call: {pbx_shows_call}; phone got:\n{shown}"
            );
        }
    }
}
