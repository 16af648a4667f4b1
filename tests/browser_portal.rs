//! The portal in a real browser (headless Chromium over WebDriver), against the product
//! of one configuration file (Graph and sign-ins by the emulator, SIPp as phone and
//! PBX): the admin signs in, clicks Admin Grant and Get OAuth Token through the
//! emulator's pages, switches PBX → Teams on and saves; a user signs in with
//! "Microsoft", pairs (the indicator turns green) and unpairs (red); the admin's status
//! table shows a SIPp call as connected without a reload. The status page's screenshot
//! is the README's (`docs/portal-status.png`, rewritten when `UPDATE_SCREENSHOTS=1`).
//!
//! Needs Chromium, ChromeDriver and SIPp; `scripts/test.sh` installs them.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod browser_support;
mod e2e_support;
mod emulator_support;
mod portal_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use browser_support::Browser;
use e2e_support::{
    DEADLINE, SippRun, assert_success, fail, free_port, require_sipp, spawn_sipp, test_dir,
    wait_bound,
};
use portal_support::ADMIN_PASSWORD;
use presence_proxy::transport::Transport;

/// Clicks the account `upn` on the emulator's "Pick an account" page.
async fn pick_account(browser: &Browser, upn: &str) {
    browser.wait_for_text("h1", "Pick an account").await;
    browser.click(&format!("a.user[data-upn=\"{upn}\"]")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_user_do_everything_in_a_real_browser() {
    require_sipp();
    let pbx_port = free_port();
    let product = portal_support::start_product(pbx_port).await;
    let web = product.web.clone();

    // the admin
    let admin = Browser::start().await;
    admin.goto(&format!("{web}/")).await;
    admin.click("#admin-link").await;
    admin.wait_for_url(|u| u.path() == "/admin/login").await;
    admin.fill("#password", ADMIN_PASSWORD).await;
    admin.click("#sign-in").await;
    admin.wait_for_url(|u| u.path() == "/admin/teams").await;
    admin.wait_for_text("#consent", "Not granted").await;
    admin.click("#admin-grant").await;
    // the emulator's consent page, then back
    admin.click("#accept").await;
    admin.wait_for_url(|u| u.path() == "/admin/teams").await;
    admin.wait_for_text("#consent", "Granted").await;
    admin.click("#get-token").await;
    pick_account(&admin, "alice@contoso.example").await;
    admin.wait_for_url(|u| u.path() == "/admin/teams").await;
    admin
        .wait_for_text("#token-owner", "alice@contoso.example")
        .await;
    admin.wait_for_text("#token-state", "valid").await;
    admin.click("#pbx-to-teams").await;
    admin.click("#save").await;
    admin.wait_for_text("#notice", "Saved").await;
    assert!(product.teams.store.pbx_to_teams_enabled().unwrap());

    // a user, in another browser
    let user = Browser::start().await;
    user.goto(&format!("{web}/")).await;
    user.click("#user-link").await;
    user.click("#microsoft-sign-in").await;
    pick_account(&user, "bob@contoso.example").await;
    user.wait_for_url(|u| u.path() == "/user").await;
    user.wait_for_text("h2", "Extension 201").await;
    user.wait_for("#pairing-status.red").await;
    user.click("#pair").await;
    pick_account(&user, "bob@contoso.example").await;
    user.wait_for_url(|u| u.path() == "/user").await;
    user.wait_for("#pairing-status.green").await;
    user.wait_for_text("#pairing-status", "Paired").await;
    user.click("#unpair").await;
    user.wait_for_text("#notice", "Unpaired").await;
    user.wait_for("#pairing-status.red").await;
    // pair again, for the call below
    user.click("#pair").await;
    pick_account(&user, "bob@contoso.example").await;
    user.wait_for("#pairing-status.green").await;
    user.close().await;

    // the status table updates without a reload when a call starts
    admin.click("a[href$=\"/admin/status\"]").await;
    admin
        .wait_for("#status tr[data-extension=\"201\"] td.call")
        .await;
    admin
        .client()
        .execute("window.stillTheSamePage = true; return null;", vec![])
        .await
        .unwrap();
    let mut logs = test_dir("presence-browser-portal-");
    let mut pbx = spawn_sipp(
        logs.path(),
        &SippRun {
            name: "pbx",
            scenario: "pbx_call.xml",
            port: pbx_port,
            remote: None,
            send_to: None,
            extra: &[],
        },
    );
    if let Err(e) = wait_bound(&mut pbx, Transport::Udp, pbx_port).await {
        fail(&mut logs, &e);
    }
    let pbx_addr: SocketAddr = ([127, 0, 0, 1], pbx_port).into();
    let mut phone = spawn_sipp(
        logs.path(),
        &SippRun {
            name: "phone",
            scenario: "phone_call_hold.xml",
            port: free_port(),
            remote: Some(pbx_addr),
            send_to: Some(product.proxy.local_addr(Transport::Udp).unwrap()),
            extra: &["-s", "004930123456", "-key", "caller", "201", "-d", "6000"],
        },
    );
    admin
        .wait_for_text("#status tr[data-extension=\"201\"] td.call", "connected")
        .await;
    admin
        .wait_for_text("#status tr[data-extension=\"201\"] td.teams", "InACall")
        .await;
    let same: serde_json::Value = admin
        .client()
        .execute("return window.stillTheSamePage === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, serde_json::Value::Bool(true), "no reload happened");
    admin.wait_for("#actions li").await;
    let shot = if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/portal-status.png")
    } else {
        logs.path().join("portal-status.png")
    };
    admin.screenshot(&shot).await;
    let deadline = Instant::now() + DEADLINE;
    let phone_status = phone.wait_until(deadline).await;
    let pbx_status = pbx.wait_until(deadline).await;
    phone.stop();
    pbx.stop();
    assert_success("the phone's SIPp", phone_status, &mut logs);
    assert_success("the PBX's SIPp", pbx_status, &mut logs);
    admin
        .wait_for_text("#status tr[data-extension=\"201\"] td.call", "idle")
        .await;
    admin.close().await;
    product.stop().await;
}
