// Small helpers every view shares: building elements, formatting figures with their units,
// the outcome line (#message), the revision in the header, and the in-page confirmation dialog.

/** Builds an element: h('li', {class: 'x', onclick: f, dataset: {key: 'k'}}, 'text', child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (name === 'class') el.className = value;
    else if (name === 'dataset') Object.assign(el.dataset, value);
    else if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, '');
    else el.setAttribute(name, value);
  }
  el.append(...children.flat().filter((c) => c != null && c !== false));
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c != null && c !== false));
}

/** A figure with its unit: `95.0 req/s`; `— ms` when there is no figure. */
export function num(value, unit, digits = 1) {
  const text = value == null || !Number.isFinite(value) ? '—' : value.toFixed(digits);
  return unit ? `${text} ${unit}` : text;
}

/** A weight or percentage as people write it: `10 %`, `12.5 %`. */
export function pct(value) {
  return value == null ? '— %' : `${Math.round(value * 100) / 100} %`;
}

/** Local time of day (or date and time when not today) of an RFC 3339 string or ms. */
export function when(time) {
  if (time == null) return '—';
  const d = new Date(time);
  if (Number.isNaN(d.getTime())) return String(time);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

/** `in 59 min`, `3 s ago`: how far a time is from now. */
export function fromNow(time) {
  const s = Math.round((new Date(time).getTime() - Date.now()) / 1000);
  const a = Math.abs(s);
  const text = a < 90 ? `${a} s` : a < 5400 ? `${Math.round(a / 60)} min`
    : a < 172800 ? `${Math.round(a / 3600)} h` : `${Math.round(a / 86400)} days`;
  return s >= 0 ? `in ${text}` : `${text} ago`;
}

/** Shows the outcome of the last action: `ok: ...` or the API's error message. */
export function say(text, ok = true) {
  const el = document.getElementById('message');
  if (!el) return;
  el.textContent = ok ? `ok: ${text}` : text;
  el.className = ok ? 'ok' : 'bad';
}

/** Shows an error (an ApiError or any Error) in #message. */
export function sayError(error) {
  say(error && error.message ? error.message : String(error), false);
}

/** Shows the policy revision in the header. */
export function setRevision(revision) {
  const el = document.getElementById('revision');
  if (el && revision != null) el.textContent = `rev ${revision}`;
}

/**
 * Asks in the page's <dialog id="confirm"> and resolves to true when confirmed. Escape and
 * Cancel resolve to false.
 */
export function confirmAction(title, text, okLabel = 'Confirm') {
  const dialog = document.getElementById('confirm');
  if (!dialog) return Promise.resolve(false);
  $('#confirm-title', dialog).textContent = title;
  $('#confirm-text', dialog).textContent = text;
  $('#confirm-ok', dialog).textContent = okLabel;
  dialog.returnValue = '';
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
  });
}

/**
 * Runs a change after confirmation; shows its outcome. `action` returns the text shown after
 * `ok:`; an API answer with `unchanged` is worded so.
 */
export async function confirmed(title, text, action, okLabel) {
  if (!(await confirmAction(title, text, okLabel))) return false;
  try {
    say(await action());
    return true;
  } catch (error) {
    sayError(error);
    return false;
  }
}
