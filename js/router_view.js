// RouterView: a mixture-of-experts layer's routing — token × expert router probabilities with the chosen
// top-k marked (left), the experts' load with the load-balance CV, the CV of every routed layer, and the
// text coloured by each token's top expert (right). Pairs with nbinspect/views/router_view.py.
// Canvas only; token text via fillText/textContent.
import { bytesOf, float32sOf, int32sOf } from "./codecs.js";
import { fitText, mapImage, sizeCanvas, tokenBoxes } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";

const HEAT_W = 360;
const HEAT_H = 520;
const LABEL_PX = 84;
const TOP_PX = 30;
const SIDE_W = 400;
const BARS_H = 130;
const CV_H = 90;
const LINE_H = 20;
const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
const TEXT_FONT = "13px ui-monospace, 'DejaVu Sans Mono', monospace";
const SHARED = new Set(["layer", "token"]);
const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

const CSS = `
.nbi-router { font: ${FONT}; color: #222; display: inline-block; position: relative; outline: none; }
.nbi-router .nbi-head { display: flex; gap: 12px; align-items: baseline; margin: 0 0 6px 2px; font-size: 12px; flex-wrap: wrap; }
.nbi-router .nbi-title { font-weight: 600; }
.nbi-router .nbi-hint { color: #777; }
.nbi-router .nbi-body { display: flex; gap: 18px; align-items: flex-start; }
.nbi-router .nbi-side { display: flex; flex-direction: column; gap: 6px; width: ${SIDE_W}px; }
.nbi-router .nbi-caption { color: #555; }
.nbi-router .nbi-strip { max-height: 220px; overflow-y: auto; border: 1px solid #ddd; }
.nbi-router .nbi-reason { color: #555; padding: 8px; border: 1px dashed #bbb; max-width: 600px; }
.nbi-router canvas { display: block; }
.nbi-router canvas.nbi-heat, .nbi-router canvas.nbi-bars, .nbi-router canvas.nbi-cv { cursor: pointer; }
.nbi-router .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; box-shadow: 0 1px 4px rgba(0,0,0,.15); }
`;

const q = (s) => JSON.stringify(s);

/** A colour per expert: tab10 up to ten experts, evenly spread hues beyond. */
function expertColour(e, n, alpha = 1) {
  if (n <= TAB10.length) {
    const h = TAB10[e];
    if (alpha === 1) return h;
    const v = parseInt(h.slice(1), 16);
    return `rgba(${v >> 16}, ${(v >> 8) & 255}, ${v & 255}, ${alpha})`;
  }
  return `hsla(${(e * 137.508) % 360}, 62%, 52%, ${alpha})`;
}

async function render({ model, el: host }) {
  const sel = await bindSelection(model);
  const root = el("div", "nbi-router", host);
  exportButtons(root, "nbinspect-router");
  root.tabIndex = 0;
  root.dataset.lmSuppressShortcuts = "true";
  el("style", null, root).textContent = CSS;
  const head = el("div", "nbi-head", root);
  const title = el("span", "nbi-title", head);
  const hint = el("span", "nbi-hint", head);
  const reason = el("div", "nbi-reason", root);
  const body = el("div", "nbi-body", root);
  const heat = el("canvas", "nbi-heat", body);
  const side = el("div", "nbi-side", body);
  const barsCaption = el("div", "nbi-caption", side);
  const bars = el("canvas", "nbi-bars", side);
  const cvCaption = el("div", "nbi-caption", side, "load-balance CV of every routed layer (click to pick a layer)");
  const cvChart = el("canvas", "nbi-cv", side);
  const stripCaption = el("div", "nbi-caption", side);
  const stripBox = el("div", "nbi-strip", side);
  const strip = el("canvas", "nbi-text", stripBox);
  const tip = tooltip(root);

  let frame = 0;
  let image = null;
  let boxes = [];
  let paintedKey = "";
  const get = (k) => (SHARED.has(k) ? sel.get(k) : model.get(k));
  const E = () => get("n_experts");
  const K = () => get("top_k");
  const routed = () => get("routed_layers");
  const shownIndex = () => routed().indexOf(get("shown_layer"));
  const chosen = () => int32sOf(get("chosen"));

  function rebuild() {
    const bytes = bytesOf(get("probs"));
    image = E() && get("rows") && bytes.length === E() * get("rows") ? mapImage(bytes, E(), get("rows")) : null;
  }

  function geometry() {
    const e = Math.max(1, E());
    const rows = Math.max(1, get("rows"));
    const colW = Math.max(3, Math.min(28, Math.floor(HEAT_W / e)));
    const rowH = Math.min(16, HEAT_H / rows);
    return { e, rows, colW, rowH, left: LABEL_PX, top: TOP_PX, block: get("block") };
  }

  /** Top expert of token i (the chosen expert with the largest weight). */
  function topExpert(i) {
    const k = K();
    const c = chosen();
    const w = float32sOf(get("chosen_weights"));
    let best = 0;
    for (let j = 1; j < k; j++) if (w[i * k + j] > w[i * k + best]) best = j;
    return c[i * k + best];
  }

  function routesTo(i, e) {
    const k = K();
    const c = chosen();
    for (let j = 0; j < k; j++) if (c[i * k + j] === e) return j;
    return -1;
  }

  function drawHeat() {
    const g = geometry();
    const ctx = sizeCanvas(heat, g.left + g.e * g.colW + 8, g.top + g.rows * g.rowH + 8);
    Object.assign(heat.dataset, { left: g.left, top: g.top, colWidth: g.colW, rowHeight: g.rowH, cols: g.e, rows: g.rows });
    ctx.font = FONT;
    if (image) ctx.drawImage(image, g.left, g.top, g.e * g.colW, g.rows * g.rowH);
    ctx.strokeStyle = "#999";
    ctx.strokeRect(g.left - 0.5, g.top - 0.5, g.e * g.colW + 1, g.rows * g.rowH + 1);
    // The chosen experts: a ring in each chosen cell (the top one filled), drawn while cells are big enough.
    const tokens = get("tokens");
    const k = K();
    const c = chosen();
    if (k && c.length === tokens.length * k) {
      for (let i = 0; i < tokens.length; i++) {
        const r = Math.floor(i / g.block);
        const top = topExpert(i);
        for (let j = 0; j < k; j++) {
          const e = c[i * k + j];
          const x = g.left + e * g.colW;
          const y = g.top + r * g.rowH;
          ctx.strokeStyle = "#ff8c00";
          ctx.lineWidth = g.rowH >= 6 && g.colW >= 6 ? 1.5 : 1;
          if (g.rowH >= 4 && g.colW >= 4) ctx.strokeRect(x + 1, y + 1, g.colW - 2, Math.max(1, g.rowH - 2));
          else {
            ctx.fillStyle = "#ff8c00";
            ctx.fillRect(x, y, g.colW, Math.max(1, g.rowH));
          }
          if (e === top && g.rowH >= 6 && g.colW >= 6) {
            ctx.fillStyle = "#ff8c00";
            ctx.fillRect(x + g.colW / 2 - 1.5, y + g.rowH / 2 - 1.5, 3, 3);
          }
        }
      }
    }
    const t = get("token");
    if (t >= 0 && t < tokens.length) {
      ctx.fillStyle = "rgba(255, 165, 0, 0.22)";
      ctx.fillRect(g.left, g.top + Math.floor(t / g.block) * g.rowH, g.e * g.colW, Math.max(g.rowH, 2));
    }
    const ex = get("expert");
    if (ex >= 0 && ex < g.e) {
      ctx.strokeStyle = "#d62728";
      ctx.lineWidth = 2;
      ctx.strokeRect(g.left + ex * g.colW - 1, g.top - 1, g.colW + 2, g.rows * g.rowH + 2);
    }
    // Expert numbers above their columns (every few when narrow), in the expert's colour.
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    const every = Math.ceil(16 / g.colW);
    for (let e = 0; e < g.e; e++) {
      if (e % every && e !== ex) continue;
      ctx.fillStyle = e === ex ? "#d62728" : expertColour(e, g.e);
      ctx.fillText(String(e), g.left + (e + 0.5) * g.colW, g.top - 3);
    }
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    if (g.rowH >= 9) {
      for (let r = 0; r < g.rows; r++) {
        const i = Math.min(r * g.block, tokens.length - 1);
        ctx.fillStyle = t >= 0 && Math.floor(t / g.block) === r ? "#b35c00" : "#333";
        ctx.fillText(fitText(ctx, tokens[i], LABEL_PX - 8), g.left - 4, g.top + (r + 0.5) * g.rowH);
      }
    }
  }

  function drawBars() {
    const e = E();
    const loads = int32sOf(get("loads"));
    const li = shownIndex();
    const ctx = sizeCanvas(bars, SIDE_W, BARS_H);
    ctx.font = FONT;
    const pad = { l: 30, r: 6, t: 6, b: 16 };
    const W = SIDE_W - pad.l - pad.r;
    const H = BARS_H - pad.t - pad.b;
    if (li < 0 || loads.length < (li + 1) * e) return;
    const row = loads.subarray(li * e, (li + 1) * e);
    const top = Math.max(1, ...row);
    const bw = W / e;
    const ex = get("expert");
    const mean = row.reduce((a, b) => a + b, 0) / e;
    for (let j = 0; j < e; j++) {
      const h = (row[j] / top) * H;
      ctx.fillStyle = expertColour(j, e, ex < 0 || ex === j ? 1 : 0.35);
      ctx.fillRect(pad.l + j * bw + 0.5, pad.t + H - h, Math.max(1, bw - 1), h);
      if (j === ex) {
        ctx.strokeStyle = "#d62728";
        ctx.lineWidth = 2;
        ctx.strokeRect(pad.l + j * bw, pad.t, bw, H);
      }
    }
    // The mean load: where every bar would be if routing were perfectly balanced.
    const y = pad.t + H - (mean / top) * H;
    ctx.strokeStyle = "#444";
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(pad.l, y);
    ctx.lineTo(pad.l + W, y);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#555";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillText(String(top), pad.l - 4, pad.t + 4);
    ctx.fillText("0", pad.l - 4, pad.t + H);
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const every = Math.ceil(16 / bw);
    for (let j = 0; j < e; j += every) ctx.fillText(String(j), pad.l + (j + 0.5) * bw, pad.t + H + 3);
    Object.assign(bars.dataset, { left: pad.l, width: W, experts: e });
    const cv = float32sOf(get("cvs"))[li];
    barsCaption.textContent = `tokens routed to each expert at layer ${get("shown_layer")} (a token counts once per chosen expert; dashed: the mean) · load-balance CV ${cv.toFixed(3)} (std / mean; 0 = perfectly balanced)`;
  }

  function drawCv() {
    const layers = routed();
    const cvs = float32sOf(get("cvs"));
    const ctx = sizeCanvas(cvChart, SIDE_W, CV_H);
    ctx.font = FONT;
    const pad = { l: 30, r: 6, t: 6, b: 16 };
    const W = SIDE_W - pad.l - pad.r;
    const H = CV_H - pad.t - pad.b;
    if (!layers.length || cvs.length !== layers.length) return;
    const top = Math.max(1e-6, ...cvs);
    const bw = W / layers.length;
    const li = shownIndex();
    for (let j = 0; j < layers.length; j++) {
      const h = (cvs[j] / top) * H;
      ctx.fillStyle = j === li ? "#ff8c00" : "#6aa0d8";
      ctx.fillRect(pad.l + j * bw + 0.5, pad.t + H - h, Math.max(1, bw - 1), h);
    }
    ctx.fillStyle = "#555";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillText(top.toFixed(2), pad.l - 4, pad.t + 4);
    ctx.fillText("0", pad.l - 4, pad.t + H);
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const every = Math.ceil(18 / bw);
    for (let j = 0; j < layers.length; j += every) ctx.fillText(String(layers[j]), pad.l + (j + 0.5) * bw, pad.t + H + 3);
    Object.assign(cvChart.dataset, { left: pad.l, width: W, layers: layers.length });
  }

  function drawStrip() {
    const tokens = get("tokens");
    const e = E();
    const ex = get("expert");
    const t = get("token");
    const ready = chosen().length === tokens.length * K() && K() > 0;
    const laid = tokenBoxes(tokens, { font: TEXT_FONT, maxWidth: SIDE_W - 8, right: SIDE_W - 4, lineHeight: LINE_H, newlines: true });
    boxes = laid.boxes;
    const ctx = sizeCanvas(strip, SIDE_W - 2, laid.height);
    ctx.font = TEXT_FONT;
    ctx.textBaseline = "middle";
    for (const [bx, by, w, i] of boxes) {
      let fill = "#f2f2f2";
      if (ready) {
        const top = topExpert(i);
        if (ex < 0) fill = expertColour(top, e, 0.45);
        else fill = routesTo(i, ex) >= 0 ? expertColour(ex, e, 0.6) : "#f4f4f4";
      }
      ctx.fillStyle = fill;
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
    stripCaption.textContent =
      ex < 0
        ? `text coloured by each token's top expert at layer ${get("shown_layer")} (colours as the expert numbers)`
        : `tokens routed to expert ${ex} at layer ${get("shown_layer")} (in any of their ${K()} choices)`;
  }

  function draw() {
    frame = 0;
    const why = get("reason");
    reason.style.display = why ? "block" : "none";
    body.style.display = why ? "none" : "flex";
    reason.textContent = why;
    if (why) {
      title.textContent = "Router";
      hint.textContent = "";
      return;
    }
    const L = get("layer");
    const shownL = get("shown_layer");
    const ex = get("expert");
    title.textContent = `Layer ${shownL} router · top ${K()} of ${E()} experts` + (ex >= 0 ? ` · expert ${ex}` : "");
    const block = get("block");
    hint.textContent =
      (L !== shownL ? `layer ${L} has a dense MLP; showing the nearest routed layer · ` : "") +
      "router probabilities (softmax of the router logits), shade ∝ √p; rings: the chosen experts, dot: the top one" +
      (block > 1 ? ` · ${block} tokens per row (largest p)` : "") +
      " · click an expert, ↑/↓ routed layer, ←/→ expert, Esc clears";
    drawHeat();
    drawBars();
    drawCv();
    drawStrip();
    root.dataset.layer = String(shownL);
    root.dataset.expert = String(ex);
    const key = `${shownL},${get("probs") ? bytesOf(get("probs")).length : 0},${int32sOf(get("loads")).length}`;
    if (image && key !== paintedKey) {
      paintedKey = key;
      root.dataset.painted = String(shownL);
      model.set("painted", get("painted") + 1);
    }
  }
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };

  function setExpert(e) {
    model.set("expert", e);
    model.save_changes();
    schedule();
  }
  function setLayer(l) {
    if (l === get("layer")) return;
    sel.set({ layer: l }); // Python sends that layer's probabilities
    schedule();
  }
  function setToken(i) {
    if (i === get("token")) return;
    sel.set({ token: i }, { throttle: true });
    schedule();
  }

  function heatCell(evt) {
    const g = geometry();
    const r = heat.getBoundingClientRect();
    const x = evt.clientX - r.left - g.left;
    const y = evt.clientY - r.top - g.top;
    const c = Math.floor(x / g.colW);
    const row = Math.floor(y / g.rowH);
    return { g, c: x >= 0 && c < g.e ? c : -1, row: y >= 0 && row < g.rows ? row : -1 };
  }
  heat.addEventListener("click", (evt) => {
    const { c } = heatCell(evt);
    if (c >= 0) setExpert(c === get("expert") ? -1 : c);
    root.focus();
  });
  heat.addEventListener("mousemove", (evt) => {
    const { g, c, row } = heatCell(evt);
    const tokens = get("tokens");
    if (row < 0) return tip.hide();
    const i = Math.min(row * g.block, tokens.length - 1);
    setToken(i);
    if (c < 0) return tip.hide();
    const p = bytesOf(get("probs"))[row * g.e + c] / 255;
    const slot = g.block === 1 ? routesTo(i, c) : -1;
    const w = slot >= 0 ? float32sOf(get("chosen_weights"))[i * K() + slot] : null;
    tip.show(evt, `${q(tokens[i])} #${i}${g.block > 1 ? ` (block of ${g.block}, largest p)` : ""}\nexpert ${c}: p = ${p.toFixed(3)}` +
      (w !== null ? `\nchosen, mixing weight ${w.toFixed(3)}` : g.block === 1 ? "\nnot chosen" : "") + "\nclick to select this expert");
  });
  heat.addEventListener("mouseleave", () => {
    tip.hide();
    setToken(-1);
  });
  bars.addEventListener("click", (evt) => {
    const r = bars.getBoundingClientRect();
    const left = Number(bars.dataset.left);
    const W = Number(bars.dataset.width);
    const e = Math.floor(((evt.clientX - r.left - left) / W) * E());
    if (e >= 0 && e < E()) setExpert(e === get("expert") ? -1 : e);
  });
  bars.addEventListener("mousemove", (evt) => {
    const r = bars.getBoundingClientRect();
    const e = Math.floor(((evt.clientX - r.left - Number(bars.dataset.left)) / Number(bars.dataset.width)) * E());
    const li = shownIndex();
    if (e < 0 || e >= E() || li < 0) return tip.hide();
    tip.show(evt, `expert ${e}: ${int32sOf(get("loads"))[li * E() + e]} tokens\nclick to select`);
  });
  bars.addEventListener("mouseleave", () => tip.hide());
  const cvLayer = (evt) => {
    const r = cvChart.getBoundingClientRect();
    const j = Math.floor(((evt.clientX - r.left - Number(cvChart.dataset.left)) / Number(cvChart.dataset.width)) * routed().length);
    return j >= 0 && j < routed().length ? j : -1;
  };
  cvChart.addEventListener("click", (evt) => {
    const j = cvLayer(evt);
    if (j >= 0) setLayer(routed()[j]);
  });
  cvChart.addEventListener("mousemove", (evt) => {
    const j = cvLayer(evt);
    if (j < 0) return tip.hide();
    tip.show(evt, `layer ${routed()[j]}: CV ${float32sOf(get("cvs"))[j].toFixed(3)}\nclick to show this layer`);
  });
  cvChart.addEventListener("mouseleave", () => tip.hide());
  strip.addEventListener("mousemove", (evt) => {
    const r = strip.getBoundingClientRect();
    const x = evt.clientX - r.left;
    const y = evt.clientY - r.top;
    const hit = boxes.find(([bx, by, w]) => x >= bx && x < bx + w && y >= by && y < by + LINE_H);
    if (!hit) return tip.hide();
    const i = hit[3];
    setToken(i);
    const k = K();
    const c = chosen();
    const w = float32sOf(get("chosen_weights"));
    const lines = [];
    for (let j = 0; j < k; j++) lines.push(`expert ${c[i * k + j]}: weight ${w[i * k + j].toFixed(3)}`);
    tip.show(evt, `${q(get("tokens")[i])} #${i}\n${lines.join("\n")}`);
  });
  strip.addEventListener("mouseleave", () => {
    tip.hide();
    setToken(-1);
  });
  root.addEventListener("keydown", (evt) => {
    const layers = routed();
    if (evt.key === "ArrowUp" || evt.key === "ArrowDown") {
      const j = Math.max(0, Math.min(layers.length - 1, shownIndex() + (evt.key === "ArrowUp" ? -1 : 1)));
      setLayer(layers[j]);
    } else if (evt.key === "ArrowLeft" || evt.key === "ArrowRight") {
      const cur = get("expert");
      setExpert(Math.max(0, Math.min(E() - 1, cur < 0 ? 0 : cur + (evt.key === "ArrowLeft" ? -1 : 1))));
    } else if (evt.key === "Escape") setExpert(-1);
    else return;
    evt.preventDefault();
    evt.stopPropagation();
  });

  const onProbs = () => {
    rebuild();
    schedule();
  };
  const plain = ["tokens", "chosen", "chosen_weights", "loads", "cvs", "expert", "shown_layer", "reason"];
  model.on("change:probs", onProbs);
  for (const k of plain) model.on(`change:${k}`, schedule);
  sel.on(schedule);
  rebuild();
  draw();
  return () => {
    if (frame) cancelAnimationFrame(frame);
    model.off("change:probs", onProbs);
    for (const k of plain) model.off(`change:${k}`, schedule);
    sel.off(schedule);
  };
}

export default { render };
