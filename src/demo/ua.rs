//! The SIP user-agent plumbing shared by the simulated phones and the PBX stand-in
//! (both are user agents): sans-IO, time passed in, datagrams handed out.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::sip::build::{DialogRequest, ResponseBuilder, ack_for};
use crate::sip::header::{ContactValue, NameAddr};
use crate::sip::{HeaderName, Message, Method, Uri};

/// RFC 3261 T1: the round-trip estimate.
pub(crate) const T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2: the longest retransmission interval of non-INVITE requests and
/// INVITE responses.
pub(crate) const T2: Duration = Duration::from_secs(4);
/// 64·T1: Timer B/F (a request with no answer), and how long finished
/// transactions linger to absorb retransmissions.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(32);

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Datagram {
    /// Where to.
    pub(crate) to: SocketAddr,
    /// The message.
    pub(crate) bytes: Bytes,
}

/// Tags, branches and Call-IDs: unique per seed (a keyed counter).
#[derive(Debug, Clone)]
pub(crate) struct Ids {
    seed: u64,
    counter: u64,
}

impl Ids {
    /// Identifiers derived from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self { seed, counter: 0 }
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        mix(self.seed ^ mix(self.counter))
    }

    /// A To/From tag.
    pub(crate) fn tag(&mut self) -> String {
        format!("{:x}", self.next())
    }

    /// A Via branch with the RFC 3261 magic cookie.
    pub(crate) fn branch(&mut self) -> String {
        format!("z9hG4bK{:x}", self.next())
    }

    /// A Call-ID at `host`.
    pub(crate) fn call_id(&mut self, host: IpAddr) -> String {
        format!("{:x}{:x}@{host}", self.next(), self.next())
    }
}

/// splitmix64's finaliser.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bytes as text (lossy).
pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `host:port` for a URI or Via (`[v6]:port` for IPv6).
pub(crate) fn host_port(addr: SocketAddr) -> String {
    addr.to_string()
}

/// The address a local socket advertises: an unspecified bind address reads as
/// loopback (the demo never leaves it).
pub(crate) fn advertised(local: SocketAddr) -> SocketAddr {
    if local.ip().is_unspecified() {
        let ip = if local.is_ipv4() {
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        };
        SocketAddr::new(ip, local.port())
    } else {
        local
    }
}

/// The IP literal of a URI host (brackets of an IPv6 reference removed).
fn host_ip(host: &[u8]) -> Option<IpAddr> {
    let host = host
        .strip_prefix(b"[")
        .and_then(|h| h.strip_suffix(b"]"))
        .unwrap_or(host);
    std::str::from_utf8(host).ok()?.parse().ok()
}

/// Where a SIP URI with an IP literal host points (5060, or 5061 for `sips:`, when
/// it names no port). Host names are not resolved: everything here is loopback.
pub(crate) fn uri_addr(uri: &[u8]) -> Option<SocketAddr> {
    let uri = Uri::parse(uri).ok()?;
    let ip = host_ip(uri.host())?;
    let default = if uri.scheme() == crate::sip::Scheme::Sips {
        5061
    } else {
        5060
    };
    Some(SocketAddr::new(ip, uri.port().unwrap_or(default)))
}

/// The user part of a URI, `%` escapes resolved.
pub(crate) fn uri_user(uri: &[u8]) -> Option<String> {
    let uri = Uri::parse(uri).ok()?;
    uri.user_unescaped().map(|u| text(&u))
}

/// The URI of the From header.
pub(crate) fn from_uri(msg: &Message) -> Option<String> {
    msg.from()?.ok().map(|a| text(a.uri().as_bytes()))
}

/// The From tag.
pub(crate) fn from_tag(msg: &Message) -> Option<String> {
    msg.from()?.ok()?.tag().map(text)
}

/// The URI of the To header.
pub(crate) fn to_uri(msg: &Message) -> Option<String> {
    msg.to()?.ok().map(|a| text(a.uri().as_bytes()))
}

/// The To tag.
pub(crate) fn to_tag(msg: &Message) -> Option<String> {
    msg.to()?.ok()?.tag().map(text)
}

/// The user of the From URI (a caller's extension).
pub(crate) fn from_user(msg: &Message) -> Option<String> {
    from_uri(msg).and_then(|u| uri_user(u.as_bytes()))
}

/// The Call-ID.
pub(crate) fn call_id(msg: &Message) -> Option<String> {
    msg.call_id()?.ok().map(text)
}

/// CSeq number and method.
pub(crate) fn cseq(msg: &Message) -> Option<(u32, Method)> {
    msg.cseq()?.ok().map(|c| (c.seq(), c.method()))
}

/// The first Contact URI.
pub(crate) fn contact_uri(msg: &Message) -> Option<String> {
    msg.contacts()
        .filter_map(Result::ok)
        .find_map(|c| c.address().map(|a| text(a.uri().as_bytes())))
}

/// Every Contact with its `expires` parameter.
pub(crate) fn contacts_with_expires(msg: &Message) -> Vec<(String, Option<u32>)> {
    msg.contacts()
        .filter_map(Result::ok)
        .filter_map(|c| match c {
            ContactValue::Wildcard => None,
            ContactValue::Address(a) => Some((text(a.uri().as_bytes()), a.expires())),
        })
        .collect()
}

/// Every Record-Route value as written, top first.
pub(crate) fn record_routes(msg: &Message) -> Vec<String> {
    msg.values(HeaderName::RecordRoute)
        .map(|(_, span)| text(msg.slice(span)))
        .collect()
}

/// The Expires header.
pub(crate) fn expires(msg: &Message) -> Option<u32> {
    msg.expires()?.ok()
}

/// Whether a message's Content-Type is `type/subtype`.
pub(crate) fn content_type_is(msg: &Message, media: &str, sub: &str) -> bool {
    msg.content_type()
        .and_then(Result::ok)
        .is_some_and(|c| c.is(media, sub))
}

/// Where an answer to `msg` goes by its top Via (RFC 3261 §18.2.2 with RFC 3581):
/// `received` or the host, and `rport` or the port.
pub(crate) fn via_addr(msg: &Message) -> Option<SocketAddr> {
    let via = msg.top_via()?.ok()?;
    let ip = via
        .received()
        .and_then(host_ip)
        .or_else(|| host_ip(via.host()))?;
    let port = via.rport().flatten().or(via.port()).unwrap_or(5060);
    Some(SocketAddr::new(ip, port))
}

/// A response to `req`. The To tag is added when the request had none, the
/// Record-Route is echoed in responses that make a dialog (§12.1.1), a Contact is
/// written when given.
pub(crate) fn response(
    req: &Message,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    contact: Option<&str>,
    headers: &[(&str, &[u8])],
    body: Option<(&[u8], &[u8])>,
) -> Bytes {
    let dialog_forming = matches!(
        req.method(),
        Some(Method::Invite | Method::Subscribe | Method::Notify)
    );
    let record_route: Vec<&[u8]> = if dialog_forming && (101..300).contains(&code) {
        req.fields_named(HeaderName::RecordRoute)
            .map(|f| req.field_value(f))
            .collect()
    } else {
        Vec::new()
    };
    let contact = contact.map(|c| format!("<{c}>"));
    let mut builder = ResponseBuilder::new(req, code, reason);
    if let Some(tag) = to_tag {
        builder = builder.to_tag(tag);
    }
    for value in &record_route {
        builder = builder.header("Record-Route", value);
    }
    if let Some(contact) = &contact {
        builder = builder.header("Contact", contact.as_bytes());
    }
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    if let Some((content_type, body)) = body {
        builder = builder.body(content_type, body);
    }
    builder.build()
}

/// A request outside any dialog.
#[derive(Debug, Clone)]
pub(crate) struct NewRequest<'a> {
    /// Method.
    pub(crate) method: &'a str,
    /// Request-URI.
    pub(crate) uri: &'a str,
    /// Our Via value (with its branch).
    pub(crate) via: &'a str,
    /// From (name-addr with tag).
    pub(crate) from: &'a str,
    /// To (name-addr).
    pub(crate) to: &'a str,
    /// Call-ID.
    pub(crate) call_id: &'a str,
    /// CSeq number.
    pub(crate) cseq: u32,
    /// Contact URI, if any.
    pub(crate) contact: Option<&'a str>,
    /// Extra headers.
    pub(crate) headers: &'a [(&'a str, &'a str)],
    /// Content-Type and body.
    pub(crate) body: Option<(&'a str, &'a [u8])>,
}

impl NewRequest<'_> {
    /// Writes the request.
    pub(crate) fn build(&self) -> Bytes {
        use std::fmt::Write as _;
        let mut head = String::with_capacity(512);
        let _ = write!(
            head,
            "{m} {u} SIP/2.0\r\nVia: {v}\r\nMax-Forwards: 70\r\nFrom: {f}\r\nTo: {t}\r\nCall-ID: {c}\r\nCSeq: {n} {m}\r\n",
            m = self.method,
            u = self.uri,
            v = self.via,
            f = self.from,
            t = self.to,
            c = self.call_id,
            n = self.cseq,
        );
        if let Some(contact) = self.contact {
            let _ = write!(head, "Contact: <{contact}>\r\n");
        }
        for (name, value) in self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let body: &[u8] = match self.body {
            Some((content_type, body)) => {
                let _ = write!(head, "Content-Type: {content_type}\r\n");
                body
            }
            None => b"",
        };
        let _ = write!(head, "Content-Length: {}\r\n\r\n", body.len());
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        Bytes::from(out)
    }
}

/// Our Via value for UDP from `local`.
pub(crate) fn via(local: SocketAddr, branch: &str) -> String {
    format!("SIP/2.0/UDP {};branch={branch};rport", host_port(local))
}

/// A canned SDP offer/answer (no media flows in the demo; the body makes the
/// INVITEs look like real ones).
pub(crate) fn sdp(local: SocketAddr, session: u64) -> Vec<u8> {
    let family = if local.is_ipv4() { "IP4" } else { "IP6" };
    let ip = local.ip();
    format!(
        "v=0\r\no=- {session} 1 IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n",
        port = 20_000 + (session % 10_000) * 2,
    )
    .into_bytes()
}

// ------------------------------------------------------------ dialogs

/// One dialog as one side sees it (RFC 3261 §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dialog {
    /// Call-ID.
    pub(crate) call_id: String,
    /// Our URI (From of our requests).
    pub(crate) local_uri: String,
    /// Our tag.
    pub(crate) local_tag: String,
    /// The peer's URI.
    pub(crate) remote_uri: String,
    /// The peer's tag.
    pub(crate) remote_tag: String,
    /// The peer's Contact: Request-URI of our requests.
    pub(crate) remote_target: String,
    /// Route set, values as written (`<sip:...;lr>`), in the order to send.
    pub(crate) route_set: Vec<String>,
    /// Our last CSeq number.
    pub(crate) local_cseq: u32,
    /// The peer's last CSeq number.
    pub(crate) remote_cseq: Option<u32>,
}

impl Dialog {
    /// The UAC's dialog from its request and a response with a To tag (§12.1.2):
    /// route set the response's Record-Route reversed, remote target its Contact.
    pub(crate) fn as_uac(request: &Message, response: &Message) -> Option<Self> {
        let mut route_set = record_routes(response);
        route_set.reverse();
        Some(Self {
            call_id: call_id(request)?,
            local_uri: from_uri(request)?,
            local_tag: from_tag(request)?,
            remote_uri: to_uri(response)?,
            remote_tag: to_tag(response)?,
            remote_target: contact_uri(response)
                .or_else(|| request.request_uri_bytes().map(text))?,
            route_set,
            local_cseq: cseq(request)?.0,
            remote_cseq: None,
        })
    }

    /// The UAS's dialog from a request and the tag it answers with (§12.1.1):
    /// route set the request's Record-Route in order, remote target its Contact.
    pub(crate) fn as_uas(request: &Message, local_tag: &str) -> Option<Self> {
        Some(Self {
            call_id: call_id(request)?,
            local_uri: to_uri(request)?,
            local_tag: local_tag.to_owned(),
            remote_uri: from_uri(request)?,
            remote_tag: from_tag(request)?,
            remote_target: contact_uri(request)?,
            route_set: record_routes(request),
            local_cseq: 0,
            remote_cseq: cseq(request).map(|(n, _)| n),
        })
    }

    /// Whether a request from the peer belongs to this dialog (Call-ID, their tag
    /// in From, ours in To).
    pub(crate) fn matches_request(&self, msg: &Message) -> bool {
        call_id(msg).as_deref() == Some(self.call_id.as_str())
            && from_tag(msg).as_deref() == Some(self.remote_tag.as_str())
            && to_tag(msg).as_deref() == Some(self.local_tag.as_str())
    }

    /// Takes a target refresh (a new Contact) and the peer's CSeq from a request.
    pub(crate) fn update_from_request(&mut self, msg: &Message) {
        if let Some(contact) = contact_uri(msg) {
            self.remote_target = contact;
        }
        if let Some((n, _)) = cseq(msg) {
            self.remote_cseq = Some(n);
        }
    }

    /// Whether the first route is a strict router (no `lr`, RFC 3261 §12.2.1.1).
    fn strict_first_route(&self) -> bool {
        self.route_set.first().is_some_and(|first| {
            NameAddr::parse_bracketed(first.as_bytes())
                .map(|a| !a.uri().params().contains("lr"))
                .unwrap_or(false)
        })
    }

    /// Where a request in this dialog goes first: the first route, else the
    /// remote target.
    pub(crate) fn next_hop(&self) -> Option<SocketAddr> {
        match self.route_set.first() {
            Some(first) => {
                let addr = NameAddr::parse_bracketed(first.as_bytes()).ok()?;
                uri_addr(addr.uri().as_bytes())
            }
            None => uri_addr(self.remote_target.as_bytes()),
        }
    }

    /// A request in the dialog (§12.2.1.1). `cseq` is given for an ACK (the
    /// INVITE's number); otherwise the local CSeq goes up by one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn request(
        &mut self,
        method: &str,
        cseq: Option<u32>,
        via: &str,
        contact: Option<&str>,
        headers: &[(&str, &[u8])],
        body: Option<(&[u8], &[u8])>,
    ) -> Bytes {
        let cseq = cseq.unwrap_or_else(|| {
            self.local_cseq = self.local_cseq.wrapping_add(1);
            self.local_cseq
        });
        let (request_uri, routes): (String, Vec<String>) = if self.strict_first_route() {
            let first = NameAddr::parse_bracketed(self.route_set[0].as_bytes())
                .map(|a| text(a.uri().as_bytes()))
                .unwrap_or_default();
            let mut rest: Vec<String> = self.route_set[1..].to_vec();
            rest.push(format!("<{}>", self.remote_target));
            (first, rest)
        } else {
            (self.remote_target.clone(), self.route_set.clone())
        };
        let from = format!("<{}>;tag={}", self.local_uri, self.local_tag);
        let to = format!("<{}>;tag={}", self.remote_uri, self.remote_tag);
        let route_refs: Vec<&[u8]> = routes.iter().map(String::as_bytes).collect();
        DialogRequest {
            method,
            request_uri: request_uri.as_bytes(),
            route_set: &route_refs,
            via: via.as_bytes(),
            from: from.as_bytes(),
            to: to.as_bytes(),
            call_id: self.call_id.as_bytes(),
            cseq,
            max_forwards: 70,
            contact: contact.map(str::as_bytes),
            headers,
            body,
        }
        .build()
    }
}

// ------------------------------------------------------- client transactions

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    /// Sent, nothing back yet (retransmitting at T1·2ⁿ).
    Calling,
    /// A provisional answer came (INVITE: no more retransmissions; non-INVITE:
    /// every T2).
    Proceeding,
    /// A final answer came; lingering to absorb its retransmissions.
    Completed,
}

#[derive(Debug)]
struct ClientTxn<O> {
    owner: O,
    request: Message,
    to: SocketAddr,
    invite: bool,
    state: ClientState,
    next_retransmit: Option<Instant>,
    interval: Duration,
    /// Timer B/F while waiting; the end of the linger once completed.
    deadline: Option<Instant>,
    /// The ACK to repeat when a final answer is repeated (non-2xx: ours; 2xx: the
    /// one the TU set).
    ack: Option<Datagram>,
}

/// A response matched to a client transaction.
#[derive(Debug)]
pub(crate) struct Answer<O> {
    /// Who sent the request.
    pub(crate) owner: O,
    /// The request as sent.
    pub(crate) request: Message,
    /// The Via branch of the request.
    pub(crate) branch: String,
    /// False for a repeated final answer (already handled; its ACK was repeated).
    pub(crate) fresh: bool,
}

/// A client transaction that got no final answer in time (Timer B/F).
#[derive(Debug)]
pub(crate) struct TimedOut<O> {
    /// Who sent the request.
    pub(crate) owner: O,
}

/// Client transactions by (branch, method), RFC 3261 §17.1 over UDP.
#[derive(Debug)]
pub(crate) struct ClientTxns<O> {
    txns: HashMap<(String, Method), ClientTxn<O>>,
}

impl<O> Default for ClientTxns<O> {
    fn default() -> Self {
        Self {
            txns: HashMap::new(),
        }
    }
}

fn branch_of(msg: &Message) -> Option<String> {
    msg.top_via()?.ok()?.branch().map(text)
}

impl<O: Clone> ClientTxns<O> {
    /// Sends a new request (its branch must be new) and keeps retransmitting it
    /// until answered. Returns its branch, `None` if `bytes` is no request.
    pub(crate) fn send(
        &mut self,
        now: Instant,
        owner: O,
        to: SocketAddr,
        bytes: Bytes,
        out: &mut Vec<Datagram>,
    ) -> Option<String> {
        let request = Message::parse(bytes.clone()).ok()?;
        let method = request.method()?;
        let branch = branch_of(&request)?;
        let invite = method == Method::Invite;
        out.push(Datagram { to, bytes });
        self.txns.insert(
            (branch.clone(), method),
            ClientTxn {
                owner,
                request,
                to,
                invite,
                state: ClientState::Calling,
                next_retransmit: Some(now + T1),
                interval: T1,
                deadline: Some(now + TIMEOUT),
                ack: None,
            },
        );
        Some(branch)
    }

    /// The ACK of a 2xx to the INVITE of `branch`, repeated when the 2xx is.
    pub(crate) fn set_ack(&mut self, branch: &str, ack: Datagram) {
        if let Some(txn) = self.txns.get_mut(&(branch.to_owned(), Method::Invite)) {
            txn.ack = Some(ack);
        }
    }

    /// Matches a response (§17.1.3) and runs the transaction's state machine: the
    /// ACK of a non-2xx final answer to an INVITE is sent here.
    pub(crate) fn on_response(
        &mut self,
        now: Instant,
        msg: &Message,
        out: &mut Vec<Datagram>,
    ) -> Option<Answer<O>> {
        let branch = branch_of(msg)?;
        let (_, method) = cseq(msg)?;
        let status = msg.status()?;
        let txn = self.txns.get_mut(&(branch.clone(), method))?;
        let answer = |txn: &ClientTxn<O>, fresh| Answer {
            owner: txn.owner.clone(),
            request: txn.request.clone(),
            branch: branch.clone(),
            fresh,
        };
        if status < 200 {
            if txn.state == ClientState::Completed {
                return None;
            }
            txn.state = ClientState::Proceeding;
            if txn.invite {
                txn.next_retransmit = None;
                txn.deadline = None; // the proxy's Timer C guards a long ring
            } else {
                txn.interval = T2;
            }
            return Some(answer(txn, true));
        }
        if txn.state == ClientState::Completed {
            if let Some(ack) = &txn.ack {
                out.push(ack.clone());
            }
            return Some(answer(txn, false));
        }
        txn.state = ClientState::Completed;
        txn.next_retransmit = None;
        txn.deadline = Some(now + TIMEOUT);
        if txn.invite && status >= 300 {
            let ack = Datagram {
                to: txn.to,
                bytes: ack_for(&txn.request, msg),
            };
            out.push(ack.clone());
            txn.ack = Some(ack);
        }
        Some(answer(txn, true))
    }

    /// The earliest deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.txns
            .values()
            .flat_map(|t| [t.next_retransmit, t.deadline])
            .flatten()
            .min()
    }

    /// Retransmits what is due and ends what timed out.
    pub(crate) fn handle_timeout(
        &mut self,
        now: Instant,
        out: &mut Vec<Datagram>,
    ) -> Vec<TimedOut<O>> {
        let mut timed_out = Vec::new();
        self.txns.retain(|_, txn| {
            if txn.deadline.is_some_and(|d| d <= now) {
                if txn.state != ClientState::Completed {
                    timed_out.push(TimedOut {
                        owner: txn.owner.clone(),
                    });
                }
                return false;
            }
            if let Some(at) = txn.next_retransmit.filter(|&at| at <= now) {
                out.push(Datagram {
                    to: txn.to,
                    bytes: txn.request.as_bytes().clone(),
                });
                txn.interval = if txn.invite {
                    txn.interval * 2
                } else {
                    (txn.interval * 2).min(T2)
                };
                txn.next_retransmit = Some(at.max(now) + txn.interval);
            }
            true
        });
        timed_out
    }

    /// How many transactions are open or lingering.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.txns.len()
    }
}

// ------------------------------------------------------- server transactions

/// A server transaction's key (RFC 3261 §17.2.3): branch, sent-by, and the method
/// (an ACK matches its INVITE).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ServerKey {
    branch: String,
    sent_by: String,
    method: Method,
}

impl ServerKey {
    /// The key of a request; `None` without a usable top Via.
    pub(crate) fn of(msg: &Message) -> Option<Self> {
        let via = msg.top_via()?.ok()?;
        let method = match msg.method()? {
            Method::Ack => Method::Invite,
            m => m,
        };
        Some(Self {
            branch: text(via.branch()?),
            sent_by: format!("{}:{}", text(via.host()), via.port().unwrap_or(5060)),
            method,
        })
    }

    /// The key of the INVITE a CANCEL cancels.
    pub(crate) fn invite_of_cancel(msg: &Message) -> Option<Self> {
        let mut key = Self::of(msg)?;
        key.method = Method::Invite;
        Some(key)
    }
}

#[derive(Debug)]
struct ServerTxn {
    to: SocketAddr,
    invite: bool,
    last: Option<Bytes>,
    final_code: Option<u16>,
    call_id: String,
    cseq: u32,
    next_retransmit: Option<Instant>,
    interval: Duration,
    /// When a 2xx that was never ACKed is given up.
    give_up: Option<Instant>,
    expires: Instant,
}

/// What a request is to the transaction layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A new request: the TU handles it.
    New,
    /// A retransmission: the last answer was repeated, if there was one.
    Retransmission,
    /// The ACK of a non-2xx final answer: absorbed.
    AckAbsorbed,
}

/// A 2xx to an INVITE that never got its ACK (§13.3.1.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unacknowledged {
    /// The INVITE's Call-ID.
    pub(crate) call_id: String,
    /// The INVITE's CSeq number.
    pub(crate) cseq: u32,
}

/// Server transactions (RFC 3261 §17.2 over UDP), and the UAS core's 2xx
/// retransmission until the ACK.
#[derive(Debug, Default)]
pub(crate) struct ServerTxns {
    txns: HashMap<ServerKey, ServerTxn>,
}

impl ServerTxns {
    fn get_mut(&mut self, key: &ServerKey) -> Option<&mut ServerTxn> {
        self.txns.get_mut(key)
    }

    fn get(&self, key: &ServerKey) -> Option<&ServerTxn> {
        self.txns.get(key)
    }

    /// Classifies a request from `from`; a retransmission gets the last answer again.
    pub(crate) fn on_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: &Message,
        out: &mut Vec<Datagram>,
    ) -> Incoming {
        let Some(key) = ServerKey::of(msg) else {
            return Incoming::New;
        };
        if msg.method() == Some(Method::Ack) {
            return match self.get_mut(&key) {
                Some(txn) if txn.final_code.is_some_and(|c| c >= 300) => {
                    txn.next_retransmit = None;
                    Incoming::AckAbsorbed
                }
                _ => Incoming::New,
            };
        }
        if let Some(txn) = self.get(&key) {
            if let Some(last) = &txn.last {
                out.push(Datagram {
                    to: txn.to,
                    bytes: last.clone(),
                });
            }
            return Incoming::Retransmission;
        }
        let (seq, _) = cseq(msg).unwrap_or((0, Method::Other));
        let invite = key.method == Method::Invite;
        self.txns.insert(
            key,
            ServerTxn {
                to: from,
                invite,
                last: None,
                final_code: None,
                call_id: call_id(msg).unwrap_or_default(),
                cseq: seq,
                next_retransmit: None,
                interval: T1,
                give_up: None,
                expires: now + TIMEOUT,
            },
        );
        Incoming::New
    }

    /// The final status already sent for the INVITE a CANCEL names: `None` when
    /// there is no such INVITE, `Some(None)` while it is pending.
    pub(crate) fn invite_status(&self, cancel: &Message) -> Option<Option<u16>> {
        let key = ServerKey::invite_of_cancel(cancel)?;
        self.get(&key).map(|t| t.final_code)
    }

    /// Sends an answer to `req` (to where `req` came from) and remembers it for
    /// retransmissions. A final answer to an INVITE is repeated until its ACK
    /// (T1·2ⁿ, at most T2; a 2xx's ACK is reported with [`Self::acked`]).
    pub(crate) fn respond(
        &mut self,
        now: Instant,
        req: &Message,
        bytes: Bytes,
        out: &mut Vec<Datagram>,
    ) {
        let status = Message::parse(bytes.clone()).ok().and_then(|m| m.status());
        let key = ServerKey::of(req);
        let txn = key.as_ref().and_then(|k| self.get_mut(k));
        let Some(txn) = txn else {
            if let Some(to) = via_addr(req) {
                out.push(Datagram { to, bytes });
            }
            return;
        };
        out.push(Datagram {
            to: txn.to,
            bytes: bytes.clone(),
        });
        txn.last = Some(bytes);
        if let Some(code) = status.filter(|&c| c >= 200) {
            if txn.final_code.is_some() {
                return;
            }
            txn.final_code = Some(code);
            txn.expires = now + TIMEOUT;
            if txn.invite {
                txn.next_retransmit = Some(now + T1);
                txn.interval = T1;
                if code < 300 {
                    txn.give_up = Some(now + TIMEOUT);
                }
            }
        }
    }

    /// The ACK of a 2xx came: its retransmissions stop.
    pub(crate) fn acked(&mut self, call_id: &str, cseq: u32) {
        for txn in self.txns.values_mut() {
            if txn.invite && txn.call_id == call_id && txn.cseq == cseq {
                txn.next_retransmit = None;
                txn.give_up = None;
            }
        }
    }

    /// The earliest deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.txns
            .values()
            .flat_map(|t| [t.next_retransmit, t.give_up, Some(t.expires)])
            .flatten()
            .min()
    }

    /// Repeats final answers to INVITEs that are due, forgets old transactions, and
    /// reports the 2xx answers that were never ACKed.
    pub(crate) fn handle_timeout(
        &mut self,
        now: Instant,
        out: &mut Vec<Datagram>,
    ) -> Vec<Unacknowledged> {
        let mut lost = Vec::new();
        self.txns.retain(|_, txn| {
            if txn.give_up.is_some_and(|g| g <= now) {
                txn.give_up = None;
                txn.next_retransmit = None;
                lost.push(Unacknowledged {
                    call_id: txn.call_id.clone(),
                    cseq: txn.cseq,
                });
            }
            if let Some(at) = txn.next_retransmit.filter(|&at| at <= now) {
                if let Some(last) = &txn.last {
                    out.push(Datagram {
                        to: txn.to,
                        bytes: last.clone(),
                    });
                }
                txn.interval = (txn.interval * 2).min(T2);
                txn.next_retransmit = Some(at.max(now) + txn.interval);
            }
            txn.expires > now || txn.give_up.is_some()
        });
        lost
    }

    /// How many transactions are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.txns.len()
    }
}
