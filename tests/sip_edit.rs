//! Editing corner cases the RFC fixtures do not reach: several values on one line,
//! folded values, compact names, absent headers, overlapping edits.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use bytes::Bytes;
use presence_proxy::sip::edit::{EditError, Editor};
use presence_proxy::sip::{HeaderName, Message};

fn parse(raw: &'static [u8]) -> Message {
    Message::parse(Bytes::from_static(raw)).expect("test message parses")
}

const RESPONSE: &[u8] = b"SIP/2.0 200 OK\r\n\
v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-p1 , SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK-a1\r\n\
Via: SIP/2.0/UDP\r\n  10.0.0.6;branch=z9hG4bK-a2\r\n\
f: <sip:100@pbx>;tag=1\r\n\
t: <sip:200@pbx>;tag=2\r\n\
i: c1\r\n\
CSeq: 1 INVITE\r\n\
X-Unknown:   keep   me  exactly \r\n\
Content-Length: 0\r\n\r\n";

#[test]
fn popping_the_first_of_two_vias_on_one_line_keeps_the_second_on_that_line() {
    let msg = parse(RESPONSE);
    let mut e = Editor::new(&msg);
    e.pop_via().expect("pop");
    let out = e.finish();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("\r\nv: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK-a1\r\n"),
        "second value stays on the compact line: {text}"
    );
    assert!(
        text.contains("X-Unknown:   keep   me  exactly \r\n"),
        "unknown header untouched"
    );
    let edited = Message::parse(out).expect("parses");
    let branches: Vec<Vec<u8>> = edited
        .vias()
        .map(|v| v.expect("Via parses").branch().unwrap_or_default().to_vec())
        .collect();
    assert_eq!(
        branches,
        vec![b"z9hG4bK-a1".to_vec(), b"z9hG4bK-a2".to_vec()]
    );
}

#[test]
fn popping_a_folded_single_via_removes_all_its_lines() {
    let msg = parse(
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP\r\n  proxy;branch=z9hG4bK-p\r\nVia: SIP/2.0/UDP ua;branch=z9hG4bK-u\r\nf: <sip:a@b>;tag=1\r\nt: <sip:c@d>;tag=2\r\ni: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
    );
    let mut e = Editor::new(&msg);
    e.pop_via().expect("pop");
    let out = e.finish();
    assert!(!String::from_utf8_lossy(&out).contains("proxy;branch"));
    let edited = Message::parse(out).expect("parses");
    assert_eq!(edited.vias().count(), 1);
    assert_eq!(
        edited.top_via().expect("Via").expect("parses").branch(),
        Some(&b"z9hG4bK-u"[..])
    );
}

#[test]
fn a_missing_max_forwards_and_content_length_are_added() {
    let msg = parse(b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:x@y>;tag=1\r\nt: <sip:a@b>\r\ni: c\r\nCSeq: 2 MESSAGE\r\n\r\n");
    let mut e = Editor::new(&msg);
    e.set_max_forwards(69).expect("set");
    e.set_body(b"hello", Some(b"text/plain")).expect("body");
    let edited = Message::parse(e.finish()).expect("parses");
    edited.validate().expect("valid");
    assert_eq!(edited.max_forwards().expect("present").expect("parses"), 69);
    assert_eq!(edited.body(), b"hello");
    assert_eq!(edited.content_length(), Some(5));
    assert!(
        edited
            .content_type()
            .expect("present")
            .expect("parses")
            .is("text", "plain")
    );
}

#[test]
fn a_body_is_added_to_a_datagram_without_the_blank_line() {
    let msg = parse(b"NOTIFY sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:x@y>;tag=1\r\nt: <sip:a@b>;tag=2\r\ni: c\r\nCSeq: 2 NOTIFY\r\n");
    let mut e = Editor::new(&msg);
    e.set_body(b"<x/>", Some(b"application/dialog-info+xml"))
        .expect("body");
    let edited = Message::parse(e.finish()).expect("parses");
    assert_eq!(edited.body(), b"<x/>");
    assert_eq!(edited.content_length(), Some(4));
}

#[test]
fn a_compact_content_length_is_rewritten_in_place() {
    let msg = parse(b"NOTIFY sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:x@y>;tag=1\r\nt: <sip:a@b>;tag=2\r\ni: c\r\nCSeq: 2 NOTIFY\r\nl: 3\r\n\r\nabc");
    let mut e = Editor::new(&msg);
    e.set_body(b"abcdef", None).expect("body");
    let out = e.finish();
    assert!(
        out.ends_with(b"\r\nl: 6\r\n\r\nabcdef"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn a_bare_contact_uri_gains_brackets_and_keeps_its_header_params() {
    let msg = parse(b"REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:100@pbx>;tag=1\r\nt: <sip:100@pbx>\r\ni: c\r\nCSeq: 2 REGISTER\r\nm: sip:100@10.0.0.5:5060;expires=3600, <sip:100@10.0.0.6>\r\nl: 0\r\n\r\n");
    let mut e = Editor::new(&msg);
    e.set_contact_uri(0, b"sip:100@127.0.0.1:5060;alias=a1")
        .expect("first");
    e.set_contact_uri(1, b"sip:100@127.0.0.1:5060;alias=a2")
        .expect("second");
    let edited = Message::parse(e.finish()).expect("parses");
    let contacts: Vec<(Vec<u8>, Option<u32>)> = edited
        .contacts()
        .map(|c| {
            let c = c.expect("parses");
            let a = c.address().expect("address");
            (a.uri().as_bytes().to_vec(), a.expires())
        })
        .collect();
    assert_eq!(
        contacts,
        vec![
            (b"sip:100@127.0.0.1:5060;alias=a1".to_vec(), Some(3600)),
            (b"sip:100@127.0.0.1:5060;alias=a2".to_vec(), None)
        ]
    );
}

#[test]
fn overlapping_edits_are_refused_and_missing_headers_reported() {
    let msg = parse(RESPONSE);
    let mut e = Editor::new(&msg);
    e.set_cseq(5).expect("first edit");
    assert!(matches!(e.set_cseq(6), Err(EditError::Overlap(_))));
    let mut e = Editor::new(&msg);
    assert_eq!(
        e.pop_route().err(),
        Some(EditError::Missing(HeaderName::Route))
    );
    assert_eq!(
        e.set_request_uri(b"sip:x").err(),
        Some(EditError::NotARequest)
    );
}

#[test]
fn received_and_rport_replace_the_top_vias_own_and_keep_the_rest() {
    let msg = parse(b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;rport;branch=z9hG4bK-a1;received=1.2.3.4;x=\"q\"\r\nVia: SIP/2.0/UDP other;branch=z9hG4bK-o\r\nf: <sip:x@y>;tag=1\r\nt: <sip:a@b>\r\ni: c\r\nCSeq: 2 INVITE\r\nl: 0\r\n\r\n");
    let mut e = Editor::new(&msg);
    e.set_top_via_received("192.0.2.7".parse().unwrap(), 40123)
        .expect("edit");
    let edited = Message::parse(e.finish()).expect("parses");
    let top = edited.top_via().expect("Via").expect("parses");
    assert_eq!(top.received(), Some(&b"192.0.2.7"[..]));
    assert_eq!(top.rport(), Some(Some(40123)));
    assert_eq!(top.branch(), Some(&b"z9hG4bK-a1"[..]));
    assert_eq!(top.params().value("x"), Some(&b"\"q\""[..]));
    assert_eq!(top.host(), b"10.0.0.5");
    assert_eq!(edited.vias().count(), 2);
    assert_eq!(
        edited
            .vias()
            .nth(1)
            .expect("second")
            .expect("parses")
            .branch(),
        Some(&b"z9hG4bK-o"[..])
    );
}

#[test]
fn received_on_a_via_without_parameters_is_appended_to_that_value_and_ipv6_is_written_as_text() {
    let msg = parse(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060\r\nf: <sip:x@y>;tag=1\r\nt: <sip:a@b>\r\ni: c\r\nCSeq: 2 OPTIONS\r\nl: 0\r\n\r\n");
    for (ip, port, expected) in [
        (
            "2001:db8::7",
            5,
            "Via: SIP/2.0/UDP 10.0.0.5:5060;received=2001:db8::7;rport=5\r\n",
        ),
        (
            "255.0.10.1",
            65535,
            "Via: SIP/2.0/UDP 10.0.0.5:5060;received=255.0.10.1;rport=65535\r\n",
        ),
    ] {
        let mut e = Editor::new(&msg);
        e.set_top_via_received(ip.parse().unwrap(), port)
            .expect("edit");
        let out = e.finish();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(expected), "{text}");
    }
}

#[test]
fn a_malformed_top_via_is_refused_by_the_edit() {
    let msg = parse(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP ;branch=1\r\nf: <sip:x@y>;tag=1\r\nt: <sip:a@b>\r\ni: c\r\nCSeq: 2 OPTIONS\r\nl: 0\r\n\r\n");
    let mut e = Editor::new(&msg);
    assert!(matches!(
        e.set_top_via_received("192.0.2.1".parse().unwrap(), 1),
        Err(EditError::Malformed(_))
    ));
}

#[test]
fn received_is_appended_after_the_top_values_own_parameters_on_a_via_line_with_two_values() {
    let msg = parse(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-a1;x=\"q;r\" , SIP/2.0/UDP other;branch=z9hG4bK-o\r\nf: <sip:x@y>;tag=1\r\nt: <sip:a@b>\r\ni: c\r\nCSeq: 2 OPTIONS\r\nl: 0\r\n\r\n");
    let mut e = Editor::new(&msg);
    e.set_top_via_received("192.0.2.7".parse().unwrap(), 40123)
        .expect("edit");
    let out = e.finish();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-a1;x=\"q;r\";received=192.0.2.7;rport=40123 , SIP/2.0/UDP other;branch=z9hG4bK-o\r\n"),
        "{text}"
    );
    let edited = Message::parse(out).expect("parses");
    let vias: Vec<_> = edited.vias().map(|v| v.expect("parses")).collect();
    assert_eq!(vias.len(), 2);
    assert_eq!(vias[0].rport(), Some(Some(40123)));
    assert_eq!(vias[1].received(), None);
}
