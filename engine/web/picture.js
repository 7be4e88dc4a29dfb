// The starting picture of image-to-image and inpainting jobs: dropped, pasted or picked; a
// mask painted over it (brush, eraser, clear, invert); outpainting by extending the canvas; and
// the /v1/jobs fields it adds (init_image, strength, resize, and for inpainting mask, mask_blur,
// masked_content, inpaint_area, inpaint_padding).

const $ = (id) => document.getElementById(id);

const picture = () => $('picture-canvas');
const mask = () => $('mask-canvas');
// The mask is read back (painted?, export), so its context is made for frequent reads.
const maskContext = () => mask().getContext('2d', { willReadFrequently: true });
const MASK_COLOR = 'rgb(255, 48, 48)';

let loaded = false;
let onSize = () => {};

/** Sets up the drop zone, paste, file picker, painting and outpainting. */
export function init(sizeChanged) {
  onSize = sizeChanged;
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const file = [...(e.dataTransfer.files || [])].find((f) => f.type.startsWith('image/'));
    if (file) load(file);
  });
  document.addEventListener('paste', (e) => {
    const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((i) => i.type.startsWith('image/'));
    if (!item) return;
    e.preventDefault();
    load(item.getAsFile());
  });
  $('init-file').addEventListener('change', (e) => {
    const file = e.target.files[0];
    if (file) load(file);
  });
  for (const radio of document.querySelectorAll('input[name="picture-mode"]')) {
    radio.addEventListener('change', updateMode);
  }
  $('mask-clear').addEventListener('click', () => {
    const m = mask();
    maskContext().clearRect(0, 0, m.width, m.height);
  });
  $('mask-invert').addEventListener('click', invert);
  $('outpaint-apply').addEventListener('click', outpaint);
  $('picture-remove').addEventListener('click', remove);
  paintOn(mask());
}

/** Loads a File or Blob as the starting picture, in `mode` (img2img or inpaint). */
export async function load(blob, mode) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch {
    const err = $('err-init_image');
    err.textContent = 'That file is not an image this browser can read (PNG, JPEG or WebP).';
    err.hidden = false;
    return;
  }
  $('err-init_image').hidden = true;
  const p = picture();
  p.width = bitmap.width;
  p.height = bitmap.height;
  p.getContext('2d').drawImage(bitmap, 0, 0);
  const m = mask();
  m.width = bitmap.width;
  m.height = bitmap.height;
  $('brush').value = Math.max(4, Math.round(Math.min(bitmap.width, bitmap.height) / 10));
  $('brush').max = Math.max(16, Math.round(Math.max(bitmap.width, bitmap.height) / 3));
  loaded = true;
  $('picture-tools').hidden = false;
  $('picture-section').open = true;
  if (mode) document.querySelector(`input[name="picture-mode"][value="${mode}"]`).checked = true;
  updateMode();
  onSize(bitmap.width, bitmap.height);
}

function remove() {
  loaded = false;
  $('picture-tools').hidden = true;
  $('init-file').value = '';
  updateMode();
}

/** `img2img`, `inpaint`, or null without a picture. */
export function mode() {
  if (!loaded) return null;
  return document.querySelector('input[name="picture-mode"]:checked').value;
}

function updateMode() {
  const m = mode();
  $('mode-badge').textContent = { img2img: 'image to image', inpaint: 'inpaint' }[m] || 'text to image';
  $('mask-tools').hidden = m !== 'inpaint';
  $('stage').classList.toggle('painting', m === 'inpaint');
}

/** Pointer painting on `canvas`, in its own pixel units (the CSS size may differ). */
function paintOn(canvas) {
  let last = null;
  const point = (e) => {
    const r = canvas.getBoundingClientRect();
    return [((e.clientX - r.left) * canvas.width) / r.width, ((e.clientY - r.top) * canvas.height) / r.height];
  };
  const stroke = (from, to) => {
    const ctx = maskContext();
    ctx.globalCompositeOperation = $('eraser').checked ? 'destination-out' : 'source-over';
    ctx.strokeStyle = MASK_COLOR;
    ctx.fillStyle = MASK_COLOR;
    ctx.lineWidth = Number($('brush').value);
    ctx.lineCap = 'round';
    ctx.lineJoin = 'round';
    ctx.beginPath();
    if (from) {
      ctx.moveTo(...from);
      ctx.lineTo(...to);
      ctx.stroke();
    } else {
      ctx.arc(to[0], to[1], ctx.lineWidth / 2, 0, Math.PI * 2);
      ctx.fill();
    }
    ctx.globalCompositeOperation = 'source-over';
  };
  canvas.addEventListener('pointerdown', (e) => {
    if (mode() !== 'inpaint') return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    last = point(e);
    stroke(null, last);
  });
  canvas.addEventListener('pointermove', (e) => {
    if (!last) return;
    const p = point(e);
    stroke(last, p);
    last = p;
  });
  const end = () => {
    last = null;
  };
  canvas.addEventListener('pointerup', end);
  canvas.addEventListener('pointercancel', end);
}

function invert() {
  const m = mask();
  const ctx = maskContext();
  ctx.globalCompositeOperation = 'xor';
  ctx.fillStyle = MASK_COLOR;
  ctx.fillRect(0, 0, m.width, m.height);
  ctx.globalCompositeOperation = 'source-over';
}

/** Whether any mask pixel is painted. */
function painted() {
  const m = mask();
  const data = maskContext().getImageData(0, 0, m.width, m.height).data;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) return true;
  return false;
}

/** The mask as a black-and-white PNG data URL (white = repaint). */
function maskPng() {
  const m = mask();
  const white = document.createElement('canvas');
  white.width = m.width;
  white.height = m.height;
  const w = white.getContext('2d');
  w.drawImage(m, 0, 0);
  w.globalCompositeOperation = 'source-in';
  w.fillStyle = '#fff';
  w.fillRect(0, 0, m.width, m.height);
  const out = document.createElement('canvas');
  out.width = m.width;
  out.height = m.height;
  const o = out.getContext('2d');
  o.fillStyle = '#000';
  o.fillRect(0, 0, m.width, m.height);
  o.drawImage(white, 0, 0);
  return out.toDataURL('image/png');
}

/**
 * Extends the canvas by the outpaint sides: the new border repeats the picture's edge pixels,
 * is added to the mask, and the job becomes an inpainting job that fills it.
 */
function outpaint() {
  const side = (id) => Math.max(0, Math.round(Number($(id).value) || 0));
  const [l, r, t, b] = ['out-left', 'out-right', 'out-top', 'out-bottom'].map(side);
  if (!loaded || l + r + t + b === 0) return;
  const p = picture();
  const m = mask();
  const [w, h] = [p.width, p.height];
  const [W, H] = [w + l + r, h + t + b];
  const img = document.createElement('canvas');
  img.width = W;
  img.height = H;
  const c = img.getContext('2d');
  // Edges stretched outwards, corners filled by the corner pixels, then the picture itself.
  c.drawImage(p, 0, 0, 1, 1, 0, 0, l + 1, t + 1);
  c.drawImage(p, w - 1, 0, 1, 1, l + w - 1, 0, r + 1, t + 1);
  c.drawImage(p, 0, h - 1, 1, 1, 0, t + h - 1, l + 1, b + 1);
  c.drawImage(p, w - 1, h - 1, 1, 1, l + w - 1, t + h - 1, r + 1, b + 1);
  c.drawImage(p, 0, 0, w, 1, l, 0, w, t + 1);
  c.drawImage(p, 0, h - 1, w, 1, l, t + h - 1, w, b + 1);
  c.drawImage(p, 0, 0, 1, h, 0, t, l + 1, h);
  c.drawImage(p, w - 1, 0, 1, h, l + w - 1, t, r + 1, h);
  c.drawImage(p, l, t);
  const newMask = document.createElement('canvas');
  newMask.width = W;
  newMask.height = H;
  const n = newMask.getContext('2d');
  n.fillStyle = MASK_COLOR;
  n.fillRect(0, 0, W, H);
  n.clearRect(l, t, w, h);
  n.drawImage(m, l, t);
  p.width = W;
  p.height = H;
  p.getContext('2d').drawImage(img, 0, 0);
  m.width = W;
  m.height = H;
  maskContext().drawImage(newMask, 0, 0);
  document.querySelector('input[name="picture-mode"][value="inpaint"]').checked = true;
  const content = $('masked_content');
  if ([...content.options].some((o) => o.value === 'fill')) content.value = 'fill';
  updateMode();
  onSize(W, H);
}

/** The /v1/jobs fields of the picture (none without one). */
export function fields() {
  const m = mode();
  if (!m) return {};
  const num = (id) => ($(id).value.trim() === '' ? undefined : Number($(id).value));
  const visible = (id) => !$(id).closest('[data-schema]') || !$(id).closest('[data-schema]').hidden;
  const out = { init_image: picture().toDataURL('image/png'), strength: num('strength') };
  if (visible('resize')) out.resize = $('resize').value;
  if (m === 'inpaint') {
    if (!painted()) {
      const err = new Error('Paint the area to repaint on the image, or switch to image to image.');
      err.param = 'mask';
      throw err;
    }
    out.mask = maskPng();
    out.mask_blur = num('mask_blur');
    out.inpaint_padding = num('inpaint_padding');
    for (const id of ['masked_content', 'inpaint_area']) if (visible(id)) out[id] = $(id).value;
  }
  return out;
}
