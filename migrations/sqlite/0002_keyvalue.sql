-- wasi:keyvalue storage, scoped by tenant; usage kept beside it for quotas.

CREATE TABLE kv (
    tenant_id   TEXT NOT NULL,
    bucket      TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       BLOB NOT NULL,
    PRIMARY KEY (tenant_id, bucket, key)
);

CREATE TABLE kv_usage (
    tenant_id   TEXT PRIMARY KEY,
    keys        INTEGER NOT NULL DEFAULT 0,
    bytes       INTEGER NOT NULL DEFAULT 0
);
