//! Building responses (RFC 3261 §8.2.6) and in-dialog requests (§12.2.1.1).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use bytes::Bytes;
use presence_proxy::sip::build::{DialogRequest, ResponseBuilder};
use presence_proxy::sip::{HeaderName, Message, Method};

const INVITE: &[u8] = b"INVITE sip:200@pbx.example.com SIP/2.0\r\n\
v: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-a1;rport\r\n\
Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK-b2, SIP/2.0/TCP 10.0.0.10;branch=z9hG4bK-c3\r\n\
Max-Forwards: 70\r\n\
f: \"Alice\" <sip:100@pbx.example.com>;tag=9fxced76sl\r\n\
t: <sip:200@pbx.example.com>\r\n\
i: 3848276298220188511@10.0.0.5\r\n\
CSeq: 1 INVITE\r\n\
Timestamp: 54\r\n\
Contact: <sip:100@10.0.0.5:5060>\r\n\
l: 0\r\n\r\n";

fn values(msg: &Message, name: HeaderName) -> Vec<Vec<u8>> {
    msg.values(name)
        .map(|(_, span)| msg.slice(span).to_vec())
        .collect()
}

#[test]
fn a_486_copies_via_from_call_id_cseq_and_tags_the_to() {
    let req = Message::parse(Bytes::from_static(INVITE)).expect("request parses");
    let resp = ResponseBuilder::new(&req, 486, "Busy Here")
        .to_tag("pp-1")
        .header("Retry-After", b"60")
        .build();
    let resp = Message::parse(resp).expect("response parses");
    resp.validate().expect("response valid");
    assert_eq!(resp.status(), Some(486));
    assert_eq!(resp.reason(), Some(&b"Busy Here"[..]));
    assert_eq!(
        values(&resp, HeaderName::Via),
        values(&req, HeaderName::Via)
    );
    assert_eq!(resp.header(HeaderName::From), req.header(HeaderName::From));
    assert_eq!(
        resp.header(HeaderName::CallId),
        req.header(HeaderName::CallId)
    );
    assert_eq!(resp.header(HeaderName::CSeq), req.header(HeaderName::CSeq));
    let to = resp.to().expect("To").expect("To parses");
    assert_eq!(to.tag(), Some(&b"pp-1"[..]));
    assert_eq!(to.uri().as_bytes(), b"sip:200@pbx.example.com");
    assert_eq!(resp.header(HeaderName::RetryAfter), Some(&b"60"[..]));
    assert_eq!(
        resp.header(HeaderName::Timestamp),
        None,
        "Timestamp only in a 100"
    );
    assert_eq!(resp.content_length(), Some(0));
}

#[test]
fn a_100_trying_has_no_to_tag_and_echoes_timestamp() {
    let req = Message::parse(Bytes::from_static(INVITE)).expect("request parses");
    let resp = Message::parse(
        ResponseBuilder::new(&req, 100, "Trying")
            .to_tag("x")
            .build(),
    )
    .expect("parses");
    assert_eq!(resp.to().expect("To").expect("parses").tag(), None);
    assert_eq!(resp.header(HeaderName::Timestamp), Some(&b"54"[..]));
}

#[test]
fn an_existing_to_tag_is_kept() {
    let tagged = String::from_utf8_lossy(INVITE).replace(
        "t: <sip:200@pbx.example.com>",
        "t: <sip:200@pbx.example.com>;tag=abc",
    );
    let req = Message::parse(Bytes::from(tagged)).expect("parses");
    let resp = Message::parse(
        ResponseBuilder::new(&req, 481, "Call/Transaction Does Not Exist")
            .to_tag("x")
            .build(),
    )
    .expect("parses");
    assert_eq!(
        resp.to().expect("To").expect("parses").tag(),
        Some(&b"abc"[..])
    );
}

#[test]
fn an_in_dialog_notify_carries_the_dialog_state() {
    let body = b"<?xml version=\"1.0\"?>\r\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"3\" state=\"full\" entity=\"sip:201@pbx\"/>\r\n";
    let routes: [&[u8]; 2] = [b"<sip:10.0.0.1;lr>", b"<sip:10.0.0.2;lr>"];
    let notify = DialogRequest {
        method: "NOTIFY",
        request_uri: b"sip:100@10.0.0.5:5060",
        route_set: &routes,
        via: b"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-n1",
        from: b"<sip:201@pbx>;tag=srv1",
        to: b"<sip:100@pbx>;tag=cli1",
        call_id: b"sub-1@10.0.0.5",
        cseq: 7,
        max_forwards: 70,
        contact: Some(b"sip:201@10.0.0.1:5060"),
        headers: &[
            ("Event", b"dialog"),
            ("Subscription-State", b"active;expires=3600"),
        ],
        body: Some((b"application/dialog-info+xml", body)),
    }
    .build();
    let msg = Message::parse(notify).expect("NOTIFY parses");
    msg.validate().expect("NOTIFY valid");
    assert_eq!(msg.method(), Some(Method::Notify));
    assert_eq!(msg.request_uri_bytes(), Some(&b"sip:100@10.0.0.5:5060"[..]));
    let route_uris: Vec<Vec<u8>> = msg
        .routes()
        .map(|r| r.expect("Route parses").uri().as_bytes().to_vec())
        .collect();
    assert_eq!(
        route_uris,
        vec![b"sip:10.0.0.1;lr".to_vec(), b"sip:10.0.0.2;lr".to_vec()]
    );
    let cseq = msg.cseq().expect("CSeq").expect("parses");
    assert_eq!((cseq.seq(), cseq.method()), (7, Method::Notify));
    assert_eq!(
        msg.from().expect("From").expect("parses").tag(),
        Some(&b"srv1"[..])
    );
    assert_eq!(
        msg.to().expect("To").expect("parses").tag(),
        Some(&b"cli1"[..])
    );
    assert_eq!(
        msg.event().expect("Event").expect("parses").package(),
        b"dialog"
    );
    let state = msg.subscription_state().expect("state").expect("parses");
    assert_eq!(state.expires(), Some(3600));
    assert_eq!(msg.body(), body);
    assert_eq!(msg.content_length(), Some(body.len()));
}

#[test]
fn cancel_and_ack_copy_what_rfc_3261_says_and_only_the_top_via() {
    let routed = String::from_utf8_lossy(INVITE).replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRoute: <sip:10.0.0.1;lr>\r\n",
    );
    let invite = Message::parse(Bytes::from(routed)).expect("parses");
    let cancel =
        Message::parse(presence_proxy::sip::build::cancel_for(&invite)).expect("CANCEL parses");
    cancel.validate().expect("CANCEL valid");
    assert_eq!(cancel.method(), Some(Method::Cancel));
    assert_eq!(cancel.request_uri_bytes(), invite.request_uri_bytes());
    assert_eq!(
        values(&cancel, HeaderName::Via),
        values(&invite, HeaderName::Via)[..1].to_vec()
    );
    assert_eq!(
        values(&cancel, HeaderName::Route),
        values(&invite, HeaderName::Route)
    );
    let cseq = cancel.cseq().expect("CSeq").expect("parses");
    assert_eq!((cseq.seq(), cseq.method()), (1, Method::Cancel));
    assert_eq!(
        cancel.header(HeaderName::CallId),
        invite.header(HeaderName::CallId)
    );

    let busy = Message::parse(
        ResponseBuilder::new(&invite, 486, "Busy Here")
            .to_tag("uas-9")
            .build(),
    )
    .expect("response parses");
    let ack =
        Message::parse(presence_proxy::sip::build::ack_for(&invite, &busy)).expect("ACK parses");
    ack.validate().expect("ACK valid");
    assert_eq!(ack.method(), Some(Method::Ack));
    assert_eq!(
        ack.to().expect("To").expect("parses").tag(),
        Some(&b"uas-9"[..])
    );
    assert_eq!(
        values(&ack, HeaderName::Via),
        values(&invite, HeaderName::Via)[..1].to_vec()
    );
}
