//! API keys and the operator token.
//!
//! A key looks like `sk_tenant_<id>_<secret>` (or `sk_org_…`): the id (12 hex)
//! finds the stored record, the secret (64 hex, 256 random bits) is checked
//! against its SHA-256 in constant time. Only the hash is stored; a key is shown
//! once, when it is made. SHA-256 rather than a password hash: the secret is
//! random and long, so there is nothing for a slow hash to protect against.
//!
//! The operator's admin token comes from `LODGE_ADMIN_TOKEN` (or a file named by
//! `--admin-token-file` / `LODGE_ADMIN_TOKEN_FILE`), any text of at least
//! [`MIN_ADMIN_TOKEN_LEN`] characters, or is generated on first start into
//! `<data-dir>/admin-token` (mode 0600).

use std::path::Path;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::storage::{KeyKind, KeyRecord, Storage, StorageError};

/// Who a request speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The operator: everything.
    Admin,
    /// An organization: its own tenants.
    Org {
        /// The organization.
        org_id: String,
    },
    /// One tenant.
    Tenant {
        /// Its organization.
        org_id: String,
        /// The tenant.
        tenant_id: String,
    },
}

/// Why a credential was refused. Every variant answers 401 with the same message.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("missing API key")]
    Missing,
    /// Not shaped like a Lodge key.
    #[error("malformed API key")]
    Malformed,
    /// Unknown, revoked, or the secret does not match.
    #[error("invalid API key")]
    Invalid,
    /// The database failed.
    #[error("storage failed")]
    Storage(#[from] StorageError),
}

/// A freshly made key: the text to show once, and the record to store.
#[derive(Debug)]
pub struct NewKey {
    /// The full key, e.g. `sk_tenant_…`.
    pub plaintext: String,
    /// What to store.
    pub record: KeyRecord,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source works");
    hex::encode(buf)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Makes a key for an organization, or for one of its tenants.
pub fn new_key(org_id: &str, tenant_id: Option<&str>) -> NewKey {
    let id = random_hex(6);
    let secret = random_hex(32);
    let (kind, prefix) = match tenant_id {
        Some(_) => (KeyKind::Tenant, "sk_tenant_"),
        None => (KeyKind::Org, "sk_org_"),
    };
    NewKey {
        plaintext: format!("{prefix}{id}_{secret}"),
        record: KeyRecord {
            id,
            secret_hash: sha256_hex(&secret),
            kind,
            org_id: org_id.to_owned(),
            tenant_id: tenant_id.map(str::to_owned),
            revoked_at: None,
        },
    }
}

/// Splits `sk_<kind>_<id>_<secret>` into its parts, or says it is malformed.
fn parse_key(token: &str) -> Result<(KeyKind, &str, &str), AuthError> {
    let (kind, rest) = if let Some(rest) = token.strip_prefix("sk_tenant_") {
        (KeyKind::Tenant, rest)
    } else if let Some(rest) = token.strip_prefix("sk_org_") {
        (KeyKind::Org, rest)
    } else {
        return Err(AuthError::Malformed);
    };
    let (id, secret) = rest.split_once('_').ok_or(AuthError::Malformed)?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(id, 12) || !hex(secret, 64) {
        return Err(AuthError::Malformed);
    }
    Ok((kind, id, secret))
}

/// The shortest admin token accepted: 32 characters (e.g. `openssl rand -hex 32` gives 64).
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// The operator token's hash, loaded once at start.
#[derive(Clone)]
pub struct AdminToken {
    hash: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// From `LODGE_ADMIN_TOKEN`, else `<data_dir>/admin-token`, else a new one written there.
    ///
    /// Returns the token and, when it was just generated, its plaintext to print once.
    pub fn load(
        data_dir: &Path,
        from_env: Option<String>,
    ) -> anyhow::Result<(Self, Option<String>)> {
        if let Some(token) = from_env.filter(|t| !t.trim().is_empty()) {
            let token = token.trim();
            let length = token.chars().count();
            anyhow::ensure!(
                length >= MIN_ADMIN_TOKEN_LEN,
                "the admin token is {length} characters; it must be at least \
                 {MIN_ADMIN_TOKEN_LEN} (any text: generate one with `openssl rand -hex 32`)"
            );
            return Ok((Self::from_plaintext(token), None));
        }
        let path = data_dir.join("admin-token");
        if path.exists() {
            let token = read_secret_file(&path)?;
            return Ok((Self::from_plaintext(token.trim()), None));
        }
        let token = format!("sk_admin_{}", random_hex(32));
        write_private(&path, &token)?;
        Ok((Self::from_plaintext(&token), Some(token)))
    }

    /// From a known token.
    pub fn from_plaintext(token: &str) -> Self {
        Self {
            hash: Sha256::digest(token.as_bytes()).into(),
        }
    }

    fn matches(&self, token: &str) -> bool {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        bool::from(hash.ct_eq(&self.hash))
    }
}

/// Reads a file holding a secret, refusing one that others than its owner may
/// read (the message says how to fix it).
pub fn read_secret_file(path: &Path) -> anyhow::Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .permissions()
            .mode();
        anyhow::ensure!(
            mode & 0o077 == 0,
            "{} holds a secret but its group or others may read it (mode {:o}): \
             run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes a new file readable only by its owner (mode 0600); fails if it exists.
pub(crate) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Finds who `authorization` (the header's value) speaks for.
pub async fn authenticate(
    authorization: Option<&str>,
    admin: &AdminToken,
    storage: &dyn Storage,
) -> Result<Principal, AuthError> {
    let header = authorization.ok_or(AuthError::Missing)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(AuthError::Malformed)?
        .trim();
    // Any text may be the operator's token; only the hash is compared.
    if admin.matches(token) {
        return Ok(Principal::Admin);
    }
    let (kind, id, secret) = parse_key(token)?;
    let record = storage.get_key(id).await?.ok_or(AuthError::Invalid)?;
    let secret_ok = bool::from(
        sha256_hex(secret)
            .as_bytes()
            .ct_eq(record.secret_hash.as_bytes()),
    );
    if !secret_ok || record.revoked_at.is_some() || record.kind != kind {
        return Err(AuthError::Invalid);
    }
    Ok(match (record.kind, record.tenant_id) {
        (KeyKind::Tenant, Some(tenant_id)) => Principal::Tenant {
            org_id: record.org_id,
            tenant_id,
        },
        (KeyKind::Org, _) => Principal::Org {
            org_id: record.org_id,
        },
        (KeyKind::Tenant, None) => return Err(AuthError::Invalid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_and_only_their_hash_is_kept() {
        let key = new_key("org_1", Some("ten_1"));
        assert!(key.plaintext.starts_with("sk_tenant_"));
        let (kind, id, secret) = parse_key(&key.plaintext).expect("parses");
        assert_eq!(kind, KeyKind::Tenant);
        assert_eq!(id, key.record.id);
        assert_eq!(sha256_hex(secret), key.record.secret_hash);
        assert!(!key.record.secret_hash.contains(secret));
        assert!(matches!(
            parse_key("sk_tenant_xyz"),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            parse_key("Bearer nope"),
            Err(AuthError::Malformed)
        ));
    }

    #[test]
    fn admin_tokens_compare_by_hash() {
        let token = AdminToken::from_plaintext("sk_admin_abc");
        assert!(token.matches("sk_admin_abc"));
        assert!(!token.matches("sk_admin_abd"));
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
    }

    #[test]
    fn an_operator_token_is_any_text_of_32_characters_or_more() {
        let dir = tempfile::tempdir().expect("tmp");
        let chosen = "correct horse battery staple, twice".to_owned();
        let (token, shown) = AdminToken::load(dir.path(), Some(chosen.clone())).expect("taken");
        assert!(shown.is_none() && token.matches(&chosen));
        let short = AdminToken::load(dir.path(), Some("sk_admin_short".into()));
        assert!(short.is_err_and(|e| e.to_string().contains("at least 32")));
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("token");
        std::fs::write(&path, "x".repeat(40)).expect("written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let refused = read_secret_file(&path);
        assert!(refused.is_err_and(|e| e.to_string().contains("chmod 600")));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(read_secret_file(&path).is_ok());
    }

    #[test]
    fn a_generated_admin_token_is_private_and_reused() {
        let dir = tempfile::tempdir().expect("tmp");
        let (_, shown) = AdminToken::load(dir.path(), None).expect("generated");
        let shown = shown.expect("shown once");
        let (again, none) = AdminToken::load(dir.path(), None).expect("loaded");
        assert!(none.is_none());
        assert!(again.matches(&shown));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("admin-token"))
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
