//! TCP and TLS: accept loops, outbound connects, and one task per connection that
//! frames what it reads and writes what the driver sends it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::Event;
use crate::sip::Limits;
use crate::sip::framing::{Frame, StreamFramer};
use crate::transport::Transport;

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued towards one connection before it counts as stuck.
const WRITE_QUEUE: usize = 1024;

/// What every connection task needs.
#[derive(Debug, Clone)]
pub(super) struct Shared {
    pub(super) events: mpsc::Sender<Event>,
    pub(super) conn_ids: Arc<AtomicU64>,
    pub(super) limits: Limits,
    pub(super) slots: Arc<Semaphore>,
    /// TLS towards the PBX (only the PBX: phones reach the proxy, not the reverse).
    pub(super) pbx_tls: Option<super::tls::PbxTls>,
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    transport: Transport,
    acceptor: Option<TlsAcceptor>,
    shared: Shared,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(e) => {
                // e.g. out of file descriptors: wait, do not spin
                warn!(local = %local, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
            warn!(remote = %remote, "connection limit reached: refused");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => serve(stream, transport, remote, local, shared, permit).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve(tls, transport, remote, local, shared, permit).await,
                        Ok(Err(e)) => debug!(remote = %remote, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(remote = %remote, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Opens a connection to `remote` for the driver: TCP, or TLS to the PBX (verified
/// against `pbx.tls_ca`). TLS to anyone else is refused: a phone whose TLS connection
/// closed has to connect again itself.
pub(super) async fn connect(transport: Transport, remote: SocketAddr, shared: Shared) {
    let failed = |shared: Shared| async move {
        let _ = shared
            .events
            .send(Event::ConnectFailed { transport, remote })
            .await;
    };
    let tls = match transport {
        Transport::Tls => match &shared.pbx_tls {
            Some(tls) if tls.is_peer(remote) => Some(tls.clone()),
            _ => {
                debug!(remote = %remote, "no outbound TLS except to the PBX");
                return failed(shared).await;
            }
        },
        _ => None,
    };
    let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
        return failed(shared).await;
    };
    let stream =
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(remote)).await {
            Ok(Ok(stream)) => stream,
            _ => {
                debug!(remote = %remote, "connect failed");
                return failed(shared).await;
            }
        };
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(remote);
    match tls {
        None => serve(stream, transport, remote, local, shared, permit).await,
        Some(tls) => {
            let handshake = tls.connector.connect(tls.server_name.clone(), stream);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => serve(stream, transport, remote, local, shared, permit).await,
                Ok(Err(e)) => {
                    warn!(remote = %remote, error = %e, "TLS to the PBX failed");
                    failed(shared).await;
                }
                Err(_) => {
                    warn!(remote = %remote, "TLS handshake with the PBX timed out");
                    failed(shared).await;
                }
            }
        }
    }
}

/// Runs one connection until either side closes it or it sends garbage.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    transport: Transport,
    remote: SocketAddr,
    local: SocketAddr,
    shared: Shared,
    _permit: OwnedSemaphorePermit,
) {
    let conn = shared.conn_ids.fetch_add(1, Ordering::Relaxed);
    let (writer, mut outbox) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    let opened = Event::Opened {
        conn,
        transport,
        remote,
        local,
        writer,
    };
    if shared.events.send(opened).await.is_err() {
        return;
    }
    let (mut reader, mut write_half) = tokio::io::split(stream);
    let mut framer = StreamFramer::new(shared.limits);
    'io: loop {
        tokio::select! {
            read = async {
                framer.buffer_mut().reserve(4096);
                reader.read_buf(framer.buffer_mut()).await
            } => {
                match read {
                    Ok(0) | Err(_) => break 'io,
                    Ok(_) => {}
                }
                loop {
                    match framer.next_frame() {
                        Ok(Some(Frame::Message(msg))) => {
                            if shared.events.send(Event::Message { conn, msg }).await.is_err() {
                                break 'io;
                            }
                        }
                        Ok(Some(Frame::Ping)) => {
                            if write_half.write_all(b"\r\n").await.is_err() {
                                break 'io;
                            }
                        }
                        Ok(Some(Frame::Pong)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            warn!(remote = %remote, transport = %transport, error = %e, "unframeable stream: connection closed");
                            break 'io;
                        }
                    }
                }
            }
            out = outbox.recv() => {
                let Some(bytes) = out else { break 'io };
                if write_half.write_all(&bytes).await.is_err() {
                    break 'io;
                }
            }
        }
    }
    let _ = write_half.shutdown().await;
    let _ = shared.events.send(Event::Closed { conn }).await;
}
