// Talking to the beeswax API: JSON calls with the API key (asked for once on a 401 and kept
// for the tab in sessionStorage), server-sent events read with fetch (EventSource cannot send
// the Authorization header), and images fetched as blob URLs for the same reason.

const KEY_STORE = 'beeswax.apiKey';
let apiKey = sessionStorage.getItem(KEY_STORE) || '';
let asking = null; // the pending key prompt, shared by every request that got a 401

/** An error answer of the API: status, code, message and the request field at fault. */
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `the server answered ${status}`);
    this.status = status;
    this.code = e.code || '';
    this.param = e.param || null;
  }
}

/** Whether a key is in use (the page then shows a "change key" button). */
export function hasKey() {
  return apiKey !== '';
}

/** Shows the key dialog (once, however many requests wait) and resolves with the new key. */
export function askKey(message) {
  if (asking) return asking;
  const dialog = document.getElementById('key-dialog');
  const form = document.getElementById('key-form');
  const input = document.getElementById('key-input');
  const error = document.getElementById('key-error');
  error.textContent = message || '';
  error.hidden = !message;
  input.value = '';
  asking = new Promise((resolve) => {
    const cancel = (e) => e.preventDefault(); // the page cannot work without a key
    const submit = (e) => {
      const key = input.value.trim();
      if (!key) {
        e.preventDefault();
        return;
      }
      apiKey = key;
      sessionStorage.setItem(KEY_STORE, key);
      dialog.removeEventListener('cancel', cancel);
      form.removeEventListener('submit', submit);
      asking = null;
      document.getElementById('key-button').hidden = false;
      resolve(key);
    };
    dialog.addEventListener('cancel', cancel);
    form.addEventListener('submit', submit);
  });
  dialog.showModal();
  input.focus();
  return asking;
}

/**
 * Calls the API. `body` is sent as JSON. On a 401 the key dialog opens and the call is retried
 * with the key given. Resolves with the parsed JSON (or the Response when `raw`), rejects with
 * an ApiError for any other error status.
 */
export async function api(path, { method = 'GET', body, headers = {}, signal, raw = false } = {}) {
  for (;;) {
    const h = new Headers(headers);
    if (apiKey) h.set('Authorization', `Bearer ${apiKey}`);
    const init = { method, headers: h, signal };
    if (body !== undefined) {
      h.set('Content-Type', 'application/json');
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    if (res.status === 401) {
      const err = await res.json().catch(() => null);
      const wrong = apiKey ? (err && err.error && err.error.message) || 'That key was refused.' : '';
      await askKey(wrong);
      continue;
    }
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
    return raw ? res : res.json();
  }
}

/**
 * The server-sent events of `path` as {id, event, data} objects, from after event `lastId`
 * (the Last-Event-ID header) when given. Ends when the server closes the stream.
 */
export async function* events(path, lastId, signal) {
  const headers = { Accept: 'text/event-stream' };
  if (lastId !== null && lastId !== undefined) headers['Last-Event-ID'] = String(lastId);
  const res = await api(path, { headers, signal, raw: true });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let ev = { id: null, event: 'message', data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, '');
      buffer = buffer.slice(nl + 1);
      if (line === '') {
        if (ev.data.length) yield { id: ev.id, event: ev.event, data: ev.data.join('\n') };
        ev = { id: null, event: 'message', data: [] };
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let v = colon < 0 ? '' : line.slice(colon + 1);
      if (v.startsWith(' ')) v = v.slice(1);
      if (field === 'data') ev.data.push(v);
      else if (field === 'event') ev.event = v;
      else if (field === 'id') ev.id = v;
    }
  }
}

const images = new Map();

function cached(path) {
  if (!images.has(path)) {
    const p = api(path, { raw: true })
      .then((res) => res.blob())
      .then((blob) => ({ blob, url: URL.createObjectURL(blob) }));
    p.catch(() => images.delete(path));
    images.set(path, p);
  }
  return images.get(path);
}

/** A blob URL for the image at `path` (fetched once with the key, then cached). */
export async function imageUrl(path) {
  return (await cached(path)).url;
}

/** The image at `path` as a Blob. */
export async function imageBlob(path) {
  return (await cached(path)).blob;
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}
