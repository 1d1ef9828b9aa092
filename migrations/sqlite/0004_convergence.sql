-- Convergence: durable asynchronous tasks, and tokens in daily usage.

CREATE TABLE convergence_tasks (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    request     TEXT NOT NULL,   -- JSON ConvergeRequest
    outcome     TEXT,            -- JSON Outcome when done
    error       TEXT,
    webhook_url TEXT,
    webhook_status TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX convergence_tasks_pending ON convergence_tasks (status, created_at);

ALTER TABLE usage_daily ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0;
