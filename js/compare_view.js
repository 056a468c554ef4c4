// CompareView: relative change ‖A − B‖ / ‖A‖ between two checkpoints as a kind × layer heatmap (click a
// cell to select its layer), the tensors outside the layers, and the pieces that changed most.
// Pairs with nbinspect/views/compare_view.py. Canvas only; names via fillText/textContent.
import { float32sOf } from "./codecs.js";
import { LUT, fitText, sizeCanvas } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";
import { FONT, num } from "./charts.js";

const LABEL_W = 120;
const TOP = 20;
const MAX_W = 640;
const CELL_H = 20;

const CSS = `
.nbi-cmp { font: ${FONT}; color: #222; display: inline-block; position: relative; }
.nbi-cmp .nbi-head { display: flex; gap: 14px; align-items: baseline; margin: 0 0 6px 2px; font-size: 12px; flex-wrap: wrap; }
.nbi-cmp .nbi-title { font-weight: 600; }
.nbi-cmp .nbi-hint { color: #666; }
.nbi-cmp .nbi-list { white-space: pre-line; line-height: 1.45; margin-top: 6px; }
.nbi-cmp canvas { display: block; cursor: pointer; }
.nbi-cmp .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; }
`;

function colour(v, lo, hi, log) {
  if (!Number.isFinite(v)) return v > 0 ? "rgb(120,0,0)" : "#f0f0f0";
  const t = log ? (Math.log10(Math.max(v, 1e-12)) - lo) / (hi - lo || 1) : v / (hi || 1);
  const k = Math.max(0, Math.min(255, Math.round(t * 255))) * 3;
  return `rgb(${LUT[k]}, ${LUT[k + 1]}, ${LUT[k + 2]})`;
}

async function render({ model, el: host }) {
  const sel = await bindSelection(model);
  const root = el("div", "nbi-cmp", host);
  exportButtons(root, "nbinspect-compare");
  el("style", null, root).textContent = CSS;
  const head = el("div", "nbi-head", root);
  const title = el("span", "nbi-title", head);
  const logLabel = el("label", "nbi-hint", head);
  const logBox = el("input", null, logLabel);
  logBox.type = "checkbox";
  logLabel.appendChild(document.createTextNode(" log colour scale"));
  logBox.addEventListener("change", () => {
    model.set("log_scale", logBox.checked);
    model.save_changes();
  });
  const canvas = el("canvas", null, root);
  const list = el("div", "nbi-list", root);
  const tip = tooltip(root);
  let geo = null;

  function paint() {
    const [a, b] = model.get("names");
    const kinds = model.get("kinds");
    const L = model.get("n_layers");
    const grid = float32sOf(model.get("grid"));
    const log = model.get("log_scale");
    logBox.checked = log;
    title.textContent = model.get("identical")
      ? `${a} and ${b} have identical weights`
      : `relative change ‖${a} − ${b}‖ / ‖${a}‖ by layer and kind`;
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of grid) {
      if (Number.isFinite(v) && v > 0) {
        lo = Math.min(lo, Math.log10(v));
        hi = Math.max(hi, log ? Math.log10(v) : v);
      }
    }
    if (!Number.isFinite(lo)) { lo = -6; hi = log ? 0 : 1; }
    // At least three decades: nearly equal changes get nearly equal colours, not the ends of the ramp.
    if (log) lo = Math.min(lo, hi - 3);
    const cellW = Math.max(4, Math.min(28, Math.floor(MAX_W / Math.max(1, L))));
    const width = Math.max(420, LABEL_W + L * cellW + 8);
    const height = TOP + kinds.length * CELL_H + 24;
    const ctx = sizeCanvas(canvas, width, height);
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    const layer = sel.get("layer");
    kinds.forEach((kind, r) => {
      ctx.fillStyle = "#222";
      ctx.fillText(fitText(ctx, kind, LABEL_W - 8), 4, TOP + r * CELL_H + CELL_H / 2);
      for (let l = 0; l < L; l++) {
        ctx.fillStyle = colour(grid[r * L + l], lo, hi, log);
        ctx.fillRect(LABEL_W + l * cellW, TOP + r * CELL_H, cellW - 1, CELL_H - 1);
      }
    });
    ctx.strokeStyle = "#d62728";
    ctx.lineWidth = 2;
    ctx.strokeRect(LABEL_W + layer * cellW, TOP - 1, cellW - 1, kinds.length * CELL_H + 1);
    ctx.fillStyle = "#555";
    for (let l = 0; l < L; l += Math.max(1, Math.ceil(24 / cellW))) ctx.fillText(String(l), LABEL_W + l * cellW, 8);
    ctx.fillText(log ? `colour: log10 from ${num(lo)} to ${num(hi)}` : `colour: 0 to ${num(hi)}`, LABEL_W, TOP + kinds.length * CELL_H + 12);
    geo = { cellW, L, rows: kinds.length };
    Object.assign(canvas.dataset, { left: LABEL_W, top: TOP, cellWidth: cellW, cellHeight: CELL_H, layers: L });
    const outside = float32sOf(model.get("outside"));
    const top = float32sOf(model.get("top_values"));
    list.textContent = [
      "outside the layers: " + model.get("outside_kinds").map((k, i) => `${k} ${num(outside[i])}`).join(" · "),
      "changed most: " + model.get("top_names").map((n, i) => `${n} ${num(top[i])}`).join(" · "),
    ].join("\n");
    model.set("painted", model.get("painted") + 1);
  }

  function cellAt(evt) {
    if (!geo) return null;
    const box = canvas.getBoundingClientRect();
    const l = Math.floor((evt.clientX - box.left - LABEL_W) / geo.cellW);
    const r = Math.floor((evt.clientY - box.top - TOP) / CELL_H);
    return l >= 0 && l < geo.L && r >= 0 && r < geo.rows ? { l, r } : null;
  }
  canvas.addEventListener("click", (evt) => {
    const c = cellAt(evt);
    if (c) sel.set({ layer: c.l });
  });
  canvas.addEventListener("mousemove", (evt) => {
    const c = cellAt(evt);
    if (!c) return tip.hide();
    const v = float32sOf(model.get("grid"))[c.r * geo.L + c.l];
    tip.show(evt, `layer ${c.l}, ${model.get("kinds")[c.r]}: ${Number.isNaN(v) ? "no such tensor" : num(v)}`);
  });
  canvas.addEventListener("mouseleave", () => tip.hide());

  let frameId = 0;
  function schedule() {
    if (!frameId) frameId = requestAnimationFrame(() => { frameId = 0; paint(); });
  }
  const keys = ["grid", "log_scale", "names", "outside", "top_values"];
  for (const k of keys) model.on(`change:${k}`, schedule);
  sel.on(schedule);
  paint();
  return () => {
    for (const k of keys) model.off(`change:${k}`, schedule);
    sel.off(schedule);
  };
}

export default { render };
