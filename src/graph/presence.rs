//! Presence values, sans-IO: the availability/activity read from Graph (parsed
//! case-insensitively, unknown values kept, graph.md §2.3), the pairs setPresence and
//! setUserPreferredPresence accept as enums (graph.md §1.2, §1.4), and ISO 8601 durations
//! for `expirationDuration`.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::GraphError;

/// The shortest and longest `expirationDuration` setPresence accepts (graph.md §1.2).
pub const SESSION_MIN: Duration = Duration::from_secs(5 * 60);
/// See [`SESSION_MIN`].
pub const SESSION_MAX: Duration = Duration::from_secs(4 * 3600);

macro_rules! lenient_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $variant,)*
            /// A value this build does not know, as Graph sent it.
            Other(String),
        }

        impl $name {
            /// Parses case-insensitively (graph.md §2.3: the docs' lists are swapped and
            /// lower-camel-cased; the service sends PascalCase).
            pub fn parse(value: &str) -> Self {
                $(if value.eq_ignore_ascii_case(stringify!($variant)) {
                    return $name::$variant;
                })*
                $name::Other(value.to_owned())
            }

            /// The PascalCase wire name.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => stringify!($variant),)*
                    $name::Other(s) => s,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok($name::parse(&s))
            }
        }
    };
}

lenient_enum! {
    /// A user's base presence (graph.md §2.3).
    Availability {
        /// Available.
        Available,
        /// Available, idle.
        AvailableIdle,
        /// Available, faded (graph.md §1.1).
        AvailableInactive,
        /// Away.
        Away,
        /// Be right back.
        BeRightBack,
        /// Busy.
        Busy,
        /// Busy, idle.
        BusyIdle,
        /// Do not disturb.
        DoNotDisturb,
        /// Offline.
        Offline,
        /// Out of office (the concept page uses it as an availability).
        OutOfOffice,
        /// Unknown.
        PresenceUnknown,
    }
}

lenient_enum! {
    /// What the user is doing (graph.md §2.3).
    Activity {
        /// Available.
        Available,
        /// Away.
        Away,
        /// Be right back.
        BeRightBack,
        /// Busy.
        Busy,
        /// Do not disturb.
        DoNotDisturb,
        /// In a call.
        InACall,
        /// In a conference call.
        InAConferenceCall,
        /// Inactive.
        Inactive,
        /// In a meeting.
        InAMeeting,
        /// Offline.
        Offline,
        /// Off work (appear offline).
        OffWork,
        /// Out of office.
        OutOfOffice,
        /// Unknown.
        PresenceUnknown,
        /// Presenting.
        Presenting,
        /// Urgent interruptions only.
        UrgentInterruptionsOnly,
    }
}

/// One user's presence as Graph reports it (GET presence, getPresencesByUserId).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Presence {
    /// The user's object id.
    pub id: String,
    /// Base presence.
    pub availability: Availability,
    /// Activity.
    pub activity: Activity,
    /// The version stamp, when Graph sends it (graph.md §2.3).
    #[serde(default, rename = "sequenceNumber")]
    pub sequence_number: Option<String>,
}

/// The availability/activity pairs setPresence accepts (graph.md §1.2); no other pair can
/// be expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionPresence {
    /// Available / Available.
    Available,
    /// Busy / InACall: the PBX has an external call.
    InACall,
    /// Busy / InAConferenceCall.
    InAConferenceCall,
    /// Away / Away.
    Away,
    /// DoNotDisturb / Presenting (setPresence cannot set DoNotDisturb/DoNotDisturb).
    Presenting,
}

impl SessionPresence {
    /// `(availability, activity)` on the wire.
    pub fn pair(self) -> (&'static str, &'static str) {
        match self {
            SessionPresence::Available => ("Available", "Available"),
            SessionPresence::InACall => ("Busy", "InACall"),
            SessionPresence::InAConferenceCall => ("Busy", "InAConferenceCall"),
            SessionPresence::Away => ("Away", "Away"),
            SessionPresence::Presenting => ("DoNotDisturb", "Presenting"),
        }
    }
}

/// The pairs setUserPreferredPresence accepts (graph.md §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PreferredPresence {
    /// Available / Available.
    Available,
    /// Busy / Busy.
    Busy,
    /// DoNotDisturb / DoNotDisturb: the PBX's DND.
    DoNotDisturb,
    /// BeRightBack / BeRightBack.
    BeRightBack,
    /// Away / Away.
    Away,
    /// Offline / OffWork.
    Offline,
}

impl PreferredPresence {
    /// `(availability, activity)` on the wire.
    pub fn pair(self) -> (&'static str, &'static str) {
        match self {
            PreferredPresence::Available => ("Available", "Available"),
            PreferredPresence::Busy => ("Busy", "Busy"),
            PreferredPresence::DoNotDisturb => ("DoNotDisturb", "DoNotDisturb"),
            PreferredPresence::BeRightBack => ("BeRightBack", "BeRightBack"),
            PreferredPresence::Away => ("Away", "Away"),
            PreferredPresence::Offline => ("Offline", "OffWork"),
        }
    }
}

/// `duration` as ISO 8601 (`PT1H30M`, `PT5M`, `PT45S`); whole seconds.
pub fn iso8601(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::from("PT");
    if h > 0 {
        out.push_str(&format!("{h}H"));
    }
    if m > 0 {
        out.push_str(&format!("{m}M"));
    }
    if s > 0 || secs == 0 {
        out.push_str(&format!("{s}S"));
    }
    out
}

/// Checks a setPresence `expirationDuration` against PT5M–PT4H (graph.md §1.2).
pub(crate) fn session_duration(duration: Duration) -> Result<String, GraphError> {
    if duration < SESSION_MIN || duration > SESSION_MAX {
        return Err(GraphError::InvalidRequest(format!(
            "expirationDuration {} is outside PT5M..PT4H",
            iso8601(duration)
        )));
    }
    Ok(iso8601(duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_durations() {
        assert_eq!(iso8601(Duration::from_secs(300)), "PT5M");
        assert_eq!(iso8601(Duration::from_secs(4 * 3600)), "PT4H");
        assert_eq!(iso8601(Duration::from_secs(3600 + 90)), "PT1H1M30S");
        assert_eq!(iso8601(Duration::ZERO), "PT0S");
        assert!(session_duration(Duration::from_secs(299)).is_err());
        assert!(session_duration(Duration::from_secs(4 * 3600 + 1)).is_err());
        assert_eq!(
            session_duration(Duration::from_secs(3600)).ok().as_deref(),
            Some("PT1H")
        );
    }

    #[test]
    fn lenient_parse() {
        assert_eq!(Availability::parse("busy"), Availability::Busy);
        assert_eq!(Activity::parse("InACall"), Activity::InACall);
        assert_eq!(
            Activity::parse("focusing"),
            Activity::Other("focusing".into())
        );
        let p: Presence =
            serde_json::from_str(r#"{"id":"x","availability":"doNotDisturb","activity":"Presenting","@odata.context":"c"}"#)
                .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(p.availability, Availability::DoNotDisturb);
        assert_eq!(p.activity.as_str(), "Presenting");
    }
}
