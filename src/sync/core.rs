//! The sync engine's decisions, sans-IO: per extension, the Teams state wanted from
//! the phone side, what Graph holds of the proxy's writes, the next write and when,
//! and whether the Teams user's own presence makes the extension DND.
//!
//! Inputs are phone events, what the store says about each extension ([`Link`]),
//! Teams presences read from Graph, the outcome of each write and the time; outputs
//! are [`Output`]s to carry out and the next deadline. One write per extension is in
//! flight at a time; whatever changed meanwhile is written when it completes, so the
//! last state always wins and a call that ends while its setPresence is in flight ends
//! cleared.
//!
//! Two independent channels per extension, as Graph has them (graph.md §1.1):
//! the app's presence **session** (setPresence/clearPresence: a call, or DND in
//! [`DndMode::Session`]) and the user's **preferred** presence (DND in
//! [`DndMode::Preferred`]). What Graph holds of each is *known* after a confirmed
//! write and *unknown* after a failed one or a restart, and an unknown channel is
//! always written.
//!
//! No loops: a Teams presence that the proxy's own session explains (Busy/InACall
//! while the session is, or may be, or was within [`SyncRules::echo_grace`] of the
//! poll, InACall; DoNotDisturb/Presenting likewise for DND; DoNotDisturb for a
//! preferred DND) never makes the extension DND.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::rules::{CallEnd, DndMode, SyncRules};
use crate::graph::{Activity, Availability, PreferredPresence, SessionPresence};
use crate::observe::{CallPhase, Extension, ObserveEvent};

/// What the app's presence session should show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionTarget {
    /// No session (clearPresence).
    Clear,
    /// Busy/InACall: an external call.
    InCall,
    /// DoNotDisturb/Presenting: DND in [`DndMode::Session`].
    Dnd,
    /// Available/Available after a call ([`CallEnd::Available`]).
    Available,
}

/// What the user's preferred presence should be, as far as the proxy sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreferredTarget {
    /// Not set by the proxy (clearUserPreferredPresence).
    Clear,
    /// DoNotDisturb ([`DndMode::Preferred`]).
    Dnd,
}

/// One extension's Teams state as the store keeps it: desired, or confirmed by Graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamsState {
    /// The Graph user.
    pub user_id: Option<String>,
    /// The app's session.
    pub session: SessionTarget,
    /// The preferred presence.
    pub preferred: PreferredTarget,
}

impl TeamsState {
    /// Whether the proxy has (or wants) nothing in Teams.
    pub fn is_clear(&self) -> bool {
        self.session == SessionTarget::Clear && self.preferred == PreferredTarget::Clear
    }
}

/// What the store and settings say about an extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// The Graph user its email resolved to.
    pub user_id: Option<String>,
    /// PBX → Teams is on for it (domain switch and scope).
    pub write_enabled: bool,
    /// A token to write its presence with (its own pairing, or app-only) is held.
    pub can_write: bool,
    /// Its Teams presence is read (scope, and a domain or app-only token is held).
    pub read_enabled: bool,
    /// The generation of the token it is written with: a new pairing (or a refresh)
    /// lifts a block.
    pub token_generation: u64,
}

/// One Graph write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// setPresence with the app's session id.
    SetSession(SessionPresence),
    /// clearPresence of the app's session (404 "no session" counts as done).
    ClearSession,
    /// setUserPreferredPresence.
    SetPreferred(PreferredPresence),
    /// clearUserPreferredPresence.
    ClearPreferred,
}

/// A write to carry out; report its outcome with [`SyncCore::write_done`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRequest {
    /// The extension it is for.
    pub ext: Extension,
    /// The Graph user.
    pub user_id: String,
    /// Matches the outcome to the request.
    pub id: u64,
    /// What to do.
    pub write: Write,
    /// Why: a change, a retry, or a keep-alive.
    pub reason: WriteReason,
}

/// Why a write is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteReason {
    /// The wanted state changed (or was unknown).
    Change,
    /// A held session is set again before it expires.
    KeepAlive,
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Graph accepted it.
    Done,
    /// It failed in a way that may pass (5xx, 429, transport): tried again after a
    /// backoff.
    Retry(String),
    /// It cannot pass until the extension's link changes (no Teams user, token refused,
    /// needs re-pairing): not tried again until then.
    Blocked(String),
}

/// What the core wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A Graph write.
    Write(WriteRequest),
    /// The Teams user's own presence made the extension DND, or no longer does.
    TeamsBusy {
        /// The extension.
        ext: Extension,
        /// Busy or not.
        busy: bool,
    },
    /// A write of this state is about to be made: persist it (a restart clears what it
    /// names).
    Desired {
        /// The extension.
        ext: Extension,
        /// The wanted state.
        state: TeamsState,
    },
    /// Graph confirmed a state: persist it.
    Confirmed {
        /// The extension.
        ext: Extension,
        /// What Graph holds now.
        state: TeamsState,
    },
}

/// What Graph holds of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held<T> {
    Known(T),
    /// After a failed write or a restart: written whatever is wanted.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Session(SessionTarget),
    Preferred(PreferredTarget),
}

/// Per-extension state.
#[derive(Debug)]
struct ExtSync {
    call: Option<CallPhase>,
    dnd: bool,
    link: Link,
    session: Held<SessionTarget>,
    preferred: Held<PreferredTarget>,
    /// The session target that an `Unknown` session may hold (what was last tried).
    session_tried: Option<SessionTarget>,
    preferred_tried: Option<PreferredTarget>,
    in_flight: Option<(u64, Channel)>,
    /// Writes wait until then (coalescing).
    settle_at: Option<Instant>,
    /// Writes wait until then (backoff after failures).
    retry_at: Option<Instant>,
    failures: u32,
    /// A held session is set again then.
    keep_alive_at: Option<Instant>,
    blocked: Option<String>,
    /// When the proxy's own session or preferred presence last held (or may have held)
    /// each state: the echo check.
    last_own_in_call: Option<Instant>,
    last_own_dnd_session: Option<Instant>,
    last_own_dnd_preferred: Option<Instant>,
    teams_busy: bool,
    /// The last wanted (session, preferred): a new one restarts the coalescing window.
    last_wish: Option<(SessionTarget, PreferredTarget)>,
    /// The last state handed out to persist.
    last_desired: Option<TeamsState>,
    /// The deadline queued for it, so each extension has at most one live entry.
    queued: Option<Instant>,
}

impl ExtSync {
    fn new(link: Link) -> Self {
        Self {
            call: None,
            dnd: false,
            link,
            session: Held::Known(SessionTarget::Clear),
            preferred: Held::Known(PreferredTarget::Clear),
            session_tried: None,
            preferred_tried: None,
            in_flight: None,
            settle_at: None,
            retry_at: None,
            failures: 0,
            keep_alive_at: None,
            blocked: None,
            last_own_in_call: None,
            last_own_dnd_session: None,
            last_own_dnd_preferred: None,
            teams_busy: false,
            last_wish: None,
            last_desired: None,
            queued: None,
        }
    }

    fn idle(&self) -> bool {
        self.call.is_none()
            && !self.dnd
            && self.link == Link::default()
            && self.in_flight.is_none()
            && self.session == Held::Known(SessionTarget::Clear)
            && self.preferred == Held::Known(PreferredTarget::Clear)
            && !self.teams_busy
    }

    fn desired(&self, rules: &SyncRules) -> (SessionTarget, PreferredTarget) {
        if !self.link.write_enabled {
            return (SessionTarget::Clear, PreferredTarget::Clear);
        }
        let dnd_session = self.dnd && rules.dnd_mode == DndMode::Session;
        let session = if dnd_session {
            SessionTarget::Dnd
        } else if self.call.is_some() {
            SessionTarget::InCall
        } else {
            match (rules.call_end, self.session, self.session_tried) {
                // after a call (or a DND shown as a session), Available for a while
                (CallEnd::Available, Held::Known(SessionTarget::Clear), _) => SessionTarget::Clear,
                (CallEnd::Available, _, _) => SessionTarget::Available,
                (CallEnd::Clear, _, _) => SessionTarget::Clear,
            }
        };
        let preferred = if self.dnd && rules.dnd_mode == DndMode::Preferred {
            PreferredTarget::Dnd
        } else {
            PreferredTarget::Clear
        };
        (session, preferred)
    }

    /// Whether the proxy's session holds, may hold or is being set to `target`.
    fn session_may_hold(&self, target: SessionTarget) -> bool {
        self.session == Held::Known(target)
            || (self.session == Held::Unknown && self.session_tried == Some(target))
            || self.in_flight.map(|(_, c)| c) == Some(Channel::Session(target))
    }

    fn preferred_may_hold(&self, target: PreferredTarget) -> bool {
        self.preferred == Held::Known(target)
            || (self.preferred == Held::Unknown && self.preferred_tried == Some(target))
            || self.in_flight.map(|(_, c)| c) == Some(Channel::Preferred(target))
    }

    /// Notes the time for each state the proxy's writes may hold now.
    fn note_own(&mut self, now: Instant) {
        if self.session_may_hold(SessionTarget::InCall) {
            self.last_own_in_call = Some(now);
        }
        if self.session_may_hold(SessionTarget::Dnd) {
            self.last_own_dnd_session = Some(now);
        }
        if self.preferred_may_hold(PreferredTarget::Dnd) {
            self.last_own_dnd_preferred = Some(now);
        }
    }
}

/// The sync engine's state machine. See the module docs.
#[derive(Debug)]
pub struct SyncCore {
    rules: SyncRules,
    exts: HashMap<Extension, ExtSync>,
    by_user: HashMap<String, Vec<Extension>>,
    deadlines: BinaryHeap<Reverse<(Instant, Extension)>>,
    outputs: VecDeque<Output>,
    next_id: u64,
}

impl SyncCore {
    /// A core deciding with `rules`.
    pub fn new(rules: SyncRules) -> Self {
        Self {
            rules,
            exts: HashMap::new(),
            by_user: HashMap::new(),
            deadlines: BinaryHeap::new(),
            outputs: VecDeque::new(),
            next_id: 1,
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> &SyncRules {
        &self.rules
    }

    /// The next output to carry out.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`SyncCore::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Runs what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, ext))) = self.deadlines.pop() else {
                break;
            };
            if let Some(state) = self.exts.get_mut(&ext) {
                if state.queued == Some(at) {
                    state.queued = None;
                }
            }
            self.step(now, &ext);
        }
    }

    /// The Graph users whose presence is read (each once).
    pub fn watched_users(&self) -> Vec<String> {
        self.by_user
            .iter()
            .filter(|(_, exts)| {
                exts.iter()
                    .any(|e| self.exts.get(e).is_some_and(|s| s.link.read_enabled))
            })
            .map(|(user, _)| user.clone())
            .collect()
    }

    /// Whether the Teams user of `ext` currently makes it DND.
    pub fn teams_busy(&self, ext: &str) -> bool {
        self.exts.get(ext).is_some_and(|s| s.teams_busy)
    }

    /// Why writes for `ext` are stopped, if they are.
    pub fn blocked(&self, ext: &str) -> Option<&str> {
        self.exts.get(ext).and_then(|s| s.blocked.as_deref())
    }

    /// Whether every extension's Teams state is what is wanted (nothing in flight or
    /// left to write).
    pub fn converged(&self) -> bool {
        self.exts.values().all(|s| {
            let (session, preferred) = s.desired(&self.rules);
            s.in_flight.is_none()
                && (s.session == Held::Known(session) || s.blocked.is_some() || !s.link.can_write)
                && (s.preferred == Held::Known(preferred)
                    || s.blocked.is_some()
                    || !s.link.can_write)
        })
    }

    /// Extensions with state.
    pub fn extension_count(&self) -> usize {
        self.exts.len()
    }

    /// A phone-side change from the observer.
    pub fn phone_event(&mut self, now: Instant, event: &ObserveEvent) {
        let ext = event.extension().clone();
        let state = self.entry(&ext);
        match event {
            ObserveEvent::ExternalCallStarted { phase, .. } => state.call = Some(*phase),
            ObserveEvent::ExternalCallEnded { .. } => state.call = None,
            ObserveEvent::DndChanged { on, .. } => state.dnd = *on,
        }
        self.changed(now, &ext);
    }

    /// The observer's full view of an extension (after events were missed).
    pub fn phone_state(
        &mut self,
        now: Instant,
        ext: &Extension,
        call: Option<CallPhase>,
        dnd: bool,
    ) {
        let state = self.entry(ext);
        if state.call == call && state.dnd == dnd {
            return;
        }
        state.call = call;
        state.dnd = dnd;
        self.changed(now, ext);
    }

    /// What the store says about `ext` now. A changed link lifts a block.
    pub fn set_link(&mut self, now: Instant, ext: &Extension, link: Link) {
        let old = self.entry(ext).link.clone();
        if old == link {
            return;
        }
        if old.user_id != link.user_id {
            if let Some(user) = &old.user_id {
                self.unindex(user, ext);
            }
            if let Some(user) = &link.user_id {
                self.by_user
                    .entry(user.clone())
                    .or_default()
                    .push(ext.clone());
            }
        }
        let state = self.entry(ext);
        if old.user_id != link.user_id {
            // another Teams user: nothing is known of what it holds
            state.session = Held::Known(SessionTarget::Clear);
            state.preferred = Held::Known(PreferredTarget::Clear);
        }
        state.link = link;
        state.blocked = None;
        state.failures = 0;
        state.retry_at = None;
        if !state.link.read_enabled || state.link.user_id.is_none() {
            self.set_teams_busy(ext, false);
        }
        self.changed(now, ext);
    }

    /// Extensions with state whose link is not in `keep` lose their link (removed from
    /// the directory).
    pub fn retain_links(&mut self, now: Instant, keep: &dyn Fn(&str) -> bool) {
        let gone: Vec<Extension> = self
            .exts
            .iter()
            .filter(|(ext, s)| s.link != Link::default() && !keep(ext))
            .map(|(ext, _)| ext.clone())
            .collect();
        for ext in gone {
            self.set_link(now, &ext, Link::default());
        }
    }

    /// After a restart: what the previous run left in Teams (its last desired or
    /// confirmed state). Anything not clear is unknown now, so it is written again
    /// from the current phone state: cleared, or re-asserted.
    pub fn restore(&mut self, now: Instant, ext: &Extension, left: &TeamsState) {
        if left.is_clear() {
            return;
        }
        if let Some(user) = &left.user_id {
            let known = self.entry(ext).link.user_id.clone();
            if known.is_none() {
                let state = self.entry(ext);
                state.link.user_id = Some(user.clone());
                self.by_user
                    .entry(user.clone())
                    .or_default()
                    .push(ext.clone());
            }
        }
        let state = self.entry(ext);
        if left.session != SessionTarget::Clear {
            state.session = Held::Unknown;
            state.session_tried = Some(left.session);
        }
        if left.preferred != PreferredTarget::Clear {
            state.preferred = Held::Unknown;
            state.preferred_tried = Some(left.preferred);
        }
        state.note_own(now);
        info!(ext = %ext, session = ?left.session, preferred = ?left.preferred, "Teams state left by the previous run: writing it again from the current phone state");
        self.changed(now, ext);
    }

    /// A Teams presence read from Graph (a poll started at `requested_at`, or a
    /// notification received then).
    pub fn teams_presence(
        &mut self,
        now: Instant,
        requested_at: Instant,
        user_id: &str,
        availability: &Availability,
        activity: &Activity,
    ) {
        let Some(exts) = self.by_user.get(user_id).cloned() else {
            return;
        };
        for ext in exts {
            let busy = {
                let Some(state) = self.exts.get_mut(&ext) else {
                    continue;
                };
                state.note_own(now);
                state.link.read_enabled
                    && self.rules.busy.is_busy(availability, activity)
                    && !explained_by_own(state, &self.rules, requested_at, availability, activity)
            };
            self.set_teams_busy(&ext, busy);
        }
    }

    /// The outcome of write `id`.
    pub fn write_done(&mut self, now: Instant, ext: &Extension, id: u64, outcome: WriteOutcome) {
        let rules = self.rules.clone();
        let Some(state) = self.exts.get_mut(ext) else {
            return;
        };
        let Some((flying, channel)) = state.in_flight else {
            return;
        };
        if flying != id {
            return;
        }
        // the echo check must see that the write may have landed before it is forgotten
        state.note_own(now);
        state.in_flight = None;
        match outcome {
            WriteOutcome::Done => {
                state.failures = 0;
                state.retry_at = None;
                match channel {
                    Channel::Session(target) => {
                        state.session = Held::Known(target);
                        state.keep_alive_at = match target {
                            SessionTarget::InCall | SessionTarget::Dnd => {
                                Some(now + rules.keep_alive_after())
                            }
                            SessionTarget::Clear | SessionTarget::Available => None,
                        };
                    }
                    Channel::Preferred(target) => state.preferred = Held::Known(target),
                }
                let confirmed = TeamsState {
                    user_id: state.link.user_id.clone(),
                    session: match state.session {
                        Held::Known(t) => t,
                        Held::Unknown => state.session_tried.unwrap_or(SessionTarget::Clear),
                    },
                    preferred: match state.preferred {
                        Held::Known(t) => t,
                        Held::Unknown => state.preferred_tried.unwrap_or(PreferredTarget::Clear),
                    },
                };
                self.outputs.push_back(Output::Confirmed {
                    ext: ext.clone(),
                    state: confirmed,
                });
            }
            WriteOutcome::Retry(reason) => {
                match channel {
                    Channel::Session(_) => state.session = Held::Unknown,
                    Channel::Preferred(_) => state.preferred = Held::Unknown,
                }
                state.failures = state.failures.saturating_add(1);
                let wait = rules.backoff(state.failures);
                state.retry_at = Some(now + wait);
                info!(ext = %ext, failures = state.failures, retry_in_ms = wait.as_millis() as u64, %reason, "Teams write failed; trying again");
            }
            WriteOutcome::Blocked(reason) => {
                match channel {
                    Channel::Session(_) => state.session = Held::Unknown,
                    Channel::Preferred(_) => state.preferred = Held::Unknown,
                }
                info!(ext = %ext, %reason, "Teams writes stopped until the extension's pairing or directory entry changes");
                state.blocked = Some(reason);
            }
        }
        self.step(now, ext);
    }

    fn entry(&mut self, ext: &Extension) -> &mut ExtSync {
        self.exts
            .entry(ext.clone())
            .or_insert_with(|| ExtSync::new(Link::default()))
    }

    fn unindex(&mut self, user: &str, ext: &Extension) {
        if let Some(list) = self.by_user.get_mut(user) {
            list.retain(|e| e != ext);
            if list.is_empty() {
                self.by_user.remove(user);
            }
        }
    }

    fn set_teams_busy(&mut self, ext: &Extension, busy: bool) {
        let Some(state) = self.exts.get_mut(ext) else {
            return;
        };
        if state.teams_busy == busy {
            return;
        }
        state.teams_busy = busy;
        info!(ext = %ext, busy, "Teams presence {}", if busy { "makes the extension DND" } else { "no longer makes the extension DND" });
        self.outputs.push_back(Output::TeamsBusy {
            ext: ext.clone(),
            busy,
        });
    }

    /// The phone side or the link changed: write the new wish soon.
    fn changed(&mut self, now: Instant, ext: &Extension) {
        let rules = &self.rules;
        let Some(state) = self.exts.get_mut(ext) else {
            return;
        };
        state.note_own(now);
        let wish = state.desired(rules);
        if state.last_wish != Some(wish) {
            state.last_wish = Some(wish);
            let settle = now + rules.coalesce;
            state.settle_at = Some(state.settle_at.map_or(settle, |at| at.max(settle)));
        }
        self.step(now, ext);
    }

    /// Issues the next write of `ext` when one is due, else queues its next deadline.
    fn step(&mut self, now: Instant, ext: &Extension) {
        let rules = &self.rules;
        let Some(state) = self.exts.get_mut(ext) else {
            return;
        };
        if state.in_flight.is_some() {
            return;
        }
        if state.idle() {
            self.exts.remove(ext);
            return;
        }
        let Some(user_id) = state.link.user_id.clone() else {
            return;
        };
        if state.blocked.is_some() || !state.link.can_write {
            return;
        }
        let (session, preferred) = state.desired(rules);
        let change = if state.session != Held::Known(session) {
            Some(Channel::Session(session))
        } else if state.preferred != Held::Known(preferred) {
            Some(Channel::Preferred(preferred))
        } else {
            None
        };
        let (channel, reason, due) = match change {
            Some(channel) => {
                let due = [state.settle_at, state.retry_at]
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(now);
                (channel, WriteReason::Change, due)
            }
            None => match (session, state.keep_alive_at) {
                (SessionTarget::InCall | SessionTarget::Dnd, Some(at)) => {
                    (Channel::Session(session), WriteReason::KeepAlive, at)
                }
                _ => return,
            },
        };
        if due > now {
            if state.queued.is_none_or(|q| due < q) {
                state.queued = Some(due);
                self.deadlines.push(Reverse((due, ext.clone())));
            }
            return;
        }
        state.settle_at = None;
        let id = self.next_id;
        self.next_id += 1;
        let write = match channel {
            Channel::Session(SessionTarget::Clear) => Write::ClearSession,
            Channel::Session(SessionTarget::InCall) => Write::SetSession(SessionPresence::InACall),
            Channel::Session(SessionTarget::Dnd) => Write::SetSession(SessionPresence::Presenting),
            Channel::Session(SessionTarget::Available) => {
                Write::SetSession(SessionPresence::Available)
            }
            Channel::Preferred(PreferredTarget::Clear) => Write::ClearPreferred,
            Channel::Preferred(PreferredTarget::Dnd) => {
                Write::SetPreferred(PreferredPresence::DoNotDisturb)
            }
        };
        match channel {
            Channel::Session(t) => state.session_tried = Some(t),
            Channel::Preferred(t) => state.preferred_tried = Some(t),
        }
        state.in_flight = Some((id, channel));
        state.note_own(now);
        // what is about to be in Teams is persisted first (a restart clears it): once per
        // write, not once per phone event
        let desired = TeamsState {
            user_id: Some(user_id.clone()),
            session,
            preferred,
        };
        if state.last_desired.as_ref() != Some(&desired) {
            state.last_desired = Some(desired.clone());
            self.outputs.push_back(Output::Desired {
                ext: ext.clone(),
                state: desired,
            });
        }
        debug!(ext = %ext, ?write, ?reason, "Teams write");
        self.outputs.push_back(Output::Write(WriteRequest {
            ext: ext.clone(),
            user_id,
            id,
            write,
            reason,
        }));
    }
}

/// Whether the proxy's own writes explain a Teams presence read at `requested_at`.
fn explained_by_own(
    state: &ExtSync,
    rules: &SyncRules,
    requested_at: Instant,
    availability: &Availability,
    activity: &Activity,
) -> bool {
    let recent = |last: Option<Instant>| last.is_some_and(|t| requested_at <= t + rules.echo_grace);
    match (availability, activity) {
        (Availability::Busy, Activity::InACall) => {
            state.session_may_hold(SessionTarget::InCall) || recent(state.last_own_in_call)
        }
        (Availability::DoNotDisturb, Activity::Presenting) => {
            state.session_may_hold(SessionTarget::Dnd) || recent(state.last_own_dnd_session)
        }
        (Availability::DoNotDisturb, Activity::DoNotDisturb) => {
            state.preferred_may_hold(PreferredTarget::Dnd) || recent(state.last_own_dnd_preferred)
        }
        _ => false,
    }
}
