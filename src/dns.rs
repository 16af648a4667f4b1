//! Locating the PBX by RFC 3263 §4: which transport, address and port to send to for
//! `pbx.host`, and in which order to try them when one fails.
//!
//! This module owns the selection rules, sans-IO: [`Resolution`] asks for one DNS
//! query at a time ([`Resolution::poll`]) and is handed the records found
//! ([`Resolution::answer`]); the runtime does the lookups. The rules:
//!
//! - an IP address is used as it is (transport as configured, else UDP);
//! - a name with a port: its A/AAAA records (transport as configured, else UDP);
//! - a name with a transport but no port: the SRV records of that transport
//!   (`_sip._udp`, `_sip._tcp`, `_sips._tcp`), else A/AAAA on the transport's default
//!   port;
//! - a bare name: NAPTR (services `SIP+D2U`, `SIP+D2T`, `SIPS+D2T`, the supported ones
//!   only; lowest order, then preference), then SRV of the replacement; without usable
//!   NAPTR records, SRV for each supported transport; without SRV records, A/AAAA on
//!   UDP's default port.
//!
//! SRV records are ordered by priority, and within a priority by the weighted random
//! choice of RFC 2782 (seeded, so tests are deterministic). The result is the ordered
//! list of every usable target and the smallest TTL seen. [`TargetList`] keeps that
//! list for failover: when the current target fails, the next one takes over.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::transport::Transport;

/// Most DNS queries one resolution makes (a hostile zone cannot make it loop).
const MAX_QUERIES: usize = 32;
/// Most targets one resolution yields.
const MAX_TARGETS: usize = 32;
/// How long a target that failed is passed over when another is available.
const FAILED_HOLD: Duration = Duration::from_secs(300);

/// What to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// A host name or an IP address (IPv6 with or without brackets).
    pub host: String,
    /// The port, when configured.
    pub port: Option<u16>,
    /// The transport, when configured.
    pub transport: Option<Transport>,
    /// The transports this proxy can use towards the PBX, most preferred first.
    pub supported: Vec<Transport>,
}

/// One place to send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// How.
    pub transport: Transport,
    /// Where.
    pub addr: SocketAddr,
}

/// The outcome of a resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Every usable target, best first (never empty).
    pub targets: Vec<Target>,
    /// The smallest TTL of the records used; `None` for an IP address (nothing to
    /// look up again).
    pub ttl: Option<Duration>,
}

/// A DNS query the procedure needs answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// NAPTR records of the name.
    Naptr(String),
    /// SRV records of the name (such as `_sip._udp.example.com`).
    Srv(String),
    /// A and AAAA records of the name.
    Address(String),
}

impl Query {
    /// The name queried.
    pub fn name(&self) -> &str {
        match self {
            Self::Naptr(name) | Self::Srv(name) | Self::Address(name) => name,
        }
    }
}

/// A NAPTR record (RFC 3403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    /// Lower first.
    pub order: u16,
    /// Lower first, among equal orders.
    pub preference: u16,
    /// `S` (SRV lookup next) or `A` (address lookup next); others are not usable.
    pub flags: String,
    /// Such as `SIP+D2U`.
    pub services: String,
    /// The name to look up next.
    pub replacement: String,
    /// Seconds.
    pub ttl: u32,
}

/// An SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Lower first.
    pub priority: u16,
    /// Relative share among equal priorities.
    pub weight: u16,
    /// Port of the service.
    pub port: u16,
    /// Host name of the server (`.`: no service).
    pub target: String,
    /// Seconds.
    pub ttl: u32,
}

/// An A or AAAA record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The address.
    pub ip: IpAddr,
    /// Seconds.
    pub ttl: u32,
}

/// The answer to a [`Query`]. An empty list and a failure both mean "nothing here";
/// the failure's text is kept for the error when nothing at all is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Answer to [`Query::Naptr`].
    Naptr(Vec<Naptr>),
    /// Answer to [`Query::Srv`].
    Srv(Vec<Srv>),
    /// Answer to [`Query::Address`].
    Address(Vec<Address>),
    /// The lookup failed (no such name, no records, timeout...).
    Failed(String),
}

/// Why no target was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The configured transport is one the proxy cannot use.
    #[error("transport {0} is not usable towards the PBX")]
    Unsupported(Transport),
    /// Every lookup came back empty or failed.
    #[error("no usable SIP server for {host}: {detail}")]
    NotFound {
        /// The host resolved.
        host: String,
        /// What each lookup said.
        detail: String,
    },
}

/// What [`Resolution::poll`] wants next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Look this up, then call [`Resolution::answer`].
    Query(Query),
    /// Finished.
    Done(Result<Resolved, DnsError>),
}

/// One step of the procedure still to do.
#[derive(Debug, Clone)]
enum Job {
    Naptr {
        name: String,
    },
    /// `name` is the whole SRV name (`_sip._udp.example.com`).
    Srv {
        transport: Transport,
        name: String,
    },
    Address {
        transport: Transport,
        name: String,
        port: u16,
    },
    /// These jobs run only if nothing was found so far (the fallbacks of §4.1, §4.2).
    IfEmpty(Vec<Job>),
}

/// The RFC 3263 §4 procedure for one host, sans-IO.
#[derive(Debug)]
pub struct Resolution {
    host: String,
    supported: Vec<Transport>,
    jobs: VecDeque<Job>,
    waiting: Option<Job>,
    targets: Vec<Target>,
    ttl: Option<u32>,
    queries: usize,
    failures: Vec<String>,
    rng: SplitMix,
    /// Set at once for an IP address or a bad request.
    early: Option<Result<Resolved, DnsError>>,
}

impl Resolution {
    /// Starts resolving `request`; `seed` drives the weighted SRV choice.
    pub fn new(request: Request, seed: u64) -> Self {
        let host = request.host.trim();
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let mut this = Self {
            host: host.to_owned(),
            supported: request.supported.clone(),
            jobs: VecDeque::new(),
            waiting: None,
            targets: Vec::new(),
            ttl: None,
            queries: 0,
            failures: Vec::new(),
            rng: SplitMix(seed),
            early: None,
        };
        if let Some(t) = request.transport {
            if !request.supported.contains(&t) {
                this.early = Some(Err(DnsError::Unsupported(t)));
                return this;
            }
        }
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            // §4.1/§4.2: a numeric address: UDP unless told, the default port unless told
            let transport = request.transport.unwrap_or(Transport::Udp);
            let port = request.port.unwrap_or(transport.default_port());
            this.early = Some(Ok(Resolved {
                targets: vec![Target {
                    transport,
                    addr: SocketAddr::new(ip, port),
                }],
                ttl: None,
            }));
            return this;
        }
        let name = host.to_owned();
        let job = match (request.port, request.transport) {
            (Some(port), transport) => Job::Address {
                transport: transport.unwrap_or(Transport::Udp),
                name,
                port,
            },
            (None, Some(transport)) => {
                let fallback = Job::Address {
                    transport,
                    name: name.clone(),
                    port: transport.default_port(),
                };
                this.jobs.push_back(Job::Srv {
                    transport,
                    name: srv_name(transport, &name),
                });
                Job::IfEmpty(vec![fallback])
            }
            (None, None) => Job::Naptr { name },
        };
        this.jobs.push_back(job);
        this
    }

    /// The next query to make, or the outcome.
    pub fn poll(&mut self) -> Step {
        if let Some(done) = self.early.take() {
            return Step::Done(done);
        }
        if let Some(job) = &self.waiting {
            // asked again without an answer: ask again
            return Step::Query(query_of(job));
        }
        while let Some(job) = self.jobs.pop_front() {
            match job {
                Job::IfEmpty(jobs) => {
                    if self.targets.is_empty() {
                        for job in jobs.into_iter().rev() {
                            self.jobs.push_front(job);
                        }
                    }
                }
                job => {
                    if self.queries >= MAX_QUERIES || self.targets.len() >= MAX_TARGETS {
                        self.jobs.clear();
                        break;
                    }
                    self.queries += 1;
                    let query = query_of(&job);
                    self.waiting = Some(job);
                    return Step::Query(query);
                }
            }
        }
        Step::Done(self.finish())
    }

    /// The answer to the query [`Resolution::poll`] returned last.
    pub fn answer(&mut self, answer: Answer) {
        let Some(job) = self.waiting.take() else {
            return;
        };
        let mut next = Vec::new();
        // a failed lookup counts as an empty one (no such name, no records, timeout)
        let failed = matches!(answer, Answer::Failed(_));
        let answer = match (answer, &job) {
            (Answer::Failed(reason), job) => {
                self.failures
                    .push(format!("{}: {reason}", query_of(job).name()));
                match job {
                    Job::Naptr { .. } => Answer::Naptr(Vec::new()),
                    Job::Srv { .. } => Answer::Srv(Vec::new()),
                    Job::Address { .. } | Job::IfEmpty(_) => Answer::Address(Vec::new()),
                }
            }
            (answer, _) => answer,
        };
        match (job, answer) {
            (Job::Naptr { name }, Answer::Naptr(records)) => {
                let usable = self.usable_naptr(&records);
                if usable.is_empty() {
                    if !records.is_empty() {
                        self.failures
                            .push(format!("{name}: no NAPTR record of a usable SIP service"));
                    }
                    // §4.1: no usable NAPTR: SRV for each supported transport, then A/AAAA
                    for &transport in &self.supported {
                        next.push(Job::Srv {
                            transport,
                            name: srv_name(transport, &name),
                        });
                    }
                    let transport = if self.supported.contains(&Transport::Udp) {
                        Transport::Udp
                    } else {
                        self.supported.first().copied().unwrap_or(Transport::Udp)
                    };
                    next.push(Job::IfEmpty(vec![Job::Address {
                        transport,
                        name,
                        port: transport.default_port(),
                    }]));
                } else {
                    next = naptr_jobs(usable, &mut self.ttl);
                }
            }
            (Job::Srv { transport, name }, Answer::Srv(records)) => {
                if records.is_empty() && !failed {
                    self.failures.push(format!("{name}: no SRV record"));
                }
                for record in self.order_srv(records) {
                    self.ttl = min_ttl(self.ttl, record.ttl);
                    let host = record.target.trim_end_matches('.');
                    if let Ok(ip) = host.parse::<IpAddr>() {
                        self.push_target(transport, SocketAddr::new(ip, record.port));
                    } else {
                        next.push(Job::Address {
                            transport,
                            name: record.target,
                            port: record.port,
                        });
                    }
                }
            }
            (
                Job::Address {
                    transport,
                    name,
                    port,
                },
                Answer::Address(records),
            ) => {
                if records.is_empty() && !failed {
                    self.failures.push(format!("{name}: no A/AAAA record"));
                }
                for record in records {
                    self.ttl = min_ttl(self.ttl, record.ttl);
                    self.push_target(transport, SocketAddr::new(record.ip, port));
                }
            }
            (job, _) => {
                self.failures.push(format!(
                    "{}: answer of the wrong record type",
                    query_of(&job).name()
                ));
            }
        }
        for job in next.into_iter().rev() {
            self.jobs.push_front(job);
        }
    }

    /// The NAPTR records this proxy can follow, best first: supported SIP services with
    /// flag `S` or `A`, of the lowest order among those (RFC 3403 §4.1: a higher order is
    /// only for when the lower one yields nothing, which `IfEmpty` covers).
    fn usable_naptr(&self, records: &[Naptr]) -> Vec<(Transport, Naptr)> {
        let mut usable: Vec<(Transport, Naptr)> = records
            .iter()
            .filter(|r| r.flags.eq_ignore_ascii_case("s") || r.flags.eq_ignore_ascii_case("a"))
            .filter_map(|r| {
                let transport = naptr_transport(&r.services)?;
                self.supported
                    .contains(&transport)
                    .then(|| (transport, r.clone()))
            })
            .collect();
        usable.sort_by_key(|(_, r)| (r.order, r.preference));
        usable
    }

    /// RFC 2782: by priority, and within one priority by weighted random choice (zero
    /// weights first, each pick proportional to weight). `.` targets are dropped.
    fn order_srv(&mut self, mut records: Vec<Srv>) -> Vec<Srv> {
        records.retain(|r| !r.target.is_empty() && r.target != ".");
        records.sort_by_key(|r| (r.priority, r.weight != 0));
        let mut ordered = Vec::with_capacity(records.len());
        let mut rest = records.as_slice();
        while let Some(first) = rest.first() {
            let end = rest
                .iter()
                .position(|r| r.priority != first.priority)
                .unwrap_or(rest.len());
            let (group, tail) = rest.split_at(end);
            let mut group: Vec<Srv> = group.to_vec();
            while !group.is_empty() {
                let total: u64 = group.iter().map(|r| u64::from(r.weight)).sum();
                let pick = self.rng.below(total + 1);
                let mut running = 0u64;
                let index = group
                    .iter()
                    .position(|r| {
                        running += u64::from(r.weight);
                        running >= pick
                    })
                    .unwrap_or(0);
                ordered.push(group.remove(index));
            }
            rest = tail;
        }
        ordered
    }

    fn push_target(&mut self, transport: Transport, addr: SocketAddr) {
        let target = Target { transport, addr };
        if !self.targets.contains(&target) && self.targets.len() < MAX_TARGETS {
            self.targets.push(target);
        }
    }

    fn finish(&mut self) -> Result<Resolved, DnsError> {
        if self.targets.is_empty() {
            let detail = if self.failures.is_empty() {
                "nothing found".to_owned()
            } else {
                self.failures.join("; ")
            };
            return Err(DnsError::NotFound {
                host: self.host.clone(),
                detail,
            });
        }
        Ok(Resolved {
            targets: std::mem::take(&mut self.targets),
            ttl: Some(Duration::from_secs(u64::from(self.ttl.unwrap_or(0)))),
        })
    }
}

/// The jobs for usable NAPTR records (sorted): the lowest order group first, each
/// following group only if the ones before found nothing.
fn naptr_jobs(usable: Vec<(Transport, Naptr)>, ttl: &mut Option<u32>) -> Vec<Job> {
    let mut groups: Vec<Vec<Job>> = Vec::new();
    let mut last_order = None;
    for (transport, record) in usable {
        if last_order != Some(record.order) {
            groups.push(Vec::new());
            last_order = Some(record.order);
        }
        // the TTL counts only for records followed; later groups may never be
        *ttl = min_ttl(*ttl, record.ttl);
        let job = if record.flags.eq_ignore_ascii_case("s") {
            Job::Srv {
                transport,
                name: record.replacement,
            }
        } else {
            Job::Address {
                transport,
                name: record.replacement,
                port: transport.default_port(),
            }
        };
        if let Some(group) = groups.last_mut() {
            group.push(job);
        }
    }
    // nest: group 1, IfEmpty(group 2, IfEmpty(group 3 ...))
    let mut nested: Vec<Job> = Vec::new();
    for mut group in groups.into_iter().rev() {
        if !nested.is_empty() {
            group.push(Job::IfEmpty(nested));
        }
        nested = group;
    }
    nested
}

fn query_of(job: &Job) -> Query {
    match job {
        Job::Naptr { name } => Query::Naptr(name.clone()),
        Job::Srv { name, .. } => Query::Srv(name.clone()),
        Job::Address { name, .. } => Query::Address(name.clone()),
        // never waited on
        Job::IfEmpty(_) => Query::Address(String::new()),
    }
}

/// `_sip._udp.NAME`, `_sip._tcp.NAME`, `_sips._tcp.NAME` (RFC 3263 §4.1).
pub fn srv_name(transport: Transport, name: &str) -> String {
    match transport {
        Transport::Udp => format!("_sip._udp.{name}"),
        Transport::Tcp => format!("_sip._tcp.{name}"),
        Transport::Tls => format!("_sips._tcp.{name}"),
    }
}

/// The transport of a NAPTR service field (RFC 3263 §4.1), if one this module knows.
pub fn naptr_transport(services: &str) -> Option<Transport> {
    if services.eq_ignore_ascii_case("SIP+D2U") {
        Some(Transport::Udp)
    } else if services.eq_ignore_ascii_case("SIP+D2T") {
        Some(Transport::Tcp)
    } else if services.eq_ignore_ascii_case("SIPS+D2T") {
        Some(Transport::Tls)
    } else {
        None
    }
}

fn min_ttl(current: Option<u32>, ttl: u32) -> Option<u32> {
    Some(current.map_or(ttl, |c| c.min(ttl)))
}

/// SplitMix64: a small, seeded generator for the weighted SRV choice.
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` at least 1).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The resolved targets of the PBX, and which one is in use: failover moves to the
/// next target, a new resolution replaces the list. Targets that failed recently are
/// passed over while others are available.
#[derive(Debug, Clone)]
pub struct TargetList {
    targets: Vec<Target>,
    current: usize,
    failed: Vec<(Target, Instant)>,
}

impl TargetList {
    /// A list starting at its first target; `None` when `targets` is empty.
    pub fn new(targets: Vec<Target>) -> Option<Self> {
        (!targets.is_empty()).then_some(Self {
            targets,
            current: 0,
            failed: Vec::new(),
        })
    }

    /// The target in use.
    pub fn current(&self) -> Target {
        // `targets` is never empty and `current` always indexes it
        self.targets[self.current.min(self.targets.len() - 1)]
    }

    /// Every target, in order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// `target` could not be reached. When it is the one in use, the next target that
    /// has not failed recently (else simply the next) takes over and is returned.
    pub fn failed(&mut self, now: Instant, target: Target) -> Option<Target> {
        if !self.targets.contains(&target) {
            return None;
        }
        self.failed
            .retain(|(t, at)| *t != target && now < *at + FAILED_HOLD);
        self.failed.push((target, now));
        if self.current() != target || self.targets.len() < 2 {
            return None;
        }
        let n = self.targets.len();
        let next = (1..n)
            .map(|step| (self.current + step) % n)
            .find(|&i| !self.recently_failed(now, self.targets[i]))
            .unwrap_or((self.current + 1) % n);
        self.current = next;
        Some(self.current())
    }

    /// A new resolution: its first target that has not failed recently (else its
    /// first) is used. Returns the target in use when it changed.
    pub fn replace(&mut self, now: Instant, targets: Vec<Target>) -> Option<Target> {
        if targets.is_empty() {
            return None;
        }
        let before = self.current();
        self.failed.retain(|(_, at)| now < *at + FAILED_HOLD);
        self.current = targets
            .iter()
            .position(|t| !self.recently_failed(now, *t))
            .unwrap_or(0);
        self.targets = targets;
        let after = self.current();
        (after != before).then_some(after)
    }

    fn recently_failed(&self, now: Instant, target: Target) -> bool {
        self.failed
            .iter()
            .any(|(t, at)| *t == target && now < *at + FAILED_HOLD)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    fn request(host: &str, port: Option<u16>, transport: Option<Transport>) -> Request {
        Request {
            host: host.to_owned(),
            port,
            transport,
            supported: ALL.to_vec(),
        }
    }

    fn naptr(order: u16, preference: u16, flags: &str, services: &str, to: &str) -> Naptr {
        Naptr {
            order,
            preference,
            flags: flags.to_owned(),
            services: services.to_owned(),
            replacement: to.to_owned(),
            ttl: 3600,
        }
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port,
            target: target.to_owned(),
            ttl: 600,
        }
    }

    fn ip(text: &str, ttl: u32) -> Answer {
        Answer::Address(vec![Address {
            ip: text.parse().unwrap(),
            ttl,
        }])
    }

    fn target(transport: Transport, addr: &str) -> Target {
        Target {
            transport,
            addr: addr.parse().unwrap(),
        }
    }

    /// Runs a resolution against a fixed zone; returns the queries made and the result.
    fn run(
        request: Request,
        seed: u64,
        zone: &dyn Fn(&Query) -> Answer,
    ) -> (Vec<Query>, Result<Resolved, DnsError>) {
        let mut resolution = Resolution::new(request, seed);
        let mut asked = Vec::new();
        loop {
            match resolution.poll() {
                Step::Query(q) => {
                    let answer = zone(&q);
                    asked.push(q);
                    resolution.answer(answer);
                }
                Step::Done(result) => return (asked, result),
            }
        }
    }

    fn nothing() -> Answer {
        Answer::Failed("no records found".to_owned())
    }

    #[test]
    fn an_ip_address_is_used_as_it_is() {
        let (asked, result) = run(request("192.0.2.1", None, None), 0, &|_| nothing());
        assert!(asked.is_empty());
        let resolved = result.unwrap();
        assert_eq!(
            resolved.targets,
            vec![target(Transport::Udp, "192.0.2.1:5060")]
        );
        assert_eq!(resolved.ttl, None);
        let (_, result) = run(
            request("[2001:db8::1]", None, Some(Transport::Tls)),
            0,
            &|_| nothing(),
        );
        assert_eq!(
            result.unwrap().targets,
            vec![target(Transport::Tls, "[2001:db8::1]:5061")]
        );
    }

    #[test]
    fn a_name_with_a_port_uses_its_addresses_only() {
        let (asked, result) = run(request("pbx.test", Some(5070), None), 0, &|q| match q {
            Query::Address(n) if n == "pbx.test" => Answer::Address(vec![
                Address {
                    ip: "192.0.2.1".parse().unwrap(),
                    ttl: 300,
                },
                Address {
                    ip: "192.0.2.2".parse().unwrap(),
                    ttl: 60,
                },
            ]),
            _ => nothing(),
        });
        assert_eq!(asked, vec![Query::Address("pbx.test".into())]);
        let resolved = result.unwrap();
        assert_eq!(
            resolved.targets,
            vec![
                target(Transport::Udp, "192.0.2.1:5070"),
                target(Transport::Udp, "192.0.2.2:5070"),
            ]
        );
        assert_eq!(resolved.ttl, Some(Duration::from_secs(60)));
    }

    #[test]
    fn a_name_with_a_transport_uses_srv_of_that_transport() {
        let zone = |q: &Query| match q {
            Query::Srv(n) if n == "_sip._tcp.pbx.test" => {
                Answer::Srv(vec![srv(10, 0, 5080, "a.pbx.test.")])
            }
            Query::Address(n) if n == "a.pbx.test." => ip("192.0.2.1", 120),
            _ => nothing(),
        };
        let (asked, result) = run(request("pbx.test", None, Some(Transport::Tcp)), 0, &zone);
        assert_eq!(
            asked,
            vec![
                Query::Srv("_sip._tcp.pbx.test".into()),
                Query::Address("a.pbx.test.".into())
            ]
        );
        let resolved = result.unwrap();
        assert_eq!(
            resolved.targets,
            vec![target(Transport::Tcp, "192.0.2.1:5080")]
        );
        assert_eq!(resolved.ttl, Some(Duration::from_secs(120)));
        // TLS asks for _sips._tcp
        let (asked, _) = run(request("pbx.test", None, Some(Transport::Tls)), 0, &zone);
        assert_eq!(asked[0], Query::Srv("_sips._tcp.pbx.test".into()));
    }

    #[test]
    fn without_srv_a_configured_transport_falls_back_to_its_default_port() {
        let (asked, result) = run(
            request("pbx.test", None, Some(Transport::Tls)),
            0,
            &|q| match q {
                Query::Address(n) if n == "pbx.test" => ip("192.0.2.9", 30),
                _ => Answer::Srv(vec![]),
            },
        );
        assert_eq!(
            asked,
            vec![
                Query::Srv("_sips._tcp.pbx.test".into()),
                Query::Address("pbx.test".into())
            ]
        );
        assert_eq!(
            result.unwrap().targets,
            vec![target(Transport::Tls, "192.0.2.9:5061")]
        );
    }

    #[test]
    fn naptr_order_then_preference_picks_the_transport() {
        let zone = |q: &Query| match q {
            Query::Naptr(n) if n == "pbx.test" => Answer::Naptr(vec![
                naptr(20, 10, "s", "SIP+D2U", "_sip._udp.pbx.test."),
                naptr(10, 20, "s", "SIP+D2U", "_sip._udp.pbx.test."),
                naptr(10, 10, "S", "SIP+D2T", "_sip._tcp.pbx.test."),
            ]),
            Query::Srv(n) if n == "_sip._tcp.pbx.test." => {
                Answer::Srv(vec![srv(0, 0, 5062, "tcp.pbx.test.")])
            }
            Query::Srv(n) if n == "_sip._udp.pbx.test." => {
                Answer::Srv(vec![srv(0, 0, 5064, "udp.pbx.test.")])
            }
            Query::Address(n) if n == "tcp.pbx.test." => ip("192.0.2.2", 100),
            Query::Address(n) if n == "udp.pbx.test." => ip("192.0.2.3", 100),
            _ => nothing(),
        };
        let (asked, result) = run(request("pbx.test", None, None), 0, &zone);
        // order 10: TCP (preference 10) before UDP (preference 20); order 20 never asked
        assert_eq!(
            asked,
            vec![
                Query::Naptr("pbx.test".into()),
                Query::Srv("_sip._tcp.pbx.test.".into()),
                Query::Address("tcp.pbx.test.".into()),
                Query::Srv("_sip._udp.pbx.test.".into()),
                Query::Address("udp.pbx.test.".into()),
            ]
        );
        let resolved = result.unwrap();
        assert_eq!(
            resolved.targets,
            vec![
                target(Transport::Tcp, "192.0.2.2:5062"),
                target(Transport::Udp, "192.0.2.3:5064"),
            ]
        );
        assert_eq!(resolved.ttl, Some(Duration::from_secs(100)));
    }

    #[test]
    fn a_higher_naptr_order_is_used_only_when_the_lower_yields_nothing() {
        let zone = |q: &Query| match q {
            Query::Naptr(_) => Answer::Naptr(vec![
                naptr(10, 10, "s", "SIP+D2T", "_sip._tcp.dead.test."),
                naptr(20, 10, "s", "SIP+D2U", "_sip._udp.pbx.test."),
            ]),
            Query::Srv(n) if n == "_sip._udp.pbx.test." => {
                Answer::Srv(vec![srv(0, 0, 5060, "udp.pbx.test.")])
            }
            Query::Address(n) if n == "udp.pbx.test." => ip("192.0.2.3", 100),
            _ => nothing(),
        };
        let (_, result) = run(request("pbx.test", None, None), 0, &zone);
        assert_eq!(
            result.unwrap().targets,
            vec![target(Transport::Udp, "192.0.2.3:5060")]
        );
    }

    #[test]
    fn unsupported_naptr_services_and_flags_are_skipped() {
        let zone = |q: &Query| match q {
            Query::Naptr(_) => Answer::Naptr(vec![
                naptr(1, 1, "s", "SIP+D2S", "_sip._sctp.pbx.test."),
                naptr(2, 1, "s", "SIPS+D2T", "_sips._tcp.pbx.test."),
                naptr(3, 1, "u", "SIP+D2U", "!^.*$!sip:x@y!"),
                naptr(4, 1, "s", "E2U+sip", "_sip._udp.pbx.test."),
                naptr(5, 1, "s", "SIP+D2T", "_sip._tcp.pbx.test."),
            ]),
            Query::Srv(n) if n == "_sip._tcp.pbx.test." => {
                Answer::Srv(vec![srv(0, 0, 5060, "tcp.pbx.test.")])
            }
            Query::Srv(n) if n == "_sips._tcp.pbx.test." => {
                Answer::Srv(vec![srv(0, 0, 5061, "tls.pbx.test.")])
            }
            Query::Address(_) => ip("192.0.2.4", 100),
            _ => nothing(),
        };
        // without TLS support the SIPS record is skipped as well
        let mut req = request("pbx.test", None, None);
        req.supported = vec![Transport::Udp, Transport::Tcp];
        let (asked, result) = run(req, 0, &zone);
        assert_eq!(
            asked[1..],
            [
                Query::Srv("_sip._tcp.pbx.test.".into()),
                Query::Address("tcp.pbx.test.".into())
            ]
        );
        assert_eq!(
            result.unwrap().targets,
            vec![target(Transport::Tcp, "192.0.2.4:5060")]
        );
        // with it, SIPS+D2T (order 2) wins
        let (_, result) = run(request("pbx.test", None, None), 0, &zone);
        assert_eq!(
            result.unwrap().targets,
            vec![target(Transport::Tls, "192.0.2.4:5061")]
        );
    }

    #[test]
    fn an_a_flag_naptr_goes_straight_to_addresses() {
        let zone = |q: &Query| match q {
            Query::Naptr(_) => Answer::Naptr(vec![naptr(1, 1, "A", "SIP+D2T", "host.test.")]),
            Query::Address(n) if n == "host.test." => ip("192.0.2.5", 100),
            _ => nothing(),
        };
        let (_, result) = run(request("pbx.test", None, None), 0, &zone);
        assert_eq!(
            result.unwrap().targets,
            vec![target(Transport::Tcp, "192.0.2.5:5060")]
        );
    }

    #[test]
    fn without_naptr_every_supported_transport_is_tried_by_srv() {
        let zone = |q: &Query| match q {
            Query::Srv(n) if n == "_sip._tcp.pbx.test" => {
                Answer::Srv(vec![srv(0, 0, 5090, "t.pbx.test.")])
            }
            Query::Srv(n) if n == "_sips._tcp.pbx.test" => {
                Answer::Srv(vec![srv(0, 0, 5091, "t.pbx.test.")])
            }
            Query::Address(n) if n == "t.pbx.test." => ip("192.0.2.6", 100),
            _ => nothing(),
        };
        let (asked, result) = run(request("pbx.test", None, None), 0, &zone);
        assert_eq!(
            asked,
            vec![
                Query::Naptr("pbx.test".into()),
                Query::Srv("_sip._udp.pbx.test".into()),
                Query::Srv("_sip._tcp.pbx.test".into()),
                Query::Address("t.pbx.test.".into()),
                Query::Srv("_sips._tcp.pbx.test".into()),
                Query::Address("t.pbx.test.".into()),
            ]
        );
        assert_eq!(
            result.unwrap().targets,
            vec![
                target(Transport::Tcp, "192.0.2.6:5090"),
                target(Transport::Tls, "192.0.2.6:5091"),
            ]
        );
    }

    #[test]
    fn without_naptr_or_srv_the_address_on_udp_5060_is_used() {
        let zone = |q: &Query| match q {
            Query::Naptr(_) => Answer::Naptr(vec![]),
            Query::Srv(_) => Answer::Srv(vec![]),
            Query::Address(n) if n == "pbx.test" => ip("192.0.2.7", 100),
            Query::Address(_) => nothing(),
        };
        let (asked, result) = run(request("pbx.test", None, None), 0, &zone);
        assert_eq!(asked.len(), 5);
        assert_eq!(
            result.unwrap().targets,
            vec![target(Transport::Udp, "192.0.2.7:5060")]
        );
    }

    #[test]
    fn nothing_found_says_what_each_lookup_said() {
        let (_, result) = run(request("pbx.test", None, None), 0, &|_| nothing());
        let DnsError::NotFound { host, detail } = result.unwrap_err() else {
            panic!("expected NotFound");
        };
        assert_eq!(host, "pbx.test");
        assert!(
            detail.contains("_sip._udp.pbx.test: no records found"),
            "{detail}"
        );
        assert!(detail.contains("pbx.test: no records found"), "{detail}");
    }

    #[test]
    fn an_unsupported_configured_transport_is_an_error() {
        let mut req = request("pbx.test", None, Some(Transport::Tls));
        req.supported = vec![Transport::Udp, Transport::Tcp];
        let (asked, result) = run(req, 0, &|_| nothing());
        assert!(asked.is_empty());
        assert_eq!(result, Err(DnsError::Unsupported(Transport::Tls)));
    }

    #[test]
    fn srv_priority_comes_first_and_dot_targets_are_dropped() {
        let mut resolution = Resolution::new(request("x", None, None), 7);
        let ordered = resolution.order_srv(vec![
            srv(20, 100, 1, "c."),
            srv(10, 0, 2, "b."),
            srv(5, 0, 3, "."),
            srv(10, 0, 4, "a."),
        ]);
        let ports: Vec<u16> = ordered.iter().map(|r| r.port).collect();
        // priority 10 (zero weights keep their order), then 20; "." dropped
        assert_eq!(ports, vec![2, 4, 1]);
    }

    #[test]
    fn srv_weights_share_first_place_in_proportion() {
        let mut first = [0u32; 3];
        let mut resolution = Resolution::new(request("x", None, None), 42);
        for _ in 0..4000 {
            let ordered = resolution.order_srv(vec![
                srv(1, 10, 0, "a."),
                srv(1, 30, 1, "b."),
                srv(1, 60, 2, "c."),
            ]);
            assert_eq!(ordered.len(), 3);
            first[usize::from(ordered[0].port)] += 1;
        }
        // expected 400 / 1200 / 2400
        assert!((250..550).contains(&first[0]), "{first:?}");
        assert!((1000..1400).contains(&first[1]), "{first:?}");
        assert!((2200..2600).contains(&first[2]), "{first:?}");
        // zero weight among non-zero ones: rarely first, but never lost
        let ordered = resolution.order_srv(vec![srv(1, 0, 9, "z."), srv(1, 50, 8, "y.")]);
        assert_eq!(ordered.len(), 2);
    }

    #[test]
    fn the_same_seed_gives_the_same_order() {
        let records = vec![
            srv(1, 10, 0, "a."),
            srv(1, 10, 1, "b."),
            srv(1, 10, 2, "c."),
            srv(1, 10, 3, "d."),
        ];
        let order = |seed| {
            let mut r = Resolution::new(request("x", None, None), seed);
            r.order_srv(records.clone())
        };
        assert_eq!(order(5), order(5));
    }

    #[test]
    fn the_query_budget_is_bounded() {
        // every SRV target is another name: the resolution stops after MAX_QUERIES
        let zone = |q: &Query| match q {
            Query::Srv(_) => Answer::Srv(
                (0..100)
                    .map(|i| srv(0, 0, 5060, &format!("h{i}.test.")))
                    .collect(),
            ),
            Query::Address(_) => ip("192.0.2.8", 100),
            Query::Naptr(_) => nothing(),
        };
        let (asked, result) = run(request("pbx.test", None, None), 0, &zone);
        assert!(asked.len() <= MAX_QUERIES, "{}", asked.len());
        assert_eq!(
            result.unwrap().targets,
            vec![target(Transport::Udp, "192.0.2.8:5060")]
        );
    }

    #[test]
    fn failover_moves_to_the_next_target_and_skips_recent_failures() {
        let a = target(Transport::Tcp, "192.0.2.1:5060");
        let b = target(Transport::Tcp, "192.0.2.2:5060");
        let c = target(Transport::Udp, "192.0.2.3:5060");
        let now = Instant::now();
        let mut list = TargetList::new(vec![a, b, c]).unwrap();
        assert_eq!(list.current(), a);
        // a target not in use failing changes nothing
        assert_eq!(list.failed(now, b), None);
        assert_eq!(list.current(), a);
        // a fails: b failed recently, so c
        assert_eq!(list.failed(now, a), Some(c));
        // c fails: everything failed recently, so simply the next (a)
        assert_eq!(list.failed(now, c), Some(a));
        // unknown targets are ignored
        assert_eq!(
            list.failed(now, target(Transport::Udp, "192.0.2.9:1")),
            None
        );
        // a new resolution starts at its first target not recently failed
        let later = now + Duration::from_secs(10);
        let d = target(Transport::Udp, "192.0.2.4:5060");
        assert_eq!(list.replace(later, vec![a, d]), Some(d));
        // once the hold is over, the first target is used again
        let much_later = now + FAILED_HOLD + Duration::from_secs(1);
        assert_eq!(list.replace(much_later, vec![a, d]), Some(a));
        assert_eq!(list.replace(much_later, vec![a, d]), None);
        assert_eq!(list.targets(), &[a, d]);
        assert!(TargetList::new(Vec::new()).is_none());
    }
}
