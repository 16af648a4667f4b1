//! The sync engine's settings, sans-IO: which Teams states count as busy, how the PBX's
//! DND is shown in Teams, what an ended call leaves behind, and the timings.

use std::time::Duration;

use crate::graph::{Activity, Availability, SESSION_MAX, SESSION_MIN};

/// How the extension's DND is shown in Teams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DndMode {
    /// The app's own presence session set to DoNotDisturb/Presenting: shown as "Do not
    /// disturb / Presenting" unless the user chose a state of their own, which wins
    /// (graph.md §1.1). The default: it never overrides the user.
    #[default]
    Session,
    /// setUserPreferredPresence DoNotDisturb: a real "Do not disturb" that overrides the
    /// user's own choice until DND goes off.
    Preferred,
    /// DND is not shown in Teams.
    Off,
}

/// What Teams shows once the extension's last external call has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallEnd {
    /// clearPresence: the app's session goes away (the default).
    #[default]
    Clear,
    /// setPresence Available/Available for the shortest session (5 min), then it fades.
    Available,
}

/// What the proxy answers an INVITE to an extension whose Teams user is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyResponse {
    /// `486 Busy Here` (the default).
    BusyHere,
    /// `480 Temporarily Unavailable`.
    TemporarilyUnavailable,
    /// `603 Decline`.
    Decline,
    /// Calls go through; Teams-busy shows only on BLF lamps.
    Off,
}

impl BusyResponse {
    /// The status code and reason phrase, or `None` for [`BusyResponse::Off`].
    pub fn status(self) -> Option<(u16, &'static str)> {
        match self {
            Self::BusyHere => Some((486, "Busy Here")),
            Self::TemporarilyUnavailable => Some((480, "Temporarily Unavailable")),
            Self::Decline => Some((603, "Decline")),
            Self::Off => None,
        }
    }
}

/// One entry of the busy rule: an availability, optionally with one activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyState {
    /// The availability it matches.
    pub availability: Availability,
    /// The activity it matches; `None` matches any.
    pub activity: Option<Activity>,
}

impl BusyState {
    /// Parses `Busy` or `Busy/InACall` (case-insensitive).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (availability, activity) = match text.split_once('/') {
            Some((a, b)) => (a.trim(), Some(b.trim())),
            None => (text.trim(), None),
        };
        let availability = Availability::parse(availability);
        if let Availability::Other(name) = &availability {
            return Err(format!("unknown Teams availability `{name}`"));
        }
        let activity = match activity.map(Activity::parse) {
            Some(Activity::Other(name)) => {
                return Err(format!("unknown Teams activity `{name}`"));
            }
            other => other,
        };
        Ok(Self {
            availability,
            activity,
        })
    }
}

/// Which Teams presences make the extension DND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyRule {
    states: Vec<BusyState>,
}

impl Default for BusyRule {
    /// Busy or DoNotDisturb, any activity; not Away, BeRightBack or Offline.
    fn default() -> Self {
        Self::new(vec![
            BusyState {
                availability: Availability::Busy,
                activity: None,
            },
            BusyState {
                availability: Availability::DoNotDisturb,
                activity: None,
            },
        ])
    }
}

impl BusyRule {
    /// A rule matching any of `states`.
    pub fn new(states: Vec<BusyState>) -> Self {
        Self { states }
    }

    /// Whether a Teams presence counts as busy.
    pub fn is_busy(&self, availability: &Availability, activity: &Activity) -> bool {
        self.states.iter().any(|s| {
            &s.availability == availability && s.activity.as_ref().is_none_or(|a| a == activity)
        })
    }
}

/// Everything the sync core decides with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRules {
    /// How DND is shown in Teams.
    pub dnd_mode: DndMode,
    /// What an ended call leaves.
    pub call_end: CallEnd,
    /// setPresence `expirationDuration` while a call or DND lasts (PT5M–PT4H; default
    /// 1 h). The session is set again at three quarters of it while still wanted.
    pub session_expiration: Duration,
    /// How long a changed phone state waits for the next change before it is written
    /// (a call that rings and is answered inside it makes one request). Default 25 ms.
    pub coalesce: Duration,
    /// First wait after a failed write; doubles per failure (default 1 s).
    pub retry_base: Duration,
    /// Longest wait between attempts (default 60 s).
    pub retry_max: Duration,
    /// How long after the proxy's own session left a state a Teams presence in that
    /// state is still taken for an echo of it (default 10 s).
    pub echo_grace: Duration,
    /// Which Teams presences make the extension DND.
    pub busy: BusyRule,
}

impl Default for SyncRules {
    fn default() -> Self {
        Self {
            dnd_mode: DndMode::default(),
            call_end: CallEnd::default(),
            session_expiration: Duration::from_secs(3600),
            coalesce: Duration::from_millis(25),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            echo_grace: Duration::from_secs(10),
            busy: BusyRule::default(),
        }
    }
}

impl SyncRules {
    /// The session expiration within what Graph accepts.
    pub fn expiration(&self) -> Duration {
        self.session_expiration.clamp(SESSION_MIN, SESSION_MAX)
    }

    /// When a held session is set again: three quarters of its expiration.
    pub fn keep_alive_after(&self) -> Duration {
        self.expiration() * 3 / 4
    }

    /// The wait after `failures` failed attempts in a row (1 → `retry_base`).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.retry_base.saturating_mul(factor).min(self.retry_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_busy_rule_is_busy_or_dnd_any_activity() {
        let rule = BusyRule::default();
        assert!(rule.is_busy(&Availability::Busy, &Activity::InACall));
        assert!(rule.is_busy(&Availability::Busy, &Activity::InAMeeting));
        assert!(rule.is_busy(&Availability::DoNotDisturb, &Activity::Presenting));
        for idle in [
            Availability::Away,
            Availability::BeRightBack,
            Availability::Offline,
            Availability::Available,
            Availability::BusyIdle,
        ] {
            assert!(!rule.is_busy(&idle, &Activity::Away), "{idle}");
        }
    }

    #[test]
    fn busy_states_parse_with_optional_activity() {
        let only_calls = BusyRule::new(vec![
            BusyState::parse("busy/inacall").unwrap_or_else(|e| unreachable!("{e}")),
        ]);
        assert!(only_calls.is_busy(&Availability::Busy, &Activity::InACall));
        assert!(!only_calls.is_busy(&Availability::Busy, &Activity::InAMeeting));
        assert!(BusyState::parse("Sleepy").is_err());
        assert!(BusyState::parse("Busy/Napping").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let rules = SyncRules::default();
        assert_eq!(rules.backoff(1), Duration::from_secs(1));
        assert_eq!(rules.backoff(2), Duration::from_secs(2));
        assert_eq!(rules.backoff(4), Duration::from_secs(8));
        assert_eq!(rules.backoff(40), Duration::from_secs(60));
        assert_eq!(rules.keep_alive_after(), Duration::from_secs(2700));
    }
}
