//! UDP: one reader task per socket, handing every datagram to the driver.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

use super::Event;

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

pub(super) async fn read_loop(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    events: mpsc::Sender<Event>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, remote)) => {
                let bytes = Bytes::copy_from_slice(&buf[..n]);
                if events
                    .send(Event::Datagram {
                        local,
                        remote,
                        bytes,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // e.g. ICMP port unreachable reported on a later receive: not fatal
            Err(e) => debug!(local = %local, error = %e, "udp receive error"),
        }
    }
}
