// BlockWritesView: per layer, ‖residual stream‖ and ‖what attention / the MLP wrote‖ (log scale), and the
// cosine of each write with the stream it joins. Pairs with nbinspect/views/block_writes_view.py. Canvas only.
import { float32sOf } from "./codecs.js";
import { sizeCanvas } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";

const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
const W = 560;
const NORM_H = 200;
const COS_H = 120;
const PAD = { l: 46, r: 12, t: 10, b: 20 };
const SHARED = new Set(["layer", "token"]);
const LINES = [
  ["stream_out", "residual stream ‖x‖", "#222", 2.5],
  ["attention", "attention writes", "#1f77b4", 1.5],
  ["mlp", "MLP writes", "#d62728", 1.5],
];
const COS = [
  ["cos_attention", "cos(attention write, stream)", "#1f77b4"],
  ["cos_mlp", "cos(MLP write, stream)", "#d62728"],
];

const CSS = `
.nbi-bw { font: ${FONT}; color: #222; display: inline-block; position: relative; }
.nbi-bw .nbi-head { display: flex; gap: 12px; align-items: baseline; margin: 0 0 6px 2px; font-size: 12px; flex-wrap: wrap; }
.nbi-bw .nbi-title { font-weight: 600; }
.nbi-bw .nbi-hint { color: #777; }
.nbi-bw .nbi-legend { color: #444; margin: 4px 2px; white-space: pre-line; }
.nbi-bw canvas { display: block; cursor: pointer; }
.nbi-bw .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; box-shadow: 0 1px 4px rgba(0,0,0,.15); }
`;

async function render({ model, el: host }) {
  const sel = await bindSelection(model);
  const root = el("div", "nbi-bw", host);
  exportButtons(root, "nbinspect-block-writes");
  el("style", null, root).textContent = CSS;
  const head = el("div", "nbi-head", root);
  const title = el("span", "nbi-title", head);
  const hint = el("span", "nbi-hint", head, "hover a token in any view to see its own curve · click a layer to select it");
  const norms = el("canvas", null, root);
  const cosines = el("canvas", null, root);
  const legend = el("div", "nbi-legend", root);
  const tip = tooltip(root);
  let frame = 0;
  let painted = false;

  const get = (k) => (SHARED.has(k) ? sel.get(k) : model.get(k));

  // One value per layer: the selected token's, or the mean over tokens.
  function series(name) {
    const v = float32sOf(get(name));
    const L = get("n_layers");
    const n = L ? v.length / L : 0;
    const t = get("token");
    const out = new Float64Array(L);
    for (let l = 0; l < L; l++) {
      if (t >= 0 && t < n) out[l] = v[l * n + t];
      else {
        let s = 0;
        for (let i = 0; i < n; i++) s += v[l * n + i];
        out[l] = n ? s / n : 0;
      }
    }
    return out;
  }

  const xOf = (l, L) => PAD.l + (L > 1 ? (l / (L - 1)) * (W - PAD.l - PAD.r) : (W - PAD.l - PAD.r) / 2);

  function axes(ctx, H, L) {
    ctx.strokeStyle = "#bbb";
    ctx.lineWidth = 1;
    ctx.strokeRect(PAD.l - 0.5, PAD.t - 0.5, W - PAD.l - PAD.r + 1, H - PAD.t - PAD.b + 1);
    ctx.fillStyle = "#555";
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const every = Math.ceil(L / 15);
    for (let l = 0; l < L; l += every) ctx.fillText(String(l), xOf(l, L), H - PAD.b + 4);
    const sl = get("layer");
    if (sl >= 0 && sl < L) {
      ctx.fillStyle = "rgba(255, 165, 0, 0.25)";
      ctx.fillRect(xOf(sl, L) - 3, PAD.t, 6, H - PAD.t - PAD.b);
    }
  }

  function polyline(ctx, xs, ys, colour, width) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.beginPath();
    xs.forEach((x, i) => (i ? ctx.lineTo(x, ys[i]) : ctx.moveTo(x, ys[i])));
    ctx.stroke();
  }

  function draw() {
    frame = 0;
    const L = get("n_layers");
    const t = get("token");
    const tokens = get("tokens");
    title.textContent = `What each block writes into the residual stream — ${t >= 0 ? `token ${JSON.stringify(tokens[t] ?? "")} (#${t})` : "mean over tokens"}`;
    const data = Object.fromEntries([...LINES, ...COS].map(([k]) => [k, series(k)]));
    // Norms, log scale.
    let lo = Infinity;
    let hi = 0;
    for (const [k] of LINES) for (const v of data[k]) if (v > 0) (lo = Math.min(lo, v)), (hi = Math.max(hi, v));
    if (!(hi > 0)) (lo = 1), (hi = 10);
    const llo = Math.floor(Math.log10(lo));
    const lhi = Math.ceil(Math.log10(hi)) + (Math.log10(hi) === Math.ceil(Math.log10(hi)) ? 0.01 : 0);
    const yN = (v) => NORM_H - PAD.b - ((Math.log10(Math.max(v, 10 ** llo)) - llo) / (lhi - llo)) * (NORM_H - PAD.t - PAD.b);
    let ctx = sizeCanvas(norms, W, NORM_H);
    ctx.font = FONT;
    axes(ctx, NORM_H, L);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let e = llo; e <= Math.floor(lhi); e++) {
      ctx.fillStyle = "#555";
      ctx.fillText(`1e${e}`, PAD.l - 4, yN(10 ** e));
      ctx.strokeStyle = "#eee";
      ctx.beginPath();
      ctx.moveTo(PAD.l, yN(10 ** e));
      ctx.lineTo(W - PAD.r, yN(10 ** e));
      ctx.stroke();
    }
    const xs = Array.from({ length: L }, (_, l) => xOf(l, L));
    for (const [k, , colour, width] of LINES) polyline(ctx, xs, Array.from(data[k], yN), colour, width);
    // Cosines, −1..1.
    ctx = sizeCanvas(cosines, W, COS_H);
    ctx.font = FONT;
    axes(ctx, COS_H, L);
    const yC = (v) => PAD.t + ((1 - v) / 2) * (COS_H - PAD.t - PAD.b);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillStyle = "#555";
    for (const v of [-1, 0, 1]) ctx.fillText(String(v), PAD.l - 4, yC(v));
    ctx.strokeStyle = "#ccc";
    ctx.beginPath();
    ctx.moveTo(PAD.l, yC(0));
    ctx.lineTo(W - PAD.r, yC(0));
    ctx.stroke();
    for (const [k, , colour] of COS) polyline(ctx, xs, Array.from(data[k], yC), colour, 1.5);
    // The teaching line: how big the updates are next to the stream.
    let ratio = 0;
    for (let l = 0; l < L; l++) ratio += (data.attention[l] + data.mlp[l]) / Math.max(data.stream_out[l], 1e-12);
    legend.textContent =
      `top (log scale): ${LINES.map(([, label]) => label).join(" · ")} — black, blue, red\n` +
      `bottom: ${COS.map(([, label]) => label).join(" · ")}${get("parallel") ? " (parallel residual: both read the block's input)" : ""}\n` +
      `on average a block's two writes together are ${((100 * ratio) / Math.max(L, 1)).toFixed(0)}% of the stream's norm: ` +
      "the skip path carries the signal, each block adds an update.";
    Object.assign(norms.dataset, { left: PAD.l, width: W - PAD.l - PAD.r, layers: L });
    if (L) root.dataset.drawnAt = String(performance.now()); // for benchmarks: data on screen
    if (!painted && L) {
      painted = true;
      model.set("painted", get("painted") + 1);
    }
  }
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };

  const layerAt = (evt, canvas) => {
    const L = get("n_layers");
    const r = canvas.getBoundingClientRect();
    const f = (evt.clientX - r.left - PAD.l) / (W - PAD.l - PAD.r);
    const l = Math.round(f * (L - 1));
    return l >= 0 && l < L ? l : -1;
  };
  for (const canvas of [norms, cosines]) {
    canvas.addEventListener("mousemove", (evt) => {
      const l = layerAt(evt, canvas);
      if (l < 0) return tip.hide();
      const v = (k) => series(k)[l];
      tip.show(
        evt,
        `layer ${l}\n‖stream after‖ ${v("stream_out").toFixed(2)}\n‖attention write‖ ${v("attention").toFixed(2)}  cos ${v("cos_attention").toFixed(2)}\n` +
          `‖MLP write‖ ${v("mlp").toFixed(2)}  cos ${v("cos_mlp").toFixed(2)}`,
      );
    });
    canvas.addEventListener("mouseleave", () => tip.hide());
    canvas.addEventListener("click", (evt) => {
      const l = layerAt(evt, canvas);
      if (l >= 0) sel.set({ layer: l });
    });
  }
  const names = ["stream_out", "attention", "mlp", "cos_attention", "cos_mlp", "tokens"];
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
