//! One call leg at one phone: the INVITE dialog (and its early and forked dialogs)
//! between a phone and the PBX, with the RFC 4235 §3.7.1 states and termination reasons.
//!
//! A call is keyed by Call-ID and phone: the same Call-ID forked by the PBX to two
//! phones is two calls. Within one call, every dialog created by a 2xx is told apart by
//! the UAS's tag (the To tag of the 2xx), so a forked INVITE answered twice ends only
//! when both dialogs have had their BYE.

use std::fmt;
use std::hash::{BuildHasher as _, Hash};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::classify::{CallClass, DndAction};
use super::event::Extension;
use crate::proxy::Flow;
use crate::sip::{HeaderName, Message};
use crate::transport::Transport;

/// A phone as the observer knows it: the transport and the address it really sends
/// from (after NAT), as the proxy core sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PhoneAddr {
    /// UDP, TCP or TLS.
    pub transport: Transport,
    /// The phone's address and port on the wire.
    pub remote: std::net::SocketAddr,
}

impl From<&Flow> for PhoneAddr {
    fn from(flow: &Flow) -> Self {
        Self {
            transport: flow.transport,
            remote: flow.remote,
        }
    }
}

impl fmt::Display for PhoneAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.remote)
    }
}

/// Which way a message travels, seen from the phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sent by the phone (or by the proxy on the phone's behalf) towards the PBX.
    FromPhone,
    /// Sent by the PBX (or by the proxy on the PBX's behalf) towards the phone.
    ToPhone,
}

/// Placed or received by the extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallDirection {
    /// The phone sent the INVITE.
    Outgoing,
    /// The PBX sent the INVITE to the phone.
    Incoming,
}

impl CallDirection {
    /// The direction of the initial INVITE.
    pub fn invite_direction(self) -> Direction {
        match self {
            Self::Outgoing => Direction::FromPhone,
            Self::Incoming => Direction::ToPhone,
        }
    }
}

impl fmt::Display for CallDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Outgoing => "outgoing",
            Self::Incoming => "incoming",
        })
    }
}

/// RFC 4235 dialog states, as far as a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CallState {
    /// INVITE sent, nothing but 100 back.
    Trying,
    /// Early: a provisional response (or, for an incoming call, the phone was offered it).
    Early,
    /// A 2xx: the call is up.
    Confirmed,
    /// Over.
    Terminated,
}

impl fmt::Display for CallState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trying => "trying",
            Self::Early => "early",
            Self::Confirmed => "confirmed",
            Self::Terminated => "terminated",
        })
    }
}

/// Why a call ended (RFC 4235 §4.1 `event` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminationReason {
    /// The INVITE was cancelled (487), including "call completed elsewhere".
    Cancelled,
    /// A final failure response.
    Rejected,
    /// The phone sent the BYE.
    LocalBye,
    /// The PBX sent the BYE.
    RemoteBye,
    /// No answer in time (408), the stale-call timeout, or an unrefreshed session timer.
    Timeout,
    /// The next hop could not be reached (a 503 the proxy generated).
    Error,
}

impl fmt::Display for TerminationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cancelled => "cancelled",
            Self::Rejected => "rejected",
            Self::LocalBye => "local-bye",
            Self::RemoteBye => "remote-bye",
            Self::Timeout => "timeout",
            Self::Error => "error",
        })
    }
}

/// Identifies a call in the observer's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallKey {
    call_id_hash: u64,
    phone: PhoneAddr,
}

impl CallKey {
    /// The key of `call_id` at `phone`.
    pub fn new(call_id: &[u8], phone: PhoneAddr) -> Self {
        Self {
            call_id_hash: hash_bytes(call_id),
            phone,
        }
    }
}

/// A 64-bit hash of a tag or Call-ID (not keyed: used only to tell apart values the
/// observer already tracks, each checked against its full text where it matters).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    foldhash::fast::FixedState::default().hash_one(bytes)
}

/// One call leg at one phone.
#[derive(Debug, Clone)]
pub struct Call {
    /// The Call-ID, copied once and shared with the events it causes.
    pub call_id: Arc<str>,
    /// The phone it runs on.
    pub phone: PhoneAddr,
    /// The extension it belongs to.
    pub ext: Extension,
    /// Placed or received.
    pub direction: CallDirection,
    /// Star code, internal, external.
    pub class: CallClass,
    /// The other party, normalised.
    pub other_party: Box<str>,
    /// CSeq number of the initial INVITE (its responses are told from re-INVITEs' by it).
    pub invite_cseq: u32,
    /// Where the call stands.
    pub state: CallState,
    /// Whether the initial INVITE had its final response.
    pub invite_done: bool,
    /// Hashes of the UAS tags of the confirmed dialogs.
    pub confirmed: Vec<u64>,
    /// When the call is considered dead if nothing more is seen.
    pub deadline: Instant,
    /// The negotiated RFC 4028 session interval, if any.
    pub session_interval: Option<Duration>,
    /// When the INVITE was seen.
    pub started: Instant,
}

impl Call {
    /// The DND action of a star-code call.
    pub fn dnd_action(&self) -> Option<DndAction> {
        match self.class {
            CallClass::StarCode(action) => action,
            _ => None,
        }
    }

    /// Whether this call makes its extension busy in Teams while early or confirmed.
    pub fn is_external(&self) -> bool {
        self.class.is_external()
    }

    /// Records a confirmed dialog; false if it was already known.
    pub fn confirm_dialog(&mut self, uas_tag: Option<&[u8]>) -> bool {
        let tag = hash_bytes(uas_tag.unwrap_or_default());
        if self.confirmed.contains(&tag) {
            return false;
        }
        self.confirmed.push(tag);
        true
    }

    /// A 2xx to the call's INVITE or to a re-INVITE/UPDATE: (re)starts the RFC 4028
    /// session timer it negotiated, or goes back to the stale-call timeout when it
    /// negotiated none. Returns the new deadline.
    pub fn answered(&mut self, now: Instant, ok: &Message, stale: Duration) -> Instant {
        self.session_interval = session_interval(ok, stale);
        self.deadline = now + self.session_interval.unwrap_or(stale);
        self.deadline
    }

    /// A BYE for the dialog with this UAS tag: returns whether the whole call is over.
    pub fn end_dialog(&mut self, uas_tag: Option<&[u8]>) -> bool {
        let tag = hash_bytes(uas_tag.unwrap_or_default());
        self.confirmed.retain(|&t| t != tag);
        // a BYE in a dialog we never saw confirmed (its 2xx was lost) ends the call
        // unless another dialog of it is still up
        self.confirmed.is_empty()
    }
}

/// The RFC 4028 session interval a 2xx negotiated (`Session-Expires: 90;refresher=uac`),
/// at most `max` (the stale-call timeout): a longer one would keep a call whose BYE was
/// lost beyond that timeout, and one of 2^63 s would overflow the deadline.
pub fn session_interval(msg: &Message, max: Duration) -> Option<Duration> {
    let value = msg.header(HeaderName::SessionExpires)?;
    let digits: &[u8] = value.split(|&c| c == b';').next().map(<[u8]>::trim_ascii)?;
    let secs: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (secs > 0).then(|| Duration::from_secs(secs).min(max))
}
