// Sign-in, role discovery and navigation between the three views.
import * as api from './api.js';
import { h, replace } from './dom.js';
import { operatorView } from './operator.js';
import { orgView } from './org.js';
import { tenantView } from './tenant.js';

const $ = (id) => document.getElementById(id);
const signin = $('signin');
const view = $('view');
const whoami = $('whoami');
const signout = $('signout');
const form = $('signin-form');
const note = $('signin-status');

let session = null;
let cleanups = [];
let history = [];

/** Registers something to stop (a stream, a timer) when the view changes. */
function onLeave(fn) { cleanups.push(fn); }
function leave() {
  for (const fn of cleanups.splice(0)) {
    try { fn(); } catch { /* already stopped */ }
  }
}

const VIEWS = { operator: operatorView, org: orgView, tenant: tenantView };

/** Shows a view; `nav.open('tenant', {id})` etc. */
const nav = {
  open(name, params = {}, { push = true } = {}) {
    if (push && nav.current) history.push(nav.current);
    nav.current = { name, params };
    leave();
    const back = history.length
      ? h('button.link.back', { type: 'button', onclick: () => nav.back() }, '← back')
      : null;
    const body = h('div.view-body');
    replace(view, back, body);
    VIEWS[name](body, { session, nav, onLeave, params });
    window.scrollTo(0, 0);
  },
  back() {
    const prev = history.pop();
    if (prev) nav.open(prev.name, prev.params, { push: false });
  },
  current: null,
};

async function discover(scope) {
  try {
    await api.get('/plans');
  } catch (e) {
    if (e.status === 401) throw new Error('That key was refused (401).');
    throw e;
  }
  try {
    await api.metricsText();
    return { role: 'admin', label: 'Operator (admin token)' };
  } catch (e) {
    if (e.status !== 403 && e.status !== 401) throw e;
  }
  let list;
  try {
    list = await api.get('/tenant?limit=1');
  } catch (e) {
    if (e.status !== 403) throw e;
    if (!scope || scope.startsWith('org_')) {
      throw new Error('This is a tenant key: enter its tenant slug or id to sign in.');
    }
    const st = await api.get(`/tenant/${encodeURIComponent(scope)}/status`);
    return { role: 'tenant', tenantId: st.tenant.id, slug: st.tenant.slug, label: `Tenant ${st.tenant.slug}` };
  }
  const orgId = scope && scope.startsWith('org_') ? scope : (list.tenants[0] || {}).orgId;
  if (!orgId) {
    throw new Error('This organization key has no tenants yet: enter its organization id (org_…) to sign in.');
  }
  await api.get(`/org/${encodeURIComponent(orgId)}/usage?from=${today()}&to=${today()}`);
  return { role: 'org', orgId, label: `Organization ${orgId}` };
}

function today() { return new Date().toISOString().slice(0, 10); }

form.addEventListener('submit', async (e) => {
  e.preventDefault();
  const keyInput = $('key');
  const key = keyInput.value.trim();
  const scope = $('scope').value.trim();
  keyInput.value = '';
  if (!key) return;
  note.textContent = 'Checking the key…';
  note.className = 'status';
  api.setKey(key);
  try {
    session = await discover(scope);
  } catch (err) {
    api.clearKey();
    note.textContent = err.message;
    note.className = 'status error';
    return;
  }
  note.textContent = '';
  $('scope').value = '';
  signin.hidden = true;
  view.hidden = false;
  signout.hidden = false;
  whoami.textContent = session.label;
  document.body.dataset.role = session.role;
  history = [];
  nav.current = null;
  if (session.role === 'admin') nav.open('operator');
  else if (session.role === 'org') nav.open('org', { orgId: session.orgId });
  else nav.open('tenant', { id: session.tenantId });
});

signout.addEventListener('click', () => {
  leave();
  api.clearKey();
  session = null;
  history = [];
  nav.current = null;
  view.replaceChildren();
  view.hidden = true;
  signin.hidden = false;
  signout.hidden = true;
  whoami.textContent = '';
  delete document.body.dataset.role;
});

document.body.dataset.ready = 'true';
