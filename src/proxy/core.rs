//! The stateful proxy: RFC 3261 §16 request processing, §17 transactions, routing
//! between phones and the PBX, and the limits that keep it bounded. Sans-IO: messages
//! and time come in as arguments, datagrams to send and the next deadline go out.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::flow::{
    ALIAS_PARAM, AliasTable, ConnId, Flow, parse_token, push_hex, push_hex_digits, token_text,
};
use super::limits::RateLimiter;
use super::timers::{Deadline, T1, T2, TIMEOUT, TIMER_C, TimerKind, TimerQueue};
use super::transaction::{ClientState, KeyMethod, ServerKey, ServerState, Txn};
use crate::blf::DocumentRenderer;
use crate::blf::subscription::{Forward, Rewrite, SubscriptionConfig, SubscriptionTracker};
use crate::config::Cidr;
use crate::metrics::{MessageCounters, MessageKind, ProxyMetrics};
use crate::observe::{Direction, ObserveConfig, ObserveEvent, Observer, PhoneAddr};
use crate::sip::build::{ResponseBuilder, ack_for, cancel_for};
use crate::sip::edit::Editor;
use crate::sip::header::ContactValue;
use crate::sip::{HeaderName, Message, Method, ParseError, Scheme, Uri};
use crate::transport::Transport;

/// Prefix of every branch this proxy writes: responses carrying it are ours.
const BRANCH_PREFIX: &str = "z9hG4bKpp";

/// Branches of the NOTIFYs the proxy originates in BLF subscriptions (issue 7): their
/// answers go to the subscription tracker, never to a transaction or the PBX.
const OWN_NOTIFY_BRANCH_PREFIX: &str = "z9hG4bKppn";

/// Default Max-Forwards when a request carries none (RFC 3261 §16.6 step 3).
const DEFAULT_MAX_FORWARDS: u8 = 70;
/// The To tags of responses the proxy generates: this prefix and 12 hex digits.
const OWN_TAG_PREFIX: &str = "pp";
const OWN_TAG_LEN: usize = OWN_TAG_PREFIX.len() + 12;

/// How often expired aliases and idle rate buckets are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// A socket the proxy listens on, and the address it tells others to use for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// Transport of the listener.
    pub transport: Transport,
    /// Address the socket is bound to.
    pub local: SocketAddr,
    /// Address written into Via, Record-Route, Path and aliased Contacts.
    pub advertised: SocketAddr,
}

/// What the core needs to know, resolved and validated by the caller.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The listeners (at least one).
    pub listeners: Vec<Listener>,
    /// The PBX's address.
    pub pbx: SocketAddr,
    /// Transport towards the PBX.
    pub pbx_transport: Transport,
    /// Whether the PBX supports Path (RFC 3327); else Contacts are aliased.
    pub pbx_path: bool,
    /// Networks phones may send from.
    pub allowed_networks: Vec<Cidr>,
    /// Most transactions at once.
    pub max_transactions: usize,
    /// Most aliases (bindings and flow tokens) at once.
    pub max_bindings: usize,
    /// Requests per second per source address.
    pub max_requests_per_second_per_source: u32,
    /// Seed for branches, tags and tokens (deterministic tests; random in production).
    pub seed: u64,
    /// How calls, star codes and DND are recognised.
    pub observe: ObserveConfig,
    /// What a new PBX INVITE to an extension whose Teams user is busy gets (`486 Busy
    /// Here` by default); `None` lets it through.
    pub teams_busy_response: Option<(u16, &'static str)>,
    /// How BLF documents are written for the phones (`[blf]`).
    pub blf: DocumentRenderer,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where and how: the local socket to send from, the peer, and the connection to
    /// use (`None` for a stream: use any open connection to the peer, or open one).
    pub flow: Flow,
    /// The message.
    pub bytes: Bytes,
}

/// Which side a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Phone,
    Pbx,
}

/// Where a request goes, and how its Request-URI changes.
#[derive(Debug, Clone)]
struct Target {
    flow: Flow,
    request_uri: Option<Bytes>,
    /// The phone-side flow, whose token goes into Record-Route.
    phone_flow: Flow,
}

/// Counters for metrics and tests: plain integers bumped on the message path, read
/// with [`Proxy::stats`] or [`Proxy::metrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages received that parsed, by kind and transport.
    pub received: MessageCounters,
    /// Messages handed out by [`Proxy::poll_transmit`], by kind and transport.
    pub sent: MessageCounters,
    /// Messages that could not be parsed or validated.
    pub parse_errors: u64,
    /// Requests forwarded (retransmissions excluded).
    pub requests_forwarded: u64,
    /// Responses forwarded.
    pub responses_forwarded: u64,
    /// Responses the proxy generated (100, 4xx, 5xx).
    pub responses_generated: u64,
    /// Retransmissions the proxy sent (requests and responses).
    pub retransmissions: u64,
    /// Requests refused by access control or limits.
    pub refused: u64,
    /// INVITEs refused because the called extension's Teams user is busy.
    pub teams_busy_refused: u64,
}

/// The stateful proxy core.
#[derive(Debug)]
pub struct Proxy {
    config: ProxyConfig,
    /// Boxed: a record is about 400 bytes and lingers 32 s after its final response,
    /// so the table keeps pointers (growing it moves 16 bytes per entry, and its empty
    /// slots cost 16 bytes each instead of a whole record).
    txns: HashMap<u64, Box<Txn>, BuildHasherDefault<IdHasher>>,
    /// Keys come from the network: foldhash with a random seed per map, like the
    /// observer's tables (SipHash cost more than the lookup itself).
    by_server_key: foldhash::HashMap<ServerKey, u64>,
    /// Where a request's server key is written to look it up (reused: a lookup
    /// allocates nothing; only a new transaction's key is copied out of it).
    key_buf: Vec<u8>,
    timers: TimerQueue,
    aliases: AliasTable,
    limiter: RateLimiter,
    out: VecDeque<Transmit>,
    next_id: u64,
    next_sweep: Option<Instant>,
    /// Every address of the PBX besides `config.pbx` (the other RFC 3263 targets).
    pbx_addresses: Vec<SocketAddr>,
    stats: Stats,
    draining: bool,
    /// `host:port` of each listener's advertised address, written once.
    listener_texts: Vec<(SocketAddr, String)>,
    /// Every BLF subscription through the proxy, and what it injects into them.
    blf: SubscriptionTracker<DocumentRenderer>,
    /// Numbers the branches of the proxy's own NOTIFYs.
    own_notifies: u64,
    /// Phone-side state per extension, fed with every message forwarded or answered.
    observer: Observer,
}

/// Formats an address as a SIP host:port (IPv6 in brackets).
fn host_port(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    }
}

/// Our Path value for a phone's REGISTER (RFC 3327): the phone flow's `token` at the
/// listener facing the PBX.
fn path_value(token: u64, listener: Listener) -> String {
    let mut path = format!(
        "<sip:{}@{}",
        token_text(token),
        host_port(listener.advertised)
    );
    if listener.transport != Transport::Udp {
        let _ = write!(path, ";transport={}", listener.transport.uri_param());
    }
    path.push_str(";lr>");
    path
}

/// The URI replacing a phone's Contact in alias mode: the contact's user at `listener`,
/// with the alias `token`.
fn alias_uri(user: Option<&[u8]>, listener: Listener, token: u64) -> String {
    let mut alias = String::from("sip:");
    if let Some(user) = user {
        alias.push_str(&lossy(user));
        alias.push('@');
    }
    alias.push_str(&host_port(listener.advertised));
    if listener.transport != Transport::Udp {
        let _ = write!(alias, ";transport={}", listener.transport.uri_param());
    }
    let _ = write!(alias, ";{ALIAS_PARAM}={}", token_text(token));
    alias
}

/// Parses a URI host (IPv6 with brackets) as an IP address.
fn host_ip(host: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(host).ok()?;
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    text.parse().ok()
}

/// The Via of a NOTIFY the proxy originates on `flow` (number `seq`): the listener the
/// flow belongs to, a branch the proxy recognises as its own NOTIFY's.
fn own_notify_via(
    config: &ProxyConfig,
    listener_texts: &[(SocketAddr, String)],
    flow: &Flow,
    seq: u64,
) -> String {
    let listener = config
        .listeners
        .iter()
        .find(|l| l.transport == flow.transport && l.local == flow.local)
        .or_else(|| {
            config
                .listeners
                .iter()
                .find(|l| l.transport == flow.transport)
        })
        .or_else(|| config.listeners.first());
    let host = match listener {
        Some(l) => listener_texts
            .iter()
            .find(|(a, _)| *a == l.advertised)
            .map_or_else(|| host_port(l.advertised), |(_, t)| t.clone()),
        None => host_port(flow.local),
    };
    let mut via = String::with_capacity(80);
    via.push_str("SIP/2.0/");
    via.push_str(flow.transport.via_token());
    via.push(' ');
    via.push_str(&host);
    via.push_str(";branch=");
    via.push_str(OWN_NOTIFY_BRANCH_PREFIX);
    push_hex(&mut via, scramble(seq, config.seed));
    via.push_str(";rport");
    via
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

impl Proxy {
    /// A proxy with no state yet.
    pub fn new(config: ProxyConfig) -> Self {
        let aliases = AliasTable::new(config.seed, config.max_bindings);
        let listener_texts = config
            .listeners
            .iter()
            .map(|l| (l.advertised, host_port(l.advertised)))
            .collect();
        let limiter = RateLimiter::new(config.max_requests_per_second_per_source);
        let observer = Observer::new(config.observe.clone());
        let max_subscriptions = config.max_bindings;
        let blf_renderer = config.blf.clone();
        Self {
            config,
            txns: HashMap::default(),
            by_server_key: foldhash::HashMap::default(),
            key_buf: Vec::with_capacity(128),
            timers: TimerQueue::default(),
            aliases,
            limiter,
            out: VecDeque::new(),
            next_id: 1,
            next_sweep: None,
            pbx_addresses: Vec::new(),
            stats: Stats::default(),
            draining: false,
            listener_texts,
            observer,
            blf: SubscriptionTracker::new(
                SubscriptionConfig {
                    max_subscriptions,
                    ..SubscriptionConfig::default()
                },
                blf_renderer,
            ),
            own_notifies: 0,
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let transmit = self.out.pop_front()?;
        self.stats.sent.count(
            MessageKind::of_bytes(&transmit.bytes),
            transmit.flow.transport,
        );
        Some(transmit)
    }

    /// When [`Proxy::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timers.next_at(),
            self.next_sweep,
            self.observer.poll_timeout(),
            self.blf.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next change of an extension's phone-side state (calls, DND).
    pub fn poll_event(&mut self) -> Option<ObserveEvent> {
        self.observer.poll_event()
    }

    /// The phone-side state per extension.
    pub fn observer(&self) -> &Observer {
        &self.observer
    }

    /// The phone-side state per extension, to change its directory.
    pub fn observer_mut(&mut self) -> &mut Observer {
        &mut self.observer
    }

    /// Open transactions.
    pub fn transaction_count(&self) -> usize {
        self.txns.len()
    }

    /// Transactions still waiting for a final response (what a shutdown waits for).
    pub fn pending_transaction_count(&self) -> usize {
        self.txns
            .values()
            .filter(|t| t.server_state == ServerState::Proceeding)
            .count()
    }

    /// Registered bindings.
    pub fn binding_count(&self) -> usize {
        self.aliases.registered_count()
    }

    /// Alias table entries (bindings and flow tokens).
    pub fn alias_count(&self) -> usize {
        self.aliases.len()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// A snapshot of the counters and of the sizes of the proxy's tables (the caller
    /// adds what only it knows, such as open connections).
    pub fn metrics(&self) -> ProxyMetrics {
        let s = &self.stats;
        ProxyMetrics {
            received: s.received,
            sent: s.sent,
            parse_errors: s.parse_errors,
            requests_forwarded: s.requests_forwarded,
            responses_forwarded: s.responses_forwarded,
            responses_generated: s.responses_generated,
            retransmissions: s.retransmissions,
            refused: s.refused,
            teams_busy_refused: s.teams_busy_refused,
            transactions: self.txns.len() as u64,
            bindings: self.observer.binding_count() as u64,
            aliases: self.aliases.len() as u64,
            blf_subscriptions: self.blf.len() as u64,
            calls_active: self.observer.call_count() as u64,
            calls: self.observer.call_counts(),
            connections: 0,
        }
    }

    /// Shutting down: new requests are answered 503 while open transactions finish.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Sends new requests for the PBX to `addr` over `transport` (RFC 3263 failover or
    /// a new resolution); open transactions keep their next hop, unless
    /// [`Proxy::transport_error`] then reports theirs unreachable.
    pub fn set_pbx(&mut self, addr: SocketAddr, transport: Transport) {
        self.config.pbx = addr;
        self.config.pbx_transport = transport;
    }

    /// Every resolved address of the PBX: requests from any of them count as the PBX's
    /// (it may send from another server of its SRV set than the one in use).
    pub fn set_pbx_addresses(&mut self, addresses: Vec<SocketAddr>) {
        self.pbx_addresses = addresses;
    }

    /// A TCP/TLS connection closed: forget it in every flow that used it.
    pub fn connection_closed(&mut self, conn: ConnId) {
        self.aliases.connection_closed(conn);
        for txn in self.txns.values_mut() {
            if txn.upstream.conn == Some(conn) {
                txn.upstream.conn = None;
            }
            if txn.downstream.conn == Some(conn) {
                txn.downstream.conn = None;
            }
        }
    }

    /// The sync engine's verdict on an extension's Teams user: new calls to it are
    /// refused while busy, and the BLF lamps of every phone watching it follow.
    pub fn set_teams_busy(&mut self, now: Instant, ext: &str, busy: bool) {
        self.observer.set_teams_busy(ext, busy);
        self.blf.set_teams_busy(ext, busy, now);
        self.drain_blf(now);
    }

    /// The BLF subscriptions the proxy tracks.
    pub fn blf(&self) -> &SubscriptionTracker<DocumentRenderer> {
        &self.blf
    }

    /// Queues the NOTIFYs the BLF tracker wants sent (its own, and their UDP
    /// retransmissions).
    fn drain_blf(&mut self, now: Instant) {
        let Self {
            blf,
            config,
            listener_texts,
            own_notifies,
            out,
            ..
        } = self;
        while let Some(transmit) = blf.poll_transmit(now, |flow| {
            *own_notifies += 1;
            own_notify_via(config, listener_texts, flow, *own_notifies)
        }) {
            out.push_back(transmit);
        }
    }

    /// A UDP datagram arrived.
    pub fn handle_datagram(&mut self, now: Instant, flow: Flow, bytes: Bytes) {
        if bytes.iter().all(|&c| c == b'\r' || c == b'\n' || c == 0) {
            return; // keep-alive (CRLF or NUL) from a phone behind NAT
        }
        match Message::parse(bytes) {
            Ok(msg) => self.handle_message(now, flow, msg),
            Err(e) => {
                self.stats.parse_errors += 1;
                warn!(source = %flow.remote, transport = %flow.transport, error = %e, "dropped unparseable SIP message");
            }
        }
    }

    /// A whole message arrived (a datagram already parsed, or framed from a stream).
    pub fn handle_message(&mut self, now: Instant, flow: Flow, msg: Message) {
        let kind = match msg.method() {
            Some(method) => MessageKind::of_method(method),
            None => MessageKind::Response,
        };
        self.stats.received.count(kind, flow.transport);
        self.arm_sweep(now);
        let checked = if msg.is_request() {
            msg.validate()
        } else {
            msg.validate_response()
        };
        if let Err(e) = checked {
            self.stats.parse_errors += 1;
            self.reject_invalid(flow, &msg, &e);
            return;
        }
        if msg.is_request() {
            self.handle_request(now, flow, msg);
        } else {
            self.handle_response(now, flow, msg);
        }
        self.drain_blf(now);
    }

    fn arm_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
        }
    }

    fn reject_invalid(&mut self, flow: Flow, msg: &Message, e: &ParseError) {
        let call_id = msg
            .header(HeaderName::CallId)
            .map(lossy)
            .unwrap_or_default();
        warn!(source = %flow.remote, transport = %flow.transport, call_id = %call_id, error = %e, "invalid SIP message");
        if msg.is_request()
            && msg.method() != Some(Method::Ack)
            && msg.header(HeaderName::Via).is_some()
        {
            let bytes = ResponseBuilder::new(msg, e.response_status(), e.reason_phrase()).build();
            self.stats.responses_generated += 1;
            self.send(flow, bytes);
        }
    }

    fn send(&mut self, flow: Flow, bytes: Bytes) {
        self.out.push_back(Transmit { flow, bytes });
    }

    fn respond(
        &mut self,
        flow: Flow,
        request: &Message,
        code: u16,
        reason: &str,
        extra: &[(&str, &[u8])],
    ) -> Bytes {
        let tag = self.tag_for(request);
        let mut builder = ResponseBuilder::new(request, code, reason).to_tag(&tag);
        for (name, value) in extra {
            builder = builder.header(name, value);
        }
        let bytes = builder.build();
        self.stats.responses_generated += 1;
        self.send(flow, bytes.clone());
        bytes
    }

    /// Answers 503 with Retry-After: a limit is reached or the proxy is shutting down
    /// (RFC 3261 §21.5.4); the sender may try again later.
    fn refuse_busy(&mut self, flow: Flow, request: &Message, reason: &str) {
        self.respond(flow, request, 503, reason, &[("Retry-After", b"5")]);
    }

    /// A To tag for a response the proxy generates: stable per request (Call-ID, From
    /// tag, CSeq number), so a retransmitted request gets the same tag and the ACK for
    /// the response is recognised by it.
    fn tag_for(&self, request: &Message) -> String {
        let mut h = self.seeded_hasher();
        request.header(HeaderName::CallId).hash(&mut h);
        request.from_tag().hash(&mut h);
        request
            .cseq()
            .and_then(Result::ok)
            .map(|c| c.seq())
            .hash(&mut h);
        let mut tag = String::with_capacity(OWN_TAG_LEN);
        tag.push_str(OWN_TAG_PREFIX);
        push_hex_digits(&mut tag, h.finish(), 12);
        tag
    }

    /// Whether a To tag may be one [`Self::tag_for`] wrote (its shape), before the
    /// hash is worked out to be sure.
    fn may_be_own_tag(tag: Option<&[u8]>) -> bool {
        tag.is_some_and(|t| t.len() == OWN_TAG_LEN && t.starts_with(OWN_TAG_PREFIX.as_bytes()))
    }

    /// A hasher keyed by the proxy's seed: what it derives (own tags, stateless
    /// branches) is stable for one run and unpredictable across runs.
    fn seeded_hasher(&self) -> impl Hasher {
        foldhash::quality::FixedState::with_seed(self.config.seed).build_hasher()
    }

    /// Our branch for transaction `id`: a reversible scramble of the id under the
    /// seed, so a response finds its transaction without a second table, and branches
    /// are unique per proxy run without being a visible counter.
    fn new_branch(&mut self, id: u64) -> String {
        let mut branch = String::with_capacity(BRANCH_PREFIX.len() + 16);
        branch.push_str(BRANCH_PREFIX);
        push_hex(&mut branch, scramble(id, self.config.seed));
        branch
    }

    /// The transaction a branch of ours names, if it is one.
    fn txn_of_branch(&self, branch: &[u8]) -> Option<u64> {
        let hex = branch.strip_prefix(BRANCH_PREFIX.as_bytes())?;
        // sixteen lower-case hex digits, as `new_branch` writes them: then the branch
        // is exactly the one of the id it unscrambles to
        if hex.iter().any(u8::is_ascii_uppercase) {
            return None;
        }
        let id = unscramble(parse_token(hex)?, self.config.seed);
        self.txns.contains_key(&id).then_some(id)
    }

    /// The branch for a request forwarded without a transaction (a 2xx ACK): derived
    /// from the incoming branch, so its retransmissions get the same one (§16.11).
    fn stateless_branch(&self, msg: &Message) -> String {
        let mut h = self.seeded_hasher();
        msg.top_via()
            .and_then(Result::ok)
            .and_then(|v| v.branch())
            .hash(&mut h);
        msg.header(HeaderName::CallId).hash(&mut h);
        let mut branch = String::with_capacity(BRANCH_PREFIX.len() + 17);
        branch.push_str(BRANCH_PREFIX);
        branch.push('s');
        push_hex(&mut branch, h.finish());
        branch
    }

    /// Whether a flow is the PBX: its exact address, or (for a PBX that sends from
    /// other ports, e.g. its own TCP connections) its IP when that IP is not also in
    /// the phone networks (on loopback, phones and PBX share an IP).
    fn is_pbx(&self, flow: &Flow) -> bool {
        let remote = flow.remote;
        let mut pbx = std::iter::once(&self.config.pbx).chain(&self.pbx_addresses);
        pbx.clone().any(|&a| a == remote)
            || (pbx.any(|a| a.ip() == remote.ip()) && !self.is_allowed_phone(remote.ip()))
    }

    /// Whether `ip` is one of the PBX's addresses.
    fn is_pbx_ip(&self, ip: IpAddr) -> bool {
        self.config.pbx.ip() == ip || self.pbx_addresses.iter().any(|a| a.ip() == ip)
    }

    fn is_allowed_phone(&self, ip: IpAddr) -> bool {
        self.config.allowed_networks.iter().any(|n| n.contains(ip))
    }

    /// The listener to send from for a transport and peer address family.
    fn listener_for(&self, transport: Transport, peer: SocketAddr) -> Listener {
        let same_family = |l: &&Listener| l.local.is_ipv4() == peer.is_ipv4();
        self.config
            .listeners
            .iter()
            .filter(|l| l.transport == transport)
            .find(same_family)
            .or_else(|| {
                self.config
                    .listeners
                    .iter()
                    .find(|l| l.transport == transport)
            })
            .or_else(|| self.config.listeners.iter().find(same_family))
            .or_else(|| self.config.listeners.first())
            .copied()
            .unwrap_or(Listener {
                transport,
                local: peer,
                advertised: peer,
            })
    }

    fn listener_of(&self, flow: &Flow) -> Listener {
        self.config
            .listeners
            .iter()
            .find(|l| l.transport == flow.transport && l.local == flow.local)
            .copied()
            .unwrap_or_else(|| self.listener_for(flow.transport, flow.remote))
    }

    fn pbx_flow(&self) -> Flow {
        let listener = self.listener_for(self.config.pbx_transport, self.config.pbx);
        Flow {
            transport: self.config.pbx_transport,
            remote: self.config.pbx,
            local: listener.local,
            conn: None,
        }
    }

    /// `host:port` of a listener's advertised address.
    fn addr_text(&self, addr: SocketAddr) -> std::borrow::Cow<'_, str> {
        match self.listener_texts.iter().find(|(a, _)| *a == addr) {
            Some((_, text)) => std::borrow::Cow::Borrowed(text),
            None => std::borrow::Cow::Owned(host_port(addr)),
        }
    }

    /// Whether a Route/Record-Route URI names this proxy.
    fn is_own_uri(&self, uri: &Uri<'_>) -> bool {
        let Some(ip) = host_ip(uri.host()) else {
            return false;
        };
        let transport = uri
            .params()
            .value("transport")
            .and_then(Transport::from_token)
            .unwrap_or(Transport::Udp);
        let port = uri.port().unwrap_or(if uri.scheme() == Scheme::Sips {
            5061
        } else {
            transport.default_port()
        });
        self.config
            .listeners
            .iter()
            .any(|l| l.advertised.ip() == ip && l.advertised.port() == port)
    }

    // ---------------------------------------------------------------- requests

    fn handle_request(&mut self, now: Instant, flow: Flow, msg: Message) {
        let side = if self.is_pbx(&flow) {
            Side::Pbx
        } else if self.is_allowed_phone(flow.remote.ip()) {
            Side::Phone
        } else {
            self.stats.refused += 1;
            warn!(source = %flow.remote, "request from a source outside the allowed networks refused");
            if msg.method() != Some(Method::Ack) {
                self.respond(flow, &msg, 403, "Forbidden", &[]);
            }
            return;
        };
        if side == Side::Phone && !self.limiter.allow(now, flow.remote.ip()) {
            self.stats.refused += 1;
            debug!(source = %flow.remote, "request rate limit reached");
            if msg.method() != Some(Method::Ack) {
                self.refuse_busy(flow, &msg, "Service Unavailable");
            }
            return;
        }
        debug!(
            source = %flow.remote,
            method = %lossy(msg.method_bytes().unwrap_or_default()),
            call_id = %lossy(msg.header(HeaderName::CallId).unwrap_or_default()),
            "request"
        );
        match msg.method() {
            Some(Method::Ack) => self.handle_ack(now, flow, side, msg),
            Some(Method::Cancel) => self.handle_cancel(flow, msg),
            _ => self.handle_new_request(now, flow, side, msg),
        }
    }

    fn handle_new_request(&mut self, now: Instant, flow: Flow, side: Side, msg: Message) {
        let method = msg.method().unwrap_or(Method::Other);
        let class = if method == Method::Invite {
            KeyMethod::Invite
        } else {
            KeyMethod::Other
        };
        if ServerKey::write(&msg, class, &mut self.key_buf).is_none() {
            self.respond(flow, &msg, 400, "Bad Request - Malformed Via", &[]);
            return;
        }
        // a retransmission: answer with the last response, or absorb
        if let Some(&id) = self.by_server_key.get(self.key_buf.as_slice()) {
            if let Some(txn) = self.txns.get(&id) {
                if let Some(last) = txn.last_response.clone() {
                    self.stats.retransmissions += 1;
                    self.send(flow, last);
                }
            }
            return;
        }
        let key = ServerKey::from_bytes(&self.key_buf);
        let max_forwards = match msg.max_forwards() {
            Some(Ok(n)) => n,
            _ => DEFAULT_MAX_FORWARDS + 1,
        };
        if max_forwards == 0 {
            self.respond(flow, &msg, 483, "Too Many Hops", &[]);
            return;
        }
        if self.draining {
            self.refuse_busy(flow, &msg, "Service Unavailable - Shutting Down");
            return;
        }
        if self.txns.len() >= self.config.max_transactions {
            self.stats.refused += 1;
            warn!(
                limit = self.config.max_transactions,
                "transaction limit reached"
            );
            self.refuse_busy(flow, &msg, "Service Unavailable");
            return;
        }
        let (own_routes, route_token) = self.own_routes(&msg);
        let target = match self.route(now, flow, side, &msg, route_token) {
            Ok(target) => target,
            Err((code, reason)) => {
                self.respond(flow, &msg, code, reason, &[]);
                return;
            }
        };
        if side == Side::Pbx
            && method == Method::Invite
            && self.refuse_teams_busy(flow, &target, &msg)
        {
            return;
        }
        // BLF: the tracker follows subscriptions; a PBX NOTIFY may get its CSeq and body
        // rewritten for the phone
        let rewrite = match side {
            Side::Phone => {
                let _ = self.blf.on_message(now, Direction::FromPhone, &flow, &msg);
                None
            }
            Side::Pbx => match self
                .blf
                .on_message(now, Direction::ToPhone, &target.flow, &msg)
            {
                Forward::Rewrite(rewrite) => Some(rewrite),
                Forward::Pass | Forward::Absorb => None,
            },
        };
        let id = self.next_id;
        self.next_id += 1;
        let branch = self.new_branch(id);
        let forwarded = match self.forward_request(
            now,
            flow,
            side,
            &msg,
            &target,
            own_routes,
            &branch,
            max_forwards,
            true,
            rewrite.as_ref(),
        ) {
            Ok(bytes) => bytes,
            Err((code, reason)) => {
                self.respond(flow, &msg, code, reason, &[]);
                return;
            }
        };

        let invite = method == Method::Invite;
        let last_response = if invite {
            let trying = ResponseBuilder::new(&msg, 100, "Trying").build();
            self.stats.responses_generated += 1;
            self.send(flow, trying.clone());
            Some(trying)
        } else {
            None
        };
        let txn = Txn {
            id,
            method,
            server_key: key.clone(),
            upstream: flow,
            server_state: ServerState::Proceeding,
            last_response,
            response_interval: T1,
            downstream: target.flow,
            request: Some(forwarded.clone()),
            client_state: ClientState::Calling,
            retransmit_interval: T1,
            ack: None,
            cancel_pending: false,
            cancelled: false,
            failovers: 0,
            generations: [0; 5],
        };
        self.by_server_key.insert(key, id);
        let downstream = txn.downstream;
        let (direction, phone) = match side {
            Side::Phone => (Direction::FromPhone, flow),
            Side::Pbx => (Direction::ToPhone, target.phone_flow),
        };
        self.observer
            .on_message(now, direction, PhoneAddr::from(&phone), &msg);
        self.txns.insert(id, Box::new(txn));
        if downstream.transport == Transport::Udp {
            self.schedule(id, TimerKind::Retransmit, now + T1);
        }
        self.schedule(id, TimerKind::Timeout, now + TIMEOUT);
        self.stats.requests_forwarded += 1;
        self.send(downstream, forwarded);
    }

    /// A new INVITE from the PBX to an extension whose Teams user is busy: answered
    /// here (486 by default) and never forwarded, so no phone rings. In-dialog
    /// requests (a To tag) always pass.
    fn refuse_teams_busy(&mut self, flow: Flow, target: &Target, msg: &Message) -> bool {
        let Some((code, reason)) = self.config.teams_busy_response else {
            return false;
        };
        if msg.to_tag().is_some() {
            return false;
        }
        let Some(ext) = self
            .observer
            .teams_busy_target(PhoneAddr::from(&target.phone_flow), msg)
        else {
            return false;
        };
        info!(
            ext = %ext,
            call_id = %lossy(msg.header(HeaderName::CallId).unwrap_or_default()),
            code,
            "call refused: the extension's Teams user is busy"
        );
        self.stats.teams_busy_refused += 1;
        self.respond(flow, msg, code, reason, &[]);
        true
    }

    /// Counts the Route values on top that name this proxy (one, or two with double
    /// Record-Route), and the flow token found in their user part.
    fn own_routes(&self, msg: &Message) -> (usize, Option<u64>) {
        let mut count = 0;
        let mut token = None;
        // parsed once, in validation
        for uri in msg.leading_route_uris() {
            if !self.is_own_uri(&uri) {
                break;
            }
            count += 1;
            if token.is_none() {
                token = uri.user().and_then(parse_token);
            }
        }
        (count, token)
    }

    /// Decides where a request goes (§16.5): phones' requests to the PBX; the PBX's to
    /// the phone named by a flow token, a contact alias, or a registered binding.
    fn route(
        &mut self,
        now: Instant,
        flow: Flow,
        side: Side,
        msg: &Message,
        route_token: Option<u64>,
    ) -> Result<Target, (u16, &'static str)> {
        if side == Side::Phone {
            return Ok(Target {
                flow: self.pbx_flow(),
                request_uri: None,
                phone_flow: flow,
            });
        }
        if let Some(token) = route_token {
            return match self.aliases.resolve(now, token) {
                Some(entry) => Ok(Target {
                    flow: entry.flow,
                    request_uri: None,
                    phone_flow: entry.flow,
                }),
                None => Err((404, "Not Found - Unknown Flow")),
            };
        }
        let uri = match msg.request_uri() {
            Some(Ok(uri)) => uri,
            _ => return Err((416, "Unsupported URI Scheme")),
        };
        if let Some(token) = uri.params().value(ALIAS_PARAM).and_then(parse_token) {
            return match self.aliases.resolve(now, token) {
                Some(entry) => Ok(Target {
                    flow: entry.flow,
                    request_uri: entry.contact.clone(),
                    phone_flow: entry.flow,
                }),
                None => Err((404, "Not Found - Unknown Alias")),
            };
        }
        if let Some(entry) = self.aliases.registered_by_contact(now, uri.as_bytes()) {
            return Ok(Target {
                flow: entry.flow,
                request_uri: None,
                phone_flow: entry.flow,
            });
        }
        if let Some(user) = uri.user() {
            if let Some(entry) = self.aliases.registered_by_user(now, user) {
                return Ok(Target {
                    flow: entry.flow,
                    request_uri: entry.contact.clone(),
                    phone_flow: entry.flow,
                });
            }
        }
        // a Request-URI naming a phone directly, inside the allowed networks
        if matches!(uri.scheme(), Scheme::Sip | Scheme::Sips) {
            if let Some(ip) = host_ip(uri.host()) {
                if self.is_allowed_phone(ip) && !self.is_own_uri(&uri) {
                    let transport = uri
                        .params()
                        .value("transport")
                        .and_then(Transport::from_token)
                        .unwrap_or(Transport::Udp);
                    let remote =
                        SocketAddr::new(ip, uri.port().unwrap_or(transport.default_port()));
                    let listener = self.listener_for(transport, remote);
                    let flow = Flow {
                        transport,
                        remote,
                        local: listener.local,
                        conn: None,
                    };
                    return Ok(Target {
                        flow,
                        request_uri: None,
                        phone_flow: flow,
                    });
                }
            }
        }
        Err((404, "Not Found"))
    }

    /// Writes the forwarded copy of a request (§16.6): received/rport on the top Via,
    /// own Route values popped, Request-URI rewritten when an alias resolved, Max-Forwards
    /// decremented, Record-Route (with the phone flow's token) on dialog-creating
    /// requests and NOTIFY, Contacts aliased or Path added on REGISTER, our Via on top.
    #[allow(clippy::too_many_arguments)]
    fn forward_request(
        &mut self,
        now: Instant,
        flow: Flow,
        side: Side,
        msg: &Message,
        target: &Target,
        own_routes: usize,
        branch: &str,
        max_forwards: u8,
        record_route: bool,
        rewrite: Option<&Rewrite>,
    ) -> Result<Bytes, (u16, &'static str)> {
        let out_listener = self.listener_of(&target.flow);
        let in_listener = self.listener_of(&flow);
        let mut edit = Editor::new(msg);
        let edit_failed = |_| (400u16, "Bad Request");
        edit.set_top_via_received(flow.remote.ip(), flow.remote.port())
            .map_err(edit_failed)?;
        if own_routes > 0 {
            edit.pop_values(HeaderName::Route, own_routes)
                .map_err(edit_failed)?;
        }
        if let Some(uri) = &target.request_uri {
            edit.set_request_uri(uri).map_err(edit_failed)?;
        }
        edit.set_max_forwards(max_forwards.saturating_sub(1))
            .map_err(edit_failed)?;
        let method = msg.method().unwrap_or(Method::Other);
        let dialog_forming = matches!(
            method,
            Method::Invite | Method::Subscribe | Method::Refer | Method::Notify
        );
        if record_route && dialog_forming {
            let token = self
                .aliases
                .flow_token(now, target.phone_flow)
                .map_err(|_| (503u16, "Service Unavailable"))?;
            self.add_record_route(&mut edit, &token_text(token), in_listener, out_listener);
        }
        if method == Method::Register && side == Side::Phone {
            if self.config.pbx_path {
                let token = self
                    .aliases
                    .flow_token(now, flow)
                    .map_err(|_| (503u16, "Service Unavailable"))?;
                edit.prepend_path(path_value(token, out_listener).as_bytes());
            } else {
                self.alias_register_contacts(now, flow, msg, &mut edit, out_listener)?;
            }
        }
        if let Some(rewrite) = rewrite {
            rewrite.apply(&mut edit).map_err(edit_failed)?;
        }
        let via = self.via_value(target.flow.transport, out_listener, branch);
        edit.push_via(via.as_bytes());
        Ok(edit.finish())
    }

    /// Our Via for a request sent over `transport` from `listener`: the transport
    /// actually used to send (RFC 3261 §18.1.1), even when no listener of that
    /// transport exists (TLS to the PBX without a TLS listener).
    fn via_value(&self, transport: Transport, listener: Listener, branch: &str) -> String {
        let mut via = String::with_capacity(64);
        via.push_str("SIP/2.0/");
        via.push_str(transport.via_token());
        via.push(' ');
        via.push_str(&self.addr_text(listener.advertised));
        via.push_str(";branch=");
        via.push_str(branch);
        via.push_str(";rport");
        via
    }

    /// Adds our Record-Route naming the phone flow `token`: one value when the request
    /// comes in and goes out on the same listener, else one per listener with `r2=on`
    /// (RFC 5658), the outbound one on top.
    fn add_record_route(
        &self,
        edit: &mut Editor<'_>,
        token: &str,
        inbound: Listener,
        outbound: Listener,
    ) {
        let double =
            inbound.advertised != outbound.advertised || inbound.transport != outbound.transport;
        let rr = |l: Listener, r2: bool| {
            let mut v = String::with_capacity(64);
            v.push_str("<sip:");
            v.push_str(token);
            v.push('@');
            v.push_str(&self.addr_text(l.advertised));
            if l.transport != Transport::Udp {
                v.push_str(";transport=");
                v.push_str(l.transport.uri_param());
            }
            v.push_str(";lr");
            if r2 {
                v.push_str(";r2=on");
            }
            v.push('>');
            v
        };
        if double {
            edit.prepend_record_route(rr(outbound, true).as_bytes());
            edit.prepend_record_route(rr(inbound, true).as_bytes());
        } else {
            edit.prepend_record_route(rr(outbound, false).as_bytes());
        }
    }

    /// Replaces each Contact of a phone's REGISTER with an alias naming this proxy.
    fn alias_register_contacts(
        &mut self,
        now: Instant,
        flow: Flow,
        msg: &Message,
        edit: &mut Editor<'_>,
        listener: Listener,
    ) -> Result<(), (u16, &'static str)> {
        let aor_user = msg
            .to()
            .and_then(Result::ok)
            .and_then(|to| to.uri().user().map(<[u8]>::to_vec));
        let contacts: Vec<Vec<u8>> = msg
            .contacts()
            .filter_map(Result::ok)
            .map(|c| match c {
                ContactValue::Wildcard => Vec::new(),
                ContactValue::Address(a) => a.uri().as_bytes().to_vec(),
            })
            .collect();
        for (index, contact) in contacts.iter().enumerate() {
            if contact.is_empty() {
                continue; // `*`: passes through
            }
            let token = self
                .aliases
                .contact_alias(now, flow, contact, aor_user.as_deref())
                .map_err(|_| (503u16, "Service Unavailable"))?;
            let user = Uri::parse(contact)
                .ok()
                .and_then(|u| u.user().map(<[u8]>::to_vec));
            let alias = alias_uri(user.as_deref(), listener, token);
            edit.set_contact_uri(index, alias.as_bytes())
                .map_err(|_| (400u16, "Bad Request - Malformed Contact"))?;
        }
        Ok(())
    }

    /// ACK: absorbed when it acknowledges a non-2xx response of ours (hop by hop),
    /// forwarded statelessly otherwise (the 2xx ACK is end to end).
    fn handle_ack(&mut self, now: Instant, flow: Flow, side: Side, msg: Message) {
        if ServerKey::write(&msg, KeyMethod::Invite, &mut self.key_buf).is_some() {
            if let Some(&id) = self.by_server_key.get(self.key_buf.as_slice()) {
                if let Some(txn) = self.txns.get_mut(&id) {
                    if txn.server_state == ServerState::Completed {
                        txn.server_state = ServerState::Confirmed;
                        txn.generations[TimerKind::ResponseRetransmit.index()] += 1;
                        return;
                    }
                    if txn.server_state == ServerState::Confirmed {
                        return;
                    }
                }
            }
        }
        // the ACK for a final response this proxy generated itself (403, 404, 483, 503)
        let to_tag = msg.to_tag();
        if Self::may_be_own_tag(to_tag) && to_tag == Some(self.tag_for(&msg).as_bytes()) {
            return;
        }
        let max_forwards = match msg.max_forwards() {
            Some(Ok(0)) => return,
            Some(Ok(n)) => n,
            _ => DEFAULT_MAX_FORWARDS + 1,
        };
        let (own_routes, token) = self.own_routes(&msg);
        let Ok(target) = self.route(now, flow, side, &msg, token) else {
            debug!(source = %flow.remote, "ACK with no route dropped");
            return;
        };
        let branch = self.stateless_branch(&msg);
        match self.forward_request(
            now,
            flow,
            side,
            &msg,
            &target,
            own_routes,
            &branch,
            max_forwards,
            false,
            None,
        ) {
            Ok(bytes) => {
                self.stats.requests_forwarded += 1;
                self.send(target.flow, bytes);
            }
            Err(_) => debug!(source = %flow.remote, "ACK could not be forwarded"),
        }
    }

    /// CANCEL (§16.10): answered 200 here, and sent downstream once the INVITE has had
    /// a provisional response there (§9.1).
    fn handle_cancel(&mut self, flow: Flow, msg: Message) {
        let invite = ServerKey::write(&msg, KeyMethod::Invite, &mut self.key_buf)
            .and_then(|()| self.by_server_key.get(self.key_buf.as_slice()).copied());
        let Some(id) = invite else {
            self.respond(flow, &msg, 481, "Call/Transaction Does Not Exist", &[]);
            return;
        };
        let ok = ResponseBuilder::new(&msg, 200, "OK")
            .to_tag(&self.tag_for(&msg))
            .build();
        self.stats.responses_generated += 1;
        self.send(flow, ok);
        let Some(txn) = self.txns.get_mut(&id) else {
            return;
        };
        if txn.server_state != ServerState::Proceeding || txn.cancelled {
            return;
        }
        match txn.client_state {
            ClientState::Proceeding => self.cancel_downstream(id),
            ClientState::Calling => txn.cancel_pending = true,
            _ => {}
        }
    }

    /// Sends the CANCEL for a forwarded INVITE downstream (same branch, §9.1), once.
    fn cancel_downstream(&mut self, id: u64) {
        let Some(txn) = self.txns.get_mut(&id) else {
            return;
        };
        if txn.cancelled {
            return;
        }
        txn.cancelled = true;
        if let Some(req) = txn.forwarded() {
            let flow = txn.downstream;
            self.send(flow, cancel_for(&req));
        }
    }

    // --------------------------------------------------------------- responses

    fn handle_response(&mut self, now: Instant, flow: Flow, msg: Message) {
        let Some(Ok(via)) = msg.top_via() else { return };
        let Some(branch) = via
            .branch()
            .filter(|b| b.starts_with(BRANCH_PREFIX.as_bytes()))
        else {
            debug!(source = %flow.remote, "response not for us dropped");
            return;
        };
        if branch.starts_with(OWN_NOTIFY_BRANCH_PREFIX.as_bytes()) {
            // the phone's answer to a NOTIFY the proxy originated: the tracker's alone
            let _ = self.blf.on_message(now, Direction::FromPhone, &flow, &msg);
            return;
        }
        let status = msg.status().unwrap_or(0);
        let cseq_method = msg.cseq().and_then(Result::ok).map(|c| c.method());
        debug!(
            source = %flow.remote,
            status,
            call_id = %lossy(msg.header(HeaderName::CallId).unwrap_or_default()),
            "response"
        );
        let Some(id) = self.txn_of_branch(branch) else {
            // no transaction (e.g. a retransmitted 2xx after it ended): stateless (§16.7)
            self.forward_response_statelessly(flow, &msg);
            return;
        };
        // only the host the request went to may answer it: a stranger quoting one of our
        // branches must not end or answer someone else's transaction
        if let Some(txn) = self.txns.get(&id) {
            let from_next_hop = flow.remote.ip() == txn.downstream.remote.ip()
                || (self.is_pbx(&flow) && self.is_pbx(&txn.downstream));
            if !from_next_hop {
                warn!(source = %flow.remote, expected = %txn.downstream.remote, "response from a host the request was not sent to dropped");
                return;
            }
        }
        if cseq_method == Some(Method::Cancel) {
            return; // the answer to our CANCEL: hop by hop, absorbed
        }
        let Some(txn) = self.txns.get_mut(&id) else {
            return;
        };
        if cseq_method != Some(txn.method) {
            return;
        }
        let invite = txn.is_invite();
        match status {
            100..=199 => {
                if txn.client_state == ClientState::Calling {
                    txn.client_state = ClientState::Proceeding;
                }
                if invite {
                    txn.generations[TimerKind::Retransmit.index()] += 1;
                    if txn.cancel_pending && !txn.cancelled {
                        self.cancel_downstream(id);
                    }
                    self.schedule(id, TimerKind::InviteRinging, now + TIMER_C);
                    // the next hop is alive: timer B no longer applies, timer C does
                    if let Some(txn) = self.txns.get_mut(&id) {
                        txn.generations[TimerKind::Timeout.index()] += 1;
                    }
                }
                if status == 100 {
                    return; // hop by hop
                }
                self.relay_response(now, id, &msg, false);
            }
            200..=299 => {
                if invite {
                    if matches!(txn.client_state, ClientState::Accepted) {
                        // a retransmitted 2xx: forward again (the UAC's ACK stops it)
                        self.relay_response(now, id, &msg, false);
                        return;
                    }
                    txn.client_state = ClientState::Accepted;
                    txn.server_state = ServerState::Accepted;
                } else {
                    if txn.client_state == ClientState::Completed {
                        return;
                    }
                    txn.client_state = ClientState::Completed;
                    txn.server_state = ServerState::Completed;
                }
                txn.request = None;
                if invite {
                    // RFC 6026 §8.7: in Accepted, retransmissions of the INVITE are
                    // absorbed (the UAS retransmits its 2xx itself), so nothing is kept
                    // to answer them with
                    txn.last_response = None;
                }
                self.stop_client_timers(id);
                self.schedule(id, TimerKind::Expire, now + TIMEOUT);
                self.relay_response(now, id, &msg, !invite);
            }
            _ => {
                if txn.client_state == ClientState::Completed {
                    // a retransmitted final response: re-send our ACK, forward nothing
                    if let Some(ack) = txn.ack.clone() {
                        let to = txn.downstream;
                        self.send(to, ack);
                    }
                    return;
                }
                txn.client_state = ClientState::Completed;
                if invite {
                    if let Some(req) = txn.forwarded() {
                        let ack = ack_for(&req, &msg);
                        txn.ack = Some(ack.clone());
                        let to = txn.downstream;
                        self.out.push_back(Transmit {
                            flow: to,
                            bytes: ack,
                        });
                    }
                }
                if let Some(txn) = self.txns.get_mut(&id) {
                    txn.request = None;
                    txn.server_state = ServerState::Completed;
                }
                self.stop_client_timers(id);
                self.schedule(id, TimerKind::Expire, now + TIMEOUT);
                self.relay_response(now, id, &msg, true);
                if invite {
                    if let Some(txn) = self.txns.get(&id) {
                        if txn.upstream.transport == Transport::Udp {
                            self.schedule(id, TimerKind::ResponseRetransmit, now + T1);
                        }
                    }
                }
            }
        }
    }

    fn stop_client_timers(&mut self, id: u64) {
        if let Some(txn) = self.txns.get_mut(&id) {
            for kind in [
                TimerKind::Retransmit,
                TimerKind::Timeout,
                TimerKind::InviteRinging,
            ] {
                txn.generations[kind.index()] += 1;
            }
        }
    }

    /// Forwards a response upstream (§16.7): our Via popped; REGISTER answers have
    /// their aliased Contacts turned back into the phone's own and the bindings noted.
    fn relay_response(&mut self, now: Instant, id: u64, msg: &Message, remember: bool) {
        let Some(txn) = self.txns.get(&id) else {
            return;
        };
        let upstream = txn.upstream;
        let downstream = txn.downstream;
        let method = txn.method;
        let is_register = method == Method::Register;
        let mut edit = Editor::new(msg);
        if edit.pop_via().is_err() {
            return;
        }
        // BLF: the PBX's answer to a phone's SUBSCRIBE, the phone's answer to a PBX NOTIFY
        // (its CSeq mapped back to the PBX's)
        let blf = match method {
            Method::Subscribe if self.is_pbx(&downstream) => {
                self.blf.on_message(now, Direction::ToPhone, &upstream, msg)
            }
            Method::Notify if self.is_pbx(&upstream) => {
                self.blf
                    .on_message(now, Direction::FromPhone, &downstream, msg)
            }
            _ => Forward::Pass,
        };
        match blf {
            Forward::Pass => {}
            Forward::Rewrite(rewrite) => {
                if rewrite.apply(&mut edit).is_err() {
                    return;
                }
            }
            Forward::Absorb => return,
        }
        if is_register && (200..300).contains(&msg.status().unwrap_or(0)) && !self.config.pbx_path {
            self.dealias_register_contacts(now, msg, &mut edit);
        }
        let bytes = edit.finish();
        if remember {
            if let Some(txn) = self.txns.get_mut(&id) {
                txn.last_response = Some(bytes.clone());
            }
        }
        if is_register {
            // the observer sees the answer as the phone does: its own Contacts
            if let Ok(relayed) = Message::parse(bytes.clone()) {
                self.observe_response(now, id, &relayed);
            }
        } else {
            self.observe_response(now, id, msg);
        }
        self.stats.responses_forwarded += 1;
        self.send(upstream, bytes);
    }

    /// Hands a response of transaction `id` (relayed or generated) to the observer.
    fn observe_response(&mut self, now: Instant, id: u64, response: &Message) {
        let Some(txn) = self.txns.get(&id) else {
            return;
        };
        let (direction, phone) = if self.is_pbx(&txn.upstream) {
            (Direction::FromPhone, txn.downstream)
        } else {
            (Direction::ToPhone, txn.upstream)
        };
        self.observer
            .on_message(now, direction, PhoneAddr::from(&phone), response);
    }

    fn dealias_register_contacts(&mut self, now: Instant, msg: &Message, edit: &mut Editor<'_>) {
        let header_expires = msg.expires().and_then(Result::ok).unwrap_or(3600);
        let mut updates = Vec::new();
        for (index, contact) in msg.contacts().enumerate() {
            let Ok(ContactValue::Address(addr)) = contact else {
                continue;
            };
            let Some(token) = addr.uri().params().value(ALIAS_PARAM).and_then(parse_token) else {
                continue;
            };
            let expires = addr.expires().unwrap_or(header_expires);
            updates.push((index, token, expires));
        }
        for (index, token, expires) in updates {
            let original = self
                .aliases
                .resolve(now, token)
                .and_then(|e| e.contact.clone());
            self.aliases.set_registered(now, token, expires);
            if let Some(original) = original {
                let _ = edit.set_contact_uri(index, &original);
            }
        }
    }

    fn forward_response_statelessly(&mut self, flow: Flow, msg: &Message) {
        let Some(Ok(next)) = msg.vias().nth(1) else {
            return;
        };
        let transport = Transport::from_token(next.transport()).unwrap_or(Transport::Udp);
        let ip = next
            .received()
            .and_then(host_ip)
            .or_else(|| host_ip(next.host()));
        let Some(ip) = ip else {
            debug!(source = %flow.remote, "stateless response: next Via has no address");
            return;
        };
        if !self.is_pbx_ip(ip) && !self.is_allowed_phone(ip) {
            return; // never relay to anywhere else
        }
        let port = next
            .rport()
            .flatten()
            .or(next.port())
            .unwrap_or(transport.default_port());
        let remote = SocketAddr::new(ip, port);
        let listener = self.listener_for(transport, remote);
        let mut edit = Editor::new(msg);
        if edit.pop_via().is_err() {
            return;
        }
        let bytes = edit.finish();
        self.stats.responses_forwarded += 1;
        self.send(
            Flow {
                transport,
                remote,
                local: listener.local,
                conn: None,
            },
            bytes,
        );
    }

    // ------------------------------------------------------------------ timers

    fn schedule(&mut self, id: u64, kind: TimerKind, at: Instant) {
        let Some(txn) = self.txns.get_mut(&id) else {
            return;
        };
        let generation = &mut txn.generations[kind.index()];
        *generation = generation.wrapping_add(1);
        self.timers.push(Deadline {
            at,
            txn: id,
            kind,
            generation: *generation,
        });
    }

    /// Fires every deadline due at `now`: retransmissions, timeouts, expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(deadline) = self.timers.pop_due(now) {
            let current = self
                .txns
                .get(&deadline.txn)
                .map(|t| t.generations[deadline.kind.index()]);
            if current != Some(deadline.generation) {
                continue;
            }
            self.fire(now, deadline.txn, deadline.kind);
        }
        self.observer.handle_timeout(now);
        self.blf.handle_timeout(now);
        self.drain_blf(now);
        if self.next_sweep.is_some_and(|at| at <= now) {
            self.aliases.expire(now);
            self.limiter.forget_idle(now);
            self.next_sweep = if self.txns.is_empty() && self.aliases.is_empty() {
                None
            } else {
                Some(now + SWEEP_INTERVAL)
            };
        }
    }

    fn fire(&mut self, now: Instant, id: u64, kind: TimerKind) {
        let Some(txn) = self.txns.get_mut(&id) else {
            return;
        };
        match kind {
            TimerKind::Retransmit => {
                let waiting = match txn.client_state {
                    ClientState::Calling => true,
                    ClientState::Proceeding => !txn.is_invite(),
                    _ => false,
                };
                let Some(request) = txn.request.as_ref().filter(|_| waiting) else {
                    return;
                };
                let bytes = request.clone();
                let to = txn.downstream;
                let next = if txn.is_invite() {
                    txn.retransmit_interval * 2
                } else if txn.client_state == ClientState::Proceeding {
                    T2
                } else {
                    (txn.retransmit_interval * 2).min(T2)
                };
                txn.retransmit_interval = next;
                self.stats.retransmissions += 1;
                self.send(to, bytes);
                self.schedule(id, TimerKind::Retransmit, now + next);
            }
            TimerKind::Timeout | TimerKind::InviteRinging => {
                if matches!(
                    txn.client_state,
                    ClientState::Completed | ClientState::Accepted
                ) {
                    return;
                }
                let ringing = kind == TimerKind::InviteRinging;
                if ringing && !txn.cancelled {
                    // timer C: cancel the branch; answer 408 if nothing comes back
                    self.cancel_downstream(id);
                    self.schedule(id, TimerKind::Timeout, now + TIMEOUT);
                    return;
                }
                self.give_up(now, id, 408, "Request Timeout");
            }
            TimerKind::ResponseRetransmit => {
                if txn.server_state != ServerState::Completed {
                    return;
                }
                let Some(last) = txn.last_response.clone() else {
                    return;
                };
                let upstream = txn.upstream;
                let next = (txn.response_interval * 2).min(T2);
                txn.response_interval = next;
                self.stats.retransmissions += 1;
                self.send(upstream, last);
                self.schedule(id, TimerKind::ResponseRetransmit, now + next);
            }
            TimerKind::Expire => self.remove(id),
        }
    }

    /// Ends the client side without a final response from the next hop and, if the
    /// sender is still waiting, answers it (408 on timeout, 503 when the next hop could
    /// not be reached, RFC 3261 §16.7 step 5 / §18.4).
    fn give_up(&mut self, now: Instant, id: u64, code: u16, reason: &str) {
        let Some(txn) = self.txns.get_mut(&id) else {
            return;
        };
        txn.client_state = ClientState::Terminated;
        let upstream = txn.upstream;
        let request = txn.forwarded();
        txn.request = None;
        let waiting = txn.server_state == ServerState::Proceeding;
        self.stop_client_timers(id);
        if waiting {
            warn!(txn = id, code, "no final response from the next hop");
            // the original request is gone; the forwarded one has our Via on top:
            // answer from it with our Via popped
            if let Some(req) = request {
                if let Some(response) = local_response(&req, code, reason, &self.tag_for(&req)) {
                    if let Some(txn) = self.txns.get_mut(&id) {
                        txn.server_state = ServerState::Completed;
                        txn.last_response = Some(response.clone());
                    }
                    self.stats.responses_generated += 1;
                    if let Ok(generated) = Message::parse(response.clone()) {
                        self.observe_response(now, id, &generated);
                    }
                    self.send(upstream, response);
                    if self
                        .txns
                        .get(&id)
                        .is_some_and(|t| t.is_invite() && upstream.transport == Transport::Udp)
                    {
                        self.schedule(id, TimerKind::ResponseRetransmit, now + T1);
                    }
                }
            }
        }
        self.schedule(id, TimerKind::Expire, now + TIMEOUT);
    }

    /// The next hop could not be reached over `transport` at `remote` (connection
    /// refused, TLS verification failed). When it is one of the PBX's targets and the
    /// PBX target in use is now another (the caller failed over with
    /// [`Proxy::set_pbx`] first), each request that went there and has had no response
    /// is sent again to the target in use (RFC 3263 §4.3); every other request waiting
    /// on `remote` is answered 503.
    pub fn transport_error(&mut self, now: Instant, transport: Transport, remote: SocketAddr) {
        let next = self.pbx_flow();
        let fail_over =
            self.is_pbx_target(remote) && (next.transport, next.remote) != (transport, remote);
        let failed: Vec<u64> = self
            .txns
            .values()
            .filter(|t| {
                t.downstream.transport == transport
                    && t.downstream.remote == remote
                    && matches!(
                        t.client_state,
                        ClientState::Calling | ClientState::Proceeding
                    )
            })
            .map(|t| t.id)
            .collect();
        for id in failed {
            if fail_over && self.fail_over(now, id, next) {
                continue;
            }
            self.give_up(now, id, 503, "Service Unavailable");
        }
    }

    /// Whether `addr` is one of the PBX's resolved addresses.
    fn is_pbx_target(&self, addr: SocketAddr) -> bool {
        self.config.pbx == addr || self.pbx_addresses.contains(&addr)
    }

    /// How many targets the PBX has: one per resolved address (an address reached over
    /// two transports counts twice), at least the one in use.
    fn pbx_target_count(&self) -> usize {
        let listed = self.pbx_addresses.len();
        if self.pbx_addresses.contains(&self.config.pbx) {
            listed
        } else {
            listed + 1
        }
    }

    /// Sends transaction `id`'s request, whose PBX target could not be reached, to the
    /// PBX target `to` instead (RFC 3263 §4.3): as a new client transaction, under a
    /// new id and so a new branch, with its Via (and, when the listener facing the PBX
    /// changes, its Record-Route, Path or aliased Contacts) rewritten and its timers
    /// started afresh. A CANCEL still waiting for a provisional follows it there.
    /// False, leaving the transaction alone, when it may not: a response came already
    /// (the target took the request), the sender has its answer, or the request has
    /// been tried on as many targets as the PBX has.
    fn fail_over(&mut self, now: Instant, id: u64, to: Flow) -> bool {
        let limit = self.pbx_target_count();
        let Some(txn) = self.txns.get(&id) else {
            return false;
        };
        if txn.client_state != ClientState::Calling
            || txn.server_state != ServerState::Proceeding
            || usize::from(txn.failovers) + 1 >= limit
            || txn.failovers == u8::MAX
        {
            return false;
        }
        let (upstream, from) = (txn.upstream, txn.downstream);
        let Some(request) = txn.forwarded() else {
            return false;
        };
        let new_id = self.next_id;
        let branch = self.new_branch(new_id);
        let Some(bytes) = self.retarget(&request, upstream, from, to, &branch) else {
            return false;
        };
        let Some(mut txn) = self.txns.remove(&id) else {
            return false;
        };
        self.next_id += 1;
        // the old id's deadlines find no transaction and are ignored (a response to the
        // old branch finds none either: the target never had the request)
        txn.id = new_id;
        txn.downstream = to;
        txn.request = Some(bytes.clone());
        txn.retransmit_interval = T1;
        txn.failovers = txn.failovers.saturating_add(1);
        self.by_server_key.insert(txn.server_key.clone(), new_id);
        self.txns.insert(new_id, txn);
        warn!(
            failed = %from.remote,
            pbx = %to.remote,
            transport = %to.transport,
            "PBX target unreachable: request sent to the next"
        );
        if to.transport == Transport::Udp {
            self.schedule(new_id, TimerKind::Retransmit, now + T1);
        }
        self.schedule(new_id, TimerKind::Timeout, now + TIMEOUT);
        self.stats.requests_forwarded += 1;
        self.send(to, bytes);
        true
    }

    /// The forwarded `request` (sent from `upstream` towards `from`) rewritten for the
    /// next hop `to`: our Via replaced by one naming `to`'s transport and `branch`;
    /// when the listener facing the next hop changes, our Record-Route, Path and
    /// aliased Contacts name the new one.
    fn retarget(
        &self,
        request: &Message,
        upstream: Flow,
        from: Flow,
        to: Flow,
        branch: &str,
    ) -> Option<Bytes> {
        let old_out = self.listener_of(&from);
        let new_out = self.listener_of(&to);
        let mut edit = Editor::new(request);
        edit.pop_via().ok()?;
        if old_out != new_out {
            // our Record-Route is on top: one value, or two marked r2 (see
            // add_record_route), with the phone flow's token in the user part
            let own_rr = request
                .record_routes()
                .next()
                .and_then(Result::ok)
                .filter(|rr| self.is_own_uri(rr.uri()))
                .and_then(|rr| {
                    let token = rr.uri().user().and_then(parse_token)?;
                    let count = if rr.uri().params().contains("r2") {
                        2
                    } else {
                        1
                    };
                    Some((token, count))
                });
            if let Some((token, count)) = own_rr {
                edit.pop_values(HeaderName::RecordRoute, count).ok()?;
                let inbound = self.listener_of(&upstream);
                self.add_record_route(&mut edit, &token_text(token), inbound, new_out);
            }
            if request.method() == Some(Method::Register) {
                let own_path = request
                    .paths()
                    .next()
                    .and_then(Result::ok)
                    .filter(|p| self.is_own_uri(p.uri()))
                    .and_then(|p| p.uri().user().and_then(parse_token));
                if let Some(token) = own_path {
                    edit.pop_values(HeaderName::Path, 1).ok()?;
                    edit.prepend_path(path_value(token, new_out).as_bytes());
                }
                for (index, contact) in request.contacts().enumerate() {
                    let Ok(ContactValue::Address(address)) = contact else {
                        continue;
                    };
                    let uri = address.uri();
                    let alias = uri.params().value(ALIAS_PARAM).and_then(parse_token);
                    if let Some(token) = alias.filter(|_| self.is_own_uri(uri)) {
                        let alias = alias_uri(uri.user(), new_out, token);
                        edit.set_contact_uri(index, alias.as_bytes()).ok()?;
                    }
                }
            }
        }
        edit.push_via(self.via_value(to.transport, new_out, branch).as_bytes());
        Some(edit.finish())
    }

    fn remove(&mut self, id: u64) {
        if let Some(txn) = self.txns.remove(&id) {
            self.by_server_key.remove(&txn.server_key);
        }
    }
}

/// A response the proxy generates for a forwarded request whose next hop never
/// answered: built from the forwarded copy with our Via removed.
fn local_response(forwarded: &Message, code: u16, reason: &str, tag: &str) -> Option<Bytes> {
    let mut edit = Editor::new(forwarded);
    edit.pop_via().ok()?;
    let original = Message::parse(edit.finish()).ok()?;
    Some(
        ResponseBuilder::new(&original, code, reason)
            .to_tag(tag)
            .build(),
    )
}

/// An odd multiplier (2^64 / golden ratio) and its inverse modulo 2^64.
const SCRAMBLE: u64 = 0x9E37_79B9_7F4A_7C15;
const UNSCRAMBLE: u64 = {
    // Newton's iteration for the inverse of an odd number modulo 2^64
    let mut x = SCRAMBLE;
    let mut i = 0;
    while i < 6 {
        x = x.wrapping_mul(2u64.wrapping_sub(SCRAMBLE.wrapping_mul(x)));
        i += 1;
    }
    x
};

fn scramble(id: u64, seed: u64) -> u64 {
    (id ^ seed).wrapping_mul(SCRAMBLE)
}

fn unscramble(value: u64, seed: u64) -> u64 {
    value.wrapping_mul(UNSCRAMBLE) ^ seed
}

/// Hasher for the transaction table, whose keys are this proxy's own sequential ids
/// (not attacker-chosen): a multiply spreads them, no SipHash needed.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(SCRAMBLE);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(SCRAMBLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_unscramble_to_their_transaction() {
        assert_eq!(SCRAMBLE.wrapping_mul(UNSCRAMBLE), 1);
        for seed in [0, 7, u64::MAX] {
            for id in [0, 1, 2, 12345, u64::MAX] {
                assert_eq!(unscramble(scramble(id, seed), seed), id);
            }
        }
    }
}
