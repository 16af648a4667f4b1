//! `presence-proxy demo` runs its whole script through the proxy, and the proxy observes
//! what the script does to extension 201. The demo's configuration is the embedded one,
//! moved to free ports so this runs beside a real demo or benchmark.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::net::SocketAddr;
use std::path::Path;

use presence_proxy::config::Config;
use presence_proxy::demo::{self, DEMO_CONFIG};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_script_passes_through_the_proxy_and_is_observed() {
    e2e_support::init_tracing();
    let mut config = Config::from_toml(DEMO_CONFIG, Path::new("loopback.toml")).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    config.listen.udp = vec![any];
    config.listen.tcp = vec![any];
    config.pbx.port = Some(e2e_support::free_port());
    let observed: Vec<String> =
        tokio::time::timeout(e2e_support::DEADLINE, demo::run(&config, false))
            .await
            .expect("the demo finishes")
            .expect("the demo script succeeds")
            .iter()
            .map(ToString::to_string)
            .collect();
    assert_eq!(
        observed,
        [
            "ExternalCallStarted 201 ringing",
            "ExternalCallStarted 201 connected",
            "ExternalCallEnded 201",
            "ExternalCallStarted 201 ringing",
            "ExternalCallStarted 201 connected",
            "ExternalCallEnded 201",
            "DndChanged 201 on",
        ]
    );
}
