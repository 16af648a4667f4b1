//! The SIP wire layer: bytes in, a message view out; a message view in, bytes out.
//!
//! This module does no I/O, reads no clock and keeps no state between messages
//! (except [`framing::StreamFramer`], which holds the bytes of a stream not yet framed).
//!
//! - [`message`]: [`Message`], one `bytes::Bytes` buffer plus a header index built in
//!   one pass; typed accessors parse on demand.
//! - [`header`]: the typed header values (Via, addresses, CSeq, Event, ...).
//! - [`uri`]: SIP/SIPS/tel URIs.
//! - [`edit`]: changing a message for forwarding, byte-exact elsewhere.
//! - [`build`]: new responses and in-dialog requests.
//! - [`framing`]: TCP/TLS stream framing and CRLF keep-alives.
//! - [`error`]: the one error type, [`ParseError`].
//!
//! Why our own parser: rsip 0.4 (unmaintained since 2022) misreads compact headers,
//! rejects folded headers and LF-only lines, and ignores Content-Length framing on
//! streams; see the README.

pub mod build;
pub mod edit;
pub mod error;
pub mod framing;
pub(crate) mod grammar;
pub mod header;
pub mod header_name;
pub mod message;
pub mod params;
pub mod uri;

pub use error::{ParseError, ParseErrorKind};
pub use grammar::unquote;
pub use header_name::HeaderName;
pub use message::{HeaderField, Limits, Message, Method, Span, StartLine};
pub use params::{Param, Params};
pub use uri::{Scheme, Uri};

/// Where `part` lies inside `whole`, when it is a sub-slice of it (typed views borrow
/// from the buffer they were parsed from, so their parts always are).
pub(crate) fn range_within(whole: &[u8], part: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some(start..end)
}

/// The range `part` occupies inside `base` as `u32` offsets (messages are far below
/// 4 GiB), for views a message remembers without borrowing from itself. A part outside
/// `base` gets an empty range past any buffer.
pub(crate) fn range_u32(base: &[u8], part: &[u8]) -> std::ops::Range<u32> {
    let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    range_within(base, part).map_or(u32::MAX..u32::MAX, |r| to_u32(r.start)..to_u32(r.end))
}

/// The bytes at a range from [`range_u32`]; empty (never a panic) when it lies
/// outside `base`.
pub(crate) fn at_u32<'a>(base: &'a [u8], range: &std::ops::Range<u32>) -> &'a [u8] {
    base.get(range.start as usize..range.end as usize)
        .unwrap_or_default()
}
