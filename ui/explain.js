// Explain: describe a request (client IP, path, host, headers, cookies) and see which version
// the running policy sends it to and why, from POST /v1/explain (nothing is sent upstream).

import { post, paths } from './api.js';
import { h, $, fill, sayError } from './dom.js';

let root = null;

export function startExplain(el) {
  root = el;
  $('#explain-form', root).addEventListener('submit', explain);
}

export function stopExplain() {
  root = null;
}

/** `Name: value` lines into an object; a line without a colon is an error naming it. */
export function parseHeaders(text) {
  const headers = {};
  text.split('\n').map((l) => l.trim()).filter(Boolean).forEach((line, i) => {
    const colon = line.indexOf(':');
    if (colon < 1) throw new Error(`headers, line ${i + 1}: \`${line}\` is not \`Name: value\``);
    headers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
  });
  return headers;
}

/** `a=1; b=2` into an object. */
export function parseCookies(text) {
  const cookies = {};
  for (const part of text.split(';').map((p) => p.trim()).filter(Boolean)) {
    const eq = part.indexOf('=');
    if (eq < 1) throw new Error(`cookies: \`${part}\` is not \`name=value\``);
    cookies[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return cookies;
}

/** The reason code in words. */
function reasonWords(reason) {
  const [kind, detail, bucket] = reason.split(':');
  if (kind === 'rule') return `the rule ${detail} matched`;
  if (kind === 'split' && detail === 'cookie') {
    return `no rule matched and it has no split identity; its bucket cookie put it in bucket ${bucket}`;
  }
  if (kind === 'split') return `no rule matched; the ${detail} split put it in bucket ${bucket}`;
  if (kind === 'followed') return 'a trusted graygate in front chose this version';
  if (kind === 'override') return `the tester override said ${detail}`;
  if (kind === 'default') return 'no rule matched and the split left it on the stable version';
  return '';
}

async function explain(event) {
  event.preventDefault();
  const value = (id) => $(id, root).value.trim();
  const result = $('#explain-result', root);
  let body;
  try {
    body = { headers: parseHeaders($('#explain-headers', root).value), cookies: parseCookies(value('#explain-cookies')) };
  } catch (error) {
    sayError(error);
    return;
  }
  if (value('#explain-ip')) body.client_ip = value('#explain-ip');
  if (value('#explain-path')) body.path = value('#explain-path');
  if (value('#explain-host')) body.host = value('#explain-host');
  try {
    const answer = await post(paths.explain, body);
    const row = (label, text) => (text == null ? null : h('div', {}, h('dt', {}, label), h('dd', {}, text)));
    const words = reasonWords(answer.reason);
    fill(result,
      h('p', { class: 'verdict-line' }, 'Goes to ', h('strong', { class: 'version' }, answer.version ?? 'no version (no route)'),
        answer.fallback ? ` but ${answer.fallback.version} answers: ${answer.fallback.reason}` : ''),
      h('p', {}, 'Because: ', h('code', { class: 'reason' }, answer.reason), words ? ` (${words})` : ''),
      h('dl', { class: 'explained' },
        row('Service', answer.service), row('Route', answer.route), row('Upstream', answer.upstream),
        row('Stable version', answer.stable), row('Client IP', answer.client_ip),
        row('Passed over', answer.note), row('Sets cookie', answer.set_cookie),
        row('Policy revision', String(answer.revision))));
  } catch (error) {
    fill(result);
    sayError(error);
  }
}
