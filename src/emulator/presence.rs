//! The presence model of one user, sans-IO (graph.md §1.1–§1.5, §2.3): the sessions that
//! applications own through setPresence, the Teams client's own session, the user-preferred
//! presence, and how they aggregate at a given instant.
//!
//! - Each application has at most one session per user, keyed by its client id (the
//!   `sessionId`, §1.2 / §8.1). It expires at `expirationDuration` (default 5 min, PT5M–PT4H).
//!   A session at `Available` fades: after 5 min to Available/AvailableInactive, after 5 more
//!   to Away/Away (§1.1). Other availabilities do not fade (§8.5 leaves Busy unconfirmed;
//!   the emulator keeps them until expiry).
//! - The Teams client session stands for the user's signed-in Teams client. The control API
//!   sets it; Teams keeps it alive, so it neither fades nor expires.
//! - The user-preferred presence wins over every session, but only while at least one session
//!   exists; with none the user is Offline/Offline (§1.4). Default expiry: 1 day for
//!   DoNotDisturb or Busy, 7 days otherwise.
//! - Among sessions: DoNotDisturb > Busy > Available > Away (§1.1); BeRightBack ranks with
//!   Away; ties go to the most recently set.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::clock::Instant;

/// Inactivity after which an `Available` session fades (graph.md §1.1).
pub(crate) const FADE_AFTER: Duration = Duration::from_secs(5 * 60);
/// Default expirationDuration of setPresence (graph.md §1.2).
pub(crate) const DEFAULT_SESSION_DURATION: Duration = Duration::from_secs(5 * 60);
/// Smallest expirationDuration of setPresence (graph.md §1.2).
pub(crate) const MIN_SESSION_DURATION: Duration = Duration::from_secs(5 * 60);
/// Largest expirationDuration of setPresence (graph.md §1.2).
pub(crate) const MAX_SESSION_DURATION: Duration = Duration::from_secs(4 * 3600);

/// setPresence's supported availability/activity pairs (graph.md §1.2, v1.0 and beta).
pub(crate) const SET_PRESENCE_PAIRS: &[(&str, &str)] = &[
    ("Available", "Available"),
    ("Busy", "InACall"),
    ("Busy", "InAConferenceCall"),
    ("Away", "Away"),
    ("DoNotDisturb", "Presenting"),
];

/// setUserPreferredPresence's supported pairs (graph.md §1.4).
pub(crate) const PREFERRED_PAIRS: &[(&str, &str)] = &[
    ("Available", "Available"),
    ("Busy", "Busy"),
    ("DoNotDisturb", "DoNotDisturb"),
    ("BeRightBack", "BeRightBack"),
    ("Away", "Away"),
    ("Offline", "OffWork"),
];

/// Finds `(availability, activity)` in `pairs`, case-insensitively (graph.md §2.3 says the
/// docs disagree on case), and returns the canonical spelling.
pub(crate) fn canonical_pair(
    pairs: &[(&'static str, &'static str)],
    availability: &str,
    activity: &str,
) -> Option<(&'static str, &'static str)> {
    pairs
        .iter()
        .copied()
        .find(|(av, ac)| av.eq_ignore_ascii_case(availability) && ac.eq_ignore_ascii_case(activity))
}

/// An availability/activity pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct State {
    /// Base presence.
    pub(crate) availability: String,
    /// Supplemental information.
    pub(crate) activity: String,
}

impl State {
    /// A state from two strings.
    pub(crate) fn new(availability: &str, activity: &str) -> Self {
        Self {
            availability: availability.into(),
            activity: activity.into(),
        }
    }

    /// Offline/Offline: the aggregate with no session (graph.md §1.3).
    pub(crate) fn offline() -> Self {
        Self::new("Offline", "Offline")
    }

    fn rank(&self) -> u8 {
        match self.availability.as_str() {
            "DoNotDisturb" => 4,
            "Busy" => 3,
            "Available" | "AvailableInactive" => 2,
            "Away" | "BeRightBack" => 1,
            _ => 0,
        }
    }
}

/// An application's presence session for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppSession {
    /// What setPresence last set.
    pub(crate) state: State,
    /// When setPresence last set it (fading counts from here).
    pub(crate) set_at: Instant,
    /// When the session ends.
    pub(crate) expires_at: Instant,
}

impl AppSession {
    /// The session's state at `now`, after fading (graph.md §1.1).
    pub(crate) fn effective(&self, now: Instant) -> State {
        if self.state.availability != "Available" {
            return self.state.clone();
        }
        let idle = now.saturating_sub(self.set_at);
        if idle >= FADE_AFTER * 2 {
            State::new("Away", "Away")
        } else if idle >= FADE_AFTER {
            State::new("Available", "AvailableInactive")
        } else {
            self.state.clone()
        }
    }
}

/// The user-preferred presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Preferred {
    /// The preferred state.
    pub(crate) state: State,
    /// When it lapses.
    pub(crate) expires_at: Instant,
}

/// The Teams client's own session (set through the control API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientSession {
    /// Its state.
    pub(crate) state: State,
    /// When it was set.
    pub(crate) set_at: Instant,
}

/// Everything behind one user's presence.
#[derive(Debug, Clone, Default)]
pub(crate) struct UserPresence {
    /// Application sessions by client id.
    pub(crate) app_sessions: BTreeMap<String, AppSession>,
    /// The Teams client session, when the user is signed in to Teams.
    pub(crate) client: Option<ClientSession>,
    /// The user-preferred presence.
    pub(crate) preferred: Option<Preferred>,
    /// The last aggregate seen by [`UserPresence::observe`], and its sequence number.
    pub(crate) last: Option<State>,
    /// Bumped each time the aggregate changes; `sequenceNumber` is built from it.
    pub(crate) sequence: u64,
}

impl UserPresence {
    /// Drops sessions and preferences that lapsed by `now`.
    pub(crate) fn expire(&mut self, now: Instant) {
        self.app_sessions.retain(|_, s| s.expires_at > now);
        if self.preferred.as_ref().is_some_and(|p| p.expires_at <= now) {
            self.preferred = None;
        }
    }

    /// The aggregated presence at `now` (call [`UserPresence::expire`] first).
    pub(crate) fn aggregate(&self, now: Instant) -> State {
        let mut best: Option<(u8, Instant, State)> = None;
        let sessions = self
            .app_sessions
            .values()
            .map(|s| (s.effective(now), s.set_at))
            .chain(self.client.iter().map(|c| (c.state.clone(), c.set_at)));
        for (state, set_at) in sessions {
            let rank = state.rank();
            let better = match &best {
                None => true,
                Some((r, at, _)) => rank > *r || (rank == *r && set_at > *at),
            };
            if better {
                best = Some((rank, set_at, state));
            }
        }
        match best {
            None => State::offline(),
            Some((_, _, session_state)) => match &self.preferred {
                Some(p) => p.state.clone(),
                None => session_state,
            },
        }
    }

    /// Expires, aggregates and bumps the sequence number when the aggregate changed.
    /// Returns true on a change (a change notification is due).
    pub(crate) fn observe(&mut self, now: Instant) -> bool {
        self.expire(now);
        let current = self.aggregate(now);
        if self.last.as_ref() == Some(&current) {
            return false;
        }
        let first = self.last.is_none();
        self.last = Some(current);
        self.sequence += 1;
        !first
    }

    /// `sequenceNumber`: a lexicographically sortable stamp of the presence version (§2.3).
    pub(crate) fn sequence_number(&self) -> String {
        format!("C{:016}", self.sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Instant {
        Duration::from_secs(secs)
    }

    #[test]
    fn no_session_is_offline_even_with_a_preference() {
        let p = UserPresence {
            preferred: Some(Preferred {
                state: State::new("DoNotDisturb", "DoNotDisturb"),
                expires_at: at(1000),
            }),
            ..UserPresence::default()
        };
        assert_eq!(p.aggregate(at(0)), State::offline());
    }

    #[test]
    fn precedence_and_fading() {
        let mut p = UserPresence::default();
        p.app_sessions.insert(
            "app".into(),
            AppSession {
                state: State::new("Available", "Available"),
                set_at: at(0),
                expires_at: at(3600),
            },
        );
        assert_eq!(p.aggregate(at(10)), State::new("Available", "Available"));
        assert_eq!(
            p.aggregate(at(300)),
            State::new("Available", "AvailableInactive")
        );
        assert_eq!(p.aggregate(at(600)), State::new("Away", "Away"));
        p.client = Some(ClientSession {
            state: State::new("Busy", "InACall"),
            set_at: at(0),
        });
        assert_eq!(p.aggregate(at(10)), State::new("Busy", "InACall"));
        p.expire(at(3600));
        assert!(p.app_sessions.is_empty());
    }
}
