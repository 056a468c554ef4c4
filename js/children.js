// Composite widgets (the dashboard, the gradient view, the sliders panel) hold their children by widget
// reference and draw them here with each child's own ESM, so a composite is one anywidget model that any
// host rendering anywidget models can show (marimo included), and adding a view touches no composite code.

const modules = new Map(); // ESM source -> its imported module, shared by every child of that kind

/** The widget model an "IPY_MODEL_<id>" reference names. */
export async function childModel(model, ref) {
  const id = typeof ref === "string" ? ref.replace(/^IPY_MODEL_/, "") : null;
  if (!id) throw new Error(`nbinspect: ${JSON.stringify(ref)} is not a widget reference`);
  return model.widget_manager.get_model(id);
}

async function moduleOf(esm) {
  if (!modules.has(esm)) {
    // A blob URL keeps everything local: nothing is fetched from the network.
    const url = URL.createObjectURL(new Blob([esm], { type: "text/javascript" }));
    modules.set(esm, import(/* webpackIgnore: true */ url).finally(() => URL.revokeObjectURL(url)));
  }
  return modules.get(esm);
}

/**
 * Draw the child widget `ref` into `el` with its own ESM; returns its cleanup function. `host` is the
 * anywidget host the composite's render was given (used where the child's ESM is not in its state).
 * @returns {Promise<() => void>}
 */
export async function renderChild(model, ref, el, host) {
  const child = await childModel(model, ref);
  const esm = child.get("_esm");
  if ((typeof esm !== "string" || !esm) && host && host.getWidget) {
    // marimo keeps a child's code out of its state: anywidget's host API (0.11+) draws it instead.
    const id = String(ref).replace(/^IPY_MODEL_/, "");
    const controller = new AbortController();
    const widget = await host.getWidget(`anywidget:${id}`);
    await widget.render({ el, signal: controller.signal });
    return () => controller.abort();
  }
  if (typeof esm !== "string" || !esm) {
    el.textContent = "nbinspect: this child widget has no ESM to draw it with";
    return () => {};
  }
  const css = child.get("_css");
  if (typeof css === "string" && css) el.appendChild(document.createElement("style")).textContent = css;
  let mod = await moduleOf(esm);
  mod = mod.default ?? mod;
  if (typeof mod === "function") mod = await mod(); // anywidget also allows a factory returning {render}
  const cleanup = await mod.render?.({ model: child, el, experimental: {} });
  return typeof cleanup === "function" ? cleanup : () => {};
}
