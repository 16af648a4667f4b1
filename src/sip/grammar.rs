//! Shared RFC 3261 §25 grammar pieces, as nom parsers over bytes.
//!
//! Header values handed to these parsers are slices of the message buffer. A folded
//! value still holds its `CRLF SP` continuation bytes, so every linear-white-space rule
//! here treats CR and LF as white space: inside one header value they can only come
//! from folding, which RFC 3261 §7.3.1 makes equivalent to a single SP.

use nom::{
    IResult, Parser,
    branch::alt,
    bytes::complete::{tag, take_while, take_while1},
    character::complete::digit1,
    combinator::{map_res, opt, recognize},
    sequence::{delimited, preceded},
};

/// Result of a grammar rule over a byte slice.
pub(crate) type Res<'a, T> = IResult<&'a [u8], T>;

/// Defines a byte class as a 256-entry table computed at compile time, and an inlined
/// predicate over it: the parser asks these questions once per input byte.
macro_rules! byte_class {
    ($(#[$doc:meta])* $vis:vis fn $name:ident / $table:ident = |$c:ident| $body:expr) => {
        static $table: [bool; 256] = {
            let mut table = [false; 256];
            let mut i = 0;
            while i < 256 {
                let $c = i as u8;
                table[i] = $body;
                i += 1;
            }
            table
        };
        $(#[$doc])*
        #[inline(always)]
        $vis fn $name(c: u8) -> bool {
            $table[c as usize]
        }
    };
}
pub(crate) use byte_class;

byte_class! {
    /// RFC 3261 `token` characters.
    pub(crate) fn is_token_char / TOKEN = |c| c.is_ascii_alphanumeric()
        || matches!(c, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~')
}

/// White space inside a header value: SP, HT, and the CR/LF of a fold.
#[inline(always)]
pub(crate) fn is_lws_char(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

byte_class! {
    /// Characters of a host name or IPv4 address (underscore tolerated: real devices use it).
    pub(crate) fn is_host_char / HOST = |c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_')
}

/// Optional linear white space (`SWS`).
pub(crate) fn sws(i: &[u8]) -> Res<'_, &[u8]> {
    take_while(is_lws_char)(i)
}

/// Mandatory linear white space (`LWS`).
pub(crate) fn lws(i: &[u8]) -> Res<'_, &[u8]> {
    take_while1(is_lws_char)(i)
}

/// `token`.
pub(crate) fn token(i: &[u8]) -> Res<'_, &[u8]> {
    take_while1(is_token_char)(i)
}

/// A separator character with optional white space on both sides (`SEMI`, `COLON`, ...).
pub(crate) fn sep(c: u8) -> impl Fn(&[u8]) -> Res<'_, &[u8]> {
    move |i| {
        let (i, _) = sws(i)?;
        let (i, matched) = tag(&[c][..])(i)?;
        let (i, _) = sws(i)?;
        Ok((i, matched))
    }
}

/// `quoted-string`: returns the slice *between* the quotes, escapes left in place.
pub(crate) fn quoted_string(i: &[u8]) -> Res<'_, &[u8]> {
    let (rest, _) = tag(&b"\""[..])(i)?;
    let mut pos = 0;
    while pos < rest.len() {
        match rest[pos] {
            b'"' => return Ok((&rest[pos + 1..], &rest[..pos])),
            b'\\' => {
                // quoted-pair: any octet except CR and LF may follow the backslash
                match rest.get(pos + 1) {
                    Some(b'\r' | b'\n') | None => break,
                    Some(_) => pos += 2,
                }
            }
            b'\r' | b'\n' => {
                // only allowed as part of a fold (CRLF followed by SP/HT)
                let next = rest.get(pos + 1).copied();
                if rest[pos] == b'\r' && next == Some(b'\n') {
                    pos += 1;
                    continue;
                }
                match next {
                    Some(b' ' | b'\t') => pos += 1,
                    _ => break,
                }
            }
            0x00..=0x08 | 0x0b | 0x0c | 0x0e..=0x1f | 0x7f => break,
            _ => pos += 1,
        }
    }
    Err(nom::Err::Error(nom::error::Error::new(
        &rest[pos.min(rest.len())..],
        nom::error::ErrorKind::Char,
    )))
}

/// Resolves `\x` escapes of a quoted string's inner bytes and folds LWS, as text.
pub fn unquote(inner: &[u8]) -> String {
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter().copied().peekable();
    while let Some(c) = bytes.next() {
        match c {
            b'\\' => {
                if let Some(escaped) = bytes.next() {
                    out.push(escaped);
                }
            }
            b'\r' | b'\n' => {}
            _ => out.push(c),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

byte_class! {
    /// Characters of a generic parameter value that is not quoted: token characters plus
    /// `:` `[` `]` (hosts and IPv6 references) and `/` `@` `?` `<` `>` (tolerated from
    /// real devices).
    fn is_param_value_char / PARAM_VALUE = |c| c.is_ascii_alphanumeric()
        || matches!(c, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            | b':' | b'[' | b']' | b'/' | b'@' | b'?' | b'<' | b'>')
}

/// `*( SEMI generic-param )`: returns the whole raw parameter text, leading `;` included.
///
/// Hand-written rather than composed from nom combinators: every Via, address and
/// Event value goes through here, so it is on the proxy's per-message path. A
/// parameter that does not parse is left unconsumed (the caller then sees the rest).
pub(crate) fn generic_params(i: &[u8]) -> Res<'_, &[u8]> {
    let skip_lws = |mut p: usize| {
        while p < i.len() && is_lws_char(i[p]) {
            p += 1;
        }
        p
    };
    let mut done = 0;
    loop {
        let mut p = skip_lws(done);
        if i.get(p) != Some(&b';') {
            break;
        }
        p = skip_lws(p + 1);
        let name_start = p;
        while p < i.len() && is_token_char(i[p]) {
            p += 1;
        }
        if p == name_start {
            break;
        }
        let name_end = p;
        let q = skip_lws(p);
        if i.get(q) == Some(&b'=') {
            let v = skip_lws(q + 1);
            if i.get(v) == Some(&b'"') {
                match quoted_string(&i[v..]) {
                    Ok((rest, _)) => p = i.len() - rest.len(),
                    Err(_) => break,
                }
            } else {
                let mut e = v;
                while e < i.len() && is_param_value_char(i[e]) {
                    e += 1;
                }
                if e == v {
                    break;
                }
                p = e;
            }
        } else {
            p = name_end;
        }
        done = p;
    }
    Ok((&i[done..], &i[..done]))
}

/// A decimal number that must fit `T` (leading zeros allowed).
pub(crate) fn decimal<T: TryFrom<u64>>(i: &[u8]) -> Res<'_, T> {
    map_res(digit1, |digits: &[u8]| {
        let value = digits.iter().try_fold(0u64, |value, &d| {
            value.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        value.and_then(|v| T::try_from(v).ok()).ok_or(())
    })
    .parse(i)
}

/// `delta-seconds`, saturating at `u32::MAX` for overlarge values (RFC 3261 §20.19
/// lets a receiver treat any huge expiry as the largest it supports).
pub(crate) fn delta_seconds(i: &[u8]) -> Res<'_, u32> {
    let (rest, digits) = digit1(i)?;
    let mut value: u64 = 0;
    for d in digits {
        value = value.saturating_mul(10).saturating_add(u64::from(d - b'0'));
    }
    Ok((rest, u32::try_from(value).unwrap_or(u32::MAX)))
}

/// `host [ ":" port ]` as used by Via sent-by; IPv6 references in brackets.
pub(crate) fn host_port(i: &[u8]) -> Res<'_, (&[u8], Option<u16>)> {
    let (i, host) = alt((
        recognize(delimited(
            tag(&b"["[..]),
            take_while1(|c: u8| c.is_ascii_hexdigit() || c == b':' || c == b'.'),
            tag(&b"]"[..]),
        )),
        take_while1(is_host_char),
    ))
    .parse(i)?;
    let (i, port) = opt(preceded(sep(b':'), decimal::<u16>)).parse(i)?;
    Ok((i, (host, port)))
}

/// Runs `parser` over a whole header value: surrounding white space allowed, nothing
/// else may remain. On failure returns the offset (within `value`) where it stopped.
pub(crate) fn all_of<'a, T>(
    value: &'a [u8],
    parser: impl FnOnce(&'a [u8]) -> Res<'a, T>,
) -> Result<T, usize> {
    let offset_of = |rest: &[u8]| value.len() - rest.len();
    let (rest, _) = sws(value).map_err(|_| 0usize)?;
    match parser(rest) {
        Ok((rest, out)) => {
            let (rest, _) = sws(rest).map_err(|_| offset_of(rest))?;
            if rest.is_empty() {
                Ok(out)
            } else {
                Err(offset_of(rest))
            }
        }
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(offset_of(e.input)),
        Err(nom::Err::Incomplete(_)) => Err(value.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_strings_keep_escapes_and_stop_at_the_closing_quote() {
        let (rest, inner) = quoted_string(br#""J Rosenberg \\\"" <x>"#).unwrap();
        assert_eq!(inner, br#"J Rosenberg \\\""#);
        assert_eq!(rest, b" <x>");
        assert_eq!(unquote(inner), r#"J Rosenberg \""#);
        assert!(quoted_string(b"\"unterminated <sip:a@b>").is_err());
    }

    #[test]
    fn params_accept_folded_white_space() {
        let (rest, raw) = generic_params(b" ;\r\n  tag = 98asjd8 ; x").unwrap();
        assert_eq!(rest, b"");
        assert_eq!(raw, b" ;\r\n  tag = 98asjd8 ; x");
        let (rest, _) = generic_params(b";;").unwrap();
        assert_eq!(rest, b";;", "an empty parameter is not consumed");
    }

    #[test]
    fn decimals_must_fit_their_type() {
        assert_eq!(decimal::<u8>(b"255;x").unwrap(), (&b";x"[..], 255));
        assert!(decimal::<u8>(b"256").is_err());
        assert_eq!(decimal::<u16>(b"0065535").unwrap().1, 65535);
        assert!(decimal::<u16>(b"65536").is_err());
        assert!(decimal::<u16>(b"+5").is_err(), "digits only");
    }

    #[test]
    fn overlarge_delta_seconds_saturate() {
        let (_, v) = delta_seconds(b"100000000000000000000000").unwrap();
        assert_eq!(v, u32::MAX);
        assert!(decimal::<u32>(b"36893488147419103232").is_err());
    }
}
