//! Addresses: `[display-name] <URI> *(;param)` or a bare URI with header parameters
//! (RFC 3261 §20.10, §20.20, §20.39). Used by From, To, Contact, Route, Record-Route,
//! Path, P-Asserted-Identity, Remote-Party-ID, Diversion, History-Info.
//!
//! Without angle brackets a URI ends at the first `;` (what follows are header
//! parameters), and it may not hold `?` or `,` (RFC 3261 §20: such URIs must be
//! enclosed in `<>`).

use crate::sip::grammar::{generic_params, is_lws_char, is_token_char, quoted_string, unquote};
use crate::sip::params::Params;
use crate::sip::uri::Uri;

/// A parsed address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    display: Option<&'a [u8]>,
    uri: Uri<'a>,
    bracketed: bool,
    params: Params<'a>,
}

/// One Contact value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactValue<'a> {
    /// `Contact: *` (REGISTER: remove every binding).
    Wildcard,
    /// An address.
    Address(NameAddr<'a>),
}

impl<'a> ContactValue<'a> {
    /// The address, unless this is the wildcard.
    pub fn address(&self) -> Option<&NameAddr<'a>> {
        match self {
            Self::Wildcard => None,
            Self::Address(a) => Some(a),
        }
    }
}

/// Parses one Contact value: `*` or an address.
pub fn parse_contact(value: &[u8]) -> Result<ContactValue<'_>, usize> {
    let start = value
        .iter()
        .position(|&c| !is_lws_char(c))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&c| !is_lws_char(c))
        .map_or(start, |e| e + 1);
    if &value[start..end] == b"*" {
        return Ok(ContactValue::Wildcard);
    }
    NameAddr::parse(value).map(ContactValue::Address)
}

fn skip_lws(v: &[u8], mut i: usize) -> usize {
    while i < v.len() && is_lws_char(v[i]) {
        i += 1;
    }
    i
}

impl<'a> NameAddr<'a> {
    /// Parses an address in either form.
    pub fn parse(value: &'a [u8]) -> Result<Self, usize> {
        Self::parse_inner(value, false)
    }

    /// Parses an address that must be in `<>` (Route, Record-Route, Path,
    /// History-Info: their grammar is `name-addr`, never a bare URI).
    pub fn parse_bracketed(value: &'a [u8]) -> Result<Self, usize> {
        Self::parse_inner(value, true)
    }

    fn parse_inner(v: &'a [u8], require_brackets: bool) -> Result<Self, usize> {
        let mut i = skip_lws(v, 0);
        let mut display = None;
        let lt;
        if v.get(i) == Some(&b'"') {
            let (rest, inner) = quoted_string(&v[i..]).map_err(|_| i)?;
            let after = v.len() - rest.len();
            display = Some(&v[i..after]);
            let _ = inner;
            i = skip_lws(v, after);
            if v.get(i) != Some(&b'<') {
                return Err(i);
            }
            lt = Some(i);
        } else if v.get(i) == Some(&b'<') {
            lt = Some(i);
        } else {
            // *(token LWS) before '<', or else a bare URI
            let display_start = i;
            let mut j = i;
            let mut last_token_end = i;
            let mut found = None;
            loop {
                let tok_start = j;
                while j < v.len() && is_token_char(v[j]) {
                    j += 1;
                }
                if j == tok_start {
                    break;
                }
                last_token_end = j;
                j = skip_lws(v, j);
                if v.get(j) == Some(&b'<') {
                    found = Some(j);
                    break;
                }
                if j == last_token_end {
                    break; // not followed by white space: not a display name
                }
            }
            match found {
                Some(at) => {
                    display = Some(&v[display_start..last_token_end]);
                    lt = Some(at);
                }
                None => lt = None,
            }
        }
        let (uri, after_uri, bracketed) = match lt {
            Some(lt) => {
                let close = v[lt + 1..].iter().position(|&c| c == b'>').ok_or(v.len())?;
                let uri_text = &v[lt + 1..lt + 1 + close];
                let uri = Uri::parse(uri_text).map_err(|at| lt + 1 + at)?;
                (uri, lt + 1 + close + 1, true)
            }
            None => {
                if require_brackets {
                    return Err(i);
                }
                let end = v[i..]
                    .iter()
                    .position(|&c| c == b';' || is_lws_char(c))
                    .map_or(v.len(), |p| i + p);
                let uri_text = &v[i..end];
                if let Some(bad) = uri_text.iter().position(|&c| c == b'?' || c == b',') {
                    return Err(i + bad);
                }
                let uri = Uri::parse(uri_text).map_err(|at| i + at)?;
                (uri, end, false)
            }
        };
        let (rest, params) = generic_params(&v[after_uri..]).map_err(|_| after_uri)?;
        let tail = v.len() - rest.len();
        let end = skip_lws(v, tail);
        if end != v.len() {
            return Err(end);
        }
        Ok(Self {
            display,
            uri,
            bracketed,
            params: Params::new(params),
        })
    }

    /// The display name as written (quotes included when quoted).
    pub fn display_raw(&self) -> Option<&'a [u8]> {
        self.display
    }

    /// The display name as text: quotes removed, escapes resolved, folds dropped.
    pub fn display_name(&self) -> Option<String> {
        let raw = self.display?;
        Some(
            match raw.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\"")) {
                Some(inner) => unquote(inner),
                None => String::from_utf8_lossy(raw).into_owned(),
            },
        )
    }

    /// The URI.
    pub fn uri(&self) -> &Uri<'a> {
        &self.uri
    }

    /// Whether the URI was enclosed in `<>`.
    pub fn is_bracketed(&self) -> bool {
        self.bracketed
    }

    /// Header parameters (after the URI).
    pub fn params(&self) -> Params<'a> {
        self.params
    }

    /// The `tag` parameter (From/To).
    pub fn tag(&self) -> Option<&'a [u8]> {
        self.params.value("tag")
    }

    /// The `expires` parameter (Contact), saturating for overlarge values.
    pub fn expires(&self) -> Option<u32> {
        self.params.value("expires").and_then(|v| {
            crate::sip::grammar::delta_seconds(v)
                .ok()
                .filter(|(rest, _)| rest.is_empty())
                .map(|(_, n)| n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_display_and_folded_params() {
        let a = NameAddr::parse(
            b"\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        )
        .unwrap();
        assert_eq!(a.display_name().unwrap(), "J Rosenberg \\\"");
        assert_eq!(a.uri().as_bytes(), b"sip:jdrosen@example.com");
        assert_eq!(a.tag(), Some(&b"98asjd8"[..]));
    }

    #[test]
    fn token_display_without_space() {
        let a = NameAddr::parse(b"caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(a.display_name().unwrap(), "caller");
        assert_eq!(a.tag(), Some(&b"323"[..]));
    }

    #[test]
    fn bare_uri_takes_header_params() {
        let a = NameAddr::parse(b"sip:+16505552222@ss1.example.net;user=phone").unwrap();
        assert!(!a.is_bracketed());
        assert!(a.uri().params().is_empty());
        assert_eq!(a.params().value("user"), Some(&b"phone"[..]));
        assert!(NameAddr::parse(b"sip:user@example.com?Route=%3Csip:x%3E").is_err());
        assert!(NameAddr::parse_bracketed(b"sip:p.example.com;lr").is_err());
    }

    #[test]
    fn rejects_broken_addresses() {
        assert!(NameAddr::parse(b"\"Mr. J. User <sip:j.user@example.com>").is_err());
        assert!(NameAddr::parse(b"Watson, Thomas <sip:t.watson@example.org>").is_err());
        assert!(NameAddr::parse(b"\"Watson, Thomas\" < sip:t.watson@example.org >").is_err());
        assert!(NameAddr::parse(b"<sip:a@b>;;").is_err());
    }

    #[test]
    fn contact_wildcard() {
        assert_eq!(parse_contact(b" * ").unwrap(), ContactValue::Wildcard);
        let c = parse_contact(b"<sip:a@b>;expires=10000000000000").unwrap();
        assert_eq!(c.address().unwrap().expires(), Some(u32::MAX));
    }
}
