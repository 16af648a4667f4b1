//! The driver task: owns the proxy core and every connection's writer; turns events
//! into core inputs and the core's transmits into socket writes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
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
const TIMER_TICK: Duration = Duration::from_millis(10);

/// Messages held for a peer while a connection to it is being opened.
const PENDING_PER_PEER: usize = 256;

pub(super) struct Driver {
    proxy: Proxy,
    udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    conns: HashMap<u64, Conn>,
    by_remote: HashMap<(Transport, SocketAddr), u64>,
    pending: HashMap<(Transport, SocketAddr), Vec<Bytes>>,
    shared: Shared,
    /// The PBX's resolved targets (RFC 3263), for failover.
    pbx: super::resolve::PbxTargets,
    /// Where the observer's events go (the sync engine, the portal, tests).
    phone_events: broadcast::Sender<ObserveEvent>,
}

impl Driver {
    pub(super) fn new(
        config: ProxyConfig,
        udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
        shared: Shared,
        phone_events: broadcast::Sender<ObserveEvent>,
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
        }
    }

    pub(super) async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut control: mpsc::Receiver<Control>,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        let mut batch = Vec::with_capacity(64);
        // the first UDP socket is read right here: no task switch or channel per datagram
        let primary = self.udp.first().cloned();
        let mut datagram = vec![0u8; MAX_DATAGRAM];
        let mut drain_until: Option<Instant> = None;
        let mut last_tick = Instant::now();
        // one timer for the driver's whole life, moved only when the next deadline moves:
        // a fresh sleep per loop turn would register and cancel a timer per datagram
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            let timer = self
                .proxy
                .poll_timeout()
                .map(|at| at.max(last_tick + TIMER_TICK));
            let wake = match (timer, drain_until) {
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
                        return;
                    }
                    let now = Instant::now();
                    for event in batch.drain(..) {
                        self.handle(now, event);
                    }
                }
                Some(command) = control.recv() => self.control(command),
                received = recv_primary(primary.as_ref(), &mut datagram) => {
                    if let (Ok((n, remote)), Some((local, socket))) = (received, primary.as_ref()) {
                        let now = Instant::now();
                        self.datagram(now, *local, remote, &datagram[..n]);
                        // whatever else is already queued on the socket, without waiting
                        for _ in 0..64 {
                            match socket.try_recv_from(&mut datagram) {
                                Ok((n, remote)) => self.datagram(now, *local, remote, &datagram[..n]),
                                Err(_) => break,
                            }
                        }
                    }
                }
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    last_tick = Instant::now();
                    self.proxy.handle_timeout(last_tick);
                }
                changed = shutdown.changed(), if drain_until.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        self.proxy.set_draining(true);
                        drain_until = Some(Instant::now() + grace);
                        info!(open = self.proxy.pending_transaction_count(), "draining");
                    }
                }
            }
            self.flush();
            if let Some(until) = drain_until {
                if self.proxy.pending_transaction_count() == 0 || Instant::now() >= until {
                    info!(
                        unfinished = self.proxy.pending_transaction_count(),
                        "stopped"
                    );
                    return;
                }
            }
        }
    }

    fn datagram(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, bytes: &[u8]) {
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
            Event::Datagram {
                local,
                remote,
                bytes,
            } => {
                let flow = Flow {
                    transport: Transport::Udp,
                    remote,
                    local,
                    conn: None,
                };
                self.proxy.handle_datagram(now, flow, bytes);
            }
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
            Event::PbxResolved(resolved) => {
                self.pbx
                    .resolved(now, resolved, &mut self.proxy, &self.shared);
            }
        }
    }

    fn flush(&mut self) {
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
        match socket.try_send_to(&bytes, flow.remote) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // the socket buffer is full: wait for it off the driver's path
                tokio::spawn(async move {
                    let _ = socket.send_to(&bytes, flow.remote).await;
                });
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
            tokio::spawn(stream::connect(
                flow.transport,
                flow.remote,
                self.shared.clone(),
            ));
        }
    }
}

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

async fn recv_primary(
    socket: Option<&(SocketAddr, Arc<UdpSocket>)>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some((_, socket)) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}
