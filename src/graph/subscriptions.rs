//! Presence change notifications (graph.md §3): the subscription calls of [`GraphClient`],
//! the sans-IO [`PresenceSubscriptions`] manager that decides what to create, renew and
//! delete, the [`SubscriptionDriver`] that applies its decisions with the client, and the
//! webhook ([`NotificationReceiver`], [`notification_routes`]) that answers the validation
//! handshake and turns notification batches into [`Notification`]s on a bounded channel.
//!
//! ```text
//!  wanted user ids ─▶ PresenceSubscriptions ─(actions)─▶ SubscriptionDriver ─▶ POST/PATCH/DELETE /subscriptions
//!        clock ─────▶  (sans-IO: slots, renew,  ◀─(results)─┘
//!                       recreate, catch-up)  ─▶ SubscriptionEvent::CatchUpPoll
//!  Graph ─POST notificationUrl─▶ notification_routes ─(clientState checked)─▶ mpsc<Notification>
//! ```
//!
//! Rules followed (graph.md §3.1, §3.2, §8.8): presence subscriptions need a delegated
//! token with Presence.Read.All (an app-only [`Tokens`] is refused before sending); at
//! most 650 ids per subscription; at most 60 minutes of lifetime, renewed by PATCH before
//! expiry; one subscription per app per delegated user, so every credential ("slot") holds
//! at most one subscription and more than 650 users need more credentials; `clientState`
//! is required and compared in constant time on every notification.
//!
//! Presence has no missed-notification signal (lifecycle `missed` is not sent for
//! presence, §3.3): whenever a subscription is created, recreated or lost, the manager
//! emits [`SubscriptionEvent::CatchUpPoll`] for its users, and ids no live subscription
//! covers ([`PresenceSubscriptions::uncovered`]) must be polled by the caller.
//!
//! Basic notifications carry only the user id (§3.1); availability and activity come only
//! in rich (encrypted) notifications, which this module does not request. A
//! [`PresenceChange`] therefore usually has `presence: None`, and
//! [`GraphClient::resolve_presence_changes`] reads the current presence of a batch of
//! changes in one request per 650 ids.
//!
//! The clientState is a [`Secret`]: never logged, never in an error.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::client::{Body, Target, decode};
use super::error::SubscriptionRefusal;
use super::{Activity, Availability, GraphClient, GraphError, Presence, Tokens, random_url_safe};
use crate::store::Secret;

/// Most user ids in one presence subscription (graph.md §3.1).
pub const MAX_IDS_PER_SUBSCRIPTION: usize = 650;
/// Longest lifetime of a presence subscription (graph.md §3.1).
pub const MAX_SUBSCRIPTION_LIFETIME: Duration = Duration::from_secs(3600);
/// Where the web layer mounts [`notification_routes`] (the notificationUrl's path).
pub const NOTIFICATION_PATH: &str = "/graph/notifications";
/// Longest clientState Graph accepts (graph.md §3.2).
const MAX_CLIENT_STATE: usize = 128;
/// Longest validation token the receiver echoes (Graph's are about 100 characters).
const MAX_VALIDATION_TOKEN: usize = 4096;

// ---------------------------------------------------------------------------------------
// the Graph calls

/// A presence subscription as Graph returned it (the clientState is not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Graph's subscription id.
    pub id: String,
    /// The resource, e.g. `/communications/presences?$filter=id in ('…')`.
    pub resource: String,
    /// When it lapses, on Graph's clock.
    pub expires_at: SystemTime,
    /// Where notifications go.
    pub notification_url: String,
}

/// What [`GraphClient::create_presence_subscription`] asks for.
#[derive(Debug, Clone, Copy)]
pub struct SubscriptionRequest<'a> {
    /// The users (object ids), 1 to 650.
    pub user_ids: &'a [String],
    /// The webhook (HTTPS at Graph; the emulator accepts `http://`).
    pub notification_url: &'a str,
    /// Where lifecycle notifications go (§3.3), optional; validated too.
    pub lifecycle_notification_url: Option<&'a str>,
    /// Echoed in every notification; 1 to 128 characters ([`new_client_state`]).
    pub client_state: &'a Secret<String>,
    /// At most 60 minutes after now on Graph's clock, else Graph answers 400.
    pub expires_at: SystemTime,
}

/// A random clientState (32 bytes, base64url: 43 characters).
pub fn new_client_state() -> Result<Secret<String>, GraphError> {
    random_url_safe(32).map(Secret::new)
}

/// `/communications/presences?$filter=id in ('a','b')` (graph.md §3.1), quotes doubled.
pub fn presence_resource(user_ids: &[String]) -> String {
    let list: Vec<String> = user_ids
        .iter()
        .map(|id| format!("'{}'", id.replace('\'', "''")))
        .collect();
    format!(
        "/communications/presences?$filter=id in ({})",
        list.join(",")
    )
}

#[derive(Deserialize)]
struct WireSubscription {
    id: String,
    #[serde(default)]
    resource: String,
    #[serde(rename = "expirationDateTime")]
    expiration: String,
    #[serde(default, rename = "notificationUrl")]
    notification_url: Option<String>,
}

impl WireSubscription {
    fn into_subscription(self) -> Result<Subscription, GraphError> {
        let expires_at = parse_datetime(&self.expiration)
            .ok_or_else(|| GraphError::Decode("subscription: bad expirationDateTime".into()))?;
        Ok(Subscription {
            id: self.id,
            resource: self.resource,
            expires_at,
            notification_url: self.notification_url.unwrap_or_default(),
        })
    }
}

/// Graph's refusals of subscription requests as [`GraphError::Subscription`].
fn classify(error: GraphError) -> GraphError {
    let kind = match &error {
        GraphError::Http { status: 403, .. } => SubscriptionRefusal::Forbidden,
        GraphError::Http { status: 409, .. } => SubscriptionRefusal::AlreadyExists,
        GraphError::Http {
            status: 400, code, ..
        } if code.eq_ignore_ascii_case("ValidationError") => SubscriptionRefusal::ValidationFailed,
        _ => return error,
    };
    match error {
        GraphError::Http {
            status, message, ..
        } => GraphError::Subscription {
            kind,
            status: Some(status),
            message,
        },
        other => other,
    }
}

fn delegated_only(tokens: &Tokens) -> Result<(), GraphError> {
    if tokens.is_app_only() {
        return Err(GraphError::Subscription {
            kind: SubscriptionRefusal::AppOnlyToken,
            status: None,
            message: String::new(),
        });
    }
    Ok(())
}

impl GraphClient {
    /// `POST /subscriptions` for the presence of `request.user_ids` (graph.md §3.1,
    /// §3.2), changeType `updated`. Graph validates the notification URL before it
    /// answers (§3.2), so the receiver must be up. Refusals: an app-only credential,
    /// 403, 409 (one per app per user) and a failed validation are
    /// [`GraphError::Subscription`].
    pub async fn create_presence_subscription(
        &self,
        tokens: &Tokens,
        request: &SubscriptionRequest<'_>,
    ) -> Result<Subscription, GraphError> {
        delegated_only(tokens)?;
        let ids = request.user_ids;
        if ids.is_empty() || ids.len() > MAX_IDS_PER_SUBSCRIPTION {
            return Err(GraphError::InvalidRequest(format!(
                "a presence subscription takes 1 to {MAX_IDS_PER_SUBSCRIPTION} user ids, not {}",
                ids.len()
            )));
        }
        let state_len = request.client_state.expose().chars().count();
        if state_len == 0 || state_len > MAX_CLIENT_STATE {
            return Err(GraphError::InvalidRequest(format!(
                "clientState must be 1 to {MAX_CLIENT_STATE} characters"
            )));
        }
        let mut body = json!({
            "changeType": "updated",
            "notificationUrl": request.notification_url,
            "resource": presence_resource(ids),
            "expirationDateTime": format_datetime(request.expires_at),
            "clientState": request.client_state.expose(),
        });
        if let Some(url) = request.lifecycle_notification_url {
            body["lifecycleNotificationUrl"] = Value::String(url.to_owned());
        }
        let url = self.url(&["subscriptions"]);
        let bytes = self
            .execute(Target::Graph(tokens), Method::POST, url, Body::Json(&body))
            .await
            .map_err(classify)?;
        decode::<WireSubscription>(&bytes)?.into_subscription()
    }

    /// `PATCH /subscriptions/{id}` with a new expirationDateTime (graph.md §3.2; at most
    /// 60 minutes ahead). A subscription Graph no longer has is a 404
    /// ([`GraphError::is_not_found`]): create it again.
    pub async fn renew_subscription(
        &self,
        tokens: &Tokens,
        subscription_id: &str,
        expires_at: SystemTime,
    ) -> Result<Subscription, GraphError> {
        delegated_only(tokens)?;
        let url = self.url(&["subscriptions", subscription_id]);
        let body = json!({ "expirationDateTime": format_datetime(expires_at) });
        let bytes = self
            .execute(Target::Graph(tokens), Method::PATCH, url, Body::Json(&body))
            .await
            .map_err(classify)?;
        decode::<WireSubscription>(&bytes)?.into_subscription()
    }

    /// `DELETE /subscriptions/{id}` (graph.md §3.2). A 404 means it is gone already.
    pub async fn delete_subscription(
        &self,
        tokens: &Tokens,
        subscription_id: &str,
    ) -> Result<(), GraphError> {
        delegated_only(tokens)?;
        let url = self.url(&["subscriptions", subscription_id]);
        self.execute(Target::Graph(tokens), Method::DELETE, url, Body::None)
            .await
            .map_err(classify)
            .map(|_| ())
    }

    /// `GET /subscriptions`: the live subscriptions this app holds for the credential's
    /// user (e.g. one left from before a restart).
    pub async fn list_subscriptions(
        &self,
        tokens: &Tokens,
    ) -> Result<Vec<Subscription>, GraphError> {
        #[derive(Deserialize)]
        struct List {
            value: Vec<WireSubscription>,
        }
        delegated_only(tokens)?;
        let url = self.url(&["subscriptions"]);
        let bytes = self
            .execute(Target::Graph(tokens), Method::GET, url, Body::None)
            .await
            .map_err(classify)?;
        decode::<List>(&bytes)?
            .value
            .into_iter()
            .map(WireSubscription::into_subscription)
            .collect()
    }

    /// Deletes every presence subscription the credential's user holds for this app
    /// (after a 409 on create: one per app per user, graph.md §8.8). Returns how many.
    pub async fn purge_presence_subscriptions(&self, tokens: &Tokens) -> Result<usize, GraphError> {
        let mut deleted = 0;
        for sub in self.list_subscriptions(tokens).await? {
            let resource = sub.resource.trim_start_matches('/').to_ascii_lowercase();
            if !resource.starts_with("communications/presences") {
                continue;
            }
            match self.delete_subscription(tokens, &sub.id).await {
                Ok(()) => deleted += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// The presence of every user in `changes`: what a (rich) notification carried, the
    /// rest read with getPresencesByUserId (≤ 650 ids per request, graph.md §2.2). Ids
    /// are deduplicated; order is not kept.
    pub async fn resolve_presence_changes(
        &self,
        tokens: &Tokens,
        changes: &[PresenceChange],
    ) -> Result<Vec<Presence>, GraphError> {
        let mut out = Vec::new();
        let mut missing = BTreeSet::new();
        let mut known = BTreeSet::new();
        for change in changes {
            match &change.presence {
                Some(p) if known.insert(change.user_id.clone()) => out.push(p.clone()),
                Some(_) => {}
                None => {
                    missing.insert(change.user_id.clone());
                }
            }
        }
        let missing: Vec<String> = missing.difference(&known).cloned().collect();
        if !missing.is_empty() {
            out.extend(self.presences_by_user_id(tokens, &missing).await?);
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// the sans-IO manager

/// How [`PresenceSubscriptions`] keeps subscriptions alive.
#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    /// Lifetime asked for on create and renew (default 58 min; capped at 60, graph.md
    /// §3.1: a little under, so a clock slightly ahead of Graph's does not get a 400).
    pub lifetime: Duration,
    /// Renew this long before expiry (default 5 min).
    pub renew_before: Duration,
    /// Wait after a first failed request (default 15 s); doubles per failure.
    pub retry_delay: Duration,
    /// Longest wait between attempts (default 5 min).
    pub max_retry_delay: Duration,
    /// Ids per subscription (default and at most 650).
    pub max_ids: usize,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(58 * 60),
            renew_before: Duration::from_secs(5 * 60),
            retry_delay: Duration::from_secs(15),
            max_retry_delay: Duration::from_secs(300),
            max_ids: MAX_IDS_PER_SUBSCRIPTION,
        }
    }
}

/// What the manager wants done. `slot` is the index of the credential (one subscription
/// per app per delegated user, graph.md §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionAction {
    /// Create a subscription for `user_ids`; report with [`PresenceSubscriptions::on_created`].
    Create {
        /// The credential.
        slot: usize,
        /// The users, sorted.
        user_ids: Vec<String>,
        /// The expirationDateTime to ask for.
        expires_at: SystemTime,
    },
    /// PATCH the expiry; report with [`PresenceSubscriptions::on_renewed`].
    Renew {
        /// The credential.
        slot: usize,
        /// Graph's id.
        subscription_id: String,
        /// The new expirationDateTime.
        expires_at: SystemTime,
    },
    /// Delete it; report with [`PresenceSubscriptions::on_deleted`].
    Delete {
        /// The credential.
        slot: usize,
        /// Graph's id.
        subscription_id: String,
    },
    /// Create answered 409: delete the credential's leftover presence subscriptions
    /// ([`GraphClient::purge_presence_subscriptions`]); report with
    /// [`PresenceSubscriptions::on_purged`].
    Purge {
        /// The credential.
        slot: usize,
    },
}

/// Why a catch-up poll is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpReason {
    /// A subscription was (re)created: changes before it were not notified.
    Created,
    /// A subscription expired or Graph no longer has it: changes are not notified until it
    /// is back (poll these users until the `Created` event).
    Lost,
}

/// What the manager reports to its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionEvent {
    /// Poll these users now (getPresencesByUserId): presence has no missed-notification
    /// signal (graph.md §3.3).
    CatchUpPoll {
        /// The users, sorted.
        user_ids: Vec<String>,
        /// Why.
        reason: CatchUpReason,
    },
    /// A request failed; the slot tries again at `retry_at`.
    Failed {
        /// The credential.
        slot: usize,
        /// `create`, `renew`, `delete` or `purge`.
        action: &'static str,
        /// The error (no token or clientState in it).
        error: String,
        /// The credential's refresh token was refused: it needs re-pairing.
        needs_repairing: bool,
        /// When the slot tries again.
        retry_at: SystemTime,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Active {
    id: String,
    user_ids: BTreeSet<String>,
    expires_at: SystemTime,
    /// Renew at the next poll (a lifecycle `reauthorizationRequired`).
    renew_now: bool,
    /// PATCH was refused for a reason other than 404: delete and create instead
    /// (graph.md §9: renewal by PATCH is unconfirmed for presence).
    replace: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Create(BTreeSet<String>),
    Renew(Active),
    Delete(Active),
    Purge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SlotState {
    Idle,
    Active(Active),
    Pending(Pending),
}

#[derive(Debug, Clone)]
struct Slot {
    /// The ids this slot should cover.
    target: BTreeSet<String>,
    state: SlotState,
    failures: u32,
    retry_at: Option<SystemTime>,
    /// Create answered 409: purge first.
    purge: bool,
    /// A purge was done since the last successful create (a second 409 is an error).
    purged: bool,
}

impl Slot {
    fn new() -> Self {
        Self {
            target: BTreeSet::new(),
            state: SlotState::Idle,
            failures: 0,
            retry_at: None,
            purge: false,
            purged: false,
        }
    }

    fn pending(&self) -> bool {
        matches!(self.state, SlotState::Pending(_))
    }
}

/// Decides, without I/O, which presence subscriptions to create, renew and delete for a
/// wanted set of user ids, given the clock. Every credential is a slot holding at most
/// one subscription of at most [`SubscriptionConfig::max_ids`] ids; ids keep their slot
/// while wanted, so a change to the set recreates only the subscriptions it touches.
///
/// Use: [`set_wanted`](Self::set_wanted), then [`poll`](Self::poll) at
/// [`next_deadline`](Self::next_deadline) (and after every result) for actions; report
/// each action's result with the matching `on_*`; take
/// [`events`](Self::take_events) (catch-up polls, failures). [`SubscriptionDriver`] does
/// all of that with a [`GraphClient`].
#[derive(Debug, Clone)]
pub struct PresenceSubscriptions {
    config: SubscriptionConfig,
    wanted: BTreeSet<String>,
    slots: Vec<Slot>,
    uncovered_by_capacity: BTreeSet<String>,
    events: Vec<SubscriptionEvent>,
}

impl PresenceSubscriptions {
    /// A manager for `slots` credentials. `config.lifetime` is capped at 60 minutes and
    /// `config.max_ids` at 650.
    pub fn new(mut config: SubscriptionConfig, slots: usize) -> Self {
        config.lifetime = config.lifetime.min(MAX_SUBSCRIPTION_LIFETIME);
        config.max_ids = config.max_ids.clamp(1, MAX_IDS_PER_SUBSCRIPTION);
        config.renew_before = config.renew_before.min(config.lifetime / 2);
        Self {
            config,
            wanted: BTreeSet::new(),
            slots: (0..slots).map(|_| Slot::new()).collect(),
            uncovered_by_capacity: BTreeSet::new(),
            events: Vec::new(),
        }
    }

    /// The configuration in effect.
    pub fn config(&self) -> &SubscriptionConfig {
        &self.config
    }

    /// How many credentials (slots).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Replaces the set of users whose presence changes are wanted. Ids already in a slot
    /// stay there; new ones fill slots in order; ids beyond the slots' capacity are
    /// [`uncovered`](Self::uncovered).
    pub fn set_wanted<I, S>(&mut self, user_ids: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.wanted = user_ids.into_iter().map(Into::into).collect();
        let mut assigned = BTreeSet::new();
        for slot in &mut self.slots {
            slot.target.retain(|id| self.wanted.contains(id));
            assigned.extend(slot.target.iter().cloned());
        }
        let mut rest = self.wanted.difference(&assigned).cloned();
        let max = self.config.max_ids;
        for slot in &mut self.slots {
            while slot.target.len() < max {
                match rest.next() {
                    Some(id) => {
                        slot.target.insert(id);
                    }
                    None => break,
                }
            }
        }
        self.uncovered_by_capacity = rest.collect();
        if !self.uncovered_by_capacity.is_empty() {
            tracing::warn!(
                uncovered = self.uncovered_by_capacity.len(),
                slots = self.slots.len(),
                "more users than presence subscriptions can cover (650 per delegated credential); the rest must be polled"
            );
        }
    }

    /// The wanted users.
    pub fn wanted(&self) -> &BTreeSet<String> {
        &self.wanted
    }

    /// Wanted users no live subscription covers right now (over capacity, not yet
    /// created, failing, or being replaced): poll them.
    pub fn uncovered(&self) -> BTreeSet<String> {
        let mut covered = BTreeSet::new();
        for slot in &self.slots {
            let active = match &slot.state {
                SlotState::Active(a) | SlotState::Pending(Pending::Renew(a)) => a,
                _ => continue,
            };
            covered.extend(active.user_ids.iter().cloned());
        }
        self.wanted.difference(&covered).cloned().collect()
    }

    /// The live subscription ids (active or being renewed).
    pub fn subscription_ids(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter_map(|s| match &s.state {
                SlotState::Active(a) | SlotState::Pending(Pending::Renew(a)) => Some(a.id.clone()),
                _ => None,
            })
            .collect()
    }

    /// A lifecycle `reauthorizationRequired` (graph.md §3.3) for `subscription_id`: renew
    /// at the next poll (a PATCH both renews and reauthorizes). False when unknown.
    pub fn reauthorize(&mut self, subscription_id: &str) -> bool {
        for slot in &mut self.slots {
            if let SlotState::Active(a) = &mut slot.state {
                if a.id == subscription_id {
                    a.renew_now = true;
                    slot.retry_at = None;
                    return true;
                }
            }
        }
        false
    }

    /// When [`poll`](Self::poll) next has something to do; `UNIX_EPOCH` means now,
    /// `None` nothing scheduled (everything idle or a request in flight).
    pub fn next_deadline(&self) -> Option<SystemTime> {
        let mut next: Option<SystemTime> = None;
        let mut at = |t: SystemTime| next = Some(next.map_or(t, |n| n.min(t)));
        for slot in &self.slots {
            let due = match &slot.state {
                SlotState::Pending(_) => continue,
                SlotState::Idle if slot.target.is_empty() && !slot.purge => continue,
                SlotState::Idle => UNIX_EPOCH,
                SlotState::Active(a) => {
                    if a.renew_now || a.replace || a.user_ids != slot.target {
                        UNIX_EPOCH
                    } else {
                        a.expires_at
                            .checked_sub(self.config.renew_before)
                            .unwrap_or(UNIX_EPOCH)
                    }
                }
            };
            let due = match (slot.retry_at, &slot.state) {
                // an expiry during a backoff still counts
                (Some(r), SlotState::Active(a)) => due.max(r).min(a.expires_at),
                (Some(r), _) => due.max(r),
                (None, _) => due,
            };
            at(due);
        }
        next
    }

    /// The actions due at `now`. Each one marks its slot busy until its result is
    /// reported.
    pub fn poll(&mut self, now: SystemTime) -> Vec<SubscriptionAction> {
        let mut actions = Vec::new();
        let lifetime = self.config.lifetime;
        let renew_before = self.config.renew_before;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.pending() {
                continue;
            }
            // expired without a renewal: lost
            if let SlotState::Active(a) = &slot.state {
                if now >= a.expires_at {
                    let lost = a.user_ids.clone();
                    tracing::info!(
                        slot = index,
                        subscription = %a.id,
                        "presence subscription expired before renewal"
                    );
                    slot.state = SlotState::Idle;
                    push_catch_up(&mut self.events, &self.wanted, &lost, CatchUpReason::Lost);
                }
            }
            if slot.retry_at.is_some_and(|t| now < t) {
                continue;
            }
            slot.retry_at = None;
            let action = match std::mem::replace(&mut slot.state, SlotState::Idle) {
                SlotState::Idle if slot.purge => {
                    slot.purge = false;
                    slot.state = SlotState::Pending(Pending::Purge);
                    Some(SubscriptionAction::Purge { slot: index })
                }
                SlotState::Idle if slot.target.is_empty() => None,
                SlotState::Idle => {
                    let ids = slot.target.clone();
                    let user_ids = ids.iter().cloned().collect();
                    slot.state = SlotState::Pending(Pending::Create(ids));
                    Some(SubscriptionAction::Create {
                        slot: index,
                        user_ids,
                        expires_at: now + lifetime,
                    })
                }
                SlotState::Active(a) => {
                    if slot.target.is_empty() || a.replace || a.user_ids != slot.target {
                        let subscription_id = a.id.clone();
                        slot.state = SlotState::Pending(Pending::Delete(a));
                        Some(SubscriptionAction::Delete {
                            slot: index,
                            subscription_id,
                        })
                    } else if a.renew_now || now + renew_before >= a.expires_at {
                        let subscription_id = a.id.clone();
                        slot.state = SlotState::Pending(Pending::Renew(a));
                        Some(SubscriptionAction::Renew {
                            slot: index,
                            subscription_id,
                            expires_at: now + lifetime,
                        })
                    } else {
                        slot.state = SlotState::Active(a);
                        None
                    }
                }
                pending @ SlotState::Pending(_) => {
                    slot.state = pending;
                    None
                }
            };
            actions.extend(action);
        }
        actions
    }

    fn slot_mut(&mut self, slot: usize) -> Option<&mut Slot> {
        let found = self.slots.get_mut(slot);
        if found.is_none() {
            tracing::warn!(slot, "result for an unknown subscription slot ignored");
        }
        found
    }

    fn fail(&mut self, index: usize, action: &'static str, error: &GraphError, now: SystemTime) {
        let config = &self.config;
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        slot.failures = slot.failures.saturating_add(1);
        let exp = config
            .retry_delay
            .saturating_mul(1u32 << slot.failures.saturating_sub(1).min(16));
        let retry_at = now + exp.min(config.max_retry_delay);
        slot.retry_at = Some(retry_at);
        tracing::warn!(slot = index, action, error = %error, "presence subscription request failed");
        self.events.push(SubscriptionEvent::Failed {
            slot: index,
            action,
            error: error.to_string(),
            needs_repairing: error.needs_repairing(),
            retry_at,
        });
    }

    /// The result of [`SubscriptionAction::Create`].
    pub fn on_created(
        &mut self,
        slot: usize,
        result: Result<Subscription, GraphError>,
        now: SystemTime,
    ) {
        let wanted = self.wanted.clone();
        let Some(s) = self.slot_mut(slot) else {
            return;
        };
        let ids = match std::mem::replace(&mut s.state, SlotState::Idle) {
            SlotState::Pending(Pending::Create(ids)) => ids,
            other => {
                s.state = other;
                tracing::warn!(slot, "create result without a pending create ignored");
                return;
            }
        };
        match result {
            Ok(sub) => {
                tracing::info!(slot, subscription = %sub.id, users = ids.len(), "presence subscription created");
                s.failures = 0;
                s.purged = false;
                s.state = SlotState::Active(Active {
                    id: sub.id,
                    user_ids: ids.clone(),
                    expires_at: sub.expires_at,
                    renew_now: false,
                    replace: false,
                });
                push_catch_up(&mut self.events, &wanted, &ids, CatchUpReason::Created);
            }
            Err(GraphError::Subscription {
                kind: SubscriptionRefusal::AlreadyExists,
                ..
            }) if !s.purged => {
                tracing::info!(
                    slot,
                    "a presence subscription of this app and user exists already; purging it"
                );
                s.purge = true;
            }
            Err(e) => self.fail(slot, "create", &e, now),
        }
    }

    /// The result of [`SubscriptionAction::Renew`].
    pub fn on_renewed(
        &mut self,
        slot: usize,
        result: Result<Subscription, GraphError>,
        now: SystemTime,
    ) {
        let wanted = self.wanted.clone();
        let Some(s) = self.slot_mut(slot) else {
            return;
        };
        let mut active = match std::mem::replace(&mut s.state, SlotState::Idle) {
            SlotState::Pending(Pending::Renew(a)) => a,
            other => {
                s.state = other;
                tracing::warn!(slot, "renew result without a pending renew ignored");
                return;
            }
        };
        match result {
            Ok(sub) => {
                tracing::debug!(slot, subscription = %active.id, "presence subscription renewed");
                s.failures = 0;
                active.expires_at = sub.expires_at;
                active.renew_now = false;
                s.state = SlotState::Active(active);
            }
            Err(e) if e.is_not_found() => {
                tracing::info!(slot, subscription = %active.id, "presence subscription gone at Graph; recreating");
                s.failures = 0;
                push_catch_up(
                    &mut self.events,
                    &wanted,
                    &active.user_ids,
                    CatchUpReason::Lost,
                );
            }
            Err(e) if transient(&e) => {
                s.state = SlotState::Active(active);
                self.fail(slot, "renew", &e, now);
            }
            Err(
                e @ GraphError::Http {
                    status: 400 | 405, ..
                },
            ) => {
                // PATCH refused (graph.md §9): fall back to delete and create
                tracing::info!(slot, error = %e, "renewal refused; replacing the subscription");
                active.replace = true;
                s.state = SlotState::Active(active);
            }
            Err(e) => {
                s.state = SlotState::Active(active);
                self.fail(slot, "renew", &e, now);
            }
        }
    }

    /// The result of [`SubscriptionAction::Delete`]; a 404 counts as deleted.
    pub fn on_deleted(&mut self, slot: usize, result: Result<(), GraphError>, now: SystemTime) {
        let Some(s) = self.slot_mut(slot) else {
            return;
        };
        let active = match std::mem::replace(&mut s.state, SlotState::Idle) {
            SlotState::Pending(Pending::Delete(a)) => a,
            other => {
                s.state = other;
                tracing::warn!(slot, "delete result without a pending delete ignored");
                return;
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(slot, subscription = %active.id, "presence subscription deleted");
                s.failures = 0;
            }
            Err(e) if e.is_not_found() => s.failures = 0,
            // left Idle: a create meeting the leftover gets 409 and purges it
            Err(e) => self.fail(slot, "delete", &e, now),
        }
    }

    /// The result of [`SubscriptionAction::Purge`].
    pub fn on_purged(&mut self, slot: usize, result: Result<usize, GraphError>, now: SystemTime) {
        let Some(s) = self.slot_mut(slot) else {
            return;
        };
        if s.state != SlotState::Pending(Pending::Purge) {
            tracing::warn!(slot, "purge result without a pending purge ignored");
            return;
        }
        s.state = SlotState::Idle;
        match result {
            Ok(n) => {
                tracing::info!(slot, deleted = n, "leftover presence subscriptions purged");
                s.purged = true;
            }
            Err(e) => self.fail(slot, "purge", &e, now),
        }
    }

    /// The events since the last call.
    pub fn take_events(&mut self) -> Vec<SubscriptionEvent> {
        std::mem::take(&mut self.events)
    }
}

fn push_catch_up(
    events: &mut Vec<SubscriptionEvent>,
    wanted: &BTreeSet<String>,
    ids: &BTreeSet<String>,
    reason: CatchUpReason,
) {
    let user_ids: Vec<String> = ids.intersection(wanted).cloned().collect();
    if !user_ids.is_empty() {
        events.push(SubscriptionEvent::CatchUpPoll { user_ids, reason });
    }
}

/// Worth trying again unchanged later: throttling, 5xx, transport.
fn transient(error: &GraphError) -> bool {
    match error {
        GraphError::Throttled { .. } | GraphError::Transport(_) => true,
        GraphError::Http { status, .. } => *status >= 500,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// the async driver

/// A command for [`SubscriptionDriver::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverCommand {
    /// Replace the wanted users ([`PresenceSubscriptions::set_wanted`]).
    SetWanted(Vec<String>),
    /// A lifecycle `reauthorizationRequired` for this subscription id.
    Reauthorize(String),
    /// Delete every subscription and stop.
    Shutdown,
}

/// Applies a [`PresenceSubscriptions`]' decisions with a [`GraphClient`]: one delegated
/// credential (Presence.Read.All) per slot, one notification URL and clientState for all.
/// Requests go one at a time through the client's request loop (budget, retries, 401 →
/// refresh).
#[derive(Debug)]
pub struct SubscriptionDriver {
    client: GraphClient,
    credentials: Vec<Arc<Tokens>>,
    manager: PresenceSubscriptions,
    notification_url: String,
    lifecycle_notification_url: Option<String>,
    client_state: Secret<String>,
}

impl SubscriptionDriver {
    /// A driver with one slot per credential. `notification_url` is where
    /// [`notification_routes`] is reachable from Graph; `client_state` must be the
    /// receiver's.
    pub fn new(
        client: GraphClient,
        credentials: Vec<Arc<Tokens>>,
        notification_url: impl Into<String>,
        client_state: Secret<String>,
        config: SubscriptionConfig,
    ) -> Self {
        let manager = PresenceSubscriptions::new(config, credentials.len());
        Self {
            client,
            credentials,
            manager,
            notification_url: notification_url.into(),
            lifecycle_notification_url: None,
            client_state,
        }
    }

    /// Also asks for lifecycle notifications (graph.md §3.3) at `url` (often the same as
    /// the notification URL; Graph validates it too).
    pub fn with_lifecycle_url(mut self, url: impl Into<String>) -> Self {
        self.lifecycle_notification_url = Some(url.into());
        self
    }

    /// The manager (what is covered, what is due).
    pub fn manager(&self) -> &PresenceSubscriptions {
        &self.manager
    }

    /// Replaces the wanted users; applied at the next [`step`](Self::step).
    pub fn set_wanted<I, S>(&mut self, user_ids: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.manager.set_wanted(user_ids);
    }

    /// See [`PresenceSubscriptions::reauthorize`].
    pub fn reauthorize(&mut self, subscription_id: &str) -> bool {
        self.manager.reauthorize(subscription_id)
    }

    /// See [`PresenceSubscriptions::next_deadline`].
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.manager.next_deadline()
    }

    /// Does everything due at `now` (Graph's clock as the caller knows it), including what
    /// becomes due through the results (delete then create, purge then create), and
    /// returns the events.
    pub async fn step(&mut self, now: SystemTime) -> Vec<SubscriptionEvent> {
        let rounds = 4 * self.credentials.len() + 4;
        for _ in 0..rounds {
            let actions = self.manager.poll(now);
            if actions.is_empty() {
                break;
            }
            for action in actions {
                self.apply(action, now).await;
            }
        }
        self.manager.take_events()
    }

    async fn apply(&mut self, action: SubscriptionAction, now: SystemTime) {
        let slot = match &action {
            SubscriptionAction::Create { slot, .. }
            | SubscriptionAction::Renew { slot, .. }
            | SubscriptionAction::Delete { slot, .. }
            | SubscriptionAction::Purge { slot } => *slot,
        };
        let Some(tokens) = self.credentials.get(slot).cloned() else {
            return;
        };
        match action {
            SubscriptionAction::Create {
                user_ids,
                expires_at,
                ..
            } => {
                let request = SubscriptionRequest {
                    user_ids: &user_ids,
                    notification_url: &self.notification_url,
                    lifecycle_notification_url: self.lifecycle_notification_url.as_deref(),
                    client_state: &self.client_state,
                    expires_at,
                };
                let result = self
                    .client
                    .create_presence_subscription(&tokens, &request)
                    .await;
                self.manager.on_created(slot, result, now);
            }
            SubscriptionAction::Renew {
                subscription_id,
                expires_at,
                ..
            } => {
                let result = self
                    .client
                    .renew_subscription(&tokens, &subscription_id, expires_at)
                    .await;
                self.manager.on_renewed(slot, result, now);
            }
            SubscriptionAction::Delete {
                subscription_id, ..
            } => {
                let result = self
                    .client
                    .delete_subscription(&tokens, &subscription_id)
                    .await;
                self.manager.on_deleted(slot, result, now);
            }
            SubscriptionAction::Purge { .. } => {
                let result = self.client.purge_presence_subscriptions(&tokens).await;
                self.manager.on_purged(slot, result, now);
            }
        }
    }

    /// Deletes every subscription (best effort) and returns the last events.
    pub async fn shutdown(&mut self, now: SystemTime) -> Vec<SubscriptionEvent> {
        self.manager.set_wanted(Vec::<String>::new());
        self.step(now).await
    }

    /// Runs on the system clock until [`DriverCommand::Shutdown`] or the command sender is
    /// dropped (both delete the subscriptions), sending every event to `events`. Wakes at
    /// the manager's next deadline, at most every 60 s.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<DriverCommand>,
        events: mpsc::Sender<SubscriptionEvent>,
    ) {
        const MAX_NAP: Duration = Duration::from_secs(60);
        loop {
            for event in self.step(SystemTime::now()).await {
                if events.send(event).await.is_err() {
                    tracing::debug!("subscription events receiver gone; stopping");
                    self.shutdown(SystemTime::now()).await;
                    return;
                }
            }
            let nap = self
                .next_deadline()
                .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
                .unwrap_or(MAX_NAP)
                .min(MAX_NAP);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(DriverCommand::SetWanted(ids)) => self.set_wanted(ids),
                    Some(DriverCommand::Reauthorize(id)) => {
                        self.reauthorize(&id);
                    }
                    Some(DriverCommand::Shutdown) | None => {
                        for event in self.shutdown(SystemTime::now()).await {
                            let _ = events.send(event).await;
                        }
                        return;
                    }
                },
                () = tokio::time::sleep(nap) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// the webhook

/// One user's presence changed (graph.md §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// The subscription that notified it.
    pub subscription_id: String,
    /// The user's object id.
    pub user_id: String,
    /// Availability and activity when the notification carried them (a rich
    /// notification's decrypted resource data). `None` for basic notifications, which
    /// carry only the id: read the presence
    /// ([`GraphClient::resolve_presence_changes`]).
    pub presence: Option<Presence>,
}

/// What the receiver puts on its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A presence change.
    Presence(PresenceChange),
    /// A lifecycle notification (graph.md §3.3), e.g. `reauthorizationRequired`: answer it
    /// with [`DriverCommand::Reauthorize`].
    Lifecycle {
        /// The subscription.
        subscription_id: String,
        /// `reauthorizationRequired`, ...
        event: String,
    },
    /// The channel was full and changes were dropped ([`NotificationReceiver::dropped`]):
    /// poll every wanted user. Sent as soon as there is room again.
    Overflow,
}

/// The webhook's state: the expected clientState (as its SHA-256, compared in constant
/// time), the bounded channel, counters.
///
/// Full channel policy: changes are offered with `try_send`; one that does not fit is
/// dropped and counted ([`dropped`](Self::dropped)), the oldest queued ones stay, and a
/// [`Notification::Overflow`] goes out as soon as there is room, so the consumer knows to
/// catch up by polling. Graph is never kept waiting (it wants an answer within 3 s,
/// graph.md §3.2).
#[derive(Debug)]
pub struct NotificationReceiver {
    expected: [u8; 32],
    tx: mpsc::Sender<Notification>,
    overflowed: AtomicBool,
    received: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
}

impl NotificationReceiver {
    /// A receiver expecting `client_state`, with a channel of `capacity` (at least 1).
    pub fn new(
        client_state: &Secret<String>,
        capacity: usize,
    ) -> (Arc<Self>, mpsc::Receiver<Notification>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let receiver = Arc::new(Self {
            expected: digest(client_state.expose().as_bytes()),
            tx,
            overflowed: AtomicBool::new(false),
            received: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        (receiver, rx)
    }

    /// Notification items accepted (right clientState, parsed).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Items refused: wrong or missing clientState, or malformed.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Accepted items dropped because the channel was full or closed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn client_state_ok(&self, given: Option<&str>) -> bool {
        let Some(given) = given else {
            return false;
        };
        let got = digest(given.as_bytes());
        // constant time: every byte is looked at whatever differs
        got.iter()
            .zip(self.expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Offers one notification; false when the channel is closed.
    fn offer(&self, notification: Notification) -> bool {
        if self.overflowed.load(Ordering::Acquire)
            && self.tx.try_send(Notification::Overflow).is_ok()
        {
            self.overflowed.store(false, Ordering::Release);
        }
        match self.tx.try_send(notification) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                self.overflowed.store(true, Ordering::Release);
                tracing::warn!(
                    dropped,
                    "presence notification channel full; change dropped (an overflow marker follows)"
                );
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The webhook at [`NOTIFICATION_PATH`] (POST): mount it on the web listener (merge the
/// router). Graph must reach it over HTTPS.
pub fn notification_routes(receiver: Arc<NotificationReceiver>) -> Router {
    Router::new()
        .route(NOTIFICATION_PATH, post(notification_handler))
        .with_state(receiver)
}

/// The webhook handler itself, for mounting at another path.
pub async fn notification_handler(
    State(receiver): State<Arc<NotificationReceiver>>,
    uri: Uri,
    body: Bytes,
) -> Response {
    if let Some(token) = validation_token(uri.query()) {
        return validation_response(token);
    }
    handle_batch(&receiver, &body)
}

fn validation_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "validationToken")
        .map(|(_, v)| v.into_owned())
}

/// graph.md §3.2: 200, text/plain, the URL-decoded token, at once.
fn validation_response(token: String) -> Response {
    if token.len() > MAX_VALIDATION_TOKEN {
        tracing::warn!(
            len = token.len(),
            "validation request with an oversized token refused"
        );
        return StatusCode::BAD_REQUEST.into_response();
    }
    tracing::info!("graph subscription validation request answered");
    let mut response = (StatusCode::OK, token).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[derive(Deserialize)]
struct Batch {
    value: Vec<Value>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(default, rename = "subscriptionId")]
    subscription_id: String,
    #[serde(default, rename = "clientState")]
    client_state: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default, rename = "resourceData")]
    resource_data: Option<ResourceData>,
    #[serde(default, rename = "lifecycleEvent")]
    lifecycle_event: Option<String>,
}

#[derive(Deserialize)]
struct ResourceData {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    availability: Option<Availability>,
    #[serde(default)]
    activity: Option<Activity>,
}

/// A loggable form of an id from the request (bounded, never the clientState).
fn short(id: &str) -> &str {
    match id.char_indices().nth(64) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

fn handle_batch(receiver: &NotificationReceiver, body: &[u8]) -> Response {
    let batch: Batch = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            // position only: serde's message may quote the input
            tracing::warn!(
                line = e.line(),
                column = e.column(),
                "notification body does not parse; refused"
            );
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    let mut open = true;
    for raw in batch.value {
        let Ok(item) = serde_json::from_value::<Item>(raw) else {
            receiver.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("malformed notification item dropped");
            continue;
        };
        if !receiver.client_state_ok(item.client_state.as_deref()) {
            receiver.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                subscription = short(&item.subscription_id),
                "notification with a wrong or missing clientState dropped"
            );
            continue;
        }
        let notification = if let Some(event) = item.lifecycle_event {
            tracing::info!(
                subscription = short(&item.subscription_id),
                event = short(&event),
                "lifecycle notification"
            );
            Notification::Lifecycle {
                subscription_id: item.subscription_id,
                event,
            }
        } else {
            let data = item.resource_data;
            let from_resource = item.resource.as_deref().and_then(|r| {
                let r = r.trim_start_matches('/');
                r.get(..25)
                    .filter(|p| p.eq_ignore_ascii_case("communications/presences/"))
                    .map(|_| r[25..].to_owned())
            });
            let user_id = data
                .as_ref()
                .and_then(|d| d.id.clone())
                .or(from_resource)
                .filter(|id| !id.is_empty());
            let Some(user_id) = user_id else {
                receiver.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    subscription = short(&item.subscription_id),
                    "notification without a user id dropped"
                );
                continue;
            };
            let presence = data.and_then(|d| match (d.availability, d.activity) {
                (Some(availability), Some(activity)) => Some(Presence {
                    id: user_id.clone(),
                    availability,
                    activity,
                    sequence_number: None,
                }),
                _ => None,
            });
            Notification::Presence(PresenceChange {
                subscription_id: item.subscription_id,
                user_id,
                presence,
            })
        };
        receiver.received.fetch_add(1, Ordering::Relaxed);
        open &= receiver.offer(notification);
    }
    if open {
        StatusCode::ACCEPTED.into_response()
    } else {
        // nobody consumes (shutting down): ask Graph to retry later
        tracing::debug!("notification channel closed; answering 503");
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    }
}

// ---------------------------------------------------------------------------------------
// date-times

/// Graph's `DateTimeOffset` form with seven fraction digits: `2023-09-14T10:00:00.0000000Z`.
pub fn format_datetime(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:07}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        since.subsec_nanos() / 100
    )
}

/// Parses an RFC 3339 date-time (`Z` or `±hh:mm`, up to nine fraction digits).
pub fn parse_datetime(text: &str) -> Option<SystemTime> {
    let (date, rest) = text.trim().split_once(['T', 't'])?;
    let mut parts = date.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let mo: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let (time, offset) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0i64)
    } else {
        let pos = rest.rfind(['+', '-'])?;
        let (t, off) = rest.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off.get(1..)?.split_once(':')?;
        (
            t,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = hms.splitn(3, ':');
    let h: i64 = hms.next()?.parse().ok()?;
    let mi: i64 = hms.next()?.parse().ok()?;
    let s: i64 = hms.next().unwrap_or("0").parse().ok()?;
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut nanos = 0u32;
    if !frac.is_empty() {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits: String = frac.chars().take(9).collect();
        nanos = format!("{digits:0<9}").parse().ok()?;
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("u{i:05}")).collect()
    }

    fn sub(id: &str, expires_at: SystemTime) -> Subscription {
        Subscription {
            id: id.into(),
            resource: String::new(),
            expires_at,
            notification_url: String::new(),
        }
    }

    fn http(status: u16) -> GraphError {
        GraphError::Http {
            status,
            code: String::new(),
            message: String::new(),
            request_id: None,
        }
    }

    /// Creates everything due at `now` and answers each create with success.
    fn create_all(m: &mut PresenceSubscriptions, now: SystemTime) -> Vec<(usize, usize)> {
        let mut made = Vec::new();
        for action in m.poll(now) {
            match action {
                SubscriptionAction::Create {
                    slot,
                    user_ids,
                    expires_at,
                } => {
                    assert_eq!(expires_at, now + 58 * MIN);
                    made.push((slot, user_ids.len()));
                    m.on_created(slot, Ok(sub(&format!("s{slot}"), expires_at)), now);
                }
                other => unreachable!("{other:?}"),
            }
        }
        made
    }

    #[test]
    fn splits_ids_into_slots_of_650_and_reports_catch_up() {
        let mut m = PresenceSubscriptions::new(SubscriptionConfig::default(), 3);
        m.set_wanted(ids(1500));
        assert!(m.uncovered().len() == 1500, "nothing covered before create");
        assert_eq!(create_all(&mut m, t0()), [(0, 650), (1, 650), (2, 200)]);
        assert!(m.uncovered().is_empty());
        let events = m.take_events();
        assert_eq!(events.len(), 3);
        let total: usize = events
            .iter()
            .map(|e| match e {
                SubscriptionEvent::CatchUpPoll {
                    user_ids,
                    reason: CatchUpReason::Created,
                } => user_ids.len(),
                other => unreachable!("{other:?}"),
            })
            .sum();
        assert_eq!(total, 1500);
        assert!(m.poll(t0() + MIN).is_empty(), "nothing due until renewal");

        // two credentials cover 1,300; the rest is uncovered (poll it)
        let mut small = PresenceSubscriptions::new(SubscriptionConfig::default(), 2);
        small.set_wanted(ids(1500));
        assert_eq!(create_all(&mut small, t0()), [(0, 650), (1, 650)]);
        assert_eq!(small.uncovered().len(), 200);
    }

    #[test]
    fn renews_before_expiry() {
        let mut m = PresenceSubscriptions::new(SubscriptionConfig::default(), 1);
        m.set_wanted(ids(3));
        create_all(&mut m, t0());
        m.take_events();
        let expires = t0() + 58 * MIN;
        assert_eq!(m.next_deadline(), Some(expires - 5 * MIN));
        assert!(m.poll(expires - 6 * MIN).is_empty());
        let now = expires - 5 * MIN;
        let actions = m.poll(now);
        assert_eq!(
            actions,
            [SubscriptionAction::Renew {
                slot: 0,
                subscription_id: "s0".into(),
                expires_at: now + 58 * MIN
            }]
        );
        assert!(m.uncovered().is_empty(), "still covered while renewing");
        assert!(m.poll(now).is_empty(), "one request at a time");
        m.on_renewed(0, Ok(sub("s0", now + 58 * MIN)), now);
        assert!(m.take_events().is_empty(), "a renewal needs no catch-up");
        assert_eq!(m.next_deadline(), Some(now + 53 * MIN));
        assert_eq!(m.subscription_ids(), ["s0"]);
    }

    #[test]
    fn renewal_404_recreates_and_asks_for_catch_up() {
        let mut m = PresenceSubscriptions::new(SubscriptionConfig::default(), 1);
        m.set_wanted(ids(2));
        create_all(&mut m, t0());
        m.take_events();
        let now = t0() + 54 * MIN;
        assert_eq!(m.poll(now).len(), 1);
        m.on_renewed(0, Err(http(404)), now);
        assert_eq!(
            m.take_events(),
            [SubscriptionEvent::CatchUpPoll {
                user_ids: ids(2),
                reason: CatchUpReason::Lost
            }]
        );
        assert_eq!(m.uncovered().len(), 2);
        assert_eq!(create_all(&mut m, now), [(0, 2)]);
        assert_eq!(
            m.take_events(),
            [SubscriptionEvent::CatchUpPoll {
                user_ids: ids(2),
                reason: CatchUpReason::Created
            }]
        );
    }

    #[test]
    fn expiry_without_renewal_is_lost_then_recreated() {
        let mut m = PresenceSubscriptions::new(SubscriptionConfig::default(), 1);
        m.set_wanted(ids(2));
        create_all(&mut m, t0());
        m.take_events();
        // the renewal fails transiently and the backoff outlasts the expiry
        let now = t0() + 54 * MIN;
        assert_eq!(m.poll(now).len(), 1);
        m.on_renewed(0, Err(GraphError::Transport("reset".into())), now);
        let events = m.take_events();
        assert!(
            matches!(&events[..], [SubscriptionEvent::Failed { action: "renew", retry_at, .. }] if *retry_at == now + Duration::from_secs(15)),
            "{events:?}"
        );
        assert!(m.uncovered().is_empty(), "covered until it expires");
        let expired = t0() + 58 * MIN;
        assert_eq!(m.next_deadline(), Some(now + Duration::from_secs(15)));
        let actions = m.poll(expired);
        assert!(
            matches!(&actions[..], [SubscriptionAction::Create { .. }]),
            "{actions:?}"
        );
        assert_eq!(
            m.take_events(),
            [SubscriptionEvent::CatchUpPoll {
                user_ids: ids(2),
                reason: CatchUpReason::Lost
            }]
        );
    }

    #[test]
    fn wanted_changes_touch_only_their_slots() {
        let mut m = PresenceSubscriptions::new(
            SubscriptionConfig {
                max_ids: 2,
                ..SubscriptionConfig::default()
            },
            3,
        );
        m.set_wanted(ids(4));
        assert_eq!(create_all(&mut m, t0()), [(0, 2), (1, 2)]);
        m.take_events();
        let now = t0() + MIN;
        // u00001 leaves and u00009 takes its place in slot 0; slot 1 is untouched
        m.set_wanted(["u00000", "u00002", "u00003", "u00009"]);
        let actions = m.poll(now);
        assert_eq!(
            actions,
            [SubscriptionAction::Delete {
                slot: 0,
                subscription_id: "s0".into()
            }]
        );
        assert_eq!(
            m.uncovered().len(),
            2,
            "slot 0's users are uncovered meanwhile"
        );
        m.on_deleted(0, Ok(()), now);
        let actions = m.poll(now);
        assert_eq!(
            actions,
            [SubscriptionAction::Create {
                slot: 0,
                user_ids: vec!["u00000".into(), "u00009".into()],
                expires_at: now + 58 * MIN
            }]
        );
        m.on_created(0, Ok(sub("s0b", now + 58 * MIN)), now);
        assert!(m.uncovered().is_empty());
        // a fifth user: the slots of two are full, the third slot takes it
        m.set_wanted(["u00000", "u00002", "u00003", "u00009", "u00010"]);
        assert_eq!(
            m.poll(now),
            [SubscriptionAction::Create {
                slot: 2,
                user_ids: vec!["u00010".into()],
                expires_at: now + 58 * MIN
            }]
        );
        m.on_created(2, Ok(sub("s2", now + 58 * MIN)), now);
        // nothing wanted: everything is deleted
        m.set_wanted(Vec::<String>::new());
        let actions = m.poll(now);
        assert_eq!(actions.len(), 3);
        assert!(
            actions
                .iter()
                .all(|a| matches!(a, SubscriptionAction::Delete { .. }))
        );
        for slot in 0..3 {
            m.on_deleted(slot, Err(http(404)), now);
        }
        assert!(m.poll(now).is_empty());
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn conflict_purges_once_then_backs_off() {
        let mut m = PresenceSubscriptions::new(SubscriptionConfig::default(), 1);
        m.set_wanted(ids(1));
        let now = t0();
        let conflict = || GraphError::Subscription {
            kind: SubscriptionRefusal::AlreadyExists,
            status: Some(409),
            message: String::new(),
        };
        assert_eq!(m.poll(now).len(), 1);
        m.on_created(0, Err(conflict()), now);
        assert_eq!(m.poll(now), [SubscriptionAction::Purge { slot: 0 }]);
        m.on_purged(0, Ok(1), now);
        assert_eq!(m.poll(now).len(), 1, "create again");
        m.on_created(0, Err(conflict()), now);
        assert!(m.poll(now).is_empty(), "no purge loop");
        let events = m.take_events();
        assert!(
            matches!(
                &events[..],
                [SubscriptionEvent::Failed {
                    action: "create",
                    ..
                }]
            ),
            "{events:?}"
        );
        // backoff doubles: 15 s, 30 s
        assert!(m.poll(now + Duration::from_secs(14)).is_empty());
        assert_eq!(m.poll(now + Duration::from_secs(15)).len(), 1);
        m.on_created(0, Err(http(500)), now + Duration::from_secs(15));
        assert!(m.poll(now + Duration::from_secs(44)).is_empty());
        assert_eq!(m.poll(now + Duration::from_secs(45)).len(), 1);
    }

    #[test]
    fn refused_patch_falls_back_to_delete_and_create() {
        let mut m = PresenceSubscriptions::new(SubscriptionConfig::default(), 1);
        m.set_wanted(ids(1));
        create_all(&mut m, t0());
        m.take_events();
        let now = t0() + 54 * MIN;
        m.poll(now);
        m.on_renewed(0, Err(http(400)), now);
        assert_eq!(
            m.poll(now),
            [SubscriptionAction::Delete {
                slot: 0,
                subscription_id: "s0".into()
            }]
        );
        m.on_deleted(0, Ok(()), now);
        assert_eq!(create_all(&mut m, now), [(0, 1)]);
    }

    #[test]
    fn reauthorization_renews_at_once() {
        let mut m = PresenceSubscriptions::new(SubscriptionConfig::default(), 1);
        m.set_wanted(ids(1));
        create_all(&mut m, t0());
        assert!(!m.reauthorize("nope"));
        assert!(m.reauthorize("s0"));
        assert_eq!(m.next_deadline(), Some(UNIX_EPOCH));
        let actions = m.poll(t0() + MIN);
        assert!(
            matches!(&actions[..], [SubscriptionAction::Renew { .. }]),
            "{actions:?}"
        );
    }

    #[test]
    fn lifetime_is_capped_at_60_minutes() {
        let m = PresenceSubscriptions::new(
            SubscriptionConfig {
                lifetime: Duration::from_secs(4 * 3600),
                max_ids: 10_000,
                ..SubscriptionConfig::default()
            },
            1,
        );
        assert_eq!(m.config().lifetime, MAX_SUBSCRIPTION_LIFETIME);
        assert_eq!(m.config().max_ids, 650);
    }

    #[test]
    fn resource_and_datetimes() {
        assert_eq!(
            presence_resource(&["a".into(), "o'b".into()]),
            "/communications/presences?$filter=id in ('a','o''b')"
        );
        let at = UNIX_EPOCH + Duration::new(1_694_685_600, 123_456_700);
        assert_eq!(format_datetime(at), "2023-09-14T10:00:00.1234567Z");
        assert_eq!(parse_datetime("2023-09-14T10:00:00.1234567Z"), Some(at));
        assert_eq!(
            parse_datetime("2023-09-14T12:00:00+02:00"),
            Some(UNIX_EPOCH + Duration::from_secs(1_694_685_600))
        );
        assert_eq!(parse_datetime("yesterday"), None);
    }

    fn item(client_state: &str, user: &str) -> Value {
        json!({
            "subscriptionId": "sub-1",
            "clientState": client_state,
            "changeType": "updated",
            "resource": format!("communications/presences/{user}"),
            "resourceData": { "@odata.type": "#microsoft.graph.presence", "id": user },
        })
    }

    #[test]
    fn batches_are_checked_and_overflow_is_marked() {
        let state = Secret::new("right-state".to_owned());
        let (receiver, mut rx) = NotificationReceiver::new(&state, 2);
        let body = json!({ "value": [item("right-state", "u1"), item("wrong-state", "u2")] });
        let r = handle_batch(&receiver, body.to_string().as_bytes());
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!((receiver.received(), receiver.rejected()), (1, 1));
        match rx.try_recv() {
            Ok(Notification::Presence(c)) => {
                assert_eq!((c.user_id.as_str(), c.presence), ("u1", None));
            }
            other => unreachable!("{other:?}"),
        }
        assert!(rx.try_recv().is_err(), "the wrong clientState was dropped");

        // rich resource data is used; id from `resource` when resourceData lacks it
        let body = json!({ "value": [
            { "subscriptionId": "s", "clientState": "right-state",
              "resource": "communications/presences/u3",
              "resourceData": { "availability": "Busy", "activity": "InACall" } },
        ]});
        handle_batch(&receiver, body.to_string().as_bytes());
        match rx.try_recv() {
            Ok(Notification::Presence(c)) => {
                let p = c.presence.unwrap_or_else(|| unreachable!());
                assert_eq!(p.id, "u3");
                assert_eq!(
                    (p.availability, p.activity),
                    (Availability::Busy, Activity::InACall)
                );
            }
            other => unreachable!("{other:?}"),
        }

        // three changes into a channel of two: one dropped, then an overflow marker
        let body = json!({ "value": [item("right-state", "a"), item("right-state", "b"), item("right-state", "c")] });
        handle_batch(&receiver, body.to_string().as_bytes());
        assert_eq!(receiver.dropped(), 1);
        assert!(matches!(rx.try_recv(), Ok(Notification::Presence(_))));
        assert!(matches!(rx.try_recv(), Ok(Notification::Presence(_))));
        let body = json!({ "value": [item("right-state", "d")] });
        handle_batch(&receiver, body.to_string().as_bytes());
        assert_eq!(rx.try_recv(), Ok(Notification::Overflow));
        assert!(matches!(rx.try_recv(), Ok(Notification::Presence(c)) if c.user_id == "d"));

        // lifecycle items
        let body = json!({ "value": [{ "subscriptionId": "s9", "clientState": "right-state",
            "lifecycleEvent": "reauthorizationRequired" }] });
        handle_batch(&receiver, body.to_string().as_bytes());
        assert_eq!(
            rx.try_recv(),
            Ok(Notification::Lifecycle {
                subscription_id: "s9".into(),
                event: "reauthorizationRequired".into()
            })
        );

        // bodies that do not parse
        for bad in [&b"not json"[..], b"{}", b"{\"value\": 3}", b""] {
            assert_eq!(
                handle_batch(&receiver, bad).status(),
                StatusCode::BAD_REQUEST
            );
        }
        // a missing clientState is wrong too
        let body = json!({ "value": [{ "subscriptionId": "s", "resourceData": { "id": "x" } }] });
        handle_batch(&receiver, body.to_string().as_bytes());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn validation_token_is_decoded() {
        assert_eq!(
            validation_token(Some("tag=1&validationToken=Validation%3A+a%20b%2Bc")),
            Some("Validation: a b+c".into())
        );
        assert_eq!(validation_token(Some("tag=1")), None);
        assert_eq!(validation_token(None), None);
    }
}
