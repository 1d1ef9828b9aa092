// Time-series charts on the vendored uPlot (loaded as /console/vendor/uPlot.iife.min.js).
import { h } from './dom.js';

const COLORS = ['#2563eb', '#16a34a', '#d97706', '#dc2626', '#7c3aed', '#0891b2'];

/**
 * A chart of series over time. xs: seconds since the epoch; series:
 * [{label, values}]. Returns an element; the uPlot instance is created when
 * the element is attached (it needs a width).
 */
export function timeChart(title, xs, series, { unit = '', testid } = {}) {
  const box = h('figure.chart', { dataset: { testid: testid || '' } });
  const caption = h('figcaption', title);
  const plot = h('div.plot');
  box.append(caption, plot);
  const totals = series.map((s) => s.values.reduce((a, v) => a + (v || 0), 0));
  box.dataset.sum = JSON.stringify(Object.fromEntries(series.map((s, i) => [s.label, totals[i]])));
  const U = globalThis.uPlot;
  if (!U) {
    plot.append(h('p.status.error', 'the chart library did not load'));
    return box;
  }
  const opts = {
    width: 480,
    height: 180,
    legend: { show: true },
    scales: { x: { time: true } },
    axes: [{}, { size: 60, values: (u, vals) => vals.map((v) => compact(v) + unit) }],
    series: [{}, ...series.map((s, i) => ({
      label: s.label,
      stroke: COLORS[i % COLORS.length],
      fill: `${COLORS[i % COLORS.length]}22`,
      width: 1.5,
      points: { show: xs.length < 60 },
    }))],
  };
  const start = () => {
    const width = Math.max(280, Math.min(plot.clientWidth || 480, 900));
    box.uplot = new U({ ...opts, width }, [xs, ...series.map((s) => s.values)], plot);
  };
  // Created once the figure is in the document (uPlot measures it).
  queueMicrotask(() => (plot.isConnected ? start() : requestAnimationFrame(start)));
  return box;
}

function compact(v) {
  const a = Math.abs(v);
  if (a >= 1e12) return `${+(v / 1e12).toFixed(1)}T`;
  if (a >= 1e9) return `${+(v / 1e9).toFixed(1)}G`;
  if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (a >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return `${+v.toFixed(2)}`;
}
