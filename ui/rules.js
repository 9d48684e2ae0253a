// Rules: the running policy in words, per service: its routes, versions, tester override, rules
// in the order they are tried, the weighted split and the rollout plan. No JSON on screen.

import { get, paths } from './api.js';
import { h, fill, pct, sayError } from './dom.js';

let root = null;

export function startRules(el) {
  root = el;
}

export function stopRules() {
  root = null;
}

const quote = (s) => `“${s}”`;

/** A few values, the rest counted: `1, 2, 3 and 40 more`. */
function some(values, show = quote) {
  const head = values.slice(0, 8).map(show).join(', ');
  return values.length > 8 ? `${head} and ${values.length - 8} more` : head;
}

function sourceText(c) {
  const source = c.header ? `header ${c.header}` : c.cookie ? `cookie ${c.cookie}`
    : c.query ? `query parameter ${c.query}` : 'the client IP';
  if (!c.lookup) return source;
  const key = c.lookup.key && c.lookup.key !== '{}' ? ` under key ${quote(c.lookup.key)}` : '';
  return `${source} looked up in list ${c.lookup.list}${key}`;
}

function testText(c) {
  if (c.equals != null) return `equals ${quote(c.equals)}`;
  if (c.in) return `is one of ${some(c.in)}`;
  if (c.regex != null) return `matches the pattern ${quote(c.regex)}`;
  if (c.cidr) return `is in ${some(c.cidr, String)}`;
  if (c.range) return `is a number from ${c.range.start} to ${c.range.end}${c.range.exclusive ? ' (both ends excluded)' : ''}`;
  if (c.range_from) return `is a number in the range stored under ${quote(c.range_from.key)} in list ${c.range_from.list}`;
  if (c.ids) return `is one of the ids ${some(c.ids, String)}`;
  if (c.suffix) return `ends with ${some(c.suffix)}`;
  if (c.modulo) return `modulo ${c.modulo.divisor} is ${some(c.modulo.remainders, String)}`;
  if (c.percent != null) return `falls in the first ${pct(c.percent)} of buckets`;
  if (c.present != null) return c.present ? 'is present' : 'is absent';
  return 'is anything';
}

/** A condition in words. */
export function conditionText(c) {
  if (!c) return 'always';
  if (c.all) return c.all.map(conditionText).map((t) => `(${t})`).join(' and ');
  if (c.any) return c.any.map(conditionText).map((t) => `(${t})`).join(' or ');
  if (c.not) return `not (${conditionText(c.not)})`;
  return `${sourceText(c)} ${testText(c)}`;
}

function identityText(by) {
  if (!by) return 'each request drawn at random';
  if (by.header) return `sticky by header ${by.header}`;
  if (by.cookie) return `sticky by cookie ${by.cookie}`;
  if (by.query) return `sticky by query parameter ${by.query}`;
  return 'sticky by client IP';
}

function splitText(service) {
  const weights = Object.entries((service.split && service.split.weights) || {});
  const given = weights.reduce((sum, [, w]) => sum + w, 0);
  const parts = weights.map(([v, w]) => `${v} ${pct(w)}`);
  parts.push(`${service.stable} (stable) ${pct(Math.max(0, 100 - given))}`);
  return `Everyone else: ${parts.join(', ')}; ${identityText(service.split && service.split.by)}.`;
}

function planText(plan) {
  const steps = plan.steps.map((s) => (typeof s === 'number' ? pct(s) : `${pct(s.weight)}${s.pause ? ' (waits for resume)' : s.hold ? ` (${s.hold})` : ''}`));
  const state = plan.status ? plan.status.state : 'not started';
  return `Rollout of ${plan.version}: ${state}; steps ${steps.join(' → ')}, ${plan.step_time} each, then promote.`;
}

function routeText(route) {
  const hosts = route.hosts && route.hosts.length ? route.hosts.join(', ') : 'any host';
  return `${hosts}, path ${route.path_prefix || '/'}${route.name && route.name !== route.service ? ` (route ${route.name})` : ''}`;
}

function serviceRules(service, routes) {
  const mine = routes.filter((r) => r.service === service.name);
  const versions = Object.entries(service.versions).map(([v, u]) => `${v}${v === service.stable ? ' (stable)' : ''} on upstream ${u}`);
  const o = service.override;
  return h('article', { class: 'rules-service', dataset: { service: service.name } },
    h('h3', {}, service.name),
    h('p', {}, `Requests for ${mine.length ? mine.map(routeText).join('; ') : 'no route'}.`),
    h('p', {}, `Versions: ${versions.join(', ')}.`),
    o ? h('p', {}, `Tester override: ${o.header ? `header ${o.header}` : `cookie ${o.cookie}`} “always” sends to ${o.version}, “never” keeps ${service.stable}.`) : null,
    service.rules && service.rules.length
      ? h('ol', { class: 'rule-list' }, service.rules.map((r) =>
        h('li', { class: 'rule', dataset: { rule: r.name } }, h('strong', {}, r.name), ` → ${r.version} when ${conditionText(r.when)}`)))
      : h('p', { class: 'note' }, 'No rules.'),
    h('p', {}, splitText(service)),
    service.previous_stable ? h('p', {}, `A rollback makes ${service.previous_stable} stable again.`) : null,
    service.rollout ? h('p', {}, planText(service.rollout)) : null);
}

/** Called when the view is shown. */
export async function showRules() {
  if (!root) return;
  try {
    const policy = await get(paths.policy);
    const services = policy.services || [];
    fill(root, services.length ? services.map((s) => serviceRules(s, policy.routes || []))
      : h('p', { class: 'note' }, 'The policy has no services.'));
  } catch (error) {
    sayError(error);
  }
}
