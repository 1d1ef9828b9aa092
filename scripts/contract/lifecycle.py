"""One tenant's lifecycle through a client generated from the host's OpenAPI document.

    python lifecycle.py URL ADMIN_TOKEN COMPONENT.wasm CLIENT_DIR

CLIENT_DIR holds the package `lodge_client` that openapi-python-client generated
(scripts/contract/check.sh does both). Every call goes through the generated
code, which raises on a status the document does not list: create an
organization (admin token), spawn a tenant (its organization's key), deploy the
component, call the tenant's app, read its status, usage, logs and its
organization's usage, delete the tenant. Exits non-zero at the first surprise.
"""

import io
import sys
import uuid

url, admin_token, wasm_path, client_dir = sys.argv[1:5]
sys.path.insert(0, client_dir)

import httpx  # noqa: E402  (a dependency of the generated client)
from lodge_client import AuthenticatedClient  # noqa: E402
from lodge_client.api.deployments import deploy_component, list_deployments  # noqa: E402
from lodge_client.api.orgs import create_org  # noqa: E402
from lodge_client.api.tenants import delete_tenant, spawn_tenant, tenant_logs, tenant_status  # noqa: E402
from lodge_client.api.usage import org_usage, tenant_usage  # noqa: E402
from lodge_client.models import CreateOrg, Granularity, SpawnTenant  # noqa: E402
from lodge_client.types import File  # noqa: E402


def client(token):
    return AuthenticatedClient(base_url=url, token=token, raise_on_unexpected_status=True, timeout=60.0)


def expect(step, response, status):
    if response.status_code != status:
        sys.exit(f"{step}: expected {status}, got {response.status_code}: {response.content!r}")
    print(f"ok  {step} ({status})")
    return response.parsed


admin = client(admin_token)
suffix = uuid.uuid4().hex[:8]
created = expect("create organization", create_org.sync_detailed(client=admin, body=CreateOrg(name=f"Lifecycle {suffix}")), 201)
org_id = created.org.id
org = client(created.api_key)

spawned = expect("spawn tenant", spawn_tenant.sync_detailed(client=org, body=SpawnTenant(name=f"lifecycle-{suffix}")), 201)
tenant = spawned.tenant
assert tenant.org_id == org_id and tenant.api_key, tenant
tenant_client = client(tenant.api_key)

with open(wasm_path, "rb") as f:
    wasm = f.read()
deployed = expect(
    "deploy component",
    deploy_component.sync_detailed(
        tenant.id, client=tenant_client, body=File(payload=io.BytesIO(wasm), file_name="app.wasm", mime_type="application/wasm")
    ),
    201,
)
assert deployed.deployment.version == 1 and deployed.deployment.active, deployed

answer = httpx.get(f"{url}/tenants/{tenant.slug}/lifecycle", timeout=60.0)
if answer.status_code != 200:
    sys.exit(f"call the app: expected 200, got {answer.status_code}: {answer.text!r}")
print(f"ok  call the app (200): {answer.text.strip()[:60]}")

status = expect("tenant status", tenant_status.sync_detailed(tenant.id, client=tenant_client), 200)
assert status.active_version == 1 and status.counts.requests >= 1, status

usage = expect("tenant usage", tenant_usage.sync_detailed(tenant.id, client=tenant_client, granularity=Granularity.HOUR), 200)
assert usage.total.requests >= 1, usage.total
assert usage.buckets, usage

logs = expect("tenant logs", tenant_logs.sync_detailed(tenant.id, client=tenant_client, limit=100), 200)
assert isinstance(logs.lines, list), logs

history = expect("deployments", list_deployments.sync_detailed(tenant.id, client=tenant_client), 200)
assert [d.version for d in history.deployments] == [1], history

by_org = expect("organization usage", org_usage.sync_detailed(org_id, client=org), 200)
assert any(t.tenant_id == tenant.id and t.usage.requests >= 1 for t in by_org.tenants), by_org

gone = expect("delete tenant", delete_tenant.sync_detailed(tenant.id, client=org), 200)
assert gone.tenant.status.value == "destroyed", gone
expect("status after delete", tenant_status.sync_detailed(tenant.id, client=org), 404)
answer = httpx.get(f"{url}/tenants/{tenant.slug}/", timeout=60.0)
if answer.status_code != 404:
    sys.exit(f"call the deleted app: expected 404, got {answer.status_code}")
print("ok  call the deleted app (404)")
print("lifecycle: every step passed")
