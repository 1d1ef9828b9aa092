//! `wasi:keyvalue@0.2.0-draft2` (`store`, `atomics`, `batch`), persisted in the
//! host's database and scoped to the calling tenant.
//!
//! The tenant comes from [`KeyValueCtx`], built by the host for each request;
//! no guest argument can name another tenant. Buckets are opened by name (`""`
//! means `default`); tenant A's `default` and tenant B's `default` are different
//! rows. Quotas (keys, bytes, value size) answer `other("quota-exceeded: …")`,
//! the closest variant draft2 has.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable, ResourceTableError};

use crate::config::Limits;
use crate::storage::{KvError, KvQuota, KvStore, StorageError};

use super::bindings::wasi::keyvalue::{atomics, batch, store};

/// Longest key accepted.
const MAX_KEY_BYTES: usize = 1024;
/// Largest value accepted.
const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Keys returned by one `list-keys` call.
const LIST_PAGE: i64 = 1000;

/// What one request's guest may do with key-value storage.
#[derive(Debug, Clone)]
pub struct KeyValueCtx {
    /// The tenant every call is scoped to.
    pub tenant_id: Arc<str>,
    /// Where the data lives.
    pub storage: Arc<dyn KvStore>,
    /// The tenant's quota.
    pub quota: KvQuota,
    /// How much one batch call may carry.
    pub batch: BatchCaps,
    /// Where operations are metered.
    pub counters: Arc<crate::counters::TenantCounters>,
}

impl KeyValueCtx {
    /// What a request of `tenant` on `limits` may do.
    pub fn new(
        host: &super::CapabilityHost,
        tenant: super::TenantRef<'_>,
        limits: &Limits,
    ) -> Self {
        Self {
            tenant_id: tenant.id.clone(),
            storage: host.keyvalue.clone(),
            quota: KvQuota {
                max_keys: limits.kv_max_keys,
                max_bytes: limits.kv_max_bytes,
            },
            batch: BatchCaps {
                max_keys: limits.kv_batch_max_keys,
                max_bytes: limits.kv_batch_max_bytes,
            },
            counters: tenant.counters.clone(),
        }
    }
}

/// The plan's caps on one batch call (`get-many`, `set-many`, `delete-many`):
/// a batch is one bounded transaction, so no tenant's batch holds the database
/// (on SQLite, the one writer) for long.
#[derive(Debug, Clone, Copy)]
pub struct BatchCaps {
    /// Keys one call may name.
    pub max_keys: u32,
    /// Bytes of keys and values one call may carry.
    pub max_bytes: u64,
}

impl BatchCaps {
    /// Refuses a batch of `keys` keys and `bytes` bytes over the caps.
    fn check(self, keys: usize, bytes: u64) -> Result<(), Error> {
        if keys > self.max_keys as usize {
            return Err(Error::Other(format!(
                "quota-exceeded: a batch may name at most {} keys (kv_batch_max_keys), this one names {keys}",
                self.max_keys
            )));
        }
        if bytes > self.max_bytes {
            return Err(Error::Other(format!(
                "quota-exceeded: a batch may carry at most {} bytes of keys and values \
                 (kv_batch_max_bytes), this one carries {bytes}",
                self.max_bytes
            )));
        }
        Ok(())
    }
}

/// Checks every key of a batch of keys and the batch's size.
fn check_keys(caps: BatchCaps, keys: &[String]) -> Result<(), Error> {
    caps.check(keys.len(), keys.iter().map(|k| k.len() as u64).sum())?;
    keys.iter().try_for_each(|k| check_key(k))
}

/// An open bucket: just its name; every call goes to storage.
#[derive(Debug)]
pub struct Bucket {
    name: String,
}

/// A compare-and-swap handle: the value seen when it was made.
#[derive(Debug)]
pub struct Cas {
    bucket: String,
    key: String,
    seen: Option<Vec<u8>>,
}

/// A key-value failure, before it becomes the guest's `error` variant.
#[derive(Debug)]
pub enum Error {
    /// The bucket name is not acceptable.
    NoSuchStore,
    /// Anything else, with a message for the guest.
    Other(String),
    /// A broken host invariant: traps.
    Trap(wasmtime::Error),
}

impl From<ResourceTableError> for Error {
    fn from(e: ResourceTableError) -> Self {
        Self::Trap(e.into())
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        tracing::error!(error = ?e, "key-value storage failed");
        Self::Other("storage unavailable".to_owned())
    }
}

impl From<KvError> for Error {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Storage(e) => e.into(),
            other => Self::Other(other.to_string()),
        }
    }
}

/// The view host functions run on: the context and the instance's resource table.
pub struct KeyValue<'a> {
    ctx: &'a KeyValueCtx,
    table: &'a mut ResourceTable,
}

impl std::fmt::Debug for KeyValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyValue")
            .field("tenant", &self.ctx.tenant_id)
            .finish()
    }
}

impl<'a> KeyValue<'a> {
    /// A view over `ctx` and `table`.
    pub fn new(ctx: &'a KeyValueCtx, table: &'a mut ResourceTable) -> Self {
        Self { ctx, table }
    }

    /// The bucket's name; every data operation goes through here and is metered.
    fn bucket(&self, bucket: &Resource<Bucket>) -> Result<String, Error> {
        self.ctx
            .counters
            .kv_ops
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self.table.get(bucket)?.name.clone())
    }
}

struct KeyValueData;

impl HasData for KeyValueData {
    type Data<'a> = KeyValue<'a>;
}

/// Links `store`, `atomics` and `batch`; `view` finds the context in the store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValue<'_>,
) -> anyhow::Result<()> {
    store::add_to_linker::<T, KeyValueData>(linker, view)?;
    atomics::add_to_linker::<T, KeyValueData>(linker, view)?;
    batch::add_to_linker::<T, KeyValueData>(linker, view)?;
    Ok(())
}

fn check_key(key: &str) -> Result<(), Error> {
    // NUL is refused on every backend alike: PostgreSQL text cannot hold it.
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.contains('\0') {
        return Err(Error::Other(format!(
            "keys must be 1-{MAX_KEY_BYTES} bytes, without NUL characters"
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), Error> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::Other(format!(
            "quota-exceeded: values are limited to {MAX_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

impl store::Host for KeyValue<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, Error> {
        let name = if identifier.is_empty() {
            "default".to_owned()
        } else {
            identifier
        };
        let valid = name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            return Err(Error::NoSuchStore);
        }
        Ok(self.table.push(Bucket { name })?)
    }

    fn convert_error(&mut self, err: Error) -> wasmtime::Result<store::Error> {
        match err {
            Error::NoSuchStore => Ok(store::Error::NoSuchStore),
            Error::Other(message) => Ok(store::Error::Other(message)),
            Error::Trap(e) => Err(e),
        }
    }
}

impl store::HostBucket for KeyValue<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Error> {
        check_key(&key)?;
        let name = self.bucket(&bucket)?;
        Ok(self
            .ctx
            .storage
            .kv_get(&self.ctx.tenant_id, &name, &key)
            .await?)
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        check_key(&key)?;
        check_value(&value)?;
        let name = self.bucket(&bucket)?;
        self.ctx
            .storage
            .kv_set_many(&self.ctx.tenant_id, &name, &[(key, value)], self.ctx.quota)
            .await?;
        Ok(())
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), Error> {
        check_key(&key)?;
        let name = self.bucket(&bucket)?;
        self.ctx
            .storage
            .kv_delete_many(&self.ctx.tenant_id, &name, &[key])
            .await?;
        Ok(())
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, Error> {
        check_key(&key)?;
        let name = self.bucket(&bucket)?;
        Ok(self
            .ctx
            .storage
            .kv_get(&self.ctx.tenant_id, &name, &key)
            .await?
            .is_some())
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> Result<store::KeyResponse, Error> {
        if let Some(cursor) = &cursor {
            check_key(cursor)?;
        }
        let name = self.bucket(&bucket)?;
        let (keys, cursor) = self
            .ctx
            .storage
            .kv_list(&self.ctx.tenant_id, &name, cursor.as_deref(), LIST_PAGE)
            .await?;
        Ok(store::KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyValue<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> Result<i64, Error> {
        check_key(&key)?;
        let name = self.bucket(&bucket)?;
        Ok(self
            .ctx
            .storage
            .kv_increment(&self.ctx.tenant_id, &name, &key, delta, self.ctx.quota)
            .await?)
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        self.ctx
            .counters
            .kv_ops
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pending = self.table.delete(cas)?;
        let outcome = async {
            check_value(&value)?;
            self.ctx
                .storage
                .kv_compare_and_swap(
                    &self.ctx.tenant_id,
                    &pending.bucket,
                    &pending.key,
                    pending.seen.as_deref(),
                    &value,
                    self.ctx.quota,
                )
                .await
                .map_err(Error::from)
        }
        .await;
        match outcome {
            Ok(true) => Ok(Ok(())),
            Ok(false) => {
                // Hand back a fresh handle, seeing the current value, to retry with.
                let seen = self
                    .ctx
                    .storage
                    .kv_get(&self.ctx.tenant_id, &pending.bucket, &pending.key)
                    .await
                    .ok()
                    .flatten();
                let retry = self.table.push(Cas { seen, ..pending })?;
                Ok(Err(atomics::CasError::CasFailed(retry)))
            }
            Err(e) => Ok(Err(atomics::CasError::StoreError(
                store::Host::convert_error(self, e)?,
            ))),
        }
    }
}

impl atomics::HostCas for KeyValue<'_> {
    async fn new(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Resource<Cas>, Error> {
        check_key(&key)?;
        let name = self.bucket(&bucket)?;
        let seen = self
            .ctx
            .storage
            .kv_get(&self.ctx.tenant_id, &name, &key)
            .await?;
        Ok(self.table.push(Cas {
            bucket: name,
            key,
            seen,
        })?)
    }

    async fn current(&mut self, cas: Resource<Cas>) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.table.get(&cas)?.seen.clone())
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for KeyValue<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, Error> {
        check_keys(self.ctx.batch, &keys)?;
        let name = self.bucket(&bucket)?;
        let values = self
            .ctx
            .storage
            .kv_get_many(&self.ctx.tenant_id, &name, &keys)
            .await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(key, value)| value.map(|v| (key, v)))
            .collect())
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let bytes = key_values
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        self.ctx.batch.check(key_values.len(), bytes)?;
        for (key, value) in &key_values {
            check_key(key)?;
            check_value(value)?;
        }
        let name = self.bucket(&bucket)?;
        self.ctx
            .storage
            .kv_set_many(&self.ctx.tenant_id, &name, &key_values, self.ctx.quota)
            .await?;
        Ok(())
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), Error> {
        check_keys(self.ctx.batch, &keys)?;
        let name = self.bucket(&bucket)?;
        self.ctx
            .storage
            .kv_delete_many(&self.ctx.tenant_id, &name, &keys)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_the_same_on_every_backend() {
        assert!(check_key("a").is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(check_key("nul\0inside").is_err());
    }

    #[test]
    fn batches_are_capped_and_every_key_checked() {
        let caps = BatchCaps {
            max_keys: 3,
            max_bytes: 10,
        };
        let keys = |list: &[&str]| list.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>();
        assert!(check_keys(caps, &keys(&["a", "b", "c"])).is_ok());
        let too_many = check_keys(caps, &keys(&["a", "b", "c", "d"]));
        assert!(matches!(too_many, Err(Error::Other(m)) if m.contains("kv_batch_max_keys")));
        let too_big = check_keys(caps, &keys(&["abcdef", "ghijkl"]));
        assert!(matches!(too_big, Err(Error::Other(m)) if m.contains("kv_batch_max_bytes")));
        assert!(check_keys(caps, &keys(&["a", ""])).is_err(), "an empty key");
    }
}
