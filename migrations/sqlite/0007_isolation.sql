-- Fair sharing between tenants: per-tenant task counts (pending cap, fair
-- claims) and log pruning by age.
CREATE INDEX convergence_tasks_tenant ON convergence_tasks (tenant_id, status);
CREATE INDEX tenant_logs_time ON tenant_logs (timestamp_ms);
CREATE INDEX deployments_sha256 ON deployments (sha256);
