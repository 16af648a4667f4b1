//! The message view: one `Bytes` buffer, its start line, a header index built in one
//! pass, and the body located by Content-Length.
//!
//! Indexing records byte ranges only: header names are recognised (any case, compact
//! forms) but nothing is copied and no value is parsed. Typed accessors parse a value
//! when asked. Forwarding a message that was not edited sends the very same bytes.

use std::cell::OnceCell;
use std::ops::Range;

use bytes::Bytes;

use super::error::{ParseError, ParseErrorKind};
use super::grammar::{all_of, is_lws_char, is_token_char};
use super::header::via::ViaParts;
use super::header::{
    CSeq, ContactValue, ContentType, Event, ListIter, NameAddr, SubscriptionState, Via,
    parse_contact, parse_token_list_item,
};
use super::header_name::HeaderName;
use super::uri::{Uri, UriParts};

/// Default largest message accepted, in bytes (64 KiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Default largest number of header lines accepted.
pub const DEFAULT_MAX_HEADERS: usize = 256;

/// Size limits enforced while indexing, before any memory grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole message (start line, headers and body), in bytes.
    pub max_message_size: usize,
    /// Largest number of header lines (a folded header counts once).
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_headers: DEFAULT_MAX_HEADERS,
        }
    }
}

/// A byte range in the message buffer (u32: messages are far smaller than 4 GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Self {
        // Messages are bounded by `Limits::max_message_size`, far below u32::MAX.
        Self {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The range in the buffer.
    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// First byte offset.
    pub fn start(self) -> usize {
        self.start as usize
    }

    /// One past the last byte offset.
    pub fn end(self) -> usize {
        self.end as usize
    }

    /// Whether the span is empty.
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// SIP request methods. Methods are case-sensitive (RFC 3261 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// INFO
    Info,
    /// INVITE
    Invite,
    /// MESSAGE
    Message,
    /// NOTIFY
    Notify,
    /// OPTIONS
    Options,
    /// PRACK
    Prack,
    /// PUBLISH
    Publish,
    /// REFER
    Refer,
    /// REGISTER
    Register,
    /// SUBSCRIBE
    Subscribe,
    /// UPDATE
    Update,
    /// Any other (extension) method; its bytes are in the message.
    Other,
}

impl Method {
    /// Recognises a method token (exact, case-sensitive match).
    pub fn from_bytes(token: &[u8]) -> Self {
        match token {
            b"ACK" => Self::Ack,
            b"BYE" => Self::Bye,
            b"CANCEL" => Self::Cancel,
            b"INFO" => Self::Info,
            b"INVITE" => Self::Invite,
            b"MESSAGE" => Self::Message,
            b"NOTIFY" => Self::Notify,
            b"OPTIONS" => Self::Options,
            b"PRACK" => Self::Prack,
            b"PUBLISH" => Self::Publish,
            b"REFER" => Self::Refer,
            b"REGISTER" => Self::Register,
            b"SUBSCRIBE" => Self::Subscribe,
            b"UPDATE" => Self::Update,
            _ => Self::Other,
        }
    }

    /// The method's name, `None` for extension methods.
    pub fn as_str(self) -> Option<&'static str> {
        Some(match self {
            Self::Ack => "ACK",
            Self::Bye => "BYE",
            Self::Cancel => "CANCEL",
            Self::Info => "INFO",
            Self::Invite => "INVITE",
            Self::Message => "MESSAGE",
            Self::Notify => "NOTIFY",
            Self::Options => "OPTIONS",
            Self::Prack => "PRACK",
            Self::Publish => "PUBLISH",
            Self::Refer => "REFER",
            Self::Register => "REGISTER",
            Self::Subscribe => "SUBSCRIBE",
            Self::Update => "UPDATE",
            Self::Other => return None,
        })
    }
}

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine {
    /// `Method SP Request-URI SP SIP-Version`
    Request {
        /// The recognised method.
        method: Method,
        /// Where the method token is.
        method_span: Span,
        /// Where the Request-URI is.
        uri: Span,
        /// Where the SIP-Version is (`SIP/2.0`; another version fails `validate`).
        version: Span,
    },
    /// `SIP-Version SP Status-Code SP Reason-Phrase`
    Response {
        /// The status code, 100 to 699.
        code: u16,
        /// Where the reason phrase is (may be empty).
        reason: Span,
    },
}

/// One header line in the index (a folded header is one field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderField {
    name: HeaderName,
    name_span: Span,
    value: Span,
    line: Span,
    folded: bool,
}

impl HeaderField {
    /// The recognised name (compact forms mapped).
    pub fn name(&self) -> HeaderName {
        self.name
    }
    /// Where the name is, as written on the wire.
    pub fn name_span(&self) -> Span {
        self.name_span
    }
    /// Where the value is, without surrounding white space; folds stay inside.
    pub fn value_span(&self) -> Span {
        self.value
    }
    /// The whole line(s), from the name to past the final line end.
    pub fn line_span(&self) -> Span {
        self.line
    }
    /// Whether the value continues on folded lines.
    pub fn is_folded(&self) -> bool {
        self.folded
    }
}

/// A parsed SIP message over one shared buffer.
///
/// Headers are parsed on demand; the few a proxy reads several times per message (the
/// top Via, the From and To tags) are parsed once and remembered as positions.
#[derive(Debug, Clone)]
pub struct Message {
    buf: Bytes,
    start: StartLine,
    fields: Vec<HeaderField>,
    head_end: usize,
    body: Span,
    top_via: OnceCell<Option<Result<ViaParts, ParseError>>>,
    from_tag: OnceCell<Option<Span>>,
    to_tag: OnceCell<Option<Span>>,
    cseq: OnceCell<Option<CSeqParts>>,
    /// The URIs of the first two Route values (a proxy looks for itself there: one,
    /// or two with double Record-Route), kept from validation.
    leading_routes: OnceCell<LeadingRoutes>,
}

/// The URIs of up to two Route values from the top, in order, as positions.
type LeadingRoutes = [Option<UriParts>; 2];

/// A parsed CSeq without the borrow: the number, the method and where its token is.
#[derive(Debug, Clone, Copy)]
struct CSeqParts {
    seq: u32,
    method: Method,
    method_bytes: Span,
}

/// Two messages are equal when their bytes and index are; what was remembered from
/// parsing their headers does not count.
impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.buf == other.buf
            && self.start == other.start
            && self.fields == other.fields
            && self.head_end == other.head_end
            && self.body == other.body
    }
}

impl Eq for Message {}

/// The start line, index and body position of a message, before it owns its buffer.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) start: StartLine,
    pub(crate) fields: Vec<HeaderField>,
    /// Offset just past the blank line ending the header section.
    pub(crate) end: usize,
    /// The Content-Length value, when the header is present.
    pub(crate) content_length: Option<usize>,
}

/// Finds the next line: returns (end of content without CR, start of next line).
#[inline]
fn next_line(buf: &[u8], pos: usize) -> (usize, usize) {
    match memchr::memchr(b'\n', &buf[pos..]) {
        Some(i) => {
            let nl = pos + i;
            let end = if nl > pos && buf[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            (end, nl + 1)
        }
        None => (buf.len(), buf.len()),
    }
}

fn trim_end(buf: &[u8], start: usize, end: usize) -> usize {
    buf[start..end]
        .iter()
        .rposition(|&c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |last| start + last + 1)
}

/// How many bytes at the start of `bytes` are SP or HT.
fn leading_blanks(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|&c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(bytes.len())
}

fn is_sip_version(v: &[u8]) -> bool {
    v.eq_ignore_ascii_case(b"SIP/2.0")
}

/// `SIP/` DIGIT+ `.` DIGIT+ of some other version (answered with 505).
fn is_other_sip_version(v: &[u8]) -> bool {
    let Some(rest) = v
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case(b"SIP/"))
        .map(|_| &v[4..])
    else {
        return false;
    };
    let mut parts = rest.splitn(2, |&c| c == b'.');
    let major = parts.next().unwrap_or_default();
    let minor = parts.next().unwrap_or_default();
    !major.is_empty()
        && !minor.is_empty()
        && major.iter().all(u8::is_ascii_digit)
        && minor.iter().all(u8::is_ascii_digit)
}

fn parse_start_line(buf: &[u8], end: usize) -> Result<StartLine, ParseError> {
    let line = &buf[..end];
    let bad = |kind, at| Err(ParseError::new(kind, at));
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let Some(sp1) = memchr::memchr(b' ', line) else {
            return bad(ParseErrorKind::BadStartLine, end);
        };
        let version = &line[..sp1];
        if !is_sip_version(version) {
            return bad(
                if is_other_sip_version(version) {
                    ParseErrorKind::BadVersion
                } else {
                    ParseErrorKind::BadStartLine
                },
                0,
            );
        }
        let code_start = sp1 + 1;
        let code_end = memchr::memchr(b' ', &line[code_start..]).map_or(end, |i| code_start + i);
        let digits = &line[code_start..code_end];
        if digits.len() != 3 || !digits.iter().all(u8::is_ascii_digit) {
            return bad(ParseErrorKind::BadStatusCode, code_start);
        }
        let code = digits
            .iter()
            .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
        if !(100..=699).contains(&code) {
            return bad(ParseErrorKind::BadStatusCode, code_start);
        }
        if code_end == end {
            // RFC 3261 requires the SP even before an empty reason; tolerate its absence.
            return Ok(StartLine::Response {
                code,
                reason: Span::new(end, end),
            });
        }
        let reason_start = code_end + 1;
        if line[reason_start..]
            .iter()
            .any(|&c| c < 0x20 && c != b'\t' || c == 0x7f)
        {
            return bad(ParseErrorKind::BadStartLine, reason_start);
        }
        return Ok(StartLine::Response {
            code,
            reason: Span::new(reason_start, end),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version, single spaces, nothing else
    let Some(sp1) = memchr::memchr(b' ', line) else {
        return bad(ParseErrorKind::BadStartLine, end);
    };
    let method = &line[..sp1];
    if method.is_empty() {
        return bad(ParseErrorKind::BadStartLine, 0);
    }
    if let Some(i) = method.iter().position(|&c| !is_token_char(c)) {
        return bad(ParseErrorKind::BadMethod, i);
    }
    let uri_start = sp1 + 1;
    let Some(sp2) = memchr::memchr(b' ', &line[uri_start..]).map(|i| uri_start + i) else {
        return bad(ParseErrorKind::BadStartLine, end);
    };
    let version_start = sp2 + 1;
    let version = &line[version_start..];
    if sp2 == uri_start || version.contains(&b' ') || version.contains(&b'\t') {
        return bad(ParseErrorKind::BadStartLine, sp2);
    }
    // Another SIP version still frames a message: `validate` reports it, so that the
    // proxy can answer 505 (RFC 4475 §3.1.2.16). Anything else is not SIP.
    if !is_sip_version(version) && !is_other_sip_version(version) {
        return bad(ParseErrorKind::BadStartLine, version_start);
    }
    Ok(StartLine::Request {
        method: Method::from_bytes(method),
        method_span: Span::new(0, sp1),
        uri: Span::new(uri_start, sp2),
        version: Span::new(version_start, end),
    })
}

/// A Content-Length value: decimal digits that fit a `usize`. Whether the message fits
/// the size limit is checked by the framer (513) or by the datagram's own size.
fn parse_content_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: usize = 0;
    for d in value {
        n = n.checked_mul(10)?.checked_add(usize::from(d - b'0'))?;
    }
    Some(n)
}

/// Indexes the start line and header section of `buf`.
///
/// With `datagram`, the end of the buffer also ends the header section (a datagram
/// frames the message by itself); otherwise the caller has checked that the blank line
/// is there.
pub(crate) fn parse_head(buf: &[u8], limits: &Limits, datagram: bool) -> Result<Head, ParseError> {
    let (start_end, mut pos) = next_line(buf, 0);
    let start = parse_start_line(buf, start_end)?;
    let mut fields: Vec<HeaderField> = Vec::with_capacity(20);
    let mut content_length = None;
    let mut content_length_field = None;
    let end = loop {
        if pos >= buf.len() {
            if datagram {
                break buf.len();
            }
            return Err(ParseError::new(ParseErrorKind::BadHeaderLine, pos));
        }
        let (line_end, next) = next_line(buf, pos);
        if line_end == pos {
            break next;
        }
        let first = buf[pos];
        if first == b' ' || first == b'\t' {
            // continuation of the previous header's value (RFC 3261 §7.3.1)
            let Some(field) = fields.last_mut() else {
                return Err(ParseError::new(ParseErrorKind::BadHeaderLine, pos));
            };
            let content_end = trim_end(buf, pos, line_end);
            // a continuation holding only white space changes nothing but the line's end
            let has_content = buf[pos..content_end]
                .iter()
                .any(|&c| c != b' ' && c != b'\t');
            if has_content {
                if field.value.is_empty() {
                    let s = pos
                        + buf[pos..content_end]
                            .iter()
                            .position(|&c| c != b' ' && c != b'\t')
                            .unwrap_or(0);
                    field.value = Span::new(s, content_end);
                } else {
                    field.value.end = content_end as u32;
                }
            }
            field.line.end = next as u32;
            field.folded = true;
            pos = next;
            continue;
        }
        // header-name *WSP ":" value
        let line = &buf[pos..line_end];
        let name_len = line
            .iter()
            .position(|&c| !is_token_char(c))
            .unwrap_or(line.len());
        if name_len == 0 {
            return Err(ParseError::new(ParseErrorKind::BadHeaderLine, pos));
        }
        let name_end = pos + name_len;
        let colon = name_end + leading_blanks(&line[name_len..]);
        if colon >= line_end || buf[colon] != b':' {
            return Err(ParseError::new(ParseErrorKind::BadHeaderLine, colon));
        }
        let name = HeaderName::from_bytes(&line[..name_len]);
        let value_start = colon + 1 + leading_blanks(&buf[colon + 1..line_end]);
        let value_end = trim_end(buf, value_start, line_end);
        if fields.len() >= limits.max_headers {
            return Err(ParseError::new(ParseErrorKind::TooManyHeaders, pos));
        }
        // finish the Content-Length of the previous field before indexing this one
        if let Some(i) = content_length_field.take() {
            content_length = Some(content_length_of(buf, &fields[i])?);
        }
        if name == HeaderName::ContentLength {
            if content_length.is_some() {
                return Err(ParseError::in_header(
                    ParseErrorKind::DuplicateHeader,
                    pos,
                    name,
                ));
            }
            content_length_field = Some(fields.len());
        }
        fields.push(HeaderField {
            name,
            name_span: Span::new(pos, name_end),
            value: Span::new(value_start, value_end),
            line: Span::new(pos, next),
            folded: false,
        });
        pos = next;
    };
    if let Some(i) = content_length_field {
        content_length = Some(content_length_of(buf, &fields[i])?);
    }
    Ok(Head {
        start,
        fields,
        end,
        content_length,
    })
}

fn content_length_of(buf: &[u8], field: &HeaderField) -> Result<usize, ParseError> {
    let value = &buf[field.value.range()];
    let digits = if field.folded {
        // a folded Content-Length is legal, if odd: take the value without LWS
        let trimmed: &[u8] = value;
        let start = trimmed.iter().position(|&c| !is_lws_char(c)).unwrap_or(0);
        &trimmed[start..]
    } else {
        value
    };
    parse_content_length(digits).ok_or(ParseError::in_header(
        ParseErrorKind::BadContentLength,
        field.value.start(),
        HeaderName::ContentLength,
    ))
}

impl Message {
    /// Parses one UDP datagram with the default [`Limits`].
    pub fn parse(datagram: Bytes) -> Result<Self, ParseError> {
        Self::parse_datagram(datagram, &Limits::default())
    }

    /// Parses one UDP datagram.
    ///
    /// Line ends (CRLF) before the start line are skipped (RFC 3261 §7.5); bytes after
    /// the body that Content-Length announces are ignored (RFC 4475 §3.1.1.8); without
    /// Content-Length the body runs to the end of the datagram (RFC 3261 §18.3).
    pub fn parse_datagram(datagram: Bytes, limits: &Limits) -> Result<Self, ParseError> {
        if datagram.len() > limits.max_message_size {
            return Err(ParseError::new(
                ParseErrorKind::TooLarge,
                limits.max_message_size,
            ));
        }
        let skip = datagram
            .iter()
            .position(|&c| c != b'\r' && c != b'\n')
            .ok_or(ParseError::new(ParseErrorKind::Empty, 0))?;
        let shift = |mut e: ParseError| {
            e.offset += skip;
            e
        };
        let head = parse_head(&datagram[skip..], limits, true).map_err(shift)?;
        let available = datagram.len() - skip;
        let message_end = match head.content_length {
            Some(len) => {
                let end = head.end.saturating_add(len);
                if end > available {
                    return Err(shift(ParseError::in_header(
                        ParseErrorKind::BodyTruncated,
                        available,
                        HeaderName::ContentLength,
                    )));
                }
                end
            }
            None => available,
        };
        let buf = if skip == 0 && message_end == datagram.len() {
            datagram
        } else {
            datagram.slice(skip..skip + message_end)
        };
        Ok(Self::from_head(buf, head))
    }

    /// Builds a message from a framed buffer whose head was already indexed.
    pub(crate) fn from_head(buf: Bytes, head: Head) -> Self {
        let body = Span::new(head.end.min(buf.len()), buf.len());
        Self {
            buf,
            start: head.start,
            fields: head.fields,
            head_end: head.end,
            body,
            top_via: OnceCell::new(),
            from_tag: OnceCell::new(),
            to_tag: OnceCell::new(),
            cseq: OnceCell::new(),
            leading_routes: OnceCell::new(),
        }
    }

    /// The whole message as received (after framing).
    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    /// The message's bytes in a span.
    pub fn slice(&self, span: Span) -> &[u8] {
        &self.buf[span.range()]
    }

    /// The start line.
    pub fn start_line(&self) -> &StartLine {
        &self.start
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method, `None` for a response.
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The method token as on the wire (`None` for a response).
    pub fn method_bytes(&self) -> Option<&[u8]> {
        match self.start {
            StartLine::Request { method_span, .. } => Some(self.slice(method_span)),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI as on the wire (`None` for a response).
    pub fn request_uri_bytes(&self) -> Option<&[u8]> {
        match self.start {
            StartLine::Request { uri, .. } => Some(self.slice(uri)),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI, parsed (`None` for a response).
    pub fn request_uri(&self) -> Option<Result<Uri<'_>, ParseError>> {
        match self.start {
            StartLine::Request { uri, .. } => Some(
                Uri::parse(self.slice(uri))
                    .map_err(|at| ParseError::new(ParseErrorKind::BadRequestUri, uri.start() + at)),
            ),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code (`None` for a request).
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase (`None` for a request).
    pub fn reason(&self) -> Option<&[u8]> {
        match self.start {
            StartLine::Response { reason, .. } => Some(self.slice(reason)),
            StartLine::Request { .. } => None,
        }
    }

    /// Every header line in order.
    pub fn fields(&self) -> &[HeaderField] {
        &self.fields
    }

    /// Offset where the header section ends (just past the blank line).
    pub fn head_end(&self) -> usize {
        self.head_end
    }

    /// The header name as written on the wire.
    pub fn field_name(&self, field: &HeaderField) -> &[u8] {
        self.slice(field.name_span)
    }

    /// A field's raw value (folds kept as on the wire).
    pub fn field_value(&self, field: &HeaderField) -> &[u8] {
        self.slice(field.value)
    }

    /// Header lines with this name, in order.
    pub fn fields_named(&self, name: HeaderName) -> impl Iterator<Item = &HeaderField> + '_ {
        self.fields.iter().filter(move |f| f.name == name)
    }

    /// The raw value of the first header with this name.
    pub fn header(&self, name: HeaderName) -> Option<&[u8]> {
        self.fields_named(name).next().map(|f| self.slice(f.value))
    }

    /// How many header lines have this name.
    pub fn header_count(&self, name: HeaderName) -> usize {
        self.fields_named(name).count()
    }

    /// Every value of a list header, across repeated lines, split at commas outside
    /// quotes and angle brackets, in order. Each item is (field index, value span).
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = (usize, Span)> + '_ {
        self.fields
            .iter()
            .enumerate()
            .filter(move |(_, f)| f.name == name)
            .flat_map(move |(i, f)| {
                let base = f.value.start();
                ListIter::new(self.slice(f.value))
                    .map(move |r| (i, Span::new(base + r.start, base + r.end)))
            })
    }

    /// The body (may be empty).
    pub fn body(&self) -> &[u8] {
        self.slice(self.body)
    }

    /// Where the body is.
    pub fn body_span(&self) -> Span {
        self.body
    }

    /// The Content-Length header's value, when present.
    pub fn content_length(&self) -> Option<usize> {
        // validated while indexing; present iff the header is
        self.header(HeaderName::ContentLength)
            .and_then(|v| parse_content_length(trim_lws(v)))
    }

    fn typed<'a, T>(
        &'a self,
        name: HeaderName,
        span: Span,
        parse: impl FnOnce(&'a [u8]) -> Result<T, usize>,
    ) -> Result<T, ParseError> {
        parse(self.slice(span)).map_err(|at| {
            ParseError::in_header(ParseErrorKind::BadHeaderValue, span.start() + at, name)
        })
    }

    fn single<'a, T>(
        &'a self,
        name: HeaderName,
        parse: impl FnOnce(&'a [u8]) -> Result<T, usize>,
    ) -> Option<Result<T, ParseError>> {
        let field = self.fields_named(name).next()?;
        Some(self.typed(name, field.value, parse))
    }

    fn list<'a, T: 'a>(
        &'a self,
        name: HeaderName,
        parse: impl Fn(&'a [u8]) -> Result<T, usize> + Copy + 'a,
    ) -> impl Iterator<Item = Result<T, ParseError>> + 'a {
        self.values(name)
            .map(move |(_, span)| self.typed(name, span, parse))
    }

    /// Every Via value, top first.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'_>, ParseError>> + '_ {
        self.list(HeaderName::Via, Via::parse)
    }

    /// The top Via value (parsed on first use, then remembered).
    pub fn top_via(&self) -> Option<Result<Via<'_>, ParseError>> {
        let parts = self.top_via.get_or_init(|| {
            self.vias()
                .next()
                .map(|via| via.map(|via| via.parts_in(&self.buf)))
        });
        parts
            .clone()
            .map(|via| via.map(|parts| parts.view(&self.buf)))
    }

    /// The From tag, when From is present, parses and has one (remembered).
    pub fn from_tag(&self) -> Option<&[u8]> {
        self.tag_of(&self.from_tag, HeaderName::From)
    }

    /// The To tag, when To is present, parses and has one (remembered).
    pub fn to_tag(&self) -> Option<&[u8]> {
        self.tag_of(&self.to_tag, HeaderName::To)
    }

    fn tag_of(&self, cell: &OnceCell<Option<Span>>, name: HeaderName) -> Option<&[u8]> {
        let range = cell.get_or_init(|| {
            let tag = self.single(name, NameAddr::parse)?.ok()?.tag()?;
            self.range_of(tag)
        });
        range.and_then(|span| self.buf.get(span.range()))
    }

    /// The From header.
    pub fn from(&self) -> Option<Result<NameAddr<'_>, ParseError>> {
        self.single(HeaderName::From, NameAddr::parse)
    }

    /// The To header.
    pub fn to(&self) -> Option<Result<NameAddr<'_>, ParseError>> {
        self.single(HeaderName::To, NameAddr::parse)
    }

    /// The Call-ID (`word [ "@" word ]`, any non-space characters accepted).
    pub fn call_id(&self) -> Option<Result<&[u8], ParseError>> {
        self.single(HeaderName::CallId, |v: &[u8]| {
            if v.is_empty() {
                Err(0)
            } else if let Some(i) = v.iter().position(|&c| c <= b' ' || c == 0x7f) {
                Err(i)
            } else {
                Ok(v)
            }
        })
    }

    /// The CSeq header, parsed once: later calls rebuild the view from what was
    /// remembered (an absent or malformed CSeq is looked at again, to report it).
    pub fn cseq(&self) -> Option<Result<CSeq<'_>, ParseError>> {
        let parts = self.cseq.get_or_init(|| {
            let parsed = self.single(HeaderName::CSeq, CSeq::parse)?.ok()?;
            Some(CSeqParts {
                seq: parsed.seq(),
                method: parsed.method(),
                method_bytes: self.range_of(parsed.method_bytes())?,
            })
        });
        match *parts {
            Some(p) => Some(Ok(CSeq::from_parts(
                p.seq,
                p.method,
                self.buf.get(p.method_bytes.range()).unwrap_or_default(),
            ))),
            None => self.single(HeaderName::CSeq, CSeq::parse),
        }
    }

    /// Max-Forwards (0 to 255).
    pub fn max_forwards(&self) -> Option<Result<u8, ParseError>> {
        self.single(HeaderName::MaxForwards, |v| {
            all_of(v, super::grammar::decimal::<u8>)
        })
    }

    /// The Expires header, in seconds (overlarge values saturate).
    pub fn expires(&self) -> Option<Result<u32, ParseError>> {
        self.single(HeaderName::Expires, |v| {
            all_of(v, super::grammar::delta_seconds)
        })
    }

    /// Every Contact value (`*` or addresses).
    pub fn contacts(&self) -> impl Iterator<Item = Result<ContactValue<'_>, ParseError>> + '_ {
        self.list(HeaderName::Contact, parse_contact)
    }

    /// Every Route value, top first.
    pub fn routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, ParseError>> + '_ {
        self.list(HeaderName::Route, NameAddr::parse_bracketed)
    }

    /// The URIs of the first two Route values, top first, up to the first that does
    /// not parse: remembered from [`Self::validate`], else parsed on first use.
    pub fn leading_route_uris(&self) -> impl Iterator<Item = Uri<'_>> + '_ {
        let parts = self.leading_routes.get_or_init(|| {
            let mut parts = LeadingRoutes::default();
            for (slot, route) in parts.iter_mut().zip(self.routes()) {
                let Ok(route) = route else { break };
                *slot = Some(route.uri().parts_in(&self.buf));
            }
            parts
        });
        parts
            .iter()
            .map_while(|p| p.as_ref().map(|p| p.view(&self.buf)))
    }

    /// Every Record-Route value, top first.
    pub fn record_routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, ParseError>> + '_ {
        self.list(HeaderName::RecordRoute, NameAddr::parse_bracketed)
    }

    /// Every Path value (RFC 3327).
    pub fn paths(&self) -> impl Iterator<Item = Result<NameAddr<'_>, ParseError>> + '_ {
        self.list(HeaderName::Path, NameAddr::parse_bracketed)
    }

    /// Every P-Asserted-Identity value (RFC 3325).
    pub fn p_asserted_identities(
        &self,
    ) -> impl Iterator<Item = Result<NameAddr<'_>, ParseError>> + '_ {
        self.list(HeaderName::PAssertedIdentity, NameAddr::parse)
    }

    /// Every Remote-Party-ID value (draft-ietf-sip-privacy, still common).
    pub fn remote_party_ids(&self) -> impl Iterator<Item = Result<NameAddr<'_>, ParseError>> + '_ {
        self.list(HeaderName::RemotePartyId, NameAddr::parse)
    }

    /// Every Diversion value (RFC 5806), most recent first.
    pub fn diversions(&self) -> impl Iterator<Item = Result<NameAddr<'_>, ParseError>> + '_ {
        self.list(HeaderName::Diversion, NameAddr::parse)
    }

    /// Every History-Info entry (RFC 7044), in the order written.
    pub fn history_info(&self) -> impl Iterator<Item = Result<NameAddr<'_>, ParseError>> + '_ {
        self.list(HeaderName::HistoryInfo, NameAddr::parse_bracketed)
    }

    /// The Event header (RFC 6665).
    pub fn event(&self) -> Option<Result<Event<'_>, ParseError>> {
        self.single(HeaderName::Event, Event::parse)
    }

    /// The Subscription-State header (RFC 6665).
    pub fn subscription_state(&self) -> Option<Result<SubscriptionState<'_>, ParseError>> {
        self.single(HeaderName::SubscriptionState, SubscriptionState::parse)
    }

    /// The Content-Type header.
    pub fn content_type(&self) -> Option<Result<ContentType<'_>, ParseError>> {
        self.single(HeaderName::ContentType, ContentType::parse)
    }

    /// Option tags of Supported.
    pub fn supported(&self) -> impl Iterator<Item = Result<&[u8], ParseError>> + '_ {
        self.list(HeaderName::Supported, parse_token_list_item)
    }

    /// Option tags of Require.
    pub fn require(&self) -> impl Iterator<Item = Result<&[u8], ParseError>> + '_ {
        self.list(HeaderName::Require, parse_token_list_item)
    }

    /// Option tags of Proxy-Require.
    pub fn proxy_require(&self) -> impl Iterator<Item = Result<&[u8], ParseError>> + '_ {
        self.list(HeaderName::ProxyRequire, parse_token_list_item)
    }

    /// The User-Agent text (or Server, for responses), folds as on the wire.
    pub fn user_agent(&self) -> Option<&[u8]> {
        self.header(HeaderName::UserAgent)
            .or_else(|| self.header(HeaderName::Server))
    }

    /// Checks what a proxy relies on: the SIP version is 2.0; the Request-URI parses and
    /// holds no headers; every Via, From, To, Call-ID, CSeq (method equal
    /// to the request method), Max-Forwards, Contact, Route and Record-Route parse;
    /// the mandatory headers are present; single-valued headers appear once.
    ///
    /// Headers are checked in message order, so the error names the first defect.
    pub fn validate(&self) -> Result<(), ParseError> {
        if let StartLine::Request { version, .. } = self.start {
            if !is_sip_version(self.slice(version)) {
                return Err(ParseError::new(ParseErrorKind::BadVersion, version.start()));
            }
        }
        if let Some(uri) = self.request_uri() {
            if uri?.headers().is_some() {
                // RFC 3261 §19.1.1: headers are not allowed in a Request-URI
                let start = match self.start {
                    StartLine::Request { uri, .. } => uri.start(),
                    StartLine::Response { .. } => 0,
                };
                return Err(ParseError::new(ParseErrorKind::BadRequestUri, start));
            }
        }
        let mut seen = [false; 6];
        let mut seen_via = false;
        let mut leading_routes = LeadingRoutes::default();
        let mut routes_seen = 0;
        let single_index = |name: HeaderName| match name {
            HeaderName::CallId => Some(0),
            HeaderName::ContentLength => Some(1),
            HeaderName::CSeq => Some(2),
            HeaderName::From => Some(3),
            HeaderName::MaxForwards => Some(4),
            HeaderName::To => Some(5),
            _ => None,
        };
        for field in &self.fields {
            let name = field.name;
            if let Some(i) = single_index(name) {
                if seen[i] {
                    return Err(ParseError::in_header(
                        ParseErrorKind::DuplicateHeader,
                        field.name_span.start(),
                        name,
                    ));
                }
                seen[i] = true;
            }
            let span = field.value;
            let must_hold_a_value = matches!(
                name,
                HeaderName::Via | HeaderName::Contact | HeaderName::Route | HeaderName::RecordRoute
            );
            if must_hold_a_value && ListIter::new(self.slice(span)).next().is_none() {
                return Err(ParseError::in_header(
                    ParseErrorKind::BadHeaderValue,
                    span.start(),
                    name,
                ));
            }
            let checked: Result<(), ParseError> = match name {
                HeaderName::Via => {
                    let top = !seen_via;
                    seen_via = true;
                    self.check_vias(span, top)
                }
                HeaderName::Contact => ListIter::new(self.slice(span))
                    .try_for_each(|r| self.parse_sub(name, span, r, parse_contact).map(drop)),
                HeaderName::Route => ListIter::new(self.slice(span)).try_for_each(|r| {
                    let route = self.parse_sub(name, span, r, NameAddr::parse_bracketed)?;
                    if let Some(slot) = leading_routes.get_mut(routes_seen) {
                        *slot = Some(route.uri().parts_in(&self.buf));
                    }
                    routes_seen += 1;
                    Ok(())
                }),
                HeaderName::RecordRoute => ListIter::new(self.slice(span)).try_for_each(|r| {
                    self.parse_sub(name, span, r, NameAddr::parse_bracketed)
                        .map(drop)
                }),
                HeaderName::From | HeaderName::To => {
                    self.typed(name, span, NameAddr::parse).map(|addr| {
                        // remembered for the routing that follows (set once: a second
                        // From or To was refused above)
                        let cell = if name == HeaderName::From {
                            &self.from_tag
                        } else {
                            &self.to_tag
                        };
                        let _ = cell.set(addr.tag().and_then(|tag| self.range_of(tag)));
                    })
                }
                // the first CSeq (a second was refused above), parsed once for all
                HeaderName::CSeq => match self.cseq() {
                    Some(Err(e)) => Err(e),
                    _ => Ok(()),
                },
                HeaderName::MaxForwards => {
                    self.check_single(name, span, |v| all_of(v, super::grammar::decimal::<u8>))
                }
                HeaderName::CallId => match self.call_id() {
                    Some(Err(e)) => Err(e),
                    _ => Ok(()),
                },
                _ => Ok(()),
            };
            checked?;
        }
        for (i, name) in [
            (3, HeaderName::From),
            (5, HeaderName::To),
            (0, HeaderName::CallId),
            (2, HeaderName::CSeq),
        ] {
            if !seen[i] {
                return Err(self.missing(name));
            }
        }
        if self.header(HeaderName::Via).is_none() {
            return Err(self.missing(HeaderName::Via));
        }
        if let (Some(method), Some(Ok(cseq))) = (self.method_bytes(), self.cseq()) {
            if cseq.method_bytes() != method {
                let offset = self
                    .fields_named(HeaderName::CSeq)
                    .next()
                    .map_or(0, |f| f.value.start());
                return Err(ParseError::in_header(
                    ParseErrorKind::CSeqMethodMismatch,
                    offset,
                    HeaderName::CSeq,
                ));
            }
        }
        let _ = self.leading_routes.set(leading_routes);
        Ok(())
    }

    /// The checks a proxy needs before relaying a *response*: the top Via parses (it
    /// names the transaction), every Via line holds a value, CSeq parses (it names the
    /// transaction's method), Call-ID, From and To are present once. The lower Vias,
    /// display names and URIs of From/To/Contact are not parsed: a response is
    /// relayed as it came through the transaction's upstream flow, the lower Vias are
    /// the upstream elements' own (parsed when one is needed to route a response
    /// statelessly), and only requests are answered with 400 for defects (RFC 3261
    /// §16.3 asks a proxy to validate only what it uses; RFC 4475 §3.1.2 is about
    /// requests and their parsers).
    pub fn validate_response(&self) -> Result<(), ParseError> {
        let mut count = [0usize; 4];
        let mut seen_via = false;
        for field in &self.fields {
            let slot = match field.name {
                HeaderName::CallId => 0,
                HeaderName::CSeq => 1,
                HeaderName::From => 2,
                HeaderName::To => 3,
                HeaderName::Via => {
                    let span = field.value;
                    if ListIter::new(self.slice(span)).next().is_none() {
                        return Err(ParseError::in_header(
                            ParseErrorKind::BadHeaderValue,
                            span.start(),
                            HeaderName::Via,
                        ));
                    }
                    if !seen_via {
                        seen_via = true;
                        if let Some(Err(e)) = self.top_via() {
                            return Err(e);
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            count[slot] += 1;
            if count[slot] > 1 {
                return Err(ParseError::in_header(
                    ParseErrorKind::DuplicateHeader,
                    field.name_span.start(),
                    field.name,
                ));
            }
            if field.name == HeaderName::CSeq {
                if let Some(Err(e)) = self.cseq() {
                    return Err(e);
                }
            }
        }
        for (slot, name) in [
            (0, HeaderName::CallId),
            (1, HeaderName::CSeq),
            (2, HeaderName::From),
            (3, HeaderName::To),
        ] {
            if count[slot] == 0 {
                return Err(self.missing(name));
            }
        }
        if self.header(HeaderName::Via).is_none() {
            return Err(self.missing(HeaderName::Via));
        }
        Ok(())
    }

    /// Checks every Via value of one Via line; the message's top Via (first value of
    /// the first line) through [`Self::top_via`], so routing reuses that parse.
    fn check_vias(&self, span: Span, top_line: bool) -> Result<(), ParseError> {
        let mut values = ListIter::new(self.slice(span));
        if top_line {
            if let Some(Err(e)) = self.top_via() {
                return Err(e);
            }
            values.next();
        }
        values.try_for_each(|r| {
            self.parse_sub(HeaderName::Via, span, r, Via::parse)
                .map(drop)
        })
    }

    /// Where a slice of this message's buffer lies in it.
    fn range_of(&self, part: &[u8]) -> Option<Span> {
        super::range_within(&self.buf, part).map(|r| Span::new(r.start, r.end))
    }

    /// A header every message must carry is absent (reported at the end of the head).
    fn missing(&self, name: HeaderName) -> ParseError {
        ParseError::in_header(ParseErrorKind::MissingHeader, self.head_end, name)
    }

    fn check_single<'a, T>(
        &'a self,
        name: HeaderName,
        span: Span,
        parse: impl FnOnce(&'a [u8]) -> Result<T, usize>,
    ) -> Result<(), ParseError> {
        self.typed(name, span, parse).map(|_| ())
    }

    /// Parses one value (`sub`, relative to the field's value) of a list header.
    fn parse_sub<'a, T>(
        &'a self,
        name: HeaderName,
        field: Span,
        sub: Range<usize>,
        parse: impl FnOnce(&'a [u8]) -> Result<T, usize>,
    ) -> Result<T, ParseError> {
        let span = Span::new(field.start() + sub.start, field.start() + sub.end);
        self.typed(name, span, parse)
    }
}

fn trim_lws(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&c| !is_lws_char(c)).unwrap_or(v.len());
    &v[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@b.example SIP/2.0\r\n\
v: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-1;rport , SIP/2.0/TCP h2;branch=z9hG4bK-2\r\n\
f: \"A\" <sip:alice@a.example>;tag=from-1\r\n\
t: <sip:bob@b.example>;tag=to-2\r\n\
i: c\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n";

    #[test]
    fn remembered_top_via_and_tags_equal_a_fresh_parse_before_and_after_validation() {
        for validate_first in [false, true] {
            let msg = Message::parse(Bytes::from_static(INVITE)).unwrap();
            if validate_first {
                msg.validate().unwrap();
            }
            for _ in 0..2 {
                let via = msg.top_via().unwrap().unwrap();
                let fresh = msg.vias().next().unwrap().unwrap();
                assert_eq!(via, fresh);
                assert_eq!(via.branch(), Some(&b"z9hG4bK-1"[..]));
                assert_eq!(via.rport(), Some(None));
                assert_eq!(msg.from_tag(), Some(&b"from-1"[..]));
                assert_eq!(msg.to_tag(), Some(&b"to-2"[..]));
            }
            // what was remembered does not make two equal messages unequal
            assert_eq!(msg, Message::parse(Bytes::from_static(INVITE)).unwrap());
        }
    }

    #[test]
    fn a_bad_top_via_is_remembered_as_the_same_error_and_absent_tags_read_as_none() {
        let raw = b"OPTIONS sip:b SIP/2.0\r\nVia: SIP/2.0/UDP\r\nFrom: <sip:a>\r\nTo: junk <\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let msg = Message::parse(Bytes::from_static(raw)).unwrap();
        let first = msg.top_via().unwrap().unwrap_err();
        assert_eq!(msg.validate().unwrap_err(), first);
        assert_eq!(msg.top_via().unwrap().unwrap_err(), first);
        assert_eq!(msg.from_tag(), None);
        assert_eq!(msg.to_tag(), None);
    }
}
