//! The sync engine: phone-side events become Teams presence (PBX → Teams), and the
//! Teams user's own presence becomes extension DND inside the proxy (Teams → PBX).
//!
//! ```text
//!  proxy driver ──phone events (broadcast)──▶ ┌──────────┐ ──writes──▶ write tasks ──▶ Graph
//!        ▲                                    │ SyncCore │ ◀──outcomes──┘
//!        └──── TeamsBusy (RuntimeControl) ─── │ (sans-IO)│ ◀──presences── poller / notifications
//!                                             └──────────┘ ──desired/confirmed──▶ store
//! ```
//!
//! | file | owns |
//! |---|---|
//! | `rules.rs` | [`SyncRules`]: busy rule, DND mode, call end, timings; [`BusyResponse`] |
//! | `core.rs` | [`SyncCore`], sans-IO: wanted vs held state per extension, one write in flight each, coalescing, backoff, keep-alive, restart recovery, loop-free Teams-busy |
//! | `engine.rs` | [`SyncEngine`]: the tokio shell — links from the store, credentials, write tasks, the poller, persistence, [`SyncHandle`] and what it reads: [`TeamsPresence`] per extension, [`SyncAction`]s, [`SyncMetrics`] (writes, retries, sync lag) |
//! | `notify.rs` | Teams presence by change notifications: subscriptions kept with the domain token, notifications resolved into presences, catch-up polls |
//!
//! SIP never waits on Graph: the driver only publishes events into a bounded broadcast
//! and takes Teams-busy verdicts from a bounded channel; when the engine falls behind it
//! reads the observer's full view again instead of queueing.

mod core;
mod engine;
mod notify;
mod rules;

pub use self::core::{
    Link, Output, PreferredTarget, SessionTarget, SyncCore, TeamsState, Write, WriteOutcome,
    WriteReason, WriteRequest,
};
pub use engine::{
    RECENT_ACTIONS, SyncAction, SyncActionKind, SyncEngine, SyncHandle, SyncOptions, TeamsPresence,
};
pub use notify::NotificationSetup;
pub use rules::{BusyResponse, BusyRule, BusyState, CallEnd, DndMode, SyncRules};

pub use crate::metrics::SyncMetrics;
