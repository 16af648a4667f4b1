//! The configuration file: the shipped examples load with the documented values, and
//! every kind of mistake is reported with its file, line, column and dotted key.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use presence_proxy::config::{
    Cidr, Config, ConfigError, ConfigErrorKind, LimitsConfig, LogFormat, PhonesConfig,
};
use presence_proxy::transport::Transport;

const FILE: &str = "config/x.toml";

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// A scratch directory of its own for each test.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("config-tests")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn load_err(text: &str) -> ConfigError {
    match Config::from_toml(text, Path::new(FILE)) {
        Ok(config) => panic!("accepted: {config:#?}"),
        Err(err) => err,
    }
}

#[track_caller]
fn assert_at(err: &ConfigError, line: usize, column: usize, key: &str, kind: ConfigErrorKind) {
    assert_eq!(err.file(), Path::new(FILE), "{err}");
    assert_eq!(
        (err.line(), err.column(), err.key(), err.kind()),
        (line, column, key, kind),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("{FILE}:{line}:{column}: {key}: ")),
        "{err}"
    );
}

const MINIMAL: &str = r#"[listen]
udp = ["127.0.0.1:5060"]

[pbx]
host = "127.0.0.1"
"#;

// ---------------------------------------------------------------------------------
// Good files

#[test]
fn example_toml_loads_with_documented_values() {
    let config = Config::load(&repo_file("config/example.toml")).unwrap();

    assert_eq!(config.log.format, LogFormat::Human);
    assert_eq!(config.log.level, "info");

    assert_eq!(config.listen.udp, vec![addr("0.0.0.0:5060")]);
    assert_eq!(config.listen.tcp, vec![addr("0.0.0.0:5060")]);
    assert!(config.listen.tls.is_empty());
    assert_eq!(config.listen.advertised_address, Some(ip("192.0.2.10")));

    // No TLS listener, so the [tls] files are not read, but the section is kept.
    let tls = config.tls.as_ref().unwrap();
    assert_eq!(tls.certificate, Path::new("/etc/presence-proxy/cert.pem"));
    assert_eq!(tls.private_key, Path::new("/etc/presence-proxy/key.pem"));

    assert_eq!(config.pbx.host, "192.0.2.20");
    assert_eq!(config.pbx.port, Some(5060));
    assert_eq!(config.pbx.port_or_default(), 5060);
    assert_eq!(config.pbx.transport, Some(Transport::Udp));
    assert!(!config.pbx.path);

    assert_eq!(
        config.phones.allowed_networks,
        cidrs(&["10.0.0.0/8", "192.168.0.0/16", "127.0.0.0/8", "::1/128"])
    );
    assert!(config.phones.allows(ip("10.20.30.40")));
    assert!(config.phones.allows(ip("::ffff:192.168.1.1")));
    assert!(!config.phones.allows(ip("172.16.0.1")));

    // The example spells out every default.
    assert_eq!(config.limits, LimitsConfig::default());
    assert_eq!(config.limits.max_transactions, 100_000);
    assert_eq!(config.limits.max_bindings, 100_000);
    assert_eq!(config.limits.max_tcp_connections, 10_000);
    assert_eq!(config.limits.max_requests_per_second_per_source, 500);
    assert_eq!(config.limits.max_message_size, 65_536);
    assert_eq!(config.limits.shutdown_grace, Duration::from_secs(5));
}

#[test]
fn loopback_toml_loads_with_its_values() {
    let config = Config::load(&repo_file("config/loopback.toml")).unwrap();
    assert_eq!(config.log.format, LogFormat::Human);
    assert_eq!(config.log.level, "warn");
    assert_eq!(config.listen.udp, vec![addr("127.0.0.1:5060")]);
    assert_eq!(config.listen.tcp, vec![addr("127.0.0.1:5060")]);
    assert!(config.listen.tls.is_empty());
    assert_eq!(config.listen.advertised_address, None);
    assert_eq!(config.tls, None);
    assert_eq!(config.pbx.host, "127.0.0.1");
    assert_eq!(config.pbx.port_or_default(), 5070);
    assert_eq!(config.pbx.transport, Some(Transport::Udp));
    assert!(!config.pbx.path);
    assert_eq!(
        config.phones.allowed_networks,
        cidrs(&["127.0.0.0/8", "::1/128"])
    );
    // SIPp sends every call from one address: the benchmark config lifts that limit
    assert_eq!(
        config.limits,
        LimitsConfig {
            max_requests_per_second_per_source: 50_000,
            ..LimitsConfig::default()
        }
    );
}

#[test]
fn optional_sections_take_their_defaults() {
    let config = Config::from_toml(MINIMAL, Path::new(FILE)).unwrap();
    assert_eq!(config.log.format, LogFormat::Human);
    assert_eq!(config.log.level, "info");
    assert_eq!(config.tls, None);
    assert_eq!(config.pbx.port, None);
    assert_eq!(config.pbx.transport, None);
    assert_eq!(config.pbx.transport_or_default(), Transport::Udp);
    assert_eq!(config.pbx.dns_server, None);
    assert!(!config.pbx.uses_naptr());
    assert_eq!(config.pbx.port_or_default(), 5060);
    assert!(!config.pbx.path);
    assert_eq!(config.phones, PhonesConfig::default());
    assert_eq!(
        config.phones.allowed_networks,
        cidrs(&["127.0.0.0/8", "::1/128"])
    );
    assert_eq!(config.limits, LimitsConfig::default());
}

#[test]
fn pbx_tls_defaults_to_port_5061_and_other_values_parse() {
    let dir = std::env::temp_dir().join(format!("pp-tls-5061-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let text = r#"
[log]
format = "json"
level = "presence_proxy::proxy=debug,info"

[listen]
udp = ["[::1]:5060", "127.0.0.1:5060"]

[pbx]
host = "[2001:db8::20]"
transport = "tls"
path = true
tls_ca = "CA"

[limits]
max_message_size = 1500
shutdown_grace_seconds = 0
"#
    .replace("\"CA\"", &format!("{:?}", ca.display().to_string()));
    let config = Config::from_toml(&text, Path::new(FILE)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.log.level, "presence_proxy::proxy=debug,info");
    assert_eq!(
        config.listen.udp,
        vec![addr("[::1]:5060"), addr("127.0.0.1:5060")]
    );
    assert_eq!(config.pbx.host, "2001:db8::20");
    assert_eq!(config.pbx.host_ip(), Some(ip("2001:db8::20")));
    assert_eq!(config.pbx.transport, Some(Transport::Tls));
    assert_eq!(config.pbx.port_or_default(), 5061);
    assert!(config.pbx.path);
    assert_eq!(config.limits.max_message_size, 1500);
    assert_eq!(config.limits.shutdown_grace, Duration::ZERO);
    assert_eq!(config.limits.max_transactions, 100_000);
}

// ---------------------------------------------------------------------------------
// Bad files: one test per kind of mistake.

#[test]
fn display_names_file_line_column_and_key() {
    let text = r#"[listen]
udp = ["127.0.0.1:5060"]

[pbx]
host = "127.0.0.1"
port = 5060
transport = "sctp"
"#;
    let err = load_err(text);
    assert_eq!(
        err.to_string(),
        r#"config/x.toml:7:13: pbx.transport: expected one of "udp", "tcp", "tls", found "sctp""#
    );
    assert_at(&err, 7, 13, "pbx.transport", ConfigErrorKind::Invalid);
    assert_eq!(
        err.message(),
        r#"expected one of "udp", "tcp", "tls", found "sctp""#
    );
}

#[test]
fn syntax_error() {
    let text = r#"[listen]
udp = ["127.0.0.1:5060"]

[pbx]
host = 127.0.0.1
"#;
    let err = load_err(text);
    // The parser stops at the second '.' of what it took for a float.
    assert_at(&err, 5, 13, "pbx.host", ConfigErrorKind::Syntax);

    let text = "[listen]\nudp = [\"127.0.0.1:5060\"]\n[pbx\nhost = \"h\"\n";
    let err = load_err(text);
    assert_eq!((err.file(), err.line()), (Path::new(FILE), 3));
    assert_eq!(err.kind(), ConfigErrorKind::Syntax);
}

#[test]
fn duplicate_key() {
    let text = r#"[listen]
udp = ["127.0.0.1:5060"]

[pbx]
host = "127.0.0.1"
host = "127.0.0.2"
"#;
    let err = load_err(text);
    assert_at(&err, 6, 1, "pbx.host", ConfigErrorKind::Syntax);
    assert_eq!(err.message(), "duplicate key `host`");
}

#[test]
fn unknown_top_level_key() {
    let text = format!("{MINIMAL}\n[logging]\nlevel = \"debug\"\n");
    let err = load_err(&text);
    assert_at(&err, 7, 2, "logging", ConfigErrorKind::UnknownKey);
    assert!(err.message().starts_with("unknown key `logging`"), "{err}");
}

#[test]
fn unknown_nested_key() {
    let text = r#"[listen]
udp = ["127.0.0.1:5060"]

[pbx]
host = "127.0.0.1"
trasnport = "tcp"
"#;
    let err = load_err(text);
    assert_at(&err, 6, 1, "pbx.trasnport", ConfigErrorKind::UnknownKey);
    assert!(
        err.message().starts_with("unknown key `trasnport`"),
        "{err}"
    );
}

#[test]
fn wrong_type() {
    let text = r#"[listen]
udp = ["127.0.0.1:5060"]

[pbx]
host = "127.0.0.1"
port = "5060"
"#;
    let err = load_err(text);
    assert_at(&err, 6, 8, "pbx.port", ConfigErrorKind::WrongType);
    assert_eq!(
        err.message(),
        r#"invalid type: string "5060", expected an integer"#
    );

    // Inside an array, the index is part of the key.
    let text = "[listen]\nudp = [\"127.0.0.1:5060\", 5061]\n[pbx]\nhost = \"h\"\n";
    let err = load_err(text);
    assert_at(&err, 2, 26, "listen.udp[1]", ConfigErrorKind::WrongType);

    // A section given as a value.
    let text = "pbx = \"127.0.0.1\"\n[listen]\nudp = [\"127.0.0.1:5060\"]\n";
    let err = load_err(text);
    assert_at(&err, 1, 7, "pbx", ConfigErrorKind::WrongType);
}

#[test]
fn missing_section_and_key() {
    let err = load_err("[listen]\nudp = [\"127.0.0.1:5060\"]\n");
    assert_at(&err, 1, 1, "pbx", ConfigErrorKind::MissingKey);
    assert_eq!(err.message(), "missing section [pbx]");

    let text = "[listen]\nudp = [\"127.0.0.1:5060\"]\n\n[pbx]\nport = 5070\n";
    let err = load_err(text);
    assert_at(&err, 4, 1, "pbx.host", ConfigErrorKind::MissingKey);
}

#[test]
fn bad_socket_address() {
    let text = r#"[listen]
udp = ["127.0.0.1:5060"]
tcp = ["127.0.0.1:5060", "127.0.0.1"]

[pbx]
host = "127.0.0.1"
"#;
    let err = load_err(text);
    assert_at(&err, 3, 26, "listen.tcp[1]", ConfigErrorKind::Invalid);
    assert!(err.message().contains("has no port"), "{err}");

    let text = "[listen]\nudp = [\"localhost:5060\"]\n[pbx]\nhost = \"h\"\n";
    assert_at(
        &load_err(text),
        2,
        8,
        "listen.udp[0]",
        ConfigErrorKind::Invalid,
    );
}

#[test]
fn listener_port_zero() {
    let text = "[listen]\nudp = [\"127.0.0.1:0\"]\n[pbx]\nhost = \"h\"\n";
    let err = load_err(text);
    assert_at(&err, 2, 8, "listen.udp[0]", ConfigErrorKind::Invalid);
    assert!(err.message().contains("port 0"), "{err}");
}

#[test]
fn pbx_port_zero_and_out_of_range() {
    let text = format!("{MINIMAL}port = 0\n");
    assert_at(&load_err(&text), 6, 8, "pbx.port", ConfigErrorKind::Invalid);
    let text = format!("{MINIMAL}port = 65536\n");
    assert_at(&load_err(&text), 6, 8, "pbx.port", ConfigErrorKind::Invalid);
}

#[test]
fn duplicate_listener() {
    let text = r#"[listen]
tcp = ["127.0.0.1:5060"]
tls = ["127.0.0.1:5060"]

[pbx]
host = "127.0.0.1"
"#;
    let err = load_err(text);
    assert_at(&err, 3, 8, "listen.tls[0]", ConfigErrorKind::Invalid);

    let text = "[listen]\nudp = [\"127.0.0.1:5060\", \"127.0.0.1:5060\"]\n[pbx]\nhost = \"h\"\n";
    assert_at(
        &load_err(text),
        2,
        26,
        "listen.udp[1]",
        ConfigErrorKind::Invalid,
    );
}

#[test]
fn bad_advertised_address() {
    let text = r#"[listen]
udp = ["0.0.0.0:5060"]
advertised_address = "proxy.example.com"

[pbx]
host = "127.0.0.1"
"#;
    let err = load_err(text);
    assert_at(
        &err,
        3,
        22,
        "listen.advertised_address",
        ConfigErrorKind::Invalid,
    );

    let text = "[listen]\nudp = [\"0.0.0.0:5060\"]\nadvertised_address = \"0.0.0.0\"\n[pbx]\nhost = \"h\"\n";
    assert_at(
        &load_err(text),
        3,
        22,
        "listen.advertised_address",
        ConfigErrorKind::Invalid,
    );
}

#[test]
fn bad_pbx_host() {
    let text = "[listen]\nudp = [\"127.0.0.1:5060\"]\n[pbx]\nhost = \"pbx.example.com:5060\"\n";
    let err = load_err(text);
    assert_at(&err, 4, 8, "pbx.host", ConfigErrorKind::Invalid);
    assert!(err.message().contains("pbx.port"), "{err}");
}

#[test]
fn bad_cidr() {
    let text = format!(
        "{MINIMAL}\n[phones]\nallowed_networks = [\n  \"10.0.0.0/8\",\n  \"192.168.0.0/33\",\n]\n"
    );
    let err = load_err(&text);
    assert_at(
        &err,
        10,
        3,
        "phones.allowed_networks[1]",
        ConfigErrorKind::Invalid,
    );
    assert!(err.message().contains("longer than 32 bits"), "{err}");

    let text = format!("{MINIMAL}[phones]\nallowed_networks = [\"10.1.2.3/8\"]\n");
    let err = load_err(&text);
    assert_at(
        &err,
        7,
        21,
        "phones.allowed_networks[0]",
        ConfigErrorKind::Invalid,
    );
    assert!(err.message().contains("10.0.0.0/8"), "{err}");
}

#[test]
fn a_bare_domain_leaves_transport_and_port_to_dns() {
    let text = "[listen]\nudp = [\"127.0.0.1:5060\"]\n\n[pbx]\nhost = \"pbx.example.com\"\ndns_server = \"127.0.0.1:5353\"\n";
    let config = Config::from_toml(text, Path::new(FILE)).unwrap();
    assert_eq!(config.pbx.transport, None);
    assert_eq!(config.pbx.port, None);
    assert!(config.pbx.uses_naptr());
    assert_eq!(config.pbx.dns_server, Some(addr("127.0.0.1:5353")));
    assert!(
        config.summary().contains("NAPTR/SRV"),
        "{}",
        config.summary()
    );
    // an IP alone means port 53
    let text = text.replace("127.0.0.1:5353", "::1");
    let config = Config::from_toml(&text, Path::new(FILE)).unwrap();
    assert_eq!(config.pbx.dns_server, Some(addr("[::1]:53")));
    // a port makes it an A/AAAA lookup on UDP
    let text = format!("{text}port = 5070\n");
    let config = Config::from_toml(&text, Path::new(FILE)).unwrap();
    assert!(!config.pbx.uses_naptr());
    assert_eq!(config.pbx.transport_or_default(), Transport::Udp);
}

#[test]
fn bad_dns_server() {
    for bad in ["pbx.example.com", "127.0.0.1:0", "0.0.0.0:53", ""] {
        let text = format!("{MINIMAL}dns_server = \"{bad}\"\n");
        let err = load_err(&text);
        assert_at(&err, 6, 14, "pbx.dns_server", ConfigErrorKind::Invalid);
    }
}

#[test]
fn bad_transport() {
    let text = format!("{MINIMAL}transport = \"sctp\"\n");
    let err = load_err(&text);
    assert_at(&err, 6, 13, "pbx.transport", ConfigErrorKind::Invalid);
}

#[test]
fn bad_log_format_and_level() {
    let text = format!("[log]\nformat = \"xml\"\n\n{MINIMAL}");
    let err = load_err(&text);
    assert_at(&err, 2, 10, "log.format", ConfigErrorKind::Invalid);
    assert_eq!(
        err.message(),
        r#"expected one of "human", "json", found "xml""#
    );

    let text = format!("[log]\nlevel = \"info,[[\"\n\n{MINIMAL}");
    assert_at(
        &load_err(&text),
        2,
        9,
        "log.level",
        ConfigErrorKind::Invalid,
    );
}

#[test]
fn no_listeners() {
    let text = r#"# Nothing to listen on.
[listen]
udp = []
tcp = []

[pbx]
host = "127.0.0.1"
"#;
    let err = load_err(text);
    assert_at(&err, 2, 1, "listen", ConfigErrorKind::Invalid);
    assert!(err.message().starts_with("no listener"), "{err}");
}

#[test]
fn tls_listener_without_tls_section() {
    let text = r#"[listen]
udp = ["127.0.0.1:5060"]
tls = ["127.0.0.1:5061"]

[pbx]
host = "127.0.0.1"
"#;
    let err = load_err(text);
    assert_at(&err, 3, 7, "listen.tls", ConfigErrorKind::Invalid);
    assert!(err.message().contains("[tls]"), "{err}");
}

#[test]
fn tls_files_are_checked_and_resolved_against_the_config_directory() {
    let dir = scratch("tls_files");
    std::fs::write(
        dir.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(dir.join("key.der"), [0x30, 0x82, 0x01, 0x00]).unwrap();
    let file = dir.join("proxy.toml");

    let good = r#"[listen]
tls = ["127.0.0.1:5061"]

[tls]
certificate = "cert.pem"
private_key = "key.pem"

[pbx]
host = "127.0.0.1"
"#;
    let config = Config::from_toml(good, &file).unwrap();
    let tls = config.tls.unwrap();
    assert_eq!(tls.certificate, dir.join("cert.pem"));
    assert_eq!(tls.private_key, dir.join("key.pem"));
    assert_eq!(config.listen.tls, vec![addr("127.0.0.1:5061")]);

    let unreadable = good.replace("\"key.pem\"", "\"missing.pem\"");
    let err = Config::from_toml(&unreadable, &file).unwrap_err();
    assert_eq!(err.file(), file.as_path());
    assert_eq!(
        (err.line(), err.column(), err.key(), err.kind()),
        (6, 15, "tls.private_key", ConfigErrorKind::Invalid)
    );
    assert!(err.message().contains("cannot read"), "{err}");
    assert!(err.message().contains("missing.pem"), "{err}");

    let not_pem = good.replace("\"key.pem\"", "\"key.der\"");
    let err = Config::from_toml(&not_pem, &file).unwrap_err();
    assert_eq!((err.line(), err.key()), (6, "tls.private_key"));
    assert!(err.message().contains("not a PEM file"), "{err}");

    // A directory cannot be read as a file either.
    let directory = good.replace("\"cert.pem\"", "\".\"");
    let err = Config::from_toml(&directory, &file).unwrap_err();
    assert_eq!((err.line(), err.key()), (5, "tls.certificate"));
}

#[test]
fn unused_tls_section_is_not_read() {
    let text = format!(
        "{MINIMAL}[tls]\ncertificate = \"/nonexistent/cert.pem\"\nprivate_key = \"/nonexistent/key.pem\"\n"
    );
    let config = Config::from_toml(&text, Path::new(FILE)).unwrap();
    assert!(config.tls.is_some());
}

#[test]
fn wildcard_listener_without_advertised_address() {
    let text = r#"[listen]
udp = ["127.0.0.1:5060"]
tcp = ["127.0.0.1:5060", "[::]:5060"]

[pbx]
host = "127.0.0.1"
"#;
    let err = load_err(text);
    assert_at(&err, 3, 26, "listen.tcp[1]", ConfigErrorKind::Invalid);
    assert!(err.message().contains("advertised_address"), "{err}");

    let fixed = text.replace("[pbx]", "advertised_address = \"2001:db8::10\"\n\n[pbx]");
    let config = Config::from_toml(&fixed, Path::new(FILE)).unwrap();
    assert_eq!(config.listen.advertised_address, Some(ip("2001:db8::10")));
}

#[test]
fn zero_limit() {
    let text = format!("{MINIMAL}\n[limits]\nmax_transactions = 1000\nmax_tcp_connections = 0\n");
    let err = load_err(&text);
    assert_at(
        &err,
        9,
        23,
        "limits.max_tcp_connections",
        ConfigErrorKind::Invalid,
    );
    assert_eq!(err.message(), "must be at least 1, found 0");

    let text = format!("{MINIMAL}[limits]\nmax_requests_per_second_per_source = 5000000000\n");
    assert_at(
        &load_err(&text),
        7,
        38,
        "limits.max_requests_per_second_per_source",
        ConfigErrorKind::Invalid,
    );
    let text = format!("{MINIMAL}[limits]\nshutdown_grace_seconds = -1\n");
    assert_at(
        &load_err(&text),
        7,
        26,
        "limits.shutdown_grace_seconds",
        ConfigErrorKind::Invalid,
    );
}

#[test]
fn unreadable_file() {
    let path = Path::new("config/does-not-exist.toml");
    let err = Config::load(path).unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::Read);
    assert_eq!((err.file(), err.line(), err.key()), (path, 1, ""));
    assert!(
        err.to_string()
            .starts_with("config/does-not-exist.toml:1:1: cannot read"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------
// The command line.

fn check_config(file: &Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_presence-proxy"))
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn check_config_command() {
    let example = repo_file("config/example.toml");
    let (ok, stdout, stderr) = check_config(&example);
    assert!(ok, "{stderr}");
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some(format!("{}: ok", example.display()).as_str())
    );
    let summary = lines.next().unwrap();
    assert!(summary.contains("udp 0.0.0.0:5060"), "{summary}");
    assert!(summary.contains("192.0.2.20:5060"), "{summary}");
    assert!(summary.contains("10.0.0.0/8"), "{summary}");
    let teams = lines.next().unwrap();
    assert!(
        teams.starts_with("teams: tenant contoso.example (users pair); web: 127.0.0.1:8080;"),
        "{teams}"
    );
    assert!(
        teams.ends_with("pbx -> teams: on; directory: 2 extensions"),
        "{teams}"
    );
    assert_eq!(lines.next(), None);
    assert_eq!(stderr, "");

    let dir = scratch("check_config_command");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[listen]\nudp = [\"127.0.0.1:5060\"]\n\n[pbx]\nhost = \"127.0.0.1\"\ntransport = \"sctp\"\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = check_config(&bad);
    assert!(!ok);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "{}:6:13: pbx.transport: expected one of \"udp\", \"tcp\", \"tls\", found \"sctp\"\n",
            bad.display()
        )
    );

    let (ok, _, stderr) = check_config(&dir.join("absent.toml"));
    assert!(!ok);
    assert!(stderr.contains("absent.toml:1:1: cannot read"), "{stderr}");
}

#[test]
fn tls_towards_the_pbx_needs_its_ca() {
    let text = "[listen]\nudp = [\"127.0.0.1:5060\"]\n\n[pbx]\nhost = \"192.0.2.20\"\ntransport = \"tls\"\n";
    let err = Config::from_toml(text, Path::new(FILE)).unwrap_err();
    assert_eq!((err.line(), err.key()), (6, "pbx.tls_ca"), "{err}");
    let dir = std::env::temp_dir().join(format!("pp-pbx-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let ok = format!(
        "{text}tls_ca = {:?}\ntls_server_name = \"pbx.example.com\"\n",
        ca.display().to_string()
    );
    let config = Config::from_toml(&ok, Path::new(FILE)).unwrap();
    assert_eq!(config.pbx.tls_ca.as_deref(), Some(ca.as_path()));
    assert_eq!(
        config.pbx.tls_server_name.as_deref(),
        Some("pbx.example.com")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------
// [calls] and [dnd]

#[test]
fn calls_and_dnd_default_and_load() {
    let config = Config::from_toml(MINIMAL, Path::new(FILE)).unwrap();
    let observe = config.observe_config();
    assert_eq!(observe.rules.dnd_on_codes, ["*78"]);
    assert_eq!(observe.rules.internal_patterns.len(), 1);
    assert_eq!(observe.stale_call_timeout, Duration::from_secs(14_400));

    let text = format!(
        "{MINIMAL}\n[calls]\ninternal_patterns = [\"^2[0-9]{{2}}$\"]\nfeature_code_patterns = [\"^97$\"]\n\
         extensions = [\"201\", \"+49-30-1234\"]\ncaller_identity = [\"from\"]\n\
         stale_call_timeout_seconds = 600\n\n[dnd]\non_codes = [\"%2A74\"]\noff_codes = []\n"
    );
    let config = Config::from_toml(&text, Path::new(FILE)).unwrap();
    let observe = config.observe_config();
    let rules = &observe.rules;
    use presence_proxy::observe::{CallClass, DndAction, IdentitySource};
    assert_eq!(rules.classify("250", |_| false), CallClass::Internal);
    assert_eq!(rules.classify("350", |_| false), CallClass::External);
    assert_eq!(rules.classify("97", |_| false), CallClass::StarCode(None));
    assert_eq!(
        rules.classify("*74", |_| false),
        CallClass::StarCode(Some(DndAction::On)),
        "codes are normalised like dialled numbers"
    );
    assert_eq!(rules.classify("*79", |_| false), CallClass::StarCode(None));
    assert_eq!(rules.caller_identity, [IdentitySource::From]);
    assert_eq!(observe.directory, ["201", "+49301234"]);
    assert_eq!(observe.stale_call_timeout, Duration::from_secs(600));
    assert_eq!(
        config.dnd.toggle_codes,
        ["*76"],
        "unset keys keep their default"
    );
}

#[test]
fn calls_errors_name_the_entry() {
    let err = load_err(&format!(
        "{MINIMAL}\n[calls]\ninternal_patterns = [\"^1\", \"([0-9]\"]\n"
    ));
    assert_at(
        &err,
        8,
        28,
        "calls.internal_patterns[1]",
        ConfigErrorKind::Invalid,
    );
    assert!(
        err.message().contains("regular expression") && err.message().contains("unclosed group"),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'), "one line: {err}");

    let err = load_err(&format!(
        "{MINIMAL}\n[calls]\ncaller_identity = [\"pai\"]\n"
    ));
    assert_at(
        &err,
        8,
        20,
        "calls.caller_identity[0]",
        ConfigErrorKind::Invalid,
    );

    let err = load_err(&format!(
        "{MINIMAL}\n[calls]\nstale_call_timeout_seconds = 5\n"
    ));
    assert_at(
        &err,
        8,
        30,
        "calls.stale_call_timeout_seconds",
        ConfigErrorKind::Invalid,
    );

    let err = load_err(&format!("{MINIMAL}\n[dnd]\non_code = [\"*78\"]\n"));
    assert_eq!(err.kind(), ConfigErrorKind::UnknownKey, "{err}");
    assert_eq!(err.line(), 8, "{err}");
}

// ---------------------------------------------------------------------------------
// The Teams-side sections: [graph], [web], [store], [sync], [directory]

#[test]
fn example_toml_documents_the_teams_side() {
    use presence_proxy::config::{ClientSecret, SyncSettings};
    use presence_proxy::sync::BusyResponse;
    let config = Config::load(&repo_file("config/example.toml")).unwrap();
    let graph = config.graph.as_ref().unwrap();
    assert_eq!(graph.tenant, "contoso.example");
    assert_eq!(
        graph.client_secret,
        ClientSecret::File(repo_file("config/graph-client-secret.txt"))
    );
    assert_eq!(graph.login_base, "https://login.microsoftonline.com");
    assert_eq!(graph.graph_base, "https://graph.microsoft.com/v1.0");
    assert!(!graph.app_only);
    assert_eq!(graph.notification_url, None);
    let web = config.web.as_ref().unwrap();
    assert_eq!(web.listen, addr("127.0.0.1:8080"));
    assert_eq!(web.public_url.as_deref(), Some("https://proxy.example.com"));
    assert_eq!(
        config.store.path,
        repo_file("config/presence-proxy.sqlite3"),
        "relative to the file"
    );
    assert_eq!(
        config.store.key_file,
        repo_file("config/presence-proxy.sqlite3.key")
    );
    // the example spells out every [sync] default but the switch
    assert_eq!(
        config.sync,
        SyncSettings {
            pbx_to_teams: Some(true),
            ..SyncSettings::default()
        }
    );
    assert_eq!(config.sync.busy_response, BusyResponse::BusyHere);
    assert_eq!(config.teams_busy_response(), Some((486, "Busy Here")));
    assert_eq!(
        config.directory,
        [
            ("201".to_owned(), "alice@contoso.example".to_owned()),
            ("202".to_owned(), "bob@contoso.example".to_owned())
        ]
    );
    // directory extensions are known extensions: calls between them are internal
    assert!(
        config
            .observe_config()
            .directory
            .contains(&"202".to_owned())
    );
}

#[test]
fn without_teams_sections_the_defaults_hold() {
    let config = Config::from_toml(MINIMAL, Path::new(FILE)).unwrap();
    assert_eq!(config.graph, None);
    assert_eq!(config.web, None);
    assert_eq!(
        config.store.path,
        Path::new("config/presence-proxy.sqlite3"),
        "next to the file"
    );
    assert_eq!(
        config.store.key_file,
        Path::new("config/presence-proxy.sqlite3.key")
    );
    assert_eq!(config.sync, presence_proxy::config::SyncSettings::default());
    assert!(config.directory.is_empty());
}

#[test]
fn teams_side_mistakes_name_their_key() {
    let with = |extra: &str| format!("{MINIMAL}{extra}");
    // MINIMAL is 5 lines; the extra starts on line 6
    let graph = "[graph]\ntenant = \"contoso.example\"\nclient_id = \"c\"\n";

    let err = load_err(&with(
        "[graph]\ntenant = \"common\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
    ));
    assert_at(&err, 7, 10, "graph.tenant", ConfigErrorKind::Invalid);

    let err = load_err(&with(&format!(
        "{graph}client_secret = \"s\"\nclient_secret_file = \"f\"\n"
    )));
    assert_at(&err, 9, 17, "graph.client_secret", ConfigErrorKind::Invalid);

    let err = load_err(&with(graph));
    assert_eq!(err.key(), "graph.client_secret", "{err}");

    let err = load_err(&with(&format!(
        "{graph}client_secret = \"s\"\ngraph_base = \"graph.example\"\n"
    )));
    assert_at(&err, 10, 14, "graph.graph_base", ConfigErrorKind::Invalid);

    let err = load_err(&with("[web]\nlisten = \"localhost\"\n"));
    assert_at(&err, 7, 10, "web.listen", ConfigErrorKind::Invalid);

    let err = load_err(&with(
        "[web]\nlisten = \"127.0.0.1:8080\"\nadmin_password_hash = \"hunter2\"\n",
    ));
    assert_at(
        &err,
        8,
        23,
        "web.admin_password_hash",
        ConfigErrorKind::Invalid,
    );
    assert!(err.message().contains("argon2"), "{err}");

    let err = load_err(&with(
        "[web]\nlisten = \"127.0.0.1:8080\"\nsession_minutes = 0\n",
    ));
    assert_at(&err, 8, 19, "web.session_minutes", ConfigErrorKind::Invalid);

    let err = load_err(&with("[sync]\nbusy_response = 404\n"));
    assert_at(&err, 7, 17, "sync.busy_response", ConfigErrorKind::Invalid);

    let err = load_err(&with("[sync]\nteams_busy = [\"Busy\", \"Snoozing\"]\n"));
    assert_at(&err, 7, 23, "sync.teams_busy[1]", ConfigErrorKind::Invalid);
    assert!(err.message().contains("Snoozing"), "{err}");

    let err = load_err(&with("[sync]\npoll_interval_ms = 50\n"));
    assert_at(
        &err,
        7,
        20,
        "sync.poll_interval_ms",
        ConfigErrorKind::Invalid,
    );

    let err = load_err(&with("[sync]\ndnd_mode = \"loud\"\n"));
    assert_at(&err, 7, 12, "sync.dnd_mode", ConfigErrorKind::Invalid);

    let err = load_err(&with("[sync]\nscope = \"some\"\n"));
    assert_at(&err, 7, 9, "sync.scope", ConfigErrorKind::Invalid);

    let err = load_err(&with("[sync]\nsession_expiration_minutes = 300\n"));
    assert_at(
        &err,
        7,
        30,
        "sync.session_expiration_minutes",
        ConfigErrorKind::Invalid,
    );

    let err = load_err(&with("[directory]\n\"201\" = \"alice\"\n"));
    assert_at(&err, 7, 9, "directory.201", ConfigErrorKind::Invalid);

    let err = load_err(&with("[sync]\nbusy = 486\n"));
    assert_eq!(err.kind(), ConfigErrorKind::UnknownKey, "{err}");
    assert_eq!(err.key(), "sync.busy", "{err}");
}

#[test]
fn sync_values_parse() {
    use presence_proxy::sync::{BusyResponse, CallEnd, DndMode};
    let text = format!(
        "{MINIMAL}[sync]\nscope = [\"201\", \"202\"]\nbusy_response = \"off\"\ndnd_mode = \"preferred\"\ncall_end = \"available\"\nteams_busy = [\"Busy/InACall\"]\ncoalesce_ms = 0\n"
    );
    let config = Config::from_toml(&text, Path::new(FILE)).unwrap();
    assert_eq!(
        config.sync.scope,
        Some(vec!["201".to_owned(), "202".to_owned()])
    );
    assert_eq!(config.sync.busy_response, BusyResponse::Off);
    assert_eq!(config.teams_busy_response(), None);
    assert_eq!(config.sync.rules.dnd_mode, DndMode::Preferred);
    assert_eq!(config.sync.rules.call_end, CallEnd::Available);
    assert_eq!(config.sync.rules.coalesce, Duration::ZERO);
    use presence_proxy::graph::{Activity, Availability};
    assert!(
        config
            .sync
            .rules
            .busy
            .is_busy(&Availability::Busy, &Activity::InACall)
    );
    assert!(
        !config
            .sync
            .rules
            .busy
            .is_busy(&Availability::Busy, &Activity::InAMeeting)
    );
}

#[test]
fn blf_settings_parse_and_name_their_key() {
    use presence_proxy::blf::PhoneFamily;
    let config = Config::load(&repo_file("config/example.toml")).unwrap();
    assert!(!config.blf.teams_dialog_ids);
    assert_eq!(config.blf.profile, None);
    let renderer = config.blf.renderer();
    assert_eq!(
        renderer.profile_for(Some(b"ACME DESK 9")).family,
        PhoneFamily::CiscoSpa
    );
    assert_eq!(
        renderer.profile_for(Some(b"Grandstream GXP2170")).family,
        PhoneFamily::Grandstream
    );

    let err = load_err(&format!("{MINIMAL}[blf]\nprofile = \"nokia\"\n"));
    assert_at(&err, 7, 11, "blf.profile", ConfigErrorKind::Invalid);
    let err = load_err(&format!(
        "{MINIMAL}[blf]\nprofiles = [{{ user_agent = \"X\", profile = \"yealink\" }}, {{ user_agent = \"\", profile = \"snom\" }}]\n"
    ));
    assert_eq!(err.key(), "blf.profiles[1].user_agent", "{err}");
    let forced = Config::from_toml(
        &format!("{MINIMAL}[blf]\nprofile = \"polycom\"\nteams_dialog_ids = true\n"),
        Path::new(FILE),
    )
    .unwrap();
    assert!(forced.blf.renderer().injection.with_dialog_ids);
    assert_eq!(
        forced.blf.renderer().profile_for(Some(b"Yealink")).family,
        PhoneFamily::Polycom
    );
}
