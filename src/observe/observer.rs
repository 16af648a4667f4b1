//! The observer: fed every message the proxy core forwards or answers, it keeps the
//! phone-side state of each extension (calls by class and state, DND) and reports its
//! changes as edge-triggered [`ObserveEvent`]s.
//!
//! Sans-IO like the core: messages and time come in as arguments, events go out
//! through [`Observer::poll_event`], and [`Observer::poll_timeout`] says when stale
//! calls and lapsed bindings must next be looked at. A message that means nothing here
//! (OPTIONS, a BLF NOTIFY, a retransmission) costs a method check and at most one
//! hash lookup, and allocates nothing; a new call costs its own record.

use std::collections::VecDeque;

use foldhash::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::bindings::Bindings;
use super::call::{
    Call, CallDirection, CallKey, CallState, Direction, PhoneAddr, TerminationReason, hash_bytes,
};
use super::classify::{CallClass, ClassifyRules, DndAction, normalize_uri_user};
use super::dnd::{feature_dnd, pidf_dnd};
use super::event::{CallPhase, CallView, Extension, ExtensionView, ObserveEvent, RecentEvent};
use crate::sip::{Message, Method};

/// Events kept for a consumer that has not drained them; beyond this the oldest go
/// (the per-extension state stays right: events are only its edges).
const MAX_QUEUED_EVENTS: usize = 4096;

/// Events remembered per extension for the status page.
const RECENT_PER_EXTENSION: usize = 16;

/// How long a feature-key SUBSCRIBE waits for its final response (64·T1).
const PENDING_LIFETIME: Duration = Duration::from_secs(32);

/// The sweep never runs more often than this.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What the observer is told by configuration.
#[derive(Debug, Clone)]
pub struct ObserveConfig {
    /// How calls and star codes are told apart.
    pub rules: ClassifyRules,
    /// Extensions known without having registered through the proxy.
    pub directory: Vec<String>,
    /// A call with no message for this long ends (its BYE was lost).
    pub stale_call_timeout: Duration,
    /// Most calls tracked at once.
    pub max_calls: usize,
    /// Most registrations tracked at once.
    pub max_bindings: usize,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        Self {
            rules: ClassifyRules::default(),
            directory: Vec::new(),
            stale_call_timeout: Duration::from_secs(4 * 3600),
            max_calls: 100_000,
            max_bindings: 100_000,
        }
    }
}

/// Where an extension's DND state was last set from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DndSource {
    StarCode,
    FeatureKey,
    Presence,
}

#[derive(Debug, Default)]
struct ExtState {
    in_directory: bool,
    dnd: bool,
    dnd_source: Option<DndSource>,
    /// Calls of any class in the table.
    calls: usize,
    early_external: usize,
    confirmed_external: usize,
    phase: Option<CallPhase>,
    recent: VecDeque<RecentEvent>,
    /// Its Teams user is busy (the sync engine says so): calls to it are refused.
    teams_busy: bool,
}

impl ExtState {
    fn current_phase(&self) -> Option<CallPhase> {
        if self.confirmed_external > 0 {
            Some(CallPhase::Connected)
        } else if self.early_external > 0 {
            Some(CallPhase::Ringing)
        } else {
            None
        }
    }

    fn count(&mut self, state: CallState, up: bool) {
        let counter = match state {
            CallState::Early => &mut self.early_external,
            CallState::Confirmed => &mut self.confirmed_external,
            CallState::Trying | CallState::Terminated => return,
        };
        *counter = if up {
            *counter + 1
        } else {
            counter.saturating_sub(1)
        };
    }

    fn idle(&self) -> bool {
        !self.in_directory && !self.dnd && self.calls == 0 && !self.teams_busy
    }
}

#[derive(Debug)]
struct PendingDnd {
    ext: Extension,
    on: bool,
    created: Instant,
}

/// Calls the observer started tracking, by class (counted once per call, when its
/// INVITE is first seen; a call over the `max_calls` limit or of no known extension is
/// not tracked and not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// External calls (the ones Teams is told about).
    pub external: u64,
    /// Calls between extensions.
    pub internal: u64,
    /// Star codes and other feature codes.
    pub star_code: u64,
}

/// Whom a PBX request for a phone is for.
enum IncomingTarget<'a> {
    /// The extension of one of the phone's bindings.
    Bound(&'a Extension),
    /// No binding fits: the Request-URI's or To's user, normalised.
    Named(String),
}

/// Phone-side state per extension.
#[derive(Debug)]
pub struct Observer {
    config: ObserveConfig,
    bindings: Bindings,
    calls: HashMap<CallKey, Call>,
    exts: HashMap<Extension, ExtState>,
    pending_dnd: HashMap<(u64, u32), PendingDnd>,
    events: VecDeque<ObserveEvent>,
    next_sweep: Option<Instant>,
    /// Extensions with `teams_busy` set: while 0, INVITEs cost no lookup for it.
    teams_busy_count: usize,
    /// Calls tracked so far, by class.
    call_counts: CallCounts,
}

impl Observer {
    /// An observer with nothing seen yet.
    pub fn new(config: ObserveConfig) -> Self {
        let mut observer = Self {
            bindings: Bindings::new(config.max_bindings),
            config,
            calls: HashMap::default(),
            exts: HashMap::default(),
            pending_dnd: HashMap::default(),
            events: VecDeque::new(),
            next_sweep: None,
            teams_busy_count: 0,
            call_counts: CallCounts::default(),
        };
        observer.set_directory(observer.config.directory.clone());
        observer
    }

    /// Replaces the directory of known extensions (internal-call classification).
    pub fn set_directory(&mut self, extensions: Vec<String>) {
        for state in self.exts.values_mut() {
            state.in_directory = false;
        }
        for name in &extensions {
            let ext = self.intern(name);
            if let Some(state) = self.exts.get_mut(&ext) {
                state.in_directory = true;
            }
        }
        self.config.directory = extensions;
        self.exts
            .retain(|ext, s| !s.idle() || self.bindings.count(ext) > 0);
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ObserveEvent> {
        self.events.pop_front()
    }

    /// When [`Observer::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Calls tracked.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Calls tracked so far, by class.
    pub fn call_counts(&self) -> CallCounts {
        self.call_counts
    }

    /// Registrations tracked.
    pub fn binding_count(&self) -> usize {
        self.bindings.len()
    }

    /// Everything known about one extension.
    pub fn extension(&self, ext: &str) -> Option<ExtensionView> {
        let (name, state) = self.exts.get_key_value(ext)?;
        Some(self.view(name, state))
    }

    /// Every extension with phones, calls, DND or a directory entry, by number.
    pub fn extensions(&self) -> Vec<ExtensionView> {
        let mut views: Vec<ExtensionView> = self
            .exts
            .iter()
            .map(|(name, state)| self.view(name, state))
            .collect();
        views.sort_by(|a, b| a.extension.cmp(&b.extension));
        views
    }

    /// The sync engine's verdict: the Teams user of `ext` is busy (calls to it are
    /// refused) or no longer is.
    pub fn set_teams_busy(&mut self, ext: &str, busy: bool) {
        let ext = self.intern(ext);
        let state = self.exts.entry(ext.clone()).or_default();
        if state.teams_busy == busy {
            return;
        }
        state.teams_busy = busy;
        if busy {
            self.teams_busy_count += 1;
        } else {
            self.teams_busy_count = self.teams_busy_count.saturating_sub(1);
            self.forget_if_idle(&ext);
        }
    }

    /// The extension a new PBX request for `phone` is for, when its Teams user is busy.
    /// Costs nothing while no extension is Teams-busy.
    pub fn teams_busy_target(&self, phone: PhoneAddr, msg: &Message) -> Option<Extension> {
        if self.teams_busy_count == 0 {
            return None;
        }
        let ext = match self.incoming_target(phone, msg)? {
            IncomingTarget::Bound(ext) => ext.clone(),
            IncomingTarget::Named(user) => self.exts.get_key_value(user.as_str())?.0.clone(),
        };
        self.exts
            .get(&ext)
            .is_some_and(|s| s.teams_busy)
            .then_some(ext)
    }

    fn view(&self, name: &Extension, state: &ExtState) -> ExtensionView {
        let mut calls: Vec<CallView> = self
            .calls
            .values()
            .filter(|c| &c.ext == name)
            .map(|c| CallView {
                call_id: c.call_id.to_string(),
                direction: c.direction,
                class: c.class,
                other_party: c.other_party.to_string(),
                state: c.state,
            })
            .collect();
        calls.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        ExtensionView {
            extension: name.clone(),
            registered: self.bindings.count(name),
            in_directory: state.in_directory,
            external_phase: state.phase,
            dnd: state.dnd,
            teams_busy: state.teams_busy,
            calls,
            recent: state.recent.iter().cloned().collect(),
        }
    }

    // ------------------------------------------------------------------ input

    /// A message the proxy forwarded (or generated) between `phone` and the PBX.
    /// Responses given to a phone's REGISTER must be the phone's view (its own Contacts).
    pub fn on_message(
        &mut self,
        now: Instant,
        direction: Direction,
        phone: PhoneAddr,
        msg: &Message,
    ) {
        if msg.is_request() {
            self.on_request(now, direction, phone, msg);
        } else {
            self.on_response(now, direction, phone, msg);
        }
    }

    fn on_request(&mut self, now: Instant, direction: Direction, phone: PhoneAddr, msg: &Message) {
        match msg.method() {
            Some(Method::Invite) => {
                if msg.to_tag().is_some() {
                    self.in_dialog_request(now, phone, msg);
                } else {
                    self.new_call(now, direction, phone, msg);
                }
            }
            Some(Method::Update) => self.in_dialog_request(now, phone, msg),
            Some(Method::Bye) => self.bye(now, direction, phone, msg),
            Some(Method::Register) if direction == Direction::FromPhone => {
                self.register_sent(now, phone, msg);
            }
            Some(Method::Subscribe) if direction == Direction::FromPhone => {
                self.feature_subscribe(now, phone, msg);
            }
            Some(Method::Notify) if direction == Direction::ToPhone => {
                self.notify(now, phone, msg);
            }
            _ => {}
        }
    }

    fn on_response(&mut self, now: Instant, direction: Direction, phone: PhoneAddr, msg: &Message) {
        let Some(Ok(cseq)) = msg.cseq() else { return };
        match cseq.method() {
            Method::Invite | Method::Update => {
                self.call_response(now, direction, phone, msg, cseq.method(), cseq.seq());
            }
            Method::Register if direction == Direction::ToPhone => {
                let change = self.bindings.register_answered(now, msg);
                for ext in &change.touched {
                    if self.bindings.count(ext) > 0 {
                        self.exts.entry(ext.clone()).or_default();
                    }
                }
                if let Some(at) = change.earliest_expiry {
                    self.arm(now, at);
                }
            }
            Method::Subscribe if direction == Direction::ToPhone => {
                let Some(key) = transaction_key(msg) else {
                    return;
                };
                let Some(pending) = self.pending_dnd.remove(&key) else {
                    return;
                };
                if (200..300).contains(&msg.status().unwrap_or(0)) {
                    let call_id = call_id_text(msg);
                    self.set_dnd(
                        now,
                        &pending.ext,
                        pending.on,
                        DndSource::FeatureKey,
                        call_id,
                    );
                }
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------------ calls

    fn new_call(&mut self, now: Instant, direction: Direction, phone: PhoneAddr, msg: &Message) {
        let Some(Ok(call_id)) = msg.call_id() else {
            return;
        };
        let key = CallKey::new(call_id, phone);
        if let Some(call) = self.calls.get_mut(&key) {
            // the same INVITE again with a new CSeq (after a 401/407 the call was ended
            // and removed, so this is a PBX re-sending an initial INVITE): follow it
            if let Some(Ok(cseq)) = msg.cseq() {
                call.invite_cseq = cseq.seq();
            }
            return;
        }
        if self.calls.len() >= self.config.max_calls {
            warn!(limit = self.config.max_calls, call_id = %String::from_utf8_lossy(call_id), "call limit reached; call not tracked");
            return;
        }
        let Some(Ok(cseq)) = msg.cseq() else { return };
        let (call_direction, ext, other_party, class) = match direction {
            Direction::FromPhone => {
                let Some(Ok(uri)) = msg.request_uri() else {
                    return;
                };
                let Some(dialled) = normalize_uri_user(&uri) else {
                    return;
                };
                let ext = self.outgoing_extension(phone, msg);
                let class = self
                    .config
                    .rules
                    .classify(&dialled, |n| self.is_known_extension(n));
                (CallDirection::Outgoing, ext, dialled, class)
            }
            Direction::ToPhone => {
                let ext = self.incoming_extension(phone, msg);
                let caller = self
                    .config
                    .rules
                    .caller_of(msg)
                    .unwrap_or_else(|| "anonymous".to_owned());
                let class = match self
                    .config
                    .rules
                    .classify(&caller, |n| self.is_known_extension(n))
                {
                    CallClass::StarCode(_) => CallClass::Internal,
                    class => class,
                };
                (CallDirection::Incoming, ext, caller, class)
            }
        };
        let Some(ext) = ext else {
            debug!(%phone, call_id = %String::from_utf8_lossy(call_id), "INVITE of no known extension not tracked");
            return;
        };
        let state = match call_direction {
            CallDirection::Outgoing => CallState::Trying,
            CallDirection::Incoming => CallState::Early,
        };
        let deadline = now + self.config.stale_call_timeout;
        let call = Call {
            call_id: String::from_utf8_lossy(call_id).into(),
            phone,
            ext: ext.clone(),
            direction: call_direction,
            class,
            other_party: other_party.into(),
            invite_cseq: cseq.seq(),
            state: CallState::Trying,
            invite_done: false,
            // room for the one dialog nearly every call has: its 2xx allocates nothing
            confirmed: Vec::with_capacity(1),
            deadline,
            session_interval: None,
            started: now,
        };
        debug!(ext = %ext, call_id = %call.call_id, direction = %call_direction, class = %class, other = %call.other_party, "call");
        self.calls.insert(key, call);
        let counter = match class {
            CallClass::External => &mut self.call_counts.external,
            CallClass::Internal => &mut self.call_counts.internal,
            CallClass::StarCode(_) => &mut self.call_counts.star_code,
        };
        *counter += 1;
        self.exts.entry(ext).or_default().calls += 1;
        self.arm(now, deadline);
        if state != CallState::Trying {
            self.set_state(now, key, state, None);
        }
    }

    fn call_response(
        &mut self,
        now: Instant,
        direction: Direction,
        phone: PhoneAddr,
        msg: &Message,
        method: Method,
        seq: u32,
    ) {
        let Some(key) = self.call_key(phone, msg) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if direction == call.direction.invite_direction()
            && method == Method::Invite
            && seq == call.invite_cseq
        {
            return; // not an answer to the call's INVITE (the other side's own request)
        }
        let status = msg.status().unwrap_or(0);
        if method != Method::Invite || seq != call.invite_cseq {
            // a re-INVITE or UPDATE: its 2xx restarts or ends the session timer
            if (200..300).contains(&status) {
                let deadline = call.answered(now, msg, self.config.stale_call_timeout);
                self.arm(now, deadline);
            }
            return;
        }
        match status {
            101..=199 if call.state == CallState::Trying => {
                self.set_state(now, key, CallState::Early, None);
            }
            200..=299 => {
                call.invite_done = true;
                let new_dialog = call.confirm_dialog(msg.to_tag());
                let deadline = call.answered(now, msg, self.config.stale_call_timeout);
                let dnd = new_dialog.then(|| call.dnd_action()).flatten();
                let ext = call.ext.clone();
                self.arm(now, deadline);
                self.set_state(now, key, CallState::Confirmed, None);
                if let Some(action) = dnd {
                    let on = match action {
                        DndAction::On => true,
                        DndAction::Off => false,
                        DndAction::Toggle => !self.exts.get(&ext).is_some_and(|s| s.dnd),
                    };
                    let call_id = call_id_text(msg);
                    self.set_dnd(now, &ext, on, DndSource::StarCode, call_id);
                }
            }
            300.. => {
                call.invite_done = true;
                if call.confirmed.is_empty() {
                    let reason = match status {
                        487 => TerminationReason::Cancelled,
                        408 => TerminationReason::Timeout,
                        _ => TerminationReason::Rejected,
                    };
                    self.set_state(now, key, CallState::Terminated, Some(reason));
                }
            }
            _ => {}
        }
    }

    fn in_dialog_request(&mut self, now: Instant, phone: PhoneAddr, msg: &Message) {
        let Some(key) = self.call_key(phone, msg) else {
            return;
        };
        let stale = self.config.stale_call_timeout;
        if let Some(call) = self.calls.get_mut(&key) {
            if call.session_interval.is_none() {
                call.deadline = now + stale;
            }
        }
    }

    fn bye(&mut self, now: Instant, direction: Direction, phone: PhoneAddr, msg: &Message) {
        let Some(key) = self.call_key(phone, msg) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        // the UAS tag names the dialog: in To when the INVITE's sender sends the BYE
        let uas_tag = if direction == call.direction.invite_direction() {
            msg.to_tag()
        } else {
            msg.from_tag()
        };
        if call.end_dialog(uas_tag) {
            let reason = match direction {
                Direction::FromPhone => TerminationReason::LocalBye,
                Direction::ToPhone => TerminationReason::RemoteBye,
            };
            self.set_state(now, key, CallState::Terminated, Some(reason));
        }
    }

    /// The key of a tracked call this message belongs to (Call-ID checked in full).
    fn call_key(&self, phone: PhoneAddr, msg: &Message) -> Option<CallKey> {
        let call_id = msg.call_id()?.ok()?;
        let key = CallKey::new(call_id, phone);
        let call = self.calls.get(&key)?;
        (call.call_id.as_bytes() == call_id).then_some(key)
    }

    /// Moves a call to `state`, keeping its extension's counters and publishing the
    /// extension's new phase when it changed.
    fn set_state(
        &mut self,
        now: Instant,
        key: CallKey,
        state: CallState,
        reason: Option<TerminationReason>,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let old = call.state;
        if old == state {
            return;
        }
        call.state = state;
        let ext = call.ext.clone();
        let external = call.is_external();
        debug!(ext = %ext, call_id = %call.call_id, class = %call.class, from = %old, to = %state, reason = %reason.map(|r| r.to_string()).unwrap_or_default(), "call state");
        let call_id = if state == CallState::Terminated {
            match self.calls.remove(&key) {
                Some(call) => call.call_id,
                None => return,
            }
        } else {
            call.call_id.clone()
        };
        let Some(ext_state) = self.exts.get_mut(&ext) else {
            return;
        };
        if state == CallState::Terminated {
            ext_state.calls = ext_state.calls.saturating_sub(1);
        }
        if external {
            ext_state.count(old, false);
            ext_state.count(state, true);
            self.publish_phase(now, &ext, &call_id);
        }
        if state == CallState::Terminated {
            self.forget_if_idle(&ext);
        }
    }

    /// Drops the record of an extension nothing refers to any more (no phone registered,
    /// not in the directory, no call, DND off): a phone calling out with ever new From
    /// users must not grow the table.
    fn forget_if_idle(&mut self, ext: &Extension) {
        if self.exts.get(ext).is_some_and(ExtState::idle) && self.bindings.count(ext) == 0 {
            self.exts.remove(ext);
        }
    }

    fn publish_phase(&mut self, now: Instant, ext: &Extension, call_id: &Arc<str>) {
        let Some(state) = self.exts.get_mut(ext) else {
            return;
        };
        let phase = state.current_phase();
        if phase == state.phase {
            return;
        }
        state.phase = phase;
        let event = match phase {
            Some(phase) => ObserveEvent::ExternalCallStarted {
                ext: ext.clone(),
                phase,
            },
            None => ObserveEvent::ExternalCallEnded { ext: ext.clone() },
        };
        self.emit(now, event, Some(call_id));
    }

    // -------------------------------------------------------------- extensions

    fn intern(&mut self, name: &str) -> Extension {
        if let Some((ext, _)) = self.exts.get_key_value(name) {
            return ext.clone();
        }
        let ext: Extension = name.into();
        self.exts.insert(ext.clone(), ExtState::default());
        ext
    }

    fn is_known_extension(&self, number: &str) -> bool {
        self.exts.get(number).is_some_and(|s| s.in_directory) || self.bindings.count(number) > 0
    }

    /// The extension of the phone that sent a request: its registered binding (the
    /// line named in From if it registered several), else From's user, unverified.
    fn outgoing_extension(&mut self, phone: PhoneAddr, msg: &Message) -> Option<Extension> {
        let from_user = msg
            .from()
            .and_then(Result::ok)
            .and_then(|f| normalize_uri_user(f.uri()));
        let bindings = self.bindings.of_phone(&phone);
        if let Some(binding) = from_user
            .as_deref()
            .and_then(|user| bindings.iter().find(|b| &*b.ext == user))
            .or_else(|| bindings.first())
        {
            return Some(binding.ext.clone());
        }
        from_user.map(|user| self.intern(&user))
    }

    /// The extension a PBX request for `phone` is for: the phone's binding (the one
    /// whose Contact is the Request-URI, or the line named in the Request-URI or To when
    /// it registered several), else the Request-URI's or To's user.
    fn incoming_extension(&mut self, phone: PhoneAddr, msg: &Message) -> Option<Extension> {
        match self.incoming_target(phone, msg)? {
            IncomingTarget::Bound(ext) => Some(ext.clone()),
            IncomingTarget::Named(user) => Some(self.intern(&user)),
        }
    }

    fn incoming_target(&self, phone: PhoneAddr, msg: &Message) -> Option<IncomingTarget<'_>> {
        let ruri = msg.request_uri().and_then(Result::ok);
        let ruri_user = ruri.as_ref().and_then(normalize_uri_user);
        let to_user = msg
            .to()
            .and_then(Result::ok)
            .and_then(|t| normalize_uri_user(t.uri()));
        let bindings = self.bindings.of_phone(&phone);
        let by_contact = ruri
            .as_ref()
            .and_then(|u| bindings.iter().find(|b| &*b.contact == u.as_bytes()));
        let by_user = || {
            bindings.iter().find(|b| {
                ruri_user.as_deref() == Some(&*b.ext) || to_user.as_deref() == Some(&*b.ext)
            })
        };
        if let Some(binding) = by_contact.or_else(by_user).or_else(|| bindings.first()) {
            return Some(IncomingTarget::Bound(&binding.ext));
        }
        to_user.or(ruri_user).map(IncomingTarget::Named)
    }

    fn emit(&mut self, now: Instant, event: ObserveEvent, call_id: Option<&Arc<str>>) {
        info!(ext = %event.extension(), call_id = call_id.map_or("-", |c| &**c), event = %event, "phone state");
        if let Some(state) = self.exts.get_mut(event.extension()) {
            if state.recent.len() >= RECENT_PER_EXTENSION {
                state.recent.pop_front();
            } else if state.recent.capacity() == 0 {
                // once per extension: the history never grows after this
                state.recent.reserve_exact(RECENT_PER_EXTENSION);
            }
            state.recent.push_back(RecentEvent {
                at: now,
                event: event.clone(),
                call_id: call_id.cloned(),
            });
        }
        if self.events.len() >= MAX_QUEUED_EVENTS {
            warn!("observer event queue full; oldest event dropped");
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    // --------------------------------------------------------------------- DND

    fn set_dnd(
        &mut self,
        now: Instant,
        ext: &Extension,
        on: bool,
        source: DndSource,
        call_id: Option<Arc<str>>,
    ) {
        let state = self.exts.entry(ext.clone()).or_default();
        // a presence document without a DND marker clears only what presence set:
        // many PBXs publish presence that cannot express DND at all
        if !on && source == DndSource::Presence && state.dnd_source != Some(DndSource::Presence) {
            return;
        }
        if state.dnd == on {
            return;
        }
        state.dnd = on;
        state.dnd_source = on.then_some(source);
        debug!(ext = %ext, on, source = ?source, "DND");
        self.emit(
            now,
            ObserveEvent::DndChanged {
                ext: ext.clone(),
                on,
            },
            call_id.as_ref(),
        );
        if !on {
            self.forget_if_idle(ext);
        }
    }

    fn register_sent(&mut self, now: Instant, phone: PhoneAddr, msg: &Message) {
        let Some(user) = msg
            .to()
            .and_then(Result::ok)
            .and_then(|t| normalize_uri_user(t.uri()))
        else {
            return;
        };
        let ext = match self.exts.get_key_value(user.as_str()) {
            Some((ext, _)) => ext.clone(),
            None => Extension::from(user),
        };
        self.bindings.register_sent(now, phone, ext, msg);
        self.arm(now, now + PENDING_LIFETIME);
    }

    /// A phone's `as-feature-event` SUBSCRIBE carrying `SetDoNotDisturb`: DND changes
    /// when the PBX accepts it.
    fn feature_subscribe(&mut self, now: Instant, phone: PhoneAddr, msg: &Message) {
        if msg.body().is_empty() || !is_event(msg, "as-feature-event") {
            return;
        }
        let Some(on) = feature_dnd(msg.body(), "SetDoNotDisturb") else {
            return;
        };
        let Some(key) = transaction_key(msg) else {
            return;
        };
        let Some(ext) = self.outgoing_extension(phone, msg) else {
            return;
        };
        if self.pending_dnd.len() >= self.config.max_bindings {
            return;
        }
        self.pending_dnd.insert(
            key,
            PendingDnd {
                ext,
                on,
                created: now,
            },
        );
        self.arm(now, now + PENDING_LIFETIME);
    }

    /// The PBX's NOTIFYs that carry DND: feature-key sync and PIDF presence.
    fn notify(&mut self, now: Instant, phone: PhoneAddr, msg: &Message) {
        if msg.body().is_empty() {
            return;
        }
        if is_event(msg, "as-feature-event") {
            let Some(on) = feature_dnd(msg.body(), "DoNotDisturbEvent") else {
                return;
            };
            if let Some(ext) = self.incoming_extension(phone, msg) {
                self.set_dnd(now, &ext, on, DndSource::FeatureKey, call_id_text(msg));
            }
        } else if is_event(msg, "presence") {
            let Some(pidf) = pidf_dnd(msg.body()) else {
                return;
            };
            if !self.is_known_extension(&pidf.entity_user) {
                return;
            }
            let ext = self.intern(&pidf.entity_user);
            self.set_dnd(now, &ext, pidf.on, DndSource::Presence, call_id_text(msg));
        }
    }

    // ------------------------------------------------------------------ timers

    fn arm(&mut self, now: Instant, at: Instant) {
        let at = at.max(now + MIN_SWEEP_INTERVAL);
        self.next_sweep = Some(self.next_sweep.map_or(at, |next| next.min(at)));
    }

    /// Ends stale calls and forgets lapsed registrations, when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|at| at > now) {
            return;
        }
        let due: Vec<CallKey> = self
            .calls
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            self.set_state(
                now,
                key,
                CallState::Terminated,
                Some(TerminationReason::Timeout),
            );
        }
        self.bindings.expire(now);
        self.pending_dnd
            .retain(|_, p| now.duration_since(p.created) < PENDING_LIFETIME);
        let bindings = &self.bindings;
        self.exts
            .retain(|ext, s| !s.idle() || bindings.count(ext) > 0);
        let next = self
            .calls
            .values()
            .map(|c| c.deadline)
            .chain(self.bindings.next_expiry())
            .chain(
                self.pending_dnd
                    .values()
                    .map(|p| p.created + PENDING_LIFETIME),
            )
            .min();
        self.next_sweep = next.map(|at| at.max(now + MIN_SWEEP_INTERVAL));
    }
}

fn is_event(msg: &Message, package: &str) -> bool {
    msg.event()
        .and_then(Result::ok)
        .is_some_and(|e| e.package().eq_ignore_ascii_case(package.as_bytes()))
}

fn call_id_text(msg: &Message) -> Option<Arc<str>> {
    msg.call_id()
        .and_then(Result::ok)
        .map(|id| Arc::from(String::from_utf8_lossy(id)))
}

fn transaction_key(msg: &Message) -> Option<(u64, u32)> {
    let call_id = msg.call_id()?.ok()?;
    let cseq = msg.cseq()?.ok()?;
    Some((hash_bytes(call_id), cseq.seq()))
}
