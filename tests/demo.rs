//! `presence-proxy demo`: the whole product on loopback in one command. Started as the
//! README says (the binary, with `--ephemeral-ports` so it runs beside a real demo or
//! the other tests), its printed admin password opens the portal, and `GET /api/status`
//! shows the scripted call of 201 as `connected` and its Teams presence Busy/InACall;
//! the other phones' lamps for 201 are busy; a Teams call of bob makes every lamp of 202
//! busy and a call to 202 get 486.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;
mod emulator_support;
mod portal_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portal_support::PortalClient;
use presence_proxy::demo::phones::{CallView, Lamp};
use presence_proxy::demo::{self, DemoOptions};
use reqwest::StatusCode;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

async fn status_row(admin: &mut PortalClient, ext: &str) -> Value {
    let reply = admin.get("/api/status").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let rows: Value = serde_json::from_str(&reply.body).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["extension"] == ext)
        .cloned()
        .unwrap_or_else(|| panic!("no {ext} in {rows}"))
}

/// Polls `/api/status` until `ext`'s row satisfies `want`.
async fn wait_row(admin: &mut PortalClient, ext: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let row = status_row(admin, ext).await;
        if want(&row) {
            return row;
        }
        assert!(Instant::now() < deadline, "{ext} never got there: {row}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_command_starts_the_whole_product_with_its_scripted_call() {
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_presence-proxy"))
            .args(["demo", "--ephemeral-ports"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    // the banner comes once everything is up; read it on a thread (the pipe blocks)
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut portal, mut password) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while portal.is_none() || password.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the demo prints its banner within 60 s");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["portal", url] => portal = Some(url.trim_end_matches('/').to_owned()),
            ["admin", "password:", p] => password = Some((*p).to_owned()),
            _ => {}
        }
    }
    let mut admin = PortalClient::new(&portal.unwrap());
    let reply = admin.admin_login(&password.unwrap()).await;
    assert_eq!(
        reply.status,
        StatusCode::SEE_OTHER,
        "the printed password opens the portal"
    );
    let row = wait_row(&mut admin, "201", |r| {
        r["call"] == "connected"
            && r["teams"]["availability"] == "Busy"
            && r["teams"]["activity"] == "InACall"
    })
    .await;
    assert_eq!(row["paired"], true, "{row}");
    assert_eq!(row["pbx_to_teams"], true, "{row}");
    assert_eq!(row["registered"], 1, "{row}");
    assert_eq!(row["email"], "alice@contoso.example");
    // the demo page answers
    let page = admin.get("/demo").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("data-phone=\"201\""), "{}", page.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lamps_and_teams_follow_calls_both_ways_in_the_demo() {
    e2e_support::init_tracing();
    let demo = demo::start(DemoOptions {
        ephemeral_ports: true,
        data_dir: None,
    })
    .await
    .unwrap();
    let phones = demo.phones.clone();
    let (alice, bob, carol) = (&phones[0], &phones[1], &phones[2]);
    // the scripted call: 201's lamp is busy on the others' phones
    for phone in [bob, carol] {
        phone
            .wait_for(DEADLINE, |s| s.lamps.get("201") == Some(&Lamp::Busy))
            .await
            .unwrap();
    }
    alice.hang_up().await.unwrap();
    bob.wait_for(DEADLINE, |s| s.lamps.get("201") == Some(&Lamp::Idle))
        .await
        .unwrap();

    // bob is in a Teams call: his lamp is busy everywhere, and calls to him get 486
    let http = reqwest::Client::new();
    let response = http
        .put(format!(
            "{}/_emulator/users/bob@contoso.example/teams-client",
            demo.emulator_url
        ))
        .json(&serde_json::json!({ "state": "in_call" }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    for phone in [alice, carol] {
        phone
            .wait_for(DEADLINE, |s| s.lamps.get("202") == Some(&Lamp::Busy))
            .await
            .unwrap();
    }
    assert_eq!(
        bob.snapshot().call,
        CallView::Idle,
        "bob's desk phone is idle"
    );
    carol.dial("202").await.unwrap();
    carol
        .wait_for(DEADLINE, |s| s.last_final_status == Some(486))
        .await
        .unwrap();
    assert_eq!(bob.snapshot().call, CallView::Idle, "it never rang");
    demo.shutdown().await;
}
