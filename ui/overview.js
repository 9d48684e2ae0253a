// Overview: one panel per service with its versions side by side (configured and actual share,
// req/s, errors, p50, p99, server health, fallbacks to stable), live charts of the last minutes
// (kept in memory here, fed by the live feed and its backlog), the weight control and the rollout.

import { get, put, paths } from './api.js';
import { h, fill, num, pct, confirmed, setRevision } from './dom.js';
import { lineChart } from './charts.js';
import { rolloutBox } from './rollout.js';

const KEEP_MS = 5 * 60 * 1000;

/** The charts of a panel: each draws `key` per version, and `dashed` beside it when given. */
const CHARTS = [
  { key: 'rps', title: 'Requests', unit: 'req/s', floor: 1 },
  { key: 'errors', title: 'Errors', unit: '%', floor: 1 },
  { key: 'p99', dashed: 'p50', title: 'Latency p99 (p50 dashed)', unit: 'ms', floor: 1 },
  { key: 'actual', dashed: 'configured', title: 'Share of requests (configured dashed)', unit: '%', max: 100 },
];

let container = null;
const panels = new Map();
const history = new Map();
let latest = 0;

export function startOverview(el) {
  container = el;
  panels.clear();
  history.clear();
  latest = 0;
}

export function stopOverview() {
  for (const panel of panels.values()) panel.rollout.stop();
  panels.clear();
  history.clear();
  container = null;
}

/** The backlog from /v1/live/history, oldest first. */
export function addBacklog(samples) {
  samples.forEach(record);
  if (samples.length) render(samples[samples.length - 1]);
}

/** One sample of the live feed. */
export function addSample(sample) {
  if (record(sample)) render(sample);
}

function record(sample) {
  const t = sample.unix_ms;
  if (t <= latest) return false;
  latest = t;
  for (const service of sample.services) {
    for (const v of service.versions) {
      const key = `${service.name}\n${v.name}`;
      const points = history.get(key) || [];
      points.push({ t, rps: v.rps, errors: v.error_percent, p50: v.p50_ms, p99: v.p99_ms, actual: v.actual_percent, configured: v.configured_percent });
      while (points.length && points[0].t < t - KEEP_MS) points.shift();
      history.set(key, points);
    }
  }
  return true;
}

function render(sample) {
  if (!container) return;
  const names = sample.services.map((s) => s.name);
  for (const [name, panel] of panels) {
    if (!names.includes(name)) {
      panel.rollout.stop();
      panel.el.remove();
      panels.delete(name);
    }
  }
  sample.services.forEach((service, i) => {
    let panel = panels.get(service.name);
    if (!panel) {
      panel = makePanel(service.name);
      panels.set(service.name, panel);
    }
    // The feed's order; a panel already in place is not moved (that would take the focus away).
    if (container.children[i] !== panel.el) container.insertBefore(panel.el, container.children[i] || null);
    updatePanel(panel, service, sample.unix_ms);
  });
  const wait = document.getElementById('overview-wait');
  if (wait) wait.hidden = true;
}

function makePanel(name) {
  const charts = CHARTS.map((c) => ({ ...c, chart: lineChart(`${c.title} of ${name}`, c.unit, c) }));
  const rollout = rolloutBox(name);
  const titleId = `service-${name}`;
  const summary = h('span', { class: 'service-summary' });
  const versions = h('div', { class: 'versions' });
  const legend = h('p', { class: 'legend' });
  const el = h('section', { class: 'service', dataset: { service: name }, 'aria-labelledby': titleId },
    h('header', { class: 'service-head' }, h('h2', { id: titleId }, name), summary),
    versions,
    h('div', { class: 'charts' }, charts.map((c) =>
      h('figure', { class: 'chart-box' }, h('figcaption', {}, `${c.title} (${c.unit})`), c.chart.el))),
    legend,
    rollout.el);
  return { el, summary, versions, legend, charts, rollout, cards: new Map(), order: '' };
}

/** Colour class of a version: the stable one first, then the others in the feed's order. */
function colour(index) {
  return index === 0 ? 'c0' : `c${((index - 1) % 3) + 1}`;
}

function updatePanel(panel, service, now) {
  const order = service.versions.map((v) => v.name).join('\n');
  if (order !== panel.order) {
    panel.order = order;
    panel.cards.clear();
    fill(panel.versions, service.versions.map((v, i) => {
      const card = makeCard(service.name, v.name, v.name === service.stable, colour(i));
      panel.cards.set(v.name, card);
      return card.el;
    }));
    fill(panel.legend, service.versions.map((v, i) =>
      h('span', { class: `key ${colour(i)}` }, v.name === service.stable ? `${v.name} (stable)` : v.name)));
  }
  const total = service.versions.reduce((sum, v) => sum + (v.rps || 0), 0);
  const r = service.rollout;
  panel.summary.textContent = `stable: ${service.stable} · ${num(total, 'req/s')}` +
    (r ? ` · rollout of ${r.version}: ${r.state || 'not started'}` : '');
  service.versions.forEach((v) => panel.cards.get(v.name).update(v));

  // The charts span what is kept, at least a minute, at most KEEP_MS.
  const first = history.get(`${service.name}\n${service.versions[0].name}`);
  const from = Math.max(now - KEEP_MS, Math.min(first && first.length ? first[0].t : now, now - 60000));
  for (const c of panel.charts) {
    const series = [];
    service.versions.forEach((v, i) => {
      const points = history.get(`${service.name}\n${v.name}`) || [];
      series.push({ cls: colour(i), points: points.map((p) => [p.t, p[c.key]]) });
      if (c.dashed) series.push({ cls: colour(i), dashed: true, points: points.map((p) => [p.t, p[c.dashed]]) });
    });
    c.chart.draw(series, from, now);
  }
  panel.rollout.update(service);
}

function makeCard(service, version, stable, cls) {
  const field = (name, label) => {
    const dd = h('dd', { class: name });
    return [h('div', {}, h('dt', {}, label), dd), dd];
  };
  const [configuredBox, configured] = field('configured', 'Configured share');
  const [actualBox, actual] = field('actual', 'Actual share, last minute');
  const [rpsBox, rps] = field('rps', 'Traffic');
  const [errorsBox, errors] = field('errors', 'Errors');
  const [p50Box, p50] = field('p50', 'Latency p50');
  const [p99Box, p99] = field('p99', 'Latency p99');
  const [healthBox, health] = field('health', 'Servers');
  const [fallbackBox, fallbacks] = field('fallbacks', stable ? 'Fallbacks' : 'Fallbacks to stable');
  const upstream = h('span', { class: 'upstream' });
  const weight = stable ? null : weightControl(service, version);
  const el = h('article', { class: `version ${cls}${stable ? ' stable' : ''}`, dataset: { version } },
    h('h3', {}, version, stable ? h('span', { class: 'role' }, 'stable') : null, upstream),
    h('dl', { class: 'figures' }, configuredBox, actualBox, rpsBox, errorsBox, p50Box, p99Box, healthBox, fallbackBox),
    weight && weight.el);

  function update(v) {
    upstream.textContent = `upstream ${v.upstream}`;
    configured.textContent = num(v.configured_percent, '%');
    actual.textContent = num(v.actual_percent, '%');
    rps.textContent = num(v.rps, 'req/s');
    errors.textContent = num(v.error_percent, '%');
    errors.classList.toggle('bad', v.error_percent > 0);
    p50.textContent = num(v.p50_ms, 'ms');
    p99.textContent = num(v.p99_ms, 'ms');
    const known = v.servers_up != null;
    health.textContent = known ? `${v.servers_up} up, ${v.servers_down} down` : 'not known';
    health.classList.toggle('bad', known && v.servers_up === 0);
    health.classList.toggle('warn', known && v.servers_up > 0 && v.servers_down > 0);
    fallbacks.textContent = num(v.fallbacks_per_second, 'req/s');
    fallbacks.classList.toggle('bad', v.fallbacks_per_second > 0);
    el.classList.toggle('down', known && v.servers_up === 0);
    if (weight) weight.show(v.configured_percent);
  }
  return { el, update };
}

/** The weight of one non-stable version: PUT /v1/services/{s}/weights with every weight kept. */
function weightControl(service, version) {
  const id = `weight-${service}-${version}`;
  const input = h('input', { class: 'weight-input', id, type: 'number', min: 0, max: 100, step: 0.01, inputmode: 'decimal' });
  let edited = false;
  input.addEventListener('input', () => { edited = true; });

  async function apply(event) {
    event.preventDefault();
    const value = Number(input.value);
    if (input.value === '' || !(value >= 0 && value <= 100)) {
      input.setCustomValidity('a percentage from 0 to 100');
      input.reportValidity();
      return;
    }
    input.setCustomValidity('');
    const done = await confirmed(`Set the weight of ${version} in ${service} to ${pct(value)}?`,
      `${pct(value)} of the requests no rule decides go to ${version}; the stable version gets what the weights leave. The other weights and the sticky identity stay. A rollout moving this split pauses until resumed.`,
      async () => {
        const now = await get(paths.weights(service));
        const weights = { ...((now.split && now.split.weights) || {}), [version]: value };
        const answer = await put(paths.weights(service), { weights });
        setRevision(answer.revision);
        return `${service}: ${version} at ${pct(value)}${answer.unchanged ? ' (unchanged)' : ''} (revision ${answer.revision})`;
      }, 'Set weight');
    if (done) edited = false;
  }

  const el = h('form', { class: 'weight', onsubmit: apply },
    h('label', { for: id }, `Weight of ${version}`), input, h('span', { 'aria-hidden': 'true' }, '%'),
    h('button', { type: 'submit', class: 'weight-apply' }, 'Set weight'));
  return {
    el,
    show(configured) {
      if (!edited && document.activeElement !== input && configured != null) input.value = String(Math.round(configured * 100) / 100);
    },
  };
}
