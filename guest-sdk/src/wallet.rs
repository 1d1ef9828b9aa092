//! Your tenant's custodial wallet (`lodge:platform/wallet`).
//!
//! ```no_run
//! use lodge_sdk::wallet;
//!
//! # fn demo() -> Result<(), lodge_sdk::wallet::Error> {
//! let me = wallet::address()?;
//! let balance = wallet::balance()?;
//! let id = wallet::transfer("lodge1…", 5, "thanks", "order-42")?;   // safe to retry
//! let signature = wallet::sign(b"hello")?;
//! assert!(wallet::verify(&me, b"hello", &signature)?);
//! # let _ = (balance, id);
//! # Ok(())
//! # }
//! ```
//!
//! The secret key never leaves the host: the host signs for you.

pub use crate::bindings::lodge::platform::types::Error;
use crate::bindings::lodge::platform::wallet as host;
pub use crate::bindings::lodge::platform::wallet::{Entry, HistoryPage};

/// This tenant's address (`lodge1` + 64 hex digits).
pub fn address() -> Result<String, Error> {
    host::address()
}

/// This tenant's balance.
pub fn balance() -> Result<u64, Error> {
    host::balance()
}

/// Pays `amount` to `to`. Retrying with the same `idempotency_key` returns the
/// first transfer's id and pays nothing more.
pub fn transfer(to: &str, amount: u64, memo: &str, idempotency_key: &str) -> Result<String, Error> {
    host::transfer(to, amount, memo, idempotency_key)
}

/// Signs `message` with this wallet's key (64-byte Ed25519 signature).
pub fn sign(message: &[u8]) -> Result<Vec<u8>, Error> {
    host::sign(message)
}

/// Whether `signature` over `message` was made by the wallet at `address`.
pub fn verify(address: &str, message: &[u8], signature: &[u8]) -> Result<bool, Error> {
    host::verify(address, message, signature)
}

/// Entries, newest first; pass the returned cursor for older ones.
pub fn history(cursor: Option<&str>, limit: u32) -> Result<HistoryPage, Error> {
    host::history(cursor, limit)
}
