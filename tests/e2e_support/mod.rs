//! Shared by the end-to-end tests (`e2e_sipp`, `e2e_tls`, `e2e_kamailio`): the proxy
//! started in-process on free loopback ports, SIPp and Kamailio run as child processes
//! with deadlines, and every log they wrote printed when a test fails.
//!
//! Every port is chosen by the system (binding port 0), so the tests run in parallel
//! with each other and beside a proxy, PBX or demo already using the usual ports.
//! Nothing here sleeps for a fixed time to let something happen: each wait polls its
//! condition and gives up at a deadline, and a child still running when its handle is
//! dropped (a failed test unwinding) is killed.

#![allow(dead_code)] // each test crate uses its own part of this module

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use presence_proxy::config::Config;
use presence_proxy::runtime::{self, RuntimeHandle};
use presence_proxy::transport::Transport;

/// How long one SIPp or Kamailio run may take before the test gives up on it.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// SIPp's own global timeout (`-timeout`), under [`DEADLINE`] so that SIPp reports a
/// stuck scenario itself, with its logs, before the test has to kill it.
pub(crate) const SIPP_TIMEOUT: &str = "20s";

/// How often a wait looks at its condition again.
const POLL: Duration = Duration::from_millis(20);

/// The directory holding the SIPp scenarios.
pub(crate) fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sipp")
}

/// One scenario file.
pub(crate) fn scenario(name: &str) -> String {
    let path = scenarios_dir().join(name);
    assert!(path.is_file(), "missing scenario {}", path.display());
    path.display().to_string()
}

/// Sets up tracing for the proxy when `PRESENCE_E2E_LOG` holds a filter (such as
/// `presence_proxy=debug`); the output goes to the test's captured output.
pub(crate) fn init_tracing() {
    if let Ok(filter) = std::env::var("PRESENCE_E2E_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A loopback port free for both UDP and TCP right now. The sockets are closed on
/// return, so a child process can bind the port; ports come from the system's
/// ephemeral range, so another test picking the same one in between is unlikely.
pub(crate) fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on loopback");
        let port = udp.local_addr().expect("local address").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

/// Panics with a message naming the package when `program` cannot be run.
pub(crate) fn require_program(program: &str, version_arg: &str, package_hint: &str) {
    let found = Command::new(program)
        .arg(version_arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(found, "`{program}` is not installed: {package_hint}");
}

/// Fails the test unless SIPp can be run.
pub(crate) fn require_sipp() {
    require_program(
        "sipp",
        "-v",
        "run scripts/test.sh, which installs it (Debian package sip-tester)",
    );
}

// ------------------------------------------------------------------------- proxy

/// The proxy under test, running in this process.
pub(crate) struct Proxy {
    handle: Option<RuntimeHandle>,
    /// UDP listener.
    pub(crate) udp: SocketAddr,
    /// TCP listener.
    pub(crate) tcp: SocketAddr,
    /// TLS listener, when one was asked for.
    pub(crate) tls: Option<SocketAddr>,
}

/// TLS files for [`start_proxy`].
pub(crate) struct TlsFiles<'a> {
    /// PEM certificate chain.
    pub(crate) certificate: &'a Path,
    /// PEM private key.
    pub(crate) private_key: &'a Path,
}

/// Starts the proxy on `127.0.0.1` (UDP, TCP and optionally TLS, each on a port the
/// system picks) relaying to a UDP PBX at `127.0.0.1:pbx_port`.
pub(crate) async fn start_proxy(pbx_port: u16, tls: Option<TlsFiles<'_>>) -> Proxy {
    init_tracing();
    // the configuration file asks for real ports ("port 0" is refused: phones need to
    // know the port); the listeners are switched to port 0 once it is validated
    let mut toml = format!(
        r#"
[listen]
udp = ["127.0.0.1:5060"]
tcp = ["127.0.0.1:5060"]
{tls_listen}

[pbx]
host = "127.0.0.1"
port = {pbx_port}
transport = "udp"

[phones]
allowed_networks = ["127.0.0.0/8"]

[limits]
max_requests_per_second_per_source = 100000
shutdown_grace_seconds = 1
"#,
        tls_listen = if tls.is_some() {
            r#"tls = ["127.0.0.1:5061"]"#
        } else {
            ""
        },
    );
    if let Some(files) = &tls {
        let _ = write!(
            toml,
            "\n[tls]\ncertificate = {:?}\nprivate_key = {:?}\n",
            files.certificate.display().to_string(),
            files.private_key.display().to_string()
        );
    }
    let mut config = Config::from_toml(&toml, Path::new("e2e.toml"))
        .unwrap_or_else(|e| panic!("test configuration rejected: {e}\n{toml}"));
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("address");
    config.listen.udp = vec![any_port];
    config.listen.tcp = vec![any_port];
    if tls.is_some() {
        config.listen.tls = vec![any_port];
    }
    let handle = runtime::start(&config)
        .await
        .unwrap_or_else(|e| panic!("the proxy did not start: {e}"));
    let udp = handle.local_addr(Transport::Udp).expect("UDP listener");
    let tcp = handle.local_addr(Transport::Tcp).expect("TCP listener");
    let tls = handle.local_addr(Transport::Tls);
    Proxy {
        handle: Some(handle),
        udp,
        tcp,
        tls,
    }
}

impl Proxy {
    /// The observer's events (external calls, DND) from now on.
    pub(crate) fn phone_events(
        &self,
    ) -> tokio::sync::broadcast::Receiver<presence_proxy::observe::ObserveEvent> {
        self.handle
            .as_ref()
            .expect("the proxy is running")
            .phone_events()
    }

    /// The handle the sync engine uses to mark extensions Teams-busy.
    pub(crate) fn control(&self) -> runtime::RuntimeControl {
        self.handle
            .as_ref()
            .expect("the proxy is running")
            .control()
    }

    /// Stops the proxy (open transactions get the configured grace time).
    pub(crate) async fn shutdown(mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle.shutdown()).await;
        }
    }
}

// --------------------------------------------------------------------- processes

/// Whether something listens on `127.0.0.1:port` (UDP: a bound socket; TCP: a
/// listening one), read from /proc so that looking does not disturb it.
pub(crate) fn is_bound(transport: Transport, port: u16) -> bool {
    let (table, listen_state) = match transport {
        Transport::Udp => ("/proc/net/udp", None),
        _ => ("/proc/net/tcp", Some("0A")),
    };
    let Ok(text) = std::fs::read_to_string(table) else {
        return false;
    };
    let wanted = format!("0100007F:{port:04X}");
    text.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        local == Some(wanted.as_str()) && listen_state.is_none_or(|s| state == Some(s))
    })
}

/// A child process (SIPp or Kamailio) with its output in the test's directory.
pub(crate) struct Process {
    /// Name used for its files and in reports (`pbx`, `phone`, `kamailio`).
    pub(crate) name: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    /// Sent instead of a kill when stopping it (Kamailio stops its children on TERM).
    terminate_gently: bool,
}

impl Process {
    /// Starts `program` with `args`, stdout and stderr going to `dir/NAME.stdout` and
    /// `dir/NAME.stderr`, in a process group of its own.
    pub(crate) fn spawn(dir: &Path, name: &str, program: &str, args: &[String]) -> Process {
        use std::os::unix::process::CommandExt as _;
        let stdout =
            std::fs::File::create(dir.join(format!("{name}.stdout"))).expect("stdout file");
        let stderr =
            std::fs::File::create(dir.join(format!("{name}.stderr"))).expect("stderr file");
        std::fs::write(
            dir.join(format!("{name}.command")),
            format!("{program} {}\n", args.join(" ")),
        )
        .expect("command file");
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        Process {
            name: name.to_owned(),
            child: Some(child),
            status: None,
            terminate_gently: false,
        }
    }

    /// The exit status, if it has exited.
    pub(crate) fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.status = Some(status);
                }
            }
        }
        self.status
    }

    /// Waits for the process to exit, at most until `deadline`: `None` if it is still
    /// running then.
    pub(crate) async fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops the process if it still runs: SIGTERM for a gentle one (then SIGKILL to
    /// its group after 5 s), SIGKILL otherwise.
    pub(crate) fn stop(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let pid = child.id().to_string();
        if self.terminate_gently {
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if let Ok(Some(status)) = child.try_wait() {
                    self.status = Some(status);
                    break;
                }
                std::thread::sleep(POLL);
            }
        }
        // the whole group: the process and anything it forked (its group id is its pid)
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        if let Ok(status) = child.wait() {
            self.status.get_or_insert(status);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `port` is bound on loopback, or `process` has exited, or the deadline.
pub(crate) async fn wait_bound(
    process: &mut Process,
    transport: Transport,
    port: u16,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if is_bound(transport, port) {
            return Ok(());
        }
        if let Some(status) = process.try_status() {
            return Err(format!(
                "{} exited ({status}) before listening on {transport} port {port}",
                process.name
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not listen on {transport} port {port} within 10 s",
                process.name
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

// ----------------------------------------------------------------------------- SIPp

/// One SIPp run: where it listens and what it plays.
pub(crate) struct SippRun<'a> {
    /// Name for files and reports.
    pub(crate) name: &'a str,
    /// Scenario file name in `tests/sipp/`.
    pub(crate) scenario: &'a str,
    /// Local port (`-p`).
    pub(crate) port: u16,
    /// Remote host for a scenario that starts by sending (`None` for a UAS).
    pub(crate) remote: Option<SocketAddr>,
    /// Where to send instead of `remote` (`-rsa`): the proxy, as outbound proxy.
    pub(crate) send_to: Option<SocketAddr>,
    /// Further arguments (`-t t1`, `-s 201`, `-nr`, ...).
    pub(crate) extra: &'a [&'a str],
}

/// Starts SIPp for one call (`-m 1`) with every trace going into `dir`.
pub(crate) fn spawn_sipp(dir: &Path, run: &SippRun<'_>) -> Process {
    let name = run.name;
    let file = |suffix: &str| dir.join(format!("{name}_{suffix}")).display().to_string();
    let mut args: Vec<String> = Vec::new();
    if let Some(remote) = run.remote {
        args.push(remote.to_string());
    }
    if let Some(send_to) = run.send_to {
        args.extend(["-rsa".to_owned(), send_to.to_string()]);
    }
    args.extend(
        [
            "-sf",
            &scenario(run.scenario),
            "-i",
            "127.0.0.1",
            "-p",
            &run.port.to_string(),
            "-m",
            "1",
            "-nostdin",
            "-timeout",
            SIPP_TIMEOUT,
            "-timeout_error",
            "-trace_err",
            "-error_file",
            &file("errors.log"),
            "-trace_msg",
            "-message_file",
            &file("messages.log"),
            "-trace_logs",
            "-log_file",
            &file("logs.log"),
            "-trace_screen",
            "-screen_file",
            &file("screen.log"),
        ]
        .map(str::to_owned),
    );
    args.extend(run.extra.iter().map(|s| (*s).to_owned()));
    Process::spawn(dir, name, "sipp", &args)
}

/// Starts Kamailio (already checked to be installed) with `config`, logging to
/// `dir/kamailio.stderr`.
pub(crate) fn spawn_kamailio(dir: &Path, program: &str, config: &Path) -> Process {
    let args = [
        "-f",
        &config.display().to_string(),
        "-DD",
        "-E",
        "-n",
        "1",
        "-m",
        "64",
        "-M",
        "8",
        "-w",
        &dir.display().to_string(),
    ]
    .map(str::to_owned);
    let mut process = Process::spawn(dir, "kamailio", program, &args);
    process.terminate_gently = true;
    process
}

// --------------------------------------------------------------------------- reports

/// Everything the children wrote in `dir`, for a failure message: each file's last
/// 12 000 characters.
pub(crate) fn report(dir: &Path) -> String {
    let mut out = String::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries {
        let Ok(text) = std::fs::read(&path) else {
            continue;
        };
        let text = String::from_utf8_lossy(&text);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(stem) = name.strip_suffix(".stdout") {
            if dir.join(format!("{stem}_screen.log")).exists() {
                continue; // SIPp's screen, redrawn: its screen log has the final one
            }
        }
        let tail_start = text.len().saturating_sub(12_000);
        let tail_start = (tail_start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        let _ = writeln!(out, "\n======== {name} ({} bytes) ========", text.len());
        if tail_start > 0 {
            let _ = writeln!(out, "[... first {tail_start} bytes left out ...]");
        }
        out.push_str(&text[tail_start..]);
    }
    out
}

/// A fresh temporary directory for one test's files.
pub(crate) fn test_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temporary directory")
}

/// Fails the test with `what` and every log in `dir`, keeping `dir` for a look.
pub(crate) fn fail(dir: &mut tempfile::TempDir, what: &str) -> ! {
    dir.disable_cleanup(true);
    panic!(
        "{what}; logs in {} (kept):{}",
        dir.path().display(),
        report(dir.path())
    );
}

/// Asserts a child exited with status 0; otherwise fails with every log in `dir`.
pub(crate) fn assert_success(name: &str, status: Option<ExitStatus>, dir: &mut tempfile::TempDir) {
    match status {
        Some(s) if s.success() => {}
        Some(s) => fail(dir, &format!("{name} failed ({s})")),
        None => fail(
            dir,
            &format!("{name} still running at the deadline (killed)"),
        ),
    }
}

/// The messages of a SIPp message log (`-trace_msg`): `(received, text)` pairs.
pub(crate) fn logged_messages(path: &Path) -> Vec<(bool, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut messages = Vec::new();
    for block in text
        .split("----------------------------------------------- ")
        .skip(1)
    {
        let mut lines = block.splitn(3, '\n');
        let _timestamp = lines.next();
        let what = lines.next().unwrap_or_default();
        let body = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches(['\r', '\n']);
        messages.push((what.contains("received"), body.to_owned()));
    }
    messages
}

/// How many messages `path` logs as received whose first line starts with
/// `start_line` and that have a CSeq header containing `cseq`.
pub(crate) fn count_received(path: &Path, start_line: &str, cseq: &str) -> usize {
    logged_messages(path)
        .iter()
        .filter(|(received, text)| {
            *received
                && text.starts_with(start_line)
                && text
                    .lines()
                    .any(|l| l.to_ascii_lowercase().starts_with("cseq:") && l.contains(cseq))
        })
        .count()
}

/// The kamailio binary: on PATH, or where Debian puts it (/usr/sbin is not on every
/// user's PATH).
pub(crate) fn kamailio_program() -> String {
    for candidate in ["kamailio", "/usr/sbin/kamailio", "/usr/local/sbin/kamailio"] {
        let runs = Command::new(candidate)
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if runs {
            return candidate.to_owned();
        }
    }
    panic!("`kamailio` is not installed: install kamailio (scripts/test.sh does)");
}

/// The directory holding Kamailio's modules, every one of `needed` in it (the
/// presence modules come in kamailio-presence-modules).
pub(crate) fn kamailio_modules(needed: &[&str]) -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        for entry in entries.flatten() {
            candidates.push(entry.path().join("kamailio").join("modules"));
        }
    }
    candidates.extend(
        [
            "/usr/lib/kamailio/modules",
            "/usr/lib64/kamailio/modules",
            "/usr/local/lib/kamailio/modules",
            "/usr/local/lib64/kamailio/modules",
        ]
        .map(PathBuf::from),
    );
    candidates
        .into_iter()
        .find(|dir| needed.iter().all(|m| dir.join(m).is_file()))
        .unwrap_or_else(|| {
            panic!(
                "Kamailio's modules {needed:?} not found: install kamailio and \
                 kamailio-presence-modules (scripts/test.sh does)"
            )
        })
}
