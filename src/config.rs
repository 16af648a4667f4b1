//! The configuration file: reading it, and turning it into typed, validated settings.
//!
//! This module owns the meaning of every key documented in `config/example.toml`. A
//! file is read in two steps ("parse, don't validate"):
//!
//! 1. the `toml` crate deserializes it into private raw structs that mirror the file
//!    exactly (unknown keys are errors) and keep the byte span of every value checked
//!    later;
//! 2. the raw structs are converted into [`Config`], whose fields hold only valid
//!    values: socket addresses, networks, a transport, non-zero limits.
//!
//! Every failure, syntax or semantic, is one [`ConfigError`] that names the file, the
//! 1-based line and column and the dotted key (`pbx.transport`, `listen.udp[1]`).
//!
//! Relative paths in `[tls]` are resolved against the directory of the configuration
//! file, so a file means the same thing whatever the working directory. The `[tls]`
//! files are read (to check them) only when a TLS listener uses them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

mod teams;

pub use teams::{
    BlfSettings, ClientSecret, GraphSettings, StoreSettings, SyncSettings, WebSettings,
};

use crate::observe::classify::{DEFAULT_INTERNAL_PATTERN, normalize_number};
use crate::observe::{ClassifyRules, IdentitySource, ObserveConfig};
use crate::transport::Transport;
use regex::Regex;

/// The whole, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[log]`: how and what the proxy logs.
    pub log: LogConfig,
    /// `[listen]`: where phones and the PBX reach the proxy.
    pub listen: ListenConfig,
    /// `[tls]`: certificate and key; present when the file has a `[tls]` table.
    pub tls: Option<TlsConfig>,
    /// `[pbx]`: where phone requests are relayed.
    pub pbx: PbxConfig,
    /// `[phones]`: which sources may act as phones.
    pub phones: PhonesConfig,
    /// `[limits]`: bounds on memory and CPU.
    pub limits: LimitsConfig,
    /// `[calls]`: telling external calls from internal ones and star codes.
    pub calls: CallsConfig,
    /// `[dnd]`: the star codes that switch DND.
    pub dnd: DndConfig,
    /// `[graph]`: the app registration; without it there is no Teams sync.
    pub graph: Option<GraphSettings>,
    /// `[web]`: the OAuth and portal listener; without it, none.
    pub web: Option<WebSettings>,
    /// `[store]`: the embedded database (used when `[graph]` is present).
    pub store: StoreSettings,
    /// `[sync]`: how presence is synced.
    pub sync: SyncSettings,
    /// `[directory]`: extension ↔ email, in extension order; merged into the store's
    /// directory at start-up.
    pub directory: Vec<(String, String)>,
    /// `[blf]`: how Teams-busy looks on the phones' BLF lamps.
    pub blf: BlfSettings,
}

/// `[calls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallsConfig {
    /// `calls.internal_patterns`: regular expressions (checked) for internal numbers.
    pub internal_patterns: Vec<String>,
    /// `calls.feature_code_patterns`: regular expressions for feature codes that do not
    /// start with `*` or `#`.
    pub feature_code_patterns: Vec<String>,
    /// `calls.extensions`: the directory of known extensions.
    pub extensions: Vec<String>,
    /// `calls.caller_identity`: where an incoming call's caller is read from.
    pub caller_identity: Vec<IdentitySource>,
    /// `calls.stale_call_timeout_seconds`.
    pub stale_call_timeout: Duration,
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            internal_patterns: vec![DEFAULT_INTERNAL_PATTERN.to_owned()],
            feature_code_patterns: Vec::new(),
            extensions: Vec::new(),
            caller_identity: IdentitySource::DEFAULT_ORDER.to_vec(),
            stale_call_timeout: ObserveConfig::default().stale_call_timeout,
        }
    }
}

/// `[dnd]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DndConfig {
    /// `dnd.on_codes`.
    pub on_codes: Vec<String>,
    /// `dnd.off_codes`.
    pub off_codes: Vec<String>,
    /// `dnd.toggle_codes`.
    pub toggle_codes: Vec<String>,
}

impl Default for DndConfig {
    fn default() -> Self {
        let rules = ClassifyRules::default();
        Self {
            on_codes: rules.dnd_on_codes,
            off_codes: rules.dnd_off_codes,
            toggle_codes: rules.dnd_toggle_codes,
        }
    }
}

impl Config {
    /// What the proxy answers a new call to a Teams-busy extension with (`None`: the
    /// call goes through).
    pub fn teams_busy_response(&self) -> Option<(u16, &'static str)> {
        self.sync.busy_response.status()
    }

    /// What the observer needs: `[calls]`, `[dnd]` and the limits that bound it.
    pub fn observe_config(&self) -> ObserveConfig {
        // the patterns were compiled once when the file was read: they compile again
        let compile = |patterns: &[String]| -> Vec<Regex> {
            patterns.iter().filter_map(|p| Regex::new(p).ok()).collect()
        };
        ObserveConfig {
            rules: ClassifyRules {
                internal_patterns: compile(&self.calls.internal_patterns),
                feature_code_patterns: compile(&self.calls.feature_code_patterns),
                dnd_on_codes: self.dnd.on_codes.clone(),
                dnd_off_codes: self.dnd.off_codes.clone(),
                dnd_toggle_codes: self.dnd.toggle_codes.clone(),
                caller_identity: self.calls.caller_identity.clone(),
            },
            directory: self
                .calls
                .extensions
                .iter()
                .chain(self.directory.iter().map(|(ext, _)| ext))
                .cloned()
                .collect(),
            stale_call_timeout: self.calls.stale_call_timeout,
            max_calls: self.limits.max_transactions,
            max_bindings: self.limits.max_bindings,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `log.format`.
    pub format: LogFormat,
    /// `log.level`: a `tracing` filter, already checked to parse.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".to_owned(),
        }
    }
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// `"human"`: one line per event.
    Human,
    /// `"json"`: one JSON object per line.
    Json,
}

impl LogFormat {
    /// The spelling used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Human => "human",
            Self::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[listen]`. At least one of `udp`, `tcp`, `tls` is non-empty; no address is listed
/// twice for the same protocol; a wildcard address appears only with
/// `advertised_address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// `listen.udp`.
    pub udp: Vec<SocketAddr>,
    /// `listen.tcp`.
    pub tcp: Vec<SocketAddr>,
    /// `listen.tls`; non-empty only when [`Config::tls`] is present.
    pub tls: Vec<SocketAddr>,
    /// `listen.advertised_address`: never a wildcard or multicast address.
    pub advertised_address: Option<IpAddr>,
}

impl ListenConfig {
    /// Every listener with its transport: UDP first, then TCP, then TLS, in file order.
    pub fn listeners(&self) -> impl Iterator<Item = (Transport, SocketAddr)> + '_ {
        let udp = self.udp.iter().map(|a| (Transport::Udp, *a));
        let tcp = self.tcp.iter().map(|a| (Transport::Tcp, *a));
        let tls = self.tls.iter().map(|a| (Transport::Tls, *a));
        udp.chain(tcp).chain(tls)
    }
}

/// `[tls]`. When `listen.tls` is not empty, both files existed and held PEM text when
/// the configuration was loaded; otherwise the section is unused and not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// `tls.certificate`, resolved against the configuration file's directory.
    pub certificate: PathBuf,
    /// `tls.private_key`, resolved against the configuration file's directory.
    pub private_key: PathBuf,
}

/// `[pbx]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbxConfig {
    /// `pbx.host`: an IP address (IPv6 without brackets, in canonical form) or a
    /// syntactically valid host name.
    pub host: String,
    /// `pbx.port`, never 0; `None` when omitted (see [`PbxConfig::port_or_default`]).
    pub port: Option<u16>,
    /// `pbx.transport`; `None` when omitted: UDP for an IP address or with a port
    /// (see [`PbxConfig::transport_or_default`]), else RFC 3263 (NAPTR/SRV) decides.
    pub transport: Option<Transport>,
    /// `pbx.path`: whether the PBX supports Path (RFC 3327).
    pub path: bool,
    /// `pbx.tls_ca`: PEM file of the certificate(s) that sign the PBX's TLS certificate
    /// (required, and checked, when `transport` is TLS).
    pub tls_ca: Option<PathBuf>,
    /// `pbx.tls_server_name`: the name the PBX's certificate must carry (default: host).
    pub tls_server_name: Option<String>,
    /// `pbx.dns_server`: the DNS server to ask for the PBX's records instead of the
    /// system's resolvers.
    pub dns_server: Option<SocketAddr>,
}

impl PbxConfig {
    /// The configured port, or the transport's default (5060, 5061 for TLS).
    pub fn port_or_default(&self) -> u16 {
        self.port
            .unwrap_or(self.transport_or_default().default_port())
    }

    /// The configured transport, or UDP.
    pub fn transport_or_default(&self) -> Transport {
        self.transport.unwrap_or(Transport::Udp)
    }

    /// Whether the transport and port come from DNS (RFC 3263 NAPTR/SRV): a host name
    /// with neither port nor transport configured.
    pub fn uses_naptr(&self) -> bool {
        self.host_ip().is_none() && self.port.is_none() && self.transport.is_none()
    }

    /// The host as an IP address, when it is one rather than a name.
    pub fn host_ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// `[phones]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhonesConfig {
    /// `phones.allowed_networks`.
    pub allowed_networks: Vec<Cidr>,
}

impl PhonesConfig {
    /// Whether `addr` is inside one of the allowed networks.
    pub fn allows(&self, addr: IpAddr) -> bool {
        self.allowed_networks.iter().any(|net| net.contains(addr))
    }
}

impl Default for PhonesConfig {
    /// Loopback only: `127.0.0.0/8` and `::1/128`.
    fn default() -> Self {
        Self {
            allowed_networks: vec![
                Cidr {
                    network: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
                    prefix_len: 8,
                },
                Cidr {
                    network: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    prefix_len: 128,
                },
            ],
        }
    }
}

/// `[limits]`. Every bound is at least 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// `limits.max_transactions`.
    pub max_transactions: usize,
    /// `limits.max_bindings`.
    pub max_bindings: usize,
    /// `limits.max_tcp_connections`.
    pub max_tcp_connections: usize,
    /// `limits.max_requests_per_second_per_source`.
    pub max_requests_per_second_per_source: u32,
    /// `limits.max_message_size`, in bytes.
    pub max_message_size: usize,
    /// `limits.shutdown_grace_seconds` (0 allowed: exit without waiting).
    pub shutdown_grace: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_transactions: 100_000,
            max_bindings: 100_000,
            max_tcp_connections: 10_000,
            max_requests_per_second_per_source: 500,
            max_message_size: 65_536,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, path),
            Err(err) => Err(ConfigError {
                file: path.to_path_buf(),
                line: 1,
                column: 1,
                key: String::new(),
                kind: ConfigErrorKind::Read,
                message: format!("cannot read the configuration file: {err}"),
            }),
        }
    }

    /// Validates `text`, the content of `file`. `file` names the file in errors and is
    /// the base of relative `[tls]` paths; it is not read.
    pub fn from_toml(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let source = Source { file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|err| source.toml_error(&err))?;
        source.convert(raw)
    }

    /// Two lines for `check-config`: listeners, PBX and phone networks; then the Teams
    /// side (tenant, web listener, store, PBX → Teams switch, directory size).
    pub fn summary(&self) -> String {
        let listeners: Vec<String> = self
            .listen
            .listeners()
            .map(|(transport, addr)| format!("{transport} {addr}"))
            .collect();
        let advertised = match self.listen.advertised_address {
            Some(ip) => format!(" (advertised as {ip})"),
            None => String::new(),
        };
        let host = match self.pbx.host_ip() {
            Some(IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.pbx.host.clone(),
        };
        let pbx = match (self.pbx.host_ip(), self.pbx.port, self.pbx.transport) {
            (None, None, None) => format!("{host} (DNS NAPTR/SRV)"),
            (None, None, Some(transport)) => format!("{transport} {host} (DNS SRV)"),
            (_, port, _) => {
                let port = match port {
                    Some(port) => port.to_string(),
                    None => format!("{} (default)", self.pbx.port_or_default()),
                };
                format!("{} {host}:{port}", self.pbx.transport_or_default())
            }
        };
        let networks: Vec<String> = self
            .phones
            .allowed_networks
            .iter()
            .map(Cidr::to_string)
            .collect();
        let proxy = format!(
            "listeners: {}{advertised}; pbx: {pbx}{}; phones: {}",
            listeners.join(", "),
            if self.pbx.path { " with Path" } else { "" },
            if networks.is_empty() {
                "none".to_owned()
            } else {
                networks.join(", ")
            },
        );
        match &self.graph {
            None => format!("{proxy}\nteams: off (no [graph] section)"),
            Some(graph) => format!(
                "{proxy}\nteams: tenant {} ({}); web: {}; store: {}; pbx -> teams: {}; directory: {} extensions",
                graph.tenant,
                if graph.app_only {
                    "app-only token"
                } else {
                    "users pair"
                },
                self.web
                    .as_ref()
                    .map_or("none".to_owned(), |w| w.listen.to_string()),
                self.store.path.display(),
                match self.sync.pbx_to_teams {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "as stored",
                },
                self.directory.len(),
            ),
        }
    }
}

// ---------------------------------------------------------------------------------
// Errors

/// Why a configuration file was rejected, and where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{}:{line}:{column}: {}{message}", file.display(), key_prefix(key))]
pub struct ConfigError {
    file: PathBuf,
    line: usize,
    column: usize,
    key: String,
    kind: ConfigErrorKind,
    message: String,
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

impl ConfigError {
    /// The file, as given to [`Config::load`] or [`Config::from_toml`].
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// 1-based line of the offending text (1 when the file could not be read).
    pub fn line(&self) -> usize {
        self.line
    }

    /// 1-based column, in characters, of the offending text.
    pub fn column(&self) -> usize {
        self.column
    }

    /// The dotted key, with array indices: `pbx.transport`, `listen.udp[1]`. Empty
    /// when the error is not inside any key (unreadable file, top-level syntax).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What kind of mistake it is.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// The explanation, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The kinds of [`ConfigError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigErrorKind {
    /// The file could not be read (missing, permissions, not UTF-8).
    Read,
    /// Not valid TOML.
    Syntax,
    /// A key this version does not know (often a typo).
    UnknownKey,
    /// A required section or key is absent.
    MissingKey,
    /// A value of the wrong TOML type (a string where a number belongs...).
    WrongType,
    /// A value of the right type that means nothing valid (bad address, port 0...).
    Invalid,
}

/// Why a string is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CidrError {
    /// The part before `/` is not an IP address.
    #[error("{0:?} is not an IP address")]
    Address(String),
    /// The part after `/` is not a decimal number.
    #[error("prefix length {0:?} is not a number")]
    Prefix(String),
    /// The prefix length exceeds the address width.
    #[error("prefix length {prefix} is longer than {max} bits")]
    PrefixTooLong {
        /// The prefix length given.
        prefix: u32,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// Bits beyond the prefix are set: `10.1.2.3/8` instead of `10.0.0.0/8`.
    #[error("{given} has host bits set; the network is {network}")]
    HostBitsSet {
        /// The text as written.
        given: String,
        /// The network the writer probably meant.
        network: Cidr,
    },
}

// ---------------------------------------------------------------------------------
// Cidr

/// An IP network: an address whose bits beyond the prefix are zero, and the prefix
/// length. Written `10.0.0.0/8` or `2001:db8::/32`; a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// The network of `prefix_len` bits at `network`, whose host bits must be zero.
    pub fn new(network: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        let max = max_prefix(network);
        if prefix_len > max {
            return Err(CidrError::PrefixTooLong {
                prefix: u32::from(prefix_len),
                max,
            });
        }
        let cidr = Self {
            network: mask(network, prefix_len),
            prefix_len,
        };
        if cidr.network != network {
            return Err(CidrError::HostBitsSet {
                given: format!("{network}/{prefix_len}"),
                network: cidr,
            });
        }
        Ok(cidr)
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `addr` is inside this network. An IPv4-mapped IPv6 address
    /// (`::ffff:10.1.2.3`, as a dual-stack socket reports IPv4 peers) is treated as
    /// the IPv4 address it carries, so it matches IPv4 networks; IPv6 networks over
    /// `::ffff:0:0/96` match plain IPv4 addresses likewise.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr.to_canonical()) {
            (IpAddr::V4(_), addr @ IpAddr::V4(_)) | (IpAddr::V6(_), addr @ IpAddr::V6(_)) => {
                mask(addr, self.prefix_len) == self.network
            }
            (IpAddr::V6(_), IpAddr::V4(v4)) => {
                mask(IpAddr::V6(v4.to_ipv6_mapped()), self.prefix_len) == self.network
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `addr` with every bit beyond the first `prefix_len` cleared.
fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let keep = u32::MAX
                .checked_shl(32 - u32::from(prefix_len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX
                .checked_shl(128 - u32::from(prefix_len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError::Address(addr_text.to_owned()))?;
        let max = max_prefix(addr);
        let prefix = match prefix_text {
            None => u32::from(max),
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u32>()
                .map_err(|_| CidrError::Prefix(p.to_owned()))?,
            Some(p) => return Err(CidrError::Prefix(p.to_owned())),
        };
        let prefix = u8::try_from(prefix)
            .ok()
            .filter(|p| *p <= max)
            .ok_or(CidrError::PrefixTooLong { prefix, max })?;
        Self::new(addr, prefix).map_err(|err| match err {
            CidrError::HostBitsSet { network, .. } => CidrError::HostBitsSet {
                given: s.to_owned(),
                network,
            },
            other => other,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

// ---------------------------------------------------------------------------------
// Raw structs: the file as written.

/// A TOML integer, with a readable "expected an integer" on a type mismatch.
#[derive(Debug, Clone, Copy)]
struct Int(i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom("integer too large"))
            }
        }
        deserializer.deserialize_i64(Visitor)
    }
}

type Str = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawConfig {
    log: Option<RawLog>,
    listen: Spanned<RawListen>,
    tls: Option<RawTls>,
    pbx: RawPbx,
    phones: Option<RawPhones>,
    limits: Option<RawLimits>,
    calls: Option<RawCalls>,
    dnd: Option<RawDnd>,
    graph: Option<teams::RawGraph>,
    web: Option<teams::RawWeb>,
    store: Option<teams::RawStore>,
    sync: Option<teams::RawSync>,
    directory: Option<teams::RawDirectory>,
    blf: Option<teams::RawBlf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawCalls {
    internal_patterns: Option<Vec<Str>>,
    feature_code_patterns: Option<Vec<Str>>,
    extensions: Option<Vec<Str>>,
    caller_identity: Option<Vec<Str>>,
    stale_call_timeout_seconds: Option<Spanned<Int>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawDnd {
    on_codes: Option<Vec<Str>>,
    off_codes: Option<Vec<Str>>,
    toggle_codes: Option<Vec<Str>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawLog {
    format: Option<Str>,
    level: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawListen {
    udp: Option<Spanned<Vec<Str>>>,
    tcp: Option<Spanned<Vec<Str>>>,
    tls: Option<Spanned<Vec<Str>>>,
    advertised_address: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawTls {
    certificate: Str,
    private_key: Str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawPbx {
    host: Str,
    port: Option<Spanned<Int>>,
    transport: Option<Str>,
    path: Option<bool>,
    tls_ca: Option<Str>,
    tls_server_name: Option<Str>,
    dns_server: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawPhones {
    allowed_networks: Option<Vec<Str>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawLimits {
    max_transactions: Option<Spanned<Int>>,
    max_bindings: Option<Spanned<Int>>,
    max_tcp_connections: Option<Spanned<Int>>,
    max_requests_per_second_per_source: Option<Spanned<Int>>,
    max_message_size: Option<Spanned<Int>>,
    shutdown_grace_seconds: Option<Spanned<Int>>,
}

// ---------------------------------------------------------------------------------
// Conversion: raw structs to Config.

/// The file being converted: what errors need to say where they are.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        kind: ConfigErrorKind,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = line_column(self.text, span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            kind,
            message: message.into(),
        }
    }

    fn invalid(&self, span: Range<usize>, key: impl Into<String>, message: String) -> ConfigError {
        self.error(span, key, ConfigErrorKind::Invalid, message)
    }

    /// Converts an error of the `toml` crate, finding the key from its span.
    fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let offset = err.span().map_or(0, |span| span.start);
        let (kind, tree) = match DeTable::parse(self.text) {
            Err(_) => (
                ConfigErrorKind::Syntax,
                DeTable::parse_recoverable(self.text).0,
            ),
            Ok(tree) => {
                let message = err.message();
                let kind = if message.starts_with("unknown field") {
                    ConfigErrorKind::UnknownKey
                } else if message.starts_with("missing field") {
                    ConfigErrorKind::MissingKey
                } else if message.starts_with("invalid type") {
                    ConfigErrorKind::WrongType
                } else {
                    ConfigErrorKind::Invalid
                };
                (kind, tree)
            }
        };
        let mut message = err.message().trim().to_owned();
        let key = match kind {
            ConfigErrorKind::MissingKey => {
                // The span is the table's; the missing key's name is in the message.
                let table = err
                    .span()
                    .and_then(|span| find_table(tree.get_ref(), "", self.text, &span))
                    .unwrap_or_default();
                let name = backquoted(&message).unwrap_or_default().to_owned();
                if table.is_empty() {
                    message = format!("missing section [{name}]");
                    name
                } else {
                    message = format!("missing key `{name}` in [{table}]");
                    format!("{table}.{name}")
                }
            }
            ConfigErrorKind::Syntax if message == "duplicate key" => {
                // The repeated key is not in the tree; its name is the spanned text.
                let name = err
                    .span()
                    .and_then(|span| self.text.get(span))
                    .unwrap_or_default();
                message = format!("duplicate key `{name}`");
                let table = locate(tree.get_ref(), self.text, offset);
                if table.is_empty() {
                    name.to_owned()
                } else if table == name || table.ends_with(&format!(".{name}")) {
                    table
                } else {
                    format!("{table}.{name}")
                }
            }
            _ => locate(tree.get_ref(), self.text, offset),
        };
        if let Some(rest) = message.strip_prefix("unknown field") {
            message = format!("unknown key{rest}");
        }
        self.error(offset..offset, key, kind, message)
    }

    fn convert(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let log = match raw.log {
            Some(log) => self.log(log)?,
            None => LogConfig::default(),
        };
        let listen = self.listen(&raw.listen, raw.tls.is_some())?;
        let tls = raw
            .tls
            .map(|tls| self.tls(tls, !listen.tls.is_empty()))
            .transpose()?;
        let pbx = self.pbx(raw.pbx)?;
        let phones = match raw.phones {
            Some(RawPhones {
                allowed_networks: Some(networks),
            }) => self.phones(networks)?,
            Some(RawPhones {
                allowed_networks: None,
            })
            | None => PhonesConfig::default(),
        };
        let limits = match raw.limits {
            Some(limits) => self.limits(limits)?,
            None => LimitsConfig::default(),
        };
        let calls = match raw.calls {
            Some(calls) => self.calls(calls)?,
            None => CallsConfig::default(),
        };
        let dnd = match raw.dnd {
            Some(dnd) => self.dnd(dnd),
            None => DndConfig::default(),
        };
        let graph = raw.graph.map(|g| self.graph(g)).transpose()?;
        let web = raw.web.map(|w| self.web(w)).transpose()?;
        let store = self.store(raw.store)?;
        let sync = self.sync(raw.sync)?;
        let directory = self.directory(raw.directory)?;
        let blf = self.blf(raw.blf)?;
        Ok(Config {
            log,
            listen,
            tls,
            pbx,
            phones,
            limits,
            calls,
            dnd,
            graph,
            web,
            store,
            sync,
            directory,
            blf,
        })
    }

    fn calls(&self, raw: RawCalls) -> Result<CallsConfig, ConfigError> {
        let defaults = CallsConfig::default();
        let patterns = |list: Option<Vec<Str>>, key: &str, default: Vec<String>| {
            let Some(list) = list else {
                return Ok(default);
            };
            let mut out = Vec::with_capacity(list.len());
            for (index, entry) in list.iter().enumerate() {
                Regex::new(entry.get_ref()).map_err(|err| {
                    self.invalid(
                        entry.span(),
                        format!("calls.{key}[{index}]"),
                        format!(
                            "{:?} is not a regular expression: {}",
                            entry.get_ref(),
                            // the regex error draws a caret under the pattern: keep its
                            // last line, the reason
                            err.to_string().lines().last().unwrap_or_default().trim()
                        ),
                    )
                })?;
                out.push(entry.get_ref().clone());
            }
            Ok(out)
        };
        let internal_patterns = patterns(
            raw.internal_patterns,
            "internal_patterns",
            defaults.internal_patterns,
        )?;
        let feature_code_patterns = patterns(
            raw.feature_code_patterns,
            "feature_code_patterns",
            defaults.feature_code_patterns,
        )?;
        let extensions = raw
            .extensions
            .map(|list| {
                list.iter()
                    .map(|e| normalize_number(e.get_ref().as_bytes()))
                    .collect()
            })
            .unwrap_or_default();
        let caller_identity = match raw.caller_identity {
            None => defaults.caller_identity,
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for (index, entry) in list.iter().enumerate() {
                    let source = IdentitySource::from_config(entry.get_ref()).ok_or_else(|| {
                        self.invalid(
                            entry.span(),
                            format!("calls.caller_identity[{index}]"),
                            format!(
                                "{:?} is not one of \"p-asserted-identity\", \"remote-party-id\", \"from\"",
                                entry.get_ref()
                            ),
                        )
                    })?;
                    out.push(source);
                }
                out
            }
        };
        let stale_call_timeout = match raw.stale_call_timeout_seconds {
            None => defaults.stale_call_timeout,
            Some(value) => {
                let Int(seconds) = *value.get_ref();
                let seconds = u64::try_from(seconds)
                    .ok()
                    .filter(|&s| s >= 60)
                    .ok_or_else(|| {
                        self.invalid(
                            value.span(),
                            "calls.stale_call_timeout_seconds",
                            format!("must be at least 60 seconds, found {seconds}"),
                        )
                    })?;
                Duration::from_secs(seconds)
            }
        };
        Ok(CallsConfig {
            internal_patterns,
            feature_code_patterns,
            extensions,
            caller_identity,
            stale_call_timeout,
        })
    }

    fn dnd(&self, raw: RawDnd) -> DndConfig {
        let defaults = DndConfig::default();
        let codes = |list: Option<Vec<Str>>, default: Vec<String>| match list {
            Some(list) => list
                .iter()
                .map(|c| normalize_number(c.get_ref().as_bytes()))
                .collect(),
            None => default,
        };
        DndConfig {
            on_codes: codes(raw.on_codes, defaults.on_codes),
            off_codes: codes(raw.off_codes, defaults.off_codes),
            toggle_codes: codes(raw.toggle_codes, defaults.toggle_codes),
        }
    }

    fn log(&self, raw: RawLog) -> Result<LogConfig, ConfigError> {
        let mut log = LogConfig::default();
        if let Some(format) = raw.format {
            log.format = match format.get_ref().as_str() {
                "human" => LogFormat::Human,
                "json" => LogFormat::Json,
                other => {
                    return Err(self.invalid(
                        format.span(),
                        "log.format",
                        format!("expected one of \"human\", \"json\", found {other:?}"),
                    ));
                }
            };
        }
        if let Some(level) = raw.level {
            let text = level.get_ref();
            if text.trim().is_empty() {
                return Err(self.invalid(level.span(), "log.level", "empty filter".to_owned()));
            }
            if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(text) {
                return Err(self.invalid(
                    level.span(),
                    "log.level",
                    format!("invalid filter {text:?}: {err}"),
                ));
            }
            log.level = text.clone();
        }
        Ok(log)
    }

    fn listen(
        &self,
        raw: &Spanned<RawListen>,
        has_tls_section: bool,
    ) -> Result<ListenConfig, ConfigError> {
        let table = raw.get_ref();
        let advertised_address = match &table.advertised_address {
            None => None,
            Some(text) => {
                let ip: IpAddr = text.get_ref().parse().map_err(|_| {
                    self.invalid(
                        text.span(),
                        "listen.advertised_address",
                        format!("{:?} is not an IP address", text.get_ref()),
                    )
                })?;
                if ip.is_unspecified() || ip.is_multicast() || ip == Ipv4Addr::BROADCAST {
                    return Err(self.invalid(
                        text.span(),
                        "listen.advertised_address",
                        format!(
                            "{ip} cannot be advertised: give an address phones and the PBX reach"
                        ),
                    ));
                }
                Some(ip)
            }
        };

        let protocols = [
            ("udp", &table.udp),
            ("tcp", &table.tcp),
            ("tls", &table.tls),
        ];
        let mut parsed: [Vec<SocketAddr>; 3] = Default::default();
        for ((name, list), out) in protocols.iter().zip(parsed.iter_mut()) {
            let Some(list) = list else { continue };
            for (index, entry) in list.get_ref().iter().enumerate() {
                let key = format!("listen.{name}[{index}]");
                let addr = parse_listener(entry.get_ref())
                    .map_err(|message| self.invalid(entry.span(), key.clone(), message))?;
                if addr.ip().is_unspecified() && advertised_address.is_none() {
                    return Err(self.invalid(
                        entry.span(),
                        key,
                        format!(
                            "{addr} is a wildcard address: set listen.advertised_address \
                             to the address phones and the PBX reach"
                        ),
                    ));
                }
                if out.contains(&addr) {
                    return Err(self.invalid(
                        entry.span(),
                        key,
                        format!("{addr} is listed twice in listen.{name}"),
                    ));
                }
                out.push(addr);
            }
        }
        let [udp, tcp, tls] = parsed;

        if let Some(list) = &table.tls {
            for (index, entry) in list.get_ref().iter().enumerate() {
                if tls.get(index).is_some_and(|addr| tcp.contains(addr)) {
                    return Err(self.invalid(
                        entry.span(),
                        format!("listen.tls[{index}]"),
                        format!(
                            "{} is also a TCP listener: TLS needs its own port",
                            entry.get_ref()
                        ),
                    ));
                }
            }
            if !tls.is_empty() && !has_tls_section {
                return Err(self.invalid(
                    list.span(),
                    "listen.tls",
                    "TLS listeners need a [tls] section with certificate and private_key"
                        .to_owned(),
                ));
            }
        }
        if udp.is_empty() && tcp.is_empty() && tls.is_empty() {
            return Err(self.invalid(
                raw.span(),
                "listen",
                "no listener: listen.udp, listen.tcp and listen.tls are all empty".to_owned(),
            ));
        }
        Ok(ListenConfig {
            udp,
            tcp,
            tls,
            advertised_address,
        })
    }

    fn tls(&self, raw: RawTls, used: bool) -> Result<TlsConfig, ConfigError> {
        Ok(TlsConfig {
            certificate: self.pem_file(&raw.certificate, "tls.certificate", used)?,
            private_key: self.pem_file(&raw.private_key, "tls.private_key", used)?,
        })
    }

    /// Resolves a `[tls]` path and, when `check` (a TLS listener uses it), checks that
    /// it is a readable PEM file.
    fn pem_file(&self, raw: &Str, key: &str, check: bool) -> Result<PathBuf, ConfigError> {
        let text = raw.get_ref();
        if text.is_empty() {
            return Err(self.invalid(raw.span(), key, "empty path".to_owned()));
        }
        let path = Path::new(text);
        let path = if path.is_relative() {
            match self.file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
                _ => path.to_path_buf(),
            }
        } else {
            path.to_path_buf()
        };
        if !check {
            return Ok(path);
        }
        let bytes = std::fs::read(&path).map_err(|err| {
            self.invalid(
                raw.span(),
                key,
                format!("cannot read {}: {err}", path.display()),
            )
        })?;
        if memchr::memmem::find(&bytes, b"-----BEGIN ").is_none() {
            return Err(self.invalid(
                raw.span(),
                key,
                format!("{} is not a PEM file (no -----BEGIN line)", path.display()),
            ));
        }
        Ok(path)
    }

    fn pbx(&self, raw: RawPbx) -> Result<PbxConfig, ConfigError> {
        let host = parse_host(raw.host.get_ref())
            .map_err(|message| self.invalid(raw.host.span(), "pbx.host", message))?;
        let port = match raw.port {
            None => None,
            Some(port) => {
                let Int(value) = *port.get_ref();
                match u16::try_from(value) {
                    Ok(p) if p != 0 => Some(p),
                    _ => {
                        return Err(self.invalid(
                            port.span(),
                            "pbx.port",
                            format!("port must be 1 to 65535, found {value}"),
                        ));
                    }
                }
            }
        };
        let transport_span = raw.transport.as_ref().map(|t| t.span());
        let transport = match raw.transport {
            None => None,
            Some(text) => Some(Transport::from_token(text.get_ref().as_bytes()).ok_or_else(
                || {
                    self.invalid(
                        text.span(),
                        "pbx.transport",
                        format!(
                            "expected one of \"udp\", \"tcp\", \"tls\", found {:?}",
                            text.get_ref()
                        ),
                    )
                },
            )?),
        };
        let tls = transport == Some(Transport::Tls);
        // a bare domain may resolve to TLS (SIPS+D2T, _sips._tcp) when a CA is given
        let naptr = transport.is_none() && port.is_none() && host.parse::<IpAddr>().is_err();
        let tls_ca = match &raw.tls_ca {
            Some(path) => Some(self.pem_file(path, "pbx.tls_ca", tls || naptr)?),
            None if tls => {
                let span = transport_span.unwrap_or(raw.host.span());
                return Err(self.invalid(
                    span,
                    "pbx.tls_ca",
                    "pbx.transport = \"tls\" needs pbx.tls_ca: the PEM file of the CA that signed the PBX's certificate".to_owned(),
                ));
            }
            None => None,
        };
        let tls_server_name = match raw.tls_server_name {
            Some(name) if name.get_ref().is_empty() => {
                return Err(self.invalid(
                    name.span(),
                    "pbx.tls_server_name",
                    "empty name".to_owned(),
                ));
            }
            Some(name) => Some(name.into_inner()),
            None => None,
        };
        let dns_server = match raw.dns_server {
            Some(text) => Some(
                parse_dns_server(text.get_ref())
                    .map_err(|message| self.invalid(text.span(), "pbx.dns_server", message))?,
            ),
            None => None,
        };
        Ok(PbxConfig {
            host,
            port,
            transport,
            path: raw.path.unwrap_or(false),
            tls_ca,
            tls_server_name,
            dns_server,
        })
    }

    fn phones(&self, raw: Vec<Str>) -> Result<PhonesConfig, ConfigError> {
        let mut allowed_networks = Vec::with_capacity(raw.len());
        for (index, entry) in raw.iter().enumerate() {
            let cidr: Cidr = entry.get_ref().parse().map_err(|err: CidrError| {
                self.invalid(
                    entry.span(),
                    format!("phones.allowed_networks[{index}]"),
                    format!("{:?} is not a network: {err}", entry.get_ref()),
                )
            })?;
            allowed_networks.push(cidr);
        }
        Ok(PhonesConfig { allowed_networks })
    }

    fn limits(&self, raw: RawLimits) -> Result<LimitsConfig, ConfigError> {
        let defaults = LimitsConfig::default();
        Ok(LimitsConfig {
            max_transactions: self.bound(
                raw.max_transactions,
                "max_transactions",
                defaults.max_transactions,
            )?,
            max_bindings: self.bound(raw.max_bindings, "max_bindings", defaults.max_bindings)?,
            max_tcp_connections: self.bound(
                raw.max_tcp_connections,
                "max_tcp_connections",
                defaults.max_tcp_connections,
            )?,
            max_requests_per_second_per_source: self.bound(
                raw.max_requests_per_second_per_source,
                "max_requests_per_second_per_source",
                defaults.max_requests_per_second_per_source,
            )?,
            max_message_size: self.bound(
                raw.max_message_size,
                "max_message_size",
                defaults.max_message_size,
            )?,
            shutdown_grace: match raw.shutdown_grace_seconds {
                None => defaults.shutdown_grace,
                Some(value) => {
                    let Int(seconds) = *value.get_ref();
                    let seconds = u64::try_from(seconds).map_err(|_| {
                        self.invalid(
                            value.span(),
                            "limits.shutdown_grace_seconds",
                            format!("must be 0 or more seconds, found {seconds}"),
                        )
                    })?;
                    Duration::from_secs(seconds)
                }
            },
        })
    }

    /// A `[limits]` bound: at least 1 and fitting `T`.
    fn bound<T>(&self, raw: Option<Spanned<Int>>, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: TryFrom<i64> + fmt::Display,
    {
        let Some(value) = raw else {
            return Ok(default);
        };
        let Int(number) = *value.get_ref();
        let key = format!("limits.{name}");
        if number < 1 {
            return Err(self.invalid(
                value.span(),
                key,
                format!("must be at least 1, found {number}"),
            ));
        }
        T::try_from(number)
            .map_err(|_| self.invalid(value.span(), key, format!("{number} is too large")))
    }
}

/// A listener address: `IP:PORT`, port not 0.
fn parse_listener(text: &str) -> Result<SocketAddr, String> {
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => {
            Err(format!("{text:?} has port 0: give the port phones send to"))
        }
        Ok(addr) => Ok(addr),
        Err(_) => Err(match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => format!("{text:?} has no port: write \"{ip}:5060\""),
            Ok(IpAddr::V6(ip)) => format!("{text:?} has no port: write \"[{ip}]:5060\""),
            Err(_) => {
                format!("{text:?} is not IP:PORT (such as \"192.0.2.10:5060\" or \"[::1]:5060\")")
            }
        }),
    }
}

/// `pbx.dns_server`: `IP:PORT`, or an IP address alone for port 53.
fn parse_dns_server(text: &str) -> Result<SocketAddr, String> {
    let addr = match text.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, 53),
            Err(_) => {
                return Err(format!(
                    "{text:?} is not IP:PORT (such as \"192.0.2.53:53\" or \"[::1]:5353\")"
                ));
            }
        },
    };
    if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(format!("{text:?} cannot be a DNS server's address"));
    }
    Ok(addr)
}

/// `pbx.host`: an IP address (brackets around IPv6 accepted and removed) or a host name.
fn parse_host(text: &str) -> Result<String, String> {
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'));
    let ip = match unbracketed {
        Some(inner) => inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => text.parse::<IpAddr>().ok(),
    };
    if let Some(ip) = ip {
        if ip.is_unspecified() || ip.is_multicast() || ip == Ipv4Addr::BROADCAST {
            return Err(format!("{ip} cannot be the PBX's address"));
        }
        return Ok(ip.to_string());
    }
    if text.is_empty() {
        return Err("empty host".to_owned());
    }
    let has_port = text.matches(':').count() == 1
        && text
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    if has_port {
        return Err(format!(
            "{text:?} includes a port: put the host in pbx.host and the port in pbx.port"
        ));
    }
    let name = text.strip_suffix('.').unwrap_or(text);
    let labels_ok = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    let numeric_tld = name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
    if !labels_ok || numeric_tld {
        return Err(format!("{text:?} is not an IP address or a host name"));
    }
    Ok(text.to_owned())
}

// ---------------------------------------------------------------------------------
// Locating toml errors: byte offsets to lines, columns and dotted keys.

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.as_bytes().get(..offset).unwrap_or_default();
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = memchr::memrchr(b'\n', before).map_or(0, |nl| nl + 1);
    let column = match text.get(line_start..offset) {
        Some(part) => part.chars().count(),
        None => offset - line_start,
    };
    (line, column + 1)
}

/// The first `name` in a message of the form "... `name` ...".
fn backquoted(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once('`')?;
    let (name, _) = rest.split_once('`')?;
    Some(name)
}

/// The dotted key at byte `offset`: the most specific key or value whose span holds
/// it; failing that, the table whose header last precedes it; failing that, "".
fn locate(tree: &DeTable<'_>, text: &str, offset: usize) -> String {
    let mut nodes = Vec::new();
    collect_nodes(tree, String::new(), text, &mut nodes);
    let holding = nodes
        .iter()
        .filter_map(|node| {
            [&node.key_span, &node.value_span]
                .into_iter()
                .flatten()
                .filter(|span| span.start <= offset && offset <= span.end)
                .map(|span| span.len())
                .min()
                .map(|len| (len, node))
        })
        .min_by(|(a_len, a), (b_len, b)| a_len.cmp(b_len).then(b.path.len().cmp(&a.path.len())));
    if let Some((_, node)) = holding {
        return node.path.clone();
    }
    nodes
        .iter()
        .filter(|node| node.header && node.value_span.as_ref().is_some_and(|s| s.start <= offset))
        .max_by_key(|node| node.value_span.as_ref().map_or(0, |s| s.start))
        .map(|node| node.path.clone())
        .unwrap_or_default()
}

/// The dotted key of the table whose span is exactly `span` (where serde reports a
/// missing key), or `None` for the document itself.
fn find_table(tree: &DeTable<'_>, prefix: &str, text: &str, span: &Range<usize>) -> Option<String> {
    let mut nodes = Vec::new();
    collect_nodes(tree, prefix.to_owned(), text, &mut nodes);
    nodes
        .into_iter()
        .find(|node| node.table && node.value_span.as_ref() == Some(span))
        .map(|node| node.path)
}

struct Node {
    path: String,
    key_span: Option<Range<usize>>,
    value_span: Option<Range<usize>>,
    table: bool,
    /// A table introduced by a `[header]` line.
    header: bool,
}

fn collect_nodes(table: &DeTable<'_>, prefix: String, text: &str, out: &mut Vec<Node>) {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        collect_value(value, path, Some(key.span()), text, out);
    }
}

fn collect_value(
    value: &Spanned<DeValue<'_>>,
    path: String,
    key_span: Option<Range<usize>>,
    text: &str,
    out: &mut Vec<Node>,
) {
    let span = value.span();
    let is_table = matches!(value.get_ref(), DeValue::Table(_));
    let header = is_table && text.get(span.clone()).is_some_and(|t| t.starts_with('['));
    out.push(Node {
        path: path.clone(),
        key_span,
        value_span: Some(span),
        table: is_table,
        header,
    });
    match value.get_ref() {
        DeValue::Table(inner) => collect_nodes(inner, path, text, out),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                collect_value(item, format!("{path}[{index}]"), None, text, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_v4() {
        let net = cidr("10.0.0.0/8");
        assert_eq!(net.network(), ip("10.0.0.0"));
        assert_eq!(net.prefix_len(), 8);
        assert!(net.contains(ip("10.0.0.0")));
        assert!(net.contains(ip("10.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")));
        assert!(!net.contains(ip("9.255.255.255")));
        assert!(!net.contains(ip("::1")));
        assert_eq!(net.to_string(), "10.0.0.0/8");

        let net = cidr("192.168.1.128/25");
        assert!(net.contains(ip("192.168.1.200")));
        assert!(!net.contains(ip("192.168.1.127")));
    }

    #[test]
    fn cidr_v6() {
        let net = cidr("2001:db8::/32");
        assert!(net.contains(ip("2001:db8::1")));
        assert!(net.contains(ip("2001:db8:ffff:ffff::1")));
        assert!(!net.contains(ip("2001:db9::1")));
        assert!(!net.contains(ip("32.1.13.184")));
        assert_eq!(net.to_string(), "2001:db8::/32");
        // Written non-canonically, displayed canonically.
        assert_eq!(cidr("2001:0db8:0::/32").to_string(), "2001:db8::/32");
    }

    #[test]
    fn cidr_zero_prefix() {
        let any4 = cidr("0.0.0.0/0");
        assert!(any4.contains(ip("1.2.3.4")));
        assert!(any4.contains(ip("255.255.255.255")));
        assert!(any4.contains(ip("::ffff:1.2.3.4")));
        assert!(!any4.contains(ip("2001:db8::1")));
        let any6 = cidr("::/0");
        assert!(any6.contains(ip("2001:db8::1")));
        assert!(any6.contains(ip("::1")));
        assert!(any6.contains(ip("1.2.3.4")));
    }

    #[test]
    fn cidr_full_prefix_and_bare_address() {
        let host = cidr("192.0.2.7/32");
        assert!(host.contains(ip("192.0.2.7")));
        assert!(!host.contains(ip("192.0.2.6")));
        assert_eq!(cidr("192.0.2.7"), host);
        assert_eq!(cidr("192.0.2.7").to_string(), "192.0.2.7/32");

        let host6 = cidr("::1/128");
        assert!(host6.contains(ip("::1")));
        assert!(!host6.contains(ip("::2")));
        assert!(!host6.contains(ip("127.0.0.1")));
        assert_eq!(cidr("::1"), host6);
    }

    #[test]
    fn cidr_ipv4_mapped() {
        let net = cidr("127.0.0.0/8");
        assert!(net.contains(ip("::ffff:127.0.0.1")));
        assert!(!net.contains(ip("::ffff:128.0.0.1")));
        // IPv4-compatible (deprecated) addresses are not mapped ones.
        assert!(!net.contains(ip("::127.0.0.1")));
        let mapped = cidr("::ffff:10.0.0.0/104");
        assert!(mapped.contains(ip("10.1.2.3")));
        assert!(mapped.contains(ip("::ffff:10.1.2.3")));
        assert!(!mapped.contains(ip("11.1.2.3")));
    }

    #[test]
    fn cidr_new() {
        assert_eq!(Cidr::new(ip("10.0.0.0"), 8), Ok(cidr("10.0.0.0/8")));
        assert!(matches!(
            Cidr::new(ip("10.0.0.0"), 33),
            Err(CidrError::PrefixTooLong {
                prefix: 33,
                max: 32
            })
        ));
        assert!(matches!(
            Cidr::new(ip("10.0.0.1"), 8),
            Err(CidrError::HostBitsSet { .. })
        ));
    }

    #[test]
    fn cidr_bad_inputs() {
        let err = |s: &str| s.parse::<Cidr>().unwrap_err();
        assert_eq!(err(""), CidrError::Address(String::new()));
        assert_eq!(err("10.0.0/8"), CidrError::Address("10.0.0".to_owned()));
        assert_eq!(
            err("example.com/8"),
            CidrError::Address("example.com".to_owned())
        );
        assert_eq!(err("10.0.0.0/"), CidrError::Prefix(String::new()));
        assert_eq!(err("10.0.0.0/x"), CidrError::Prefix("x".to_owned()));
        assert_eq!(err("10.0.0.0/+8"), CidrError::Prefix("+8".to_owned()));
        assert_eq!(err("10.0.0.0/ 8"), CidrError::Prefix(" 8".to_owned()));
        assert_eq!(err("10.0.0.0/8/8"), CidrError::Prefix("8/8".to_owned()));
        assert_eq!(err("10.0.0.0/0008"), CidrError::Prefix("0008".to_owned()));
        assert_eq!(
            err("10.0.0.0/33"),
            CidrError::PrefixTooLong {
                prefix: 33,
                max: 32
            }
        );
        assert_eq!(
            err("::/129"),
            CidrError::PrefixTooLong {
                prefix: 129,
                max: 128
            }
        );
        assert_eq!(
            err("::/999"),
            CidrError::PrefixTooLong {
                prefix: 999,
                max: 128
            }
        );
        let host_bits = err("10.1.2.3/8");
        assert_eq!(
            host_bits,
            CidrError::HostBitsSet {
                given: "10.1.2.3/8".to_owned(),
                network: cidr("10.0.0.0/8"),
            }
        );
        assert_eq!(
            host_bits.to_string(),
            "10.1.2.3/8 has host bits set; the network is 10.0.0.0/8"
        );
        assert!(matches!(err("::1/64"), CidrError::HostBitsSet { .. }));
    }

    #[test]
    fn line_columns() {
        let text = "ab\ncdé\n\nx";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 2), (1, 3));
        assert_eq!(line_column(text, 3), (2, 1));
        // 'é' is two bytes; the column counts characters.
        assert_eq!(line_column(text, 7), (2, 4));
        assert_eq!(line_column(text, 9), (4, 1));
        assert_eq!(line_column(text, 100), (4, 2));
        assert_eq!(line_column("", 0), (1, 1));
    }

    #[test]
    fn hosts() {
        assert_eq!(parse_host("192.0.2.20"), Ok("192.0.2.20".to_owned()));
        assert_eq!(parse_host("[2001:db8::1]"), Ok("2001:db8::1".to_owned()));
        assert_eq!(parse_host("2001:0db8::1"), Ok("2001:db8::1".to_owned()));
        assert_eq!(
            parse_host("pbx.example.com"),
            Ok("pbx.example.com".to_owned())
        );
        assert_eq!(parse_host("pbx"), Ok("pbx".to_owned()));
        assert!(parse_host("").is_err());
        assert!(parse_host("0.0.0.0").is_err());
        assert!(parse_host("pbx.example.com:5060").is_err());
        assert!(parse_host("pbx example").is_err());
        assert!(parse_host("192.0.2").is_err());
        assert!(parse_host("-pbx.example.com").is_err());
        assert!(parse_host("sip:pbx.example.com").is_err());
    }

    #[test]
    fn listeners() {
        assert!(parse_listener("127.0.0.1:5060").is_ok());
        assert!(parse_listener("[::1]:5060").is_ok());
        assert!(parse_listener("127.0.0.1:0").is_err());
        assert!(parse_listener("127.0.0.1").is_err());
        assert!(parse_listener("localhost:5060").is_err());
    }
}
