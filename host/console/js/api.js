// The only place the API key lives: a module-private variable. It is never
// written to storage, a cookie or a URL, and leaves only as a bearer header.

let key = null;

export function setKey(k) { key = k; }
export function clearKey() { key = null; }
export function hasKey() { return key !== null; }

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra = {}) {
  if (key === null) throw new ApiError(401, 'signed_out', 'not signed in');
  return { Authorization: `Bearer ${key}`, ...extra };
}

const OPTS = { cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer', redirect: 'error' };

async function failure(res) {
  let code = `http_${res.status}`;
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch { /* not JSON */ }
  return new ApiError(res.status, code, message);
}

/** A JSON call under /api/v1. Resolves to the parsed body (null for 204). */
export async function api(method, path, body) {
  const init = { ...OPTS, method, headers: headers() };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(`/api/v1${path}`, init);
  } catch (e) {
    throw new ApiError(0, 'network', `the host did not answer (${e.message})`);
  }
  if (!res.ok) throw await failure(res);
  if (res.status === 204) return null;
  return res.json();
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body);

/** Every item of a paged list (`?limit=&offset=`, answered with `field` and
 *  `nextOffset`), following `nextOffset` for at most 50 pages of 100. */
export async function allPages(path, field) {
  const out = [];
  let offset = 0;
  for (let i = 0; i < 50 && offset !== null && offset !== undefined; i += 1) {
    const page = await get(`${path}?limit=100&offset=${offset}`);
    out.push(...page[field]);
    offset = page.nextOffset;
  }
  return out;
}

/** /metrics as text (admin token only). */
export async function metricsText() {
  const res = await fetch('/metrics', { ...OPTS, headers: headers({ Accept: 'text/plain' }) });
  if (!res.ok) throw await failure(res);
  return res.text();
}

/** PUT a file with upload progress (fetch cannot report upload progress). */
export function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', `/api/v1${path}`);
    for (const [k, v] of Object.entries(headers({ 'Content-Type': 'application/wasm' }))) {
      xhr.setRequestHeader(k, v);
    }
    xhr.withCredentials = false;
    xhr.upload.addEventListener('progress', (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    });
    xhr.addEventListener('load', () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else {
        const err = body && body.error ? body.error : { code: `http_${xhr.status}`, message: xhr.statusText || 'refused' };
        reject(new ApiError(xhr.status, err.code, err.message));
      }
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, 'network', 'the upload failed (network)')));
    xhr.addEventListener('abort', () => reject(new ApiError(0, 'aborted', 'the upload was cancelled')));
    xhr.send(file);
  });
}

/**
 * Server-sent events over fetch (EventSource cannot send an Authorization
 * header). Calls onEvent({event, data, id}) per event; resolves when the
 * stream ends; abort with signal.
 */
export async function streamEvents(path, onEvent, signal) {
  const res = await fetch(`/api/v1${path}`, {
    ...OPTS, headers: headers({ Accept: 'text/event-stream' }), signal,
  });
  if (!res.ok) throw await failure(res);
  const reader = res.body.getReader();
  const parser = sseParser(onEvent);
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    parser(decoder.decode(value, { stream: true }));
  }
  parser(decoder.decode(), true);
}

/** An incremental text/event-stream parser (WHATWG "event stream" rules). */
export function sseParser(onEvent) {
  let buffer = '';
  let event = { event: '', data: [], id: null };
  const dispatch = () => {
    if (event.data.length) onEvent({ event: event.event || 'message', data: event.data.join('\n'), id: event.id });
    event = { event: '', data: [], id: null };
  };
  return (chunk, end = false) => {
    buffer += chunk;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = end ? '' : lines.pop();
    for (const line of lines) {
      if (line === '') { dispatch(); continue; }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event.event = value;
      else if (field === 'data') event.data.push(value);
      else if (field === 'id') event.id = value;
    }
  };
}
