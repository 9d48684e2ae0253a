// Fleet: every live graygate instance sharing the store, as `GET /v1/fleet` lists them (each one's
// heartbeat record), read again every few seconds. What needs attention is named in words and
// coloured, with the same words as `graygate ctl fleet`: DIVERGED at N with the reason (red),
// LAGGING behind the store's revision, the store degraded or behind as that instance sees it, a
// snapshot that cannot be written (amber). The header's fleet pill sums it up on every view.
// A failed read says so in the panel and keeps the last table, marked with when it was read.

import { get, paths } from './api.js';
import { h, $, fill, when, fromNow } from './dom.js';

const REFRESH_MS = 3000;

let root = null;
let timer = 0;
let busy = false;
let lastRead = null;

export function startFleet(el) {
  root = el;
  lastRead = null;
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
  // The header's pill leads to the panel, from any view.
  $('#fleet-state').addEventListener('click', () => setTimeout(() => root && root.scrollIntoView(), 0));
}

export function stopFleet() {
  clearInterval(timer);
  timer = 0;
  root = null;
}

async function refresh() {
  // One read at a time; none while the page is in a background tab (it reads at once on return).
  if (!root || busy || document.hidden) return;
  busy = true;
  try {
    const fleet = await get(paths.fleet);
    if (!root) return;
    lastRead = Date.now();
    render(fleet);
  } catch (error) {
    // A 401 already brought the sign-in screen back.
    if (root && error.status !== 401) unreadable(error);
  } finally {
    busy = false;
  }
}

document.addEventListener('visibilitychange', () => {
  if (!document.hidden) refresh();
});

/**
 * What an instance needs attention for, worst first, as `ctl fleet` words it; `level` is the
 * colour: `bad` for a divergence, `warn` for the rest, `good` when nothing is wrong.
 */
export function attention(instance, storeRevision) {
  const notes = [];
  let level = 'good';
  const d = instance.diverged;
  if (d) {
    notes.push(`DIVERGED at ${d.revision}: ${d.reason}`);
    level = 'bad';
  } else if (storeRevision != null && instance.revision < storeRevision) {
    notes.push('LAGGING');
    level = 'warn';
  }
  if (instance.store !== 'healthy') {
    notes.push(`store ${instance.store}`);
    if (level === 'good') level = 'warn';
  }
  const snapshotError = instance.snapshot && instance.snapshot.error;
  if (snapshotError) {
    notes.push(`snapshot: ${snapshotError}`);
    if (level === 'good') level = 'warn';
  }
  return { level, text: notes.length ? notes.join('; ') : 'ok' };
}

function snapshotText(snapshot) {
  if (!snapshot) return 'off';
  const written = snapshot.revision != null ? `rev ${snapshot.revision}` : 'not written yet';
  return snapshot.started_from != null ? `${written} (started from rev ${snapshot.started_from})` : written;
}

function sourceText(source) {
  return { store: 'store', snapshot: 'snapshot (store was down at start)', config: 'config (owed to the store)' }[source] || source;
}

/** `0 s ago`, `3 s ago`: a heartbeat a few ms in the future (clocks of other hosts) is now. */
function ago(time) {
  const s = Math.round((Date.now() - new Date(time).getTime()) / 1000);
  return s < 90 ? `${Math.max(0, s)} s ago` : fromNow(time);
}

function cell(label, cls, ...content) {
  return h('td', { class: cls, dataset: { label } }, ...content);
}

function row(instance, fleet) {
  const state = attention(instance, fleet.revision);
  const self = instance.id === fleet.this;
  const behind = fleet.revision != null && instance.revision !== fleet.revision;
  const since = instance.store_since ? ` since ${when(instance.store_since)}` : '';
  return h('tr', { class: `instance${state.level === 'good' ? '' : ` ${state.level}`}${self ? ' self' : ''}`, dataset: { instance: instance.id } },
    h('th', { scope: 'row', class: 'instance-id' }, h('code', {}, instance.id),
      self ? h('span', { class: 'role', title: 'the instance that serves this page' }, 'this page') : null,
      instance.admin ? h('span', { class: 'instance-admin' }, instance.admin) : null),
    cell('Revision', `instance-revision${behind ? ' warn' : ''}`,
      String(instance.revision), fleet.revision != null && behind ? ` (store ${fleet.revision})` : ''),
    cell('Policy from', 'instance-source', sourceText(instance.source)),
    cell('Store', `instance-store${instance.store === 'healthy' ? '' : ' warn'}`, `${instance.store}${instance.store === 'healthy' ? '' : since}`),
    cell('Snapshot', 'instance-snapshot', snapshotText(instance.snapshot)),
    cell('Version', 'instance-version', instance.version),
    cell('Last seen', 'instance-seen', h('time', { datetime: instance.last_seen, title: when(instance.last_seen) }, ago(instance.last_seen))),
    cell('State', `instance-state ${state.level}`, state.text));
}

function render(fleet) {
  const instances = fleet.instances || [];
  const states = instances.map((i) => attention(i, fleet.revision));
  const diverged = instances.filter((i) => i.diverged).length;
  const needs = states.filter((s) => s.level !== 'good').length;
  const count = `${instances.length} live instance${instances.length === 1 ? '' : 's'}`;
  // Without the store, the others' records cannot be read either: say the list may be short.
  const store = fleet.revision != null ? `store at revision ${fleet.revision}; ${count}`
    : `store unreadable: other instances may be missing; ${instances.length} listed`;
  const attend = `${needs} need${needs === 1 ? 's' : ''} attention`;
  $('#fleet-summary', root).textContent = store + (needs ? `; ${attend}` : ', all in step');
  const error = $('#fleet-error', root);
  error.hidden = true;
  error.textContent = '';
  fill($('#fleet-rows', root), instances.map((i) => row(i, fleet)));
  pill(diverged ? `fleet: ${diverged} diverged` : needs ? `fleet: ${attend}` : `fleet: ${instances.length} in step`,
    diverged ? 'bad' : needs ? 'warn' : 'good');
}

function unreadable(error) {
  const el = $('#fleet-error', root);
  el.hidden = false;
  el.textContent = `The fleet view cannot be read: ${error.message}.` +
    (lastRead ? ` The table below is as read at ${when(lastRead)}.` : '');
  pill('fleet: unknown', 'warn');
}

function pill(text, level) {
  const el = document.getElementById('fleet-state');
  if (!el) return;
  el.textContent = text;
  el.className = `pill fleet-pill ${level}`;
}
