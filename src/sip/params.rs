//! Parameter lists (`;name=value;flag`) of header values and URIs, read lazily.
//!
//! A [`Params`] holds the raw text as it is on the wire, already checked against its
//! grammar by the parser that produced it; iterating splits it again without
//! allocating. Names compare case-insensitively (RFC 3261 §7.3.1, §19.1.4).

use super::grammar::is_lws_char;

/// The raw parameter text of a header value or URI, leading `;` included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params<'a> {
    raw: &'a [u8],
}

/// One parameter: its name and, when it has one, its value (quotes kept as on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// Parameter name as written.
    pub name: &'a [u8],
    /// Parameter value as written, `None` for a flag such as `lr` or `rport`.
    pub value: Option<&'a [u8]>,
}

impl<'a> Params<'a> {
    pub(crate) fn new(raw: &'a [u8]) -> Self {
        Self { raw }
    }

    /// The raw text, as on the wire.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The parameters in order.
    pub fn iter(&self) -> ParamIter<'a> {
        ParamIter { rest: self.raw }
    }

    /// Looks a parameter up by name: `None` when absent, `Some(None)` for a flag.
    pub fn get(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.iter()
            .find(|p| p.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|p| p.value)
    }

    /// The value of a parameter that has one (`None` when absent or a bare flag).
    pub fn value(&self, name: &str) -> Option<&'a [u8]> {
        self.get(name).flatten()
    }

    /// Whether the parameter is present, with or without a value.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Iterator over [`Params`].
#[derive(Debug, Clone)]
pub struct ParamIter<'a> {
    rest: &'a [u8],
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, tail @ ..] = s {
        if is_lws_char(*first) {
            s = tail;
        } else {
            break;
        }
    }
    while let [head @ .., last] = s {
        if is_lws_char(*last) {
            s = head;
        } else {
            break;
        }
    }
    s
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = Param<'a>;

    fn next(&mut self) -> Option<Param<'a>> {
        loop {
            let rest = self.rest;
            if rest.is_empty() {
                return None;
            }
            // find the end of this parameter: the next ';' outside a quoted string
            let mut end = rest.len();
            let mut pos = usize::from(rest.first() == Some(&b';'));
            while let Some(i) = memchr::memchr2(b';', b'"', &rest[pos..]) {
                let at = pos + i;
                if rest[at] == b';' {
                    end = at;
                    break;
                }
                // skip the quoted string, honouring backslash escapes
                let mut q = at + 1;
                while q < rest.len() && rest[q] != b'"' {
                    q += if rest[q] == b'\\' { 2 } else { 1 };
                }
                pos = (q + 1).min(rest.len());
            }
            let item = &rest[..end];
            self.rest = &rest[end..];
            let item = trim(item.strip_prefix(b";").unwrap_or(item));
            if item.is_empty() {
                continue;
            }
            let (name, value) = match item.iter().position(|&c| c == b'=') {
                Some(eq) => (trim(&item[..eq]), Some(trim(&item[eq + 1..]))),
                None => (item, None),
            };
            return Some(Param { name, value });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_flags_values_and_quoted_values() {
        let p = Params::new(b";branch=z9hG4bK1 ; rport;x=\"a;b\";LR");
        assert_eq!(p.value("BRANCH"), Some(&b"z9hG4bK1"[..]));
        assert_eq!(p.get("rport"), Some(None));
        assert_eq!(p.value("x"), Some(&b"\"a;b\""[..]));
        assert!(p.contains("lr"));
        assert_eq!(p.get("maddr"), None);
        assert_eq!(p.iter().count(), 4);
    }
}
