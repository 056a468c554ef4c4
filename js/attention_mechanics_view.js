// AttentionMechanicsView: one head at one query token, step by step. The query vector on top; one row per
// key token: the key vector, q·k, × scale, the mask, the softmax (the pattern row) and the value vector
// weighted by it; the weighted sum (the head's output) at the bottom. A temperature slider re-runs the
// softmax here in the browser (view-only). Pairs with nbinspect/views/attention_mechanics_view.py.
// Canvas only; token text via fillText.
import { bytesOf, dequantizeSigned, float32sOf } from "./codecs.js";
import { divergingColor, fitText, sizeCanvas } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";
import { FONT, num } from "./charts.js";

const MAX_H = 620; // most height the key rows take
const LABEL_W = 96;
const STRIP_W = 192;
const NUM_W = 64;
const BAR_W = 120;
const GAP = 10;
const TOP = 58;

const CSS = `
.nbi-mech { font: ${FONT}; color: #222; display: inline-block; position: relative; }
.nbi-mech .nbi-head { display: flex; gap: 14px; align-items: center; margin: 0 0 6px 2px; font-size: 12px; flex-wrap: wrap; }
.nbi-mech .nbi-title { font-weight: 600; }
.nbi-mech .nbi-hint { color: #666; }
.nbi-mech canvas { display: block; cursor: pointer; }
.nbi-mech input[type=range] { width: 140px; vertical-align: middle; }
.nbi-mech .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; }
`;

/** Signed uint8 as a colour; `q` already on the 0..255 scale with 128 = 0. */
function signedByte(v, scale) {
  if (!(scale > 0)) return 128;
  return Math.max(1, Math.min(255, Math.round(128 + (v / scale) * 127)));
}

async function render({ model, el: host }) {
  const sel = await bindSelection(model);
  const root = el("div", "nbi-mech", host);
  exportButtons(root, "nbinspect-attention-mechanics");
  el("style", null, root).textContent = CSS;
  const head = el("div", "nbi-head", root);
  const title = el("span", "nbi-title", head);
  const gqa = el("span", "nbi-hint", head);
  const rotLabel = el("label", "nbi-hint", head);
  const rotBox = el("input", null, rotLabel);
  rotBox.type = "checkbox";
  rotLabel.appendChild(document.createTextNode(" q, k before rotary"));
  rotBox.addEventListener("change", () => {
    model.set("before_rotary", rotBox.checked);
    model.save_changes();
    schedule();
  });
  const tempLabel = el("label", "nbi-hint", head);
  tempLabel.appendChild(document.createTextNode("temperature "));
  const temp = el("input", null, tempLabel);
  temp.type = "range";
  temp.min = "-2";
  temp.max = "2";
  temp.step = "0.01";
  temp.value = "0"; // log2 of the temperature
  const tempValue = el("span", null, tempLabel);
  temp.addEventListener("input", () => {
    model.set("temperature", 2 ** Number(temp.value));
    model.save_changes();
    schedule();
  });
  const note = el("div", "nbi-hint", root);
  const canvas = el("canvas", null, root);
  const tip = tooltip(root);
  let geo = null;

  const ready = () => {
    const [l, h, q] = model.get("shown_of");
    const tok = sel.get("token");
    const query = tok >= 0 ? tok : model.get("tokens").length - 1;
    return l === sel.get("layer") && h === sel.get("head") && q === query;
  };

  /** Pattern row at the slider's temperature (the model's own row at T = 1). */
  function pattern() {
    const T = model.get("temperature");
    const probs = float32sOf(model.get("probs"));
    if (T === 1) return Array.from(probs);
    const scaled = float32sOf(model.get("scaled"));
    const masked = bytesOf(model.get("masked"));
    let m = -Infinity;
    for (let j = 0; j < scaled.length; j++) if (!masked[j]) m = Math.max(m, scaled[j] / T);
    const e = Array.from(scaled, (s, j) => (masked[j] ? 0 : Math.exp(s / T - m)));
    const z = e.reduce((a, b) => a + b, 0) || 1;
    return e.map((v) => v / z);
  }

  function strip(ctx, x, y, h, values, scale, width = STRIP_W) {
    const d = values.length;
    const w = width / d;
    for (let i = 0; i < d; i++) {
      ctx.fillStyle = divergingColor(signedByte(values[i], scale));
      ctx.fillRect(x + i * w, y, Math.ceil(w), h);
    }
  }

  function paint() {
    const tokens = model.get("tokens");
    const n = model.get("n_keys");
    const d = model.get("head_dim");
    const before = model.get("before_rotary") && model.get("has_rotary") && bytesOf(model.get("k_before")).length > 0;
    rotBox.checked = before;
    rotLabel.style.display = model.get("has_rotary") ? "" : "none";
    const T = model.get("temperature");
    tempValue.textContent = ` ${T.toFixed(2)}${T === 1 ? " (the model's)" : " (view only)"}`;
    const [layer, headIdx, query] = model.get("shown_of");
    title.textContent = `layer ${layer}, head ${headIdx}, query ${query} ${JSON.stringify(tokens[query] ?? "")}`;
    const shared = model.get("shared_with");
    gqa.textContent = shared.length > 1
      ? `reads key/value head ${model.get("kv_head")}, shared with query heads ${shared.join(", ")}`
      : `its own key/value head (${model.get("kv_head")})`;
    note.textContent = [model.get("rotary_note"), `scale = ${num(model.get("scaling"))} (1/√${d} = ${num(1 / Math.sqrt(d))})`,
      ...model.get("notes")].filter(Boolean).join(" · ");
    const q = float32sOf(model.get(before ? "q_before" : "q"));
    const kBytes = bytesOf(model.get(before ? "k_before" : "k"));
    const kScale = model.get(before ? "k_before_scale" : "k_scale");
    const vBytes = bytesOf(model.get("v"));
    const vScale = model.get("v_scale");
    const dots = float32sOf(model.get("dots"));
    const scaled = float32sOf(model.get("scaled"));
    const masked = bytesOf(model.get("masked"));
    const out = float32sOf(model.get("output"));
    const p = pattern();
    const rowH = Math.max(2, Math.min(18, MAX_H / Math.max(1, n)));
    const cols = { label: 4, k: LABEL_W, dot: LABEL_W + STRIP_W + GAP, scaled: LABEL_W + STRIP_W + GAP + NUM_W,
      mask: LABEL_W + STRIP_W + GAP + 2 * NUM_W, prob: LABEL_W + STRIP_W + GAP + 2 * NUM_W + 40 };
    cols.v = cols.prob + BAR_W + GAP;
    const width = cols.v + STRIP_W + 8;
    const height = TOP + n * rowH + 40;
    const ctx = sizeCanvas(canvas, width, height);
    ctx.globalAlpha = ready() ? 1 : 0.4;
    ctx.font = FONT;
    ctx.fillStyle = "#444";
    ctx.textBaseline = "middle";
    const headers = [["key", cols.label], [before ? "k (before rotary)" : "k", cols.k], ["q·k", cols.dot],
      ["× scale", cols.scaled], ["mask", cols.mask], [T === 1 ? "softmax" : `softmax(/${T.toFixed(2)})`, cols.prob],
      ["p × v", cols.v]];
    for (const [text, x] of headers) ctx.fillText(text, x, TOP - 10);
    ctx.fillText(before ? "q (before rotary)" : "q", cols.label, 14);
    let qMax = 0;
    for (const v of q) qMax = Math.max(qMax, Math.abs(v));
    strip(ctx, cols.k, 6, 16, q, qMax);
    ctx.fillStyle = "#666";
    ctx.fillText(`|q| = ${num(Math.hypot(...q))}`, cols.dot, 14);
    // weighted values: p_j v_j, one colour scale for the whole block
    let pvMax = 0;
    for (let j = 0; j < n; j++) for (let i = 0; i < d; i++) pvMax = Math.max(pvMax, Math.abs(p[j] * dequantizeSigned(vBytes[j * d + i], vScale)));
    const labels = rowH >= 10;
    for (let j = 0; j < n; j++) {
      const y = TOP + j * rowH;
      if (j === query) {
        ctx.fillStyle = "#fff4d6";
        ctx.fillRect(0, y, width, rowH);
      }
      if (labels) {
        ctx.fillStyle = masked[j] ? "#aaa" : "#222";
        ctx.fillText(fitText(ctx, `${j} ${tokens[j] ?? ""}`, LABEL_W - 8), cols.label, y + rowH / 2);
      }
      const kRow = Array.from(kBytes.subarray(j * d, (j + 1) * d), (b) => dequantizeSigned(b, kScale));
      strip(ctx, cols.k, y + 0.5, rowH - 1, kRow, kScale);
      if (labels) {
        ctx.fillStyle = masked[j] ? "#aaa" : "#222";
        ctx.fillText(num(dots[j]), cols.dot, y + rowH / 2);
        ctx.fillText(num(scaled[j]), cols.scaled, y + rowH / 2);
        ctx.fillText(masked[j] ? "−∞" : "0", cols.mask, y + rowH / 2);
      }
      ctx.fillStyle = "#4a7fb5";
      ctx.fillRect(cols.prob, y + 1, Math.max(0, p[j] * (BAR_W - 40)), rowH - 2);
      if (labels) {
        ctx.fillStyle = "#222";
        ctx.fillText(num(p[j]), cols.prob + BAR_W - 38, y + rowH / 2);
      }
      const pv = Array.from(vBytes.subarray(j * d, (j + 1) * d), (b) => p[j] * dequantizeSigned(b, vScale));
      strip(ctx, cols.v, y + 0.5, rowH - 1, pv, pvMax);
    }
    const yOut = TOP + n * rowH + 12;
    ctx.fillStyle = "#444";
    ctx.fillText("output = Σ p × v", cols.prob, yOut + 8);
    let oMax = 0;
    for (const v of out) oMax = Math.max(oMax, Math.abs(v));
    const outShown = T === 1 ? Array.from(out) : Array.from({ length: d }, (_, i) => {
      let s = 0;
      for (let j = 0; j < n; j++) s += p[j] * dequantizeSigned(vBytes[j * d + i], vScale);
      return s;
    });
    strip(ctx, cols.v, yOut, 16, outShown, Math.max(oMax, ...outShown.map(Math.abs)));
    geo = { rowH, n, width };
    Object.assign(canvas.dataset, { top: TOP, rowHeight: rowH, rows: n });
    if (ready()) {
      model.set("painted", model.get("painted") + 1);
    }
  }

  function rowAt(evt) {
    if (!geo) return -1;
    const box = canvas.getBoundingClientRect();
    const j = Math.floor((evt.clientY - box.top - TOP) / geo.rowH);
    return j >= 0 && j < geo.n ? j : -1;
  }
  canvas.addEventListener("click", (evt) => {
    const j = rowAt(evt);
    if (j >= 0) sel.set({ token: j }); // that token becomes the query
  });
  canvas.addEventListener("mousemove", (evt) => {
    const j = rowAt(evt);
    if (j < 0) return tip.hide();
    const p = pattern();
    const dots = float32sOf(model.get("dots"));
    const scaled = float32sOf(model.get("scaled"));
    const masked = bytesOf(model.get("masked"));
    tip.show(evt, `key ${j} ${JSON.stringify(model.get("tokens")[j] ?? "")}\nq·k ${num(dots[j])}  × scale ${num(scaled[j])}` +
      `\n${masked[j] ? "masked (−∞)" : "visible"}  p ${num(p[j])}\nclick: make it the query`);
  });
  canvas.addEventListener("mouseleave", () => tip.hide());

  let frameId = 0;
  function schedule() {
    if (!frameId) frameId = requestAnimationFrame(() => { frameId = 0; paint(); });
  }
  const keys = ["shown_of", "probs", "k", "v", "q", "temperature", "before_rotary", "notes"];
  for (const k of keys) model.on(`change:${k}`, schedule);
  sel.on(schedule);
  paint();
  return () => {
    for (const k of keys) model.off(`change:${k}`, schedule);
    sel.off(schedule);
  };
}

export default { render };
