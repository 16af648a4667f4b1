//! [`GraphError`]: every way a Graph or token-endpoint call fails, typed. Parses the Graph
//! error body (graph.md §4.2) and the token-endpoint error body (graph.md §6.4). No variant
//! carries a token, code or secret: bodies of successful token responses never reach an
//! error, and error descriptions of the identity platform name trace ids only.

use std::time::Duration;

use serde::Deserialize;

/// A failed Graph or identity-platform call.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Graph answered with an error status (after the retries that apply to it).
    #[error("Graph answered {status}: {code}: {message}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// `error.code` of the body (`NotFound`, `Forbidden`, `InvalidAuthenticationToken`,
        /// ...), or `""` when the body is not the Graph error shape.
        code: String,
        /// `error.message` of the body.
        message: String,
        /// `error.innerError.request-id`, for Microsoft support.
        request_id: Option<String>,
    },
    /// The token endpoint refused (graph.md §6.4).
    #[error("token endpoint answered {status}: {error}{}", aadsts.map(|c| format!(" (AADSTS{c})")).unwrap_or_default())]
    Token {
        /// The HTTP status.
        status: u16,
        /// The OAuth `error` (`invalid_grant`, `invalid_client`, ...): act on this.
        error: String,
        /// The first of `error_codes`: the AADSTS number (70008, 65001, ...).
        aadsts: Option<u64>,
        /// The first line of `error_description` (no trace or correlation ids).
        description: String,
    },
    /// Still throttled (429) after the retries allowed.
    #[error("throttled by Graph (Retry-After {retry_after:?})")]
    Throttled {
        /// The last Retry-After, if Graph sent one.
        retry_after: Option<Duration>,
    },
    /// The request did not complete (connect, TLS, timeout, reset), after retries.
    #[error("transport: {0}")]
    Transport(String),
    /// A 2xx body could not be decoded.
    #[error("cannot decode the response: {0}")]
    Decode(String),
    /// The caller asked for something Graph would refuse (checked before sending).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The [`TokenSink`](super::TokenSink) could not persist a rotated refresh token. The
    /// new token is kept in memory, so calls go on working until the process stops.
    #[error("cannot persist the rotated refresh token: {0}")]
    Persist(String),
    /// The system random generator failed (PKCE verifier, state, jitter).
    #[error("random generator failed")]
    Random,
    /// Graph refused to create, renew or delete a presence subscription (graph.md §3), or
    /// the client refused before sending (an app-only credential).
    #[error("presence subscription refused ({kind}){}", status.map(|s| format!(": Graph answered {s}: {message}")).unwrap_or_default())]
    Subscription {
        /// Why.
        kind: SubscriptionRefusal,
        /// Graph's status, `None` when refused before sending.
        status: Option<u16>,
        /// `error.message` of Graph's body (never the clientState), or `""`.
        message: String,
    },
}

/// Why a presence subscription request was refused (graph.md §3.1, §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionRefusal {
    /// An app-only token: presence subscriptions take delegated Presence.Read.All only
    /// (graph.md §3.1, §7). Refused by the client, no request is sent.
    AppOnlyToken,
    /// 403: the delegated token lacks Presence.Read.All, or a subscription quota is
    /// exceeded (graph.md §3.1).
    Forbidden,
    /// 409: this app already has a presence subscription for this delegated user
    /// (graph.md §3.1, §8.8).
    AlreadyExists,
    /// 400 `ValidationError`: the notification endpoint failed the validation handshake
    /// (graph.md §3.2).
    ValidationFailed,
}

impl std::fmt::Display for SubscriptionRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SubscriptionRefusal::AppOnlyToken => "app-only token; a delegated one is needed",
            SubscriptionRefusal::Forbidden => "forbidden",
            SubscriptionRefusal::AlreadyExists => "one already exists for this app and user",
            SubscriptionRefusal::ValidationFailed => "notification endpoint failed validation",
        })
    }
}

impl GraphError {
    /// True for `invalid_grant` from the token endpoint: the refresh token is expired,
    /// revoked or already used (AADSTS70008, 700082, 50173, ...). The user (or admin)
    /// must sign in again: "needs re-pairing" (graph.md §6.5).
    pub fn needs_repairing(&self) -> bool {
        matches!(self, GraphError::Token { error, .. } if error == "invalid_grant")
    }

    /// The HTTP status of a Graph or token error, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            GraphError::Http { status, .. } | GraphError::Token { status, .. } => Some(*status),
            GraphError::Subscription { status, .. } => *status,
            GraphError::Throttled { .. } => Some(429),
            _ => None,
        }
    }

    /// True when Graph answered 404 (unknown user; clearPresence without a session).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    pub(crate) fn transport(err: reqwest::Error) -> Self {
        GraphError::Transport(err.without_url().to_string())
    }

    /// Builds [`GraphError::Http`] from a Graph error body (graph.md §4.2).
    pub(crate) fn from_graph_body(status: u16, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Envelope {
            error: Body,
        }
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
            #[serde(default, rename = "innerError")]
            inner_error: Option<Inner>,
        }
        #[derive(Deserialize)]
        struct Inner {
            #[serde(default, rename = "request-id")]
            request_id: Option<String>,
        }
        match serde_json::from_slice::<Envelope>(body) {
            Ok(e) => GraphError::Http {
                status,
                code: e.error.code,
                message: e.error.message,
                request_id: e.error.inner_error.and_then(|i| i.request_id),
            },
            Err(_) => GraphError::Http {
                status,
                code: String::new(),
                message: String::from_utf8_lossy(body).chars().take(200).collect(),
                request_id: None,
            },
        }
    }

    /// Builds [`GraphError::Token`] from a token-endpoint error body (graph.md §6.4).
    pub(crate) fn from_token_body(status: u16, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            error: String,
            #[serde(default)]
            error_description: String,
            #[serde(default)]
            error_codes: Vec<u64>,
        }
        match serde_json::from_slice::<Body>(body) {
            Ok(b) => GraphError::Token {
                status,
                error: b.error,
                aadsts: b.error_codes.first().copied(),
                description: b
                    .error_description
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            },
            Err(_) => GraphError::Token {
                status,
                error: String::new(),
                aadsts: None,
                description: format!("undecodable error body ({} bytes)", body.len()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_graph_error_body() {
        let body = br#"{"error":{"code":"NotFound","message":"gone","innerError":{"request-id":"r1","date":"x"}}}"#;
        match GraphError::from_graph_body(404, body) {
            GraphError::Http {
                status,
                code,
                message,
                request_id,
            } => {
                assert_eq!(
                    (status, code.as_str(), message.as_str()),
                    (404, "NotFound", "gone")
                );
                assert_eq!(request_id.as_deref(), Some("r1"));
            }
            other => unreachable!("{other:?}"),
        }
    }

    #[test]
    fn parses_token_error_body() {
        let body = br#"{"error":"invalid_grant","error_description":"AADSTS70008: expired.\r\nTrace ID: t","error_codes":[70008]}"#;
        let err = GraphError::from_token_body(400, body);
        assert!(err.needs_repairing());
        assert_eq!(
            err.to_string(),
            "token endpoint answered 400: invalid_grant (AADSTS70008)"
        );
        match err {
            GraphError::Token { description, .. } => {
                assert_eq!(description, "AADSTS70008: expired.")
            }
            other => unreachable!("{other:?}"),
        }
        assert!(
            !GraphError::from_token_body(401, br#"{"error":"invalid_client"}"#).needs_repairing()
        );
    }
}
