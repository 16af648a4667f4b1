#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
//! The emulator's identity platform, over real HTTP on loopback: one test per rule of
//! graph.md §6, each naming its section.

mod emulator_support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use emulator_support::*;
use presence_proxy::emulator::{
    CONTOSO_CLIENT_ID, CONTOSO_CLIENT_SECRET, CONTOSO_TENANT_ID, EmulatorConfig,
};
use serde_json::Value;

const CONSENT_REDIRECT: &str = "http://localhost:8080/oauth/callback";

async fn admin_consent(env: &Env, tenant: &str, decision: Option<&str>) -> reqwest::Response {
    let mut params = vec![
        ("client_id", CONTOSO_CLIENT_ID),
        ("scope", "https://graph.microsoft.com/.default"),
        ("redirect_uri", CONSENT_REDIRECT),
        ("state", "12345"),
    ];
    if let Some(d) = decision {
        params.push(("emulator_decision", d));
    }
    env.http
        .get(env.login(&format!("/{tenant}/v2.0/adminconsent")))
        .query(&params)
        .send()
        .await
        .unwrap()
}

/// graph.md §6.1: accepting admin consent redirects with admin_consent=True, the tenant
/// GUID, scope and state; the page offers accept and deny links a browser can follow.
#[tokio::test]
async fn s6_1_admin_consent_success_redirect() {
    let env = start().await;
    let page = admin_consent(&env, "contoso.example", None).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"accept\"") && html.contains("id=\"deny\""));
    let href = html
        .split("id=\"accept\" href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    let accepted = env.http.get(env.login(&href)).send().await.unwrap();
    assert_eq!(accepted.status(), 302);
    let (base, q) = location_query(&accepted);
    assert_eq!(base, CONSENT_REDIRECT);
    assert_eq!(q["admin_consent"], "True");
    assert_eq!(q["tenant"], CONTOSO_TENANT_ID);
    assert_eq!(q["state"], "12345");
    assert_eq!(q["scope"], "https://graph.microsoft.com/.default");
    assert!(!q.contains_key("error"));
}

/// graph.md §6.1: a refusal redirects with error + error_description (AADSTS65004), and
/// admin_consent=True still appears, so a client must check `error` first.
#[tokio::test]
async fn s6_1_admin_consent_error_redirect() {
    let env = start().await;
    let denied = admin_consent(&env, CONTOSO_TENANT_ID, Some("deny")).await;
    assert_eq!(denied.status(), 302);
    let (_, q) = location_query(&denied);
    assert_eq!(q["error"], "consent_required");
    assert!(q["error_description"].starts_with("AADSTS65004"));
    assert_eq!(q["admin_consent"], "True");
    assert_eq!(q["state"], "12345");
}

/// graph.md §6.1: tenant `common` is refused, and redirect_uri must match a registered one
/// exactly (no redirect to an unregistered URI).
#[tokio::test]
async fn s6_1_admin_consent_refuses_common_and_unregistered_redirect() {
    let env = start().await;
    let common = admin_consent(&env, "common", Some("accept")).await;
    assert_eq!(common.status(), 400);
    let bad = env
        .http
        .get(env.login("/contoso.example/v2.0/adminconsent"))
        .query(&[
            ("client_id", CONTOSO_CLIENT_ID),
            ("scope", "https://graph.microsoft.com/.default"),
            ("redirect_uri", "http://127.0.0.1:8080/oauth/callback/"),
            ("emulator_decision", "accept"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("AADSTS50011"));
}

/// graph.md §6.2: the authorize endpoint shows a sign-in page listing the tenant's users,
/// each a link that completes the sign-in as that user (code + state on the redirect).
#[tokio::test]
async fn s6_2_sign_in_page_lists_users_and_completes() {
    let env = start().await;
    let (_, challenge) = pkce();
    let page = env
        .http
        .get(env.login("/organizations/oauth2/v2.0/authorize"))
        .query(&[
            ("client_id", CONTOSO_CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", "openid profile"),
            ("state", "xyz"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for upn in [
        "alice@contoso.example",
        "bob@contoso.example",
        "carol@contoso.example",
    ] {
        assert!(html.contains(upn), "{upn} listed");
    }
    let href = html
        .split("data-upn=\"bob@contoso.example\" href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    let done = env.http.get(env.login(&href)).send().await.unwrap();
    assert_eq!(done.status(), 302);
    let (base, q) = location_query(&done);
    assert_eq!(base, REDIRECT);
    assert_eq!(q["state"], "xyz");
    assert!(!q["code"].is_empty());
}

/// graph.md §6.2: a sign-in the user cancels redirects with error=access_denied.
#[tokio::test]
async fn s6_2_sign_in_denied_redirects_access_denied() {
    let env = start().await;
    let (_, challenge) = pkce();
    let q = env
        .authorize("", "openid", &challenge, &[("emulator_decision", "deny")])
        .await;
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "st-1");
}

/// graph.md §6.2 (PKCE): the emulator requires code_challenge (the product always sends it).
#[tokio::test]
async fn s6_2_authorize_without_pkce_is_refused() {
    let env = start().await;
    let response = env
        .http
        .get(env.login("/contoso.example/oauth2/v2.0/authorize"))
        .query(&[
            ("client_id", CONTOSO_CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", "openid"),
            ("state", "s"),
            ("emulator_user", "alice@contoso.example"),
        ])
        .send()
        .await
        .unwrap();
    let (_, q) = location_query(&response);
    assert_eq!(q["error"], "invalid_request");
}

/// graph.md §6.2: the code flow returns access_token, refresh_token (offline_access) and
/// id_token (openid), token_type Bearer and expires_in.
#[tokio::test]
async fn s6_2_code_flow_returns_tokens() {
    let env = start().await;
    let body = env
        .sign_in(
            "alice@contoso.example",
            "openid profile offline_access https://graph.microsoft.com/Presence.ReadWrite",
        )
        .await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(body["refresh_token"].is_string());
    assert!(body["id_token"].is_string());
    let access = claims(body["access_token"].as_str().unwrap());
    assert_eq!(access["oid"], ALICE);
    assert_eq!(access["tid"], CONTOSO_TENANT_ID);
    assert_eq!(access["appid"], CONTOSO_CLIENT_ID);
    assert!(
        access["scp"]
            .as_str()
            .unwrap()
            .split(' ')
            .any(|s| s == "Presence.ReadWrite")
    );
    assert!(access.get("roles").is_none());
}

/// graph.md §6.2: no offline_access, no refresh token; no openid, no id_token.
#[tokio::test]
async fn s6_2_refresh_token_only_with_offline_access() {
    let env = start().await;
    let body = env
        .sign_in(
            "alice@contoso.example",
            "https://graph.microsoft.com/Presence.ReadWrite",
        )
        .await;
    assert!(body.get("refresh_token").is_none());
    assert!(body.get("id_token").is_none());
}

/// graph.md §6.2: a PKCE verifier that does not match the challenge is invalid_grant.
#[tokio::test]
async fn s6_2_pkce_mismatch_is_invalid_grant() {
    let env = start().await;
    let (_, challenge) = pkce();
    let (other_verifier, _) = pkce();
    let q = env
        .authorize("alice@contoso.example", "openid", &challenge, &[])
        .await;
    let (status, body) = env
        .token(&[
            ("grant_type", "authorization_code"),
            ("client_id", CONTOSO_CLIENT_ID),
            ("client_secret", CONTOSO_CLIENT_SECRET),
            ("code", &q["code"]),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &other_verifier),
        ])
        .await;
    assert_eq!(status, 400);
    assert_eq!(token_error(&body).0, "invalid_grant");
}

/// graph.md §6.2: a code is single-use; the second redemption is invalid_grant.
#[tokio::test]
async fn s6_2_code_reuse_is_refused() {
    let env = start().await;
    let (verifier, challenge) = pkce();
    let q = env
        .authorize("alice@contoso.example", "openid", &challenge, &[])
        .await;
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", CONTOSO_CLIENT_ID),
        ("client_secret", CONTOSO_CLIENT_SECRET),
        ("code", q["code"].as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
    ];
    assert_eq!(env.token(&form).await.0, 200);
    let (status, body) = env.token(&form).await;
    assert_eq!(status, 400);
    assert_eq!(token_error(&body), ("invalid_grant".into(), 54005));
}

/// graph.md §6.2: the token request's redirect_uri must be the authorize request's.
#[tokio::test]
async fn s6_2_redirect_uri_must_match_at_exchange() {
    let env = start().await;
    let (verifier, challenge) = pkce();
    let q = env
        .authorize("alice@contoso.example", "openid", &challenge, &[])
        .await;
    let (status, body) = env
        .token(&[
            ("grant_type", "authorization_code"),
            ("client_id", CONTOSO_CLIENT_ID),
            ("client_secret", CONTOSO_CLIENT_SECRET),
            ("code", &q["code"]),
            ("redirect_uri", "http://localhost:8080/oauth/callback"),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(status, 400);
    assert_eq!(token_error(&body).0, "invalid_grant");
}

/// graph.md §6.2: codes expire after about 10 minutes.
#[tokio::test]
async fn s6_2_code_expires_after_ten_minutes() {
    let env = start().await;
    let (verifier, challenge) = pkce();
    let q = env
        .authorize("alice@contoso.example", "openid", &challenge, &[])
        .await;
    env.advance(601).await;
    let (status, body) = env
        .token(&[
            ("grant_type", "authorization_code"),
            ("client_id", CONTOSO_CLIENT_ID),
            ("client_secret", CONTOSO_CLIENT_SECRET),
            ("code", &q["code"]),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(status, 400);
    assert_eq!(token_error(&body).0, "invalid_grant");
}

/// graph.md §6.2/§6.4: a wrong client secret is invalid_client (401) with the §6.4 body.
#[tokio::test]
async fn s6_4_wrong_secret_is_invalid_client() {
    let env = start().await;
    let (status, body) = env
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", CONTOSO_CLIENT_ID),
            ("client_secret", "nope"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .await;
    assert_eq!(status, 401);
    assert_eq!(token_error(&body), ("invalid_client".into(), 7000215));
}

/// graph.md §6.5: every refresh returns a new refresh token; the used one is dead, and
/// reusing it is invalid_grant with an AADSTS70008 body (§6.4 shape). The emulator is
/// stricter than Entra here on purpose (§6.5 says the old one is not revoked), so a
/// client that passes always stores the newest.
#[tokio::test]
async fn s6_5_refresh_rotation_and_reuse_refused() {
    let env = start().await;
    let first = env
        .sign_in(
            "alice@contoso.example",
            "openid profile offline_access https://graph.microsoft.com/Presence.ReadWrite",
        )
        .await;
    let rt1 = first["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |rt: String| {
        let env = &env;
        async move {
            env.token(&[
                ("grant_type", "refresh_token"),
                ("client_id", CONTOSO_CLIENT_ID),
                ("client_secret", CONTOSO_CLIENT_SECRET),
                ("refresh_token", &rt),
                (
                    "scope",
                    "https://graph.microsoft.com/Presence.ReadWrite offline_access",
                ),
            ])
            .await
        }
    };
    let (status, second) = refresh(rt1.clone()).await;
    assert_eq!(status, 200, "{second}");
    let rt2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, rt2);
    assert!(second["access_token"].is_string());
    let (status, reused) = refresh(rt1).await;
    assert_eq!(status, 400);
    assert_eq!(token_error(&reused), ("invalid_grant".into(), 70008));
    let (status, third) = refresh(rt2).await;
    assert_eq!(status, 200, "{third}");
}

/// graph.md §6.2: refreshed scopes must equal or be a subset of the original request.
#[tokio::test]
async fn s6_2_refresh_cannot_widen_scopes() {
    let env = start().await;
    let first = env
        .sign_in(
            "alice@contoso.example",
            "offline_access https://graph.microsoft.com/Presence.ReadWrite",
        )
        .await;
    let (status, body) = env
        .token(&[
            ("grant_type", "refresh_token"),
            ("client_id", CONTOSO_CLIENT_ID),
            ("client_secret", CONTOSO_CLIENT_SECRET),
            ("refresh_token", first["refresh_token"].as_str().unwrap()),
            ("scope", "https://graph.microsoft.com/Presence.Read.All"),
        ])
        .await;
    assert_eq!(status, 400);
    assert_eq!(token_error(&body).0, "invalid_grant");
}

/// graph.md §6.5: an admin revoke kills the user's refresh tokens (control API).
#[tokio::test]
async fn s6_5_revoked_refresh_token_is_invalid_grant() {
    let env = start().await;
    let first = env
        .sign_in(
            "bob@contoso.example",
            "offline_access https://graph.microsoft.com/Presence.ReadWrite",
        )
        .await;
    let (status, revoked) = env
        .control_json(
            reqwest::Method::POST,
            "/users/bob@contoso.example/revoke-refresh-tokens",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(revoked["revoked"], 1);
    let (status, body) = env
        .token(&[
            ("grant_type", "refresh_token"),
            ("client_id", CONTOSO_CLIENT_ID),
            ("client_secret", CONTOSO_CLIENT_SECRET),
            ("refresh_token", first["refresh_token"].as_str().unwrap()),
        ])
        .await;
    assert_eq!(status, 400);
    assert_eq!(token_error(&body).0, "invalid_grant");
}

/// graph.md §6.3: client credentials with `.default` returns a Bearer token, no refresh
/// token; after admin consent the app roles are in `roles`, and there is no `scp`.
#[tokio::test]
async fn s6_3_client_credentials_with_roles_after_consent() {
    let env = start().await;
    let before = claims(&env.app_token_as_is().await);
    assert!(before.get("roles").is_none(), "no consent, no roles");
    env.consent(true).await;
    let (status, body) = env
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", CONTOSO_CLIENT_ID),
            ("client_secret", CONTOSO_CLIENT_SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body.get("refresh_token").is_none());
    let c = claims(body["access_token"].as_str().unwrap());
    let roles: Vec<&str> = c["roles"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(roles.contains(&"Presence.ReadWrite.All"));
    assert!(c.get("scp").is_none());
    assert_eq!(c["tid"], CONTOSO_TENANT_ID);
    assert_eq!(c["appid"], CONTOSO_CLIENT_ID);
}

/// graph.md §6.1 + §6.3: admin consent given through the consent redirect is what puts
/// roles into client-credentials tokens.
#[tokio::test]
async fn s6_1_consent_redirect_grants_app_roles() {
    let env = start().await;
    let accepted = admin_consent(&env, "contoso.example", Some("accept")).await;
    assert_eq!(accepted.status(), 302);
    let c = claims(&env.app_token_as_is().await);
    assert!(c["roles"].is_array());
}

/// graph.md §6.3/§6.4: client credentials need scope `https://graph.microsoft.com/.default`;
/// anything else is invalid_scope AADSTS70011 with the exact §6.4 field set.
#[tokio::test]
async fn s6_4_client_credentials_wrong_scope_is_invalid_scope() {
    let env = start().await;
    let (status, body) = env
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", CONTOSO_CLIENT_ID),
            ("client_secret", CONTOSO_CLIENT_SECRET),
            (
                "scope",
                "https://graph.microsoft.com/Presence.ReadWrite.All",
            ),
        ])
        .await;
    assert_eq!(status, 400);
    assert_eq!(token_error(&body), ("invalid_scope".into(), 70011));
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 7, "{keys:?}");
    assert!(
        body["error_uri"]
            .as_str()
            .unwrap()
            .ends_with("/error?code=70011")
    );
}

/// graph.md §6.6: the id_token is RS256-signed and the JWKS verifies it (checked with ring
/// here); it carries oid, tid, preferred_username, email (only with the `email` scope),
/// nonce, aud = client id, iss = {login}/{tenant}/v2.0, exp/iat/nbf.
#[tokio::test]
async fn s6_6_id_token_claims_and_jwks_signature() {
    let env = start().await;
    let (verifier, challenge) = pkce();
    let scope = "openid profile email";
    let q = env
        .authorize(
            "carol@contoso.example",
            scope,
            &challenge,
            &[("nonce", "n-0S6_WzA2Mj")],
        )
        .await;
    let (status, body) = env
        .token(&[
            ("grant_type", "authorization_code"),
            ("client_id", CONTOSO_CLIENT_ID),
            ("client_secret", CONTOSO_CLIENT_SECRET),
            ("code", &q["code"]),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    let id_token = body["id_token"].as_str().unwrap();
    let c = claims(id_token);
    assert_eq!(c["oid"], CAROL);
    assert_eq!(c["tid"], CONTOSO_TENANT_ID);
    assert_eq!(c["preferred_username"], "carol@contoso.example");
    assert_eq!(c["email"], "carol@contoso.example");
    assert_eq!(c["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(c["aud"], CONTOSO_CLIENT_ID);
    assert_eq!(
        c["iss"],
        format!("{}/{CONTOSO_TENANT_ID}/v2.0", env.emu.login_url())
    );
    for k in ["exp", "iat", "nbf"] {
        assert!(c[k].is_u64(), "{k}");
    }

    let jwks: Value = env
        .http
        .get(env.login(&format!("/{CONTOSO_TENANT_ID}/discovery/v2.0/keys")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(id_token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "RS256");
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the id_token's kid is in the JWKS");
    assert_eq!(key["kty"], "RSA");
    let n = URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap();
    let e = URL_SAFE_NO_PAD.decode(key["e"].as_str().unwrap()).unwrap();
    let (signed, sig) = id_token.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let public = ring::signature::RsaPublicKeyComponents { n: &n, e: &e };
    public
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &sig,
        )
        .expect("the JWKS key verifies the id_token");
    // a tampered token does not verify
    let mut tampered = signed.to_owned();
    tampered.push('x');
    assert!(
        public
            .verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                tampered.as_bytes(),
                &sig
            )
            .is_err()
    );
}

/// graph.md §6.6: without the `email` scope the id_token has no email claim.
#[tokio::test]
async fn s6_6_no_email_claim_without_email_scope() {
    let env = start().await;
    let body = env.sign_in("alice@contoso.example", "openid profile").await;
    let c = claims(body["id_token"].as_str().unwrap());
    assert!(c.get("email").is_none());
    assert_eq!(c["oid"], ALICE);
}

/// A short configured token lifetime shows in expires_in and exp.
#[tokio::test]
async fn configurable_token_lifetime() {
    let env = start_with(EmulatorConfig {
        access_token_lifetime: std::time::Duration::from_secs(60),
        ..EmulatorConfig::default()
    })
    .await;
    let body = env.sign_in("alice@contoso.example", "openid").await;
    assert_eq!(body["expires_in"], 60);
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
}
