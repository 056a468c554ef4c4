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

/** Size a canvas for crisp drawing on high-DPI screens; returns its 2-D context in CSS pixels. */
export function sizeCanvas(canvas, cssWidth, cssHeight) {
  const dpr = window.devicePixelRatio || 1;
  canvas.style.width = `${cssWidth}px`;
  canvas.style.height = `${cssHeight}px`;
  canvas.width = Math.round(cssWidth * dpr);
  canvas.height = Math.round(cssHeight * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.imageSmoothingEnabled = false;
  return ctx;
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
