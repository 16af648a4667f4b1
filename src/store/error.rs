//! The store's errors.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// Why a store operation failed.
///
/// No variant carries a token, a PKCE verifier, an OAuth `state` or a key: their
/// `Display` and `Debug` are safe to log.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The file could not be opened or set up as a SQLite database (missing directory,
    /// no permission, not a database, locked past the busy timeout).
    #[error("cannot open store {path}: {source}")]
    Open {
        /// The store file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The file was written by a newer presence-proxy: its schema version is beyond
    /// the newest this build knows. The file is left untouched.
    #[error(
        "store {path} has schema version {found}, but this build of presence-proxy knows versions up to {supported}; \
         run the newer presence-proxy that wrote it, or point the store at another file"
    )]
    TooNew {
        /// The store file.
        path: PathBuf,
        /// The version in the file (`PRAGMA user_version`).
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A migration step failed; the file stays at the version before that step.
    #[error("store {path}: migration {version} ({name}) failed: {source}")]
    Migration {
        /// The store file.
        path: PathBuf,
        /// The version the step would have produced.
        version: i64,
        /// The step's name.
        name: &'static str,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("store query failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Data in the file is not what this build wrote (a bad enum value, bad JSON,
    /// a negative generation, ...).
    #[error("store holds unexpected data in {what}: {detail}")]
    Corrupt {
        /// Which table, row or setting.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The encryption key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The encryption key is not the one this store's secrets were written with.
    #[error(
        "the store's encryption key does not match the one its tokens were written with \
         (was the key file or environment variable replaced?); the tokens cannot be read"
    )]
    WrongKey,
    /// A ciphertext does not decrypt with this key for this row although the key is the
    /// right one: it was altered, or copied from another row.
    #[error("{what} could not be decrypted: the ciphertext was altered or belongs to another row")]
    Decrypt {
        /// The row and field, e.g. `token user/201 refresh_token`.
        what: String,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A value given to the store is not acceptable (a malformed extension or email,
    /// an empty setting key, ...).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// What was given.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// The extension is already in the directory.
    #[error("extension {0} is already in the directory")]
    DuplicateExtension(String),
    /// The extension is not in the directory.
    #[error("extension {0} is not in the directory")]
    UnknownExtension(String),
    /// Another extension already has this email/UPN.
    #[error("email {email} is already used by extension {extension}")]
    EmailInUse {
        /// The email, as given.
        email: String,
        /// The extension that has it.
        extension: String,
    },
    /// A CSV import was refused as a whole; nothing was imported.
    #[error("CSV import refused, nothing imported: {}", CsvErrors(.errors))]
    CsvRejected {
        /// Every bad row, in file order.
        errors: Vec<CsvRowError>,
    },
    /// No pending OAuth request has this `state` (never issued, already used, or swept
    /// after expiry).
    #[error("unknown or already used OAuth state")]
    OAuthStateUnknown,
    /// The pending OAuth request with this `state` has expired; it has been removed.
    #[error("the OAuth request expired; start again")]
    OAuthStateExpired,
    /// Too many OAuth requests are pending at once (the start endpoints are being
    /// hammered); expired ones are swept first.
    #[error("too many pending OAuth requests ({0}); try again later")]
    TooManyPendingOAuthStates(usize),
}

/// One bad row of a CSV import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRowError {
    /// The 1-based line of the file where the row starts (the header is line 1).
    pub line: usize,
    /// What is wrong with the row.
    pub message: String,
}

impl fmt::Display for CsvRowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

struct CsvErrors<'a>(&'a [CsvRowError]);

impl fmt::Display for CsvErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} bad row{}", if n == 1 { "" } else { "s" })?;
        for (i, e) in self.0.iter().enumerate() {
            f.write_str(if i == 0 { " (" } else { "; " })?;
            write!(f, "{e}")?;
        }
        if n > 0 {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Why the encryption key could not be loaded or created.
#[derive(Debug, Error)]
pub enum KeyError {
    /// Reading or creating the key file failed.
    #[error("store key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key's text is not valid base64.
    #[error(
        "store key from {origin} is not valid base64 (expected 32 random bytes, base64-encoded)"
    )]
    Base64 {
        /// The file path or environment variable it came from.
        origin: String,
    },
    /// The key has the wrong length.
    #[error("store key from {origin} is {len} bytes; it must be exactly 32")]
    Length {
        /// The file path or environment variable it came from.
        origin: String,
        /// How many bytes it has.
        len: usize,
    },
    /// The environment variable is not set (or not valid Unicode).
    #[error("environment variable {var} with the store key is not set")]
    EnvMissing {
        /// The variable's name.
        var: String,
    },
    /// The system random number generator failed while generating a key.
    #[error("the system random number generator failed while generating the store key")]
    Random,
}
