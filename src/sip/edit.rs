//! Changing a message for forwarding, and nothing else.
//!
//! An [`Editor`] collects splices against the received bytes (insert a line, replace a
//! value, remove a list element) and writes the result in one pass. Every byte it was
//! not asked to change is copied exactly as received: header order, case, compact
//! names, folding and unknown headers included (RFC 3261 §16.6).

use std::ops::Range;

use bytes::Bytes;

use super::error::ParseError;
use super::header::{ListIter, NameAddr, parse_contact};
use super::header_name::HeaderName;
use super::message::{Message, Span, StartLine};

/// Why an edit could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// The message has no such header (or not that many values).
    #[error("no {0:?} header value to edit")]
    Missing(HeaderName),
    /// The value to edit does not parse.
    #[error("cannot edit a malformed value: {0}")]
    Malformed(#[from] ParseError),
    /// Two edits touch the same bytes.
    #[error("two edits overlap at byte {0}")]
    Overlap(usize),
    /// The edit applies to requests only.
    #[error("the message is not a request")]
    NotARequest,
}

#[derive(Debug, Clone)]
struct Splice {
    start: usize,
    end: usize,
    order: usize,
    /// What replaces `start..end`: a range of [`Editor::text`].
    with: Range<usize>,
    /// A whole line: it must start on a fresh line (see [`Editor::finish`]).
    line: bool,
}

/// Collects edits of one message and writes the edited copy.
#[derive(Debug)]
pub struct Editor<'m> {
    msg: &'m Message,
    splices: Vec<Splice>,
    /// Every splice's new bytes, one after the other (one allocation per message, not
    /// one per edit).
    text: Vec<u8>,
    /// The new body: a range of `text`.
    body: Option<Range<usize>>,
}

impl<'m> Editor<'m> {
    /// Starts editing `msg`.
    pub fn new(msg: &'m Message) -> Self {
        Self {
            msg,
            splices: Vec::with_capacity(8),
            text: Vec::with_capacity(256),
            body: None,
        }
    }

    fn add(&mut self, start: usize, end: usize, with: &[u8]) -> Result<(), EditError> {
        self.add_with(start, end, |text| text.extend_from_slice(with))
    }

    /// Replaces `start..end` with what `write` appends to the text.
    fn add_with(
        &mut self,
        start: usize,
        end: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), EditError> {
        let overlaps = self
            .splices
            .iter()
            .any(|s| conflicts((start, end), (s.start, s.end)));
        if overlaps {
            return Err(EditError::Overlap(start));
        }
        let from = self.text.len();
        write(&mut self.text);
        let order = self.splices.len();
        self.splices.push(Splice {
            start,
            end,
            order,
            with: from..self.text.len(),
            line: false,
        });
        Ok(())
    }

    /// Where new header lines go: right after the start line.
    fn top_of_headers(&self) -> usize {
        let buf = self.msg.as_bytes();
        memchr::memchr(b'\n', buf).map_or(buf.len(), |i| i + 1)
    }

    /// Inserts the header line `name: value` at `at`, a line start. When what precedes
    /// it in the output has no line end (the last line of a datagram may lack one),
    /// `finish` writes a CRLF first, once, so the new line is never glued onto the
    /// previous one.
    fn insert_line(&mut self, at: usize, name: &str, value: &[u8]) -> Result<(), EditError> {
        self.add_with(at, at, |text| {
            text.extend_from_slice(name.as_bytes());
            text.extend_from_slice(b": ");
            text.extend_from_slice(value);
            text.extend_from_slice(b"\r\n");
        })?;
        if let Some(last) = self.splices.last_mut() {
            last.line = true;
        }
        Ok(())
    }

    /// Inserts a header line at the top of the header section.
    pub fn insert_header(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let at = self.top_of_headers();
        // insertions never overlap a replacement: the start line end is not replaced
        let _ = self.insert_line(at, name, value);
        self
    }

    /// Pushes a new top Via (`value` is e.g. `SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK...`).
    pub fn push_via(&mut self, value: &[u8]) -> &mut Self {
        self.insert_header("Via", value)
    }

    /// Removes the first `count` values of a list header, across lines: a line all of
    /// whose values go is removed whole (folds included); from a line that keeps some,
    /// the removed values and their commas go.
    pub fn pop_values(&mut self, name: HeaderName, count: usize) -> Result<&mut Self, EditError> {
        let msg = self.msg;
        let mut remaining = count;
        for field in msg.fields().iter().filter(|f| f.name() == name) {
            if remaining == 0 {
                break;
            }
            // how many values the line holds, and where the first one that stays starts
            let mut count = 0;
            let mut kept_from = None;
            for item in ListIter::new(msg.field_value(field)) {
                if count == remaining {
                    kept_from = Some(item.start);
                    break;
                }
                count += 1;
            }
            match kept_from {
                None if count == 0 => continue,
                None => {
                    let line = field.line_span();
                    self.add(line.start(), line.end(), b"")?;
                    remaining -= count;
                }
                Some(kept_from) => {
                    let base = field.value_span().start();
                    self.add(base, base + kept_from, b"")?;
                    remaining = 0;
                }
            }
        }
        if remaining > 0 {
            return Err(EditError::Missing(name));
        }
        Ok(self)
    }

    fn pop_first_value(&mut self, name: HeaderName) -> Result<&mut Self, EditError> {
        self.pop_values(name, 1)
    }

    /// Removes the top Via value (responses going upstream, RFC 3261 §16.7 step 3).
    pub fn pop_via(&mut self) -> Result<&mut Self, EditError> {
        self.pop_first_value(HeaderName::Via)
    }

    /// Records where the top Via's request really came from (RFC 3581 §4, RFC 3261
    /// §18.2.1): replaces any `received`/`rport` parameter of the top Via value with
    /// `;received=IP;rport=PORT`, keeping every other parameter as written.
    pub fn set_top_via_received(
        &mut self,
        ip: std::net::IpAddr,
        port: u16,
    ) -> Result<&mut Self, EditError> {
        let msg = self.msg;
        // the message's remembered top Via: validation parsed it already
        let via = msg.top_via().ok_or(EditError::Missing(HeaderName::Via))??;
        let params = via.params().as_bytes();
        let params_start = offset_within(msg.as_bytes(), params);
        let params_end = params_start + params.len();
        let is_replaced = |name: &[u8]| {
            name.eq_ignore_ascii_case(b"received") || name.eq_ignore_ascii_case(b"rport")
        };
        if !may_name_received_or_rport(params) {
            // nothing to replace (the usual case): append after the parameters as written
            self.add_with(params_end, params_end, |text| {
                text.extend_from_slice(b";received=");
                push_ip(text, ip);
                text.extend_from_slice(b";rport=");
                push_decimal(text, u64::from(port));
            })?;
            return Ok(self);
        }
        self.add_with(params_start, params_end, |kept| {
            for p in via.params().iter() {
                if is_replaced(p.name) {
                    continue;
                }
                kept.push(b';');
                kept.extend_from_slice(p.name);
                if let Some(v) = p.value {
                    kept.push(b'=');
                    kept.extend_from_slice(v);
                }
            }
            kept.extend_from_slice(b";received=");
            push_ip(kept, ip);
            kept.extend_from_slice(b";rport=");
            push_decimal(kept, u64::from(port));
        })?;
        Ok(self)
    }

    /// Removes the top Route value (loose routing, RFC 3261 §16.4).
    pub fn pop_route(&mut self) -> Result<&mut Self, EditError> {
        self.pop_first_value(HeaderName::Route)
    }

    /// Adds a Record-Route value on top of the existing ones (`value` is `<sip:...;lr>`).
    pub fn prepend_record_route(&mut self, value: &[u8]) -> &mut Self {
        let at = self
            .msg
            .fields_named(HeaderName::RecordRoute)
            .next()
            .map_or_else(|| self.top_of_headers(), |f| f.line_span().start());
        let _ = self.insert_line(at, "Record-Route", value);
        self
    }

    /// Adds a Path value on top of the existing ones (RFC 3327).
    pub fn prepend_path(&mut self, value: &[u8]) -> &mut Self {
        let at = self
            .msg
            .fields_named(HeaderName::Path)
            .next()
            .map_or_else(|| self.top_of_headers(), |f| f.line_span().start());
        let _ = self.insert_line(at, "Path", value);
        self
    }

    /// Replaces the Request-URI.
    pub fn set_request_uri(&mut self, uri: &[u8]) -> Result<&mut Self, EditError> {
        let StartLine::Request { uri: span, .. } = *self.msg.start_line() else {
            return Err(EditError::NotARequest);
        };
        self.add(span.start(), span.end(), uri)?;
        Ok(self)
    }

    /// Sets Max-Forwards, adding the header when it is missing.
    pub fn set_max_forwards(&mut self, value: u8) -> Result<&mut Self, EditError> {
        match self.msg.fields_named(HeaderName::MaxForwards).next() {
            Some(f) => {
                let span = f.value_span();
                self.add_with(span.start(), span.end(), |text| {
                    push_decimal(text, u64::from(value));
                })?;
            }
            None => {
                let mut digits = Vec::with_capacity(3);
                push_decimal(&mut digits, u64::from(value));
                self.insert_header("Max-Forwards", &digits);
            }
        }
        Ok(self)
    }

    /// Replaces the URI of the `index`-th Contact value (counting across lines),
    /// keeping its display name and parameters. A bare URI gains angle brackets.
    pub fn set_contact_uri(&mut self, index: usize, uri: &[u8]) -> Result<&mut Self, EditError> {
        let msg = self.msg;
        let (_, span) = msg
            .values(HeaderName::Contact)
            .nth(index)
            .ok_or(EditError::Missing(HeaderName::Contact))?;
        let value = msg.slice(span);
        let contact = parse_contact(value).map_err(|at| {
            ParseError::in_header(
                super::ParseErrorKind::BadHeaderValue,
                span.start() + at,
                HeaderName::Contact,
            )
        })?;
        let addr: &NameAddr<'_> = contact
            .address()
            .ok_or(EditError::Missing(HeaderName::Contact))?;
        let old = addr.uri().as_bytes();
        let start = span.start() + offset_within(value, old);
        let end = start + old.len();
        let bracketed = addr.is_bracketed();
        self.add_with(start, end, |with| {
            if !bracketed {
                with.push(b'<');
            }
            with.extend_from_slice(uri);
            if !bracketed {
                with.push(b'>');
            }
        })?;
        Ok(self)
    }

    /// Replaces the CSeq number, keeping the method.
    pub fn set_cseq(&mut self, seq: u32) -> Result<&mut Self, EditError> {
        let field = self
            .msg
            .fields_named(HeaderName::CSeq)
            .next()
            .ok_or(EditError::Missing(HeaderName::CSeq))?;
        let span: Span = field.value_span();
        let value = self.msg.slice(span);
        let digits = value.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(EditError::Malformed(ParseError::in_header(
                super::ParseErrorKind::BadHeaderValue,
                span.start(),
                HeaderName::CSeq,
            )));
        }
        self.add_with(span.start(), span.start() + digits, |text| {
            push_decimal(text, u64::from(seq));
        })?;
        Ok(self)
    }

    /// Replaces the body, with Content-Length recomputed (added when missing) and,
    /// when given, Content-Type replaced (or added).
    pub fn set_body(
        &mut self,
        body: &[u8],
        content_type: Option<&[u8]>,
    ) -> Result<&mut Self, EditError> {
        let msg = self.msg;
        let mut length = Vec::with_capacity(8);
        push_decimal(&mut length, body.len() as u64);
        let end_of_headers = msg
            .fields()
            .last()
            .map_or_else(|| self.top_of_headers(), |f| f.line_span().end());
        match msg.fields_named(HeaderName::ContentLength).next() {
            Some(f) => {
                let span = f.value_span();
                self.add(span.start(), span.end(), &length)?;
            }
            None => self.insert_line(end_of_headers, "Content-Length", &length)?,
        }
        if let Some(ct) = content_type {
            match msg.fields_named(HeaderName::ContentType).next() {
                Some(f) => {
                    let span = f.value_span();
                    self.add(span.start(), span.end(), ct)?;
                }
                None => self.insert_line(end_of_headers, "Content-Type", ct)?,
            }
        }
        let from = self.text.len();
        self.text.extend_from_slice(body);
        self.body = Some(from..self.text.len());
        Ok(self)
    }

    /// Writes the edited message.
    pub fn finish(mut self) -> Bytes {
        let msg = self.msg;
        let buf = msg.as_bytes();
        let head_end = msg.head_end();
        let has_blank_line = head_end >= 2
            && buf
                .get(..head_end)
                .is_some_and(|h| h.ends_with(b"\n\r\n") || h.ends_with(b"\n\n"));
        let body_span = msg.body_span();
        if let Some(body) = self.body.take() {
            // the new body, after the blank line the head may lack
            let with = if has_blank_line {
                body
            } else {
                let from = self.text.len();
                self.text.extend_from_slice(b"\r\n");
                self.text.extend_from_within(body);
                from..self.text.len()
            };
            self.splices.push(Splice {
                start: body_span.start(),
                end: body_span.end(),
                order: usize::MAX,
                with,
                line: false,
            });
        }
        self.splices
            .sort_by_key(|s| (s.start, s.end != s.start, s.order));
        // two passes over the same pieces: the first measures, so that the second
        // fills a buffer of exactly the right size (a `Bytes` made from a full `Vec`
        // needs no second allocation)
        let mut len = 0;
        self.emit(buf, |piece| len += piece.len());
        let mut out = Vec::with_capacity(len);
        self.emit(buf, |piece| out.extend_from_slice(piece));
        Bytes::from(out)
    }

    /// Hands the edited message to `sink`, piece by piece, in order.
    fn emit(&self, buf: &[u8], mut sink: impl FnMut(&[u8])) {
        let mut pos = 0;
        // whether what was written so far ends a line (or nothing was written)
        let mut at_line_start = true;
        let mut put = |piece: &[u8], at_line_start: &mut bool| {
            if let Some(&last) = piece.last() {
                *at_line_start = last == b'\n';
                sink(piece);
            }
        };
        for s in &self.splices {
            if s.start > pos {
                put(&buf[pos..s.start], &mut at_line_start);
            }
            if s.line && !at_line_start {
                put(b"\r\n", &mut at_line_start);
            }
            put(&self.text[s.with.clone()], &mut at_line_start);
            pos = pos.max(s.end);
        }
        put(&buf[pos.min(buf.len())..], &mut at_line_start);
    }
}

/// Whether a parameter list may hold `received` or `rport`: a look at the name after
/// each `;`, no parsing (a `;` inside a quoted value can only cause a false alarm, which
/// costs the careful path, never a missed parameter).
fn may_name_received_or_rport(params: &[u8]) -> bool {
    let starts_with = |name: &[u8], prefix: &[u8]| {
        name.get(..prefix.len())
            .is_some_and(|n| n.eq_ignore_ascii_case(prefix))
    };
    memchr::memchr_iter(b';', params).any(|at| {
        let name = params[at + 1..].trim_ascii_start();
        starts_with(name, b"rport") || starts_with(name, b"received")
    })
}

/// Whether two splices touch the same bytes. Insertions (empty ranges) at one point
/// never conflict with each other; they apply in call order.
fn conflicts((a0, a1): (usize, usize), (b0, b1): (usize, usize)) -> bool {
    match (a0 == a1, b0 == b1) {
        (true, true) => false,
        (true, false) => b0 < a0 && a0 < b1,
        (false, true) => a0 < b0 && b0 < a1,
        (false, false) => a0 < b1 && b0 < a1,
    }
}

/// Offset of `sub` inside `whole`; `sub` must be a subslice of `whole` (it always is
/// here: typed views borrow from the value they were parsed from).
fn offset_within(whole: &[u8], sub: &[u8]) -> usize {
    super::range_within(whole, sub).map_or(whole.len(), |r| r.start)
}

/// Appends `n` in decimal (what `write!` does, without the formatting machinery on the
/// per-message path).
pub(crate) fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(decimal(n, &mut [0u8; 20]));
}

/// `n` in decimal, written into the end of `digits` (no allocation, unlike
/// `to_string`).
pub(crate) fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[at..]
}

/// Appends an address as `Display` writes it: dotted quad for IPv4, RFC 5952 text for
/// IPv6 (the rare case, left to the standard library).
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, u64::from(octet));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}
