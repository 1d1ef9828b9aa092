// Building DOM nodes without ever parsing HTML: every string becomes a text
// node, so tenant-controlled text (log lines, names, memos) cannot become markup.

/**
 * h('div.card#x', {dataset: {...}, onclick: fn, class: 'a b', type: 'button'}, child, ...)
 * Children: strings/numbers (text nodes), nodes, arrays, null/false (skipped).
 */
export function h(tag, props, ...children) {
  const [name, ...rest] = tag.split(/(?=[.#])/);
  const el = document.createElement(name || 'div');
  for (const part of rest) {
    if (part[0] === '.') el.classList.add(part.slice(1));
    else if (part[0] === '#') el.id = part.slice(1);
  }
  if (props && (typeof props !== 'object' || props instanceof Node || Array.isArray(props))) {
    children.unshift(props);
    props = null;
  }
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') for (const c of String(v).split(/\s+/).filter(Boolean)) el.classList.add(c);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'text') el.textContent = String(v);
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

/** Appends children (text, nodes, nested arrays) to el. */
export function append(el, children) {
  for (const c of [children].flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replaces el's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A table from column titles and rows of cells (text or nodes). */
export function table(columns, rows, attrs = {}) {
  return h('table', attrs,
    h('thead', h('tr', columns.map((c) => h('th', c)))),
    h('tbody', rows.length
      ? rows.map((r) => (r instanceof Node ? r : h('tr', r.map((c) => h('td', c)))))
      : h('tr', h('td.empty', { colSpan: columns.length }, 'nothing yet'))));
}

/** Key/value description list. */
export function dl(pairs, attrs = {}) {
  return h('dl.kv', attrs, pairs.flatMap(([k, v]) => [h('dt', k), h('dd', v)]));
}

export function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  return Number(n).toLocaleString('en-US', { maximumFractionDigits: digits });
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function fmtMoney(amount, currency) {
  const v = Number(amount || 0);
  const digits = v !== 0 && Math.abs(v) < 0.01 ? 6 : 2;
  return `${v.toFixed(digits)} ${currency || ''}`.trim();
}

export function fmtTime(msOrIso) {
  if (msOrIso === null || msOrIso === undefined) return '—';
  const d = new Date(msOrIso);
  return Number.isNaN(d.getTime()) ? String(msOrIso) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

/** A message line (error or note) that can be updated in place. */
export function status(initial = '') {
  const el = h('p.status', { role: 'status' }, initial);
  el.set = (text, kind = '') => {
    el.textContent = text;
    el.className = `status ${kind}`;
  };
  return el;
}
