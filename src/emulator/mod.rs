//! An emulator of the Microsoft identity platform and the Microsoft Graph presence endpoints
//! the product uses, faithful to `shared/reference/graph.md` (every rule enforced here names
//! the section it comes from). Tests start it in-process ([`Emulator::start`]); the
//! `presence-proxy graph-emulator` command runs it on its own for the demo.
//!
//! One HTTP server serves three path families:
//!
//! - login (`/{tenant}/...`): admin consent, the authorize page, the token endpoint, JWKS
//!   (graph.md §6). Its base is [`EmulatorHandle::login_url`], the stand-in for
//!   `https://login.microsoftonline.com`.
//! - Graph (`/v1.0/...`): users, presence reads and writes, getPresencesByUserId,
//!   subscriptions (graph.md §1–§5). Its base is [`EmulatorHandle::graph_url`], the
//!   stand-in for `https://graph.microsoft.com/v1.0`.
//! - control (`/_emulator/...`): acts as Teams itself and as the test harness (client
//!   state, faults, clock, request log). See the README's *Graph emulator* section.
//!
//! Files:
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`EmulatorConfig`], [`Emulator::start`], [`EmulatorHandle`], the router, [`EmulatorError`] |
//! | `seed.rs` | the tenant, app registration and users ([`Seed`]), TOML or the built-in `contoso` |
//! | `clock.rs` | the emulator clock (wall clock + test offset), Graph date-times, ISO 8601 durations |
//! | `crypto.rs` | RS256 signing and checking with the built-in test key, JWKS, GUIDs, PKCE |
//! | `state.rs` | the shared state, request log, fault injection, throttling, change sweeps |
//! | `identity.rs` | admin consent, authorize (sign-in page), token endpoint and its AADSTS errors |
//! | `graph.rs` | Graph v1.0 handlers: token checks, permissions, users, presence, Graph errors |
//! | `presence.rs` | one user's sessions, preferred presence and their aggregation, sans-IO |
//! | `subscriptions.rs` | presence subscriptions, the validation handshake, notification delivery |
//! | `control.rs` | the `/_emulator/` control API |
//!
//! The signing key `test-signing-key.pk8` is a published test key of the emulator, shipped in
//! the source tree: it is never a secret and must never sign anything real.
//!
//! Nothing here logs a token, code, client secret or clientState: the request log keeps
//! method, path (no query string) and status only.

// the handlers' helpers return the early response as their error: an axum idiom
#![allow(clippy::result_large_err)]

mod clock;
mod control;
mod crypto;
mod graph;
mod identity;
mod presence;
mod seed;
mod state;
mod subscriptions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use seed::{
    AppSeed, CONTOSO_CLIENT_ID, CONTOSO_CLIENT_SECRET, CONTOSO_TENANT_ID, Seed, TenantSeed,
    UserSeed,
};

/// Errors starting the emulator or loading its seed.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The seed file cannot be read or parsed.
    #[error("{path}: {message}")]
    Seed {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The built-in signing key failed (should not happen).
    #[error("signing key: {0}")]
    Key(String),
}

/// How the emulator runs. [`EmulatorConfig::default`] is the demo tenant on 127.0.0.1:0.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen (default `127.0.0.1:0`, a free port).
    pub listen: SocketAddr,
    /// Tenant, app registration and users.
    pub seed: Seed,
    /// Access-token and id_token lifetime (default 3600 s; `expires_in` says the same).
    pub access_token_lifetime: Duration,
    /// Refresh-token lifetime (default 90 days, graph.md §6.5).
    pub refresh_token_lifetime: Duration,
    /// Authorization-code lifetime (default 10 minutes, graph.md §6.2).
    pub code_lifetime: Duration,
    /// Whether authorize requires `code_challenge` (PKCE). Entra requires it only for SPAs
    /// (graph.md §6.2); the product always sends it, so the emulator insists by default.
    pub require_pkce: bool,
    /// Presence requests allowed per app per tenant in [`EmulatorConfig::presence_window`]
    /// (default 1,500, graph.md §2.1, §2.2, §4.1).
    pub presence_rate_limit: usize,
    /// The throttling window (default 30 s).
    pub presence_window: Duration,
    /// How long a notification endpoint has to answer the validation request (default
    /// 10 s, graph.md §3.2).
    pub validation_timeout: Duration,
    /// How long a notification endpoint has to answer a delivery (default 3 s, §3.2).
    pub delivery_timeout: Duration,
    /// Delivery attempts per notification before it is dropped (default 5; Graph retries
    /// for up to 4 h, §3.2, the emulator gives up sooner).
    pub delivery_attempts: u32,
    /// Period of the background sweep that notices fading and expiry as real time passes.
    pub sweep_interval: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: Seed::default(),
            access_token_lifetime: Duration::from_secs(3600),
            refresh_token_lifetime: Duration::from_secs(90 * 86_400),
            code_lifetime: Duration::from_secs(600),
            require_pkce: true,
            presence_rate_limit: 1500,
            presence_window: Duration::from_secs(30),
            validation_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(3),
            delivery_attempts: 5,
            sweep_interval: Duration::from_secs(1),
        }
    }
}

/// The emulator (a namespace for [`Emulator::start`]).
#[derive(Debug)]
pub struct Emulator;

/// A running emulator. Dropping it stops the server too.
#[derive(Debug)]
pub struct EmulatorHandle {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    sweeper: JoinHandle<()>,
}

impl Emulator {
    /// Binds `config.listen` and serves until [`EmulatorHandle::shutdown`] or drop.
    pub async fn start(config: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| EmulatorError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                addr: config.listen,
                source,
            })?;
        let base = format!("http://{addr}");
        let shared = Arc::new(state::Shared::new(config, base)?);
        let app = router(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(err) = serve.await {
                tracing::error!(%err, "graph emulator stopped");
            }
        });
        let sweeper = tokio::spawn(state::sweep_loop(shared));
        tracing::info!(%addr, "graph emulator listening");
        Ok(EmulatorHandle {
            addr,
            shutdown: Some(tx),
            task: Some(task),
            sweeper,
        })
    }
}

impl EmulatorHandle {
    /// The socket address the emulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:P`: the root of every path family.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The login base (stand-in for the identity platform's host): `http://127.0.0.1:P`.
    pub fn login_url(&self) -> String {
        self.base_url()
    }

    /// The Graph base (stand-in for `https://graph.microsoft.com/v1.0`):
    /// `http://127.0.0.1:P/v1.0`.
    pub fn graph_url(&self) -> String {
        format!("{}/v1.0", self.base_url())
    }

    /// The control API base: `http://127.0.0.1:P/_emulator`.
    pub fn control_url(&self) -> String {
        format!("{}/_emulator", self.base_url())
    }

    /// Stops the server and waits for it to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.sweeper.abort();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits until the server stops (for the CLI: it serves until the process ends).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.sweeper.abort();
    }
}

fn router(shared: Arc<state::Shared>) -> Router {
    Router::new()
        .merge(identity::routes())
        .merge(graph::routes())
        .merge(subscriptions::routes())
        .merge(control::routes())
        .fallback(graph::fallback)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            state::log_and_faults,
        ))
        .with_state(shared)
}

/// The `graph-emulator` command: serves on `listen` until Ctrl-C, printing the URLs and
/// the demo credentials (test values, not secrets) on stdout.
pub fn run_cli(listen: SocketAddr, seed: Option<&std::path::Path>) -> std::process::ExitCode {
    use std::process::ExitCode;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let seed = match seed.map(Seed::load).transpose() {
        Ok(seed) => seed.unwrap_or_default(),
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let config = EmulatorConfig {
            listen,
            seed: seed.clone(),
            ..EmulatorConfig::default()
        };
        let handle = match Emulator::start(config).await {
            Ok(h) => h,
            Err(err) => {
                eprintln!("{err}");
                return ExitCode::from(1);
            }
        };
        println!("graph emulator");
        println!("  login base   {}", handle.login_url());
        println!("  graph base   {}", handle.graph_url());
        println!("  control API  {}", handle.control_url());
        println!("  tenant       {} ({})", seed.tenant.id, seed.tenant.domain);
        println!("  client id    {}", seed.app.client_id);
        if seed.app.client_secret == CONTOSO_CLIENT_SECRET {
            println!("  client secret {CONTOSO_CLIENT_SECRET} (the demo's test value)");
        }
        for uri in &seed.app.redirect_uris {
            println!("  redirect uri {uri}");
        }
        for user in &seed.users {
            println!("  user         {} {}", user.id, user.user_principal_name);
        }
        let _ = tokio::signal::ctrl_c().await;
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}
