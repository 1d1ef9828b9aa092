// The operator's view (admin token): host health, tenants, organizations,
// plans and limit events.
import * as api from './api.js';
import { h, replace, table, dl, fmtNum, fmtBytes, fmtTime, status } from './dom.js';
import { parseMetrics, sum, value } from './metrics.js';
import { tabs, load } from './ui.js';
import { timeChart } from './chart.js';

export function operatorView(root, ctx) {
  root.append(h('h1', 'Operator'));
  tabs(root, [
    { id: 'health', label: 'Host health', render: (p, stop) => health(p, stop) },
    { id: 'tenants', label: 'Tenants', render: (p) => tenants(p, ctx) },
    { id: 'orgs', label: 'Organizations', render: (p) => orgs(p, ctx) },
    { id: 'plans', label: 'Plans', render: (p) => plans(p) },
    { id: 'limits', label: 'Limit events', render: (p) => limitEvents(p, ctx) },
  ], ctx.onLeave);
}

/** Every tenant the key may list. */
export const allTenants = () => api.allPages('/tenant', 'tenants');

function health(panel, stop) {
  const cards = h('div.cards', { dataset: { testid: 'health' } });
  const st = status('Reading /metrics…');
  const chartBox = h('div.chart-box');
  panel.append(h('p.hint', 'From /metrics on this host (refreshed every 5 s). Requests per second is the change between two readings.'), st, cards, chartBox);
  const samples = { t: [], rps: [] };
  let last = null;
  let chart = null;
  const tick = async () => {
    let m;
    try {
      m = parseMetrics(await api.metricsText());
    } catch (e) {
      st.set(e.message, 'error');
      return;
    }
    const now = Date.now() / 1000;
    const total = sum(m, 'lodge_requests_total');
    const rps = last ? Math.max(0, (total - last.total) / (now - last.t)) : null;
    last = { t: now, total };
    st.set(`Updated ${fmtTime(Date.now())}`);
    const tier = (name, t) => sum(m, name, (l) => l.tier === t);
    const card = (title, v, sub, id) => h('div.metric', { dataset: { testid: `metric-${id}` } },
      h('div.metric-title', title), h('div.metric-value', v), sub ? h('div.metric-sub', sub) : null);
    replace(cards,
      card('Requests / s', rps === null ? '…' : fmtNum(rps, 2), `${fmtNum(total)} since start`, 'rps'),
      card('Instances in use', `${fmtNum(value(m, 'lodge_instances_in_use'))} / ${fmtNum(value(m, 'lodge_instance_slots'))}`,
        `${fmtNum(value(m, 'lodge_instances_kept'))} kept · ${fmtNum(value(m, 'lodge_active_tenants'))} active tenants`, 'instances'),
      card('Memory budget', `${fmtBytes(value(m, 'lodge_memory_budget_used_bytes'))} / ${fmtBytes(value(m, 'lodge_memory_budget_bytes'))}`,
        `fair share ${fmtBytes(value(m, 'lodge_memory_fair_share_bytes'))}`, 'memory'),
      card('Compile queue', fmtNum(value(m, 'lodge_optimize_queue')),
        `${fmtNum(value(m, 'lodge_compiles_total'))} compiles · ${fmtNum(value(m, 'lodge_compile_seconds_total'), 1)} s`, 'queue'),
      card('Tiers (components)', `${fmtNum(tier('lodge_components_loaded_by_tier', 'baseline'))} baseline · ${fmtNum(tier('lodge_components_loaded_by_tier', 'optimized'))} optimized`,
        `${fmtNum(value(m, 'lodge_tier_ups_total'))} tier-ups · ${fmtNum(value(m, 'lodge_components_loaded'))} loaded`, 'tiers'),
      card('Connections', fmtNum(value(m, 'lodge_connections_open')), `${fmtNum(value(m, 'lodge_connections_refused_total'))} refused`, 'connections'),
      card('CPU waits', fmtNum(value(m, 'lodge_cpu_waits_total')), 'guests that waited for a CPU lane', 'cpu'),
      card('Artifact cache', `${fmtNum(value(m, 'lodge_artifact_cache_hits_total'))} hits`, `${fmtNum(value(m, 'lodge_artifact_cache_misses_total'))} misses`, 'cache'),
      card('Limits hit', fmtNum(sum(m, 'lodge_limits_hit_total')), `${fmtNum(sum(m, 'lodge_guest_failures_total'))} guest failures`, 'limits'),
      card('Database', { 1: 'up', 0: 'unreachable' }[value(m, 'lodge_database_up')] ?? '—', 'last check (every 15 s)', 'database'),
      card('Log archive queue', `${fmtNum(value(m, 'lodge_log_archive_queue'))} / ${fmtNum(value(m, 'lodge_log_archive_queue_capacity'))}`,
        `${fmtNum(sum(m, 'lodge_log_lines_dropped_total'))} dropped · ${fmtNum(value(m, 'lodge_log_archive_lines_lost_total'))} not written`, 'log-archive'));
    if (rps !== null) {
      samples.t.push(now);
      samples.rps.push(rps);
      if (samples.t.length > 120) { samples.t.shift(); samples.rps.shift(); }
      if (chart && chart.uplot) chart.uplot.setData([samples.t, samples.rps]);
      else if (!chart) {
        chart = timeChart('Requests per second (this session)', samples.t, [{ label: 'req/s', values: samples.rps }], { testid: 'rps-chart' });
        chartBox.append(chart);
      }
    }
  };
  tick().then(() => setTimeout(tick, 1000));
  const timer = setInterval(tick, 5000);
  stop(() => clearInterval(timer));
}

function tenants(panel, ctx) {
  const box = h('div');
  panel.append(h('p.hint', 'Every tenant on the host. Open one to manage it.'), box);
  load(box, async () => {
    const list = await allTenants();
    return table(['Name', 'Slug', 'Organization', 'Plan', 'Status', 'Active version', 'Created'],
      list.map((t) => h('tr', { dataset: { tenant: t.slug } },
        h('td', h('button.link', { type: 'button', dataset: { testid: 'open-tenant' }, onclick: () => ctx.nav.open('tenant', { id: t.id }) }, t.name)),
        h('td', t.slug),
        h('td', t.orgId ? h('button.link', { type: 'button', onclick: () => ctx.nav.open('org', { orgId: t.orgId }) }, t.orgId) : '—'),
        h('td', t.plan),
        h('td', h(`span.badge.s-${cls(t.status)}`, t.status)),
        h('td', t.activeVersion ?? '—'),
        h('td', fmtTime(t.createdAt)))), { dataset: { testid: 'tenant-table' } });
  });
}

function cls(s) { return String(s).replace(/[^a-z0-9-]/gi, ''); }

/** Every organization the key may list, oldest first. */
const allOrgs = () => api.allPages('/orgs', 'orgs');

function orgs(panel, ctx) {
  const box = h('div');
  panel.append(h('p.hint', 'Every organization on the host (GET /orgs), with its live tenants. Open one to see its tenants, usage and keys.'), box);
  load(box, async () => {
    const list = await allOrgs();
    return table(['Name', 'Id', 'Plan', 'Tenants', 'Created'],
      list.map((o) => h('tr', { dataset: { org: o.id } },
        h('td', h('button.link', { type: 'button', dataset: { testid: 'open-org' }, onclick: () => ctx.nav.open('org', { orgId: o.id, name: o.name }) }, o.name)),
        h('td', h('code', o.id)),
        h('td', o.plan),
        h('td', { dataset: { testid: 'org-tenants' } }, fmtNum(o.tenants)),
        h('td', fmtTime(o.createdAt)))), { dataset: { testid: 'org-table' } });
  });
}

export async function plansTables() {
  const { plans: ps, prices } = await api.get('/plans');
  const names = Object.keys(ps);
  const fields = [...new Set(names.flatMap((n) => Object.keys(ps[n])))];
  const show = (v) => (Array.isArray(v) ? (v.length ? v.join(', ') : '—') : String(v));
  return [
    h('h2', 'Plans'),
    table(['Limit', ...names], fields.map((f) => [f, ...names.map((n) => show(ps[n][f]))]), { dataset: { testid: 'plans-table' } }),
    h('h2', `Prices (${prices.currency})`),
    table(['Item', 'Price'], Object.entries(prices).filter(([k]) => k !== 'currency').map(([k, v]) => [k.replace(/_/g, ' '), String(v)])),
  ];
}

function plans(panel) {
  const box = h('div');
  panel.append(box);
  load(box, plansTables);
}

function limitEvents(panel) {
  const counts = h('div');
  const recent = h('div');
  panel.append(
    h('h2', 'Counts since the host started'),
    h('p.hint', 'lodge_limits_hit_total and lodge_guest_failures_total from /metrics (tenants past the first 100 are counted as _other).'),
    counts,
    h('h2', 'Recent host notes in tenants\' logs'),
    h('p.hint', 'Lines the host wrote into tenants\' logs (limits hit, traps, refusals), newest first, from the last 50 lines of up to 25 tenants.'),
    recent);
  load(counts, async () => {
    const m = parseMetrics(await api.metricsText());
    const rows = [];
    for (const s of m.get('lodge_limits_hit_total') || []) if (s.value > 0) rows.push([s.labels.tenant, s.labels.limit, fmtNum(s.value)]);
    for (const s of m.get('lodge_guest_failures_total') || []) if (s.value > 0) rows.push([s.labels.tenant, `guest ${s.labels.kind}`, fmtNum(s.value)]);
    return table(['Tenant', 'Event', 'Count'], rows, { dataset: { testid: 'limit-counts' } });
  });
  load(recent, async () => {
    const list = (await allTenants()).filter((t) => t.status !== 'deleted').slice(0, 25);
    const lines = [];
    await Promise.all(list.map(async (t) => {
      try {
        const { lines: ls } = await api.get(`/tenant/${encodeURIComponent(t.id)}/logs?limit=50`);
        for (const l of ls) if (l.stream === 'host') lines.push({ ...l, slug: t.slug });
      } catch { /* a tenant deleted meanwhile */ }
    }));
    lines.sort((a, b) => b.timestampMs - a.timestampMs);
    return table(['Time', 'Tenant', 'Request', 'Note'],
      lines.slice(0, 50).map((l) => [fmtTime(l.timestampMs), l.slug, l.requestId || '—', h('span.msg', l.message)]), { dataset: { testid: 'host-notes' } });
  });
}

export { dl };
