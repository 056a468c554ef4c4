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

/**
 * An offscreen canvas holding `bytes` (uint8, row-major, width × height) through the colour ramp.
 * @param {Uint8Array} bytes
 */
export function mapImage(bytes, width, height, lut = LUT) {
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, width);
  canvas.height = Math.max(1, height);
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(canvas.width, canvas.height);
  const px = img.data;
  const n = Math.min(bytes.length, width * height);
  for (let i = 0; i < n; i++) {
    const q = bytes[i] * 3;
    px[i * 4] = lut[q];
    px[i * 4 + 1] = lut[q + 1];
    px[i * 4 + 2] = lut[q + 2];
    px[i * 4 + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
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
