//! Flows (where a message came from and how to send back) and the alias table that lets
//! the PBX reach phones behind NAT through the proxy.
//!
//! Two kinds of entries share one bounded table, each named by a token:
//! - a *flow token* names only the transport address a phone really sends from; the
//!   proxy puts it in the user part of its Record-Route (and Path) URIs, so every
//!   in-dialog request from the PBX says which phone flow it is for;
//! - a *contact alias* also remembers the Contact URI the phone registered; the PBX
//!   sees `sip:user@proxy;ppa=TOKEN` as the phone's Contact and sends new requests there.
//!
//! Tokens are a keyed hash of the flow (and contact) with the proxy's seed: the same
//! phone gets the same token on every re-REGISTER, and nothing grows per message.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::transport::Transport;

/// Identifies one TCP or TLS connection, assigned by the runtime.
pub type ConnId = u64;

/// Where a message came from, or where one goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The transport.
    pub transport: Transport,
    /// The peer's address as seen on the wire (after NAT).
    pub remote: SocketAddr,
    /// The proxy's local address (the listener it arrived on or leaves from).
    pub local: SocketAddr,
    /// The connection, for TCP and TLS.
    pub conn: Option<ConnId>,
}

/// An alias table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasEntry {
    /// The phone's flow.
    pub flow: Flow,
    /// The Contact URI the phone wrote (contact aliases only).
    pub contact: Option<Bytes>,
    /// The user part of the address-of-record it registered (contact aliases only).
    pub aor_user: Option<Bytes>,
    /// When the entry may be forgotten.
    pub expires: Instant,
    /// Whether the PBX confirmed a registration for it (a 2xx to REGISTER).
    pub registered: bool,
}

/// The table is full: the caller answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("alias table full ({0} entries)")]
pub struct TableFull(pub usize);

/// How long an unregistered entry lives after its last use: long enough for a long
/// call (every in-dialog request refreshes it).
pub const IDLE_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Tokens → entries, bounded.
#[derive(Debug)]
pub struct AliasTable {
    seed: u64,
    max: usize,
    entries: HashMap<u64, AliasEntry>,
}

/// The URI parameter that carries a contact alias token.
pub const ALIAS_PARAM: &str = "ppa";

impl AliasTable {
    /// An empty table holding at most `max` entries.
    pub fn new(seed: u64, max: usize) -> Self {
        Self {
            seed,
            max,
            entries: HashMap::new(),
        }
    }

    fn token(&self, flow: &Flow, contact: Option<&[u8]>) -> u64 {
        let mut h = DefaultHasher::new();
        self.seed.hash(&mut h);
        flow.transport.hash(&mut h);
        flow.remote.hash(&mut h);
        contact.hash(&mut h);
        h.finish()
    }

    fn upsert(&mut self, token: u64, entry: AliasEntry) -> Result<u64, TableFull> {
        match self.entries.get_mut(&token) {
            Some(existing) => {
                existing.flow = entry.flow;
                existing.expires = existing.expires.max(entry.expires);
                if entry.aor_user.is_some() {
                    existing.aor_user = entry.aor_user;
                }
            }
            None => {
                if self.entries.len() >= self.max {
                    return Err(TableFull(self.max));
                }
                self.entries.insert(token, entry);
            }
        }
        Ok(token)
    }

    /// The flow token for a phone flow (created or refreshed).
    pub fn flow_token(&mut self, now: Instant, flow: Flow) -> Result<u64, TableFull> {
        let token = self.token(&flow, None);
        self.upsert(
            token,
            AliasEntry {
                flow,
                contact: None,
                aor_user: None,
                expires: now + IDLE_LIFETIME,
                registered: false,
            },
        )
    }

    /// The alias token for a Contact a phone sent on `flow` (created or refreshed).
    pub fn contact_alias(
        &mut self,
        now: Instant,
        flow: Flow,
        contact: &[u8],
        aor_user: Option<&[u8]>,
    ) -> Result<u64, TableFull> {
        let token = self.token(&flow, Some(contact));
        self.upsert(
            token,
            AliasEntry {
                flow,
                contact: Some(Bytes::copy_from_slice(contact)),
                aor_user: aor_user.map(Bytes::copy_from_slice),
                expires: now + IDLE_LIFETIME,
                registered: false,
            },
        )
    }

    /// Looks a token up, refreshing an unregistered entry's lifetime.
    pub fn resolve(&mut self, now: Instant, token: u64) -> Option<&AliasEntry> {
        let entry = self.entries.get_mut(&token)?;
        if entry.expires <= now {
            return None;
        }
        if !entry.registered {
            entry.expires = entry.expires.max(now + IDLE_LIFETIME);
        }
        Some(entry)
    }

    /// Records the PBX's answer to a REGISTER: the binding lives `expires` more seconds
    /// (0 removes it).
    pub fn set_registered(&mut self, now: Instant, token: u64, expires: u32) {
        if expires == 0 {
            self.entries.remove(&token);
        } else if let Some(entry) = self.entries.get_mut(&token) {
            entry.registered = true;
            entry.expires = now + Duration::from_secs(u64::from(expires));
        }
    }

    /// A registered binding of this AoR user (the PBX addressed the AoR, not a contact).
    pub fn registered_by_user(&self, now: Instant, user: &[u8]) -> Option<&AliasEntry> {
        self.entries
            .values()
            .find(|e| e.registered && e.expires > now && e.aor_user.as_deref() == Some(user))
    }

    /// A registered binding whose Contact is exactly this URI (Path mode: the PBX uses
    /// the phone's own Contact as Request-URI).
    pub fn registered_by_contact(&self, now: Instant, uri: &[u8]) -> Option<&AliasEntry> {
        self.entries
            .values()
            .find(|e| e.registered && e.expires > now && e.contact.as_deref() == Some(uri))
    }

    /// Points every entry of a closed connection's remote at no connection, so the
    /// runtime reconnects (or the phone's next REGISTER brings a new one).
    pub fn connection_closed(&mut self, conn: ConnId) {
        for entry in self.entries.values_mut() {
            if entry.flow.conn == Some(conn) {
                entry.flow.conn = None;
            }
        }
    }

    /// Forgets expired entries.
    pub fn expire(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.expires > now);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of registered bindings.
    pub fn registered_count(&self) -> usize {
        self.entries.values().filter(|e| e.registered).count()
    }
}

/// Formats a token as it appears in URIs.
pub fn token_text(token: u64) -> String {
    let mut text = String::with_capacity(16);
    push_hex(&mut text, token);
    text
}

/// Appends a u64 as 16 lowercase hex digits (no `format!` on the per-message path).
pub fn push_hex(out: &mut String, value: u64) {
    push_hex_digits(out, value, 16);
}

/// Appends the low `digits` hex digits of `value` (lower case, zero padded).
pub fn push_hex_digits(out: &mut String, value: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..digits.min(16)).rev() {
        out.push(char::from(HEX[((value >> (shift * 4)) & 0xf) as usize]));
    }
}

/// Reads a token written by [`token_text`].
pub fn parse_token(text: &[u8]) -> Option<u64> {
    if text.len() != 16 {
        return None;
    }
    text.iter().try_fold(0u64, |value, &c| {
        let digit = char::from(c).to_digit(16)?;
        Some(value << 4 | u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_read_back_as_written_and_only_as_sixteen_hex_digits() {
        for token in [0, 1, 0xdead_beef, u64::MAX] {
            assert_eq!(parse_token(token_text(token).as_bytes()), Some(token));
        }
        assert_eq!(parse_token(b"00000000000000FF"), Some(255), "either case");
        assert_eq!(parse_token(b"+000000000000001"), None, "no sign");
        assert_eq!(parse_token(b"00000000000000g1"), None);
        assert_eq!(parse_token(b"0000000000000001f"), None, "seventeen digits");
    }
}
