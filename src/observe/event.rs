//! What the observer tells the rest of the product: edge-triggered events per
//! extension, and the snapshot of an extension the admin API and portal show.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use super::call::{CallDirection, CallState};
use super::classify::CallClass;

/// An extension number (the user part of the AoR its phones register), shared cheaply
/// between calls, bindings and events.
pub type Extension = Arc<str>;

/// How far the extension's external calls have got, taken over all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallPhase {
    /// At least one external call is early (ringing) and none is connected.
    Ringing,
    /// At least one external call is connected.
    Connected,
}

impl fmt::Display for CallPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ringing => "ringing",
            Self::Connected => "connected",
        })
    }
}

/// A change of an extension's phone-side state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObserveEvent {
    /// The extension has an external call: sent when it gets its first one, and again
    /// each time the phase over all its external calls changes while it has any.
    ExternalCallStarted {
        /// The extension.
        ext: Extension,
        /// Ringing or connected.
        phase: CallPhase,
    },
    /// The last external call of the extension ended.
    ExternalCallEnded {
        /// The extension.
        ext: Extension,
    },
    /// The extension's DND went on or off.
    DndChanged {
        /// The extension.
        ext: Extension,
        /// The new state.
        on: bool,
    },
}

impl ObserveEvent {
    /// The extension the event is about.
    pub fn extension(&self) -> &Extension {
        match self {
            Self::ExternalCallStarted { ext, .. }
            | Self::ExternalCallEnded { ext }
            | Self::DndChanged { ext, .. } => ext,
        }
    }
}

/// `ExternalCallStarted 201 ringing`, `ExternalCallEnded 201`, `DndChanged 201 on`: the
/// form trace files and logs use.
impl fmt::Display for ObserveEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ExternalCallStarted { ext, phase } => {
                write!(f, "ExternalCallStarted {ext} {phase}")
            }
            Self::ExternalCallEnded { ext } => write!(f, "ExternalCallEnded {ext}"),
            Self::DndChanged { ext, on } => {
                write!(f, "DndChanged {ext} {}", if *on { "on" } else { "off" })
            }
        }
    }
}

/// One call of an extension, as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallView {
    /// The Call-ID.
    pub call_id: String,
    /// Placed or received by the extension.
    pub direction: CallDirection,
    /// Star code, internal or external.
    pub class: CallClass,
    /// The other party's number, normalised.
    pub other_party: String,
    /// Trying, early or confirmed.
    pub state: CallState,
}

/// An event as remembered in an extension's recent history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentEvent {
    /// When it happened.
    pub at: Instant,
    /// What happened.
    pub event: ObserveEvent,
    /// The call that caused it, if any.
    pub call_id: Option<Arc<str>>,
}

/// Everything known about one extension's phone side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionView {
    /// The extension.
    pub extension: Extension,
    /// Phones (bindings) registered for it through the proxy.
    pub registered: usize,
    /// Whether it is in the configured directory.
    pub in_directory: bool,
    /// The phase over its external calls (`None`: no external call).
    pub external_phase: Option<CallPhase>,
    /// DND.
    pub dnd: bool,
    /// Its Teams user is busy: calls to it are refused by the proxy.
    pub teams_busy: bool,
    /// Its calls in progress, all classes.
    pub calls: Vec<CallView>,
    /// Its latest events, oldest first.
    pub recent: Vec<RecentEvent>,
}
