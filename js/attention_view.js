// AttentionView: layers × heads thumbnails (left) and the focused head as a token × token heatmap.
// Pairs with nbinspect/views/attention_view.py. Canvas only; token text via fillText/textContent.
// A "head types" checkbox asks Python for a badge per head (measured once per model, on first use) and draws
// it in the thumbnail's corner: P previous-token, I induction, D duplicate-token, S first-token (sink).
import { bytesOf, dequantize, float32sOf } from "./codecs.js";
import { fitText, mapImage, sizeCanvas } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";

const FOCUS_PX = 480; // side of the focused heatmap
const LABEL_PX = 84; // room for token labels left of and above the heatmap
const GAP = 2;
const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
const SHARED = new Set(["layer", "head", "token"]); // live in the shared Selection, not in this view
// Same letters as the attribution view's overlay; one colour per type so a column of induction heads stands out.
const BADGES = {
  previous_token: ["P", "#1f77b4"],
  induction: ["I", "#d62728"],
  duplicate_token: ["D", "#2ca02c"],
  first_token: ["S", "#7f7f7f"],
};

const CSS = `
.nbi-attn { font: ${FONT}; color: #222; display: inline-block; position: relative; outline: none; }
.nbi-attn:focus-visible { box-shadow: 0 0 0 2px #6aa0d8; }
.nbi-attn .nbi-head { display: flex; gap: 12px; align-items: baseline; margin: 0 0 6px 2px; font-size: 12px; }
.nbi-attn .nbi-title { font-weight: 600; }
.nbi-attn .nbi-hint { color: #777; }
.nbi-attn .nbi-busy { color: #b35c00; visibility: hidden; }
.nbi-attn.is-busy .nbi-busy { visibility: visible; }
.nbi-attn .nbi-body { display: flex; gap: 18px; align-items: flex-start; }
.nbi-attn canvas { display: block; cursor: crosshair; }
.nbi-attn .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; box-shadow: 0 1px 4px rgba(0,0,0,.15); }
`;

async function render({ model, el: host }) {
  const sel = await bindSelection(model);
  const root = el("div", "nbi-attn", host);
  exportButtons(root, "nbinspect-attention");
  root.tabIndex = 0;
  // JupyterLab skips its own keyboard shortcuts inside elements marked like this (arrow keys are ours).
  root.dataset.lmSuppressShortcuts = "true";
  el("style", null, root).textContent = CSS;
  const head = el("div", "nbi-head", root);
  const title = el("span", "nbi-title", head);
  const legend = el("span", "nbi-hint", head);
  const busy = el("span", "nbi-busy", head);
  busy.textContent = "recomputing…";
  const typesLabel = el("label", "nbi-hint", head);
  const typesBox = el("input", null, typesLabel);
  typesBox.type = "checkbox";
  typesLabel.appendChild(document.createTextNode(" head types"));
  typesLabel.title = "badge each head by its type, measured on a repeated random sequence (one short run, first time only)";
  typesBox.addEventListener("change", () => {
    model.set("show_head_types", typesBox.checked);
    model.save_changes();
    schedule();
  });
  const typesHint = el("span", "nbi-hint", head);
  const body = el("div", "nbi-body", root);
  const grid = el("canvas", "nbi-grid", body);
  const focus = el("canvas", "nbi-focus", body);
  const tip = tooltip(root);

  let hover = null; // {i, j} cell under the pointer in the focus map
  let thumbImage = null;
  let focusImage = null;
  let frame = 0;

  const get = (k) => (SHARED.has(k) ? sel.get(k) : model.get(k));
  // The badges, when switched on and arrived: uint8 [layers, heads], 0 none, else 1 + index in head_type_names.
  const badges = () => {
    if (!get("show_head_types")) return null;
    const b = bytesOf(get("head_types"));
    return b.length === get("n_layers") * get("n_heads") ? b : null;
  };
  const layout = () => {
    const L = get("n_layers");
    const H = get("n_heads");
    const T = Math.max(10, Math.min(36, Math.floor(560 / Math.max(L, 1)) - GAP));
    return { L, H, T, left: 30, top: 16 };
  };

  // The maps drawn last, and the layers whose tiles must be drawn again (a slider edit changes only the
  // layers from the edited one on: colouring and scaling all 30 × 9 maps again took ~10–25 ms per edit).
  let thumbBytes = null;
  let staleLayers = null; // [first, end) or null: every layer
  let tiles = null; // the thumbnails at their places in the grid, at the grid's size
  let tilesKey = "";

  function rebuildThumbs() {
    const c = get("thumbnail_cells");
    const L = get("n_layers");
    const H = get("n_heads");
    const bytes = bytesOf(get("thumbnails"));
    if (!(c > 0 && bytes.length === L * H * c * c)) {
      thumbImage = thumbBytes = staleLayers = null;
      return;
    }
    const per = H * c * c;
    let [first, end] = [0, L];
    if (thumbImage && thumbBytes && thumbBytes.length === bytes.length) {
      [first, end] = [L, 0];
      for (let l = 0; l < L; l++) {
        for (let i = l * per, stop = i + per; i < stop; i++)
          if (thumbBytes[i] !== bytes[i]) {
            first = Math.min(first, l);
            end = l + 1;
            break;
          }
      }
    }
    // One image, all maps stacked vertically: layer-major, head-minor, c rows each.
    if (first < end) thumbImage = mapImage(bytes, c, L * H * c, undefined, thumbImage, [first * H * c, end * H * c]);
    thumbBytes = bytes;
    const pending = staleLayers && staleLayers[0] < staleLayers[1];
    staleLayers = pending ? [Math.min(staleLayers[0], first), Math.max(staleLayers[1], end)] : [first, end];
  }

  /** The tiles canvas, with the thumbnails of the stale layers (all when the geometry changed) drawn again. */
  function thumbTiles(L, H, T) {
    const dpr = window.devicePixelRatio || 1;
    const key = `${L},${H},${T},${dpr},${get("thumbnail_cells")}`;
    if (!tiles || key !== tilesKey) {
      tiles = document.createElement("canvas");
      tiles.width = Math.round(H * (T + GAP) * dpr);
      tiles.height = Math.round(L * (T + GAP) * dpr);
      tilesKey = key;
      staleLayers = [0, L];
    }
    if (staleLayers && staleLayers[0] < staleLayers[1]) {
      const ctx = tiles.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.imageSmoothingEnabled = false;
      const c = get("thumbnail_cells");
      const [first, end] = staleLayers;
      ctx.clearRect(0, first * (T + GAP), H * (T + GAP), (end - first) * (T + GAP));
      grid.dataset.redrawnLayers = `${first},${end}`; // for tests: the layers whose tiles were drawn last
      for (let l = first; l < end; l++)
        for (let h = 0; h < H; h++) ctx.drawImage(thumbImage, 0, (l * H + h) * c, c, c, h * (T + GAP), l * (T + GAP), T, T);
    }
    staleLayers = [0, 0];
    return tiles;
  }

  function rebuildFocus() {
    const f = get("focus_cells");
    const bytes = bytesOf(get("focus"));
    focusImage = f > 0 && bytes.length === f * f ? mapImage(bytes, f, f) : null;
  }

  function focusReady() {
    const of = get("focus_of");
    return focusImage && of[0] === get("layer") && of[1] === get("head");
  }

  function drawGrid() {
    const { L, H, T, left, top } = layout();
    const ctx = sizeCanvas(grid, left + H * (T + GAP), top + L * (T + GAP));
    // Where thumbnail (l, h) sits, for automation (tests click thumbnails through it).
    Object.assign(grid.dataset, { left, top, step: T + GAP, size: T });
    ctx.font = FONT;
    ctx.fillStyle = "#666";
    ctx.textBaseline = "middle";
    ctx.textAlign = "center";
    for (let h = 0; h < H; h++) if (T >= 14 || h % 2 === 0) ctx.fillText(`h${h}`, left + h * (T + GAP) + T / 2, top / 2);
    ctx.textAlign = "right";
    for (let l = 0; l < L; l++) {
      const y = top + l * (T + GAP);
      if (T >= 14 || l % 2 === 0) ctx.fillText(`L${l}`, left - 4, y + T / 2);
      if (thumbImage) continue;
      ctx.fillStyle = "#eee";
      for (let h = 0; h < H; h++) ctx.fillRect(left + h * (T + GAP), y, T, T);
      ctx.fillStyle = "#666";
    }
    if (thumbImage) ctx.drawImage(thumbTiles(L, H, T), left, top, H * (T + GAP), L * (T + GAP));
    const b = badges();
    if (b) {
      // A square in each typed head's top-right corner, its letter inside when there is room.
      const names = get("head_type_names");
      const s = Math.max(6, Math.min(12, Math.floor(T / 2.5)));
      ctx.font = `bold ${s - 2}px system-ui, sans-serif`;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      for (let l = 0; l < L; l++)
        for (let h = 0; h < H; h++) {
          const kind = b[l * H + h];
          if (!kind) continue;
          const [letter, colour] = BADGES[names[kind - 1]] ?? ["?", "#000"];
          const x = left + h * (T + GAP) + T - s;
          const y = top + l * (T + GAP);
          ctx.fillStyle = colour;
          ctx.fillRect(x, y, s, s);
          if (s >= 9) {
            ctx.fillStyle = "#fff";
            ctx.fillText(letter, x + s / 2, y + s / 2 + 0.5);
          }
        }
      ctx.font = FONT;
    }
    grid.dataset.badges = b ? String(b.reduce((n, v) => n + (v ? 1 : 0), 0)) : "";
    const x = left + get("head") * (T + GAP);
    const y = top + get("layer") * (T + GAP);
    ctx.strokeStyle = "#d62728";
    ctx.lineWidth = 2;
    ctx.strokeRect(x - 1, y - 1, T + 2, T + 2);
  }

  function focusGeometry() {
    const f = focusReady() ? get("focus_cells") : get("thumbnail_cells");
    const n = get("tokens").length;
    const block = focusReady() ? get("focus_block") : get("thumbnail_block");
    const cell = FOCUS_PX / Math.max(f, 1);
    const labels = cell >= 9; // enough room to write every token
    return { f, n, block, cell, labels, ox: LABEL_PX, oy: LABEL_PX };
  }

  function drawFocus() {
    const g = focusGeometry();
    const ctx = sizeCanvas(focus, g.ox + FOCUS_PX + 8, g.oy + FOCUS_PX + 8);
    // Map geometry for automation: cells per side, CSS px per cell, tokens per cell, map origin.
    Object.assign(focus.dataset, { rows: g.f, cell: g.cell, block: g.block, left: g.ox, top: g.oy });
    ctx.font = FONT;
    if (focusReady()) ctx.drawImage(focusImage, g.ox, g.oy, FOCUS_PX, FOCUS_PX);
    else if (thumbImage) {
      // While the full map is on its way, show the thumbnail blown up (same pattern, coarser).
      const c = get("thumbnail_cells");
      const idx = get("layer") * get("n_heads") + get("head");
      ctx.drawImage(thumbImage, 0, idx * c, c, c, g.ox, g.oy, FOCUS_PX, FOCUS_PX);
    }
    ctx.strokeStyle = "#999";
    ctx.lineWidth = 1;
    ctx.strokeRect(g.ox - 0.5, g.oy - 0.5, FOCUS_PX + 1, FOCUS_PX + 1);

    const tokens = get("tokens");
    const t = get("token");
    const mark = (i, color) => {
      const k = Math.floor(i / g.block);
      ctx.fillStyle = color;
      ctx.fillRect(g.ox, g.oy + k * g.cell, FOCUS_PX, g.cell); // row: token i attending
      ctx.fillRect(g.ox + k * g.cell, g.oy, g.cell, FOCUS_PX); // column: token i attended to
    };
    if (t >= 0 && t < tokens.length) mark(t, "rgba(255, 165, 0, 0.22)");
    if (hover) {
      ctx.strokeStyle = "#d62728";
      ctx.strokeRect(g.ox + hover.j * g.cell, g.oy + hover.i * g.cell, g.cell, g.cell);
    }
    // Token labels: queries down the left (rows), keys along the top (columns).
    ctx.textBaseline = "middle";
    const drawLabel = (i, highlighted) => {
      const k = Math.floor(i / g.block);
      const text = fitText(ctx, tokens[i], LABEL_PX - 8);
      ctx.fillStyle = highlighted ? "#b35c00" : "#333";
      ctx.textAlign = "right";
      ctx.fillText(text, g.ox - 4, g.oy + (k + 0.5) * g.cell);
      ctx.save();
      ctx.translate(g.ox + (k + 0.5) * g.cell, g.oy - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.fillText(text, 0, 0);
      ctx.restore();
    };
    if (g.labels) tokens.forEach((_, i) => drawLabel(i, i === t));
    else if (t >= 0 && t < tokens.length) drawLabel(t, true);
  }

  function draw() {
    frame = 0;
    const L = get("layer");
    const H = get("head");
    title.textContent = `Layer ${L} · Head ${H}`;
    const s = get("focus_scale");
    legend.textContent = focusReady()
      ? `shade ∝ √(weight ÷ ${s.toPrecision(3)}) · rows attend to columns · click a thumbnail, ←/→ head, ↑/↓ layer`
      : "loading the full map…";
    root.classList.toggle("is-busy", get("busy"));
    typesBox.checked = get("show_head_types");
    const reason = get("head_types_reason");
    typesHint.textContent = !get("show_head_types") ? ""
      : reason ? reason
      : badges() ? `P previous · I induction · D duplicate · S first-token (≥ ${+get("badge_threshold").toPrecision(2)})`
      : "measuring head types…";
    drawGrid();
    drawFocus();
    if (thumbsPending) {
      thumbsPending = false;
      root.dataset.thumbsDrawnAt = String(performance.now()); // for benchmarks: new maps on screen
    }
    root.dataset.layer = String(L);
    root.dataset.head = String(H);
    if (focusReady() && root.dataset.painted !== `${L},${H}`) {
      root.dataset.painted = `${L},${H}`;
      model.set("painted", get("painted") + 1);
    }
  }
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };

  function setFocus(layer, headIdx) {
    const L = get("n_layers");
    const H = get("n_heads");
    const l = Math.max(0, Math.min(L - 1, layer));
    const h = Math.max(0, Math.min(H - 1, headIdx));
    if (l === get("layer") && h === get("head")) return;
    sel.set({ layer: l, head: h }); // every linked view repaints now; Python sends the full map after
    schedule();
  }

  function setToken(i) {
    if (i === get("token")) return;
    sel.set({ token: i }, { throttle: true }); // hover moves fast: Python hears at most every 100 ms
    schedule();
  }

  const showTip = tip.show;
  const hideTip = tip.hide;

  const q = (s) => JSON.stringify(s); // shows quotes and escapes, so spaces and newlines are visible

  grid.addEventListener("click", (evt) => {
    const { L, H, T, left, top } = layout();
    const r = grid.getBoundingClientRect();
    const h = Math.floor((evt.clientX - r.left - left) / (T + GAP));
    const l = Math.floor((evt.clientY - r.top - top) / (T + GAP));
    if (h >= 0 && h < H && l >= 0 && l < L) setFocus(l, h);
    root.focus();
  });
  grid.addEventListener("mousemove", (evt) => {
    const { L, H, T, left, top } = layout();
    const r = grid.getBoundingClientRect();
    const h = Math.floor((evt.clientX - r.left - left) / (T + GAP));
    const l = Math.floor((evt.clientY - r.top - top) / (T + GAP));
    if (h >= 0 && h < H && l >= 0 && l < L) {
      const scale = float32sOf(get("thumbnail_scales"))[l * H + h];
      const lines = [`layer ${l}, head ${h}`, `largest weight ${scale === undefined ? "?" : scale.toFixed(3)}`];
      if (badges()) {
        const scores = float32sOf(get("head_type_scores"));
        get("head_type_names").forEach((name, i) => lines.push(`  ${name.replace("_", "-")} ${scores[i * L * H + l * H + h].toFixed(2)}`));
      }
      lines.push("click to focus");
      showTip(evt, lines.join("\n"));
    } else hideTip();
  });
  grid.addEventListener("mouseleave", hideTip);

  focus.addEventListener("mousemove", (evt) => {
    const g = focusGeometry();
    const r = focus.getBoundingClientRect();
    const x = evt.clientX - r.left - g.ox;
    const y = evt.clientY - r.top - g.oy;
    const tokens = get("tokens");
    const inside = (v) => v >= 0 && v < FOCUS_PX;
    if (inside(x) && inside(y)) {
      const cell = { i: Math.floor(y / g.cell), j: Math.floor(x / g.cell) };
      hover = cell;
      const qi = Math.min(cell.i * g.block, tokens.length - 1);
      const kj = Math.min(cell.j * g.block, tokens.length - 1);
      let weight = "";
      if (focusReady()) {
        const v = dequantize(bytesOf(get("focus"))[cell.i * g.f + cell.j], get("focus_scale"));
        weight = `${g.block > 1 ? "largest weight in block" : "weight"} ${v.toFixed(4)}`;
      }
      const span = (a) => (g.block > 1 ? ` (tokens ${a}–${Math.min(a + g.block, tokens.length) - 1})` : "");
      showTip(evt, `from ${q(tokens[qi])} #${qi}${span(qi)}\nto   ${q(tokens[kj])} #${kj}${span(kj)}\n${weight}`);
      schedule();
    } else if (x < 0 && inside(y)) {
      setToken(Math.min(Math.floor(y / g.cell) * g.block, tokens.length - 1));
      hover = null;
      hideTip();
    } else if (y < 0 && inside(x)) {
      setToken(Math.min(Math.floor(x / g.cell) * g.block, tokens.length - 1));
      hover = null;
      hideTip();
    } else {
      hover = null;
      hideTip();
      schedule();
    }
  });
  focus.addEventListener("mouseleave", () => {
    hover = null;
    hideTip();
    setToken(-1);
  });

  root.addEventListener("keydown", (evt) => {
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    const m = moves[evt.key];
    if (!m) return;
    evt.preventDefault();
    evt.stopPropagation(); // the notebook would otherwise move between cells
    setFocus(get("layer") + m[0], get("head") + m[1]);
  });

  let thumbsPending = false;
  const onThumbs = () => {
    rebuildThumbs();
    thumbsPending = true;
    schedule();
  };
  const onFocus = () => {
    rebuildFocus();
    schedule();
  };
  model.on("change:thumbnails", onThumbs);
  model.on("change:focus", onFocus);
  model.on("change:focus_of", schedule);
  // Busy only shows or hides its label: redrawing both canvases for it cost a frame at each end of an edit.
  const onBusy = () => root.classList.toggle("is-busy", get("busy"));
  model.on("change:busy", onBusy);
  const watched = ["tokens", "show_head_types", "head_types", "head_types_reason"];
  for (const k of watched) model.on(`change:${k}`, schedule);
  sel.on(schedule);
  rebuildThumbs();
  rebuildFocus();
  draw();

  return () => {
    if (frame) cancelAnimationFrame(frame);
    model.off("change:thumbnails", onThumbs);
    model.off("change:focus", onFocus);
    model.off("change:focus_of", schedule);
    model.off("change:busy", onBusy);
    for (const k of watched) model.off(`change:${k}`, schedule);
    sel.off(schedule);
  };
}

export default { render };
