// GradientView: altair's per-layer chart (a child widget, drawn with its own ESM) above the token
// strip: the input tokens coloured by attribution, a method switch, a layer slider for the methods with a
// value per layer (relevance, rollout, flow) and the vanishing/exploding flags.
// Pairs with nbinspect/views/gradient_view.py. Canvas only; token text via fillText/textContent.
import { childModel, renderChild } from "./children.js";
import { float32sOf } from "./codecs.js";
import { fitText, sizeCanvas } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";

const WIDTH = 640;
const ROW = 22;
const PAD = 4;
const MAX_TOKEN_PX = 120;
const UNSIGNED = new Set(["grad_norm", "rollout", "flow"]);
const FONT = "12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace";
let METHODS = {}; // value -> label, from the model's `methods` trait

const CSS = `
.nbi-grad { font: 12px system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222; position: relative; margin-top: 6px; }
.nbi-grad .nbi-bar { display: flex; gap: 10px; align-items: center; margin-bottom: 6px; flex-wrap: wrap; }
.nbi-grad select { font: inherit; }
.nbi-grad .nbi-note { color: #666; }
.nbi-grad .nbi-flags { color: #9467bd; }
.nbi-grad .nbi-busy { color: #b35c00; visibility: hidden; }
.nbi-grad .nbi-layer { display: none; gap: 6px; align-items: center; }
.nbi-grad .nbi-layer.is-shown { display: inline-flex; }
.nbi-grad .nbi-layer input { width: 160px; }
.nbi-grad .nbi-message { color: #b00020; }
.nbi-grad.is-busy .nbi-busy { visibility: visible; }
.nbi-grad canvas { display: block; cursor: default; }
.nbi-grad .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; }
`;


/** Signed scores: blue (negative) – white – red (positive); unsigned: white → red. */
function colour(v, scale, signed) {
  const t = scale > 0 ? Math.max(-1, Math.min(1, v / scale)) : 0;
  const a = Math.sqrt(Math.abs(t)); // keep small attributions visible beside the largest
  const [r, g, b] = signed && t < 0 ? [33, 102, 172] : [178, 24, 43];
  const mix = (c) => Math.round(255 + (c - 255) * a);
  return `rgb(${mix(r)}, ${mix(g)}, ${mix(b)})`;
}

/**
 * altair draws a chart from the spec it was made with. Python gives a shown chart a slider edit's norms
 * as updates of its datasets and title (`_py_to_js_updates`), which reach only charts already drawn; a
 * chart drawn later (the view shown again, a saved page) is given them here, as they last arrived.
 */
async function replayChartUpdates(model, ref) {
  let chart;
  try {
    chart = await childModel(model, ref);
  } catch {
    return; // a host that draws the child itself (marimo) holds no model to replay on
  }
  const updates = chart.get("_py_to_js_updates");
  if (!Array.isArray(updates) || !updates.length) return;
  chart.set("_py_to_js_updates", []); // altair applies this trait only when it changes
  chart.set("_py_to_js_updates", updates);
}

async function render({ model, el: host, host: anywidgetHost }) {
  const sel = await bindSelection(model);
  METHODS = model.get("methods") || {};
  const chartBox = el("div", "nbi-grad-chart", host);
  const chartCleanup = model.get("chart") ? await renderChild(model, model.get("chart"), chartBox, anywidgetHost) : () => {};
  if (model.get("chart")) await replayChartUpdates(model, model.get("chart"));
  const root = el("div", "nbi-grad", host);
  exportButtons(root, "nbinspect-gradient");
  el("style", null, root).textContent = CSS;
  const bar = el("div", "nbi-bar", root);
  el("span", null, bar).textContent = "Attribution:";
  const pick = el("select", null, bar);
  const options = {};
  for (const [value, label] of Object.entries(METHODS)) {
    const o = el("option", null, pick);
    o.value = value;
    o.textContent = label;
    options[value] = o;
  }
  const layerBox = el("label", "nbi-layer", bar);
  const layerSlider = el("input", null, layerBox);
  layerSlider.type = "range";
  layerSlider.step = "1";
  const layerText = el("span", null, layerBox);
  let pendingLayer = null; // the slider's value until Python's scores for it arrive
  const note = el("span", "nbi-note", bar);
  const busy = el("span", "nbi-busy", bar);
  busy.textContent = "computing…";
  const flagLine = el("div", "nbi-flags", root);
  const canvas = el("canvas", "nbi-tokens", root);
  const tip = tooltip(root);
  let boxes = []; // [x, y, w, index] of each drawn token, for hit-testing
  let frame = 0;
  let laidOut = []; // the tokens' boxes (layoutTokens) ...
  let laidKey = null; // ... for these tokens

  function layoutTokens(ctx, tokens) {
    const out = [];
    let x = 0;
    let y = 0;
    tokens.forEach((t, i) => {
      const text = fitText(ctx, t, MAX_TOKEN_PX);
      const w = Math.ceil(ctx.measureText(text).width) + 2 * PAD;
      if (x + w > WIDTH && x > 0) {
        x = 0;
        y += ROW + 2;
      }
      out.push({ x, y, w, i, text });
      x += w + 1;
    });
    return out;
  }

  function draw() {
    frame = 0;
    const tokens = model.get("tokens");
    const method = model.get("method");
    pick.value = method;
    root.classList.toggle("is-busy", model.get("busy"));
    const unavailable = model.get("unavailable") || {};
    for (const [value, o] of Object.entries(options)) {
      o.textContent = METHODS[value] + (unavailable[value] ? " (not for this model)" : "");
      o.title = unavailable[value] || "";
    }
    const ready = model.get("scores_of") === method;
    const message = ready ? model.get("message") : "";
    const raw = ready && !message ? float32sOf(model.get("scores")) : new Float32Array(0);
    const scores = raw.length === tokens.length ? raw : new Float32Array(tokens.length);
    let scale = 0;
    for (const v of scores) scale = Math.max(scale, Math.abs(v));
    const signed = !UNSIGNED.has(method);
    const range = (model.get("layered") || {})[method];
    const shown = ready ? model.get("scores_layer") : null;
    layerBox.classList.toggle("is-shown", !!range && !message);
    let where = "";
    if (range) {
      layerSlider.min = String(range[0]);
      layerSlider.max = String(range[1]);
      const at = pendingLayer ?? shown ?? range[0];
      layerSlider.value = String(at);
      const place = at < 0 ? "input embeddings" : method === "lrp" ? `after block ${at}` : at === 0 ? "through block 0" : `through blocks 0–${at}`;
      layerText.textContent = place;
      where = method === "lrp" ? ` at the ${at < 0 ? "input embeddings" : `residual stream after block ${at}`}` : "";
      if (pendingLayer !== null && shown === pendingLayer) pendingLayer = null;
    }
    const what = method === "rollout" || method === "flow"
      ? `${METHODS[method]} into token ${model.get("position")} (${range ? layerText.textContent : ""}; it does not depend on the target) for each input token`
      : `${METHODS[method]} of the ${model.get("target")}${where} for each input token`;
    note.classList.toggle("nbi-message", !!message);
    note.textContent = message ? `${METHODS[method]}: ${message}`
      : what + (signed ? " · red pushes it up, blue down" : "") + ` · largest |score| ${scale.toPrecision(3)}`;
    const f = model.get("flags") || {};
    const ratio = model.get("flag_ratio");
    const parts = [];
    if ((f.vanishing || []).length) parts.push(`vanishing (norm < median ÷ ${ratio}): layers ${f.vanishing.join(", ")}`);
    if ((f.exploding || []).length) parts.push(`exploding (norm > median × ${ratio}): layers ${f.exploding.join(", ")}`);
    flagLine.textContent = parts.length ? `⚑ ${parts.join(" · ")}` : `no layer's gradient norm is more than ×${ratio} from the median`;

    // Measured once per text: the strip redraws on every change (a slider edit, a hover).
    const key = tokens.join("\u0001");
    if (laidKey !== key) {
      const probe = canvas.getContext("2d");
      probe.font = FONT;
      laidOut = layoutTokens(probe, tokens);
      laidKey = key;
    }
    const laid = laidOut;
    const height = (laid.length ? laid[laid.length - 1].y : 0) + ROW + 2;
    const ctx = sizeCanvas(canvas, WIDTH, height);
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    const current = sel.get("token");
    for (const b of laid) {
      ctx.fillStyle = colour(scores[b.i] || 0, scale, signed);
      ctx.fillRect(b.x, b.y, b.w, ROW);
      if (b.i === current) {
        ctx.strokeStyle = "#ff7f0e";
        ctx.lineWidth = 2;
        ctx.strokeRect(b.x + 1, b.y + 1, b.w - 2, ROW - 2);
      }
      ctx.fillStyle = "#111";
      ctx.fillText(b.text, b.x + PAD, b.y + ROW / 2);
    }
    boxes = laid;
    root.dataset.token = String(current);
    root.dataset.method = ready ? method : "";
    root.dataset.layer = ready && shown !== null ? String(shown) : "";
    root.dataset.message = message;
    if (ready) root.dataset.drawnAt = String(performance.now()); // for benchmarks: scores on screen
    const paintedKey = shown === null ? method : `${method}@${shown}`;
    if (ready && root.dataset.painted !== paintedKey) {
      root.dataset.painted = paintedKey;
      model.set("painted", model.get("painted") + 1);
    }
  }
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };

  pick.addEventListener("change", () => {
    model.set("method", pick.value);
    model.save_changes();
    schedule();
  });
  layerSlider.addEventListener("input", () => {
    pendingLayer = Number(layerSlider.value);
    model.set("strip_layer", pendingLayer);
    model.save_changes();
    schedule();
  });
  canvas.addEventListener("mousemove", (evt) => {
    const r = canvas.getBoundingClientRect();
    const x = evt.clientX - r.left;
    const y = evt.clientY - r.top;
    const hit = boxes.find((b) => x >= b.x && x < b.x + b.w && y >= b.y && y < b.y + ROW);
    if (!hit) {
      tip.hide();
      return;
    }
    sel.set({ token: hit.i }, { throttle: true });
    const scores = model.get("message") ? new Float32Array(0) : float32sOf(model.get("scores"));
    tip.show(evt, `${JSON.stringify(model.get("tokens")[hit.i])} #${hit.i}\n${METHODS[model.get("method")]}: ${(scores[hit.i] ?? NaN).toExponential(3)}`);
  });
  canvas.addEventListener("mouseleave", () => {
    tip.hide();
    sel.set({ token: -1 }, { throttle: true });
  });

  // Busy only shows or hides its label (see draw): no redraw of the strip for it.
  const onBusy = () => root.classList.toggle("is-busy", model.get("busy"));
  model.on("change:busy", onBusy);
  const keys = ["scores", "scores_of", "scores_layer", "message", "unavailable", "method", "flags", "tokens"];
  for (const k of keys) model.on(`change:${k}`, schedule);
  sel.on(schedule);
  draw();
  return () => {
    if (frame) cancelAnimationFrame(frame);
    model.off("change:busy", onBusy);
    for (const k of keys) model.off(`change:${k}`, schedule);
    sel.off(schedule);
    chartCleanup();
  };
}

export default { render };
