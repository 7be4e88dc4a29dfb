// The queue panel: one card per job with its place in the queue, then a progress bar with
// step, steps/s and ETA and the live previews of its event stream; cancel. A few streams run
// at once (browsers allow about six connections per server); other jobs poll their status
// until a stream is free. A stream that drops is resumed after its last event (Last-Event-ID)
// once the job's state has been fetched again.

import { api, events, imageUrl, sleep } from './api.js';

const $ = (id) => document.getElementById(id);
const MAX_STREAMS = 3;
const POLL_MS = 1500;
const STORE = 'beeswax.jobs';

const jobs = new Map(); // id -> job view
let handlers = { completed: () => {}, open: () => {} };

/** Sets what happens when a job completes (`completed(job)`) and when an image is clicked. */
export function init(h) {
  handlers = h;
  $('jobs-clear').addEventListener('click', () => {
    for (const j of [...jobs.values()]) {
      if (isFinal(j.status)) {
        j.el.remove();
        jobs.delete(j.id);
      }
    }
    save();
    updateEmpty();
  });
}

const isFinal = (s) => s === 'completed' || s === 'failed' || s === 'cancelled';
// A job only moves forward: queued, running, then a final status.
const rank = (s) => (isFinal(s) ? 2 : s === 'running' ? 1 : 0);

function save() {
  sessionStorage.setItem(STORE, JSON.stringify([...jobs.keys()]));
}

function updateEmpty() {
  $('jobs-empty').hidden = jobs.size > 0;
}

/** Re-attaches to the jobs this tab started before a reload. */
export async function restore() {
  let ids = [];
  try {
    ids = JSON.parse(sessionStorage.getItem(STORE) || '[]');
  } catch {
    ids = [];
  }
  for (const id of ids) {
    try {
      add(await api(`/v1/jobs/${id}`));
    } catch {
      // expired or unknown: forget it
    }
  }
  save();
}

/** Queues `body` and shows the new job. */
export async function submit(body) {
  const job = await api('/v1/jobs', { method: 'POST', body });
  add(job);
  return job;
}

/** Shows job `doc` (a /v1/jobs document) and follows it. */
function add(doc) {
  const el = $('job-template').content.firstElementChild.cloneNode(true);
  const j = {
    id: doc.id,
    el,
    status: doc.status,
    lastId: null,
    streaming: false,
    total: doc.progress.total,
    rate: null,
    lastArrival: 0,
    connectedAt: 0,
  };
  el.dataset.jobId = doc.id;
  const p = doc.parameters || {};
  el.querySelector('.job-title').textContent = p.prompt || '(empty prompt)';
  el.querySelector('.job-title').title = `${doc.pipeline} · ${p.width}×${p.height} · ${p.steps} steps · seed ${p.seed}`;
  el.querySelector('.job-cancel').addEventListener('click', () => cancel(j));
  jobs.set(j.id, j);
  $('jobs').prepend(el);
  save();
  updateEmpty();
  render(j, doc);
  schedule();
}

/** Starts streams for the oldest unfinished jobs while fewer than MAX_STREAMS run. */
function schedule() {
  const open = [...jobs.values()].filter((j) => j.streaming).length;
  const waiting = [...jobs.values()]
    .filter((j) => !j.streaming && !isFinal(j.status))
    .reverse(); // oldest first
  waiting.slice(0, Math.max(0, MAX_STREAMS - open)).forEach(follow);
  waiting.slice(Math.max(0, MAX_STREAMS - open)).forEach(poll);
}

/** Polls a job without a stream until it finishes or gets one. */
async function poll(j) {
  if (j.polling) return;
  j.polling = true;
  while (!j.streaming && !isFinal(j.status) && jobs.has(j.id)) {
    await sleep(POLL_MS);
    if (j.streaming) break;
    try {
      render(j, await api(`/v1/jobs/${j.id}`));
    } catch (e) {
      if (e.status === 404) return lost(j);
    }
  }
  j.polling = false;
}

/** Follows a job's events, reconnecting after drops, until its final event. */
async function follow(j) {
  j.streaming = true;
  let delay = 500;
  while (jobs.has(j.id) && !isFinal(j.status)) {
    try {
      j.connectedAt = performance.now();
      for await (const ev of events(`/v1/jobs/${j.id}/events`, j.lastId)) {
        j.lastId = ev.id;
        handle(j, ev.event, JSON.parse(ev.data));
        delay = 500;
      }
    } catch (e) {
      if (e.status === 404) return lost(j);
    }
    if (isFinal(j.status)) break;
    setStatus(j, 'Connection lost: reconnecting…');
    await sleep(delay);
    delay = Math.min(delay * 2, 8000);
    try {
      render(j, await api(`/v1/jobs/${j.id}`));
    } catch (e) {
      if (e.status === 404) return lost(j);
    }
  }
  j.streaming = false;
  schedule();
}

function lost(j) {
  j.status = 'failed';
  j.streaming = false;
  j.el.dataset.status = 'lost';
  setStatus(j, 'This job is no longer on the server.');
  j.el.querySelector('.job-cancel').hidden = true;
  schedule();
}

function setStatus(j, text) {
  j.el.querySelector('.job-status').textContent = text;
}

/** Applies one event of the job's stream. */
function handle(j, type, data) {
  const now = performance.now();
  switch (type) {
    case 'queued':
      j.status = 'queued';
      setStatus(j, `Queued: #${data.position} in line`);
      break;
    case 'started':
      j.status = 'running';
      setStatus(j, 'Running');
      break;
    case 'progress':
      j.status = 'running';
      progress(j, data.step, data.total, now);
      if (data.preview) {
        const img = j.el.querySelector('.job-preview');
        img.src = data.preview;
        img.hidden = false;
      }
      break;
    case 'completed':
    case 'failed':
    case 'cancelled':
      render(j, { status: type, images: data.images || [], error: data.error, parameters: data.parameters });
      break;
    default:
      return;
  }
  j.el.dataset.status = j.status;
}

/** Progress bar, steps/s and ETA; events replayed on (re)connection do not count for speed. */
function progress(j, step, total, now) {
  // A status fetched while reconnecting may be ahead of the events replayed after it.
  if (step < (j.step || 0)) return;
  j.step = step;
  j.total = total;
  const bar = j.el.querySelector('.job-progress');
  bar.max = total;
  bar.value = step;
  const replayed = now - j.connectedAt < 250 && now - j.lastArrival < 5;
  j.lastArrival = now;
  if (!j.rate || replayed) j.rate = { t0: now, s0: step, perSec: j.rate ? j.rate.perSec : null };
  else if (step > j.rate.s0) j.rate.perSec = ((step - j.rate.s0) * 1000) / (now - j.rate.t0);
  const speed = j.rate.perSec;
  const eta = speed ? Math.ceil((total - step) / speed) : null;
  const parts = [`step ${step}/${total}`];
  if (speed) parts.push(`${speed.toFixed(speed < 10 ? 1 : 0)} steps/s`, `ETA ${formatSecs(eta)}`);
  j.el.querySelector('.job-stats').textContent = parts.join(' · ');
  setStatus(j, j.cancelling ? 'Cancelling: stops after this step…' : 'Running');
}

function formatSecs(s) {
  if (s === null) return '?';
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

/** Shows a /v1/jobs document (or a final event's contents), unless it is older than what is shown. */
function render(j, doc) {
  if (rank(doc.status) < rank(j.status)) return;
  j.status = doc.status;
  j.el.dataset.status = doc.status;
  const cancelButton = j.el.querySelector('.job-cancel');
  cancelButton.hidden = isFinal(doc.status);
  if (doc.status === 'queued') setStatus(j, doc.position ? `Queued: #${doc.position} in line` : 'Queued');
  if (doc.status === 'running') {
    setStatus(j, j.cancelling ? 'Cancelling: stops after this step…' : 'Running');
    if (doc.progress) progress(j, doc.progress.step, doc.progress.total, performance.now());
  }
  if (doc.status === 'cancelled') setStatus(j, 'Cancelled');
  if (doc.status === 'failed') {
    setStatus(j, 'Failed');
    const e = j.el.querySelector('.job-error');
    e.textContent = doc.error || 'The job failed.';
    e.hidden = false;
  }
  if (doc.status === 'completed') complete(j, doc);
}

function complete(j, doc) {
  setStatus(j, 'Completed');
  const speed = j.rate && j.rate.perSec;
  const stats = j.el.querySelector('.job-stats');
  stats.textContent = speed ? `${j.total} steps · ${speed.toFixed(speed < 10 ? 1 : 0)} steps/s` : '';
  const bar = j.el.querySelector('.job-progress');
  bar.max = 1;
  bar.value = 1;
  j.el.querySelector('.job-preview').hidden = true;
  const box = j.el.querySelector('.job-images');
  if (box.childElementCount) return;
  (doc.images || []).forEach((url, index) => {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'thumb';
    button.setAttribute('aria-label', `Open image ${index + 1}`);
    const img = document.createElement('img');
    img.alt = `Result ${index + 1}`;
    imageUrl(url).then((u) => {
      img.src = u;
    });
    button.append(img);
    button.addEventListener('click', () => handlers.open(j.id, index));
    box.append(button);
  });
  handlers.completed({ id: j.id, parameters: doc.parameters });
}

async function cancel(j) {
  const button = j.el.querySelector('.job-cancel');
  button.disabled = true;
  j.cancelling = true;
  setStatus(j, 'Cancelling…');
  try {
    const doc = await api(`/v1/jobs/${j.id}`, { method: 'DELETE' });
    render(j, doc);
  } catch (e) {
    if (e.status === 404) lost(j);
    else setStatus(j, e.message);
  }
  button.disabled = false;
}
