//! Building new messages: a response to a request (RFC 3261 §8.2.6) and a request
//! inside an existing dialog (RFC 3261 §12.2.1.1), e.g. a NOTIFY the proxy originates.

use bytes::{BufMut, Bytes, BytesMut};

use super::edit::decimal;
use super::header_name::HeaderName;
use super::message::Message;

/// Builds a response to a received request.
///
/// Copies every Via (in order), From, To, Call-ID and CSeq exactly as received, adds a
/// To tag when the request's To has none and the status is above 100, copies Timestamp
/// into a 100 (RFC 3261 §8.2.6.1), and ends with `Content-Length`.
#[derive(Debug)]
pub struct ResponseBuilder<'m> {
    request: &'m Message,
    code: u16,
    reason: &'m str,
    to_tag: Option<&'m str>,
    headers: Vec<(&'m str, &'m [u8])>,
    body: Option<(&'m [u8], &'m [u8])>,
}

impl<'m> ResponseBuilder<'m> {
    /// A response with this status and reason phrase.
    pub fn new(request: &'m Message, code: u16, reason: &'m str) -> Self {
        Self {
            request,
            code,
            reason,
            to_tag: None,
            headers: Vec::new(),
            body: None,
        }
    }

    /// The To tag to add when the request's To has none (ignored for 100 Trying).
    pub fn to_tag(mut self, tag: &'m str) -> Self {
        self.to_tag = Some(tag);
        self
    }

    /// An extra header (e.g. `Retry-After`, `Server`, `Warning`).
    pub fn header(mut self, name: &'m str, value: &'m [u8]) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A body with its Content-Type.
    pub fn body(mut self, content_type: &'m [u8], body: &'m [u8]) -> Self {
        self.body = Some((content_type, body));
        self
    }

    /// Writes the response.
    pub fn build(self) -> Bytes {
        let req = self.request;
        let mut out = BytesMut::with_capacity(512);
        out.put_slice(b"SIP/2.0 ");
        out.put_slice(decimal(u64::from(self.code), &mut [0u8; 20]));
        out.put_u8(b' ');
        out.put_slice(self.reason.as_bytes());
        out.put_slice(b"\r\n");
        for field in req.fields() {
            let name = field.name();
            let copy = match name {
                HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => true,
                HeaderName::Timestamp => self.code == 100,
                HeaderName::To => {
                    out.put_slice(b"To: ");
                    out.put_slice(req.field_value(field));
                    // the request's To tag is remembered from validation (parsed once)
                    if let (Some(tag), true) = (self.to_tag, self.code > 100) {
                        if req.to_tag().is_none() {
                            out.put_slice(b";tag=");
                            out.put_slice(tag.as_bytes());
                        }
                    }
                    out.put_slice(b"\r\n");
                    false
                }
                _ => false,
            };
            if copy {
                out.put_slice(header_name_text(req, field));
                out.put_slice(b": ");
                out.put_slice(req.field_value(field));
                out.put_slice(b"\r\n");
            }
        }
        for (name, value) in &self.headers {
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            out.put_slice(value);
            out.put_slice(b"\r\n");
        }
        let body: &[u8] = match self.body {
            Some((content_type, body)) => {
                out.put_slice(b"Content-Type: ");
                out.put_slice(content_type);
                out.put_slice(b"\r\n");
                body
            }
            None => b"",
        };
        out.put_slice(b"Content-Length: ");
        out.put_slice(decimal(body.len() as u64, &mut [0u8; 20]));
        out.put_slice(b"\r\n\r\n");
        out.put_slice(body);
        out.freeze()
    }
}

/// The canonical name for known headers (so a compact `v:` is answered as `Via:`),
/// the name as received for others.
fn header_name_text<'m>(msg: &'m Message, field: &super::HeaderField) -> &'m [u8] {
    match field.name() {
        HeaderName::Other => msg.field_name(field),
        known => known.as_str().as_bytes(),
    }
}

/// A request inside an established dialog, from the dialog's state
/// (RFC 3261 §12.2.1.1): remote target as Request-URI, route set as Route headers,
/// local URI/tag as From, remote URI/tag as To, Call-ID, local CSeq.
#[derive(Debug, Clone)]
pub struct DialogRequest<'a> {
    /// Method, e.g. `NOTIFY`.
    pub method: &'a str,
    /// The remote target (the peer's Contact URI).
    pub request_uri: &'a [u8],
    /// The route set, each entry a full `<uri;lr>` value, in order.
    pub route_set: &'a [&'a [u8]],
    /// The Via value of the sender, e.g. `SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK...`.
    pub via: &'a [u8],
    /// The local party's address value with its tag, e.g. `<sip:200@pbx>;tag=abc`.
    pub from: &'a [u8],
    /// The remote party's address value with its tag.
    pub to: &'a [u8],
    /// The dialog's Call-ID.
    pub call_id: &'a [u8],
    /// The local CSeq number for this request.
    pub cseq: u32,
    /// Max-Forwards (70 is the RFC 3261 recommendation).
    pub max_forwards: u8,
    /// The sender's Contact URI, if it sends one.
    pub contact: Option<&'a [u8]>,
    /// Extra headers in order, e.g. Event and Subscription-State.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Body and its Content-Type.
    pub body: Option<(&'a [u8], &'a [u8])>,
}

impl DialogRequest<'_> {
    /// Writes the request.
    pub fn build(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(512);
        let mut line = |name: &[u8], value: &[u8]| {
            out.put_slice(name);
            out.put_slice(b": ");
            out.put_slice(value);
            out.put_slice(b"\r\n");
        };
        let mut head = BytesMut::with_capacity(64);
        head.put_slice(self.method.as_bytes());
        head.put_u8(b' ');
        head.put_slice(self.request_uri);
        head.put_slice(b" SIP/2.0\r\n");
        line(b"Via", self.via);
        for route in self.route_set {
            line(b"Route", route);
        }
        line(b"Max-Forwards", self.max_forwards.to_string().as_bytes());
        line(b"From", self.from);
        line(b"To", self.to);
        line(b"Call-ID", self.call_id);
        let mut cseq = self.cseq.to_string().into_bytes();
        cseq.push(b' ');
        cseq.extend_from_slice(self.method.as_bytes());
        line(b"CSeq", &cseq);
        if let Some(contact) = self.contact {
            let mut value = Vec::with_capacity(contact.len() + 2);
            value.push(b'<');
            value.extend_from_slice(contact);
            value.push(b'>');
            line(b"Contact", &value);
        }
        for (name, value) in self.headers {
            line(name.as_bytes(), value);
        }
        let body: &[u8] = match self.body {
            Some((content_type, body)) => {
                line(b"Content-Type", content_type);
                body
            }
            None => b"",
        };
        line(b"Content-Length", body.len().to_string().as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(body);
        head.put_slice(&out);
        head.freeze()
    }
}

/// The CANCEL for a request the proxy forwarded (RFC 3261 §9.1): same Request-URI,
/// Call-ID, From, To, CSeq number and Route headers; only the request's top Via.
pub fn cancel_for(request: &Message) -> Bytes {
    hop_by_hop_request(request, b"CANCEL", None)
}

/// The ACK for a non-2xx final response to an INVITE the proxy forwarded
/// (RFC 3261 §17.1.1.3): as a CANCEL, but To is taken from the response (with its tag).
pub fn ack_for(invite: &Message, response: &Message) -> Bytes {
    hop_by_hop_request(invite, b"ACK", response.header(HeaderName::To))
}

fn hop_by_hop_request(request: &Message, method: &[u8], to: Option<&[u8]>) -> Bytes {
    let mut out = BytesMut::with_capacity(request.head_end());
    out.put_slice(method);
    out.put_u8(b' ');
    out.put_slice(request.request_uri_bytes().unwrap_or_default());
    out.put_slice(b" SIP/2.0\r\n");
    let mut line = |name: &[u8], value: &[u8]| {
        out.put_slice(name);
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    };
    if let Some((_, top)) = request.values(HeaderName::Via).next() {
        line(b"Via", request.slice(top));
    }
    for field in request.fields_named(HeaderName::Route) {
        line(b"Route", request.field_value(field));
    }
    line(b"Max-Forwards", b"70");
    if let Some(from) = request.header(HeaderName::From) {
        line(b"From", from);
    }
    if let Some(to) = to.or_else(|| request.header(HeaderName::To)) {
        line(b"To", to);
    }
    if let Some(call_id) = request.header(HeaderName::CallId) {
        line(b"Call-ID", call_id);
    }
    let seq = request.cseq().and_then(Result::ok).map_or(0, |c| c.seq());
    let mut cseq = seq.to_string().into_bytes();
    cseq.push(b' ');
    cseq.extend_from_slice(method);
    line(b"CSeq", &cseq);
    line(b"Content-Length", b"0");
    out.put_slice(b"\r\n");
    out.freeze()
}
