//! A real browser for the tests: headless Chromium driven through ChromeDriver
//! (WebDriver, by `fantoccini`), one private ChromeDriver and profile per [`Browser`], so
//! that any number of tests can use browsers in parallel.
//!
//! [`Browser::start`] launches `/usr/bin/chromedriver --port=0` in a process group of its
//! own. ChromeDriver picks a free loopback port itself and prints it
//! (`ChromeDriver was started successfully on port N.`); the harness reads it, waits until
//! `/status` says ready, and opens a session with headless Chromium: `--headless=new`,
//! `--no-sandbox`, `--disable-gpu`, `--disable-dev-shm-usage`, a temporary
//! `--user-data-dir`, a fixed 1280x900 window, no proxy, no background networking (only
//! loopback traffic). Everything the browser writes, its crash-handler database included
//! (`XDG_CONFIG_HOME`), lives in one temporary directory.
//!
//! Each helper polls its condition every [`POLL`] until a deadline ([`Browser::timeout`],
//! 10 s by default) and never sleeps for a fixed time. On a timeout it panics with the
//! page's URL, title and source, a screenshot (kept) and ChromeDriver's log.
//!
//! Dropping a [`Browser`] (a failed test unwinding too) kills ChromeDriver's process
//! group (ChromeDriver and every Chromium process) and any process still naming the
//! browser's directory (Chromium's crashpad handlers detach into their own session), then
//! removes the directory. [`Browser::close`] first ends the WebDriver session gently.
//!
//! Missing Chromium or ChromeDriver fails the test, naming `scripts/test.sh`, which installs
//! them (Debian packages `chromium` and `chromium-driver`). `PRESENCE_CHROMEDRIVER` and
//! `PRESENCE_CHROMIUM` point at other binaries.

#![allow(dead_code)] // each test crate uses its own part of this module

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
pub(crate) use reqwest::Url;
use serde_json::{Value, json};

/// Where Debian's `chromium-driver` puts ChromeDriver.
pub(crate) const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Where Debian's `chromium` puts the browser (a launcher script).
pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";
/// The window size, so that screenshots are stable.
pub(crate) const WINDOW: (u32, u32) = (1280, 900);
/// Default deadline of every helper.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a helper looks at its condition again.
pub(crate) const POLL: Duration = Duration::from_millis(25);
/// How long ChromeDriver may take to listen and Chromium to start (two cores, tests in
/// parallel: starting Chromium may take some seconds).
const STARTUP: Duration = Duration::from_secs(60);
/// The longest one WebDriver command may take before the harness gives up on it.
const COMMAND: Duration = Duration::from_secs(30);
/// What a missing binary's message tells to do.
const INSTALL_HINT: &str = "run scripts/test.sh, which installs Chromium and ChromeDriver \
     (Debian packages chromium and chromium-driver)";

/// Which binaries to run and how (see [`Browser::start_with`]).
#[derive(Clone, Debug)]
pub(crate) struct BrowserConfig {
    /// ChromeDriver (default [`CHROMEDRIVER`], or `PRESENCE_CHROMEDRIVER`).
    pub(crate) chromedriver: PathBuf,
    /// Chromium (default [`CHROMIUM`], or `PRESENCE_CHROMIUM`).
    pub(crate) chromium: PathBuf,
    /// Window size in CSS pixels (default [`WINDOW`]).
    pub(crate) window: (u32, u32),
    /// Deadline of each helper (default [`DEFAULT_TIMEOUT`]).
    pub(crate) timeout: Duration,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        let from_env = |name: &str, default: &str| {
            std::env::var_os(name).map_or_else(|| PathBuf::from(default), PathBuf::from)
        };
        Self {
            chromedriver: from_env("PRESENCE_CHROMEDRIVER", CHROMEDRIVER),
            chromium: from_env("PRESENCE_CHROMIUM", CHROMIUM),
            window: WINDOW,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// One headless Chromium with its own ChromeDriver and profile.
pub(crate) struct Browser {
    client: Option<Client>,
    driver: Option<Child>,
    driver_pid: u32,
    port: u16,
    /// Profile, XDG directories, ChromeDriver's log; removed on drop.
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    timeout: Duration,
}

/// Fails the test unless `path` is an executable file.
fn require_binary(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    assert!(
        executable,
        "{what} is not installed (no executable {}): {INSTALL_HINT}",
        path.display()
    );
}

impl Browser {
    /// Launches ChromeDriver and headless Chromium with the defaults.
    pub(crate) async fn start() -> Browser {
        Self::start_with(BrowserConfig::default()).await
    }

    /// Launches ChromeDriver and headless Chromium as `config` says.
    pub(crate) async fn start_with(config: BrowserConfig) -> Browser {
        require_binary(&config.chromedriver, "ChromeDriver");
        require_binary(&config.chromium, "Chromium");
        let root = tempfile::Builder::new()
            .prefix("presence-browser-")
            .tempdir()
            .expect("a temporary directory for the browser");
        let root_path = root.path().to_path_buf();
        let profile = root_path.join("profile");
        for dir in ["profile", "xdg-config", "xdg-cache", "xdg-data"] {
            std::fs::create_dir_all(root_path.join(dir)).expect("browser directories");
        }
        let (driver, port_rx) = spawn_driver(&config.chromedriver, &root_path);
        let driver_pid = driver.id();
        // from here on, a failure unwinding drops the browser, which kills the driver
        let mut browser = Browser {
            client: None,
            driver: Some(driver),
            driver_pid,
            port: 0,
            root: Some(root),
            root_path,
            timeout: config.timeout,
        };
        browser.port = browser.wait_port(port_rx).await;
        browser.wait_ready().await;

        let (width, height) = config.window;
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={width},{height}"),
            "--force-device-scale-factor=1".to_owned(),
            "--hide-scrollbars".to_owned(),
            "--lang=en-US".to_owned(),
            // loopback only: no proxy from the environment, nothing phoning home
            "--no-proxy-server".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-default-apps".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--password-store=basic".to_owned(),
            "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication"
                .to_owned(),
        ];
        let capabilities = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": { "implicit": 0, "pageLoad": 20_000, "script": 10_000 },
            "goog:chromeOptions": {
                "binary": config.chromium.display().to_string(),
                "args": args,
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let url = format!("http://127.0.0.1:{}", browser.port);
        // plain HTTP to loopback: no TLS connector (and no rustls crypto provider) needed
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut builder = ClientBuilder::new(connector);
        builder.capabilities(capabilities);
        let connecting = builder.connect(&url);
        match tokio::time::timeout(STARTUP, connecting).await {
            Ok(Ok(client)) => browser.client = Some(client),
            Ok(Err(e)) => {
                let log = browser.driver_log();
                panic!("ChromeDriver could not start Chromium: {e}\nChromeDriver's log:\n{log}");
            }
            Err(_) => {
                let log = browser.driver_log();
                panic!("Chromium did not start within {STARTUP:?}\nChromeDriver's log:\n{log}");
            }
        }
        browser.size_viewport(width, height).await;
        browser
    }

    /// Makes the viewport (what a screenshot shows) exactly `width` x `height`: headless
    /// Chromium takes some of the window for its (invisible) toolbars, so the window is
    /// grown by what they take.
    async fn size_viewport(&self, width: u32, height: u32) {
        let inner = || async {
            let size = self
                .command(
                    "execute",
                    self.client()
                        .execute("return [window.innerWidth, window.innerHeight];", vec![]),
                )
                .await
                .unwrap_or_else(|e| panic!("cannot read the viewport's size: {e}"));
            let n = |i: usize| size[i].as_u64().and_then(|v| u32::try_from(v).ok());
            (n(0).unwrap_or(0), n(1).unwrap_or(0))
        };
        let (w, h) = inner().await;
        if (w, h) == (width, height) {
            return;
        }
        let (outer_w, outer_h) = self
            .command("get_window_size", self.client().get_window_size())
            .await
            .unwrap_or_else(|e| panic!("cannot read the window's size: {e}"));
        // the toolbars take outer - inner: keep that, and make inner what is wanted
        let grow = |outer: u64, inner: u32, wanted: u32| {
            u32::try_from(outer)
                .unwrap_or(wanted)
                .saturating_sub(inner)
                .saturating_add(wanted)
        };
        self.command(
            "set_window_size",
            self.client()
                .set_window_size(grow(outer_w, w, width), grow(outer_h, h, height)),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot size the window: {e}"));
        let now = inner().await;
        assert_eq!(
            now,
            (width, height),
            "the viewport did not take the size asked for"
        );
    }

    /// Waits until ChromeDriver reports the port it listens on.
    async fn wait_port(&mut self, port_rx: mpsc::Receiver<u16>) -> u16 {
        let deadline = Instant::now() + STARTUP;
        loop {
            match port_rx.try_recv() {
                Ok(0) => panic!("ChromeDriver reported port 0 for --port=0"),
                Ok(port) => return port,
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    let log = self.driver_log();
                    panic!("ChromeDriver closed its output without reporting its port\n{log}");
                }
            }
            if let Some(Ok(Some(status))) = self.driver.as_mut().map(Child::try_wait) {
                let log = self.driver_log();
                panic!("ChromeDriver exited ({status}) without reporting its port\n{log}");
            }
            if Instant::now() >= deadline {
                let log = self.driver_log();
                panic!("ChromeDriver did not report its port within {STARTUP:?}\n{log}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until ChromeDriver's `/status` says ready.
    async fn wait_ready(&mut self) {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("HTTP client");
        let url = format!("http://127.0.0.1:{}/status", self.port);
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(response) = http.get(&url).send().await {
                if let Ok(body) = response.json::<Value>().await {
                    if body["value"]["ready"] == Value::Bool(true) {
                        return;
                    }
                }
            }
            if let Some(Ok(Some(status))) = self.driver.as_mut().map(Child::try_wait) {
                let log = self.driver_log();
                panic!("ChromeDriver exited ({status}) before it was ready\n{log}");
            }
            if Instant::now() >= deadline {
                let log = self.driver_log();
                panic!("ChromeDriver was not ready within {STARTUP:?}\n{log}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The WebDriver client, for anything the helpers do not cover.
    pub(crate) fn client(&self) -> &Client {
        self.client.as_ref().expect("the browser is open")
    }

    /// ChromeDriver's process id (its process group holds every Chromium process).
    pub(crate) fn driver_pid(&self) -> u32 {
        self.driver_pid
    }

    /// ChromeDriver's loopback port.
    pub(crate) fn driver_port(&self) -> u16 {
        self.port
    }

    /// The browser's own temporary directory (profile, logs), removed on drop.
    pub(crate) fn dir(&self) -> &Path {
        &self.root_path
    }

    /// The deadline of each helper.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the deadline of each helper.
    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs one WebDriver command, giving up after [`COMMAND`].
    async fn command<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, CmdError>>,
    ) -> Result<T, CmdError> {
        match tokio::time::timeout(COMMAND, fut).await {
            Ok(result) => result,
            Err(_) => {
                self.fail(&format!(
                    "{what}: no answer from ChromeDriver within {COMMAND:?}"
                ))
                .await
            }
        }
    }

    /// Navigates to `url` and waits for the page to load.
    pub(crate) async fn goto(&self, url: &str) {
        if let Err(e) = self.command("goto", self.client().goto(url)).await {
            self.fail(&format!("cannot open {url}: {e}")).await;
        }
    }

    /// The address of the page shown now.
    pub(crate) async fn current_url(&self) -> Url {
        match self
            .command("current_url", self.client().current_url())
            .await
        {
            Ok(url) => url,
            Err(e) => panic!("cannot read the current URL: {e}"),
        }
    }

    /// The page's source as the browser holds it now.
    pub(crate) async fn source(&self) -> String {
        self.command("source", self.client().source())
            .await
            .unwrap_or_else(|e| format!("(no source: {e})"))
    }

    /// The page's title.
    pub(crate) async fn title(&self) -> String {
        self.command("title", self.client().title())
            .await
            .unwrap_or_else(|e| format!("(no title: {e})"))
    }

    /// Waits until an element matches `css`, and returns the first.
    pub(crate) async fn wait_for(&self, css: &str) -> Element {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Ok(element) = self
                .command("find", self.client().find(Locator::Css(css)))
                .await
            {
                return element;
            }
            self.tick(deadline, &format!("no element matches `{css}`"))
                .await;
        }
    }

    /// Waits until an element matching `css` has `needle` in its text; returns that text.
    pub(crate) async fn wait_for_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + self.timeout;
        let mut seen: Vec<String> = Vec::new();
        loop {
            if let Ok(elements) = self
                .command("find_all", self.client().find_all(Locator::Css(css)))
                .await
            {
                seen.clear();
                for element in elements {
                    if let Ok(text) = self.command("text", element.text()).await {
                        if text.contains(needle) {
                            return text;
                        }
                        seen.push(text);
                    }
                }
            }
            self.tick(
                deadline,
                &format!("no element matching `{css}` shows {needle:?} (texts now: {seen:?})"),
            )
            .await;
        }
    }

    /// The text of the first element matching `css`, once there is one.
    pub(crate) async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + self.timeout;
        loop {
            let element = self.wait_for(css).await;
            match self.command("text", element.text()).await {
                Ok(text) => return text,
                // replaced while we looked (stale element): look again
                Err(e) => {
                    self.tick(deadline, &format!("cannot read the text of `{css}`: {e}"))
                        .await;
                }
            }
        }
    }

    /// Clicks the first element matching `css`, once there is one that can be clicked.
    pub(crate) async fn click(&self, css: &str) {
        let deadline = Instant::now() + self.timeout;
        loop {
            let element = self.wait_for(css).await;
            match self.command("click", element.click()).await {
                Ok(()) => return,
                // stale, hidden, covered or disabled for now: look again
                Err(e) => {
                    self.tick(deadline, &format!("cannot click `{css}`: {e}"))
                        .await;
                }
            }
        }
    }

    /// Replaces the value of the first field matching `css` with `text`, and checks that
    /// the field holds it.
    pub(crate) async fn fill(&self, css: &str, text: &str) {
        let deadline = Instant::now() + self.timeout;
        loop {
            let element = self.wait_for(css).await;
            let result = async {
                self.command("clear", element.clear()).await?;
                self.command("send_keys", element.send_keys(text)).await?;
                self.command("value", element.prop("value")).await
            }
            .await;
            let problem = match result {
                Ok(Some(value)) if value == text => return,
                Ok(value) => format!("`{css}` holds {value:?}, not {text:?}"),
                Err(e) => format!("cannot fill `{css}`: {e}"),
            };
            self.tick(deadline, &problem).await;
        }
    }

    /// Waits until the current URL satisfies `predicate`; returns it.
    pub(crate) async fn wait_for_url<F>(&self, predicate: F) -> Url
    where
        F: Fn(&Url) -> bool,
    {
        let deadline = Instant::now() + self.timeout;
        loop {
            // a page still loading may make the command fail for a moment
            if let Ok(url) = self
                .command("current_url", self.client().current_url())
                .await
            {
                if predicate(&url) {
                    return url;
                }
            }
            self.tick(deadline, "the URL never became the one expected")
                .await;
        }
    }

    /// Writes a PNG screenshot of the window to `path`.
    pub(crate) async fn screenshot(&self, path: &Path) {
        let png = match self.command("screenshot", self.client().screenshot()).await {
            Ok(png) => png,
            Err(e) => panic!("cannot take a screenshot: {e}"),
        };
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "the screenshot is not a PNG"
        );
        std::fs::write(path, &png)
            .unwrap_or_else(|e| panic!("cannot write the screenshot {}: {e}", path.display()));
    }

    /// Ends the WebDriver session (Chromium quits), then stops ChromeDriver and removes the
    /// browser's directory.
    pub(crate) async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        }
        self.stop();
    }

    /// Waits [`POLL`] unless `deadline` has passed; then fails with `problem`.
    async fn tick(&self, deadline: Instant, problem: &str) {
        if Instant::now() >= deadline {
            self.fail(&format!("after {:?}: {problem}", self.timeout))
                .await;
        }
        tokio::time::sleep(POLL).await;
    }

    /// Fails the test with `problem` and what the browser shows: URL, title, a screenshot
    /// kept in the temporary directory, the page's source and ChromeDriver's log.
    async fn fail(&self, problem: &str) -> ! {
        let mut report = String::new();
        let client = self.client();
        let quick = Duration::from_secs(5);
        if let Ok(Ok(url)) = tokio::time::timeout(quick, client.current_url()).await {
            let _ = writeln!(report, "URL: {url}");
        }
        if let Ok(Ok(title)) = tokio::time::timeout(quick, client.title()).await {
            let _ = writeln!(report, "title: {title:?}");
        }
        if let Ok(Ok(png)) = tokio::time::timeout(quick, client.screenshot()).await {
            let kept = tempfile::Builder::new()
                .prefix("presence-browser-failure-")
                .suffix(".png")
                .tempfile()
                .ok()
                .and_then(|mut f| f.write_all(&png).ok().and_then(|()| f.keep().ok()));
            if let Some((_, path)) = kept {
                let _ = writeln!(report, "screenshot: {} (kept)", path.display());
            }
        }
        if let Ok(Ok(source)) = tokio::time::timeout(quick, client.source()).await {
            let _ = writeln!(report, "source:\n{}", truncate(&source, 6_000));
        }
        let _ = writeln!(report, "ChromeDriver's log:\n{}", self.driver_log());
        panic!("browser: {problem}\n{report}");
    }

    /// The last part of what ChromeDriver wrote.
    fn driver_log(&self) -> String {
        let mut out = String::new();
        for name in ["chromedriver.stdout", "chromedriver.stderr"] {
            let text = std::fs::read(self.root_path.join(name)).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let start = text.len().saturating_sub(6_000);
            let start = (start..text.len())
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            let _ = writeln!(out, "---- {name}\n{}", &text[start..]);
        }
        out
    }

    /// Kills ChromeDriver's process group and every process still naming the browser's
    /// directory, then removes the directory.
    fn stop(&mut self) {
        // the session's task may still hold a connection: it fails quietly once the
        // driver is gone
        drop(self.client.take());
        if let Some(mut driver) = self.driver.take() {
            // the group: ChromeDriver and every Chromium process it started
            kill(&format!("-{}", self.driver_pid));
            let _ = driver.kill();
            let _ = driver.wait();
        }
        // Chromium's crashpad handlers detach into sessions of their own; they name the
        // directory (XDG_CONFIG_HOME) in their command line
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = processes_naming(&self.root_path);
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in left {
                kill(&pid.to_string());
            }
            std::thread::sleep(POLL);
        }
        if let Some(root) = self.root.take() {
            let _ = root.close();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `kill -KILL -- TARGET` (a pid, or `-PGID` for a group).
fn kill(target: &str) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", target])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Every live process whose command line names something in `dir`.
pub(crate) fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Starts ChromeDriver on a port it picks itself, in a process group of its own, with
/// the browser's directories in its environment; returns it and where its port will be
/// reported.
fn spawn_driver(program: &Path, root: &Path) -> (Child, mpsc::Receiver<u16>) {
    use std::os::unix::process::CommandExt as _;
    let stderr = std::fs::File::create(root.join("chromedriver.stderr")).expect("log file");
    let mut child = Command::new(program)
        .arg("--port=0")
        .current_dir(root)
        .env("XDG_CONFIG_HOME", root.join("xdg-config"))
        .env("XDG_CACHE_HOME", root.join("xdg-cache"))
        .env("XDG_DATA_HOME", root.join("xdg-data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}: {INSTALL_HINT}", program.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let log_path = root.join("chromedriver.stdout");
    // reads the port line, then keeps draining stdout (into the log) so that ChromeDriver
    // never blocks on a full pipe
    std::thread::spawn(move || {
        let mut log = std::fs::File::create(log_path).ok();
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(log) = log.as_mut() {
                let _ = writeln!(log, "{line}");
            }
            if let Some(port) = line
                .split("started successfully on port ")
                .nth(1)
                .and_then(|rest| rest.trim_end_matches('.').trim().parse::<u16>().ok())
            {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(port);
                }
            }
        }
    });
    (child, rx)
}

/// At most `max` bytes of `text` (on a character boundary).
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[..end]
}

/// Width and height of a PNG (from its IHDR chunk), if `bytes` is one.
pub(crate) fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || bytes.len() < 24 || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let height = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    Some((width, height))
}
