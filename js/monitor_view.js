// MonitorView: a training run over steps as canvas line charts — loss, gradient norm per layer or
// module type, update/weight ratio, activation mean and std per layer — and a strip of
// vanishing/exploding flags (layers × points). Pairs with nbinspect/views/monitor_view.py.
// Everything interactive (hover, picking a layer, grouping) stays in the browser: the kernel is busy
// training while this view is used. Canvas only; layer names via fillText/textContent.
import { bytesOf, float32sOf, int32sOf } from "./codecs.js";
import { sizeCanvas, fitText } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";

const CHART_W = 430;
const CHART_H = 170;
const PAD = { l: 58, r: 10, t: 20, b: 22 };
const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
const TYPE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f", "#e377c2", "#bcbd22", "#17becf"];
const VANISH = "#9467bd";
const EXPLODE = "#d62728";
const HEALTHY_UPDATE = 1e-3; // the usual update/weight ratio of a healthy run (drawn as a guide)

const CSS = `
.nbi-mon { font: ${FONT}; color: #222; display: inline-block; position: relative; outline: none; }
.nbi-mon .nbi-head { display: flex; gap: 12px; align-items: baseline; margin: 0 0 6px 2px; font-size: 12px; flex-wrap: wrap; }
.nbi-mon .nbi-title { font-weight: 600; }
.nbi-mon .nbi-hint { color: #777; }
.nbi-mon .nbi-flagged { color: ${EXPLODE}; font-weight: 600; }
.nbi-mon button { font: inherit; padding: 1px 7px; border: 1px solid #bbb; background: #f6f6f6; cursor: pointer; }
.nbi-mon button[aria-pressed="true"] { background: #dbe8f5; border-color: #6aa0d8; }
.nbi-mon .nbi-grid { display: grid; grid-template-columns: ${CHART_W}px ${CHART_W}px; gap: 8px 14px; }
.nbi-mon canvas { display: block; cursor: crosshair; }
.nbi-mon .nbi-legend { display: flex; flex-wrap: wrap; gap: 2px 10px; margin: 6px 2px 0; max-width: ${2 * CHART_W + 14}px; }
.nbi-mon .nbi-key { cursor: pointer; white-space: nowrap; }
.nbi-mon .nbi-key[aria-pressed="true"] { font-weight: 700; text-decoration: underline; }
.nbi-mon .nbi-note { color: #555; margin: 6px 2px 0; max-width: ${2 * CHART_W + 14}px; white-space: pre-line; line-height: 1.4; }
.nbi-mon .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; box-shadow: 0 1px 4px rgba(0,0,0,.15); }
`;

const num = (v) => (!Number.isFinite(v) ? String(v) : Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.01) ? v.toExponential(2) : v.toFixed(3));

const tickLabel = (v) => (v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential(0) : String(Number(v.toPrecision(3))));

/** Depth colour of layer i of n (dark blue → yellow, viridis end stops), so order reads at a glance. */
function layerColour(i, n) {
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const t = n > 1 ? (i / (n - 1)) * (stops.length - 1) * 0.92 : 0;
  const k = Math.min(Math.floor(t), stops.length - 2);
  const f = t - k;
  const c = stops[k].map((v, j) => Math.round(v * (1 - f) + stops[k + 1][j] * f));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

/** A column of a row-major [points, width] matrix (or the vector itself for width 0). */
function column(values, width, j, n) {
  if (!width) return values.subarray(0, n);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = values[i * width + j];
  return out;
}

function niceLogTicks(lo, hi) {
  const ticks = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    const v = 10 ** e;
    if (v >= lo * 0.999 && v <= hi * 1.001) ticks.push(v);
  }
  return ticks;
}

function niceTicks(lo, hi, count = 4) {
  const span = hi - lo || 1;
  const step0 = span / count;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return ticks;
}

/**
 * One line chart. `lines`: [{values: Float32Array [points], colour, width, alpha, dash, key}]; NaN or
 * non-positive values (on a log axis) break the line; a non-finite value is marked by a red tick on
 * the top edge. Returns the transforms for hit testing.
 */
function drawChart(canvas, { title, steps, lines, log, guides = [], cursor = -1, empty = "waiting for the first sampled step…" }) {
  const ctx = sizeCanvas(canvas, CHART_W, CHART_H);
  ctx.font = FONT;
  const W = CHART_W - PAD.l - PAD.r;
  const H = CHART_H - PAD.t - PAD.b;
  ctx.fillStyle = "#222";
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillText(title, PAD.l, 3);
  const n = steps.length;
  let lo = Infinity;
  let hi = -Infinity;
  for (const line of lines)
    for (let i = 0; i < n; i++) {
      const v = line.values[i];
      if (!Number.isFinite(v) || (log && v <= 0)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  for (const g of guides) if (!log || g.value > 0) (lo = Math.min(lo, g.value)), (hi = Math.max(hi, g.value));
  ctx.strokeStyle = "#bbb";
  ctx.strokeRect(PAD.l - 0.5, PAD.t - 0.5, W + 1, H + 1);
  if (!n || lo > hi) {
    ctx.fillStyle = "#888";
    ctx.textAlign = "center";
    ctx.fillText(empty, PAD.l + W / 2, PAD.t + H / 2 - 6);
    return null;
  }
  if (log) {
    if (hi / lo < 10) (lo /= 3.2), (hi *= 3.2);
  } else if (hi - lo < 1e-12) (lo -= 1), (hi += 1);
  else {
    const m = (hi - lo) * 0.05;
    lo -= m;
    hi += m;
  }
  const x0 = steps[0];
  const x1 = Math.max(steps[n - 1], x0 + 1);
  const xOf = (s) => PAD.l + ((s - x0) / (x1 - x0)) * W;
  const yOf = log
    ? (v) => PAD.t + H - ((Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * H
    : (v) => PAD.t + H - ((v - lo) / (hi - lo)) * H;
  // Axes: a few ticks on y (powers of ten on a log axis), first and last step on x.
  ctx.fillStyle = "#555";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  ctx.strokeStyle = "#eee";
  for (const t of log ? niceLogTicks(lo, hi) : niceTicks(lo, hi)) {
    const y = Math.round(yOf(t)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(PAD.l, y);
    ctx.lineTo(PAD.l + W, y);
    ctx.stroke();
    ctx.fillText(log ? `1e${Math.round(Math.log10(t))}` : tickLabel(t), PAD.l - 4, y);
  }
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillText(`step ${x0}`, PAD.l, PAD.t + H + 5);
  ctx.textAlign = "right";
  ctx.fillText(`step ${steps[n - 1]}`, PAD.l + W, PAD.t + H + 5);
  for (const g of guides) {
    const y = Math.round(yOf(g.value)) + 0.5;
    ctx.strokeStyle = g.colour || "#2ca02c";
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(PAD.l, y);
    ctx.lineTo(PAD.l + W, y);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = g.colour || "#2ca02c";
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    ctx.fillText(g.label, PAD.l + 3, y - 1);
  }
  ctx.save();
  ctx.beginPath();
  ctx.rect(PAD.l, PAD.t, W, H);
  ctx.clip();
  for (const line of lines) {
    ctx.strokeStyle = line.colour;
    ctx.lineWidth = line.width || 1.25;
    ctx.globalAlpha = line.alpha ?? 1;
    ctx.setLineDash(line.dash || []);
    ctx.beginPath();
    let open = false;
    for (let i = 0; i < n; i++) {
      const v = line.values[i];
      if (!Number.isFinite(v) || (log && v <= 0)) {
        open = false;
        continue;
      }
      const x = xOf(steps[i]);
      const y = yOf(v);
      if (open) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
      open = true;
      if (n === 1 || !Number.isFinite(line.values[i - 1]) && !Number.isFinite(line.values[i + 1])) ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
    }
    ctx.stroke();
  }
  ctx.setLineDash([]);
  ctx.globalAlpha = 1;
  ctx.restore();
  // Non-finite values (a diverged run): red ticks on the top edge, where the line would have gone.
  ctx.fillStyle = EXPLODE;
  for (const line of lines)
    for (let i = 0; i < n; i++) {
      const v = line.values[i];
      if (Number.isNaN(v) && line.nanIsMissing) continue;
      if (!Number.isFinite(v)) ctx.fillRect(xOf(steps[i]) - 1, PAD.t - 4, 2, 5);
    }
  if (cursor >= 0 && cursor < n) {
    ctx.strokeStyle = "rgba(255, 140, 0, 0.8)";
    ctx.beginPath();
    ctx.moveTo(Math.round(xOf(steps[cursor])) + 0.5, PAD.t);
    ctx.lineTo(Math.round(xOf(steps[cursor])) + 0.5, PAD.t + H);
    ctx.stroke();
  }
  return { xOf, yOf, W, H };
}

async function render({ model, el: host }) {
  const root = el("div", "nbi-mon", host);
  exportButtons(root, "nbinspect-monitor");
  root.tabIndex = 0;
  el("style", null, root).textContent = CSS;
  const head = el("div", "nbi-head", root);
  const title = el("span", "nbi-title", head, "Training monitor");
  const status = el("span", "nbi-hint", head);
  const flagged = el("span", "nbi-flagged", head);
  const groupBox = el("span", null, head);
  el("span", "nbi-hint", groupBox, "gradient norm by ");
  let byType = false;
  const groupButtons = [["layer", false], ["module type", true]].map(([label, value]) => {
    const b = el("button", null, groupBox, label);
    b.type = "button";
    b.addEventListener("click", () => {
      byType = value;
      schedule();
    });
    return [b, value];
  });
  const grid = el("div", "nbi-grid", root);
  const names = ["loss", "grad", "update", "flags", "mean", "std"];
  const canvases = Object.fromEntries(names.map((k) => [k, el("canvas", `nbi-chart nbi-${k}`, grid)]));
  const legend = el("div", "nbi-legend", root);
  const note = el("div", "nbi-note", root);
  const tip = tooltip(root);

  let frame = 0;
  let cursor = -1; // hovered point
  let charts = {};
  let data = null;
  let paintedKey = "";

  function decode() {
    const steps = int32sOf(model.get("steps"));
    const n = steps.length;
    const L = model.get("layer_names").length;
    const T = model.get("type_names").length;
    const f = (k) => float32sOf(model.get(k));
    data = {
      n, L, T, steps,
      loss: f("loss"), gradTotal: f("grad_total"), updateTotal: f("update_total"),
      gradLayer: f("grad_layer"), gradType: f("grad_type"), updateLayer: f("update_layer"),
      actMean: f("act_mean"), actStd: f("act_std"),
      flags: bytesOf(model.get("flags")), stepFlags: bytesOf(model.get("step_flags")),
    };
  }

  /** Lines of one per-layer matrix; the picked layer drawn bold, the others faded. */
  function layerLines(values) {
    const { n, L } = data;
    const picked = model.get("layer");
    const lines = [];
    for (let j = 0; j < L; j++) {
      if (j === picked) continue;
      lines.push({ values: column(values, L, j, n), colour: layerColour(j, L), alpha: picked >= 0 ? 0.25 : 0.9, key: j, nanIsMissing: true });
    }
    if (picked >= 0 && picked < L) lines.push({ values: column(values, L, picked, n), colour: layerColour(picked, L), width: 2.5, key: picked, nanIsMissing: true });
    return lines;
  }

  function drawFlags(canvas) {
    const { n, L, steps, flags, stepFlags } = data;
    const ctx = sizeCanvas(canvas, CHART_W, CHART_H);
    ctx.font = FONT;
    const W = CHART_W - PAD.l - PAD.r;
    const H = CHART_H - PAD.t - PAD.b;
    ctx.fillStyle = "#222";
    ctx.textBaseline = "top";
    ctx.fillText("flags over time (rows: the step, then each layer)", PAD.l, 3);
    ctx.strokeStyle = "#bbb";
    ctx.strokeRect(PAD.l - 0.5, PAD.t - 0.5, W + 1, H + 1);
    if (!n) return null;
    const rows = L + 1;
    const rowH = H / rows;
    const colW = W / n;
    for (let i = 0; i < n; i++) {
      const s = stepFlags[i];
      if (s) {
        ctx.fillStyle = s & 4 ? "#000" : s & 2 ? EXPLODE : VANISH;
        ctx.fillRect(PAD.l + i * colW, PAD.t, Math.max(1, colW), Math.max(1, rowH - 1));
      }
      for (let j = 0; j < L; j++) {
        const b = flags[i * L + j];
        if (!b) continue;
        ctx.fillStyle = b & 2 ? EXPLODE : VANISH;
        ctx.fillRect(PAD.l + i * colW, PAD.t + (j + 1) * rowH, Math.max(1, colW), Math.max(1, rowH - (rowH > 3 ? 1 : 0)));
      }
    }
    const picked = model.get("layer");
    if (picked >= 0) {
      ctx.strokeStyle = "#ff8c00";
      ctx.strokeRect(PAD.l + 0.5, PAD.t + (picked + 1) * rowH + 0.5, W - 1, rowH - 1);
    }
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillStyle = "#555";
    if (rowH >= 9) {
      ctx.fillText("step", PAD.l - 4, PAD.t + rowH / 2);
      const layerNames = model.get("layer_names");
      for (let j = 0; j < L; j++) ctx.fillText(fitText(ctx, layerNames[j], PAD.l - 8), PAD.l - 4, PAD.t + (j + 1.5) * rowH);
    }
    ctx.textBaseline = "top";
    ctx.textAlign = "left";
    ctx.fillText(`step ${steps[0]}`, PAD.l, PAD.t + H + 5);
    ctx.textAlign = "right";
    ctx.fillText(`step ${steps[n - 1]}`, PAD.l + W, PAD.t + H + 5);
    if (cursor >= 0 && cursor < n) {
      ctx.strokeStyle = "rgba(255, 140, 0, 0.8)";
      ctx.strokeRect(PAD.l + cursor * colW, PAD.t, Math.max(1, colW), H);
    }
    return { rowH, colW, rows };
  }

  function drawLegend() {
    legend.replaceChildren();
    const L = data.L;
    const layerNames = model.get("layer_names");
    const picked = model.get("layer");
    if (byType) {
      model.get("type_names").forEach((t, j) => {
        const k = el("span", "nbi-key", legend, `■ ${t}`);
        k.style.color = TYPE_COLOURS[j % TYPE_COLOURS.length];
      });
      el("span", "nbi-key", legend, "┅ total").style.color = "#222";
      return;
    }
    for (let j = 0; j < L; j++) {
      const k = el("span", "nbi-key", legend, `■ ${layerNames[j]}`);
      k.style.color = layerColour(j, L);
      k.setAttribute("aria-pressed", String(j === picked));
      k.dataset.layer = String(j);
      k.addEventListener("click", () => pick(j === model.get("layer") ? -1 : j));
    }
  }

  function draw() {
    frame = 0;
    decode();
    const { n, steps } = data;
    const running = model.get("running");
    const bucket = model.get("bucket");
    status.textContent =
      `${running ? "running" : "finished"} · step ${model.get("step_count")} · ${model.get("samples")} sampled steps (one in ${model.get("every")})` +
      ` · ${n} points` + (bucket > 1 ? `, each the mean of ${bucket} samples` : "");
    let nf = 0;
    let ex = 0;
    let va = 0;
    for (let i = 0; i < n; i++) {
      const s = data.stepFlags[i];
      if (s & 4) nf++;
      for (let j = 0; j < data.L; j++) {
        const b = data.flags[i * data.L + j];
        if (b & 2) ex++;
        if (b & 1) va++;
      }
    }
    flagged.textContent = [nf ? `${nf} non-finite` : "", ex ? `${ex} exploding` : "", va ? `${va} vanishing` : ""].filter(Boolean).join(" · ");
    for (const [b, value] of groupButtons) b.setAttribute("aria-pressed", String(value === byType));
    const picked = model.get("layer");
    const pickedName = picked >= 0 ? ` — ${model.get("layer_names")[picked]} bold` : "";
    charts = {};
    charts.loss = drawChart(canvases.loss, { title: "loss (mean since the previous sample)", steps, cursor, lines: [{ values: data.loss, colour: "#222", width: 1.5 }] });
    const gradLines = byType
      ? Array.from({ length: data.T }, (_, j) => ({ values: column(data.gradType, data.T, j, n), colour: TYPE_COLOURS[j % TYPE_COLOURS.length], key: j, nanIsMissing: true }))
      : layerLines(data.gradLayer);
    gradLines.push({ values: data.gradTotal, colour: "#222", width: 1.5, dash: [5, 3], key: "total" });
    charts.grad = drawChart(canvases.grad, { title: `gradient norm by ${byType ? "module type" : "layer"} (log)${byType ? "" : pickedName}`, steps, cursor, log: true, lines: gradLines });
    charts.update = drawChart(canvases.update, {
      title: `update / weight ratio ‖ΔW‖/‖W‖ per layer (log)${pickedName}`, steps, cursor, log: true,
      lines: layerLines(data.updateLayer), guides: [{ value: HEALTHY_UPDATE, label: "1e-3 (typical)" }],
    });
    charts.flags = drawFlags(canvases.flags);
    charts.mean = drawChart(canvases.mean, { title: `activation mean per layer${pickedName}`, steps, cursor, lines: layerLines(data.actMean) });
    charts.std = drawChart(canvases.std, { title: `activation std per layer (log)${pickedName}`, steps, cursor, log: true, lines: layerLines(data.actStd) });
    drawLegend();
    const r = model.get("flag_ratio");
    note.textContent =
      `Flags — vanishing (purple): a layer's gradient norm < median layer's / ${r} (or 0); exploding (red): > median × ${r} or not finite. ` +
      `Step row: the total norm vs the run's median so far (same ratio); black: a non-finite loss or gradient.\n` +
      `History: at most ${model.get("max_points")} points per series; when full, neighbouring points are averaged in pairs (flags combined), ` +
      `halving the resolution so the whole run stays in view. Click a line's legend entry or a flag row to pick a layer.`;
    root.dataset.points = String(n);
    root.dataset.layer = String(picked);
    const key = `${model.get("samples")},${running}`;
    if (key !== paintedKey) {
      paintedKey = key; // tell Python once per new history, not on every hover repaint
      model.set("painted", model.get("painted") + 1);
    }
  }
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };

  function pick(j) {
    model.set("layer", j);
    model.save_changes(); // Python hears it once the training cell is done; the view repaints now
    schedule();
  }

  /** The nearest point to the pointer on any chart. */
  function pointAt(canvas, evt) {
    if (!data || !data.n) return -1;
    const r = canvas.getBoundingClientRect();
    const x = evt.clientX - r.left;
    const W = CHART_W - PAD.l - PAD.r;
    if (canvas === canvases.flags) return Math.max(0, Math.min(data.n - 1, Math.floor(((x - PAD.l) / W) * data.n)));
    const { steps } = data;
    const s = steps[0] + ((x - PAD.l) / W) * (Math.max(steps[data.n - 1], steps[0] + 1) - steps[0]);
    let best = 0;
    for (let i = 1; i < data.n; i++) if (Math.abs(steps[i] - s) < Math.abs(steps[best] - s)) best = i;
    return best;
  }

  function describe(kind, i, evt) {
    const { L, T } = data;
    const layerNames = model.get("layer_names");
    const picked = model.get("layer");
    const at = `step ${data.steps[i]}`;
    const pickedLine = (values) => (picked >= 0 ? `\n${layerNames[picked]}: ${num(values[i * L + picked])}` : "");
    if (kind === "loss") return `${at}\nloss ${num(data.loss[i])}`;
    if (kind === "grad") {
      if (byType) return `${at}\n` + model.get("type_names").map((t, j) => `${t}: ${num(data.gradType[i * T + j])}`).join("\n") + `\ntotal: ${num(data.gradTotal[i])}`;
      let lo = 0;
      let hi = 0;
      for (let j = 0; j < L; j++) {
        if (data.gradLayer[i * L + j] < data.gradLayer[i * L + lo]) lo = j;
        if (data.gradLayer[i * L + j] > data.gradLayer[i * L + hi]) hi = j;
      }
      return `${at}\ntotal ${num(data.gradTotal[i])}\nsmallest: ${layerNames[lo]} ${num(data.gradLayer[i * L + lo])}\nlargest: ${layerNames[hi]} ${num(data.gradLayer[i * L + hi])}` + pickedLine(data.gradLayer);
    }
    if (kind === "update") return `${at}\nwhole model ${num(data.updateTotal[i])}` + pickedLine(data.updateLayer);
    if (kind === "mean") return `${at}` + (picked >= 0 ? pickedLine(data.actMean) : "\npick a layer for its value");
    if (kind === "std") return `${at}` + (picked >= 0 ? pickedLine(data.actStd) : "\npick a layer for its value");
    if (kind === "flags") {
      const g = charts.flags;
      const r = canvases.flags.getBoundingClientRect();
      const row = g ? Math.floor((evt.clientY - r.top - PAD.t) / g.rowH) : -1;
      const s = data.stepFlags[i];
      if (row === 0) return `${at}\n` + ([s & 4 ? "non-finite loss or gradient" : "", s & 2 ? "total gradient norm exploding" : "", s & 1 ? "total gradient norm vanishing" : ""].filter(Boolean).join("\n") || "no step flag");
      if (row >= 1 && row <= L) {
        const b = data.flags[i * L + row - 1];
        return `${at} · ${layerNames[row - 1]}\ngradient norm ${num(data.gradLayer[i * L + row - 1])}\n${b & 2 ? "exploding" : b & 1 ? "vanishing" : "no flag"} · click to pick this layer`;
      }
      return at;
    }
    return at;
  }

  for (const [kind, canvas] of Object.entries(canvases)) {
    canvas.addEventListener("mousemove", (evt) => {
      const i = pointAt(canvas, evt);
      if (i < 0) return tip.hide();
      if (i !== cursor) {
        cursor = i;
        schedule();
      }
      tip.show(evt, describe(kind, i, evt));
    });
    canvas.addEventListener("mouseleave", () => {
      tip.hide();
      cursor = -1;
      schedule();
    });
  }
  canvases.flags.addEventListener("click", (evt) => {
    const g = charts.flags;
    if (!g) return;
    const r = canvases.flags.getBoundingClientRect();
    const row = Math.floor((evt.clientY - r.top - PAD.t) / g.rowH);
    if (row >= 1 && row <= data.L) pick(row - 1 === model.get("layer") ? -1 : row - 1);
  });
  root.addEventListener("keydown", (evt) => {
    if (evt.key === "Escape") pick(-1);
  });

  const keys = ["steps", "layer", "layer_names", "running", "step_count"];
  for (const k of keys) model.on(`change:${k}`, schedule);
  draw();
  return () => {
    if (frame) cancelAnimationFrame(frame);
    for (const k of keys) model.off(`change:${k}`, schedule);
  };
}

export default { render };
