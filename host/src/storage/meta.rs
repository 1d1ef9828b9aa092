//! Host-wide named values shared by every host of a database (the master key
//! check, webhook secrets), and the round trip that tells whether the database
//! answers at all.

use super::{SqlStorage, StorageResult};

/// Host-wide named values.
#[async_trait::async_trait]
pub trait MetaStore: Send + Sync + std::fmt::Debug {
    /// Stores `value` under `name` unless a value is stored there already;
    /// returns the stored value (so the first writer wins).
    async fn meta_claim(&self, name: &str, value: &str) -> StorageResult<String>;
    /// Stores `value` under `name`, replacing what was there.
    async fn meta_set(&self, name: &str, value: &str) -> StorageResult<()>;
    /// One round trip to the database (`SELECT 1`): whether it answers.
    async fn ping(&self) -> StorageResult<()>;
}

#[async_trait::async_trait]
impl MetaStore for SqlStorage {
    async fn meta_claim(&self, name: &str, value: &str) -> StorageResult<String> {
        sqlx::query(
            "INSERT INTO host_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM host_meta WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn meta_set(&self, name: &str, value: &str) -> StorageResult<()> {
        sqlx::query(
            "INSERT INTO host_meta (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn ping(&self) -> StorageResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
