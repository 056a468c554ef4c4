// Small canvas charts shared by the anatomy views (parameters, activation, attention mechanics, compare):
// bars, lines and axes drawn on a 2-D context in CSS pixels. No DOM text: labels go through fillText.

export const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
export const LINE_COLOURS = ["#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2", "#7f7f7f", "#bcbd22", "#1f77b4"];

/** A number in at most ~5 characters of sense: 0.0123, 1.23e-5, 4.56e+3. */
export function num(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (!Number.isFinite(v)) return v > 0 ? "∞" : "−∞";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e4 || a < 1e-3)) return v.toExponential(2);
  return a >= 100 ? v.toFixed(0) : a >= 1 ? v.toFixed(2) : v.toFixed(4);
}

/** 1234567 → "1.23M". */
export function count(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return `${(v / 1e9).toFixed(2)}B`;
  if (a >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (a >= 1e3) return `${(v / 1e3).toFixed(1)}K`;
  return `${v}`;
}

export function bytes(v) {
  const a = Math.abs(v);
  if (a >= 2 ** 30) return `${(v / 2 ** 30).toFixed(2)} GiB`;
  if (a >= 2 ** 20) return `${(v / 2 ** 20).toFixed(1)} MiB`;
  if (a >= 2 ** 10) return `${(v / 2 ** 10).toFixed(1)} KiB`;
  return `${v} B`;
}

export const pct = (f) => `${(100 * f).toFixed(f > 0 && f < 0.01 ? 2 : 1)}%`;

/**
 * A chart box: maps data x in [x0, x1] and y in [y0, y1] to pixels inside (left, top, width, height).
 * `logY`: y on log10(1 + y) (counts spanning orders of magnitude).
 */
export function frame(left, top, width, height, x0, x1, y0, y1, logY = false) {
  const fy = (y) => (logY ? Math.log10(1 + Math.max(0, y)) : y);
  const Y0 = fy(y0);
  const Y1 = fy(y1) > Y0 ? fy(y1) : Y0 + 1;
  const X1 = x1 > x0 ? x1 : x0 + 1;
  return {
    left, top, width, height, x0, x1: X1,
    px: (x) => left + ((x - x0) / (X1 - x0)) * width,
    py: (y) => top + height - ((fy(y) - Y0) / (Y1 - Y0)) * height,
    xOf: (px) => x0 + ((px - left) / width) * (X1 - x0),
  };
}

/** Bars of `counts` over equal bins spanning the frame's x range. */
export function bars(ctx, f, counts, colour = "#6b9ac4") {
  const n = counts.length;
  if (!n) return;
  const w = f.width / n;
  ctx.fillStyle = colour;
  const base = f.py(0);
  for (let i = 0; i < n; i++) {
    if (!(counts[i] > 0)) continue;
    const y = f.py(counts[i]);
    ctx.fillRect(f.left + i * w, y, Math.max(1, w - 0.5), base - y);
  }
}

/** A polyline through (xs[i], ys[i]); non-finite points break it. */
export function line(ctx, f, xs, ys, colour, width = 1.5, dash = []) {
  ctx.save();
  ctx.beginPath();
  ctx.rect(f.left, f.top, f.width, f.height); // a curve leaving the chart is cut at its edge
  ctx.clip();
  ctx.strokeStyle = colour;
  ctx.lineWidth = width;
  ctx.setLineDash(dash);
  ctx.beginPath();
  let pen = false;
  for (let i = 0; i < ys.length; i++) {
    const x = xs[i];
    const y = ys[i];
    if (!Number.isFinite(x) || !Number.isFinite(y)) {
      pen = false;
      continue;
    }
    if (pen) ctx.lineTo(f.px(x), f.py(y));
    else ctx.moveTo(f.px(x), f.py(y));
    pen = true;
  }
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.restore();
}

/** Frame outline, zero line when in range, and end labels of both axes. */
export function axes(ctx, f, { xLabel = "", yLabel = "", y0 = null, y1 = null } = {}) {
  ctx.strokeStyle = "#999";
  ctx.lineWidth = 1;
  ctx.strokeRect(f.left + 0.5, f.top + 0.5, f.width, f.height);
  if (f.x0 < 0 && f.x1 > 0) {
    ctx.strokeStyle = "#ccc";
    const x = Math.round(f.px(0)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(x, f.top);
    ctx.lineTo(x, f.top + f.height);
    ctx.stroke();
  }
  ctx.fillStyle = "#555";
  ctx.font = FONT;
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillText(num(f.x0), f.left, f.top + f.height + 3);
  ctx.textAlign = "right";
  ctx.fillText(num(f.x1), f.left + f.width, f.top + f.height + 3);
  ctx.textAlign = "center";
  if (xLabel) ctx.fillText(xLabel, f.left + f.width / 2, f.top + f.height + 3);
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  if (y1 !== null) ctx.fillText(num(y1), f.left - 4, f.top + 4);
  if (y0 !== null) ctx.fillText(num(y0), f.left - 4, f.top + f.height - 4);
  if (yLabel) {
    ctx.save();
    ctx.translate(f.left - 30, f.top + f.height / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center";
    ctx.fillText(yLabel, 0, 0);
    ctx.restore();
  }
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
}

/** Max of an array, ignoring non-finite values (0 when there are none). */
export function maxOf(a) {
  let m = 0;
  for (const v of a) if (Number.isFinite(v) && v > m) m = v;
  return m;
}

/** A row of small coloured legend entries drawn at (x, y); returns the y below it. */
export function legend(ctx, x, y, entries, maxWidth) {
  ctx.font = FONT;
  ctx.textBaseline = "middle";
  let cx = x;
  let cy = y;
  for (const [label, colour] of entries) {
    const w = ctx.measureText(label).width + 22;
    if (cx + w > x + maxWidth && cx > x) {
      cx = x;
      cy += 15;
    }
    ctx.fillStyle = colour;
    ctx.fillRect(cx, cy - 2, 12, 4);
    ctx.fillStyle = "#333";
    ctx.fillText(label, cx + 15, cy);
    cx += w;
  }
  ctx.textBaseline = "alphabetic";
  return cy + 12;
}
