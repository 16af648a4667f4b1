//! SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), and opaque URIs of other schemes.
//!
//! [`Uri::parse`] checks the grammar and records where each part is; it never copies.
//! The user part keeps its `%` escapes: [`unescape`] resolves them when a caller needs
//! the real characters (star codes such as `%2A78`, RFC 4475 §3.1.1.3).

use std::borrow::Cow;
use std::ops::Range;

use super::grammar::{byte_class, is_host_char};
use super::params::Params;
use super::{at_u32, range_u32};

/// The URI scheme, recognised case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `sip:`
    Sip,
    /// `sips:`
    Sips,
    /// `tel:` (RFC 3966)
    Tel,
    /// Any other syntactically valid scheme (`im:`, `http:`, ...), kept opaque.
    Other,
}

/// A parsed URI: borrowed slices of the original text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    raw: &'a [u8],
    scheme: Scheme,
    scheme_raw: &'a [u8],
    user: Option<&'a [u8]>,
    password: Option<&'a [u8]>,
    host: &'a [u8],
    port: Option<u16>,
    params: Params<'a>,
    headers: Option<&'a [u8]>,
}

/// Where each part of a parsed [`Uri`] lies in the buffer it was parsed from (as
/// `ViaParts` does for a Via): a message remembers a URI it parsed without borrowing
/// from itself, and rebuilds the view without parsing again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UriParts {
    raw: Range<u32>,
    scheme: Scheme,
    scheme_raw: Range<u32>,
    user: Option<Range<u32>>,
    password: Option<Range<u32>>,
    host: Range<u32>,
    port: Option<u16>,
    params: Range<u32>,
    headers: Option<Range<u32>>,
}

impl UriParts {
    /// The view again, over the buffer the parts were taken from (a different buffer
    /// reads as empty parts, never a panic).
    pub(crate) fn view<'a>(&self, base: &'a [u8]) -> Uri<'a> {
        let at = |r: &Range<u32>| at_u32(base, r);
        Uri {
            raw: at(&self.raw),
            scheme: self.scheme,
            scheme_raw: at(&self.scheme_raw),
            user: self.user.as_ref().map(at),
            password: self.password.as_ref().map(at),
            host: at(&self.host),
            port: self.port,
            params: Params::new(at(&self.params)),
            headers: self.headers.as_ref().map(at),
        }
    }
}

byte_class! {
    /// Characters allowed unescaped in the user and password parts. RFC 3261 allows the
    /// unreserved and user-unreserved sets; `#` is tolerated because phones send star and
    /// hash codes unescaped.
    fn is_user_char / USER = |c| c.is_ascii_alphanumeric()
        || matches!(c, b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')' | b'%'
            | b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/' | b'#')
}

byte_class! {
    /// `paramchar` of a URI parameter (param-unreserved, unreserved, escaped).
    fn is_uri_param_char / URI_PARAM = |c| c.is_ascii_alphanumeric()
        || matches!(c, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$' | b'-' | b'_' | b'.'
            | b'!' | b'~' | b'*' | b'\'' | b'(' | b')' | b'%')
}

byte_class! {
    /// Characters of URI headers (`?name=value&...`): hnv-unreserved, unreserved, escaped.
    fn is_uri_header_char / URI_HEADER = |c| c.is_ascii_alphanumeric()
        || matches!(c, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$' | b'-' | b'_' | b'.'
            | b'!' | b'~' | b'*' | b'\'' | b'(' | b')' | b'%' | b'=' | b'?' | b'@' | b',' | b';')
}

/// Where the run of bytes of one class that starts at `from` ends.
#[inline]
fn run_end(bytes: &[u8], from: usize, class: impl Fn(u8) -> bool) -> usize {
    bytes
        .get(from..)
        .and_then(|tail| tail.iter().position(|&c| !class(c)))
        .map_or(bytes.len(), |n| from + n)
}

/// A port: one or more digits, at most 65535 (leading zeros allowed).
fn port_number(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() {
        return None;
    }
    let value = digits.iter().try_fold(0u32, |value, &d| {
        let value = value * 10 + u32::from(d - b'0');
        (value <= u32::from(u16::MAX)).then_some(value)
    })?;
    u16::try_from(value).ok()
}

fn is_scheme_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')
}

/// An opaque URI may hold any visible character except those that delimit it in a
/// header (`<`, `>`, `"`) and white space.
fn is_opaque_char(c: u8) -> bool {
    c > 0x20 && c != 0x7f && !matches!(c, b'<' | b'>' | b'"')
}

impl<'a> Uri<'a> {
    /// The parts' positions inside `base`, the buffer this view was parsed from.
    pub(crate) fn parts_in(&self, base: &[u8]) -> UriParts {
        let range = |part: &[u8]| range_u32(base, part);
        UriParts {
            raw: range(self.raw),
            scheme: self.scheme,
            scheme_raw: range(self.scheme_raw),
            user: self.user.map(range),
            password: self.password.map(range),
            host: range(self.host),
            port: self.port,
            params: range(self.params.as_bytes()),
            headers: self.headers.map(range),
        }
    }

    /// Parses a URI. On error returns the byte offset (within `raw`) where it failed.
    pub fn parse(raw: &'a [u8]) -> Result<Self, usize> {
        let colon = raw.iter().position(|&c| c == b':').ok_or(raw.len())?;
        let scheme_raw = &raw[..colon];
        if scheme_raw.is_empty()
            || !scheme_raw[0].is_ascii_alphabetic()
            || !scheme_raw.iter().all(|&c| is_scheme_char(c))
        {
            return Err(0);
        }
        let scheme = if scheme_raw.eq_ignore_ascii_case(b"sip") {
            Scheme::Sip
        } else if scheme_raw.eq_ignore_ascii_case(b"sips") {
            Scheme::Sips
        } else if scheme_raw.eq_ignore_ascii_case(b"tel") {
            Scheme::Tel
        } else {
            Scheme::Other
        };
        let rest_start = colon + 1;
        let rest = &raw[rest_start..];
        let mut uri = Uri {
            raw,
            scheme,
            scheme_raw,
            user: None,
            password: None,
            host: &[],
            port: None,
            params: Params::default(),
            headers: None,
        };
        match scheme {
            Scheme::Sip | Scheme::Sips => uri.parse_sip(rest, rest_start)?,
            Scheme::Tel => uri.parse_tel(rest, rest_start)?,
            Scheme::Other => {
                if rest.is_empty() {
                    return Err(rest_start);
                }
                if let Some(bad) = rest.iter().position(|&c| !is_opaque_char(c)) {
                    return Err(rest_start + bad);
                }
            }
        }
        Ok(uri)
    }

    fn parse_sip(&mut self, rest: &'a [u8], base: usize) -> Result<(), usize> {
        let mut pos = 0;
        if let Some(at) = memchr::memchr(b'@', rest) {
            let userinfo = &rest[..at];
            let (user, password) = match userinfo.iter().position(|&c| c == b':') {
                Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
                None => (userinfo, None),
            };
            if let Some(bad) = user.iter().position(|&c| !is_user_char(c)) {
                return Err(base + bad);
            }
            if let Some(password) = password {
                if let Some(bad) = password.iter().position(|&c| !is_user_char(c)) {
                    return Err(base + user.len() + 1 + bad);
                }
            }
            self.user = Some(user);
            self.password = password;
            pos = at + 1;
        }
        // host
        let host_start = pos;
        if rest.get(pos) == Some(&b'[') {
            let close = rest[pos..]
                .iter()
                .position(|&c| c == b']')
                .ok_or(base + pos)?;
            let inner = &rest[pos + 1..pos + close];
            if inner.is_empty()
                || !inner
                    .iter()
                    .all(|&c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
            {
                return Err(base + pos + 1);
            }
            pos += close + 1;
        } else {
            pos = run_end(rest, pos, is_host_char);
        }
        if pos == host_start {
            return Err(base + pos);
        }
        self.host = &rest[host_start..pos];
        // port
        if rest.get(pos) == Some(&b':') {
            pos += 1;
            let digits_start = pos;
            pos = run_end(rest, pos, |c| c.is_ascii_digit());
            let port = port_number(&rest[digits_start..pos]).ok_or(base + digits_start)?;
            self.port = Some(port);
        }
        // uri-parameters
        let params_start = pos;
        while rest.get(pos) == Some(&b';') {
            pos += 1;
            let name_start = pos;
            pos = run_end(rest, pos, is_uri_param_char);
            if pos == name_start {
                return Err(base + pos);
            }
            if rest.get(pos) == Some(&b'=') {
                pos += 1;
                let value_start = pos;
                pos = run_end(rest, pos, is_uri_param_char);
                if pos == value_start {
                    return Err(base + pos);
                }
            }
        }
        self.params = Params::new(&rest[params_start..pos]);
        // headers
        if rest.get(pos) == Some(&b'?') {
            pos += 1;
            let headers_start = pos;
            pos = run_end(rest, pos, is_uri_header_char);
            if pos == headers_start {
                return Err(base + pos);
            }
            self.headers = Some(&rest[headers_start..pos]);
        }
        if pos != rest.len() {
            return Err(base + pos);
        }
        Ok(())
    }

    fn parse_tel(&mut self, rest: &'a [u8], base: usize) -> Result<(), usize> {
        let end = rest.iter().position(|&c| c == b';').unwrap_or(rest.len());
        let number = &rest[..end];
        let is_tel_char = |c: u8| {
            c.is_ascii_hexdigit()
                || matches!(c, b'+' | b'-' | b'.' | b'(' | b')' | b'*' | b'#' | b'%')
        };
        if number.is_empty() {
            return Err(base);
        }
        if let Some(bad) = number.iter().position(|&c| !is_tel_char(c)) {
            return Err(base + bad);
        }
        let params = &rest[end..];
        let mut pos = 0;
        while pos < params.len() {
            // ';' name [ '=' value ]
            if params[pos] != b';' {
                return Err(base + end + pos);
            }
            pos += 1;
            let name_start = pos;
            while pos < params.len() && is_uri_param_char(params[pos]) {
                pos += 1;
            }
            if pos == name_start {
                return Err(base + end + pos);
            }
            if params.get(pos) == Some(&b'=') {
                pos += 1;
                let value_start = pos;
                while pos < params.len() && is_uri_param_char(params[pos]) {
                    pos += 1;
                }
                if pos == value_start {
                    return Err(base + end + pos);
                }
            }
        }
        self.user = Some(number);
        self.params = Params::new(params);
        Ok(())
    }

    /// The whole URI as on the wire.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
    /// The recognised scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }
    /// The scheme as written (for schemes this layer does not know).
    pub fn scheme_raw(&self) -> &'a [u8] {
        self.scheme_raw
    }
    /// The user part with its `%` escapes, or the number of a tel URI.
    pub fn user(&self) -> Option<&'a [u8]> {
        self.user
    }
    /// The user part with `%` escapes resolved.
    pub fn user_unescaped(&self) -> Option<Cow<'a, [u8]>> {
        self.user.map(unescape)
    }
    /// The password part of a SIP URI (deprecated by RFC 3261 but legal).
    pub fn password(&self) -> Option<&'a [u8]> {
        self.password
    }
    /// Host of a SIP/SIPS URI (an IPv6 reference keeps its brackets); empty otherwise.
    pub fn host(&self) -> &'a [u8] {
        self.host
    }
    /// Port of a SIP/SIPS URI, when given.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
    /// URI parameters (`;transport=tcp;lr`), or a tel URI's parameters.
    pub fn params(&self) -> Params<'a> {
        self.params
    }
    /// URI headers after `?`, as on the wire.
    pub fn headers(&self) -> Option<&'a [u8]> {
        self.headers
    }
}

/// Resolves `%XX` escapes. A `%` not followed by two hex digits is kept as it is
/// (RFC 4475 §3.1.1.5: `%` that is not an escape must not break the parser).
pub fn unescape(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'%') {
        return Cow::Borrowed(raw);
    }
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_parts() {
        let u = Uri::parse(b"sip:alice:pw@[2001:db8::1]:5061;transport=tls;lr?subject=hi").unwrap();
        assert_eq!(u.scheme(), Scheme::Sip);
        assert_eq!(u.user(), Some(&b"alice"[..]));
        assert_eq!(u.password(), Some(&b"pw"[..]));
        assert_eq!(u.host(), b"[2001:db8::1]");
        assert_eq!(u.port(), Some(5061));
        assert_eq!(u.params().value("transport"), Some(&b"tls"[..]));
        assert!(u.params().contains("lr"));
        assert_eq!(u.headers(), Some(&b"subject=hi"[..]));
    }

    #[test]
    fn ports_are_digits_up_to_65535() {
        assert_eq!(Uri::parse(b"sip:h:65535").unwrap().port(), Some(65535));
        assert_eq!(Uri::parse(b"sip:h:007;lr").unwrap().port(), Some(7));
        assert_eq!(Uri::parse(b"sip:h:65536"), Err(6));
        assert_eq!(Uri::parse(b"sip:h:99999999999999999999"), Err(6));
        assert_eq!(Uri::parse(b"sip:h:;lr"), Err(6), "a colon needs a port");
        assert_eq!(Uri::parse(b"sip:h:+5"), Err(6));
    }

    #[test]
    fn escapes_resolve_in_the_user_part() {
        let u = Uri::parse(b"sip:%2A78@pbx.example.com").unwrap();
        assert_eq!(u.user_unescaped().unwrap().as_ref(), b"*78");
        assert_eq!(unescape(b"%Z%45"), Cow::<[u8]>::Owned(b"%ZE".to_vec()));
        assert_eq!(unescape(b"a%4"), Cow::<[u8]>::Owned(b"a%4".to_vec()));
        assert_eq!(unescape(b"null-%00-null").as_ref(), b"null-\0-null");
    }

    #[test]
    fn tel_and_opaque_uris() {
        let t = Uri::parse(b"tel:+1-201-555-0123;phone-context=example.com").unwrap();
        assert_eq!(t.scheme(), Scheme::Tel);
        assert_eq!(t.user(), Some(&b"+1-201-555-0123"[..]));
        assert!(t.params().contains("phone-context"));
        let o = Uri::parse(b"soap.beep://192.0.2.103:3002").unwrap();
        assert_eq!(o.scheme(), Scheme::Other);
        assert_eq!(o.scheme_raw(), b"soap.beep");
    }

    #[test]
    fn rejects_malformed_uris() {
        assert!(Uri::parse(b"<sip:a@b>").is_err());
        assert!(Uri::parse(b"sip:a@b c").is_err());
        assert!(Uri::parse(b"sip:a@").is_err());
        assert!(Uri::parse(b"sip:a@b:99999").is_err());
        assert!(Uri::parse(b"sip:a@b;;lr").is_err());
        assert!(Uri::parse(b"nocolon").is_err());
    }
}
