//! Stream framing over TCP/TLS: messages in any chunking, CRLF keep-alives, and limits
//! enforced before memory grows.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use std::path::Path;

use bytes::Bytes;
use presence_proxy::sip::framing::{Frame, StreamFramer};
use presence_proxy::sip::{HeaderName, Limits, Message, ParseErrorKind};

/// The RFC 3665 fixtures that carry Content-Length (required on streams).
fn stream_fixtures() -> Vec<Bytes> {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sip-traces/rfc3665"));
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("fixtures readable")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sip"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| Bytes::from(std::fs::read(p).expect("fixture readable")))
        .filter(|b| Message::parse(b.clone()).is_ok_and(|m| m.content_length().is_some()))
        .collect()
}

fn drain(framer: &mut StreamFramer, out: &mut Vec<Frame>) {
    while let Some(frame) = framer.next_frame().expect("valid stream") {
        out.push(frame);
    }
}

fn frame_in_chunks(stream: &[u8], chunk_sizes: impl Iterator<Item = usize>) -> Vec<Frame> {
    let mut framer = StreamFramer::default();
    let mut frames = Vec::new();
    let mut pos = 0;
    for size in chunk_sizes {
        if pos >= stream.len() {
            break;
        }
        let end = (pos + size.max(1)).min(stream.len());
        framer.push(&stream[pos..end]);
        drain(&mut framer, &mut frames);
        pos = end;
    }
    if pos < stream.len() {
        framer.push(&stream[pos..]);
        drain(&mut framer, &mut frames);
    }
    assert_eq!(framer.buffered(), 0, "nothing left over");
    frames
}

#[test]
fn many_messages_in_one_read_and_one_message_over_many_reads() {
    let messages = stream_fixtures();
    assert!(messages.len() > 40);
    let stream: Vec<u8> = messages.iter().flat_map(|m| m.iter().copied()).collect();
    let whole = frame_in_chunks(&stream, std::iter::once(stream.len()));
    let bytewise = frame_in_chunks(&stream, std::iter::repeat(1));
    let uneven = frame_in_chunks(
        &stream,
        [7usize, 13, 1, 301, 2, 64, 1000].into_iter().cycle(),
    );
    let expected: Vec<Frame> = messages
        .iter()
        .map(|m| Frame::Message(Message::parse(m.clone()).expect("fixture parses")))
        .collect();
    assert_eq!(whole, expected);
    assert_eq!(bytewise, expected);
    assert_eq!(uneven, expected);
}

#[test]
fn every_split_point_of_two_messages_frames_the_same() {
    let messages = stream_fixtures();
    let (a, b) = (&messages[0], &messages[5]);
    let stream: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
    let expected = frame_in_chunks(&stream, std::iter::once(stream.len()));
    assert_eq!(expected.len(), 2);
    for split in 1..stream.len() {
        let frames = frame_in_chunks(&stream, [split, stream.len()].into_iter());
        assert_eq!(frames, expected, "split at {split}");
    }
}

#[test]
fn double_crlf_is_a_ping_and_single_crlf_a_pong() {
    let msg = &stream_fixtures()[0];
    let mut stream = b"\r\n\r\n".to_vec();
    stream.extend_from_slice(msg);
    stream.extend_from_slice(b"\r\n");
    stream.extend_from_slice(msg);
    stream.extend_from_slice(b"\r\n\r\n");
    for chunks in [
        vec![stream.len()],
        vec![1; stream.len()],
        vec![3, 5, 700, 2, 2],
    ] {
        let frames = frame_in_chunks(&stream, chunks.into_iter());
        let kinds: Vec<&str> = frames
            .iter()
            .map(|f| match f {
                Frame::Ping => "ping",
                Frame::Pong => "pong",
                Frame::Message(_) => "message",
            })
            .collect();
        assert_eq!(kinds, ["ping", "message", "pong", "message", "ping"]);
    }
}

#[test]
fn a_lone_crlf_waits_for_the_next_byte() {
    let mut framer = StreamFramer::default();
    framer.push(b"\r\n");
    assert_eq!(
        framer.next_frame().expect("no error"),
        None,
        "could still become a ping"
    );
    framer.push(b"\r\n");
    assert_eq!(framer.next_frame().expect("no error"), Some(Frame::Ping));
}

#[test]
fn content_length_is_required_on_streams() {
    let mut framer = StreamFramer::default();
    framer.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n");
    let err = framer.next_frame().expect_err("no Content-Length");
    assert_eq!(err.kind, ParseErrorKind::MissingHeader);
    assert_eq!(err.header, Some(HeaderName::ContentLength));
}

#[test]
fn oversized_messages_are_refused_before_the_buffer_grows_past_the_limit() {
    let limits = Limits {
        max_message_size: 1024,
        max_headers: 16,
    };
    // a header section that never ends
    let mut framer = StreamFramer::new(limits);
    framer.push(b"INVITE sip:a@b SIP/2.0\r\n");
    let mut refused = None;
    for _ in 0..100 {
        framer.push(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        match framer.next_frame() {
            Ok(None) => assert!(
                framer.buffered() <= 1024 + 64,
                "buffer grew to {}",
                framer.buffered()
            ),
            Ok(Some(f)) => panic!("unexpected frame {f:?}"),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("refused");
    assert!(
        matches!(
            err.kind,
            ParseErrorKind::TooLarge | ParseErrorKind::TooManyHeaders
        ),
        "{err}"
    );

    // a Content-Length that announces more than the limit is refused at once
    let mut framer = StreamFramer::new(limits);
    framer.push(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 5000\r\n\r\n");
    assert_eq!(
        framer.next_frame().expect_err("too large").kind,
        ParseErrorKind::TooLarge
    );

    // too many header lines
    let mut framer = StreamFramer::new(Limits {
        max_message_size: 65536,
        max_headers: 16,
    });
    let mut msg = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
    for i in 0..20 {
        msg.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    msg.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    framer.push(&msg);
    assert_eq!(
        framer.next_frame().expect_err("too many").kind,
        ParseErrorKind::TooManyHeaders
    );
}

#[test]
fn datagrams_ignore_bytes_after_the_body_and_run_to_the_end_without_content_length() {
    let with_len = Bytes::from_static(
        b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 5\r\n\r\nhelloTRAILING",
    );
    let msg = Message::parse(with_len).expect("parses");
    assert_eq!(msg.body(), b"hello");
    assert!(
        !msg.as_bytes().ends_with(b"TRAILING"),
        "the message ends with its body"
    );
    let without_len = Bytes::from_static(
        b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\nhello world",
    );
    assert_eq!(
        Message::parse(without_len).expect("parses").body(),
        b"hello world"
    );
    let short = Bytes::from_static(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 50\r\n\r\nhello");
    assert_eq!(
        Message::parse(short).expect_err("truncated").kind,
        ParseErrorKind::BodyTruncated
    );
}

#[test]
fn lf_only_line_ends_are_accepted() {
    let msg = Message::parse(Bytes::from_static(
        b"OPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:x@y>;tag=1\nTo: <sip:a@b>\nCall-ID: c1\nCSeq: 1 OPTIONS\nl: 0\n\n",
    ))
    .expect("parses");
    msg.validate().expect("valid");
    assert_eq!(msg.call_id().expect("present").expect("parses"), b"c1");
    let mut framer = StreamFramer::default();
    framer.push(msg.as_bytes());
    assert!(matches!(framer.next_frame(), Ok(Some(Frame::Message(_)))));
}
