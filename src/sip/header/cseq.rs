//! `CSeq` (RFC 3261 §20.16): a sequence number below 2^31 and a method.

use crate::sip::grammar::{Res, all_of, decimal, lws, token};
use crate::sip::message::Method;

/// Largest CSeq number a request may carry (RFC 3261 §8.1.1.5: less than 2^31).
pub const MAX_CSEQ: u32 = (1 << 31) - 1;

/// A CSeq value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    seq: u32,
    method: Method,
    method_bytes: &'a [u8],
}

fn cseq(i: &[u8]) -> Res<'_, (u32, &[u8])> {
    let (i, seq) = decimal::<u32>(i)?;
    let (i, _) = lws(i)?;
    let (i, method) = token(i)?;
    Ok((i, (seq, method)))
}

impl<'a> CSeq<'a> {
    /// Parses a CSeq value.
    pub fn parse(value: &'a [u8]) -> Result<Self, usize> {
        let (seq, method_bytes) = all_of(value, cseq)?;
        if seq > MAX_CSEQ {
            return Err(0);
        }
        Ok(Self {
            seq,
            method: Method::from_bytes(method_bytes),
            method_bytes,
        })
    }
    /// A CSeq already parsed (a message remembers its parts, not the borrow).
    pub(crate) fn from_parts(seq: u32, method: Method, method_bytes: &'a [u8]) -> Self {
        Self {
            seq,
            method,
            method_bytes,
        }
    }
    /// The sequence number.
    pub fn seq(&self) -> u32 {
        self.seq
    }
    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }
    /// The method token as written.
    pub fn method_bytes(&self) -> &'a [u8] {
        self.method_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_leading_zeros_and_folds() {
        let c = CSeq::parse(b"0009\r\n  INVITE").unwrap();
        assert_eq!(c.seq(), 9);
        assert_eq!(c.method(), Method::Invite);
    }

    #[test]
    fn rejects_overlarge_numbers() {
        assert!(CSeq::parse(b"2147483648 INVITE").is_err());
        assert!(CSeq::parse(b"36893488147419103232 REGISTER").is_err());
        assert!(CSeq::parse(b"2147483647 INVITE").is_ok());
        assert!(CSeq::parse(b"INVITE").is_err());
    }
}
