-- Lodge control-plane schema (SQLite).

CREATE TABLE orgs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    plan        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE tenants (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES orgs(id),
    name            TEXT NOT NULL,
    slug            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('provisioning', 'running', 'stopped', 'error', 'destroyed')),
    plan            TEXT NOT NULL,
    active_version  INTEGER,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    deleted_at      TEXT
);
-- A slug is taken only while its tenant lives; a soft delete frees it.
CREATE UNIQUE INDEX tenants_live_slug ON tenants (slug) WHERE deleted_at IS NULL;
CREATE INDEX tenants_org ON tenants (org_id, created_at);

-- Keys are random; only a SHA-256 of the secret part is kept.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('org', 'tenant')),
    org_id      TEXT NOT NULL REFERENCES orgs(id),
    tenant_id   TEXT REFERENCES tenants(id),
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- Components, content-addressed and shared by every tenant that deploys the same bytes.
CREATE TABLE blobs (
    sha256      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    bytes       BLOB NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE deployments (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    version     INTEGER NOT NULL,
    sha256      TEXT NOT NULL REFERENCES blobs(sha256),
    size        INTEGER NOT NULL,
    compile_ms  INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, version)
);

CREATE TABLE tenant_env (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE tenant_logs (
    tenant_id    TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    request_id   TEXT NOT NULL,
    stream       TEXT NOT NULL,
    message      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

CREATE TABLE usage_daily (
    tenant_id   TEXT NOT NULL,
    day         TEXT NOT NULL,
    requests    INTEGER NOT NULL DEFAULT 0,
    failures    INTEGER NOT NULL DEFAULT 0,
    fuel        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day)
);
