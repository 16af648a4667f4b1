#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
//! The Graph client (`src/graph/`) over real HTTP against the in-process emulator:
//! tokens (client credentials, code + PKCE, refresh rotation, invalid_grant), presence
//! writes and reads, users, getPresencesByUserId batching, 429 / 5xx / 401 handling, the
//! request budget, and no token in the logs.

mod emulator_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emulator_support::*;
use presence_proxy::emulator::{
    CONTOSO_CLIENT_ID, CONTOSO_CLIENT_SECRET, EmulatorConfig, Seed, UserSeed,
};
use presence_proxy::graph::{
    Activity, AuthorizeRequest, Availability, GraphClient, GraphConfig, GraphError, Pkce,
    PreferredPresence, SessionPresence, TokenSet, TokenSink, Tokens, USER_SCOPES, random_url_safe,
};
use presence_proxy::store::Secret;
use serde_json::{Value, json};

const HOUR: Duration = Duration::from_secs(3600);

fn config(env: &Env) -> GraphConfig {
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
    config
}

fn client(env: &Env) -> GraphClient {
    GraphClient::new(config(env)).unwrap()
}

/// The request log, as (method, path, status).
async fn requests(env: &Env) -> Vec<(String, String, u16)> {
    let (status, body) = env
        .control_json(reqwest::Method::GET, "/requests", None)
        .await;
    assert_eq!(status, 200);
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
    let (status, _) = env
        .control_json(reqwest::Method::DELETE, "/requests", None)
        .await;
    assert!(status < 300);
}

async fn faults(env: &Env, body: Value) {
    let (status, body) = env
        .control_json(reqwest::Method::PUT, "/faults", Some(body))
        .await;
    assert!(status < 300, "{body}");
}

/// Records what a delegated credential hands to the store.
#[derive(Default)]
struct RecordingSink {
    rotated: Mutex<Vec<String>>,
    repairing: Mutex<u32>,
}

impl TokenSink for RecordingSink {
    fn rotated(&self, tokens: &TokenSet) -> Result<(), String> {
        let refresh = tokens.refresh_token.as_ref().ok_or("no refresh token")?;
        self.rotated.lock().unwrap().push(refresh.expose().clone());
        Ok(())
    }

    fn needs_repairing(&self, error: &GraphError) {
        assert!(error.needs_repairing());
        *self.repairing.lock().unwrap() += 1;
    }
}

/// Signs `user` in through the client's own authorize URL (the emulator's
/// `emulator_user` shortcut stands for the sign-in page) and exchanges the code.
async fn pair(env: &Env, graph: &GraphClient, user: &str) -> (TokenSet, Vec<String>) {
    let pkce = Pkce::generate().unwrap();
    let state = random_url_safe(16).unwrap();
    let nonce = random_url_safe(16).unwrap();
    let url = graph.config().authorize_url(&AuthorizeRequest {
        scope: USER_SCOPES,
        state: &state,
        nonce: &nonce,
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
    let (base, query) = location_query(&response);
    assert_eq!(base, REDIRECT);
    assert_eq!(query.get("state"), Some(&state), "state comes back");
    let code = Secret::new(query.get("code").expect("a code").clone());
    let tokens = graph
        .exchange_code(&code, &pkce.verifier, USER_SCOPES)
        .await
        .unwrap();
    assert!(
        tokens.refresh_token.is_some(),
        "offline_access gives a refresh token"
    );
    let id_token = tokens.id_token.as_ref().expect("openid gives an id_token");
    assert_eq!(claims(id_token.expose())["nonce"], nonce.as_str());
    let secrets = vec![
        code.expose().clone(),
        pkce.verifier.expose().clone(),
        tokens.access_token.expose().clone(),
        tokens.refresh_token.as_ref().unwrap().expose().clone(),
    ];
    (tokens, secrets)
}

/// graph.md §6.3, §1.2, §1.3, §2.1: an app-only token, setPresence Busy/InACall shows in
/// GET presence, clearPresence ends the session, and a second clearPresence is a typed 404.
#[tokio::test]
async fn app_only_set_get_clear_presence() {
    let env = start().await;
    env.consent(true).await;
    let graph = client(&env);
    let tokens = Tokens::app_only(&graph);

    graph
        .set_presence(&tokens, ALICE, SessionPresence::InACall, HOUR)
        .await
        .unwrap();
    let p = graph.presence(&tokens, ALICE).await.unwrap();
    assert_eq!(p.id, ALICE);
    assert_eq!(
        (p.availability, p.activity),
        (Availability::Busy, Activity::InACall)
    );

    // the app's session sits in the emulator under our client id
    let (_, view) = env
        .control_json(
            reqwest::Method::GET,
            &format!("/users/{ALICE}/presence"),
            None,
        )
        .await;
    assert_eq!(view["app_sessions"][0]["app_id"], CONTOSO_CLIENT_ID);

    graph.clear_presence(&tokens, ALICE).await.unwrap();
    let p = graph.presence(&tokens, ALICE).await.unwrap();
    assert_eq!(p.availability, Availability::Offline);

    let err = graph.clear_presence(&tokens, ALICE).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    match &err {
        GraphError::Http { status, code, .. } => {
            assert_eq!(*status, 404);
            assert!(!code.is_empty(), "the Graph error code is parsed");
        }
        other => panic!("expected Http, got {other:?}"),
    }

    // durations outside PT5M..PT4H never leave the client
    let err = graph
        .set_presence(
            &tokens,
            ALICE,
            SessionPresence::Available,
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::InvalidRequest(_)), "{err:?}");
}

/// graph.md §1.4, §1.5: preferred presence beats the app's session and clearing it brings
/// the session back.
#[tokio::test]
async fn preferred_presence_set_and_clear() {
    let env = start().await;
    env.consent(true).await;
    let graph = client(&env);
    let tokens = Tokens::app_only(&graph);
    graph
        .set_presence(&tokens, BOB, SessionPresence::InACall, HOUR)
        .await
        .unwrap();
    graph
        .set_user_preferred_presence(
            &tokens,
            BOB,
            PreferredPresence::DoNotDisturb,
            Some(8 * HOUR),
        )
        .await
        .unwrap();
    let p = graph.presence(&tokens, BOB).await.unwrap();
    assert_eq!(
        (p.availability, p.activity),
        (Availability::DoNotDisturb, Activity::DoNotDisturb)
    );
    graph
        .clear_user_preferred_presence(&tokens, BOB)
        .await
        .unwrap();
    let p = graph.presence(&tokens, BOB).await.unwrap();
    assert_eq!(
        (p.availability, p.activity),
        (Availability::Busy, Activity::InACall)
    );
}

/// graph.md §5: email → user by UPN, by mail as a fallback, cached; unknown → None.
#[tokio::test]
async fn users_by_upn_and_mail_with_cache() {
    let env = start().await;
    env.consent(true).await;
    let graph = client(&env);
    let tokens = Tokens::app_only(&graph);

    let by_upn = graph
        .user_by_upn(&tokens, "alice@contoso.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_upn.id, ALICE);
    let by_mail = graph
        .user_by_mail(&tokens, "bob@contoso.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_mail.id, BOB);
    assert!(
        graph
            .user_by_upn(&tokens, "nobody@contoso.example")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        graph
            .user_by_mail(&tokens, "o'brien@contoso.example")
            .await
            .unwrap()
            .is_none()
    );

    clear_requests(&env).await;
    let first = graph
        .resolve_user(&tokens, "Carol@Contoso.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.id, CAROL);
    let again = graph
        .resolve_user(&tokens, "carol@contoso.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, first);
    let log = requests(&env).await;
    let lookups = log
        .iter()
        .filter(|(_, p, _)| p.starts_with("/v1.0/users"))
        .count();
    assert_eq!(
        lookups, 1,
        "the second resolve is served from the cache: {log:?}"
    );
}

/// graph.md §6.2, §6.4, §6.5: code + PKCE gives tokens; a refresh rotates the refresh
/// token through the sink; the old refresh token is then invalid_grant = needs re-pairing.
#[tokio::test]
async fn code_pkce_refresh_rotation_and_invalid_grant() {
    let env = start().await;
    let graph = client(&env);
    let (set, _) = pair(&env, &graph, "alice@contoso.example").await;
    let old_refresh = set.refresh_token.clone().unwrap();

    let sink = Arc::new(RecordingSink::default());
    let tokens = Tokens::delegated(&graph, set.clone(), USER_SCOPES, sink.clone());
    tokens.refresh_now().await.unwrap();
    let rotated = sink.rotated.lock().unwrap().clone();
    assert_eq!(rotated.len(), 1);
    assert_ne!(&rotated[0], old_refresh.expose(), "refresh rotates");
    let current = tokens.current().await.unwrap();
    assert_ne!(current.access_token.expose(), set.access_token.expose());

    // the new tokens work: alice writes her own presence (delegated Presence.ReadWrite)
    graph
        .set_presence(&tokens, ALICE, SessionPresence::InACall, HOUR)
        .await
        .unwrap();

    // the spent refresh token is refused, classified as needs re-pairing
    let err = graph.refresh(&old_refresh, USER_SCOPES).await.unwrap_err();
    assert!(err.needs_repairing(), "{err:?}");
    match &err {
        GraphError::Token { error, aadsts, .. } => {
            assert_eq!(error, "invalid_grant");
            assert_eq!(*aadsts, Some(70008));
        }
        other => panic!("expected Token, got {other:?}"),
    }

    // a credential still holding the spent token tells its sink
    let stale_sink = Arc::new(RecordingSink::default());
    let stale = Tokens::delegated(&graph, set, USER_SCOPES, stale_sink.clone());
    let err = stale.refresh_now().await.unwrap_err();
    assert!(err.needs_repairing());
    assert_eq!(*stale_sink.repairing.lock().unwrap(), 1);
    assert!(stale_sink.rotated.lock().unwrap().is_empty());
}

/// graph.md §2.2: 1,500 users are polled in exactly 3 requests of at most 650 ids.
#[tokio::test]
async fn presences_of_1500_users_in_3_requests() {
    let mut seed = Seed::default();
    let have = seed.users.len();
    for n in have..1500 {
        seed.users.push(UserSeed {
            id: format!("b2c0ffee-{:04x}-4c1d-8e2f-{:012}", n / 10000, n),
            user_principal_name: format!("user{n}@contoso.example"),
            mail: format!("user{n}@contoso.example"),
            display_name: format!("User {n}"),
        });
    }
    let ids: Vec<String> = seed.users.iter().map(|u| u.id.clone()).collect();
    assert_eq!(ids.len(), 1500);
    let env = start_with(EmulatorConfig {
        seed,
        ..EmulatorConfig::default()
    })
    .await;
    env.consent(true).await;
    env.teams_client(ALICE, "in_call").await;
    let graph = client(&env);
    let tokens = Tokens::app_only(&graph);
    tokens.access_token().await.unwrap();
    clear_requests(&env).await;

    let presences = graph.presences_by_user_id(&tokens, &ids).await.unwrap();
    assert_eq!(presences.len(), 1500);
    let alice = presences.iter().find(|p| p.id == ALICE).unwrap();
    assert_eq!(alice.activity, Activity::InACall);

    let log = requests(&env).await;
    let polls: Vec<_> = log
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/v1.0/communications/getPresencesByUserId")
        .collect();
    assert_eq!(polls.len(), 3, "{log:?}");
    assert!(polls.iter().all(|(_, _, s)| *s == 200));
    assert_eq!(log.len(), 3, "nothing else was sent: {log:?}");
}

/// graph.md §4.2: a 429 with Retry-After is waited out, then the call succeeds.
#[tokio::test]
async fn throttled_429_waits_retry_after() {
    let env = start().await;
    env.consent(true).await;
    let graph = client(&env);
    let tokens = Tokens::app_only(&graph);
    tokens.access_token().await.unwrap();
    faults(
        &env,
        json!({ "throttle_next": { "count": 1, "retry_after": 1 } }),
    )
    .await;
    clear_requests(&env).await;

    let started = Instant::now();
    let p = graph.presence(&tokens, ALICE).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(p.id, ALICE);
    assert!(elapsed >= Duration::from_secs(1), "waited only {elapsed:?}");
    let statuses: Vec<u16> = requests(&env).await.iter().map(|r| r.2).collect();
    assert_eq!(statuses, [429, 200]);

    // a Retry-After longer than the client accepts fails at once as Throttled
    let mut config = config(&env);
    config.retry.max_retry_after = Duration::from_secs(5);
    let impatient = GraphClient::new(config).unwrap();
    let tokens = Tokens::app_only(&impatient);
    tokens.access_token().await.unwrap();
    faults(
        &env,
        json!({ "throttle_next": { "count": 1, "retry_after": 60 } }),
    )
    .await;
    let started = Instant::now();
    let err = impatient.presence(&tokens, ALICE).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match err {
        GraphError::Throttled { retry_after } => {
            assert_eq!(retry_after, Some(Duration::from_secs(60)))
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
}

/// graph.md §4.2: 5xx bursts are retried with backoff; past max_attempts the typed error
/// comes back.
#[tokio::test]
async fn server_errors_are_retried_then_surface() {
    let env = start().await;
    env.consent(true).await;
    let graph = client(&env);
    let tokens = Tokens::app_only(&graph);
    graph
        .set_presence(&tokens, ALICE, SessionPresence::Away, HOUR)
        .await
        .unwrap();
    faults(&env, json!({ "fail_next": { "count": 3, "status": 503 } })).await;
    clear_requests(&env).await;
    graph
        .set_presence(&tokens, ALICE, SessionPresence::InACall, HOUR)
        .await
        .unwrap();
    let statuses: Vec<u16> = requests(&env).await.iter().map(|r| r.2).collect();
    assert_eq!(statuses, [503, 503, 503, 200]);
    let p = graph.presence(&tokens, ALICE).await.unwrap();
    assert_eq!(p.activity, Activity::InACall);

    faults(&env, json!({ "fail_next": { "count": 50, "status": 500 } })).await;
    clear_requests(&env).await;
    let err = graph.presence(&tokens, ALICE).await.unwrap_err();
    assert_eq!(err.status(), Some(500), "{err:?}");
    assert_eq!(requests(&env).await.len(), 5, "bounded by max_attempts");
    let (status, _) = env
        .control_json(reqwest::Method::DELETE, "/faults", None)
        .await;
    assert!(status < 300);
}

/// graph.md §6.5 / emulator 401: an access token expired on the service's clock gets a 401;
/// the client refreshes once (rotating the refresh token) and the call succeeds.
#[tokio::test]
async fn expired_token_401_refresh_retry() {
    let env = start().await;
    env.consent(true).await;
    let graph = client(&env);

    // delegated: the refresh rotates through the sink
    let (set, _) = pair(&env, &graph, "alice@contoso.example").await;
    let sink = Arc::new(RecordingSink::default());
    let user = Tokens::delegated(&graph, set, USER_SCOPES, sink.clone());
    // app-only: a new client-credentials token
    let app = Tokens::app_only(&graph);
    app.access_token().await.unwrap();

    env.advance(3700).await;
    clear_requests(&env).await;
    graph
        .set_presence(&user, ALICE, SessionPresence::InACall, HOUR)
        .await
        .unwrap();
    assert_eq!(sink.rotated.lock().unwrap().len(), 1);
    let p = graph.presence(&app, ALICE).await.unwrap();
    assert_eq!(p.activity, Activity::InACall);

    let log: Vec<(String, u16)> = requests(&env)
        .await
        .into_iter()
        .map(|(_, p, s)| (p, s))
        .collect();
    let set_path = format!("/v1.0/users/{ALICE}/presence/setPresence");
    let get_path = format!("/v1.0/users/{ALICE}/presence");
    let token_path = "/contoso.example/oauth2/v2.0/token".to_owned();
    assert_eq!(
        log,
        [
            (set_path.clone(), 401),
            (token_path.clone(), 200),
            (set_path, 200),
            (get_path.clone(), 401),
            (token_path, 200),
            (get_path, 200),
        ]
    );
}

/// The per-tenant budget spreads requests: with 2 per 700 ms, the third waits.
#[tokio::test]
async fn request_budget_holds_back() {
    let env = start().await;
    env.consent(true).await;
    let mut config = config(&env);
    config.budget_limit = 2;
    config.budget_window = Duration::from_millis(700);
    let graph = GraphClient::new(config).unwrap();
    let tokens = Tokens::app_only(&graph);
    tokens.access_token().await.unwrap();
    let started = Instant::now();
    for _ in 0..3 {
        graph.presence(&tokens, ALICE).await.unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(graph.budget().in_window().await, 1);
}

/// No token, code, verifier or secret in any log line, at TRACE, through every path:
/// client credentials, code exchange, refresh, 401 → refresh, 429, 5xx, invalid_grant.
#[tokio::test]
async fn no_token_in_logs() {
    let buffer = capture_logs();
    let env = start().await;
    env.consent(true).await;
    let graph = client(&env);
    let (set, mut secrets) = pair(&env, &graph, "alice@contoso.example").await;
    let sink = Arc::new(RecordingSink::default());
    let user = Tokens::delegated(&graph, set.clone(), USER_SCOPES, sink.clone());
    let app = Tokens::app_only(&graph);
    secrets.push(app.access_token().await.unwrap().expose().clone());

    graph
        .set_presence(&user, ALICE, SessionPresence::InACall, HOUR)
        .await
        .unwrap();
    env.advance(3700).await;
    faults(
        &env,
        json!({ "throttle_next": { "count": 1, "retry_after": 1 } }),
    )
    .await;
    graph
        .set_presence(&user, ALICE, SessionPresence::InACall, HOUR)
        .await
        .unwrap();
    faults(&env, json!({ "fail_next": { "count": 1, "status": 502 } })).await;
    graph.presence(&app, ALICE).await.unwrap();
    let stale = Tokens::delegated(&graph, set, USER_SCOPES, Arc::new(RecordingSink::default()));
    let err = stale.refresh_now().await.unwrap_err();
    tracing::warn!(error = %err, debug = ?err, "logged error");
    tracing::debug!(tokens = ?user.current().await, "logged token set");

    secrets.extend(sink.rotated.lock().unwrap().iter().cloned());
    let current = user.current().await.unwrap();
    secrets.push(current.access_token.expose().clone());
    secrets.push(app.current().await.unwrap().access_token.expose().clone());
    secrets.push(CONTOSO_CLIENT_SECRET.to_owned());

    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("graph request"), "the client logged: {log}");
    assert!(log.contains("throttled by Graph"), "{log}");
    assert!(log.contains("[redacted]"), "{log}");
    for secret in &secrets {
        assert!(secret.len() >= 8);
        assert!(
            !log.contains(secret.as_str()),
            "a secret leaked into the log"
        );
        // a JWT's signature alone would identify it too
        if let Some(sig) = secret.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(!log.contains(sig), "a token signature leaked into the log");
        }
    }
}

/// The store bridge: a rotation lands in the token row (compare-and-swap), a restart
/// picks the row up again, and `invalid_grant` after an admin revoke marks the row
/// "needs re-pairing".
#[tokio::test]
async fn store_sink_persists_rotation_and_marks_repairing() {
    use presence_proxy::graph::StoreTokenSink;
    use presence_proxy::store::{EncryptionKey, Store, TokenKey, TokenStatus};

    let env = start().await;
    let graph = client(&env);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path().join("store.sqlite"),
        EncryptionKey::from_bytes(&[7; 32]),
    )
    .unwrap();
    let key = TokenKey::domain("contoso.example");

    let (set, _) = pair(&env, &graph, "alice@contoso.example").await;
    let generation = store
        .put_token(
            &key,
            &set.to_new_token(Some("alice@contoso.example".into()), Some(ALICE.into())),
        )
        .unwrap();
    let sink = Arc::new(StoreTokenSink::new(store.clone(), key.clone(), generation));
    let tokens = Tokens::delegated(&graph, set.clone(), USER_SCOPES, sink.clone());

    env.advance(3700).await;
    graph
        .set_presence(&tokens, ALICE, SessionPresence::InACall, HOUR)
        .await
        .unwrap();
    assert!(sink.generation() > generation);
    let row = store.get_token(&key).unwrap().unwrap();
    let current = tokens.current().await.unwrap();
    assert_eq!(
        row.refresh_token.as_ref().unwrap().expose(),
        current.refresh_token.as_ref().unwrap().expose(),
        "the rotated refresh token is what the store holds"
    );
    assert_ne!(
        row.refresh_token.as_ref().unwrap().expose(),
        set.refresh_token.as_ref().unwrap().expose()
    );

    // a restart: the row alone is enough to go on
    let restarted = Tokens::delegated(
        &graph,
        TokenSet::from_record(&row),
        USER_SCOPES,
        Arc::new(StoreTokenSink::new(
            store.clone(),
            key.clone(),
            row.info.generation,
        )),
    );
    graph
        .set_presence(&restarted, ALICE, SessionPresence::Available, HOUR)
        .await
        .unwrap();

    // the admin revokes alice's sessions; the next refresh is invalid_grant
    let (status, _) = env
        .control_json(
            reqwest::Method::POST,
            &format!("/users/{ALICE}/revoke-refresh-tokens"),
            None,
        )
        .await;
    assert!(status < 300);
    let err = restarted.refresh_now().await.unwrap_err();
    assert!(err.needs_repairing(), "{err:?}");
    let info = store.token_info(&key).unwrap().unwrap();
    assert!(
        matches!(info.status, TokenStatus::NeedsRepairing { ref reason } if reason.contains("AADSTS")),
        "{:?}",
        info.status
    );
}

struct FailingSink;

impl TokenSink for FailingSink {
    fn rotated(&self, _: &TokenSet) -> Result<(), String> {
        Err("disk full".into())
    }
}

/// A sink that cannot persist: the error says so, and the new tokens stay in memory (the
/// old refresh token is already spent), so calls go on working.
#[tokio::test]
async fn unpersisted_rotation_is_reported_and_kept_in_memory() {
    let env = start().await;
    let graph = client(&env);
    let (set, _) = pair(&env, &graph, "alice@contoso.example").await;
    let tokens = Tokens::delegated(&graph, set.clone(), USER_SCOPES, Arc::new(FailingSink));
    let err = tokens.refresh_now().await.unwrap_err();
    assert!(
        matches!(err, GraphError::Persist(ref m) if m == "disk full"),
        "{err:?}"
    );
    let current = tokens.current().await.unwrap();
    assert_ne!(
        current.refresh_token.as_ref().unwrap().expose(),
        set.refresh_token.as_ref().unwrap().expose()
    );
    graph
        .set_presence(&tokens, ALICE, SessionPresence::InACall, HOUR)
        .await
        .unwrap();
}
