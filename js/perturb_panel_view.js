// PredictionView: next-token predictions before and after a perturbation, for a few positions.
// Pairs with nbinspect/views/perturb_panel.py. Text only: every string goes in through textContent.
import { el } from "./dom.js";

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
`;

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

function render({ model, el: host }) {
  const root = el("div", "nbi-pred", host);
  el("style", null, root).textContent = CSS;
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
    model.save_changes();
    // For automation: how many summaries this view has painted, and when the last one was.
    root.dataset.painted = String(model.get("painted"));
    root.dataset.paintedAt = String(performance.now());
  };
  const paintBusy = () => root.classList.toggle("is-busy", !!model.get("busy"));

  model.on("change:summary", paint);
  model.on("change:busy", paintBusy);
  paint();
  paintBusy();
  return () => {
    model.off("change:summary", paint);
    model.off("change:busy", paintBusy);
  };
}

export default { render };
