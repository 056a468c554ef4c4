// HeadSweepView: the effect of ablating each head as a layers × heads heatmap, and the strongest heads
// as a list. Clicking a cell or a listed head sets the shared selection's layer and head.
// Pairs with nbinspect/views/head_sweep_view.py. Canvas only; text via fillText/textContent.
import { bytesOf, dequantizeSigned, float32sOf, int32sOf } from "./codecs.js";
import { DIVERGING_LUT, mapImage, sizeCanvas } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";

const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
const MAP_W = 360;
const MAP_H = 420;
const LEFT = 30;
const TOP = 20;
const BOTTOM = 18;

// Byte 0 means "not measured": grey instead of the ramp's deepest blue.
const LUT = (() => {
  const lut = DIVERGING_LUT.slice();
  lut[0] = lut[1] = lut[2] = 215;
  return lut;
})();

const CSS = `
.nbi-sweep { font: ${FONT}; color: #222; display: inline-block; position: relative; }
.nbi-sweep .nbi-title { font-weight: 600; font-size: 12px; margin: 0 0 2px 2px; }
.nbi-sweep .nbi-hint { color: #666; margin: 0 0 6px 2px; max-width: 640px; }
.nbi-sweep .nbi-body { display: flex; gap: 16px; align-items: flex-start; }
.nbi-sweep canvas { display: block; cursor: pointer; }
.nbi-sweep ol { margin: 0; padding-left: 22px; }
.nbi-sweep li button { font: inherit; border: none; background: none; cursor: pointer; padding: 1px 2px; text-align: left; }
.nbi-sweep li button:hover { text-decoration: underline; }
.nbi-sweep li button[aria-pressed="true"] { color: #b35c00; font-weight: 600; }
.nbi-sweep .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; box-shadow: 0 1px 4px rgba(0,0,0,.15); }
`;

const num = (v) => (Number.isFinite(v) ? (Math.abs(v) >= 100 || (v !== 0 && Math.abs(v) < 0.001) ? v.toExponential(2) : v.toFixed(3)) : "—");
const signed = (v) => (v > 0 ? "+" : "") + num(v);

async function render({ model, el: host }) {
  const sel = await bindSelection(model);
  const root = el("div", "nbi-sweep", host);
  exportButtons(root, "nbinspect-head-sweep");
  el("style", null, root).textContent = CSS;
  const title = el("div", "nbi-title", root);
  const hint = el("div", "nbi-hint", root);
  const body = el("div", "nbi-body", root);
  const canvas = el("canvas", "nbi-map", body);
  const side = el("div", null, body);
  el("div", "nbi-hint", side, "largest |effect|");
  const list = el("ol", null, side);
  const tip = tooltip(root);
  let image = null;
  let frame = 0;

  function geometry() {
    const rows = model.get("n_layers");
    const cols = model.get("n_heads");
    const cellW = Math.max(6, Math.min(32, Math.floor(MAP_W / Math.max(1, cols))));
    const cellH = Math.max(4, Math.min(16, Math.floor(MAP_H / Math.max(1, rows))));
    return { rows, cols, cellW, cellH, w: LEFT + cols * cellW + 6, h: TOP + rows * cellH + BOTTOM };
  }

  function valueAt(row, col) {
    const b = bytesOf(model.get("effect"))[row * model.get("n_heads") + col];
    return b === 0 ? NaN : dequantizeSigned(b, model.get("scale"));
  }

  function rebuild() {
    const g = geometry();
    const bytes = bytesOf(model.get("effect"));
    image = bytes.length === g.rows * g.cols ? mapImage(bytes, g.cols, g.rows, LUT) : null;
    list.replaceChildren();
    const top = int32sOf(model.get("top"));
    const effects = float32sOf(model.get("top_effects"));
    for (let i = 0; i < effects.length; i++) {
      const [layer, head] = [top[2 * i], top[2 * i + 1]];
      const b = el("button", null, el("li", null, list), `layer ${layer} · head ${head}: ${signed(effects[i])}`);
      b.type = "button";
      b.dataset.layer = String(layer);
      b.dataset.head = String(head);
      b.addEventListener("click", () => {
        sel.set({ layer, head });
        schedule();
      });
    }
    schedule();
  }

  function cellAt(evt) {
    const g = geometry();
    const r = canvas.getBoundingClientRect();
    const col = Math.floor((evt.clientX - r.left - LEFT) / g.cellW);
    const row = Math.floor((evt.clientY - r.top - TOP) / g.cellH);
    return row >= 0 && row < g.rows && col >= 0 && col < g.cols ? { row, col } : null;
  }

  canvas.addEventListener("click", (evt) => {
    const c = cellAt(evt);
    if (!c) return;
    sel.set({ layer: c.row, head: c.col });
    schedule();
  });
  canvas.addEventListener("mousemove", (evt) => {
    const c = cellAt(evt);
    if (!c) return tip.hide();
    const v = valueAt(c.row, c.col);
    tip.show(evt, `layer ${c.row} · head ${c.col}\n${Number.isNaN(v) ? "not measured" : `effect ${signed(v)}`}\nclick to select`);
  });
  canvas.addEventListener("mouseleave", () => tip.hide());

  function draw() {
    frame = 0;
    const g = geometry();
    title.textContent = `Head sweep · ${model.get("ablation")} ablation · ${model.get("metric_label")}`;
    hint.textContent =
      `unablated ${num(model.get("base_value"))} · colour: metric with the head ablated − unablated, red > 0 > blue, ` +
      `full at ±${num(model.get("scale"))}; grey: not measured` + (model.get("complete") ? "" : " (cancelled early)") +
      " · click a cell to select the head";
    const ctx = sizeCanvas(canvas, g.w, g.h);
    Object.assign(canvas.dataset, { left: LEFT, top: TOP, cellWidth: g.cellW, cellHeight: g.cellH, rows: g.rows, cols: g.cols });
    ctx.font = FONT;
    if (image) ctx.drawImage(image, LEFT, TOP, g.cols * g.cellW, g.rows * g.cellH);
    ctx.strokeStyle = "#999";
    ctx.lineWidth = 1;
    ctx.strokeRect(LEFT - 0.5, TOP - 0.5, g.cols * g.cellW + 1, g.rows * g.cellH + 1);
    const layer = sel.get("layer");
    const head = sel.get("head");
    if (layer >= 0 && layer < g.rows && head >= 0 && head < g.cols) {
      ctx.strokeStyle = "#ff8c00";
      ctx.lineWidth = 2;
      ctx.strokeRect(LEFT + head * g.cellW - 1, TOP + layer * g.cellH - 1, g.cellW + 2, g.cellH + 2);
    }
    ctx.fillStyle = "#555";
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    const every = Math.ceil(11 / g.cellH);
    for (let r = 0; r < g.rows; r += every) ctx.fillText(String(r), LEFT - 4, TOP + (r + 0.5) * g.cellH);
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    const everyCol = Math.ceil(12 / g.cellW);
    for (let c = 0; c < g.cols; c += everyCol) ctx.fillText(String(c), LEFT + (c + 0.5) * g.cellW, TOP - 3);
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText("heads →  (rows: layers)", LEFT, TOP + g.rows * g.cellH + 4);
    for (const b of list.querySelectorAll("button")) {
      b.setAttribute("aria-pressed", String(+b.dataset.layer === layer && +b.dataset.head === head));
    }
    root.dataset.layer = String(layer);
    root.dataset.head = String(head);
    model.set("painted", model.get("painted") + 1);
  }
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };

  const watched = ["effect", "scale", "top", "top_effects", "n_layers", "n_heads"];
  for (const k of watched) model.on(`change:${k}`, rebuild);
  for (const k of ["metric_label", "ablation", "complete"]) model.on(`change:${k}`, schedule);
  sel.on(schedule);
  rebuild();

  return () => {
    if (frame) cancelAnimationFrame(frame);
    for (const k of watched) model.off(`change:${k}`, rebuild);
    for (const k of ["metric_label", "ablation", "complete"]) model.off(`change:${k}`, schedule);
    sel.off(schedule);
  };
}

export default { render };
