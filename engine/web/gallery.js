// The gallery: this server's finished images, newest first, paged by cursor; thumbnails load
// when they scroll into view. A click opens the image large (arrow keys move, Escape closes)
// with its parameters from the PNG chunk: copy prompt or parameters, reuse every parameter in
// the form, download the PNG, send it to image to image or inpainting.

import { api, imageBlob, imageUrl } from './api.js';

const $ = (id) => document.getElementById(id);
const PAGE = 24;

let items = [];
let next = null;
let shown = -1;
let actions = { reuse: () => {}, send: () => {} };

const key = (item) => `${item.job}/${item.index}`;

const observer = new IntersectionObserver(
  (entries) => {
    for (const e of entries) {
      if (!e.isIntersecting) continue;
      observer.unobserve(e.target);
      imageUrl(e.target.dataset.src).then((u) => {
        e.target.src = u;
      });
    }
  },
  { rootMargin: '200px' },
);

/** Sets what "reuse" (`reuse(parameters)`) and "send to" (`send(blob, mode)`) do. */
export function init(a) {
  actions = a;
  $('gallery-refresh').addEventListener('click', () => refresh());
  $('gallery-more').addEventListener('click', () => more());
  $('lb-prev').addEventListener('click', () => step(-1));
  $('lb-next').addEventListener('click', () => step(1));
  $('lb-close').addEventListener('click', () => $('lightbox').close());
  // On the document: a disabled button (first or last image) can take the focus out of the dialog.
  document.addEventListener('keydown', (e) => {
    if (!$('lightbox').open || e.target.matches('input, textarea, select')) return;
    if (e.key === 'ArrowLeft') step(-1);
    else if (e.key === 'ArrowRight') step(1);
    else return;
    e.preventDefault();
  });
  $('lightbox').addEventListener('click', (e) => {
    if (e.target === $('lightbox')) $('lightbox').close();
  });
  $('lb-copy-prompt').addEventListener('click', () => copy(items[shown].parameters.prompt || '', 'Prompt copied.'));
  $('lb-copy-params').addEventListener('click', () => copy(items[shown].infotext || '', 'Parameters copied.'));
  $('lb-reuse').addEventListener('click', () => {
    actions.reuse(items[shown].parameters);
    $('lightbox').close();
  });
  for (const [id, mode] of [['lb-img2img', 'img2img'], ['lb-inpaint', 'inpaint']]) {
    $(id).addEventListener('click', async () => {
      const blob = await imageBlob(items[shown].url);
      $('lightbox').close();
      actions.send(blob, mode, items[shown].parameters);
    });
  }
}

async function copy(text, done) {
  try {
    await navigator.clipboard.writeText(text);
    $('lb-note').textContent = done;
  } catch {
    // No clipboard permission (e.g. plain http on another host): select the text instead.
    const range = document.createRange();
    range.selectNodeContents($('lb-info'));
    const sel = getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    $('lb-note').textContent = 'Copying is not allowed here: the parameters are selected, press Ctrl+C.';
  }
}

function thumb(item) {
  const li = document.createElement('li');
  li.dataset.key = key(item);
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'thumb';
  const prompt = item.parameters.prompt || '(empty prompt)';
  button.setAttribute('aria-label', `Open: ${prompt}`);
  button.title = prompt;
  const img = document.createElement('img');
  img.alt = prompt;
  img.width = item.width;
  img.height = item.height;
  img.dataset.src = item.url;
  observer.observe(img);
  button.append(img);
  button.addEventListener('click', () => open(items.findIndex((x) => key(x) === key(item))));
  li.append(button);
  return li;
}

function updateEmpty() {
  $('gallery-empty').hidden = items.length > 0;
  $('gallery-more').hidden = !next;
}

/** Loads the first page again, keeping what is already shown and adding newer images on top. */
export async function refresh() {
  const page = await api(`/v1/gallery?limit=${PAGE}`);
  const known = new Set(items.map(key));
  const fresh = page.images.filter((x) => !known.has(key(x)));
  if (fresh.length === page.images.length) {
    // Nothing shown is on the first page any more (or nothing was shown): start over.
    items = page.images;
    next = page.next;
    $('gallery').replaceChildren(...items.map(thumb));
  } else {
    items = [...fresh, ...items];
    $('gallery').prepend(...fresh.map(thumb));
  }
  updateEmpty();
}

async function more() {
  if (!next) return;
  const page = await api(`/v1/gallery?limit=${PAGE}&before=${encodeURIComponent(next)}`);
  const known = new Set(items.map(key));
  const older = page.images.filter((x) => !known.has(key(x)));
  items.push(...older);
  $('gallery').append(...older.map(thumb));
  next = page.next;
  updateEmpty();
}

/** The newest image shown, if any. */
export function newest() {
  return items[0];
}

/** Opens image `index` of job `job` (loading the gallery again if it is not shown yet). */
export async function openImage(job, index) {
  let i = items.findIndex((x) => x.job === job && x.index === index);
  if (i < 0) {
    await refresh();
    i = items.findIndex((x) => x.job === job && x.index === index);
  }
  if (i >= 0) open(i);
}

function open(i) {
  if (i < 0 || i >= items.length) return;
  shown = i;
  const item = items[i];
  const img = $('lb-img');
  img.removeAttribute('src');
  img.alt = item.parameters.prompt || 'Generated image';
  imageUrl(item.url).then((u) => {
    if (shown === i) {
      img.src = u;
      $('lb-download').href = u;
    }
  });
  $('lb-download').download = `beeswax-${item.parameters.seed ?? item.job}.png`;
  $('lb-title').textContent = `${item.pipeline} · ${item.width}×${item.height}`;
  $('lb-info').textContent = item.infotext || JSON.stringify(item.parameters, null, 2);
  $('lb-note').textContent = `${i + 1} of ${items.length}${next ? '+' : ''}`;
  $('lb-prev').disabled = i === 0;
  $('lb-next').disabled = i === items.length - 1 && !next;
  const dialog = $('lightbox');
  if (!dialog.open) dialog.showModal();
}

async function step(d) {
  if (shown + d >= items.length && next) await more();
  open(shown + d);
}
