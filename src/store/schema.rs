//! The schema: ordered, named migrations, applied on open.
//!
//! The file's version is `PRAGMA user_version`: 0 for a new file, `n` once the first
//! `n` migrations are applied. Each migration runs in its own `BEGIN IMMEDIATE`
//! transaction together with the version bump, so a file is always exactly at one
//! version, and two processes opening the same old file do not both migrate it.
//! Migrations are append-only: a released step is never edited, a change is a new step.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::error::StoreError;

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version the file has once this step is applied (1, 2, ...).
    pub version: i64,
    /// A short name, shown in errors.
    pub name: &'static str,
    /// The SQL, run as one batch.
    pub sql: &'static str,
}

/// Every migration, in order. `MIGRATIONS[i].version == i + 1`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "settings_and_directory",
        sql: "
            CREATE TABLE settings (
                key        TEXT PRIMARY KEY NOT NULL,
                value      TEXT NOT NULL,            -- JSON
                updated_at INTEGER NOT NULL          -- unix milliseconds
            ) STRICT;
            CREATE TABLE directory (
                extension     TEXT PRIMARY KEY NOT NULL,
                email         TEXT,                  -- as entered
                email_key     TEXT UNIQUE,           -- lowercased, for matching
                graph_user_id TEXT,
                display_name  TEXT,
                last_error    TEXT,
                updated_at    INTEGER NOT NULL,
                CHECK ((email IS NULL) = (email_key IS NULL))
            ) STRICT;
            CREATE INDEX directory_graph_user_id ON directory (graph_user_id)
                WHERE graph_user_id IS NOT NULL;
        ",
    },
    Migration {
        version: 2,
        name: "encrypted_tokens",
        sql: "
            CREATE TABLE meta (
                key   TEXT PRIMARY KEY NOT NULL,
                value BLOB NOT NULL
            ) STRICT;
            CREATE TABLE tokens (
                kind              TEXT NOT NULL CHECK (kind IN ('app_only', 'domain', 'user')),
                owner             TEXT NOT NULL,     -- tenant id, or the extension for 'user'
                extension         TEXT REFERENCES directory (extension) ON DELETE CASCADE,
                subject_upn       TEXT,
                graph_user_oid    TEXT,
                scopes            TEXT NOT NULL,     -- space-separated
                access_token      BLOB NOT NULL,     -- sealed
                access_expires_at INTEGER NOT NULL,
                refresh_token     BLOB,              -- sealed
                status            TEXT NOT NULL CHECK (status IN ('valid', 'needs_repairing')),
                status_reason     TEXT,
                generation        INTEGER NOT NULL CHECK (generation > 0),
                updated_at        INTEGER NOT NULL,
                PRIMARY KEY (kind, owner),
                CHECK ((kind = 'user') = (extension IS NOT NULL)),
                CHECK (extension IS NULL OR extension = owner)
            ) STRICT;
        ",
    },
    Migration {
        version: 3,
        name: "oauth_pending_states",
        sql: "
            CREATE TABLE oauth_states (
                state           TEXT PRIMARY KEY NOT NULL,
                pkce_verifier   BLOB,                -- sealed
                nonce           TEXT,
                purpose         TEXT NOT NULL,       -- JSON
                redirect_target TEXT,
                created_at      INTEGER NOT NULL,
                expires_at      INTEGER NOT NULL
            ) STRICT;
            CREATE INDEX oauth_states_expires_at ON oauth_states (expires_at);
        ",
    },
    Migration {
        version: 4,
        name: "desired_presence",
        sql: "
            CREATE TABLE desired_presence (
                extension          TEXT PRIMARY KEY NOT NULL,
                desired            TEXT NOT NULL,    -- JSON
                revision           INTEGER NOT NULL CHECK (revision > 0),
                confirmed          TEXT,             -- JSON
                confirmed_revision INTEGER,
                updated_at         INTEGER NOT NULL,
                confirmed_at       INTEGER
            ) STRICT;
        ",
    },
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

pub(super) fn too_new(path: &Path, found: i64) -> StoreError {
    StoreError::TooNew {
        path: path.to_owned(),
        found,
        supported: SCHEMA_VERSION,
    }
}

/// Brings the file up to [`SCHEMA_VERSION`], one step per transaction.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(open)?;
        let current = user_version(&tx).map_err(open)?;
        if current > SCHEMA_VERSION {
            return Err(too_new(path, current));
        }
        if current == SCHEMA_VERSION {
            tx.commit().map_err(open)?;
            return Ok(());
        }
        let step = usize::try_from(current)
            .ok()
            .and_then(|i| MIGRATIONS.get(i))
            .ok_or_else(|| StoreError::Corrupt {
                what: format!("store {}", path.display()),
                detail: format!("schema version {current} is not a version this build knows"),
            })?;
        let failed = |source| StoreError::Migration {
            path: path.to_owned(),
            version: step.version,
            name: step.name,
            source,
        };
        tx.execute_batch(step.sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", step.version)
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        tracing::info!(
            path = %path.display(),
            version = step.version,
            name = step.name,
            "store schema migrated"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_and_names_unique() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.name);
            assert!(MIGRATIONS[..i].iter().all(|o| o.name != m.name));
        }
    }
}
