//! The demo's simulated desk phones: SIP user agents on UDP that use the proxy as their
//! outbound proxy, the way a desk phone configured with the PBX as registrar and
//! presence-proxy as outbound proxy does.
//!
//! This module owns:
//! - `ua` (crate-internal): the SIP user-agent plumbing the phones and the PBX stand-in
//!   ([`super::pbx`]) share, sans-IO: identifiers, client transactions with RFC 3261
//!   retransmission and timeout (Timers A/B, E/F, the ACK of a non-2xx), server
//!   transactions that absorb retransmitted requests and repeat the last answer (and
//!   a 2xx to INVITE until its ACK), dialogs (route sets, CSeq, strict and loose
//!   routing) and message building on top of [`crate::sip`];
//! - `PhoneAgent` (crate-internal): one phone, sans-IO: it registers and keeps the
//!   registration fresh, subscribes `Event: dialog` to the extensions it watches and
//!   keeps a [`Lamp`] per extension from the dialog-info documents it is sent (read
//!   with [`crate::blf`]), places calls (extensions, external numbers, star codes),
//!   answers incoming ones after a ring time (or `486` when busy), hangs up;
//! - [`Phone`] / [`PhoneHandle`]: the thin tokio task around one agent, its commands,
//!   and its [`PhoneSnapshot`] published on a `watch` channel at every change.
//!
//! Every request a phone sends goes to the outbound proxy; every answer goes back to
//! where its request came from (the proxy). Nothing here sends anywhere else.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::blf::{DIALOG_INFO_CONTENT_TYPE, DialogInfo, DialogInfoState, DialogState};
use crate::sip::build::cancel_for;
use crate::sip::{HeaderName, Message, Method};

use super::ua::{
    self, ClientTxns, Datagram, Dialog, Ids, Incoming, ServerTxns, TIMEOUT, response, text,
};

// ===================================================================== public types

/// What a BLF lamp shows for a watched extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lamp {
    /// Nothing known yet (no NOTIFY), or the subscription ended.
    Unknown,
    /// No call.
    Idle,
    /// A call is ringing (an `early` dialog).
    Ringing,
    /// In a call, or setting one up (`confirmed`, `trying`, `proceeding`); also a
    /// Teams-busy dialog the proxy injected.
    Busy,
}

impl Lamp {
    /// The lamp for a full dialog-info view: any `confirmed` dialog is Busy, else any
    /// `early` one Ringing, else any `trying`/`proceeding` one Busy, else Idle.
    pub fn from_view(view: &DialogInfo) -> Self {
        let has = |state: DialogState| view.dialogs.iter().any(|d| d.state == state);
        if has(DialogState::Confirmed) {
            Self::Busy
        } else if has(DialogState::Early) {
            Self::Ringing
        } else if has(DialogState::Trying) || has(DialogState::Proceeding) {
            Self::Busy
        } else {
            Self::Idle
        }
    }
}

/// Who placed a call, seen from the phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallDirection {
    /// This phone dialled.
    Outgoing,
    /// This phone was called.
    Incoming,
}

/// The phone's call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CallView {
    /// No call.
    Idle,
    /// Dialling out (until answered), or ringing (an incoming call not answered yet).
    Ringing {
        /// The other party (the number dialled, or the caller's user part).
        peer: String,
        /// Who placed the call.
        direction: CallDirection,
    },
    /// In a call.
    Connected {
        /// The other party.
        peer: String,
        /// Who placed the call.
        direction: CallDirection,
    },
}

/// Everything a phone shows, published at every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhoneSnapshot {
    /// The phone's extension.
    pub ext: String,
    /// The phone's own UDP address.
    pub address: SocketAddr,
    /// Whether the registrar accepted the phone's registration (and it has not expired).
    pub registered: bool,
    /// The call, if any.
    pub call: CallView,
    /// A lamp per watched extension.
    pub lamps: BTreeMap<String, Lamp>,
    /// When the last NOTIFY came, in milliseconds since the Unix epoch.
    pub last_notify_at: Option<u64>,
    /// How many NOTIFYs came so far (retransmissions not counted).
    pub notifies_received: u64,
    /// The final status of the last call this phone placed (200, 486, 487, ...;
    /// 408 when nothing answered).
    pub last_final_status: Option<u16>,
}

/// Why a phone could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// The phone's task has stopped.
    #[error("phone {0} has stopped")]
    Stopped(String),
    /// The phone already has a call.
    #[error("the phone already has a call")]
    Busy,
    /// There is no call to hang up.
    #[error("the phone has no call")]
    NoCall,
    /// There is no incoming call ringing.
    #[error("no incoming call is ringing")]
    NothingToAnswer,
    /// The number cannot be dialled (empty, or characters a dial pad has not).
    #[error("cannot dial {0:?}")]
    InvalidTarget(String),
    /// What was awaited did not happen in time.
    #[error("the phone did not get there within {0:?}")]
    Timeout(Duration),
}

/// How a simulated phone is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneOptions {
    /// The outbound proxy (presence-proxy's UDP listener): every request goes there.
    pub outbound_proxy: SocketAddr,
    /// Where the phone binds (default `127.0.0.1:0`, a free loopback port).
    pub bind: SocketAddr,
    /// The PBX domain used in URIs (`sip:201@DOMAIN`), default `pbx.example.com`.
    pub domain: String,
    /// The User-Agent header (the proxy picks its BLF rendering profile by it).
    pub user_agent: String,
    /// How long an incoming call rings before the phone answers it.
    pub ring_time: Duration,
    /// Whether incoming calls are answered after [`Self::ring_time`]; otherwise they
    /// ring until [`PhoneHandle::answer`], [`PhoneHandle::hang_up`] or the caller gives up.
    pub auto_answer: bool,
    /// The registration lifetime asked for, in seconds.
    pub register_expires: u32,
    /// The subscription lifetime asked for, in seconds.
    pub subscribe_expires: u32,
    /// Seed for tags, branches and Call-IDs (`None`: random).
    pub seed: Option<u64>,
}

impl PhoneOptions {
    /// The defaults, with `outbound_proxy` as the outbound proxy.
    pub fn new(outbound_proxy: SocketAddr) -> Self {
        Self {
            outbound_proxy,
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            domain: "pbx.example.com".to_owned(),
            user_agent: "presence-proxy demo phone".to_owned(),
            ring_time: Duration::from_secs(2),
            auto_answer: true,
            register_expires: 600,
            subscribe_expires: 600,
            seed: None,
        }
    }
}

// ===================================================================== the agent

/// How long a failed registration or subscription waits before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Who sent a request of the phone (what its answer is for).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Register {
        expires: u32,
    },
    Subscribe {
        ext: String,
        generation: u64,
        expires: u32,
    },
    Invite {
        call_id: String,
    },
    Bye,
    Cancel,
}

#[derive(Debug)]
struct Registration {
    call_id: String,
    tag: String,
    cseq: u32,
    registered: bool,
    expires_at: Option<Instant>,
    /// The next REGISTER (refresh or retry).
    next_at: Option<Instant>,
    in_flight: bool,
}

/// One watched extension: its `Event: dialog` subscription and lamp.
#[derive(Debug)]
struct Watch {
    call_id: String,
    local_tag: String,
    cseq: u32,
    generation: u64,
    dialog: Option<Dialog>,
    doc: DialogInfoState,
    lamp: Lamp,
    /// The next SUBSCRIBE (refresh or retry).
    next_at: Option<Instant>,
    in_flight: bool,
    removing: bool,
}

#[derive(Debug)]
enum CallPhase {
    /// Our INVITE is out.
    Calling { invite: Message, provisional: bool },
    /// An INVITE came; 180 sent.
    Offered {
        invite: Message,
        answer_at: Option<Instant>,
    },
    /// Answered (2xx sent or received).
    Connected { dialog: Dialog },
}

#[derive(Debug)]
struct Call {
    direction: CallDirection,
    peer: String,
    call_id: String,
    local_tag: String,
    phase: CallPhase,
}

/// An outgoing INVITE the user hung up on before it was answered: a CANCEL once it has
/// a provisional answer, an ACK and a BYE if it is answered anyway.
#[derive(Debug)]
struct Abandoned {
    invite: Message,
    cancel_sent: bool,
    until: Instant,
}

/// One simulated phone, sans-IO: datagrams and time in, datagrams out.
#[derive(Debug)]
pub(crate) struct PhoneAgent {
    ext: String,
    domain: String,
    local: SocketAddr,
    proxy: SocketAddr,
    user_agent: String,
    ring_time: Duration,
    auto_answer: bool,
    register_expires: u32,
    subscribe_expires: u32,
    aor: String,
    contact: String,
    ids: Ids,
    client: ClientTxns<Owner>,
    server: ServerTxns,
    out: Vec<Datagram>,
    reg: Registration,
    watches: BTreeMap<String, Watch>,
    call: Option<Call>,
    abandoned: HashMap<String, Abandoned>,
    last_final_status: Option<u16>,
    last_notify: Option<Instant>,
    notifies: u64,
    generations: u64,
    sessions: u64,
}

/// Whether `target` is something a dial pad can dial (digits, `*`, `#`, `+`, and
/// letters for named users).
fn valid_target(target: &str) -> bool {
    !target.is_empty()
        && target.len() <= 64
        && target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '#' | '+' | '.' | '-' | '_'))
}

/// The user part of a dialled target as it goes into a URI (`#` escaped).
fn escape_user(target: &str) -> String {
    target.replace('#', "%23")
}

impl PhoneAgent {
    /// A phone for `ext` on the socket bound at `local`.
    pub(crate) fn new(ext: &str, local: SocketAddr, options: &PhoneOptions, seed: u64) -> Self {
        let local = ua::advertised(local);
        let mut ids = Ids::new(seed);
        let reg = Registration {
            call_id: ids.call_id(local.ip()),
            tag: ids.tag(),
            cseq: 0,
            registered: false,
            expires_at: None,
            next_at: None,
            in_flight: false,
        };
        Self {
            ext: ext.to_owned(),
            domain: options.domain.clone(),
            local,
            proxy: options.outbound_proxy,
            user_agent: options.user_agent.clone(),
            ring_time: options.ring_time,
            auto_answer: options.auto_answer,
            register_expires: options.register_expires,
            subscribe_expires: options.subscribe_expires,
            aor: format!("sip:{ext}@{}", options.domain),
            contact: format!("sip:{ext}@{}", ua::host_port(local)),
            ids,
            client: ClientTxns::default(),
            server: ServerTxns::default(),
            out: Vec::new(),
            reg,
            watches: BTreeMap::new(),
            call: None,
            abandoned: HashMap::new(),
            last_final_status: None,
            last_notify: None,
            notifies: 0,
            generations: 0,
            sessions: seed % 1_000_000,
        }
    }

    /// Every datagram to send, in order.
    pub(crate) fn drain_transmits(&mut self) -> Vec<Datagram> {
        std::mem::take(&mut self.out)
    }

    /// The earliest time [`Self::handle_timeout`] has something to do.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let watches = self.watches.values().filter_map(|w| w.next_at);
        let call = match &self.call {
            Some(Call {
                phase: CallPhase::Offered { answer_at, .. },
                ..
            }) => *answer_at,
            _ => None,
        };
        [
            self.client.poll_timeout(),
            self.server.poll_timeout(),
            self.reg.next_at,
            self.reg.expires_at.filter(|_| self.reg.registered),
            call,
        ]
        .into_iter()
        .flatten()
        .chain(watches)
        .chain(self.abandoned.values().map(|a| a.until))
        .min()
    }

    fn via(&mut self) -> String {
        let branch = self.ids.branch();
        ua::via(self.local, &branch)
    }

    fn send_request(&mut self, now: Instant, owner: Owner, bytes: Bytes) {
        let to = self.proxy;
        let _ = self.client.send(now, owner, to, bytes, &mut self.out);
    }

    fn send_stateless(&mut self, bytes: Bytes) {
        self.out.push(Datagram {
            to: self.proxy,
            bytes,
        });
    }

    fn reply(&mut self, now: Instant, req: &Message, bytes: Bytes) {
        self.server.respond(now, req, bytes, &mut self.out);
    }

    fn next_sdp(&mut self) -> Vec<u8> {
        self.sessions += 1;
        ua::sdp(self.local, self.sessions)
    }

    // ---------------------------------------------------------- registration

    /// Starts: the first REGISTER.
    pub(crate) fn start(&mut self, now: Instant) {
        self.register(now, self.register_expires);
    }

    fn register(&mut self, now: Instant, expires: u32) {
        self.reg.cseq += 1;
        self.reg.in_flight = true;
        self.reg.next_at = None;
        let via = self.via();
        let uri = format!("sip:{}", self.domain);
        let from = format!("<{}>;tag={}", self.aor, self.reg.tag);
        let to = format!("<{}>", self.aor);
        let expires_text = expires.to_string();
        let headers = [
            ("Expires", expires_text.as_str()),
            ("User-Agent", self.user_agent.as_str()),
            ("Allow", "INVITE, ACK, CANCEL, BYE, NOTIFY, OPTIONS"),
        ];
        let bytes = ua::NewRequest {
            method: "REGISTER",
            uri: &uri,
            via: &via,
            from: &from,
            to: &to,
            call_id: &self.reg.call_id,
            cseq: self.reg.cseq,
            contact: Some(&self.contact),
            headers: &headers,
            body: None,
        }
        .build();
        self.send_request(now, Owner::Register { expires }, bytes);
    }

    fn on_register_answer(&mut self, now: Instant, expires: u32, msg: Option<&Message>) {
        self.reg.in_flight = false;
        let status = msg.and_then(Message::status).unwrap_or(408);
        match status {
            200..=299 => {
                if expires == 0 {
                    self.reg.registered = false;
                    self.reg.expires_at = None;
                    return;
                }
                let granted = msg
                    .and_then(|m| {
                        ua::contacts_with_expires(m)
                            .into_iter()
                            .find(|(uri, _)| *uri == self.contact)
                            .and_then(|(_, e)| e)
                            .or_else(|| ua::expires(m))
                    })
                    .unwrap_or(expires);
                if granted == 0 {
                    self.reg.registered = false;
                    self.reg.expires_at = None;
                    self.reg.next_at = Some(now + RETRY_AFTER);
                    return;
                }
                let lifetime = Duration::from_secs(u64::from(granted));
                self.reg.registered = true;
                self.reg.expires_at = Some(now + lifetime);
                self.reg.next_at = Some(now + (lifetime / 2).max(Duration::from_secs(1)));
                debug!(ext = %self.ext, granted, "registered");
            }
            423 => {
                let min = msg
                    .and_then(|m| m.header(HeaderName::MinExpires))
                    .and_then(|v| text(v).trim().parse::<u32>().ok())
                    .unwrap_or(expires.saturating_mul(2).max(60));
                self.register_expires = min;
                self.register(now, min);
            }
            _ => {
                if expires != 0 {
                    warn!(ext = %self.ext, status, "registration refused");
                    self.reg.registered = false;
                    self.reg.expires_at = None;
                    self.reg.next_at = Some(now + RETRY_AFTER);
                }
            }
        }
    }

    // ---------------------------------------------------------- subscriptions

    /// Subscribes to the dialog state of each extension not watched yet.
    pub(crate) fn watch(&mut self, now: Instant, exts: &[String]) {
        for ext in exts {
            if ext.is_empty() || !valid_target(ext) {
                continue;
            }
            match self.watches.get_mut(ext) {
                Some(w) if w.removing => {
                    // watched again before the unsubscribe finished: a new subscription
                    self.watches.remove(ext);
                }
                Some(_) => continue,
                None => {}
            }
            self.generations += 1;
            let watch = Watch {
                call_id: self.ids.call_id(self.local.ip()),
                local_tag: self.ids.tag(),
                cseq: 0,
                generation: self.generations,
                dialog: None,
                doc: DialogInfoState::new(),
                lamp: Lamp::Unknown,
                next_at: None,
                in_flight: false,
                removing: false,
            };
            self.watches.insert(ext.clone(), watch);
            self.subscribe(now, ext, self.subscribe_expires);
        }
    }

    /// Ends the subscriptions to these extensions.
    pub(crate) fn unwatch(&mut self, now: Instant, exts: &[String]) {
        for ext in exts {
            let Some(watch) = self.watches.get_mut(ext) else {
                continue;
            };
            watch.removing = true;
            watch.next_at = None;
            if watch.dialog.is_some() {
                self.subscribe(now, ext, 0);
            } else {
                self.watches.remove(ext);
            }
        }
    }

    fn subscribe(&mut self, now: Instant, ext: &str, expires: u32) {
        let via = self.via();
        let contact = self.contact.clone();
        let user_agent = self.user_agent.clone();
        let aor = self.aor.clone();
        let domain = self.domain.clone();
        let Some(watch) = self.watches.get_mut(ext) else {
            return;
        };
        watch.in_flight = true;
        watch.next_at = None;
        let expires_text = expires.to_string();
        let bytes = match &mut watch.dialog {
            Some(dialog) => {
                let headers: [(&str, &[u8]); 4] = [
                    ("Event", b"dialog"),
                    ("Accept", DIALOG_INFO_CONTENT_TYPE.as_bytes()),
                    ("Expires", expires_text.as_bytes()),
                    ("User-Agent", user_agent.as_bytes()),
                ];
                let bytes = dialog.request("SUBSCRIBE", None, &via, Some(&contact), &headers, None);
                watch.cseq = dialog.local_cseq;
                bytes
            }
            None => {
                watch.cseq += 1;
                let uri = format!("sip:{}@{domain}", escape_user(ext));
                let from = format!("<{aor}>;tag={}", watch.local_tag);
                let to = format!("<{uri}>");
                let headers = [
                    ("Event", "dialog"),
                    ("Accept", DIALOG_INFO_CONTENT_TYPE),
                    ("Expires", expires_text.as_str()),
                    ("User-Agent", user_agent.as_str()),
                ];
                ua::NewRequest {
                    method: "SUBSCRIBE",
                    uri: &uri,
                    via: &via,
                    from: &from,
                    to: &to,
                    call_id: &watch.call_id,
                    cseq: watch.cseq,
                    contact: Some(&contact),
                    headers: &headers,
                    body: None,
                }
                .build()
            }
        };
        let owner = Owner::Subscribe {
            ext: ext.to_owned(),
            generation: watch.generation,
            expires,
        };
        self.send_request(now, owner, bytes);
    }

    /// Starts the subscription of `ext` again from scratch (a new dialog).
    fn resubscribe(&mut self, ext: &str, at: Instant) {
        self.generations += 1;
        let generation = self.generations;
        let call_id = self.ids.call_id(self.local.ip());
        let tag = self.ids.tag();
        if let Some(watch) = self.watches.get_mut(ext) {
            watch.call_id = call_id;
            watch.local_tag = tag;
            watch.cseq = 0;
            watch.generation = generation;
            watch.dialog = None;
            watch.doc = DialogInfoState::new();
            watch.lamp = Lamp::Unknown;
            watch.in_flight = false;
            watch.next_at = Some(at);
        }
    }

    fn on_subscribe_answer(
        &mut self,
        now: Instant,
        ext: &str,
        generation: u64,
        expires: u32,
        answer: Option<(&Message, &Message)>,
    ) {
        let Some(watch) = self.watches.get_mut(ext) else {
            return;
        };
        if watch.generation != generation {
            return;
        }
        watch.in_flight = false;
        let status = answer.and_then(|(_, r)| r.status()).unwrap_or(408);
        match (status, answer) {
            (200..=299, Some((request, response))) => {
                if watch.dialog.is_none() {
                    watch.dialog = Dialog::as_uac(request, response);
                }
                if expires == 0 || watch.removing {
                    // the final NOTIFY ends it; if it never comes, the linger does
                    watch.next_at = Some(now + TIMEOUT);
                    return;
                }
                let granted = ua::expires(response).unwrap_or(expires);
                if granted == 0 {
                    let at = now + RETRY_AFTER;
                    self.resubscribe(ext, at);
                    return;
                }
                let lifetime = Duration::from_secs(u64::from(granted));
                watch.next_at = Some(now + (lifetime / 2).max(Duration::from_secs(1)));
            }
            (423, Some((_, response))) => {
                let min = response
                    .header(HeaderName::MinExpires)
                    .and_then(|v| text(v).trim().parse::<u32>().ok())
                    .unwrap_or(3600);
                self.subscribe_expires = min;
                watch.next_at = Some(now);
            }
            _ if watch.removing => {
                self.watches.remove(ext);
            }
            (481, _) => self.resubscribe(ext, now),
            _ => {
                debug!(ext = %self.ext, watched = ext, status, "subscription refused");
                let at = now + RETRY_AFTER;
                self.resubscribe(ext, at);
            }
        }
    }

    fn on_notify(&mut self, now: Instant, msg: &Message) {
        let call_id = ua::call_id(msg);
        let to_tag = ua::to_tag(msg);
        let found = self.watches.iter().find_map(|(ext, w)| {
            (Some(&w.call_id) == call_id.as_ref() && Some(&w.local_tag) == to_tag.as_ref())
                .then(|| ext.clone())
        });
        let Some(ext) = found else {
            let bytes = response(
                msg,
                481,
                "Subscription Does Not Exist",
                None,
                None,
                &[],
                None,
            );
            self.reply(now, msg, bytes);
            return;
        };
        let is_dialog_event = msg
            .event()
            .and_then(Result::ok)
            .is_some_and(|e| e.package().eq_ignore_ascii_case(b"dialog"));
        if !is_dialog_event {
            let bytes = response(msg, 489, "Bad Event", None, None, &[], None);
            self.reply(now, msg, bytes);
            return;
        }
        let contact = self.contact.clone();
        let ok = response(msg, 200, "OK", None, Some(&contact), &[], None);
        self.reply(now, msg, ok);
        self.notifies += 1;
        self.last_notify = Some(now);
        let Some(watch) = self.watches.get_mut(&ext) else {
            return;
        };
        match &mut watch.dialog {
            Some(dialog) => dialog.update_from_request(msg),
            None => {
                if let Some(mut dialog) = Dialog::as_uas(msg, &watch.local_tag) {
                    dialog.local_cseq = watch.cseq;
                    watch.dialog = Some(dialog);
                }
            }
        }
        let body = msg.body();
        if !body.is_empty() && ua::content_type_is(msg, "application", "dialog-info+xml") {
            match watch.doc.apply_body(body) {
                Ok(_) => {
                    if let Some(view) = watch.doc.view() {
                        watch.lamp = Lamp::from_view(view);
                    }
                }
                Err(e) => {
                    warn!(ext = %self.ext, watched = %ext, error = %e, "unreadable dialog-info")
                }
            }
        }
        let Some(Ok(state)) = msg.subscription_state() else {
            return;
        };
        if state.is_terminated() {
            if watch.removing {
                self.watches.remove(&ext);
                return;
            }
            let reason = state.reason().map(text).unwrap_or_default();
            let retry = state.retry_after();
            if matches!(reason.as_str(), "rejected" | "noresource") {
                watch.dialog = None;
                watch.lamp = Lamp::Unknown;
                watch.next_at = None;
                return;
            }
            let wait = retry.map_or(Duration::from_secs(1), |s| {
                Duration::from_secs(u64::from(s))
            });
            self.resubscribe(&ext, now + wait);
        } else if let Some(expires) = state.expires() {
            let lifetime = Duration::from_secs(u64::from(expires));
            let refresh = now + (lifetime / 2).max(Duration::from_secs(1));
            if !watch.in_flight && watch.next_at.is_none_or(|at| at > refresh) {
                watch.next_at = Some(refresh);
            }
        }
    }

    // ---------------------------------------------------------- calls

    /// Places a call to `target` (an extension, an external number or a star code).
    pub(crate) fn dial(&mut self, now: Instant, target: &str) -> Result<(), PhoneError> {
        if !valid_target(target) {
            return Err(PhoneError::InvalidTarget(target.to_owned()));
        }
        if self.call.is_some() {
            return Err(PhoneError::Busy);
        }
        let call_id = self.ids.call_id(self.local.ip());
        let tag = self.ids.tag();
        let via = self.via();
        let uri = format!("sip:{}@{}", escape_user(target), self.domain);
        let from = format!("<{}>;tag={tag}", self.aor);
        let to = format!("<{uri}>");
        let sdp = self.next_sdp();
        let headers = [
            ("User-Agent", self.user_agent.as_str()),
            ("Allow", "INVITE, ACK, CANCEL, BYE, NOTIFY, OPTIONS"),
        ];
        let bytes = ua::NewRequest {
            method: "INVITE",
            uri: &uri,
            via: &via,
            from: &from,
            to: &to,
            call_id: &call_id,
            cseq: 1,
            contact: Some(&self.contact),
            headers: &headers,
            body: Some(("application/sdp", &sdp)),
        }
        .build();
        let Ok(invite) = Message::parse(bytes.clone()) else {
            return Err(PhoneError::InvalidTarget(target.to_owned()));
        };
        self.send_request(
            now,
            Owner::Invite {
                call_id: call_id.clone(),
            },
            bytes,
        );
        self.call = Some(Call {
            direction: CallDirection::Outgoing,
            peer: target.to_owned(),
            call_id,
            local_tag: tag,
            phase: CallPhase::Calling {
                invite,
                provisional: false,
            },
        });
        Ok(())
    }

    /// Hangs up: CANCEL while dialling, 486 to a ringing call, BYE in a call.
    pub(crate) fn hang_up(&mut self, now: Instant) -> Result<(), PhoneError> {
        let Some(call) = self.call.take() else {
            return Err(PhoneError::NoCall);
        };
        match call.phase {
            CallPhase::Calling {
                invite,
                provisional,
            } => {
                if provisional {
                    self.send_request(now, Owner::Cancel, cancel_for(&invite));
                }
                self.abandoned.insert(
                    call.call_id,
                    Abandoned {
                        invite,
                        cancel_sent: provisional,
                        until: now + TIMEOUT,
                    },
                );
            }
            CallPhase::Offered { invite, .. } => {
                let bytes = response(
                    &invite,
                    486,
                    "Busy Here",
                    Some(&call.local_tag),
                    None,
                    &[],
                    None,
                );
                self.reply(now, &invite, bytes);
            }
            CallPhase::Connected { mut dialog } => {
                let via = self.via();
                let bytes = dialog.request("BYE", None, &via, None, &[], None);
                self.send_request(now, Owner::Bye, bytes);
            }
        }
        Ok(())
    }

    /// Answers the ringing incoming call.
    pub(crate) fn answer(&mut self, now: Instant) -> Result<(), PhoneError> {
        match &self.call {
            Some(Call {
                phase: CallPhase::Offered { .. },
                ..
            }) => {
                self.accept_incoming(now);
                Ok(())
            }
            _ => Err(PhoneError::NothingToAnswer),
        }
    }

    fn accept_incoming(&mut self, now: Instant) {
        let Some(call) = self.call.as_mut() else {
            return;
        };
        let CallPhase::Offered { invite, .. } = &call.phase else {
            return;
        };
        let invite = invite.clone();
        let tag = call.local_tag.clone();
        let Some(dialog) = Dialog::as_uas(&invite, &tag) else {
            // no Contact or tag to answer to: refuse
            let bytes = response(&invite, 400, "Bad Request", Some(&tag), None, &[], None);
            self.call = None;
            self.reply(now, &invite, bytes);
            return;
        };
        call.phase = CallPhase::Connected { dialog };
        let sdp = self.next_sdp();
        let contact = self.contact.clone();
        let bytes = response(
            &invite,
            200,
            "OK",
            Some(&tag),
            Some(&contact),
            &[],
            Some((b"application/sdp", &sdp)),
        );
        self.reply(now, &invite, bytes);
    }

    /// Timer B of our INVITE: nothing answered.
    fn on_invite_timeout(&mut self, call_id: &str) {
        self.abandoned.remove(call_id);
        if self.call.as_ref().is_some_and(|c| c.call_id == call_id) {
            self.call = None;
            self.last_final_status = Some(408);
        }
    }

    fn on_invite_response(
        &mut self,
        now: Instant,
        call_id: &str,
        request: &Message,
        branch: &str,
        msg: &Message,
    ) {
        let status = msg.status().unwrap_or(0);
        // an INVITE the user hung up on
        if let Some(abandoned) = self.abandoned.get_mut(call_id) {
            match status {
                100..=199 => {
                    if !abandoned.cancel_sent {
                        abandoned.cancel_sent = true;
                        let cancel = cancel_for(&abandoned.invite);
                        self.send_request(now, Owner::Cancel, cancel);
                    }
                }
                200..=299 => {
                    self.abandoned.remove(call_id);
                    if let Some(mut dialog) = Dialog::as_uac(request, msg) {
                        let invite_cseq = ua::cseq(request).map(|(n, _)| n);
                        let via = self.via();
                        let ack = dialog.request("ACK", invite_cseq, &via, None, &[], None);
                        self.client.set_ack(
                            branch,
                            Datagram {
                                to: self.proxy,
                                bytes: ack.clone(),
                            },
                        );
                        self.send_stateless(ack);
                        let via = self.via();
                        let bye = dialog.request("BYE", None, &via, None, &[], None);
                        self.send_request(now, Owner::Bye, bye);
                    }
                }
                _ => {
                    self.abandoned.remove(call_id);
                    self.last_final_status = Some(status);
                }
            }
            return;
        }
        let via = self.via();
        let Some(call) = self.call.as_mut().filter(|c| c.call_id == call_id) else {
            return;
        };
        let CallPhase::Calling { provisional, .. } = &mut call.phase else {
            return;
        };
        match status {
            100..=199 => *provisional = true,
            200..=299 => {
                self.last_final_status = Some(status);
                let Some(mut dialog) = Dialog::as_uac(request, msg) else {
                    warn!(ext = %self.ext, "a 2xx without To tag or Contact");
                    self.call = None;
                    return;
                };
                let invite_cseq = ua::cseq(request).map(|(n, _)| n);
                let ack = dialog.request("ACK", invite_cseq, &via, None, &[], None);
                call.phase = CallPhase::Connected { dialog };
                self.client.set_ack(
                    branch,
                    Datagram {
                        to: self.proxy,
                        bytes: ack.clone(),
                    },
                );
                self.send_stateless(ack);
            }
            _ => {
                self.last_final_status = Some(status);
                self.call = None;
            }
        }
    }

    fn incoming_invite(&mut self, now: Instant, msg: &Message) {
        if ua::to_tag(msg).is_some() {
            // a re-INVITE in our call: accepted as it is
            let in_call = matches!(
                &self.call,
                Some(Call { phase: CallPhase::Connected { dialog }, .. }) if dialog.matches_request(msg)
            );
            let bytes = if in_call {
                if let Some(Call {
                    phase: CallPhase::Connected { dialog },
                    ..
                }) = &mut self.call
                {
                    dialog.update_from_request(msg);
                }
                let sdp = self.next_sdp();
                let contact = self.contact.clone();
                response(
                    msg,
                    200,
                    "OK",
                    None,
                    Some(&contact),
                    &[],
                    Some((b"application/sdp", &sdp)),
                )
            } else {
                response(
                    msg,
                    481,
                    "Call/Transaction Does Not Exist",
                    None,
                    None,
                    &[],
                    None,
                )
            };
            self.reply(now, msg, bytes);
            return;
        }
        let tag = self.ids.tag();
        if self.call.is_some() {
            let bytes = response(msg, 486, "Busy Here", Some(&tag), None, &[], None);
            self.reply(now, msg, bytes);
            return;
        }
        let Some(call_id) = ua::call_id(msg) else {
            return;
        };
        let contact = self.contact.clone();
        let ringing = response(msg, 180, "Ringing", Some(&tag), Some(&contact), &[], None);
        self.reply(now, msg, ringing);
        let peer = ua::from_user(msg).unwrap_or_else(|| "unknown".to_owned());
        self.call = Some(Call {
            direction: CallDirection::Incoming,
            peer,
            call_id,
            local_tag: tag,
            phase: CallPhase::Offered {
                invite: msg.clone(),
                answer_at: self.auto_answer.then(|| now + self.ring_time),
            },
        });
    }

    fn incoming_cancel(&mut self, now: Instant, msg: &Message) {
        let pending = self.server.invite_status(msg);
        let Some(pending) = pending else {
            let bytes = response(
                msg,
                481,
                "Call/Transaction Does Not Exist",
                None,
                None,
                &[],
                None,
            );
            self.reply(now, msg, bytes);
            return;
        };
        let ok = response(msg, 200, "OK", None, None, &[], None);
        self.reply(now, msg, ok);
        if pending.is_some() {
            return; // already answered: too late
        }
        let call_id = ua::call_id(msg);
        if let Some(call) = self.call.take_if(|c| Some(&c.call_id) == call_id.as_ref()) {
            if let CallPhase::Offered { invite, .. } = call.phase {
                let bytes = response(
                    &invite,
                    487,
                    "Request Terminated",
                    Some(&call.local_tag),
                    None,
                    &[],
                    None,
                );
                self.reply(now, &invite, bytes);
            } else {
                self.call = Some(call);
            }
        }
    }

    fn incoming_bye(&mut self, now: Instant, msg: &Message) {
        let ours = matches!(
            &self.call,
            Some(Call { phase: CallPhase::Connected { dialog }, .. }) if dialog.matches_request(msg)
        );
        let bytes = if ours {
            self.call = None;
            response(msg, 200, "OK", None, None, &[], None)
        } else {
            response(
                msg,
                481,
                "Call/Transaction Does Not Exist",
                None,
                None,
                &[],
                None,
            )
        };
        self.reply(now, msg, bytes);
    }

    fn incoming_ack(&mut self, msg: &Message) {
        if let (Some(call_id), Some((seq, _))) = (ua::call_id(msg), ua::cseq(msg)) {
            self.server.acked(&call_id, seq);
        }
    }

    // ---------------------------------------------------------- input

    /// A datagram from `from`.
    pub(crate) fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: Bytes) {
        let msg = match Message::parse(bytes) {
            Ok(msg) => msg,
            Err(e) => {
                debug!(ext = %self.ext, source = %from, error = %e, "unparseable datagram dropped");
                return;
            }
        };
        if msg.is_request() {
            if let Err(e) = msg.validate() {
                debug!(ext = %self.ext, source = %from, error = %e, "invalid request");
                if msg.method() != Some(Method::Ack) && ua::via_addr(&msg).is_some() {
                    let bytes = response(
                        &msg,
                        e.response_status(),
                        "Bad Request",
                        None,
                        None,
                        &[],
                        None,
                    );
                    self.server.respond(now, &msg, bytes, &mut self.out);
                }
                return;
            }
            match self.server.on_request(now, from, &msg, &mut self.out) {
                Incoming::Retransmission | Incoming::AckAbsorbed => return,
                Incoming::New => {}
            }
            self.handle_request(now, &msg);
        } else {
            let Some(answer) = self.client.on_response(now, &msg, &mut self.out) else {
                return;
            };
            if answer.fresh {
                self.handle_response(now, answer, &msg);
            }
        }
    }

    fn handle_request(&mut self, now: Instant, msg: &Message) {
        match msg.method() {
            Some(Method::Invite) => self.incoming_invite(now, msg),
            Some(Method::Ack) => self.incoming_ack(msg),
            Some(Method::Cancel) => self.incoming_cancel(now, msg),
            Some(Method::Bye) => self.incoming_bye(now, msg),
            Some(Method::Notify) => self.on_notify(now, msg),
            Some(Method::Options) => {
                let bytes = response(
                    msg,
                    200,
                    "OK",
                    None,
                    None,
                    &[("Allow", b"INVITE, ACK, CANCEL, BYE, NOTIFY, OPTIONS")],
                    None,
                );
                self.reply(now, msg, bytes);
            }
            _ => {
                let bytes = response(
                    msg,
                    405,
                    "Method Not Allowed",
                    None,
                    None,
                    &[("Allow", b"INVITE, ACK, CANCEL, BYE, NOTIFY, OPTIONS")],
                    None,
                );
                self.reply(now, msg, bytes);
            }
        }
    }

    fn handle_response(&mut self, now: Instant, answer: ua::Answer<Owner>, msg: &Message) {
        let status = msg.status().unwrap_or(0);
        match answer.owner {
            Owner::Register { expires } => {
                if status >= 200 {
                    self.on_register_answer(now, expires, Some(msg));
                }
            }
            Owner::Subscribe {
                ext,
                generation,
                expires,
            } => {
                if status >= 200 {
                    self.on_subscribe_answer(
                        now,
                        &ext,
                        generation,
                        expires,
                        Some((&answer.request, msg)),
                    );
                }
            }
            Owner::Invite { call_id } => {
                self.on_invite_response(now, &call_id, &answer.request, &answer.branch, msg);
            }
            Owner::Bye | Owner::Cancel => {}
        }
    }

    /// Time passed: retransmissions, timeouts, refreshes, the auto-answer.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        for timed_out in self.client.handle_timeout(now, &mut self.out) {
            match timed_out.owner {
                Owner::Register { expires } => self.on_register_answer(now, expires, None),
                Owner::Subscribe {
                    ext,
                    generation,
                    expires,
                } => self.on_subscribe_answer(now, &ext, generation, expires, None),
                Owner::Invite { call_id } => self.on_invite_timeout(&call_id),
                Owner::Bye | Owner::Cancel => {}
            }
        }
        for lost in self.server.handle_timeout(now, &mut self.out) {
            // our 2xx was never ACKed: the call is over (§13.3.1.4)
            let ours = matches!(
                &self.call,
                Some(Call { phase: CallPhase::Connected { .. }, call_id, .. }) if *call_id == lost.call_id
            );
            if ours {
                let _ = self.hang_up(now);
            }
        }
        if self.reg.registered && self.reg.expires_at.is_some_and(|e| e <= now) {
            self.reg.registered = false;
        }
        if self.reg.next_at.is_some_and(|at| at <= now) && !self.reg.in_flight {
            self.register(now, self.register_expires);
        }
        let due: Vec<String> = self
            .watches
            .iter()
            .filter(|(_, w)| w.next_at.is_some_and(|at| at <= now))
            .map(|(ext, _)| ext.clone())
            .collect();
        for ext in due {
            let Some(watch) = self.watches.get_mut(&ext) else {
                continue;
            };
            if watch.removing {
                // the final NOTIFY never came
                self.watches.remove(&ext);
            } else if !watch.in_flight {
                watch.next_at = None;
                self.subscribe(now, &ext, self.subscribe_expires);
            } else {
                watch.next_at = None;
            }
        }
        let answer_due = matches!(
            &self.call,
            Some(Call { phase: CallPhase::Offered { answer_at: Some(at), .. }, .. }) if *at <= now
        );
        if answer_due {
            self.accept_incoming(now);
        }
        self.abandoned.retain(|_, a| a.until > now);
    }

    /// Leaving: hangs up, unsubscribes everything and unregisters.
    pub(crate) fn shutdown(&mut self, now: Instant) {
        let _ = self.hang_up(now);
        let exts: Vec<String> = self.watches.keys().cloned().collect();
        self.unwatch(now, &exts);
        if self.reg.registered {
            self.register(now, 0);
        }
        self.reg.registered = false;
    }

    // ---------------------------------------------------------- view

    /// What the phone shows; `wall` turns an instant into Unix milliseconds.
    pub(crate) fn snapshot(&self, wall: impl Fn(Instant) -> u64) -> PhoneSnapshot {
        let call = match &self.call {
            None => CallView::Idle,
            Some(call) => match call.phase {
                CallPhase::Calling { .. } | CallPhase::Offered { .. } => CallView::Ringing {
                    peer: call.peer.clone(),
                    direction: call.direction,
                },
                CallPhase::Connected { .. } => CallView::Connected {
                    peer: call.peer.clone(),
                    direction: call.direction,
                },
            },
        };
        PhoneSnapshot {
            ext: self.ext.clone(),
            address: self.local,
            registered: self.reg.registered,
            call,
            lamps: self
                .watches
                .iter()
                .filter(|(_, w)| !w.removing)
                .map(|(ext, w)| (ext.clone(), w.lamp))
                .collect(),
            last_notify_at: self.last_notify.map(wall),
            notifies_received: self.notifies,
            last_final_status: self.last_final_status,
        }
    }
}

// ===================================================================== the task

/// What a [`PhoneHandle`] asks of its task.
#[derive(Debug)]
enum Command {
    Dial(String, oneshot::Sender<Result<(), PhoneError>>),
    HangUp(oneshot::Sender<Result<(), PhoneError>>),
    Answer(oneshot::Sender<Result<(), PhoneError>>),
    Watch(Vec<String>, oneshot::Sender<()>),
    Unwatch(Vec<String>, oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Commands queued for a phone's task at most.
const COMMAND_BACKLOG: usize = 64;

/// Largest datagram read.
const MAX_DATAGRAM: usize = 65_535;

/// Starts simulated phones (see [`Phone::start`]).
#[derive(Debug, Clone, Copy)]
pub struct Phone;

impl Phone {
    /// Binds `options.bind`, starts the phone's task and sends its first REGISTER
    /// through `options.outbound_proxy`. `ext` is the phone's extension (its user
    /// part: digits, letters, `*#+.-_`).
    pub async fn start(ext: &str, options: PhoneOptions) -> io::Result<PhoneHandle> {
        if !valid_target(ext) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ext:?} is no extension"),
            ));
        }
        let socket = UdpSocket::bind(options.bind).await?;
        let local = socket.local_addr()?;
        let seed = options.seed.unwrap_or_else(|| random_seed(local));
        let mut agent = PhoneAgent::new(ext, local, &options, seed);
        agent.start(Instant::now());
        let (commands, inbox) = mpsc::channel(COMMAND_BACKLOG);
        let (publisher, snapshots) = watch::channel(agent.snapshot(unix_ms));
        tokio::spawn(run_phone(socket, agent, inbox, publisher));
        Ok(PhoneHandle {
            ext: ext.to_owned(),
            local_addr: ua::advertised(local),
            commands,
            snapshots,
        })
    }
}

/// A seed for tags and branches that differs per socket and run.
pub(crate) fn random_seed(local: SocketAddr) -> u64 {
    use std::hash::BuildHasher;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    std::collections::hash_map::RandomState::new().hash_one((local, nanos))
}

/// An instant as milliseconds since the Unix epoch.
pub(crate) fn unix_ms(at: Instant) -> u64 {
    let now = SystemTime::now();
    let then = now
        .checked_sub(Instant::now().saturating_duration_since(at))
        .unwrap_or(now);
    then.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Sleeps until `deadline`, forever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends datagrams; a failed send is logged (UDP: the retransmission timers cover it).
pub(crate) async fn send_all(socket: &UdpSocket, datagrams: Vec<Datagram>) {
    for datagram in datagrams {
        if let Err(e) = socket.send_to(&datagram.bytes, datagram.to).await {
            warn!(to = %datagram.to, error = %e, "send failed");
        }
    }
}

async fn run_phone(
    socket: UdpSocket,
    mut agent: PhoneAgent,
    mut inbox: mpsc::Receiver<Command>,
    publisher: watch::Sender<PhoneSnapshot>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        send_all(&socket, agent.drain_transmits()).await;
        let snapshot = agent.snapshot(unix_ms);
        publisher.send_if_modified(|current| {
            let changed = *current != snapshot;
            if changed {
                *current = snapshot;
            }
            changed
        });
        let deadline = agent.poll_timeout();
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => {
                    agent.handle_datagram(Instant::now(), from, Bytes::copy_from_slice(&buf[..n]));
                }
                Err(e) => debug!(ext = %agent.ext, error = %e, "receive failed"),
            },
            () = sleep_until(deadline) => agent.handle_timeout(Instant::now()),
            command = inbox.recv() => {
                let now = Instant::now();
                match command {
                    Some(Command::Dial(target, reply)) => {
                        let _ = reply.send(agent.dial(now, &target));
                    }
                    Some(Command::HangUp(reply)) => {
                        let _ = reply.send(agent.hang_up(now));
                    }
                    Some(Command::Answer(reply)) => {
                        let _ = reply.send(agent.answer(now));
                    }
                    Some(Command::Watch(exts, reply)) => {
                        agent.watch(now, &exts);
                        let _ = reply.send(());
                    }
                    Some(Command::Unwatch(exts, reply)) => {
                        agent.unwatch(now, &exts);
                        let _ = reply.send(());
                    }
                    Some(Command::Shutdown(reply)) => {
                        agent.shutdown(now);
                        send_all(&socket, agent.drain_transmits()).await;
                        publisher.send_replace(agent.snapshot(unix_ms));
                        let _ = reply.send(());
                        break;
                    }
                    None => {
                        // every handle is gone
                        agent.shutdown(now);
                        send_all(&socket, agent.drain_transmits()).await;
                        break;
                    }
                }
            }
        }
    }
    debug!(ext = %agent.ext, "phone stopped");
}

/// A running simulated phone. Cheap to clone; the phone stops at
/// [`PhoneHandle::shutdown`] or when every handle is dropped.
#[derive(Debug, Clone)]
pub struct PhoneHandle {
    ext: String,
    local_addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    snapshots: watch::Receiver<PhoneSnapshot>,
}

impl PhoneHandle {
    /// The phone's extension.
    pub fn ext(&self) -> &str {
        &self.ext
    }

    /// The phone's UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the phone shows now.
    pub fn snapshot(&self) -> PhoneSnapshot {
        self.snapshots.borrow().clone()
    }

    /// A receiver of every change of the phone's [`PhoneSnapshot`].
    pub fn subscribe(&self) -> watch::Receiver<PhoneSnapshot> {
        self.snapshots.clone()
    }

    /// Waits until the phone's snapshot satisfies `condition` (checked at once, then
    /// at every change), at most `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&PhoneSnapshot) -> bool,
    ) -> Result<PhoneSnapshot, PhoneError> {
        let mut snapshots = self.snapshots.clone();
        match tokio::time::timeout(timeout, snapshots.wait_for(|s| condition(s))).await {
            Ok(Ok(snapshot)) => Ok(snapshot.clone()),
            Ok(Err(_)) => Err(PhoneError::Stopped(self.ext.clone())),
            Err(_) => Err(PhoneError::Timeout(timeout)),
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, PhoneError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| PhoneError::Stopped(self.ext.clone()))?;
        answer
            .await
            .map_err(|_| PhoneError::Stopped(self.ext.clone()))
    }

    /// Dials `target`: an extension, an external number or a star code (`*78`).
    pub async fn dial(&self, target: &str) -> Result<(), PhoneError> {
        self.ask(|reply| Command::Dial(target.to_owned(), reply))
            .await?
    }

    /// Hangs up the call: CANCEL while dialling, rejects (486) a ringing call, BYE in
    /// a call.
    pub async fn hang_up(&self) -> Result<(), PhoneError> {
        self.ask(Command::HangUp).await?
    }

    /// Answers the ringing incoming call now.
    pub async fn answer(&self) -> Result<(), PhoneError> {
        self.ask(Command::Answer).await?
    }

    /// Subscribes to the dialog state (BLF) of each extension not watched yet.
    pub async fn watch(&self, exts: &[&str]) -> Result<(), PhoneError> {
        let exts = exts.iter().map(|e| (*e).to_owned()).collect();
        self.ask(|reply| Command::Watch(exts, reply)).await
    }

    /// Ends the subscriptions to these extensions (their lamps go away).
    pub async fn unwatch(&self, exts: &[&str]) -> Result<(), PhoneError> {
        let exts = exts.iter().map(|e| (*e).to_owned()).collect();
        self.ask(|reply| Command::Unwatch(exts, reply)).await
    }

    /// Hangs up, unsubscribes, unregisters (each sent once, not awaited) and stops the
    /// phone's task. Does nothing when it has already stopped.
    pub async fn shutdown(&self) {
        let _ = self.ask(Command::Shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blf::{
        Dialog as BlfDialog, PhoneProfile, TeamsInjection, WatchedExtension, parse_dialog_info,
        render_for_phone,
    };
    use crate::demo::ua::{ServerKey, T1, T2};

    const PROXY: &str = "127.0.0.1:5060";
    const ME: &str = "127.0.0.1:6000";

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn parse(bytes: &Bytes) -> Message {
        Message::parse(bytes.clone()).unwrap()
    }

    fn register(branch: &str) -> Bytes {
        Bytes::from(format!(
            "REGISTER sip:pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP {ME};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:201@pbx.example.com>;tag=a\r\nTo: <sip:201@pbx.example.com>\r\nCall-ID: r@x\r\nCSeq: 1 REGISTER\r\nContact: <sip:201@{ME}>\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    fn invite(branch: &str, via_host: &str) -> Bytes {
        Bytes::from(format!(
            "INVITE sip:202@{ME} SIP/2.0\r\nVia: SIP/2.0/UDP {via_host};branch={branch}\r\nRecord-Route: <sip:tok@{PROXY};lr>\r\nMax-Forwards: 69\r\nFrom: <sip:201@pbx.example.com>;tag=caller\r\nTo: <sip:202@pbx.example.com>\r\nCall-ID: c@x\r\nCSeq: 1 INVITE\r\nContact: <sip:pbx@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    fn answer_to(request: &Message, code: u16, tag: Option<&str>) -> Bytes {
        response(
            request,
            code,
            "X",
            tag,
            Some("sip:202@127.0.0.1:6001"),
            &[],
            None,
        )
    }

    #[test]
    fn non_invite_requests_are_retransmitted_t1_doubling_up_to_t2_until_timer_f() {
        let mut txns: ClientTxns<u8> = ClientTxns::default();
        let mut out = Vec::new();
        let t0 = Instant::now();
        let branch = txns.send(t0, 1, addr(PROXY), register("z9hG4bKr1"), &mut out);
        assert_eq!(branch.as_deref(), Some("z9hG4bKr1"));
        assert_eq!(out.len(), 1);
        let mut at = t0;
        let mut intervals = Vec::new();
        for _ in 0..6 {
            let next = txns.poll_timeout().unwrap();
            intervals.push(next - at);
            at = next;
            out.clear();
            assert!(txns.handle_timeout(at, &mut out).is_empty());
            assert_eq!(out.len(), 1, "one retransmission");
        }
        assert_eq!(intervals[..5], [T1, T1 * 2, T1 * 4, T2, T2]);
        let timed_out = txns.handle_timeout(t0 + TIMEOUT, &mut out);
        assert_eq!(timed_out.len(), 1);
        assert_eq!(timed_out[0].owner, 1);
        assert_eq!(txns.len(), 0);
    }

    #[test]
    fn invites_stop_retransmitting_at_a_provisional_answer_and_ack_a_refusal() {
        let mut txns: ClientTxns<u8> = ClientTxns::default();
        let mut out = Vec::new();
        let t0 = Instant::now();
        txns.send(t0, 7, addr(PROXY), invite("z9hG4bKi1", ME), &mut out);
        let request = parse(&out[0].bytes);
        out.clear();
        let trying = parse(&answer_to(&request, 100, None));
        let answer = txns.on_response(t0, &trying, &mut out).unwrap();
        assert!(answer.fresh);
        assert_eq!(answer.owner, 7);
        assert!(
            txns.handle_timeout(t0 + Duration::from_secs(20), &mut out)
                .is_empty()
        );
        assert!(out.is_empty(), "no retransmission after 100 Trying");
        let busy = parse(&answer_to(&request, 486, Some("callee")));
        assert!(txns.on_response(t0, &busy, &mut out).unwrap().fresh);
        assert_eq!(out.len(), 1);
        let ack = parse(&out[0].bytes);
        assert_eq!(ack.method(), Some(Method::Ack));
        assert_eq!(
            ack.top_via().unwrap().unwrap().branch(),
            Some(&b"z9hG4bKi1"[..])
        );
        assert_eq!(ua::to_tag(&ack).as_deref(), Some("callee"));
        assert_eq!(ack.header(HeaderName::CSeq), Some(&b"1 ACK"[..]));
        // the 486 again: not for the TU, our ACK again
        out.clear();
        assert!(!txns.on_response(t0, &busy, &mut out).unwrap().fresh);
        assert_eq!(out.len(), 1);
        // forgotten after the linger, without a timeout reported
        assert!(txns.handle_timeout(t0 + TIMEOUT, &mut out).is_empty());
        assert_eq!(txns.len(), 0);
    }

    #[test]
    fn server_transactions_absorb_retransmissions_and_repeat_final_answers_until_ack() {
        let mut txns = ServerTxns::default();
        let mut out = Vec::new();
        let t0 = Instant::now();
        let proxy = addr(PROXY);
        let request = parse(&invite("z9hG4bKs1", PROXY));
        assert_eq!(
            txns.on_request(t0, proxy, &request, &mut out),
            Incoming::New
        );
        assert_eq!(
            txns.on_request(t0, proxy, &request, &mut out),
            Incoming::Retransmission
        );
        assert!(out.is_empty(), "nothing answered yet: nothing to repeat");
        let ringing = response(&request, 180, "Ringing", Some("me"), None, &[], None);
        txns.respond(t0, &request, ringing.clone(), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, proxy);
        out.clear();
        assert_eq!(
            txns.on_request(t0, proxy, &request, &mut out),
            Incoming::Retransmission
        );
        assert_eq!(out[0].bytes, ringing, "the last answer again");
        out.clear();
        let busy = response(&request, 486, "Busy Here", Some("me"), None, &[], None);
        txns.respond(t0, &request, busy, &mut out);
        out.clear();
        txns.handle_timeout(t0 + T1, &mut out);
        assert_eq!(out.len(), 1, "the 486 again at T1");
        out.clear();
        let ack = parse(&ack_for_test(&request));
        assert_eq!(
            txns.on_request(t0, proxy, &ack, &mut out),
            Incoming::AckAbsorbed
        );
        txns.handle_timeout(t0 + T1 * 8, &mut out);
        assert!(out.is_empty(), "ACKed: no more");
        txns.handle_timeout(t0 + TIMEOUT + T1, &mut out);
        assert_eq!(txns.len(), 0);
    }

    fn ack_for_test(invite: &Message) -> Bytes {
        let busy = parse(&response(
            invite,
            486,
            "Busy Here",
            Some("me"),
            None,
            &[],
            None,
        ));
        crate::sip::build::ack_for(invite, &busy)
    }

    #[test]
    fn an_unacknowledged_2xx_is_repeated_then_reported() {
        let mut txns = ServerTxns::default();
        let mut out = Vec::new();
        let t0 = Instant::now();
        let request = parse(&invite("z9hG4bKs2", PROXY));
        txns.on_request(t0, addr(PROXY), &request, &mut out);
        let ok = response(&request, 200, "OK", Some("me"), None, &[], None);
        txns.respond(t0, &request, ok, &mut out);
        out.clear();
        let mut at = t0;
        let mut sent = 0;
        let mut lost = Vec::new();
        while let Some(next) = txns.poll_timeout() {
            if next > t0 + TIMEOUT * 2 {
                break;
            }
            at = next;
            lost.extend(txns.handle_timeout(at, &mut out));
            sent = out.len();
        }
        assert!(
            sent >= 7,
            "repeated at 0.5, 1.5, 3.5, 7.5, 11.5, ... s: {sent}"
        );
        assert_eq!(
            lost,
            vec![ua::Unacknowledged {
                call_id: "c@x".into(),
                cseq: 1
            }]
        );
        assert!(at >= t0 + TIMEOUT);
        // with the ACK, the repetition stops
        let mut txns = ServerTxns::default();
        let request = parse(&invite("z9hG4bKs3", PROXY));
        txns.on_request(t0, addr(PROXY), &request, &mut out);
        let ok = response(&request, 200, "OK", Some("me"), None, &[], None);
        txns.respond(t0, &request, ok, &mut out);
        txns.acked("c@x", 1);
        out.clear();
        assert!(txns.handle_timeout(t0 + TIMEOUT, &mut out).is_empty());
        assert!(out.is_empty());
    }

    #[test]
    fn server_keys_match_ack_and_cancel_to_their_invite() {
        let request = parse(&invite("z9hG4bKk", PROXY));
        let cancel = parse(&cancel_for(&request));
        let key = ServerKey::of(&request).unwrap();
        assert_eq!(ServerKey::invite_of_cancel(&cancel), Some(key.clone()));
        assert_ne!(ServerKey::of(&cancel), Some(key.clone()));
        assert_eq!(ServerKey::of(&parse(&ack_for_test(&request))), Some(key));
    }

    #[test]
    fn dialogs_route_loosely_and_strictly() {
        let request = parse(&invite("z9hG4bKd", PROXY));
        let mut dialog = Dialog::as_uas(&request, "me").unwrap();
        assert_eq!(dialog.route_set, vec![format!("<sip:tok@{PROXY};lr>")]);
        assert_eq!(dialog.next_hop(), Some(addr(PROXY)));
        let bye = parse(&dialog.request(
            "BYE",
            None,
            "SIP/2.0/UDP x;branch=z9hG4bKb",
            None,
            &[],
            None,
        ));
        assert_eq!(
            bye.request_uri_bytes(),
            Some(&b"sip:pbx@127.0.0.1:5070"[..])
        );
        assert_eq!(
            bye.header(HeaderName::Route),
            Some(format!("<sip:tok@{PROXY};lr>").as_bytes())
        );
        assert_eq!(bye.header(HeaderName::CSeq), Some(&b"1 BYE"[..]));
        assert_eq!(ua::from_tag(&bye).as_deref(), Some("me"));
        assert_eq!(ua::to_tag(&bye).as_deref(), Some("caller"));
        assert!(dialog.matches_request(&parse(&Bytes::from(format!(
            "BYE sip:202@{ME} SIP/2.0\r\nVia: SIP/2.0/UDP {PROXY};branch=z9hG4bKq\r\nMax-Forwards: 70\r\nFrom: <sip:201@pbx.example.com>;tag=caller\r\nTo: <sip:202@pbx.example.com>;tag=me\r\nCall-ID: c@x\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        )))));
        // a strict router: its URI becomes the Request-URI, the target the last Route
        dialog.route_set = vec!["<sip:10.0.0.1:5060>".into(), "<sip:10.0.0.2;lr>".into()];
        assert_eq!(dialog.next_hop(), Some(addr("10.0.0.1:5060")));
        let bye = parse(&dialog.request(
            "BYE",
            None,
            "SIP/2.0/UDP x;branch=z9hG4bKb2",
            None,
            &[],
            None,
        ));
        assert_eq!(bye.request_uri_bytes(), Some(&b"sip:10.0.0.1:5060"[..]));
        let routes: Vec<String> = ua::record_routes(&bye);
        assert!(routes.is_empty());
        let routes: Vec<String> = bye
            .values(HeaderName::Route)
            .map(|(_, span)| text(bye.slice(span)))
            .collect();
        assert_eq!(routes, ["<sip:10.0.0.2;lr>", "<sip:pbx@127.0.0.1:5070>"]);
        assert_eq!(bye.header(HeaderName::CSeq), Some(&b"2 BYE"[..]));
    }

    fn doc(states: &[DialogState]) -> DialogInfo {
        let mut doc = DialogInfo::empty(Some("sip:202@pbx.example.com".into()));
        doc.dialogs = states
            .iter()
            .enumerate()
            .map(|(i, s)| BlfDialog::new(format!("d{i}"), *s))
            .collect();
        doc
    }

    #[test]
    fn lamps_read_dialog_states() {
        assert_eq!(Lamp::from_view(&doc(&[])), Lamp::Idle);
        assert_eq!(
            Lamp::from_view(&doc(&[DialogState::Terminated])),
            Lamp::Idle
        );
        assert_eq!(Lamp::from_view(&doc(&[DialogState::Trying])), Lamp::Busy);
        assert_eq!(
            Lamp::from_view(&doc(&[DialogState::Proceeding])),
            Lamp::Busy
        );
        assert_eq!(Lamp::from_view(&doc(&[DialogState::Early])), Lamp::Ringing);
        assert_eq!(Lamp::from_view(&doc(&[DialogState::Confirmed])), Lamp::Busy);
        assert_eq!(
            Lamp::from_view(&doc(&[DialogState::Early, DialogState::Confirmed])),
            Lamp::Busy
        );
        assert_eq!(
            Lamp::from_view(&doc(&[DialogState::Trying, DialogState::Early])),
            Lamp::Ringing
        );
    }

    #[test]
    fn the_proxys_teams_dialog_shows_busy() {
        let extension = WatchedExtension {
            number: "202",
            uri: "sip:202@pbx.example.com",
        };
        let profile = PhoneProfile::from_user_agent(b"presence-proxy demo phone");
        let idle = doc(&[]);
        let body = render_for_phone(
            Some(&idle),
            3,
            true,
            &extension,
            &profile,
            &TeamsInjection::default(),
        );
        let mut state = DialogInfoState::new();
        state.apply_body(&body).unwrap();
        assert!(
            parse_dialog_info(&body)
                .unwrap()
                .dialogs
                .iter()
                .any(|d| d.id == "teams-202")
        );
        assert_eq!(Lamp::from_view(state.view().unwrap()), Lamp::Busy);
        let body = render_for_phone(
            Some(&idle),
            4,
            false,
            &extension,
            &profile,
            &TeamsInjection::default(),
        );
        state.apply_body(&body).unwrap();
        assert_eq!(Lamp::from_view(state.view().unwrap()), Lamp::Idle);
    }

    fn agent(auto_answer: bool) -> (PhoneAgent, Instant) {
        let mut options = PhoneOptions::new(addr(PROXY));
        options.auto_answer = auto_answer;
        options.ring_time = Duration::from_secs(1);
        let now = Instant::now();
        let mut phone = PhoneAgent::new("202", addr(ME), &options, 5);
        phone.start(now);
        let register = phone.drain_transmits();
        assert_eq!(register.len(), 1);
        assert_eq!(register[0].to, addr(PROXY));
        (phone, now)
    }

    fn statuses(out: &[Datagram]) -> Vec<u16> {
        out.iter()
            .filter_map(|d| parse(&d.bytes).status())
            .collect()
    }

    #[test]
    fn a_phone_without_auto_answer_rings_until_answered_and_is_busy_meanwhile() {
        let (mut phone, now) = agent(false);
        phone.handle_datagram(now, addr(PROXY), invite("z9hG4bKa1", PROXY));
        let out = phone.drain_transmits();
        assert_eq!(statuses(&out), [180]);
        let ringing = parse(&out[0].bytes);
        assert_eq!(
            ringing.header(HeaderName::RecordRoute),
            Some(format!("<sip:tok@{PROXY};lr>").as_bytes())
        );
        assert_eq!(
            ua::contact_uri(&ringing).as_deref(),
            Some("sip:202@127.0.0.1:6000")
        );
        phone.handle_timeout(now + Duration::from_secs(5));
        assert!(
            statuses(&phone.drain_transmits()).is_empty(),
            "no auto-answer"
        );
        // a second call meanwhile is refused
        let second = String::from_utf8(invite("z9hG4bKa2", PROXY).to_vec())
            .unwrap()
            .replace("c@x", "d@x");
        phone.handle_datagram(now, addr(PROXY), Bytes::from(second));
        assert_eq!(statuses(&phone.drain_transmits()), [486]);
        phone.answer(now).unwrap();
        let out = phone.drain_transmits();
        assert_eq!(statuses(&out), [200]);
        assert!(matches!(
            phone.snapshot(|_| 0).call,
            CallView::Connected {
                direction: CallDirection::Incoming,
                ..
            }
        ));
        assert_eq!(phone.answer(now), Err(PhoneError::NothingToAnswer));
        assert_eq!(phone.dial(now, "203"), Err(PhoneError::Busy));
    }

    #[test]
    fn a_200_never_acknowledged_ends_the_call_with_a_bye() {
        let (mut phone, now) = agent(true);
        phone.handle_datagram(now, addr(PROXY), invite("z9hG4bKa3", PROXY));
        phone.drain_transmits();
        phone.handle_timeout(now + Duration::from_secs(1));
        assert_eq!(statuses(&phone.drain_transmits()), [200]);
        let mut bye = None;
        while let Some(next) = phone.poll_timeout() {
            if next > now + Duration::from_secs(40) {
                break;
            }
            phone.handle_timeout(next);
            if let Some(d) = phone
                .drain_transmits()
                .into_iter()
                .find(|d| parse(&d.bytes).method() == Some(Method::Bye))
            {
                bye = Some(parse(&d.bytes));
                break;
            }
        }
        let bye = bye.expect("a BYE once the 2xx is given up");
        assert_eq!(
            bye.request_uri_bytes(),
            Some(&b"sip:pbx@127.0.0.1:5070"[..])
        );
        assert_eq!(phone.snapshot(|_| 0).call, CallView::Idle);
    }

    #[test]
    fn notifies_outside_any_subscription_get_481_and_bad_targets_are_refused() {
        let (mut phone, now) = agent(true);
        let notify = Bytes::from(format!(
            "NOTIFY sip:202@{ME} SIP/2.0\r\nVia: SIP/2.0/UDP {PROXY};branch=z9hG4bKn\r\nMax-Forwards: 70\r\nFrom: <sip:203@pbx.example.com>;tag=p\r\nTo: <sip:202@pbx.example.com>;tag=nobody\r\nCall-ID: n@x\r\nCSeq: 1 NOTIFY\r\nEvent: dialog\r\nSubscription-State: active\r\nContent-Length: 0\r\n\r\n"
        ));
        phone.handle_datagram(now, addr(PROXY), notify);
        assert_eq!(statuses(&phone.drain_transmits()), [481]);
        assert_eq!(phone.snapshot(|_| 0).notifies_received, 0);
        assert_eq!(
            phone.dial(now, "20 1"),
            Err(PhoneError::InvalidTarget("20 1".into()))
        );
        assert_eq!(phone.hang_up(now), Err(PhoneError::NoCall));
        // `#` is escaped in the Request-URI
        phone.dial(now, "#21").unwrap();
        let out = phone.drain_transmits();
        assert_eq!(
            parse(&out[0].bytes).request_uri_bytes(),
            Some(&b"sip:%2321@pbx.example.com"[..])
        );
    }

    #[test]
    fn watching_subscribes_with_the_dialog_package() {
        let (mut phone, now) = agent(true);
        phone.watch(
            now,
            &["201".to_owned(), "201".to_owned(), "bad one".to_owned()],
        );
        let out = phone.drain_transmits();
        assert_eq!(out.len(), 1);
        let subscribe = parse(&out[0].bytes);
        assert_eq!(subscribe.method(), Some(Method::Subscribe));
        assert_eq!(
            subscribe.request_uri_bytes(),
            Some(&b"sip:201@pbx.example.com"[..])
        );
        assert_eq!(subscribe.header(HeaderName::Event), Some(&b"dialog"[..]));
        assert_eq!(
            subscribe.header(HeaderName::Accept),
            Some(DIALOG_INFO_CONTENT_TYPE.as_bytes())
        );
        assert_eq!(phone.snapshot(|_| 0).lamps.get("201"), Some(&Lamp::Unknown));
        // unwatched before the answer: gone at once
        phone.unwatch(now, &["201".to_owned()]);
        assert!(phone.snapshot(|_| 0).lamps.is_empty());
    }
}
