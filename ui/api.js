// The admin API as the page uses it: JSON in and out, every refusal as an ApiError carrying the
// API's error.message, and a 401 on any data request sends the page back to the sign-in screen.
// The session cookie goes with every request (same origin); the page never keeps a token.

/** A refusal of the admin API (or no answer at all: status 0). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let onUnauthorized = () => {};

/** What to do when a data request answers 401 (the session ended). */
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

/**
 * Sends one request. A change carries its body as JSON with `Content-Type: application/json`,
 * or no body at all. Answers the parsed JSON (null for 204).
 */
export async function request(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, 'unreachable', `the admin API cannot be reached (${error.message})`);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = data && data.error ? data.error : {};
    const error = new ApiError(response.status, detail.code || 'http',
      detail.message || `${method} ${path}: ${response.status} ${response.statusText}`);
    if (response.status === 401 && !path.startsWith('/v1/session')) onUnauthorized(error);
    throw error;
  }
  return data;
}

export const get = (path) => request('GET', path);
export const post = (path, body) => request('POST', path, body);
export const put = (path, body) => request('PUT', path, body);
export const del = (path, body) => request('DELETE', path, body);

const seg = encodeURIComponent;

/** The paths the page uses, with percent-encoded segments. */
export const paths = {
  session: '/v1/session',
  live: '/v1/live',
  liveHistory: '/v1/live/history',
  policy: '/v1/policy',
  explain: '/v1/explain',
  fleet: '/v1/fleet',
  undo: '/v1/undo',
  weights: (service) => `/v1/services/${seg(service)}/weights`,
  rollout: (service) => `/v1/services/${seg(service)}/rollout`,
  rolloutAction: (service, action) => `/v1/services/${seg(service)}/rollout/${seg(action)}`,
  entries: (list, query = {}) => {
    const q = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== '' && v != null));
    const tail = q.toString();
    return `/v1/lists/${seg(list)}/entries${tail ? `?${tail}` : ''}`;
  },
  history: (before) => `/v1/history?limit=20${before ? `&before=${before}` : ''}`,
  historyOne: (revision) => `/v1/history/${seg(revision)}`,
};
