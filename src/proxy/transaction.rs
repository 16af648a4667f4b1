//! Transaction records of the stateful proxy (RFC 3261 §17, §16).
//!
//! The proxy never forks, so each proxied request is one record holding both halves:
//! the *server* side facing the sender (where responses go, the last response for
//! retransmissions) and the *client* side facing the next hop (our branch, the
//! forwarded bytes for retransmission, CANCEL and ACK).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::flow::Flow;
use crate::sip::header::via::MAGIC_COOKIE;
use crate::sip::{Message, Method};

/// Identifies a server transaction: RFC 3261 §17.2.3 (branch, sent-by, method; ACK
/// and CANCEL matched against the INVITE), or the RFC 2543 fallback for branches
/// without the magic cookie.
///
/// Shared, not copied: the key table and the transaction record hold the same bytes.
/// Lookups need no key of their own: [`ServerKey::write`] puts the key's bytes in a
/// reused buffer and the table is searched by those (`Borrow<[u8]>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey(Arc<[u8]>);

impl std::borrow::Borrow<[u8]> for ServerKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// The method class a key is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMethod {
    /// INVITE, and the ACK for a non-2xx response to it.
    Invite,
    /// CANCEL (its own transaction, same branch as the INVITE).
    Cancel,
    /// Any other method: the method bytes take part in the key.
    Other,
}

impl ServerKey {
    /// The key of a request, `None` when it has no usable top Via or CSeq.
    pub fn of(msg: &Message, class: KeyMethod) -> Option<Self> {
        let mut key = Vec::new();
        Self::write(msg, class, &mut key)?;
        Some(Self::from_bytes(&key))
    }

    /// A key from the bytes [`ServerKey::write`] wrote.
    pub fn from_bytes(key: &[u8]) -> Self {
        Self(Arc::from(key))
    }

    /// Writes the key of a request into `key` (cleared first); `None` when it has no
    /// usable top Via or CSeq.
    pub fn write(msg: &Message, class: KeyMethod, key: &mut Vec<u8>) -> Option<()> {
        key.clear();
        let via = msg.top_via()?.ok()?;
        let method: &[u8] = match class {
            KeyMethod::Invite => b"INVITE",
            KeyMethod::Cancel => b"CANCEL",
            KeyMethod::Other => msg.method_bytes()?,
        };
        match via.branch().filter(|b| b.starts_with(MAGIC_COOKIE)) {
            Some(branch) => {
                key.extend_from_slice(branch);
                key.push(b'|');
                key.extend(via.host().iter().map(u8::to_ascii_lowercase));
                key.push(b':');
                crate::sip::edit::push_decimal(key, u64::from(via.port().unwrap_or(0)));
            }
            None => {
                // RFC 2543: Request-URI, To tag, From tag, Call-ID, CSeq number, top Via
                key.extend_from_slice(b"2543|");
                key.extend_from_slice(msg.call_id()?.ok()?);
                key.push(b'|');
                key.extend_from_slice(msg.from()?.ok()?.tag().unwrap_or_default());
                key.push(b'|');
                crate::sip::edit::push_decimal(key, u64::from(msg.cseq()?.ok()?.seq()));
                key.push(b'|');
                key.extend_from_slice(via.host());
            }
        }
        key.push(b'|');
        key.extend_from_slice(method);
        Some(())
    }
}

/// Server side state (RFC 3261 §17.2, with RFC 6026's Accepted for INVITE 2xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// No final response yet.
    Proceeding,
    /// A non-2xx final response was sent; for INVITE, waiting for the ACK.
    Completed,
    /// The ACK for a non-2xx INVITE response arrived.
    Confirmed,
    /// A 2xx to an INVITE was forwarded (retransmissions of the INVITE are absorbed).
    Accepted,
}

/// Client side state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Sent, nothing heard yet (Calling / Trying).
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived (non-2xx for INVITE: ACK sent).
    Completed,
    /// A 2xx to the INVITE arrived.
    Accepted,
    /// Gave up (timeout or transport error).
    Terminated,
}

/// One proxied request. Its branch on the forwarded request is not kept: it is the
/// scrambled id (`Proxy::new_branch`), and a response's branch unscrambles to the id.
#[derive(Debug)]
pub struct Txn {
    /// Record id, also the timer key.
    pub id: u64,
    /// The request's method.
    pub method: Method,
    /// Server-side key (index into the server table).
    pub server_key: ServerKey,
    /// Where responses go: the flow the request arrived on.
    pub upstream: Flow,
    /// Server side state.
    pub server_state: ServerState,
    /// The last response sent upstream, for retransmitted requests and timer G.
    pub last_response: Option<Bytes>,
    /// Current timer G interval.
    pub response_interval: Duration,
    /// Where the forwarded request went.
    pub downstream: Flow,
    /// The forwarded request's bytes (for retransmission; parsed again only to build a
    /// CANCEL or ACK); dropped once final.
    pub request: Option<Bytes>,
    /// Client side state.
    pub client_state: ClientState,
    /// Current retransmit interval (timers A/E).
    pub retransmit_interval: Duration,
    /// The ACK we sent for a non-2xx final response (re-sent on its retransmissions).
    pub ack: Option<Bytes>,
    /// The sender cancelled before any provisional arrived: CANCEL once one does.
    pub cancel_pending: bool,
    /// A CANCEL went downstream.
    pub cancelled: bool,
    /// How often the request was re-sent to another PBX target because the one it went
    /// to could not be reached (RFC 3263 §4.3); bounded by the PBX's target count.
    pub failovers: u8,
    /// Per timer kind, bumped whenever that timer is rescheduled or cancelled, so that
    /// stale deadlines are recognised when they fire.
    pub generations: [u32; 5],
}

impl Txn {
    /// The forwarded request, parsed (to build a CANCEL, an ACK or a 408 from it).
    pub fn forwarded(&self) -> Option<Message> {
        self.request
            .as_ref()
            .and_then(|b| Message::parse(b.clone()).ok())
    }

    /// Whether this is an INVITE transaction.
    pub fn is_invite(&self) -> bool {
        self.method == Method::Invite
    }
}
