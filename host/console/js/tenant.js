// A tenant's view: status and limits, deployments (deploy by drop, one-click
// rollback), env names, live logs, usage charts with cost, wallet, tasks.
import * as api from './api.js';
import { h, replace, table, dl, fmtNum, fmtBytes, fmtMoney, fmtTime, status } from './dom.js';
import { tabs, load, confirmButton, daysAgo, isoDay, shownOnce } from './ui.js';
import { timeChart } from './chart.js';
import { costTable } from './org.js';

export function tenantView(root, ctx) {
  const id = ctx.params.id;
  const base = `/tenant/${encodeURIComponent(id)}`;
  const title = h('h1', 'Tenant');
  root.append(title);
  api.get(`${base}/status`).then((st) => {
    replace(title, 'Tenant ', h('span.tenant-name', { dataset: { testid: 'tenant-name' } }, st.tenant.name), ' ', h('code', st.tenant.slug));
  }).catch(() => {});
  const t = { id, base, ctx };
  tabs(root, [
    { id: 'overview', label: 'Status and limits', render: (p) => overview(p, t) },
    { id: 'deploy', label: 'Deployments', render: (p) => deployments(p, t) },
    { id: 'logs', label: 'Live logs', render: (p, stop) => logs(p, t, stop) },
    { id: 'usage', label: 'Usage and cost', render: (p) => usage(p, t) },
    { id: 'env', label: 'Environment', render: (p) => env(p, t) },
    { id: 'wallet', label: 'Wallet', render: (p) => wallet(p, t) },
    { id: 'tasks', label: 'Convergence tasks', render: (p) => tasks(p, t) },
  ], ctx.onLeave, ctx.params.tab);
}

function overview(panel, t) {
  const box = h('div');
  const keys = h('div');
  panel.append(box, keys);
  load(box, async () => {
    const [st, lim] = await Promise.all([api.get(`${t.base}/status`), api.get(`${t.base}/limits`)]);
    const tn = st.tenant;
    const app = `/tenants/${encodeURIComponent(tn.slug)}/`;
    const overridden = new Set(Object.keys(lim.overrides || {}));
    const show = (v) => (Array.isArray(v) ? (v.length ? v.join(', ') : '—') : String(v));
    return [
      h('div.grid2',
        h('section.card',
          h('h2', 'Status'),
          dl([
            ['Name', tn.name], ['Slug', tn.slug], ['Id', tn.id], ['Organization', tn.orgId || '—'],
            ['Status', h('span.badge', { dataset: { testid: 'tenant-status' } }, tn.status)],
            ['Active version', h('span', { dataset: { testid: 'active-version' } }, st.activeVersion ?? '—')],
            ['SHA-256', st.activeSha256 ? h('code', st.activeSha256) : '—'],
            ['Code tier', st.tier || '— (not in memory)'],
            ['App', h('a', { href: app, target: '_blank', rel: 'noopener noreferrer' }, app)],
            ['Requests', `${fmtNum(st.counts.requests)} (${fmtNum(st.counts.failures)} failed, ${fmtNum(st.counts.inFlight)} in flight)`],
            ['Last error', st.lastError ? h('span.msg', typeof st.lastError === 'string' ? st.lastError : JSON.stringify(st.lastError)) : '—'],
            ['Env names', st.env.length ? st.env.join(', ') : '—'],
          ], { dataset: { testid: 'status' } })),
        h('section.card',
          h('h2', 'Limits in force'),
          h('p.hint', `Plan ${lim.plan}; fields marked * are this tenant's own overrides.`),
          table(['Limit', 'Value'], Object.entries(lim.effective).map(([k, v]) => [overridden.has(k) ? `${k} *` : k, show(v)]), { dataset: { testid: 'limits' } }))),
    ];
  });
  const st = status();
  const out = h('div');
  replace(keys, h('section.card',
    h('h2', 'Keys'),
    h('p', 'Rotating issues a new tenant key and revokes the old ones (log streams opened with them end within a second).'),
    confirmButton('Rotate tenant key', 'Really rotate? Click again', async () => {
      try {
        const r = await api.post(`${t.base}/keys/rotate`);
        const key = r.apiKey || r.key;
        if (t.ctx.session.role === 'tenant') api.setKey(key);
        replace(out, shownOnce('New tenant key', key));
        st.set(t.ctx.session.role === 'tenant' ? 'Rotated. This session now uses the new key.' : 'Rotated.', 'ok');
      } catch (e) { st.set(e.message, 'error'); }
    }, { dataset: { testid: 'rotate-tenant-key' } }), st, out));
}

function deployments(panel, t) {
  const input = h('input.file-input#wasm-input', { type: 'file', accept: '.wasm,application/wasm', dataset: { testid: 'wasm-input' } });
  const zone = h('label.dropzone', { for: 'wasm-input', dataset: { testid: 'dropzone' } },
    h('strong', 'Drop a .wasm component here'), h('span', ' or click to choose one'));
  const progress = h('progress', { max: 100, value: 0, hidden: true });
  const result = h('div.deploy-result', { dataset: { testid: 'deploy-result' }, 'aria-live': 'polite' });
  const list = h('div');

  const refresh = () => load(list, async () => {
    const d = await api.get(`${t.base}/deployments`);
    return table(['Version', 'SHA-256', 'Size', 'Compile', 'Created', ''],
      d.deployments.map((v) => h('tr', { dataset: { version: v.version } },
        h('td', `v${v.version}`),
        h('td', h('code', v.sha256.slice(0, 12))),
        h('td', fmtBytes(v.size)),
        h('td', `${fmtNum(v.compileMs)} ms`),
        h('td', fmtTime(v.createdAt)),
        h('td', v.active
          ? h('span.badge.s-running', { dataset: { testid: 'active' } }, 'active')
          : h('button', { type: 'button', dataset: { testid: 'rollback', version: v.version }, onclick: (e) => rollback(v.version, e.target) }, `Roll back to v${v.version}`)))),
      { dataset: { testid: 'deployments' } });
  });

  const rollback = async (version, button) => {
    button.disabled = true;
    try {
      const r = await api.post(`${t.base}/rollback`, { version });
      replace(result, h('p.status.ok', `Version ${r.deployment.version} is active again.`));
    } catch (e) {
      replace(result, h('p.status.error', `Rollback refused (${e.status} ${e.code}): ${e.message}`));
    }
    refresh();
  };

  // The one path every file takes, dropped or chosen.
  const deploy = async (file) => {
    if (!file) return;
    progress.hidden = false;
    progress.value = 0;
    replace(result, h('p.status', `Uploading ${file.name} (${fmtBytes(file.size)})…`));
    try {
      const r = await api.upload(`${t.base}/component`, file, (loaded, total) => {
        progress.value = Math.round((loaded / total) * 100);
        if (loaded === total) replace(result, h('p.status', 'Uploaded; validating and compiling…'));
      });
      const d = r.deployment;
      replace(result, h('p.status.ok', { dataset: { testid: 'deploy-ok' } },
        `Deployed ${file.name} as version ${d.version}: ${fmtBytes(d.size)}, sha256 ${d.sha256.slice(0, 12)}…, compiled in ${d.compileMs} ms`
        + (r.tier ? ` (${r.tier} tier${r.optimizedInMs ? `; optimised code in about ${r.optimizedInMs} ms` : ''})` : '') + '.'));
    } catch (e) {
      replace(result, h('p.status.error', { dataset: { testid: 'deploy-refused' } },
        `Refused (${e.status} ${e.code}): `, h('span.msg', e.message)));
    } finally {
      progress.value = 100;
      setTimeout(() => { progress.hidden = true; }, 800);
    }
    refresh();
  };

  input.addEventListener('change', () => {
    const file = input.files[0];
    input.value = '';
    deploy(file);
  });
  for (const ev of ['dragenter', 'dragover']) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add('over'); });
  }
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    deploy(e.dataTransfer.files[0]);
  });

  panel.append(h('h2', 'Deploy'), zone, input, progress, result, h('h2', 'Versions'), list);
  refresh();
}

function logs(panel, t, stop) {
  const filter = h('input', { type: 'search', placeholder: 'request id', spellcheck: false, dataset: { testid: 'log-filter' } });
  const st = status();
  const ol = h('ol.log', { dataset: { testid: 'log-lines' } });
  const toggle = h('button', { type: 'button', dataset: { testid: 'follow' } }, 'Stop following');
  let lastSeq = 0;
  let controller = null;

  const matches = (li) => !filter.value.trim() || li.dataset.requestId === filter.value.trim();
  const applyFilter = () => { for (const li of ol.children) li.hidden = !matches(li); };
  filter.addEventListener('input', applyFilter);

  const add = (l) => {
    if (l.seq <= lastSeq) return;
    lastSeq = l.seq;
    const li = h(`li.line.stream-${l.stream === 'stdout' || l.stream === 'stderr' ? l.stream : 'host'}`,
      { dataset: { requestId: l.requestId || '', seq: l.seq } },
      h('time', fmtTime(l.timestampMs)), ' ',
      h('button.link.rid', { type: 'button', title: 'show only this request', onclick: () => { filter.value = l.requestId; applyFilter(); } }, l.requestId || '—'), ' ',
      h('span.stream', l.stream), ' ',
      h('span.msg', l.message));
    li.hidden = !matches(li);
    const atBottom = ol.scrollTop + ol.clientHeight >= ol.scrollHeight - 4;
    ol.append(li);
    while (ol.children.length > 2000) ol.firstChild.remove();
    if (atBottom) ol.scrollTop = ol.scrollHeight;
  };

  const follow = async () => {
    controller = new AbortController();
    toggle.textContent = 'Stop following';
    st.set('Following (new lines appear as they are written)…', 'ok');
    panel.dataset.following = 'true';
    try {
      await api.streamEvents(`${t.base}/logs?follow=true&since=${lastSeq}`, (ev) => {
        if (ev.event === 'log') add(JSON.parse(ev.data));
        else if (ev.event === 'end') {
          let reason = ev.data;
          try { reason = JSON.parse(ev.data).reason; } catch { /* text */ }
          st.set(`The stream ended: ${reason}`, 'error');
        }
      }, controller.signal);
      if (!controller.signal.aborted && !/ended/.test(st.textContent)) st.set('The stream ended.');
    } catch (e) {
      if (e.name !== 'AbortError') st.set(e.message, 'error');
    }
    panel.dataset.following = 'false';
    toggle.textContent = 'Follow';
    controller = null;
  };
  toggle.addEventListener('click', () => {
    if (controller) { controller.abort(); st.set('Stopped.'); } else follow();
  });
  stop(() => controller && controller.abort());

  panel.append(h('div.toolbar', h('label', 'Filter by request id ', filter), toggle), st, ol,
    h('p.hint', 'Guest stdout/stderr and the host\'s notes, shown as plain text. Click a request id to see only that request.'));
  api.get(`${t.base}/logs?limit=200`).then(({ lines }) => {
    for (const l of lines) add(l);
  }).catch((e) => st.set(e.message, 'error')).finally(() => follow());
}

const USAGE_CHARTS = [
  ['Requests by status', [['2xx', 'status2xx'], ['3xx', 'status3xx'], ['4xx', 'status4xx'], ['5xx', 'status5xx']], 'requests'],
  ['Fuel', [['fuel', 'fuel']], 'fuel'],
  ['Wall time (ms)', [['wall ms', 'wallMs']], 'wall'],
  ['Convergence tokens', [['tokens', 'tokens']], 'tokens'],
  ['Key-value operations', [['KV ops', 'kvOps']], 'kv'],
  ['Bytes', [['in', 'bytesIn'], ['out', 'bytesOut']], 'bytes'],
];
const TOTALS = ['requests', 'failures', 'status2xx', 'status3xx', 'status4xx', 'status5xx', 'fuel', 'wallMs', 'bytesIn', 'bytesOut', 'outboundRequests', 'tokens', 'kvOps', 'walletTxs'];

/** Bucket-start seconds from the API's `YYYY-MM-DDTHH` or an ISO time. */
function secs(s) {
  const iso = /^\d{4}-\d{2}-\d{2}T\d{2}$/.test(s) ? `${s}:00:00Z` : s;
  return Math.floor(new Date(iso).getTime() / 1000);
}

function usage(panel, t) {
  const from = h('input', { type: 'date', value: daysAgo(1), dataset: { testid: 'usage-from' } });
  const to = h('input', { type: 'date', value: isoDay(new Date()), dataset: { testid: 'usage-to' } });
  const gran = h('select', { dataset: { testid: 'usage-granularity' } }, h('option', { value: 'hour' }, 'by hour'), h('option', { value: 'day' }, 'by day'));
  const box = h('div');
  const run = () => load(box, async () => {
    const q = new URLSearchParams({ from: from.value, to: to.value, granularity: gran.value });
    const u = await api.get(`${t.base}/usage?${q}`);
    const step = gran.value === 'hour' ? 3600 : 86400;
    const byStart = new Map(u.buckets.map((b) => [secs(b.start), b]));
    const xsSet = new Set(byStart.keys());
    const first = Math.floor(secs(u.from) / step) * step;
    const last = secs(u.to);
    for (let x = first; x <= last && xsSet.size < 5000; x += step) xsSet.add(x);
    const xs = [...xsSet].sort((a, b) => a - b);
    const col = (field) => xs.map((x) => (byStart.has(x) ? byStart.get(x)[field] || 0 : 0));
    // Totals are summed from the plotted buckets, so they show what the charts hold.
    const plotted = Object.fromEntries(TOTALS.map((f) => [f, u.buckets.reduce((a, b) => a + (b[f] || 0), 0)]));
    const charts = USAGE_CHARTS.map(([title, series, id]) => timeChart(title, xs,
      series.map(([label, field]) => ({ label, values: col(field) })), { testid: `chart-${id}` }));
    return [
      h('p.hint', `UTC, ${u.from} to ${u.to}, ${u.buckets.length} ${gran.value === 'hour' ? 'hours' : 'days'} with traffic.`),
      h('div.charts', charts),
      h('h2', 'Totals'),
      table(['Measure', 'Total'], TOTALS.map((f) => h('tr', h('td', f), h('td', { dataset: { testid: `usage-total-${f}`, value: plotted[f] } }, fmtNum(plotted[f])))), { dataset: { testid: 'usage-totals' } }),
      h('h2', 'Cost estimate'),
      costTable(u.cost),
    ];
  });
  panel.append(h('form.inline', { onsubmit: (e) => { e.preventDefault(); run(); } },
    h('label', 'From ', from), h('label', 'To ', to), h('label', 'Granularity ', gran), h('button', { type: 'submit', dataset: { testid: 'usage-show' } }, 'Show')), box);
  run();
}

function env(panel, t) {
  const names = h('div');
  const st = status();
  const tableOf = (list) => table(['Name', ''], list.map((n) => h('tr', { dataset: { env: n } },
    h('td', h('code', n)),
    h('td', h('button', { type: 'button', dataset: { testid: 'unset-env' }, onclick: () => put({ [n]: null }, `${n} removed.`) }, 'Unset')))), { dataset: { testid: 'env-names' } });
  const render = (list) => replace(names, tableOf(list));
  const put = async (vars, done) => {
    try {
      const r = await api.api('PUT', `${t.base}/env`, { vars });
      render(r.names);
      st.set(done, 'ok');
    } catch (e) { st.set(`Refused (${e.code}): ${e.message}`, 'error'); }
  };
  const name = h('input', { type: 'text', placeholder: 'NAME', spellcheck: false, required: true, dataset: { testid: 'env-name' } });
  const val = h('input', { type: 'password', placeholder: 'value', autocomplete: 'off', dataset: { testid: 'env-value' } });
  panel.append(
    h('p.hint', 'Values are write-only: the API answers with names only, and the console never shows a value.'),
    h('form.inline', {
      onsubmit: (e) => {
        e.preventDefault();
        const n = name.value.trim();
        const v = val.value;
        val.value = '';
        if (n) put({ [n]: v }, `${n} set.`).then(() => { name.value = ''; });
      },
    }, h('label', 'Name ', name), h('label', 'Value ', val), h('button', { type: 'submit' }, 'Set')),
    st, names);
  load(names, async () => tableOf((await api.get(`${t.base}/status`)).env));
}

function wallet(panel, t) {
  const box = h('div');
  const run = () => load(box, async () => {
    const w = await api.get(`${t.base}/wallet`);
    return [
      dl([['Address', h('code', w.address)], ['Balance', h('strong', { dataset: { testid: 'wallet-balance' } }, fmtNum(w.balance))]]),
      h('h2', 'History (newest 20)'),
      table(['#', 'Time', 'Kind', 'Counterparty', 'Amount', 'Memo'],
        w.history.map((e) => [String(e.seq), fmtTime(e.createdAt), e.kind, h('code', e.counterparty), fmtNum(e.amount), h('span.msg', e.memo || '')]),
        { dataset: { testid: 'wallet-history' } }),
    ];
  });
  panel.append(box);
  if (t.ctx.session.role === 'admin') {
    const amount = h('input', { type: 'number', min: 1, step: 1, value: '100' });
    const memo = h('input', { type: 'text', placeholder: 'memo' });
    const st = status();
    panel.append(h('h2', 'Fund (operator)'), h('form.inline', {
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          await api.post(`${t.base}/wallet/fund`, { amount: Number(amount.value), memo: memo.value || undefined });
          st.set('Funded.', 'ok');
          run();
        } catch (err) { st.set(err.message, 'error'); }
      },
    }, h('label', 'Amount ', amount), h('label', 'Memo ', memo), h('button', { type: 'submit' }, 'Fund')), st);
  }
  run();
}

const TASK_BADGE = { done: 's-done', failed: 's-failed', running: 's-running-task' };

function tasks(panel, t) {
  // A tenant key reads its own tasks; the operator and the organization name the tenant.
  const of = `tenant=${encodeURIComponent(t.id)}`;
  const input = h('input', { type: 'text', placeholder: 'task id', spellcheck: false, dataset: { testid: 'task-id' } });
  const out = h('div', { dataset: { testid: 'task-detail' } });
  const list = h('div');
  const more = h('button', { type: 'button', hidden: true, dataset: { testid: 'tasks-more' } }, 'Older tasks');
  const rows = [];
  let next = 0;

  const show = (id) => {
    input.value = id;
    load(out, async () => {
      const r = await api.get(`/converge/${encodeURIComponent(id)}?${of}`);
      return [h('h2', 'Task ', h('code', r.taskId)), h('pre.json', JSON.stringify(r, null, 2))];
    });
  };
  const row = (k) => h('tr', { dataset: { task: k.taskId } },
    h('td', h('button.link', { type: 'button', dataset: { testid: 'open-task' }, onclick: () => show(k.taskId) }, h('code', k.taskId))),
    h('td', h('span.badge', { class: TASK_BADGE[k.status] }, k.status)),
    h('td', k.kind),
    h('td', h('span.msg', k.prompt)),
    h('td', fmtTime(k.createdAt)),
    h('td', fmtTime(k.updatedAt)),
    h('td', k.rounds ?? '—'),
    h('td', k.score ?? '—'),
    h('td', k.tokens === null || k.tokens === undefined ? '—' : fmtNum(k.tokens)),
    h('td', k.error ? h('span.msg', k.error) : (k.webhookStatus ? h('span.msg', `webhook ${k.webhookStatus}`) : '—')));
  // The next page's rows join the ones shown; the table is built again around them.
  const page = async () => {
    const p = await api.get(`/converge?limit=20&offset=${next}&${of}`);
    rows.push(...p.tasks.map(row));
    next = p.nextOffset;
    more.hidden = next === null || next === undefined;
    return table(['Task', 'Status', 'Kind', 'Prompt', 'Queued', 'Updated', 'Rounds', 'Score', 'Tokens', 'Error / webhook'],
      rows, { dataset: { testid: 'task-table' } });
  };
  const refresh = () => {
    rows.length = 0;
    next = 0;
    more.hidden = true;
    load(list, page);
  };
  more.addEventListener('click', async () => {
    more.disabled = true;
    try { replace(list, await page()); } catch (e) { list.append(h('p.status.error', e.message)); } finally { more.disabled = false; }
  });

  panel.append(
    h('p.hint', 'Asynchronous convergence tasks (submitted with async: true), newest first, without their outcome. Click a task to read it whole.'),
    h('div.toolbar', h('button', { type: 'button', dataset: { testid: 'tasks-refresh' }, onclick: refresh }, 'Refresh')),
    list, more,
    h('form.inline', {
      onsubmit: (e) => {
        e.preventDefault();
        if (input.value.trim()) show(input.value.trim());
      },
    }, h('label', 'Task id ', input), h('button', { type: 'submit' }, 'Look up')),
    out);
  refresh();
}
