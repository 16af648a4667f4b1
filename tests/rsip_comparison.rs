//! Why the hot path uses our own parser: what rsip 0.4 (unmaintained since 2022) does
//! with inputs real phones send, next to what `presence_proxy::sip` does. If a future
//! rsip gets these right, these tests fail and the README's reasoning must be revisited.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use bytes::Bytes;
use presence_proxy::sip::framing::{Frame, StreamFramer};
use presence_proxy::sip::{HeaderName, Message};
use rsip::headers::ToTypedHeader;

const COMPACT: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:x@y>;tag=1\r\nt: <sip:a@b>\r\ni: compact-1\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n";
const FOLDED: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP\r\n h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: folded-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

#[test]
fn compact_headers_are_invisible_to_rsip_typed_access() {
    let ours = Message::parse(Bytes::from_static(COMPACT)).unwrap();
    assert_eq!(ours.call_id().unwrap().unwrap(), b"compact-1");
    assert!(ours.top_via().unwrap().is_ok());

    let theirs = rsip::SipMessage::try_from(COMPACT).expect("rsip parses the message");
    let rsip::SipMessage::Request(req) = theirs else {
        panic!("a request")
    };
    assert!(
        rsip::message::HeadersExt::call_id_header(&req).is_err(),
        "rsip finds no Call-ID in `i:`"
    );
    assert!(
        rsip::message::HeadersExt::via_header(&req).is_err(),
        "rsip finds no Via in `v:`"
    );
}

#[test]
fn folded_headers_fail_in_rsip() {
    let ours = Message::parse(Bytes::from_static(FOLDED)).unwrap();
    assert_eq!(ours.top_via().unwrap().unwrap().host(), b"h");
    let theirs = rsip::SipMessage::try_from(FOLDED);
    let via_ok = theirs.ok().and_then(|m| match m {
        rsip::SipMessage::Request(r) => rsip::message::HeadersExt::via_header(&r)
            .ok()
            .and_then(|v| v.typed().ok()),
        rsip::SipMessage::Response(_) => None,
    });
    assert!(via_ok.is_none(), "rsip does not read a folded Via");
}

#[test]
fn rsip_ignores_content_length_so_two_stream_messages_become_one() {
    let stream: Vec<u8> = [COMPACT, FOLDED].concat();
    let theirs = rsip::SipMessage::try_from(stream.as_slice()).expect("rsip parses");
    assert!(
        theirs.body().len() > FOLDED.len() / 2,
        "the second message became the body"
    );

    let mut framer = StreamFramer::default();
    framer.push(&stream);
    let mut frames = Vec::new();
    while let Some(Frame::Message(m)) = framer.next_frame().unwrap() {
        frames.push(m.header(HeaderName::CallId).unwrap().to_vec());
    }
    assert_eq!(frames, vec![b"compact-1".to_vec(), b"folded-1".to_vec()]);
}
