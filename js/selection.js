// The shared Selection, as seen from a view's JS. Views read and write the same widget model in the
// browser, so a click in one view repaints every linked view at once, with no kernel round trip;
// Python hears about it through the ordinary sync (hover is throttled so the kernel is not flooded).

const SAVE_EVERY_MS = 100;

/**
 * Resolve the view's `selection` trait (an "IPY_MODEL_<id>" reference) to the shared model.
 * @returns {Promise<{get: (k: string) => number, set: (values: object, opts?: {throttle?: boolean}) => void,
 *   on: (cb: () => void) => void, off: (cb: () => void) => void}>}
 */
export async function bindSelection(model) {
  const ref = model.get("selection");
  const id = typeof ref === "string" ? ref.replace(/^IPY_MODEL_/, "") : null;
  const shared = id ? await model.widget_manager.get_model(id) : null;
  if (!shared) throw new Error("nbinspect: this view has no Selection model");
  let last = 0;
  let timer = null;
  const save = () => {
    last = performance.now();
    shared.save_changes();
  };
  return {
    get: (k) => shared.get(k),
    set(values, { throttle = false } = {}) {
      let changed = false;
      for (const [k, v] of Object.entries(values)) {
        if (shared.get(k) !== v) {
          shared.set(k, v);
          changed = true;
        }
      }
      if (!changed) return;
      if (!throttle || performance.now() - last >= SAVE_EVERY_MS) save();
      else if (!timer) {
        timer = setTimeout(() => {
          timer = null;
          save();
        }, SAVE_EVERY_MS);
      }
    },
    on: (cb) => shared.on("change", cb),
    off: (cb) => shared.off("change", cb),
  };
}
