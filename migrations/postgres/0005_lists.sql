-- GET /api/v1/orgs pages through organizations oldest first, and
-- GET /api/v1/converge through a tenant's tasks newest first, in index order
-- (ids compare bytewise, as listed; task ids are COLLATE "C" already).
CREATE INDEX orgs_created ON orgs (created_at, id COLLATE "C");
CREATE INDEX convergence_tasks_tenant_created ON convergence_tasks (tenant_id, created_at, id);
