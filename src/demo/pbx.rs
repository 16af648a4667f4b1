//! The demo's PBX stand-in: a small but correct SIP PBX on UDP that sits behind the
//! proxy, the way the real PBX does.
//!
//! This module owns:
//! - `PbxCore` (crate-internal), sans-IO: datagrams and time in, datagrams out.
//!   - **Registrar**: REGISTER binds an extension (the To user) to its Contacts with an
//!     expiry (capped at [`PbxOptions::max_register_expires`]); `Expires: 0` or
//!     `;expires=0` removes one, `Contact: *` all. The 200 lists the bindings. With
//!     the proxy in between, the Contacts are the proxy's aliases, so everything the
//!     PBX sends to a phone goes through the proxy.
//! - **Call router, a B2BUA**: an INVITE from an extension to a registered extension
//!   becomes a second INVITE (a new dialog) to the callee's newest Contact; provisional
//!   and final answers are relayed back, ACK, BYE and CANCEL are bridged across the
//!   legs. Calls to an extension in DND get `486`, to an unregistered one `480`. An
//!   external number (6 digits or more, or starting with `0`, `9` or `+`) is answered
//!   by the stand-in itself as a trunk: `100`, `180`, and `200` after
//!   [`PbxOptions::ring_time`]; the far end hangs up after
//!   [`PbxOptions::external_hangup_after`] when set. Star codes are answered the way
//!   Asterisk does: `200` (the announcement) and a BYE from the PBX after
//!   [`PbxOptions::feature_code_hangup`]. `*78` sets DND, `*79` clears it, `*76`
//!   toggles it (the proxy's observer reads the same codes from the 2xx); other codes
//!   get `404`.
//! - **Dialog-info notifier** (RFC 4235, RFC 6665): `SUBSCRIBE` with `Event: dialog`
//!   to an extension is accepted (Expires capped at
//!   [`PbxOptions::max_subscribe_expires`]) and followed by a full-state NOTIFY in the
//!   subscription dialog; every change of one of the extension's calls sends a new
//!   full-state document to every watcher (one `<dialog>` per call, trying / early /
//!   confirmed, then terminated once), with `version` counting up per subscription.
//!   One NOTIFY per subscription is in flight at a time; changes meanwhile make one
//!   NOTIFY with the latest state. Refreshes renew it; `Expires: 0` and expiry end it
//!   with `Subscription-State: terminated`.
//! - [`PbxStandIn`] / [`PbxHandle`]: the tokio task around the core, and its
//!   [`PbxSnapshot`] published on a `watch` channel at every change.
//!
//! Requests to phones follow RFC 3261: in a dialog, to the remote target (the phone's
//! Contact) through the route set learned from Record-Route; outside, to the Contact
//! the phone registered. Host names are never resolved: every URI the stand-in sends to
//! must hold an IP address (on loopback, the proxy's).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::phones::{random_seed, send_all, sleep_until};
use super::ua::{self, ClientTxns, Datagram, Dialog, Ids, Incoming, ServerTxns, response, text};
use crate::blf::{
    self, DIALOG_INFO_CONTENT_TYPE, DialogInfo, DialogState, Direction, Identity, Participant,
    render_dialog_info,
};
use crate::sip::build::cancel_for;
use crate::sip::{HeaderName, Message, Method};

/// What the stand-in allows (Allow header).
const ALLOW: &[u8] = b"INVITE, ACK, CANCEL, BYE, REGISTER, SUBSCRIBE, OPTIONS";

/// How the PBX stand-in behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbxOptions {
    /// The domain of the extensions' URIs (`sip:201@DOMAIN`), used in the documents.
    pub domain: String,
    /// How long an external number rings before the trunk answers.
    pub ring_time: Duration,
    /// When set, the far end of an external call hangs up this long after answering.
    pub external_hangup_after: Option<Duration>,
    /// How long the "announcement" of a star code lasts before the PBX hangs up.
    pub feature_code_hangup: Duration,
    /// The longest registration granted, in seconds (default 3600).
    pub max_register_expires: u32,
    /// The longest subscription granted, in seconds (default 3600).
    pub max_subscribe_expires: u32,
    /// Seed for tags, branches and Call-IDs (`None`: random).
    pub seed: Option<u64>,
}

impl Default for PbxOptions {
    fn default() -> Self {
        Self {
            domain: "pbx.example.com".to_owned(),
            ring_time: Duration::from_secs(1),
            external_hangup_after: None,
            feature_code_hangup: Duration::from_millis(500),
            max_register_expires: 3600,
            max_subscribe_expires: 3600,
            seed: None,
        }
    }
}

/// What kind of call the PBX routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PbxCallKind {
    /// Extension to extension (two legs).
    Internal,
    /// To an external number, answered by the stand-in's trunk.
    External,
    /// A star code (`*78`, `*79`, `*76`).
    FeatureCode,
}

/// Where a call stands, seen from the caller's leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PbxCallState {
    /// Routed, nothing rings yet.
    Trying,
    /// Ringing (an early dialog).
    Ringing,
    /// Answered.
    Connected,
}

/// One call the PBX holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PbxCall {
    /// The PBX's number for the call.
    pub id: u64,
    /// The calling extension (From user).
    pub caller: String,
    /// What was dialled.
    pub callee: String,
    /// Internal, external or star code.
    pub kind: PbxCallKind,
    /// Where it stands.
    pub state: PbxCallState,
}

/// What the PBX stand-in holds, published at every change.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PbxSnapshot {
    /// Registered extensions with their Contact URIs (the proxy's aliases when the
    /// phones register through it).
    pub registrations: BTreeMap<String, Vec<String>>,
    /// Calls in progress.
    pub calls: Vec<PbxCall>,
    /// Extensions in DND.
    pub dnd: BTreeSet<String>,
    /// Dialog subscriptions held.
    pub subscriptions: usize,
}

/// Why a [`PbxHandle`] request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PbxError {
    /// The stand-in's task has stopped.
    #[error("the PBX stand-in has stopped")]
    Stopped,
    /// What was awaited did not happen in time.
    #[error("the PBX stand-in did not get there within {0:?}")]
    Timeout(Duration),
}

// ===================================================================== the core

/// Who sent a request of the PBX.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    /// The INVITE of a call's second leg.
    BInvite(u64),
    /// A BYE (its answer needs nothing).
    Bye,
    /// A CANCEL (likewise).
    Cancel,
    /// A NOTIFY of a subscription.
    Notify(u64),
}

#[derive(Debug, Clone)]
struct Binding {
    contact: String,
    expires_at: Instant,
}

/// What a dialled user part is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Feature(String),
    Extension(String),
    External(String),
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallTimer {
    /// The trunk answers an external call.
    Answer,
    /// The far end of an external call hangs up.
    FarEndHangup,
    /// The star code's announcement is over.
    FeatureHangup,
}

/// The caller's leg: the PBX is its UAS.
#[derive(Debug)]
struct ALeg {
    invite: Message,
    call_id: String,
    caller_tag: String,
    tag: String,
    state: DialogState,
    final_code: Option<u16>,
    dialog: Option<Dialog>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelState {
    None,
    /// Wanted; sent at the first provisional answer (RFC 3261 §9.1).
    Pending,
    Sent,
}

/// The callee's leg: the PBX is its UAC.
#[derive(Debug)]
struct BLeg {
    ext: String,
    call_id: String,
    tag: String,
    invite: Message,
    state: DialogState,
    remote_tag: Option<String>,
    provisional: bool,
    final_code: Option<u16>,
    cancel: CancelState,
    dialog: Option<Dialog>,
}

#[derive(Debug)]
struct Call {
    id: u64,
    kind: PbxCallKind,
    caller: String,
    callee: String,
    a: ALeg,
    b: Option<BLeg>,
    timer: Option<(Instant, CallTimer)>,
    /// Over for everyone; kept only until the callee's INVITE gets its final answer.
    ended: bool,
}

/// One `Event: dialog` subscription: the PBX is its notifier.
#[derive(Debug)]
struct Subscription {
    ext: String,
    event: String,
    dialog: Dialog,
    expires_at: Instant,
    version: u32,
    in_flight: bool,
    /// The next document to send (the latest state).
    pending: Option<DialogInfo>,
    /// The subscription ends with the next NOTIFY, for this reason.
    ending: Option<&'static str>,
    /// The terminating NOTIFY went out.
    final_sent: bool,
}

/// The PBX stand-in, sans-IO.
#[derive(Debug)]
pub(crate) struct PbxCore {
    options: PbxOptions,
    local: SocketAddr,
    contact: String,
    ids: Ids,
    client: ClientTxns<Owner>,
    server: ServerTxns,
    out: Vec<Datagram>,
    bindings: BTreeMap<String, Vec<Binding>>,
    dnd: BTreeSet<String>,
    calls: BTreeMap<u64, Call>,
    /// Call-ID (of either leg) → call.
    by_call_id: HashMap<String, u64>,
    subs: BTreeMap<u64, Subscription>,
    next_id: u64,
    sessions: u64,
}

/// A full-state document's `<local>`/`<remote>`: one identity.
fn participant(uri: String) -> Participant {
    Participant {
        identities: vec![Identity { uri, display: None }],
        target: None,
    }
}

impl PbxCore {
    /// A PBX on the socket bound at `local`.
    pub(crate) fn new(local: SocketAddr, options: PbxOptions, seed: u64) -> Self {
        let local = ua::advertised(local);
        Self {
            contact: format!("sip:pbx@{}", ua::host_port(local)),
            options,
            local,
            ids: Ids::new(seed),
            client: ClientTxns::default(),
            server: ServerTxns::default(),
            out: Vec::new(),
            bindings: BTreeMap::new(),
            dnd: BTreeSet::new(),
            calls: BTreeMap::new(),
            by_call_id: HashMap::new(),
            subs: BTreeMap::new(),
            next_id: 1,
            sessions: seed % 1_000_000,
        }
    }

    /// Every datagram to send, in order.
    pub(crate) fn drain_transmits(&mut self) -> Vec<Datagram> {
        std::mem::take(&mut self.out)
    }

    /// The earliest time [`Self::handle_timeout`] has something to do.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let bindings = self.bindings.values().flatten().map(|b| b.expires_at);
        let calls = self
            .calls
            .values()
            .filter_map(|c| c.timer.map(|(at, _)| at));
        let subs = self
            .subs
            .values()
            .filter(|s| s.ending.is_none())
            .map(|s| s.expires_at);
        [self.client.poll_timeout(), self.server.poll_timeout()]
            .into_iter()
            .flatten()
            .chain(bindings)
            .chain(calls)
            .chain(subs)
            .min()
    }

    fn uri_of(&self, user: &str) -> String {
        format!("sip:{user}@{}", self.options.domain)
    }

    fn via(&mut self) -> String {
        let branch = self.ids.branch();
        ua::via(self.local, &branch)
    }

    fn reply(&mut self, now: Instant, req: &Message, bytes: Bytes) {
        self.server.respond(now, req, bytes, &mut self.out);
    }

    fn reply_plain(&mut self, now: Instant, req: &Message, code: u16, reason: &str) {
        let tag = (code > 100 && ua::to_tag(req).is_none()).then(|| self.ids.tag());
        let bytes = response(req, code, reason, tag.as_deref(), None, &[], None);
        self.reply(now, req, bytes);
    }

    fn next_sdp(&mut self) -> Vec<u8> {
        self.sessions += 1;
        ua::sdp(self.local, self.sessions)
    }

    /// Sends an in-dialog request to the dialog's next hop.
    fn send_in_dialog(
        &mut self,
        now: Instant,
        owner: Option<Owner>,
        dialog: &Dialog,
        bytes: Bytes,
    ) {
        let Some(to) = dialog.next_hop() else {
            warn!(call_id = %dialog.call_id, "no IP address to send an in-dialog request to");
            return;
        };
        match owner {
            Some(owner) => {
                let _ = self.client.send(now, owner, to, bytes, &mut self.out);
            }
            None => self.out.push(Datagram { to, bytes }),
        }
    }

    fn bye(&mut self, now: Instant, dialog: &mut Dialog) {
        let via = self.via();
        let bytes = dialog.request("BYE", None, &via, None, &[], None);
        self.send_in_dialog(now, Some(Owner::Bye), dialog, bytes);
    }

    // ------------------------------------------------------------ input

    /// A datagram from `from`.
    pub(crate) fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: Bytes) {
        let msg = match Message::parse(bytes) {
            Ok(msg) => msg,
            Err(e) => {
                debug!(source = %from, error = %e, "unparseable datagram dropped");
                return;
            }
        };
        if msg.is_request() {
            if let Err(e) = msg.validate() {
                debug!(source = %from, error = %e, "invalid request");
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
                    self.out.push(Datagram { to: from, bytes });
                }
                return;
            }
            match self.server.on_request(now, from, &msg, &mut self.out) {
                Incoming::Retransmission | Incoming::AckAbsorbed => return,
                Incoming::New => {}
            }
            self.handle_request(now, &msg);
        } else if let Some(answer) = self.client.on_response(now, &msg, &mut self.out) {
            if answer.fresh {
                self.handle_response(now, answer, &msg);
            }
        }
    }

    fn handle_request(&mut self, now: Instant, msg: &Message) {
        match msg.method() {
            Some(Method::Register) => self.register(now, msg),
            Some(Method::Invite) if ua::to_tag(msg).is_some() => self.reinvite(now, msg),
            Some(Method::Invite) => self.new_call(now, msg),
            Some(Method::Ack) => {
                if let (Some(call_id), Some((seq, _))) = (ua::call_id(msg), ua::cseq(msg)) {
                    self.server.acked(&call_id, seq);
                }
            }
            Some(Method::Cancel) => self.cancel(now, msg),
            Some(Method::Bye) => self.bye_request(now, msg),
            Some(Method::Subscribe) => self.subscribe(now, msg),
            Some(Method::Options) => {
                let bytes = response(msg, 200, "OK", None, None, &[("Allow", ALLOW)], None);
                self.reply(now, msg, bytes);
            }
            Some(Method::Notify) => {
                self.reply_plain(now, msg, 481, "Subscription Does Not Exist");
            }
            _ => {
                let tag = ua::to_tag(msg).is_none().then(|| self.ids.tag());
                let bytes = response(
                    msg,
                    405,
                    "Method Not Allowed",
                    tag.as_deref(),
                    None,
                    &[("Allow", ALLOW)],
                    None,
                );
                self.reply(now, msg, bytes);
            }
        }
    }

    fn handle_response(&mut self, now: Instant, answer: ua::Answer<Owner>, msg: &Message) {
        match answer.owner {
            Owner::BInvite(id) => self.b_response(now, id, &answer.request, &answer.branch, msg),
            Owner::Notify(id) => {
                let status = msg.status().unwrap_or(0);
                if status >= 200 {
                    self.notify_answered(now, id, Some(status));
                }
            }
            Owner::Bye | Owner::Cancel => {}
        }
    }

    /// Time passed: retransmissions, timeouts, expiries, the trunk's timers.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        for timed_out in self.client.handle_timeout(now, &mut self.out) {
            match timed_out.owner {
                Owner::BInvite(id) => self.b_timeout(now, id),
                Owner::Notify(id) => self.notify_answered(now, id, None),
                Owner::Bye | Owner::Cancel => {}
            }
        }
        for lost in self.server.handle_timeout(now, &mut self.out) {
            // a 2xx of ours never ACKed: the call is over (§13.3.1.4)
            if let Some(&id) = self.by_call_id.get(&lost.call_id) {
                self.hang_up_call(now, id);
            }
        }
        let before = self.bindings.values().map(Vec::len).sum::<usize>();
        for list in self.bindings.values_mut() {
            list.retain(|b| b.expires_at > now);
        }
        self.bindings.retain(|_, list| !list.is_empty());
        if self.bindings.values().map(Vec::len).sum::<usize>() != before {
            debug!("registrations expired");
        }
        let due: Vec<(u64, CallTimer)> = self
            .calls
            .iter()
            .filter_map(|(&id, c)| c.timer.filter(|(at, _)| *at <= now).map(|(_, t)| (id, t)))
            .collect();
        for (id, timer) in due {
            if let Some(call) = self.calls.get_mut(&id) {
                call.timer = None;
            }
            match timer {
                CallTimer::Answer => self.trunk_answers(now, id),
                CallTimer::FarEndHangup | CallTimer::FeatureHangup => self.hang_up_call(now, id),
            }
        }
        let expired: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, s)| s.ending.is_none() && s.expires_at <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.end_subscription(now, id, "timeout");
        }
    }

    /// Switches an extension's DND.
    pub(crate) fn set_dnd(&mut self, ext: &str, on: bool) {
        let changed = if on {
            self.dnd.insert(ext.to_owned())
        } else {
            self.dnd.remove(ext)
        };
        if changed {
            info!(ext, on, "DND");
        }
    }

    /// Leaving: every call is hung up and every subscription ended (sent once).
    pub(crate) fn shutdown(&mut self, now: Instant) {
        let ids: Vec<u64> = self.calls.keys().copied().collect();
        for id in ids {
            self.hang_up_call(now, id);
        }
        let subs: Vec<u64> = self.subs.keys().copied().collect();
        for id in subs {
            self.end_subscription(now, id, "noresource");
        }
    }

    // ------------------------------------------------------------ registrar

    fn register(&mut self, now: Instant, msg: &Message) {
        let Some(ext) = ua::to_uri(msg).and_then(|u| ua::uri_user(u.as_bytes())) else {
            self.reply_plain(now, msg, 400, "Bad Request - No User in To");
            return;
        };
        let header_expires = ua::expires(msg);
        let max = self.options.max_register_expires;
        let mut contacts = Vec::new();
        let mut wildcard = false;
        for contact in msg.contacts() {
            match contact {
                Ok(crate::sip::header::ContactValue::Wildcard) => wildcard = true,
                Ok(crate::sip::header::ContactValue::Address(a)) => contacts.push((
                    text(a.uri().as_bytes()),
                    a.expires().or(header_expires).unwrap_or(3600).min(max),
                )),
                Err(_) => {
                    self.reply_plain(now, msg, 400, "Bad Request - Malformed Contact");
                    return;
                }
            }
        }
        if wildcard {
            if header_expires != Some(0) || !contacts.is_empty() {
                self.reply_plain(now, msg, 400, "Bad Request - Wildcard Contact");
                return;
            }
            self.bindings.remove(&ext);
            info!(ext = %ext, "every binding removed");
        }
        for (contact, expires) in contacts {
            let list = self.bindings.entry(ext.clone()).or_default();
            list.retain(|b| b.contact != contact);
            if expires > 0 {
                list.push(Binding {
                    contact: contact.clone(),
                    expires_at: now + Duration::from_secs(u64::from(expires)),
                });
                info!(ext = %ext, contact = %contact, expires, "registered");
            } else {
                info!(ext = %ext, contact = %contact, "unregistered");
            }
        }
        self.bindings.retain(|_, list| !list.is_empty());
        let values: Vec<String> = self
            .bindings
            .get(&ext)
            .map(|list| {
                list.iter()
                    .map(|b| {
                        let left = b.expires_at.saturating_duration_since(now).as_secs();
                        format!("<{}>;expires={left}", b.contact)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let headers: Vec<(&str, &[u8])> =
            values.iter().map(|v| ("Contact", v.as_bytes())).collect();
        let tag = self.ids.tag();
        let bytes = response(msg, 200, "OK", Some(&tag), None, &headers, None);
        self.reply(now, msg, bytes);
    }

    fn registered_contact(&self, ext: &str, now: Instant) -> Option<String> {
        self.bindings
            .get(ext)?
            .iter()
            .filter(|b| b.expires_at > now)
            .max_by_key(|b| b.expires_at)
            .map(|b| b.contact.clone())
    }

    /// What a dialled user part is: a star code, an extension (registered, or 3 to 5
    /// digits not starting with 0 or 9), an external number (6 digits or more, or
    /// starting with 0, 9 or +), or nothing the PBX knows.
    fn classify(&self, user: &str) -> Target {
        if user.starts_with('*') || user.starts_with('#') {
            return Target::Feature(user.to_owned());
        }
        if self.bindings.contains_key(user) {
            return Target::Extension(user.to_owned());
        }
        let (plus, digits) = match user.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, user),
        };
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return Target::Unknown;
        }
        let first = digits.as_bytes()[0];
        if plus || digits.len() >= 6 || first == b'0' || first == b'9' {
            Target::External(user.to_owned())
        } else if digits.len() >= 3 {
            Target::Extension(user.to_owned())
        } else {
            Target::Unknown
        }
    }

    // ------------------------------------------------------------ calls

    fn new_call(&mut self, now: Instant, msg: &Message) {
        let (Some(call_id), Some(caller_tag), Some(caller)) =
            (ua::call_id(msg), ua::from_tag(msg), ua::from_user(msg))
        else {
            self.reply_plain(now, msg, 400, "Bad Request");
            return;
        };
        if self.by_call_id.contains_key(&call_id) {
            // a second INVITE in a call we hold (a fork through another path): refused
            self.reply_plain(now, msg, 482, "Loop Detected");
            return;
        }
        let dialled = msg
            .request_uri_bytes()
            .and_then(ua::uri_user)
            .unwrap_or_default();
        let trying = response(msg, 100, "Trying", None, None, &[], None);
        self.reply(now, msg, trying);
        let kind = match self.classify(&dialled) {
            Target::Feature(code) => {
                if !matches!(code.as_str(), "*78" | "*79" | "*76") {
                    self.reply_plain(now, msg, 404, "Not Found - Unknown Feature Code");
                    return;
                }
                PbxCallKind::FeatureCode
            }
            Target::Extension(ext) => {
                if self.dnd.contains(&ext) {
                    info!(caller = %caller, callee = %ext, "callee in DND: 486");
                    self.reply_plain(now, msg, 486, "Busy Here");
                    return;
                }
                if self.registered_contact(&ext, now).is_none() {
                    info!(caller = %caller, callee = %ext, "callee not registered: 480");
                    self.reply_plain(now, msg, 480, "Temporarily Unavailable");
                    return;
                }
                PbxCallKind::Internal
            }
            Target::External(_) => PbxCallKind::External,
            Target::Unknown => {
                self.reply_plain(now, msg, 404, "Not Found");
                return;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let tag = self.ids.tag();
        info!(id, caller = %caller, callee = %dialled, ?kind, "new call");
        let call = Call {
            id,
            kind,
            caller: caller.clone(),
            callee: dialled.clone(),
            a: ALeg {
                invite: msg.clone(),
                call_id: call_id.clone(),
                caller_tag,
                tag,
                state: DialogState::Trying,
                final_code: None,
                dialog: None,
            },
            b: None,
            timer: None,
            ended: false,
        };
        self.calls.insert(id, call);
        self.by_call_id.insert(call_id, id);
        match kind {
            PbxCallKind::Internal => {
                self.notify_ext(now, &caller, &[]);
                self.start_b_leg(now, id, &dialled);
            }
            PbxCallKind::External => {
                self.ring_a(now, id);
                if let Some(call) = self.calls.get_mut(&id) {
                    call.timer = Some((now + self.options.ring_time, CallTimer::Answer));
                }
            }
            PbxCallKind::FeatureCode => {
                self.answer_a(now, id, None);
                match dialled.as_str() {
                    "*78" => self.set_dnd(&caller, true),
                    "*79" => self.set_dnd(&caller, false),
                    _ => {
                        let on = !self.dnd.contains(&caller);
                        self.set_dnd(&caller, on);
                    }
                }
                if let Some(call) = self.calls.get_mut(&id) {
                    call.timer = Some((
                        now + self.options.feature_code_hangup,
                        CallTimer::FeatureHangup,
                    ));
                }
            }
        }
    }

    /// The callee's leg: a new INVITE to its registered Contact.
    fn start_b_leg(&mut self, now: Instant, id: u64, ext: &str) {
        let Some(contact) = self.registered_contact(ext, now) else {
            return;
        };
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let caller = call.caller.clone();
        let offer = {
            let invite = &call.a.invite;
            let body = invite.body();
            let content_type = invite.header(HeaderName::ContentType).map(text);
            match content_type {
                Some(ct) if !body.is_empty() => Some((ct, body.to_vec())),
                _ => None,
            }
        };
        let Some(to_addr) = ua::uri_addr(contact.as_bytes()) else {
            warn!(ext, contact = %contact, "registered Contact has no IP address: 480");
            self.fail_a(now, id, 480, "Temporarily Unavailable");
            return;
        };
        let call_id = self.ids.call_id(self.local.ip());
        let tag = self.ids.tag();
        let via = self.via();
        let from = format!("<{}>;tag={tag}", self.uri_of(&caller));
        let to = format!("<{}>", self.uri_of(ext));
        let sdp;
        let body = match &offer {
            Some((ct, body)) => Some((ct.as_str(), body.as_slice())),
            None => {
                sdp = self.next_sdp();
                Some(("application/sdp", sdp.as_slice()))
            }
        };
        let bytes = ua::NewRequest {
            method: "INVITE",
            uri: &contact,
            via: &via,
            from: &from,
            to: &to,
            call_id: &call_id,
            cseq: 1,
            contact: Some(&self.contact),
            headers: &[("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS")],
            body,
        }
        .build();
        let Ok(invite) = Message::parse(bytes.clone()) else {
            self.fail_a(now, id, 500, "Server Internal Error");
            return;
        };
        let _ = self
            .client
            .send(now, Owner::BInvite(id), to_addr, bytes, &mut self.out);
        self.by_call_id.insert(call_id.clone(), id);
        if let Some(call) = self.calls.get_mut(&id) {
            call.b = Some(BLeg {
                ext: ext.to_owned(),
                call_id,
                tag,
                invite,
                state: DialogState::Trying,
                remote_tag: None,
                provisional: false,
                final_code: None,
                cancel: CancelState::None,
                dialog: None,
            });
        }
        self.notify_ext(now, ext, &[]);
    }

    /// 180 Ringing to the caller.
    fn ring_a(&mut self, now: Instant, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.a.final_code.is_some() || call.a.state >= DialogState::Early {
            return;
        }
        call.a.state = DialogState::Early;
        let invite = call.a.invite.clone();
        let tag = call.a.tag.clone();
        let caller = call.caller.clone();
        let contact = self.contact.clone();
        let bytes = response(
            &invite,
            180,
            "Ringing",
            Some(&tag),
            Some(&contact),
            &[],
            None,
        );
        self.reply(now, &invite, bytes);
        self.notify_ext(now, &caller, &[]);
    }

    /// 200 OK to the caller (with the callee's answer, or the PBX's own SDP).
    fn answer_a(&mut self, now: Instant, id: u64, answer: Option<(String, Vec<u8>)>) {
        let sdp = self.next_sdp();
        let contact = self.contact.clone();
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.a.final_code.is_some() {
            return;
        }
        let invite = call.a.invite.clone();
        let tag = call.a.tag.clone();
        let (content_type, body) = answer.unwrap_or_else(|| ("application/sdp".to_owned(), sdp));
        call.a.final_code = Some(200);
        call.a.state = DialogState::Confirmed;
        call.a.dialog = Dialog::as_uas(&invite, &tag);
        let caller = call.caller.clone();
        let bytes = response(
            &invite,
            200,
            "OK",
            Some(&tag),
            Some(&contact),
            &[],
            Some((content_type.as_bytes(), &body)),
        );
        self.reply(now, &invite, bytes);
        self.notify_ext(now, &caller, &[]);
    }

    /// A final error to the caller, and the call is over.
    fn fail_a(&mut self, now: Instant, id: u64, code: u16, reason: &str) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.a.final_code.is_none() {
            call.a.final_code = Some(code);
            let invite = call.a.invite.clone();
            let tag = call.a.tag.clone();
            let bytes = response(&invite, code, reason, Some(&tag), None, &[], None);
            self.reply(now, &invite, bytes);
        }
        self.finish(now, id);
    }

    /// The trunk answers an external call.
    fn trunk_answers(&mut self, now: Instant, id: u64) {
        let hangup = self.options.external_hangup_after;
        self.answer_a(now, id, None);
        if let (Some(after), Some(call)) = (hangup, self.calls.get_mut(&id)) {
            call.timer = Some((now + after, CallTimer::FarEndHangup));
        }
    }

    /// The PBX ends a call: BYE to each answered leg, CANCEL to a ringing callee, 487 to
    /// a caller not answered yet.
    fn hang_up_call(&mut self, now: Instant, id: u64) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        if let Some(dialog) = call.a.dialog.as_mut() {
            self.bye(now, dialog);
        } else if call.a.final_code.is_none() {
            call.a.final_code = Some(487);
            let bytes = response(
                &call.a.invite,
                487,
                "Request Terminated",
                Some(&call.a.tag),
                None,
                &[],
                None,
            );
            self.server
                .respond(now, &call.a.invite, bytes, &mut self.out);
        }
        if let Some(b) = call.b.as_mut() {
            if let Some(dialog) = b.dialog.as_mut() {
                self.bye(now, dialog);
            } else {
                self.cancel_b(now, b);
            }
        }
        self.calls.insert(id, call);
        self.finish(now, id);
    }

    fn cancel_b(&mut self, now: Instant, b: &mut BLeg) {
        if b.final_code.is_some() || b.cancel != CancelState::None {
            return;
        }
        if b.provisional {
            b.cancel = CancelState::Sent;
            let bytes = cancel_for(&b.invite);
            if let Some(to) = b.invite.request_uri_bytes().and_then(ua::uri_addr) {
                let _ = self
                    .client
                    .send(now, Owner::Cancel, to, bytes, &mut self.out);
            }
        } else {
            b.cancel = CancelState::Pending;
        }
    }

    /// The call is over: every leg terminated, the watchers told once, the record
    /// dropped (or kept, ended, until the callee's INVITE has its final answer).
    fn finish(&mut self, now: Instant, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.ended {
            return;
        }
        call.ended = true;
        call.timer = None;
        let caller_told = call.a.state != DialogState::Terminated;
        call.a.state = DialogState::Terminated;
        let callee_told = call.b.as_mut().is_some_and(|b| {
            let told = b.state != DialogState::Terminated;
            b.state = DialogState::Terminated;
            told
        });
        info!(id, caller = %call.caller, callee = %call.callee, "call over");
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let mut views = Vec::new();
        if caller_told {
            views.push((call.caller.clone(), self.a_view(call)));
        }
        if let (true, Some(b), Some(view)) = (callee_told, &call.b, self.b_view(call)) {
            views.push((b.ext.clone(), view));
        }
        for (ext, view) in views {
            self.notify_ext(now, &ext, &[view]);
        }
        let b_pending = self
            .calls
            .get(&id)
            .and_then(|c| c.b.as_ref())
            .is_some_and(|b| b.final_code.is_none());
        if !b_pending {
            self.forget(id);
        }
    }

    fn forget(&mut self, id: u64) {
        if let Some(call) = self.calls.remove(&id) {
            self.by_call_id.remove(&call.a.call_id);
            if let Some(b) = &call.b {
                self.by_call_id.remove(&b.call_id);
            }
        }
    }

    /// An answer on the callee's leg.
    fn b_response(
        &mut self,
        now: Instant,
        id: u64,
        request: &Message,
        branch: &str,
        msg: &Message,
    ) {
        let status = msg.status().unwrap_or(0);
        let via = self.via();
        let Some(call) = self.calls.get_mut(&id) else {
            if (200..300).contains(&status) {
                self.drop_late_answer(now, request, branch, msg);
            }
            return;
        };
        let ended = call.ended;
        let Some(b) = call.b.as_mut() else {
            return;
        };
        match status {
            100..=199 => {
                b.provisional = true;
                if b.cancel == CancelState::Pending {
                    b.cancel = CancelState::None;
                    let mut leg = call.b.take();
                    if let Some(leg) = leg.as_mut() {
                        self.cancel_b(now, leg);
                    }
                    if let Some(call) = self.calls.get_mut(&id) {
                        call.b = leg;
                    }
                    return;
                }
                if ended || status == 100 {
                    return;
                }
                let Some(remote_tag) = ua::to_tag(msg) else {
                    return;
                };
                b.remote_tag = Some(remote_tag);
                let ext = b.ext.clone();
                if b.state < DialogState::Early {
                    b.state = DialogState::Early;
                    self.notify_ext(now, &ext, &[]);
                }
                self.ring_a(now, id);
            }
            200..=299 => {
                b.final_code = Some(status);
                let Some(mut dialog) = Dialog::as_uac(request, msg) else {
                    warn!(id, "the callee's 2xx has no To tag or Contact");
                    self.hang_up_call(now, id);
                    return;
                };
                let ack = dialog.request("ACK", Some(1), &via, None, &[], None);
                if let Some(to) = dialog.next_hop() {
                    self.client.set_ack(
                        branch,
                        Datagram {
                            to,
                            bytes: ack.clone(),
                        },
                    );
                    self.out.push(Datagram { to, bytes: ack });
                }
                if ended {
                    // the caller gave up meanwhile: end the answered leg
                    self.bye(now, &mut dialog);
                    self.forget(id);
                    return;
                }
                b.remote_tag = ua::to_tag(msg);
                b.state = DialogState::Confirmed;
                b.dialog = Some(dialog);
                let ext = b.ext.clone();
                let answer = match msg.header(HeaderName::ContentType) {
                    Some(ct) if !msg.body().is_empty() => Some((text(ct), msg.body().to_vec())),
                    _ => None,
                };
                self.notify_ext(now, &ext, &[]);
                self.answer_a(now, id, answer);
            }
            _ => {
                b.final_code = Some(status);
                if ended {
                    self.forget(id);
                    return;
                }
                let reason = msg.reason().map(text).unwrap_or_default();
                info!(id, status, "callee refused");
                self.fail_a(now, id, status, &reason);
            }
        }
    }

    /// A 2xx for a call already forgotten: ACK it and end it at once.
    fn drop_late_answer(&mut self, now: Instant, request: &Message, branch: &str, msg: &Message) {
        let Some(mut dialog) = Dialog::as_uac(request, msg) else {
            return;
        };
        let via = self.via();
        let ack = dialog.request("ACK", Some(1), &via, None, &[], None);
        if let Some(to) = dialog.next_hop() {
            self.client.set_ack(
                branch,
                Datagram {
                    to,
                    bytes: ack.clone(),
                },
            );
            self.out.push(Datagram { to, bytes: ack });
        }
        self.bye(now, &mut dialog);
    }

    /// Timer B of the callee's INVITE.
    fn b_timeout(&mut self, now: Instant, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some(b) = call.b.as_mut() {
            b.final_code = Some(408);
        }
        if call.ended {
            self.forget(id);
        } else {
            self.fail_a(now, id, 408, "Request Timeout");
        }
    }

    /// The caller's CANCEL.
    fn cancel(&mut self, now: Instant, msg: &Message) {
        let Some(pending) = self.server.invite_status(msg) else {
            self.reply_plain(now, msg, 481, "Call/Transaction Does Not Exist");
            return;
        };
        let ok = response(msg, 200, "OK", None, None, &[], None);
        self.reply(now, msg, ok);
        if pending.is_some() {
            return;
        }
        let Some(&id) = ua::call_id(msg).and_then(|c| self.by_call_id.get(&c)) else {
            return;
        };
        info!(id, "caller cancelled");
        self.fail_a(now, id, 487, "Request Terminated");
        self.hang_up_call(now, id);
    }

    /// A re-INVITE in one of the legs: accepted with the PBX's own SDP.
    fn reinvite(&mut self, now: Instant, msg: &Message) {
        let Some(&id) = ua::call_id(msg).and_then(|c| self.by_call_id.get(&c)) else {
            self.reply_plain(now, msg, 481, "Call/Transaction Does Not Exist");
            return;
        };
        let sdp = self.next_sdp();
        let contact = self.contact.clone();
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let leg = if call
            .a
            .dialog
            .as_ref()
            .is_some_and(|d| d.matches_request(msg))
        {
            call.a.dialog.as_mut()
        } else {
            call.b
                .as_mut()
                .and_then(|b| b.dialog.as_mut())
                .filter(|d| d.matches_request(msg))
        };
        let bytes = match leg {
            Some(dialog) => {
                dialog.update_from_request(msg);
                response(
                    msg,
                    200,
                    "OK",
                    None,
                    Some(&contact),
                    &[],
                    Some((b"application/sdp", &sdp)),
                )
            }
            None => response(
                msg,
                481,
                "Call/Transaction Does Not Exist",
                None,
                None,
                &[],
                None,
            ),
        };
        self.reply(now, msg, bytes);
    }

    /// A BYE from either leg: answered, and the other leg ended.
    fn bye_request(&mut self, now: Instant, msg: &Message) {
        let found = ua::call_id(msg)
            .and_then(|c| self.by_call_id.get(&c).copied())
            .and_then(|id| {
                let call = self.calls.get(&id)?;
                if call.ended {
                    return None;
                }
                let from_caller = ua::from_tag(msg).as_deref() == Some(call.a.caller_tag.as_str())
                    && ua::to_tag(msg).as_deref() == Some(call.a.tag.as_str());
                let from_callee = call.b.as_ref().is_some_and(|b| {
                    ua::call_id(msg).as_deref() == Some(b.call_id.as_str())
                        && ua::to_tag(msg).as_deref() == Some(b.tag.as_str())
                });
                (from_caller || from_callee).then_some((id, from_caller))
            });
        let Some((id, from_caller)) = found else {
            self.reply_plain(now, msg, 481, "Call/Transaction Does Not Exist");
            return;
        };
        let ok = response(msg, 200, "OK", None, None, &[], None);
        self.reply(now, msg, ok);
        info!(id, by_caller = from_caller, "BYE");
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        if from_caller {
            // the caller's dialog is over; a caller BYE on an early dialog ends the INVITE
            call.a.dialog = None;
            if call.a.final_code.is_none() {
                call.a.final_code = Some(487);
                let bytes = response(
                    &call.a.invite,
                    487,
                    "Request Terminated",
                    Some(&call.a.tag),
                    None,
                    &[],
                    None,
                );
                self.server
                    .respond(now, &call.a.invite, bytes, &mut self.out);
            }
        } else if let Some(b) = call.b.as_mut() {
            b.dialog = None;
        }
        self.calls.insert(id, call);
        self.hang_up_call(now, id);
    }

    // ------------------------------------------------------------ dialog-info

    fn a_view(&self, call: &Call) -> blf::Dialog {
        let mut dialog = blf::Dialog::new(format!("{}-{}", call.id, call.caller), call.a.state);
        dialog.call_id = Some(call.a.call_id.clone());
        dialog.local_tag = Some(call.a.caller_tag.clone());
        if call.a.state >= DialogState::Early {
            dialog.remote_tag = Some(call.a.tag.clone());
        }
        dialog.direction = Some(Direction::Initiator);
        dialog.local = Some(participant(self.uri_of(&call.caller)));
        dialog.remote = Some(participant(self.uri_of(&call.callee)));
        dialog
    }

    fn b_view(&self, call: &Call) -> Option<blf::Dialog> {
        let b = call.b.as_ref()?;
        let mut dialog = blf::Dialog::new(format!("{}-{}", call.id, b.ext), b.state);
        dialog.call_id = Some(b.call_id.clone());
        dialog.local_tag = b.remote_tag.clone();
        dialog.remote_tag = Some(b.tag.clone());
        dialog.direction = Some(Direction::Recipient);
        dialog.local = Some(participant(self.uri_of(&b.ext)));
        dialog.remote = Some(participant(self.uri_of(&call.caller)));
        Some(dialog)
    }

    /// The extension's calls as dialogs (the ones still going).
    fn dialogs_of(&self, ext: &str) -> Vec<blf::Dialog> {
        let mut out = Vec::new();
        for call in self.calls.values().filter(|c| !c.ended) {
            if call.caller == ext && call.a.state != DialogState::Terminated {
                out.push(self.a_view(call));
            }
            if let Some(b) = &call.b {
                if b.ext == ext && b.state != DialogState::Terminated {
                    if let Some(view) = self.b_view(call) {
                        out.push(view);
                    }
                }
            }
        }
        out
    }

    fn document(&self, ext: &str, terminated: &[blf::Dialog]) -> DialogInfo {
        let mut doc = DialogInfo::empty(Some(self.uri_of(ext)));
        doc.dialogs = self.dialogs_of(ext);
        doc.dialogs.extend_from_slice(terminated);
        doc
    }

    /// Tells every watcher of `ext` its current state (with the dialogs that just
    /// ended, once).
    fn notify_ext(&mut self, now: Instant, ext: &str, terminated: &[blf::Dialog]) {
        let ids: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, s)| s.ext == ext && s.ending.is_none())
            .map(|(&id, _)| id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let doc = self.document(ext, terminated);
        for id in ids {
            if let Some(sub) = self.subs.get_mut(&id) {
                sub.pending = Some(doc.clone());
            }
            self.flush_notify(now, id);
        }
    }

    /// Sends the subscription's pending NOTIFY unless one is in flight.
    fn flush_notify(&mut self, now: Instant, id: u64) {
        let via = self.via();
        let contact = self.contact.clone();
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        if sub.in_flight || sub.final_sent || (sub.pending.is_none() && sub.ending.is_none()) {
            return;
        }
        let state = match sub.ending {
            Some(reason) => {
                sub.final_sent = true;
                format!("terminated;reason={reason}")
            }
            None => {
                let left = sub.expires_at.saturating_duration_since(now).as_secs();
                format!("active;expires={left}")
            }
        };
        let ext = sub.ext.clone();
        let doc = match sub.pending.take() {
            Some(doc) => doc,
            None => {
                let mut doc = DialogInfo::empty(Some(format!("sip:{ext}@{}", self.options.domain)));
                doc.dialogs = Vec::new();
                doc
            }
        };
        let body = render_dialog_info(&doc, sub.version);
        sub.version = sub.version.wrapping_add(1);
        sub.in_flight = true;
        let headers: [(&str, &[u8]); 2] = [
            ("Event", sub.event.as_bytes()),
            ("Subscription-State", state.as_bytes()),
        ];
        let bytes = sub.dialog.request(
            "NOTIFY",
            None,
            &via,
            Some(&contact),
            &headers,
            Some((DIALOG_INFO_CONTENT_TYPE.as_bytes(), &body)),
        );
        let dialog = sub.dialog.clone();
        self.send_in_dialog(now, Some(Owner::Notify(id)), &dialog, bytes);
    }

    fn notify_answered(&mut self, now: Instant, id: u64, status: Option<u16>) {
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        sub.in_flight = false;
        let fatal = match status {
            None => true,
            Some(code) => matches!(
                code,
                404 | 405 | 408 | 410 | 416 | 480..=485 | 489 | 501 | 604
            ),
        };
        if sub.final_sent || fatal {
            if fatal && !sub.final_sent {
                debug!(watched = %sub.ext, ?status, "subscription dropped by the watcher");
            }
            self.subs.remove(&id);
            return;
        }
        self.flush_notify(now, id);
    }

    fn end_subscription(&mut self, now: Instant, id: u64, reason: &'static str) {
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        if sub.ending.is_none() {
            sub.ending = Some(reason);
            let ext = sub.ext.clone();
            let doc = self.document(&ext, &[]);
            if let Some(sub) = self.subs.get_mut(&id) {
                sub.pending = Some(doc);
            }
        }
        self.flush_notify(now, id);
    }

    fn subscribe(&mut self, now: Instant, msg: &Message) {
        let event = msg.event().and_then(Result::ok);
        let Some(event) = event.filter(|e| e.package().eq_ignore_ascii_case(b"dialog")) else {
            let tag = ua::to_tag(msg).is_none().then(|| self.ids.tag());
            let bytes = response(
                msg,
                489,
                "Bad Event",
                tag.as_deref(),
                None,
                &[("Allow-Events", b"dialog")],
                None,
            );
            self.reply(now, msg, bytes);
            return;
        };
        let event_value = match event.id() {
            Some(id) => format!("dialog;id={}", text(id)),
            None => "dialog".to_owned(),
        };
        let expires = ua::expires(msg)
            .unwrap_or(3600)
            .min(self.options.max_subscribe_expires);
        let expires_text = expires.to_string();
        let contact = self.contact.clone();
        if ua::to_tag(msg).is_some() {
            // a refresh (or the end) of a subscription we hold
            let found = self
                .subs
                .iter()
                .find(|(_, s)| s.dialog.matches_request(msg) && !s.final_sent)
                .map(|(&id, _)| id);
            let Some(id) = found else {
                self.reply_plain(now, msg, 481, "Subscription Does Not Exist");
                return;
            };
            let bytes = response(
                msg,
                200,
                "OK",
                None,
                Some(&contact),
                &[("Expires", expires_text.as_bytes())],
                None,
            );
            self.reply(now, msg, bytes);
            if let Some(sub) = self.subs.get_mut(&id) {
                sub.dialog.update_from_request(msg);
                if expires > 0 {
                    sub.expires_at = now + Duration::from_secs(u64::from(expires));
                }
            }
            if expires == 0 {
                self.end_subscription(now, id, "timeout");
            } else if let Some(ext) = self.subs.get(&id).map(|s| s.ext.clone()) {
                let doc = self.document(&ext, &[]);
                if let Some(sub) = self.subs.get_mut(&id) {
                    sub.pending = Some(doc);
                }
                self.flush_notify(now, id);
            }
            return;
        }
        let watched = msg
            .request_uri_bytes()
            .and_then(ua::uri_user)
            .unwrap_or_default();
        if !matches!(self.classify(&watched), Target::Extension(_)) {
            self.reply_plain(now, msg, 404, "Not Found");
            return;
        }
        if let Some(accept) = msg.header(HeaderName::Accept) {
            let accept = text(accept).to_ascii_lowercase();
            if !accept.contains(DIALOG_INFO_CONTENT_TYPE) && !accept.contains("*/*") {
                self.reply_plain(now, msg, 406, "Not Acceptable");
                return;
            }
        }
        let tag = self.ids.tag();
        let Some(dialog) = Dialog::as_uas(msg, &tag) else {
            self.reply_plain(now, msg, 400, "Bad Request - No Contact");
            return;
        };
        let bytes = response(
            msg,
            200,
            "OK",
            Some(&tag),
            Some(&contact),
            &[("Expires", expires_text.as_bytes())],
            None,
        );
        self.reply(now, msg, bytes);
        let id = self.next_id;
        self.next_id += 1;
        let subscriber = ua::from_user(msg).unwrap_or_default();
        info!(id, watcher = %subscriber, watched = %watched, expires, "subscription");
        let doc = self.document(&watched, &[]);
        self.subs.insert(
            id,
            Subscription {
                ext: watched,
                event: event_value,
                dialog,
                expires_at: now + Duration::from_secs(u64::from(expires)),
                version: 0,
                in_flight: false,
                pending: Some(doc),
                ending: (expires == 0).then_some("timeout"),
                final_sent: false,
            },
        );
        self.flush_notify(now, id);
    }

    // ------------------------------------------------------------ view

    /// What the PBX holds now.
    pub(crate) fn snapshot(&self, now: Instant) -> PbxSnapshot {
        PbxSnapshot {
            registrations: self
                .bindings
                .iter()
                .filter_map(|(ext, list)| {
                    let contacts: Vec<String> = list
                        .iter()
                        .filter(|b| b.expires_at > now)
                        .map(|b| b.contact.clone())
                        .collect();
                    (!contacts.is_empty()).then(|| (ext.clone(), contacts))
                })
                .collect(),
            calls: self
                .calls
                .values()
                .filter(|c| !c.ended)
                .map(|c| PbxCall {
                    id: c.id,
                    caller: c.caller.clone(),
                    callee: c.callee.clone(),
                    kind: c.kind,
                    state: match c.a.state {
                        DialogState::Early => PbxCallState::Ringing,
                        DialogState::Confirmed => PbxCallState::Connected,
                        _ => PbxCallState::Trying,
                    },
                })
                .collect(),
            dnd: self.dnd.clone(),
            subscriptions: self.subs.values().filter(|s| !s.final_sent).count(),
        }
    }
}

// ===================================================================== the task

/// What a [`PbxHandle`] asks of its task.
#[derive(Debug)]
enum PbxCommand {
    SetDnd(String, bool, oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Starts the PBX stand-in (see [`PbxStandIn::start`]).
#[derive(Debug, Clone, Copy)]
pub struct PbxStandIn;

impl PbxStandIn {
    /// Binds UDP `bind` (port 0: a free one) and starts the stand-in's task.
    pub async fn start(bind: SocketAddr, options: PbxOptions) -> io::Result<PbxHandle> {
        let socket = UdpSocket::bind(bind).await?;
        let local = socket.local_addr()?;
        let seed = options.seed.unwrap_or_else(|| random_seed(local));
        let core = PbxCore::new(local, options, seed);
        let (commands, inbox) = mpsc::channel(64);
        let (publisher, snapshots) = watch::channel(core.snapshot(Instant::now()));
        let task = tokio::spawn(run_pbx(socket, core, inbox, publisher));
        info!(address = %local, "PBX stand-in listening");
        Ok(PbxHandle {
            local_addr: ua::advertised(local),
            commands,
            snapshots,
            task,
        })
    }
}

async fn run_pbx(
    socket: UdpSocket,
    mut core: PbxCore,
    mut inbox: mpsc::Receiver<PbxCommand>,
    publisher: watch::Sender<PbxSnapshot>,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        send_all(&socket, core.drain_transmits()).await;
        let snapshot = core.snapshot(Instant::now());
        publisher.send_if_modified(|current| {
            let changed = *current != snapshot;
            if changed {
                *current = snapshot;
            }
            changed
        });
        let deadline = core.poll_timeout();
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => {
                    core.handle_datagram(Instant::now(), from, Bytes::copy_from_slice(&buf[..n]));
                }
                Err(e) => debug!(error = %e, "receive failed"),
            },
            () = sleep_until(deadline) => core.handle_timeout(Instant::now()),
            command = inbox.recv() => match command {
                Some(PbxCommand::SetDnd(ext, on, reply)) => {
                    core.set_dnd(&ext, on);
                    let _ = reply.send(());
                }
                Some(PbxCommand::Shutdown(reply)) => {
                    core.shutdown(Instant::now());
                    send_all(&socket, core.drain_transmits()).await;
                    let _ = reply.send(());
                    break;
                }
                None => {
                    core.shutdown(Instant::now());
                    send_all(&socket, core.drain_transmits()).await;
                    break;
                }
            },
        }
    }
    debug!("PBX stand-in stopped");
}

/// The running PBX stand-in.
#[derive(Debug)]
pub struct PbxHandle {
    local_addr: SocketAddr,
    commands: mpsc::Sender<PbxCommand>,
    snapshots: watch::Receiver<PbxSnapshot>,
    task: JoinHandle<()>,
}

impl PbxHandle {
    /// The stand-in's UDP address (the proxy's `pbx.host`/`pbx.port`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the stand-in holds now.
    pub fn snapshot(&self) -> PbxSnapshot {
        self.snapshots.borrow().clone()
    }

    /// A receiver of every change of the stand-in's [`PbxSnapshot`].
    pub fn subscribe(&self) -> watch::Receiver<PbxSnapshot> {
        self.snapshots.clone()
    }

    /// Waits until the snapshot satisfies `condition` (checked at once, then at every
    /// change), at most `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&PbxSnapshot) -> bool,
    ) -> Result<PbxSnapshot, PbxError> {
        let mut snapshots = self.snapshots.clone();
        match tokio::time::timeout(timeout, snapshots.wait_for(|s| condition(s))).await {
            Ok(Ok(snapshot)) => Ok(snapshot.clone()),
            Ok(Err(_)) => Err(PbxError::Stopped),
            Err(_) => Err(PbxError::Timeout(timeout)),
        }
    }

    /// Switches an extension's DND from the PBX side (as an administrator would).
    pub async fn set_dnd(&self, ext: &str, on: bool) -> Result<(), PbxError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(PbxCommand::SetDnd(ext.to_owned(), on, reply))
            .await
            .map_err(|_| PbxError::Stopped)?;
        answer.await.map_err(|_| PbxError::Stopped)
    }

    /// Hangs up every call, ends every subscription (each sent once, not awaited) and
    /// stops the task.
    pub async fn shutdown(self) {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(PbxCommand::Shutdown(reply))
            .await
            .is_ok()
        {
            let _ = answer.await;
        }
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::demo::phones::{
        CallDirection, CallView, Lamp, PhoneAgent, PhoneError, PhoneOptions,
    };

    const PBX: &str = "127.0.0.1:5070";

    /// Decides which datagrams the network loses.
    type DropRule = Box<dyn FnMut(&Message) -> bool>;

    /// The PBX core and phone agents wired together in memory (the phones use the PBX
    /// itself as outbound proxy), on a fake clock.
    struct Net {
        now: Instant,
        pbx: PbxCore,
        pbx_addr: SocketAddr,
        phones: BTreeMap<String, (SocketAddr, PhoneAgent)>,
        /// Every datagram delivered: (from, to, message).
        log: Vec<(SocketAddr, SocketAddr, Message)>,
        /// Drops the datagrams it says yes to (each call decides once).
        drop: Option<DropRule>,
        /// Delivers each datagram twice.
        duplicate: bool,
    }

    fn options() -> PbxOptions {
        PbxOptions {
            seed: Some(7),
            ..PbxOptions::default()
        }
    }

    impl Net {
        fn new(options: PbxOptions) -> Self {
            let pbx_addr: SocketAddr = PBX.parse().unwrap();
            Self {
                now: Instant::now(),
                pbx: PbxCore::new(pbx_addr, options, 7),
                pbx_addr,
                phones: BTreeMap::new(),
                log: Vec::new(),
                drop: None,
                duplicate: false,
            }
        }

        fn add_phone(&mut self, ext: &str, ring_time: Duration) {
            let addr: SocketAddr = format!("127.0.0.1:{}", 6000 + self.phones.len())
                .parse()
                .unwrap();
            let mut options = PhoneOptions::new(self.pbx_addr);
            options.ring_time = ring_time;
            options.subscribe_expires = 120;
            let seed = 100 + self.phones.len() as u64;
            let mut agent = PhoneAgent::new(ext, addr, &options, seed);
            agent.start(self.now);
            self.phones.insert(ext.to_owned(), (addr, agent));
            self.pump();
        }

        fn phone(&mut self, ext: &str) -> &mut PhoneAgent {
            &mut self.phones.get_mut(ext).unwrap().1
        }

        fn dial(&mut self, ext: &str, target: &str) -> Result<(), PhoneError> {
            let now = self.now;
            self.phone(ext).dial(now, target)
        }

        fn hang_up(&mut self, ext: &str) -> Result<(), PhoneError> {
            let now = self.now;
            self.phone(ext).hang_up(now)
        }

        fn watch(&mut self, ext: &str, watched: &[&str]) {
            let now = self.now;
            let watched: Vec<String> = watched.iter().map(|w| (*w).to_owned()).collect();
            self.phone(ext).watch(now, &watched);
        }

        fn unwatch(&mut self, ext: &str, watched: &[&str]) {
            let now = self.now;
            let watched: Vec<String> = watched.iter().map(|w| (*w).to_owned()).collect();
            self.phone(ext).unwatch(now, &watched);
        }

        fn shutdown(&mut self, ext: &str) {
            let now = self.now;
            self.phone(ext).shutdown(now);
        }

        fn view(&self, ext: &str) -> crate::demo::phones::PhoneSnapshot {
            self.phones[ext].1.snapshot(|_| 0)
        }

        fn lamp(&self, watcher: &str, watched: &str) -> Lamp {
            self.view(watcher).lamps.get(watched).copied().unwrap()
        }

        /// Delivers datagrams until nobody has anything to send.
        fn pump(&mut self) {
            let mut queue: VecDeque<(SocketAddr, Datagram)> = VecDeque::new();
            for _ in 0..10_000 {
                for d in self.pbx.drain_transmits() {
                    queue.push_back((self.pbx_addr, d));
                }
                for (addr, agent) in self.phones.values_mut() {
                    for d in agent.drain_transmits() {
                        queue.push_back((*addr, d));
                    }
                }
                let Some((from, datagram)) = queue.pop_front() else {
                    return;
                };
                let msg = Message::parse(datagram.bytes.clone()).unwrap();
                if let Some(drop) = self.drop.as_mut() {
                    if drop(&msg) {
                        continue;
                    }
                }
                self.log.push((from, datagram.to, msg));
                let times = if self.duplicate { 2 } else { 1 };
                for _ in 0..times {
                    if datagram.to == self.pbx_addr {
                        self.pbx
                            .handle_datagram(self.now, from, datagram.bytes.clone());
                    } else if let Some((_, agent)) =
                        self.phones.values_mut().find(|(a, _)| *a == datagram.to)
                    {
                        agent.handle_datagram(self.now, from, datagram.bytes.clone());
                    }
                }
            }
            panic!("the network never went quiet");
        }

        /// Lets `d` pass, firing every timer on the way.
        fn advance(&mut self, d: Duration) {
            let end = self.now + d;
            loop {
                let next = self
                    .phones
                    .values()
                    .filter_map(|(_, a)| a.poll_timeout())
                    .chain(self.pbx.poll_timeout())
                    .min();
                match next {
                    Some(at) if at <= end => {
                        self.now = self.now.max(at);
                        self.pbx.handle_timeout(self.now);
                        for (_, agent) in self.phones.values_mut() {
                            agent.handle_timeout(self.now);
                        }
                        self.pump();
                    }
                    _ => break,
                }
            }
            self.now = end;
        }

        fn sent(&self, start_line: &str) -> usize {
            self.log
                .iter()
                .filter(|(_, _, m)| first_line(m).starts_with(start_line))
                .count()
        }
    }

    fn first_line(msg: &Message) -> String {
        let bytes = msg.as_bytes();
        let end = bytes
            .iter()
            .position(|&c| c == b'\r')
            .unwrap_or(bytes.len());
        text(&bytes[..end])
    }

    fn three_phones() -> Net {
        let mut net = Net::new(options());
        for ext in ["201", "202", "203"] {
            net.add_phone(ext, Duration::from_millis(800));
        }
        net.watch("203", &["201", "202"]);
        net.pump();
        net
    }

    #[test]
    fn phones_register_and_refresh() {
        let mut net = Net::new(options());
        net.add_phone("201", Duration::from_secs(1));
        assert!(net.view("201").registered);
        let snapshot = net.pbx.snapshot(net.now);
        assert_eq!(
            snapshot.registrations.get("201"),
            Some(&vec!["sip:201@127.0.0.1:6000".to_owned()])
        );
        // 600 s asked, refreshed at half-time: still there after an hour
        net.advance(Duration::from_secs(3600));
        assert!(net.view("201").registered);
        assert!(net.pbx.snapshot(net.now).registrations.contains_key("201"));
        assert!(net.sent("REGISTER") >= 12);
        net.shutdown("201");
        net.pump();
        assert!(net.pbx.snapshot(net.now).registrations.is_empty());
    }

    #[test]
    fn a_lost_register_is_retransmitted() {
        let mut net = Net::new(options());
        let mut dropped = false;
        net.drop = Some(Box::new(move |m| {
            let first = !dropped && m.method() == Some(Method::Register);
            dropped |= first;
            first
        }));
        net.add_phone("201", Duration::from_secs(1));
        assert!(!net.view("201").registered);
        net.advance(Duration::from_millis(600));
        assert!(net.view("201").registered);
    }

    #[test]
    fn an_internal_call_lights_the_lamps_of_both_extensions() {
        let mut net = three_phones();
        assert_eq!(net.lamp("203", "201"), Lamp::Idle);
        assert_eq!(net.lamp("203", "202"), Lamp::Idle);
        assert_eq!(net.pbx.snapshot(net.now).subscriptions, 2);

        net.dial("201", "202").unwrap();
        net.pump();
        assert_eq!(
            net.view("201").call,
            CallView::Ringing {
                peer: "202".into(),
                direction: CallDirection::Outgoing
            }
        );
        assert_eq!(
            net.view("202").call,
            CallView::Ringing {
                peer: "201".into(),
                direction: CallDirection::Incoming
            }
        );
        assert_eq!(net.lamp("203", "201"), Lamp::Ringing);
        assert_eq!(net.lamp("203", "202"), Lamp::Ringing);
        let calls = net.pbx.snapshot(net.now).calls;
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].kind, PbxCallKind::Internal);
        assert_eq!(calls[0].state, PbxCallState::Ringing);

        net.advance(Duration::from_secs(1));
        assert!(matches!(net.view("201").call, CallView::Connected { .. }));
        assert!(matches!(net.view("202").call, CallView::Connected { .. }));
        assert_eq!(net.lamp("203", "201"), Lamp::Busy);
        assert_eq!(net.lamp("203", "202"), Lamp::Busy);
        assert_eq!(net.view("201").last_final_status, Some(200));

        net.hang_up("201").unwrap();
        net.pump();
        assert_eq!(net.view("201").call, CallView::Idle);
        assert_eq!(net.view("202").call, CallView::Idle);
        assert_eq!(net.lamp("203", "201"), Lamp::Idle);
        assert_eq!(net.lamp("203", "202"), Lamp::Idle);
        assert!(net.pbx.snapshot(net.now).calls.is_empty());
        // the callee's 2xx was ACKed: nothing is retransmitted afterwards
        let before = net.log.len();
        net.advance(Duration::from_secs(40));
        let after: Vec<String> = net.log[before..]
            .iter()
            .map(|(_, _, m)| first_line(m))
            .filter(|l| !l.starts_with("REGISTER") && !l.starts_with("SIP/2.0 200"))
            .filter(|l| !l.starts_with("SUBSCRIBE") && !l.starts_with("NOTIFY"))
            .collect();
        assert_eq!(after, Vec::<String>::new());
    }

    #[test]
    fn the_callee_hangs_up() {
        let mut net = three_phones();
        net.dial("201", "202").unwrap();
        net.pump();
        net.advance(Duration::from_secs(1));
        net.hang_up("202").unwrap();
        net.pump();
        assert_eq!(net.view("201").call, CallView::Idle);
        assert_eq!(net.lamp("203", "201"), Lamp::Idle);
        assert!(net.pbx.snapshot(net.now).calls.is_empty());
    }

    #[test]
    fn documents_are_full_state_with_rising_versions() {
        let mut net = three_phones();
        net.dial("201", "202").unwrap();
        net.pump();
        net.advance(Duration::from_secs(1));
        let versions: Vec<u32> = net
            .log
            .iter()
            .filter(|(_, to, m)| {
                m.method() == Some(Method::Notify)
                    && *to == net.phones["203"].0
                    && ua::to_uri(m).is_some()
                    && m.header(HeaderName::From)
                        .is_some_and(|f| text(f).contains("sip:202@"))
            })
            .map(|(_, _, m)| {
                let doc = blf::parse_dialog_info(m.body()).unwrap();
                assert_eq!(doc.state, blf::DocumentState::Full);
                assert!(
                    m.header(HeaderName::SubscriptionState)
                        .is_some_and(|s| text(s).starts_with("active;expires="))
                );
                doc.version.unwrap()
            })
            .collect();
        assert_eq!(versions, (0..versions.len() as u32).collect::<Vec<_>>());
        assert!(
            versions.len() >= 3,
            "idle, trying/early, confirmed: {versions:?}"
        );
    }

    #[test]
    fn an_external_call_is_answered_by_the_trunk_and_may_be_hung_up_by_it() {
        let mut net = Net::new(PbxOptions {
            external_hangup_after: Some(Duration::from_secs(5)),
            ..options()
        });
        net.add_phone("201", Duration::from_secs(1));
        net.add_phone("203", Duration::from_secs(1));
        net.watch("203", &["201"]);
        net.pump();
        net.dial("201", "+4930123456").unwrap();
        net.pump();
        assert_eq!(net.lamp("203", "201"), Lamp::Ringing);
        assert_eq!(
            net.pbx.snapshot(net.now).calls[0].kind,
            PbxCallKind::External
        );
        net.advance(Duration::from_millis(1100));
        assert!(matches!(net.view("201").call, CallView::Connected { .. }));
        assert_eq!(net.lamp("203", "201"), Lamp::Busy);
        net.advance(Duration::from_secs(5));
        assert_eq!(net.view("201").call, CallView::Idle);
        assert_eq!(net.lamp("203", "201"), Lamp::Idle);
    }

    #[test]
    fn star_codes_switch_dnd_and_dnd_refuses_calls() {
        let mut net = three_phones();
        net.dial("202", "*78").unwrap();
        net.pump();
        assert!(matches!(net.view("202").call, CallView::Connected { .. }));
        assert!(net.pbx.snapshot(net.now).dnd.contains("202"));
        net.advance(Duration::from_secs(1));
        assert_eq!(net.view("202").call, CallView::Idle, "the PBX hangs up");
        net.dial("201", "202").unwrap();
        net.pump();
        assert_eq!(net.view("201").call, CallView::Idle);
        assert_eq!(net.view("201").last_final_status, Some(486));
        assert_eq!(net.view("202").call, CallView::Idle);
        net.dial("202", "*79").unwrap();
        net.pump();
        net.advance(Duration::from_secs(1));
        assert!(net.pbx.snapshot(net.now).dnd.is_empty());
        net.dial("202", "*99").unwrap();
        net.pump();
        assert_eq!(net.view("202").last_final_status, Some(404));
    }

    #[test]
    fn unregistered_extensions_get_480_and_unknown_users_404() {
        let mut net = three_phones();
        net.dial("201", "299").unwrap();
        net.pump();
        assert_eq!(net.view("201").last_final_status, Some(480));
        net.dial("201", "12").unwrap();
        net.pump();
        assert_eq!(net.view("201").last_final_status, Some(404));
    }

    #[test]
    fn a_busy_phone_answers_486() {
        let mut net = three_phones();
        net.dial("202", "0301234567").unwrap();
        net.pump();
        net.dial("201", "202").unwrap();
        net.pump();
        assert_eq!(net.view("201").last_final_status, Some(486));
        assert_eq!(net.view("201").call, CallView::Idle);
        assert!(matches!(net.view("202").call, CallView::Ringing { .. }));
    }

    #[test]
    fn cancel_is_bridged_to_the_callee() {
        let mut net = three_phones();
        net.dial("201", "202").unwrap();
        net.pump();
        net.hang_up("201").unwrap();
        net.pump();
        assert_eq!(net.view("201").call, CallView::Idle);
        assert_eq!(net.view("201").last_final_status, Some(487));
        assert_eq!(net.view("202").call, CallView::Idle);
        assert_eq!(net.lamp("203", "201"), Lamp::Idle);
        assert_eq!(net.lamp("203", "202"), Lamp::Idle);
        assert!(net.pbx.snapshot(net.now).calls.is_empty());
        assert_eq!(net.sent("CANCEL"), 2);
        // nothing left over once the transactions are gone
        net.advance(Duration::from_secs(40));
        assert!(net.pbx.calls.is_empty() && net.pbx.by_call_id.is_empty());
    }

    #[test]
    fn a_ringing_phone_can_reject_the_call() {
        let mut net = three_phones();
        net.dial("201", "202").unwrap();
        net.pump();
        net.hang_up("202").unwrap();
        net.pump();
        assert_eq!(net.view("201").last_final_status, Some(486));
        assert_eq!(net.lamp("203", "202"), Lamp::Idle);
    }

    #[test]
    fn duplicated_datagrams_are_absorbed() {
        let mut net = Net::new(options());
        net.duplicate = true;
        for ext in ["201", "202", "203"] {
            net.add_phone(ext, Duration::from_millis(800));
        }
        net.watch("203", &["202"]);
        net.pump();
        net.dial("201", "202").unwrap();
        net.pump();
        net.advance(Duration::from_secs(1));
        assert!(matches!(net.view("201").call, CallView::Connected { .. }));
        assert_eq!(net.lamp("203", "202"), Lamp::Busy);
        // one NOTIFY per state (idle, trying, early, confirmed), each counted once
        assert_eq!(net.view("203").notifies_received, 4);
        assert_eq!(net.pbx.snapshot(net.now).calls.len(), 1);
        net.hang_up("202").unwrap();
        net.pump();
        assert_eq!(net.view("201").call, CallView::Idle);
    }

    #[test]
    fn a_lost_notify_is_sent_again() {
        let mut net = three_phones();
        let mut dropped = false;
        net.drop = Some(Box::new(move |m| {
            let first = !dropped && m.method() == Some(Method::Notify);
            dropped |= first;
            first
        }));
        net.dial("201", "+4930123456").unwrap();
        net.pump();
        assert_eq!(net.lamp("203", "201"), Lamp::Idle, "the NOTIFY was lost");
        net.advance(Duration::from_millis(600));
        assert_eq!(net.lamp("203", "201"), Lamp::Ringing);
    }

    #[test]
    fn subscriptions_are_refreshed_and_ended() {
        let mut net = three_phones();
        net.advance(Duration::from_secs(400));
        assert_eq!(net.pbx.snapshot(net.now).subscriptions, 2);
        assert_eq!(net.lamp("203", "201"), Lamp::Idle);
        assert!(net.sent("SUBSCRIBE") >= 2 + 2 * 6);
        net.unwatch("203", &["201"]);
        net.pump();
        assert_eq!(net.pbx.snapshot(net.now).subscriptions, 1);
        assert!(!net.view("203").lamps.contains_key("201"));
        let last = net
            .log
            .iter()
            .rev()
            .find(|(_, _, m)| m.method() == Some(Method::Notify))
            .unwrap();
        assert!(
            last.2
                .header(HeaderName::SubscriptionState)
                .is_some_and(|s| text(s) == "terminated;reason=timeout")
        );
    }

    #[test]
    fn an_expired_registration_makes_calls_fail_with_480() {
        let mut net = Net::new(PbxOptions {
            max_register_expires: 60,
            ..options()
        });
        net.add_phone("201", Duration::from_secs(1));
        net.add_phone("202", Duration::from_secs(1));
        // 202 leaves without unregistering
        net.phones.remove("202");
        net.advance(Duration::from_secs(61));
        assert!(!net.pbx.snapshot(net.now).registrations.contains_key("202"));
        net.dial("201", "202").unwrap();
        net.pump();
        assert_eq!(net.view("201").last_final_status, Some(480));
    }

    #[test]
    fn classify_numbers() {
        let mut pbx = PbxCore::new(PBX.parse().unwrap(), options(), 1);
        assert_eq!(pbx.classify("*78"), Target::Feature("*78".into()));
        assert_eq!(pbx.classify("#21"), Target::Feature("#21".into()));
        assert_eq!(pbx.classify("201"), Target::Extension("201".into()));
        assert_eq!(pbx.classify("20155"), Target::Extension("20155".into()));
        assert_eq!(pbx.classify("201555"), Target::External("201555".into()));
        assert_eq!(pbx.classify("0301234"), Target::External("0301234".into()));
        assert_eq!(pbx.classify("912"), Target::External("912".into()));
        assert_eq!(pbx.classify("+49301"), Target::External("+49301".into()));
        assert_eq!(pbx.classify("12"), Target::Unknown);
        assert_eq!(pbx.classify("alice"), Target::Unknown);
        pbx.bindings.insert(
            "alice".into(),
            vec![Binding {
                contact: "sip:alice@127.0.0.1:7000".into(),
                expires_at: Instant::now() + Duration::from_secs(60),
            }],
        );
        assert_eq!(pbx.classify("alice"), Target::Extension("alice".into()));
    }

    #[test]
    fn the_registrar_answers_with_every_binding_and_removes_on_expires_zero() {
        let mut pbx = PbxCore::new(PBX.parse().unwrap(), options(), 1);
        let now = Instant::now();
        let from: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let register = |branch: &str, contact: &str, expires: u32, cseq: u32| {
            Bytes::from(format!(
                "REGISTER sip:pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\nFrom: <sip:201@pbx.example.com>;tag=a\r\nTo: <sip:201@pbx.example.com>\r\nCall-ID: r@x\r\nCSeq: {cseq} REGISTER\r\nContact: <{contact}>\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n"
            ))
        };
        pbx.handle_datagram(
            now,
            from,
            register("1", "sip:201@127.0.0.1:5060;ppa=abc", 7200, 1),
        );
        pbx.handle_datagram(now, from, register("2", "sip:201@10.0.0.9:5060", 60, 2));
        let out = pbx.drain_transmits();
        assert_eq!(out.len(), 2);
        let ok = Message::parse(out[1].bytes.clone()).unwrap();
        assert_eq!(ok.status(), Some(200));
        assert_eq!(out[1].to, from);
        let contacts = ua::contacts_with_expires(&ok);
        assert_eq!(
            contacts,
            vec![
                ("sip:201@127.0.0.1:5060;ppa=abc".to_owned(), Some(3600)),
                ("sip:201@10.0.0.9:5060".to_owned(), Some(60)),
            ]
        );
        pbx.handle_datagram(now, from, register("3", "sip:201@10.0.0.9:5060", 0, 3));
        assert_eq!(
            pbx.snapshot(now).registrations["201"],
            vec!["sip:201@127.0.0.1:5060;ppa=abc".to_owned()]
        );
        // a retransmission is answered from the transaction, not registered again
        pbx.handle_datagram(now, from, register("2", "sip:201@10.0.0.9:5060", 60, 2));
        assert_eq!(pbx.snapshot(now).registrations["201"].len(), 1);
    }

    #[test]
    fn notifies_follow_the_route_set_to_the_subscriber_contact() {
        let mut pbx = PbxCore::new(PBX.parse().unwrap(), options(), 1);
        let now = Instant::now();
        let proxy: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let subscribe = Bytes::from(
            "SUBSCRIBE sip:202@pbx.example.com SIP/2.0\r\nRecord-Route: <sip:tok@127.0.0.1:5060;lr>\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKpp1\r\nVia: SIP/2.0/UDP 127.0.0.1:6001;branch=z9hG4bKph;rport=6001\r\nMax-Forwards: 69\r\nFrom: <sip:203@pbx.example.com>;tag=w\r\nTo: <sip:202@pbx.example.com>\r\nCall-ID: s@x\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:203@127.0.0.1:6001>\r\nEvent: dialog\r\nAccept: application/dialog-info+xml\r\nExpires: 99999\r\nContent-Length: 0\r\n\r\n",
        );
        pbx.handle_datagram(now, proxy, subscribe);
        let out = pbx.drain_transmits();
        assert_eq!(out.len(), 2);
        let ok = Message::parse(out[0].bytes.clone()).unwrap();
        assert_eq!(ok.status(), Some(200));
        assert_eq!(ok.header(HeaderName::Expires), Some(&b"3600"[..]));
        assert_eq!(
            ok.header(HeaderName::RecordRoute),
            Some(&b"<sip:tok@127.0.0.1:5060;lr>"[..])
        );
        let notify = Message::parse(out[1].bytes.clone()).unwrap();
        assert_eq!(out[1].to, proxy, "sent to the first route");
        assert_eq!(
            notify.request_uri_bytes(),
            Some(&b"sip:203@127.0.0.1:6001"[..])
        );
        assert_eq!(
            notify.header(HeaderName::Route),
            Some(&b"<sip:tok@127.0.0.1:5060;lr>"[..])
        );
        assert_eq!(ua::to_tag(&notify).as_deref(), Some("w"));
        assert_eq!(ua::from_tag(&notify), ua::to_tag(&ok));
        assert_eq!(
            notify.header(HeaderName::SubscriptionState),
            Some(&b"active;expires=3600"[..])
        );
        let doc = blf::parse_dialog_info(notify.body()).unwrap();
        assert_eq!(doc.version, Some(0));
        assert!(doc.dialogs.is_empty());
        assert_eq!(doc.entity.as_deref(), Some("sip:202@pbx.example.com"));
        // unanswered: retransmitted after T1, then T1·2
        pbx.handle_timeout(now + Duration::from_millis(500));
        assert_eq!(pbx.drain_transmits().len(), 1);
        pbx.handle_timeout(now + Duration::from_millis(1500));
        assert_eq!(pbx.drain_transmits().len(), 1);
        // never answered: the subscription is dropped at Timer F
        pbx.handle_timeout(now + Duration::from_secs(33));
        assert_eq!(pbx.snapshot(now).subscriptions, 0);
    }

    #[test]
    fn subscribe_to_something_else_is_refused() {
        let mut pbx = PbxCore::new(PBX.parse().unwrap(), options(), 1);
        let now = Instant::now();
        let proxy: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let subscribe = |event: &str, user: &str| {
            Bytes::from(format!(
                "SUBSCRIBE sip:{user}@pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{event}{user}\r\nMax-Forwards: 69\r\nFrom: <sip:203@pbx.example.com>;tag=w\r\nTo: <sip:{user}@pbx.example.com>\r\nCall-ID: s{event}{user}@x\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:203@127.0.0.1:6001>\r\nEvent: {event}\r\nContent-Length: 0\r\n\r\n"
            ))
        };
        pbx.handle_datagram(now, proxy, subscribe("presence", "202"));
        pbx.handle_datagram(now, proxy, subscribe("dialog", "nobody"));
        let codes: Vec<u16> = pbx
            .drain_transmits()
            .iter()
            .map(|d| Message::parse(d.bytes.clone()).unwrap().status().unwrap())
            .collect();
        assert_eq!(codes, vec![489, 404]);
    }
}
