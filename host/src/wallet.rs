//! Custodial wallets: Ed25519 keys sealed under the host's master key, and the
//! operations on them. The ledger itself lives in [`crate::storage`].
//!
//! A wallet's seed is encrypted with XChaCha20-Poly1305 under the master key
//! (`LODGE_MASTER_KEY`, 64 hex digits, or generated into `<data-dir>/master-key`
//! with mode 0600), with the tenant id as associated data so a sealed seed
//! cannot be moved to another tenant. The seed is opened only to sign, never
//! returned, never logged. The address is `lodge1` + the public key in hex, so
//! anyone can verify a signature from the address alone.

use std::path::Path;

use anyhow::Context as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::storage::{StorageError, WalletRecord, WalletStore};

/// Prefix of every wallet address.
pub const ADDRESS_PREFIX: &str = "lodge1";

/// The key sealing every wallet seed.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// From `from_env` (64 hex digits), else `<data_dir>/master-key`, else a new one written there.
    pub fn load(data_dir: &Path, from_env: Option<String>) -> anyhow::Result<Self> {
        let parse = |text: &str| -> anyhow::Result<Self> {
            let bytes = hex::decode(text.trim()).context("the master key must be 64 hex digits")?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("the master key must be 64 hex digits"))?;
            Ok(Self(key))
        };
        if let Some(text) = from_env.filter(|t| !t.trim().is_empty()) {
            return parse(&text);
        }
        let path = data_dir.join("master-key");
        if path.exists() {
            return parse(&crate::auth::read_secret_file(&path)?);
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        crate::auth::write_private(&path, &hex::encode(key))?;
        Ok(Self(key))
    }

    /// A value that tells keys apart without revealing them (hex MAC of a
    /// fixed text), stored in the database so every host can check it holds
    /// the key the wallets were sealed with.
    pub fn check_value(&self) -> String {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0)
            .expect("any key length works");
        mac.update(b"lodge master key check");
        hex::encode(mac.finalize().into_bytes())
    }

    /// The raw key's cipher: how wallet seeds were sealed before subkeys existed.
    fn legacy_cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }

    /// A key for one purpose only, derived from the master key with
    /// HKDF-SHA256 under the purpose's label: sealing seeds, sealing env values
    /// and sealing webhook secrets each use their own key.
    pub fn subkey(&self, purpose: Purpose) -> [u8; 32] {
        let mut key = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(b"lodge master key v1"), &self.0)
            .expand(purpose.label(), &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        key
    }

    fn cipher(&self, purpose: Purpose) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.subkey(purpose)).into())
    }

    /// Seals `plaintext` for `purpose`, bound to `context` (a value sealed for
    /// one tenant or name does not open for another): the nonce, then the ciphertext.
    pub fn seal(&self, purpose: Purpose, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).expect("the operating system's random source works");
        let sealed = self
            .cipher(purpose)
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any length we store");
        [nonce.as_slice(), &sealed].concat()
    }

    /// Opens what [`MasterKey::seal`] sealed for `purpose` and `context`.
    pub fn open(&self, purpose: Purpose, context: &str, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(sealed.len() >= 24, "sealed value too short");
        let (nonce, ciphertext) = sealed.split_at(24);
        self.cipher(purpose)
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("a sealed value does not open with this master key"))
    }
}

/// What a subkey of the master key is for ([`MasterKey::subkey`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Wallet seeds.
    Seeds,
    /// Tenants' environment values.
    Env,
    /// Tenants' webhook signing secrets.
    Webhook,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Seeds => b"lodge wallet seeds",
            Self::Env => b"lodge env values",
            Self::Webhook => b"lodge webhook secrets",
        }
    }
}

/// The address of a public key.
pub fn address_of(key: &VerifyingKey) -> String {
    format!("{ADDRESS_PREFIX}{}", hex::encode(key.as_bytes()))
}

/// The public key an address names, if it is well formed.
pub fn parse_address(address: &str) -> Option<VerifyingKey> {
    let hex_part = address.strip_prefix(ADDRESS_PREFIX)?;
    if hex_part.len() != 64 {
        return None;
    }
    let bytes: [u8; 32] = hex::decode(hex_part).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// A new wallet for `tenant_id`: a fresh key, sealed.
pub fn new_wallet(master: &MasterKey, tenant_id: &str) -> anyhow::Result<WalletRecord> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let signing = SigningKey::from_bytes(&seed);
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let sealed_seed = master
        .cipher(Purpose::Seeds)
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &seed,
                aad: tenant_id.as_bytes(),
            },
        )
        .map_err(|_| anyhow::anyhow!("sealing a wallet seed failed"))?;
    Ok(WalletRecord {
        address: address_of(&signing.verifying_key()),
        sealed_seed,
        nonce: nonce.to_vec(),
    })
}

/// Opens a sealed seed; fails if the master key or the tenant is not the one it was sealed for.
pub(crate) fn unseal(
    master: &MasterKey,
    tenant_id: &str,
    wallet: &WalletRecord,
) -> anyhow::Result<SigningKey> {
    anyhow::ensure!(wallet.nonce.len() == 24, "corrupt wallet nonce");
    let payload = || Payload {
        msg: &wallet.sealed_seed,
        aad: tenant_id.as_bytes(),
    };
    let nonce = XNonce::from_slice(&wallet.nonce);
    // Wallets sealed before subkeys existed open with the master key itself.
    let seed = master
        .cipher(Purpose::Seeds)
        .decrypt(nonce, payload())
        .or_else(|_| master.legacy_cipher().decrypt(nonce, payload()))
        .map_err(|_| anyhow::anyhow!("the wallet seed does not open with this master key"))?;
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|_| anyhow::anyhow!("corrupt wallet seed"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Seals again, under the seeds subkey, every wallet seed still sealed with the
/// master key itself (before subkeys existed); returns how many. Run at start;
/// a host that finds none records that, and later starts skip the walk.
pub async fn reseal_legacy_seeds(
    storage: &dyn crate::storage::Storage,
    master: &MasterKey,
) -> Result<usize, StorageError> {
    const DONE: &str = "wallet_seeds_subkey_v1";
    if storage.meta_claim(DONE, "pending").await? == "done" {
        return Ok(0);
    }
    let mut resealed = 0;
    let mut after: Option<String> = None;
    loop {
        let owners = storage.wallet_owners(after.as_deref(), 500).await?;
        for owner in &owners {
            let Some(wallet) = storage.wallet_get(owner).await? else {
                continue;
            };
            let nonce = XNonce::from_slice(&wallet.nonce);
            let payload = || Payload {
                msg: &wallet.sealed_seed,
                aad: owner.as_bytes(),
            };
            if wallet.nonce.len() != 24
                || master
                    .cipher(Purpose::Seeds)
                    .decrypt(nonce, payload())
                    .is_ok()
            {
                continue;
            }
            let Ok(seed) = master.legacy_cipher().decrypt(nonce, payload()) else {
                continue; // not ours to fix: the start check reports a wrong key
            };
            let mut fresh = [0u8; 24];
            getrandom::fill(&mut fresh)
                .map_err(|e| StorageError::Backend(anyhow::anyhow!("no randomness: {e}")))?;
            let sealed = master
                .cipher(Purpose::Seeds)
                .encrypt(
                    XNonce::from_slice(&fresh),
                    Payload {
                        msg: &seed,
                        aad: owner.as_bytes(),
                    },
                )
                .map_err(|_| {
                    StorageError::Backend(anyhow::anyhow!("sealing a wallet seed failed"))
                })?;
            if storage
                .wallet_reseal(owner, &wallet.nonce, &sealed, &fresh)
                .await?
            {
                resealed += 1;
            }
        }
        if owners.len() < 500 {
            break;
        }
        after = owners.last().cloned();
    }
    storage.meta_set(DONE, "done").await?;
    Ok(resealed)
}

/// The wallet of `tenant_id`, created on first use.
pub async fn ensure(
    storage: &dyn WalletStore,
    master: &MasterKey,
    tenant_id: &str,
) -> Result<WalletRecord, StorageError> {
    if let Some(wallet) = storage.wallet_get(tenant_id).await? {
        return Ok(wallet);
    }
    let wallet = new_wallet(master, tenant_id).map_err(StorageError::Backend)?;
    storage.wallet_create(tenant_id, &wallet).await
}

/// Signs `message` with the tenant's key.
pub fn sign(
    master: &MasterKey,
    tenant_id: &str,
    wallet: &WalletRecord,
    message: &[u8],
) -> anyhow::Result<[u8; 64]> {
    Ok(unseal(master, tenant_id, wallet)?.sign(message).to_bytes())
}

/// Whether `signature` over `message` is valid for `address`; `None` if the address is malformed.
pub fn verify(address: &str, message: &[u8], signature: &[u8]) -> Option<bool> {
    let key = parse_address(address)?;
    let Ok(signature) = <[u8; 64]>::try_from(signature) else {
        return Some(false);
    };
    Some(
        key.verify_strict(message, &Signature::from_bytes(&signature))
            .is_ok(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_sealed_to_their_tenant_and_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let master = MasterKey::load(dir.path(), None).expect("generated");
        let wallet = new_wallet(&master, "ten_a").expect("wallet");
        assert!(wallet.address.starts_with(ADDRESS_PREFIX));
        assert_eq!(wallet.address.len(), ADDRESS_PREFIX.len() + 64);

        let signature = sign(&master, "ten_a", &wallet, b"hello").expect("signs");
        assert_eq!(verify(&wallet.address, b"hello", &signature), Some(true));
        assert_eq!(verify(&wallet.address, b"hellO", &signature), Some(false));
        assert_eq!(
            verify(&wallet.address, b"hello", &signature[..10]),
            Some(false)
        );
        assert_eq!(verify("lodge1zz", b"hello", &signature), None);

        // Another tenant's id, or another master key, cannot open it.
        assert!(sign(&master, "ten_b", &wallet, b"x").is_err());
        let other = MasterKey::load(tempfile::tempdir().expect("tmp").path(), None).expect("key");
        assert!(sign(&other, "ten_a", &wallet, b"x").is_err());
        // The stored key is reused, and never printed.
        let again = MasterKey::load(dir.path(), None).expect("loaded");
        assert!(sign(&again, "ten_a", &wallet, b"x").is_ok());
        assert_eq!(format!("{again:?}"), "MasterKey(<redacted>)");
        assert!(format!("{wallet:?}").contains("address"));
        assert!(!format!("{wallet:?}").contains("sealed"));
    }

    #[test]
    fn each_purpose_has_its_own_key_and_sealed_values_their_context() {
        let master = MasterKey([7; 32]);
        let keys = [Purpose::Seeds, Purpose::Env, Purpose::Webhook].map(|p| master.subkey(p));
        assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != master.0);
        let sealed = master.seal(Purpose::Env, "ten_a\0DB_PASSWORD", b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        let opened = master.open(Purpose::Env, "ten_a\0DB_PASSWORD", &sealed);
        assert_eq!(opened.ok().as_deref(), Some(b"hunter2".as_slice()));
        assert!(
            master
                .open(Purpose::Env, "ten_b\0DB_PASSWORD", &sealed)
                .is_err()
        );
        assert!(
            master
                .open(Purpose::Webhook, "ten_a\0DB_PASSWORD", &sealed)
                .is_err()
        );
        // A wallet sealed with the master key itself (before subkeys) still opens.
        let mut legacy = new_wallet(&master, "ten_a").expect("wallet");
        let nonce = [1u8; 24];
        legacy.sealed_seed = master
            .legacy_cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &[9u8; 32],
                    aad: b"ten_a",
                },
            )
            .expect("sealed");
        legacy.nonce = nonce.to_vec();
        assert!(unseal(&master, "ten_a", &legacy).is_ok());
    }

    #[tokio::test]
    async fn seeds_sealed_with_the_master_key_itself_are_sealed_again_under_the_subkey() {
        let dir = tempfile::tempdir().expect("tmp");
        let storage = crate::storage::SqlStorage::open_in(dir.path())
            .await
            .expect("db");
        let master = MasterKey([3; 32]);
        // A wallet as an earlier version sealed it.
        let signing = SigningKey::from_bytes(&[5; 32]);
        let nonce = [2u8; 24];
        let legacy = WalletRecord {
            address: address_of(&signing.verifying_key()),
            sealed_seed: master
                .legacy_cipher()
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &[5; 32],
                        aad: b"ten_old",
                    },
                )
                .expect("sealed"),
            nonce: nonce.to_vec(),
        };
        storage
            .wallet_create("ten_old", &legacy)
            .await
            .expect("stored");
        let fresh = new_wallet(&master, "ten_new").expect("wallet");
        storage
            .wallet_create("ten_new", &fresh)
            .await
            .expect("stored");

        let resealed = reseal_legacy_seeds(&storage, &master)
            .await
            .expect("resealed");
        assert_eq!(resealed, 1, "only the legacy one");
        let now = storage
            .wallet_get("ten_old")
            .await
            .expect("db")
            .expect("wallet");
        assert_ne!(now.nonce, legacy.nonce);
        assert!(
            master
                .legacy_cipher()
                .decrypt(
                    XNonce::from_slice(&now.nonce),
                    Payload {
                        msg: &now.sealed_seed,
                        aad: b"ten_old"
                    }
                )
                .is_err()
        );
        let signature = sign(&master, "ten_old", &now, b"m").expect("signs");
        assert_eq!(
            verify(&legacy.address, b"m", &signature),
            Some(true),
            "the same key"
        );
        assert_eq!(
            reseal_legacy_seeds(&storage, &master).await.expect("again"),
            0
        );
    }
}
