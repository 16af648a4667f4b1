//! Stream framing for SIP over TCP and TLS (RFC 3261 §18.3, RFC 5626 §3.5.1).
//!
//! A [`StreamFramer`] takes bytes as they arrive, in any chunking, and hands out whole
//! messages: several in one read, or one across many reads. Content-Length is required
//! on streams. Between messages, a double CRLF is a keep-alive ping (answer it with a
//! single CRLF) and a single CRLF is a pong. Size and header-count limits are checked
//! before the buffer grows past them. After an error the stream cannot be re-synchronised:
//! the connection should be closed.

use bytes::{Buf, BytesMut};

use super::error::{ParseError, ParseErrorKind};
use super::header_name::HeaderName;
use super::message::{Head, Limits, Message, parse_head};

/// What the framer found next in the stream.
///
/// A frame lives only from the framer to its consumer, one at a time, so the size of
/// the message variant next to the two empty ones costs nothing worth a box per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole message.
    Message(Message),
    /// A CRLFCRLF keep-alive: answer with a single CRLF (RFC 5626 §3.5.1).
    Ping,
    /// A single CRLF answering our ping.
    Pong,
}

/// Incremental framer for one TCP or TLS connection.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    limits: Limits,
    /// How far the search for the end of the header section has looked.
    scanned: usize,
    /// The indexed head of the message being received, once its header section is in.
    pending: Option<(Head, usize)>,
    /// Bytes consumed from the stream so far (for error offsets).
    consumed: usize,
}

impl Default for StreamFramer {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl StreamFramer {
    /// A framer enforcing these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            buf: BytesMut::with_capacity(4096),
            limits,
            scanned: 0,
            pending: None,
            consumed: 0,
        }
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read into directly (e.g. with `AsyncReadExt::read_buf`).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet framed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn error(&self, kind: ParseErrorKind, at: usize, header: Option<HeaderName>) -> ParseError {
        ParseError {
            kind,
            offset: self.consumed + at,
            header,
        }
    }

    /// The next frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ParseError> {
        if self.pending.is_none() {
            // keep-alives between messages
            if self.buf.starts_with(b"\r\n") {
                if self.buf.starts_with(b"\r\n\r\n") {
                    self.advance(4);
                    return Ok(Some(Frame::Ping));
                }
                // CRLF CR could still become a ping; anything else after CRLF makes it a pong
                match (self.buf.get(2), self.buf.get(3)) {
                    (None, _) | (Some(b'\r'), None) => return Ok(None),
                    _ => {
                        self.advance(2);
                        return Ok(Some(Frame::Pong));
                    }
                }
            }
            if self.buf.first() == Some(&b'\n') {
                // a bare LF between messages: tolerate and skip
                self.advance(1);
                return self.next_frame();
            }
            let Some(head_len) = self.find_head_end() else {
                if self.buf.len() > self.limits.max_message_size {
                    return Err(self.error(
                        ParseErrorKind::TooLarge,
                        self.limits.max_message_size,
                        None,
                    ));
                }
                return Ok(None);
            };
            if head_len > self.limits.max_message_size {
                // the same verdict whether the head arrived in one read or trickled in
                return Err(self.error(
                    ParseErrorKind::TooLarge,
                    self.limits.max_message_size,
                    None,
                ));
            }
            let head = parse_head(&self.buf[..head_len], &self.limits, false)
                .map_err(|e| self.error(e.kind, e.offset, e.header))?;
            let Some(body_len) = head.content_length else {
                return Err(self.error(
                    ParseErrorKind::MissingHeader,
                    head_len,
                    Some(HeaderName::ContentLength),
                ));
            };
            let total = head_len.saturating_add(body_len);
            if total > self.limits.max_message_size {
                return Err(self.error(
                    ParseErrorKind::TooLarge,
                    self.limits.max_message_size,
                    None,
                ));
            }
            self.pending = Some((head, total));
        }
        let Some((_, total)) = &self.pending else {
            return Ok(None);
        };
        let total = *total;
        if self.buf.len() < total {
            return Ok(None);
        }
        let Some((head, _)) = self.pending.take() else {
            return Ok(None);
        };
        let bytes = self.buf.split_to(total).freeze();
        self.consumed += total;
        self.scanned = 0;
        Ok(Some(Frame::Message(Message::from_head(bytes, head))))
    }

    fn advance(&mut self, n: usize) {
        self.buf.advance(n);
        self.consumed += n;
        self.scanned = 0;
    }

    /// Length of the header section including its blank line, once it is all in.
    fn find_head_end(&mut self) -> Option<usize> {
        let buf = &self.buf[..];
        let mut from = self.scanned;
        while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
            let nl = from + i;
            match buf.get(nl + 1) {
                Some(b'\n') => return Some(nl + 2),
                Some(b'\r') => match buf.get(nl + 2) {
                    Some(b'\n') => return Some(nl + 3),
                    Some(_) => from = nl + 1,
                    None => {
                        self.scanned = nl;
                        return None;
                    }
                },
                Some(_) => from = nl + 1,
                None => {
                    self.scanned = nl;
                    return None;
                }
            }
        }
        self.scanned = buf.len();
        None
    }
}
