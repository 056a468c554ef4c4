// The runtime of a saved page (nbinspect/export.py): the few parts of the widget model interface our
// views use — get/set/on/off/save_changes/send and widget_manager.get_model — over the state embedded
// in the page, with each model's own ESM imported from a blob URL. No kernel, no network.
//
// The page carries, in <script type="application/json" id="nbinspect-state">:
//   { root, notes: [sentences], local: {model id: [trait names that need no kernel]},
//     code: {hash: gzip+base64 ESM}, data: gzip+base64 of every buffer one after another,
//     models: {id: {name, module, esm (hash or null), css, state, buffers: [[path, offset, length]]}} }
// Buffers arrive as DataViews, exactly as they do from a live kernel.

const PAINT_WAIT_MS = 3000; // longest wait for a view to say it painted before the page is declared ready

async function gunzip(b64) {
  const bin = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const stream = new Blob([bin]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function setPath(obj, path, value) {
  let o = obj;
  for (let i = 0; i < path.length - 1; i++) o = o[path[i]];
  o[path[path.length - 1]] = value;
}

class Model {
  constructor(id, spec, manager) {
    this.model_id = id;
    this.name = spec.name;
    this.state = spec.state;
    this.listeners = new Map(); // event -> [[callback, context]]
    this.dirty = new Set();
    this.widget_manager = manager;
    this.savedPainted = spec.state.painted; // to tell when a view has painted in this page
  }
  get(key) {
    return this.state[key];
  }
  set(key, value) {
    const values = typeof key === "string" ? { [key]: value } : key;
    const changed = [];
    for (const [k, v] of Object.entries(values)) {
      if (this.state[k] === v) continue;
      this.state[k] = v;
      this.dirty.add(k);
      changed.push(k);
    }
    // What this set changed, as Backbone keeps it: some handlers (altair's) read it from the model.
    this.changed = Object.fromEntries(changed.map((k) => [k, this.state[k]]));
    for (const k of changed) this.trigger(`change:${k}`, this, this.state[k]);
    if (changed.length) this.trigger("change", this);
  }
  on(event, cb, ctx) {
    for (const e of event.split(/\s+/)) {
      if (!this.listeners.has(e)) this.listeners.set(e, []);
      this.listeners.get(e).push([cb, ctx]);
    }
  }
  off(event, cb) {
    for (const e of event ? event.split(/\s+/) : [...this.listeners.keys()]) {
      if (!cb) this.listeners.delete(e);
      else this.listeners.set(e, (this.listeners.get(e) || []).filter(([f]) => f !== cb));
    }
  }
  trigger(event, ...args) {
    for (const [cb, ctx] of [...(this.listeners.get(event) || [])]) cb.apply(ctx, args);
  }
  // In a notebook this sends the changes to Python. Here they stay in the page; a change that Python
  // would have answered (a new layer's data, a recompute) is named in the page's notice.
  save_changes() {
    const keys = [...this.dirty];
    this.dirty.clear();
    this.widget_manager.saved(this, keys);
  }
  send() {
    this.widget_manager.needsKernel(this, ["a message to Python"]);
  }
}

// Stand-ins for the few core ipywidgets a composite may still contain (boxes, labels, sliders).
function renderCore(model, el, manager) {
  const s = model.state;
  const name = model.name;
  if (/Box(Model)?$/.test(name)) {
    el.style.display = "flex";
    el.style.flexDirection = name.startsWith("HBox") ? "row" : "column";
    el.style.gap = "4px";
    return Promise.all((s.children || []).map((ref) => manager.renderRef(ref, el)));
  }
  if (name === "LabelModel") {
    const d = document.createElement("div");
    d.textContent = s.value; // text only, never HTML
    d.style.fontWeight = (s.style && manager.models.get(String(s.style).slice(10))?.state.font_weight) || "";
    d.style.margin = "6px 0 2px";
    el.appendChild(d);
    return;
  }
  if (/(Slider|Text|Dropdown|Checkbox|Button)Model$/.test(name)) {
    // Shown as they were, disabled: they act through Python.
    const d = document.createElement("label");
    d.className = "nbi-export-control";
    d.title = "needs the Python kernel";
    d.style.cssText = "color: #777; display: inline-flex; gap: 6px; align-items: center; margin-right: 14px;";
    if (name === "ButtonModel") {
      const b = document.createElement("button");
      b.textContent = s.description;
      b.disabled = true;
      d.appendChild(b);
    } else {
      d.appendChild(document.createTextNode(s.description || ""));
      if (/SliderModel$/.test(name)) {
        const r = document.createElement("input");
        Object.assign(r, { type: "range", min: s.min, max: s.max, step: s.step || 1, value: s.value, disabled: true });
        d.appendChild(r);
      }
      const v = Array.isArray(s._options_labels) ? s._options_labels[s.index] : s.value;
      d.appendChild(document.createTextNode(String(v)));
    }
    el.appendChild(d);
    return;
  }
  const d = document.createElement("div");
  d.textContent = `${name} is not part of this saved page.`;
  el.appendChild(d);
}

class Manager {
  constructor(doc) {
    this.doc = doc;
    this.models = new Map();
    this.modules = new Map();
    this.initialized = new Map();
    this.local = doc.local || {};
    this.renders = [];
    this.shown = new Set(); // models rendered or asked for by a view
  }
  async load() {
    const data = this.doc.data ? await gunzip(this.doc.data) : new Uint8Array(0);
    // A composite may read a child's code from its state (`model.get("_esm")`), as in a notebook.
    const code = {};
    for (const [hash, b64] of Object.entries(this.doc.code)) code[hash] = new TextDecoder().decode(await gunzip(b64));
    this.code = code;
    for (const [id, spec] of Object.entries(this.doc.models)) {
      if (spec.esm) spec.state._esm = code[spec.esm];
      if (spec.css) spec.state._css = spec.css;
      for (const [path, offset, length] of spec.buffers) {
        setPath(spec.state, path, new DataView(data.buffer, data.byteOffset + offset, length));
      }
      this.models.set(id, new Model(id, spec, this));
    }
  }
  async get_model(id) {
    const model = this.models.get(id);
    if (!model) throw new Error(`nbinspect export: model ${id} was not saved in this page`);
    this.shown.add(model);
    await this.initialize(model);
    return model;
  }
  async widget(model) {
    const hash = this.doc.models[model.model_id].esm;
    if (!hash) return null;
    if (!this.modules.has(hash)) {
      this.modules.set(
        hash,
        (async () => {
          const url = URL.createObjectURL(new Blob([this.code[hash]], { type: "text/javascript" }));
          const mod = await import(url);
          let def = mod.default ?? mod;
          if (typeof def === "function") def = await def();
          return def;
        })(),
      );
    }
    return this.modules.get(hash);
  }
  // anywidget calls initialize once per model, before any view renders.
  initialize(model) {
    if (!this.initialized.has(model.model_id)) {
      this.initialized.set(
        model.model_id,
        this.widget(model).then((w) => w && w.initialize && w.initialize({ model, experimental: this.experimental(model) })),
      );
    }
    return this.initialized.get(model.model_id);
  }
  // anywidget's host API (0.11+): composites may draw children through it ("anywidget:<id>" references).
  host() {
    const id = (ref) => String(ref).replace(/^(anywidget:|IPY_MODEL_)/, "");
    return {
      getModel: (ref) => this.get_model(id(ref)),
      getWidget: async (ref) => {
        const model = await this.get_model(id(ref));
        return { exports: await this.widget(model), render: ({ el }) => this.render(model, el) };
      },
    };
  }
  experimental(model) {
    return { invoke: async () => this.needsKernel(model, ["a call to Python"]) };
  }
  renderRef(ref, parent) {
    const id = String(ref).replace(/^IPY_MODEL_/, "");
    const el = document.createElement("div");
    el.className = "nbi-export-widget";
    parent.appendChild(el);
    return this.render(this.models.get(id), el);
  }
  async render(model, el) {
    el.dataset.modelId = model.model_id;
    this.shown.add(model);
    const css = this.doc.models[model.model_id].css;
    if (css) document.head.appendChild(Object.assign(document.createElement("style"), { textContent: css }));
    const w = await this.widget(model);
    if (!w) return renderCore(model, el, this);
    await this.initialize(model);
    const done = w.render && w.render({ model, el, host: this.host(), experimental: this.experimental(model) });
    this.renders.push(done);
    return done;
  }
  saved(model, keys) {
    if (!document.body.dataset.ready) return; // the views' first syncs while they start, not a person's action
    const local = new Set(this.local[model.model_id] || []);
    const remote = keys.filter((k) => !local.has(k));
    if (remote.length) this.needsKernel(model, remote);
  }
  needsKernel(model, what) {
    const box = document.getElementById("nbinspect-kernel-note");
    if (!box) return;
    box.textContent = `Saved copy: ${what.join(", ")} would be computed by Python, which this page does not have. It keeps showing the data that was saved.`;
    box.hidden = false;
    document.body.dataset.kernelNeeded = String(Number(document.body.dataset.kernelNeeded || 0) + 1);
  }
}

// Ready: every view rendered, and every view that reports painting (a `painted` trait) has painted once.
async function ready(manager) {
  await Promise.all(manager.renders);
  const painters = [...manager.shown].filter((m) => typeof m.savedPainted === "number" && manager.doc.models[m.model_id].esm);
  await Promise.all(
    painters.map(
      (m) =>
        new Promise((resolve) => {
          if (m.get("painted") !== m.savedPainted) return resolve();
          const timer = setTimeout(resolve, PAINT_WAIT_MS);
          m.on("change:painted", () => (clearTimeout(timer), resolve()));
        }),
    ),
  );
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
}

async function main() {
  const doc = JSON.parse(document.getElementById("nbinspect-state").textContent);
  const manager = new Manager(doc);
  window.nbinspectExport = manager;
  await manager.load();
  const root = document.getElementById("nbinspect-root");
  try {
    await manager.render(manager.models.get(doc.root), root);
    await ready(manager);
    document.body.dataset.ready = "1";
  } catch (e) {
    const err = document.createElement("pre");
    err.textContent = `nbinspect: this saved page could not be shown: ${e && e.stack ? e.stack : e}`;
    root.appendChild(err);
    document.body.dataset.ready = "error";
    throw e;
  }
}

main();
