// History: every policy change, newest first, a page at a time; a change's diff, computed here
// from its before and after documents as a list of changed fields; and undo. POST /v1/undo
// {"revision": R} makes the policy as it was after revision R current again, so undoing change N
// (going back to its `before`) sends R = N - 1.

import { get, post, paths } from './api.js';
import { h, $, fill, when, confirmed, setRevision, sayError } from './dom.js';

let root = null;
let next = null;

export function startHistory(el) {
  root = el;
  $('#history-more', root).addEventListener('click', () => loadPage(next, true));
}

export function stopHistory() {
  root = null;
}

/** Called when the view is shown: the newest page again. */
export function showHistory() {
  return loadPage(paths.history(), false);
}

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

/** The key an array element is matched by: its name when every element has a distinct one. */
function keyer(a, b) {
  const all = [...a, ...b];
  const name = (e) => (isObject(e) ? e.name ?? e.service : undefined);
  const unique = (list) => new Set(list.map(name)).size === list.length;
  return all.every((e) => typeof name(e) === 'string') && unique(a) && unique(b) ? name : null;
}

function show(value) {
  if (value === undefined) return '(none)';
  if (Array.isArray(value) && value.length === 0) return '(empty list)';
  if (isObject(value) && Object.keys(value).length === 0) return '(empty)';
  if (typeof value === 'object' && value !== null) return JSON.stringify(value);
  return typeof value === 'string' ? `"${value}"` : String(value);
}

/**
 * The fields that differ between two JSON documents, as `path: old -> new` lines, with arrays
 * of named things addressed by name: `services[web].split.weights.canary: 10 -> 20`.
 */
export function diffDocs(before, after, path = '', out = []) {
  if (JSON.stringify(before) === JSON.stringify(after)) return out;
  const join = (key) => (path ? `${path}.${key}` : key);
  if (isObject(before) && isObject(after)) {
    const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
    keys.forEach((k) => diffDocs(before[k], after[k], join(k), out));
  } else if (Array.isArray(before) && Array.isArray(after)) {
    const key = keyer(before, after);
    if (key) {
      const old = new Map(before.map((e) => [key(e), e]));
      const now = new Map(after.map((e) => [key(e), e]));
      for (const k of new Set([...old.keys(), ...now.keys()])) diffDocs(old.get(k), now.get(k), `${path}[${k}]`, out);
    } else {
      for (let i = 0; i < Math.max(before.length, after.length); i++) diffDocs(before[i], after[i], `${path}[${i}]`, out);
    }
  } else if (before === undefined && (isObject(after) || Array.isArray(after)) && Object.keys(after).length) {
    diffDocs(Array.isArray(after) ? [] : {}, after, path, out);
  } else if (after === undefined && (isObject(before) || Array.isArray(before)) && Object.keys(before).length) {
    diffDocs(before, Array.isArray(before) ? [] : {}, path, out);
  } else {
    out.push(`${path}: ${show(before)} -> ${show(after)}`);
  }
  return out;
}

async function loadPage(path, more) {
  if (!root || !path) return;
  try {
    const page = await get(path);
    if (!root) return;
    setRevision(page.revision);
    const rows = page.entries.map(changeRow);
    if (more) $('#history-rows', root).append(...rows);
    else fill($('#history-rows', root), rows);
    next = page.next || null;
    $('#history-more', root).hidden = !next;
  } catch (error) {
    sayError(error);
  }
}

function changeRow(change) {
  const n = change.revision;
  const undo = n > 1
    ? h('button', { type: 'button', class: 'undo', onclick: () => undoChange(change) },
      `Undo: back to rev ${n - 1}`)
    : h('button', { type: 'button', class: 'undo', disabled: true, title: 'the first revision has nothing before it' }, 'Undo');
  return h('tr', { class: 'change', dataset: { revision: String(n) } },
    h('td', {}, String(n)),
    h('td', {}, when(change.time)),
    h('td', {}, change.actor),
    h('td', {}, change.summary),
    h('td', { class: 'actions' },
      h('button', { type: 'button', class: 'diff', 'aria-label': `Show what revision ${n} changed`, onclick: () => showDiff(n) }, 'Diff'),
      undo));
}

async function showDiff(revision) {
  const box = root && $('#history-diff', root);
  if (!box) return;
  try {
    const { entry } = await get(paths.historyOne(revision));
    const lines = diffDocs(entry.before, entry.after);
    fill(box,
      h('h3', {}, `Revision ${entry.revision}: ${entry.summary}`),
      h('p', { class: 'note' }, `by ${entry.actor} at ${when(entry.time)}; ${lines.length} field${lines.length === 1 ? '' : 's'} changed`),
      lines.length
        ? h('ul', { class: 'diff-lines' }, lines.map((l) => h('li', {}, h('code', {}, l))))
        : h('p', {}, 'The policy documents before and after are the same.'));
    box.scrollIntoView({ block: 'nearest' });
  } catch (error) {
    sayError(error);
  }
}

function undoChange(change) {
  const n = change.revision;
  return confirmed(`Undo revision ${n}?`,
    `The policy goes back to how it was before revision ${n} (“${change.summary}” by ${change.actor}), that is to revision ${n - 1}'s policy, as a new revision. Changes made after revision ${n} are undone too.`,
    async () => {
      const answer = await post(paths.undo, { revision: n - 1 });
      setRevision(answer.revision);
      showHistory();
      return `revision ${answer.revision}: the policy of revision ${answer.restored} restored${answer.unchanged ? ' (unchanged)' : ''}`;
    }, 'Undo');
}
