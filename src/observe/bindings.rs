//! Which extension each phone is: learned from the REGISTERs the phones send through
//! the proxy and the PBX's 2xx answers, per contact, with expiry.
//!
//! A phone is its transport address ([`PhoneAddr`]); one phone may register several
//! extensions (a multi-line desk phone sending every line from one port), and several
//! phones may register one extension (desk phone and softphone). The table is bounded:
//! a registration beyond the bound is not tracked (and logged), never grown into.

use foldhash::HashMap;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::call::{PhoneAddr, hash_bytes};
use super::event::Extension;
use crate::sip::Message;
use crate::sip::header::ContactValue;

/// How long a REGISTER waits for its final response before it is forgotten (64·T1).
const PENDING_LIFETIME: Duration = Duration::from_secs(32);

/// Expiry when neither the Contact nor the REGISTER says (RFC 3261 §10.2.1.1 leaves it
/// to the registrar; 3600 is the common default).
const DEFAULT_EXPIRES: u32 = 3600;

/// One registered contact of one phone.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The extension (the AoR's user part).
    pub ext: Extension,
    /// The Contact URI the phone registered.
    pub contact: Box<[u8]>,
    /// When it lapses.
    pub expires: Instant,
}

#[derive(Debug)]
struct PendingRegister {
    phone: PhoneAddr,
    ext: Extension,
    /// Contact URIs and the expiry each asked for (0: remove).
    contacts: Vec<(Box<[u8]>, u32)>,
    /// `Contact: *` with `Expires: 0`: remove every binding of the AoR.
    wildcard: bool,
    created: Instant,
}

/// What a REGISTER's 2xx changed.
#[derive(Debug, Default)]
pub struct RegistrationChange {
    /// Extensions whose binding count may have changed.
    pub touched: Vec<Extension>,
    /// The earliest expiry it granted.
    pub earliest_expiry: Option<Instant>,
}

/// Phones → extensions.
#[derive(Debug)]
pub struct Bindings {
    by_phone: HashMap<PhoneAddr, Vec<Binding>>,
    counts: HashMap<Extension, usize>,
    pending: HashMap<(u64, u32), PendingRegister>,
    total: usize,
    max: usize,
}

impl Bindings {
    /// An empty table holding at most `max` bindings (and as many pending REGISTERs).
    pub fn new(max: usize) -> Self {
        Self {
            by_phone: HashMap::default(),
            counts: HashMap::default(),
            pending: HashMap::default(),
            total: 0,
            max,
        }
    }

    /// The bindings of a phone (empty if it never registered, or they lapsed).
    pub fn of_phone(&self, phone: &PhoneAddr) -> &[Binding] {
        self.by_phone.get(phone).map_or(&[], Vec::as_slice)
    }

    /// Number of live bindings of an extension.
    pub fn count(&self, ext: &str) -> usize {
        self.counts.get(ext).copied().unwrap_or(0)
    }

    /// Number of live bindings.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether no binding is live.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Notes a phone's REGISTER until its final response comes.
    pub fn register_sent(&mut self, now: Instant, phone: PhoneAddr, ext: Extension, msg: &Message) {
        let Some(key) = transaction_key(msg) else {
            return;
        };
        if self.pending.len() >= self.max {
            warn!(%phone, "too many REGISTERs awaiting an answer; this one is not tracked");
            return;
        }
        let header_expires = msg.expires().and_then(Result::ok);
        let mut contacts = Vec::new();
        let mut wildcard = false;
        for contact in msg.contacts().filter_map(Result::ok) {
            match contact {
                ContactValue::Wildcard => wildcard = true,
                ContactValue::Address(addr) => {
                    let expires = addr.expires().or(header_expires).unwrap_or(DEFAULT_EXPIRES);
                    contacts.push((Box::from(addr.uri().as_bytes()), expires));
                }
            }
        }
        self.pending.insert(
            key,
            PendingRegister {
                phone,
                ext,
                contacts,
                wildcard,
                created: now,
            },
        );
    }

    /// A final response to a REGISTER went to the phone. `msg` is the response as the
    /// phone sees it (its own Contacts, not the proxy's aliases).
    pub fn register_answered(&mut self, now: Instant, msg: &Message) -> RegistrationChange {
        let mut change = RegistrationChange::default();
        let Some(key) = transaction_key(msg) else {
            return change;
        };
        let Some(pending) = self.pending.remove(&key) else {
            return change;
        };
        if !(200..300).contains(&msg.status().unwrap_or(0)) {
            return change;
        }
        change.touched.push(pending.ext.clone());
        if pending.wildcard {
            self.remove_ext(&pending.ext);
            return change;
        }
        let header_expires = msg.expires().and_then(Result::ok);
        let answered: Vec<(&[u8], Option<u32>)> = msg
            .contacts()
            .filter_map(Result::ok)
            .filter_map(|c| match c {
                ContactValue::Address(a) => Some((a.uri().as_bytes(), a.expires())),
                ContactValue::Wildcard => None,
            })
            .collect();
        for (contact, requested) in &pending.contacts {
            let granted = match answered.iter().find(|(uri, _)| uri == &&contact[..]) {
                Some((_, expires)) => expires.or(header_expires).unwrap_or(*requested),
                // a registrar that lists no Contacts: take what was asked for
                None if answered.is_empty() => *requested,
                // listed others but not this one: the registrar dropped it
                None => 0,
            };
            self.set(now, pending.phone, &pending.ext, contact, granted);
            if granted > 0 {
                let at = now + Duration::from_secs(granted.into());
                change.earliest_expiry = Some(change.earliest_expiry.map_or(at, |e| e.min(at)));
            }
        }
        change
    }

    fn set(&mut self, now: Instant, phone: PhoneAddr, ext: &Extension, contact: &[u8], secs: u32) {
        let list = self.by_phone.entry(phone).or_default();
        let existing = list
            .iter()
            .position(|b| b.ext == *ext && &*b.contact == contact);
        match (existing, secs) {
            (Some(index), 0) => {
                list.swap_remove(index);
                self.total -= 1;
                decrement(&mut self.counts, ext);
            }
            (Some(index), secs) => list[index].expires = now + Duration::from_secs(secs.into()),
            (None, 0) => {}
            (None, secs) => {
                if self.total >= self.max {
                    warn!(%phone, %ext, limit = self.max, "binding limit reached; registration not tracked");
                } else {
                    list.push(Binding {
                        ext: ext.clone(),
                        contact: Box::from(contact),
                        expires: now + Duration::from_secs(secs.into()),
                    });
                    self.total += 1;
                    *self.counts.entry(ext.clone()).or_insert(0) += 1;
                    debug!(%phone, %ext, "phone registered");
                }
            }
        }
        if list.is_empty() {
            self.by_phone.remove(&phone);
        }
    }

    fn remove_ext(&mut self, ext: &Extension) {
        let mut removed = 0;
        self.by_phone.retain(|_, list| {
            let before = list.len();
            list.retain(|b| &b.ext != ext);
            removed += before - list.len();
            !list.is_empty()
        });
        self.total -= removed;
        self.counts.remove(ext);
    }

    /// Forgets lapsed bindings and unanswered REGISTERs; returns the extensions that
    /// lost a binding.
    pub fn expire(&mut self, now: Instant) -> Vec<Extension> {
        let mut lapsed = Vec::new();
        self.by_phone.retain(|_, list| {
            list.retain(|b| {
                let live = b.expires > now;
                if !live {
                    lapsed.push(b.ext.clone());
                }
                live
            });
            !list.is_empty()
        });
        self.total -= lapsed.len();
        for ext in &lapsed {
            decrement(&mut self.counts, ext);
        }
        self.pending
            .retain(|_, p| now.duration_since(p.created) < PENDING_LIFETIME);
        lapsed
    }

    /// The earliest moment something here lapses.
    pub fn next_expiry(&self) -> Option<Instant> {
        let bindings = self.by_phone.values().flatten().map(|b| b.expires);
        let pending = self.pending.values().map(|p| p.created + PENDING_LIFETIME);
        bindings.chain(pending).min()
    }
}

fn decrement(counts: &mut HashMap<Extension, usize>, ext: &Extension) {
    if let Some(count) = counts.get_mut(ext) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(ext);
        }
    }
}

/// Call-ID and CSeq number: what ties a REGISTER's response to it.
fn transaction_key(msg: &Message) -> Option<(u64, u32)> {
    let call_id = msg.call_id()?.ok()?;
    let cseq = msg.cseq()?.ok()?;
    Some((hash_bytes(call_id), cseq.seq()))
}
