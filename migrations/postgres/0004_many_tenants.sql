-- 100,000 tenants on one host: the tenant list pages in index order instead
-- of sorting every tenant on every call (ids compare bytewise, as listed).
CREATE INDEX tenants_created ON tenants (created_at, id COLLATE "C");
CREATE INDEX tenants_org_created ON tenants (org_id, created_at, id COLLATE "C");
-- A restart pages through live tenants by id, bytewise.
CREATE INDEX tenants_live_id ON tenants (id COLLATE "C") WHERE deleted_at IS NULL;
