#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
//! The emulator's Graph presence and user endpoints and its control API, over real HTTP
//! on loopback: one test per rule of graph.md §1, §2, §4, §5 and §7, each naming its section.

mod emulator_support;

use std::time::Duration;

use emulator_support::*;
use presence_proxy::emulator::{CONTOSO_CLIENT_ID, EmulatorConfig};
use serde_json::{Value, json};

/// graph.md §1.2: setPresence with sessionId = the app's client id returns 200 with no
/// body, and GET presence shows the state (§2.1 shape: id, availability, activity).
#[tokio::test]
async fn s1_2_set_presence_then_get() {
    let env = start().await;
    let app = env.app_token().await;
    let (status, body) = env
        .set_presence(&app, ALICE, "Busy", "InACall", "PT1H")
        .await;
    assert_eq!((status, body), (200, Value::Null));
    let (status, p) = env
        .graph_get(&app, &format!("/users/{ALICE}/presence"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(p["id"], ALICE);
    assert_eq!(p["availability"], "Busy");
    assert_eq!(p["activity"], "InACall");
    assert_eq!(p["outOfOfficeSettings"]["isOutOfOffice"], false);
    assert!(p["sequenceNumber"].is_string());
    // also at /communications/presences/{id}
    let (status, p) = env
        .graph_get(&app, &format!("/communications/presences/{ALICE}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(p["activity"], "InACall");
}

/// graph.md §1.2: only the documented availability/activity pairs are accepted; Busy/Busy
/// and DoNotDisturb/DoNotDisturb are not, DoNotDisturb/Presenting is.
#[tokio::test]
async fn s1_2_only_documented_pairs() {
    let env = start().await;
    let app = env.app_token().await;
    for (av, ac) in [
        ("Available", "Available"),
        ("Busy", "InACall"),
        ("Busy", "InAConferenceCall"),
        ("Away", "Away"),
        ("DoNotDisturb", "Presenting"),
    ] {
        let (status, body) = env.set_presence(&app, ALICE, av, ac, "PT5M").await;
        assert_eq!(status, 200, "{av}/{ac}: {body}");
    }
    for (av, ac) in [
        ("Busy", "Busy"),
        ("DoNotDisturb", "DoNotDisturb"),
        ("Busy", "InAMeeting"),
        ("Available", "OutOfOffice"),
    ] {
        let (status, body) = env.set_presence(&app, ALICE, av, ac, "PT5M").await;
        assert_eq!(status, 400, "{av}/{ac} refused");
        graph_error_code(&body);
    }
}

/// graph.md §1.2: expirationDuration must lie in PT5M..PT4H.
#[tokio::test]
async fn s1_2_expiration_duration_range() {
    let env = start().await;
    let app = env.app_token().await;
    for (duration, status) in [
        ("PT5M", 200),
        ("PT4H", 200),
        ("PT4M", 400),
        ("PT4H1M", 400),
        ("soon", 400),
    ] {
        let got = env
            .set_presence(&app, ALICE, "Busy", "InACall", duration)
            .await
            .0;
        assert_eq!(got, status, "expirationDuration {duration}");
    }
}

/// graph.md §1.2 / §8.1: sessionId must be the application's client id.
#[tokio::test]
async fn s1_2_session_id_must_be_the_client_id() {
    let env = start().await;
    let app = env.app_token().await;
    let (status, body) = env
        .graph_post(
            &app,
            &format!("/users/{ALICE}/presence/setPresence"),
            json!({"sessionId": "22553876-f5ab-4529-bffb-cfe50aa89f87",
                   "availability": "Available", "activity": "Available"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(graph_error_code(&body), "InvalidArgument");
}

/// graph.md §1.3: a body without sessionId is 400 InvalidArgument "[SessionId]: The
/// SessionId field is required.", even when the token lacks Presence.ReadWrite.
#[tokio::test]
async fn s1_3_missing_session_id_is_checked_before_permissions() {
    let env = start().await;
    let reader = env
        .user_token("alice@contoso.example", &["Presence.Read.All"])
        .await;
    let (status, body) = env
        .graph_post(
            &reader,
            &format!("/users/{ALICE}/presence/clearPresence"),
            json!({}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(graph_error_code(&body), "InvalidArgument");
    assert_eq!(
        body["error"]["message"],
        "[SessionId]: The SessionId field is required."
    );
}

/// graph.md §1.3: clearPresence removes the app's session (the user goes Offline when it
/// was the only one) and is 404 when the app has no session.
#[tokio::test]
async fn s1_3_clear_presence_and_404_without_session() {
    let env = start().await;
    let app = env.app_token().await;
    let clear = json!({"sessionId": CONTOSO_CLIENT_ID});
    let path = format!("/users/{BOB}/presence/clearPresence");
    let (status, body) = env.graph_post(&app, &path, clear.clone()).await;
    assert_eq!(status, 404);
    graph_error_code(&body);
    assert_eq!(
        env.set_presence(&app, BOB, "Busy", "InACall", "PT1H")
            .await
            .0,
        200
    );
    assert_eq!(env.graph_post(&app, &path, clear.clone()).await.0, 200);
    assert_eq!(
        env.presence(&app, BOB).await,
        ("Offline".into(), "Offline".into())
    );
    assert_eq!(env.graph_post(&app, &path, clear).await.0, 404);
}

/// graph.md §1.1: an expired session is gone (Offline), and clearPresence then finds none.
#[tokio::test]
async fn s1_1_session_expires_at_expiration_duration() {
    let env = start().await;
    let app = env.app_token().await;
    assert_eq!(
        env.set_presence(&app, BOB, "Busy", "InACall", "PT10M")
            .await
            .0,
        200
    );
    env.advance(9 * 60).await;
    assert_eq!(env.presence(&app, BOB).await.1, "InACall");
    env.advance(61).await;
    assert_eq!(
        env.presence(&app, BOB).await,
        ("Offline".into(), "Offline".into())
    );
    let (status, _) = env
        .graph_post(
            &app,
            &format!("/users/{BOB}/presence/clearPresence"),
            json!({"sessionId": CONTOSO_CLIENT_ID}),
        )
        .await;
    assert_eq!(status, 404);
}

/// graph.md §1.1: an Available session fades: Available/AvailableInactive after 5 min,
/// Away/Away after 5 more; setPresence again restarts it.
#[tokio::test]
async fn s1_1_available_fades_to_inactive_then_away() {
    let env = start().await;
    let app = env.app_token().await;
    assert_eq!(
        env.set_presence(&app, CAROL, "Available", "Available", "PT1H")
            .await
            .0,
        200
    );
    assert_eq!(
        env.presence(&app, CAROL).await,
        ("Available".into(), "Available".into())
    );
    env.advance(5 * 60).await;
    assert_eq!(
        env.presence(&app, CAROL).await,
        ("Available".into(), "AvailableInactive".into())
    );
    env.advance(5 * 60).await;
    assert_eq!(
        env.presence(&app, CAROL).await,
        ("Away".into(), "Away".into())
    );
    assert_eq!(
        env.set_presence(&app, CAROL, "Available", "Available", "PT1H")
            .await
            .0,
        200
    );
    assert_eq!(
        env.presence(&app, CAROL).await,
        ("Available".into(), "Available".into())
    );
}

/// graph.md §1.1: among sessions DoNotDisturb > Busy > Available > Away (the app's session
/// against the user's own Teams client session).
#[tokio::test]
async fn s1_1_session_precedence() {
    let env = start().await;
    let app = env.app_token().await;
    assert_eq!(
        env.set_presence(&app, ALICE, "Busy", "InACall", "PT1H")
            .await
            .0,
        200
    );
    env.teams_client(ALICE, "available").await;
    assert_eq!(
        env.presence(&app, ALICE).await.0,
        "Busy",
        "Busy > Available"
    );
    env.teams_client(ALICE, "dnd").await;
    assert_eq!(
        env.presence(&app, ALICE).await.0,
        "DoNotDisturb",
        "DND > Busy"
    );
    env.teams_client(ALICE, "away").await;
    assert_eq!(env.presence(&app, ALICE).await.0, "Busy", "Busy > Away");
    assert_eq!(
        env.set_presence(&app, ALICE, "Available", "Available", "PT1H")
            .await
            .0,
        200
    );
    assert_eq!(
        env.presence(&app, ALICE).await.0,
        "Available",
        "Available > Away"
    );
}

/// graph.md §1.4: user-preferred presence beats every session, but only while a session
/// exists; with none the user shows Offline.
#[tokio::test]
async fn s1_4_preferred_needs_a_session_and_wins() {
    let env = start().await;
    let app = env.app_token().await;
    let path = format!("/users/{BOB}/presence/setUserPreferredPresence");
    let (status, _) = env
        .graph_post(
            &app,
            &path,
            json!({"availability": "DoNotDisturb", "activity": "DoNotDisturb",
            "expirationDuration": "PT8H"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        env.presence(&app, BOB).await.0,
        "Offline",
        "no session: Offline"
    );
    assert_eq!(
        env.set_presence(&app, BOB, "Busy", "InACall", "PT1H")
            .await
            .0,
        200
    );
    assert_eq!(
        env.presence(&app, BOB).await,
        ("DoNotDisturb".into(), "DoNotDisturb".into())
    );
    let (status, _) = env
        .graph_post(
            &app,
            &format!("/users/{BOB}/presence/clearUserPreferredPresence"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        env.presence(&app, BOB).await,
        ("Busy".into(), "InACall".into())
    );
}

/// graph.md §1.4: setUserPreferredPresence has its own pair list (Busy/Busy and
/// DoNotDisturb/DoNotDisturb yes; Busy/InACall no).
#[tokio::test]
async fn s1_4_preferred_pairs() {
    let env = start().await;
    let app = env.app_token().await;
    let path = format!("/users/{BOB}/presence/setUserPreferredPresence");
    for (av, ac, ok) in [
        ("Busy", "Busy", true),
        ("Offline", "OffWork", true),
        ("BeRightBack", "BeRightBack", true),
        ("Busy", "InACall", false),
        ("DoNotDisturb", "Presenting", false),
    ] {
        let (status, _) = env
            .graph_post(&app, &path, json!({"availability": av, "activity": ac}))
            .await;
        assert_eq!(status == 200, ok, "{av}/{ac}");
    }
}

/// graph.md §1.4: the preferred presence lapses at its expirationDuration (default 1 day for
/// DoNotDisturb).
#[tokio::test]
async fn s1_4_preferred_expires() {
    let env = start().await;
    let app = env.app_token().await;
    env.teams_client(BOB, "available").await;
    let path = format!("/users/{BOB}/presence/setUserPreferredPresence");
    env.graph_post(
        &app,
        &path,
        json!({"availability": "DoNotDisturb", "activity": "DoNotDisturb"}),
    )
    .await;
    env.advance(86_400 - 10).await;
    let app = env.app_token().await; // the first one expired meanwhile
    assert_eq!(env.presence(&app, BOB).await.0, "DoNotDisturb");
    env.advance(11).await;
    assert_eq!(env.presence(&app, BOB).await.0, "Available");
}

/// graph.md §1.2 / §7: setPresence needs Presence.ReadWrite (delegated, the signed-in user)
/// or Presence.ReadWrite.All (app); a Presence.Read.All token is 403, and an app-only token
/// without consented roles is 403.
#[tokio::test]
async fn s7_set_presence_permissions() {
    let env = start().await;
    let reader = env
        .user_token("alice@contoso.example", &["Presence.Read.All"])
        .await;
    let (status, body) = env
        .set_presence(&reader, ALICE, "Busy", "InACall", "PT5M")
        .await;
    assert_eq!(status, 403);
    assert_eq!(graph_error_code(&body), "Forbidden");
    let writer = env
        .user_token("alice@contoso.example", &["Presence.ReadWrite"])
        .await;
    assert_eq!(
        env.set_presence(&writer, ALICE, "Busy", "InACall", "PT5M")
            .await
            .0,
        200
    );
    assert_eq!(
        env.set_presence(&writer, BOB, "Busy", "InACall", "PT5M")
            .await
            .0,
        403,
        "delegated Presence.ReadWrite writes the signed-in user only"
    );
    let unconsented = env.app_token_as_is().await;
    assert_eq!(
        env.set_presence(&unconsented, ALICE, "Busy", "InACall", "PT5M")
            .await
            .0,
        403
    );
}

/// graph.md §2.1 / §7: reading another user's presence needs Presence.Read.All (delegated)
/// or Presence.Read.All / Presence.ReadWrite.All (app); Presence.Read reaches only oneself.
#[tokio::test]
async fn s2_1_get_presence_permissions() {
    let env = start().await;
    let own = env
        .user_token("alice@contoso.example", &["Presence.Read"])
        .await;
    assert_eq!(
        env.graph_get(&own, &format!("/users/{ALICE}/presence"))
            .await
            .0,
        200
    );
    assert_eq!(env.graph_get(&own, "/me/presence").await.0, 200);
    assert_eq!(
        env.graph_get(&own, &format!("/users/{BOB}/presence"))
            .await
            .0,
        403
    );
    let all = env
        .user_token("alice@contoso.example", &["Presence.Read.All"])
        .await;
    assert_eq!(
        env.graph_get(&all, &format!("/users/{BOB}/presence"))
            .await
            .0,
        200
    );
    let app = env.app_token().await;
    assert_eq!(
        env.graph_get(&app, &format!("/users/{BOB}/presence"))
            .await
            .0,
        200
    );
    assert_eq!(
        env.graph_get(&app, "/me/presence").await.0,
        400,
        "no /me app-only"
    );
}

/// graph.md §2.1: presence endpoints take the user's object id, not the UPN.
#[tokio::test]
async fn s2_1_presence_needs_the_object_id() {
    let env = start().await;
    let app = env.app_token().await;
    let (status, body) = env
        .graph_get(&app, "/users/alice@contoso.example/presence")
        .await;
    assert_eq!(status, 400);
    graph_error_code(&body);
}

/// graph.md §2.2: getPresencesByUserId returns `value` for up to 650 ids; 651 is refused.
#[tokio::test]
async fn s2_2_get_presences_by_user_id_max_650() {
    let env = start().await;
    let app = env.app_token().await;
    env.teams_client(BOB, "in_call").await;
    let (status, body) = env
        .graph_post(
            &app,
            "/communications/getPresencesByUserId",
            json!({"ids": [ALICE, BOB]}),
        )
        .await;
    assert_eq!(status, 200);
    let value = body["value"].as_array().unwrap();
    assert_eq!(value.len(), 2);
    assert_eq!(value[1]["id"], BOB);
    assert_eq!(value[1]["availability"], "Busy");
    assert_eq!(value[1]["activity"], "InACall");
    let mut ids: Vec<String> = (0..650)
        .map(|i| format!("00000000-0000-0000-0000-{i:012}"))
        .collect();
    let (status, body) = env
        .graph_post(
            &app,
            "/communications/getPresencesByUserId",
            json!({"ids": ids}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["value"].as_array().unwrap().len(), 650);
    ids.push(ALICE.into());
    let (status, body) = env
        .graph_post(
            &app,
            "/communications/getPresencesByUserId",
            json!({"ids": ids}),
        )
        .await;
    assert_eq!(status, 400);
    graph_error_code(&body);
}

/// graph.md §2.2 / §7: getPresencesByUserId needs Presence.Read.All (delegated) or an app
/// role; delegated Presence.Read is not enough.
#[tokio::test]
async fn s2_2_get_presences_by_user_id_permissions() {
    let env = start().await;
    let own = env
        .user_token("alice@contoso.example", &["Presence.Read"])
        .await;
    let (status, _) = env
        .graph_post(
            &own,
            "/communications/getPresencesByUserId",
            json!({"ids": [ALICE]}),
        )
        .await;
    assert_eq!(status, 403);
    let domain = env
        .user_token(
            "dave@contoso.example",
            &["Presence.Read.All", "User.ReadBasic.All"],
        )
        .await;
    let (status, _) = env
        .graph_post(
            &domain,
            "/communications/getPresencesByUserId",
            json!({"ids": [ALICE]}),
        )
        .await;
    assert_eq!(status, 200);
}

/// graph.md §4.1/§4.2: 1,500 presence requests per 30 s per app per tenant; the next is
/// 429 TooManyRequests with Retry-After; the window passing lifts it.
#[tokio::test]
async fn s4_1_throttling_1500_per_30s() {
    let env = start().await;
    let app = env.app_token().await;
    let url = env.graph(&format!("/users/{ALICE}/presence"));
    for i in 0..1500 {
        let status = env
            .http
            .get(&url)
            .bearer_auth(&app)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "request {i}");
    }
    let response = env.http.get(&url).bearer_auth(&app).send().await.unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    let (_, body) = split(response).await;
    assert_eq!(body["error"]["code"], "TooManyRequests");
    assert_eq!(body["error"]["innerError"]["status"], "429");
    env.advance(30).await;
    assert_eq!(
        env.graph_get(&app, &format!("/users/{ALICE}/presence"))
            .await
            .0,
        200
    );
}

/// graph.md §4.1: the limit is per app per tenant; a smaller configured limit behaves alike
/// for writes too.
#[tokio::test]
async fn s4_1_throttling_counts_writes() {
    let env = start_with(EmulatorConfig {
        presence_rate_limit: 3,
        ..EmulatorConfig::default()
    })
    .await;
    let app = env.app_token().await;
    for _ in 0..3 {
        assert_eq!(
            env.set_presence(&app, ALICE, "Busy", "InACall", "PT5M")
                .await
                .0,
            200
        );
    }
    let (status, body) = env
        .set_presence(&app, ALICE, "Busy", "InACall", "PT5M")
        .await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "TooManyRequests");
}

/// graph.md §4.2: an expired token is 401 with the Graph error body
/// (InvalidAuthenticationToken); so are a missing and a forged one.
#[tokio::test]
async fn s4_2_expired_token_is_401_with_graph_error() {
    let env = start_with(EmulatorConfig {
        access_token_lifetime: Duration::from_secs(60),
        ..EmulatorConfig::default()
    })
    .await;
    let app = env.app_token().await;
    assert_eq!(
        env.graph_get(&app, &format!("/users/{ALICE}/presence"))
            .await
            .0,
        200
    );
    env.advance(61).await;
    let response = env
        .http
        .get(env.graph(&format!("/users/{ALICE}/presence")))
        .bearer_auth(&app)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    let (_, body) = split(response).await;
    assert_eq!(graph_error_code(&body), "InvalidAuthenticationToken");
    let missing = env
        .http
        .get(env.graph(&format!("/users/{ALICE}/presence")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    let mut forged = app.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert_eq!(
        env.graph_get(&forged, &format!("/users/{ALICE}/presence"))
            .await
            .0,
        401
    );
}

/// graph.md §5: GET /users/{id | UPN} returns the default properties; an unknown id is 404.
#[tokio::test]
async fn s5_get_user_by_id_or_upn() {
    let env = start().await;
    let token = env
        .user_token(
            "dave@contoso.example",
            &["Presence.Read.All", "User.ReadBasic.All"],
        )
        .await;
    let (status, by_upn) = env.graph_get(&token, "/users/alice@contoso.example").await;
    assert_eq!(status, 200);
    assert_eq!(by_upn["id"], ALICE);
    for key in [
        "businessPhones",
        "displayName",
        "givenName",
        "mail",
        "userPrincipalName",
        "surname",
    ] {
        assert!(by_upn.get(key).is_some(), "{key}");
    }
    let (status, by_id) = env
        .graph_get(&token, &format!("/users/{ALICE}?$select=id,mail"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(by_id["mail"], "alice@contoso.example");
    assert!(by_id.get("displayName").is_none(), "$select narrows");
    let (status, body) = env.graph_get(&token, "/users/nobody@contoso.example").await;
    assert_eq!(status, 404);
    graph_error_code(&body);
}

/// graph.md §5: `$filter=mail eq '…'` (and `or userPrincipalName eq '…'`) returns a `value`
/// collection; User.Read alone cannot list others.
#[tokio::test]
async fn s5_filter_users_by_mail() {
    let env = start().await;
    let app = env.app_token().await;
    let (status, body) = env
        .graph_get(&app, "/users?$filter=mail eq 'BOB@contoso.example' or userPrincipalName eq 'BOB@contoso.example'&$select=id,userPrincipalName,mail")
        .await;
    assert_eq!(status, 200, "{body}");
    let value = body["value"].as_array().unwrap();
    assert_eq!(value.len(), 1);
    assert_eq!(value[0]["id"], BOB);
    let (status, _) = env
        .graph_get(&app, "/users?$filter=startswith(mail,'b')")
        .await;
    assert_eq!(status, 400);
    let own = env
        .user_token("alice@contoso.example", &["User.Read"])
        .await;
    assert_eq!(
        env.graph_get(&own, "/users?$filter=mail eq 'bob@contoso.example'")
            .await
            .0,
        403
    );
    assert_eq!(env.graph_get(&own, "/me").await.0, 200);
}

/// Control API: the user's Teams-client state (Teams itself) shows through GET presence,
/// and the control view lists the sessions behind the aggregate.
#[tokio::test]
async fn control_teams_client_state_visible_through_graph() {
    let env = start().await;
    let app = env.app_token().await;
    assert_eq!(env.presence(&app, CAROL).await.0, "Offline");
    env.teams_client(CAROL, "in_call").await;
    assert_eq!(
        env.presence(&app, CAROL).await,
        ("Busy".into(), "InACall".into())
    );
    env.teams_client("carol@contoso.example", "dnd").await;
    assert_eq!(env.presence(&app, CAROL).await.0, "DoNotDisturb");
    assert_eq!(
        env.set_presence(&app, CAROL, "Busy", "InACall", "PT1H")
            .await
            .0,
        200
    );
    let (status, view) = env
        .control_json(
            reqwest::Method::GET,
            &format!("/users/{CAROL}/presence"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(view["aggregate"]["availability"], "DoNotDisturb");
    assert_eq!(view["teams_client"]["availability"], "DoNotDisturb");
    assert_eq!(view["app_sessions"][0]["app_id"], CONTOSO_CLIENT_ID);
    assert_eq!(view["app_sessions"][0]["set"]["activity"], "InACall");
    env.teams_client(CAROL, "offline").await;
    assert_eq!(
        env.presence(&app, CAROL).await,
        ("Busy".into(), "InACall".into())
    );
}

/// Control API: the next N requests fail with an injected 5xx (Graph error body), then
/// service resumes; a 429 burst carries Retry-After.
#[tokio::test]
async fn control_injected_5xx_and_429_burst() {
    let env = start().await;
    let app = env.app_token().await;
    let (status, _) = env
        .control_json(
            reqwest::Method::PUT,
            "/faults",
            Some(json!({"fail_next": {"count": 2, "status": 503, "retry_after": 2}})),
        )
        .await;
    assert_eq!(status, 200);
    for _ in 0..2 {
        let response = env
            .http
            .get(env.graph(&format!("/users/{ALICE}/presence")))
            .bearer_auth(&app)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "2");
    }
    assert_eq!(
        env.graph_get(&app, &format!("/users/{ALICE}/presence"))
            .await
            .0,
        200
    );
    env.control_json(
        reqwest::Method::PUT,
        "/faults",
        Some(json!({"throttle_next": {"count": 1, "retry_after": 7}})),
    )
    .await;
    let response = env
        .http
        .get(env.graph(&format!("/users/{ALICE}/presence")))
        .bearer_auth(&app)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(
        env.graph_get(&app, &format!("/users/{ALICE}/presence"))
            .await
            .0,
        200
    );
}

/// Control API: injected latency delays login and Graph responses.
#[tokio::test]
async fn control_injected_latency() {
    let env = start().await;
    let app = env.app_token().await;
    env.control_json(
        reqwest::Method::PUT,
        "/faults",
        Some(json!({"latency_ms": 150})),
    )
    .await;
    let started = std::time::Instant::now();
    assert_eq!(
        env.graph_get(&app, &format!("/users/{ALICE}/presence"))
            .await
            .0,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    let (status, _) = env
        .control_json(reqwest::Method::DELETE, "/faults", None)
        .await;
    assert_eq!(status, 204);
}

/// Control API: the request log has method, path and status, and never a query string
/// (codes and tokens travel there) nor a token.
#[tokio::test]
async fn control_request_log_without_secrets() {
    let env = start().await;
    let body = env
        .sign_in("alice@contoso.example", "openid offline_access")
        .await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (status, log) = env
        .control_json(reqwest::Method::GET, "/requests", None)
        .await;
    assert_eq!(status, 200);
    let text = log.to_string();
    let entries = log["value"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["method"] == "POST"
        && e["path"] == "/contoso.example/oauth2/v2.0/token"
        && e["status"] == 200));
    assert!(
        entries
            .iter()
            .any(|e| e["path"] == "/contoso.example/oauth2/v2.0/authorize" && e["status"] == 302)
    );
    assert!(!text.contains("code="), "no query strings");
    assert!(!text.contains(&token));
    assert!(!text.contains(body["refresh_token"].as_str().unwrap()));
    assert!(!text.contains("emulator-secret"));
}
