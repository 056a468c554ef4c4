// ActivationView: the MLP activation function as a curve over the selected layer's pre-activation range,
// the pre-activations binned underneath, the fraction in each regime, and for gated MLPs the
// act(gate) × up product's histogram. Pairs with nbinspect/views/activation_view.py. Canvas only.
import { float32sOf } from "./codecs.js";
import { sizeCanvas } from "./heatmap.js";
import { el } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";
import { FONT, axes, bars, frame, line, maxOf, num, pct } from "./charts.js";

const W = 520;
const H = 240;

const CSS = `
.nbi-act { font: ${FONT}; color: #222; display: inline-block; position: relative; }
.nbi-act .nbi-head { display: flex; gap: 14px; align-items: baseline; margin: 0 0 6px 2px; font-size: 12px; flex-wrap: wrap; }
.nbi-act .nbi-title { font-weight: 600; }
.nbi-act .nbi-hint { color: #666; }
.nbi-act .nbi-legend { color: #333; white-space: pre-line; line-height: 1.45; margin: 4px 0; }
.nbi-act canvas { display: block; }
.nbi-act .nbi-layers { display: flex; gap: 2px; flex-wrap: wrap; margin-bottom: 6px; }
.nbi-act button { font: inherit; padding: 0 5px; border: 1px solid #ccc; background: #f6f6f6; cursor: pointer; }
.nbi-act button[aria-pressed="true"] { background: #dbe8f5; border-color: #6aa0d8; }
`;

async function render({ model, el: host }) {
  const sel = await bindSelection(model);
  const root = el("div", "nbi-act", host);
  exportButtons(root, "nbinspect-activation");
  el("style", null, root).textContent = CSS;
  const head = el("div", "nbi-head", root);
  const title = el("span", "nbi-title", head);
  const note = el("span", "nbi-hint", head);
  const layerBar = el("div", "nbi-layers", root);
  const layerButtons = [];
  for (let i = 0; i < model.get("n_layers"); i++) {
    const b = el("button", null, layerBar, String(i));
    b.type = "button";
    b.addEventListener("click", () => sel.set({ layer: i }));
    layerButtons.push(b);
  }
  const chart = el("canvas", null, root);
  const legendBox = el("div", "nbi-legend", root);
  const productTitle = el("div", "nbi-hint", root);
  const product = el("canvas", null, root);

  const ready = () => model.get("shown_layer") === sel.get("layer");

  function paint() {
    const layer = sel.get("layer");
    layerButtons.forEach((b, i) => b.setAttribute("aria-pressed", String(i === layer)));
    title.textContent = `${model.get("act_name")} in layer ${model.get("shown_layer")}'s MLP`;
    note.textContent = model.get("note");
    const [lo, hi] = model.get("x_range");
    const y = float32sOf(model.get("curve"));
    const counts = float32sOf(model.get("pre_hist"));
    const xs = Array.from(y, (_, i) => lo + (i * (hi - lo)) / Math.max(1, y.length - 1));
    let yLo = 0;
    let yHi = 0;
    for (const v of y) {
      if (Number.isFinite(v)) {
        yLo = Math.min(yLo, v);
        yHi = Math.max(yHi, v);
      }
    }
    const ctx = sizeCanvas(chart, W, H + 24);
    ctx.globalAlpha = ready() ? 1 : 0.4;
    const hist = frame(48, 8, W - 60, H - 20, lo, hi, 0, maxOf(counts), true);
    bars(ctx, hist, counts, "#c9d9ea");
    const curve = frame(48, 8, W - 60, H - 20, lo, hi, yLo, yHi);
    line(ctx, curve, [lo, hi], [lo, hi], "#bbb", 1, [3, 3]); // y = x, the "linear" reference
    line(ctx, curve, xs, Array.from(y), "#d62728", 2);
    axes(ctx, curve, { xLabel: "pre-activation x", y0: yLo, y1: yHi });
    const r = model.get("regimes");
    const tol = model.get("tolerance");
    legendBox.textContent = [
      "red: act(x); grey dashes: y = x; bars: this layer's pre-activations over the text (log counts)",
      `negative (act(x) ≈ 0, |act(x)| ≤ ${pct(tol)} of |x|): ${pct(r.negative ?? 0)} · ` +
        `near zero (the curved part): ${pct(r["near zero"] ?? 0)} · linear (act(x) ≈ x within ${pct(tol)}): ${pct(r.linear ?? 0)}`,
    ].join("\n");
    const gated = model.get("gated");
    productTitle.style.display = product.style.display = gated ? "block" : "none";
    if (gated) {
      const [plo, phi] = model.get("product_range");
      const pc = float32sOf(model.get("product_hist"));
      productTitle.textContent = `gated MLP: act(gate) × up, what the down projection reads (log counts; range ${num(plo)} … ${num(phi)})`;
      const pctx = sizeCanvas(product, W, 130);
      const f = frame(48, 6, W - 60, 100, plo, phi, 0, maxOf(pc), true);
      bars(pctx, f, pc, "#9bc49b");
      axes(pctx, f, { xLabel: "act(gate) × up" });
    }
    if (ready()) {
      model.set("painted", model.get("painted") + 1);
    }
  }

  let frameId = 0;
  function schedule() {
    if (!frameId) frameId = requestAnimationFrame(() => { frameId = 0; paint(); });
  }
  const keys = ["shown_layer", "curve", "pre_hist", "regimes", "product_hist", "note"];
  for (const k of keys) model.on(`change:${k}`, schedule);
  sel.on(schedule);
  paint();
  return () => {
    for (const k of keys) model.off(`change:${k}`, schedule);
    sel.off(schedule);
  };
}

export default { render };
