//! Typed header values, parsed on demand from slices of the message buffer.
//!
//! One file per header family: [`via`], [`name_addr`] (From, To, Contact, Route,
//! Record-Route, Path, P-Asserted-Identity, Remote-Party-ID, Diversion, History-Info),
//! [`cseq`], [`event`] (Event, Subscription-State) and [`content_type`]. Every parser
//! takes the whole value and returns the typed view or the offset where it failed.

pub mod content_type;
pub mod cseq;
pub mod event;
pub mod name_addr;
pub mod via;

use std::ops::Range;

pub use content_type::ContentType;
pub use cseq::CSeq;
pub use event::{Event, SubscriptionState};
pub use name_addr::{ContactValue, NameAddr, parse_contact};
pub use via::Via;

use super::grammar::{all_of, is_lws_char, token};

/// Splits a list header's value at commas outside quoted strings and angle brackets,
/// yielding each element's range with surrounding white space trimmed. An empty
/// element between two commas is yielded as an empty range (the typed parsers reject
/// it); an entirely empty value yields nothing.
#[derive(Debug, Clone)]
pub(crate) struct ListIter<'a> {
    value: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> ListIter<'a> {
    pub(crate) fn new(value: &'a [u8]) -> Self {
        let blank = value.iter().all(|&c| is_lws_char(c));
        Self {
            value,
            pos: 0,
            done: blank,
        }
    }
}

impl Iterator for ListIter<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        if self.done {
            return None;
        }
        let v = self.value;
        let start = self.pos;
        let mut pos = start;
        // jump from one special character to the next: most values have none at all
        let end = loop {
            let Some(i) = memchr::memchr3(b',', b'"', b'<', &v[pos..]) else {
                break v.len();
            };
            let at = pos + i;
            match v[at] {
                b',' => break at,
                b'"' => {
                    // skip the quoted string, honouring backslash escapes
                    let mut q = at + 1;
                    let mut closed = None;
                    while let Some(j) = memchr::memchr2(b'"', b'\\', &v[q..]) {
                        if v[q + j] == b'"' {
                            closed = Some(q + j);
                            break;
                        }
                        q += j + 2;
                        if q >= v.len() {
                            break;
                        }
                    }
                    pos = closed.map_or(v.len(), |c| c + 1);
                }
                _ => {
                    // '<': skip to the closing '>'
                    pos = memchr::memchr(b'>', &v[at..]).map_or(v.len(), |j| at + j + 1);
                }
            }
            if pos >= v.len() {
                break v.len();
            }
        };
        if end == v.len() {
            self.done = true;
        } else {
            self.pos = end + 1;
        }
        let mut s = start;
        let mut e = end;
        while s < e && is_lws_char(v[s]) {
            s += 1;
        }
        while e > s && is_lws_char(v[e - 1]) {
            e -= 1;
        }
        Some(s..e)
    }
}

/// One option tag of Supported / Require / Proxy-Require / Unsupported.
pub fn parse_token_list_item(value: &[u8]) -> Result<&[u8], usize> {
    all_of(value, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(v: &[u8]) -> Vec<&[u8]> {
        ListIter::new(v).map(|r| &v[r]).collect()
    }

    #[test]
    fn splits_outside_quotes_and_brackets() {
        assert_eq!(
            split(b"\"a, b\" <sip:x@y;p=1,2>, <sip:z@w> ,sip:q@r"),
            vec![&b"\"a, b\" <sip:x@y;p=1,2>"[..], b"<sip:z@w>", b"sip:q@r"]
        );
        assert_eq!(split(b"a,,b"), vec![&b"a"[..], b"", b"b"]);
        assert!(split(b"  ").is_empty());
        assert_eq!(split(b"x ,\r\n y"), vec![&b"x"[..], b"y"]);
        assert_eq!(
            split(br#""a\", b" <sip:q>, "unterminated, x"#),
            vec![&br#""a\", b" <sip:q>"#[..], br#""unterminated, x"#]
        );
        assert_eq!(split(b"<sip:a,b"), vec![&b"<sip:a,b"[..]]);
    }
}
