// The dashboard's entry: sign-in (a token exchanged once for an HttpOnly session cookie; nothing
// but the form is shown before), the header bar (store state, revision, who is signed in), the
// navigation between views, and the live feed (backlog, then one sample a second) that drives
// the overview. Any 401 from the API brings the sign-in screen back.

import { get, post, del, paths, whenUnauthorized } from './api.js';
import { $, say, setRevision } from './dom.js';
import { startOverview, stopOverview, addBacklog, addSample } from './overview.js';
import { startLists, stopLists, showLists } from './lists.js';
import { startRules, stopRules, showRules } from './rules.js';
import { startHistory, stopHistory, showHistory } from './history.js';
import { startExplain, stopExplain } from './explain.js';
import { startFleet, stopFleet } from './fleet.js';

const VIEWS = {
  overview: null,
  lists: showLists,
  rules: showRules,
  history: showHistory,
  explain: null,
};
const STALE_MS = 5000;
const SESSION_CHECK_MS = 30000;

const signin = $('#signin');
let live = null;
let sessionCheck = 0;
let openMode = false;

/** Shows the sign-in form and nothing else. */
function showSignIn(note = '') {
  stopApp();
  $('#signin-note').textContent = note;
  $('#signin-error').textContent = '';
  signin.hidden = false;
  $('#signin-token').focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = $('#signin-token');
  const token = input.value;
  input.value = '';
  $('#signin-error').textContent = '';
  try {
    enter(await post(paths.session, token ? { token } : {}));
  } catch (error) {
    $('#signin-error').textContent = error.message;
    input.focus();
  }
}

async function signOut() {
  const note = openMode ? 'Signed out. No tokens are configured: sign in with the field left empty.' : 'Signed out.';
  try {
    await del(paths.session);
    showSignIn(note);
  } catch (error) {
    if (error.status === 401) showSignIn(note);
    else say(error.message, false);
  }
}

/** Builds the dashboard from its template once signed in. */
function enter(session) {
  stopApp();
  signin.hidden = true;
  document.body.append($('#shell').content.cloneNode(true));
  const app = $('#app');
  openMode = session.open;
  $('#whoami', app).textContent = session.name;
  const until = session.expires_at ? `session until ${new Date(session.expires_at).toLocaleString()}` : 'no expiry';
  $('#whoami', app).title = session.open ? 'open mode: no tokens are configured' : until;
  $('#signout', app).addEventListener('click', signOut);
  startOverview($('#services', app));
  startLists($('#lists', app));
  startRules($('#rules-body', app));
  startHistory($('#history', app));
  startExplain($('#explain', app));
  startFleet($('#fleet-panel', app));
  addEventListener('hashchange', route);
  route();
  live = startLive();
  sessionCheck = setInterval(checkSession, SESSION_CHECK_MS);
}

/** The live stream outlasts a session: ask now and then whether it still holds. */
async function checkSession() {
  try {
    await get(paths.session);
  } catch (error) {
    if (error.status === 401) showSignIn('Your session ended: sign in again.');
  }
}

/** Takes the dashboard down: feed closed, views dropped, markup removed. */
function stopApp() {
  removeEventListener('hashchange', route);
  clearInterval(sessionCheck);
  if (live) live.stop();
  live = null;
  stopOverview();
  stopLists();
  stopRules();
  stopHistory();
  stopExplain();
  stopFleet();
  const app = $('#app');
  if (app) app.remove();
}

/** Shows the view named in the location's hash (`#/lists`), the overview by default. */
function route() {
  const name = location.hash.replace(/^#\/?/, '');
  const current = name in VIEWS ? name : 'overview';
  for (const view of Object.keys(VIEWS)) {
    const section = document.getElementById(view);
    if (section) section.hidden = view !== current;
    const link = document.getElementById(`nav-${view}`);
    if (link) {
      if (view === current) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
  }
  if (VIEWS[current]) VIEWS[current]();
}

/** The header bar from a live sample: revision and store state. */
function showHeader(sample) {
  setRevision(sample.revision);
  const store = sample.store;
  const state = $('#store-state');
  if (!state) return;
  state.textContent = store.degraded ? 'degraded' : 'connected';
  state.className = store.degraded ? 'bad' : 'good';
  $('#store-kind').textContent = store.kind;
  const banner = $('#store-banner');
  banner.hidden = !store.degraded;
  banner.textContent = store.degraded
    ? `The ${store.kind} store cannot be reached${store.since ? ` since ${new Date(store.since).toLocaleTimeString()}` : ''}: requests are decided as if it were empty. ${store.last_error || ''}`
    : '';
}

function feedState(text, good) {
  const el = $('#feed-state');
  if (!el) return;
  el.textContent = text;
  el.className = `pill ${good ? 'good' : 'bad'}`;
}

/**
 * The live feed: the backlog from /v1/live/history, then an EventSource on /v1/live. When the
 * stream ends, the session is checked (401: sign-in) and the stream opened again a moment later.
 */
function startLive() {
  let source = null;
  let retry = 0;
  let last = Date.now();
  let stopped = false;

  const onSample = (event) => {
    const sample = JSON.parse(event.data);
    last = Date.now();
    feedState('live', true);
    showHeader(sample);
    addSample(sample);
  };

  async function reconnect() {
    try {
      await get(paths.session);
      if (!stopped) retry = setTimeout(connect, 3000);
    } catch (error) {
      if (stopped) return;
      if (error.status === 401) showSignIn('Your session ended: sign in again.');
      else retry = setTimeout(reconnect, 5000);
    }
  }

  function connect() {
    if (stopped) return;
    source = new EventSource(paths.live);
    source.addEventListener('sample', onSample);
    source.addEventListener('error', () => {
      feedState('reconnecting', false);
      if (source.readyState === EventSource.CLOSED) {
        source = null;
        reconnect();
      }
    });
  }

  const watchdog = setInterval(() => {
    const quiet = Date.now() - last;
    if (quiet > STALE_MS) feedState(`no data for ${Math.round(quiet / 1000)} s`, false);
  }, 1000);

  get(paths.liveHistory).then((backlog) => {
    if (stopped) return;
    addBacklog(backlog.samples);
    if (backlog.samples.length) showHeader(backlog.samples[backlog.samples.length - 1]);
  }).catch((error) => {
    if (!stopped && error.status !== 401) say(error.message, false);
  }).finally(connect);

  return {
    stop() {
      stopped = true;
      clearTimeout(retry);
      clearInterval(watchdog);
      if (source) source.close();
    },
  };
}

async function boot() {
  whenUnauthorized(() => showSignIn('Your session ended: sign in again.'));
  signin.addEventListener('submit', signIn);
  try {
    enter(await get(paths.session));
  } catch (error) {
    showSignIn(error.status === 401 ? '' : error.message);
  }
}

boot();
