//! How soon a setPresence leaves the Graph client, measured against the in-process
//! emulator (issue 5, BENCHMARKS.md):
//!
//! ```sh
//! cargo run --release --example graph_latency -- 2000
//! ```
//!
//! Starts the emulator on 127.0.0.1:0, pairs alice through the authorize page and the code
//! exchange (PKCE) the way the tests do, so the calls carry her delegated token
//! (Presence.ReadWrite), warms up, then makes N sequential setPresence calls (N ≤ 5,000,
//! default 2,000) alternating Busy/InACall and Available. For each call it reports
//!
//! - *leave*: from the call to `GraphClient::set_presence` until the emulator's request
//!   log saw the request arrive (`received_unix_us`: the wall clock when the request's
//!   head had been parsed and reached the emulator's first middleware), and
//! - *round trip*: from the call until it returned `Ok`.
//!
//! Both clocks are the same process's wall clock. The emulator's presence throttle (1,500
//! requests per 30 s per app per tenant, graph.md §4.1) and the client's request budget
//! (the same figure) are raised to 1,000,000 for the run, so the figure is the client's
//! own cost, not time spent waiting for the budget: at 1,500 per 30 s the budget would
//! hold back call 1,501 by design. `-- 1400 default-limits` keeps both limits at 1,500
//! per 30 s instead (N is then capped at 1,400: with the warm-up, 1,500 requests).

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use presence_proxy::emulator::{
    CONTOSO_CLIENT_ID, CONTOSO_CLIENT_SECRET, Emulator, EmulatorConfig, EmulatorHandle,
};
use presence_proxy::graph::{
    AuthorizeRequest, GraphClient, GraphConfig, Pkce, SessionPresence, TokenSet, TokenSink, Tokens,
    USER_SCOPES, random_url_safe,
};
use presence_proxy::store::Secret;

const REDIRECT: &str = "http://127.0.0.1:8080/oauth/callback";
const ALICE: &str = "a1f0c9e2-0001-4c1d-8e2f-000000000001";
const WARM_UP: usize = 100;
const RAISED_LIMIT: usize = 1_000_000;

struct NoSink;

impl TokenSink for NoSink {
    fn rotated(&self, _: &TokenSet) -> Result<(), String> {
        Ok(())
    }
}

fn unix_us(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(name: &str, mut us: Vec<u64>) {
    us.sort_unstable();
    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "{name:<11} n={:<5} p50 {:>6.3} ms  p90 {:>6.3} ms  p99 {:>6.3} ms  max {:>6.3} ms",
        us.len(),
        ms(percentile(&us, 50.0)),
        ms(percentile(&us, 90.0)),
        ms(percentile(&us, 99.0)),
        ms(us.last().copied().unwrap_or(0)),
    );
}

/// Alice's delegated credential through authorize (the emulator's `emulator_user`
/// shortcut stands for the sign-in page) and the code exchange.
async fn pair(graph: &GraphClient) -> Result<std::sync::Arc<Tokens>, String> {
    let pkce = Pkce::generate().map_err(|e| e.to_string())?;
    let state = random_url_safe(16).map_err(|e| e.to_string())?;
    let url = graph.config().authorize_url(&AuthorizeRequest {
        scope: USER_SCOPES,
        state: &state,
        nonce: "bench",
        code_challenge: &pkce.challenge,
        login_hint: Some("alice@contoso.example"),
        prompt: None,
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let response = http
        .get(format!("{url}&emulator_user=alice@contoso.example"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("authorize did not redirect")?;
    let location = reqwest::Url::parse(location).map_err(|e| e.to_string())?;
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| Secret::new(v.into_owned()))
        .ok_or("no code in the redirect")?;
    let set = graph
        .exchange_code(&code, &pkce.verifier, USER_SCOPES)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Tokens::delegated(
        graph,
        set,
        USER_SCOPES,
        std::sync::Arc::new(NoSink),
    ))
}

/// `received_unix_us` of every setPresence in the emulator's request log, in order.
async fn received(emu: &EmulatorHandle) -> Result<Vec<u64>, String> {
    let body: serde_json::Value = reqwest::get(format!("{}/requests", emu.control_url()))
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let entries = body["value"].as_array().ok_or("no request log")?;
    Ok(entries
        .iter()
        .filter(|e| {
            e["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/presence/setPresence"))
        })
        .filter_map(|e| e["received_unix_us"].as_u64())
        .collect())
}

async fn run(calls: usize, raised: bool) -> Result<(), String> {
    let defaults = EmulatorConfig::default();
    let limit = if raised {
        RAISED_LIMIT
    } else {
        defaults.presence_rate_limit
    };
    let emu = Emulator::start(EmulatorConfig {
        presence_rate_limit: limit,
        ..defaults
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut config = GraphConfig::new(
        "contoso.example",
        CONTOSO_CLIENT_ID,
        CONTOSO_CLIENT_SECRET,
        REDIRECT,
    )
    .with_bases(emu.login_url(), emu.graph_url());
    config.budget_limit = limit;
    let graph = GraphClient::new(config).map_err(|e| e.to_string())?;
    let tokens = pair(&graph).await?;
    let hour = Duration::from_secs(3600);
    let states = [SessionPresence::InACall, SessionPresence::Available];
    for i in 0..WARM_UP {
        graph
            .set_presence(&tokens, ALICE, states[i % 2], hour)
            .await
            .map_err(|e| e.to_string())?;
    }
    reqwest::Client::new()
        .delete(format!("{}/requests", emu.control_url()))
        .send()
        .await
        .map_err(|e| e.to_string())?;

    let mut asked = Vec::with_capacity(calls);
    let mut round_trips = Vec::with_capacity(calls);
    for i in 0..calls {
        let wall = SystemTime::now();
        let started = Instant::now();
        graph
            .set_presence(&tokens, ALICE, states[i % 2], hour)
            .await
            .map_err(|e| e.to_string())?;
        round_trips.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        asked.push(unix_us(wall));
    }
    let arrived = received(&emu).await?;
    if arrived.len() != calls {
        return Err(format!(
            "the emulator logged {} setPresence requests, expected {calls}",
            arrived.len()
        ));
    }
    let leave: Vec<u64> = asked
        .iter()
        .zip(&arrived)
        .map(|(a, r)| r.saturating_sub(*a))
        .collect();
    println!(
        "setPresence against the in-process emulator, {calls} sequential calls after {WARM_UP} warm-up, delegated token, throttle and budget {limit} per 30 s"
    );
    report("leave", leave);
    report("round trip", round_trips);
    emu.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let calls = args
        .next()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(2000);
    let raised = args.next().as_deref() != Some("default-limits");
    let calls = calls.clamp(1, if raised { 5000 } else { 1500 - WARM_UP });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(calls, raised)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("graph_latency: {e}");
            ExitCode::FAILURE
        }
    }
}
