//! Teams presence by change notifications, when `graph.notification_url` is set: keeps
//! presence subscriptions for the watched users with the domain token (subscriptions
//! refuse app-only tokens), turns each notification into the user's presence for the
//! core, and asks the poller for a catch-up poll whenever a subscription was created or
//! lost (presence has no missed-notification signal, graph.md §3.3).
//!
//! While every watched user is covered, the poller slows to `sync.catch_up_poll_seconds`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use super::engine::PollTargets;
use crate::graph::{
    GraphClient, Notification, Presence, SubscriptionConfig, SubscriptionDriver, SubscriptionEvent,
    Tokens,
};
use crate::store::Secret;

/// Where notifications come from and go.
#[derive(Debug)]
pub struct NotificationSetup {
    /// The public URL Graph posts to (the web listener's `/graph/notifications`).
    pub notification_url: String,
    /// The clientState the webhook receiver expects.
    pub client_state: Secret<String>,
    /// What the webhook receiver accepted.
    pub notifications: mpsc::Receiver<Notification>,
}

/// How often subscriptions are looked after (renewals are minutes ahead; new users
/// and a new domain token are picked up within this).
const TICK: Duration = Duration::from_secs(2);

/// Runs until the engine stops.
pub(super) async fn notification_loop(
    graph: GraphClient,
    targets: Arc<Mutex<PollTargets>>,
    setup: NotificationSetup,
    presences: mpsc::Sender<Presence>,
    poll_now: Arc<Notify>,
) {
    let NotificationSetup {
        notification_url,
        client_state,
        mut notifications,
    } = setup;
    let mut driver: Option<(Arc<Tokens>, SubscriptionDriver)> = None;
    let mut wanted: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (users, reader) = {
                    let t = targets.lock();
                    (t.users.clone(), t.reader.clone())
                };
                let reader = reader.filter(|r| !r.is_app_only());
                let same_token = match (&driver, &reader) {
                    (Some((held, _)), Some(now)) => Arc::ptr_eq(held, now),
                    (None, None) => true,
                    _ => false,
                };
                if !same_token {
                    if let Some((_, mut old)) = driver.take() {
                        old.shutdown(SystemTime::now()).await;
                    }
                    if let Some(reader) = reader {
                        info!("Teams presence by change notifications, with the domain token");
                        driver = Some((
                            reader.clone(),
                            SubscriptionDriver::new(
                                graph.clone(),
                                vec![reader],
                                notification_url.clone(),
                                client_state.clone(),
                                SubscriptionConfig::default(),
                            ),
                        ));
                        wanted.clear();
                    }
                }
                let Some((_, active)) = driver.as_mut() else {
                    targets.lock().covered = false;
                    continue;
                };
                let mut sorted = users;
                sorted.sort();
                if sorted != wanted {
                    active.set_wanted(sorted.iter().cloned());
                    wanted = sorted;
                }
                for event in active.step(SystemTime::now()).await {
                    match event {
                        SubscriptionEvent::CatchUpPoll { user_ids, reason } => {
                            debug!(users = user_ids.len(), ?reason, "catch-up poll");
                            poll_now.notify_one();
                        }
                        other => warn!(event = ?other, "presence subscription"),
                    }
                }
                let covered = !wanted.is_empty()
                    && active.manager().uncovered().is_empty()
                    && !active.manager().subscription_ids().is_empty();
                targets.lock().covered = covered;
            }
            notification = notifications.recv() => {
                let Some(notification) = notification else {
                    return;
                };
                match notification {
                    Notification::Presence(change) => {
                        let reader = targets.lock().reader.clone();
                        let Some(reader) = reader else { continue };
                        match graph.resolve_presence_changes(&reader, &[change]).await {
                            Ok(list) => {
                                for presence in list {
                                    if presences.send(presence).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(e) => {
                                warn!(error = %e, "cannot read a notified presence; polling");
                                poll_now.notify_one();
                            }
                        }
                    }
                    Notification::Lifecycle { subscription_id, event } => {
                        info!(%event, "presence subscription lifecycle notification");
                        if let Some((_, active)) = driver.as_mut() {
                            active.reauthorize(&subscription_id);
                        }
                        poll_now.notify_one();
                    }
                    Notification::Overflow => poll_now.notify_one(),
                }
            }
        }
    }
}
