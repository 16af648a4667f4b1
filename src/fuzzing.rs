//! Checks shared by the cargo-fuzz targets in `fuzz/` and the stable regression tests
//! that replay their corpus (`tests/fuzz_corpus.rs`). Not part of the product API.
//!
//! Each function takes arbitrary bytes and panics only when an invariant of the wire
//! layer is broken: an error offset past the input, a span outside the buffer, a typed
//! view that does not borrow from the message, a verdict that depends on how a TCP
//! stream was segmented, an edit that changes more (or less) than it was asked to.
//! Inputs the layer rightly rejects are not failures.
//!
//! Input layouts (the corpus seeds in `fuzz/corpus/` follow them):
//!
//! - [`datagram`], [`uri`]: the whole input is the message / URI.
//! - [`stream`]: one control byte (chunking and limits), then the stream bytes.
//! - [`edit_round_trip`]: two bytes of edit flags, one argument byte, then the message.
//! - [`proxy_core`]: records of source, clock advance, length and message bytes.
//! - [`observe`]: records of direction and phone, clock advance, length and message
//!   bytes.
//! - [`blf_dialog_info`]: the whole input is a NOTIFY body (dialog-info or PIDF).

use std::borrow::Cow;

use bytes::Bytes;

use crate::sip::edit::Editor;
use crate::sip::framing::{Frame, StreamFramer};
use crate::sip::header::cseq::MAX_CSEQ;
use crate::sip::header::{NameAddr, Via};
use crate::sip::uri::unescape;
use crate::sip::{HeaderName, Limits, Message, Method, Params, ParseError, Scheme, StartLine, Uri};

// ---------------------------------------------------------------------------------
// datagram

/// Parses `data` as one UDP datagram.
///
/// On error: the error offset lies within the input.
///
/// On success:
/// - the message is the input less leading line ends (and less bytes past the body
///   Content-Length announces);
/// - the header index is sound: header lines follow the start line and each other
///   without gaps, every name and value span lies inside its line (and never at the
///   start of a folded line), names are recognised as written, values carry no
///   surrounding white space, `is_folded` matches the line;
/// - the body is everything after the header section, and as long as Content-Length
///   says when that header is present;
/// - every typed accessor (and every element of every list accessor) either fails
///   with an offset inside the message or returns views borrowed from the message;
/// - when [`Message::validate`] accepts the message, the accessors it vouches for
///   all succeed;
/// - forwarding it unedited gives back the very same bytes, and re-parsing those bytes
///   gives an equal message.
pub fn datagram(data: &[u8]) {
    match Message::parse(Bytes::copy_from_slice(data)) {
        Ok(msg) => {
            let skip = data
                .iter()
                .position(|&c| c != b'\r' && c != b'\n')
                .unwrap_or(data.len());
            assert!(
                data[skip..].starts_with(msg.as_bytes()),
                "the message is not the input less its leading line ends"
            );
            check_message(&msg);
        }
        Err(e) => check_error_offset(&e, data.len(), "Message::parse"),
    }
}

/// Every invariant of a parsed message (see [`datagram`]).
fn check_message(msg: &Message) {
    check_index(msg);
    check_accessors(msg);
    check_validate_agrees(msg);
    assert_eq!(
        Editor::new(msg).finish(),
        *msg.as_bytes(),
        "forwarding without edits changed the bytes"
    );
    assert_eq!(
        Message::parse(msg.as_bytes().clone()).as_ref(),
        Ok(msg),
        "re-parsing the message's own bytes gives a different message"
    );
}

fn check_error_offset(e: &ParseError, len: usize, what: &str) {
    assert!(
        e.offset <= len,
        "{what}: error offset {} past the end ({len} bytes): {e:?}",
        e.offset
    );
}

/// The header index and body position describe the buffer (see [`datagram`]).
fn check_index(msg: &Message) {
    let buf = msg.as_bytes();
    let head_end = msg.head_end();
    assert!(head_end <= buf.len(), "head_end {head_end} past the buffer");
    let start_line_end = memchr::memchr(b'\n', buf).map_or(buf.len(), |i| i + 1);
    check_start_line(msg, start_line_end);
    let mut pos = start_line_end;
    for field in msg.fields() {
        let (name, value, line) = (field.name_span(), field.value_span(), field.line_span());
        assert_eq!(line.start(), pos, "header lines leave a gap: {field:?}");
        assert!(
            line.end() <= head_end,
            "header line past head_end: {field:?}"
        );
        assert!(
            name.start() == line.start() && !name.is_empty() && name.end() <= line.end(),
            "name span not at the start of its line: {field:?}"
        );
        assert!(
            name.end() <= value.start()
                && value.start() <= value.end()
                && value.end() <= line.end(),
            "value span outside its line: {field:?}"
        );
        // a value (even an empty one) never starts a line: an edit that replaces it
        // would turn a fold into a header line of its own
        assert_ne!(
            buf[value.start() - 1],
            b'\n',
            "value span at the start of a line: {field:?}"
        );
        assert_eq!(
            HeaderName::from_bytes(msg.field_name(field)),
            field.name(),
            "name recognised differently from its bytes: {field:?}"
        );
        let v = msg.field_value(field);
        assert!(
            !v.first().is_some_and(|c| matches!(c, b' ' | b'\t'))
                && !v.last().is_some_and(|c| matches!(c, b' ' | b'\t')),
            "value keeps surrounding white space: {field:?}"
        );
        let line_bytes = &buf[line.range()];
        let inner_newline = line_bytes[..line_bytes.len() - 1].contains(&b'\n');
        assert_eq!(
            field.is_folded(),
            inner_newline,
            "is_folded is wrong: {field:?}"
        );
        pos = line.end();
    }
    assert!(
        matches!(buf.get(pos..head_end), Some(b"" | b"\n" | b"\r\n")),
        "the header section does not end in one blank line (or the buffer's end)"
    );
    let body = msg.body_span();
    assert!(
        body.start() == head_end && body.end() == buf.len(),
        "the body is not everything after the header section"
    );
    if msg.header_count(HeaderName::ContentLength) > 0 {
        assert_eq!(
            msg.content_length(),
            Some(msg.body().len()),
            "body length differs from Content-Length"
        );
    }
}

fn check_start_line(msg: &Message, start_line_end: usize) {
    match *msg.start_line() {
        StartLine::Request {
            method,
            method_span,
            uri,
            ..
        } => {
            assert!(
                method_span.start() == 0
                    && method_span.end() < uri.start()
                    && uri.end() < start_line_end,
                "request line spans out of order"
            );
            assert_eq!(
                Method::from_bytes(msg.slice(method_span)),
                method,
                "method recognised differently from its bytes"
            );
        }
        StartLine::Response { code, reason } => {
            assert!(
                (100..=699).contains(&code),
                "status code {code} out of range"
            );
            assert!(
                reason.end() <= start_line_end,
                "reason past the status line"
            );
        }
    }
}

/// Whether `inner` is empty or lies inside `outer` (typed views borrow, never copy).
fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    inner.is_empty() || (o.start <= i.start && i.end <= o.end)
}

fn assert_within(outer: &[u8], inner: &[u8], what: &str) {
    assert!(within(outer, inner), "{what} is not a slice of its input");
}

/// Calls every typed accessor and walks every list (see [`datagram`]).
fn check_accessors(msg: &Message) {
    let buf: &[u8] = msg.as_bytes();
    let len = buf.len();
    let _ = (
        msg.is_request(),
        msg.method(),
        msg.status(),
        msg.user_agent(),
    );
    for part in [msg.method_bytes(), msg.reason(), msg.request_uri_bytes()]
        .into_iter()
        .flatten()
    {
        assert_within(buf, part, "a start line part");
    }
    match msg.request_uri() {
        Some(Ok(uri)) => {
            assert_eq!(Some(uri.as_bytes()), msg.request_uri_bytes(), "request_uri");
            check_uri_parts(buf, &uri);
        }
        Some(Err(e)) => check_error_offset(&e, len, "request_uri"),
        None => {}
    }
    // list values: each inside the value of the field it names
    let mut names: Vec<HeaderName> = Vec::new();
    for field in msg.fields() {
        if names.contains(&field.name()) {
            continue;
        }
        names.push(field.name());
        for (i, span) in msg.values(field.name()) {
            let owner = msg.fields()[i].value_span();
            assert!(
                msg.fields()[i].name() == field.name()
                    && owner.start() <= span.start()
                    && span.end() <= owner.end(),
                "values({:?}) yields a span outside its field",
                field.name()
            );
        }
    }
    for via in msg.vias() {
        check_typed(via, len, |v| check_via(buf, &v));
    }
    for addr in [msg.from(), msg.to()].into_iter().flatten() {
        check_typed(addr, len, |a| check_name_addr(buf, &a));
    }
    let lists = [
        msg.routes().collect::<Vec<_>>(),
        msg.record_routes().collect(),
        msg.paths().collect(),
        msg.p_asserted_identities().collect(),
        msg.remote_party_ids().collect(),
        msg.diversions().collect(),
        msg.history_info().collect(),
    ];
    for addr in lists.into_iter().flatten() {
        check_typed(addr, len, |a| check_name_addr(buf, &a));
    }
    for contact in msg.contacts() {
        check_typed(contact, len, |c| {
            if let Some(a) = c.address() {
                check_name_addr(buf, a);
            }
        });
    }
    if let Some(r) = msg.call_id() {
        check_typed(r, len, |id| {
            assert_within(buf, id, "Call-ID");
            assert!(
                !id.is_empty() && id.iter().all(|&c| c > b' ' && c != 0x7f),
                "Call-ID accepted with white space or controls"
            );
        });
    }
    if let Some(r) = msg.cseq() {
        check_typed(r, len, |c| {
            assert_within(buf, c.method_bytes(), "CSeq method");
            assert!(c.seq() <= MAX_CSEQ, "CSeq number {} accepted", c.seq());
            assert_eq!(
                c.method(),
                Method::from_bytes(c.method_bytes()),
                "CSeq method"
            );
        });
    }
    if let Some(r) = msg.max_forwards() {
        check_typed(r, len, |_| {});
    }
    if let Some(r) = msg.expires() {
        check_typed(r, len, |_| {});
    }
    if let Some(r) = msg.event() {
        check_typed(r, len, |e| {
            assert_within(buf, e.package(), "Event package");
            check_params(buf, e.params());
            let _ = e.id();
        });
    }
    if let Some(r) = msg.subscription_state() {
        check_typed(r, len, |s| {
            assert_within(buf, s.state(), "Subscription-State");
            check_params(buf, s.params());
            let _ = (s.is_terminated(), s.expires(), s.reason(), s.retry_after());
        });
    }
    if let Some(r) = msg.content_type() {
        check_typed(r, len, |c| {
            assert_within(buf, c.media_type(), "media type");
            assert_within(buf, c.subtype(), "media subtype");
            check_params(buf, c.params());
            let _ = c.is("application", "sdp");
        });
    }
    for tag in msg
        .supported()
        .chain(msg.require())
        .chain(msg.proxy_require())
    {
        check_typed(tag, len, |t| assert_within(buf, t, "option tag"));
    }
}

/// A typed accessor's result: the view passes `check`, or the error points inside.
fn check_typed<T>(result: Result<T, ParseError>, len: usize, check: impl FnOnce(T)) {
    match result {
        Ok(value) => check(value),
        Err(e) => check_error_offset(&e, len, "typed accessor"),
    }
}

fn check_params(buf: &[u8], params: Params<'_>) {
    assert_within(buf, params.as_bytes(), "parameters");
    for p in params.iter() {
        assert_within(buf, p.name, "parameter name");
        assert!(!p.name.is_empty(), "empty parameter name");
        if let Some(v) = p.value {
            assert_within(buf, v, "parameter value");
        }
        assert!(
            !p.name.is_ascii() || params.contains(&String::from_utf8_lossy(p.name)),
            "a parameter the iterator yields is not found by name"
        );
    }
    let _ = params.is_empty();
}

fn check_via(buf: &[u8], via: &Via<'_>) {
    for part in [
        via.protocol_name(),
        via.protocol_version(),
        via.transport(),
        via.host(),
    ] {
        assert_within(buf, part, "a Via part");
    }
    assert!(!via.host().is_empty(), "Via accepted without a host");
    check_params(buf, via.params());
    assert_eq!(
        via.has_magic_cookie(),
        via.branch().is_some_and(|b| b.starts_with(b"z9hG4bK")),
        "has_magic_cookie disagrees with branch"
    );
    let _ = (via.port(), via.received(), via.rport(), via.maddr());
}

fn check_name_addr(buf: &[u8], addr: &NameAddr<'_>) {
    if let Some(d) = addr.display_raw() {
        assert_within(buf, d, "display name");
    }
    let _ = (
        addr.display_name(),
        addr.is_bracketed(),
        addr.tag(),
        addr.expires(),
    );
    check_params(buf, addr.params());
    check_uri_parts(buf, addr.uri());
}

/// Every part of a URI borrows from `outer`; unescaping never grows the user part.
fn check_uri_parts(outer: &[u8], uri: &Uri<'_>) {
    assert_within(outer, uri.as_bytes(), "URI");
    let raw = uri.as_bytes();
    for part in [
        Some(uri.scheme_raw()),
        uri.user(),
        uri.password(),
        Some(uri.host()),
        uri.headers(),
    ]
    .into_iter()
    .flatten()
    {
        assert_within(raw, part, "a URI part");
    }
    check_params(raw, uri.params());
    if let (Some(user), Some(unescaped)) = (uri.user(), uri.user_unescaped()) {
        assert!(
            unescaped.len() <= user.len(),
            "unescaping grew the user part"
        );
    }
    let _ = uri.port();
}

/// When `validate` accepts a message, what it vouches for must hold (see [`datagram`]).
fn check_validate_agrees(msg: &Message) {
    if let Err(e) = msg.validate() {
        check_error_offset(&e, msg.as_bytes().len(), "validate");
        return;
    }
    assert!(
        matches!(msg.from(), Some(Ok(_))),
        "validated without a From"
    );
    assert!(matches!(msg.to(), Some(Ok(_))), "validated without a To");
    assert!(
        matches!(msg.call_id(), Some(Ok(_))),
        "validated without a Call-ID"
    );
    assert!(
        matches!(msg.cseq(), Some(Ok(_))),
        "validated without a CSeq"
    );
    assert!(
        matches!(msg.max_forwards(), None | Some(Ok(_))),
        "validated a bad Max-Forwards"
    );
    assert!(
        matches!(msg.top_via(), Some(Ok(_))),
        "validated without a Via"
    );
    assert!(msg.vias().all(|v| v.is_ok()), "validated a bad Via");
    assert!(msg.contacts().all(|c| c.is_ok()), "validated a bad Contact");
    assert!(msg.routes().all(|r| r.is_ok()), "validated a bad Route");
    assert!(
        msg.record_routes().all(|r| r.is_ok()),
        "validated a bad Record-Route"
    );
    for name in [
        HeaderName::CallId,
        HeaderName::ContentLength,
        HeaderName::CSeq,
        HeaderName::From,
        HeaderName::MaxForwards,
        HeaderName::To,
    ] {
        assert!(msg.header_count(name) <= 1, "validated a repeated {name:?}");
    }
    if msg.is_request() {
        let uri = msg.request_uri();
        assert!(
            matches!(uri, Some(Ok(u)) if u.headers().is_none()),
            "validated a bad Request-URI"
        );
        let cseq_method = msg.cseq().and_then(Result::ok).map(|c| c.method_bytes());
        assert_eq!(
            cseq_method,
            msg.method_bytes(),
            "validated a CSeq method mismatch"
        );
    }
}

// ---------------------------------------------------------------------------------
// stream

/// Limits small enough for fuzz inputs to reach them.
const SMALL_LIMITS: Limits = Limits {
    max_message_size: 300,
    max_headers: 8,
};

/// Frames `data[1..]` as a TCP stream, in chunks derived from `data[0]` and in one
/// piece (`data[0]`'s top bit picks small limits so the limit checks are reached).
///
/// - Both give the same frames, then the same error or the same number of bytes left
///   waiting: the verdict does not depend on how the stream was segmented.
/// - Whenever the framer asks for more bytes, it holds at most `max_message_size`
///   (limits are enforced before the buffer grows past them).
/// - Every framed message re-parses as a datagram to an equal message.
/// - When `data[1..]` parses as a datagram with Content-Length and a blank line, that
///   message sent three times, split at points derived from `data[0]`, frames into
///   exactly three equal messages.
pub fn stream(data: &[u8]) {
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    let limits = if control & 0x80 == 0 {
        Limits::default()
    } else {
        SMALL_LIMITS
    };
    let whole = frame_in_chunks(bytes, limits, std::iter::once(bytes.len()));
    let chunked = frame_in_chunks(bytes, limits, Chunks::new(control));
    assert_eq!(
        chunked, whole,
        "framing in chunks differs from framing in one piece"
    );
    for frame in &whole.frames {
        if let Frame::Message(m) = frame {
            assert_eq!(
                Message::parse(m.as_bytes().clone()).as_ref(),
                Ok(m),
                "a framed message parses differently as a datagram"
            );
        }
    }
    repeated_message(control, bytes);
}

/// What a framer made of a whole stream.
#[derive(Debug, PartialEq, Eq)]
struct Framed {
    frames: Vec<Frame>,
    /// The first error, or how many bytes were left waiting for more.
    end: Result<usize, ParseError>,
}

/// Pushes `stream` in chunks of the given sizes, taking every frame after each push.
fn frame_in_chunks(
    stream: &[u8],
    limits: Limits,
    mut sizes: impl Iterator<Item = usize>,
) -> Framed {
    let mut framer = StreamFramer::new(limits);
    let mut frames = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        framer.push(chunk);
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    return Framed {
                        frames,
                        end: Err(e),
                    };
                }
            }
        }
        assert!(
            framer.buffered() <= limits.max_message_size,
            "the framer waits for more while holding {} bytes (limit {})",
            framer.buffered(),
            limits.max_message_size
        );
    }
    Framed {
        frames,
        end: Ok(framer.buffered()),
    }
}

/// Chunk sizes from a control byte: its low 3 bits pick the largest size, the whole
/// byte seeds a xorshift generator.
struct Chunks {
    state: u32,
    largest: u32,
}

impl Chunks {
    fn new(control: u8) -> Self {
        const LARGEST: [u32; 8] = [1, 2, 3, 5, 8, 32, 128, 1024];
        Self {
            state: u32::from(control).wrapping_mul(0x9E37_79B9) | 1,
            largest: LARGEST[usize::from(control & 7)],
        }
    }
}

impl Iterator for Chunks {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        Some(1 + (self.state % self.largest) as usize)
    }
}

/// Whether the header section ends in a blank line (a datagram may end it with the
/// buffer instead, which a stream cannot).
fn has_blank_line(msg: &Message) -> bool {
    let head = &msg.as_bytes()[..msg.head_end()];
    head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n")
}

/// Three copies of one framable message, split anywhere, frame into three equal messages.
fn repeated_message(control: u8, bytes: &[u8]) {
    let Ok(msg) = Message::parse(Bytes::copy_from_slice(bytes)) else {
        return;
    };
    if msg.content_length().is_none() || !has_blank_line(&msg) {
        return;
    }
    let stream = msg.as_bytes().repeat(3);
    let framed = frame_in_chunks(&stream, Limits::default(), Chunks::new(control ^ 0x5a));
    assert_eq!(
        framed.end,
        Ok(0),
        "three copies of a message left a remainder"
    );
    assert_eq!(
        framed.frames,
        vec![Frame::Message(msg.clone()); 3],
        "three copies of a message did not frame as three equal messages"
    );
}

// ---------------------------------------------------------------------------------
// uri

/// Parses `data` as a URI.
///
/// - On error the offset lies within the input; unescaping never grows the text.
/// - On success the URI is the whole input; scheme, user, password, host, parameters
///   and headers are slices of it, in that order; a SIP/SIPS URI has a host; the
///   scheme is recognised as written; unescaping the user part never grows it; and the
///   same text between `<` `>` parses as an address with an equal URI.
pub fn uri(data: &[u8]) {
    let unescaped: Cow<'_, [u8]> = unescape(data);
    assert!(unescaped.len() <= data.len(), "unescaping grew the text");
    let uri = match Uri::parse(data) {
        Ok(uri) => uri,
        Err(at) => {
            assert!(at <= data.len(), "URI error offset {at} past the input");
            return;
        }
    };
    assert_eq!(uri.as_bytes(), data, "the URI is not the whole input");
    check_uri_parts(data, &uri);
    let scheme = uri.scheme_raw();
    assert!(
        data.starts_with(scheme) && data.get(scheme.len()) == Some(&b':'),
        "scheme_raw is not the text before the first colon"
    );
    let expected = if scheme.eq_ignore_ascii_case(b"sip") {
        Scheme::Sip
    } else if scheme.eq_ignore_ascii_case(b"sips") {
        Scheme::Sips
    } else if scheme.eq_ignore_ascii_case(b"tel") {
        Scheme::Tel
    } else {
        Scheme::Other
    };
    assert_eq!(uri.scheme(), expected, "scheme recognised differently");
    if matches!(uri.scheme(), Scheme::Sip | Scheme::Sips) {
        assert!(!uri.host().is_empty(), "SIP URI accepted without a host");
        let offset = |part: &[u8]| (part.as_ptr() as usize).wrapping_sub(data.as_ptr() as usize);
        let mut last = scheme.len();
        for part in [uri.user(), uri.password(), Some(uri.host())]
            .into_iter()
            .flatten()
            .chain([uri.params().as_bytes(), uri.headers().unwrap_or_default()])
            .filter(|p| !p.is_empty())
        {
            assert!(offset(part) >= last, "URI parts out of order");
            last = offset(part) + part.len();
        }
    }
    if !data.contains(&b'>') {
        let bracketed = [b"<", data, b">"].concat();
        assert_eq!(
            NameAddr::parse(&bracketed).map(|a| *a.uri()),
            Ok(uri),
            "the URI parses differently in <>"
        );
    }
}

// ---------------------------------------------------------------------------------
// edit_round_trip

/// A Via value to push (valid, with an RFC 3261 branch).
const PUSHED_VIA: &[u8] = b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-fuzz-1";
/// A Record-Route value to prepend.
const RECORD_ROUTE: &[u8] = b"<sip:192.0.2.1;lr>";
/// A Request-URI to set.
const REQUEST_URI: &[u8] = b"sip:fuzz@192.0.2.7;transport=tcp";
/// A Contact URI to set.
const CONTACT_URI: &[u8] = b"sip:fuzz@192.0.2.8:5070";
/// A body to set: a prefix of this, as long as the argument byte says (mod its length).
const BODY: &[u8] = b"v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\n";
/// The Content-Type set with the body, when flag 9 is set.
const BODY_TYPE: &[u8] = b"application/sdp";

/// The edits, one flag bit each (bit 9 adds a Content-Type to `SET_BODY`).
const PUSH_VIA: u16 = 1;
const POP_VIA: u16 = 1 << 1;
const PREPEND_RECORD_ROUTE: u16 = 1 << 2;
const POP_ROUTE: u16 = 1 << 3;
const SET_REQUEST_URI: u16 = 1 << 4;
const SET_MAX_FORWARDS: u16 = 1 << 5;
const SET_CONTACT_URI: u16 = 1 << 6;
const SET_CSEQ: u16 = 1 << 7;
const SET_BODY: u16 = 1 << 8;
const WITH_CONTENT_TYPE: u16 = 1 << 9;

/// Edits the message in `data[3..]` with the edits flagged in `data[0..2]` (little
/// endian; `data[2]` is the argument of Max-Forwards, CSeq and the body length), then
/// checks the edited bytes.
///
/// Edits that return an error are dropped. The result of the others must re-parse and
/// show each edit (new top Via, popped Via/Route gone, new top Record-Route,
/// Request-URI, Max-Forwards, first Contact's URI with its display name and parameters
/// kept, CSeq number with the rest of the value kept, body with its Content-Length and
/// Content-Type), and nothing else may change: the start line, the body and every
/// header line whose name no edit touched are byte-identical and in the same order.
pub fn edit_round_trip(data: &[u8]) {
    let [lo, hi, arg, message @ ..] = data else {
        return;
    };
    let (flags, arg) = (u16::from_le_bytes([*lo, *hi]), *arg);
    let Ok(original) = Message::parse(Bytes::copy_from_slice(message)) else {
        return;
    };
    let seq = (u32::from(arg) << 23) | u32::from(arg);
    let body = &BODY[..usize::from(arg) % (BODY.len() + 1)];
    let content_type = (flags & WITH_CONTENT_TYPE != 0).then_some(BODY_TYPE);

    let on = |flag: u16| flags & flag != 0;
    let mut editor = Editor::new(&original);
    let mut done = 0u16;
    if on(PUSH_VIA) {
        editor.push_via(PUSHED_VIA);
        done |= PUSH_VIA;
    }
    if on(POP_VIA) && editor.pop_via().is_ok() {
        done |= POP_VIA;
    }
    if on(PREPEND_RECORD_ROUTE) {
        editor.prepend_record_route(RECORD_ROUTE);
        done |= PREPEND_RECORD_ROUTE;
    }
    if on(POP_ROUTE) && editor.pop_route().is_ok() {
        done |= POP_ROUTE;
    }
    if on(SET_REQUEST_URI) && editor.set_request_uri(REQUEST_URI).is_ok() {
        done |= SET_REQUEST_URI;
    }
    if on(SET_MAX_FORWARDS) && editor.set_max_forwards(arg).is_ok() {
        done |= SET_MAX_FORWARDS;
    }
    if on(SET_CONTACT_URI) && editor.set_contact_uri(0, CONTACT_URI).is_ok() {
        done |= SET_CONTACT_URI;
    }
    if on(SET_CSEQ) && editor.set_cseq(seq).is_ok() {
        done |= SET_CSEQ;
    }
    if on(SET_BODY) && editor.set_body(body, content_type).is_ok() {
        done |= SET_BODY;
    }
    let out = editor.finish();

    let edited = Message::parse(out.clone());
    assert!(
        edited.is_ok(),
        "edits {done:#05x} gave bytes that do not parse ({edited:?}): {:?}",
        String::from_utf8_lossy(&out)
    );
    let Ok(edited) = edited else {
        return;
    };
    let expect = Expected {
        original: &original,
        edited: &edited,
        done,
    };
    expect.list(HeaderName::Via, PUSH_VIA, Some(PUSHED_VIA), POP_VIA);
    expect.list(HeaderName::Route, 0, None, POP_ROUTE);
    expect.list(
        HeaderName::RecordRoute,
        PREPEND_RECORD_ROUTE,
        Some(RECORD_ROUTE),
        0,
    );
    expect.request_uri();
    expect.max_forwards(arg);
    expect.contact();
    expect.cseq(seq);
    expect.body(body, content_type);
    expect.untouched(content_type.is_some());
}

/// The original and edited message, and which edits were applied.
struct Expected<'a> {
    original: &'a Message,
    edited: &'a Message,
    done: u16,
}

/// The bytes of every element of a list header, in order (empty ones included).
fn list_values(msg: &Message, name: HeaderName) -> Vec<&[u8]> {
    msg.values(name).map(|(_, span)| msg.slice(span)).collect()
}

impl Expected<'_> {
    fn did(&self, flag: u16) -> bool {
        self.done & flag != 0
    }

    /// A list header after an optional push (new top value) and optional pop (which
    /// removes the first element, empty or not). Empty elements (`a,,b`) are then left
    /// out of the comparison: they are not values, and popping next to one may leave
    /// an empty line.
    fn list(&self, name: HeaderName, push: u16, pushed: Option<&[u8]>, pop: u16) {
        let mut want = list_values(self.original, name);
        if self.did(pop) && !want.is_empty() {
            want.remove(0);
        }
        if let (true, Some(value)) = (self.did(push), pushed) {
            want.insert(0, value);
        }
        want.retain(|v| !v.is_empty());
        let mut got = list_values(self.edited, name);
        got.retain(|v| !v.is_empty());
        assert_eq!(got, want, "{name:?} values after edits {:#05x}", self.done);
    }

    fn request_uri(&self) {
        let want = if self.did(SET_REQUEST_URI) {
            Some(REQUEST_URI)
        } else {
            self.original.request_uri_bytes()
        };
        assert_eq!(self.edited.request_uri_bytes(), want, "Request-URI");
        assert_eq!(
            self.edited.method_bytes(),
            self.original.method_bytes(),
            "method"
        );
        assert_eq!(self.edited.status(), self.original.status(), "status");
        assert_eq!(self.edited.reason(), self.original.reason(), "reason");
    }

    fn max_forwards(&self, arg: u8) {
        if self.did(SET_MAX_FORWARDS) {
            assert_eq!(
                self.edited.max_forwards(),
                Some(Ok(arg)),
                "Max-Forwards after set_max_forwards({arg})"
            );
        }
    }

    fn contact(&self) {
        if !self.did(SET_CONTACT_URI) {
            return;
        }
        let old = self.original.contacts().next().and_then(Result::ok);
        let new = self.edited.contacts().next().and_then(Result::ok);
        let (Some(old), Some(new)) = (
            old.as_ref().and_then(|c| c.address()),
            new.as_ref().and_then(|c| c.address()),
        ) else {
            assert!(new.is_some(), "the edited first Contact does not parse");
            return;
        };
        assert_eq!(new.uri().as_bytes(), CONTACT_URI, "Contact URI not set");
        assert_eq!(new.display_raw(), old.display_raw(), "Contact display name");
        assert_eq!(
            new.params().as_bytes(),
            old.params().as_bytes(),
            "Contact parameters"
        );
        let (old_rest, new_rest) = (
            list_values(self.original, HeaderName::Contact),
            list_values(self.edited, HeaderName::Contact),
        );
        assert_eq!(new_rest.get(1..), old_rest.get(1..), "other Contact values");
    }

    fn cseq(&self, seq: u32) {
        if !self.did(SET_CSEQ) {
            return;
        }
        // set_cseq succeeded, so the original has a CSeq starting with digits
        let old = self.original.header(HeaderName::CSeq).unwrap_or_default();
        let digits = old.iter().take_while(|c| c.is_ascii_digit()).count();
        let want = [seq.to_string().as_bytes(), &old[digits..]].concat();
        assert_eq!(
            self.edited.header(HeaderName::CSeq),
            Some(&want[..]),
            "CSeq after set_cseq({seq})"
        );
        if let Some(Ok(old)) = self.original.cseq() {
            let new = self.edited.cseq();
            assert!(
                matches!(new, Some(Ok(c)) if c.seq() == seq && c.method_bytes() == old.method_bytes()),
                "CSeq after set_cseq({seq}) reads {new:?}"
            );
        }
    }

    fn body(&self, body: &[u8], content_type: Option<&[u8]>) {
        if !self.did(SET_BODY) {
            assert_eq!(self.edited.body(), self.original.body(), "body changed");
            return;
        }
        assert_eq!(self.edited.body(), body, "body after set_body");
        assert_eq!(
            self.edited.content_length(),
            Some(body.len()),
            "Content-Length after set_body"
        );
        if let Some(ct) = content_type {
            assert_eq!(
                self.edited.header(HeaderName::ContentType),
                Some(ct),
                "Content-Type after set_body"
            );
        }
    }

    /// Header lines no edit touched: same names and values, same order.
    fn untouched(&self, content_type: bool) {
        let touched = |name: HeaderName| match name {
            HeaderName::Via => self.did(PUSH_VIA | POP_VIA),
            HeaderName::Route => self.did(POP_ROUTE),
            HeaderName::RecordRoute => self.did(PREPEND_RECORD_ROUTE),
            HeaderName::MaxForwards => self.did(SET_MAX_FORWARDS),
            HeaderName::Contact => self.did(SET_CONTACT_URI),
            HeaderName::CSeq => self.did(SET_CSEQ),
            HeaderName::ContentLength => self.did(SET_BODY),
            HeaderName::ContentType => self.did(SET_BODY) && content_type,
            _ => false,
        };
        let lines = |m: &Message| -> Vec<(Vec<u8>, Vec<u8>)> {
            m.fields()
                .iter()
                .filter(|f| !touched(f.name()))
                .map(|f| (m.field_name(f).to_vec(), m.field_value(f).to_vec()))
                .collect()
        };
        assert_eq!(
            lines(self.edited),
            lines(self.original),
            "headers no edit touched changed (edits {:#05x})",
            self.done
        );
    }
}

// ---------------------------------------------------------------------------------
// proxy_core

/// Drives the sans-IO proxy core with a sequence of messages from chosen sources at
/// chosen times.
///
/// Input: records of `[source][advance][length: u16 little-endian][bytes]`. `source`
/// picks who sends (the PBX; one of four phones over UDP or TCP; a stranger) and, with
/// its top bit, closes that phone's TCP connection first; `advance` moves the clock by
/// `advance × 50 ms` (running every deadline on the way).
///
/// Checks, after every step:
/// - the core never panics;
/// - it holds at most its configured number of transactions and aliases;
/// - every request it sends to the PBX parses and validates (it forwards only valid
///   SIP), except for the To of its ACK for a non-2xx response, which must echo the
///   response's To as it came (RFC 3261 §17.1.1.3);
/// - it sends only to the PBX, to the allowed phone networks, or back to a source that
///   just spoke to it (a stranger gets its 403): never anywhere else (no open relay).
///
/// And at the end, once every timer has run out, no transaction is left, and the
/// observer tracks no call.
pub fn proxy_core(data: &[u8]) {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use crate::config::Cidr;
    use crate::proxy::{Flow, Listener, Proxy, ProxyConfig};
    use crate::transport::Transport;

    const MAX: usize = 16;
    let addr = |s: &str| {
        s.parse::<SocketAddr>()
            .unwrap_or_else(|_| unreachable_addr())
    };
    let local = addr("10.0.0.1:5060");
    let pbx = addr("10.0.0.100:5070");
    let stranger = addr("203.0.113.9:5060");
    let phones: Cidr = match "10.1.0.0/16".parse() {
        Ok(c) => c,
        Err(_) => return,
    };
    let mut proxy = Proxy::new(ProxyConfig {
        listeners: vec![
            Listener {
                transport: Transport::Udp,
                local,
                advertised: local,
            },
            Listener {
                transport: Transport::Tcp,
                local,
                advertised: local,
            },
        ],
        pbx,
        pbx_transport: Transport::Udp,
        pbx_path: false,
        allowed_networks: vec![phones],
        max_transactions: MAX,
        max_bindings: MAX,
        max_requests_per_second_per_source: 50,
        seed: 1,
        observe: crate::observe::ObserveConfig::default(),
        teams_busy_response: Some((486, "Busy Here")),
        blf: crate::blf::DocumentRenderer::default(),
    });
    let start = Instant::now();
    let mut now = start;
    let mut rest = data;
    // the To values of the responses sent to the proxy, which its ACKs must echo
    let mut response_tos: Vec<Vec<u8>> = Vec::new();
    while rest.len() >= 4 {
        let (source, advance) = (rest[0], rest[1]);
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]])).min(rest.len() - 4);
        let (bytes, tail) = rest[4..].split_at(len);
        rest = tail;
        let until = now + Duration::from_millis(u64::from(advance) * 50);
        while let Some(at) = proxy.poll_timeout().filter(|&at| at <= until) {
            now = now.max(at);
            proxy.handle_timeout(now);
            drain_checked(&mut proxy, pbx, &phones, None, &response_tos);
        }
        now = until;
        let phone = SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 1 + (source >> 2 & 3))),
            5062,
        );
        let conn = u64::from(source >> 2 & 3);
        if source & 0x80 != 0 {
            proxy.connection_closed(conn);
        }
        let flow = match source & 3 {
            0 => Flow {
                transport: Transport::Udp,
                remote: pbx,
                local,
                conn: None,
            },
            1 => Flow {
                transport: Transport::Udp,
                remote: phone,
                local,
                conn: None,
            },
            2 => Flow {
                transport: Transport::Tcp,
                remote: phone,
                local,
                conn: Some(conn),
            },
            _ => Flow {
                transport: Transport::Udp,
                remote: stranger,
                local,
                conn: None,
            },
        };
        if let Ok(msg) = Message::parse(Bytes::copy_from_slice(bytes)) {
            if let (false, Some(to)) = (msg.is_request(), msg.header(HeaderName::To)) {
                response_tos.push(to.to_vec());
            }
        }
        proxy.handle_datagram(now, flow, Bytes::copy_from_slice(bytes));
        drain_checked(&mut proxy, pbx, &phones, Some(flow.remote), &response_tos);
        assert!(
            proxy.transaction_count() <= MAX,
            "{} transactions, limit {MAX}",
            proxy.transaction_count()
        );
        assert!(
            proxy.alias_count() <= MAX,
            "{} aliases, limit {MAX}",
            proxy.alias_count()
        );
    }
    // let every timer run out: nothing may stay behind
    let end = now + Duration::from_secs(24 * 3600);
    while let Some(at) = proxy.poll_timeout().filter(|&at| at <= end) {
        proxy.handle_timeout(at);
        drain_checked(&mut proxy, pbx, &phones, None, &response_tos);
    }
    assert_eq!(
        proxy.transaction_count(),
        0,
        "transactions outlived every timer"
    );
    assert_eq!(proxy.alias_count(), 0, "aliases outlived their lifetime");
    assert_eq!(
        proxy.observer().call_count(),
        0,
        "observed calls outlived every timer"
    );
}

fn unreachable_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], 0))
}

// panicking on a broken invariant is this module's job
#[allow(clippy::panic)]
fn drain_checked(
    proxy: &mut crate::proxy::Proxy,
    pbx: std::net::SocketAddr,
    phones: &crate::config::Cidr,
    sender: Option<std::net::SocketAddr>,
    response_tos: &[Vec<u8>],
) {
    while let Some(out) = proxy.poll_transmit() {
        let to = out.flow.remote;
        assert!(
            to == pbx || phones.contains(to.ip()) || Some(to) == sender,
            "sent to {to}: neither the PBX, a phone network, nor the sender"
        );
        // a request forwarded to the PBX must be valid SIP (a response may echo the
        // malformed headers of the request it answers, as RFC 3261 §8.2.6 requires)
        let forwarded_request = to == pbx && !out.bytes.starts_with(b"SIP/");
        if forwarded_request {
            let msg = Message::parse(out.bytes.clone()).unwrap_or_else(|e| {
                panic!("forwarded an unparseable request ({e}): {:?}", out.bytes)
            });
            if let Err(e) = msg.validate() {
                assert!(
                    echoes_response_to(&msg, &e, response_tos),
                    "forwarded an invalid request ({e}): {:?}",
                    out.bytes
                );
            }
        }
    }
}

/// Whether `msg` is an ACK whose only defect is a To copied byte for byte from a
/// response sent to the proxy: the ACK for a non-2xx response must carry the
/// response's To (RFC 3261 §17.1.1.3), and the proxy takes responses without parsing
/// their To (`Message::validate_response`) from whoever sends them (a response finds
/// its transaction by branch, RFC 3261 §17.1.3), so a malformed To in the 486 comes
/// back in the ACK as it was. Everything else in the ACK must still validate.
fn echoes_response_to(msg: &Message, e: &ParseError, response_tos: &[Vec<u8>]) -> bool {
    let Some(field) = msg.fields().iter().find(|f| f.name() == HeaderName::To) else {
        return false;
    };
    if msg.method() != Some(Method::Ack)
        || e.header != Some(HeaderName::To)
        || !response_tos
            .iter()
            .any(|to| to[..] == *msg.field_value(field))
    {
        return false;
    }
    let buf = msg.as_bytes();
    let span = field.value_span();
    let with_valid_to = [
        &buf[..span.start()],
        b"<sip:to@example.invalid>;tag=t",
        &buf[span.end()..],
    ]
    .concat();
    Message::parse(Bytes::from(with_valid_to)).is_ok_and(|m| m.validate().is_ok())
}

// ---------------------------------------------------------------------------------
// observe

/// Most calls and bindings the `observe` target's observer tracks: small, so fuzz
/// inputs reach the limits.
const OBSERVE_LIMIT: usize = 16;
/// The `observe` target's stale-call timeout: twelve clock units.
const OBSERVE_STALE_CALL: std::time::Duration = std::time::Duration::from_secs(120);
/// One unit of the `observe` target's clock advance.
const OBSERVE_TICK: std::time::Duration = std::time::Duration::from_secs(10);
/// How far the clock runs at the end of an `observe` input: beyond every deadline a
/// call can have.
const OBSERVE_END: std::time::Duration = std::time::Duration::from_secs(400 * 24 * 3600);

/// The four phones of the `observe` target: the addresses `sip-traces/observe/` gives
/// desk-201 (UDP), soft-201 (TCP), desk-202 and desk-203 (UDP), so that the seeds made
/// from those traces keep their Contacts.
fn observe_phones() -> [crate::observe::PhoneAddr; 4] {
    use std::net::{Ipv4Addr, SocketAddr};

    use crate::observe::PhoneAddr;
    use crate::transport::Transport;

    let phone = |transport, last: u8, port| PhoneAddr {
        transport,
        remote: SocketAddr::from((Ipv4Addr::new(10, 0, 0, last), port)),
    };
    [
        phone(Transport::Udp, 11, 5060),
        phone(Transport::Tcp, 21, 40311),
        phone(Transport::Udp, 12, 5060),
        phone(Transport::Udp, 13, 5060),
    ]
}

/// Feeds the observer (`crate::observe::Observer`) a sequence of messages between
/// four phones and the PBX, at chosen times, as the proxy core would.
///
/// Input: records of `[control][advance][length: u16 little-endian][bytes]`. Bit 0 of
/// `control` gives the direction (0: from the phone, 1: to the phone), bits 1 and 2 the
/// phone (UDP 10.0.0.11:5060, TCP 10.0.0.21:40311, UDP 10.0.0.12:5060, UDP
/// 10.0.0.13:5060); the other bits are ignored. `advance` moves the clock by
/// `advance × 10 s` first, running `handle_timeout` at every deadline
/// `poll_timeout` names on the way. Bytes that do not parse, or do not validate
/// (`validate` for a request, `validate_response` for a response), are not handed to
/// the observer: the proxy core never does. A record with no bytes only moves the
/// clock. The observer tracks at most 16 calls and 16 bindings, and ends a call after
/// 120 s without a message.
///
/// Every message's body (the whole record when it does not parse) also goes through
/// `feature_dnd` (both elements) and `pidf_dnd`, which must not panic.
///
/// Checks, after every message and every timeout:
/// - the observer never panics;
/// - it tracks at most 16 calls and 16 bindings;
/// - every call is listed under its extension, and none of them is terminated;
/// - each extension's `external_phase` is what its calls say: connected iff one of its
///   external calls is confirmed, ringing iff one is early and none confirmed, none
///   otherwise;
/// - the events so far, replayed per extension, are edges: each `ExternalCallStarted`
///   changes the phase (never twice the same phase in a row), each
///   `ExternalCallEnded` follows a phase (never two in a row, never first), each
///   `DndChanged` changes DND; and the state they add up to is the extension's current
///   `external_phase` and `dnd` (idle and off for an extension no longer listed).
///
/// And at the end, once the clock has run 400 days on (beyond any deadline a call can
/// have), no call is left.
pub fn observe(data: &[u8]) {
    use std::time::Instant;

    use crate::observe::dnd::{feature_dnd, pidf_dnd};
    use crate::observe::{Direction, ObserveConfig, Observer};

    let mut observer = Observer::new(ObserveConfig {
        stale_call_timeout: OBSERVE_STALE_CALL,
        max_calls: OBSERVE_LIMIT,
        max_bindings: OBSERVE_LIMIT,
        ..ObserveConfig::default()
    });
    let phones = observe_phones();
    let mut seen = SeenEvents::default();
    let mut now = Instant::now();
    let mut rest = data;
    while rest.len() >= 4 {
        let (control, advance) = (rest[0], rest[1]);
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]])).min(rest.len() - 4);
        let (bytes, tail) = rest[4..].split_at(len);
        rest = tail;
        let until = now + OBSERVE_TICK * u32::from(advance);
        while let Some(at) = observer.poll_timeout().filter(|&at| at <= until) {
            now = now.max(at);
            observer.handle_timeout(now);
            check_observer(&mut observer, &mut seen);
        }
        now = until;
        let direction = if control & 1 == 0 {
            Direction::FromPhone
        } else {
            Direction::ToPhone
        };
        let phone = phones[usize::from(control >> 1 & 3)];
        let msg = Message::parse(Bytes::copy_from_slice(bytes)).ok();
        let body = msg.as_ref().map_or(bytes, Message::body);
        let _ = (
            feature_dnd(body, "SetDoNotDisturb"),
            feature_dnd(body, "DoNotDisturbEvent"),
            pidf_dnd(body),
        );
        let valid = msg.filter(|m| {
            if m.is_request() {
                m.validate().is_ok()
            } else {
                m.validate_response().is_ok()
            }
        });
        if let Some(msg) = valid {
            observer.on_message(now, direction, phone, &msg);
            check_observer(&mut observer, &mut seen);
        }
    }
    // run the clock far beyond every deadline: no call may stay behind
    let end = now + OBSERVE_END;
    while let Some(at) = observer.poll_timeout().filter(|&at| at <= end) {
        now = now.max(at);
        observer.handle_timeout(now);
        check_observer(&mut observer, &mut seen);
    }
    assert_eq!(
        observer.call_count(),
        0,
        "calls outlived every deadline: {:#?}",
        observer.extensions()
    );
}

/// The state the observer's events add up to, per extension: its phase over external
/// calls and its DND (see [`observe`]).
#[derive(Debug, Default)]
struct SeenEvents {
    exts: std::collections::HashMap<
        crate::observe::Extension,
        (Option<crate::observe::CallPhase>, bool),
    >,
    /// Every event so far, for the failure messages.
    log: Vec<String>,
}

impl SeenEvents {
    /// Takes every pending event, checking that each is an edge.
    fn drain(&mut self, observer: &mut crate::observe::Observer) {
        use crate::observe::ObserveEvent;

        while let Some(event) = observer.poll_event() {
            self.log.push(event.to_string());
            let (phase, dnd) = self.exts.entry(event.extension().clone()).or_default();
            match event {
                ObserveEvent::ExternalCallStarted { phase: new, .. } => {
                    assert_ne!(
                        *phase,
                        Some(new),
                        "`{event}` repeats the phase; events: {:#?}",
                        self.log
                    );
                    *phase = Some(new);
                }
                ObserveEvent::ExternalCallEnded { .. } => {
                    assert!(
                        phase.is_some(),
                        "`{event}` without an external call; events: {:#?}",
                        self.log
                    );
                    *phase = None;
                }
                ObserveEvent::DndChanged { on, .. } => {
                    assert_ne!(
                        *dnd, on,
                        "`{event}` repeats the DND state; events: {:#?}",
                        self.log
                    );
                    *dnd = on;
                }
            }
        }
    }
}

/// The observer's invariants after one step (see [`observe`]).
fn check_observer(observer: &mut crate::observe::Observer, seen: &mut SeenEvents) {
    use crate::observe::{CallPhase, CallState};

    seen.drain(observer);
    assert!(
        observer.call_count() <= OBSERVE_LIMIT,
        "{} calls tracked, limit {OBSERVE_LIMIT}",
        observer.call_count()
    );
    assert!(
        observer.binding_count() <= OBSERVE_LIMIT,
        "{} bindings tracked, limit {OBSERVE_LIMIT}",
        observer.binding_count()
    );
    let views = observer.extensions();
    let listed: usize = views.iter().map(|v| v.calls.len()).sum();
    assert_eq!(
        listed,
        observer.call_count(),
        "calls missing from their extension's view: {views:#?}"
    );
    for view in &views {
        let external = || view.calls.iter().filter(|c| c.class.is_external());
        let phase = if external().any(|c| c.state == CallState::Confirmed) {
            Some(CallPhase::Connected)
        } else if external().any(|c| c.state == CallState::Early) {
            Some(CallPhase::Ringing)
        } else {
            None
        };
        assert!(
            view.calls.iter().all(|c| c.state != CallState::Terminated),
            "a terminated call is still tracked: {view:#?}"
        );
        assert_eq!(
            view.external_phase, phase,
            "external_phase of {} is not what its calls say: {view:#?}",
            view.extension
        );
        let (seen_phase, seen_dnd) = seen.exts.get(&view.extension).copied().unwrap_or_default();
        assert_eq!(
            (view.external_phase, view.dnd),
            (seen_phase, seen_dnd),
            "the events of {} say phase {seen_phase:?} and DND {seen_dnd}: {view:#?}\nevents: {:#?}",
            view.extension,
            seen.log
        );
    }
    for (ext, state) in &seen.exts {
        if views.iter().all(|v| v.extension != *ext) {
            assert_eq!(
                *state,
                (None, false),
                "{ext} is no longer listed, but its events say {state:?}; events: {:#?}",
                seen.log
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// blf_dialog_info

/// The extension the BLF checks render for.
const BLF_EXTENSION: crate::blf::WatchedExtension<'static> = crate::blf::WatchedExtension {
    number: "201",
    uri: "sip:201@pbx.example.com",
};

/// Parses `data` as a dialog-info body and as a PIDF body (the whole input is the body).
///
/// - Neither parser panics; a dialog-info error's message stays short; the version
///   `peek_dialog_info_version` reads is the parsed one.
/// - [`crate::blf::DialogInfoState::apply_body`] accepts exactly what the parser
///   accepts, applies a first full document as the whole view and a first partial one
///   as needing full state (each of its dialogs in the view), and calls the same
///   versioned document again a duplicate.
/// - Every parsed dialog-info document, composed for every phone profile with and
///   without Teams-busy and with and without pickup ids, renders to bytes that parse
///   with no quirk into exactly the composed model (with the rendered version and full
///   state, strings as XML can carry them); and the composed model keeps each profile's
///   rules: unique non-empty ids, one dialog at most for single-dialog phones, never an
///   empty document where idle must be explicit, a local identity everywhere for
///   Polycom, the `teams-<ext>` dialog exactly when Teams-busy and the PBX shows no call.
/// - Every parsed PIDF document renders to bytes that parse into the same document.
#[allow(clippy::panic)] // a broken invariant is the finding
pub fn blf_dialog_info(data: &[u8]) {
    use crate::blf::{
        DialogInfoState, DocumentState, MergeOutcome, PhoneFamily, PhoneProfile, TeamsInjection,
        compose_for_phone, parse_dialog_info_noting_quirks, parse_pidf, render_dialog_info,
        render_pidf,
    };

    if let Ok(doc) = parse_pidf(data) {
        let rendered = render_pidf(&doc);
        let back = parse_pidf(&rendered)
            .unwrap_or_else(|e| panic!("rendered PIDF does not parse: {e}\n{doc:#?}"));
        assert_eq!(
            back,
            pidf_as_rendered(doc),
            "PIDF render → parse changed the document"
        );
    }

    let parsed = parse_dialog_info_noting_quirks(data);
    let mut state = DialogInfoState::new();
    let applied = state.apply_body(data);
    let (doc, _) = match parsed {
        Err(e) => {
            assert_eq!(
                applied,
                Err(e.clone()),
                "apply_body and the parser disagree"
            );
            // at most two excerpts of 64 bytes, each char at most 10 once Debug-escaped
            assert!(e.to_string().len() < 1500, "error message too long: {e}");
            return;
        }
        Ok(parsed) => parsed,
    };
    assert_eq!(
        crate::blf::peek_dialog_info_version(data),
        doc.version,
        "the peeked version is not the parsed one"
    );
    let expected = match doc.state {
        DocumentState::Full => MergeOutcome::Applied,
        DocumentState::Partial => MergeOutcome::NeedFullState,
    };
    assert_eq!(applied, Ok(expected), "first document: {doc:#?}");
    let view = state
        .view()
        .unwrap_or_else(|| panic!("no view after a document"));
    assert_eq!(view.state, DocumentState::Full);
    if doc.state == DocumentState::Full {
        assert_eq!(
            view.dialogs, doc.dialogs,
            "a first full document is the whole view"
        );
    } else {
        // a partial document may update its own earlier rows (one dialog listed twice)
        assert!(view.dialogs.len() <= doc.dialogs.len(), "rows made up");
        assert!(
            doc.dialogs
                .iter()
                .all(|d| view.dialogs.iter().any(|v| v.id == d.id)),
            "a dialog of the first document is missing from the view"
        );
    }
    if doc.version.is_some() {
        assert_eq!(
            state.apply(doc.clone()),
            MergeOutcome::Duplicate,
            "the same version twice"
        );
    }

    for family in PhoneFamily::ALL {
        let profile = PhoneProfile::for_family(family);
        for teams_busy in [false, true] {
            for with_dialog_ids in [false, true] {
                let injection = TeamsInjection { with_dialog_ids };
                let composed =
                    compose_for_phone(Some(&doc), teams_busy, &BLF_EXTENSION, &profile, &injection);
                check_composed(&doc, &composed, teams_busy, &profile);
                let rendered = render_dialog_info(&composed, 7);
                let (back, quirks) = parse_dialog_info_noting_quirks(&rendered)
                    .unwrap_or_else(|e| panic!("rendered dialog-info does not parse: {e}"));
                assert!(
                    quirks.is_empty(),
                    "rendered output needed quirks {:?}",
                    quirks.iter().collect::<Vec<_>>()
                );
                assert_eq!(
                    back,
                    dialog_info_as_rendered(composed, 7),
                    "render → parse changed the document ({family})"
                );
            }
        }
    }
}

/// The profile rules a composed document must keep (see [`blf_dialog_info`]).
fn check_composed(
    pbx: &crate::blf::DialogInfo,
    composed: &crate::blf::DialogInfo,
    teams_busy: bool,
    profile: &crate::blf::PhoneProfile,
) {
    use crate::blf::{DialogState, DocumentState, teams_dialog_id};

    assert_eq!(composed.state, DocumentState::Full);
    assert!(composed.entity.is_some(), "no entity");
    let ids: Vec<&str> = composed.dialogs.iter().map(|d| d.id.as_str()).collect();
    for (i, id) in ids.iter().enumerate() {
        assert!(!id.is_empty(), "an empty dialog id");
        assert!(!ids[..i].contains(id), "dialog id {id:?} repeated");
    }
    if profile.single_dialog {
        assert!(
            composed.dialogs.len() <= 1,
            "several dialogs for a single-dialog phone"
        );
    }
    if profile.idle_as_terminated_dialog {
        assert!(
            !composed.dialogs.is_empty(),
            "an empty document for an explicit-idle phone"
        );
    }
    if profile.always_local_identity {
        assert!(
            composed
                .dialogs
                .iter()
                .all(|d| d.local.as_ref().is_some_and(|l| !l.identities.is_empty())),
            "a dialog without local identity for Polycom"
        );
    }
    let teams_id = teams_dialog_id(BLF_EXTENSION.number);
    let injected = composed
        .dialogs
        .iter()
        .find(|d| d.id == teams_id && d.state == DialogState::Confirmed);
    let pbx_has_teams_id = pbx.dialogs.iter().any(|d| d.id == teams_id);
    if teams_busy && !pbx.shows_call() {
        assert!(
            injected.is_some(),
            "Teams-busy and idle, but no teams dialog"
        );
    } else if !pbx_has_teams_id {
        assert!(
            injected.is_none(),
            "a teams dialog without Teams-busy and idle"
        );
    }
    assert_eq!(
        composed.shows_call(),
        pbx.shows_call() || teams_busy,
        "the composed document does not show what the PBX and Teams say"
    );
}

/// `doc` as the dialog-info writer renders it with `version` and a parser reads it back:
/// full state, the version, every string as XML 1.0 can carry it, identities trimmed.
fn dialog_info_as_rendered(
    mut doc: crate::blf::DialogInfo,
    version: u32,
) -> crate::blf::DialogInfo {
    use crate::blf::DocumentState;
    let safe = |s: &mut String| *s = crate::blf::xml::xml_safe(s).into_owned();
    let safe_opt = |s: &mut Option<String>| {
        if let Some(s) = s {
            *s = crate::blf::xml::xml_safe(s).into_owned();
        }
    };
    doc.version = Some(version);
    doc.state = DocumentState::Full;
    safe_opt(&mut doc.entity);
    for dialog in &mut doc.dialogs {
        safe(&mut dialog.id);
        safe_opt(&mut dialog.call_id);
        safe_opt(&mut dialog.local_tag);
        safe_opt(&mut dialog.remote_tag);
        safe_opt(&mut dialog.state_event);
        for participant in [&mut dialog.local, &mut dialog.remote]
            .into_iter()
            .flatten()
        {
            for identity in &mut participant.identities {
                identity.uri = crate::blf::xml::xml_safe(&identity.uri).trim().to_owned();
                safe_opt(&mut identity.display);
            }
            if let Some(target) = &mut participant.target {
                safe(&mut target.uri);
                for param in &mut target.params {
                    safe(&mut param.name);
                    safe(&mut param.value);
                }
            }
        }
    }
    doc
}

/// `doc` as the PIDF writer renders it and a parser reads it back: strings as XML 1.0
/// can carry them, notes and `<other>` texts trimmed.
fn pidf_as_rendered(mut doc: crate::blf::PresenceDocument) -> crate::blf::PresenceDocument {
    use crate::blf::pidf::Activity;
    let safe = |s: &str| crate::blf::xml::xml_safe(s).into_owned();
    doc.entity = doc.entity.as_deref().map(safe);
    for tuple in &mut doc.tuples {
        tuple.id = safe(&tuple.id);
    }
    for note in &mut doc.notes {
        *note = safe(note).trim().to_owned();
    }
    for activity in &mut doc.activities {
        if let Activity::Other(text) = activity {
            *text = safe(text).trim().to_owned();
        }
    }
    doc
}
