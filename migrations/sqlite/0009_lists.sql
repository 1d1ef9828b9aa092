-- GET /api/v1/orgs pages through organizations oldest first, and
-- GET /api/v1/converge through a tenant's tasks newest first, in index order.
CREATE INDEX orgs_created ON orgs (created_at, id);
CREATE INDEX convergence_tasks_tenant_created ON convergence_tasks (tenant_id, created_at, id);
