// ParametersView: parameters by kind (bars with count, share and memory; click a kind to focus it), the
// focused weights' histogram with the usual initialisations drawn over it (and a fresh copy's, on
// request), the std of each kind per layer (click a layer to select it), and a matrix's singular values.
// Pairs with nbinspect/views/parameters_view.py. Canvas only; names go through fillText/textContent.
import { float32sOf, bytesOf } from "./codecs.js";
import { sizeCanvas, fitText } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";
import { FONT, LINE_COLOURS, axes, bars, bytes, count, frame, legend, line, maxOf, num, pct } from "./charts.js";

const KIND_W = 430;
const ROW_H = 20;
const NAME_W = 150;
const HIST_W = 470;
const HIST_H = 190;
const STD_H = 150;

const CSS = `
.nbi-par { font: ${FONT}; color: #222; display: inline-block; position: relative; }
.nbi-par .nbi-head { display: flex; gap: 14px; align-items: baseline; margin: 0 0 6px 2px; font-size: 12px; flex-wrap: wrap; }
.nbi-par .nbi-title { font-weight: 600; }
.nbi-par .nbi-hint { color: #666; }
.nbi-par .nbi-body { display: flex; gap: 20px; align-items: flex-start; flex-wrap: wrap; }
.nbi-par .nbi-col { display: flex; flex-direction: column; gap: 6px; }
.nbi-par .nbi-controls { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
.nbi-par button { font: inherit; padding: 1px 7px; border: 1px solid #bbb; background: #f6f6f6; cursor: pointer; }
.nbi-par button[aria-pressed="true"] { background: #dbe8f5; border-color: #6aa0d8; }
.nbi-par select { font: inherit; max-width: 300px; }
.nbi-par .nbi-stats { color: #333; white-space: pre-line; line-height: 1.45; }
.nbi-par canvas { display: block; }
.nbi-par canvas.nbi-click { cursor: pointer; }
.nbi-par .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; }
`;

async function render({ model, el: host }) {
  const sel = await bindSelection(model);
  const root = el("div", "nbi-par", host);
  exportButtons(root, "nbinspect-parameters");
  el("style", null, root).textContent = CSS;
  const head = el("div", "nbi-head", root);
  const title = el("span", "nbi-title", head);
  const rotary = el("span", "nbi-hint", head);
  const body = el("div", "nbi-body", root);
  const left = el("div", "nbi-col", body);
  const kindsCanvas = el("canvas", "nbi-click", left);
  const notes = el("div", "nbi-hint", left);
  const right = el("div", "nbi-col", body);
  const controls = el("div", "nbi-controls", right);
  const scopeButtons = {};
  for (const [scope, label] of [["all", "all layers"], ["layer", "selected layer"]]) {
    const b = el("button", null, controls, label);
    b.type = "button";
    b.addEventListener("click", () => {
      model.set("focus_tensor", "");
      model.set("focus_scope", scope);
      model.save_changes();
    });
    scopeButtons[scope] = b;
  }
  const picker = el("select", null, controls);
  picker.addEventListener("change", () => {
    model.set("focus_tensor", picker.value);
    if (!picker.value) model.set("focus_scope", "all");
    model.save_changes();
  });
  const toggles = {};
  for (const [name, label] of [["show_fresh", "fresh copy"], ["want_svd", "singular values"]]) {
    const lab = el("label", "nbi-hint", controls);
    const box = el("input", null, lab);
    box.type = "checkbox";
    lab.appendChild(document.createTextNode(` ${label}`));
    box.addEventListener("change", () => {
      model.set(name, box.checked);
      model.save_changes();
    });
    toggles[name] = box;
  }
  const logLab = el("label", "nbi-hint", controls);
  const logBox = el("input", null, logLab);
  logBox.type = "checkbox";
  logBox.checked = true;
  logLab.appendChild(document.createTextNode(" log counts"));
  logBox.addEventListener("change", () => paint());
  const histTitle = el("div", "nbi-title", right);
  const hist = el("canvas", null, right);
  const stats = el("div", "nbi-stats", right);
  const svdCanvas = el("canvas", null, right);
  const stdTitle = el("div", "nbi-hint", root);
  const stdCanvas = el("canvas", "nbi-click", root);
  const tip = tooltip(root);
  let stdFrame = null;

  const kinds = () => model.get("kinds");
  const counts = () => Array.from(new Float64Array(bytesOf(model.get("kind_counts")).slice().buffer));
  const memory = () => Array.from(new Float64Array(bytesOf(model.get("kind_bytes")).slice().buffer));

  function paintKinds() {
    const ks = kinds();
    const c = counts();
    const m = memory();
    const total = model.get("total") || 1;
    const ctx = sizeCanvas(kindsCanvas, KIND_W, ks.length * ROW_H + 6);
    ctx.font = FONT;
    const focus = model.get("focus_kind");
    const barW = KIND_W - NAME_W - 130;
    const top = Math.max(...c, 1);
    ks.forEach((k, i) => {
      const y = i * ROW_H + 3;
      if (k === focus) {
        ctx.fillStyle = "#e8f0f8";
        ctx.fillRect(0, y, KIND_W, ROW_H);
      }
      ctx.fillStyle = "#222";
      ctx.textBaseline = "middle";
      ctx.fillText(fitText(ctx, k, NAME_W - 6), 4, y + ROW_H / 2);
      ctx.fillStyle = c[i] > 0 ? "#4a7fb5" : "#bbb";
      const w = c[i] > 0 ? Math.max(1, (c[i] / top) * barW) : 0;
      ctx.fillRect(NAME_W, y + 4, w, ROW_H - 8);
      ctx.fillStyle = "#333";
      const tied = c[i] === 0 && model.get("kind_notes")[i].includes("tied");
      const text = tied ? "tied (0 extra)" : `${count(c[i])}  ${pct(c[i] / total)}  ${bytes(m[i])}`;
      ctx.fillText(text, NAME_W + barW + 6, y + ROW_H / 2);
    });
    kindsCanvas.dataset.rows = String(ks.length);
    kindsCanvas.dataset.rowHeight = String(ROW_H);
  }

  function rowAt(evt) {
    const box = kindsCanvas.getBoundingClientRect();
    const i = Math.floor((evt.clientY - box.top - 3) / ROW_H);
    return i >= 0 && i < kinds().length ? i : -1;
  }
  kindsCanvas.addEventListener("click", (evt) => {
    const i = rowAt(evt);
    if (i < 0) return;
    model.set("focus_tensor", "");
    model.set("focus_kind", kinds()[i]);
    model.set("focus_scope", "all");
    model.save_changes();
  });
  kindsCanvas.addEventListener("mousemove", (evt) => {
    const i = rowAt(evt);
    if (i < 0) return tip.hide();
    tip.show(evt, `${kinds()[i]}: ${model.get("kind_notes")[i]}`);
  });
  kindsCanvas.addEventListener("mouseleave", () => tip.hide());

  function paintHist() {
    const counts = float32sOf(model.get("hist"));
    const [lo, hi] = model.get("hist_range");
    const labels = model.get("init_labels");
    const init = float32sOf(model.get("init_counts"));
    const fresh = float32sOf(model.get("fresh_hist"));
    const n = counts.length;
    const logY = logBox.checked;
    const ctx = sizeCanvas(hist, HIST_W, HIST_H + 56);
    const f = frame(44, 8, HIST_W - 54, HIST_H - 24, lo, hi, 0, Math.max(maxOf(counts), maxOf(fresh)), logY);
    bars(ctx, f, counts);
    const centres = Array.from({ length: n }, (_, i) => lo + ((i + 0.5) * (hi - lo)) / n);
    const entries = [["weights", "#6b9ac4"]];
    labels.forEach((label, j) => {
      const ys = Array.from(init.subarray(j * n, (j + 1) * n));
      line(ctx, f, centres, ys, LINE_COLOURS[j], 1.5);
      entries.push([label, LINE_COLOURS[j]]);
    });
    if (fresh.length === n) {
      line(ctx, f, centres, Array.from(fresh), "#000", 1.5, [4, 3]);
      entries.push(["fresh copy", "#000"]);
    }
    axes(ctx, f, { xLabel: "w", y1: null });
    legend(ctx, 8, HIST_H + 12, entries, HIST_W - 16);
    hist.dataset.bins = String(n);
  }

  function paintStats() {
    const s = model.get("stats");
    const lines = [
      `${count(s.n ?? 0)} weights · mean ${num(s.mean)} · std ${num(s.std)} · max |w| ${num(s.max_abs)}`,
      `excess kurtosis ${num(s.kurtosis)} (0 for a normal, −1.2 for a uniform) · near zero ${pct(s.near_zero ?? 0)} (|w| ≤ 10⁻³ × its tensor's max |w|)`,
    ];
    if (model.get("fresh_note")) lines.push(model.get("fresh_note"));
    if (model.get("svd_note")) lines.push(model.get("svd_note"));
    stats.textContent = lines.join("\n");
  }

  function paintSvd() {
    const s = float32sOf(model.get("svd"));
    if (!s.length) {
      svdCanvas.style.display = "none";
      return;
    }
    svdCanvas.style.display = "block";
    const ctx = sizeCanvas(svdCanvas, HIST_W, 120);
    const f = frame(44, 6, HIST_W - 54, 90, 0, s.length - 1, 0, maxOf(s));
    line(ctx, f, Array.from(s, (_, i) => i), Array.from(s), "#4a7fb5");
    axes(ctx, f, { xLabel: "singular value index", y1: maxOf(s), y0: 0 });
  }

  function paintStd() {
    const names = model.get("std_kinds");
    const L = model.get("n_layers");
    const std = float32sOf(model.get("std_by_layer"));
    stdTitle.textContent = "std of each kind's weights by layer (click a layer to select it)";
    const ctx = sizeCanvas(stdCanvas, KIND_W + HIST_W + 20, STD_H + 40);
    const f = frame(50, 8, KIND_W + HIST_W - 50, STD_H - 24, 0, Math.max(1, L - 1), 0, maxOf(std) * 1.05);
    stdFrame = f;
    const layer = sel.get("layer");
    ctx.fillStyle = "#eef3f8";
    ctx.fillRect(f.px(layer) - 4, f.top, 8, f.height);
    const entries = [];
    const xs = Array.from({ length: L }, (_, i) => i);
    names.forEach((name, j) => {
      const ys = Array.from(std.subarray(j * L, (j + 1) * L));
      const colour = LINE_COLOURS[j % LINE_COLOURS.length];
      const focused = name === model.get("focus_kind");
      line(ctx, f, xs, ys, colour, focused ? 3 : 1.2);
      entries.push([name, colour]);
    });
    axes(ctx, f, { xLabel: "layer", y1: maxOf(std) * 1.05, y0: 0 });
    legend(ctx, 50, STD_H + 12, entries, KIND_W + HIST_W - 40);
    Object.assign(stdCanvas.dataset, { left: f.left, width: f.width, layers: L });
  }
  stdCanvas.addEventListener("click", (evt) => {
    if (!stdFrame) return;
    const box = stdCanvas.getBoundingClientRect();
    const layer = Math.round(stdFrame.xOf(evt.clientX - box.left));
    const L = model.get("n_layers");
    if (layer < 0 || layer >= L) return;
    sel.set({ layer });
    model.set("focus_tensor", "");
    model.set("focus_scope", "layer");
    model.save_changes();
  });

  function paintControls() {
    const scope = model.get("focus_scope");
    for (const [k, b] of Object.entries(scopeButtons)) b.setAttribute("aria-pressed", String(scope === k));
    const names = model.get("kind_tensors");
    picker.replaceChildren();
    const none = el("option", null, picker, `— one tensor of ${model.get("focus_kind")} —`);
    none.value = "";
    for (const name of names) {
      const o = el("option", null, picker, name);
      o.value = name;
    }
    picker.value = scope === "tensor" ? model.get("focus_tensor") : "";
    toggles.show_fresh.checked = model.get("show_fresh");
    toggles.want_svd.checked = model.get("want_svd");
  }

  function paint() {
    title.textContent = `Parameters: ${count(model.get("total"))} (${bytes(model.get("total_bytes"))})`;
    rotary.textContent = model.get("rotary");
    notes.textContent = "click a kind to see its weights; tied tensors are counted once";
    histTitle.textContent = model.get("focus_title");
    paintKinds();
    paintControls();
    paintHist();
    paintStats();
    paintSvd();
    paintStd();
    model.set("painted", model.get("painted") + 1);
  }

  let frameId = 0;
  const schedule = () => {
    if (!frameId) frameId = requestAnimationFrame(() => { frameId = 0; paint(); });
  };
  const onSel = () => schedule();
  const keys = ["kinds", "kind_counts", "kind_notes", "total", "rotary", "focus_kind", "focus_scope", "focus_tensor",
    "focus_title", "hist", "hist_range", "stats", "init_counts", "fresh_hist", "fresh_note", "std_by_layer", "svd",
    "svd_note", "kind_tensors", "show_fresh", "want_svd"];
  for (const k of keys) model.on(`change:${k}`, schedule);
  sel.on(onSel);
  paint();
  return () => {
    for (const k of keys) model.off(`change:${k}`, schedule);
    sel.off(onSel);
  };
}

export default { render };
