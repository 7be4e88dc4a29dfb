// beeswax web UI: wires the form, the starting picture, the queue and the gallery together.
// Plain ES modules, no framework and no build step; every choice comes from the API.

import { askKey, hasKey } from './api.js';
import * as form from './form.js';
import * as gallery from './gallery.js';
import * as jobs from './jobs.js';
import * as picture from './picture.js';

const $ = (id) => document.getElementById(id);
let lastSeed = null;

async function serverStatus() {
  try {
    const h = await (await fetch('/health')).json();
    const queue = `queue ${h.queue.depth}/${h.queue.capacity}`;
    $('server-status').textContent = `${h.pipelines} pipelines · ${queue} · ${h.running} running`;
  } catch {
    $('server-status').textContent = 'server unreachable';
  }
}

async function generate(e) {
  e.preventDefault();
  form.clearErrors();
  let body;
  try {
    body = { ...form.body(), ...picture.fields() };
  } catch (err) {
    form.showError(err);
    return;
  }
  const button = $('generate');
  button.disabled = true;
  try {
    await jobs.submit(body);
    serverStatus();
  } catch (err) {
    form.showError(err);
  } finally {
    button.disabled = false;
  }
}

function wire() {
  picture.init((w, h) => form.fitSize(w, h));
  jobs.init({
    completed: (job) => {
      const seed = job.parameters && job.parameters.seed;
      if (seed !== undefined && seed !== null) lastSeed = seed;
      gallery.refresh().catch((err) => form.showError(err));
      serverStatus();
    },
    open: (id, index) => gallery.openImage(id, index),
  });
  gallery.init({
    reuse: (parameters) => {
      form.apply(parameters);
      $('prompt').focus();
    },
    send: async (blob, mode, parameters) => {
      await picture.load(blob, mode);
      if (parameters && parameters.prompt !== undefined && !$('prompt').value) {
        $('prompt').value = parameters.prompt;
      }
      $('picture-section').scrollIntoView({ block: 'start' });
    },
  });
  $('gen').addEventListener('submit', generate);
  $('gen').addEventListener('keydown', (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') {
      e.preventDefault();
      $('gen').requestSubmit();
    }
  });
  $('seed-random').addEventListener('click', () => {
    $('seed').value = '-1';
  });
  $('seed-reuse').addEventListener('click', () => {
    // The last image this tab made, else the newest of the gallery.
    const newest = gallery.newest();
    const seed = lastSeed ?? (newest ? newest.parameters.seed : null);
    if (seed !== null && seed !== undefined) $('seed').value = String(seed);
  });
  $('key-button').hidden = !hasKey();
  $('key-button').addEventListener('click', () => askKey(''));
}

async function start() {
  wire();
  serverStatus();
  try {
    await form.init();
    await jobs.restore();
    await gallery.refresh();
  } catch (err) {
    form.showError(err);
  }
  document.body.dataset.ready = 'true';
}

start();
