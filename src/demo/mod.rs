//! `presence-proxy demo`: the whole product on one machine, one command, nothing to
//! configure. Everything listens on loopback:
//!
//! ```text
//!  simulated phones 201 202 203 ──udp──▶ presence-proxy ──udp──▶ PBX stand-in
//!   (register, BLF, calls)                 │  ▲                  (registrar, calls,
//!                                          │  │ presence          dialog-info)
//!                                          ▼  │
//!                                    Graph emulator (Teams)  ◀── portal + /demo page
//! ```
//!
//! It starts the Graph emulator (tenant contoso with alice, bob, carol and dave), the PBX
//! stand-in ([`pbx`]), the product itself ([`crate::app::start`]: proxy, store in a
//! fresh data directory, sync engine, portal) with a random admin password, then does
//! through the real web flows what an admin and the users would do ([`setup`]):
//! Admin Grant, Get OAuth Token, and every user signs in and pairs. Then the phones
//! ([`phones`]) register through the proxy and watch each other's lamps, and Alice's
//! phone places an external call, which Teams shows as Busy / In a call. It prints the
//! portal's address and the admin password, and runs until Ctrl-C. The demo page
//! ([`page`]) shows phones, lamps and Teams, and lets the visitor place calls and put
//! users in Teams calls.

pub mod pbx;
pub mod phones;
pub(crate) mod ua;

mod page;
mod setup;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::app::{self, App, AppError};
use crate::config::Config;
use crate::emulator::{CONTOSO_CLIENT_ID, CONTOSO_CLIENT_SECRET, Emulator, EmulatorConfig};
use crate::transport::Transport;

pub use page::DemoUser;
use pbx::{PbxHandle, PbxOptions, PbxStandIn};
use phones::{CallView, Phone, PhoneHandle, PhoneOptions};

/// The number the demo's scripted call and "Call outside" buttons dial.
pub const EXTERNAL_NUMBER: &str = "004930123456";

/// The demo's users: their extensions, Teams accounts and names.
pub const USERS: [DemoUser; 3] = [
    DemoUser {
        ext: "201",
        upn: "alice@contoso.example",
        name: "Alice Wong",
    },
    DemoUser {
        ext: "202",
        upn: "bob@contoso.example",
        name: "Bob Martin",
    },
    DemoUser {
        ext: "203",
        upn: "carol@contoso.example",
        name: "Carol Diaz",
    },
];

/// The tenant admin who gets the domain token.
const ADMIN_UPN: &str = "dave@contoso.example";

/// How long the demo waits for each scripted step.
const STEP_DEADLINE: Duration = Duration::from_secs(20);

/// The fixed loopback ports of the demo (the proxy's are those of
/// `config/loopback.toml`).
const FIXED_PORTS: Ports = Ports {
    proxy: 5060,
    pbx: 5070,
    web: 8080,
    emulator: 8400,
};

#[derive(Debug, Clone, Copy)]
struct Ports {
    proxy: u16,
    pbx: u16,
    web: u16,
    emulator: u16,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The generated configuration did not load.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The product could not start.
    #[error("{0}")]
    App(#[from] AppError),
    /// The Graph emulator could not start.
    #[error("graph emulator: {0}")]
    Emulator(String),
    /// A socket or the data directory failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A scripted step did not work.
    #[error("demo setup: {0}")]
    Setup(String),
}

/// How the demo runs.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Listen on free ports chosen by the system instead of 5060/5070/8080/8400 (to run
    /// beside another demo, a benchmark or the tests).
    pub ephemeral_ports: bool,
    /// Where the store goes; default a fresh directory under the system's temp dir,
    /// removed at the end.
    pub data_dir: Option<PathBuf>,
}

/// The demo, running.
pub struct Demo {
    /// The portal's address.
    pub portal_url: String,
    /// The admin password (random per run).
    pub admin_password: String,
    /// The proxy's UDP address (real phones can use it as their outbound proxy).
    pub proxy_addr: SocketAddr,
    /// The PBX stand-in's address.
    pub pbx_addr: SocketAddr,
    /// The Graph emulator's address.
    pub emulator_url: String,
    /// The simulated phones.
    pub phones: Arc<Vec<PhoneHandle>>,
    app: App,
    pbx: PbxHandle,
    emulator: crate::emulator::EmulatorHandle,
    data_dir: PathBuf,
    remove_data_dir: bool,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("portal_url", &self.portal_url)
            .field("proxy_addr", &self.proxy_addr)
            .finish_non_exhaustive()
    }
}

fn random_token() -> Result<String, DemoError> {
    crate::web::random_password().map_err(|_| DemoError::Setup("random generator".into()))
}

/// The product's configuration for the demo.
fn demo_config(
    ports: Ports,
    pbx_port: u16,
    emulator_url: &str,
    data_dir: &Path,
    password_hash: &str,
) -> Result<Config, DemoError> {
    let directory: String = USERS
        .iter()
        .map(|u| format!("\"{}\" = \"{}\"\n", u.ext, u.upn))
        .collect();
    let toml = format!(
        r#"
[log]
format = "human"
level = "warn"

[listen]
udp = ["127.0.0.1:{proxy}"]

[pbx]
host = "127.0.0.1"
port = {pbx_port}
transport = "udp"

[phones]
allowed_networks = ["127.0.0.0/8", "::1/128"]

[graph]
tenant = "contoso.example"
client_id = "{CONTOSO_CLIENT_ID}"
client_secret = "{CONTOSO_CLIENT_SECRET}"
login_base = "{emulator_url}"
graph_base = "{emulator_url}/v1.0"

[web]
listen = "127.0.0.1:{web}"
admin_password_hash = "{password_hash}"

[store]
path = "store.sqlite3"
key_file = "store.key"

[sync]
pbx_to_teams = true
poll_interval_ms = 500
echo_grace_seconds = 2

[directory]
{directory}"#,
        proxy = ports.proxy.max(1),
        web = ports.web,
    );
    let mut config = Config::from_toml(&toml, &data_dir.join("demo.toml"))?;
    if ports.proxy == 0 {
        config.listen.udp = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    }
    Ok(config)
}

/// Starts the demo; the scripted call is up when this returns.
pub async fn start(options: DemoOptions) -> Result<Demo, DemoError> {
    let ports = if options.ephemeral_ports {
        Ports {
            proxy: 0,
            pbx: 0,
            web: 0,
            emulator: 0,
        }
    } else {
        FIXED_PORTS
    };
    let (data_dir, remove_data_dir) = match options.data_dir {
        Some(dir) => (dir, false),
        None => {
            let dir = std::env::temp_dir().join(format!(
                "presence-proxy-demo-{}-{}",
                std::process::id(),
                random_token()?
            ));
            (dir, true)
        }
    };
    std::fs::create_dir_all(&data_dir)?;

    // Microsoft, played by the emulator
    let emulator = Emulator::start(EmulatorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], ports.emulator)),
        ..EmulatorConfig::default()
    })
    .await
    .map_err(|e| DemoError::Emulator(e.to_string()))?;
    let emulator_url = emulator.base_url();

    // the PBX
    let pbx = PbxStandIn::start(
        SocketAddr::from(([127, 0, 0, 1], ports.pbx)),
        PbxOptions::default(),
    )
    .await?;
    let pbx_addr = pbx.local_addr();

    // the product
    let admin_password = random_token()?;
    let hash =
        crate::web::hash_password(&admin_password).map_err(|e| DemoError::Setup(e.to_string()))?;
    let config = demo_config(ports, pbx_addr.port(), &emulator_url, &data_dir, &hash)?;
    let http = reqwest::Client::new();
    // the demo page needs the phones, which need the proxy: it reads them through a
    // slot filled once they run
    let phones_slot: page::PhoneSlot = Arc::default();
    let app = app::start(
        &config,
        Some(page::routes(page::DemoPage {
            phones: phones_slot.clone(),
            users: Arc::new(USERS.to_vec()),
            emulator_control: emulator.control_url(),
            http: http.clone(),
            token: random_token()?,
        })),
    )
    .await?;
    let web_addr = app
        .web_addr
        .ok_or_else(|| DemoError::Setup("the web listener did not start".into()))?;
    let portal_url = format!("http://{web_addr}");
    let proxy_addr = app
        .proxy
        .local_addr(Transport::Udp)
        .ok_or_else(|| DemoError::Setup("the proxy has no UDP listener".into()))?;

    // what the admin and the users would click
    register_redirect_uri(&http, &emulator.control_url(), &portal_url).await?;
    setup::admin_setup(&portal_url, &admin_password, ADMIN_UPN).await?;
    for user in &USERS {
        setup::pair_user(&portal_url, user.upn).await?;
    }

    // the desk phones
    let mut phones = Vec::new();
    for user in &USERS {
        let mut options = PhoneOptions::new(proxy_addr);
        options.user_agent = "Yealink SIP-T54W 96.86.0.100 (presence-proxy demo)".to_owned();
        let phone = Phone::start(user.ext, options).await?;
        phones.push(phone);
    }
    for phone in &phones {
        let others: Vec<&str> = USERS
            .iter()
            .map(|u| u.ext)
            .filter(|e| *e != phone.ext())
            .collect();
        phone
            .watch(&others)
            .await
            .map_err(|e| DemoError::Setup(e.to_string()))?;
    }
    for phone in &phones {
        phone
            .wait_for(STEP_DEADLINE, |s| {
                s.registered && s.lamps.values().all(|l| *l != phones::Lamp::Unknown)
            })
            .await
            .map_err(|e| DemoError::Setup(format!("phone {}: {e}", phone.ext())))?;
    }
    let phones = Arc::new(phones);
    *phones_slot.lock() = Some(phones.clone());

    // the scripted call: Alice calls outside
    let alice = &phones[0];
    alice
        .dial(EXTERNAL_NUMBER)
        .await
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    alice
        .wait_for(STEP_DEADLINE, |s| {
            matches!(s.call, CallView::Connected { .. })
        })
        .await
        .map_err(|e| DemoError::Setup(format!("the scripted call: {e}")))?;
    wait_for_teams(&http, &emulator.control_url(), USERS[0].upn, "Busy").await?;

    Ok(Demo {
        portal_url,
        admin_password,
        proxy_addr,
        pbx_addr,
        emulator_url,
        phones,
        app,
        pbx,
        emulator,
        data_dir,
        remove_data_dir,
    })
}

/// Waits until Teams (the emulator's aggregate presence) shows `upn` as `availability`.
async fn wait_for_teams(
    http: &reqwest::Client,
    control: &str,
    upn: &str,
    availability: &str,
) -> Result<(), DemoError> {
    let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
    loop {
        let seen = match http
            .get(format!("{control}/users/{upn}/presence"))
            .send()
            .await
        {
            Ok(response) => response.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        let now = seen
            .as_ref()
            .and_then(|v| v["aggregate"]["availability"].as_str().map(str::to_owned));
        if now.as_deref() == Some(availability) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DemoError::Setup(format!(
                "Teams never showed {upn} as {availability} (last seen: {now:?})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register_redirect_uri(
    http: &reqwest::Client,
    control: &str,
    portal: &str,
) -> Result<(), DemoError> {
    let response = http
        .post(format!("{control}/app/redirect-uris"))
        .json(&serde_json::json!({ "uri": format!("{portal}/oauth/callback") }))
        .send()
        .await
        .map_err(|e| DemoError::Setup(format!("registering the redirect URI: {e}")))?;
    if !response.status().is_success() {
        return Err(DemoError::Setup(format!(
            "registering the redirect URI: {}",
            response.status()
        )));
    }
    Ok(())
}

impl Demo {
    /// Stops everything and removes the data directory it made.
    pub async fn shutdown(self) {
        for phone in self.phones.iter() {
            phone.shutdown().await;
        }
        self.app.shutdown().await;
        self.pbx.shutdown().await;
        self.emulator.shutdown().await;
        if self.remove_data_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }

    /// What the demo prints once it runs.
    pub fn banner(&self) -> String {
        format!(
            "presence-proxy demo: everything on loopback\n\
             \n  portal     {portal}/\n  demo page  {portal}/demo   (phones, BLF lamps, Teams presence)\n\
             \n  admin password: {password}\n\
             \n  phones 201 Alice, 202 Bob, 203 Carol → proxy udp {proxy} → PBX stand-in udp {pbx}\n  \
             Microsoft Graph and sign-in: emulator at {emulator}\n\
             \n  Alice (201) is on an external call: her Teams shows Busy / In a call,\n  \
             and the lamps for 201 on the other phones are red.\n\
             \nCtrl-C stops the demo.\n",
            portal = self.portal_url,
            password = self.admin_password,
            proxy = self.proxy_addr,
            pbx = self.pbx_addr,
            emulator = self.emulator_url,
        )
    }
}

/// `presence-proxy demo`: starts the demo, prints where to look, runs until Ctrl-C.
pub fn demo(ephemeral_ports: bool) -> ExitCode {
    let _ = crate::telemetry::init_logging(&crate::config::LogConfig {
        level: "warn".to_owned(),
        ..crate::config::LogConfig::default()
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let demo = match start(DemoOptions {
            ephemeral_ports,
            data_dir: None,
        })
        .await
        {
            Ok(demo) => demo,
            Err(e) => {
                eprintln!("error: {e}");
                if !ephemeral_ports {
                    eprintln!(
                        "(the demo listens on 127.0.0.1 ports 5060, 5070, 8080 and 8400; \
                         `presence-proxy demo --ephemeral-ports` picks free ones)"
                    );
                }
                return ExitCode::FAILURE;
            }
        };
        println!("{}", demo.banner());
        crate::runtime::shutdown_signal().await;
        println!("stopping the demo");
        demo.shutdown().await;
        ExitCode::SUCCESS
    })
}
