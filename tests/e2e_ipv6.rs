//! IPv6 end to end: phone, proxy and PBX on `::1`. The proxy's Via and Record-Route
//! carry bracketed IPv6 references, received/rport name the phone's IPv6 source, and the
//! answer finds its way back.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use presence_proxy::config::Config;
use presence_proxy::runtime;
use presence_proxy::sip::build::ResponseBuilder;
use presence_proxy::sip::{Message, Method};
use presence_proxy::transport::Transport;
use tokio::net::UdpSocket;

async fn recv(socket: &UdpSocket) -> Message {
    let mut buf = vec![0u8; 65_535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("a message within 5 s")
        .expect("receive");
    Message::parse(Bytes::copy_from_slice(&buf[..n])).expect("parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_ipv6_loopback() {
    let Ok(pbx) = UdpSocket::bind("[::1]:0").await else {
        panic!("IPv6 loopback (::1) is not available on this machine");
    };
    let pbx_addr = pbx.local_addr().expect("addr");
    let toml = format!(
        "[listen]\nudp = [\"[::1]:5060\"]\n\n[pbx]\nhost = \"::1\"\nport = {}\n\n[phones]\nallowed_networks = [\"::1/128\"]\n",
        pbx_addr.port()
    );
    let mut config =
        Config::from_toml(&toml, Path::new("ipv6.toml")).unwrap_or_else(|e| panic!("{e}"));
    config.listen.udp = vec!["[::1]:0".parse().expect("addr")];
    let proxy = runtime::start(&config).await.expect("proxy starts");
    let proxy_addr: SocketAddr = proxy.local_addr(Transport::Udp).expect("udp");

    let phone = UdpSocket::bind("[::1]:0").await.expect("bind");
    let me = phone.local_addr().expect("addr");
    let invite = format!(
        "INVITE sip:+4930123456@pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-v6;rport\r\nMax-Forwards: 70\r\nFrom: <sip:201@pbx.example.com>;tag=ph6\r\nTo: <sip:+4930123456@pbx.example.com>\r\nCall-ID: v6@example\r\nCSeq: 1 INVITE\r\nContact: <sip:201@{me}>\r\nContent-Length: 0\r\n\r\n"
    );
    phone
        .send_to(invite.as_bytes(), proxy_addr)
        .await
        .expect("send");

    let forwarded = recv(&pbx).await;
    assert_eq!(forwarded.method(), Some(Method::Invite));
    let vias: Vec<_> = forwarded.vias().map(|v| v.expect("Via parses")).collect();
    assert_eq!(vias[0].host(), b"[::1]");
    assert_eq!(vias[0].port(), Some(proxy_addr.port()));
    assert_eq!(vias[1].received(), Some(&b"::1"[..]));
    assert_eq!(vias[1].rport(), Some(Some(me.port())));
    let rr = forwarded
        .record_routes()
        .next()
        .expect("Record-Route")
        .expect("parses");
    assert_eq!(rr.uri().host(), b"[::1]");

    let ok = ResponseBuilder::new(&forwarded, 200, "OK")
        .to_tag("pbx6")
        .build();
    pbx.send_to(&ok, proxy_addr).await.expect("send");
    let mut statuses = Vec::new();
    while statuses.last() != Some(&200) {
        statuses.push(recv(&phone).await.status().expect("a response"));
    }
    assert_eq!(statuses, vec![100, 200]);
    proxy.shutdown().await;
}
