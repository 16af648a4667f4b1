//! The driver: owns the proxy core and every connection's writer; turns events into
//! core inputs and the core's transmits into socket writes.
//!
//! The core sits behind one mutex, driven from two sides: the UDP reader threads
//! (`udp.rs`) hand it each datagram they read, and the driver task here hands it what
//! the tokio side produces (framed TCP/TLS messages, connection changes, control
//! commands, shutdown, timers). Whoever held the lock sends what the core answered.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info, warn};

use super::stream::{self, Shared};
use super::{Control, Event};
use crate::observe::ObserveEvent;
use crate::proxy::{Flow, Proxy, ProxyConfig, Transmit};
use crate::transport::Transport;

#[derive(Debug)]
struct Conn {
    transport: Transport,
    remote: SocketAddr,
    local: SocketAddr,
    writer: mpsc::Sender<Bytes>,
}

/// Timers are served at most once per tick: deadlines of many transactions that fall
/// within one tick cost one wake-up instead of one each. RFC 3261 timers are hundreds
/// of milliseconds; 10 ms of lateness is far inside their tolerance.
pub(super) const TIMER_TICK: Duration = Duration::from_millis(10);

/// Messages held for a peer while a connection to it is being opened.
const PENDING_PER_PEER: usize = 256;

/// The core and what it needs to send, shared by the driver task and the UDP readers.
pub(super) type SharedDriver = Arc<Mutex<Driver>>;

pub(super) struct Driver {
    proxy: Proxy,
    udp: Vec<(SocketAddr, Arc<std::net::UdpSocket>)>,
    conns: HashMap<u64, Conn>,
    by_remote: HashMap<(Transport, SocketAddr), u64>,
    pending: HashMap<(Transport, SocketAddr), Vec<Bytes>>,
    shared: Shared,
    /// The PBX's resolved targets (RFC 3263), for failover.
    pbx: super::resolve::PbxTargets,
    /// Where the observer's events go (the sync engine, the portal, tests).
    phone_events: broadcast::Sender<ObserveEvent>,
    /// Where connection tasks are started (also from the UDP reader threads).
    tokio: tokio::runtime::Handle,
    /// When timers were last served.
    last_tick: Instant,
}

impl Driver {
    pub(super) fn new(
        config: ProxyConfig,
        udp: Vec<(SocketAddr, Arc<std::net::UdpSocket>)>,
        shared: Shared,
        phone_events: broadcast::Sender<ObserveEvent>,
        tokio: tokio::runtime::Handle,
    ) -> Self {
        Self {
            proxy: Proxy::new(config),
            udp,
            conns: HashMap::new(),
            by_remote: HashMap::new(),
            pending: HashMap::new(),
            shared,
            pbx: super::resolve::PbxTargets::default(),
            phone_events,
            tokio,
            last_tick: Instant::now(),
        }
    }

    /// The next time timers need serving, if any: never sooner than one tick after
    /// they were last served.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.proxy
            .poll_timeout()
            .map(|at| at.max(self.last_tick + TIMER_TICK))
    }

    /// Serves the core's timers when one is due, at most once per tick.
    pub(super) fn serve_timers(&mut self, now: Instant) {
        if self.next_timer().is_some_and(|at| at <= now) {
            self.last_tick = now;
            self.proxy.handle_timeout(now);
        }
    }

    /// Whether the core still holds timers (a reader then wakes up once per tick).
    pub(super) fn has_timers(&self) -> bool {
        self.proxy.poll_timeout().is_some()
    }

    /// A (new) resolution of the PBX's name.
    pub(super) fn pbx_resolved(&mut self, now: Instant, resolved: crate::dns::Resolved) {
        self.pbx
            .resolved(now, resolved, &mut self.proxy, &self.shared);
    }

    /// One datagram read from the UDP socket bound to `local`.
    pub(super) fn datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        bytes: &[u8],
    ) {
        let flow = Flow {
            transport: Transport::Udp,
            remote,
            local,
            conn: None,
        };
        self.proxy
            .handle_datagram(now, flow, Bytes::copy_from_slice(bytes));
    }

    fn control(&mut self, command: Control) {
        match command {
            Control::TeamsBusy { ext, busy } => {
                self.proxy.set_teams_busy(Instant::now(), &ext, busy);
            }
            Control::Extensions(reply) => {
                let _ = reply.send(self.proxy.observer().extensions());
            }
            Control::Directory(extensions) => {
                self.proxy.observer_mut().set_directory(extensions);
            }
            Control::Metrics(reply) => {
                let mut metrics = self.proxy.metrics();
                metrics.connections = self.conns.len() as u64;
                let _ = reply.send(metrics);
            }
        }
    }

    fn handle(&mut self, now: Instant, event: Event) {
        match event {
            Event::Message { conn, msg } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let flow = Flow {
                    transport: c.transport,
                    remote: c.remote,
                    local: c.local,
                    conn: Some(conn),
                };
                self.proxy.handle_message(now, flow, msg);
            }
            Event::Opened {
                conn,
                transport,
                remote,
                local,
                writer,
            } => {
                debug!(conn, remote = %remote, transport = %transport, "connection open");
                if let Some(queued) = self.pending.remove(&(transport, remote)) {
                    for bytes in queued {
                        let _ = writer.try_send(bytes);
                    }
                }
                self.by_remote.insert((transport, remote), conn);
                self.conns.insert(
                    conn,
                    Conn {
                        transport,
                        remote,
                        local,
                        writer,
                    },
                );
            }
            Event::Closed { conn } => {
                if let Some(c) = self.conns.remove(&conn) {
                    if self.by_remote.get(&(c.transport, c.remote)) == Some(&conn) {
                        self.by_remote.remove(&(c.transport, c.remote));
                    }
                    debug!(conn, remote = %c.remote, "connection closed");
                }
                self.proxy.connection_closed(conn);
            }
            Event::ConnectFailed { transport, remote } => {
                if let Some(dropped) = self.pending.remove(&(transport, remote)) {
                    warn!(remote = %remote, transport = %transport, dropped = dropped.len(), "could not connect: messages dropped");
                }
                self.pbx
                    .connect_failed(now, transport, remote, &mut self.proxy);
                self.proxy.transport_error(now, transport, remote);
            }
            Event::PbxResolved(resolved) => self.pbx_resolved(now, resolved),
        }
    }

    /// Hands the observer's events on and sends what the core wants sent.
    pub(super) fn flush(&mut self) {
        while let Some(event) = self.proxy.poll_event() {
            // no subscriber is fine: the per-extension state stays in the observer
            let _ = self.phone_events.send(event);
        }
        while let Some(Transmit { flow, bytes }) = self.proxy.poll_transmit() {
            match flow.transport {
                Transport::Udp => self.send_udp(flow, bytes),
                Transport::Tcp | Transport::Tls => self.send_stream(flow, bytes),
            }
        }
    }

    fn send_udp(&mut self, flow: Flow, bytes: Bytes) {
        let socket = self
            .udp
            .iter()
            .find(|(local, _)| *local == flow.local)
            .or_else(|| {
                self.udp
                    .iter()
                    .find(|(local, _)| local.is_ipv4() == flow.remote.is_ipv4())
            })
            .map(|(_, s)| s.clone());
        let Some(socket) = socket else {
            debug!(remote = %flow.remote, "no UDP socket for this address family");
            return;
        };
        // a blocking send: it waits only while the socket's send buffer is full, for
        // at most the write timeout set by the reader (`udp.rs`)
        match socket.send_to(&bytes, flow.remote) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                warn!(remote = %flow.remote, "udp send buffer full: message dropped");
            }
            Err(e) => debug!(remote = %flow.remote, error = %e, "udp send failed"),
        }
    }

    fn send_stream(&mut self, flow: Flow, bytes: Bytes) {
        let key = (flow.transport, flow.remote);
        let conn = flow
            .conn
            .filter(|c| self.conns.contains_key(c))
            .or_else(|| self.by_remote.get(&key).copied());
        if let Some(conn) = conn.and_then(|c| self.conns.get(&c)) {
            match conn.writer.try_send(bytes) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(remote = %flow.remote, "connection not draining: message dropped");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
            return;
        }
        let queue = self.pending.entry(key).or_default();
        let first = queue.is_empty();
        if queue.len() < PENDING_PER_PEER {
            queue.push(bytes);
        }
        if first {
            self.tokio.spawn(stream::connect(
                flow.transport,
                flow.remote,
                self.shared.clone(),
            ));
        }
    }
}

/// Runs the tokio side of the driver until shutdown has drained the core; the UDP
/// readers stop with it.
pub(super) async fn run(
    driver: SharedDriver,
    mut events: mpsc::Receiver<Event>,
    mut control: mpsc::Receiver<Control>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    readers: super::udp::Readers,
) {
    let mut batch = Vec::with_capacity(64);
    let mut drain_until: Option<Instant> = None;
    // one timer for the driver's whole life, moved only when the next deadline moves:
    // a fresh sleep per loop turn would register and cancel a timer per event
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    loop {
        let timer = driver.lock().next_timer();
        // while draining, look once per tick: transactions also finish on the UDP
        // readers' side, which does not wake this task
        let drain_check = drain_until.map(|until| until.min(Instant::now() + TIMER_TICK));
        let wake = match (timer, drain_check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if wake != armed {
            if let Some(at) = wake {
                sleep.as_mut().reset(tokio::time::Instant::from_std(at));
            }
            armed = wake;
        }
        tokio::select! {
            biased;
            n = events.recv_many(&mut batch, 64) => {
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                let mut driver = driver.lock();
                for event in batch.drain(..) {
                    driver.handle(now, event);
                }
                driver.flush();
            }
            Some(command) = control.recv() => {
                let mut driver = driver.lock();
                driver.control(command);
                driver.flush();
            }
            () = &mut sleep, if armed.is_some() => {
                armed = None;
                let mut driver = driver.lock();
                driver.serve_timers(Instant::now());
                driver.flush();
            }
            changed = shutdown.changed(), if drain_until.is_none() => {
                if changed.is_err() || *shutdown.borrow() {
                    let mut driver = driver.lock();
                    driver.proxy.set_draining(true);
                    drain_until = Some(Instant::now() + grace);
                    info!(open = driver.proxy.pending_transaction_count(), "draining");
                }
            }
        }
        if let Some(until) = drain_until {
            let open = driver.lock().proxy.pending_transaction_count();
            if open == 0 || Instant::now() >= until {
                info!(unfinished = open, "stopped");
                break;
            }
        }
    }
    readers.stop().await;
}
