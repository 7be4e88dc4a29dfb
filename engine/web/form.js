// The generation form: built from the API (pipelines with their defaults and limits, samplers
// and schedules, LoRAs, the job schema's optional enum fields), read into a /v1/jobs body,
// filled back from an image's parameters, and showing API errors next to the field they name.

import { api } from './api.js';

const $ = (id) => document.getElementById(id);

let pipelines = [];
let loras = [];
let weightRange = { min: -5, max: 5 };
let schema = {};
let current = null; // the selected pipeline
let loraCount = 0;

const RATIOS = [[1, 1], [4, 3], [3, 4], [3, 2], [2, 3], [16, 9], [9, 16]];

function option(value, text) {
  const o = document.createElement('option');
  o.value = value;
  o.textContent = text;
  return o;
}

/** Ensures `select` has an option `value` (e.g. a plugin sampler a pack names), then selects it. */
function choose(select, value) {
  if (value === null || value === undefined) return;
  if (![...select.options].some((o) => o.value === String(value))) {
    select.append(option(value, value));
  }
  select.value = String(value);
}

function setNumber(id, value) {
  if (value !== null && value !== undefined) $(id).value = String(value);
}

/** Loads everything the form offers from the API. */
export async function init() {
  const [p, s, l, doc] = await Promise.all([
    api('/v1/pipelines'),
    api('/v1/samplers'),
    api('/v1/loras'),
    api('/openapi.json'),
  ]);
  pipelines = p.pipelines;
  const select = $('pipeline');
  select.replaceChildren(...pipelines.map((x) => option(x.name, x.name)));
  $('scheduler').replaceChildren(...s.samplers.map((x) => option(x.name, x.label)));
  $('schedule').replaceChildren(...s.schedules.map((x) => option(x.name, x.label)));
  loras = l.loras;
  weightRange = l.weight_range;
  $('lora-none').hidden = loras.length > 0;
  $('lora-add').hidden = loras.length === 0;
  schema = (((doc.components || {}).schemas || {}).JobRequest || {}).properties || {};
  for (const field of document.querySelectorAll('[data-schema]')) {
    const prop = schema[field.dataset.schema];
    const input = field.querySelector('select');
    const values = prop && prop.enum;
    field.hidden = !values;
    if (values) input.replaceChildren(...values.map((v) => option(v, v)));
  }
  if (doc.paths && doc.paths['/v1/embeddings']) await loadEmbeddings();
  select.addEventListener('change', () => usePipeline(select.value, true));
  usePipeline(select.value, false);
  for (const id of ['width', 'height']) $(id).addEventListener('input', syncPreset);
  $('size-preset').addEventListener('change', () => {
    const [w, h] = $('size-preset').value.split('x');
    if (w && h) {
      $('width').value = w;
      $('height').value = h;
    }
  });
  $('swap-size').addEventListener('click', () => {
    const w = $('width').value;
    $('width').value = $('height').value;
    $('height').value = w;
    syncPreset();
  });
  $('lora-add').addEventListener('click', () => addLora());
  return pipelines;
}

async function loadEmbeddings() {
  const e = await api('/v1/embeddings').catch(() => ({ embeddings: [] }));
  const list = e.embeddings || [];
  if (!list.length) return;
  const select = $('embedding');
  select.replaceChildren(option('', 'Choose…'), ...list.map((x) => option(x.name, x.name)));
  $('embedding-field').hidden = false;
  select.addEventListener('change', () => {
    if (!select.value) return;
    const prompt = $('prompt');
    const at = prompt.selectionEnd ?? prompt.value.length;
    const before = prompt.value.slice(0, at);
    const sep = before && !/\s$/.test(before) ? ' ' : '';
    prompt.value = `${before}${sep}${select.value}${prompt.value.slice(at)}`;
    select.value = '';
    prompt.focus();
  });
}

/** Selects pipeline `name` and puts its defaults and limits into the form. */
export function usePipeline(name, keepPrompt) {
  const previous = current;
  current = pipelines.find((p) => p.name === name) || pipelines[0];
  if (!current) return;
  $('pipeline').value = current.name;
  const f = current.form;
  const lim = current.limits;
  $('pipeline-desc').textContent = current.description || `${current.kind} of the ${current.family} family`;
  const neg = $('negative_prompt');
  if (!keepPrompt || !neg.value || (previous && neg.value === previous.form.negative_prompt)) {
    neg.value = f.negative_prompt || '';
  }
  setNumber('steps', f.steps);
  setNumber('guidance', f.guidance);
  choose($('scheduler'), f.scheduler);
  choose($('schedule'), f.schedule);
  setNumber('clip_skip', f.clip_skip);
  $('steps').max = lim.max_steps;
  $('batch').max = lim.max_images;
  $('clip_skip').max = f.max_clip_skip;
  for (const [id, max] of [['width', lim.max_width], ['height', lim.max_height]]) {
    $(id).step = f.size_multiple;
    $(id).min = f.size_multiple;
    $(id).max = max;
  }
  const sizes = presets(f, lim);
  $('size-preset').replaceChildren(
    ...sizes.map(([w, h, label]) => option(`${w}x${h}`, `${label} · ${w}×${h}`)),
    option('custom', 'Custom'),
  );
  setNumber('width', f.width);
  setNumber('height', f.height);
  syncPreset();
}

/** Size presets: the default size, then the native area at common aspect ratios. */
function presets(f, lim) {
  const area = f.native_width * f.native_height;
  const grid = f.native_width >= 256 ? 64 : f.size_multiple;
  const out = [[f.width, f.height, 'default']];
  for (const [a, b] of RATIOS) {
    const w = Math.max(grid, Math.round(Math.sqrt((area * a) / b) / grid) * grid);
    const h = Math.max(grid, Math.round(area / w / grid) * grid);
    if (w <= lim.max_width && h <= lim.max_height && !out.some(([x, y]) => x === w && y === h)) {
      out.push([w, h, `${a}:${b}`]);
    }
  }
  return out;
}

function syncPreset() {
  const value = `${$('width').value}x${$('height').value}`;
  const select = $('size-preset');
  select.value = [...select.options].some((o) => o.value === value) ? value : 'custom';
}

/** Sets the size to a picture's, rounded down to the size multiple and within the limits. */
export function fitSize(width, height) {
  if (!current) return;
  const m = current.form.size_multiple;
  const scale = Math.min(1, current.limits.max_width / width, current.limits.max_height / height);
  $('width').value = Math.max(m, Math.floor((width * scale) / m) * m);
  $('height').value = Math.max(m, Math.floor((height * scale) / m) * m);
  syncPreset();
}

/** Adds a LoRA row (`name` and `weight` optional). */
export function addLora(name, weight) {
  if (!loras.length) return;
  const n = ++loraCount;
  const li = document.createElement('li');
  li.className = 'lora-row';
  const nameLabel = document.createElement('label');
  nameLabel.htmlFor = `lora-name-${n}`;
  nameLabel.textContent = 'LoRA';
  const select = document.createElement('select');
  select.id = `lora-name-${n}`;
  select.className = 'lora-name';
  select.append(...loras.map((x) => option(x.name, x.kind === 'set' ? `${x.name} (set)` : x.name)));
  const weightLabel = document.createElement('label');
  weightLabel.htmlFor = `lora-weight-${n}`;
  weightLabel.textContent = 'Weight';
  const input = document.createElement('input');
  input.type = 'number';
  input.id = `lora-weight-${n}`;
  input.className = 'lora-weight';
  input.step = '0.05';
  input.min = weightRange.min;
  input.max = weightRange.max;
  input.inputMode = 'decimal';
  const remove = document.createElement('button');
  remove.type = 'button';
  remove.className = 'ghost icon danger';
  remove.textContent = '✕';
  remove.setAttribute('aria-label', 'Remove this LoRA');
  remove.addEventListener('click', () => li.remove());
  const setDefault = () => {
    const entry = loras.find((x) => x.name === select.value);
    input.value = entry ? entry.weight : 1;
  };
  select.addEventListener('change', setDefault);
  if (name) choose(select, name);
  setDefault();
  if (weight !== null && weight !== undefined) input.value = weight;
  const a = document.createElement('div');
  a.className = 'field';
  a.append(nameLabel, select);
  const b = document.createElement('div');
  b.className = 'field';
  b.append(weightLabel, input);
  li.append(a, b, remove);
  $('lora-rows').append(li);
}

function int(id) {
  const v = $(id).value.trim();
  return v === '' ? undefined : Math.trunc(Number(v));
}

function num(id) {
  const v = $(id).value.trim();
  return v === '' ? undefined : Number(v);
}

/** The /v1/jobs body for the form (picture fields come from picture.js). */
export function body() {
  const steps = int('steps');
  const b = {
    pipeline: $('pipeline').value,
    prompt: $('prompt').value,
    negative_prompt: $('negative_prompt').value,
    scheduler: $('scheduler').value,
    schedule: $('schedule').value,
    steps,
    guidance: num('guidance'),
    width: int('width'),
    height: int('height'),
    seed: int('seed'),
    batch: int('batch'),
    clip_skip: int('clip_skip'),
    preview_every: int('preview_every') ?? Math.max(1, Math.ceil((steps || 20) / 20)),
    loras: [...document.querySelectorAll('.lora-row')].map((row) => ({
      name: row.querySelector('.lora-name').value,
      weight: Number(row.querySelector('.lora-weight').value),
    })),
  };
  const syntax = document.querySelector('[data-schema="prompt_syntax"]');
  if (!syntax.hidden) b.prompt_syntax = $('prompt_syntax').value;
  return b;
}

/** Puts an image's parameters (a gallery entry's `parameters`) back into the form. */
export function apply(p) {
  if (p.pipeline && pipelines.some((x) => x.name === p.pipeline)) usePipeline(p.pipeline, true);
  $('prompt').value = p.prompt ?? '';
  $('negative_prompt').value = p.negative_prompt ?? '';
  setNumber('steps', p.steps);
  setNumber('guidance', p.guidance);
  setNumber('width', p.width);
  setNumber('height', p.height);
  setNumber('seed', p.seed);
  setNumber('clip_skip', p.clip_skip);
  choose($('scheduler'), p.scheduler);
  choose($('schedule'), p.schedule || 'default');
  if (p.strength !== null && p.strength !== undefined) setNumber('strength', p.strength);
  if (p.prompt_syntax && schema.prompt_syntax) choose($('prompt_syntax'), p.prompt_syntax);
  $('lora-rows').replaceChildren();
  for (const l of p.loras || []) addLora(l.name, l.weight);
  syncPreset();
}

/** Hides every field error. */
export function clearErrors() {
  for (const el of document.querySelectorAll('#gen .error')) {
    el.hidden = true;
    el.textContent = '';
  }
  for (const el of document.querySelectorAll('#gen [aria-invalid]')) el.removeAttribute('aria-invalid');
}

/** Shows `err` (an ApiError or any Error) next to the field its `param` names, else on top. */
export function showError(err) {
  clearErrors();
  const name = ((err.param || '').match(/^[A-Za-z_]+/) || [])[0];
  let box = name ? $(`err-${name}`) : null;
  if (!box || box.closest('[hidden]:not(.error)')) box = $('err-form');
  box.textContent = err.message;
  box.hidden = false;
  const input = name ? $(name) : null;
  if (input && box !== $('err-form')) input.setAttribute('aria-invalid', 'true');
  const details = box.closest('details');
  if (details) details.open = true;
  box.scrollIntoView({ block: 'nearest' });
}

/** The selected pipeline. */
export function pipeline() {
  return current;
}
