-- Plans: a tenant's own limit overrides (JSON object of LimitsPatch fields).
ALTER TABLE tenants ADD COLUMN limits_override TEXT NOT NULL DEFAULT '{}';

-- Usage per tenant per UTC hour (`YYYY-MM-DDTHH`); days and totals are sums.
CREATE TABLE usage_hourly (
    tenant_id         TEXT NOT NULL,
    hour              TEXT NOT NULL,
    requests          INTEGER NOT NULL DEFAULT 0,
    failures          INTEGER NOT NULL DEFAULT 0,
    status_2xx        INTEGER NOT NULL DEFAULT 0,
    status_3xx        INTEGER NOT NULL DEFAULT 0,
    status_4xx        INTEGER NOT NULL DEFAULT 0,
    status_5xx        INTEGER NOT NULL DEFAULT 0,
    fuel              INTEGER NOT NULL DEFAULT 0,
    wall_ms           INTEGER NOT NULL DEFAULT 0,
    peak_memory_bytes INTEGER NOT NULL DEFAULT 0,
    bytes_in          INTEGER NOT NULL DEFAULT 0,
    bytes_out         INTEGER NOT NULL DEFAULT 0,
    outbound_requests INTEGER NOT NULL DEFAULT 0,
    tokens            INTEGER NOT NULL DEFAULT 0,
    kv_ops            INTEGER NOT NULL DEFAULT 0,
    wallet_txs        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, hour)
);

-- Earlier daily rows become the first hour of their day.
INSERT INTO usage_hourly (tenant_id, hour, requests, failures, fuel, tokens)
SELECT tenant_id, day || 'T00', requests, failures, fuel, tokens FROM usage_daily;

DROP TABLE usage_daily;
