// PerturbPanel: sliders that edit the model, and next-token predictions before and after, for a few
// positions; the linked views it was given are drawn underneath. Pairs with
// nbinspect/views/perturb_panel.py. The controls are ours (plain inputs), not ipywidgets, so every host
// that renders anywidget models renders the panel. Text only: every string goes in through textContent.
import { renderChild } from "./children.js";
import { el } from "./dom.js";
import { exportButtons } from "./export_button.js";

const CSS = `
.nbi-pred { font: 12px system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222; }
.nbi-pred .nbi-top { display: flex; gap: 12px; align-items: baseline; margin-bottom: 6px; }
.nbi-pred .nbi-edits { color: #555; }
.nbi-pred .nbi-busy { color: #b35c00; visibility: hidden; }
.nbi-pred.is-busy .nbi-busy { visibility: visible; }
.nbi-pred .nbi-msg { color: #8a1c1c; margin: 4px 0; }
.nbi-pred .nbi-positions { display: flex; gap: 28px; flex-wrap: wrap; }
.nbi-pred table { border-collapse: collapse; }
.nbi-pred caption { text-align: left; font-weight: 600; padding-bottom: 3px; white-space: pre; }
.nbi-pred td, .nbi-pred th { padding: 1px 6px; text-align: left; white-space: pre; }
.nbi-pred th { color: #666; font-weight: normal; }
.nbi-pred td.p { text-align: right; font-variant-numeric: tabular-nums; }
.nbi-pred .bar { display: inline-block; height: 8px; background: #6aa0d8; vertical-align: middle; }
.nbi-pred .after .bar { background: #d8866a; }
.nbi-pred .nbi-stats { margin-top: 3px; color: #444; }
.nbi-pred .changed { color: #b00; font-weight: 600; }
.nbi-pred .nbi-controls { display: grid; grid-template-columns: repeat(3, max-content); gap: 4px 18px; margin-bottom: 8px; }
.nbi-pred .nbi-control { display: flex; gap: 6px; align-items: center; white-space: nowrap; }
.nbi-pred .nbi-control input[type=range] { width: 130px; }
.nbi-pred .nbi-control input[type=number] { width: 70px; }
.nbi-pred .nbi-control output { min-width: 34px; font-variant-numeric: tabular-nums; color: #444; }
.nbi-pred .nbi-control.off { opacity: 0.45; }
.nbi-pred .nbi-views > * { margin-top: 12px; }
`;

// One row per edit: [label, trait, kind, min, max(model), step]. Ranges come from the model's traits.
const CONTROLS = [
  ["head: layer", "head_layer", "range", 0, (m) => m.get("n_layers") - 1, 1],
  ["head", "head", "range", 0, (m) => m.get("n_heads") - 1, 1],
  ["× scale", "head_factor", "range", 0, () => 2, 0.05],
  ["neuron: layer", "neuron_layer", "range", 0, (m) => m.get("n_layers") - 1, 1],
  ["neuron", "neuron", "number", 0, (m) => Math.max(0, m.get("n_neurons") - 1), 1],
  ["× scale", "neuron_factor", "range", 0, () => 2, 0.05],
  ["noise: layer", "noise_layer", "range", 0, (m) => m.get("n_layers") - 1, 1],
  ["σ (× weight RMS)", "noise_sigma", "range", 0, () => 1, 0.01],
  ["seed", "noise_seed", "number", 0, () => 2 ** 31 - 1, 1],
  ["expert: layer", "expert_layer", "range", 0, (m) => m.get("n_layers") - 1, 1],
  ["expert", "expert", "range", 0, (m) => Math.max(0, m.get("n_experts") - 1), 1],
  ["× scale (0: ablate expert)", "expert_factor", "range", 0, () => 2, 0.05],
  ["also show position", "position", "range", 0, (m) => m.get("tokens").length - 1, 1],
];
const NEURON_CONTROLS = new Set(["neuron_layer", "neuron", "neuron_factor"]);
// Shown only for mixture-of-experts models (n_experts > 0); they follow an expert clicked in a router view.
const EXPERT_CONTROLS = new Set(["expert_layer", "expert", "expert_factor"]);

// The expert layer slider moves over the routed layers only: a dense layer snaps to the nearest routed one.
function nearestRouted(model, value) {
  const routed = model.get("expert_layers") || [];
  let best = routed[0] ?? value;
  for (const layer of routed) if (Math.abs(layer - value) < Math.abs(best - value)) best = layer;
  return best;
}

function controls(model, parent) {
  const grid = el("div", "nbi-controls", parent);
  const inputs = {};
  for (const [label, name, kind, min, max, step] of CONTROLS) {
    if (EXPERT_CONTROLS.has(name) && !model.get("n_experts")) continue;
    const box = el("label", "nbi-control", grid);
    el("span", null, box, label);
    const input = el("input", null, box);
    input.type = kind;
    input.min = String(min);
    input.max = String(max(model));
    input.step = String(step);
    input.name = name;
    const shown = el("output", null, box);
    const off = NEURON_CONTROLS.has(name) && !model.get("n_neurons");
    if (off) {
      box.classList.add("off");
      input.disabled = true;
      box.title = "this model has no single MLP down projection: neuron sliders are off";
    }
    const sync = () => {
      input.value = String(model.get(name));
      shown.textContent = kind === "range" ? input.value : "";
    };
    input.addEventListener("input", () => {
      let value = Number(input.value);
      if (!Number.isFinite(value) || value < min || value > max(model)) return; // refused: nothing lost
      if (name === "expert_layer") {
        value = nearestRouted(model, value);
        input.value = String(value);
      }
      shown.textContent = kind === "range" ? input.value : "";
      model.set(name, value);
      model.save_changes();
    });
    model.on(`change:${name}`, sync);
    sync();
    inputs[name] = { input, sync };
  }
  const reset = el("button", "nbi-reset", grid, "reset");
  reset.title = "Give back the original model";
  reset.addEventListener("click", () => model.send({ event: "reset" }));
  return () => {
    for (const [name, { sync }] of Object.entries(inputs)) model.off(`change:${name}`, sync);
  };
}

const BAR_PX = 60;


// Token text shown with visible spaces and newlines, so " Paris" and "Paris" differ on screen.
const show = (t) => JSON.stringify(t);
const pct = (p) => `${(100 * p).toFixed(p < 0.001 ? 3 : 1)}%`;

function topCells(row, entry, side) {
  const tok = el("td", side, row, entry ? show(entry[0]) : "");
  const p = el("td", `p ${side}`, row);
  if (entry) {
    const bar = el("span", "bar", p);
    bar.style.width = `${Math.max(1, Math.round(BAR_PX * entry[1]))}px`;
    p.appendChild(document.createTextNode(` ${pct(entry[1])}`));
  }
  return tok;
}

function positionTable(parent, pos) {
  const box = el("div", "nbi-position", parent);
  const table = el("table", null, box);
  el("caption", null, table, `position ${pos.position}: ${show(pos.token)} → next token`);
  if (pos.before) {
    const head = el("tr", null, table);
    for (const h of ["before", "", "after", ""]) el("th", null, head, h);
    const n = Math.max(pos.before.length, pos.after.length);
    for (let i = 0; i < n; i++) {
      const row = el("tr", null, table);
      topCells(row, pos.before[i], "before");
      topCells(row, pos.after[i], "after");
    }
    const stats = el("div", "nbi-stats", box);
    stats.appendChild(document.createTextNode(`KL(before‖after) = ${pos.kl.toExponential(2)}   `));
    const changed = el("span", pos.argmax_changed ? "changed" : null, stats);
    changed.textContent = pos.argmax_changed
      ? `top token changed: ${show(pos.before[0][0])} → ${show(pos.after[0][0])}`
      : "top token unchanged";
  } else {
    // Encoders have no next-token head: how far the final hidden state moved instead.
    const stats = el("div", "nbi-stats", box);
    stats.textContent = `hidden state: cosine ${pos.cosine.toFixed(5)}, relative change ${pos.relative_change.toExponential(2)}`;
  }
}

async function render({ model, el: host, host: anywidgetHost }) {
  const root = el("div", "nbi-pred", host);
  exportButtons(root, "nbinspect-perturb-panel");
  el("style", null, root).textContent = CSS;
  const stopControls = controls(model, root);
  const top = el("div", "nbi-top", root);
  const edits = el("span", "nbi-edits", top);
  const busy = el("span", "nbi-busy", top, "recomputing…");
  const message = el("div", "nbi-msg", root);
  const positions = el("div", "nbi-positions", root);

  const paint = () => {
    const s = model.get("summary") || {};
    edits.textContent = (s.edits || []).length ? `edits: ${s.edits.join(", ")}` : "no edits (the original model)";
    if (s.from_layer !== undefined) {
      const what =
        s.from_layer < 0
          ? "everything"
          : s.from_layer >= s.n_layers
            ? "only the head"
            : s.from_layer === s.n_layers - 1
              ? `layer ${s.from_layer}`
              : `layers ${s.from_layer}–${s.n_layers - 1}`;
      edits.textContent += `  ·  recomputed ${what} in ${s.compute_ms} ms`;
    }
    message.textContent = s.message || "";
    positions.replaceChildren();
    for (const pos of s.positions || []) positionTable(positions, pos);
    model.set("painted", (model.get("painted") || 0) + 1);
    // For automation: how many summaries this view has painted, and when the last one was.
    root.dataset.painted = String(model.get("painted"));
    root.dataset.paintedAt = String(performance.now());
    root.dataset.computeMs = String(s.compute_ms ?? ""); // what Python spent on the run itself
  };
  const paintBusy = () => root.classList.toggle("is-busy", !!model.get("busy"));

  model.on("change:summary", paint);
  model.on("change:busy", paintBusy);
  paint();
  paintBusy();
  const views = el("div", "nbi-views", root);
  const cleanups = [];
  for (const ref of model.get("views") || []) cleanups.push(await renderChild(model, ref, el("div", null, views), anywidgetHost));
  return () => {
    stopControls();
    model.off("change:summary", paint);
    model.off("change:busy", paintBusy);
    for (const c of cleanups) c();
  };
}

export default { render };
