//! The tokio shell around [`SyncCore`]: one task owns the core and feeds it phone
//! events, write outcomes, Teams presences and the time; the rest run beside it.
//!
//! - **Links**: every `reload_interval` (and on [`SyncHandle::reload`]) the domain
//!   switch, scope, directory and token rows are read from the store and turned into a
//!   [`Link`] per extension. A separate task resolves directory emails to Graph users
//!   (an email with no Teams user is recorded with its reason and not retried until the
//!   entry changes).
//! - **Writes**: each [`WriteRequest`] runs in its own task (at most
//!   [`SyncOptions::max_concurrent_writes`] at once) with the extension's own token, or
//!   the app-only one; its outcome comes back on a channel.
//! - **Reads**: the poller asks getPresencesByUserId for every watched user each
//!   `poll_interval` (`catch_up_poll` while change notifications arrive) with the
//!   domain token (or app-only), and hands the newest result to the core; a result the
//!   core has not taken yet is replaced, never queued.
//! - **Persistence**: desired and confirmed states go to the store from a task of their
//!   own, newest per extension, so a slow disk never holds a write back.
//! - **Status**: what the handle reads ([`SyncHandle::teams_presences`],
//!   [`SyncHandle::recent_actions`], [`SyncHandle::metrics`]) is kept under one short
//!   lock beside the core: the last Teams presence per extension, a ring of the last
//!   [`RECENT_ACTIONS`] things the engine did, and the counters. Sync lag is the time
//!   from the engine receiving the last phone event a write reflects (a call started or
//!   ended, DND on or off; ringing → connected changes nothing) to Graph confirming that
//!   write; writes not caused by a phone event (keep-alives, a new pairing, restart
//!   recovery) give no sample.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::core::{
    Link, Output, SyncCore, TeamsState, Write, WriteOutcome, WriteReason, WriteRequest,
};
use super::notify::{NotificationSetup, notification_loop};
use crate::config::SyncSettings;
use crate::graph::{
    DOMAIN_SCOPES, GraphClient, GraphError, Presence, StoreTokenSink, TokenSet, Tokens,
    USER_SCOPES, format_datetime,
};
use crate::metrics::SyncMetrics;
use crate::observe::{Extension, ObserveEvent};
use crate::runtime::RuntimeControl;
use crate::store::{Resolution, Scope, Store, TokenInfo, TokenKind, TokenStatus};

/// While phone events keep coming, they are taken in batches this far apart (the first
/// of a burst at once): the proxy's thread then wakes the engine's a hundred times a
/// second at most, not once per event.
const PHONE_EVENT_BATCH: Duration = Duration::from_millis(10);

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// `[sync]` of the configuration.
    pub settings: SyncSettings,
    /// Write and read with an app-only token (client credentials).
    pub app_only: bool,
    /// Extensions the observer knows from the configuration (`calls.extensions`), kept
    /// when the store's directory is handed to it.
    pub configured_extensions: Vec<String>,
    /// How often links are read from the store again (default 5 s).
    pub reload_interval: Duration,
    /// Graph writes in flight at once (default 16).
    pub max_concurrent_writes: usize,
}

impl SyncOptions {
    /// Options with the defaults for `settings`.
    pub fn new(settings: SyncSettings) -> Self {
        Self {
            settings,
            app_only: false,
            configured_extensions: Vec::new(),
            reload_interval: Duration::from_secs(5),
            max_concurrent_writes: 16,
        }
    }
}

/// How many of the engine's latest actions [`SyncHandle::recent_actions`] keeps.
pub const RECENT_ACTIONS: usize = 200;

/// Serializes a time as RFC 3339 UTC (`2026-01-02T03:04:05.1234567Z`).
fn rfc3339<S: serde::Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_datetime(*at))
}

/// The last Teams presence the engine saw of an extension's user, from a poll or a
/// change notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeamsPresence {
    /// The Graph user (the extension's Teams user).
    pub user_id: String,
    /// Base presence, as Graph sent it (`Available`, `Busy`, `DoNotDisturb`, ...).
    pub availability: String,
    /// Activity, as Graph sent it (`Available`, `InACall`, `Presenting`, ...).
    pub activity: String,
    /// When the engine last saw it.
    #[serde(serialize_with = "rfc3339")]
    pub seen_at: SystemTime,
    /// Since when the engine has seen this availability and activity.
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
}

/// What kind of thing the engine did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncActionKind {
    /// A Graph write went out (setPresence, clearPresence, preferred presence).
    WriteSent,
    /// Graph accepted a write.
    WriteConfirmed,
    /// A write failed: retried after a backoff, or blocked until the link changes.
    WriteFailed,
    /// The Teams user's presence made the extension DND: calls to it are refused and
    /// the BLF lamps watching it show busy.
    TeamsBusyStarted,
    /// ... no longer does.
    TeamsBusyEnded,
    /// The extension's email was resolved to a Teams user.
    EmailResolved,
    /// No Teams user has the extension's email (not retried until it changes).
    EmailNotFound,
}

/// One thing the engine did, for the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncAction {
    /// When.
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    /// The extension it was for.
    pub extension: String,
    /// What kind of action.
    pub kind: SyncActionKind,
    /// A sentence saying what happened (which presence, which error).
    pub detail: String,
}

/// The sync engine; [`SyncEngine::start`] runs it.
#[derive(Debug)]
pub struct SyncEngine;

/// A running engine.
#[derive(Debug)]
pub struct SyncHandle {
    reload: Arc<Notify>,
    notifications: mpsc::Sender<Presence>,
    state: Arc<Mutex<Shared>>,
    tasks: Vec<JoinHandle<()>>,
}

impl SyncHandle {
    /// Reads links from the store now (after a pairing, an unpairing, a directory or
    /// settings change) instead of at the next reload.
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    /// Where change notifications deliver Teams presences (the web layer's receiver).
    /// While they arrive, polling slows to the catch-up interval.
    pub fn notification_sender(&self) -> mpsc::Sender<Presence> {
        self.notifications.clone()
    }

    /// Extensions whose Teams user currently makes them DND, sorted.
    pub fn teams_busy(&self) -> Vec<String> {
        let mut list: Vec<String> = self.state.lock().teams_busy.iter().cloned().collect();
        list.sort();
        list
    }

    /// The last Graph error per extension (writes) and of the poller (`"*"`).
    pub fn last_errors(&self) -> HashMap<String, String> {
        self.state.lock().last_errors.clone()
    }

    /// Per extension, the last Teams presence the engine saw for its user (polls and
    /// change notifications); extensions whose user is not read are absent.
    pub fn teams_presences(&self) -> HashMap<String, TeamsPresence> {
        self.state.lock().presences.clone()
    }

    /// The engine's last [`RECENT_ACTIONS`] actions, oldest first: writes sent,
    /// confirmed or failed, Teams-busy started and ended, emails resolved or not found.
    pub fn recent_actions(&self) -> Vec<SyncAction> {
        self.state.lock().actions.iter().cloned().collect()
    }

    /// A snapshot of the engine's counters: writes by outcome, retries, sync lag (last
    /// and histogram), polls, Teams-busy extensions.
    pub fn metrics(&self) -> SyncMetrics {
        let state = self.state.lock();
        let mut metrics = state.metrics.clone();
        metrics.teams_busy = state.teams_busy.len() as u64;
        metrics
    }

    /// Stops every task of the engine.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// What the handle can read of the engine.
#[derive(Debug, Default)]
struct Shared {
    teams_busy: std::collections::BTreeSet<String>,
    last_errors: HashMap<String, String>,
    presences: HashMap<String, TeamsPresence>,
    actions: VecDeque<SyncAction>,
    metrics: SyncMetrics,
}

impl Shared {
    fn act(&mut self, ext: &str, kind: SyncActionKind, detail: String) {
        if self.actions.len() >= RECENT_ACTIONS {
            self.actions.pop_front();
        }
        self.actions.push_back(SyncAction {
            at: SystemTime::now(),
            extension: ext.to_owned(),
            kind,
            detail,
        });
    }
}

/// An extension's phone side as the lag measurement follows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PhoneSide {
    call: bool,
    dnd: bool,
}

/// A write on its way to Graph.
#[derive(Debug)]
struct Flight {
    write: Write,
    sent_at: Instant,
    /// The phone event it shows, for the lag.
    event_at: Option<Instant>,
}

/// `setPresence Busy/InACall`, `clearPresence`, ...
fn describe(write: Write) -> String {
    match write {
        Write::SetSession(p) => {
            let (availability, activity) = p.pair();
            format!("setPresence {availability}/{activity}")
        }
        Write::ClearSession => "clearPresence".into(),
        Write::SetPreferred(p) => {
            let (availability, activity) = p.pair();
            format!("setUserPreferredPresence {availability}/{activity}")
        }
        Write::ClearPreferred => "clearUserPreferredPresence".into(),
    }
}

/// What a write does, as a sentence.
fn sent_sentence(write: Write, reason: WriteReason) -> String {
    let what = match write {
        Write::SetSession(p) => {
            let (availability, activity) = p.pair();
            match reason {
                WriteReason::Change => format!("Teams set to {availability}/{activity}"),
                WriteReason::KeepAlive => {
                    format!("Teams session {availability}/{activity} renewed before it expires")
                }
            }
        }
        Write::ClearSession => "Teams session cleared".into(),
        Write::SetPreferred(p) => {
            let (availability, activity) = p.pair();
            format!("Teams preferred presence set to {availability}/{activity}")
        }
        Write::ClearPreferred => "Teams preferred presence cleared".into(),
    };
    format!("{what} ({})", describe(write))
}

/// What the poller polls, kept current by the core task.
#[derive(Debug, Default)]
pub(super) struct PollTargets {
    pub(super) users: Vec<String>,
    pub(super) reader: Option<Arc<Tokens>>,
    /// Every watched user is covered by a presence subscription: poll at the catch-up
    /// interval only.
    pub(super) covered: bool,
}

/// A poll's result.
#[derive(Debug)]
struct Observation {
    requested_at: Instant,
    presences: Vec<Presence>,
}

/// The newest desired / confirmed state per extension, waiting to be written.
#[derive(Debug, Default)]
struct PersistSlot {
    desired: Option<TeamsState>,
    confirmed: Option<TeamsState>,
}

/// The credentials the engine writes and reads with.
struct Credentials {
    graph: GraphClient,
    store: Store,
    app_only: Option<Arc<Tokens>>,
    /// Per extension: its delegated credential and the sink that knows its generation.
    users: HashMap<String, (Arc<StoreTokenSink>, Arc<Tokens>)>,
    domain: Option<(Arc<StoreTokenSink>, Arc<Tokens>)>,
}

impl Credentials {
    fn delegated(
        &self,
        info: &TokenInfo,
        scope: &str,
    ) -> Option<(Arc<StoreTokenSink>, Arc<Tokens>)> {
        match self.store.get_token(&info.key) {
            Ok(Some(record)) => {
                let sink = Arc::new(StoreTokenSink::new(
                    self.store.clone(),
                    info.key.clone(),
                    record.info.generation,
                ));
                let tokens = Tokens::delegated(
                    &self.graph,
                    TokenSet::from_record(&record),
                    scope,
                    sink.clone(),
                );
                Some((sink, tokens))
            }
            Ok(None) => None,
            Err(e) => {
                warn!(key = %info.key, error = %e, "cannot read a token from the store");
                None
            }
        }
    }

    /// Brings the credentials in line with the token rows; returns the user tokens
    /// held (extension → generation).
    fn refresh(&mut self, infos: &[TokenInfo]) -> HashMap<String, u64> {
        let mut held = HashMap::new();
        let mut domain_seen = false;
        for info in infos {
            if info.status != TokenStatus::Valid {
                continue;
            }
            match info.key.kind {
                TokenKind::User => {
                    let ext = info.key.owner.clone();
                    let current = self
                        .users
                        .get(&ext)
                        .is_some_and(|(sink, _)| sink.generation() == info.generation);
                    if !current {
                        match self.delegated(info, USER_SCOPES) {
                            Some(pair) => {
                                self.users.insert(ext.clone(), pair);
                            }
                            None => continue,
                        }
                    }
                    held.insert(ext, info.generation);
                }
                TokenKind::Domain if !domain_seen => {
                    domain_seen = true;
                    let current = self
                        .domain
                        .as_ref()
                        .is_some_and(|(sink, _)| sink.generation() == info.generation);
                    if !current {
                        self.domain = self.delegated(info, DOMAIN_SCOPES);
                    }
                }
                TokenKind::Domain | TokenKind::AppOnly => {}
            }
        }
        self.users.retain(|ext, _| held.contains_key(ext));
        if !domain_seen {
            self.domain = None;
        }
        held
    }

    fn writer(&self, ext: &str) -> Option<Arc<Tokens>> {
        self.users
            .get(ext)
            .map(|(_, t)| t.clone())
            .or_else(|| self.app_only.clone())
    }

    fn reader(&self) -> Option<Arc<Tokens>> {
        self.domain
            .as_ref()
            .map(|(_, t)| t.clone())
            .or_else(|| self.app_only.clone())
    }
}

impl SyncEngine {
    /// Starts the engine: restores what a previous run left in Teams, then syncs until
    /// [`SyncHandle::shutdown`].
    pub fn start(
        options: SyncOptions,
        store: Store,
        graph: GraphClient,
        phone_events: broadcast::Receiver<ObserveEvent>,
        control: RuntimeControl,
        notifications: Option<NotificationSetup>,
    ) -> SyncHandle {
        let reload = Arc::new(Notify::new());
        let resolve = Arc::new(Notify::new());
        let persist = Arc::new(Notify::new());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let poll_targets = Arc::new(Mutex::new(PollTargets::default()));
        let persist_slots: Arc<Mutex<HashMap<Extension, PersistSlot>>> = Arc::default();
        let (observations_tx, observations_rx) = mpsc::channel(1);
        let (notifications_tx, notifications_rx) = mpsc::channel(1024);
        let (outcomes_tx, outcomes_rx) = mpsc::channel(1024);
        let app_only = options.app_only.then(|| Tokens::app_only(&graph));
        let credentials = Credentials {
            graph: graph.clone(),
            store: store.clone(),
            app_only,
            users: HashMap::new(),
            domain: None,
        };
        let poll_now = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(poll_loop(
            graph.clone(),
            poll_targets.clone(),
            options.settings.poll_interval,
            options.settings.catch_up_poll,
            observations_tx,
            shared.clone(),
            poll_now.clone(),
        )));
        if let Some(setup) = notifications {
            tasks.push(tokio::spawn(notification_loop(
                graph.clone(),
                poll_targets.clone(),
                setup,
                notifications_tx.clone(),
                poll_now,
            )));
        }
        tasks.push(tokio::spawn(persist_loop(
            store.clone(),
            persist_slots.clone(),
            persist.clone(),
        )));
        tasks.push(tokio::spawn(resolve_loop(
            graph.clone(),
            store.clone(),
            poll_targets.clone(),
            resolve.clone(),
            reload.clone(),
            options.reload_interval,
            shared.clone(),
        )));
        let engine = CoreTask {
            core: SyncCore::new(options.settings.rules.clone()),
            expiration: options.settings.rules.expiration(),
            store,
            graph,
            credentials,
            control,
            shared: shared.clone(),
            poll_targets,
            persist_slots,
            persist,
            resolve,
            writes: Arc::new(Semaphore::new(options.max_concurrent_writes.max(1))),
            outcomes: outcomes_tx,
            directory: Vec::new(),
            options,
            links: HashMap::new(),
            users: HashMap::new(),
            phone: HashMap::new(),
            changed_at: HashMap::new(),
            flights: HashMap::new(),
        };
        tasks.push(tokio::spawn(engine.run(
            phone_events,
            outcomes_rx,
            observations_rx,
            notifications_rx,
            reload.clone(),
        )));
        SyncHandle {
            reload,
            notifications: notifications_tx,
            state: shared,
            tasks,
        }
    }
}

/// The task that owns the core.
struct CoreTask {
    core: SyncCore,
    expiration: Duration,
    store: Store,
    graph: GraphClient,
    credentials: Credentials,
    control: RuntimeControl,
    shared: Arc<Mutex<Shared>>,
    poll_targets: Arc<Mutex<PollTargets>>,
    persist_slots: Arc<Mutex<HashMap<Extension, PersistSlot>>>,
    persist: Arc<Notify>,
    resolve: Arc<Notify>,
    writes: Arc<Semaphore>,
    outcomes: mpsc::Sender<(Extension, u64, WriteOutcome)>,
    /// The directory last handed to the observer.
    directory: Vec<String>,
    options: SyncOptions,
    /// The links last handed to the core (a changed one is no phone event's doing).
    links: HashMap<Extension, Link>,
    /// Graph user → its extensions, for the Teams presences shown per extension.
    users: HashMap<String, Vec<Extension>>,
    /// Calls and DND per extension, to tell which phone events change what Teams shows.
    phone: HashMap<Extension, PhoneSide>,
    /// The last phone event per extension that no write has shown yet.
    changed_at: HashMap<Extension, Instant>,
    /// Writes in flight, by id.
    flights: HashMap<u64, Flight>,
}

impl CoreTask {
    async fn run(
        mut self,
        mut phone_events: broadcast::Receiver<ObserveEvent>,
        mut outcomes: mpsc::Receiver<(Extension, u64, WriteOutcome)>,
        mut observations: mpsc::Receiver<Observation>,
        mut notifications: mpsc::Receiver<Presence>,
        reload: Arc<Notify>,
    ) {
        self.apply_settings_from_config();
        self.restore();
        self.reload_links().await;
        let mut reload_tick = tokio::time::interval(self.options.reload_interval);
        reload_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch_until: Option<tokio::time::Instant> = None;
        loop {
            self.carry_out().await;
            let deadline = self.core.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            let batch_sleep = async {
                match batch_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // the first event after a quiet spell is taken at once; while events keep
                // coming they are drained every PHONE_EVENT_BATCH instead, so a busy
                // proxy does not wake this thread once per event
                event = phone_events.recv(), if batch_until.is_none() => {
                    if !self.phone_event(event).await {
                        return;
                    }
                    batch_until = Some(tokio::time::Instant::now() + PHONE_EVENT_BATCH);
                }
                () = batch_sleep => {
                    let mut drained = 0usize;
                    loop {
                        let event = match phone_events.try_recv() {
                            Ok(event) => Ok(event),
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                Err(broadcast::error::RecvError::Lagged(n))
                            }
                            Err(broadcast::error::TryRecvError::Closed) => {
                                Err(broadcast::error::RecvError::Closed)
                            }
                        };
                        if !self.phone_event(event).await {
                            return;
                        }
                        drained += 1;
                    }
                    batch_until = (drained > 0)
                        .then(|| tokio::time::Instant::now() + PHONE_EVENT_BATCH);
                }
                Some((ext, id, outcome)) = outcomes.recv() => {
                    self.note_outcome(&ext, id, &outcome);
                    self.core.write_done(Instant::now(), &ext, id, outcome);
                }
                Some(observation) = observations.recv() => {
                    let now = Instant::now();
                    self.note_presences(&observation.presences);
                    for p in &observation.presences {
                        self.core.teams_presence(now, observation.requested_at, &p.id, &p.availability, &p.activity);
                    }
                }
                Some(presence) = notifications.recv() => {
                    let now = Instant::now();
                    self.note_presences(std::slice::from_ref(&presence));
                    self.core.teams_presence(now, now, &presence.id, &presence.availability, &presence.activity);
                }
                () = sleep => self.core.handle_timeout(Instant::now()),
                _ = reload_tick.tick() => self.reload_links().await,
                () = reload.notified() => self.reload_links().await,
            }
        }
    }

    /// One phone event (or the news that some were missed); false when the proxy has
    /// stopped.
    async fn phone_event(
        &mut self,
        event: Result<ObserveEvent, broadcast::error::RecvError>,
    ) -> bool {
        match event {
            Ok(event) => {
                let now = Instant::now();
                self.note_phone_event(now, &event);
                self.core.phone_event(now, &event);
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(
                    missed,
                    "sync engine fell behind the phone events: reading the phone state again"
                );
                self.resync_phones().await;
            }
            Err(broadcast::error::RecvError::Closed) => {
                info!("the proxy stopped: sync engine stops");
                return false;
            }
        }
        true
    }

    /// `[sync] pbx_to_teams` and `scope` from the configuration win over the store.
    fn apply_settings_from_config(&self) {
        let settings = &self.options.settings;
        if let Some(on) = settings.pbx_to_teams {
            if let Err(e) = self.store.set_pbx_to_teams_enabled(on) {
                warn!(error = %e, "cannot store sync.pbx_to_teams");
            }
        }
        if let Some(list) = &settings.scope {
            let scope = Scope::SelectedExtensions {
                extensions: list.clone(),
            };
            if let Err(e) = self.store.set_scope(&scope) {
                warn!(error = %e, "cannot store sync.scope");
            }
        }
    }

    /// What the previous run left in Teams is cleared, or written again from the
    /// phone state.
    fn restore(&mut self) {
        let rows = match self.store.list_desired_presence() {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %e, "cannot read the desired presence left by the previous run");
                return;
            }
        };
        let now = Instant::now();
        for row in rows {
            let parse =
                |v: &serde_json::Value| serde_json::from_value::<TeamsState>(v.clone()).ok();
            let desired = parse(&row.desired);
            let confirmed = row.confirmed.as_ref().and_then(parse);
            // whatever either names may be in Teams now
            let left = match (desired, confirmed) {
                (Some(d), Some(c)) => TeamsState {
                    user_id: d.user_id.or(c.user_id),
                    session: if d.session != super::SessionTarget::Clear {
                        d.session
                    } else {
                        c.session
                    },
                    preferred: if d.preferred != super::PreferredTarget::Clear {
                        d.preferred
                    } else {
                        c.preferred
                    },
                },
                (Some(s), None) | (None, Some(s)) => s,
                (None, None) => continue,
            };
            let ext: Extension = row.extension.as_str().into();
            self.core.restore(now, &ext, &left);
        }
    }

    /// The observer's full view, after events were missed.
    async fn resync_phones(&mut self) {
        let Some(views) = self.control.extensions().await else {
            return;
        };
        let now = Instant::now();
        for view in views {
            self.note_phone_side(
                now,
                &view.extension,
                PhoneSide {
                    call: view.external_phase.is_some(),
                    dnd: view.dnd,
                },
            );
            self.core
                .phone_state(now, &view.extension, view.external_phase, view.dnd);
        }
    }

    /// Links from the store: switch, scope, directory, tokens.
    async fn reload_links(&mut self) {
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((
                store.pbx_to_teams_enabled()?,
                store.scope()?,
                store.list_extensions()?,
                store.list_tokens()?,
            ))
        })
        .await;
        let (enabled, scope, directory, tokens) = match read {
            Ok(Ok(values)) => values,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the sync settings from the store");
                return;
            }
            Err(e) => {
                warn!(error = %e, "store read task failed");
                return;
            }
        };
        let user_tokens = self.credentials.refresh(&tokens);
        let oid_of: HashMap<&str, &str> = tokens
            .iter()
            .filter(|t| t.key.kind == TokenKind::User)
            .filter_map(|t| Some((t.key.owner.as_str(), t.graph_user_oid.as_deref()?)))
            .collect();
        let reader = self.credentials.reader();
        let app_only = self.credentials.app_only.is_some();
        let now = Instant::now();
        let mut unresolved = false;
        let mut links_changed = false;
        for entry in &directory {
            let ext: Extension = entry.extension.as_str().into();
            let in_scope = scope.includes(&entry.extension);
            let user_id = entry.graph_user_id.clone().or_else(|| {
                oid_of
                    .get(entry.extension.as_str())
                    .map(|s| (*s).to_owned())
            });
            // the directory shows whom an email names even when a paired token
            // already tells the engine
            unresolved |= entry.graph_user_id.is_none()
                && entry.email.is_some()
                && entry.last_error.is_none();
            let token = user_tokens.get(&entry.extension).copied();
            let link = Link {
                user_id,
                write_enabled: enabled && in_scope,
                can_write: token.is_some() || app_only,
                read_enabled: in_scope && reader.is_some(),
                token_generation: token.unwrap_or(0),
            };
            if self.links.get(&ext) != Some(&link) {
                // what the next write shows is the new link's doing, not a phone event's
                self.changed_at.remove(&ext);
                self.links.insert(ext.clone(), link.clone());
                links_changed = true;
            }
            self.core.set_link(now, &ext, link);
        }
        let names: std::collections::HashSet<&str> =
            directory.iter().map(|e| e.extension.as_str()).collect();
        self.core.retain_links(now, &|ext| names.contains(ext));
        let before = self.links.len();
        self.links.retain(|ext, _| names.contains(&**ext));
        if links_changed || self.links.len() != before {
            self.index_users();
        }
        {
            let mut targets = self.poll_targets.lock();
            targets.users = self.core.watched_users();
            targets.reader = reader;
        }
        if unresolved {
            self.resolve.notify_one();
        }
        let mut known = self.options.configured_extensions.clone();
        known.extend(directory.into_iter().map(|e| e.extension));
        known.sort();
        known.dedup();
        if known != self.directory {
            self.directory = known.clone();
            self.control.set_directory(known).await;
        }
    }

    fn note_outcome(&mut self, ext: &Extension, id: u64, outcome: &WriteOutcome) {
        let now = Instant::now();
        let flight = self.flights.remove(&id);
        let what = flight
            .as_ref()
            .map_or_else(|| "Teams write".to_owned(), |f| describe(f.write));
        let mut shared = self.shared.lock();
        match outcome {
            WriteOutcome::Done => {
                shared.last_errors.remove(&**ext);
                shared.metrics.writes_ok += 1;
                let mut detail = format!("Graph confirmed {what}");
                if let Some(f) = &flight {
                    detail.push_str(&format!(
                        " in {} ms",
                        now.duration_since(f.sent_at).as_millis()
                    ));
                    if let Some(at) = f.event_at {
                        let lag = now.duration_since(at);
                        shared.metrics.last_lag = Some(lag);
                        shared.metrics.lag.observe(lag.as_secs_f64());
                        detail.push_str(&format!(", {} ms after the phone event", lag.as_millis()));
                    }
                }
                shared.act(ext, SyncActionKind::WriteConfirmed, detail);
            }
            WriteOutcome::Retry(e) => {
                shared.last_errors.insert(ext.to_string(), e.clone());
                shared.metrics.writes_failed += 1;
                shared.metrics.retries += 1;
                // the write that is tried again still shows that phone event
                if let Some(at) = flight.as_ref().and_then(|f| f.event_at) {
                    self.changed_at.entry(ext.clone()).or_insert(at);
                }
                shared.act(
                    ext,
                    SyncActionKind::WriteFailed,
                    format!("{what} failed: {e}; trying again after a backoff"),
                );
            }
            WriteOutcome::Blocked(e) => {
                shared.last_errors.insert(ext.to_string(), e.clone());
                shared.metrics.writes_failed += 1;
                shared.act(
                    ext,
                    SyncActionKind::WriteFailed,
                    format!(
                        "{what} failed: {e}; no more writes until the extension's pairing or directory entry changes"
                    ),
                );
            }
        }
    }

    /// A phone event: when it changes what Teams should show (a call started or ended,
    /// DND on or off), the next write shows it.
    fn note_phone_event(&mut self, now: Instant, event: &ObserveEvent) {
        let ext = event.extension();
        let mut side = self.phone.get(ext).copied().unwrap_or_default();
        match event {
            ObserveEvent::ExternalCallStarted { .. } => side.call = true,
            ObserveEvent::ExternalCallEnded { .. } => side.call = false,
            ObserveEvent::DndChanged { on, .. } => side.dnd = *on,
        }
        self.note_phone_side(now, ext, side);
    }

    fn note_phone_side(&mut self, now: Instant, ext: &Extension, side: PhoneSide) {
        let before = self.phone.get(ext).copied().unwrap_or_default();
        if side == PhoneSide::default() {
            self.phone.remove(ext);
        } else {
            self.phone.insert(ext.clone(), side);
        }
        if side != before {
            self.changed_at.insert(ext.clone(), now);
        }
    }

    /// Graph user → extensions, from the links.
    fn index_users(&mut self) {
        self.users.clear();
        for (ext, link) in &self.links {
            if let Some(user) = &link.user_id {
                self.users
                    .entry(user.clone())
                    .or_default()
                    .push(ext.clone());
            }
        }
        let users = &self.users;
        self.shared.lock().presences.retain(|ext, p| {
            users
                .get(&p.user_id)
                .is_some_and(|exts| exts.iter().any(|e| **e == **ext))
        });
    }

    /// Teams presences read from Graph, kept per extension for the status page.
    fn note_presences(&self, presences: &[Presence]) {
        let now = SystemTime::now();
        let mut shared = self.shared.lock();
        for p in presences {
            let Some(exts) = self.users.get(&p.id) else {
                continue;
            };
            let (availability, activity) = (p.availability.as_str(), p.activity.as_str());
            for ext in exts {
                match shared.presences.get_mut(&**ext) {
                    Some(seen)
                        if seen.user_id == p.id
                            && seen.availability == availability
                            && seen.activity == activity =>
                    {
                        seen.seen_at = now;
                    }
                    _ => {
                        shared.presences.insert(
                            ext.to_string(),
                            TeamsPresence {
                                user_id: p.id.clone(),
                                availability: availability.to_owned(),
                                activity: activity.to_owned(),
                                seen_at: now,
                                since: now,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Carries out what the core decided.
    async fn carry_out(&mut self) {
        let mut persisted = false;
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Write(request) => self.spawn_write(request),
                Output::TeamsBusy { ext, busy } => {
                    {
                        let mut shared = self.shared.lock();
                        let presence = shared
                            .presences
                            .get(&*ext)
                            .map(|p| format!("{}/{}", p.availability, p.activity))
                            .unwrap_or_else(|| "its Teams presence".into());
                        if busy {
                            shared.teams_busy.insert(ext.to_string());
                            shared.act(
                                &ext,
                                SyncActionKind::TeamsBusyStarted,
                                format!(
                                    "Teams user is {presence}: the extension is DND, new calls to it are refused and BLF lamps show it busy"
                                ),
                            );
                        } else {
                            shared.teams_busy.remove(&*ext);
                            shared.act(
                                &ext,
                                SyncActionKind::TeamsBusyEnded,
                                format!(
                                    "Teams user is {presence}: the extension takes calls again and BLF lamps follow the PBX"
                                ),
                            );
                        }
                    }
                    self.control.set_teams_busy(ext, busy).await;
                }
                Output::Desired { ext, state } => {
                    self.persist_slots.lock().entry(ext).or_default().desired = Some(state);
                    persisted = true;
                }
                Output::Confirmed { ext, state } => {
                    self.persist_slots.lock().entry(ext).or_default().confirmed = Some(state);
                    persisted = true;
                }
            }
        }
        if persisted {
            self.persist.notify_one();
        }
    }

    fn spawn_write(&mut self, request: WriteRequest) {
        let event_at = match request.reason {
            WriteReason::Change => self.changed_at.remove(&request.ext),
            WriteReason::KeepAlive => None,
        };
        self.flights.insert(
            request.id,
            Flight {
                write: request.write,
                sent_at: Instant::now(),
                event_at,
            },
        );
        self.shared.lock().act(
            &request.ext,
            SyncActionKind::WriteSent,
            sent_sentence(request.write, request.reason),
        );
        let outcomes = self.outcomes.clone();
        let Some(tokens) = self.credentials.writer(&request.ext) else {
            // the token went away between the link and the write: the next reload
            // changes the link
            let _ = outcomes.try_send((
                request.ext.clone(),
                request.id,
                WriteOutcome::Blocked("no token to write with".into()),
            ));
            return;
        };
        let graph = self.graph.clone();
        let slots = self.writes.clone();
        let expiration = self.expiration;
        tokio::spawn(async move {
            let Ok(_permit) = slots.acquire_owned().await else {
                return;
            };
            let started = Instant::now();
            let outcome = execute(&graph, &tokens, &request, expiration).await;
            debug!(ext = %request.ext, write = ?request.write, ms = started.elapsed().as_millis() as u64, ?outcome, "Teams write done");
            let _ = outcomes.send((request.ext, request.id, outcome)).await;
        });
    }
}

/// One Graph write, its error sorted into retry or block.
async fn execute(
    graph: &GraphClient,
    tokens: &Tokens,
    request: &WriteRequest,
    expiration: Duration,
) -> WriteOutcome {
    let user = request.user_id.as_str();
    let result = match request.write {
        Write::SetSession(presence) => graph.set_presence(tokens, user, presence, expiration).await,
        Write::ClearSession => match graph.clear_presence(tokens, user).await {
            // no session: what was wanted
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        },
        Write::SetPreferred(presence) => {
            graph
                .set_user_preferred_presence(tokens, user, presence, None)
                .await
        }
        Write::ClearPreferred => graph.clear_user_preferred_presence(tokens, user).await,
    };
    match result {
        Ok(()) => WriteOutcome::Done,
        Err(e) => classify(&e),
    }
}

/// Whether a failed write may pass later as it is, or needs the link to change.
fn classify(error: &GraphError) -> WriteOutcome {
    let text = error.to_string();
    if error.needs_repairing() {
        return WriteOutcome::Blocked(format!("needs re-pairing: {text}"));
    }
    match error {
        GraphError::Http { status, .. } | GraphError::Token { status, .. }
            if *status >= 500 || *status == 429 || *status == 408 =>
        {
            WriteOutcome::Retry(text)
        }
        GraphError::Http { .. }
        | GraphError::Token { .. }
        | GraphError::InvalidRequest(_)
        | GraphError::Subscription { .. } => WriteOutcome::Blocked(text),
        _ => WriteOutcome::Retry(text),
    }
}

/// Polls Teams presence of the watched users.
async fn poll_loop(
    graph: GraphClient,
    targets: Arc<Mutex<PollTargets>>,
    interval: Duration,
    catch_up: Duration,
    observations: mpsc::Sender<Observation>,
    shared: Arc<Mutex<Shared>>,
    poll_now: Arc<Notify>,
) {
    let mut last_error: Option<String> = None;
    loop {
        let (users, reader, covered) = {
            let t = targets.lock();
            (t.users.clone(), t.reader.clone(), t.covered)
        };
        // while subscriptions cover everyone, polling is only the catch-up
        let wait = if covered { catch_up } else { interval };
        if let (false, Some(reader)) = (users.is_empty(), reader) {
            let requested_at = Instant::now();
            match graph.presences_by_user_id(&reader, &users).await {
                Ok(presences) => {
                    {
                        let mut shared = shared.lock();
                        shared.metrics.polls_ok += 1;
                        if last_error.take().is_some() {
                            info!("Teams presence poll works again");
                            shared.last_errors.remove("*");
                        }
                    }
                    let observation = Observation {
                        requested_at,
                        presences,
                    };
                    // the core has not taken the previous one: this one is newer
                    match observations.try_send(observation) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(newer)) => {
                            if observations.send(newer).await.is_err() {
                                return;
                            }
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                Err(e) => {
                    shared.lock().metrics.polls_failed += 1;
                    let text = e.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        warn!(error = %text, "Teams presence poll failed; the last known presence stays");
                        shared.lock().last_errors.insert("*".into(), text.clone());
                        last_error = Some(text);
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = poll_now.notified() => {}
        }
    }
}

/// Writes desired and confirmed states to the store, newest per extension.
async fn persist_loop(
    store: Store,
    slots: Arc<Mutex<HashMap<Extension, PersistSlot>>>,
    wake: Arc<Notify>,
) {
    let revisions: Arc<Mutex<HashMap<Extension, (u64, TeamsState)>>> = Arc::default();
    loop {
        wake.notified().await;
        let batch: Vec<(Extension, PersistSlot)> = slots.lock().drain().collect();
        let store = store.clone();
        let revisions = revisions.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut revisions = revisions.lock();
            for (ext, slot) in batch {
                if let Some(desired) = slot.desired {
                    match serde_json::to_value(&desired)
                        .map_err(|e| e.to_string())
                        .and_then(|v| {
                            store
                                .set_desired_presence(&ext, &v)
                                .map_err(|e| e.to_string())
                        }) {
                        Ok(revision) => {
                            revisions.insert(ext.clone(), (revision, desired));
                        }
                        Err(e) => {
                            warn!(ext = %ext, error = %e, "cannot store the desired Teams state")
                        }
                    }
                }
                if let Some(confirmed) = slot.confirmed {
                    let Some((revision, desired)) = revisions.get(&ext) else {
                        continue;
                    };
                    // the revision a confirmed state belongs to: the latest when it is
                    // what is desired, else the one before
                    let revision = if *desired == confirmed {
                        *revision
                    } else {
                        revision.saturating_sub(1)
                    };
                    let stored = serde_json::to_value(&confirmed)
                        .map_err(|e| e.to_string())
                        .and_then(|v| {
                            store
                                .confirm_presence(&ext, revision, &v)
                                .map_err(|e| e.to_string())
                        });
                    if let Err(e) = stored {
                        debug!(ext = %ext, error = %e, "cannot store the confirmed Teams state");
                    }
                }
            }
        })
        .await;
        if let Err(e) = done {
            warn!(error = %e, "store write task failed");
        }
    }
}

/// Resolves directory emails to Graph users with the reading token.
async fn resolve_loop(
    graph: GraphClient,
    store: Store,
    targets: Arc<Mutex<PollTargets>>,
    wake: Arc<Notify>,
    resolved: Arc<Notify>,
    interval: Duration,
    shared: Arc<Mutex<Shared>>,
) {
    loop {
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(interval * 12) => {}
        }
        let Some(reader) = targets.lock().reader.clone() else {
            continue;
        };
        let entries = match store.list_extensions() {
            Ok(entries) => entries,
            Err(e) => {
                warn!(error = %e, "cannot read the directory");
                continue;
            }
        };
        let mut changed = false;
        for entry in entries {
            let Some(email) = entry.email.as_deref() else {
                continue;
            };
            if entry.graph_user_id.is_some() || entry.last_error.is_some() {
                continue;
            }
            let resolution = match graph.resolve_user(&reader, email).await {
                Ok(Some(user)) => Resolution::Resolved {
                    graph_user_id: user.id,
                    display_name: user.display_name,
                },
                Ok(None) => Resolution::Failed {
                    error: format!("no Teams user has the email {email}"),
                },
                Err(
                    e @ GraphError::Http {
                        status: 403 | 404, ..
                    },
                ) => Resolution::Failed {
                    error: e.to_string(),
                },
                Err(e) => {
                    // an outage: tried again at the next round
                    debug!(ext = %entry.extension, error = %e, "cannot resolve the email yet");
                    continue;
                }
            };
            let (kind, detail) = match &resolution {
                Resolution::Resolved {
                    graph_user_id,
                    display_name,
                } => (
                    SyncActionKind::EmailResolved,
                    match display_name {
                        Some(name) => {
                            format!("{email} resolved to the Teams user {name} ({graph_user_id})")
                        }
                        None => format!("{email} resolved to the Teams user {graph_user_id}"),
                    },
                ),
                Resolution::Failed { error } => {
                    warn!(ext = %entry.extension, %error, "extension has no Teams user: reported, not retried until its email changes");
                    (
                        SyncActionKind::EmailNotFound,
                        format!("{email}: {error}; not tried again until the email changes"),
                    )
                }
            };
            shared.lock().act(&entry.extension, kind, detail);
            match store.set_resolution(&entry.extension, &resolution) {
                Ok(()) => changed = true,
                Err(e) => {
                    warn!(ext = %entry.extension, error = %e, "cannot store the email's resolution")
                }
            }
        }
        if changed {
            resolved.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_errors_sort_into_retry_and_block() {
        let http = |status| GraphError::Http {
            status,
            code: String::new(),
            message: String::new(),
            request_id: None,
        };
        assert!(matches!(classify(&http(503)), WriteOutcome::Retry(_)));
        assert!(matches!(classify(&http(429)), WriteOutcome::Retry(_)));
        assert!(matches!(classify(&http(403)), WriteOutcome::Blocked(_)));
        assert!(matches!(classify(&http(404)), WriteOutcome::Blocked(_)));
        assert!(matches!(
            classify(&GraphError::Transport("reset".into())),
            WriteOutcome::Retry(_)
        ));
        assert!(matches!(
            classify(&GraphError::Throttled { retry_after: None }),
            WriteOutcome::Retry(_)
        ));
        let grant = GraphError::Token {
            status: 400,
            error: "invalid_grant".into(),
            aadsts: Some(70008),
            description: String::new(),
        };
        match classify(&grant) {
            WriteOutcome::Blocked(why) => assert!(why.starts_with("needs re-pairing"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
