//! Key-value storage, scoped to your tenant by the host (`wasi:keyvalue@0.2.0-draft2`).
//!
//! ```no_run
//! use lodge_sdk::kv::Store;
//!
//! # fn demo() -> Result<(), lodge_sdk::kv::Error> {
//! let store = Store::open_default()?;
//! store.set("greeting", b"hello")?;
//! assert_eq!(store.get("greeting")?.as_deref(), Some(&b"hello"[..]));
//! let visits = store.increment("visits", 1)?;
//! store.set_json("profile", &serde_json::json!({ "visits": visits }))?;
//! # Ok(())
//! # }
//! ```
//!
//! Data persists in the host's database. Another tenant's bucket with the same
//! name is a different bucket: no call can reach it.

use std::fmt;

use crate::bindings::wasi::keyvalue::{atomics, batch, store};

/// A key-value failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The bucket name is not valid (1-64 of `A-Z a-z 0-9 - _ .`).
    NoSuchStore,
    /// The host refused access.
    AccessDenied,
    /// The tenant's key, byte or value-size quota would be exceeded.
    QuotaExceeded(String),
    /// A stored value is not what the operation expected (e.g. not an integer).
    Invalid(String),
    /// Anything else the host reported.
    Other(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchStore => f.write_str("no such store"),
            Self::AccessDenied => f.write_str("access denied"),
            Self::QuotaExceeded(m) | Self::Invalid(m) | Self::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::NoSuchStore => Self::NoSuchStore,
            store::Error::AccessDenied => Self::AccessDenied,
            store::Error::Other(m) if m.starts_with("quota-exceeded") => Self::QuotaExceeded(m),
            store::Error::Other(m) if m.contains("not a decimal integer") => Self::Invalid(m),
            store::Error::Other(m) => Self::Other(m),
        }
    }
}

/// One bucket of this tenant's storage.
#[derive(Debug)]
pub struct Store {
    bucket: store::Bucket,
}

impl Store {
    /// Opens the bucket `name` (created on first write).
    pub fn open(name: &str) -> Result<Self, Error> {
        Ok(Self {
            bucket: store::open(name)?,
        })
    }

    /// Opens the bucket named `default`.
    pub fn open_default() -> Result<Self, Error> {
        Self::open("default")
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.bucket.get(key)?)
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        Ok(self.bucket.set(key, value)?)
    }

    /// Removes `key` (no error if it was not set).
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        Ok(self.bucket.delete(key)?)
    }

    /// Whether `key` is set.
    pub fn exists(&self, key: &str) -> Result<bool, Error> {
        Ok(self.bucket.exists(key)?)
    }

    /// Every key of the bucket, sorted (fetched page by page).
    pub fn keys(&self) -> Result<Vec<String>, Error> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.bucket.list_keys(cursor.as_deref())?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Adds `delta` to the decimal integer stored at `key` (missing counts as 0),
    /// atomically across concurrent requests; returns the new value.
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64, Error> {
        Ok(atomics::increment(&self.bucket, key, delta)?)
    }

    /// Replaces the value at `key` with `update(current)`, retrying if another
    /// request changed it in between; returns the value written.
    pub fn update(
        &self,
        key: &str,
        mut update: impl FnMut(Option<&[u8]>) -> Vec<u8>,
    ) -> Result<Vec<u8>, Error> {
        let mut cas = atomics::Cas::new(&self.bucket, key)?;
        loop {
            let current = cas.current()?;
            let next = update(current.as_deref());
            match atomics::swap(cas, &next) {
                Ok(()) => return Ok(next),
                Err(atomics::CasError::CasFailed(retry)) => cas = retry,
                Err(atomics::CasError::StoreError(e)) => return Err(e.into()),
            }
        }
    }

    /// Values of several keys at once, in order (`None` where unset).
    pub fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let found = batch::get_many(&self.bucket, keys)?;
        Ok(found.into_iter().map(|e| e.map(|(_, v)| v)).collect())
    }

    /// Sets several keys at once: all or none.
    pub fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), Error> {
        Ok(batch::set_many(&self.bucket, entries)?)
    }

    /// Removes several keys at once.
    pub fn delete_many(&self, keys: &[String]) -> Result<(), Error> {
        Ok(batch::delete_many(&self.bucket, keys)?)
    }

    /// The JSON value at `key`, deserialized.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Invalid(format!("{key}: {e}"))),
        }
    }

    /// Stores `value` as JSON at `key`.
    pub fn set_json<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Invalid(e.to_string()))?;
        self.set(key, &bytes)
    }
}
