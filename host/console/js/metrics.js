// A parser for the Prometheus text exposition format (what /metrics serves
// without an OpenMetrics Accept header): name{labels} value.

/** Returns Map name -> [{labels: {..}, value}]. */
export function parseMetrics(text) {
  const out = new Map();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let l;
      while ((l = re.exec(m[3])) !== null) {
        labels[l[1]] = l[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
      }
    }
    const value = m[4] === '+Inf' ? Infinity : m[4] === '-Inf' ? -Infinity : Number(m[4]);
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value });
  }
  return out;
}

/** Sum of a series (optionally only samples matching filter(labels)). */
export function sum(metrics, name, filter = () => true) {
  return (metrics.get(name) || []).filter((s) => filter(s.labels)).reduce((a, s) => a + s.value, 0);
}

/** The single value of an unlabelled gauge, or null. */
export function value(metrics, name) {
  const s = metrics.get(name);
  return s && s.length ? s[0].value : null;
}
