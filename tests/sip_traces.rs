//! Every message fixture cut from RFC 3665 and RFC 4235 (`sip-traces/`): it parses and
//! validates; forwarded unchanged it is byte-identical; edited, it re-parses showing
//! the edit and nothing else.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use std::path::{Path, PathBuf};

use bytes::Bytes;
use presence_proxy::sip::edit::Editor;
use presence_proxy::sip::{HeaderName, Message};

fn fixtures() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("sip-traces readable") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "sip") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sip-traces")),
        &mut out,
    );
    out.sort();
    assert!(
        out.len() >= 70,
        "expected the RFC 3665/4235 fixtures, found {}",
        out.len()
    );
    out
}

fn load(path: &Path) -> Message {
    let bytes = std::fs::read(path).expect("fixture readable");
    let msg =
        Message::parse(Bytes::from(bytes)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    msg.validate()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    msg
}

/// (name as written, raw value) of every header except those named.
fn other_fields(msg: &Message, except: &[HeaderName]) -> Vec<(Vec<u8>, Vec<u8>)> {
    msg.fields()
        .iter()
        .filter(|f| !except.contains(&f.name()))
        .map(|f| (msg.field_name(f).to_vec(), msg.field_value(f).to_vec()))
        .collect()
}

fn values(msg: &Message, name: HeaderName) -> Vec<Vec<u8>> {
    msg.values(name)
        .map(|(_, span)| msg.slice(span).to_vec())
        .collect()
}

#[test]
fn every_fixture_parses_and_forwards_byte_for_byte() {
    for path in fixtures() {
        let msg = load(&path);
        let forwarded = Editor::new(&msg).finish();
        assert_eq!(
            &forwarded,
            msg.as_bytes(),
            "{}: unchanged forward differs",
            path.display()
        );
        // a fixture is exactly one message: nothing was cut off
        let original = std::fs::read(&path).expect("fixture readable");
        assert_eq!(
            msg.as_bytes().as_ref(),
            original.as_slice(),
            "{}",
            path.display()
        );
    }
}

#[test]
fn forwarding_a_request_changes_only_via_record_route_route_and_max_forwards() {
    let mut requests = 0;
    for path in fixtures() {
        let msg = load(&path);
        if !msg.is_request() {
            continue;
        }
        requests += 1;
        let new_via = b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-test-1;rport".as_slice();
        let new_rr = b"<sip:127.0.0.1:5060;lr>".as_slice();
        let max_forwards = msg
            .max_forwards()
            .and_then(Result::ok)
            .unwrap_or(70)
            .saturating_sub(1);
        let had_routes = values(&msg, HeaderName::Route);
        let mut editor = Editor::new(&msg);
        editor.push_via(new_via).prepend_record_route(new_rr);
        editor
            .set_max_forwards(max_forwards)
            .expect("Max-Forwards editable");
        if !had_routes.is_empty() {
            editor.pop_route().expect("Route poppable");
        }
        let edited = Message::parse(editor.finish())
            .unwrap_or_else(|e| panic!("{}: edited copy does not parse: {e}", path.display()));
        edited
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.display();

        let mut want_vias = vec![new_via.to_vec()];
        want_vias.extend(values(&msg, HeaderName::Via));
        assert_eq!(values(&edited, HeaderName::Via), want_vias, "{name}: Via");
        let mut want_rr = vec![new_rr.to_vec()];
        want_rr.extend(values(&msg, HeaderName::RecordRoute));
        assert_eq!(
            values(&edited, HeaderName::RecordRoute),
            want_rr,
            "{name}: Record-Route"
        );
        assert_eq!(
            values(&edited, HeaderName::Route),
            had_routes.iter().skip(1).cloned().collect::<Vec<_>>(),
            "{name}: Route"
        );
        assert_eq!(
            edited.max_forwards().and_then(Result::ok),
            Some(max_forwards),
            "{name}"
        );
        let untouched = [
            HeaderName::Via,
            HeaderName::RecordRoute,
            HeaderName::Route,
            HeaderName::MaxForwards,
        ];
        assert_eq!(
            other_fields(&edited, &untouched),
            other_fields(&msg, &untouched),
            "{name}: other headers"
        );
        assert_eq!(
            edited.request_uri_bytes(),
            msg.request_uri_bytes(),
            "{name}: Request-URI"
        );
        assert_eq!(edited.body(), msg.body(), "{name}: body");
    }
    assert!(requests >= 30, "only {requests} request fixtures");
}

#[test]
fn forwarding_a_response_pops_exactly_the_top_via() {
    let mut responses = 0;
    for path in fixtures() {
        let msg = load(&path);
        if msg.is_request() || values(&msg, HeaderName::Via).len() < 2 {
            continue;
        }
        responses += 1;
        let mut editor = Editor::new(&msg);
        editor.pop_via().expect("top Via poppable");
        let edited = Message::parse(editor.finish()).expect("edited response parses");
        let name = path.display();
        assert_eq!(
            values(&edited, HeaderName::Via),
            values(&msg, HeaderName::Via)[1..].to_vec(),
            "{name}: Via after pop"
        );
        assert_eq!(
            other_fields(&edited, &[HeaderName::Via]),
            other_fields(&msg, &[HeaderName::Via]),
            "{name}: other headers"
        );
        assert_eq!(edited.body(), msg.body(), "{name}: body");
        assert_eq!(edited.status(), msg.status());
    }
    assert!(responses >= 15, "only {responses} multi-Via responses");
}

#[test]
fn contact_cseq_request_uri_and_body_edits_show_only_themselves() {
    for path in fixtures() {
        let msg = load(&path);
        let name = path.display();
        let has_contact = msg
            .contacts()
            .next()
            .is_some_and(|c| c.is_ok_and(|c| c.address().is_some()));
        let mut editor = Editor::new(&msg);
        if has_contact {
            editor
                .set_contact_uri(0, b"sip:alias-7f3a@127.0.0.1:5060")
                .expect("Contact editable");
        }
        editor.set_cseq(4242).expect("CSeq editable");
        if msg.is_request() {
            editor
                .set_request_uri(b"sip:200@127.0.0.1:5070")
                .expect("Request-URI editable");
        }
        let body = b"<?xml version=\"1.0\"?>\r\n<dialog-info/>\r\n";
        editor
            .set_body(body, Some(b"application/dialog-info+xml"))
            .expect("body replaceable");
        let edited = Message::parse(editor.finish())
            .unwrap_or_else(|e| panic!("{name}: edited copy does not parse: {e}"));
        assert_eq!(edited.body(), body, "{name}: body");
        assert_eq!(
            edited.content_length(),
            Some(body.len()),
            "{name}: Content-Length"
        );
        let ct = edited
            .content_type()
            .expect("Content-Type present")
            .expect("Content-Type parses");
        assert!(ct.is("application", "dialog-info+xml"), "{name}");
        let cseq = edited.cseq().expect("CSeq").expect("CSeq parses");
        let old_cseq = msg.cseq().expect("CSeq").expect("CSeq parses");
        assert_eq!(
            (cseq.seq(), cseq.method()),
            (4242, old_cseq.method()),
            "{name}: CSeq"
        );
        if has_contact {
            let first = edited
                .contacts()
                .next()
                .expect("Contact")
                .expect("Contact parses");
            let addr = first.address().expect("an address");
            assert_eq!(
                addr.uri().as_bytes(),
                b"sip:alias-7f3a@127.0.0.1:5060",
                "{name}"
            );
            let old = msg
                .contacts()
                .next()
                .expect("Contact")
                .expect("Contact parses");
            let old = old.address().expect("an address");
            assert_eq!(addr.params(), old.params(), "{name}: Contact params kept");
            assert_eq!(
                addr.display_raw(),
                old.display_raw(),
                "{name}: display name kept"
            );
        }
        if msg.is_request() {
            assert_eq!(
                edited.request_uri_bytes(),
                Some(&b"sip:200@127.0.0.1:5070"[..])
            );
        }
        let touched = [
            HeaderName::Contact,
            HeaderName::CSeq,
            HeaderName::ContentLength,
            HeaderName::ContentType,
        ];
        assert_eq!(
            other_fields(&edited, &touched),
            other_fields(&msg, &touched),
            "{name}: other headers"
        );
        assert_eq!(
            values(&edited, HeaderName::Contact).len(),
            values(&msg, HeaderName::Contact).len(),
            "{name}: Contact count"
        );
    }
}
