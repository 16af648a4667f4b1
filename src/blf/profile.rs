//! Per-phone rendering rules for the dialog-info documents the proxy sends: a
//! [`PhoneProfile`] per phone family, chosen from the watcher's `User-Agent`
//! ([`PhoneProfile::from_user_agent`]) or by name from configuration
//! ([`PhoneProfile::from_str`](std::str::FromStr)).
//!
//! Every rule and where it comes from (`../shared/reference/sip.md`):
//!
//! | rule | families | source |
//! |---|---|---|
//! | [`idle_as_terminated_dialog`](PhoneProfile::idle_as_terminated_dialog): an idle extension is one `<dialog id=…><state>terminated</state></dialog>`, never an empty `<dialog-info>` | Yealink | §2.2 "Quirk: OpenSIPS PR #1193 … some Yealink firmware mishandles an empty `<dialog-info/>`"; Yealink's own idle example is `<dialog id="0000"><state>terminated</state></dialog>` |
//! | | Grandstream | §2.5 "Kamailio PR #99 … the id element is mandatory. Grandstream phones are affected" → always a `<dialog id>`; §6 checklist item 2 names Yealink and Grandstream |
//! | | all the others (generic, Snom, Polycom, Cisco SPA) | §6 checklist item 2 ("Always send an explicit … terminated … for idle rather than an empty document") and §3.2 (`force_dummy_dialog`: "Bria expects at least one"). RFC-conforming phones read it as idle too, so it is the safe default; a config override can turn it off |
//! | [`always_local_identity`](PhoneProfile::always_local_identity): every dialog carries `<local><identity>` (the watched extension's URI when the PBX gave none) | Polycom | the rule; sip.md §2.3 marks "Polycom needs `confirmed` with local identity" **UNCONFIRMED** (no source found). Harmless for other phones |
//! | [`single_dialog`](PhoneProfile::single_dialog): several dialogs collapse to the one with the highest priority, confirmed > early > proceeding > trying > terminated | Cisco SPA / MPP / Linksys | §2.6 "Linksys SPA962 … crashes on dialog-info with multiple `<dialog>` elements (use `force_single_dialog`)"; the priority order is the issue's. Kamailio's `force_single_dialog` ranks early *above* confirmed (§3.2), so a ringing second call would win there; here the call in progress wins |
//! | [`early_initiator_as_confirmed`](PhoneProfile::early_initiator_as_confirmed): an `early` dialog the extension itself started (`direction="initiator"`) is shown `confirmed` | Cisco SPA / MPP / Linksys | §2.6 "LED blinks on `early` even for the caller side (use `caller_confirmed`)"; §3.1 pua_dialoginfo `caller_confirmed` "SPA962 workaround" |
//!
//! Snom (§2.4) needs nothing beyond the generic rules: its LED follows the RFC states.

use std::fmt;
use std::str::FromStr;

/// The phone families the proxy tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhoneFamily {
    /// Anything not recognised: RFC 4235 plus the safe idle form.
    Generic,
    /// Yealink T-series and others.
    Yealink,
    /// Grandstream GXP/GRP/GXV.
    Grandstream,
    /// Polycom SoundPoint/VVX, Poly.
    Polycom,
    /// Snom.
    Snom,
    /// Cisco SPA and MPP (3PCC) phones, Linksys and Sipura before them.
    CiscoSpa,
}

impl PhoneFamily {
    /// Every family, in declaration order.
    pub const ALL: [PhoneFamily; 6] = [
        Self::Generic,
        Self::Yealink,
        Self::Grandstream,
        Self::Polycom,
        Self::Snom,
        Self::CiscoSpa,
    ];

    /// The name configuration uses: `generic`, `yealink`, `grandstream`, `polycom`,
    /// `snom`, `cisco-spa`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Yealink => "yealink",
            Self::Grandstream => "grandstream",
            Self::Polycom => "polycom",
            Self::Snom => "snom",
            Self::CiscoSpa => "cisco-spa",
        }
    }

    /// The family a `User-Agent` value names (ASCII case-insensitive), or
    /// [`PhoneFamily::Generic`].
    ///
    /// Recognised: `Yealink …`; `Grandstream …`; `PolycomVVX-…`,
    /// `PolycomSoundPointIP-…`, `Poly…` at the start (Poly Edge, CCX); `snom…`;
    /// `Cisco/SPA…`, `Cisco-CP…-3PCC`, `Linksys/SPA…`, `Sipura/SPA…`.
    pub fn from_user_agent(user_agent: &[u8]) -> Self {
        let ua = user_agent.trim_ascii();
        let has = |word: &str| {
            ua.windows(word.len())
                .any(|w| w.eq_ignore_ascii_case(word.as_bytes()))
        };
        if has("yealink") {
            Self::Yealink
        } else if has("grandstream") {
            Self::Grandstream
        } else if has("polycom") || starts_with_ignore_case(ua, "poly") {
            Self::Polycom
        } else if has("snom") {
            Self::Snom
        } else if has("cisco") || has("linksys") || has("sipura") {
            Self::CiscoSpa
        } else {
            Self::Generic
        }
    }
}

fn starts_with_ignore_case(text: &[u8], prefix: &str) -> bool {
    text.len() >= prefix.len() && text[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

impl fmt::Display for PhoneFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A profile name configuration gave that names no family.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown phone profile {0:?} (known: generic, yealink, grandstream, polycom, snom, cisco-spa)"
)]
pub struct UnknownPhoneProfile(pub String);

impl FromStr for PhoneFamily {
    type Err = UnknownPhoneProfile;

    /// A family by name, ASCII case-insensitive, with a few aliases: `default` for
    /// generic, `poly` for polycom, `spa`, `cisco`, `mpp`, `linksys` for cisco-spa.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let name = name.trim().to_ascii_lowercase();
        let family = match name.as_str() {
            "generic" | "default" => Self::Generic,
            "yealink" => Self::Yealink,
            "grandstream" => Self::Grandstream,
            "polycom" | "poly" => Self::Polycom,
            "snom" => Self::Snom,
            "cisco-spa" | "cisco_spa" | "spa" | "cisco" | "mpp" | "linksys" => Self::CiscoSpa,
            _ => return Err(UnknownPhoneProfile(name)),
        };
        Ok(family)
    }
}

/// How to shape the dialog-info documents one watcher gets (see the module
/// documentation for each rule's source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct PhoneProfile {
    /// The family the rules were taken from.
    pub family: PhoneFamily,
    /// Idle is an explicit terminated `<dialog>`, not an empty document.
    pub idle_as_terminated_dialog: bool,
    /// Every dialog carries a local identity.
    pub always_local_identity: bool,
    /// At most one `<dialog>` per document.
    pub single_dialog: bool,
    /// `early` dialogs the extension started are shown `confirmed`.
    pub early_initiator_as_confirmed: bool,
}

impl PhoneProfile {
    /// The rules for `family`.
    pub const fn for_family(family: PhoneFamily) -> Self {
        let spa = matches!(family, PhoneFamily::CiscoSpa);
        Self {
            family,
            idle_as_terminated_dialog: true,
            always_local_identity: matches!(family, PhoneFamily::Polycom),
            single_dialog: spa,
            early_initiator_as_confirmed: spa,
        }
    }

    /// The profile for a watcher's `User-Agent` ([`PhoneFamily::from_user_agent`]).
    pub fn from_user_agent(user_agent: &[u8]) -> Self {
        Self::for_family(PhoneFamily::from_user_agent(user_agent))
    }

    /// The configured profile name when there is one, else the one the `User-Agent`
    /// suggests, else generic.
    pub fn choose(
        configured: Option<&str>,
        user_agent: Option<&[u8]>,
    ) -> Result<Self, UnknownPhoneProfile> {
        match configured {
            Some(name) => name.parse(),
            None => Ok(user_agent.map_or(Self::default(), Self::from_user_agent)),
        }
    }

    /// The family's name.
    pub fn name(&self) -> &'static str {
        self.family.name()
    }
}

impl Default for PhoneProfile {
    fn default() -> Self {
        Self::for_family(PhoneFamily::Generic)
    }
}

impl FromStr for PhoneProfile {
    type Err = UnknownPhoneProfile;

    /// The profile of a family name ([`PhoneFamily::from_str`]).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        name.parse().map(Self::for_family)
    }
}

impl TryFrom<String> for PhoneProfile {
    type Error = UnknownPhoneProfile;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_pick_families() {
        let cases: &[(&str, PhoneFamily)] = &[
            ("Yealink SIP-T27P 45.80.0.20", PhoneFamily::Yealink),
            ("yealink SIP-T54W 96.86.0.100", PhoneFamily::Yealink),
            ("Grandstream GXP2170 1.0.11.6", PhoneFamily::Grandstream),
            ("PolycomVVX-VVX_410-UA/5.9.5.0614", PhoneFamily::Polycom),
            (
                "PolycomSoundPointIP-SPIP_550-UA/4.0.1",
                PhoneFamily::Polycom,
            ),
            ("PolyEdge-Edge_E450-UA/8.0.0", PhoneFamily::Polycom),
            ("snom320/8.7.3.25", PhoneFamily::Snom),
            ("Cisco/SPA504G-7.6.2", PhoneFamily::CiscoSpa),
            ("Cisco-CP8841-3PCC/11.3.1", PhoneFamily::CiscoSpa),
            ("Linksys/SPA942-6.1.5(a)", PhoneFamily::CiscoSpa),
            ("Sipura/SPA841-3.1.7", PhoneFamily::CiscoSpa),
            ("Zoiper rv2.10", PhoneFamily::Generic),
            ("", PhoneFamily::Generic),
        ];
        for (ua, family) in cases {
            assert_eq!(PhoneFamily::from_user_agent(ua.as_bytes()), *family, "{ua}");
        }
    }

    #[test]
    fn rules_per_family() {
        let yealink = PhoneProfile::for_family(PhoneFamily::Yealink);
        assert!(yealink.idle_as_terminated_dialog && !yealink.single_dialog);
        let polycom = PhoneProfile::from_user_agent(b"PolycomVVX-VVX_410-UA/5.9");
        assert!(polycom.always_local_identity);
        let spa = PhoneProfile::from_user_agent(b"Cisco/SPA504G-7.6.2");
        assert!(spa.single_dialog && spa.early_initiator_as_confirmed);
        let generic = PhoneProfile::default();
        assert!(generic.idle_as_terminated_dialog);
        assert!(!generic.single_dialog && !generic.always_local_identity);
    }

    #[test]
    fn names_and_overrides() {
        for family in PhoneFamily::ALL {
            assert_eq!(family.name().parse::<PhoneFamily>(), Ok(family));
            assert_eq!(family.to_string(), family.name());
        }
        assert_eq!("  SPA ".parse::<PhoneFamily>(), Ok(PhoneFamily::CiscoSpa));
        assert_eq!("Poly".parse::<PhoneFamily>(), Ok(PhoneFamily::Polycom));
        assert!("nokia".parse::<PhoneProfile>().is_err());
        assert_eq!(
            PhoneProfile::choose(Some("yealink"), Some(b"Cisco/SPA504G")).map(|p| p.family),
            Ok(PhoneFamily::Yealink)
        );
        assert_eq!(
            PhoneProfile::choose(None, Some(b"Cisco/SPA504G")).map(|p| p.family),
            Ok(PhoneFamily::CiscoSpa)
        );
        assert_eq!(
            PhoneProfile::choose(None, None),
            Ok(PhoneProfile::default())
        );
        assert_eq!(PhoneProfile::for_family(PhoneFamily::Snom).name(), "snom");
    }

    #[test]
    fn profiles_read_from_configuration() {
        #[derive(serde::Deserialize)]
        struct Config {
            profile: PhoneProfile,
        }
        let config: Config = toml::from_str("profile = \"grandstream\"").unwrap();
        assert_eq!(config.profile.family, PhoneFamily::Grandstream);
        assert!(toml::from_str::<Config>("profile = \"nokia\"").is_err());
    }
}
