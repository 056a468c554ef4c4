// PatchingView: recovered share of activation patching as heatmaps — residual stream, attention output
// and MLP output as layer × position, every head as layer × head. Clicking a cell sets the shared
// selection (layer + token, or layer + head). Pairs with nbinspect/views/patching_view.py.
// Canvas only; token text via fillText/textContent.
import { bytesOf, dequantizeSigned } from "./codecs.js";
import { DIVERGING_LUT, fitText, mapImage, sizeCanvas } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";

const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
const MAP_W = 300; // most width one position map takes
const MAP_H = 330; // most height of the layer rows
const LEFT = 30; // layer numbers
const TOP = 18; // map title
const BOTTOM = 60; // token labels, rotated
const TITLES = { resid: "residual stream (entering layer)", attn: "attention output", mlp: "MLP output", heads: "head outputs (all positions)" };

// Byte 0 means "not measured": grey instead of the ramp's deepest blue.
const LUT = (() => {
  const lut = DIVERGING_LUT.slice();
  lut[0] = lut[1] = lut[2] = 215;
  return lut;
})();

const CSS = `
.nbi-patch { font: ${FONT}; color: #222; display: inline-block; position: relative; }
.nbi-patch .nbi-title { font-weight: 600; font-size: 12px; margin: 0 0 2px 2px; }
.nbi-patch .nbi-hint { color: #666; margin: 0 0 6px 2px; }
.nbi-patch .nbi-maps { display: flex; gap: 14px; flex-wrap: wrap; align-items: flex-start; }
.nbi-patch canvas { display: block; cursor: pointer; }
.nbi-patch .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; box-shadow: 0 1px 4px rgba(0,0,0,.15); }
`;

const q = (s) => JSON.stringify(s);
const num = (v) => (Number.isFinite(v) ? v.toFixed(3) : "—");

async function render({ model, el: host }) {
  const sel = await bindSelection(model);
  const root = el("div", "nbi-patch", host);
  exportButtons(root, "nbinspect-patching");
  el("style", null, root).textContent = CSS;
  const title = el("div", "nbi-title", root);
  const hint = el("div", "nbi-hint", root);
  const maps = el("div", "nbi-maps", root);
  const tip = tooltip(root);
  const canvases = {};
  const images = {};
  let frame = 0;

  const L = () => model.get("n_layers");
  const n = () => model.get("tokens").length;
  const shape = (kind) => ({ rows: L() + (kind === "resid" ? 1 : 0), cols: kind === "heads" ? model.get("n_heads") : n() });

  function geometry(kind) {
    const { rows, cols } = shape(kind);
    const cellW = Math.max(4, Math.min(28, Math.floor(MAP_W / Math.max(1, cols))));
    const cellH = Math.max(3, Math.min(14, Math.floor(MAP_H / Math.max(1, rows))));
    return { rows, cols, cellW, cellH, w: LEFT + cols * cellW + 6, h: TOP + rows * cellH + BOTTOM };
  }

  function rebuild() {
    for (const c of Object.values(canvases)) c.remove();
    for (const k of Object.keys(canvases)) delete canvases[k];
    for (const kind of model.get("kinds")) {
      const { rows, cols } = shape(kind);
      const bytes = bytesOf(model.get(kind));
      images[kind] = bytes.length === rows * cols ? mapImage(bytes, cols, rows, LUT) : null;
      const canvas = el("canvas", `nbi-map nbi-${kind}`, maps);
      canvas.dataset.kind = kind;
      canvases[kind] = canvas;
      canvas.addEventListener("click", (evt) => click(kind, evt));
      canvas.addEventListener("mousemove", (evt) => hover(kind, evt));
      canvas.addEventListener("mouseleave", () => tip.hide());
    }
    schedule();
  }

  function cellAt(kind, evt) {
    const g = geometry(kind);
    const r = canvases[kind].getBoundingClientRect();
    const col = Math.floor((evt.clientX - r.left - LEFT) / g.cellW);
    const row = Math.floor((evt.clientY - r.top - TOP) / g.cellH);
    return row >= 0 && row < g.rows && col >= 0 && col < g.cols ? { row, col } : null;
  }

  function valueAt(kind, row, col) {
    const { cols } = shape(kind);
    const b = bytesOf(model.get(kind))[row * cols + col];
    return b === 0 ? NaN : dequantizeSigned(b, model.get("scale"));
  }

  function click(kind, evt) {
    const c = cellAt(kind, evt);
    if (!c) return;
    const layer = Math.min(c.row, L() - 1); // the residual map's last row is what leaves the last layer
    if (kind === "heads") sel.set({ layer, head: c.col });
    else sel.set({ layer, token: c.col });
    schedule();
  }

  function hover(kind, evt) {
    const c = cellAt(kind, evt);
    if (!c) return tip.hide();
    const v = valueAt(kind, c.row, c.col);
    const where = kind === "resid" ? (c.row === L() ? "leaving the last layer" : `entering layer ${c.row}`) : `layer ${c.row}`;
    let what;
    if (kind === "heads") what = `head ${c.col}, ${where}`;
    else {
      const clean = model.get("tokens")[c.col];
      const bad = model.get("corrupted_tokens")[c.col];
      what = `${where}, position ${c.col} ${q(clean)}` + (bad !== clean ? ` (corrupted: ${q(bad)})` : "");
    }
    tip.show(evt, `${TITLES[kind]}\n${what}\nrecovered share ${Number.isNaN(v) ? "not measured" : num(v)}\nclick to select`);
  }

  function drawMap(kind) {
    const canvas = canvases[kind];
    const g = geometry(kind);
    const ctx = sizeCanvas(canvas, g.w, g.h);
    Object.assign(canvas.dataset, { left: LEFT, top: TOP, cellWidth: g.cellW, cellHeight: g.cellH, rows: g.rows, cols: g.cols });
    ctx.font = FONT;
    ctx.fillStyle = "#333";
    ctx.textBaseline = "top";
    ctx.fillText(TITLES[kind], LEFT, 2);
    if (images[kind]) ctx.drawImage(images[kind], LEFT, TOP, g.cols * g.cellW, g.rows * g.cellH);
    ctx.strokeStyle = "#999";
    ctx.lineWidth = 1;
    ctx.strokeRect(LEFT - 0.5, TOP - 0.5, g.cols * g.cellW + 1, g.rows * g.cellH + 1);
    // The selection: the selected layer's row, and the selected token (or head) column.
    const layer = sel.get("layer");
    const col = kind === "heads" ? sel.get("head") : sel.get("token");
    ctx.strokeStyle = "#ff8c00";
    ctx.lineWidth = 1.5;
    if (layer >= 0 && layer < g.rows) ctx.strokeRect(LEFT - 1, TOP + layer * g.cellH, g.cols * g.cellW + 2, g.cellH);
    if (col >= 0 && col < g.cols) ctx.strokeRect(LEFT + col * g.cellW, TOP - 1, g.cellW, g.rows * g.cellH + 2);
    // Layer numbers every few rows.
    ctx.fillStyle = "#555";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const every = Math.ceil(11 / g.cellH);
    for (let r = 0; r < g.rows; r += every) ctx.fillText(kind === "resid" && r === L() ? "out" : String(r), LEFT - 4, TOP + (r + 0.5) * g.cellH);
    if (kind === "resid" && L() % every) ctx.fillText("out", LEFT - 4, TOP + (L() + 0.5) * g.cellH);
    // Column labels, rotated: token texts (corrupted ones marked), or head numbers.
    const tokens = model.get("tokens");
    const bad = model.get("corrupted_tokens");
    const everyCol = Math.ceil(11 / g.cellW);
    ctx.textAlign = "right";
    for (let c = 0; c < g.cols; c += kind === "heads" ? 1 : everyCol) {
      ctx.save();
      ctx.translate(LEFT + (c + 0.5) * g.cellW, TOP + g.rows * g.cellH + 4);
      ctx.rotate(-Math.PI / 3);
      const differs = kind !== "heads" && bad[c] !== tokens[c];
      ctx.fillStyle = differs ? "#b35c00" : "#333";
      ctx.fillText(kind === "heads" ? String(c) : fitText(ctx, tokens[c], BOTTOM - 6), 0, 0);
      ctx.restore();
    }
  }

  function draw() {
    frame = 0;
    const pos = model.get("position");
    title.textContent = `Activation patching · ${model.get("metric_label")} at position ${pos}`;
    hint.textContent =
      `clean ${num(model.get("clean_value"))} · corrupted ${num(model.get("corrupted_value"))} · colour: recovered share ` +
      `(patched − corrupted)/(clean − corrupted), red > 0 > blue, full at ±${num(model.get("scale"))}; grey: not measured` +
      (model.get("complete") ? "" : " (cancelled early)") + " · orange labels: tokens that differ · click a cell to select";
    for (const kind of Object.keys(canvases)) drawMap(kind);
    root.dataset.layer = String(sel.get("layer"));
    root.dataset.token = String(sel.get("token"));
    root.dataset.head = String(sel.get("head"));
    model.set("painted", model.get("painted") + 1);
  }
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };

  const onData = () => rebuild();
  const watched = ["kinds", "resid", "attn", "mlp", "heads", "scale", "tokens"];
  for (const k of watched) model.on(`change:${k}`, onData);
  sel.on(schedule);
  rebuild();

  return () => {
    if (frame) cancelAnimationFrame(frame);
    for (const k of watched) model.off(`change:${k}`, onData);
    sel.off(schedule);
  };
}

export default { render };
