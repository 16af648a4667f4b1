#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
//! The emulator's presence subscriptions (graph.md §3), over real HTTP on loopback, with a
//! small notification receiver running in the test on a free port.

mod emulator_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use emulator_support::*;
use presence_proxy::emulator::{CONTOSO_CLIENT_ID, CONTOSO_TENANT_ID, EmulatorConfig};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How the receiver answers the validation request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Echo,
    EchoEncoded,
    Status500,
    JsonContentType,
    NeverAnswer,
}

#[derive(Debug)]
enum Event {
    Validation { content_type: String, token: String },
    Notification(Value),
}

struct Receiver {
    mode: Mutex<Mode>,
    tx: mpsc::UnboundedSender<Event>,
}

async fn receive(
    State(rx): State<Arc<Receiver>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(token) = q.get("validationToken") {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        rx.tx
            .send(Event::Validation {
                content_type,
                token: token.clone(),
            })
            .unwrap();
        let mode = *rx.mode.lock().unwrap();
        return match mode {
            Mode::Echo => ([(header::CONTENT_TYPE, "text/plain")], token.clone()).into_response(),
            Mode::EchoEncoded => {
                let encoded: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
                ([(header::CONTENT_TYPE, "text/plain")], encoded).into_response()
            }
            Mode::Status500 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            Mode::JsonContentType => {
                ([(header::CONTENT_TYPE, "application/json")], token.clone()).into_response()
            }
            Mode::NeverAnswer => std::future::pending().await,
        };
    }
    rx.tx
        .send(Event::Notification(serde_json::from_slice(&body).unwrap()))
        .unwrap();
    StatusCode::ACCEPTED.into_response()
}

/// Starts the receiver on a free loopback port; returns its URL and the event stream.
async fn receiver(mode: Mode) -> (String, Arc<Receiver>, mpsc::UnboundedReceiver<Event>) {
    let (tx, events) = mpsc::unbounded_channel();
    let state = Arc::new(Receiver {
        mode: Mutex::new(mode),
        tx,
    });
    let app = axum::Router::new()
        .route("/api/notify", axum::routing::post(receive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}/api/notify?tag=t1"), state, events)
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event before the deadline")
        .expect("channel open")
}

fn expiry_in(minutes: u64) -> String {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        + Duration::from_secs(minutes * 60);
    let secs = at.as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // days → civil date (same algorithm as the emulator's, kept independent here)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.0000000Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn subscription(url: &str, ids: &[&str], minutes: u64) -> Value {
    let list: Vec<String> = ids.iter().map(|i| format!("'{i}'")).collect();
    json!({
        "changeType": "updated",
        "notificationUrl": url,
        "resource": format!("/communications/presences?$filter=id in ({})", list.join(",")),
        "expirationDateTime": expiry_in(minutes),
        "clientState": "secret-client-state",
    })
}

async fn sync_user_token(env: &Env) -> String {
    env.user_token(
        "dave@contoso.example",
        &["Presence.Read.All", "User.ReadBasic.All"],
    )
    .await
}

/// graph.md §3.2: on create, Graph POSTs notificationUrl?validationToken=… (text/plain);
/// echoing the URL-decoded token as text/plain with 200 creates the subscription (201).
#[tokio::test]
async fn s3_2_validation_handshake_success() {
    let env = start().await;
    let token = sync_user_token(&env).await;
    let (url, _, mut events) = receiver(Mode::Echo).await;
    let (status, body) = env
        .graph_post(
            &token,
            "/subscriptions",
            subscription(&url, &[ALICE, BOB], 55),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["clientState"], "secret-client-state");
    assert_eq!(body["changeType"], "updated");
    assert!(body["id"].is_string());
    assert_eq!(body["applicationId"], CONTOSO_CLIENT_ID);
    match next_event(&mut events).await {
        Event::Validation {
            content_type,
            token,
        } => {
            assert!(content_type.starts_with("text/plain"), "{content_type}");
            assert!(token.contains(' '), "the token needs URL-decoding: {token}");
        }
        other => panic!("expected the validation request, got {other:?}"),
    }
}

/// graph.md §3.2: a token echoed still URL-encoded, a non-200, or a non-text/plain answer
/// fails validation: 400 ValidationError and no subscription.
#[tokio::test]
async fn s3_2_validation_handshake_failures() {
    let env = start().await;
    let token = sync_user_token(&env).await;
    for mode in [Mode::EchoEncoded, Mode::Status500, Mode::JsonContentType] {
        let (url, _, _events) = receiver(mode).await;
        let (status, body) = env
            .graph_post(&token, "/subscriptions", subscription(&url, &[ALICE], 30))
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(graph_error_code(&body), "ValidationError");
    }
    let (status, list) = env
        .control_json(reqwest::Method::GET, "/subscriptions", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["value"].as_array().unwrap().len(), 0);
}

/// graph.md §3.2: the endpoint must answer within the validation timeout (10 s at Graph;
/// shortened here by configuration), else the subscription is refused.
#[tokio::test]
async fn s3_2_validation_timeout_refuses() {
    let env = start_with(EmulatorConfig {
        validation_timeout: Duration::from_millis(300),
        ..EmulatorConfig::default()
    })
    .await;
    let token = sync_user_token(&env).await;
    let (url, _, _events) = receiver(Mode::NeverAnswer).await;
    let (status, body) = env
        .graph_post(&token, "/subscriptions", subscription(&url, &[ALICE], 30))
        .await;
    assert_eq!(status, 400);
    assert_eq!(graph_error_code(&body), "ValidationError");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out")
    );
}

/// graph.md §3.1: after a presence change, a basic notification with clientState, tenantId,
/// resource communications/presences/{id} and resourceData is POSTed to notificationUrl
/// (query parameters kept, §3.2). The change here comes from Teams itself (control API).
#[tokio::test]
async fn s3_1_notification_after_presence_change() {
    let env = start().await;
    let token = sync_user_token(&env).await;
    let (url, _, mut events) = receiver(Mode::Echo).await;
    let (status, sub) = env
        .graph_post(
            &token,
            "/subscriptions",
            subscription(&url, &[ALICE, BOB], 60),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    assert!(matches!(
        next_event(&mut events).await,
        Event::Validation { .. }
    ));
    env.teams_client(BOB, "in_call").await;
    let Event::Notification(n) = next_event(&mut events).await else {
        panic!("expected a notification");
    };
    let item = &n["value"][0];
    assert_eq!(item["clientState"], "secret-client-state");
    assert_eq!(item["subscriptionId"], sub["id"]);
    assert_eq!(item["changeType"], "updated");
    assert_eq!(item["tenantId"], CONTOSO_TENANT_ID);
    assert_eq!(item["resource"], format!("communications/presences/{BOB}"));
    assert_eq!(item["resourceData"]["id"], BOB);
    assert_eq!(
        item["resourceData"]["@odata.type"],
        "#microsoft.graph.presence"
    );
    // an app's setPresence is a change too
    let app = env.app_token().await;
    assert_eq!(
        env.set_presence(&app, ALICE, "DoNotDisturb", "Presenting", "PT1H")
            .await
            .0,
        200
    );
    let Event::Notification(n) = next_event(&mut events).await else {
        panic!("expected a notification");
    };
    assert_eq!(
        n["value"][0]["resource"],
        format!("communications/presences/{ALICE}")
    );
    // a user outside the subscription changes: no notification for them
    env.teams_client(CAROL, "available").await;
    env.teams_client(BOB, "offline").await;
    let Event::Notification(n) = next_event(&mut events).await else {
        panic!("expected a notification");
    };
    assert_eq!(n["value"][0]["resourceData"]["id"], BOB);
}

/// graph.md §1.1 + §3.1: fading (Available → AvailableInactive after 5 min) is a presence
/// change, notified when the emulator clock moves past it.
#[tokio::test]
async fn s3_1_fading_is_notified() {
    let env = start().await;
    let token = sync_user_token(&env).await;
    let app = env.app_token().await;
    assert_eq!(
        env.set_presence(&app, CAROL, "Available", "Available", "PT1H")
            .await
            .0,
        200
    );
    let (url, _, mut events) = receiver(Mode::Echo).await;
    let (status, _) = env
        .graph_post(&token, "/subscriptions", subscription(&url, &[CAROL], 60))
        .await;
    assert_eq!(status, 201);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Validation { .. }
    ));
    env.advance(5 * 60).await;
    let Event::Notification(n) = next_event(&mut events).await else {
        panic!("expected a notification");
    };
    assert_eq!(n["value"][0]["resourceData"]["id"], CAROL);
    assert_eq!(
        env.presence(&app, CAROL).await,
        ("Available".into(), "AvailableInactive".into())
    );
}

/// graph.md §3.1 / §7: presence subscriptions refuse app-only tokens.
#[tokio::test]
async fn s3_1_app_only_tokens_are_refused() {
    let env = start().await;
    let app = env.app_token().await;
    let (url, _, _events) = receiver(Mode::Echo).await;
    let (status, body) = env
        .graph_post(&app, "/subscriptions", subscription(&url, &[ALICE], 30))
        .await;
    assert_eq!(status, 403);
    graph_error_code(&body);
}

/// graph.md §3.1: a delegated token needs Presence.Read.All.
#[tokio::test]
async fn s3_1_needs_presence_read_all() {
    let env = start().await;
    let token = env
        .user_token("alice@contoso.example", &["Presence.Read"])
        .await;
    let (url, _, _events) = receiver(Mode::Echo).await;
    let (status, _) = env
        .graph_post(&token, "/subscriptions", subscription(&url, &[BOB], 30))
        .await;
    assert_eq!(status, 403);
}

/// graph.md §3.1: presence subscriptions last at most 60 minutes.
#[tokio::test]
async fn s3_1_expiration_at_most_60_minutes() {
    let env = start().await;
    let token = sync_user_token(&env).await;
    let (url, _, _events) = receiver(Mode::Echo).await;
    let (status, body) = env
        .graph_post(&token, "/subscriptions", subscription(&url, &[ALICE], 61))
        .await;
    assert_eq!(status, 400);
    graph_error_code(&body);
}

/// graph.md §3.1: at most 650 user ids per subscription.
#[tokio::test]
async fn s3_1_at_most_650_ids() {
    let env = start().await;
    let token = sync_user_token(&env).await;
    let (url, _, _events) = receiver(Mode::Echo).await;
    let ids: Vec<String> = (0..651)
        .map(|i| format!("00000000-0000-0000-0000-{i:012}"))
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (status, _) = env
        .graph_post(&token, "/subscriptions", subscription(&url, &refs, 30))
        .await;
    assert_eq!(status, 400);
}

/// graph.md §3.2: clientState is required.
#[tokio::test]
async fn s3_2_client_state_required() {
    let env = start().await;
    let token = sync_user_token(&env).await;
    let (url, _, _events) = receiver(Mode::Echo).await;
    let mut body = subscription(&url, &[ALICE], 30);
    body.as_object_mut().unwrap().remove("clientState");
    assert_eq!(env.graph_post(&token, "/subscriptions", body).await.0, 400);
}

/// graph.md §3.1 / §3.2 / §8.8: one presence subscription per app per delegated user; a
/// second create is 409 Conflict.
#[tokio::test]
async fn s3_1_second_subscription_conflicts() {
    let env = start().await;
    let token = sync_user_token(&env).await;
    let (url, _, _events) = receiver(Mode::Echo).await;
    assert_eq!(
        env.graph_post(&token, "/subscriptions", subscription(&url, &[ALICE], 30))
            .await
            .0,
        201
    );
    let (status, body) = env
        .graph_post(&token, "/subscriptions", subscription(&url, &[BOB], 30))
        .await;
    assert_eq!(status, 409);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already exists")
    );
}

/// graph.md §3.2: PATCH renews (200 + the subscription, still ≤ 60 min), DELETE removes
/// (204), and an expired subscription is gone (404).
#[tokio::test]
async fn s3_2_renew_delete_and_expiry() {
    let env = start().await;
    let token = sync_user_token(&env).await;
    let (url, _, _events) = receiver(Mode::Echo).await;
    let (_, sub) = env
        .graph_post(&token, "/subscriptions", subscription(&url, &[ALICE], 10))
        .await;
    let id = sub["id"].as_str().unwrap().to_owned();
    let path = format!("/subscriptions/{id}");
    let renew = |minutes: u64| {
        env.http
            .patch(env.graph(&path))
            .bearer_auth(&token)
            .json(&json!({"expirationDateTime": expiry_in(minutes)}))
            .send()
    };
    let (status, renewed) = split(renew(50).await.unwrap()).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["id"], id.as_str());
    assert_eq!(split(renew(90).await.unwrap()).await.0, 400);
    let deleted = env
        .http
        .delete(env.graph(&path))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(env.graph_get(&token, &path).await.0, 404);

    let (status, sub) = env
        .graph_post(&token, "/subscriptions", subscription(&url, &[ALICE], 10))
        .await;
    assert_eq!(status, 201, "a new one after delete");
    env.advance(11 * 60).await;
    let token = sync_user_token(&env).await;
    let path = format!("/subscriptions/{}", sub["id"].as_str().unwrap());
    assert_eq!(env.graph_get(&token, &path).await.0, 404, "expired");
}
