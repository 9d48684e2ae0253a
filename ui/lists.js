// Gray lists: the lists the policy's rules look values up in, each searchable by part of a key,
// with its total entry count; add an entry with a TTL, remove one. List writes are not policy
// changes: they make no revision.

import { get, post, del, paths } from './api.js';
import { h, $, fill, fromNow, confirmed, sayError } from './dom.js';

const LIMIT = 100;
let root = null;
let searchTimer = 0;
let asked = 0;

/** Every list a condition (or those nested in it) looks up, in the order met. */
function listsOf(condition, found) {
  if (!condition) return;
  if (condition.lookup) found.add(condition.lookup.list);
  if (condition.range_from) found.add(condition.range_from.list);
  (condition.all || []).forEach((c) => listsOf(c, found));
  (condition.any || []).forEach((c) => listsOf(c, found));
  listsOf(condition.not, found);
}

export function policyLists(policy) {
  const found = new Set();
  for (const service of policy.services || []) {
    for (const rule of service.rules || []) listsOf(rule.when, found);
  }
  return [...found];
}

export function startLists(el) {
  root = el;
  $('#list-name', root).addEventListener('change', () => loadEntries());
  $('#list-search', root).addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(loadEntries, 250);
  });
  $('#list-add-form', root).addEventListener('submit', addEntry);
}

export function stopLists() {
  clearTimeout(searchTimer);
  root = null;
}

/** Called when the view is shown: the list names from the policy, then the entries. */
export async function showLists() {
  if (!root) return;
  const select = $('#list-name', root);
  try {
    const names = policyLists(await get(paths.policy));
    const keep = select.value;
    fill(select, names.map((n) => h('option', { value: n }, n)));
    if (names.includes(keep)) select.value = keep;
    if (!names.length) {
      $('#list-note', root).textContent = 'No rule of the policy looks a value up in a list.';
      return;
    }
  } catch (error) {
    sayError(error);
    return;
  }
  await loadEntries();
}

function listName() {
  return root ? $('#list-name', root).value : '';
}

async function loadEntries() {
  if (!root || !listName()) return;
  const list = listName();
  const q = $('#list-search', root).value.trim();
  const mine = ++asked;
  const note = $('#list-note', root);
  try {
    const answer = await get(paths.entries(list, { q, limit: LIMIT }));
    if (mine !== asked || !root) return; // a newer search answered first
    $('#list-count', root).textContent = String(answer.count);
    fill($('#list-entries', root), answer.entries.map((e) => entryRow(list, e)));
    const shown = answer.entries.length;
    note.textContent = answer.truncated
      ? `The first ${shown} matching keys are shown: refine the search to see others.`
      : q ? `${shown} key${shown === 1 ? ' contains' : 's contain'} “${q}”.` : shown ? '' : 'The list is empty.';
  } catch (error) {
    if (mine !== asked || !root) return;
    fill($('#list-entries', root));
    note.textContent = error.message;
  }
}

function entryRow(list, entry) {
  const expires = entry.expires_at ? `${fromNow(entry.expires_at)} (${new Date(entry.expires_at).toLocaleString()})` : 'never';
  return h('tr', { class: 'entry', dataset: { key: entry.key } },
    h('td', {}, h('code', {}, entry.key)),
    h('td', {}, entry.value),
    h('td', {}, expires),
    h('td', {}, h('button', {
      type: 'button', class: 'entry-remove', 'aria-label': `Remove ${entry.key} from ${list}`,
      onclick: () => removeEntry(list, entry.key),
    }, 'Remove')));
}

async function addEntry(event) {
  event.preventDefault();
  const list = listName();
  const key = $('#list-key', root).value.trim();
  const ttl = $('#list-ttl', root).value.trim();
  if (!list || !key) {
    $('#list-key', root).focus();
    return;
  }
  const entry = ttl ? { key, ttl } : { key };
  const done = await confirmed(`Add ${key} to ${list}?`,
    `${key} is written to the list ${ttl ? `for ${ttl}` : 'until removed'}; requests whose rules look it up see it at once.`,
    async () => {
      const answer = await post(paths.entries(list), { entries: [entry] });
      return `list ${answer.list}: ${key} added${ttl ? ` for ${ttl}` : ''}`;
    }, 'Add');
  if (done && root) {
    $('#list-key', root).value = '';
    await loadEntries();
  }
}

async function removeEntry(list, key) {
  const done = await confirmed(`Remove ${key} from ${list}?`,
    'The entry is deleted from the store at once.',
    async () => {
      const answer = await del(paths.entries(list), { keys: [key] });
      return `list ${answer.list}: ${key} removed`;
    }, 'Remove');
  if (done) await loadEntries();
}
