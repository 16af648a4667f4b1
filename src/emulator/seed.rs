//! What the emulator is seeded with: one tenant, one app registration and the tenant's
//! users, from a small TOML file or the built-in demo tenant `contoso`.
//!
//! ```toml
//! [tenant]
//! id = "7f4e2c1a-5b3d-4e8f-9a6b-0c1d2e3f4a5b"
//! domain = "contoso.example"
//!
//! [app]
//! client_id = "3a6f1c2e-8b4d-4c7a-9e1f-2d3c4b5a6978"
//! client_secret = "emulator-secret"
//! redirect_uris = ["http://127.0.0.1:8080/oauth/callback"]
//! application_permissions = ["Presence.ReadWrite.All", "User.Read.All"]
//! admin_consent = false
//!
//! [[users]]
//! id = "a1f0c9e2-1111-4c1d-8e2f-000000000001"
//! user_principal_name = "alice@contoso.example"
//! mail = "alice@contoso.example"
//! display_name = "Alice Wong"
//! ```

use std::path::Path;

use serde::Deserialize;

use super::EmulatorError;

/// The tenant.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantSeed {
    /// The tenant id (GUID), the `tid` claim.
    pub id: String,
    /// The verified domain; `/{domain}/...` works like `/{id}/...`.
    pub domain: String,
}

/// The one app registration (a confidential web app).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppSeed {
    /// The application (client) id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
    /// Registered redirect URIs; requests must match one exactly (graph.md §6.1).
    pub redirect_uris: Vec<String>,
    /// Application permissions (app roles) an admin consents to; they appear in the
    /// `roles` claim of client-credentials tokens once consent is granted.
    #[serde(default = "default_application_permissions")]
    pub application_permissions: Vec<String>,
    /// Whether the tenant's admin has already granted consent.
    #[serde(default)]
    pub admin_consent: bool,
}

/// One user of the tenant.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserSeed {
    /// The object id (GUID): Graph's `id`, the id_token's `oid`.
    pub id: String,
    /// The UPN.
    pub user_principal_name: String,
    /// The mail address (may differ from the UPN).
    pub mail: String,
    /// The display name.
    pub display_name: String,
}

/// Everything the emulator starts with.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// The tenant.
    pub tenant: TenantSeed,
    /// The app registration.
    pub app: AppSeed,
    /// The users.
    #[serde(default)]
    pub users: Vec<UserSeed>,
}

fn default_application_permissions() -> Vec<String> {
    vec!["Presence.ReadWrite.All".into(), "User.Read.All".into()]
}

/// The demo tenant's id.
pub const CONTOSO_TENANT_ID: &str = "7f4e2c1a-5b3d-4e8f-9a6b-0c1d2e3f4a5b";
/// The demo app's client id.
pub const CONTOSO_CLIENT_ID: &str = "3a6f1c2e-8b4d-4c7a-9e1f-2d3c4b5a6978";
/// The demo app's client secret (a test value, printed by `graph-emulator`).
pub const CONTOSO_CLIENT_SECRET: &str = "emulator-secret";

impl Default for Seed {
    /// The demo tenant `contoso` (`contoso.example`) with alice, bob, carol and dave.
    fn default() -> Self {
        let user = |n: u32, name: &str, display: &str| UserSeed {
            id: format!("a1f0c9e2-{n:04}-4c1d-8e2f-{n:012}"),
            user_principal_name: format!("{name}@contoso.example"),
            mail: format!("{name}@contoso.example"),
            display_name: display.into(),
        };
        Seed {
            tenant: TenantSeed {
                id: CONTOSO_TENANT_ID.into(),
                domain: "contoso.example".into(),
            },
            app: AppSeed {
                client_id: CONTOSO_CLIENT_ID.into(),
                client_secret: CONTOSO_CLIENT_SECRET.into(),
                redirect_uris: vec![
                    "http://127.0.0.1:8080/oauth/callback".into(),
                    "http://localhost:8080/oauth/callback".into(),
                ],
                application_permissions: default_application_permissions(),
                admin_consent: false,
            },
            users: vec![
                user(1, "alice", "Alice Wong"),
                user(2, "bob", "Bob Martin"),
                user(3, "carol", "Carol Diaz"),
                user(4, "dave", "Dave Okafor"),
            ],
        }
    }
}

impl Seed {
    /// The demo tenant with `count` users in all (at least its four): alice, bob, carol,
    /// dave, then generated ones, `user{n}@contoso.example` with GUID-shaped ids
    /// `b2c0ffee-…-{n:012}`. For load tests and benchmarks (10,000 users and more).
    pub fn contoso_with_users(count: usize) -> Self {
        let mut seed = Seed::default();
        let have = seed.users.len();
        seed.users.extend((have..count).map(|n| UserSeed {
            id: format!("b2c0ffee-{:04x}-4c1d-8e2f-{n:012}", n / 10_000),
            user_principal_name: format!("user{n}@contoso.example"),
            mail: format!("user{n}@contoso.example"),
            display_name: format!("User {n}"),
        }));
        seed
    }

    /// Reads a seed file.
    pub fn load(path: &Path) -> Result<Self, EmulatorError> {
        let text = std::fs::read_to_string(path).map_err(|e| EmulatorError::Seed {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text).map_err(|message| EmulatorError::Seed {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses seed TOML.
    pub fn parse(text: &str) -> Result<Self, String> {
        let seed: Seed = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut ids = std::collections::HashSet::new();
        for user in &seed.users {
            if !ids.insert(user.id.to_ascii_lowercase()) {
                return Err(format!("duplicate user id {}", user.id));
            }
        }
        Ok(seed)
    }

    /// A user by object id or UPN (case-insensitive).
    pub fn user(&self, id_or_upn: &str) -> Option<&UserSeed> {
        self.users.iter().find(|u| {
            u.id.eq_ignore_ascii_case(id_or_upn)
                || u.user_principal_name.eq_ignore_ascii_case(id_or_upn)
        })
    }

    /// A user by object id only (presence endpoints take ids, graph.md §2.1).
    pub fn user_by_id(&self, id: &str) -> Option<&UserSeed> {
        self.users.iter().find(|u| u.id.eq_ignore_ascii_case(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let seed = Seed::parse(
            r#"
            [tenant]
            id = "t"
            domain = "d.example"
            [app]
            client_id = "c"
            client_secret = "s"
            redirect_uris = ["http://x/cb"]
            [[users]]
            id = "u1"
            user_principal_name = "a@d.example"
            mail = "a@d.example"
            display_name = "A"
            "#,
        );
        let seed = seed.unwrap_or_default();
        assert_eq!(seed.tenant.id, "t");
        assert_eq!(seed.app.application_permissions.len(), 2);
        assert!(seed.user("A@D.example").is_some());
        assert!(Seed::parse("[tenant]\nid='t'\ndomain='d'\nbogus=1").is_err());
    }

    #[test]
    fn many_users() {
        let seed = Seed::contoso_with_users(10_000);
        assert_eq!(seed.users.len(), 10_000);
        let ids: std::collections::HashSet<_> = seed.users.iter().map(|u| &u.id).collect();
        assert_eq!(ids.len(), 10_000, "ids are unique");
        assert_eq!(seed.users[0].user_principal_name, "alice@contoso.example");
        assert_eq!(Seed::contoso_with_users(2).users.len(), 4);
    }
}
