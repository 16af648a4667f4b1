//! Finding the PBX in DNS: runs the sans-IO RFC 3263 procedure of [`crate::dns`] with
//! `hickory-resolver` lookups, keeps the resolved targets for the driver (failover to
//! the next target when one cannot be reached), and looks them up again when their TTL
//! lapses.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::stream::Shared;
use super::{Event, RuntimeError};
use crate::config::PbxConfig;
use crate::dns::{
    Address, Answer, Naptr, Query, Request, Resolution, Resolved, Srv, Step, Target, TargetList,
};
use crate::proxy::Proxy;
use crate::transport::Transport;

/// The PBX's records are looked up again no sooner than this, whatever their TTL.
const MIN_REFRESH: Duration = Duration::from_secs(30);
/// ... and no later than this.
const MAX_REFRESH: Duration = Duration::from_secs(86_400);

/// Resolves `pbx.host` by RFC 3263, as often as asked.
pub(super) struct PbxResolver {
    request: Request,
    dns_server: Option<SocketAddr>,
    /// Built on first use: an IP address needs no resolver (nor a resolv.conf).
    resolver: Option<TokioResolver>,
    seed: u64,
}

impl std::fmt::Debug for PbxResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PbxResolver")
            .field("request", &self.request)
            .field("dns_server", &self.dns_server)
            .finish_non_exhaustive()
    }
}

impl PbxResolver {
    /// For the `[pbx]` settings; `supported` lists the transports usable towards it.
    pub(super) fn new(pbx: &PbxConfig, supported: Vec<Transport>, seed: u64) -> Self {
        Self {
            request: Request {
                host: pbx.host.clone(),
                port: pbx.port,
                transport: pbx.transport,
                supported,
            },
            dns_server: pbx.dns_server,
            resolver: None,
            seed,
        }
    }

    /// Runs the whole procedure once.
    pub(super) async fn resolve(&mut self) -> Result<Resolved, RuntimeError> {
        self.seed = self.seed.wrapping_add(1);
        let mut resolution = Resolution::new(self.request.clone(), self.seed);
        loop {
            match resolution.poll() {
                Step::Done(result) => {
                    return result.map_err(|e| RuntimeError::Resolve {
                        host: self.request.host.clone(),
                        reason: e.to_string(),
                    });
                }
                Step::Query(query) => {
                    let answer = self.lookup(&query).await;
                    debug!(query = ?query, answer = ?answer, "PBX DNS lookup");
                    resolution.answer(answer);
                }
            }
        }
    }

    fn resolver(&mut self) -> Result<&TokioResolver, String> {
        if self.resolver.is_none() {
            let builder = match self.dns_server {
                Some(addr) => {
                    let mut config = ResolverConfig::new();
                    config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
                    config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
                    TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                }
                None => TokioResolver::builder_tokio()
                    .map_err(|e| format!("no system DNS configuration: {e}"))?,
            };
            self.resolver = Some(builder.build());
        }
        self.resolver
            .as_ref()
            .ok_or_else(|| "no resolver".to_owned())
    }

    async fn lookup(&mut self, query: &Query) -> Answer {
        let resolver = match self.resolver() {
            Ok(resolver) => resolver,
            Err(reason) => return Answer::Failed(reason),
        };
        match query {
            Query::Naptr(name) => match resolver.lookup(name.as_str(), RecordType::NAPTR).await {
                Ok(lookup) => Answer::Naptr(
                    lookup
                        .records()
                        .iter()
                        .filter_map(|r| match r.data() {
                            RData::NAPTR(n) => Some(Naptr {
                                order: n.order(),
                                preference: n.preference(),
                                flags: String::from_utf8_lossy(n.flags()).into_owned(),
                                services: String::from_utf8_lossy(n.services()).into_owned(),
                                replacement: n.replacement().to_string(),
                                ttl: r.ttl(),
                            }),
                            _ => None,
                        })
                        .collect(),
                ),
                Err(e) => failed(&e),
            },
            Query::Srv(name) => match resolver.lookup(name.as_str(), RecordType::SRV).await {
                Ok(lookup) => Answer::Srv(
                    lookup
                        .records()
                        .iter()
                        .filter_map(|r| match r.data() {
                            RData::SRV(s) => Some(Srv {
                                priority: s.priority(),
                                weight: s.weight(),
                                port: s.port(),
                                target: s.target().to_string(),
                                ttl: r.ttl(),
                            }),
                            _ => None,
                        })
                        .collect(),
                ),
                Err(e) => failed(&e),
            },
            Query::Address(name) => match resolver.lookup_ip(name.as_str()).await {
                Ok(lookup) => Answer::Address(
                    lookup
                        .as_lookup()
                        .records()
                        .iter()
                        .filter_map(|r| r.data().ip_addr().map(|ip| Address { ip, ttl: r.ttl() }))
                        .collect(),
                ),
                Err(e) => failed(&e),
            },
        }
    }
}

fn failed(e: &ResolveError) -> Answer {
    if e.is_no_records_found() {
        Answer::Failed("no records".to_owned())
    } else {
        Answer::Failed(e.to_string())
    }
}

/// Looks the PBX up again each time the records' TTL lapses (bounded by
/// [`MIN_REFRESH`] and [`MAX_REFRESH`]) and hands the driver the new targets. A failed
/// lookup keeps the targets in use and is retried after [`MIN_REFRESH`].
pub(super) async fn refresh(mut resolver: PbxResolver, ttl: Duration, events: mpsc::Sender<Event>) {
    let mut wait = ttl;
    loop {
        tokio::time::sleep(wait.clamp(MIN_REFRESH, MAX_REFRESH)).await;
        match resolver.resolve().await {
            Ok(resolved) => {
                wait = resolved.ttl.unwrap_or(MAX_REFRESH);
                if events.send(Event::PbxResolved(resolved)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "looking the PBX up again failed: keeping its targets");
                wait = MIN_REFRESH;
            }
        }
    }
}

/// The driver's view of the PBX's targets: which one the proxy sends to, and failover.
#[derive(Debug, Default)]
pub(super) struct PbxTargets {
    list: Option<TargetList>,
}

impl PbxTargets {
    /// A (new) resolution: tell the proxy every PBX address, and the target to use.
    pub(super) fn resolved(
        &mut self,
        now: Instant,
        resolved: Resolved,
        proxy: &mut Proxy,
        shared: &Shared,
    ) {
        let changed = match &mut self.list {
            Some(list) => list.replace(now, resolved.targets),
            None => {
                self.list = TargetList::new(resolved.targets);
                self.list.as_ref().map(TargetList::current)
            }
        };
        let Some(list) = &self.list else {
            return;
        };
        proxy.set_pbx_addresses(list.targets().iter().map(|t| t.addr).collect());
        if let Some(tls) = &shared.pbx_tls {
            tls.set_peers(
                list.targets()
                    .iter()
                    .filter(|t| t.transport == Transport::Tls)
                    .map(|t| t.addr)
                    .collect(),
            );
        }
        if let Some(target) = changed {
            info!(pbx = %target.addr, transport = %target.transport, targets = list.targets().len(), "PBX target");
            proxy.set_pbx(target.addr, target.transport);
        }
    }

    /// A connection to `remote` could not be opened: when it is the PBX target in use,
    /// the next target takes over for the requests that follow.
    pub(super) fn connect_failed(
        &mut self,
        now: Instant,
        transport: Transport,
        remote: SocketAddr,
        proxy: &mut Proxy,
    ) {
        let Some(list) = &mut self.list else {
            return;
        };
        let failed = Target {
            transport,
            addr: remote,
        };
        if let Some(next) = list.failed(now, failed) {
            warn!(
                failed = %remote,
                pbx = %next.addr,
                transport = %next.transport,
                "PBX target unreachable: failing over to the next"
            );
            proxy.set_pbx(next.addr, next.transport);
        }
    }
}
