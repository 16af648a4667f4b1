//! The bridge to the store: [`StoreTokenSink`] persists each rotation of a delegated
//! credential with the store's compare-and-swap ([`Store::replace_refresh_token`]) and
//! marks the row "needs re-pairing" on `invalid_grant`; [`TokenSet::to_new_token`] and
//! [`TokenSet::from_record`] convert between a token response and a token row.

use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{GraphError, TokenSet, TokenSink};
use crate::store::{NewToken, Rotation, Store, TokenKey, TokenRecord, TokenRefresh};

/// A [`TokenSink`] writing to one token row of the store. It remembers the row's
/// generation, so a rotation that lost a race with another writer (another process on
/// the same file) is reported instead of overwriting the winner.
#[derive(Debug)]
pub struct StoreTokenSink {
    store: Store,
    key: TokenKey,
    generation: Mutex<u64>,
}

impl StoreTokenSink {
    /// For the row `key`, currently at `generation` (from [`TokenRecord::info`]).
    pub fn new(store: Store, key: TokenKey, generation: u64) -> Self {
        Self {
            store,
            key,
            generation: Mutex::new(generation),
        }
    }

    /// The row's generation after the last write through this sink.
    pub fn generation(&self) -> u64 {
        *self.generation.lock()
    }
}

impl TokenSink for StoreTokenSink {
    fn rotated(&self, tokens: &TokenSet) -> Result<(), String> {
        let mut generation = self.generation.lock();
        let refresh = TokenRefresh {
            access_token: tokens.access_token.clone(),
            access_expires_at: tokens.expires_at_wall,
            refresh_token: tokens.refresh_token.clone(),
            scopes: (!tokens.scopes.is_empty()).then(|| tokens.scopes.clone()),
        };
        match self
            .store
            .replace_refresh_token(&self.key, *generation, &refresh)
        {
            Ok(Rotation::Replaced { generation: g }) => {
                *generation = g;
                Ok(())
            }
            Ok(Rotation::Stale { current_generation }) => Err(format!(
                "{}: another writer changed the row first (generation {current_generation:?})",
                self.key
            )),
            Err(e) => Err(format!("{}: {e}", self.key)),
        }
    }

    fn needs_repairing(&self, error: &GraphError) {
        let mut generation = self.generation.lock();
        let reason = match error {
            GraphError::Token {
                aadsts: Some(code), ..
            } => format!("sign-in expired or revoked (AADSTS{code}): pair again"),
            _ => "sign-in expired or revoked: pair again".to_owned(),
        };
        match self
            .store
            .mark_needs_repairing(&self.key, *generation, &reason)
        {
            Ok(Rotation::Replaced { generation: g }) => *generation = g,
            Ok(Rotation::Stale { .. }) => {
                tracing::info!(key = %self.key, "token row changed meanwhile; not marked")
            }
            Err(e) => tracing::warn!(key = %self.key, error = %e, "cannot mark needs re-pairing"),
        }
    }
}

impl TokenSet {
    /// The row to store after a sign-in (`subject_upn` and `graph_user_oid` from the
    /// validated id_token) or a client-credentials grant.
    pub fn to_new_token(
        &self,
        subject_upn: Option<String>,
        graph_user_oid: Option<String>,
    ) -> NewToken {
        NewToken {
            subject_upn,
            graph_user_oid,
            scopes: self.scopes.clone(),
            access_token: self.access_token.clone(),
            access_expires_at: self.expires_at_wall,
            refresh_token: self.refresh_token.clone(),
        }
    }

    /// A token set from a stored row (after a restart): the expiry is carried over from
    /// the wall clock; an already expired access token is refreshed on first use.
    pub fn from_record(record: &TokenRecord) -> Self {
        let left = record
            .info
            .access_expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        TokenSet {
            access_token: record.access_token.clone(),
            refresh_token: record.refresh_token.clone(),
            id_token: None,
            scopes: record.info.scopes.clone(),
            // unknown original lifetime: assume the identity platform's usual hour, so
            // refresh_ahead is not capped below its configured value
            expires_in: left.max(Duration::from_secs(3600)),
            expires_at: Instant::now() + left,
            expires_at_wall: record.info.access_expires_at,
        }
    }
}
