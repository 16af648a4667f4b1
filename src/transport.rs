//! The SIP transports the proxy speaks, as config, Via and URIs name them.

use std::fmt;

/// A SIP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP datagrams.
    Udp,
    /// TCP stream.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// The token used in Via (`SIP/2.0/UDP`).
    pub fn via_token(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
        }
    }

    /// The `transport=` URI parameter value.
    pub fn uri_param(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }

    /// Recognises a Via transport token or URI parameter, any case.
    pub fn from_token(token: &[u8]) -> Option<Self> {
        if token.eq_ignore_ascii_case(b"udp") {
            Some(Self::Udp)
        } else if token.eq_ignore_ascii_case(b"tcp") {
            Some(Self::Tcp)
        } else if token.eq_ignore_ascii_case(b"tls") {
            Some(Self::Tls)
        } else {
            None
        }
    }

    /// Whether messages on it are framed by a stream (Content-Length required).
    pub fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }

    /// The default port (5061 for TLS, 5060 otherwise).
    pub fn default_port(self) -> u16 {
        match self {
            Self::Tls => 5061,
            _ => 5060,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.uri_param())
    }
}
