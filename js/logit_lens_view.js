// LogitLensView: a layer × position grid; each cell is the residual stream after that layer decoded through
// the final norm and unembedding. Pairs with nbinspect/views/logit_lens_view.py. Canvas only; token text is
// drawn with fillText or set as textContent, never parsed as HTML.
//
// The grid shows a window of positions (Python decodes only those): the strip under it is the whole text with
// the window outlined; paging (◀ ▶, PageUp/PageDown, a click on the strip) sets `window_start`, Python decodes
// the new columns and sends them with `shown_start`, the position of the bytes' first column.
import { bytesOf, float32sOf, int32sOf } from "./codecs.js";
import { fitText, mapImage, sizeCanvas } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";

const GRID_W = 720; // most width the position columns take
const COL_MAX = 150; // widest column: room for a top token's text
const STRIP_H = 14; // the whole-text strip under the grid
const GRID_H = 560; // most height the layer rows take
const LEFT = 40; // layer labels
const BOTTOM = 70; // token labels under the grid (rotated)
const SIDE_W = 230;
const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
const CELL_FONT = "10px ui-monospace, 'DejaVu Sans Mono', monospace";
const SHARED = new Set(["layer", "token"]);
const METRICS = {
  top: "top token's p",
  target_prob: "target p",
  target_rank: "target rank",
  entropy: "entropy",
  kl: "KL to final",
};

const CSS = `
.nbi-lens { font: ${FONT}; color: #222; display: inline-block; position: relative; outline: none; }
.nbi-lens:focus-visible { box-shadow: 0 0 0 2px #6aa0d8; }
.nbi-lens .nbi-head { display: flex; gap: 10px; align-items: baseline; margin: 0 0 6px 2px; font-size: 12px; flex-wrap: wrap; }
.nbi-lens .nbi-title { font-weight: 600; }
.nbi-lens .nbi-hint { color: #777; }
.nbi-lens button { font: inherit; padding: 1px 7px; border: 1px solid #bbb; background: #f6f6f6; cursor: pointer; }
.nbi-lens button[aria-pressed="true"] { background: #dbe8f5; border-color: #6aa0d8; }
.nbi-lens .nbi-body { display: flex; gap: 14px; align-items: flex-start; }
.nbi-lens .nbi-side { width: ${SIDE_W}px; display: flex; flex-direction: column; gap: 4px; }
.nbi-lens .nbi-side button { text-align: left; font-family: ui-monospace, 'DejaVu Sans Mono', monospace; white-space: pre; overflow: hidden; text-overflow: ellipsis; }
.nbi-lens .nbi-side button.nbi-target { border-color: #d62728; }
.nbi-lens .nbi-caption { color: #555; white-space: pre-line; }
.nbi-lens canvas { display: block; cursor: pointer; }
.nbi-lens .nbi-pager { display: flex; gap: 6px; align-items: center; margin-top: 2px; }
.nbi-lens .nbi-reason { color: #555; max-width: 640px; padding: 8px; border: 1px dashed #bbb; }
.nbi-lens .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; box-shadow: 0 1px 4px rgba(0,0,0,.15); }
`;

const pct = (p) => `${(100 * p).toFixed(p < 0.001 ? 3 : 1)}%`;
const q = (s) => JSON.stringify(s); // quotes show spaces and newlines

async function render({ model, el: host }) {
  const sel = await bindSelection(model);
  const root = el("div", "nbi-lens", host);
  exportButtons(root, "nbinspect-logit-lens");
  root.tabIndex = 0;
  root.dataset.lmSuppressShortcuts = "true";
  el("style", null, root).textContent = CSS;
  const head = el("div", "nbi-head", root);
  const title = el("span", "nbi-title", head, "Logit lens");
  const switches = el("span", null, head);
  el("span", "nbi-hint", switches, "colour: ");
  const buttons = {};
  for (const [key, label] of Object.entries(METRICS)) {
    const b = el("button", null, switches, label);
    b.type = "button";
    b.dataset.metric = key;
    b.addEventListener("click", () => {
      model.set("metric", key);
      model.save_changes();
      schedule();
    });
    buttons[key] = b;
  }
  const hint = el("span", "nbi-hint", head);
  const reasonBox = el("div", "nbi-reason", root);
  const body = el("div", "nbi-body", root);
  const main = el("div", null, body);
  const grid = el("canvas", "nbi-grid", main);
  const pager = el("div", "nbi-pager", main);
  const earlier = el("button", null, pager, "◀");
  const strip = el("canvas", "nbi-strip", pager);
  const later = el("button", null, pager, "▶");
  const where = el("span", "nbi-hint", pager);
  earlier.type = later.type = "button";
  earlier.title = "earlier positions";
  later.title = "later positions";
  const side = el("div", "nbi-side", body);
  const cellCaption = el("div", "nbi-caption", side);
  const list = el("div", null, side);
  const legend = el("div", "nbi-caption", side);
  const tip = tooltip(root);

  let frame = 0;
  let image = null;
  let paintedKey = "";
  let clicked = null; // [layer, position] whose top-k the side list shows

  const get = (k) => (SHARED.has(k) ? sel.get(k) : model.get(k));
  // n: columns in the bytes; start: the token position of the first.
  const dims = () => ({ L: get("n_layers"), n: get("n_positions"), k: get("k"), start: get("shown_start") });
  const nTokens = () => get("tokens").length;
  // Ask Python for the window starting at `start` (clamped there too); it sends the columns' bytes.
  function page(start) {
    const size = get("window_size");
    start = Math.max(0, Math.min(Math.round(start), nTokens() - size));
    if (start === get("window_start")) return;
    model.set("window_start", start);
    model.save_changes();
  }
  const data = () => ({
    ids: int32sOf(get("top_tokens")),
    probs: bytesOf(get("top_probs")),
    entropy: float32sOf(get("entropy")),
    kl: float32sOf(get("kl")),
    tprob: float32sOf(get("target_prob")),
    trank: int32sOf(get("target_rank")),
  });

  // One uint8 per cell for the chosen metric (darker = more: probability, entropy, KL; rank 0 darkest).
  function metricBytes() {
    const { L, n, k } = dims();
    const d = data();
    const out = new Uint8Array(L * n);
    const metric = get("metric");
    if (metric === "top") for (let i = 0; i < L * n; i++) out[i] = d.probs[i * k];
    else if (metric === "target_prob") for (let i = 0; i < L * n; i++) out[i] = Math.round(255 * d.tprob[i]);
    else if (metric === "target_rank") {
      let top = 1;
      for (let i = 0; i < L * n; i++) top = Math.max(top, d.trank[i]);
      for (let i = 0; i < L * n; i++) out[i] = Math.round(255 * (1 - Math.log1p(d.trank[i]) / Math.log1p(top)));
    } else {
      const v = metric === "entropy" ? d.entropy : d.kl;
      let top = 1e-12;
      for (let i = 0; i < L * n; i++) top = Math.max(top, v[i]);
      for (let i = 0; i < L * n; i++) out[i] = Math.round((255 * v[i]) / top);
    }
    return out;
  }

  function geometry() {
    const { L, n, start } = dims();
    const colW = Math.max(3, Math.min(COL_MAX, Math.floor(GRID_W / Math.max(1, n))));
    const rowH = Math.max(6, Math.min(22, Math.floor(GRID_H / Math.max(1, L))));
    return { L, n, start, colW, rowH, left: LEFT, top: 4, text: colW >= 28 && rowH >= 12 };
  }

  function cellAt(evt) {
    const g = geometry();
    const r = grid.getBoundingClientRect();
    const x = evt.clientX - r.left - g.left;
    const y = evt.clientY - r.top - g.top;
    const p = Math.floor(x / g.colW);
    const l = Math.floor(y / g.rowH);
    return x >= 0 && y >= 0 && p < g.n && l < g.L ? [l, g.start + p] : null;
  }

  function drawGrid() {
    const g = geometry();
    const ctx = sizeCanvas(grid, g.left + g.n * g.colW + 8, g.top + g.L * g.rowH + BOTTOM);
    Object.assign(grid.dataset, { left: g.left, top: g.top, colWidth: g.colW, rowHeight: g.rowH, rows: g.L, cols: g.n, start: g.start });
    const shade = metricBytes(); // rebuilt every paint: L × n cells is a few thousand bytes
    image = g.L && g.n ? mapImage(shade, g.n, g.L) : null;
    if (image) ctx.drawImage(image, g.left, g.top, g.n * g.colW, g.L * g.rowH);
    ctx.strokeStyle = "#999";
    ctx.strokeRect(g.left - 0.5, g.top - 0.5, g.n * g.colW + 1, g.L * g.rowH + 1);
    const { k } = dims();
    const d = data();
    const vocab = get("vocab");
    if (g.text) {
      ctx.font = CELL_FONT;
      ctx.textBaseline = "middle";
      ctx.textAlign = "left";
      for (let l = 0; l < g.L; l++)
        for (let p = 0; p < g.n; p++) {
          const i = l * g.n + p;
          ctx.fillStyle = shade[i] > 150 ? "#fff" : "#111";
          ctx.fillText(fitText(ctx, vocab[d.ids[i * k]] ?? "", g.colW - 3), g.left + p * g.colW + 2, g.top + (l + 0.5) * g.rowH);
        }
    }
    ctx.font = FONT;
    ctx.fillStyle = "#555";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const every = Math.ceil(11 / g.rowH);
    for (let l = 0; l < g.L; l += every) ctx.fillText(`L${l}`, g.left - 4, g.top + (l + 0.5) * g.rowH);
    // Token labels, rotated, under their columns (every few when the columns are narrow).
    const tokens = get("tokens");
    // Columns are window-relative: column c is token position g.start + c.
    const sel_t = get("token") - g.start;
    const pos = get("position") - g.start;
    const step = Math.ceil(12 / g.colW);
    for (let p = 0; p < g.n; p++) {
      if (p % step && p !== sel_t && p !== pos) continue;
      ctx.save();
      ctx.translate(g.left + (p + 0.5) * g.colW, g.top + g.L * g.rowH + 4);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "right";
      ctx.fillStyle = p === sel_t ? "#b35c00" : p === pos ? "#d62728" : "#333";
      ctx.fillText(fitText(ctx, tokens[g.start + p] ?? "", BOTTOM - 8), 0, 0);
      ctx.restore();
    }
    // The target position, the selected layer row and token column.
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#d62728";
    if (pos >= 0 && pos < g.n) ctx.strokeRect(g.left + pos * g.colW, g.top, g.colW, g.L * g.rowH);
    const L = get("layer");
    ctx.strokeStyle = "#ff8c00";
    if (L >= 0 && L < g.L) ctx.strokeRect(g.left, g.top + L * g.rowH, g.n * g.colW, g.rowH);
    if (sel_t >= 0 && sel_t < g.n) {
      ctx.fillStyle = "rgba(255, 165, 0, 0.22)";
      ctx.fillRect(g.left + sel_t * g.colW, g.top, g.colW, g.L * g.rowH);
    }
  }

  // The whole text as one strip: the shown window outlined, the target position red, the selected token orange.
  function drawStrip() {
    const total = nTokens();
    const w = Math.max(120, Math.min(GRID_W, 4 * total)) - 60;
    const ctx = sizeCanvas(strip, w, STRIP_H);
    const x = (p) => (p / Math.max(1, total)) * w;
    ctx.fillStyle = "#eee";
    ctx.fillRect(0, 3, w, STRIP_H - 6);
    const { n, start } = dims();
    ctx.fillStyle = "#9bbbe0";
    ctx.fillRect(x(start), 0, Math.max(2, x(start + n) - x(start)), STRIP_H);
    const mark = (p, colour) => {
      if (p < 0 || p >= total) return;
      ctx.fillStyle = colour;
      ctx.fillRect(x(p), 0, Math.max(2, x(p + 1) - x(p)), STRIP_H);
    };
    mark(get("position"), "#d62728");
    mark(get("token"), "#ff8c00");
    Object.assign(strip.dataset, { width: w, tokens: total });
    earlier.disabled = start <= 0;
    later.disabled = start + n >= total;
    where.textContent = n < total ? `positions ${start}–${start + n - 1} of ${total}` : "";
    pager.style.display = n < total ? "flex" : "none";
  }

  function cellText(l, position) {
    const { n, k, start } = dims();
    const d = data();
    const vocab = get("vocab");
    const p = position;
    const i = l * n + (position - start);
    const lines = [`layer ${l} · position ${p} ${q(get("tokens")[p] ?? "")} → next token`];
    for (let j = 0; j < k; j++) lines.push(`  ${pct(d.probs[i * k + j] / 255).padStart(6)}  ${q(vocab[d.ids[i * k + j]] ?? "")}`);
    lines.push(`target ${get("target_label")}: p ${pct(d.tprob[i])}, rank ${d.trank[i] + 1}`);
    lines.push(`entropy ${d.entropy[i].toFixed(2)} nats · KL to final ${d.kl[i].toFixed(3)} nats`);
    return lines.join("\n");
  }

  function drawSide() {
    const { L, n, k, start } = dims();
    const l = clicked ? clicked[0] : Math.min(get("layer"), L - 1);
    const p = clicked ? clicked[1] : get("token") >= 0 ? get("token") : get("position");
    list.replaceChildren();
    cellCaption.textContent = "";
    if (l < 0 || p < start || p >= start + n) {
      cellCaption.textContent = "click a cell to list its top-5"; // the selected one is outside the window
      return;
    }
    const i = l * n + (p - start);
    const d = data();
    const vocab = get("vocab");
    cellCaption.textContent = `layer ${l}, after ${q(get("tokens")[p] ?? "")} (#${p}) — click a token to explain it:`;
    const decoded = int32sOf(get("vocab_ids"));
    for (let j = 0; j < k; j++) {
      const idx = d.ids[i * k + j];
      const id = decoded.length ? decoded[idx] : -1;
      const b = el("button", null, list, `${pct(d.probs[i * k + j] / 255).padStart(6)}  ${q(vocab[idx] ?? "")}`);
      b.type = "button";
      b.dataset.token = String(id);
      if (id === get("shown_target")) b.className = "nbi-target";
      b.addEventListener("click", () => {
        if (id < 0) return;
        model.set("target_token", id);
        model.save_changes();
      });
    }
  }

  function draw() {
    frame = 0;
    const reason = get("reason");
    reasonBox.style.display = reason ? "block" : "none";
    body.style.display = reason ? "none" : "flex";
    switches.style.display = reason ? "none" : "inline";
    if (reason) {
      reasonBox.textContent = reason;
      hint.textContent = "";
      return;
    }
    const metric = get("metric");
    for (const [key, b] of Object.entries(buttons)) b.setAttribute("aria-pressed", String(key === metric));
    title.textContent = `Logit lens · target ${get("target_label")} after #${get("position")}`;
    hint.textContent = "rows: the stream after each layer · hover a cell for its top-5 · click to select";
    drawGrid();
    drawStrip();
    drawSide();
    legend.textContent =
      metric === "target_rank" ? "darker = better rank (log scale)"
      : metric === "entropy" ? "darker = more uncertain (nats, scaled to the grid's max)"
      : metric === "kl" ? "KL(final ‖ layer): darker = further from the final answer"
      : "darker = more probable";
    root.dataset.metric = metric;
    root.dataset.layer = String(get("layer"));
    const key = `${metric},${get("shown_target")},${get("shown_start")},${bytesOf(get("top_probs")).length}`;
    if (image && paintedKey !== key) {
      paintedKey = key;
      model.set("painted", get("painted") + 1);
    }
  }
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };

  grid.addEventListener("mousemove", (evt) => {
    const c = cellAt(evt);
    if (!c) return tip.hide();
    tip.show(evt, cellText(c[0], c[1]));
  });
  grid.addEventListener("mouseleave", () => tip.hide());
  grid.addEventListener("click", (evt) => {
    const c = cellAt(evt);
    if (!c) return;
    clicked = c;
    sel.set({ layer: c[0], token: c[1] });
    schedule();
    root.focus();
  });
  earlier.addEventListener("click", () => page(get("shown_start") - get("window_size")));
  later.addEventListener("click", () => page(get("shown_start") + get("window_size")));
  strip.addEventListener("click", (evt) => {
    const r = strip.getBoundingClientRect();
    const p = Math.floor(((evt.clientX - r.left) / r.width) * nTokens());
    page(p - Math.floor(get("window_size") / 2));
  });
  root.addEventListener("keydown", (evt) => {
    const { L } = dims();
    let l = get("layer");
    let t = get("token") >= 0 ? get("token") : get("position");
    // Moving the selected token out of the window makes Python move the window to it.
    if (evt.key === "ArrowUp") l = Math.max(0, l - 1);
    else if (evt.key === "ArrowDown") l = Math.min(L - 1, l + 1);
    else if (evt.key === "ArrowLeft") t = Math.max(0, t - 1);
    else if (evt.key === "ArrowRight") t = Math.min(nTokens() - 1, t + 1);
    else if (evt.key === "PageUp" || evt.key === "PageDown") {
      page(get("shown_start") + (evt.key === "PageUp" ? -1 : 1) * get("window_size"));
      evt.preventDefault();
      evt.stopPropagation();
      return;
    } else return;
    clicked = [l, t];
    sel.set({ layer: l, token: t });
    evt.preventDefault();
    evt.stopPropagation();
    schedule();
  });

  const names = ["vocab_ids", "top_tokens", "top_probs", "vocab", "metric", "shown_target", "target_label", "position", "reason",
    "tokens", "shown_start", "n_positions"];
  for (const k of names) model.on(`change:${k}`, schedule);
  sel.on(schedule);
  draw();
  return () => {
    if (frame) cancelAnimationFrame(frame);
    for (const k of names) model.off(`change:${k}`, schedule);
    sel.off(schedule);
  };
}

export default { render };
