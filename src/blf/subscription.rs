//! The subscription side of BLF: every `Event: dialog` and `Event: presence`
//! subscription a phone holds at the PBX through the proxy, and what the proxy itself
//! puts into it when an extension's Teams user is busy.
//!
//! This module owns:
//! - **tracking** ([`SubscriptionTracker::on_message`]): the phone's SUBSCRIBE and its
//!   refreshes, the PBX's answers, the PBX's NOTIFYs (also those that come before the
//!   2xx, RFC 6665 §4.1.2.4) and the phone's answers to them, until `Expires: 0`,
//!   `Subscription-State: terminated`, a fatal answer (481 and the other RFC 6665
//!   §4.2.2 codes) or expiry ends it. A subscription is keyed by Call-ID and the
//!   subscriber's (phone's) From tag; the notifier's tag is learned from the first
//!   NOTIFY or 2xx, and NOTIFYs of another fork pass untouched.
//! - **numbering**: from the first NOTIFY the proxy originates in a subscription dialog,
//!   the CSeq the phone sees is the PBX's plus the number of NOTIFYs the proxy originated
//!   so far; the phone's answers are mapped back to the PBX's CSeq exactly (one record
//!   per NOTIFY transaction, kept up to 64 s), and answers to the proxy's own NOTIFYs are
//!   absorbed. The dialog-info `version` the phone sees strictly increases: an own
//!   NOTIFY carries the last version the phone saw plus one; a PBX document with
//!   version `v` carries `v + offset`, the offset raised just enough to stay above the
//!   last version the phone saw (so the PBX's own steps, gaps included, are kept).
//! - **injection decisions** ([`SubscriptionTracker::set_teams_busy`]): which
//!   subscriptions need a NOTIFY of the proxy's own, and which passing PBX NOTIFYs need
//!   their body replaced. What the body says is not decided here: a [`BlfRenderer`]
//!   (the dialog-info/PIDF document layer) renders it.
//! - **rate**: at most one Teams-driven NOTIFY per second per subscription (RFC 4235
//!   §3.10); a Teams flap inside that second sends only the final state, or nothing when
//!   the phone already shows it.
//!
//! Sans-IO like the proxy core: messages and `now` come in as arguments; the proxy's
//! own NOTIFYs (and their UDP retransmissions) go out through
//! [`SubscriptionTracker::poll_transmit`], deadlines through
//! [`SubscriptionTracker::poll_timeout`] / [`SubscriptionTracker::handle_timeout`].
//!
//! # Cost
//! A message that concerns no tracked subscription costs a method check and at most one
//! hash lookup. While the proxy has injected nothing into a subscription, its NOTIFYs
//! and their answers pass untouched ([`Forward::Pass`]) and allocate nothing once the
//! subscription is known: the dialog's texts are compared before they are replaced, and
//! the PBX's last body is copied into a buffer whose capacity is kept (with a little
//! slack, so a growing `version` number does not reallocate). Timer entries are only
//! moved earlier, never later, so a NOTIFY that extends the expiry touches no tree.
//!
//! # Bounds
//! At most [`SubscriptionConfig::max_subscriptions`] subscriptions. A SUBSCRIBE the PBX
//! has not accepted yet is *pending*: it lives at most 32 s (64·T1), and when the table
//! is full, expired entries go first, then the oldest pending one; an accepted
//! subscription is never pushed out by a new SUBSCRIBE (the new one is then not
//! tracked). NOTIFYs and answers that match nothing create nothing.

use std::collections::{BTreeSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::{HashMap, HashSet};
use tracing::{debug, warn};

use crate::observe::Direction;
use crate::observe::Extension;
use crate::observe::classify::normalize_uri_user;
use crate::proxy::timers::{T1, T2, TIMEOUT};
use crate::proxy::{Flow, Transmit};
use crate::sip::build::DialogRequest;
use crate::sip::edit::{EditError, Editor};
use crate::sip::header::ContactValue;
use crate::sip::{HeaderName, Message, Method};
use crate::transport::Transport;

/// How long a SUBSCRIBE waits for the PBX's answer, and how long a subscription is kept
/// after it expired or was ended, for the last NOTIFY and its answer (64·T1).
const LINGER: Duration = TIMEOUT;

/// Most NOTIFY transactions remembered per subscription for mapping answers back
/// (answered ones included, so that a repeated answer maps the same way).
const MAX_OUTSTANDING: usize = 64;

/// How long a NOTIFY's answer is expected: twice the transaction's lifetime (the core
/// retransmits a NOTIFY for up to 64·T1, and the answer may be late).
const OUTSTANDING_LIFETIME: Duration = Duration::from_secs(64);

/// Longest dialog text kept (URI, name-addr, Call-ID, tag, Event value); a dialog with a
/// longer one is not tracked.
const MAX_TEXT: usize = 1024;

/// Longest User-Agent kept (longer ones are cut).
const MAX_USER_AGENT: usize = 256;

/// Extra capacity given to the PBX body buffer, so the next body, a few bytes longer,
/// fits without a reallocation.
const BODY_SLACK: usize = 64;

/// Longest subscription duration taken from the network (a year): keeps every deadline
/// computable.
const MAX_EXPIRES: u32 = 365 * 24 * 3600;

/// `seconds` after `now`, capped at [`MAX_EXPIRES`].
fn after(now: Instant, seconds: u32) -> Instant {
    now + Duration::from_secs(u64::from(seconds.min(MAX_EXPIRES)))
}

/// Default subscription duration when a SUBSCRIBE has no Expires (RFC 4235 §3.4,
/// RFC 3856 §6.4: one hour for both packages).
const DEFAULT_EXPIRES: u32 = 3600;

/// Answers to a NOTIFY after which the notifier must drop the subscription
/// (RFC 6665 §4.2.2), and answers to a refresh after which the subscriber must
/// (RFC 6665 §4.1.2.2).
fn ends_subscription(code: u16) -> bool {
    matches!(code, 404 | 405 | 410 | 416 | 480..=485 | 489 | 501 | 604)
}

/// What the tracker is told by configuration.
#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    /// Most subscriptions tracked at once (pending ones included).
    pub max_subscriptions: usize,
    /// Shortest time between two Teams-driven NOTIFYs in one subscription.
    pub teams_notify_interval: Duration,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self {
            max_subscriptions: 100_000,
            teams_notify_interval: Duration::from_secs(1),
        }
    }
}

/// The event packages tracked for BLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventPackage {
    /// `Event: dialog` (RFC 4235), `application/dialog-info+xml`.
    Dialog,
    /// `Event: presence` (RFC 3856), PIDF: phones set to BLF by presence.
    Presence,
}

impl EventPackage {
    /// The package of an Event value's package token, if it is one tracked here.
    pub fn of(package: &[u8]) -> Option<Self> {
        if package.eq_ignore_ascii_case(b"dialog") {
            Some(Self::Dialog)
        } else if package.eq_ignore_ascii_case(b"presence") {
            Some(Self::Presence)
        } else {
            None
        }
    }
}

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionPhase {
    /// The phone's SUBSCRIBE passed; no 2xx and no NOTIFY yet.
    Pending,
    /// The PBX accepted (2xx) or notified `pending`: nothing is injected yet.
    Accepted,
    /// The PBX notified `active`: the proxy may notify inside the dialog.
    Active,
    /// Unsubscribed or terminated: CSeq translation goes on for the dialog's last
    /// NOTIFY and its answer, nothing is injected, and the record goes soon. (An expired
    /// subscription keeps its phase: a late refresh may still revive it.)
    Ending,
}

/// The PBX's document for a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PbxDocument<'a> {
    /// Its Content-Type value as the PBX wrote it.
    pub content_type: &'a [u8],
    /// The body.
    pub body: &'a [u8],
}

/// What is known of one subscription, for a renderer and for status pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionView<'a> {
    /// The watched extension (Request-URI user, normalised).
    pub extension: &'a str,
    /// Dialog or presence.
    pub package: EventPackage,
    /// Call-ID of the subscription dialog.
    pub call_id: &'a [u8],
    /// The subscriber's (phone's) tag.
    pub subscriber_tag: &'a [u8],
    /// The notifier's (PBX's) tag, empty until learned.
    pub notifier_tag: &'a [u8],
    /// The notifier's address as the phone sees it in NOTIFYs (From, with tag); the
    /// SUBSCRIBE's To until the first NOTIFY.
    pub notifier: &'a [u8],
    /// The phone's User-Agent, if it sent one (for the phone profile).
    pub user_agent: Option<&'a [u8]>,
    /// Where the subscription stands.
    pub phase: SubscriptionPhase,
    /// Whether the phone's current document was rendered for a Teams-busy extension.
    pub shows_teams_busy: bool,
    /// NOTIFYs the proxy originated in this dialog (the CSeq offset towards the phone).
    pub own_notifies: u32,
}

/// A body rendered for the phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The body.
    pub body: Bytes,
    /// Its Content-Type.
    pub content_type: &'static str,
}

/// Renders what the phone sees. Implemented on top of the document layer
/// (dialog-info, PIDF, phone profiles); the tracker knows no XML.
pub trait BlfRenderer {
    /// The `version` of a PBX document, when it has one (dialog-info); `None` for
    /// documents without one (PIDF) or that cannot be read. Called only once the proxy
    /// has had to change something in the subscription, so it may cost a scan.
    fn document_version(&self, content_type: &[u8], body: &[u8]) -> Option<u64>;

    /// When `body` is a partial-state document (RFC 4235 §4.3), the full-state document
    /// it makes together with `previous` (the last one kept, itself full), to keep
    /// instead; `None` keeps `body` as it is (a full document, another type, or a gap
    /// in the versions). Called for every PBX body, so it must be cheap for a full one.
    fn complete(
        &self,
        _content_type: &[u8],
        _previous: Option<&[u8]>,
        _body: &[u8],
    ) -> Option<Vec<u8>> {
        None
    }

    /// The document the phone should see: `pbx` is the PBX's current document (`None`
    /// before any), `version` the phone-facing version to write, `teams_busy` whether to
    /// add the Teams dialog. `None` leaves the PBX's body untouched (in a NOTIFY the
    /// proxy originates: nothing is sent).
    fn render(
        &self,
        sub: &SubscriptionView<'_>,
        pbx: Option<PbxDocument<'_>>,
        version: u64,
        teams_busy: bool,
    ) -> Option<Rendered>;
}

/// What the core does with a message passing through.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Forward {
    /// Forward it with the core's own edits only.
    Pass,
    /// Forward it with these changes too (apply them in the core's [`Editor`]).
    Rewrite(Rewrite),
    /// Do not forward it: an answer to a NOTIFY the proxy originated.
    Absorb,
}

/// Changes to a passing NOTIFY or NOTIFY answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// The CSeq number to write (the method stays).
    pub cseq: Option<u32>,
    /// The body to write, with its Content-Type; Content-Length is recomputed.
    pub body: Option<Rendered>,
}

impl Rewrite {
    /// Adds the changes to an editor of the message (the core's forwarding editor: they
    /// touch neither Via, Route, Record-Route nor Max-Forwards).
    pub fn apply(&self, edit: &mut Editor<'_>) -> Result<(), EditError> {
        if let Some(seq) = self.cseq {
            edit.set_cseq(seq)?;
        }
        if let Some(rendered) = &self.body {
            edit.set_body(&rendered.body, Some(rendered.content_type.as_bytes()))?;
        }
        Ok(())
    }

    /// The message with only these changes, byte-exact elsewhere.
    pub fn to_bytes(&self, msg: &Message) -> Result<Bytes, EditError> {
        let mut edit = Editor::new(msg);
        self.apply(&mut edit)?;
        Ok(edit.finish())
    }

    fn is_empty(&self) -> bool {
        self.cseq.is_none() && self.body.is_none()
    }
}

// ------------------------------------------------------------------ dialog texts

/// The texts of one subscription, in one allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Text {
    CallId = 0,
    SubscriberTag = 1,
    NotifierTag = 2,
    /// The Event value exactly as the PBX writes it in NOTIFYs (the SUBSCRIBE's before).
    Event = 3,
    /// The phone's Contact URI: the Request-URI of the proxy's NOTIFYs.
    PhoneContact = 4,
    /// The phone's address with its tag (NOTIFY To).
    Watcher = 5,
    /// The PBX's address with its tag (NOTIFY From).
    Notifier = 6,
    /// The PBX's Contact URI.
    PbxContact = 7,
    UserAgent = 8,
    PbxContentType = 9,
}

const TEXT_FIELDS: usize = 10;

#[derive(Debug)]
struct Texts {
    buf: Box<[u8]>,
    ends: [u16; TEXT_FIELDS],
}

impl Texts {
    /// `None` when a value is longer than [`MAX_TEXT`].
    fn new(values: [&[u8]; TEXT_FIELDS]) -> Option<Self> {
        if values.iter().any(|v| v.len() > MAX_TEXT) {
            return None;
        }
        let total = values.iter().map(|v| v.len()).sum();
        let mut buf = Vec::with_capacity(total);
        let mut ends = [0u16; TEXT_FIELDS];
        for (end, value) in ends.iter_mut().zip(values) {
            buf.extend_from_slice(value);
            // at most TEXT_FIELDS · MAX_TEXT bytes: fits a u16
            *end = buf.len() as u16;
        }
        Some(Self {
            buf: buf.into_boxed_slice(),
            ends,
        })
    }

    fn get(&self, text: Text) -> &[u8] {
        self.field(text as usize)
    }

    fn field(&self, i: usize) -> &[u8] {
        let start = match i.checked_sub(1) {
            Some(before) => usize::from(self.ends[before]),
            None => 0,
        };
        self.buf
            .get(start..usize::from(self.ends[i]))
            .unwrap_or_default()
    }

    /// Replaces some values; allocates only when one of them differs. `false` when a
    /// value is too long (nothing changes then).
    fn set(&mut self, changes: &[(Text, &[u8])]) -> bool {
        if changes.iter().all(|&(t, v)| self.get(t) == v) {
            return true;
        }
        let mut values: [&[u8]; TEXT_FIELDS] = std::array::from_fn(|i| self.field(i));
        for &(t, v) in changes {
            values[t as usize] = v;
        }
        match Texts::new(values) {
            Some(texts) => {
                *self = texts;
                true
            }
            None => false,
        }
    }
}

// ------------------------------------------------------------------ numbering

/// One NOTIFY transaction towards the phone, remembered for its answer.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    /// The CSeq number the phone saw.
    phone_cseq: u32,
    /// The PBX's number; `None` for a NOTIFY the proxy originated.
    pbx_cseq: Option<u32>,
    /// When it went to the phone.
    sent_at: Instant,
}

/// A NOTIFY of the proxy's own, retransmitted over UDP until answered (timer E/F).
#[derive(Debug)]
struct InFlight {
    cseq: u32,
    bytes: Bytes,
    interval: Duration,
    next_at: Instant,
    give_up_at: Instant,
}

/// The numbering of a subscription dialog the proxy has originated a NOTIFY in.
///
/// CSeq: the phone sees the PBX's CSeq plus `cseq_offset`, the number of NOTIFYs the
/// proxy originated; an own NOTIFY takes the next number after the highest the phone
/// has seen. Invariant: `last_phone_cseq <= highest PBX CSeq + cseq_offset`, so every
/// later PBX NOTIFY (higher CSeq) lands above every own NOTIFY.
///
/// Version: an own NOTIFY carries `last_phone_version + 1`; a PBX document with version
/// `v` carries `v + version_offset`, where `version_offset` is raised just enough that
/// the result is above `last_phone_version`. So the versions the phone sees strictly
/// increase whatever the PBX does, and keep the PBX's steps (gaps included) otherwise.
#[derive(Debug)]
struct Numbering {
    cseq_offset: u32,
    /// The highest CSeq the phone had seen when the proxy took over the numbering:
    /// numbers above it were given by the proxy.
    taken_over_at: u32,
    last_phone_cseq: u32,
    version_offset: u64,
    last_phone_version: u64,
    /// In the order sent.
    outstanding: Vec<Outstanding>,
    in_flight: Option<InFlight>,
}

impl Numbering {
    fn new(last_phone_cseq: u32, last_phone_version: u64) -> Self {
        Self {
            cseq_offset: 0,
            taken_over_at: last_phone_cseq,
            last_phone_cseq,
            version_offset: 0,
            last_phone_version,
            outstanding: Vec::new(),
            in_flight: None,
        }
    }

    fn remember(&mut self, entry: Outstanding) {
        if let Some(known) = self
            .outstanding
            .iter_mut()
            .find(|o| o.phone_cseq == entry.phone_cseq)
        {
            *known = entry;
            return;
        }
        let now = entry.sent_at;
        self.outstanding
            .retain(|o| now.saturating_duration_since(o.sent_at) < OUTSTANDING_LIFETIME);
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.remove(0); // the oldest: its answer is long overdue
        }
        self.outstanding.push(entry);
    }

    fn lookup(&self, phone_cseq: u32) -> Option<Outstanding> {
        self.outstanding
            .iter()
            .find(|o| o.phone_cseq == phone_cseq)
            .copied()
    }

    /// The phone-facing CSeq of a PBX NOTIFY, remembered for its answer.
    fn phone_cseq_for(&mut self, pbx_cseq: u32, now: Instant) -> Option<u32> {
        let known = self
            .outstanding
            .iter()
            .find(|o| o.pbx_cseq == Some(pbx_cseq))
            .map(|o| o.phone_cseq);
        let phone_cseq = match known {
            Some(seq) => seq, // the same NOTIFY again: the same number
            None => pbx_cseq.checked_add(self.cseq_offset)?,
        };
        self.last_phone_cseq = self.last_phone_cseq.max(phone_cseq);
        self.remember(Outstanding {
            phone_cseq,
            pbx_cseq: Some(pbx_cseq),
            sent_at: now,
        });
        Some(phone_cseq)
    }

    /// The phone-facing version of a PBX document with version `pbx_version`.
    fn phone_version_for(&mut self, pbx_version: Option<u64>) -> u64 {
        let next = self.last_phone_version.saturating_add(1);
        match pbx_version {
            Some(v) => {
                let shifted = v.saturating_add(self.version_offset);
                if shifted >= next {
                    shifted
                } else {
                    self.version_offset = next - v;
                    next
                }
            }
            None => next,
        }
    }
}

// ------------------------------------------------------------------ subscriptions

#[derive(Debug)]
struct Subscription {
    texts: Texts,
    ext: Extension,
    package: EventPackage,
    /// The phone's flow: where the proxy's own NOTIFYs go.
    phone: Flow,
    phase: SubscriptionPhase,
    /// CSeq of the phone's latest SUBSCRIBE (its answer is matched against it).
    subscribe_cseq: u32,
    /// The duration that SUBSCRIBE asked for.
    requested_expires: u32,
    /// When the subscription expires as negotiated: nothing is injected after.
    expires_at: Instant,
    /// When the record goes (expiry plus linger, or the pending lifetime).
    ends_at: Instant,
    /// The PBX's last body (capacity kept between NOTIFYs); empty before any.
    pbx_body: Vec<u8>,
    /// Highest PBX CSeq seen in the dialog.
    pbx_cseq: Option<u32>,
    /// The phone-facing CSeq of the NOTIFY that said `terminated`.
    final_notify_cseq: Option<u32>,
    /// Whether the phone's current document was rendered for Teams-busy.
    shown_busy: bool,
    /// In the ready queue for an own NOTIFY.
    queued: bool,
    /// When the rate allows the next Teams-driven NOTIFY that is waiting.
    due_at: Option<Instant>,
    /// When the last Teams-driven NOTIFY went.
    last_teams_notify: Option<Instant>,
    /// The deadline entered in the timer set for this record.
    armed: Option<Instant>,
    /// Present from the first NOTIFY the proxy originated in the dialog.
    numbering: Option<Box<Numbering>>,
}

impl Subscription {
    fn view(&self) -> SubscriptionView<'_> {
        view_of(
            &self.texts,
            &self.ext,
            self.package,
            self.phase,
            self.shown_busy,
            self.numbering.as_deref(),
        )
    }

    fn pbx_document(&self) -> Option<PbxDocument<'_>> {
        (!self.pbx_body.is_empty()).then(|| PbxDocument {
            content_type: self.texts.get(Text::PbxContentType),
            body: &self.pbx_body,
        })
    }

    /// Whether the proxy may originate a NOTIFY in the dialog now: the PBX said
    /// `active`, it has notified (so From, To and Event are known exactly), and the
    /// subscription has not expired.
    fn can_originate(&self, now: Instant) -> bool {
        self.phase == SubscriptionPhase::Active
            && now < self.expires_at
            && !self.texts.get(Text::NotifierTag).is_empty()
            && !self.texts.get(Text::Notifier).is_empty()
            && !self.texts.get(Text::Watcher).is_empty()
            && !self.texts.get(Text::PhoneContact).is_empty()
    }

    /// The next moment something must happen to this record.
    fn next_deadline(&self) -> Instant {
        let mut at = self.ends_at;
        if let Some(due) = self.due_at {
            at = at.min(due);
        }
        if let Some(flight) = self.numbering.as_ref().and_then(|n| n.in_flight.as_ref()) {
            at = at.min(flight.next_at);
        }
        at
    }

    fn store_body(&mut self, body: &[u8]) {
        if body.len() > self.pbx_body.capacity()
            || self.pbx_body.capacity() > 2 * body.len() + 4 * BODY_SLACK
        {
            self.pbx_body = Vec::with_capacity(body.len() + BODY_SLACK);
        }
        self.pbx_body.clear();
        self.pbx_body.extend_from_slice(body);
    }
}

fn view_of<'a>(
    texts: &'a Texts,
    ext: &'a Extension,
    package: EventPackage,
    phase: SubscriptionPhase,
    shown_busy: bool,
    numbering: Option<&Numbering>,
) -> SubscriptionView<'a> {
    let user_agent = texts.get(Text::UserAgent);
    SubscriptionView {
        extension: ext,
        package,
        call_id: texts.get(Text::CallId),
        subscriber_tag: texts.get(Text::SubscriberTag),
        notifier_tag: texts.get(Text::NotifierTag),
        notifier: texts.get(Text::Notifier),
        user_agent: (!user_agent.is_empty()).then_some(user_agent),
        phase,
        shows_teams_busy: shown_busy,
        own_notifies: numbering.map_or(0, |n| n.cseq_offset),
    }
}

/// Moves the record's timer entry earlier when its next deadline is earlier than the
/// one entered; a later deadline waits for the entered one to fire (then re-entered).
fn rearm(deadlines: &mut BTreeSet<(Instant, u64)>, id: u64, sub: &mut Subscription) {
    let next = sub.next_deadline();
    if sub.armed.is_some_and(|armed| armed <= next) {
        return;
    }
    if let Some(old) = sub.armed.take() {
        deadlines.remove(&(old, id));
    }
    deadlines.insert((next, id));
    sub.armed = Some(next);
}

/// The first Contact URI of a message.
fn contact_uri(msg: &Message) -> Option<&[u8]> {
    match msg.contacts().next()? {
        Ok(ContactValue::Address(addr)) => Some(addr.uri().as_bytes()),
        _ => None,
    }
}

fn seconds(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// Every BLF subscription crossing the proxy, and the proxy's own NOTIFYs in them.
#[derive(Debug)]
pub struct SubscriptionTracker<R> {
    config: SubscriptionConfig,
    renderer: R,
    /// Keyed by a keyed hash of (Call-ID, subscriber tag), checked against the texts.
    subs: HashMap<u64, Box<Subscription>>,
    hasher: foldhash::fast::RandomState,
    by_ext: HashMap<Extension, Vec<u64>>,
    teams_busy: HashSet<Extension>,
    /// Every record's next deadline (or an earlier one).
    deadlines: BTreeSet<(Instant, u64)>,
    /// Pending records in arrival order (entries of records no longer pending are
    /// skipped, and swept when they outnumber the table).
    pending_order: VecDeque<u64>,
    /// Records waiting for an own NOTIFY to be built.
    ready: VecDeque<u64>,
    /// Built messages waiting to be sent (retransmissions).
    out: VecDeque<Transmit>,
}

impl<R: BlfRenderer> SubscriptionTracker<R> {
    /// A tracker with nothing tracked yet.
    pub fn new(config: SubscriptionConfig, renderer: R) -> Self {
        Self {
            config,
            renderer,
            subs: HashMap::default(),
            hasher: foldhash::fast::RandomState::default(),
            by_ext: HashMap::default(),
            teams_busy: HashSet::default(),
            deadlines: BTreeSet::new(),
            pending_order: VecDeque::new(),
            ready: VecDeque::new(),
            out: VecDeque::new(),
        }
    }

    /// The renderer.
    pub fn renderer(&self) -> &R {
        &self.renderer
    }

    /// Subscriptions tracked (pending ones included).
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Subscriptions watching `ext`.
    pub fn watchers(&self, ext: &str) -> usize {
        self.by_ext.get(ext).map_or(0, Vec::len)
    }

    /// Whether `ext` is Teams-busy as far as BLF goes.
    pub fn is_teams_busy(&self, ext: &str) -> bool {
        self.teams_busy.contains(ext)
    }

    /// One subscription, by Call-ID and the phone's tag.
    pub fn subscription(
        &self,
        call_id: &[u8],
        subscriber_tag: &[u8],
    ) -> Option<SubscriptionView<'_>> {
        let id = self.find(call_id, subscriber_tag)?;
        self.subs.get(&id).map(|s| s.view())
    }

    fn key(&self, call_id: &[u8], tag: &[u8]) -> u64 {
        self.hasher.hash_one((call_id, tag))
    }

    fn find(&self, call_id: &[u8], tag: &[u8]) -> Option<u64> {
        if self.subs.is_empty() {
            return None;
        }
        let id = self.key(call_id, tag);
        let sub = self.subs.get(&id)?;
        (sub.texts.get(Text::CallId) == call_id && sub.texts.get(Text::SubscriberTag) == tag)
            .then_some(id)
    }

    // ------------------------------------------------------------------ input

    /// A message the core is about to forward between the phone on `phone` (the phone
    /// side's flow: where it came from, or where it goes) and the PBX.
    ///
    /// Looks at SUBSCRIBE from phones and their answers, NOTIFY from the PBX and the
    /// phones' answers to NOTIFYs; everything else passes at the cost of a method check.
    /// A request is never absorbed; only an answer to an own NOTIFY is.
    pub fn on_message(
        &mut self,
        now: Instant,
        direction: Direction,
        phone: &Flow,
        msg: &Message,
    ) -> Forward {
        if msg.is_request() {
            match (direction, msg.method()) {
                (Direction::FromPhone, Some(Method::Subscribe)) => {
                    self.phone_subscribe(now, phone, msg);
                    Forward::Pass
                }
                (Direction::ToPhone, Some(Method::Notify)) if !self.subs.is_empty() => {
                    self.pbx_notify(now, phone, msg)
                }
                _ => Forward::Pass,
            }
        } else {
            if self.subs.is_empty() {
                return Forward::Pass;
            }
            let Some(Ok(cseq)) = msg.cseq() else {
                return Forward::Pass;
            };
            match (direction, cseq.method()) {
                (Direction::ToPhone, Method::Subscribe) => {
                    self.subscribe_answered(now, msg, cseq.seq());
                    Forward::Pass
                }
                (Direction::FromPhone, Method::Notify) => self.notify_answered(msg, cseq.seq()),
                _ => Forward::Pass,
            }
        }
    }

    /// The phone's SUBSCRIBE (initial, refresh, or `Expires: 0`).
    fn phone_subscribe(&mut self, now: Instant, phone: &Flow, msg: &Message) {
        let Some(Ok(event)) = msg.event() else { return };
        let Some(package) = EventPackage::of(event.package()) else {
            return;
        };
        let (Some(Ok(call_id)), Some(Ok(from)), Some(Ok(cseq))) =
            (msg.call_id(), msg.from(), msg.cseq())
        else {
            return;
        };
        let Some(tag) = from.tag() else { return };
        let expires = match msg.expires() {
            Some(Ok(seconds)) => seconds,
            Some(Err(_)) => return,
            None => DEFAULT_EXPIRES,
        };
        let contact = contact_uri(msg);
        let user_agent = msg.header(HeaderName::UserAgent).unwrap_or_default();
        let user_agent = &user_agent[..user_agent.len().min(MAX_USER_AGENT)];

        if let Some(id) = self.find(call_id, tag) {
            // a refresh, a retransmission or an unsubscribe
            let Some(sub) = self.subs.get_mut(&id) else {
                return;
            };
            sub.phone = *phone;
            sub.subscribe_cseq = cseq.seq();
            sub.requested_expires = expires;
            let mut changes: [(Text, &[u8]); 2] = [(Text::UserAgent, user_agent); 2];
            let mut len = usize::from(!user_agent.is_empty());
            if let Some(contact) = contact {
                changes[len] = (Text::PhoneContact, contact); // a target refresh
                len += 1;
            }
            sub.texts.set(&changes[..len]);
            if expires == 0 {
                if sub.phase == SubscriptionPhase::Pending {
                    self.remove(id, "unsubscribed before accepted");
                    return;
                }
                debug!(call_id = %String::from_utf8_lossy(call_id), "BLF unsubscribe");
                sub.phase = SubscriptionPhase::Ending;
                sub.ends_at = sub.ends_at.min(now + LINGER);
                sub.due_at = None;
            }
            rearm(&mut self.deadlines, id, sub);
            return;
        }
        if expires == 0 {
            return; // a fetch, or the end of something not tracked
        }
        let Some(contact) = contact else { return };
        let ext = match msg.request_uri() {
            Some(Ok(uri)) => normalize_uri_user(&uri),
            _ => None,
        };
        let ext = ext.or_else(|| {
            msg.to()
                .and_then(Result::ok)
                .and_then(|to| normalize_uri_user(to.uri()))
        });
        let Some(ext) = ext.filter(|e| !e.is_empty()) else {
            return;
        };
        let id = self.key(call_id, tag);
        if self.subs.contains_key(&id) {
            return; // another dialog with the same hash: not tracked
        }
        if self.subs.len() >= self.config.max_subscriptions && !self.make_room(now) {
            warn!(
                limit = self.config.max_subscriptions,
                call_id = %String::from_utf8_lossy(call_id),
                "BLF subscription limit reached; subscription not tracked"
            );
            return;
        }
        // a SUBSCRIBE with a To tag refreshes a dialog not tracked yet (a proxy restart)
        let to = msg.to().and_then(Result::ok);
        let notifier_tag = to.as_ref().and_then(|t| t.tag()).unwrap_or_default();
        let Some(texts) = Texts::new([
            call_id,
            tag,
            notifier_tag,
            msg.header(HeaderName::Event).unwrap_or_default(),
            contact,
            msg.header(HeaderName::From).unwrap_or_default(),
            msg.header(HeaderName::To).unwrap_or_default(),
            b"",
            user_agent,
            b"",
        ]) else {
            return;
        };
        let ext: Extension = match self.by_ext.get_key_value(ext.as_str()) {
            Some((known, _)) => known.clone(),
            None => Arc::from(ext),
        };
        let mut sub = Box::new(Subscription {
            texts,
            ext: ext.clone(),
            package,
            phone: *phone,
            phase: SubscriptionPhase::Pending,
            subscribe_cseq: cseq.seq(),
            requested_expires: expires,
            expires_at: after(now, expires),
            ends_at: now + LINGER,
            pbx_body: Vec::new(),
            pbx_cseq: None,
            final_notify_cseq: None,
            shown_busy: false,
            queued: false,
            due_at: None,
            last_teams_notify: None,
            armed: None,
            numbering: None,
        });
        debug!(
            ext = %ext,
            call_id = %String::from_utf8_lossy(call_id),
            "BLF subscription seen"
        );
        rearm(&mut self.deadlines, id, &mut sub);
        self.subs.insert(id, sub);
        self.by_ext.entry(ext).or_default().push(id);
        self.pending_order.push_back(id);
        if self.pending_order.len() > 2 * self.subs.len() + 64 {
            let subs = &self.subs;
            self.pending_order.retain(|id| {
                subs.get(id)
                    .is_some_and(|s| s.phase == SubscriptionPhase::Pending)
            });
        }
    }

    /// Frees one slot: expired records first, then the oldest pending one.
    fn make_room(&mut self, now: Instant) -> bool {
        self.handle_timeout(now);
        if self.subs.len() < self.config.max_subscriptions {
            return true;
        }
        while let Some(id) = self.pending_order.pop_front() {
            if self
                .subs
                .get(&id)
                .is_some_and(|s| s.phase == SubscriptionPhase::Pending)
            {
                self.remove(id, "pushed out by a newer SUBSCRIBE");
                return true;
            }
        }
        false
    }

    /// The PBX's answer to a phone's SUBSCRIBE.
    fn subscribe_answered(&mut self, now: Instant, msg: &Message, seq: u32) {
        let (Some(Ok(call_id)), Some(Ok(from))) = (msg.call_id(), msg.from()) else {
            return;
        };
        let Some(id) = from.tag().and_then(|tag| self.find(call_id, tag)) else {
            return;
        };
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        if seq != sub.subscribe_cseq {
            return; // an answer to an older SUBSCRIBE
        }
        let code = msg.status().unwrap_or(0);
        match code {
            200..=299 => {
                let to = msg.to().and_then(Result::ok);
                let tag = to.as_ref().and_then(|t| t.tag()).unwrap_or_default();
                if !sub.texts.get(Text::NotifierTag).is_empty()
                    && !tag.is_empty()
                    && sub.texts.get(Text::NotifierTag) != tag
                {
                    return; // another fork accepted: the dialog tracked is the first
                }
                if sub.texts.get(Text::NotifierTag).is_empty() {
                    sub.texts.set(&[(Text::NotifierTag, tag)]);
                }
                if sub.texts.get(Text::PbxContact).is_empty() {
                    if let Some(contact) = contact_uri(msg) {
                        sub.texts.set(&[(Text::PbxContact, contact)]);
                    }
                }
                // 202 is a 200 (RFC 6665 §8.3.1); the 2xx may shorten, never lengthen
                let expires = match msg.expires() {
                    Some(Ok(e)) => e.min(sub.requested_expires),
                    _ => sub.requested_expires,
                };
                if sub.phase == SubscriptionPhase::Pending {
                    sub.phase = SubscriptionPhase::Accepted;
                }
                if expires == 0 || sub.phase == SubscriptionPhase::Ending {
                    sub.phase = SubscriptionPhase::Ending;
                    sub.expires_at = sub.expires_at.min(now);
                    sub.ends_at = sub.ends_at.min(now + LINGER);
                } else {
                    sub.expires_at = after(now, expires);
                    sub.ends_at = sub.expires_at + LINGER;
                }
                rearm(&mut self.deadlines, id, sub);
            }
            300..=699 => {
                if sub.phase == SubscriptionPhase::Pending {
                    self.remove(id, "SUBSCRIBE refused");
                } else if ends_subscription(code) {
                    self.remove(id, "refresh refused");
                }
            }
            _ => {}
        }
    }

    /// A NOTIFY from the PBX to the phone.
    fn pbx_notify(&mut self, now: Instant, phone: &Flow, msg: &Message) -> Forward {
        let (Some(Ok(call_id)), Some(Ok(to)), Some(Ok(from)), Some(Ok(cseq))) =
            (msg.call_id(), msg.to(), msg.from(), msg.cseq())
        else {
            return Forward::Pass;
        };
        let (Some(subscriber_tag), Some(notifier_tag)) = (to.tag(), from.tag()) else {
            return Forward::Pass;
        };
        let Some(id) = self.find(call_id, subscriber_tag) else {
            return Forward::Pass;
        };
        let Some(sub) = self.subs.get_mut(&id) else {
            return Forward::Pass;
        };
        let same_package = matches!(msg.event(), Some(Ok(e)) if EventPackage::of(e.package()) == Some(sub.package));
        let known_tag = sub.texts.get(Text::NotifierTag);
        if !same_package || (!known_tag.is_empty() && known_tag != notifier_tag) {
            return Forward::Pass; // another subscription in the dialog, or another fork
        }
        let pbx_cseq = cseq.seq();
        let body = msg.body();
        let content_type = msg.header(HeaderName::ContentType).unwrap_or_default();
        // the texts are copied only when one of them differs from what is kept; a
        // NOTIFY without Contact or body keeps the last ones
        let mut changes: [(Text, &[u8]); 6] = [
            (Text::NotifierTag, notifier_tag),
            (
                Text::Event,
                msg.header(HeaderName::Event).unwrap_or_default(),
            ),
            (
                Text::Watcher,
                msg.header(HeaderName::To).unwrap_or_default(),
            ),
            (
                Text::Notifier,
                msg.header(HeaderName::From).unwrap_or_default(),
            ),
            (Text::PbxContact, b""),
            (Text::PbxContentType, content_type),
        ];
        let mut len = 4;
        if let Some(contact) = contact_uri(msg) {
            changes[len] = (Text::PbxContact, contact);
            len += 1;
        }
        if !body.is_empty() {
            changes[len] = (Text::PbxContentType, content_type);
            len += 1;
        }
        if !sub.texts.set(&changes[..len]) {
            return Forward::Pass;
        }
        sub.phone = *phone;
        sub.pbx_cseq = Some(sub.pbx_cseq.map_or(pbx_cseq, |c| c.max(pbx_cseq)));
        if !body.is_empty() {
            // a partial-state document is kept as the full state it makes with the last
            // one, so that what the proxy renders later shows every dialog
            let completed =
                self.renderer
                    .complete(content_type, sub.pbx_document().map(|d| d.body), body);
            sub.store_body(completed.as_deref().unwrap_or(body));
        }
        let state = msg.subscription_state().and_then(Result::ok);
        let terminated = state.is_some_and(|s| s.is_terminated());
        if terminated {
            sub.phase = SubscriptionPhase::Ending;
            sub.expires_at = sub.expires_at.min(now);
            sub.ends_at = sub.ends_at.min(now + LINGER);
            sub.due_at = None;
        } else if sub.phase != SubscriptionPhase::Ending {
            let active = state.is_none_or(|s| s.state().eq_ignore_ascii_case(b"active"));
            let was_pending = sub.phase == SubscriptionPhase::Pending;
            sub.phase = if active {
                SubscriptionPhase::Active
            } else {
                SubscriptionPhase::Accepted
            };
            // without `expires` (which RFC 6665 requires) a first NOTIFY counts as
            // granting what the phone asked for
            let expires = state
                .and_then(|s| s.expires())
                .or(was_pending.then_some(sub.requested_expires));
            if let Some(expires) = expires {
                sub.expires_at = after(now, expires);
                sub.ends_at = sub.expires_at + LINGER;
            }
        }

        let busy = self.teams_busy.contains(&sub.ext);
        let inject = busy
            && sub.phase == SubscriptionPhase::Active
            && now < sub.expires_at
            && !body.is_empty();
        let mut rewrite = Rewrite::default();
        let mut phone_cseq = pbx_cseq;
        match sub.numbering.as_deref_mut() {
            None => {
                // untouched so far: the phone sees the PBX's numbers
                if inject {
                    let version = self
                        .renderer
                        .document_version(content_type, body)
                        .unwrap_or(0);
                    let view = view_of(&sub.texts, &sub.ext, sub.package, sub.phase, true, None);
                    // what was kept (a partial document completed), not the bare body
                    let kept = PbxDocument {
                        content_type: sub.texts.get(Text::PbxContentType),
                        body: &sub.pbx_body,
                    };
                    rewrite.body = self.renderer.render(&view, Some(kept), version, true);
                }
            }
            Some(numbering) => {
                let Some(seq) = numbering.phone_cseq_for(pbx_cseq, now) else {
                    warn!(call_id = %String::from_utf8_lossy(call_id), "BLF CSeq out of range; NOTIFY passed untranslated");
                    return Forward::Pass;
                };
                phone_cseq = seq;
                if phone_cseq != pbx_cseq {
                    rewrite.cseq = Some(phone_cseq);
                }
                if !body.is_empty() {
                    let pbx_version = self.renderer.document_version(content_type, body);
                    let version = numbering.phone_version_for(pbx_version);
                    if inject || pbx_version.is_some_and(|v| v != version) {
                        let view = view_of(
                            &sub.texts,
                            &sub.ext,
                            sub.package,
                            sub.phase,
                            inject,
                            Some(numbering),
                        );
                        let kept = PbxDocument {
                            content_type: sub.texts.get(Text::PbxContentType),
                            body: &sub.pbx_body,
                        };
                        rewrite.body = self.renderer.render(&view, Some(kept), version, inject);
                    }
                    if pbx_version.is_some() || rewrite.body.is_some() {
                        numbering.last_phone_version = version;
                    }
                }
            }
        }
        if terminated {
            sub.final_notify_cseq = Some(phone_cseq);
        }
        if !body.is_empty() {
            sub.shown_busy = inject;
        }
        if sub.shown_busy == busy {
            sub.due_at = None;
        }
        rearm(&mut self.deadlines, id, sub);
        if sub.shown_busy != busy {
            // e.g. Teams went idle while this NOTIFY was on its way with the old state
            self.schedule(id, busy, now);
        }
        if rewrite.is_empty() {
            Forward::Pass
        } else {
            Forward::Rewrite(rewrite)
        }
    }

    /// The phone's answer to a NOTIFY (the PBX's or the proxy's own).
    fn notify_answered(&mut self, msg: &Message, seq: u32) -> Forward {
        let (Some(Ok(call_id)), Some(Ok(to))) = (msg.call_id(), msg.to()) else {
            return Forward::Pass;
        };
        let Some(id) = to.tag().and_then(|tag| self.find(call_id, tag)) else {
            return Forward::Pass;
        };
        let Some(sub) = self.subs.get_mut(&id) else {
            return Forward::Pass;
        };
        let code = msg.status().unwrap_or(0);
        let is_final = code >= 200;
        let outstanding = sub.numbering.as_deref().and_then(|n| n.lookup(seq));
        let forward = match outstanding {
            Some(Outstanding { pbx_cseq: None, .. }) => {
                if is_final {
                    if let Some(n) = sub.numbering.as_deref_mut() {
                        if n.in_flight.as_ref().is_some_and(|f| f.cseq == seq) {
                            n.in_flight = None;
                        }
                    }
                }
                Forward::Absorb
            }
            Some(Outstanding {
                pbx_cseq: Some(pbx_cseq),
                ..
            }) if pbx_cseq != seq => Forward::Rewrite(Rewrite {
                cseq: Some(pbx_cseq),
                body: None,
            }),
            Some(_) => Forward::Pass, // the same number on both sides
            None => match sub.numbering.as_deref() {
                // a number the proxy gave and has since forgotten (more than
                // MAX_OUTSTANDING NOTIFYs unanswered): which PBX NOTIFY it stood for is
                // lost, and passing it on would answer the wrong one
                Some(n) if seq > n.taken_over_at => {
                    warn!(
                        call_id = %String::from_utf8_lossy(call_id),
                        cseq = seq,
                        "answer to a BLF NOTIFY no longer remembered; absorbed"
                    );
                    Forward::Absorb
                }
                // sent before the proxy's first NOTIFY: the PBX's number
                _ => Forward::Pass,
            },
        };
        let final_notify = sub.final_notify_cseq == Some(seq);
        if is_final && ends_subscription(code) {
            self.remove(id, "NOTIFY refused by the phone");
        } else if is_final && final_notify {
            self.remove(id, "terminated");
        }
        forward
    }

    // ------------------------------------------------------------------ Teams

    /// The sync engine's verdict for `ext`: its Teams user is busy, or no longer is.
    /// Every subscription watching it whose phone shows the other state gets a NOTIFY,
    /// at once or when the rate allows (drain [`SubscriptionTracker::poll_transmit`]).
    pub fn set_teams_busy(&mut self, ext: &str, busy: bool, now: Instant) {
        let changed = if busy {
            if self.teams_busy.contains(ext) {
                false
            } else {
                let ext = match self.by_ext.get_key_value(ext) {
                    Some((known, _)) => known.clone(),
                    None => Arc::from(ext),
                };
                self.teams_busy.insert(ext)
            }
        } else {
            self.teams_busy.remove(ext)
        };
        if !changed {
            return;
        }
        let Some(ids) = self.by_ext.get(ext) else {
            return;
        };
        for &id in ids {
            let Some(sub) = self.subs.get_mut(&id) else {
                continue;
            };
            if sub.shown_busy == busy {
                // a flap back to what the phone shows: nothing to send
                sub.due_at = None;
                continue;
            }
            if !sub.can_originate(now) {
                continue; // the next PBX NOTIFY carries the state
            }
            let at = sub.last_teams_notify.map_or(now, |last| {
                (last + self.config.teams_notify_interval).max(now)
            });
            if at <= now {
                if !sub.queued {
                    sub.queued = true;
                    self.ready.push_back(id);
                }
            } else {
                sub.due_at = Some(at);
                rearm(&mut self.deadlines, id, sub);
            }
        }
    }

    /// Queues or times an own NOTIFY for one record whose phone shows the wrong state.
    fn schedule(&mut self, id: u64, busy: bool, now: Instant) {
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        if sub.shown_busy == busy || sub.queued || !sub.can_originate(now) {
            return;
        }
        let at = sub.last_teams_notify.map_or(now, |last| {
            (last + self.config.teams_notify_interval).max(now)
        });
        if at <= now {
            sub.queued = true;
            self.ready.push_back(id);
        } else {
            sub.due_at = Some(at);
            rearm(&mut self.deadlines, id, sub);
        }
    }

    // ------------------------------------------------------------------ output

    /// The next message the proxy sends on its own: a NOTIFY inside a phone's
    /// subscription dialog, or its retransmission. `via` gives the Via value (with a
    /// fresh branch the core recognises) for a request to the phone on that flow.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        mut via: impl FnMut(&Flow) -> String,
    ) -> Option<Transmit> {
        if let Some(transmit) = self.out.pop_front() {
            return Some(transmit);
        }
        while let Some(id) = self.ready.pop_front() {
            let Some(sub) = self.subs.get_mut(&id) else {
                continue;
            };
            if !sub.queued {
                continue;
            }
            sub.queued = false;
            let busy = self.teams_busy.contains(&sub.ext);
            if sub.shown_busy == busy || !sub.can_originate(now) {
                continue;
            }
            if let Some(last) = sub.last_teams_notify {
                let at = last + self.config.teams_notify_interval;
                if at > now {
                    sub.due_at = Some(at);
                    rearm(&mut self.deadlines, id, sub);
                    continue;
                }
            }
            if let Some(transmit) = own_notify(&self.renderer, sub, busy, now, &mut via) {
                rearm(&mut self.deadlines, id, sub);
                return Some(transmit);
            }
        }
        None
    }

    /// When [`SubscriptionTracker::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Everything due at `now`: expiry, Teams NOTIFYs the rate held back (then ready for
    /// [`SubscriptionTracker::poll_transmit`]), retransmissions of own NOTIFYs.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(sub) = self.subs.get_mut(&id) else {
                continue;
            };
            sub.armed = None;
            if sub.ends_at <= now {
                self.remove(id, "expired");
                continue;
            }
            if sub.due_at.is_some_and(|due| due <= now) {
                sub.due_at = None;
                if !sub.queued {
                    sub.queued = true;
                    self.ready.push_back(id);
                }
            }
            if let Some(numbering) = sub.numbering.as_deref_mut() {
                if let Some(flight) = numbering.in_flight.as_mut().filter(|f| f.next_at <= now) {
                    if now >= flight.give_up_at {
                        numbering.in_flight = None; // timer F: the phone's lamp waits for the next NOTIFY
                    } else {
                        flight.interval = (flight.interval * 2).min(T2);
                        flight.next_at = now + flight.interval;
                        self.out.push_back(Transmit {
                            flow: sub.phone,
                            bytes: flight.bytes.clone(),
                        });
                    }
                }
            }
            rearm(&mut self.deadlines, id, sub);
        }
    }

    fn remove(&mut self, id: u64, why: &str) {
        let Some(sub) = self.subs.remove(&id) else {
            return;
        };
        debug!(
            ext = %sub.ext,
            call_id = %String::from_utf8_lossy(sub.texts.get(Text::CallId)),
            why,
            "BLF subscription no longer tracked"
        );
        if let Some(at) = sub.armed {
            self.deadlines.remove(&(at, id));
        }
        if let Some(ids) = self.by_ext.get_mut(&sub.ext) {
            if let Some(i) = ids.iter().position(|&x| x == id) {
                ids.swap_remove(i);
            }
            if ids.is_empty() {
                self.by_ext.remove(&sub.ext);
            } else if ids.capacity() > 4 * ids.len() + 8 {
                ids.shrink_to_fit();
            }
        }
    }
}

/// Builds the proxy's own NOTIFY for a record whose phone must now show `busy`, and
/// moves its numbering on. `None` when the renderer has nothing to say or a number
/// would overflow.
fn own_notify<R: BlfRenderer>(
    renderer: &R,
    sub: &mut Subscription,
    busy: bool,
    now: Instant,
    via: &mut impl FnMut(&Flow) -> String,
) -> Option<Transmit> {
    if sub.numbering.is_none() {
        // the phone has seen the PBX's numbers and document so far
        let last_version = sub
            .pbx_document()
            .and_then(|d| renderer.document_version(d.content_type, d.body))
            .unwrap_or(0);
        sub.numbering = Some(Box::new(Numbering::new(
            sub.pbx_cseq.unwrap_or(0),
            last_version,
        )));
    }
    let numbering = sub.numbering.as_deref()?;
    let cseq = numbering.last_phone_cseq.checked_add(1)?;
    let version = numbering.last_phone_version.saturating_add(1);
    let rendered = renderer.render(&sub.view(), sub.pbx_document(), version, busy)?;
    let remaining = seconds(sub.expires_at.saturating_duration_since(now)).max(1);
    let state = format!("active;expires={remaining}");
    let via_value = via(&sub.phone);
    let texts = &sub.texts;
    let headers: [(&str, &[u8]); 2] = [
        ("Event", texts.get(Text::Event)),
        ("Subscription-State", state.as_bytes()),
    ];
    let pbx_contact = texts.get(Text::PbxContact);
    let bytes = DialogRequest {
        method: "NOTIFY",
        request_uri: texts.get(Text::PhoneContact),
        route_set: &[],
        via: via_value.as_bytes(),
        from: texts.get(Text::Notifier),
        to: texts.get(Text::Watcher),
        call_id: texts.get(Text::CallId),
        cseq,
        max_forwards: 70,
        contact: (!pbx_contact.is_empty()).then_some(pbx_contact),
        headers: &headers,
        body: Some((rendered.content_type.as_bytes(), &rendered.body)),
    }
    .build();
    let numbering = sub.numbering.as_deref_mut()?;
    numbering.last_phone_cseq = cseq;
    numbering.cseq_offset = numbering.cseq_offset.saturating_add(1);
    numbering.last_phone_version = version;
    numbering.remember(Outstanding {
        phone_cseq: cseq,
        pbx_cseq: None,
        sent_at: now,
    });
    numbering.in_flight = (sub.phone.transport == Transport::Udp).then(|| InFlight {
        cseq,
        bytes: bytes.clone(),
        interval: T1,
        next_at: now + T1,
        give_up_at: now + TIMEOUT,
    });
    sub.shown_busy = busy;
    sub.last_teams_notify = Some(now);
    debug!(
        ext = %sub.ext,
        call_id = %String::from_utf8_lossy(sub.texts.get(Text::CallId)),
        cseq,
        version,
        teams_busy = busy,
        "BLF NOTIFY originated"
    );
    Some(Transmit {
        flow: sub.phone,
        bytes,
    })
}
