//! The one error type of the wire layer: what was wrong, at which byte, in which header.

use std::fmt;

use super::header_name::HeaderName;

/// What kind of defect a [`ParseError`] reports.
///
/// The names are stable: the RFC 4475 manifest in `sip-traces/rfc4475/` and the
/// `inspect` command print them (see [`ParseErrorKind::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The input holds nothing but whitespace or line ends.
    Empty,
    /// The request line or status line does not have the shape RFC 3261 §7.1/§7.2 requires.
    BadStartLine,
    /// A SIP version other than `SIP/2.0` (answered with 505).
    BadVersion,
    /// The request method is not a token.
    BadMethod,
    /// The Request-URI is malformed (`<>` around it, headers in it, no scheme, ...).
    BadRequestUri,
    /// The status code is not three digits from 100 to 699.
    BadStatusCode,
    /// A header line without a name, with a bad name, or without a colon.
    BadHeaderLine,
    /// A header value that does not match its grammar.
    BadHeaderValue,
    /// A header every request or response must carry is absent.
    MissingHeader,
    /// A header that may appear once appears more than once (or with several values).
    DuplicateHeader,
    /// Content-Length is not a non-negative decimal number that fits the limits.
    BadContentLength,
    /// Content-Length promises more bytes than the datagram holds.
    BodyTruncated,
    /// The CSeq method differs from the request method.
    CSeqMethodMismatch,
    /// The message is larger than the configured maximum.
    TooLarge,
    /// The message has more header lines than the configured maximum.
    TooManyHeaders,
}

impl ParseErrorKind {
    /// The stable snake_case name of the kind, as the manifest and `inspect` use it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::BadStartLine => "bad_start_line",
            Self::BadVersion => "bad_version",
            Self::BadMethod => "bad_method",
            Self::BadRequestUri => "bad_request_uri",
            Self::BadStatusCode => "bad_status_code",
            Self::BadHeaderLine => "bad_header_line",
            Self::BadHeaderValue => "bad_header_value",
            Self::MissingHeader => "missing_header",
            Self::DuplicateHeader => "duplicate_header",
            Self::BadContentLength => "bad_content_length",
            Self::BodyTruncated => "body_truncated",
            Self::CSeqMethodMismatch => "cseq_method_mismatch",
            Self::TooLarge => "too_large",
            Self::TooManyHeaders => "too_many_headers",
        }
    }
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A defect in a SIP message: its kind, the byte offset where it was found (from the
/// start of the buffer handed to the parser) and the header it was found in, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// What was wrong.
    pub kind: ParseErrorKind,
    /// Byte offset of the defect in the input.
    pub offset: usize,
    /// The header at fault, where there is one.
    pub header: Option<HeaderName>,
}

impl ParseError {
    pub(crate) fn new(kind: ParseErrorKind, offset: usize) -> Self {
        Self {
            kind,
            offset,
            header: None,
        }
    }

    pub(crate) fn in_header(kind: ParseErrorKind, offset: usize, header: HeaderName) -> Self {
        Self {
            kind,
            offset,
            header: Some(header),
        }
    }

    /// The status a proxy answers a malformed *request* with: 505 for an unsupported
    /// version, 513 for an oversized message, 400 for everything else.
    /// Malformed responses are dropped, never answered.
    pub fn response_status(&self) -> u16 {
        match self.kind {
            ParseErrorKind::BadVersion => 505,
            ParseErrorKind::TooLarge => 513,
            _ => 400,
        }
    }

    /// A short reason phrase for the answer, naming the defect (goes into the 4xx/5xx).
    pub fn reason_phrase(&self) -> &'static str {
        match self.kind {
            ParseErrorKind::BadVersion => "Version Not Supported",
            ParseErrorKind::TooLarge => "Message Too Large",
            ParseErrorKind::MissingHeader => "Bad Request - Missing Header",
            ParseErrorKind::DuplicateHeader => "Bad Request - Duplicate Header",
            ParseErrorKind::BadHeaderValue | ParseErrorKind::BadHeaderLine => {
                "Bad Request - Malformed Header"
            }
            ParseErrorKind::CSeqMethodMismatch => "Bad Request - CSeq Method Mismatch",
            ParseErrorKind::BadRequestUri => "Bad Request - Malformed Request-URI",
            ParseErrorKind::BadContentLength | ParseErrorKind::BodyTruncated => {
                "Bad Request - Bad Content-Length"
            }
            _ => "Bad Request",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.kind, self.offset)?;
        if let Some(header) = self.header {
            write!(f, " in header {}", header.as_str())?;
        }
        Ok(())
    }
}
