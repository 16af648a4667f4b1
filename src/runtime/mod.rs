//! The shell around the sans-IO core: the only code that opens sockets, starts tasks
//! and threads, or reads the clock.
//!
//! [`start`] binds every listener, resolves the PBX (RFC 3263: NAPTR, SRV, A/AAAA; see
//! `resolve.rs`), puts the sans-IO [`Proxy`](crate::proxy::Proxy) behind one mutex
//! (`driver.rs`), and starts what feeds it: a reader thread per UDP socket making
//! blocking reads (`udp.rs`), and one tokio driver task for the framed messages of the
//! TCP/TLS connection tasks (`stream.rs`, `tls.rs`), control commands and timers.
//! Whoever fed the core sends what it answered: on the UDP sockets, or to the
//! connection tasks. [`RuntimeHandle::shutdown`] drains: new requests get 503 while
//! open transactions finish, for at most the configured grace time.

mod driver;
mod resolve;
mod stream;
mod tls;
mod udp;

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::Config;
use crate::metrics::ProxyMetrics;
use crate::observe::{Extension, ExtensionView, ObserveEvent};
use crate::proxy::{Listener, ProxyConfig};
use crate::sip::Limits;
use crate::transport::Transport;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// A listener could not be bound.
    #[error("cannot listen on {transport} {addr}: {source}")]
    Bind {
        /// Transport of the listener.
        transport: Transport,
        /// Address asked for.
        addr: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The PBX host name did not resolve.
    #[error("cannot resolve the PBX {host}: {reason}")]
    Resolve {
        /// Host from the configuration.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// The TLS certificate or key could not be used.
    #[error("TLS setup failed for {path}: {reason}")]
    Tls {
        /// The file at fault.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A configuration the runtime does not support yet.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// What the driver and the I/O tasks tell each other.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "messages are nearly every event; boxing one would cost an allocation per message"
)]
pub(crate) enum Event {
    Message {
        conn: u64,
        msg: crate::sip::Message,
    },
    Opened {
        conn: u64,
        transport: Transport,
        remote: SocketAddr,
        local: SocketAddr,
        writer: mpsc::Sender<bytes::Bytes>,
    },
    Closed {
        conn: u64,
    },
    ConnectFailed {
        transport: Transport,
        remote: SocketAddr,
    },
    /// The PBX was (looked up again and) resolved to these targets.
    PbxResolved(crate::dns::Resolved),
}

/// What other parts of the product (the sync engine, the portal) ask of the driver.
#[derive(Debug)]
pub(crate) enum Control {
    /// The Teams user of an extension is busy, or no longer.
    TeamsBusy { ext: Extension, busy: bool },
    /// The observer's view of every extension.
    Extensions(oneshot::Sender<Vec<ExtensionView>>),
    /// The extensions known from the directory (internal-call classification).
    Directory(Vec<String>),
    /// A snapshot of the proxy's counters.
    Metrics(oneshot::Sender<ProxyMetrics>),
}

/// Commands queued for the driver at most; senders wait beyond it (never the SIP path).
const CONTROL_BACKLOG: usize = 1024;

/// A handle to tell the running proxy what the Teams side knows, and to read its
/// phone-side state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RuntimeControl {
    tx: mpsc::Sender<Control>,
}

impl RuntimeControl {
    /// Marks the Teams user of `ext` busy (new calls to it are refused, per
    /// `sync.busy_response`) or not. False when the proxy has stopped.
    pub async fn set_teams_busy(&self, ext: Extension, busy: bool) -> bool {
        self.tx.send(Control::TeamsBusy { ext, busy }).await.is_ok()
    }

    /// Every extension the observer knows, by number; `None` when the proxy has stopped.
    pub async fn extensions(&self) -> Option<Vec<ExtensionView>> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Control::Extensions(reply)).await.ok()?;
        answer.await.ok()
    }

    /// A snapshot of the proxy's counters (messages by method and transport, parse
    /// errors, transactions, bindings, BLF subscriptions, calls by class, connections);
    /// `None` when the proxy has stopped. Costs the SIP side one copy of its counters.
    pub async fn metrics(&self) -> Option<ProxyMetrics> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Control::Metrics(reply)).await.ok()?;
        answer.await.ok()
    }

    /// Replaces the extensions known from the directory. False when the proxy has
    /// stopped.
    pub async fn set_directory(&self, extensions: Vec<String>) -> bool {
        self.tx.send(Control::Directory(extensions)).await.is_ok()
    }
}

/// Phone-state events buffered per subscriber.
pub const PHONE_EVENT_BACKLOG: usize = 4096;

/// A running proxy.
#[derive(Debug)]
pub struct RuntimeHandle {
    listeners: Vec<Listener>,
    phone_events: broadcast::Sender<ObserveEvent>,
    control: RuntimeControl,
    shutdown: watch::Sender<bool>,
    driver: JoinHandle<()>,
    io_tasks: Vec<JoinHandle<()>>,
}

impl RuntimeHandle {
    /// Every change of an extension's phone-side state (external calls, DND) from now
    /// on. A receiver that falls more than [`PHONE_EVENT_BACKLOG`] events behind is told
    /// how many it missed (`RecvError::Lagged`).
    pub fn phone_events(&self) -> broadcast::Receiver<ObserveEvent> {
        self.phone_events.subscribe()
    }

    /// A handle for the sync engine and the portal.
    pub fn control(&self) -> RuntimeControl {
        self.control.clone()
    }

    /// The bound listeners (with the ports the system chose for port 0).
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// The bound address of the first listener of a transport.
    pub fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.transport == transport)
            .map(|l| l.local)
    }

    /// Stops accepting new requests, lets open transactions finish (bounded by the
    /// grace time), then stops every task.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.driver.await;
        for task in self.io_tasks {
            task.abort();
        }
    }
}

fn random_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x7072_6573_656e_6365);
    h.finish()
}

/// TLS towards the PBX when configured, or when a bare domain may resolve to it and
/// `pbx.tls_ca` is there to verify it.
fn pbx_tls(config: &Config) -> Result<Option<tls::PbxTls>, RuntimeError> {
    let tls = match config.pbx.transport {
        Some(transport) => transport == Transport::Tls,
        None => config.pbx.tls_ca.is_some() && config.pbx.uses_naptr(),
    };
    if tls {
        tls::pbx_connector(&config.pbx).map(Some)
    } else {
        Ok(None)
    }
}

fn listener(transport: Transport, local: SocketAddr, config: &Config) -> Listener {
    let ip = config.listen.advertised_address.unwrap_or(local.ip());
    Listener {
        transport,
        local,
        advertised: SocketAddr::new(ip, local.port()),
    }
}

/// Binds the listeners and starts the proxy.
pub async fn start(config: &Config) -> Result<RuntimeHandle, RuntimeError> {
    let pbx_tls = pbx_tls(config)?;
    let mut supported = vec![Transport::Udp, Transport::Tcp];
    if pbx_tls.is_some() {
        supported.push(Transport::Tls);
    }
    let mut resolver = resolve::PbxResolver::new(&config.pbx, supported, random_seed());
    let resolved = resolver.resolve().await?;
    let Some(&first) = resolved.targets.first() else {
        return Err(RuntimeError::Resolve {
            host: config.pbx.host.clone(),
            reason: "no target".into(),
        });
    };
    let (events_tx, events_rx) = mpsc::channel(8192);
    let conn_ids = Arc::new(AtomicU64::new(1));
    let limits = Limits {
        max_message_size: config.limits.max_message_size,
        ..Limits::default()
    };
    let connection_slots = Arc::new(tokio::sync::Semaphore::new(
        config.limits.max_tcp_connections,
    ));
    let mut listeners = Vec::new();
    let mut udp_sockets = Vec::new();
    let mut io_tasks = Vec::new();
    for &addr in &config.listen.udp {
        let bind_error = |source| RuntimeError::Bind {
            transport: Transport::Udp,
            addr,
            source,
        };
        // a blocking socket: its reader thread waits in the read itself (udp.rs)
        let socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
        let local = socket.local_addr().map_err(bind_error)?;
        udp_sockets.push((local, Arc::new(socket)));
        listeners.push(listener(Transport::Udp, local, config));
    }
    let tls_acceptor = match &config.tls {
        Some(tls) if !config.listen.tls.is_empty() => Some(tls::acceptor(tls)?),
        _ => None,
    };
    for (transport, addrs) in [
        (Transport::Tcp, &config.listen.tcp),
        (Transport::Tls, &config.listen.tls),
    ] {
        for &addr in addrs {
            let socket = TcpListener::bind(addr)
                .await
                .map_err(|source| RuntimeError::Bind {
                    transport,
                    addr,
                    source,
                })?;
            let local = socket.local_addr().map_err(|source| RuntimeError::Bind {
                transport,
                addr,
                source,
            })?;
            let acceptor = if transport == Transport::Tls {
                tls_acceptor.clone()
            } else {
                None
            };
            io_tasks.push(tokio::spawn(stream::accept_loop(
                socket,
                local,
                transport,
                acceptor,
                stream::Shared {
                    events: events_tx.clone(),
                    conn_ids: conn_ids.clone(),
                    limits,
                    slots: connection_slots.clone(),
                    pbx_tls: pbx_tls.clone(),
                },
            )));
            listeners.push(listener(transport, local, config));
        }
    }
    for l in &listeners {
        info!(transport = %l.transport, local = %l.local, advertised = %l.advertised, "listening");
    }
    info!(pbx = %first.addr, transport = %first.transport, targets = resolved.targets.len(), "relaying to the PBX");
    if let Some(ttl) = resolved.ttl {
        io_tasks.push(tokio::spawn(resolve::refresh(
            resolver,
            ttl,
            events_tx.clone(),
        )));
    }
    let proxy_config = ProxyConfig {
        listeners: listeners.clone(),
        pbx: first.addr,
        pbx_transport: first.transport,
        pbx_path: config.pbx.path,
        allowed_networks: config.phones.allowed_networks.clone(),
        max_transactions: config.limits.max_transactions,
        max_bindings: config.limits.max_bindings,
        max_requests_per_second_per_source: config.limits.max_requests_per_second_per_source,
        seed: random_seed(),
        observe: config.observe_config(),
        teams_busy_response: config.teams_busy_response(),
        blf: config.blf.renderer(),
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (phone_events, _) = broadcast::channel(PHONE_EVENT_BACKLOG);
    let driver = Arc::new(parking_lot::Mutex::new(driver::Driver::new(
        proxy_config,
        udp_sockets.clone(),
        stream::Shared {
            events: events_tx,
            conn_ids,
            limits,
            slots: connection_slots,
            pbx_tls,
        },
        phone_events.clone(),
        tokio::runtime::Handle::current(),
    )));
    // every target, for failover and to recognise the PBX (and the only peers TLS may
    // go to): known before the first datagram, since the UDP reader threads hand
    // datagrams to the core directly, not through the event channel
    driver.lock().pbx_resolved(Instant::now(), resolved);
    let mut readers = udp::Readers::default();
    for (local, socket) in udp_sockets {
        let started = readers.start(socket, local, driver.clone());
        if let Err(source) = started {
            // the readers started so far stop when `readers` is dropped
            drop(readers);
            return Err(RuntimeError::Bind {
                transport: Transport::Udp,
                addr: local,
                source,
            });
        }
    }
    let (control_tx, control_rx) = mpsc::channel(CONTROL_BACKLOG);
    let driver = tokio::spawn(driver::run(
        driver,
        events_rx,
        control_rx,
        shutdown_rx,
        config.limits.shutdown_grace,
        readers,
    ));
    Ok(RuntimeHandle {
        listeners,
        phone_events,
        control: RuntimeControl { tx: control_tx },
        shutdown: shutdown_tx,
        driver,
        io_tasks,
    })
}

/// Runs the proxy until `shutdown` completes, then drains and stops.
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), RuntimeError> {
    let handle = start(config).await?;
    shutdown.await;
    info!("shutting down: finishing open transactions");
    handle.shutdown().await;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
