//! Property tests of the wire layer, on stable Rust with proptest:
//!
//! - a stream of valid messages (with keep-alives between them) frames into the same
//!   messages whatever the chunking, and the same as one buffer;
//! - arbitrary bytes, and fixtures with random bytes changed, never panic
//!   `Message::parse` and keep every invariant of `fuzzing::datagram`;
//! - random sets of forwarding edits keep the round-trip invariants of
//!   `fuzzing::edit_round_trip` on every fixture.
//!
//! Case counts stay modest so `cargo test` stays fast; the fuzz targets in `fuzz/`
//! explore the same checks for longer.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use presence_proxy::fuzzing;
use presence_proxy::sip::framing::{Frame, StreamFramer};
use presence_proxy::sip::{Message, ParseError};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// Every file with extension `ext` in these `sip-traces/` folders, sorted by path.
fn read_fixtures(dirs: &[&str], ext: &str) -> Vec<Bytes> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-traces");
    let mut paths: Vec<_> = dirs
        .iter()
        .flat_map(|dir| std::fs::read_dir(root.join(dir)).expect("fixture folder readable"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| Bytes::from(std::fs::read(p).expect("fixture readable")))
        .collect()
}

/// The RFC 3665 and RFC 4235 `.sip` messages that carry Content-Length (which a stream
/// needs). Kept as bytes: a parsed `Message` is handled on one thread (not `Sync`).
fn stream_fixtures() -> &'static [Bytes] {
    static FIXTURES: OnceLock<Vec<Bytes>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let all: Vec<_> = read_fixtures(&["rfc3665", "rfc4235"], "sip")
            .into_iter()
            .filter(|raw| {
                Message::parse(raw.clone()).is_ok_and(|msg| msg.content_length().is_some())
            })
            .collect();
        assert!(all.len() > 40, "only {} stream fixtures", all.len());
        all
    })
}

/// Every fixture message that parses (RFC 3665, RFC 4235, RFC 4475, BLF).
fn parsable_fixtures() -> &'static [Bytes] {
    static FIXTURES: OnceLock<Vec<Bytes>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let mut all = read_fixtures(&["rfc3665", "rfc4235", "blf"], "sip");
        all.extend(read_fixtures(&["rfc4475"], "dat"));
        all.retain(|raw| Message::parse(raw.clone()).is_ok());
        assert!(all.len() > 100, "only {} parsable fixtures", all.len());
        all
    })
}

/// Pushes `stream` in chunks of the given sizes (cycled), taking every frame after
/// each push; the stream must be used up exactly.
fn frame_in_chunks(stream: &[u8], sizes: &[usize]) -> Result<Vec<Frame>, ParseError> {
    let mut framer = StreamFramer::default();
    let mut frames = Vec::new();
    let mut rest = stream;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.clamp(1, rest.len()));
        rest = tail;
        framer.push(chunk);
        while let Some(frame) = framer.next_frame()? {
            frames.push(frame);
        }
    }
    assert_eq!(
        framer.buffered(),
        0,
        "bytes left over after the last message"
    );
    Ok(frames)
}

/// What goes between two messages of a stream.
#[derive(Debug, Clone, Copy)]
enum KeepAlive {
    None,
    /// CRLF CRLF
    Ping,
    /// CRLF
    Pong,
}

fn keep_alive() -> impl Strategy<Value = KeepAlive> {
    prop_oneof![
        2 => Just(KeepAlive::None),
        1 => Just(KeepAlive::Ping),
        1 => Just(KeepAlive::Pong),
    ]
}

/// One change to a message: overwrite, insert or delete a byte.
#[derive(Debug, Clone, Copy)]
enum Mutation {
    Set(Index, u8),
    Insert(Index, u8),
    Delete(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // bytes that matter to the grammar, often; any byte, sometimes
    let byte = prop_oneof![
        3 => proptest::sample::select(b"\r\n \t:;,<>\"\\=@%0123456789".to_vec()),
        1 => any::<u8>(),
    ];
    prop_oneof![
        (any::<Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Delete),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match *m {
            Mutation::Set(i, b) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes[at] = b;
            }
            Mutation::Insert(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.insert(at, b);
            }
            Mutation::Delete(i) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes.remove(at);
            }
            _ => {}
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Valid messages with keep-alives between them frame the same in any chunking.
    #[test]
    fn any_chunking_frames_the_same_messages(
        picks in vec((any::<Index>(), keep_alive()), 1..6),
        sizes in vec(1usize..600, 1..40),
    ) {
        let fixtures = stream_fixtures();
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (index, keep_alive) in &picks {
            match keep_alive {
                KeepAlive::None => {}
                KeepAlive::Ping => {
                    stream.extend_from_slice(b"\r\n\r\n");
                    expected.push(Frame::Ping);
                }
                KeepAlive::Pong => {
                    stream.extend_from_slice(b"\r\n");
                    expected.push(Frame::Pong);
                }
            }
            let raw = &fixtures[index.index(fixtures.len())];
            stream.extend_from_slice(raw);
            let msg = Message::parse(raw.clone()).expect("a stream fixture parses");
            expected.push(Frame::Message(msg));
        }
        let whole = frame_in_chunks(&stream, &[stream.len()]);
        prop_assert_eq!(whole.as_ref(), Ok(&expected));
        let chunked = frame_in_chunks(&stream, &sizes);
        prop_assert_eq!(chunked.as_ref(), Ok(&expected));
    }

    /// Arbitrary bytes: `Message::parse` never panics and every datagram check holds.
    #[test]
    fn random_bytes_keep_the_datagram_invariants(data in vec(any::<u8>(), 0..1024)) {
        fuzzing::datagram(&data);
    }

    /// Fixtures with a few bytes changed: the datagram checks hold (most of these still
    /// parse, so this reaches far deeper than random bytes).
    #[test]
    fn mutated_fixtures_keep_the_datagram_invariants(
        index in any::<Index>(),
        mutations in vec(mutation(), 1..8),
    ) {
        let fixtures = parsable_fixtures();
        let raw = &fixtures[index.index(fixtures.len())];
        fuzzing::datagram(&mutate(raw.to_vec(), &mutations));
    }

    /// Random sets of forwarding edits on every fixture keep the round-trip invariants.
    #[test]
    fn random_edits_round_trip(
        index in any::<Index>(),
        flags in 0u16..0x400,
        arg in any::<u8>(),
    ) {
        let fixtures = parsable_fixtures();
        let raw = &fixtures[index.index(fixtures.len())];
        let [lo, hi] = flags.to_le_bytes();
        let input: Vec<u8> = [lo, hi, arg].into_iter().chain(raw.iter().copied()).collect();
        fuzzing::edit_round_trip(&input);
    }
}
