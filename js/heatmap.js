// Painting uint8 maps onto canvases: one ImageData per map set, scaled by drawImage, so a
// 1024×1024 map costs one putImageData, not a million DOM or SVG elements.

// Sequential blue ramp (ColorBrewer "Blues" stops), 256 entries. Shade ∝ √(value / max): attention
// mass is spread thin over many tokens, and a square root keeps weak patterns visible beside a sink.
const STOPS = [
  [247, 251, 255],
  [198, 219, 239],
  [107, 174, 214],
  [33, 113, 181],
  [8, 48, 107],
];
export const LUT = (() => {
  const lut = new Uint8Array(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = Math.sqrt(i / 255) * (STOPS.length - 1);
    const k = Math.min(Math.floor(t), STOPS.length - 2);
    const f = t - k;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = Math.round(STOPS[k][c] * (1 - f) + STOPS[k + 1][c] * f);
  }
  return lut;
})();

// Each LUT as one 32-bit RGBA word per entry, written byte by byte in ImageData's own order (so whatever the
// platform's endianness): a cell then costs one store instead of four.
const lutWords = new WeakMap();
function wordsOf(lut) {
  let words = lutWords.get(lut);
  if (!words) {
    words = new Uint32Array(256);
    const b = new Uint8Array(words.buffer);
    for (let i = 0; i < 256; i++) {
      b[i * 4] = lut[i * 3];
      b[i * 4 + 1] = lut[i * 3 + 1];
      b[i * 4 + 2] = lut[i * 3 + 2];
      b[i * 4 + 3] = 255;
    }
    lutWords.set(lut, words);
  }
  return words;
}
const images = new WeakMap(); // canvas -> its ImageData, kept for the next update of some of its rows

/**
 * An offscreen canvas holding `bytes` (uint8, row-major, width × height) through the colour ramp.
 * Given the canvas it returned before (`into`, same size), only rows `rows[0]` to `rows[1]` - 1 are coloured
 * and put again: a slider edit leaves the maps of the layers before the edited one as they were.
 * @param {Uint8Array} bytes
 */
export function mapImage(bytes, width, height, lut = LUT, into = null, rows = null) {
  const w = Math.max(1, width);
  const h = Math.max(1, height);
  let canvas = into;
  let img = canvas && canvas.width === w && canvas.height === h ? images.get(canvas) : null;
  let [r0, r1] = rows && img ? rows : [0, h];
  if (!img) {
    canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    img = canvas.getContext("2d").createImageData(w, h);
    images.set(canvas, img);
    [r0, r1] = [0, h];
  }
  const px = new Uint32Array(img.data.buffer, img.data.byteOffset, w * h);
  const words = wordsOf(lut);
  const end = Math.min(bytes.length, width * r1, w * h);
  for (let i = width * r0; i < end; i++) px[i] = words[bytes[i]];
  if (r1 > r0) canvas.getContext("2d").putImageData(img, 0, 0, 0, r0, w, r1 - r0);
  return canvas;
}

/**
 * Size a canvas for crisp drawing on high-DPI screens; returns its 2-D context in CSS pixels, cleared and
 * in its default state. A canvas that already has the size is reset, not resized: setting its width
 * allocates a new bitmap, and views redraw on every change (a slider edit redraws them all).
 */
export function sizeCanvas(canvas, cssWidth, cssHeight) {
  const dpr = window.devicePixelRatio || 1;
  const width = Math.round(cssWidth * dpr);
  const height = Math.round(cssHeight * dpr);
  const ctx = canvas.getContext("2d");
  canvas.style.width = `${cssWidth}px`;
  canvas.style.height = `${cssHeight}px`;
  if (canvas.width === width && canvas.height === height && typeof ctx.reset === "function") {
    ctx.reset();
  } else {
    canvas.width = width;
    canvas.height = height;
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.imageSmoothingEnabled = false;
  return ctx;
}

const measurer = document.createElement("canvas").getContext("2d");
const layouts = new Map(); // key -> layout, the last few (see tokenBoxes)

/**
 * Tokens laid out as boxes left to right from (4, 4), wrapping before `right`: `{ boxes: [[x, y, w, i]],
 * texts, height }`, each box as wide as its text (6 to `maxWidth` px) and `texts[i]` what fits in it
 * (newlines and tabs shown as ↵ and ⇥). With `newlines`, a token holding a newline ends its line.
 * Measured once per tokens, font and widths, on a canvas of its own: a strip redraws on every change,
 * and measuring 512 tokens (and resizing the strip to measure on it) took most of a redraw.
 */
export function tokenBoxes(tokens, { font, maxWidth, right, lineHeight, newlines = false }) {
  const key = [font, maxWidth, right, lineHeight, newlines, tokens.length, ...tokens].join("\u0001");
  let layout = layouts.get(key);
  if (layout) return layout;
  measurer.font = font;
  const boxes = [];
  const texts = [];
  let x = 4;
  let y = 4;
  for (let i = 0; i < tokens.length; i++) {
    const shown = tokens[i].replace(/\n/g, "↵").replace(/\t/g, "⇥");
    const w = Math.min(maxWidth, Math.max(6, measurer.measureText(shown).width + 2));
    if (x + w > right && x > 4) {
      x = 4;
      y += lineHeight;
    }
    boxes.push([x, y, w, i]);
    texts.push(fitText(measurer, shown, w - 2));
    x += w;
    if (newlines && tokens[i].includes("\n")) {
      x = 4;
      y += lineHeight;
    }
  }
  layout = { boxes, texts, height: y + lineHeight + 4 };
  if (layouts.size >= 16) layouts.delete(layouts.keys().next().value);
  layouts.set(key, layout);
  return layout;
}

/** Draw `text` cut with an ellipsis to fit `maxWidth` (token text is drawn, never parsed as HTML). */
export function fitText(ctx, text, maxWidth) {
  const shown = text.replace(/\n/g, "↵").replace(/\t/g, "⇥");
  if (ctx.measureText(shown).width <= maxWidth) return shown;
  let lo = 0;
  let hi = shown.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (ctx.measureText(shown.slice(0, mid) + "…").width <= maxWidth) lo = mid;
    else hi = mid - 1;
  }
  return shown.slice(0, lo) + "…";
}

// Diverging ramp for signed values (uint8 with 128 = 0, see codecs.quantize_signed): blue below zero,
// white at zero, red above (ColorBrewer "RdBu" end stops). Shade ∝ √(|value| / scale), like the
// sequential ramp: activations are heavy-tailed, and a square root keeps the typical ones visible.
const NEG = [33, 102, 172];
const POS = [178, 24, 43];
export const DIVERGING_LUT = (() => {
  const lut = new Uint8Array(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = Math.sqrt(Math.min(1, Math.abs(i - 128) / 127));
    const end = i < 128 ? NEG : POS;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = Math.round(255 * (1 - t) + end[c] * t);
  }
  return lut;
})();

/** CSS colour of one signed uint8 value (for drawing single boxes, e.g. behind a token). */
export function divergingColor(q) {
  const k = Math.max(0, Math.min(255, q)) * 3;
  return `rgb(${DIVERGING_LUT[k]}, ${DIVERGING_LUT[k + 1]}, ${DIVERGING_LUT[k + 2]})`;
}

/** Like mapImage, through the diverging ramp: `bytes` are signed uint8 values, row-major, width × height. */
export function divergingImage(bytes, width, height) {
  return mapImage(bytes, width, height, DIVERGING_LUT);
}
