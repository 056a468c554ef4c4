// NeuronView: one layer's top-k neurons as a token × neuron heatmap (left), the displayed neuron's
// activation over the text and the layer's activation histogram (right).
// Pairs with nbinspect/views/neuron_view.py. Canvas only; token text via fillText/textContent.
import { bytesOf, dequantizeSigned, float32sOf, int32sOf } from "./codecs.js";
import { divergingColor, divergingImage, fitText, sizeCanvas, tokenBoxes } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";

const HEAT_W = 400; // most width the neuron columns take (the whole view fits a ~900 px output area)
const HEAT_H = 560; // most height the token rows take
const LABEL_PX = 84; // token labels left of the heatmap
const TOP_PX = 44; // neuron numbers above it
const SIDE_W = 380; // text strip and histogram
const HIST_H = 150;
const LINE_H = 20;
const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
const TEXT_FONT = "13px ui-monospace, 'DejaVu Sans Mono', monospace";
const SHARED = new Set(["layer", "neuron", "token"]); // live in the shared Selection, not in this view
const RANK_LABELS = { max_abs: "max |a|", variance: "variance" };

const CSS = `
.nbi-neur { font: ${FONT}; color: #222; display: inline-block; position: relative; outline: none; }
.nbi-neur:focus-visible { box-shadow: 0 0 0 2px #6aa0d8; }
.nbi-neur .nbi-head { display: flex; gap: 12px; align-items: baseline; margin: 0 0 6px 2px; font-size: 12px; flex-wrap: wrap; }
.nbi-neur .nbi-title { font-weight: 600; }
.nbi-neur .nbi-hint { color: #777; }
.nbi-neur button { font: inherit; padding: 1px 7px; border: 1px solid #bbb; background: #f6f6f6; cursor: pointer; }
.nbi-neur button[aria-pressed="true"] { background: #dbe8f5; border-color: #6aa0d8; }
.nbi-neur .nbi-body { display: flex; gap: 18px; align-items: flex-start; }
.nbi-neur .nbi-side { display: flex; flex-direction: column; gap: 8px; width: ${SIDE_W}px; }
.nbi-neur .nbi-strip { max-height: 240px; overflow-y: auto; border: 1px solid #ddd; }
.nbi-neur .nbi-caption { color: #555; }
.nbi-neur .nbi-legend { color: #444; white-space: pre-line; line-height: 1.45; }
.nbi-neur canvas { display: block; }
.nbi-neur canvas.nbi-heat { cursor: pointer; }
.nbi-neur .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; box-shadow: 0 1px 4px rgba(0,0,0,.15); }
`;


const pct = (f) => `${(100 * f).toFixed(f > 0 && f < 0.01 ? 2 : 1)}%`;
const num = (v) => (Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.01) ? v.toExponential(2) : v.toFixed(3));
const q = (s) => JSON.stringify(s); // shows quotes and escapes, so spaces and newlines are visible

async function render({ model, el: host }) {
  const sel = await bindSelection(model);
  const root = el("div", "nbi-neur", host);
  exportButtons(root, "nbinspect-neuron");
  root.tabIndex = 0;
  root.dataset.lmSuppressShortcuts = "true"; // arrow keys are ours, not the notebook's
  el("style", null, root).textContent = CSS;
  const head = el("div", "nbi-head", root);
  const title = el("span", "nbi-title", head);
  const rankBox = el("span", null, head);
  el("span", "nbi-hint", rankBox, "rank by ");
  const rankButtons = {};
  for (const [key, label] of Object.entries(RANK_LABELS)) {
    const b = el("button", null, rankBox, label);
    b.type = "button";
    b.dataset.rank = key;
    b.addEventListener("click", () => {
      if (model.get("rank_by") === key) return;
      model.set("rank_by", key); // Python re-ranks and sends the new columns
      model.save_changes();
      schedule();
    });
    rankButtons[key] = b;
  }
  const logLabel = el("label", "nbi-hint", head);
  const logBox = el("input", null, logLabel);
  logBox.type = "checkbox";
  logLabel.appendChild(document.createTextNode(" log counts"));
  logBox.addEventListener("change", () => {
    model.set("log_counts", logBox.checked);
    model.save_changes();
    schedule();
  });
  const hint = el("span", "nbi-hint", head);
  const body = el("div", "nbi-body", root);
  const heat = el("canvas", "nbi-heat", body);
  const side = el("div", "nbi-side", body);
  const stripCaption = el("div", "nbi-caption", side);
  const stripBox = el("div", "nbi-strip", side);
  const strip = el("canvas", "nbi-text", stripBox);
  const histCaption = el("div", "nbi-caption", side);
  const hist = el("canvas", "nbi-hist", side);
  const legend = el("div", "nbi-legend", side);
  const tip = tooltip(root);

  let heatImage = null;
  let frame = 0;
  let paintedKey = "";
  let boxes = []; // text strip: [x, y, w, token index] of each drawn token

  const get = (k) => (SHARED.has(k) ? sel.get(k) : model.get(k));
  const ready = () => get("shown_layer") === get("layer") && get("shown_rank_by") === get("rank_by");
  const indices = () => int32sOf(get("top_indices"));

  function displayed() {
    const n = get("neuron");
    if (n >= 0) return n;
    const idx = indices();
    return ready() && idx.length ? idx[0] : -1;
  }

  // The displayed neuron's activation per token: from the heatmap at once when it is one of its columns,
  // else from the column Python sends after the selection moved. null while neither is there.
  function neuronValues() {
    const n = displayed();
    const tokens = get("tokens").length;
    if (n < 0) return null;
    if (ready() && get("heatmap_block") === 1) {
      const c = indices().indexOf(n);
      if (c >= 0) {
        const k = indices().length;
        const bytes = bytesOf(get("heatmap"));
        const vals = new Uint8Array(tokens);
        for (let i = 0; i < tokens; i++) vals[i] = bytes[i * k + c];
        return { bytes: vals, scale: float32sOf(get("heatmap_scales"))[c] };
      }
    }
    const of = get("neuron_of");
    if (of[0] === get("layer") && of[1] === n) return { bytes: bytesOf(get("neuron_values")), scale: get("neuron_scale") };
    return null;
  }

  function rebuildHeat() {
    const k = indices().length;
    const rows = get("heatmap_rows");
    const bytes = bytesOf(get("heatmap"));
    heatImage = k > 0 && rows > 0 && bytes.length === k * rows ? divergingImage(bytes, k, rows) : null;
  }

  function geometry() {
    const k = Math.max(1, indices().length);
    const rows = Math.max(1, get("heatmap_rows"));
    const colW = Math.max(6, Math.min(24, Math.floor(HEAT_W / k)));
    const rowH = Math.min(16, HEAT_H / rows);
    return { k, rows, colW, rowH, left: LABEL_PX, top: TOP_PX, block: get("heatmap_block"), labels: rowH >= 9 };
  }

  function drawHeat() {
    const g = geometry();
    const w = g.left + g.k * g.colW + 8;
    const h = g.top + g.rows * g.rowH + 8;
    const ctx = sizeCanvas(heat, w, h);
    // Where column c and row r sit, for automation (tests click columns through it).
    Object.assign(heat.dataset, { left: g.left, top: g.top, colWidth: g.colW, rowHeight: g.rowH, cols: g.k, rows: g.rows, block: g.block });
    ctx.font = FONT;
    if (heatImage) {
      ctx.globalAlpha = ready() ? 1 : 0.35; // stale columns, faded until the new layer arrives
      ctx.drawImage(heatImage, g.left, g.top, g.k * g.colW, g.rows * g.rowH);
      ctx.globalAlpha = 1;
    }
    ctx.strokeStyle = "#999";
    ctx.lineWidth = 1;
    ctx.strokeRect(g.left - 0.5, g.top - 0.5, g.k * g.colW + 1, g.rows * g.rowH + 1);
    const tokens = get("tokens");
    const t = get("token");
    if (t >= 0 && t < tokens.length) {
      ctx.fillStyle = "rgba(255, 165, 0, 0.28)";
      ctx.fillRect(g.left, g.top + Math.floor(t / g.block) * g.rowH, g.k * g.colW, Math.max(g.rowH, 2));
    }
    const idx = indices();
    const c = idx.indexOf(displayed());
    if (c >= 0 && ready()) {
      ctx.strokeStyle = get("neuron") >= 0 ? "#d62728" : "#888";
      ctx.lineWidth = 2;
      ctx.strokeRect(g.left + c * g.colW - 1, g.top - 1, g.colW + 2, g.rows * g.rowH + 2);
    }
    // Neuron numbers, rotated, above their columns.
    ctx.textBaseline = "middle";
    const every = Math.ceil(12 / g.colW); // narrow columns: number every few, and always the displayed one
    for (let j = 0; j < idx.length; j++) {
      if (j % every && j !== c) continue;
      ctx.save();
      ctx.translate(g.left + (j + 0.5) * g.colW, g.top - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.fillStyle = j === c ? "#d62728" : "#555";
      ctx.fillText(String(idx[j]), 0, 0);
      ctx.restore();
    }
    ctx.textAlign = "right";
    const label = (r, on) => {
      const i = Math.min(r * g.block, tokens.length - 1);
      ctx.fillStyle = on ? "#b35c00" : "#333";
      ctx.fillText(fitText(ctx, tokens[i], LABEL_PX - 8), g.left - 4, g.top + (r + 0.5) * g.rowH);
    };
    if (g.labels) for (let r = 0; r < g.rows; r++) label(r, t >= 0 && Math.floor(t / g.block) === r);
    else if (t >= 0 && t < tokens.length) label(Math.floor(t / g.block), true);
  }

  function drawStrip() {
    const tokens = get("tokens");
    const vals = neuronValues();
    const t = get("token");
    // Lay the tokens out left to right, wrapping; a newline token ends its line.
    const laid = tokenBoxes(tokens, { font: TEXT_FONT, maxWidth: SIDE_W - 8, right: SIDE_W - 4, lineHeight: LINE_H, newlines: true });
    boxes = laid.boxes;
    const ctx = sizeCanvas(strip, SIDE_W - 2, laid.height);
    ctx.font = TEXT_FONT;
    ctx.textBaseline = "middle";
    for (const [bx, by, w, i] of boxes) {
      ctx.fillStyle = vals ? divergingColor(vals.bytes[i]) : "#f2f2f2";
      ctx.fillRect(bx, by, w, LINE_H - 2);
      if (i === t) {
        ctx.strokeStyle = "#ff8c00";
        ctx.lineWidth = 2;
        ctx.strokeRect(bx + 1, by + 1, w - 2, LINE_H - 4);
      }
      ctx.fillStyle = "#111";
      ctx.fillText(laid.texts[i], bx + 1, by + (LINE_H - 2) / 2);
    }
    strip.dataset.lineHeight = LINE_H;
    const n = displayed();
    stripCaption.textContent =
      n < 0 ? "text coloured by a neuron — click a heatmap column"
      : `text coloured by neuron ${n}${get("neuron") < 0 ? " (the top one; click a column to choose)" : ""}` +
        (vals ? ` · red > 0 > blue, max |a| ${num(vals.scale)}` : " · loading…");
  }

  function drawHist() {
    const counts = int32sOf(get("histogram"));
    const edges = float32sOf(get("histogram_edges"));
    const ctx = sizeCanvas(hist, SIDE_W, HIST_H);
    ctx.font = FONT;
    const pad = { l: 8, r: 8, t: 6, b: 18 };
    const W = SIDE_W - pad.l - pad.r;
    const H = HIST_H - pad.t - pad.b;
    if (!counts.length || edges.length !== counts.length + 1) return;
    const log = get("log_counts");
    const f = log ? (c) => Math.log1p(c) : (c) => c;
    const top = Math.max(1, ...Array.from(counts, f));
    const lo = edges[0];
    const hi = edges[edges.length - 1];
    const xOf = (v) => pad.l + ((v - lo) / (hi - lo)) * W;
    const bw = W / counts.length;
    ctx.globalAlpha = ready() ? 1 : 0.35;
    ctx.fillStyle = "#6aa0d8";
    for (let i = 0; i < counts.length; i++) {
      if (!counts[i]) continue;
      const h = Math.max(1, (f(counts[i]) / top) * H);
      ctx.fillRect(pad.l + i * bw, pad.t + H - h, Math.max(1, bw - 0.5), h);
    }
    ctx.globalAlpha = 1;
    ctx.strokeStyle = "#999";
    ctx.beginPath();
    ctx.moveTo(pad.l, pad.t + H + 0.5);
    ctx.lineTo(pad.l + W, pad.t + H + 0.5);
    ctx.stroke();
    ctx.fillStyle = "#555";
    ctx.textBaseline = "top";
    ctx.textAlign = "left";
    ctx.fillText(num(lo), pad.l, pad.t + H + 4);
    ctx.textAlign = "right";
    ctx.fillText(num(hi), pad.l + W, pad.t + H + 4);
    if (lo < 0 && hi > 0) {
      ctx.textAlign = "center";
      ctx.fillText("0", xOf(0), pad.t + H + 4);
      ctx.strokeStyle = "#bbb";
      ctx.beginPath();
      ctx.moveTo(xOf(0) + 0.5, pad.t);
      ctx.lineTo(xOf(0) + 0.5, pad.t + H);
      ctx.stroke();
    }
    // Where the hovered token's activation of the displayed neuron falls.
    const t = get("token");
    const vals = neuronValues();
    if (vals && t >= 0 && t < vals.bytes.length) {
      const v = dequantizeSigned(vals.bytes[t], vals.scale);
      ctx.fillStyle = "#ff8c00";
      ctx.fillRect(Math.round(xOf(v)) - 1, pad.t, 2, H);
    }
    Object.assign(hist.dataset, { left: pad.l, width: W, bins: counts.length });
  }

  function drawLegend() {
    const sat = get("saturated_fraction");
    const note = get("saturation_note");
    const layerMax = get("max_abs");
    legend.textContent = [
      `dead ${pct(get("dead_fraction"))} — |a| ≤ ${get("dead_threshold")} × the layer's max |a| (${num(layerMax)}) at every token`,
      sat < 0 ? note : `saturated ${pct(sat)}${note.slice("saturated".length)}`,
      `outliers ${pct(get("outlier_fraction"))} — max |a| > ${get("outlier_factor")} × the median neuron's max |a|`,
    ].join("\n");
  }

  function draw() {
    frame = 0;
    const L = get("layer");
    const n = displayed();
    title.textContent = `Layer ${L} · neuron ${n < 0 ? "—" : n}`;
    const rank = get("rank_by");
    for (const [key, b] of Object.entries(rankButtons)) b.setAttribute("aria-pressed", String(key === rank));
    logBox.checked = get("log_counts");
    const block = get("heatmap_block");
    hint.textContent = ready()
      ? `top ${indices().length} of ${get("n_neurons")} neurons by ${RANK_LABELS[rank]} · columns scaled to their own max |a|, shade ∝ √|a|` +
        (block > 1 ? ` · ${block} tokens per row (largest |a|)` : "") +
        " · click a column, ↑/↓ layer, ←/→ neuron"
      : "loading this layer…";
    histCaption.textContent = `all ${get("n_neurons")} neurons × ${get("tokens").length} tokens of layer ${get("shown_layer")}` + (get("log_counts") ? " (log counts)" : "");
    drawHeat();
    drawStrip();
    drawHist();
    drawLegend();
    if (ready()) root.dataset.drawnAt = String(performance.now()); // for benchmarks: data on screen
    root.dataset.layer = String(L);
    root.dataset.neuron = String(get("neuron"));
    root.dataset.token = String(get("token"));
    const key = `${L},${rank},${indices().length}`;
    if (ready() && heatImage && paintedKey !== key) {
      paintedKey = key;
      root.dataset.painted = String(L);
      model.set("painted", get("painted") + 1);
    }
  }
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };

  function setToken(i) {
    if (i === get("token")) return;
    sel.set({ token: i }, { throttle: true }); // hover moves fast: Python hears at most every 100 ms
    schedule();
  }

  function setNeuron(n) {
    if (n === get("neuron")) return;
    sel.set({ neuron: n }); // every linked view repaints now; Python sends the column if it has to
    schedule();
  }

  function setLayer(l) {
    const L = get("n_layers");
    const v = Math.max(0, Math.min(L - 1, l));
    if (v === get("layer")) return;
    sel.set({ layer: v });
    schedule();
  }

  const showTip = tip.show;
  const hideTip = tip.hide;

  function heatCell(evt) {
    const g = geometry();
    const r = heat.getBoundingClientRect();
    const x = evt.clientX - r.left - g.left;
    const y = evt.clientY - r.top - g.top;
    const c = Math.floor(x / g.colW);
    const row = Math.floor(y / g.rowH);
    return { g, c: x >= 0 && c < g.k ? c : -1, row: y >= 0 && row < g.rows ? row : -1, x, y };
  }

  heat.addEventListener("click", (evt) => {
    const { c } = heatCell(evt);
    const idx = indices();
    if (c >= 0 && c < idx.length && ready()) setNeuron(idx[c]);
    root.focus();
  });
  heat.addEventListener("mousemove", (evt) => {
    const { g, c, row, x } = heatCell(evt);
    const tokens = get("tokens");
    const idx = indices();
    if (row >= 0 && (c >= 0 || x < 0)) setToken(Math.min(row * g.block, tokens.length - 1));
    if (row >= 0 && c >= 0 && c < idx.length && ready()) {
      const i = Math.min(row * g.block, tokens.length - 1);
      const v = dequantizeSigned(bytesOf(get("heatmap"))[row * g.k + c], float32sOf(get("heatmap_scales"))[c]);
      const span = g.block > 1 ? ` (tokens ${i}–${Math.min(i + g.block, tokens.length) - 1}, largest |a|)` : "";
      const score = float32sOf(get("top_scores"))[c];
      showTip(evt, `${q(tokens[i])} #${i}${span}\nneuron ${idx[c]}: a = ${num(v)}\n${RANK_LABELS[get("rank_by")]} over the text ${num(score)}\nclick to select`);
    } else if (row < 0 && c >= 0 && c < idx.length) {
      showTip(evt, `neuron ${idx[c]} — click to select`);
    } else hideTip();
  });
  heat.addEventListener("mouseleave", () => {
    hideTip();
    setToken(-1);
  });

  strip.addEventListener("mousemove", (evt) => {
    const r = strip.getBoundingClientRect();
    const x = evt.clientX - r.left;
    const y = evt.clientY - r.top;
    const hit = boxes.find(([bx, by, w]) => x >= bx && x < bx + w && y >= by && y < by + LINE_H);
    if (!hit) return hideTip();
    const i = hit[3];
    setToken(i);
    const vals = neuronValues();
    const v = vals ? `neuron ${displayed()}: a = ${num(dequantizeSigned(vals.bytes[i], vals.scale))}` : "";
    showTip(evt, `${q(get("tokens")[i])} #${i}\n${v}`);
  });
  strip.addEventListener("mouseleave", () => {
    hideTip();
    setToken(-1);
  });

  root.addEventListener("keydown", (evt) => {
    if (evt.key === "ArrowUp" || evt.key === "ArrowDown") setLayer(get("layer") + (evt.key === "ArrowUp" ? -1 : 1));
    else if (evt.key === "ArrowLeft" || evt.key === "ArrowRight") {
      const idx = Array.from(indices());
      if (!idx.length) return;
      const c = idx.indexOf(displayed());
      // From a neuron outside the top-k, either arrow goes to the first column.
      const next = c < 0 ? 0 : Math.max(0, Math.min(idx.length - 1, c + (evt.key === "ArrowLeft" ? -1 : 1)));
      setNeuron(idx[next]);
    } else return;
    evt.preventDefault();
    evt.stopPropagation(); // the notebook would otherwise move between cells
  });

  const onHeat = () => {
    rebuildHeat();
    schedule();
  };
  const plain = ["tokens", "histogram", "neuron_values", "neuron_of", "shown_layer", "shown_rank_by", "rank_by", "log_counts", "dead_fraction"];
  model.on("change:heatmap", onHeat);
  for (const k of plain) model.on(`change:${k}`, schedule);
  sel.on(schedule);
  rebuildHeat();
  draw();

  return () => {
    if (frame) cancelAnimationFrame(frame);
    model.off("change:heatmap", onHeat);
    for (const k of plain) model.off(`change:${k}`, schedule);
    sel.off(schedule);
  };
}

export default { render };
