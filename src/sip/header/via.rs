//! `Via` (RFC 3261 §20.42, §18.2.1; `rport` from RFC 3581).

use std::ops::Range;

use nom::{Parser, sequence::preceded};

use crate::sip::grammar::{Res, all_of, generic_params, host_port, lws, sep, token};
use crate::sip::params::Params;
use crate::sip::{at_u32, range_u32};

/// RFC 3261 magic cookie that starts every RFC 3261 branch.
pub const MAGIC_COOKIE: &[u8] = b"z9hG4bK";

/// One Via value: `SIP/2.0/UDP host:port;branch=...;received=...;rport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    protocol_name: &'a [u8],
    protocol_version: &'a [u8],
    transport: &'a [u8],
    host: &'a [u8],
    port: Option<u16>,
    params: Params<'a>,
    /// Found once while parsing: transaction matching asks for it several times.
    branch: Option<&'a [u8]>,
}

fn via_parm(i: &[u8]) -> Res<'_, Via<'_>> {
    let (i, protocol_name) = token(i)?;
    let (i, protocol_version) = preceded(sep(b'/'), token).parse(i)?;
    let (i, transport) = preceded(sep(b'/'), token).parse(i)?;
    let (i, _) = lws(i)?;
    let (i, (host, port)) = host_port(i)?;
    let (i, params) = generic_params(i)?;
    let params = Params::new(params);
    Ok((
        i,
        Via {
            protocol_name,
            protocol_version,
            transport,
            host,
            port,
            params,
            branch: params.value("branch"),
        },
    ))
}

/// Where each part of a parsed [`Via`] lies in the buffer it was parsed from: lets a
/// message keep its top Via without borrowing from itself, and rebuild the view for
/// free instead of parsing it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ViaParts {
    protocol_name: Range<u32>,
    protocol_version: Range<u32>,
    transport: Range<u32>,
    host: Range<u32>,
    port: Option<u16>,
    params: Range<u32>,
    branch: Option<Range<u32>>,
}

impl ViaParts {
    /// The view again, over the same buffer the parts were taken from. A range outside
    /// `base` (a different buffer) reads as empty rather than panicking.
    pub(crate) fn view<'a>(&self, base: &'a [u8]) -> Via<'a> {
        let at = |r: &Range<u32>| at_u32(base, r);
        Via {
            protocol_name: at(&self.protocol_name),
            protocol_version: at(&self.protocol_version),
            transport: at(&self.transport),
            host: at(&self.host),
            port: self.port,
            params: Params::new(at(&self.params)),
            branch: self.branch.as_ref().map(at),
        }
    }
}

impl<'a> Via<'a> {
    /// The parts' positions inside `base`, the buffer this view was parsed from.
    pub(crate) fn parts_in(&self, base: &[u8]) -> ViaParts {
        ViaParts {
            protocol_name: range_u32(base, self.protocol_name),
            protocol_version: range_u32(base, self.protocol_version),
            transport: range_u32(base, self.transport),
            host: range_u32(base, self.host),
            port: self.port,
            params: range_u32(base, self.params.as_bytes()),
            branch: self.branch.map(|b| range_u32(base, b)),
        }
    }

    /// Parses one Via value (one element of the comma list).
    pub fn parse(value: &'a [u8]) -> Result<Self, usize> {
        all_of(value, via_parm)
    }

    /// The protocol name, normally `SIP`.
    pub fn protocol_name(&self) -> &'a [u8] {
        self.protocol_name
    }
    /// The protocol version, normally `2.0`.
    pub fn protocol_version(&self) -> &'a [u8] {
        self.protocol_version
    }
    /// The transport as written (`UDP`, `TCP`, `TLS`, `SCTP`, `WS`, ...).
    pub fn transport(&self) -> &'a [u8] {
        self.transport
    }
    /// The sent-by host (an IPv6 reference keeps its brackets).
    pub fn host(&self) -> &'a [u8] {
        self.host
    }
    /// The sent-by port, when given.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
    /// All parameters.
    pub fn params(&self) -> Params<'a> {
        self.params
    }
    /// The branch parameter.
    pub fn branch(&self) -> Option<&'a [u8]> {
        self.branch
    }
    /// Whether the branch starts with the RFC 3261 magic cookie (else the transaction
    /// is matched the RFC 2543 way, RFC 3261 §17.2.3).
    pub fn has_magic_cookie(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with(MAGIC_COOKIE))
    }
    /// The `received` parameter.
    pub fn received(&self) -> Option<&'a [u8]> {
        self.params.value("received")
    }
    /// `rport`: `None` when absent, `Some(None)` when requested without a value,
    /// `Some(Some(port))` when filled in. A non-numeric value reads as absent.
    pub fn rport(&self) -> Option<Option<u16>> {
        match self.params.get("rport")? {
            None => Some(None),
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Some),
        }
    }
    /// The `maddr` parameter.
    pub fn maddr(&self) -> Option<&'a [u8]> {
        self.params.value("maddr")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_folded_spaced_via() {
        let v = Via::parse(
            b"SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8",
        )
        .unwrap();
        assert_eq!(v.transport(), b"TCP");
        assert_eq!(v.host(), b"spindle.example.com");
        assert_eq!(v.branch(), Some(&b"z9hG4bK9ikj8"[..]));
        assert!(v.has_magic_cookie());
    }

    #[test]
    fn rport_and_received() {
        let v =
            Via::parse(b"SIP/2.0/UDP [2001:db8::9]:5070;rport=5071;received=192.0.2.1").unwrap();
        assert_eq!(v.host(), b"[2001:db8::9]");
        assert_eq!(v.port(), Some(5070));
        assert_eq!(v.rport(), Some(Some(5071)));
        assert_eq!(v.received(), Some(&b"192.0.2.1"[..]));
        let v = Via::parse(b"SIP/2.0/UDP h;rport").unwrap();
        assert_eq!(v.rport(), Some(None));
    }

    #[test]
    fn rejects_empty_params_and_missing_host() {
        assert!(Via::parse(b"SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP ;branch=1").is_err());
    }
}
