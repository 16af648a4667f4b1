//! What `GET /api/status` answers and the portal's status table shows: one
//! [`ExtensionStatus`] per extension, put together from the store (directory, tokens,
//! switch and scope), the proxy's observer (registered phones, calls, DND; through
//! [`RuntimeControl`]) and the sync engine (Teams presence, Teams-busy, last errors).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::observe::{CallClass, CallState, ExtensionView};
use crate::runtime::RuntimeControl;
use crate::store::{Store, StoreError, TokenKind, TokenStatus};
use crate::sync::SyncHandle;

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task reading the store failed.
    #[error("the store task failed: {0}")]
    Task(String),
}

/// A call state as the status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallSummary {
    /// No call.
    Idle,
    /// A call is being set up or ringing (none connected).
    Ringing,
    /// A call is connected.
    Connected,
}

impl CallSummary {
    /// `idle`, `ringing` or `connected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Ringing => "ringing",
            Self::Connected => "connected",
        }
    }
}

impl Pairing {
    /// `paired`, `needs_repairing` or `not_paired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paired => "paired",
            Self::NeedsRepairing => "needs_repairing",
            Self::NotPaired => "not_paired",
        }
    }
}

/// The Teams presence last seen for an extension's user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeamsView {
    /// `availability` (Available, Busy, DoNotDisturb, ...).
    pub availability: String,
    /// `activity` (Available, InACall, Presenting, ...).
    pub activity: String,
}

/// Whether an extension is paired with its user's Teams account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pairing {
    /// A usable token is held.
    Paired,
    /// A token is held but refused (the user must pair again).
    NeedsRepairing,
    /// No token.
    NotPaired,
}

/// One extension in `GET /api/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtensionStatus {
    /// The extension.
    pub extension: String,
    /// Its user's email (the directory's).
    pub email: Option<String>,
    /// The Teams user the email resolved to (display name, else id).
    pub teams_user: Option<String>,
    /// Phones registered for it through the proxy.
    pub registered: usize,
    /// Its calls, summed up.
    pub call: CallSummary,
    /// DND on the phone side.
    pub dnd: bool,
    /// Its Teams presence, once seen.
    pub teams: Option<TeamsView>,
    /// Its Teams user makes it busy: calls refused, lamps busy.
    pub teams_busy: bool,
    /// Paired (a valid user token is held).
    pub paired: bool,
    /// Paired, needs re-pairing, or not paired.
    pub pairing: Pairing,
    /// Why re-pairing is needed.
    pub pairing_reason: Option<String>,
    /// Its phone state is written to Teams (the switch is on, it is in scope, paired).
    pub pbx_to_teams: bool,
    /// The last error about it: a Graph write, or its email not resolving.
    pub last_error: Option<String>,
}

/// Where the status comes from.
#[derive(Debug, Clone)]
pub struct StatusSource {
    /// The store.
    pub store: Store,
    /// The sync engine, when running.
    pub sync: Option<Arc<SyncHandle>>,
    /// The proxy's control channel, when a proxy runs in this process.
    pub control: Option<RuntimeControl>,
}

/// The call summary over an extension's calls (star-code calls left out).
pub fn call_summary(view: &ExtensionView) -> CallSummary {
    let mut summary = CallSummary::Idle;
    for call in view
        .calls
        .iter()
        .filter(|c| !matches!(c.class, CallClass::StarCode(_)))
    {
        match call.state {
            CallState::Confirmed => return CallSummary::Connected,
            CallState::Trying | CallState::Early => summary = CallSummary::Ringing,
            CallState::Terminated => {}
        }
    }
    summary
}

impl StatusSource {
    /// Every extension of the directory and every extension with a phone registered,
    /// sorted.
    pub async fn extensions(&self) -> Result<Vec<ExtensionStatus>, StatusError> {
        let observed: HashMap<String, ExtensionView> = match &self.control {
            Some(control) => control
                .extensions()
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|v| (v.extension.to_string(), v))
                .collect(),
            None => HashMap::new(),
        };
        let store = self.store.clone();
        let (directory, tokens, switch, scope) = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((
                store.list_extensions()?,
                store.list_tokens()?,
                store.pbx_to_teams_enabled()?,
                store.scope()?,
            ))
        })
        .await
        .map_err(|e| StatusError::Task(e.to_string()))??;
        let user_tokens: HashMap<String, TokenStatus> = tokens
            .into_iter()
            .filter(|t| t.key.kind == TokenKind::User)
            .map(|t| (t.key.owner.clone(), t.status))
            .collect();
        let (presences, busy, errors) = match &self.sync {
            Some(sync) => (
                sync.teams_presences(),
                sync.teams_busy(),
                sync.last_errors(),
            ),
            None => (HashMap::new(), Vec::new(), HashMap::new()),
        };
        let mut rows: BTreeMap<String, ExtensionStatus> = BTreeMap::new();
        for entry in directory {
            let (pairing, pairing_reason) = match user_tokens.get(&entry.extension) {
                Some(TokenStatus::Valid) => (Pairing::Paired, None),
                Some(TokenStatus::NeedsRepairing { reason }) => {
                    (Pairing::NeedsRepairing, Some(reason.clone()))
                }
                None => (Pairing::NotPaired, None),
            };
            let paired = pairing == Pairing::Paired;
            let last_error = errors
                .get(&entry.extension)
                .cloned()
                .or(entry.last_error.clone());
            rows.insert(
                entry.extension.clone(),
                ExtensionStatus {
                    teams_user: entry.display_name.clone().or(entry.graph_user_id.clone()),
                    email: entry.email.clone(),
                    registered: 0,
                    call: CallSummary::Idle,
                    dnd: false,
                    teams: None,
                    teams_busy: false,
                    paired,
                    pairing,
                    pairing_reason,
                    pbx_to_teams: switch && paired && scope.includes(&entry.extension),
                    last_error,
                    extension: entry.extension,
                },
            );
        }
        for (ext, view) in &observed {
            let row = rows.entry(ext.clone()).or_insert_with(|| ExtensionStatus {
                extension: ext.clone(),
                email: None,
                teams_user: None,
                registered: 0,
                call: CallSummary::Idle,
                dnd: false,
                teams: None,
                teams_busy: false,
                paired: false,
                pairing: Pairing::NotPaired,
                pairing_reason: None,
                pbx_to_teams: false,
                last_error: None,
            });
            row.registered = view.registered;
            row.call = call_summary(view);
            row.dnd = view.dnd;
        }
        for (ext, row) in &mut rows {
            row.teams = presences.get(ext).map(|p| TeamsView {
                availability: p.availability.clone(),
                activity: p.activity.clone(),
            });
            row.teams_busy = busy.binary_search(ext).is_ok();
        }
        Ok(rows.into_values().collect())
    }
}
