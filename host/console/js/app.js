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

/** Who the key is, from GET /whoami: the role and what the views open with. */
async function discover() {
  let me;
  try {
    me = await api.get('/whoami');
  } catch (e) {
    if (e.status === 401) throw new Error('That key was refused (401).');
    throw e;
  }
  if (me.role === 'admin') return { role: 'admin', label: 'Operator (admin token)' };
  if (me.role === 'org' && me.org) {
    return { role: 'org', orgId: me.org.id, orgName: me.org.name, label: `Organization ${me.org.name}` };
  }
  if (me.role === 'tenant' && me.tenant) {
    return { role: 'tenant', tenantId: me.tenant.id, slug: me.tenant.slug, label: `Tenant ${me.tenant.slug}` };
  }
  throw new Error(`The host answered an unknown role (${me.role}).`);
}

form.addEventListener('submit', async (e) => {
  e.preventDefault();
  const keyInput = $('key');
  const key = keyInput.value.trim();
  keyInput.value = '';
  if (!key) return;
  note.textContent = 'Checking the key…';
  note.className = 'status';
  api.setKey(key);
  try {
    session = await discover();
  } catch (err) {
    api.clearKey();
    note.textContent = err.message;
    note.className = 'status error';
    return;
  }
  note.textContent = '';
  signin.hidden = true;
  view.hidden = false;
  signout.hidden = false;
  whoami.textContent = session.label;
  document.body.dataset.role = session.role;
  history = [];
  nav.current = null;
  if (session.role === 'admin') nav.open('operator');
  else if (session.role === 'org') nav.open('org', { orgId: session.orgId, name: session.orgName });
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
