//! The whole product from one configuration: the SIP proxy (`runtime`) and, when the
//! file has a `[graph]` section, the Teams side — the store, the Graph client, the sync
//! engine and the web listener (portal, OAuth round trips, `/api/status`, `/metrics`,
//! `/healthz`, Graph notifications).
//!
//! The Teams side runs on a tokio runtime of its own, on its own thread, in
//! [`run`]: JSON, TLS and SQLite work never shares a thread with the SIP path, which
//! talks to it only through bounded channels.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Change notifications waiting for the sync engine; beyond it the receiver drops them
/// and asks for a poll.
const NOTIFICATION_BACKLOG: usize = 1024;

use crate::config::{Config, GraphSettings};
use crate::graph::{
    GraphClient, GraphConfig, GraphError, NotificationReceiver, new_client_state,
    notification_routes,
};
use crate::observe::ObserveEvent;
use crate::runtime::{RuntimeControl, RuntimeError};
use crate::store::Secret;
use crate::store::{EncryptionKey, KEY_ENV, KeyError, Store, StoreError};
use crate::sync::{NotificationSetup, SyncEngine, SyncHandle, SyncOptions};
use crate::web::portal::{Portal, PortalOptions, StatusSource};
use crate::web::{CALLBACK_PATH, OAuthService, UNPAIR_PATH, WebError, WebOptions};

/// Why the product could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The SIP side.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The store's key.
    #[error("store key: {0}")]
    Key(#[from] KeyError),
    /// The store.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The Graph client.
    #[error("graph client: {0}")]
    Graph(#[from] GraphError),
    /// The client secret file.
    #[error("cannot read graph.client_secret_file {path}: {source}")]
    Secret {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The API token file.
    #[error("cannot read web.api_token_file {}: {source}", path.display())]
    ApiToken {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The admin password could not be made.
    #[error("admin password: {0}")]
    Password(#[from] crate::web::PasswordError),
    /// The web listener.
    #[error("cannot listen on {addr} (web.listen): {source}")]
    WebBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The OAuth routes.
    #[error("web: {0}")]
    Web(#[from] WebError),
    /// A thread or runtime could not start.
    #[error("{0}")]
    Start(String),
}

/// The Teams side, running.
#[derive(Debug)]
pub struct TeamsSide {
    /// The store.
    pub store: Store,
    /// The Graph client.
    pub graph: GraphClient,
    /// The sync engine.
    pub sync: Arc<SyncHandle>,
    /// Where the web listener listens, when `[web]` is configured.
    pub web_addr: Option<SocketAddr>,
    web_task: Option<JoinHandle<()>>,
}

impl TeamsSide {
    /// Stops the web listener and the sync engine.
    pub async fn shutdown(self) {
        if let Some(task) = self.web_task {
            task.abort();
            let _ = task.await;
        }
        match Arc::try_unwrap(self.sync) {
            Ok(sync) => sync.shutdown().await,
            Err(_) => info!("sync engine still referenced; it stops with the runtime"),
        }
    }
}

/// The public base URL of the web listener: `web.public_url`, else `http://` and the
/// address it is bound to (`bound`, which knows the port the system chose for port 0).
pub fn public_url(web: &crate::config::WebSettings, bound: SocketAddr) -> String {
    web.public_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"))
}

/// The Graph client configuration of `[graph]`, with the OAuth redirect URI under
/// `public_url` (empty without a web listener: no sign-ins then).
pub fn graph_config(
    graph: &GraphSettings,
    public_url: Option<&str>,
) -> Result<GraphConfig, AppError> {
    let secret = graph
        .client_secret
        .load()
        .map_err(|source| AppError::Secret {
            path: match &graph.client_secret {
                crate::config::ClientSecret::File(path) => path.clone(),
                crate::config::ClientSecret::Inline(_) => std::path::PathBuf::new(),
            },
            source,
        })?;
    let redirect_uri = public_url
        .map(OAuthService::callback_url)
        .unwrap_or_default();
    Ok(GraphConfig::new(
        graph.tenant.clone(),
        graph.client_id.clone(),
        secret,
        redirect_uri,
    )
    .with_bases(graph.login_base.clone(), graph.graph_base.clone()))
}

/// Opens the store of `[store]`: the key from `PRESENCE_PROXY_STORE_KEY` when set,
/// else from `store.key_file` (created when missing).
pub fn open_store(config: &Config) -> Result<Store, AppError> {
    let key = if std::env::var_os(KEY_ENV).is_some() {
        EncryptionKey::from_env(KEY_ENV)?
    } else {
        EncryptionKey::load_or_create(&config.store.key_file)?
    };
    Ok(Store::open(&config.store.path, key)?)
}

/// Starts the Teams side for a running proxy, when `[graph]` is configured. The
/// `[directory]` of the file is merged into the store first.
pub async fn start_teams(
    config: &Config,
    phone_events: tokio::sync::broadcast::Receiver<ObserveEvent>,
    control: RuntimeControl,
) -> Result<Option<TeamsSide>, AppError> {
    start_teams_with(config, phone_events, control, None).await
}

/// [`start_teams`], with `extra` routes served beside the portal (the demo's page).
pub async fn start_teams_with(
    config: &Config,
    phone_events: tokio::sync::broadcast::Receiver<ObserveEvent>,
    control: RuntimeControl,
    extra: Option<axum::Router>,
) -> Result<Option<TeamsSide>, AppError> {
    let Some(graph_settings) = &config.graph else {
        return Ok(None);
    };
    let store = open_store(config)?;
    for (ext, email) in &config.directory {
        store.upsert_extension(ext, Some(email))?;
    }
    let web = match &config.web {
        Some(web) => {
            let listener = tokio::net::TcpListener::bind(web.listen)
                .await
                .map_err(|source| AppError::WebBind {
                    addr: web.listen,
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| AppError::WebBind {
                addr: web.listen,
                source,
            })?;
            Some((listener, addr, public_url(web, addr)))
        }
        None => None,
    };
    let public = web.as_ref().map(|(_, _, url)| url.as_str());
    let graph = GraphClient::new(graph_config(graph_settings, public)?)?;
    let mut options = SyncOptions::new(config.sync.clone());
    options.app_only = graph_settings.app_only;
    options.configured_extensions = config.calls.extensions.clone();
    // change notifications need the web listener to receive them
    let (receiver, notifications) = match (&graph_settings.notification_url, &web) {
        (Some(url), Some(_)) => {
            let client_state = new_client_state()?;
            let (receiver, rx) = NotificationReceiver::new(&client_state, NOTIFICATION_BACKLOG);
            let setup = NotificationSetup {
                notification_url: url.clone(),
                client_state,
                notifications: rx,
            };
            (Some(receiver), Some(setup))
        }
        (Some(_), None) => {
            warn!(
                "graph.notification_url needs a [web] listener to receive notifications: polling instead"
            );
            (None, None)
        }
        (None, _) => (None, None),
    };
    let sync = Arc::new(SyncEngine::start(
        options,
        store.clone(),
        graph.clone(),
        phone_events,
        control.clone(),
        notifications,
    ));
    let (web_addr, web_task) = match (web, &config.web) {
        (Some((listener, addr, public)), Some(settings)) => {
            let status = StatusSource {
                store: store.clone(),
                sync: Some(sync.clone()),
                control: Some(control),
            };
            let portal = portal_options(settings, &store)?;
            let mut router = web_router(&public, settings, &graph, status, portal)?;
            if let Some(extra) = extra {
                router = router.merge(extra);
            }
            if let Some(receiver) = receiver {
                router = router.merge(notification_routes(receiver));
            }
            info!(listen = %addr, public = %public, "web listener (portal, OAuth, API, metrics)");
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            let task = tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, service).await {
                    tracing::warn!(error = %e, "web listener stopped");
                }
            });
            (Some(addr), Some(task))
        }
        _ => (None, None),
    };
    Ok(Some(TeamsSide {
        store,
        graph,
        sync,
        web_addr,
        web_task,
    }))
}

/// The portal's admin password hash and API token: `web.admin_password_hash`, else the
/// store's hash, else a new random password (stored hashed, printed once on stderr);
/// the token from `web.api_token_file`.
pub fn portal_options(
    web: &crate::config::WebSettings,
    store: &Store,
) -> Result<PortalOptions, AppError> {
    let admin_password_hash = match &web.admin_password_hash {
        Some(hash) => Secret::new(hash.clone()),
        None => match store.admin_password_hash()? {
            Some(hash) => hash,
            None => {
                let password = crate::web::random_password()
                    .map_err(|_| AppError::Start("the system random generator failed".into()))?;
                let hash = Secret::new(crate::web::hash_password(&password)?);
                store.set_admin_password_hash(&hash)?;
                warn!(
                    "no web.admin_password_hash: a random admin password was made and stored (hashed); it is printed once on stderr"
                );
                eprintln!(
                    "\n  presence-proxy portal admin password (shown once): {password}\n  set web.admin_password_hash to choose your own\n"
                );
                hash
            }
        },
    };
    let api_token = match &web.api_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| AppError::ApiToken {
                path: path.clone(),
                source,
            })?;
            let token = text.lines().next().unwrap_or("").trim().to_owned();
            if token.is_empty() {
                return Err(AppError::ApiToken {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the first line is empty",
                    ),
                });
            }
            Some(Secret::new(token))
        }
        None => None,
    };
    Ok(PortalOptions {
        admin_password_hash,
        api_token,
    })
}

/// Everything the web listener serves: the portal, the OAuth round trips, `/api/...`,
/// `/metrics` and `/healthz`. A completed sign-in or an unpairing makes the sync engine
/// read its links again at once. The OAuth flows can only be started from portal
/// sessions (the admin's, or a user's for their own extension).
pub fn web_router(
    public: &str,
    settings: &crate::config::WebSettings,
    graph: &GraphClient,
    status: StatusSource,
    options: PortalOptions,
) -> Result<axum::Router, AppError> {
    let web_options = WebOptions {
        open_starts: false,
        portal_session_ttl: std::time::Duration::from_secs(settings.session_minutes * 60),
        ..WebOptions::default()
    };
    let service =
        OAuthService::with_options(graph.clone(), status.store.clone(), public, web_options)?;
    let sync = status.sync.clone();
    let reload_after_oauth = axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let sync = sync.clone();
            async move {
                let path = request.uri().path();
                let changes_links = path == CALLBACK_PATH
                    || UNPAIR_PATH
                        .strip_suffix("{extension}")
                        .is_some_and(|prefix| path.starts_with(prefix));
                let response = next.run(request).await;
                if changes_links {
                    if let Some(sync) = &sync {
                        sync.reload();
                    }
                }
                response
            }
        },
    );
    let metrics_source = status.clone();
    let metrics_graph = graph.clone();
    let portal = Portal::new(service.clone(), status, options);
    Ok(crate::web::router(service)
        .merge(crate::web::portal::router(portal))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let source = metrics_source.clone();
                let graph = metrics_graph.clone();
                async move { metrics_response(&source, &graph).await }
            }),
        )
        .layer(reload_after_oauth))
}

/// `GET /metrics`: the proxy's, the Graph client's and the sync engine's counters in
/// the Prometheus text format.
async fn metrics_response(source: &StatusSource, graph: &GraphClient) -> axum::response::Response {
    use axum::response::IntoResponse;
    let proxy = match &source.control {
        Some(control) => control.metrics().await,
        None => None,
    };
    let graph = graph.metrics();
    let sync = source.sync.as_ref().map(|s| s.metrics());
    let body = crate::metrics::render(proxy.as_ref(), Some(&graph), sync.as_ref());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The whole product, running: the proxy on the runtime that started it, the Teams
/// side (when configured) on a thread and runtime of its own.
#[derive(Debug)]
pub struct App {
    /// The proxy.
    pub proxy: crate::runtime::RuntimeHandle,
    /// Where the web listener listens.
    pub web_addr: Option<SocketAddr>,
    stop: tokio::sync::watch::Sender<bool>,
    teams_thread: Option<std::thread::JoinHandle<()>>,
}

impl App {
    /// Stops the Teams side, then lets the proxy finish its open transactions.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.teams_thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.proxy.shutdown().await;
    }
}

/// Starts the whole product of `config`; `extra` routes are served beside the portal.
pub async fn start(config: &Config, extra: Option<axum::Router>) -> Result<App, AppError> {
    let proxy = crate::runtime::start(config).await?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    if config.graph.is_none() {
        return Ok(App {
            proxy,
            web_addr: None,
            stop,
            teams_thread: None,
        });
    }
    let teams_config = config.clone();
    let phone_events = proxy.phone_events();
    let control = proxy.control();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("teams".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(AppError::Start(format!(
                        "cannot start the Teams runtime: {e}"
                    ))));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut stop_rx = stop_rx;
                match start_teams_with(&teams_config, phone_events, control, extra).await {
                    Ok(side) => {
                        let _ = ready_tx.send(Ok(side.as_ref().and_then(|s| s.web_addr)));
                        let _ = stop_rx.wait_for(|stop| *stop).await;
                        if let Some(side) = side {
                            side.shutdown().await;
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        });
    let thread = match spawned {
        Ok(thread) => thread,
        Err(e) => {
            proxy.shutdown().await;
            return Err(AppError::Start(format!(
                "cannot start the Teams thread: {e}"
            )));
        }
    };
    match ready_rx.await {
        Ok(Ok(web_addr)) => Ok(App {
            proxy,
            web_addr,
            stop,
            teams_thread: Some(thread),
        }),
        Ok(Err(e)) => {
            proxy.shutdown().await;
            Err(e)
        }
        Err(_) => {
            proxy.shutdown().await;
            Err(AppError::Start("the Teams thread stopped".into()))
        }
    }
}

/// Runs the whole product until SIGINT/SIGTERM.
pub async fn run(config: &Config) -> Result<(), AppError> {
    let app = start(config, None).await?;
    crate::runtime::shutdown_signal().await;
    info!("shutting down: finishing open transactions");
    app.shutdown().await;
    Ok(())
}
