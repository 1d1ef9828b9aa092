// An organization's view (org key, or the operator looking at one).
import * as api from './api.js';
import { h, replace, table, fmtNum, fmtBytes, fmtMoney, fmtTime, status } from './dom.js';
import { tabs, load, confirmButton, daysAgo, isoDay, shownOnce } from './ui.js';
import { allTenants } from './operator.js';

export function orgView(root, ctx) {
  const { orgId, name } = ctx.params;
  root.append(h('h1', 'Organization ', name ? [h('span.org-name', { dataset: { testid: 'org-name' } }, name), ' '] : null, h('code', orgId)));
  tabs(root, [
    { id: 'tenants', label: 'Tenants', render: (p) => tenants(p, ctx, orgId) },
    { id: 'usage', label: 'Usage and cost', render: (p) => usage(p, orgId) },
    { id: 'keys', label: 'Keys', render: (p) => keys(p, ctx, orgId) },
  ], ctx.onLeave);
}

function tenants(panel, ctx, orgId) {
  const box = h('div');
  panel.append(box);
  load(box, async () => {
    const list = (await allTenants()).filter((t) => t.orgId === orgId);
    return table(['Name', 'Slug', 'Plan', 'Status', 'Active version', 'Updated'],
      list.map((t) => h('tr', { dataset: { tenant: t.slug } },
        h('td', h('button.link', { type: 'button', dataset: { testid: 'open-tenant' }, onclick: () => ctx.nav.open('tenant', { id: t.id }) }, t.name)),
        h('td', t.slug),
        h('td', t.plan),
        h('td', h('span.badge', t.status)),
        h('td', t.activeVersion ?? '—'),
        h('td', fmtTime(t.updatedAt)))), { dataset: { testid: 'tenant-table' } });
  });
}

function usage(panel, orgId) {
  const from = h('input', { type: 'date', value: daysAgo(30) });
  const to = h('input', { type: 'date', value: isoDay(new Date()) });
  const box = h('div');
  const run = () => load(box, async () => {
    const q = new URLSearchParams({ from: from.value, to: to.value });
    const u = await api.get(`/org/${encodeURIComponent(orgId)}/usage?${q}`);
    const cur = u.cost.currency;
    const row = (name, x, cost) => [name, fmtNum(x.requests), fmtNum(x.failures), fmtNum(x.fuel), fmtNum(x.wallMs),
      fmtBytes(x.bytesIn + x.bytesOut), fmtNum(x.tokens), fmtNum(x.kvOps), fmtMoney(cost, cur)];
    return [
      h('p.hint', `UTC, ${u.from} to ${u.to}; deleted tenants included.`),
      table(['Tenant', 'Requests', 'Failures', 'Fuel', 'Wall ms', 'Bytes', 'Tokens', 'KV ops', 'Cost'],
        [...u.tenants.map((t) => row(t.slug, t.usage, t.cost)),
          h('tr.total', row('Total', u.total, u.cost.total).map((c) => h('td', c)))], { dataset: { testid: 'org-usage' } }),
      h('h2', 'Cost estimate'),
      costTable(u.cost),
    ];
  });
  panel.append(h('form.inline', { onsubmit: (e) => { e.preventDefault(); run(); } },
    h('label', 'From ', from), h('label', 'To ', to), h('button', { type: 'submit' }, 'Show')), box);
  run();
}

export function costTable(cost) {
  return table(['Item', 'Quantity', 'Unit price', 'Amount'],
    [...cost.items.map((i) => [i.item, `${fmtNum(i.quantity, 6)} ${i.unit}`, String(i.unitPrice), fmtMoney(i.amount, cost.currency)]),
      h('tr.total', h('td', 'Total'), h('td'), h('td'), h('td', { dataset: { testid: 'cost-total' } }, fmtMoney(cost.total, cost.currency)))]);
}

function keys(panel, ctx, orgId) {
  const out = h('div');
  const st = status();
  panel.append(
    h('p', 'Rotating issues a new organization key and revokes every old one at once (tenant keys stay valid).'),
    confirmButton('Rotate organization key', 'Really rotate? Click again', async () => {
      try {
        const r = await api.post(`/orgs/${encodeURIComponent(orgId)}/keys/rotate`);
        const key = r.apiKey;
        if (ctx.session.role === 'org') api.setKey(key);
        replace(out, shownOnce('New organization key', key));
        st.set(ctx.session.role === 'org' ? 'Rotated. This session now uses the new key.' : 'Rotated.', 'ok');
      } catch (e) {
        st.set(e.message, 'error');
      }
    }, { dataset: { testid: 'rotate-org-key' } }),
    st, out);
}
