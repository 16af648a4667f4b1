#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
//! Presence subscriptions of the Graph client (`src/graph/subscriptions.rs`) over real HTTP
//! on loopback against the in-process emulator: the webhook answers the validation
//! handshake, Teams-side changes arrive as notifications, a wrong clientState is dropped,
//! renewal happens before expiry on the emulator's clock, lost subscriptions are recreated
//! with a catch-up poll, app-only tokens are refused with a typed error. Also the poll of
//! 10,000 users in 16 requests (graph.md §2.2, BENCHMARKS.md).

mod emulator_support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use emulator_support::*;
use presence_proxy::emulator::{CONTOSO_CLIENT_ID, CONTOSO_CLIENT_SECRET, EmulatorConfig, Seed};
use presence_proxy::graph::{
    Activity, AuthorizeRequest, Availability, CatchUpReason, DOMAIN_SCOPES, DriverCommand,
    GraphClient, GraphConfig, GraphError, NOTIFICATION_PATH, Notification, NotificationReceiver,
    Pkce, PresenceChange, SubscriptionConfig, SubscriptionDriver, SubscriptionEvent,
    SubscriptionRefusal, SubscriptionRequest, TokenSet, TokenSink, Tokens, USER_SCOPES,
    new_client_state, notification_routes, parse_datetime, random_url_safe,
};
use presence_proxy::store::Secret;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const MIN: Duration = Duration::from_secs(60);
/// How long a test waits for one event before failing.
const DEADLINE: Duration = Duration::from_secs(10);

fn client(env: &Env) -> GraphClient {
    capture_logs();
    let mut config = GraphConfig::new(
        "contoso.example",
        CONTOSO_CLIENT_ID,
        CONTOSO_CLIENT_SECRET,
        REDIRECT,
    )
    .with_bases(env.emu.login_url(), env.emu.graph_url());
    config.retry.base_delay = Duration::from_millis(20);
    config.retry.max_delay = Duration::from_millis(200);
    GraphClient::new(config).unwrap()
}

struct NoSink;

impl TokenSink for NoSink {
    fn rotated(&self, _: &TokenSet) -> Result<(), String> {
        Ok(())
    }
}

/// Signs `user` in through the client's authorize URL and the code exchange: a delegated
/// credential with `scope`.
async fn delegated(env: &Env, graph: &GraphClient, user: &str, scope: &str) -> Arc<Tokens> {
    let pkce = Pkce::generate().unwrap();
    let state = random_url_safe(16).unwrap();
    let url = graph.config().authorize_url(&AuthorizeRequest {
        scope,
        state: &state,
        nonce: "n",
        code_challenge: &pkce.challenge,
        login_hint: Some(user),
        prompt: None,
    });
    let response = env
        .http
        .get(format!("{url}&emulator_user={user}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let (_, query) = location_query(&response);
    let code = Secret::new(query.get("code").expect("a code").clone());
    let set = graph
        .exchange_code(&code, &pkce.verifier, scope)
        .await
        .unwrap();
    Tokens::delegated(graph, set, scope, Arc::new(NoSink))
}

/// The domain credential of the sync user dave: Presence.Read.All (graph.md §3.1, §7).
async fn sync_user(env: &Env, graph: &GraphClient) -> Arc<Tokens> {
    delegated(env, graph, "dave@contoso.example", DOMAIN_SCOPES).await
}

/// The product's webhook on a free loopback port, plus a stream of "a request was
/// answered" signals (to wait for a delivery that puts nothing on the channel).
struct Webhook {
    url: String,
    state: Secret<String>,
    receiver: Arc<NotificationReceiver>,
    rx: mpsc::Receiver<Notification>,
    answered: mpsc::UnboundedReceiver<u16>,
}

async fn webhook(capacity: usize) -> Webhook {
    let state = new_client_state().unwrap();
    webhook_expecting(state, capacity).await
}

async fn webhook_expecting(state: Secret<String>, capacity: usize) -> Webhook {
    let (receiver, rx) = NotificationReceiver::new(&state, capacity);
    let (signal, answered) = mpsc::unbounded_channel();
    let app = notification_routes(receiver.clone()).layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let signal = signal.clone();
            async move {
                let response = next.run(request).await;
                let _ = signal.send(response.status().as_u16());
                response
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Webhook {
        url: format!("http://{addr}{NOTIFICATION_PATH}"),
        state,
        receiver,
        rx,
        answered,
    }
}

impl Webhook {
    async fn next(&mut self) -> Notification {
        tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .expect("a notification before the deadline")
            .expect("channel open")
    }

    async fn next_change(&mut self) -> PresenceChange {
        match self.next().await {
            Notification::Presence(change) => change,
            other => panic!("expected a presence change, got {other:?}"),
        }
    }

    async fn next_answer(&mut self) -> u16 {
        tokio::time::timeout(DEADLINE, self.answered.recv())
            .await
            .expect("a request answered before the deadline")
            .expect("open")
    }
}

/// The emulator's view of the live subscriptions.
async fn emulator_subscriptions(env: &Env) -> Vec<Value> {
    let (status, body) = env
        .control_json(reqwest::Method::GET, "/subscriptions", None)
        .await;
    assert_eq!(status, 200);
    body["value"].as_array().unwrap().clone()
}

/// The emulator's clock, as the product would read Graph's.
async fn emulator_now(env: &Env) -> SystemTime {
    let (_, body) = env.control_json(reqwest::Method::GET, "/clock", None).await;
    parse_datetime(body["now"].as_str().unwrap()).unwrap()
}

async fn advance(env: &Env, minutes: u64) -> SystemTime {
    env.advance(minutes * 60).await;
    emulator_now(env).await
}

/// Graph requests in the emulator's log as (method, path, status).
async fn requests(env: &Env) -> Vec<(String, String, u16)> {
    let (_, body) = env
        .control_json(reqwest::Method::GET, "/requests", None)
        .await;
    body["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["path"].as_str().unwrap().starts_with("/_emulator"))
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap() as u16,
            )
        })
        .collect()
}

async fn clear_requests(env: &Env) {
    env.control_json(reqwest::Method::DELETE, "/requests", None)
        .await;
}

fn catch_ups(events: &[SubscriptionEvent]) -> Vec<(CatchUpReason, Vec<String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            SubscriptionEvent::CatchUpPoll { user_ids, reason } => {
                Some((*reason, user_ids.clone()))
            }
            _ => None,
        })
        .collect()
}

fn driver(
    graph: &GraphClient,
    credentials: Vec<Arc<Tokens>>,
    hook: &Webhook,
) -> SubscriptionDriver {
    SubscriptionDriver::new(
        graph.clone(),
        credentials,
        hook.url.clone(),
        hook.state.clone(),
        SubscriptionConfig::default(),
    )
}

fn ids(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

/// graph.md §3.2: the webhook answers `?validationToken=` with 200, text/plain and the
/// URL-decoded token, fast enough for a validation deadline shortened to 1 s; the
/// emulator then creates the subscription against it. Bodies that do not parse are 400.
#[tokio::test]
async fn validation_handshake_against_the_webhook() {
    let env = start_with(EmulatorConfig {
        validation_timeout: Duration::from_secs(1),
        ..EmulatorConfig::default()
    })
    .await;
    let graph = client(&env);
    let mut hook = webhook(16).await;

    // the handshake by hand, as Graph sends it
    let response = env
        .http
        .post(format!(
            "{}?validationToken=Validation%3A%20Testing%20client%20a%2Bb%26c",
            hook.url
        ))
        .header("content-type", "text/plain; charset=utf-8")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        response.text().await.unwrap(),
        "Validation: Testing client a+b&c"
    );
    assert_eq!(hook.next_answer().await, 200);

    // the emulator's handshake, as part of a create
    let tokens = sync_user(&env, &graph).await;
    let users = ids(&[ALICE, BOB]);
    let sub = graph
        .create_presence_subscription(
            &tokens,
            &SubscriptionRequest {
                user_ids: &users,
                notification_url: &hook.url,
                lifecycle_notification_url: None,
                client_state: &hook.state,
                expires_at: emulator_now(&env).await + 30 * MIN,
            },
        )
        .await
        .unwrap();
    assert_eq!(hook.next_answer().await, 200, "the validation request");
    let live = emulator_subscriptions(&env).await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["id"], sub.id.as_str());
    assert_eq!(live[0]["notification_url"], hook.url.as_str());
    assert_eq!(live[0]["user_ids"], json!(users));
    assert!(sub.resource.contains(ALICE) && sub.resource.contains(BOB));

    // not a notification batch: 400, nothing queued
    for body in ["not json", "{\"value\": 7}", "{}"] {
        let response = env.http.post(&hook.url).body(body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
    }
    assert!(hook.rx.try_recv().is_err());
}

/// graph.md §3.1: after create, a change made in Teams (control API) arrives as a
/// notification for that user; reading the changed users gives the right presence.
#[tokio::test]
async fn teams_change_arrives_as_notification() {
    let env = start().await;
    let graph = client(&env);
    let tokens = sync_user(&env, &graph).await;
    let mut hook = webhook(16).await;
    let mut subs = driver(&graph, vec![tokens.clone()], &hook);
    subs.set_wanted([ALICE, BOB]);
    let events = subs.step(emulator_now(&env).await).await;
    assert_eq!(
        catch_ups(&events),
        [(CatchUpReason::Created, ids(&[ALICE, BOB]))]
    );
    let sub_id = subs.manager().subscription_ids()[0].clone();

    env.teams_client(BOB, "in_call").await;
    let change = hook.next_change().await;
    assert_eq!(change.user_id, BOB);
    assert_eq!(change.subscription_id, sub_id);
    assert_eq!(
        change.presence, None,
        "basic notifications carry the id only"
    );
    let presences = graph
        .resolve_presence_changes(&tokens, &[change])
        .await
        .unwrap();
    assert_eq!(presences.len(), 1);
    assert_eq!(presences[0].id, BOB);
    assert_eq!(
        (&presences[0].availability, &presences[0].activity),
        (&Availability::Busy, &Activity::InACall)
    );

    env.teams_client(ALICE, "dnd").await;
    let change = hook.next_change().await;
    assert_eq!(change.user_id, ALICE);
    let p = graph
        .resolve_presence_changes(&tokens, &[change])
        .await
        .unwrap();
    assert_eq!(p[0].availability, Availability::DoNotDisturb);

    // carol is not subscribed: her change sends nothing; bob's next one arrives next
    env.teams_client(CAROL, "in_call").await;
    env.teams_client(BOB, "available").await;
    assert_eq!(hook.next_change().await.user_id, BOB);
    assert_eq!(hook.receiver.received(), 3);
    assert_eq!(hook.receiver.rejected(), 0);
}

/// graph.md §3.2: a notification whose clientState is not ours is dropped (and counted),
/// the webhook still answers 2xx, and neither clientState appears in any log line.
#[tokio::test]
async fn wrong_client_state_is_dropped() {
    let logs = capture_logs();
    let env = start().await;
    let graph = client(&env);
    let tokens = sync_user(&env, &graph).await;
    let mut hook = webhook(16).await;
    let forged_state = new_client_state().unwrap();
    // a subscription whose notifications carry another clientState than the webhook's
    let users = ids(&[BOB]);
    graph
        .create_presence_subscription(
            &tokens,
            &SubscriptionRequest {
                user_ids: &users,
                notification_url: &hook.url,
                lifecycle_notification_url: None,
                client_state: &forged_state,
                expires_at: emulator_now(&env).await + 30 * MIN,
            },
        )
        .await
        .unwrap();
    assert_eq!(hook.next_answer().await, 200, "validation");

    env.teams_client(BOB, "in_call").await;
    assert_eq!(hook.next_answer().await, 202, "the delivery is answered");
    assert_eq!(hook.receiver.rejected(), 1);
    assert_eq!(hook.receiver.received(), 0);
    assert!(hook.rx.try_recv().is_err(), "nothing reached the channel");

    // forged by hand: one right and one wrong item in a batch
    let item = |state: &str, user: &str| {
        json!({
            "subscriptionId": "forged",
            "clientState": state,
            "changeType": "updated",
            "resource": format!("communications/presences/{user}"),
            "resourceData": { "id": user },
        })
    };
    let response = env
        .http
        .post(&hook.url)
        .json(&json!({ "value": [
            item(forged_state.expose(), ALICE),
            item(hook.state.expose(), CAROL),
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(hook.next_change().await.user_id, CAROL);
    assert_eq!(hook.receiver.rejected(), 2);

    let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("wrong or missing clientState"), "{log}");
    assert!(!log.contains(forged_state.expose().as_str()));
    assert!(!log.contains(hook.state.expose().as_str()));
}

/// graph.md §3.1, §3.2: the subscription is renewed by PATCH before its expiry, moved
/// forward on the emulator's clock; it outlives its first expiry, keeps its id, needs no
/// catch-up poll, and notifications keep coming.
#[tokio::test]
async fn renewal_before_expiry() {
    let env = start().await;
    let graph = client(&env);
    let tokens = sync_user(&env, &graph).await;
    let mut hook = webhook(16).await;
    let mut subs = driver(&graph, vec![tokens], &hook);
    subs.set_wanted([ALICE]);
    let t0 = emulator_now(&env).await;
    subs.step(t0).await;
    let first = emulator_subscriptions(&env).await;
    let id = first[0]["id"].as_str().unwrap().to_owned();
    let first_expiry = parse_datetime(first[0]["expires_at"].as_str().unwrap()).unwrap();
    assert!(
        first_expiry <= t0 + 60 * MIN,
        "at most 60 minutes (graph.md §3.1)"
    );
    let renew_at = subs.next_deadline().unwrap();
    assert_eq!(renew_at, first_expiry - 5 * MIN, "renewal 5 minutes ahead");

    // 52 minutes on: nothing due yet
    let now = advance(&env, 52).await;
    clear_requests(&env).await;
    assert!(subs.step(now).await.is_empty());
    assert!(
        requests(&env).await.is_empty(),
        "no request before renewal time"
    );

    // 54 minutes on: renewed by PATCH
    let now = advance(&env, 2).await;
    let events = subs.step(now).await;
    assert!(events.is_empty(), "a renewal needs no catch-up: {events:?}");
    let log = requests(&env).await;
    assert_eq!(
        log,
        [("PATCH".to_owned(), format!("/v1.0/subscriptions/{id}"), 200)]
    );
    let renewed = emulator_subscriptions(&env).await;
    let expiry = parse_datetime(renewed[0]["expires_at"].as_str().unwrap()).unwrap();
    assert!(
        expiry > first_expiry + 50 * MIN,
        "{expiry:?} vs {first_expiry:?}"
    );

    // past the first expiry: still live, still notifying (the access token has expired on
    // the emulator's clock meanwhile; the client refreshed it on the 401)
    advance(&env, 10).await;
    let live = emulator_subscriptions(&env).await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["id"], id.as_str());
    env.teams_client(ALICE, "in_call").await;
    assert_eq!(hook.next_change().await.user_id, ALICE);
}

/// A subscription deleted behind the product's back is answered 404 on renewal, and one
/// left to expire is noticed at its expiry: both are recreated and reported as needing a
/// catch-up poll (presence has no missed-notification signal).
#[tokio::test]
async fn lost_subscriptions_are_recreated_with_catch_up() {
    let env = start().await;
    let graph = client(&env);
    let tokens = sync_user(&env, &graph).await;
    let mut hook = webhook(16).await;
    let mut subs = driver(&graph, vec![tokens.clone()], &hook);
    subs.set_wanted([ALICE, BOB]);
    subs.step(emulator_now(&env).await).await;
    let first = subs.manager().subscription_ids()[0].clone();

    // deleted at Graph (e.g. by an admin); the product finds out at renewal time
    graph.delete_subscription(&tokens, &first).await.unwrap();
    assert!(emulator_subscriptions(&env).await.is_empty());
    let now = advance(&env, 54).await;
    clear_requests(&env).await;
    let events = subs.step(now).await;
    let both = ids(&[ALICE, BOB]);
    assert_eq!(
        catch_ups(&events),
        [
            (CatchUpReason::Lost, both.clone()),
            (CatchUpReason::Created, both.clone())
        ]
    );
    let statuses: Vec<(String, u16)> = requests(&env)
        .await
        .into_iter()
        .map(|(m, _, s)| (m, s))
        .collect();
    assert_eq!(
        statuses,
        [("PATCH".to_owned(), 404), ("POST".to_owned(), 201)]
    );
    let second = subs.manager().subscription_ids()[0].clone();
    assert_ne!(second, first);
    env.teams_client(BOB, "in_call").await;
    let change = hook.next_change().await;
    assert_eq!(
        (change.user_id.as_str(), change.subscription_id.as_str()),
        (BOB, second.as_str())
    );

    // expired: the product missed the renewal (e.g. it was down)
    let now = advance(&env, 61).await;
    assert!(emulator_subscriptions(&env).await.is_empty(), "expired");
    assert!(subs.manager().uncovered().is_empty(), "not noticed yet");
    let events = subs.step(now).await;
    assert_eq!(
        catch_ups(&events),
        [
            (CatchUpReason::Lost, both.clone()),
            (CatchUpReason::Created, both)
        ]
    );
    assert_eq!(emulator_subscriptions(&env).await.len(), 1);
    env.teams_client(ALICE, "dnd").await;
    assert_eq!(hook.next_change().await.user_id, ALICE);
}

/// graph.md §3.1, §7: an app-only credential is refused with a typed error before any
/// request; a delegated one without Presence.Read.All gets Graph's 403, typed; a second
/// subscription of the same app and user is a typed 409, which the driver resolves by
/// purging the leftover.
#[tokio::test]
async fn refusals_are_typed() {
    let env = start().await;
    env.consent(true).await;
    let graph = client(&env);
    let hook = webhook(16).await;
    let users = ids(&[ALICE]);
    let now = emulator_now(&env).await;
    let request = SubscriptionRequest {
        user_ids: &users,
        notification_url: &hook.url,
        lifecycle_notification_url: None,
        client_state: &hook.state,
        expires_at: now + 30 * MIN,
    };

    let app = Tokens::app_only(&graph);
    app.access_token().await.unwrap();
    clear_requests(&env).await;
    let err = graph
        .create_presence_subscription(&app, &request)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            GraphError::Subscription {
                kind: SubscriptionRefusal::AppOnlyToken,
                status: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(requests(&env).await.is_empty(), "refused before sending");
    // the driver reports it as a failure of its slot
    let mut subs = driver(&graph, vec![app], &hook);
    subs.set_wanted([ALICE]);
    let events = subs.step(now).await;
    assert!(
        matches!(&events[..], [SubscriptionEvent::Failed { action: "create", error, .. }] if error.contains("app-only")),
        "{events:?}"
    );

    // alice's own pairing: Presence.ReadWrite, not Presence.Read.All
    let alice = delegated(&env, &graph, "alice@contoso.example", USER_SCOPES).await;
    let err = graph
        .create_presence_subscription(&alice, &request)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            GraphError::Subscription {
                kind: SubscriptionRefusal::Forbidden,
                status: Some(403),
                ..
            }
        ),
        "{err:?}"
    );

    // one per app per user: the second create is 409 AlreadyExists
    let dave = sync_user(&env, &graph).await;
    let leftover = graph
        .create_presence_subscription(&dave, &request)
        .await
        .unwrap();
    let err = graph
        .create_presence_subscription(&dave, &request)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            GraphError::Subscription {
                kind: SubscriptionRefusal::AlreadyExists,
                status: Some(409),
                ..
            }
        ),
        "{err:?}"
    );
    // a driver starting over a leftover (a restart) purges it and creates its own
    let mut subs = driver(&graph, vec![dave], &hook);
    subs.set_wanted([ALICE, BOB]);
    let events = subs.step(now).await;
    assert_eq!(
        catch_ups(&events),
        [(CatchUpReason::Created, ids(&[ALICE, BOB]))]
    );
    let live = emulator_subscriptions(&env).await;
    assert_eq!(live.len(), 1);
    assert_ne!(live[0]["id"], leftover.id.as_str());

    // a failed validation is typed too (carol: a user without a subscription yet)
    let carol = delegated(&env, &graph, "carol@contoso.example", DOMAIN_SCOPES).await;
    let err = graph
        .create_presence_subscription(
            &carol,
            &SubscriptionRequest {
                notification_url: &format!("{}/nowhere", env.emu.base_url()),
                ..request
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            GraphError::Subscription {
                kind: SubscriptionRefusal::ValidationFailed,
                status: Some(400),
                ..
            }
        ),
        "{err:?}"
    );
}

/// Two credentials cover 700 users in two subscriptions (650 + 50): one subscription per
/// app per delegated user, at most 650 ids each (graph.md §3.1, §8.8).
#[tokio::test]
async fn users_split_over_credentials() {
    let env = start().await;
    let graph = client(&env);
    let dave = sync_user(&env, &graph).await;
    let carol = delegated(&env, &graph, "carol@contoso.example", DOMAIN_SCOPES).await;
    let mut hook = webhook(16).await;
    let mut subs = driver(&graph, vec![dave, carol], &hook);
    let mut wanted: Vec<String> = (0..698)
        .map(|n| format!("00000000-0000-4000-8000-{n:012}"))
        .collect();
    wanted.push(ALICE.into());
    wanted.push(BOB.into());
    subs.set_wanted(wanted.clone());
    let events = subs.step(emulator_now(&env).await).await;
    let created: Vec<usize> = catch_ups(&events)
        .iter()
        .map(|(_, ids)| ids.len())
        .collect();
    assert_eq!(created, [650, 50]);
    let live = emulator_subscriptions(&env).await;
    assert_eq!(live.len(), 2);
    let mut creators: Vec<&str> = live
        .iter()
        .map(|s| s["creator_id"].as_str().unwrap())
        .collect();
    creators.sort();
    assert_eq!(creators.len(), 2);
    assert_ne!(creators[0], creators[1], "one per delegated user");
    assert!(subs.manager().uncovered().is_empty());
    env.teams_client(BOB, "in_call").await;
    assert_eq!(hook.next_change().await.user_id, BOB);
}

/// The run loop: wanted users in, a catch-up event out, renewals on the system clock, and
/// shutdown deletes the subscription.
#[tokio::test]
async fn driver_run_loop() {
    let env = start().await;
    let graph = client(&env);
    let tokens = sync_user(&env, &graph).await;
    let mut hook = webhook(16).await;
    let subs = driver(&graph, vec![tokens], &hook);
    let (commands, command_rx) = mpsc::channel(4);
    let (events_tx, mut events) = mpsc::channel(16);
    let task = tokio::spawn(subs.run(command_rx, events_tx));
    commands
        .send(DriverCommand::SetWanted(vec![CAROL.into()]))
        .await
        .unwrap();
    let event = tokio::time::timeout(DEADLINE, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        event,
        SubscriptionEvent::CatchUpPoll {
            user_ids: vec![CAROL.into()],
            reason: CatchUpReason::Created
        }
    );
    env.teams_client(CAROL, "in_call").await;
    assert_eq!(hook.next_change().await.user_id, CAROL);
    commands.send(DriverCommand::Shutdown).await.unwrap();
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
    assert!(emulator_subscriptions(&env).await.is_empty());
}

/// BENCHMARKS.md, graph.md §2.2: a poll of 10,000 users costs 16 requests
/// (ceil(10,000 / 650)) and returns 10,000 presences.
#[tokio::test]
async fn presences_of_10000_users_in_16_requests() {
    let seed = Seed::contoso_with_users(10_000);
    let ids: Vec<String> = seed.users.iter().map(|u| u.id.clone()).collect();
    assert_eq!(ids.len(), 10_000);
    let env = start_with(EmulatorConfig {
        seed,
        ..EmulatorConfig::default()
    })
    .await;
    env.consent(true).await;
    env.teams_client(&ids[9_999], "in_call").await;
    let graph = client(&env);
    let tokens = Tokens::app_only(&graph);
    tokens.access_token().await.unwrap();
    clear_requests(&env).await;

    let presences = graph.presences_by_user_id(&tokens, &ids).await.unwrap();
    assert_eq!(presences.len(), 10_000);
    let returned: std::collections::HashSet<&str> =
        presences.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(returned.len(), 10_000, "every user once");
    assert_eq!(presences[9_999].activity, Activity::InACall);

    let log = requests(&env).await;
    assert_eq!(
        log.len(),
        16,
        "ceil(10000 / 650) requests and nothing else: {log:?}"
    );
    assert!(log.iter().all(|(m, p, s)| m == "POST"
        && p == "/v1.0/communications/getPresencesByUserId"
        && *s == 200));
}
