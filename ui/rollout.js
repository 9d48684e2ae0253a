// The rollout of one service: its state, the timeline of its plan's steps with the current one
// marked, the current window's figures, how many more requests it waits for, every verdict with
// its figures, and the controls (start, pause, resume, promote, abort, retry), each confirmed.
// The full rollout comes from GET /v1/services/{s}/rollout, fetched when the live feed shows its
// state or verdict count change, and at most every 2 s while it runs.

import { get, post, paths } from './api.js';
import { h, fill, num, pct, when, fromNow, confirmed, setRevision, sayError } from './dom.js';

const REFRESH_MS = 2000;

const ACTIONS = {
  pause: ['Pause', 'The canary keeps its weight; the analysis goes on and a failure still aborts.'],
  resume: ['Resume', 'The step holds again from now, or the next step begins if this one waits for resume.'],
  promote: ['Promote', 'The canary becomes stable now, skipping the remaining steps; the post-promotion guard runs.'],
  abort: ['Abort', 'Everyone goes back to stable now: the canary\'s weight goes to 0 and its cohort rules are taken out.'],
  retry: ['Retry', 'The aborted rollout starts again from its first step, its cohort rules back.'],
};

/** Human words for a plan step: `25 %, holds 5m` or `50 %, waits for resume`. */
function stepText(step, plan) {
  const s = typeof step === 'number' ? { weight: step } : step;
  const then = s.pause ? 'waits for resume' : `holds ${s.hold || plan.step_time}`;
  return [pct(s.weight), then];
}

/** `needs 43 more canary requests` from RolloutView.more_requests. */
function needsText(more) {
  if (!more) return '';
  const parts = Object.entries(more).filter(([, n]) => n > 0)
    .map(([version, n]) => `${n} more ${version} request${n === 1 ? '' : 's'}`);
  return parts.length ? `needs ${parts.join(' and ')}` : '';
}

function figuresRow(f) {
  return h('tr', {},
    h('th', { scope: 'row' }, f.version),
    h('td', {}, `${f.requests}`),
    h('td', {}, `${num(f.error_percent, '%')} (${f.errors})`),
    h('td', {}, num(f.p50_ms, 'ms')),
    h('td', {}, num(f.p99_ms, 'ms')));
}

function windowTable(window) {
  if (!window) return h('p', { class: 'note' }, 'No analysis window yet.');
  return h('div', { class: 'table-wrap' }, h('table', { class: 'window' },
    h('caption', {}, `Current window: ${num(window.seconds, 's', 0)} since ${when(window.started)}`),
    h('thead', {}, h('tr', {}, ['Version', 'Requests', 'Errors', 'p50', 'p99'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, figuresRow(window.canary), figuresRow(window.stable))));
}

function verdictItem(v) {
  return h('li', { class: `verdict outcome-${v.outcome}` },
    h('span', { class: 'verdict-head' },
      h('strong', { class: 'badge' }, v.outcome.replace(/_/g, ' ')),
      ` ${when(v.at_ms)} · step ${v.step + 1} at ${pct(v.weight)} · ${v.canary_requests} canary / ${v.stable_requests} stable requests`,
      v.action ? ` · ${v.action}` : ''),
    h('span', { class: 'verdict-text' }, v.text));
}

function timeline(view) {
  const { plan, state } = view;
  const current = view.step - 1;
  const items = plan.steps.map((step, i) => {
    const [weight, then] = stepText(step, plan);
    const phase = state === 'promoted' || i < current ? 'done' : i === current ? 'current' : 'todo';
    return h('li', { class: `${phase}${i === current && state === 'aborted' ? ' failed' : ''}`, 'aria-current': i === current ? 'step' : null },
      h('strong', {}, `Step ${i + 1}: ${weight}`), h('span', {}, then));
  });
  const guard = view.guard_until ? `guard until ${when(view.guard_until)}` : `guard ${plan.post_promotion}`;
  items.push(h('li', { class: state === 'promoted' ? 'done current' : 'todo', 'aria-current': state === 'promoted' ? 'step' : null },
    h('strong', {}, 'Promoted'), h('span', {}, guard)));
  return items;
}

/**
 * The rollout part of a service panel. Returns {el, update(serviceSample), stop()}: update takes
 * the live feed's figures of the service, whose `rollout` summary decides when to fetch.
 */
export function rolloutBox(service) {
  const state = h('strong', { class: 'rollout-state' }, 'none');
  const progress = h('span', { class: 'rollout-progress' });
  const banner = h('p', { class: 'rollout-banner', hidden: true });
  const reason = h('p', { class: 'rollout-reason' });
  const needs = h('p', { class: 'rollout-needs' });
  const steps = h('ol', { class: 'rollout-timeline' });
  const figures = h('div', { class: 'rollout-window' });
  const details = h('p', { class: 'rollout-details note' });
  const verdicts = h('ul', { class: 'rollout-verdicts' });
  const versionInput = h('input', { class: 'rollout-version', id: `rollout-version-${service}`, autocomplete: 'off', required: true });
  // The plan, all optional: an empty field keeps the default. Durations as the API takes them
  // (`90s`, `5m`), steps as weights in percent.
  const planField = (name, label, placeholder, attrs = {}) => {
    const input = h('input', { class: `rollout-${name}`, id: `rollout-${name}-${service}`, placeholder, autocomplete: 'off', ...attrs });
    return [input, h('label', { for: input.id }, label), input];
  };
  const [stepsInput, ...stepsField] = planField('steps', 'Steps (%)', '5,25,50,100');
  const [stepTimeInput, ...stepTimeField] = planField('step-time', 'Each step holds', '5m');
  const [intervalInput, ...intervalField] = planField('interval', 'Analysis window', '1m');
  const [minInput, ...minField] = planField('min-requests', 'Requests per window', '100', { type: 'number', min: 1, step: 1, inputmode: 'numeric' });
  const [maxWaitInput, ...maxWaitField] = planField('max-wait', 'Waits for data at most', '15m');
  const buttons = Object.entries(ACTIONS).map(([action, [label]]) =>
    h('button', { type: 'button', class: `act-${action}`, disabled: true, onclick: () => act(action) }, label));

  const el = h('div', { class: 'rollout' },
    h('h3', {}, 'Rollout'),
    banner,
    h('p', { class: 'rollout-line' }, 'State: ', state, ' ', progress),
    reason, needs,
    steps,
    figures, details,
    h('div', { class: 'rollout-actions', role: 'group', 'aria-label': `Rollout controls of ${service}` }, buttons),
    h('form', { class: 'rollout-start', onsubmit: start },
      h('label', { for: versionInput.id }, 'Version to roll out'), versionInput,
      h('button', { type: 'submit', class: 'act-start' }, 'Start rollout'),
      h('details', { class: 'rollout-plan' },
        h('summary', {}, 'Plan (empty fields: the default plan, 5 → 25 → 50 → 100 %, 5 min a step, then promote)'),
        h('div', { class: 'form-grid' }, stepsField, stepTimeField, intervalField, minField, maxWaitField))),
    h('h4', {}, 'Verdicts'),
    verdicts);

  let lastKey;
  let lastFetch = 0;
  let inFlight = false;
  let due = false;
  let stopped = false;
  let view = null;
  let prefilled = false;

  function render(next) {
    view = next;
    buttons.forEach((b) => { b.disabled = !view; });
    banner.hidden = !(view && view.state === 'aborted');
    el.classList.toggle('aborted', !!view && view.state === 'aborted');
    if (!view) {
      state.textContent = 'none';
      state.className = 'rollout-state';
      fill(progress, 'no rollout');
      [reason, needs, details].forEach((e) => { e.textContent = ''; });
      fill(steps);
      fill(figures);
      fill(verdicts, h('li', { class: 'note' }, 'No verdicts.'));
      return;
    }
    const word = view.state || 'not started';
    state.textContent = word;
    state.className = `rollout-state state-${word.replace(/ /g, '-')}`;
    banner.textContent = `ABORTED: everyone not sent elsewhere by a rule is back on ${service}'s stable version`;
    fill(progress, `· ${view.version} at step ${view.step} of ${view.steps}, weight ${pct(view.weight)}`,
      view.since ? ` · since ${when(view.since)}` : '');
    reason.textContent = view.reason;
    needs.textContent = needsText(view.more_requests);
    fill(steps, timeline(view));
    fill(figures, windowTable(view.window));
    const plan = view.plan;
    details.textContent = [
      `${view.failures} failing window${view.failures === 1 ? '' : 's'} in a row (aborts at ${plan.failure_limit})`,
      `window at least ${plan.interval}, waits at most ${plan.max_wait} for data`,
      plan.dry_run ? 'dry run: verdicts never abort' : null,
      view.guard_until ? `post-promotion guard ends ${fromNow(view.guard_until)}` : null,
      view.driver ? `driven by ${view.driver}` : 'no driver',
    ].filter(Boolean).join(' · ');
    const list = view.verdicts.slice().reverse().map(verdictItem);
    fill(verdicts, list.length ? list : h('li', { class: 'note' }, 'No verdicts yet.'));
  }

  async function refresh() {
    if (inFlight || stopped) return;
    inFlight = true;
    due = false;
    lastFetch = Date.now();
    try {
      render(await get(paths.rollout(service)));
    } catch (error) {
      if (error.status === 404) render(null);
      else if (error.status !== 401) sayError(error);
    } finally {
      inFlight = false;
    }
  }

  function update(sample) {
    const versions = sample.versions.filter((v) => v.name !== sample.stable).map((v) => v.name);
    if (!prefilled && versions.length) {
      prefilled = true;
      versionInput.value = versions[0];
    }
    const r = sample.rollout;
    const key = r ? `${r.version}|${r.state}|${r.verdicts}|${r.step}` : 'none';
    if (key !== lastKey) {
      lastKey = key;
      due = !!r;
      if (!r) render(null);
    }
    if (!r) return;
    // A new state or verdict is fetched, and a running rollout's window followed, at most
    // every REFRESH_MS: the feed ticks every second.
    const guarding = r.state === 'promoted' && view && view.guard_until && Date.parse(view.guard_until) > Date.now();
    const moving = ['progressing', 'waiting', 'paused'].includes(r.state) || guarding;
    if ((due || moving) && Date.now() - lastFetch >= REFRESH_MS) refresh();
  }

  function answered(answer, words) {
    setRevision(answer.revision);
    render(answer);
    return `${service}: ${words}, now ${answer.state || 'not started'} (revision ${answer.revision})`;
  }

  function act(action) {
    const [label, text] = ACTIONS[action];
    const version = view ? view.version : 'the canary';
    return confirmed(`${label} the rollout of ${version} in ${service}?`, text,
      async () => answered(await post(paths.rolloutAction(service, action)), `rollout ${action}`),
      label);
  }

  /** The start body: the version and the plan fields that were filled in; words for the dialog. */
  function plan(version) {
    const body = { version };
    const words = [];
    const steps = stepsInput.value.trim();
    if (steps) {
      // Not a number stays as written, so that the API names the bad step.
      body.steps = steps.split(/[\s,]+/).filter(Boolean).map((w) => (Number.isFinite(Number(w)) ? Number(w) : w));
      words.push(`at ${body.steps.map(pct).join(', ')}`);
    } else words.push('at 5 %, 25 %, 50 %, 100 %');
    const text = (input) => input.value.trim() || null;
    if (text(stepTimeInput)) { body.step_time = text(stepTimeInput); words.push(`each step held ${body.step_time}`); }
    if (text(intervalInput)) { body.interval = text(intervalInput); words.push(`judged every ${body.interval}`); }
    if (text(minInput)) { body.analysis = { min_requests: Number(text(minInput)) }; words.push(`on at least ${body.analysis.min_requests} requests of each version`); }
    if (text(maxWaitInput)) { body.max_wait = text(maxWaitInput); words.push(`waiting at most ${body.max_wait} for them`); }
    return [body, words.join(', ')];
  }

  function start(event) {
    event.preventDefault();
    const version = versionInput.value.trim();
    if (!version) return;
    const [body, words] = plan(version);
    confirmed(`Start a rollout of ${version} in ${service}?`,
      `${version} ${words}, each step judged against stable, then promoted. The first step's weight is set at once.`,
      async () => answered(await post(paths.rollout(service), body), `rollout of ${version} started`),
      'Start');
  }

  return { el, update, stop: () => { stopped = true; } };
}
