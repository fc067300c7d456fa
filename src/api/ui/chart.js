// A small SVG line chart of our own (docs/portal.md, "Front end"): a few
// series over time, axes with the extremes, and a text summary for screen
// readers.
import { svg, fill, h } from './dom.js';

export function lineChart(el, samples, series, description) {
  const W = 360, H = 140, L = 28, B = 18, T = 8, R = 8;
  if (!samples.length) { fill(el, h('p', { class: 'empty' }, 'Collecting samples…')); return; }
  const t0 = samples[0].t, t1 = Math.max(samples[samples.length - 1].t, t0 + 1);
  let max = 1;
  for (const s of samples) for (const x of series) max = Math.max(max, s[x.key] || 0);
  const X = (t) => L + ((W - L - R) * (t - t0)) / (t1 - t0);
  const Y = (v) => H - B - ((H - B - T) * v) / max;
  const last = samples[samples.length - 1];
  const summary = series.map((x) => `${x.label} ${last[x.key] || 0}`).join(', ');
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${description}. Now: ${summary}.`, class: 'line-chart' },
    svg('line', { x1: L, y1: Y(0), x2: W - R, y2: Y(0), class: 'axis' }),
    svg('line', { x1: L, y1: T, x2: L, y2: Y(0), class: 'axis' }),
    svg('text', { x: L - 4, y: Y(max) + 4, 'text-anchor': 'end', class: 'tick' }, String(max)),
    svg('text', { x: L - 4, y: Y(0), 'text-anchor': 'end', class: 'tick' }, '0'),
    svg('text', { x: L, y: H - 4, class: 'tick' }, new Date(t0).toLocaleTimeString()),
    svg('text', { x: W - R, y: H - 4, 'text-anchor': 'end', class: 'tick' }, new Date(t1).toLocaleTimeString()),
    series.map((x) => svg('polyline', {
      class: `series ${x.cls}`,
      points: samples.map((s) => `${X(s.t).toFixed(1)},${Y(s[x.key] || 0).toFixed(1)}`).join(' '),
    })));
  const legend = h('p', { class: 'legend' }, series.map((x) => h('span', { class: `key ${x.cls}` }, `${x.label}: ${last[x.key] || 0}`)));
  fill(el, chart, legend);
}
