// Dashboard: a heading and each registered view (drawn by reference with its own ESM), then the
// sliders panel. Pairs with nbinspect/views/dashboard.py; the layout knows no view by name.
import { renderChild } from "./children.js";
import { el } from "./dom.js";
import { exportButtons } from "./export_button.js";

const CSS = `
.nbi-dash { font: 12px system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222; }
.nbi-dash h3 { font-size: 14px; font-weight: 600; margin: 14px 0 6px; }
.nbi-dash .nbi-skipped { color: #666; margin: 4px 0; }
`;

async function render({ model, el: host, host: anywidgetHost }) {
  const root = el("div", "nbi-dash", host);
  exportButtons(root, "nbinspect-dashboard");
  el("style", null, root).textContent = CSS;
  const titles = model.get("titles") || [];
  const cleanups = [];
  const views = model.get("shown") || [];
  // Boxes first, in order, so the layout does not jump while the children's ESMs load.
  const boxes = views.map((_, i) => {
    el("h3", null, root, titles[i] || "");
    return el("div", "nbi-view", root);
  });
  for (const [title, why] of model.get("notes") || []) el("div", "nbi-skipped", root, `${title}: ${why}`);
  let panelBox = null;
  if (model.get("panel")) {
    el("h3", null, root, "Perturb and recompute");
    panelBox = el("div", "nbi-view", root);
  }
  const drawn = views.map((ref, i) => renderChild(model, ref, boxes[i], anywidgetHost));
  if (panelBox) drawn.push(renderChild(model, model.get("panel"), panelBox, anywidgetHost));
  for (const c of await Promise.all(drawn)) cleanups.push(c);
  model.set("painted", (model.get("painted") || 0) + 1);
  return () => cleanups.forEach((c) => c());
}

export default { render };
