//! Header names: case-insensitive recognition, compact forms (RFC 3261 §7.3.3 and the
//! registry of compact forms), canonical spelling, and which headers are comma lists.

macro_rules! header_names {
    ($( $variant:ident => $canonical:literal, $lower:literal ;)*) => {
        /// A header name the wire layer knows, or [`HeaderName::Other`].
        ///
        /// Recognition ignores case and maps compact forms (`v`, `i`, `m`, ...) to
        /// their full names; the bytes on the wire are never changed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum HeaderName {
            $(
                #[doc = concat!("`", $canonical, "`")]
                $variant,
            )*
            /// Any header this layer has no special knowledge of (kept byte-for-byte).
            Other,
        }

        impl HeaderName {
            /// The canonical spelling, e.g. `Call-ID`; `"Other"` for unknown names.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $canonical, )*
                    Self::Other => "Other",
                }
            }

        }

        /// Every known name with its canonical spelling (compact forms aside).
        const ALL: &[(HeaderName, &str)] = &[ $( (HeaderName::$variant, $canonical), )* ];
        #[cfg(test)]
        const ALL_LOWER: &[&[u8]] = &[ $( $lower, )* ];
    };
}

header_names! {
    Accept => "Accept", b"accept";
    AcceptContact => "Accept-Contact", b"accept-contact";
    AcceptEncoding => "Accept-Encoding", b"accept-encoding";
    AcceptLanguage => "Accept-Language", b"accept-language";
    AlertInfo => "Alert-Info", b"alert-info";
    Allow => "Allow", b"allow";
    AllowEvents => "Allow-Events", b"allow-events";
    Authorization => "Authorization", b"authorization";
    CallId => "Call-ID", b"call-id";
    CallInfo => "Call-Info", b"call-info";
    Contact => "Contact", b"contact";
    ContentDisposition => "Content-Disposition", b"content-disposition";
    ContentEncoding => "Content-Encoding", b"content-encoding";
    ContentLength => "Content-Length", b"content-length";
    ContentType => "Content-Type", b"content-type";
    CSeq => "CSeq", b"cseq";
    Date => "Date", b"date";
    Diversion => "Diversion", b"diversion";
    Event => "Event", b"event";
    Expires => "Expires", b"expires";
    From => "From", b"from";
    HistoryInfo => "History-Info", b"history-info";
    Identity => "Identity", b"identity";
    MaxForwards => "Max-Forwards", b"max-forwards";
    MinExpires => "Min-Expires", b"min-expires";
    MinSe => "Min-SE", b"min-se";
    PAssertedIdentity => "P-Asserted-Identity", b"p-asserted-identity";
    PPreferredIdentity => "P-Preferred-Identity", b"p-preferred-identity";
    Path => "Path", b"path";
    Privacy => "Privacy", b"privacy";
    ProxyAuthenticate => "Proxy-Authenticate", b"proxy-authenticate";
    ProxyAuthorization => "Proxy-Authorization", b"proxy-authorization";
    ProxyRequire => "Proxy-Require", b"proxy-require";
    RAck => "RAck", b"rack";
    Reason => "Reason", b"reason";
    RecordRoute => "Record-Route", b"record-route";
    ReferTo => "Refer-To", b"refer-to";
    ReferredBy => "Referred-By", b"referred-by";
    RejectContact => "Reject-Contact", b"reject-contact";
    RemotePartyId => "Remote-Party-ID", b"remote-party-id";
    Replaces => "Replaces", b"replaces";
    RequestDisposition => "Request-Disposition", b"request-disposition";
    Require => "Require", b"require";
    RetryAfter => "Retry-After", b"retry-after";
    Route => "Route", b"route";
    RSeq => "RSeq", b"rseq";
    Server => "Server", b"server";
    SessionExpires => "Session-Expires", b"session-expires";
    Subject => "Subject", b"subject";
    SubscriptionState => "Subscription-State", b"subscription-state";
    Supported => "Supported", b"supported";
    Timestamp => "Timestamp", b"timestamp";
    To => "To", b"to";
    Unsupported => "Unsupported", b"unsupported";
    UserAgent => "User-Agent", b"user-agent";
    Via => "Via", b"via";
    Warning => "Warning", b"warning";
    WwwAuthenticate => "WWW-Authenticate", b"www-authenticate";
}

/// Slots of the name hash table (a power of two).
const SLOTS: usize = 256;

/// Hash of a header name from its length and its first and last letters, ignoring
/// case. [`NAME_TABLE`] is checked at compile time to have no two known names in one
/// slot, so a lookup is one hash, one load and one case-insensitive compare.
const fn name_hash(len: usize, first: u8, last: u8) -> usize {
    let first = (first | 0x20) as usize;
    let last = (last | 0x20) as usize;
    (len ^ first.wrapping_mul(18) ^ last.wrapping_mul(41)) & (SLOTS - 1)
}

/// Slot → index into [`ALL`] plus one (0 = empty), built at compile time.
const NAME_TABLE: [u8; SLOTS] = {
    let mut table = [0u8; SLOTS];
    let mut i = 0;
    while i < ALL.len() {
        let name = ALL[i].1.as_bytes();
        let slot = name_hash(name.len(), name[0], name[name.len() - 1]);
        assert!(
            table[slot] == 0,
            "two header names share a hash slot: change name_hash"
        );
        table[slot] = (i + 1) as u8;
        i += 1;
    }
    table
};

impl HeaderName {
    /// Recognises a header name as it appears on the wire: any case, compact forms too.
    #[inline]
    pub fn from_bytes(name: &[u8]) -> Self {
        match name {
            [] => Self::Other,
            [letter] => Self::from_compact(*letter),
            [first, .., last] => {
                let entry = NAME_TABLE[name_hash(name.len(), *first, *last)];
                match ALL.get(usize::from(entry).wrapping_sub(1)) {
                    // names nearly always arrive in canonical case: try the plain compare first
                    Some((known, canonical))
                        if canonical.as_bytes() == name
                            || canonical.as_bytes().eq_ignore_ascii_case(name) =>
                    {
                        *known
                    }
                    _ => Self::Other,
                }
            }
        }
    }

    /// The full name for a one-letter compact form (RFC 3261 §7.3.3, IANA registry).
    pub fn from_compact(letter: u8) -> Self {
        match letter.to_ascii_lowercase() {
            b'a' => Self::AcceptContact,
            b'b' => Self::ReferredBy,
            b'c' => Self::ContentType,
            b'd' => Self::RequestDisposition,
            b'e' => Self::ContentEncoding,
            b'f' => Self::From,
            b'i' => Self::CallId,
            b'j' => Self::RejectContact,
            b'k' => Self::Supported,
            b'l' => Self::ContentLength,
            b'm' => Self::Contact,
            b'o' => Self::Event,
            b'r' => Self::ReferTo,
            b's' => Self::Subject,
            b't' => Self::To,
            b'u' => Self::AllowEvents,
            b'v' => Self::Via,
            b'x' => Self::SessionExpires,
            b'y' => Self::Identity,
            _ => Self::Other,
        }
    }

    /// Whether the grammar makes this header a comma-separated list whose values may
    /// be split and counted one by one (Via, Route, Contact, ...). Headers whose values
    /// may hold unquoted commas (Date, auth challenges, free text) are not lists.
    pub fn is_list(self) -> bool {
        matches!(
            self,
            Self::Accept
                | Self::AcceptContact
                | Self::AcceptEncoding
                | Self::AcceptLanguage
                | Self::AlertInfo
                | Self::Allow
                | Self::AllowEvents
                | Self::CallInfo
                | Self::Contact
                | Self::ContentEncoding
                | Self::Diversion
                | Self::HistoryInfo
                | Self::PAssertedIdentity
                | Self::PPreferredIdentity
                | Self::Path
                | Self::ProxyRequire
                | Self::Reason
                | Self::RecordRoute
                | Self::RejectContact
                | Self::RemotePartyId
                | Self::Require
                | Self::Route
                | Self::Supported
                | Self::Unsupported
                | Self::Via
                | Self::Warning
        )
    }

    /// Headers that RFC 3261 allows at most once in a message, with one value
    /// (checked by [`Message::validate`](super::Message::validate)).
    pub fn is_single(self) -> bool {
        matches!(
            self,
            Self::CallId
                | Self::ContentLength
                | Self::CSeq
                | Self::From
                | Self::MaxForwards
                | Self::To
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_compact_forms_map() {
        assert_eq!(
            HeaderName::from_bytes(b"MaX-fOrWaRdS"),
            HeaderName::MaxForwards
        );
        assert_eq!(HeaderName::from_bytes(b"cseq"), HeaderName::CSeq);
        assert_eq!(HeaderName::from_bytes(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"I"), HeaderName::CallId);
        assert_eq!(
            HeaderName::from_bytes(b"NewFangledHeader"),
            HeaderName::Other
        );
        assert_eq!(HeaderName::from_bytes(b"q"), HeaderName::Other);
        let long = [b'x'; 64];
        assert_eq!(HeaderName::from_bytes(&long), HeaderName::Other);
    }

    #[test]
    fn every_known_name_is_found_in_any_case() {
        assert_eq!(ALL.len(), ALL_LOWER.len());
        for ((name, canonical), lower) in ALL.iter().zip(ALL_LOWER) {
            assert_eq!(canonical.to_ascii_lowercase().as_bytes(), *lower);
            assert_eq!(HeaderName::from_bytes(canonical.as_bytes()), *name);
            assert_eq!(HeaderName::from_bytes(lower), *name);
            assert_eq!(
                HeaderName::from_bytes(canonical.to_ascii_uppercase().as_bytes()),
                *name
            );
            // a name one letter off is not mistaken for it
            let mut off = lower.to_vec();
            off[1] = if off[1] == b'z' { b'y' } else { b'z' };
            assert_ne!(HeaderName::from_bytes(&off), *name);
        }
    }

    #[test]
    fn every_compact_letter_maps_to_the_full_name() {
        for (letter, full) in [
            (b'i', "Call-ID"),
            (b'm', "Contact"),
            (b'e', "Content-Encoding"),
            (b'l', "Content-Length"),
            (b'c', "Content-Type"),
            (b'f', "From"),
            (b's', "Subject"),
            (b'k', "Supported"),
            (b't', "To"),
            (b'v', "Via"),
            (b'o', "Event"),
            (b'u', "Allow-Events"),
            (b'r', "Refer-To"),
            (b'b', "Referred-By"),
            (b'x', "Session-Expires"),
            (b'y', "Identity"),
            (b'a', "Accept-Contact"),
        ] {
            assert_eq!(HeaderName::from_compact(letter).as_str(), full);
            assert_eq!(HeaderName::from_bytes(full.as_bytes()).as_str(), full);
        }
    }
}
