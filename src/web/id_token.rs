//! id_token validation (OpenID Connect Core §3.1.3.7, graph.md §6.6): RS256 only, the
//! signature checked against the tenant's JWKS, then `aud`, `iss`/`tid`, `exp`/`nbf`/`iat`
//! with a small skew, and `nonce`. Claims are read only after the signature verified.
//!
//! - [`Jwks`]: the RSA signing keys of a JWKS document, by `kid`.
//! - [`KeyCache`]: sans-IO cache of those keys with the refetch rule: an unknown `kid`
//!   triggers at most one fetch, and fetches (successful or not) are at least
//!   [`KeyCache::min_interval`] apart, so a stream of tokens with made-up `kid`s cannot
//!   make the proxy hammer the identity platform.
//! - [`JwksClient`]: the cache plus the HTTP fetch of `{login}/{tenant}/discovery/v2.0/keys`.
//! - [`parse`], [`verify_signature`], [`check_claims`]: the plain steps, for unit tests.
//! - [`IdTokenValidator`]: all of it in order.
//!
//! Nothing here logs or returns a token or a claim value that could identify one: errors
//! name what failed, never the token.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::store::Secret;

/// Why an id_token was refused. No variant carries the token or its signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    /// Not a compact JWS of three base64url parts with JSON header and claims.
    #[error("the id_token is malformed: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not RS256 (`none`, HS256 and the rest are refused).
    #[error("the id_token is signed with {0:?}; only RS256 is accepted")]
    Algorithm(String),
    /// The header carries `crit` extensions this validator does not understand.
    #[error("the id_token has critical header extensions")]
    CriticalHeader,
    /// The header has no `kid`.
    #[error("the id_token names no signing key (kid)")]
    MissingKid,
    /// No key of the tenant's JWKS has this `kid`, even after a refetch (or a refetch
    /// was not allowed yet).
    #[error("the id_token's signing key is not among the tenant's keys")]
    UnknownKey,
    /// The JWKS could not be fetched or read.
    #[error("cannot fetch the tenant's signing keys: {0}")]
    Jwks(String),
    /// The signature does not verify with the key.
    #[error("the id_token's signature does not verify")]
    BadSignature,
    /// `aud` is not this app's client id.
    #[error("the id_token was issued to another application (aud)")]
    Audience,
    /// `iss` is not `{login}/{tid}/v2.0`.
    #[error("the id_token's issuer is not the identity platform of its tenant")]
    Issuer,
    /// `tid` is not the tenant this proxy belongs to.
    #[error("the id_token is from tenant {found}, but this proxy belongs to tenant {expected}")]
    Tenant {
        /// The tenant the store knows.
        expected: String,
        /// The token's `tid`.
        found: String,
    },
    /// `exp` has passed (beyond the skew).
    #[error("the id_token has expired")]
    Expired,
    /// `nbf` (or `iat`) lies in the future (beyond the skew).
    #[error("the id_token is not valid yet")]
    NotYetValid,
    /// `nonce` is missing or not the one this sign-in sent.
    #[error("the id_token's nonce does not match this sign-in")]
    Nonce,
    /// A required claim is missing or has the wrong type.
    #[error("the id_token lacks the {0} claim")]
    MissingClaim(&'static str),
}

/// The id_token's claims this proxy uses, after validation.
#[derive(Clone, PartialEq, Eq)]
pub struct IdClaims {
    /// The tenant (`tid`).
    pub tenant_id: String,
    /// The user's object id (`oid`), Graph's user `id` (graph.md §6.6).
    pub object_id: String,
    /// `preferred_username` (usually the UPN), if present.
    pub preferred_username: Option<String>,
    /// `email`, if present.
    pub email: Option<String>,
    /// `name`, display only.
    pub name: Option<String>,
}

impl fmt::Debug for IdClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdClaims")
            .field("tenant_id", &self.tenant_id)
            .field("object_id", &self.object_id)
            .field("preferred_username", &self.preferred_username)
            .finish_non_exhaustive()
    }
}

impl IdClaims {
    /// The account to show and record: `preferred_username`, else `email`, else the
    /// object id.
    pub fn account(&self) -> &str {
        self.preferred_username
            .as_deref()
            .or(self.email.as_deref())
            .unwrap_or(&self.object_id)
    }

    /// Whether `email` (a directory address) is this account: `email` or
    /// `preferred_username`, compared case-insensitively.
    pub fn is_account(&self, email: &str) -> bool {
        let want = email.trim();
        !want.is_empty()
            && [self.email.as_deref(), self.preferred_username.as_deref()]
                .into_iter()
                .flatten()
                .any(|have| have.trim().to_lowercase() == want.to_lowercase())
    }
}

// -------------------------------------------------------------------------------------
// keys

/// One RSA public key of a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaKey {
    /// The modulus, big-endian.
    pub n: Vec<u8>,
    /// The public exponent, big-endian.
    pub e: Vec<u8>,
}

/// The RS256-capable keys of a JWKS document, by `kid`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jwks {
    /// `kid` → key.
    pub keys: HashMap<String, RsaKey>,
}

impl Jwks {
    /// Reads a JWKS document (`{"keys":[{kty,kid,n,e,...}]}`), keeping the RSA keys meant
    /// for signatures (`use` absent or `sig`, `alg` absent or `RS256`). Other keys are
    /// skipped; a document that is not a JWKS is an error.
    pub fn parse(body: &[u8]) -> Result<Self, IdTokenError> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<Value>,
        }
        let doc: Doc = serde_json::from_slice(body)
            .map_err(|e| IdTokenError::Jwks(format!("not a JWKS document: {e}")))?;
        let mut keys = HashMap::new();
        for key in doc.keys {
            let s = |name: &str| key.get(name).and_then(Value::as_str);
            if s("kty") != Some("RSA")
                || s("use").is_some_and(|u| u != "sig")
                || s("alg").is_some_and(|a| a != "RS256")
            {
                continue;
            }
            let (Some(kid), Some(n), Some(e)) = (s("kid"), s("n"), s("e")) else {
                continue;
            };
            let (Some(n), Some(e)) = (b64url(n), b64url(e)) else {
                continue;
            };
            keys.insert(kid.to_owned(), RsaKey { n, e });
        }
        Ok(Self { keys })
    }
}

/// The sans-IO key cache: what is known, and whether a fetch is allowed now.
#[derive(Debug, Clone)]
pub struct KeyCache {
    keys: HashMap<String, RsaKey>,
    /// The last successful fetch (the keys' age).
    fetched_at: Option<Instant>,
    /// The last fetch attempt (the rate limit).
    attempted_at: Option<Instant>,
    min_interval: Duration,
    max_age: Duration,
}

impl KeyCache {
    /// An empty cache whose fetches are at least `min_interval` apart and whose keys are
    /// refetched (when next used) once `max_age` old, so a key the tenant withdrew stops
    /// being trusted.
    pub fn new(min_interval: Duration, max_age: Duration) -> Self {
        Self {
            keys: HashMap::new(),
            fetched_at: None,
            attempted_at: None,
            min_interval,
            max_age,
        }
    }

    /// Whether the keys are older than the maximum age (or were never fetched).
    pub fn is_stale(&self, now: Instant) -> bool {
        self.fetched_at
            .is_none_or(|at| now.saturating_duration_since(at) >= self.max_age)
    }

    /// The shortest time between two fetches.
    pub fn min_interval(&self) -> Duration {
        self.min_interval
    }

    /// The key `kid`, if cached.
    pub fn get(&self, kid: &str) -> Option<&RsaKey> {
        self.keys.get(kid)
    }

    /// Whether a fetch may happen at `now`: never fetched, or the last one is at least
    /// the minimum interval old.
    pub fn may_fetch(&self, now: Instant) -> bool {
        self.attempted_at
            .is_none_or(|at| now.saturating_duration_since(at) >= self.min_interval)
    }

    /// Replaces the keys with a fetched document.
    pub fn fetched(&mut self, jwks: Jwks, now: Instant) {
        self.keys = jwks.keys;
        self.fetched_at = Some(now);
        self.attempted_at = Some(now);
    }

    /// Records a failed fetch (it counts against the rate limit; the keys stay).
    pub fn fetch_failed(&mut self, now: Instant) {
        self.attempted_at = Some(now);
    }
}

/// The tenant's JWKS over HTTP, cached by `kid`.
#[derive(Debug)]
pub struct JwksClient {
    http: reqwest::Client,
    url: String,
    cache: Mutex<KeyCache>,
}

impl JwksClient {
    /// Keys from `{login_base}/{tenant}/discovery/v2.0/keys`; see [`KeyCache::new`] for
    /// `min_refetch` and `max_age`.
    pub fn new(
        login_base: &str,
        tenant: &str,
        min_refetch: Duration,
        max_age: Duration,
        timeout: Duration,
    ) -> Result<Self, IdTokenError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .user_agent(concat!("presence-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| IdTokenError::Jwks(e.without_url().to_string()))?;
        Ok(Self {
            http,
            url: jwks_url(login_base, tenant),
            cache: Mutex::new(KeyCache::new(min_refetch, max_age)),
        })
    }

    /// The JWKS URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key `kid`: from the cache, else after one fetch if the rate limit allows it.
    /// Stale keys are refetched first (falling back to them when the fetch fails).
    /// Concurrent misses wait for one fetch instead of each fetching.
    pub async fn key(&self, kid: &str) -> Result<RsaKey, IdTokenError> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        let known = cache.get(kid).is_some();
        if known && !cache.is_stale(now) {
            return cache.get(kid).cloned().ok_or(IdTokenError::UnknownKey);
        }
        if !cache.may_fetch(now) {
            if !known {
                tracing::debug!("id_token names an unknown key; JWKS refetch rate-limited");
            }
            return cache.get(kid).cloned().ok_or(IdTokenError::UnknownKey);
        }
        match self.fetch().await {
            Ok(jwks) => {
                tracing::debug!(keys = jwks.keys.len(), "fetched the tenant's JWKS");
                cache.fetched(jwks, Instant::now());
            }
            Err(e) => {
                cache.fetch_failed(Instant::now());
                tracing::warn!(error = %e, "cannot fetch the tenant's JWKS");
                if !known {
                    return Err(e);
                }
            }
        }
        cache.get(kid).cloned().ok_or(IdTokenError::UnknownKey)
    }

    /// How many keys are cached.
    pub async fn cached_keys(&self) -> usize {
        self.cache.lock().await.keys.len()
    }

    async fn fetch(&self) -> Result<Jwks, IdTokenError> {
        let response = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| IdTokenError::Jwks(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(IdTokenError::Jwks(format!(
                "the JWKS endpoint answered {status}"
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| IdTokenError::Jwks(e.without_url().to_string()))?;
        Jwks::parse(&body)
    }
}

/// `{login_base}/{tenant}/discovery/v2.0/keys`.
pub fn jwks_url(login_base: &str, tenant: &str) -> String {
    format!(
        "{}/{tenant}/discovery/v2.0/keys",
        login_base.trim_end_matches('/')
    )
}

/// `{login_base}/{tid}/v2.0`: the v2.0 issuer of a tenant.
pub fn issuer(login_base: &str, tenant_id: &str) -> String {
    format!("{}/{tenant_id}/v2.0", login_base.trim_end_matches('/'))
}

// -------------------------------------------------------------------------------------
// the steps

/// A JWS split into its parts; nothing in it is trusted yet.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The header's `alg`.
    pub alg: String,
    /// The header's `kid`.
    pub kid: Option<String>,
    /// Whether the header has `crit`.
    pub crit: bool,
    /// The claims (unverified).
    pub claims: Value,
    /// `header.claims`, what the signature covers.
    pub signing_input: &'a str,
    /// The signature bytes.
    pub signature: Vec<u8>,
}

fn b64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Splits a compact JWS and decodes its parts.
pub fn parse(token: &str) -> Result<Parsed<'_>, IdTokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(IdTokenError::Malformed("not three dot-separated parts"));
    };
    let header: Value = b64url(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(IdTokenError::Malformed("the header is not base64url JSON"))?;
    let claims: Value = b64url(c)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(IdTokenError::Malformed("the claims are not base64url JSON"))?;
    if !header.is_object() || !claims.is_object() {
        return Err(IdTokenError::Malformed(
            "header or claims not a JSON object",
        ));
    }
    let signature = b64url(s).ok_or(IdTokenError::Malformed("the signature is not base64url"))?;
    Ok(Parsed {
        alg: header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        kid: header.get("kid").and_then(Value::as_str).map(str::to_owned),
        crit: header.get("crit").is_some(),
        claims,
        signing_input: &token[..h.len() + 1 + c.len()],
        signature,
    })
}

/// Checks the header (RS256, no `crit`) and returns the `kid`.
pub fn check_header<'p>(parsed: &'p Parsed<'_>) -> Result<&'p str, IdTokenError> {
    if parsed.alg != "RS256" {
        return Err(IdTokenError::Algorithm(
            parsed.alg.chars().take(16).collect(),
        ));
    }
    if parsed.crit {
        return Err(IdTokenError::CriticalHeader);
    }
    parsed.kid.as_deref().ok_or(IdTokenError::MissingKid)
}

/// Verifies the RS256 signature (RSASSA-PKCS1-v1_5 with SHA-256, 2048–8192-bit keys).
pub fn verify_signature(parsed: &Parsed<'_>, key: &RsaKey) -> Result<(), IdTokenError> {
    RsaPublicKeyComponents {
        n: &key.n,
        e: &key.e,
    }
    .verify(
        &RSA_PKCS1_2048_8192_SHA256,
        parsed.signing_input.as_bytes(),
        &parsed.signature,
    )
    .map_err(|_| IdTokenError::BadSignature)
}

/// What the claims must say.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// This app's client id (`aud`).
    pub client_id: &'a str,
    /// The login base the issuer is built from.
    pub login_base: &'a str,
    /// The tenant id this proxy belongs to, when known; `None` accepts any `tid` (the
    /// issuer must still be that `tid`'s).
    pub tenant_id: Option<&'a str>,
    /// The nonce this sign-in sent.
    pub nonce: &'a str,
    /// Now.
    pub now: SystemTime,
    /// Allowed clock difference for `exp`, `nbf` and `iat`.
    pub skew: Duration,
}

/// Compares two strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn numeric(claims: &Value, name: &'static str) -> Result<Option<f64>, IdTokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(IdTokenError::MissingClaim(name)),
    }
}

fn string(claims: &Value, name: &'static str) -> Option<String> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Checks verified claims against `expected` and returns the ones the proxy uses.
pub fn check_claims(claims: &Value, expected: &Expected<'_>) -> Result<IdClaims, IdTokenError> {
    // aud: this app (a string, or an array holding it with azp naming this app)
    let aud_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == expected.client_id,
        Some(Value::Array(list)) => {
            list.iter().any(|a| a.as_str() == Some(expected.client_id))
                && (list.len() == 1
                    || claims.get("azp").and_then(Value::as_str) == Some(expected.client_id))
        }
        _ => false,
    };
    if !aud_ok {
        return Err(IdTokenError::Audience);
    }
    let tid = string(claims, "tid").ok_or(IdTokenError::MissingClaim("tid"))?;
    if claims.get("iss").and_then(Value::as_str) != Some(&issuer(expected.login_base, &tid)) {
        return Err(IdTokenError::Issuer);
    }
    if let Some(want) = expected.tenant_id {
        if !tid.eq_ignore_ascii_case(want) {
            return Err(IdTokenError::Tenant {
                expected: want.to_owned(),
                found: tid,
            });
        }
    }
    let now = expected
        .now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let skew = expected.skew.as_secs_f64();
    let exp = numeric(claims, "exp")?.ok_or(IdTokenError::MissingClaim("exp"))?;
    if now > exp + skew {
        return Err(IdTokenError::Expired);
    }
    for name in ["nbf", "iat"] {
        if numeric(claims, name)?.is_some_and(|t| t > now + skew) {
            return Err(IdTokenError::NotYetValid);
        }
    }
    let nonce_ok = claims
        .get("nonce")
        .and_then(Value::as_str)
        .is_some_and(|n| constant_time_eq(n.as_bytes(), expected.nonce.as_bytes()));
    if !nonce_ok || expected.nonce.is_empty() {
        return Err(IdTokenError::Nonce);
    }
    Ok(IdClaims {
        tenant_id: tid,
        object_id: string(claims, "oid").ok_or(IdTokenError::MissingClaim("oid"))?,
        preferred_username: string(claims, "preferred_username"),
        email: string(claims, "email"),
        name: string(claims, "name"),
    })
}

// -------------------------------------------------------------------------------------
// all of it

/// Validates id_tokens of one app registration against its tenant's JWKS.
#[derive(Debug)]
pub struct IdTokenValidator {
    jwks: JwksClient,
    client_id: String,
    login_base: String,
    skew: Duration,
}

impl IdTokenValidator {
    /// A validator for `client_id`'s id_tokens, keys from `jwks`, issuer built from
    /// `login_base`, `skew` allowed on times.
    pub fn new(
        jwks: JwksClient,
        client_id: impl Into<String>,
        login_base: impl Into<String>,
        skew: Duration,
    ) -> Self {
        Self {
            jwks,
            client_id: client_id.into(),
            login_base: login_base.into(),
            skew,
        }
    }

    /// The JWKS client.
    pub fn jwks(&self) -> &JwksClient {
        &self.jwks
    }

    /// Parses, checks the header, fetches the key, verifies the signature, then checks
    /// the claims: `nonce` must be `nonce`, `tid` must be `tenant_id` when given.
    pub async fn validate(
        &self,
        token: &Secret<String>,
        nonce: &str,
        tenant_id: Option<&str>,
    ) -> Result<IdClaims, IdTokenError> {
        let parsed = parse(token.expose())?;
        let kid = check_header(&parsed)?;
        let key = self.jwks.key(kid).await?;
        verify_signature(&parsed, &key)?;
        check_claims(
            &parsed.claims,
            &Expected {
                client_id: &self.client_id,
                login_base: &self.login_base,
                tenant_id,
                nonce,
                now: SystemTime::now(),
                skew: self.skew,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::rsa::PublicKeyComponents;
    use ring::signature::{self, RsaKeyPair};
    use serde_json::json;

    use super::*;

    /// The emulator's published test key (not a secret).
    const TEST_KEY: &[u8] = include_bytes!("../emulator/test-signing-key.pk8");
    const CLIENT: &str = "3a6f1c2e-8b4d-4c7a-9e1f-2d3c4b5a6978";
    const TID: &str = "7f4e2c1a-5b3d-4e8f-9a6b-0c1d2e3f4a5b";
    const LOGIN: &str = "https://login.example";

    fn key_pair() -> RsaKeyPair {
        RsaKeyPair::from_pkcs8(TEST_KEY)
            .or_else(|_| RsaKeyPair::from_der(TEST_KEY))
            .unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn public(pair: &RsaKeyPair) -> RsaKey {
        let c: PublicKeyComponents<Vec<u8>> = pair.public().into();
        RsaKey { n: c.n, e: c.e }
    }

    fn sign_with(pair: &RsaKeyPair, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0u8; pair.public().modulus_len()];
        pair.sign(
            &signature::RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    }

    fn good_claims() -> Value {
        let t = now();
        json!({
            "aud": CLIENT, "iss": format!("{LOGIN}/{TID}/v2.0"), "tid": TID,
            "iat": t, "nbf": t, "exp": t + 3600, "nonce": "n-1",
            "oid": "a1f0c9e2-0001-4c1d-8e2f-000000000001",
            "preferred_username": "Alice@Contoso.example", "email": "alice@contoso.example",
        })
    }

    fn expected(nonce: &str) -> Expected<'_> {
        Expected {
            client_id: CLIENT,
            login_base: LOGIN,
            tenant_id: Some(TID),
            nonce,
            now: SystemTime::now(),
            skew: Duration::from_secs(300),
        }
    }

    /// Runs the synchronous steps of [`IdTokenValidator::validate`] with `key`.
    fn validate(token: &str, key: &RsaKey, exp: &Expected<'_>) -> Result<IdClaims, IdTokenError> {
        let parsed = parse(token)?;
        check_header(&parsed)?;
        verify_signature(&parsed, key)?;
        check_claims(&parsed.claims, exp)
    }

    fn header() -> Value {
        json!({"typ": "JWT", "alg": "RS256", "kid": "k1"})
    }

    #[test]
    fn a_good_token_validates() {
        let pair = key_pair();
        let token = sign_with(&pair, &header(), &good_claims());
        let claims = validate(&token, &public(&pair), &expected("n-1"))
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(claims.tenant_id, TID);
        assert_eq!(claims.account(), "Alice@Contoso.example");
        assert!(claims.is_account("ALICE@contoso.example"));
        assert!(!claims.is_account("bob@contoso.example"));
        assert!(!claims.is_account(""));
    }

    #[test]
    fn wrong_nonce_is_refused() {
        let pair = key_pair();
        let token = sign_with(&pair, &header(), &good_claims());
        assert_eq!(
            validate(&token, &public(&pair), &expected("n-2")),
            Err(IdTokenError::Nonce)
        );
        let mut claims = good_claims();
        claims.as_object_mut().map(|m| m.remove("nonce"));
        let token = sign_with(&pair, &header(), &claims);
        assert_eq!(
            validate(&token, &public(&pair), &expected("n-1")),
            Err(IdTokenError::Nonce)
        );
        // an empty expected nonce never matches an empty claim
        let mut claims = good_claims();
        claims["nonce"] = json!("");
        let token = sign_with(&pair, &header(), &claims);
        assert_eq!(
            validate(&token, &public(&pair), &expected("")),
            Err(IdTokenError::Nonce)
        );
    }

    #[test]
    fn wrong_audience_is_refused() {
        let pair = key_pair();
        for aud in [
            json!("another-app"),
            json!(["another-app"]),
            json!([CLIENT, "another-app"]),
            json!(null),
        ] {
            let mut claims = good_claims();
            claims["aud"] = aud.clone();
            let token = sign_with(&pair, &header(), &claims);
            assert_eq!(
                validate(&token, &public(&pair), &expected("n-1")),
                Err(IdTokenError::Audience),
                "{aud}"
            );
        }
        let mut claims = good_claims();
        claims["aud"] = json!([CLIENT, "another-app"]);
        claims["azp"] = json!(CLIENT);
        let token = sign_with(&pair, &header(), &claims);
        assert!(validate(&token, &public(&pair), &expected("n-1")).is_ok());
    }

    #[test]
    fn bad_signature_is_refused() {
        let pair = key_pair();
        let token = sign_with(&pair, &header(), &good_claims());
        // claims swapped under the original signature
        let mut other = good_claims();
        other["preferred_username"] = json!("mallory@contoso.example");
        let forged_claims = URL_SAFE_NO_PAD.encode(other.to_string());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        assert_eq!(
            validate(&forged, &public(&pair), &expected("n-1")),
            Err(IdTokenError::BadSignature)
        );
        // a flipped signature bit
        let mut sig = URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap_or_else(|e| unreachable!("{e}"));
        sig[10] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(
            validate(&flipped, &public(&pair), &expected("n-1")),
            Err(IdTokenError::BadSignature)
        );
        // another key
        let mut wrong = public(&pair);
        if let Some(last) = wrong.n.last_mut() {
            *last ^= 2;
        }
        assert_eq!(
            validate(&token, &wrong, &expected("n-1")),
            Err(IdTokenError::BadSignature)
        );
    }

    #[test]
    fn only_rs256_with_a_kid() {
        let pair = key_pair();
        let claims = good_claims();
        for alg in ["none", "HS256", "RS512", "PS256", ""] {
            let h = json!({"alg": alg, "kid": "k1"});
            let token = sign_with(&pair, &h, &claims);
            assert!(
                matches!(
                    validate(&token, &public(&pair), &expected("n-1")),
                    Err(IdTokenError::Algorithm(_))
                ),
                "{alg}"
            );
        }
        let token = sign_with(&pair, &json!({"alg": "RS256"}), &claims);
        assert_eq!(
            validate(&token, &public(&pair), &expected("n-1")),
            Err(IdTokenError::MissingKid)
        );
        let token = sign_with(
            &pair,
            &json!({"alg": "RS256", "kid": "k1", "crit": ["b64"]}),
            &claims,
        );
        assert_eq!(
            validate(&token, &public(&pair), &expected("n-1")),
            Err(IdTokenError::CriticalHeader)
        );
        // an unsigned token
        let parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            parts[1]
        );
        assert!(matches!(
            validate(&none, &public(&pair), &expected("n-1")),
            Err(IdTokenError::Algorithm(_))
        ));
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(
                matches!(parse(junk), Err(IdTokenError::Malformed(_))),
                "{junk}"
            );
        }
    }

    #[test]
    fn issuer_and_tenant() {
        let pair = key_pair();
        let key = public(&pair);
        let mut claims = good_claims();
        claims["iss"] = json!(format!("https://evil.example/{TID}/v2.0"));
        let token = sign_with(&pair, &header(), &claims);
        assert_eq!(
            validate(&token, &key, &expected("n-1")),
            Err(IdTokenError::Issuer)
        );

        // a token of another tenant, consistent in itself
        let other = "00000000-1111-2222-3333-444444444444";
        let mut claims = good_claims();
        claims["tid"] = json!(other);
        claims["iss"] = json!(format!("{LOGIN}/{other}/v2.0"));
        let token = sign_with(&pair, &header(), &claims);
        assert!(matches!(
            validate(&token, &key, &expected("n-1")),
            Err(IdTokenError::Tenant { .. })
        ));
        // ... accepted while no tenant is known
        let mut open = expected("n-1");
        open.tenant_id = None;
        assert!(validate(&token, &key, &open).is_ok());

        // iss of one tenant, tid of another
        let mut claims = good_claims();
        claims["tid"] = json!(other);
        let token = sign_with(&pair, &header(), &claims);
        assert_eq!(validate(&token, &key, &open), Err(IdTokenError::Issuer));
    }

    #[test]
    fn times_with_skew() {
        let pair = key_pair();
        let key = public(&pair);
        let t = now();
        let with = |name: &str, v: u64| {
            let mut c = good_claims();
            c[name] = json!(v);
            sign_with(&pair, &header(), &c)
        };
        assert_eq!(
            validate(&with("exp", t - 400), &key, &expected("n-1")),
            Err(IdTokenError::Expired)
        );
        assert!(validate(&with("exp", t - 100), &key, &expected("n-1")).is_ok());
        assert_eq!(
            validate(&with("nbf", t + 400), &key, &expected("n-1")),
            Err(IdTokenError::NotYetValid)
        );
        assert!(validate(&with("nbf", t + 100), &key, &expected("n-1")).is_ok());
        assert_eq!(
            validate(&with("iat", t + 4000), &key, &expected("n-1")),
            Err(IdTokenError::NotYetValid)
        );
        let mut c = good_claims();
        c.as_object_mut().map(|m| m.remove("exp"));
        assert_eq!(
            validate(&sign_with(&pair, &header(), &c), &key, &expected("n-1")),
            Err(IdTokenError::MissingClaim("exp"))
        );
        let mut c = good_claims();
        c.as_object_mut().map(|m| m.remove("oid"));
        assert_eq!(
            validate(&sign_with(&pair, &header(), &c), &key, &expected("n-1")),
            Err(IdTokenError::MissingClaim("oid"))
        );
    }

    #[test]
    fn jwks_parses_rsa_signing_keys_only() {
        let pair = key_pair();
        let k = public(&pair);
        let doc = json!({"keys": [
            {"kty": "RSA", "use": "sig", "kid": "a", "n": URL_SAFE_NO_PAD.encode(&k.n), "e": URL_SAFE_NO_PAD.encode(&k.e), "alg": "RS256"},
            {"kty": "RSA", "use": "enc", "kid": "b", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "c", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "d", "n": "***", "e": "AQAB"},
            {"kty": "RSA", "kid": "e", "n": "AQAB", "e": "AQAB", "alg": "RS384"},
        ]});
        let jwks = Jwks::parse(doc.to_string().as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(jwks.keys.len(), 1);
        assert_eq!(jwks.keys.get("a"), Some(&k));
        assert!(Jwks::parse(b"{}").is_err());
        assert!(Jwks::parse(b"not json").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn key_cache_rate_limits_refetches() {
        let mut cache = KeyCache::new(Duration::from_secs(60), Duration::from_secs(3600));
        let t0 = Instant::now();
        assert!(cache.may_fetch(t0), "the first fetch is always allowed");
        assert!(cache.is_stale(t0));
        let mut jwks = Jwks::default();
        jwks.keys.insert(
            "k1".into(),
            RsaKey {
                n: vec![1],
                e: vec![3],
            },
        );
        cache.fetched(jwks, t0);
        assert!(cache.get("k1").is_some());
        assert!(cache.get("k2").is_none());
        assert!(!cache.may_fetch(t0 + Duration::from_secs(59)));
        assert!(cache.may_fetch(t0 + Duration::from_secs(60)));
        cache.fetch_failed(t0 + Duration::from_secs(60));
        assert!(cache.get("k1").is_some(), "a failed fetch keeps the keys");
        assert!(!cache.may_fetch(t0 + Duration::from_secs(61)));
        assert!(!cache.is_stale(t0 + Duration::from_secs(3599)));
        assert!(
            cache.is_stale(t0 + Duration::from_secs(3600)),
            "a failed fetch does not renew the keys' age"
        );
    }
}
