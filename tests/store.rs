//! The store on real SQLite files in a temporary directory: migrations (new file, old
//! file, newer file refused), settings, the extension directory and its CSV import,
//! tokens sealed at rest (no plaintext in the file, wrong key, moved ciphertext,
//! key file), compare-and-swap rotation under a race, single-use OAuth state with
//! expiry, desired presence, and everything surviving a reopen.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use presence_proxy::store::{
    AdminConsent, EncryptionKey, KeyError, KeySource, MIGRATIONS, NewOAuthState, NewToken,
    OAuthPurpose, Resolution, Rotation, SCHEMA_VERSION, Scope, Secret, Store, StoreError,
    StoreOptions, TokenKey, TokenKind, TokenRefresh, TokenStatus, Upsert,
};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tempfile::TempDir;

const ACCESS_201: &str = "eyJ0eXAiOiJKV1QiACCESS-TOKEN-FOR-201-plaintext";
const REFRESH_201: &str = "0.AAAA-REFRESH-TOKEN-FOR-201-plaintext";

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::from_bytes(&[byte; 32])
}

fn db(dir: &TempDir) -> PathBuf {
    dir.path().join("store.sqlite")
}

fn open(path: &Path) -> Store {
    Store::open(path, key(1)).unwrap()
}

/// A clock the test moves by hand.
#[derive(Clone)]
struct TestClock(Arc<AtomicI64>);

impl TestClock {
    fn new() -> Self {
        Self(Arc::new(AtomicI64::new(1_750_000_000_000)))
    }
    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
    fn options(&self) -> StoreOptions {
        let ms = self.0.clone();
        StoreOptions {
            clock: Some(Arc::new(move || {
                UNIX_EPOCH + Duration::from_millis(ms.load(Ordering::SeqCst) as u64)
            })),
            ..StoreOptions::default()
        }
    }
}

fn user_token(access: &str, refresh: &str) -> NewToken {
    NewToken {
        subject_upn: Some("Alice@Contoso.com".into()),
        graph_user_oid: Some("0b6f2c1e-aaaa-bbbb-cccc-000000000201".into()),
        scopes: vec!["Presence.ReadWrite".into(), "offline_access".into()],
        access_token: Secret::from(access),
        access_expires_at: SystemTime::now() + Duration::from_secs(3600),
        refresh_token: Some(Secret::from(refresh)),
    }
}

fn refresh(access: &str, refresh: &str) -> TokenRefresh {
    TokenRefresh {
        access_token: Secret::from(access),
        access_expires_at: SystemTime::now() + Duration::from_secs(3600),
        refresh_token: Some(Secret::from(refresh)),
        scopes: None,
    }
}

/// Every byte SQLite keeps for the store: the file and its write-ahead log.
fn raw_bytes(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if let Ok(more) = std::fs::read(PathBuf::from(wal)) {
        bytes.extend(more);
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn user_version(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

// ---------------------------------------------------------------- file and schema

#[test]
fn a_new_file_is_created_private_in_wal_mode_at_the_latest_version() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    let store = open(&path);
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.path(), path);
    #[cfg(unix)]
    {
        // The write-ahead log, which holds recent rows, is as private as the file.
        use std::os::unix::fs::PermissionsExt;
        store.set_tenant_id("contoso").unwrap();
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let mode = std::fs::metadata(&wal).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    drop(store);
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    let mode: String = Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
}

#[test]
fn a_version_1_file_is_upgraded_and_keeps_its_data() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    {
        // A file as the first release wrote it: migration 1 only.
        let conn = Connection::open(&path).unwrap();
        assert_eq!(MIGRATIONS[0].version, 1);
        conn.execute_batch(MIGRATIONS[0].sql).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO settings (key, value, updated_at) VALUES ('pbx_to_teams.enabled', 'true', 0)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO directory (extension, email, email_key, updated_at)
             VALUES ('201', 'Alice@Contoso.com', 'alice@contoso.com', 0)",
            [],
        )
        .unwrap();
    }
    assert_eq!(user_version(&path), 1);

    let store = open(&path);
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert!(store.pbx_to_teams_enabled().unwrap());
    let alice = store
        .extension_by_email("alice@contoso.com")
        .unwrap()
        .unwrap();
    assert_eq!(alice.extension, "201");
    assert_eq!(alice.email.as_deref(), Some("Alice@Contoso.com"));
    // The tables of the later migrations are there and work.
    store
        .put_token(&TokenKey::user("201"), &user_token(ACCESS_201, REFRESH_201))
        .unwrap();
    store
        .set_desired_presence("201", &json!({"availability": "Busy"}))
        .unwrap();
    let state = store
        .create_oauth_state(&NewOAuthState {
            purpose: OAuthPurpose::DomainSignIn,
            pkce_verifier: None,
            nonce: None,
            redirect_target: None,
            ttl: None,
        })
        .unwrap();
    store.take_oauth_state(&state).unwrap();
    drop(store);
    assert_eq!(user_version(&path), SCHEMA_VERSION);
}

#[test]
fn a_file_from_a_newer_version_is_refused_untouched() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE future (x INTEGER);")
            .unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path, key(1)).unwrap_err();
    match &err {
        StoreError::TooNew {
            path: p,
            found,
            supported,
        } => {
            assert_eq!(p, &path);
            assert_eq!(*found, SCHEMA_VERSION + 1);
            assert_eq!(*supported, SCHEMA_VERSION);
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
        "{message}"
    );
    assert!(
        message.contains(&format!("up to {SCHEMA_VERSION}")),
        "{message}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file was changed"
    );
    assert_eq!(user_version(&path), SCHEMA_VERSION + 1);
}

#[test]
fn a_file_that_is_not_a_database_is_an_open_error() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    std::fs::write(
        &path,
        b"this is not a SQLite database, not even close.......",
    )
    .unwrap();
    match Store::open(&path, key(1)) {
        Err(StoreError::Open { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected Open error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- settings

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Poll {
    interval_ms: u64,
    busy: Vec<String>,
}

#[test]
fn settings_round_trip_with_typed_helpers_and_defaults() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    let store = open(&path);

    assert!(!store.pbx_to_teams_enabled().unwrap());
    assert_eq!(store.scope().unwrap(), Scope::AllAccounts);
    assert_eq!(store.tenant_id().unwrap(), None);
    assert_eq!(store.domain_token_owner().unwrap(), None);
    assert!(store.admin_password_hash().unwrap().is_none());

    store.set_pbx_to_teams_enabled(true).unwrap();
    store
        .set_scope(&Scope::SelectedExtensions {
            extensions: vec!["202".into(), "201".into(), "202".into()],
        })
        .unwrap();
    store.set_tenant_id("  contoso-tenant-id ").unwrap();
    store.set_domain_token_owner("Admin@Contoso.com").unwrap();
    let consent = AdminConsent {
        tenant_id: "contoso-tenant-id".into(),
        granted_at: UNIX_EPOCH + Duration::from_secs(1_750_000_000),
    };
    store.set_admin_consent(&consent).unwrap();
    store
        .set_admin_password_hash(&Secret::from("$argon2id$v=19$m=19456,t=2,p=1$salt$hash"))
        .unwrap();
    let poll = Poll {
        interval_ms: 2000,
        busy: vec!["Busy".into(), "DoNotDisturb".into()],
    };
    store.set_setting("sync.poll", &poll).unwrap();

    assert!(
        store
            .set_scope(&Scope::SelectedExtensions {
                extensions: vec!["2 01".into()]
            })
            .is_err()
    );
    assert!(matches!(
        store.set_setting("", &1),
        Err(StoreError::Invalid { .. })
    ));

    drop(store);
    let store = open(&path);
    assert!(store.pbx_to_teams_enabled().unwrap());
    let scope = store.scope().unwrap();
    assert_eq!(
        scope,
        Scope::SelectedExtensions {
            extensions: vec!["201".into(), "202".into()]
        }
    );
    assert!(scope.includes("201") && !scope.includes("203"));
    assert_eq!(
        store.tenant_id().unwrap().as_deref(),
        Some("contoso-tenant-id")
    );
    assert_eq!(
        store.domain_token_owner().unwrap().as_deref(),
        Some("admin@contoso.com")
    );
    assert_eq!(store.admin_consent().unwrap(), Some(consent));
    let hash = store.admin_password_hash().unwrap().unwrap();
    assert!(hash.expose().starts_with("$argon2id$"));
    assert_eq!(format!("{hash:?}"), "[redacted]");
    assert_eq!(store.get_setting::<Poll>("sync.poll").unwrap(), Some(poll));
    assert_eq!(store.get_setting::<Poll>("missing").unwrap(), None);

    // A value of another type is reported, not guessed.
    store.set_setting("pbx_to_teams.enabled", "yes").unwrap();
    assert!(matches!(
        store.pbx_to_teams_enabled(),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(store.delete_setting("pbx_to_teams.enabled").unwrap());
    assert!(!store.delete_setting("pbx_to_teams.enabled").unwrap());
    assert!(!store.pbx_to_teams_enabled().unwrap());
}

// ---------------------------------------------------------------- directory

#[test]
fn directory_crud_and_case_insensitive_unique_email() {
    let dir = TempDir::new().unwrap();
    let store = open(&db(&dir));

    let alice = store
        .add_extension("201", Some("Alice@Contoso.com"))
        .unwrap();
    assert_eq!(alice.email.as_deref(), Some("Alice@Contoso.com"));
    assert_eq!(alice.graph_user_id, None);
    store.add_extension("202", Some("bob@contoso.com")).unwrap();
    store.add_extension("299", None).unwrap();

    assert!(matches!(
        store.add_extension("201", Some("x@contoso.com")),
        Err(StoreError::DuplicateExtension(e)) if e == "201"
    ));
    match store.add_extension("203", Some("ALICE@contoso.COM")) {
        Err(StoreError::EmailInUse { email, extension }) => {
            assert_eq!(email, "ALICE@contoso.COM");
            assert_eq!(extension, "201");
        }
        other => panic!("expected EmailInUse, got {other:?}"),
    }
    assert!(matches!(
        store.set_extension_email("202", Some("alice@CONTOSO.com")),
        Err(StoreError::EmailInUse { .. })
    ));
    assert!(matches!(
        store.add_extension("2 03", None),
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        store.add_extension("203", Some("not-an-email")),
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        store.set_extension_email("999", Some("z@contoso.com")),
        Err(StoreError::UnknownExtension(_))
    ));

    for probe in [
        "alice@contoso.com",
        "ALICE@CONTOSO.COM",
        " Alice@Contoso.com ",
    ] {
        assert_eq!(
            store
                .extension_by_email(probe)
                .unwrap()
                .map(|e| e.extension)
                .as_deref(),
            Some("201"),
            "{probe}"
        );
    }
    assert_eq!(store.extension_by_email("carol@contoso.com").unwrap(), None);

    store
        .set_resolution(
            "201",
            &Resolution::Resolved {
                graph_user_id: "oid-alice".into(),
                display_name: Some("Alice Example".into()),
            },
        )
        .unwrap();
    store
        .set_resolution(
            "202",
            &Resolution::Failed {
                error: "no Teams user with this email".into(),
            },
        )
        .unwrap();
    let found = store.extensions_by_graph_user_id("oid-alice").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].extension, "201");
    assert_eq!(found[0].display_name.as_deref(), Some("Alice Example"));
    let bob = store.extension("202").unwrap().unwrap();
    assert_eq!(
        bob.last_error.as_deref(),
        Some("no Teams user with this email")
    );
    assert!(matches!(
        store.set_resolution("999", &Resolution::Failed { error: "x".into() }),
        Err(StoreError::UnknownExtension(_))
    ));

    // Letter case only: same user, resolution kept.
    store
        .set_extension_email("201", Some("alice@contoso.com"))
        .unwrap();
    let alice = store.extension("201").unwrap().unwrap();
    assert_eq!(alice.email.as_deref(), Some("alice@contoso.com"));
    assert_eq!(alice.graph_user_id.as_deref(), Some("oid-alice"));
    // Another address: another user, resolution cleared.
    store
        .set_extension_email("201", Some("alice.new@contoso.com"))
        .unwrap();
    let alice = store.extension("201").unwrap().unwrap();
    assert_eq!(alice.graph_user_id, None);
    assert!(
        store
            .extensions_by_graph_user_id("oid-alice")
            .unwrap()
            .is_empty()
    );
    // The old address is free again.
    store
        .add_extension("203", Some("Alice@Contoso.com"))
        .unwrap();

    assert_eq!(
        store
            .upsert_extension("204", Some("dan@contoso.com"))
            .unwrap(),
        Upsert::Added
    );
    assert_eq!(
        store
            .upsert_extension("204", Some("dan@contoso.com"))
            .unwrap(),
        Upsert::Unchanged
    );
    assert_eq!(
        store
            .upsert_extension("204", Some("daniel@contoso.com"))
            .unwrap(),
        Upsert::Updated
    );

    let all: Vec<String> = store
        .list_extensions()
        .unwrap()
        .into_iter()
        .map(|e| e.extension)
        .collect();
    assert_eq!(all, ["201", "202", "203", "204", "299"]);
    assert!(store.delete_extension("299").unwrap());
    assert!(!store.delete_extension("299").unwrap());
    assert_eq!(store.extension("299").unwrap(), None);
}

#[test]
fn csv_import_of_a_good_file() {
    let dir = TempDir::new().unwrap();
    let store = open(&db(&dir));
    store
        .add_extension("201", Some("alice@contoso.com"))
        .unwrap();
    store.add_extension("202", Some("bob@contoso.com")).unwrap();
    store.add_extension("205", Some("eve@contoso.com")).unwrap();

    // BOM, CRLF, quoted fields (one with an escaped quote), a blank line, header in
    // other letter case; 201 and 202 swap addresses, 205 is unchanged.
    let csv = "\u{feff}Extension,EMAIL\r\n\
               201,bob@contoso.com\r\n\
               \"202\",\"alice@contoso.com\"\r\n\
               \r\n\
               203, \"carol@contoso.com\" \r\n\
               \"204\",\"o'brien@contoso.com\"\r\n\
               205,eve@contoso.com\r\n";
    let report = store.import_directory_csv(csv.as_bytes()).unwrap();
    assert_eq!((report.added, report.updated, report.unchanged), (2, 2, 1));

    let email = |ext: &str| store.extension(ext).unwrap().unwrap().email.unwrap();
    assert_eq!(email("201"), "bob@contoso.com");
    assert_eq!(email("202"), "alice@contoso.com");
    assert_eq!(email("203"), "carol@contoso.com");
    assert_eq!(email("204"), "o'brien@contoso.com");
    assert_eq!(email("205"), "eve@contoso.com");

    // Columns in the other order, LF endings, no trailing newline.
    let report = store
        .import_directory_csv(b"email,extension\nfrank@contoso.com,206")
        .unwrap();
    assert_eq!(report.added, 1);
    // Header only: nothing to do.
    assert_eq!(
        store
            .import_directory_csv(b"extension,email\n")
            .unwrap()
            .added,
        0
    );
}

#[test]
fn csv_import_with_bad_rows_reports_line_numbers_and_imports_nothing() {
    let dir = TempDir::new().unwrap();
    let store = open(&db(&dir));
    store
        .add_extension("201", Some("alice@contoso.com"))
        .unwrap();
    store.add_extension("209", Some("zed@contoso.com")).unwrap();
    let before = store.list_extensions().unwrap();

    let csv = "extension,email\n\
               210,new.one@contoso.com\n\
               2 11,x@contoso.com\n\
               212,not-an-email\n\
               \"multi\nline\",y@contoso.com\n\
               214,zed@contoso.com\n\
               210,dup.ext@contoso.com\n\
               215,NEW.ONE@contoso.com\n\
               216\n\
               217,ok@contoso.com,extra\n\
               218,ok2@contoso.com\n\
               219,\"unterminated@contoso.com\n";
    let err = store.import_directory_csv(csv.as_bytes()).unwrap_err();
    let StoreError::CsvRejected { errors } = &err else {
        panic!("expected CsvRejected, got {err:?}");
    };
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [3, 4, 5, 7, 8, 9, 10, 11, 13], "{errors:#?}");
    let message_of = |line: usize| {
        errors
            .iter()
            .find(|e| e.line == line)
            .unwrap()
            .message
            .clone()
    };
    assert!(message_of(3).contains("extension"), "{}", message_of(3));
    assert!(message_of(4).contains("email"), "{}", message_of(4));
    assert!(
        message_of(7).contains("already used by extension 209"),
        "{}",
        message_of(7)
    );
    assert!(
        message_of(8).contains("also on line 2"),
        "{}",
        message_of(8)
    );
    assert!(
        message_of(9).contains("also on line 2"),
        "{}",
        message_of(9)
    );
    assert!(message_of(10).contains("found 1"), "{}", message_of(10));
    assert!(message_of(11).contains("found 3"), "{}", message_of(11));
    assert!(message_of(13).contains("not closed"), "{}", message_of(13));
    let text = err.to_string();
    assert!(
        text.contains("nothing imported") && text.contains("line 7:"),
        "{text}"
    );

    assert_eq!(
        store.list_extensions().unwrap(),
        before,
        "a row was imported"
    );

    for (csv, line) in [
        (&b"ext,mail\n201,a@contoso.com\n"[..], 1),
        (&b""[..], 1),
        (
            &b"extension,email\n201,a@contoso.com\n202,\xff@contoso.com\n"[..],
            3,
        ),
    ] {
        match store.import_directory_csv(csv) {
            Err(StoreError::CsvRejected { errors }) => assert_eq!(errors[0].line, line),
            other => panic!("expected CsvRejected, got {other:?}"),
        }
    }
    assert_eq!(store.list_extensions().unwrap(), before);
}

// ---------------------------------------------------------------- tokens

#[test]
fn tokens_round_trip_and_list_without_secrets() {
    let dir = TempDir::new().unwrap();
    let store = open(&db(&dir));
    store
        .add_extension("201", Some("alice@contoso.com"))
        .unwrap();

    let user = TokenKey::user("201");
    assert_eq!(store.get_token(&user).unwrap().map(|t| t.info), None);
    let generation = store
        .put_token(&user, &user_token(ACCESS_201, REFRESH_201))
        .unwrap();
    assert_eq!(generation, 1);
    let record = store.get_token(&user).unwrap().unwrap();
    assert_eq!(record.access_token.expose(), ACCESS_201);
    assert_eq!(record.refresh_token.as_ref().unwrap().expose(), REFRESH_201);
    assert_eq!(record.info.key, user);
    assert_eq!(
        record.info.subject_upn.as_deref(),
        Some("alice@contoso.com")
    );
    assert_eq!(
        record.info.graph_user_oid.as_deref(),
        Some("0b6f2c1e-aaaa-bbbb-cccc-000000000201")
    );
    assert_eq!(record.info.scopes, ["Presence.ReadWrite", "offline_access"]);
    assert_eq!(record.info.status, TokenStatus::Valid);
    assert!(record.info.has_refresh_token);
    let debug = format!("{record:?}");
    assert!(
        !debug.contains(ACCESS_201) && !debug.contains(REFRESH_201),
        "{debug}"
    );
    assert!(debug.contains("[redacted]"));

    // The domain token (one per tenant) and an app-only token without refresh token.
    let domain = TokenKey::domain("contoso-tenant-id");
    let mut t = user_token("domain-access", "domain-refresh");
    t.scopes = vec!["Presence.Read.All".into(), "User.ReadBasic.All".into()];
    store.put_token(&domain, &t).unwrap();
    let app = TokenKey::app_only("contoso-tenant-id");
    store
        .put_token(
            &app,
            &NewToken {
                subject_upn: None,
                graph_user_oid: None,
                scopes: vec!["https://graph.microsoft.com/.default".into()],
                access_token: Secret::from("app-access"),
                access_expires_at: SystemTime::now() + Duration::from_secs(3599),
                refresh_token: None,
            },
        )
        .unwrap();
    let app_record = store.get_token(&app).unwrap().unwrap();
    assert!(app_record.refresh_token.is_none());
    assert!(!app_record.info.has_refresh_token);

    // Signing in again replaces the row and bumps its generation.
    assert_eq!(store.put_token(&domain, &t).unwrap(), 2);

    let kinds: Vec<(TokenKind, String)> = store
        .list_tokens()
        .unwrap()
        .into_iter()
        .map(|i| (i.key.kind, i.key.owner))
        .collect();
    assert_eq!(
        kinds,
        [
            (TokenKind::AppOnly, "contoso-tenant-id".to_owned()),
            (TokenKind::Domain, "contoso-tenant-id".to_owned()),
            (TokenKind::User, "201".to_owned()),
        ]
    );
    assert_eq!(store.token_info(&user).unwrap().unwrap().generation, 1);

    // A user token needs its extension in the directory.
    assert!(matches!(
        store.put_token(&TokenKey::user("777"), &user_token("a", "b")),
        Err(StoreError::UnknownExtension(e)) if e == "777"
    ));

    assert!(store.delete_token(&user).unwrap());
    assert!(!store.delete_token(&user).unwrap());
    assert!(store.get_token(&user).unwrap().is_none());
}

#[test]
fn the_file_never_holds_a_token_or_verifier_in_plaintext() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    let store = open(&path);
    store
        .add_extension("201", Some("alice@contoso.com"))
        .unwrap();
    store
        .put_token(&TokenKey::user("201"), &user_token(ACCESS_201, REFRESH_201))
        .unwrap();
    let rotated = "0.AAAA-ROTATED-REFRESH-TOKEN-plaintext";
    assert!(
        store
            .replace_refresh_token(
                &TokenKey::user("201"),
                1,
                &refresh("ROTATED-ACCESS-plaintext", rotated)
            )
            .unwrap()
            .replaced()
    );
    let verifier = "PKCE-VERIFIER-plaintext-0123456789-abcdefghijklmn";
    store
        .create_oauth_state(&NewOAuthState {
            purpose: OAuthPurpose::PairExtension {
                extension: "201".into(),
            },
            pkce_verifier: Some(Secret::from(verifier)),
            nonce: Some("nonce-1".into()),
            redirect_target: None,
            ttl: None,
        })
        .unwrap();

    let bytes = raw_bytes(&path);
    // The bytes read are the store's: non-secret columns are there in clear.
    assert!(contains(&bytes, "0b6f2c1e-aaaa-bbbb-cccc-000000000201"));
    assert!(contains(&bytes, "nonce-1"));
    for secret in [
        ACCESS_201,
        REFRESH_201,
        "ROTATED-ACCESS-plaintext",
        rotated,
        verifier,
    ] {
        assert!(!contains(&bytes, secret), "{secret} is in the file");
    }
    // Also after a checkpoint has moved everything into the main file.
    drop(store);
    let bytes = raw_bytes(&path);
    for secret in [ACCESS_201, REFRESH_201, rotated, verifier] {
        assert!(!contains(&bytes, secret), "{secret} is in the file");
    }
}

#[test]
fn a_wrong_key_is_a_typed_error_not_garbage() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    let store = Store::open(&path, key(1)).unwrap();
    store
        .add_extension("201", Some("alice@contoso.com"))
        .unwrap();
    store
        .put_token(&TokenKey::user("201"), &user_token(ACCESS_201, REFRESH_201))
        .unwrap();
    assert!(store.key_matches().unwrap());
    drop(store);

    let store = Store::open(&path, key(2)).unwrap();
    assert!(!store.key_matches().unwrap());
    let err = store.get_token(&TokenKey::user("201")).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey), "{err:?}");
    assert!(err.to_string().contains("key"), "{err}");
    // What needs no key still works.
    let info = store.token_info(&TokenKey::user("201")).unwrap().unwrap();
    assert_eq!(info.status, TokenStatus::Valid);
    drop(store);

    // The right key still reads it; the wrong one did not become the reference.
    let store = Store::open(&path, key(1)).unwrap();
    assert!(store.key_matches().unwrap());
    let record = store.get_token(&TokenKey::user("201")).unwrap().unwrap();
    assert_eq!(record.access_token.expose(), ACCESS_201);
}

#[test]
fn a_ciphertext_moved_to_another_row_or_field_does_not_decrypt() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    let store = open(&path);
    store
        .add_extension("201", Some("alice@contoso.com"))
        .unwrap();
    store.add_extension("202", Some("bob@contoso.com")).unwrap();
    store
        .put_token(&TokenKey::user("201"), &user_token(ACCESS_201, REFRESH_201))
        .unwrap();
    store
        .put_token(
            &TokenKey::user("202"),
            &user_token("access-202", "refresh-202"),
        )
        .unwrap();

    let raw = Connection::open(&path).unwrap();
    let blob = |column: &str, owner: &str| -> Vec<u8> {
        raw.query_row(
            &format!("SELECT {column} FROM tokens WHERE owner = ?1"),
            [owner],
            |r| r.get(0),
        )
        .unwrap()
    };
    let set = |column: &str, owner: &str, value: &[u8]| {
        raw.execute(
            &format!("UPDATE tokens SET {column} = ?2 WHERE owner = ?1"),
            rusqlite::params![owner, value],
        )
        .unwrap();
    };
    let access_202 = blob("access_token", "202");
    let refresh_202 = blob("refresh_token", "202");

    // 201's access token pasted into 202's row.
    set("access_token", "202", &blob("access_token", "201"));
    match store.get_token(&TokenKey::user("202")) {
        Err(StoreError::Decrypt { what }) => {
            assert!(
                what.contains("user/202") && what.contains("access_token"),
                "{what}"
            );
        }
        other => panic!("expected Decrypt, got {other:?}"),
    }
    // 202's own refresh token pasted into its access token field.
    set("access_token", "202", &refresh_202);
    assert!(matches!(
        store.get_token(&TokenKey::user("202")),
        Err(StoreError::Decrypt { .. })
    ));
    // Put back, it reads again.
    set("access_token", "202", &access_202);
    assert_eq!(
        store
            .get_token(&TokenKey::user("202"))
            .unwrap()
            .unwrap()
            .access_token
            .expose(),
        "access-202"
    );
    // One flipped bit in the refresh token.
    let mut flipped = refresh_202.clone();
    flipped[20] ^= 0x01;
    set("refresh_token", "202", &flipped);
    match store.get_token(&TokenKey::user("202")) {
        Err(StoreError::Decrypt { what }) => assert!(what.contains("refresh_token"), "{what}"),
        other => panic!("expected Decrypt, got {other:?}"),
    }
    // 201 is untouched throughout.
    assert_eq!(
        store
            .get_token(&TokenKey::user("201"))
            .unwrap()
            .unwrap()
            .access_token
            .expose(),
        ACCESS_201
    );
}

#[test]
fn the_key_file_is_created_private_reused_and_never_overwritten() {
    let dir = TempDir::new().unwrap();
    let key_path = dir.path().join("keys").join("store.key");
    let path = db(&dir);

    let store = Store::open(&path, EncryptionKey::load_or_create(&key_path).unwrap()).unwrap();
    store
        .add_extension("201", Some("alice@contoso.com"))
        .unwrap();
    store
        .put_token(&TokenKey::user("201"), &user_token(ACCESS_201, REFRESH_201))
        .unwrap();
    drop(store);

    let text = std::fs::read_to_string(&key_path).unwrap();
    assert_eq!(text.trim().len(), 44, "32 bytes in base64: {}", text.len());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    // Loaded again (through KeySource too), it is the same key.
    let again = KeySource::File(key_path.clone()).load().unwrap();
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), text);
    let store = Store::open(&path, again).unwrap();
    assert_eq!(
        store
            .get_token(&TokenKey::user("201"))
            .unwrap()
            .unwrap()
            .access_token
            .expose(),
        ACCESS_201
    );
    drop(store);

    // The same key given as base64 (what the environment variable holds).
    let store = Store::open(&path, EncryptionKey::from_base64(&text, "test").unwrap()).unwrap();
    assert!(store.key_matches().unwrap());
    drop(store);

    // A bad key file is an error and stays as it is.
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "too short\n").unwrap();
    assert!(matches!(
        EncryptionKey::load_or_create(&bad),
        Err(KeyError::Base64 { .. } | KeyError::Length { .. })
    ));
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), "too short\n");
    let short = dir.path().join("short.key");
    std::fs::write(&short, "AAAAAAAAAAAAAAAAAAAAAA==\n").unwrap();
    assert!(matches!(
        EncryptionKey::load_or_create(&short),
        Err(KeyError::Length { len: 16, .. })
    ));

    assert!(matches!(
        KeySource::Env("PRESENCE_PROXY_TEST_KEY_THAT_IS_NOT_SET".into()).load(),
        Err(KeyError::EnvMissing { .. })
    ));
}

#[test]
fn concurrent_rotation_from_the_same_generation_has_exactly_one_winner() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    let store = open(&path);
    store
        .add_extension("201", Some("alice@contoso.com"))
        .unwrap();
    let key = TokenKey::user("201");
    let mut generation = store
        .put_token(&key, &user_token(ACCESS_201, REFRESH_201))
        .unwrap();

    for round in 0..20 {
        // Half the racers share the first Store, half have their own connection to
        // the same file: the compare-and-swap must hold across connections too.
        const RACERS: usize = 8;
        let barrier = Arc::new(Barrier::new(RACERS));
        let handles: Vec<_> = (0..RACERS)
            .map(|i| {
                let store = if i % 2 == 0 {
                    store.clone()
                } else {
                    Store::open(&path, self::key(1)).unwrap()
                };
                let barrier = barrier.clone();
                let key = key.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let outcome = store
                        .replace_refresh_token(
                            &key,
                            generation,
                            &refresh(
                                &format!("access-{round}-{i}"),
                                &format!("refresh-{round}-{i}"),
                            ),
                        )
                        .unwrap();
                    (i, outcome)
                })
            })
            .collect();
        let outcomes: Vec<(usize, Rotation)> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<_> = outcomes.iter().filter(|(_, o)| o.replaced()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        let (winner, Rotation::Replaced { generation: new }) = *winners[0] else {
            unreachable!()
        };
        assert_eq!(new, generation + 1);
        for (_, o) in &outcomes {
            if !o.replaced() {
                assert_eq!(
                    *o,
                    Rotation::Stale {
                        current_generation: Some(new)
                    }
                );
            }
        }
        let record = store.get_token(&key).unwrap().unwrap();
        assert_eq!(record.info.generation, new);
        assert_eq!(
            record.refresh_token.unwrap().expose(),
            &format!("refresh-{round}-{winner}")
        );
        assert_eq!(
            record.access_token.expose(),
            &format!("access-{round}-{winner}")
        );
        generation = new;
    }
}

#[test]
fn needs_repairing_is_a_compare_and_swap_too() {
    let dir = TempDir::new().unwrap();
    let store = open(&db(&dir));
    store
        .add_extension("201", Some("alice@contoso.com"))
        .unwrap();
    let key = TokenKey::user("201");
    let g1 = store
        .put_token(&key, &user_token(ACCESS_201, REFRESH_201))
        .unwrap();
    // The winner of a refresh stores its tokens ...
    let Rotation::Replaced { generation: g2 } = store
        .replace_refresh_token(&key, g1, &refresh("a2", "r2"))
        .unwrap()
    else {
        panic!("first refresh must win")
    };
    // ... and the loser, which got invalid_grant for the spent token, cannot mark the
    // fresh one bad.
    assert_eq!(
        store
            .mark_needs_repairing(&key, g1, "invalid_grant")
            .unwrap(),
        Rotation::Stale {
            current_generation: Some(g2)
        }
    );
    assert_eq!(
        store.token_info(&key).unwrap().unwrap().status,
        TokenStatus::Valid
    );
    // From the current generation it does.
    assert!(
        store
            .mark_needs_repairing(&key, g2, "invalid_grant: AADSTS70008")
            .unwrap()
            .replaced()
    );
    let info = store.token_info(&key).unwrap().unwrap();
    assert_eq!(
        info.status,
        TokenStatus::NeedsRepairing {
            reason: "invalid_grant: AADSTS70008".into()
        }
    );
    // A rotation against a deleted row.
    store.delete_token(&key).unwrap();
    assert_eq!(
        store
            .replace_refresh_token(&key, g2 + 1, &refresh("a", "r"))
            .unwrap(),
        Rotation::Stale {
            current_generation: None
        }
    );
}

#[test]
fn a_changed_email_unpairs_and_a_deleted_extension_drops_its_token() {
    let dir = TempDir::new().unwrap();
    let store = open(&db(&dir));
    store
        .add_extension("201", Some("alice@contoso.com"))
        .unwrap();
    let key = TokenKey::user("201");
    store
        .put_token(&key, &user_token(ACCESS_201, REFRESH_201))
        .unwrap();

    store
        .set_extension_email("201", Some("ALICE@contoso.com"))
        .unwrap();
    assert_eq!(
        store.token_info(&key).unwrap().unwrap().status,
        TokenStatus::Valid
    );

    store
        .set_extension_email("201", Some("mallory@contoso.com"))
        .unwrap();
    let info = store.token_info(&key).unwrap().unwrap();
    assert!(matches!(info.status, TokenStatus::NeedsRepairing { .. }));
    assert_eq!(info.generation, 2);

    assert!(store.delete_extension("201").unwrap());
    assert!(
        store.token_info(&key).unwrap().is_none(),
        "foreign key cascade"
    );
}

// ---------------------------------------------------------------- OAuth state

#[test]
fn oauth_state_is_single_use_and_expires() {
    let dir = TempDir::new().unwrap();
    let clock = TestClock::new();
    let store = Store::open_with(db(&dir), key(1), clock.options()).unwrap();

    let pairing = NewOAuthState {
        purpose: OAuthPurpose::PairExtension {
            extension: "201".into(),
        },
        pkce_verifier: Some(Secret::from(
            "verifier-0123456789-0123456789-0123456789-xyz",
        )),
        nonce: Some("n-0S6_WzA2Mj".into()),
        redirect_target: Some("/user".into()),
        ttl: None,
    };
    let state = store.create_oauth_state(&pairing).unwrap();
    assert_eq!(state.len(), 43);
    assert!(
        state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{state}"
    );
    let other = store.create_oauth_state(&pairing).unwrap();
    assert_ne!(state, other);

    let taken = store.take_oauth_state(&state).unwrap();
    assert_eq!(taken.purpose, pairing.purpose);
    assert_eq!(
        taken.pkce_verifier.as_ref().unwrap().expose(),
        pairing.pkce_verifier.as_ref().unwrap().expose()
    );
    assert_eq!(taken.nonce, pairing.nonce);
    assert_eq!(taken.redirect_target.as_deref(), Some("/user"));
    assert_eq!(
        taken.expires_at.duration_since(taken.created_at).unwrap(),
        Duration::from_secs(600)
    );
    assert!(format!("{taken:?}").contains("[redacted]"));
    assert!(matches!(
        store.take_oauth_state(&state),
        Err(StoreError::OAuthStateUnknown)
    ));
    assert!(matches!(
        store.take_oauth_state("forged"),
        Err(StoreError::OAuthStateUnknown)
    ));
    assert!(matches!(
        store.take_oauth_state(""),
        Err(StoreError::OAuthStateUnknown)
    ));

    // Just before expiry it works; at expiry it is refused, and gone afterwards.
    let consent = NewOAuthState {
        purpose: OAuthPurpose::AdminConsent,
        pkce_verifier: None,
        nonce: None,
        redirect_target: None,
        ttl: None,
    };
    let early = store.create_oauth_state(&consent).unwrap();
    let late = store.create_oauth_state(&consent).unwrap();
    clock.advance(Duration::from_secs(599));
    assert!(store.take_oauth_state(&early).is_ok());
    clock.advance(Duration::from_secs(1));
    assert!(matches!(
        store.take_oauth_state(&late),
        Err(StoreError::OAuthStateExpired)
    ));
    assert!(matches!(
        store.take_oauth_state(&late),
        Err(StoreError::OAuthStateUnknown)
    ));
    // `other` expired too and was swept on the way.
    assert!(matches!(
        store.take_oauth_state(&other),
        Err(StoreError::OAuthStateUnknown)
    ));

    // A custom lifetime, and an explicit sweep.
    let short = NewOAuthState {
        ttl: Some(Duration::from_secs(30)),
        ..consent.clone()
    };
    store.create_oauth_state(&short).unwrap();
    store.create_oauth_state(&short).unwrap();
    store.create_oauth_state(&consent).unwrap();
    clock.advance(Duration::from_secs(31));
    assert_eq!(store.sweep_oauth_states().unwrap(), 2);
    assert_eq!(store.sweep_oauth_states().unwrap(), 0);
}

#[test]
fn pending_oauth_states_are_bounded() {
    let dir = TempDir::new().unwrap();
    let clock = TestClock::new();
    let options = StoreOptions {
        max_pending_oauth_states: 3,
        ..clock.options()
    };
    let store = Store::open_with(db(&dir), key(1), options).unwrap();
    let request = NewOAuthState {
        purpose: OAuthPurpose::DomainSignIn,
        pkce_verifier: None,
        nonce: None,
        redirect_target: None,
        ttl: None,
    };
    for _ in 0..3 {
        store.create_oauth_state(&request).unwrap();
    }
    assert!(matches!(
        store.create_oauth_state(&request),
        Err(StoreError::TooManyPendingOAuthStates(3))
    ));
    clock.advance(Duration::from_secs(601));
    store.create_oauth_state(&request).unwrap();
}

// ---------------------------------------------------------------- desired presence

#[test]
fn desired_presence_set_confirm_list() {
    let dir = TempDir::new().unwrap();
    let store = open(&db(&dir));
    assert_eq!(store.desired_presence("201").unwrap(), None);
    let busy = json!({"availability": "Busy", "activity": "InACall"});
    assert_eq!(store.set_desired_presence("201", &busy).unwrap(), 1);
    let p = store.desired_presence("201").unwrap().unwrap();
    assert_eq!(p.desired, busy);
    assert!(!p.converged());
    store.confirm_presence("201", 1, &busy).unwrap();
    let p = store.desired_presence("201").unwrap().unwrap();
    assert!(p.converged());
    assert_eq!(p.confirmed.as_ref(), Some(&busy));
    assert!(p.confirmed_at.is_some());

    assert_eq!(store.set_desired_presence("201", &json!(null)).unwrap(), 2);
    let p = store.desired_presence("201").unwrap().unwrap();
    assert!(!p.converged());
    assert_eq!(p.confirmed.as_ref(), Some(&busy));
    store
        .set_desired_presence("202", &json!({"availability": "DoNotDisturb"}))
        .unwrap();
    let all: Vec<String> = store
        .list_desired_presence()
        .unwrap()
        .into_iter()
        .map(|p| p.extension)
        .collect();
    assert_eq!(all, ["201", "202"]);
    assert!(matches!(
        store.confirm_presence("299", 1, &busy),
        Err(StoreError::Invalid { .. })
    ));
    assert!(store.delete_desired_presence("202").unwrap());
    assert_eq!(store.list_desired_presence().unwrap().len(), 1);
}

// ---------------------------------------------------------------- restarts, threads

#[test]
fn everything_survives_a_reopen() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    let key_path = dir.path().join("store.key");
    let state;
    {
        let store = Store::open(&path, EncryptionKey::load_or_create(&key_path).unwrap()).unwrap();
        store.set_pbx_to_teams_enabled(true).unwrap();
        store.set_tenant_id("contoso").unwrap();
        store
            .import_directory_csv(b"extension,email\n201,alice@contoso.com\n202,bob@contoso.com\n")
            .unwrap();
        store
            .set_resolution(
                "201",
                &Resolution::Resolved {
                    graph_user_id: "oid-alice".into(),
                    display_name: None,
                },
            )
            .unwrap();
        store
            .put_token(&TokenKey::user("201"), &user_token(ACCESS_201, REFRESH_201))
            .unwrap();
        assert!(
            store
                .replace_refresh_token(&TokenKey::user("201"), 1, &refresh("a2", "r2"))
                .unwrap()
                .replaced()
        );
        store
            .set_desired_presence("201", &json!({"availability": "Busy"}))
            .unwrap();
        state = store
            .create_oauth_state(&NewOAuthState {
                purpose: OAuthPurpose::PairExtension {
                    extension: "202".into(),
                },
                pkce_verifier: Some(Secret::from("v".repeat(43))),
                nonce: Some("nonce".into()),
                redirect_target: None,
                ttl: None,
            })
            .unwrap();
    }
    let store = Store::open(&path, EncryptionKey::load_or_create(&key_path).unwrap()).unwrap();
    assert!(store.pbx_to_teams_enabled().unwrap());
    assert_eq!(store.tenant_id().unwrap().as_deref(), Some("contoso"));
    assert_eq!(store.list_extensions().unwrap().len(), 2);
    assert_eq!(
        store.extensions_by_graph_user_id("oid-alice").unwrap()[0].extension,
        "201"
    );
    let token = store.get_token(&TokenKey::user("201")).unwrap().unwrap();
    assert_eq!(token.info.generation, 2);
    assert_eq!(token.refresh_token.unwrap().expose(), "r2");
    assert_eq!(store.desired_presence("201").unwrap().unwrap().revision, 1);
    let pending = store.take_oauth_state(&state).unwrap();
    assert_eq!(pending.pkce_verifier.unwrap().expose(), &"v".repeat(43));
}

#[test]
fn many_threads_share_one_store() {
    let dir = TempDir::new().unwrap();
    let store = open(&db(&dir));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let ext = format!("{t}{i:02}");
                    store
                        .add_extension(&ext, Some(&format!("user{ext}@contoso.com")))
                        .unwrap();
                    store.set_desired_presence(&ext, &json!({"n": i})).unwrap();
                    assert_eq!(
                        store
                            .extension_by_email(&format!("USER{ext}@contoso.com"))
                            .unwrap()
                            .unwrap()
                            .extension,
                        ext
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(store.list_extensions().unwrap().len(), 200);
    assert_eq!(store.list_desired_presence().unwrap().len(), 200);
}
