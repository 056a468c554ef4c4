// LogitAttributionView: direct logit attribution as a layers × heads heatmap, an MLP column and the
// embeddings, with an optional head-type badge per head. Pairs with nbinspect/views/logit_attribution_view.py.
// Canvas only; token text via textContent / fillText.
import { float32sOf, bytesOf } from "./codecs.js";
import { divergingColor, sizeCanvas } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";

const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
const LEFT = 40;
const TOP = 22;
const GAP = 10; // between the head columns and the MLP column
const SIDE_W = 260;
const SHARED = new Set(["layer", "head", "token"]);
const BADGES = { previous_token: "P", induction: "I", duplicate_token: "D", first_token: "S" };

const CSS = `
.nbi-dla { font: ${FONT}; color: #222; display: inline-block; position: relative; outline: none; }
.nbi-dla .nbi-head { display: flex; gap: 12px; align-items: baseline; margin: 0 0 6px 2px; font-size: 12px; flex-wrap: wrap; }
.nbi-dla .nbi-title { font-weight: 600; }
.nbi-dla .nbi-hint { color: #777; }
.nbi-dla .nbi-body { display: flex; gap: 16px; align-items: flex-start; }
.nbi-dla .nbi-side { width: ${SIDE_W}px; color: #333; white-space: pre; font-family: ui-monospace, 'DejaVu Sans Mono', monospace; line-height: 1.45; }
.nbi-dla .nbi-sum { color: #444; margin: 6px 2px 0; white-space: pre-line; }
.nbi-dla canvas { display: block; cursor: pointer; }
.nbi-dla .nbi-reason { color: #555; max-width: 640px; padding: 8px; border: 1px dashed #bbb; }
.nbi-dla .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; box-shadow: 0 1px 4px rgba(0,0,0,.15); }
`;

const signed = (v) => `${v >= 0 ? "+" : "−"}${Math.abs(v).toFixed(3)}`;

async function render({ model, el: host }) {
  const sel = await bindSelection(model);
  const root = el("div", "nbi-dla", host);
  exportButtons(root, "nbinspect-logit-attribution");
  root.tabIndex = 0;
  el("style", null, root).textContent = CSS;
  const head = el("div", "nbi-head", root);
  const title = el("span", "nbi-title", head);
  const typesLabel = el("label", "nbi-hint", head);
  const typesBox = el("input", null, typesLabel);
  typesBox.type = "checkbox";
  typesLabel.appendChild(document.createTextNode(" head types"));
  typesBox.addEventListener("change", () => {
    model.set("show_head_types", typesBox.checked);
    model.save_changes();
    schedule();
  });
  const hint = el("span", "nbi-hint", head, "red: raises the target · blue: lowers it · click a head to focus it");
  const reasonBox = el("div", "nbi-reason", root);
  const main = el("div", null, root);
  const body = el("div", "nbi-body", main);
  const canvas = el("canvas", null, body);
  const side = el("div", "nbi-side", body);
  const sum = el("div", "nbi-sum", main);
  const tip = tooltip(root);
  let frame = 0;
  let paintedKey = "";

  const get = (k) => (SHARED.has(k) ? sel.get(k) : model.get(k));
  const values = () => ({ heads: float32sOf(get("heads")), mlp: float32sOf(get("mlp")) });
  const overlay = () => get("show_head_types") && bytesOf(get("head_types")).length === get("n_layers") * get("n_heads");

  function geometry() {
    const L = get("n_layers");
    const H = get("n_heads");
    const cell = Math.max(8, Math.min(28, Math.floor(560 / Math.max(L, 1)), Math.floor(420 / (H + 1))));
    return { L, H, cell, mlpX: LEFT + H * cell + GAP };
  }

  function scale() {
    const { heads, mlp } = values();
    let m = Math.abs(get("embeddings"));
    for (const v of heads) m = Math.max(m, Math.abs(v));
    for (const v of mlp) m = Math.max(m, Math.abs(v));
    return m || 1;
  }
  const colour = (v, s) => divergingColor(128 + Math.round((v / s) * 127));

  function hit(evt) {
    const g = geometry();
    const r = canvas.getBoundingClientRect();
    const x = evt.clientX - r.left;
    const y = evt.clientY - r.top;
    const l = Math.floor((y - TOP) / g.cell);
    if (l < 0 || l >= g.L) return null;
    const h = Math.floor((x - LEFT) / g.cell);
    if (x >= LEFT && h < g.H) return { l, h };
    if (x >= g.mlpX && x < g.mlpX + g.cell) return { l, h: -1 };
    return null;
  }

  function draw() {
    frame = 0;
    const reason = get("reason");
    reasonBox.style.display = reason ? "block" : "none";
    main.style.display = reason ? "none" : "block";
    typesLabel.style.display = hint.style.display = reason ? "none" : "inline";
    if (reason) {
      reasonBox.textContent = reason;
      title.textContent = "Direct logit attribution";
      return;
    }
    const g = geometry();
    const { heads, mlp } = values();
    const s = scale();
    const tokens = get("tokens");
    const pos = get("position");
    title.textContent = `Direct logit attribution to ${get("target_label")} after ${JSON.stringify(tokens[pos] ?? "")} (#${pos})`;
    typesBox.checked = get("show_head_types");
    const w = g.mlpX + g.cell + 8;
    const h = TOP + g.L * g.cell + g.cell + 26;
    const ctx = sizeCanvas(canvas, w, h);
    Object.assign(canvas.dataset, { left: LEFT, top: TOP, cell: g.cell, mlpX: g.mlpX, layers: g.L, heads: g.H });
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    ctx.textAlign = "center";
    ctx.fillStyle = "#555";
    const every = Math.ceil(14 / g.cell);
    for (let hh = 0; hh < g.H; hh += every) ctx.fillText(`H${hh}`, LEFT + (hh + 0.5) * g.cell, TOP - 9);
    ctx.fillText("MLP", g.mlpX + g.cell / 2, TOP - 9);
    ctx.textAlign = "right";
    for (let l = 0; l < g.L; l += Math.ceil(11 / g.cell)) ctx.fillText(`L${l}`, LEFT - 4, TOP + (l + 0.5) * g.cell);
    const badges = overlay() ? bytesOf(get("head_types")) : null;
    const names = get("head_type_names");
    ctx.textAlign = "center";
    for (let l = 0; l < g.L; l++) {
      for (let hh = 0; hh < g.H; hh++) {
        ctx.fillStyle = colour(heads[l * g.H + hh], s);
        ctx.fillRect(LEFT + hh * g.cell, TOP + l * g.cell, g.cell - 1, g.cell - 1);
        if (badges && badges[l * g.H + hh] && g.cell >= 10) {
          ctx.fillStyle = Math.abs(heads[l * g.H + hh]) > 0.55 * s ? "#fff" : "#111"; // readable on the darkest cells too
          ctx.fillText(BADGES[names[badges[l * g.H + hh] - 1]] ?? "?", LEFT + (hh + 0.5) * g.cell, TOP + (l + 0.5) * g.cell);
        }
      }
      ctx.fillStyle = colour(mlp[l], s);
      ctx.fillRect(g.mlpX, TOP + l * g.cell, g.cell - 1, g.cell - 1);
    }
    // The embeddings, under the grid.
    const ey = TOP + g.L * g.cell + 6;
    ctx.fillStyle = colour(get("embeddings"), s);
    ctx.fillRect(LEFT, ey, g.cell - 1, g.cell - 1);
    ctx.fillStyle = "#333";
    ctx.textAlign = "left";
    ctx.fillText(`embeddings ${signed(get("embeddings"))}`, LEFT + g.cell + 4, ey + g.cell / 2);
    // The selected head / layer.
    const L = get("layer");
    const H = get("head");
    ctx.strokeStyle = "#ff8c00";
    ctx.lineWidth = 2;
    if (L >= 0 && L < g.L) {
      ctx.strokeRect(LEFT - 1, TOP + L * g.cell - 1, g.H * g.cell + 1, g.cell + 1);
      if (H >= 0 && H < g.H) {
        ctx.strokeStyle = "#d62728";
        ctx.strokeRect(LEFT + H * g.cell - 1, TOP + L * g.cell - 1, g.cell + 1, g.cell + 1);
      }
    }
    // The largest contributions, as text.
    const items = [];
    for (let l = 0; l < g.L; l++) {
      for (let hh = 0; hh < g.H; hh++) items.push([`L${l}H${hh}`, heads[l * g.H + hh]]);
      items.push([`MLP ${l}`, mlp[l]]);
    }
    items.push(["embeddings", get("embeddings")]);
    items.sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
    side.textContent = ["largest contributions:", ...items.slice(0, 12).map(([n, v]) => `${n.padEnd(11)} ${signed(v)}`)].join("\n");
    let hs = 0;
    let ms = 0;
    for (const v of heads) hs += v;
    for (const v of mlp) ms += v;
    sum.textContent =
      `heads ${signed(hs)} + MLPs ${signed(ms)} + embeddings ${signed(get("embeddings"))} + remainder ${signed(get("remainder"))}` +
      ` = ${get("logit").toFixed(3)} (the model's ${get("foil_token") >= 0 ? "logit difference" : "logit"})\n` +
      `final norm's scale frozen at its value here (${get("norm_scale").toPrecision(3)}); remainder: norm bias, unembedding and attention output biases` +
      (badges ? `\nbadges (score ≥ ${+get("badge_threshold").toPrecision(2)}): P previous-token · I induction · D duplicate-token · S first-token (sink)` : "");
    root.dataset.layer = String(L);
    root.dataset.head = String(H);
    root.dataset.drawnAt = String(performance.now()); // for benchmarks: data on screen
    const key = `${get("shown_target")},${get("logit")},${badges ? 1 : 0}`;
    if (paintedKey !== key) {
      paintedKey = key;
      model.set("painted", get("painted") + 1);
    }
  }
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };

  canvas.addEventListener("mousemove", (evt) => {
    const c = hit(evt);
    if (!c) return tip.hide();
    const g = geometry();
    const { heads, mlp } = values();
    const v = c.h >= 0 ? heads[c.l * g.H + c.h] : mlp[c.l];
    const lines = [`${c.h >= 0 ? `layer ${c.l} head ${c.h}` : `MLP of layer ${c.l}`}: ${signed(v)} (${((100 * v) / (get("logit") || 1)).toFixed(1)}% of the logit)`];
    const scores = float32sOf(get("head_type_scores"));
    if (c.h >= 0 && overlay() && scores.length === 4 * g.L * g.H) {
      get("head_type_names").forEach((name, i) => lines.push(`  ${name.replace("_", "-")} ${scores[i * g.L * g.H + c.l * g.H + c.h].toFixed(2)}`));
    }
    lines.push(c.h >= 0 ? "click to focus this head" : "click to select this layer");
    tip.show(evt, lines.join("\n"));
  });
  canvas.addEventListener("mouseleave", () => tip.hide());
  canvas.addEventListener("click", (evt) => {
    const c = hit(evt);
    if (!c) return;
    sel.set(c.h >= 0 ? { layer: c.l, head: c.h } : { layer: c.l });
    schedule();
  });

  const names = ["heads", "mlp", "embeddings", "logit", "head_types", "show_head_types", "reason", "target_label", "position"];
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
