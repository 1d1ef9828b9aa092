//! The storage contract: every method of every domain trait, run against
//! SQLite always and against PostgreSQL when asked for (`--include-ignored`
//! with `LODGE_TEST_DATABASE_URL` set, e.g.
//! `postgres://postgres@127.0.0.1:5432/lodge_scratch`); CI does both. The
//! same assertions hold for both databases.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};

use super::*;
use crate::logs::{LogLine, LogStream};

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn tenant(org_id: &str, slug: &str) -> TenantRecord {
    let now = now_rfc3339();
    TenantRecord {
        id: unique("ten"),
        org_id: org_id.to_owned(),
        name: slug.to_owned(),
        slug: slug.to_owned(),
        status: TenantStatus::Provisioning,
        plan: "free".to_owned(),
        limits: Default::default(),
        active_version: None,
        last_error: None,
        created_at: now.clone(),
        updated_at: now,
    }
}

fn line(seq: u64, message: &str) -> LogLine {
    LogLine {
        seq,
        timestamp_ms: 1_000 + seq,
        request_id: "req".to_owned(),
        stream: LogStream::Stdout,
        message: message.to_owned(),
    }
}

fn transfer<'a>(from: &'a str, to: &'a str, amount: i64, key: &'a str) -> TransferRequest<'a> {
    TransferRequest {
        from,
        to,
        amount,
        memo: "m",
        idempotency_key: key,
        max_per_transfer: 1_000,
        max_per_day: 10_000,
    }
}

const QUOTA: KvQuota = KvQuota {
    max_keys: 1_000,
    max_bytes: 1 << 20,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_storage_keeps_the_contract() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let storage = Arc::new(SqlStorage::open_in(dir.path()).await?);
    // Opening again (a restart) finds the schema migrated.
    let _again = SqlStorage::open_in(dir.path()).await?;
    contract(storage).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set LODGE_TEST_DATABASE_URL and pass --include-ignored"]
async fn postgres_storage_keeps_the_contract() -> anyhow::Result<()> {
    let url = std::env::var("LODGE_TEST_DATABASE_URL")
        .context("this test needs PostgreSQL: set LODGE_TEST_DATABASE_URL (CI does)")?;
    let storage = Arc::new(SqlStorage::open(&url).await?);
    // Opening again (a second host) finds the schema migrated.
    let _second = SqlStorage::open(&url).await?;
    ensure!(!format!("{storage:?}").contains("postgres://"));
    ensure!(storage.dialect() == Dialect::Postgres);
    contract(storage).await
}

/// Every method of every domain trait, as both databases must behave.
async fn contract(storage: Arc<SqlStorage>) -> anyhow::Result<()> {
    // Organizations, tenants, keys.
    let org = Org {
        id: unique("org"),
        name: unique("name"),
        plan: "free".to_owned(),
        created_at: now_rfc3339(),
    };
    storage.create_org(&org).await?;
    ensure!(storage.get_org(&org.id).await?.name == org.name);
    ensure!(storage.find_org_by_name(&org.name).await?.map(|o| o.id) == Some(org.id.clone()));
    ensure!(matches!(
        storage.get_org("org_missing").await,
        Err(StorageError::NotFound)
    ));

    let slug = unique("slug");
    let t = tenant(&org.id, &slug);
    storage.create_tenant(&t).await?;
    let duplicate = storage.create_tenant(&tenant(&org.id, &slug)).await;
    ensure!(
        matches!(duplicate, Err(StorageError::Conflict(_))),
        "duplicate slug: {duplicate:?}"
    );
    ensure!(storage.get_tenant(&slug).await?.id == t.id);
    ensure!(storage.get_tenant(&t.id).await?.slug == slug);
    let t2 = tenant(&org.id, &unique("slug"));
    storage.create_tenant(&t2).await?;
    let listed = storage.list_tenants(Some(&org.id), 10, 0).await?;
    // By creation time, then id (two tenants made in the same millisecond).
    let mut expected = [&t, &t2].map(|t| (t.created_at.clone(), t.id.clone()));
    expected.sort();
    ensure!(
        listed
            .iter()
            .map(|t| (t.created_at.clone(), t.id.clone()))
            .collect::<Vec<_>>()
            == expected
    );
    ensure!(storage.list_tenants(Some(&org.id), 10, 1).await?.len() == 1);
    ensure!(storage.list_tenants(None, 1_000_000, 0).await?.len() >= 2);
    // Organizations with their live tenants counted: one, or all.
    let own = storage.list_orgs(Some(&org.id), 10, 0).await?;
    ensure!(
        own.len() == 1 && own[0].org.id == org.id && own[0].org.name == org.name,
        "{own:?}"
    );
    ensure!(own[0].tenant_count == 2, "{own:?}");
    ensure!(storage.list_orgs(Some(&org.id), 10, 1).await?.is_empty());
    ensure!(
        storage
            .list_orgs(Some("org_missing"), 10, 0)
            .await?
            .is_empty()
    );
    let every = storage.list_orgs(None, 1_000_000, 0).await?;
    ensure!(
        every
            .iter()
            .any(|o| o.org.id == org.id && o.tenant_count == 2)
    );
    let order: Vec<_> = every
        .iter()
        .map(|o| (o.org.created_at.clone(), o.org.id.clone()))
        .collect();
    ensure!(order.is_sorted(), "oldest first, then by id");
    ensure!(storage.list_orgs(None, 1, 0).await?.len() == 1);
    storage
        .set_status(&t.id, TenantStatus::Error, Some("boom"))
        .await?;
    ensure!(storage.get_tenant(&t.id).await?.last_error.as_deref() == Some("boom"));
    ensure!(matches!(
        storage
            .set_status("ten_missing", TenantStatus::Running, None)
            .await,
        Err(StorageError::NotFound)
    ));

    let key = KeyRecord {
        id: unique("key"),
        secret_hash: "hash".to_owned(),
        kind: KeyKind::Tenant,
        org_id: org.id.clone(),
        tenant_id: Some(t.id.clone()),
        revoked_at: None,
    };
    storage.insert_key(&key).await?;
    let got = storage.get_key(&key.id).await?.context("key")?;
    ensure!(got.kind == KeyKind::Tenant && got.revoked_at.is_none());
    storage.revoke_tenant_keys(&t.id).await?;
    ensure!(
        storage
            .get_key(&key.id)
            .await?
            .context("key")?
            .revoked_at
            .is_some()
    );
    ensure!(storage.get_key("key_missing").await?.is_none());

    // Blobs and deployments.
    let sha = unique("sha");
    ensure!(!storage.blob_exists(&sha).await?);
    ensure!(matches!(
        storage.get_blob("missing").await,
        Err(StorageError::NotFound)
    ));
    let v1 = storage.add_deployment(&t.id, &sha, b"component", 5).await?;
    let v2 = storage.add_deployment(&t.id, &sha, b"component", 6).await?;
    ensure!(storage.get_blob(&sha).await? == b"component");
    ensure!(v1.size == 9);
    ensure!(v1.version == 1 && v2.version == 2);
    let record = storage.get_tenant(&t.id).await?;
    ensure!(record.active_version == Some(2) && record.status == TenantStatus::Running);
    ensure!(record.last_error.is_none());
    let versions: Vec<i64> = storage
        .list_deployments(&t.id)
        .await?
        .iter()
        .map(|d| d.version)
        .collect();
    ensure!(versions == [2, 1]);
    ensure!(storage.get_deployment(&t.id, 1).await?.compile_ms == 5);
    storage.set_active_version(&t.id, 1).await?;
    ensure!(storage.get_tenant(&t.id).await?.active_version == Some(1));
    ensure!(matches!(
        storage.set_active_version(&t.id, 99).await,
        Err(StorageError::NotFound)
    ));
    // Pruning never takes the active version; a blob goes with its last version.
    let other = unique("sha");
    let v3 = storage.add_deployment(&t.id, &other, b"other", 1).await?;
    storage.set_active_version(&t.id, v3.version).await?;
    ensure!(
        storage
            .delete_deployments(&t.id, &[v3.version])
            .await?
            .is_empty()
    );
    ensure!(storage.delete_deployments(&t.id, &[1, 2]).await? == std::slice::from_ref(&sha));
    ensure!(storage.last_version(&t.id).await? == 3);
    ensure!(
        !storage.delete_blob_if_unused(&other).await?,
        "in use by v3"
    );
    // Concurrent deploys of one tenant get distinct versions.
    let deploys = (0..5).map(|_| {
        let storage = storage.clone();
        let (id, sha) = (t2.id.clone(), sha.clone());
        tokio::spawn(async move { storage.add_deployment(&id, &sha, b"component", 1).await })
    });
    let mut numbers = Vec::new();
    for d in deploys {
        numbers.push(d.await??.version);
    }
    numbers.sort_unstable();
    ensure!(numbers == [1, 2, 3, 4, 5], "versions {numbers:?}");

    // Environment.
    storage
        .set_env(&t.id, &[("B".into(), "2".into()), ("A".into(), "1".into())])
        .await?;
    storage
        .set_env(
            &t.id,
            &[("Z".into(), "26".into()), ("A".into(), "1".into())],
        )
        .await?;
    ensure!(storage.get_env(&t.id).await? == [("A".into(), "1".into()), ("Z".into(), "26".into())]);
    // A restart's batch reads: a page of tenants by id, their envs and active versions.
    let ids = vec![t.id.clone(), t2.id.clone()];
    ensure!(
        storage.env_of(&ids).await?
            == [
                (t.id.clone(), "A".into(), "1".into()),
                (t.id.clone(), "Z".into(), "26".into())
            ]
    );
    ensure!(storage.env_of(&[]).await?.is_empty());
    let actives = storage.active_deployments(&ids).await?;
    ensure!(actives.len() == 2, "{actives:?}");
    for (id, deployment) in &actives {
        let active = storage.get_tenant(id).await?.active_version;
        ensure!(active == Some(deployment.version), "{id}: {deployment:?}");
    }
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = storage.tenants_after(after.as_deref(), 1).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        paged.push(last.id.clone());
    }
    ensure!(paged.contains(&t.id) && paged.contains(&t2.id));
    ensure!(paged.windows(2).all(|w| w[0] < w[1]), "by id: {paged:?}");

    // Logs: a seq given again replaces the line; NUL survives as U+FFFD.
    let (one, two, three, again) = (
        line(1, "one"),
        line(2, "two"),
        line(3, "three"),
        line(3, "three\0again"),
    );
    storage
        .append_logs(&[
            (&t.id, &one),
            (&t.id, &two),
            (&t.id, &three),
            (&t.id, &again),
        ])
        .await?;
    storage.append_logs(&[(&t.id, &line(2, "TWO"))]).await?;
    storage.append_logs(&[]).await?;
    let recent: Vec<String> = storage
        .recent_logs(&t.id, 2)
        .await?
        .into_iter()
        .map(|l| l.message)
        .collect();
    ensure!(recent == ["TWO", "three\u{FFFD}again"], "logs {recent:?}");
    ensure!(
        storage
            .last_log_seqs(&[t.id.clone(), t2.id.clone()])
            .await?
            == [(t.id.clone(), 3)]
    );
    // Text the archive's encoding must carry exactly: quotes, backslashes,
    // control characters, a newline, non-ASCII; and a large timestamp.
    let tricky = LogLine {
        seq: 4,
        timestamp_ms: 1_764_000_000_123,
        request_id: "r-\"1\"".to_owned(),
        stream: LogStream::Stderr,
        message: "a \"quoted\" \\path\\ \u{7}\tx\ny \u{1F600} \u{FC} ]}".to_owned(),
    };
    storage.append_logs(&[(&t.id, &tricky)]).await?;
    let back = storage.recent_logs(&t.id, 1).await?;
    ensure!(
        back.len() == 1
            && back[0].seq == 4
            && back[0].timestamp_ms == tricky.timestamp_ms
            && back[0].request_id == tricky.request_id
            && back[0].stream == LogStream::Stderr
            && back[0].message == tricky.message,
        "read back {back:?}"
    );

    // Key-value.
    storage
        .kv_set_many(
            &t.id,
            "b",
            &[("k1".into(), b"v1".to_vec()), ("k2".into(), b"v2".to_vec())],
            QUOTA,
        )
        .await?;
    ensure!(storage.kv_get(&t.id, "b", "k1").await? == Some(b"v1".to_vec()));
    let many = storage
        .kv_get_many(&t.id, "b", &["k2".into(), "nope".into(), "k1".into()])
        .await?;
    ensure!(many == [Some(b"v2".to_vec()), None, Some(b"v1".to_vec())]);
    let (page, next) = storage.kv_list(&t.id, "b", None, 1).await?;
    ensure!(page == ["k1"] && next.as_deref() == Some("k1"));
    let (page, next) = storage.kv_list(&t.id, "b", Some("k1"), 5).await?;
    ensure!(page == ["k2"] && next.is_none());
    // More keys than one SQLite statement carries: every chunk, in the asked order.
    let wide: Vec<(String, Vec<u8>)> = (0..150)
        .map(|i| (format!("w{i}"), i.to_string().into_bytes()))
        .collect();
    storage.kv_set_many(&t.id, "wide", &wide, QUOTA).await?;
    let asked: Vec<String> = (0..300).rev().map(|i| format!("w{i}")).collect();
    let many = storage.kv_get_many(&t.id, "wide", &asked).await?;
    ensure!(many.len() == 300);
    ensure!(many.iter().enumerate().all(|(at, value)| {
        let i = 299 - at;
        *value == (i < 150).then(|| i.to_string().into_bytes())
    }));
    let wide_keys: Vec<String> = wide.into_iter().map(|(k, _)| k).collect();
    storage.kv_delete_many(&t.id, "wide", &wide_keys).await?;

    let increments = (0..50).map(|_| {
        let storage = storage.clone();
        let id = t.id.clone();
        tokio::spawn(async move { storage.kv_increment(&id, "b", "counter", 1, QUOTA).await })
    });
    for i in increments {
        i.await??;
    }
    ensure!(storage.kv_get(&t.id, "b", "counter").await? == Some(b"50".to_vec()));
    ensure!(matches!(
        storage.kv_increment(&t.id, "b", "k1", 1, QUOTA).await,
        Err(KvError::NotAnInteger(_))
    ));
    storage
        .kv_set_many(
            &t.id,
            "b",
            &[("max".into(), i64::MAX.to_string().into_bytes())],
            QUOTA,
        )
        .await?;
    ensure!(matches!(
        storage.kv_increment(&t.id, "b", "max", 1, QUOTA).await,
        Err(KvError::Overflow)
    ));
    ensure!(
        !storage
            .kv_compare_and_swap(&t.id, "b", "k1", Some(b"x"), b"y", QUOTA)
            .await?
    );
    ensure!(
        storage
            .kv_compare_and_swap(&t.id, "b", "k1", Some(b"v1"), b"y", QUOTA)
            .await?
    );
    ensure!(
        storage
            .kv_compare_and_swap(&t.id, "b", "fresh", None, b"f", QUOTA)
            .await?
    );
    ensure!(
        !storage
            .kv_compare_and_swap(&t.id, "b", "fresh", None, b"g", QUOTA)
            .await?
    );
    ensure!(storage.kv_get(&t.id, "b", "k1").await? == Some(b"y".to_vec()));

    // Usage is exact: keys k1 k2 counter max fresh.
    let usage_row = |storage: Arc<SqlStorage>, id: String| async move {
        let row: (i64, i64) =
            sqlx::query_as("SELECT keys, bytes FROM kv_usage WHERE tenant_id = $1")
                .bind(id)
                .fetch_one(&storage.pool)
                .await?;
        anyhow::Ok(row)
    };
    let expected_bytes = (2 + 1) + (2 + 2) + (7 + 2) + (3 + 19) + (5 + 1);
    ensure!(usage_row(storage.clone(), t.id.clone()).await? == (5, expected_bytes));

    // Quota: a sixth key is refused at five, and nothing of the batch is written.
    let tight = KvQuota {
        max_keys: 5,
        max_bytes: 1 << 20,
    };
    let refused = storage
        .kv_set_many(
            &t.id,
            "b",
            &[("k1".into(), b"z".to_vec()), ("k6".into(), b"6".to_vec())],
            tight,
        )
        .await;
    ensure!(
        matches!(refused, Err(KvError::QuotaExceeded(_))),
        "{refused:?}"
    );
    ensure!(storage.kv_get(&t.id, "b", "k1").await? == Some(b"y".to_vec()));
    ensure!(storage.kv_get(&t.id, "b", "k6").await?.is_none());
    let small = KvQuota {
        max_keys: 100,
        max_bytes: 10,
    };
    ensure!(matches!(
        storage
            .kv_set_many(&t.id, "b", &[("k1".into(), vec![0; 100])], small)
            .await,
        Err(KvError::QuotaExceeded(_))
    ));
    // Shrinking is always allowed, even over quota.
    storage
        .kv_set_many(&t.id, "b", &[("k1".into(), Vec::new())], small)
        .await?;
    storage
        .kv_delete_many(&t.id, "b", &["k1".into(), "k2".into(), "absent".into()])
        .await?;
    ensure!(usage_row(storage.clone(), t.id.clone()).await? == (3, expected_bytes - 3 - 4));
    ensure!(storage.kv_get(&t.id, "b", "k2").await?.is_none());
    // Buckets and tenants are separate.
    ensure!(storage.kv_get(&t.id, "other", "counter").await?.is_none());
    ensure!(storage.kv_get(&t2.id, "b", "counter").await?.is_none());

    // Wallets and the ledger.
    let wallet = |address: &str| WalletRecord {
        address: address.to_owned(),
        sealed_seed: vec![1, 2, 3],
        nonce: vec![4, 5],
    };
    let (a, b) = (unique("lodge1a"), unique("lodge1b"));
    ensure!(storage.wallet_create(&t.id, &wallet(&a)).await?.address == a);
    ensure!(
        storage
            .wallet_create(&t.id, &wallet("lodge1other"))
            .await?
            .address
            == a
    );
    storage.wallet_create(&t2.id, &wallet(&b)).await?;
    ensure!(
        storage
            .wallet_get(&t.id)
            .await?
            .context("wallet")?
            .sealed_seed
            == [1, 2, 3]
    );
    ensure!(storage.wallet_exists(&a).await? && !storage.wallet_exists("lodge1none").await?);
    ensure!(matches!(
        storage.ledger_fund(&a, 0, "x").await,
        Err(LedgerError::Invalid(_))
    ));
    let (_, minted_before) = storage.ledger_totals().await?;
    storage.ledger_fund(&a, 100, "grant").await?;
    ensure!(storage.ledger_balance(&a).await? == 100);
    let first = storage.ledger_transfer(&transfer(&a, &b, 30, "k1")).await?;
    ensure!(storage.ledger_transfer(&transfer(&a, &b, 30, "k1")).await? == first);
    ensure!(matches!(
        storage.ledger_transfer(&transfer(&a, &b, 31, "k1")).await,
        Err(LedgerError::Invalid(_))
    ));
    ensure!(matches!(
        storage.ledger_transfer(&transfer(&a, &b, 71, "k2")).await,
        Err(LedgerError::InsufficientFunds { balance: 70 })
    ));
    storage.ledger_transfer(&transfer(&b, &a, 1, "k1")).await?;
    let mut capped = transfer(&a, &b, 5, "k3");
    capped.max_per_transfer = 4;
    ensure!(matches!(
        storage.ledger_transfer(&capped).await,
        Err(LedgerError::Limit(_))
    ));
    capped.max_per_transfer = 1_000;
    capped.max_per_day = 34;
    ensure!(matches!(
        storage.ledger_transfer(&capped).await,
        Err(LedgerError::Limit(_))
    ));
    ensure!(storage.ledger_balance(&a).await? == 71 && storage.ledger_balance(&b).await? == 29);

    // Concurrent transfers both ways, and the same key raced: no deadlock,
    // no overdraft, one transfer per key.
    let mut handles = Vec::new();
    for i in 0..20 {
        let storage = storage.clone();
        let (from, to) = if i % 2 == 0 {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        // Keys race0..race4, each sent twice by each side.
        let key = format!("race{}", i / 4);
        handles.push(tokio::spawn(async move {
            let done = storage
                .ledger_transfer(&transfer(&from, &to, 10, &key))
                .await;
            (from, key, done)
        }));
    }
    let mut ids: HashMap<(String, String), String> = HashMap::new();
    for h in handles {
        let (from, key, done) = h.await?;
        match done {
            Ok(id) => {
                if let Some(earlier) = ids.insert((from, key), id.clone()) {
                    ensure!(earlier == id, "a replay made a second transfer");
                }
            }
            Err(LedgerError::InsufficientFunds { .. }) => {}
            Err(e) => anyhow::bail!("unexpected transfer error: {e:?}"),
        }
    }
    let (held, minted) = storage.ledger_totals().await?;
    ensure!(
        held == minted && minted == minted_before + 100,
        "held {held} minted {minted}"
    );
    ensure!(storage.ledger_balance(&a).await? + storage.ledger_balance(&b).await? == 100);
    let a_history = storage.ledger_history(&a, None, 1_000).await?;
    ensure!(a_history.last().map(|e| e.kind.as_str()) == Some("funding"));
    let balance_from_history: i64 = a_history.iter().map(|e| e.amount).sum();
    ensure!(balance_from_history == storage.ledger_balance(&a).await?);
    let newest = a_history.first().context("history")?.seq;
    let older = storage.ledger_history(&a, Some(newest), 1).await?;
    ensure!(older.len() == 1 && older[0].seq < newest);
    let transfers_per_key: Vec<i64> = sqlx::query_scalar(
        "SELECT COUNT(*) FROM ledger_transfers WHERE from_account IN ($1, $2)
         AND idempotency_key LIKE 'race%' GROUP BY from_account, idempotency_key",
    )
    .bind(&a)
    .bind(&b)
    .fetch_all(&storage.pool)
    .await?;
    ensure!(transfers_per_key.iter().all(|n| *n == 1));

    // Tasks: one claim wins; only claims older than the lease cut-off are requeued.
    storage.task_requeue_running(None).await?;
    while storage.task_claim().await?.is_some() {}
    let task = TaskRecord {
        id: unique("task"),
        tenant_id: t.id.clone(),
        status: "pending".to_owned(),
        request: "{}".to_owned(),
        outcome: None,
        error: None,
        webhook_url: Some("http://hook".to_owned()),
        attempts: 0,
    };
    storage.task_insert(&task).await?;
    let claims: Vec<_> = (0..2)
        .map(|_| {
            let storage = storage.clone();
            tokio::spawn(async move { storage.task_claim().await })
        })
        .collect();
    let mut won = Vec::new();
    for c in claims {
        if let Some(task) = c.await?? {
            won.push(task);
        }
    }
    ensure!(won.len() == 1 && won[0].id == task.id && won[0].status == "running");
    ensure!(
        storage
            .task_requeue_running(Some(Duration::from_secs(3600)))
            .await?
            == 0
    );
    ensure!(storage.task_requeue_running(None).await? == 1);
    let again = storage.task_claim().await?.context("claimed again")?;
    ensure!(again.id == task.id && again.attempts == won[0].attempts + 1);
    // The first claim lost the task: its heartbeat and its result are refused.
    ensure!(!storage.task_heartbeat(&task.id, won[0].attempts).await?);
    ensure!(
        !storage
            .task_finish(&task.id, won[0].attempts, Ok("{\"stale\":true}"))
            .await?
    );
    ensure!(storage.task_heartbeat(&task.id, again.attempts).await?);
    ensure!(
        storage
            .task_finish(&task.id, again.attempts, Ok("{\"ok\":true}"))
            .await?
    );
    ensure!(
        !storage
            .task_finish(&task.id, again.attempts, Err("twice"))
            .await?
    );
    storage.task_webhook(&task.id, "delivered").await?;
    let done = storage.task_get(&t.id, &task.id).await?.context("task")?;
    ensure!(done.status == "done" && done.outcome.as_deref() == Some("{\"ok\":true}"));
    ensure!(storage.task_get(&t2.id, &task.id).await?.is_none());
    let listed = storage.task_list(&t.id, 10, 0).await?;
    ensure!(
        listed.len() == 1
            && listed[0].id == task.id
            && listed[0].status == "done"
            && listed[0].outcome.as_deref() == Some("{\"ok\":true}")
            && listed[0].webhook_status.as_deref() == Some("delivered")
            && !listed[0].created_at.is_empty(),
        "{listed:?}"
    );
    ensure!(storage.task_list(&t2.id, 10, 0).await?.is_empty());

    // Usage.
    let delta = Usage {
        requests: 2,
        fuel: 10,
        peak_memory_bytes: 100,
        ..Usage::default()
    };
    storage.add_usage(&t.id, "2024-01-01T05", &delta).await?;
    storage
        .add_usage(
            &t.id,
            "2024-01-01T05",
            &Usage {
                peak_memory_bytes: 50,
                ..delta
            },
        )
        .await?;
    storage.add_usage(&t.id, "2024-01-02T00", &delta).await?;
    storage.add_usage(&t2.id, "2024-01-01T07", &delta).await?;
    let hours = storage
        .usage(&t.id, "2024-01-01T00", "2024-01-01T23")
        .await?;
    ensure!(hours.len() == 1 && hours[0].0 == "2024-01-01T05");
    ensure!(
        hours[0].1.requests == 4 && hours[0].1.fuel == 20 && hours[0].1.peak_memory_bytes == 100
    );
    let rollup = storage
        .org_usage(&org.id, "2024-01-01T00", "2024-01-02T23")
        .await?;
    // By creation, then id: `expected` above.
    let requests = |id: &str| if id == t.id { 6 } else { 2 };
    ensure!(
        rollup.len() == 2 && rollup[0].0 == expected[0].1 && rollup[1].0 == expected[1].1,
        "{rollup:?}"
    );
    ensure!(rollup.iter().all(|r| r.2.requests == requests(&r.0)));

    // Limits.
    let patch = crate::plans::LimitsPatch {
        fuel: Some(42),
        ..Default::default()
    };
    storage.set_tenant_limits(&t.id, "pro", &patch).await?;
    let record = storage.get_tenant(&t.id).await?;
    ensure!(record.plan == "pro" && record.limits == patch);
    ensure!(matches!(
        storage
            .set_tenant_limits("ten_missing", "pro", &patch)
            .await,
        Err(StorageError::NotFound)
    ));

    // Organization plans and keys.
    storage.set_org_plan(&org.id, "pro").await?;
    ensure!(storage.get_org(&org.id).await?.plan == "pro");
    ensure!(matches!(
        storage.set_org_plan("org_missing", "pro").await,
        Err(StorageError::NotFound)
    ));
    let org_key = KeyRecord {
        id: unique("key"),
        secret_hash: "hash".to_owned(),
        kind: KeyKind::Org,
        org_id: org.id.clone(),
        tenant_id: None,
        revoked_at: None,
    };
    let tenant_key = KeyRecord {
        id: unique("key"),
        kind: KeyKind::Tenant,
        tenant_id: Some(t2.id.clone()),
        ..org_key.clone()
    };
    storage.insert_key(&org_key).await?;
    storage.insert_key(&tenant_key).await?;
    storage.revoke_org_keys(&org.id).await?;
    let org_key = storage.get_key(&org_key.id).await?.context("org key")?;
    ensure!(org_key.kind == KeyKind::Org && org_key.revoked_at.is_some());
    ensure!(
        storage
            .get_key(&tenant_key.id)
            .await?
            .context("tenant key")?
            .revoked_at
            .is_none(),
        "revoking an organization's keys leaves its tenants' keys"
    );

    // Log retention: by age, and by count.
    let lines: Vec<_> = (10..20).map(|seq| line(seq, "kept?")).collect();
    let rows: Vec<_> = lines.iter().map(|l| (t2.id.as_str(), l)).collect();
    storage.append_logs(&rows).await?;
    ensure!(storage.prune_logs(&t2.id, 1_012, 100).await? == 2, "by age");
    ensure!(storage.prune_logs(&t2.id, 0, 5).await? == 3, "by count");
    let left: Vec<u64> = storage
        .recent_logs(&t2.id, 100)
        .await?
        .iter()
        .map(|l| l.seq)
        .collect();
    ensure!(left == [15, 16, 17, 18, 19], "left {left:?}");
    // A batch larger than one statement carries, of no round size: every line lands.
    let lines: Vec<_> = (100..399).map(|seq| line(seq, "many")).collect();
    let rows: Vec<_> = lines.iter().map(|l| (t2.id.as_str(), l)).collect();
    storage.append_logs(&rows).await?;
    let seqs: Vec<u64> = storage
        .recent_logs(&t2.id, 1000)
        .await?
        .iter()
        .map(|l| l.seq)
        .collect();
    let expected: Vec<u64> = (15..20).chain(100..399).collect();
    ensure!(seqs == expected, "{} lines archived", seqs.len());

    // Wallet listing and resealing.
    ensure!(storage.wallet_any_owner().await?.is_some());
    let owners = storage.wallet_owners(None, 1_000_000).await?;
    ensure!(owners.contains(&t.id) && owners.contains(&t2.id));
    let mut sorted = owners.clone();
    sorted.sort();
    ensure!(owners == sorted, "owners in order");
    let after = storage.wallet_owners(Some(&owners[0]), 1_000_000).await?;
    ensure!(after == owners[1..], "after the first");
    ensure!(storage.wallet_owners(None, 1).await?.len() == 1);
    ensure!(
        !storage
            .wallet_reseal(&t.id, b"wrong nonce", b"new seed", b"n2")
            .await?
    );
    ensure!(
        storage
            .wallet_reseal(&t.id, &[4, 5], b"new seed", b"n2")
            .await?
    );
    let resealed = storage.wallet_get(&t.id).await?.context("wallet")?;
    ensure!(resealed.sealed_seed == b"new seed" && resealed.nonce == b"n2");

    // Host-wide values: the first claim wins; set replaces.
    let name = unique("meta");
    ensure!(storage.meta_claim(&name, "first").await? == "first");
    ensure!(storage.meta_claim(&name, "second").await? == "first");
    storage.meta_set(&name, "third").await?;
    ensure!(storage.meta_claim(&name, "fourth").await? == "third");
    storage.ping().await?;

    // Counting and cancelling a tenant's waiting tasks.
    for _ in 0..3 {
        storage
            .task_insert(&TaskRecord {
                id: unique("task"),
                tenant_id: t2.id.clone(),
                ..task.clone()
            })
            .await?;
    }
    ensure!(storage.task_count_active(&t2.id).await? == 3);
    // Newest first, a page at a time.
    let first_page = storage.task_list(&t2.id, 2, 0).await?;
    let second_page = storage.task_list(&t2.id, 2, 2).await?;
    ensure!(first_page.len() == 2 && second_page.len() == 1);
    let order: Vec<_> = first_page
        .iter()
        .chain(&second_page)
        .map(|t| (t.created_at.clone(), t.id.clone()))
        .collect();
    ensure!(order.is_sorted_by(|a, b| a >= b), "{order:?}");
    ensure!(
        first_page
            .iter()
            .chain(&second_page)
            .all(|t| t.status == "pending")
    );
    ensure!(storage.task_cancel_pending(&t2.id, "stopped").await? == 3);
    ensure!(storage.task_count_active(&t2.id).await? == 0);

    // Components: deleted once no version uses them.
    let lone = unique("sha");
    let t3 = tenant(&org.id, &unique("slug"));
    storage.create_tenant(&t3).await?;
    storage.add_deployment(&t3.id, &lone, b"lone", 1).await?;
    storage
        .add_deployment(&t3.id, &sha, b"component", 1)
        .await?;
    ensure!(storage.delete_deployments(&t3.id, &[1]).await? == std::slice::from_ref(&lone));
    ensure!(storage.delete_blob_if_unused(&lone).await?);
    ensure!(!storage.blob_exists(&lone).await?);

    // Delete frees the slug.
    storage.delete_tenant(&t.id).await?;
    ensure!(matches!(
        storage.get_tenant(&slug).await,
        Err(StorageError::NotFound)
    ));
    ensure!(matches!(
        storage.delete_tenant(&t.id).await,
        Err(StorageError::NotFound)
    ));
    storage.create_tenant(&tenant(&org.id, &slug)).await?;
    // The deleted tenant's archived lines go once old enough.
    ensure!(storage.prune_deleted_tenants_logs(i64::MAX).await? >= 2);
    ensure!(storage.recent_logs(&t.id, 10).await?.is_empty());
    Ok(())
}
