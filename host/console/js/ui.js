// Small shared widgets: tabs, a section with a refresh, date helpers.
import { h, replace, status } from './dom.js';

/**
 * Tabs: [{id, label, render(panel, onTabLeave)}]. The panel is rebuilt on
 * every switch; a tab's cleanups run when another tab is chosen or the view
 * is left.
 */
export function tabs(container, list, onLeave, initial) {
  let stops = [];
  const stop = () => { for (const fn of stops.splice(0)) { try { fn(); } catch { /* done */ } } };
  onLeave(stop);
  const bar = h('nav.tabs', { role: 'tablist' });
  const panel = h('div.panel', { role: 'tabpanel' });
  const buttons = new Map();
  const show = (id) => {
    stop();
    for (const [bid, b] of buttons) b.setAttribute('aria-selected', String(bid === id));
    replace(panel);
    const tab = list.find((t) => t.id === id);
    panel.dataset.tab = id;
    Promise.resolve(tab.render(panel, (fn) => stops.push(fn))).catch((e) => {
      panel.append(h('p.status.error', e.message || String(e)));
    });
  };
  for (const t of list) {
    const b = h('button.tab', { type: 'button', role: 'tab', dataset: { tab: t.id }, onclick: () => show(t.id) }, t.label);
    buttons.set(t.id, b);
    bar.append(b);
  }
  container.append(bar, panel);
  show(initial || list[0].id);
  return { show };
}

/** Runs an async loader into a box, with a status line for its errors. */
export async function load(box, fn) {
  const st = status('Loading…');
  replace(box, st);
  try {
    const nodes = await fn();
    replace(box, nodes);
  } catch (e) {
    st.set(e.message || String(e), 'error');
  }
}

/** A button that needs a second click to act ("Rotate" → "Really rotate?"). */
export function confirmButton(label, confirmLabel, action, attrs = {}) {
  let armed = false;
  let timer = null;
  const b = h('button', { type: 'button', ...attrs }, label);
  b.addEventListener('click', async () => {
    if (!armed) {
      armed = true;
      b.textContent = confirmLabel;
      b.classList.add('danger');
      timer = setTimeout(() => { armed = false; b.textContent = label; b.classList.remove('danger'); }, 5000);
      return;
    }
    clearTimeout(timer);
    armed = false;
    b.textContent = label;
    b.classList.remove('danger');
    b.disabled = true;
    try { await action(); } finally { b.disabled = false; }
  });
  return b;
}

export function isoDay(d) { return d.toISOString().slice(0, 10); }
export function daysAgo(n) { return isoDay(new Date(Date.now() - n * 86400000)); }

/** A secret shown once, as text, with a note. */
export function shownOnce(title, secret) {
  return h('div.secret', { role: 'alert' },
    h('strong', title),
    h('code.secret-value', secret),
    h('p.hint', 'Shown once: copy it now. The console keeps only the key you signed in with, in memory.'));
}
