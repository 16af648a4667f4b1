//! `Content-Type` (RFC 3261 §20.15): `type/subtype;params`.

use nom::{Parser, sequence::preceded};

use crate::sip::grammar::{all_of, generic_params, sep, token};
use crate::sip::params::Params;

/// A media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentType<'a> {
    media_type: &'a [u8],
    subtype: &'a [u8],
    params: Params<'a>,
}

impl<'a> ContentType<'a> {
    /// Parses a Content-Type value.
    pub fn parse(value: &'a [u8]) -> Result<Self, usize> {
        all_of(value, |i| {
            let (i, media_type) = token(i)?;
            let (i, subtype) = preceded(sep(b'/'), token).parse(i)?;
            let (i, params) = generic_params(i)?;
            Ok((
                i,
                ContentType {
                    media_type,
                    subtype,
                    params: Params::new(params),
                },
            ))
        })
    }
    /// The type, e.g. `application`.
    pub fn media_type(&self) -> &'a [u8] {
        self.media_type
    }
    /// The subtype, e.g. `dialog-info+xml`.
    pub fn subtype(&self) -> &'a [u8] {
        self.subtype
    }
    /// Parameters such as `charset` or `boundary`.
    pub fn params(&self) -> Params<'a> {
        self.params
    }
    /// Whether this is `type/subtype`, ignoring case.
    pub fn is(&self, media_type: &str, subtype: &str) -> bool {
        self.media_type.eq_ignore_ascii_case(media_type.as_bytes())
            && self.subtype.eq_ignore_ascii_case(subtype.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_media_types() {
        let c = ContentType::parse(b"multipart/mixed;boundary=unique-boundary-1").unwrap();
        assert!(c.is("Multipart", "MIXED"));
        assert_eq!(
            c.params().value("boundary"),
            Some(&b"unique-boundary-1"[..])
        );
        assert!(ContentType::parse(b"application").is_err());
    }
}
