//! Which kind of call an INVITE starts: a star code, an internal call or an external
//! one, and which party is "the other side". Pure functions over the wire layer's
//! views plus the configured patterns; no state of its own.
//!
//! Numbers are compared after normalisation ([`normalize_number`]): `%` escapes
//! resolved (`%2A78` is `*78`, RFC 3261 §19.1.4), user parameters such as
//! `;phone-context=` cut off, and the visual separators of RFC 3966 (`-`, `.`, `(`, `)`)
//! removed, so `tel:+1-212-555-0100` and `sip:+12125550100@pbx;user=phone` are one
//! number.

use std::fmt;

use regex::Regex;

use crate::sip::header::NameAddr;
use crate::sip::{Message, Scheme, Uri};

/// Where the caller of an incoming call is read from, in the configured order of trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// `P-Asserted-Identity` (RFC 3325).
    PAssertedIdentity,
    /// `Remote-Party-ID` (draft; Asterisk, Cisco, FreeSWITCH).
    RemotePartyId,
    /// `From`.
    From,
}

impl IdentitySource {
    /// The config spelling: `p-asserted-identity`, `remote-party-id`, `from`.
    pub fn from_config(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "p-asserted-identity" => Some(Self::PAssertedIdentity),
            "remote-party-id" => Some(Self::RemotePartyId),
            "from" => Some(Self::From),
            _ => None,
        }
    }

    /// The default order: P-Asserted-Identity, then Remote-Party-ID, then From.
    pub const DEFAULT_ORDER: [IdentitySource; 3] =
        [Self::PAssertedIdentity, Self::RemotePartyId, Self::From];
}

/// What a dialled star code does to DND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DndAction {
    /// Switch DND on.
    On,
    /// Switch DND off.
    Off,
    /// Flip it.
    Toggle,
}

/// The class of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallClass {
    /// A feature code (`*78`, `#21`, ...); never a call, maybe a DND change.
    StarCode(Option<DndAction>),
    /// Between two extensions of this PBX; never shown in Teams.
    Internal,
    /// With the outside world: what Teams is told about.
    External,
}

impl CallClass {
    /// Whether calls of this class make the extension busy in Teams.
    pub fn is_external(self) -> bool {
        self == Self::External
    }
}

impl fmt::Display for CallClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::StarCode(_) => "star-code",
            Self::Internal => "internal",
            Self::External => "external",
        })
    }
}

/// The rules that tell calls apart, from `[calls]` and `[dnd]`.
#[derive(Debug, Clone)]
pub struct ClassifyRules {
    /// Numbers of extensions and other internal destinations (besides the directory).
    pub internal_patterns: Vec<Regex>,
    /// Feature codes that do not start with `*` or `#`.
    pub feature_code_patterns: Vec<Regex>,
    /// Codes that switch DND on (exact match after normalisation).
    pub dnd_on_codes: Vec<String>,
    /// Codes that switch DND off.
    pub dnd_off_codes: Vec<String>,
    /// Codes that toggle DND.
    pub dnd_toggle_codes: Vec<String>,
    /// Where an incoming call's caller is read from, most trusted first.
    pub caller_identity: Vec<IdentitySource>,
}

/// The default internal-number pattern: 3 to 5 digits not starting with 0.
pub const DEFAULT_INTERNAL_PATTERN: &str = r"^[1-9]\d{2,4}$";

impl Default for ClassifyRules {
    fn default() -> Self {
        Self {
            internal_patterns: Regex::new(DEFAULT_INTERNAL_PATTERN)
                .map(|r| vec![r])
                .unwrap_or_default(),
            feature_code_patterns: Vec::new(),
            dnd_on_codes: vec!["*78".to_owned()],
            dnd_off_codes: vec!["*79".to_owned()],
            dnd_toggle_codes: vec!["*76".to_owned()],
            caller_identity: IdentitySource::DEFAULT_ORDER.to_vec(),
        }
    }
}

impl ClassifyRules {
    /// The class of a call to or from `number` (already normalised); `is_known`
    /// says whether it is an extension in the directory.
    pub fn classify(&self, number: &str, is_known: impl Fn(&str) -> bool) -> CallClass {
        if number.starts_with('*')
            || number.starts_with('#')
            || self
                .feature_code_patterns
                .iter()
                .any(|p| p.is_match(number))
        {
            return CallClass::StarCode(self.dnd_action(number));
        }
        if is_known(number) || self.internal_patterns.iter().any(|p| p.is_match(number)) {
            return CallClass::Internal;
        }
        CallClass::External
    }

    fn dnd_action(&self, number: &str) -> Option<DndAction> {
        let matches = |codes: &[String]| codes.iter().any(|c| c == number);
        if matches(&self.dnd_on_codes) {
            Some(DndAction::On)
        } else if matches(&self.dnd_off_codes) {
            Some(DndAction::Off)
        } else if matches(&self.dnd_toggle_codes) {
            Some(DndAction::Toggle)
        } else {
            None
        }
    }

    /// The caller of an incoming call, normalised, from the most trusted identity
    /// header present. Forwarded calls (Diversion, History-Info) keep their original
    /// caller: the diverting party is never taken as the caller.
    pub fn caller_of(&self, invite: &Message) -> Option<String> {
        for source in &self.caller_identity {
            let found = match source {
                IdentitySource::PAssertedIdentity => best_identity(invite.p_asserted_identities()),
                IdentitySource::RemotePartyId => invite
                    .remote_party_ids()
                    .find_map(Result::ok)
                    .map(number_of),
                IdentitySource::From => invite.from().and_then(Result::ok).map(number_of),
            };
            if let Some(number) = found.flatten() {
                return Some(number);
            }
        }
        None
    }
}

/// Of the (at most two) P-Asserted-Identity values, the SIP one with a user part, else
/// the tel one.
fn best_identity<'a>(
    values: impl Iterator<Item = Result<NameAddr<'a>, crate::sip::ParseError>>,
) -> Option<Option<String>> {
    let mut best = None;
    for value in values.filter_map(Result::ok) {
        let number = number_of(value);
        if number.is_some() {
            if value.uri().scheme() == Scheme::Tel {
                best = best.or(Some(number));
            } else {
                return Some(number);
            }
        }
    }
    best
}

fn number_of(addr: NameAddr<'_>) -> Option<String> {
    normalize_uri_user(addr.uri())
}

/// The normalised user part (SIP, SIPS) or number (tel) of a URI.
pub fn normalize_uri_user(uri: &Uri<'_>) -> Option<String> {
    match uri.scheme() {
        Scheme::Sip | Scheme::Sips | Scheme::Tel => uri.user().map(normalize_number),
        Scheme::Other => None,
    }
}

/// Resolves `%` escapes, cuts user parameters (`;phone-context=...`, `;isub=...`) and
/// removes RFC 3966 visual separators.
pub fn normalize_number(user: &[u8]) -> String {
    let unescaped = crate::sip::uri::unescape(user);
    let text = String::from_utf8_lossy(&unescaped);
    let number = text.split(';').next().unwrap_or_default();
    let mut out = String::with_capacity(number.len());
    out.extend(
        number
            .chars()
            .filter(|c| !matches!(c, '-' | '.' | '(' | ')' | ' ')),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_normalise() {
        assert_eq!(normalize_number(b"%2A78"), "*78");
        assert_eq!(normalize_number(b"%2a78"), "*78");
        assert_eq!(normalize_number(b"21%23"), "21#");
        assert_eq!(normalize_number(b"+1-212-555-0100"), "+12125550100");
        assert_eq!(
            normalize_number(b"+358-555-1234567;postd=pp22"),
            "+3585551234567"
        );
        assert_eq!(normalize_number(b"(030)%20123"), "030123");
    }

    #[test]
    fn classes() {
        let rules = ClassifyRules::default();
        let unknown = |_: &str| false;
        assert_eq!(
            rules.classify("*78", unknown),
            CallClass::StarCode(Some(DndAction::On))
        );
        assert_eq!(
            rules.classify("*79", unknown),
            CallClass::StarCode(Some(DndAction::Off))
        );
        assert_eq!(
            rules.classify("*76", unknown),
            CallClass::StarCode(Some(DndAction::Toggle))
        );
        assert_eq!(rules.classify("#21", unknown), CallClass::StarCode(None));
        assert_eq!(rules.classify("201", unknown), CallClass::Internal);
        assert_eq!(rules.classify("20001", unknown), CallClass::Internal);
        assert_eq!(rules.classify("0301234567", unknown), CallClass::External);
        assert_eq!(rules.classify("+4930123456", unknown), CallClass::External);
        assert_eq!(rules.classify("alice", unknown), CallClass::External);
        assert_eq!(
            rules.classify("alice", |n| n == "alice"),
            CallClass::Internal
        );
    }

    #[test]
    fn feature_patterns_without_star() {
        let rules = ClassifyRules {
            feature_code_patterns: vec![Regex::new("^9[0-9]$").unwrap()],
            ..ClassifyRules::default()
        };
        assert_eq!(rules.classify("97", |_| false), CallClass::StarCode(None));
        assert_eq!(rules.classify("970", |_| false), CallClass::Internal);
    }

    fn invite(extra: &str) -> Message {
        let text = format!(
            "INVITE sip:201@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\n\
             From: <sip:600@pbx>;tag=a\r\nTo: <sip:201@pbx>\r\nCall-ID: c\r\n\
             CSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Message::parse(bytes::Bytes::from(text)).unwrap()
    }

    #[test]
    fn caller_by_trust_order() {
        let rules = ClassifyRules::default();
        let pai = invite(
            "P-Asserted-Identity: <tel:+49-30-555123>\r\n\
             P-Asserted-Identity: \"Q\" <sip:+4930555123@pbx;user=phone>\r\n\
             Remote-Party-ID: <sip:777@pbx>;party=calling\r\n\
             Diversion: <sip:600@pbx>;reason=unconditional\r\n",
        );
        assert_eq!(rules.caller_of(&pai).as_deref(), Some("+4930555123"));
        let rpid = invite("Remote-Party-ID: <sip:777@pbx>;party=calling\r\n");
        assert_eq!(rules.caller_of(&rpid).as_deref(), Some("777"));
        assert_eq!(rules.caller_of(&invite("")).as_deref(), Some("600"));
        let from_first = ClassifyRules {
            caller_identity: vec![IdentitySource::From, IdentitySource::PAssertedIdentity],
            ..ClassifyRules::default()
        };
        assert_eq!(from_first.caller_of(&pai).as_deref(), Some("600"));
    }
}
