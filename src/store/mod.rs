//! The store: one SQLite file with the proxy's durable state.
//!
//! - **Settings** ([`Store::get_setting`], [`Store::pbx_to_teams_enabled`], ...): key →
//!   JSON value, with typed helpers for the settings the Graph, sync and portal layers
//!   need.
//! - **Extension directory** ([`Store::add_extension`], [`Store::extension_by_email`],
//!   [`Store::import_directory_csv`], ...): extension ↔ email/UPN ↔ Graph user id.
//! - **Tokens**, encrypted at rest ([`Store::put_token`], [`Store::get_token`],
//!   [`Store::replace_refresh_token`], ...): app-only and domain tokens per tenant,
//!   per-user tokens per extension. Rotation is a compare-and-swap on the row's
//!   generation.
//! - **Pending OAuth requests** ([`Store::create_oauth_state`],
//!   [`Store::take_oauth_state`]): `state` → PKCE verifier, nonce, purpose; single use,
//!   with expiry.
//! - **Desired presence** per extension ([`Store::set_desired_presence`], ...), for the
//!   sync engine.
//!
//! # File
//!
//! SQLite (rusqlite, bundled), WAL journal, `foreign_keys` on, a busy timeout (5 s by
//! default), `synchronous = NORMAL` except for token writes, which run with
//! `synchronous = FULL`: a rotated refresh token is the only copy of a credential the
//! identity platform has already invalidated the old one of, so it must survive a
//! power cut; everything else may lose its last fraction of a second. The schema
//! version is `PRAGMA user_version`, and [`MIGRATIONS`] are applied on open; a file
//! from a newer build is refused ([`StoreError::TooNew`]) without being changed. A new
//! file is created with mode 0600.
//!
//! # Secrets
//!
//! Access and refresh tokens and PKCE verifiers are sealed with AES-256-GCM under an
//! [`EncryptionKey`] (from a file, created with 0600 when missing, or an environment
//! variable), a random nonce per value, and the value's identity as associated data.
//! A wrong key is reported as [`StoreError::WrongKey`] (a sealed check value in the
//! file tells it apart from a tampered or moved ciphertext, [`StoreError::Decrypt`]).
//! Secrets come back as [`Secret`], whose `Debug` is `[redacted]`.
//!
//! # Concurrency: one connection behind a mutex
//!
//! [`Store`] is a cheap `Clone` (an `Arc`) around a `parking_lot::Mutex<Connection>`.
//! Every method does its work synchronously under the lock and returns; none holds the
//! lock across an `.await` (they are not `async`). This was chosen over a dedicated
//! thread with a channel because every operation here is a handful of indexed
//! single-row statements on a local file: a lookup or a `synchronous = NORMAL` write in
//! WAL mode takes microseconds, far less than a channel round trip and a task wake-up
//! would add, and SQLite serialises writers anyway. So:
//!
//! - lookups, settings, directory edits, OAuth state and desired-presence writes may
//!   be called directly from async tasks;
//! - token writes (one `fsync`, around a millisecond) and CSV imports (one transaction
//!   over the whole file) should be called from `tokio::task::spawn_blocking` when on
//!   the runtime.
//!
//! Correctness does not rest on the mutex alone: each multi-statement operation is one
//! `BEGIN IMMEDIATE` transaction, and token rotation is a compare-and-swap on the
//! row's generation, so it stays right with several `Store`s (or processes) on one
//! file.

mod crypto;
mod directory;
mod error;
mod oauth;
mod presence;
mod schema;
mod secret;
mod settings;
mod tokens;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use ring::rand::SystemRandom;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

pub use crypto::{EncryptionKey, KEY_ENV, KEY_LEN, KeySource, random_url_safe};
pub use directory::{DirectoryEntry, ImportReport, Resolution, Upsert};
pub use error::{CsvRowError, KeyError, StoreError};
pub use oauth::{NewOAuthState, OAuthPurpose, OAuthState};
pub use presence::DesiredPresence;
pub use schema::{MIGRATIONS, Migration, SCHEMA_VERSION};
pub use secret::Secret;
pub use settings::{AdminConsent, Scope, keys};
pub use tokens::{
    NewToken, Rotation, TokenInfo, TokenKey, TokenKind, TokenRecord, TokenRefresh, TokenStatus,
};

/// The clock the store reads for `updated_at` and expiry. Tests pass their own.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Tunables for [`Store::open_with`].
#[derive(Clone)]
pub struct StoreOptions {
    /// How long a statement waits for another connection's lock before failing.
    pub busy_timeout: Duration,
    /// Lifetime of a pending OAuth request when [`NewOAuthState::ttl`] is not set.
    pub oauth_state_ttl: Duration,
    /// At most this many OAuth requests pending at once (after sweeping expired ones).
    pub max_pending_oauth_states: usize,
    /// The clock; `None` is the system clock.
    pub clock: Option<Clock>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            oauth_state_ttl: Duration::from_secs(10 * 60),
            max_pending_oauth_states: 10_000,
            clock: None,
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("busy_timeout", &self.busy_timeout)
            .field("oauth_state_ttl", &self.oauth_state_ttl)
            .field("max_pending_oauth_states", &self.max_pending_oauth_states)
            .field("clock", &self.clock.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// The store. Clone it freely; clones share one connection.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    path: PathBuf,
    key: EncryptionKey,
    rng: SystemRandom,
    clock: Clock,
    oauth_state_ttl: Duration,
    max_pending_oauth_states: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

const KEY_CHECK_AAD: &str = "presence-proxy store key-check v1";
const KEY_CHECK_PLAINTEXT: &[u8] = b"presence-proxy store key check";

impl Store {
    /// Opens (creating if needed) the store at `path` with default options, and
    /// migrates it to the current schema.
    pub fn open(path: impl AsRef<Path>, key: EncryptionKey) -> Result<Self, StoreError> {
        Self::open_with(path, key, StoreOptions::default())
    }

    /// Opens (creating if needed) the store at `path` and migrates it.
    pub fn open_with(
        path: impl AsRef<Path>,
        key: EncryptionKey,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let existed = path.exists();
        let mut conn = Connection::open(&path).map_err(open_err)?;
        if !existed {
            restrict_permissions(&path);
        }
        conn.busy_timeout(options.busy_timeout).map_err(open_err)?;
        // Refuse a newer file before changing anything in it (journal mode included).
        // This read also fails early on a file that is not a database.
        let found = schema::user_version(&conn).map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(schema::too_new(&path, found));
        }
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), %mode, "store is not in WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        schema::migrate(&mut conn, &path)?;
        let store = Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                path,
                key,
                rng: SystemRandom::new(),
                clock: options.clock.unwrap_or_else(|| Arc::new(SystemTime::now)),
                oauth_state_ttl: options.oauth_state_ttl,
                max_pending_oauth_states: options.max_pending_oauth_states,
            }),
        };
        store.ensure_key_check()?;
        Ok(store)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The schema version of the open file (always [`SCHEMA_VERSION`] after open).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(schema::user_version(&self.inner.conn.lock())?)
    }

    /// Whether the key this store was opened with is the one its secrets were written
    /// with. `true` for a store that has never held a secret.
    pub fn key_matches(&self) -> Result<bool, StoreError> {
        let check = self.read(|conn| {
            Ok(conn
                .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
                    r.get::<_, Vec<u8>>(0)
                })
                .optional()?)
        })?;
        Ok(match check {
            Some(sealed) => self.inner.key.open(KEY_CHECK_AAD, &sealed).is_some(),
            None => true,
        })
    }

    /// Writes the key check value on first use: only into a store with no sealed
    /// secret yet, so a wrong key can never become the reference.
    fn ensure_key_check(&self) -> Result<(), StoreError> {
        let sealed = self
            .inner
            .key
            .seal(&self.inner.rng, KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT)?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO meta (key, value)
                 SELECT 'key_check', ?1
                 WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = 'key_check')
                   AND NOT EXISTS (SELECT 1 FROM tokens)
                   AND NOT EXISTS (SELECT 1 FROM oauth_states WHERE pkce_verifier IS NOT NULL)",
                params![sealed],
            )?;
            Ok(())
        })
    }

    /// Decrypts `sealed` bound to `aad`; `what` names it in errors.
    fn open_secret(
        &self,
        aad: &str,
        sealed: &[u8],
        what: &str,
    ) -> Result<Secret<String>, StoreError> {
        match self.inner.key.open(aad, sealed) {
            Some(plain) => {
                String::from_utf8(plain)
                    .map(Secret::new)
                    .map_err(|_| StoreError::Corrupt {
                        what: what.to_owned(),
                        detail: "decrypted value is not UTF-8".to_owned(),
                    })
            }
            None if !self.key_matches()? => Err(StoreError::WrongKey),
            None => Err(StoreError::Decrypt {
                what: what.to_owned(),
            }),
        }
    }

    fn seal(&self, aad: &str, plaintext: &str) -> Result<Vec<u8>, StoreError> {
        self.inner
            .key
            .seal(&self.inner.rng, aad, plaintext.as_bytes())
    }

    fn now(&self) -> SystemTime {
        (self.inner.clock)()
    }

    /// Runs read-only work on the connection.
    fn read<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        f(&self.inner.conn.lock())
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed when `f` returns `Ok`.
    fn write<R>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut conn = self.inner.conn.lock();
        transact(&mut conn, f)
    }

    /// Like [`Store::write`], but with `synchronous = FULL`: the commit is on disk
    /// when this returns.
    fn write_durable<R>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut conn = self.inner.conn.lock();
        conn.pragma_update(None, "synchronous", "FULL")?;
        let result = transact(&mut conn, f);
        let restored = conn.pragma_update(None, "synchronous", "NORMAL");
        let value = result?;
        restored?;
        Ok(value)
    }
}

fn transact<R>(
    conn: &mut Connection,
    f: impl FnOnce(&Transaction<'_>) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = f(&tx)?;
    tx.commit()?;
    Ok(value)
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot make the new store file private");
    }
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) {}

/// Unix milliseconds, as stored (saturating; times before 1970 are negative).
fn to_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |m| -m),
    }
}

fn from_millis(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(d).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(d).unwrap_or(UNIX_EPOCH)
    }
}

fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        detail: detail.into(),
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trip() {
        for ms in [0, 1, 1_700_000_000_123, -5_000] {
            assert_eq!(to_millis(from_millis(ms)), ms);
        }
    }
}
