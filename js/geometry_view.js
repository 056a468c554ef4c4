// GeometryView: the tokens at the selected layer as a 2-D scatter; pan (drag), zoom (wheel), click a point
// to select its token, hover for its text. Pairs with nbinspect/views/geometry_view.py.
//
// Points are rasterised straight into one ImageData (a Uint32 write per pixel of each point), where
// 50,000 fillRect calls would not keep 60 fps, into an offscreen canvas that reaches half a view beyond
// each edge. A pan frame only blits that raster with a translation (one drawImage, whatever the number of
// points); a zoom frame blits it scaled. The points are rasterised again only when the data, layer or
// colours change, a zoom settles, a drag ends, or a pan goes past the margin. Labels and the selection
// ring are drawn with fillText/strokeRect on top, from the coordinates.
import { bytesOf, float32sOf, int32sOf } from "./codecs.js";
import { fitText, sizeCanvas } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";

const W = 560;
const H = 440;
const SIDE_W = 220;
const PAD = 16;
const POINT = 3; // px per side
const POINT_FEW = 5;
const MARGIN_X = W / 2; // CSS px rasterised beyond each edge: a pan of up to this much is a plain blit
const MARGIN_Y = H / 2;
const ZOOM_SETTLE_MS = 150; // after the last wheel event, the points are rasterised at the new scale
const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
const METHODS = { pca: "PCA", tsne: "t-SNE", umap: "UMAP" };
const COLORS = { position: "position", token: "token", neuron: "neuron", label: "text" };
// Tableau 10 for categories; viridis-like ramp for sequences; blue-white-red for signed values.
const CATEGORICAL = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
const SEQ = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

const CSS = `
.nbi-geo { font: ${FONT}; color: #222; display: inline-block; position: relative; outline: none; }
.nbi-geo .nbi-head { display: flex; gap: 10px; align-items: center; margin: 0 0 6px 2px; flex-wrap: wrap; }
.nbi-geo .nbi-title { font-weight: 600; font-size: 12px; }
.nbi-geo .nbi-hint { color: #777; }
.nbi-geo button { font: inherit; padding: 1px 7px; border: 1px solid #bbb; background: #f6f6f6; cursor: pointer; }
.nbi-geo button[aria-pressed="true"] { background: #dbe8f5; border-color: #6aa0d8; }
.nbi-geo .nbi-body { display: flex; gap: 14px; align-items: flex-start; }
.nbi-geo canvas.nbi-plot { border: 1px solid #ddd; cursor: grab; touch-action: none; }
.nbi-geo .nbi-side { width: ${SIDE_W}px; display: flex; flex-direction: column; gap: 6px; }
.nbi-geo .nbi-list { white-space: pre; font-family: ui-monospace, 'DejaVu Sans Mono', monospace; line-height: 1.4; }
.nbi-geo .nbi-error { color: #b00020; }
.nbi-geo .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; }
`;

function rgba32(r, g, b) {
  return (255 << 24) | (b << 16) | (g << 8) | r; // little-endian ImageData layout
}

function hexRgb(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

function sequential(t) {
  const x = Math.max(0, Math.min(1, t)) * (SEQ.length - 1);
  const k = Math.min(Math.floor(x), SEQ.length - 2);
  const f = x - k;
  return SEQ[k].map((c, i) => Math.round(c * (1 - f) + SEQ[k + 1][i] * f));
}

function diverging(t) {
  const v = Math.max(-1, Math.min(1, t));
  const w = Math.round(255 * (1 - Math.abs(v)));
  return v >= 0 ? [255, w, w] : [w, w, 255];
}

async function render({ model, el: host }) {
  const sel = await bindSelection(model);
  const get = (k) => (k === "layer" || k === "token" || k === "neuron" ? sel.get(k) : model.get(k));
  const root = el("div", "nbi-geo", host);
  exportButtons(root, "nbinspect-geometry");
  root.tabIndex = 0;
  root.dataset.lmSuppressShortcuts = "true";
  el("style", null, root).textContent = CSS;
  const head = el("div", "nbi-head", root);
  const title = el("span", "nbi-title", head);
  const slider = el("input", null, head);
  slider.type = "range";
  slider.min = "0";
  const methodBox = el("span", null, head);
  const methodButtons = {};
  for (const [key, label] of Object.entries(METHODS)) {
    const b = el("button", null, methodBox, label);
    b.type = "button";
    b.dataset.method = key;
    b.addEventListener("click", () => {
      model.set("method", key);
      model.save_changes();
    });
    methodButtons[key] = b;
  }
  el("span", "nbi-hint", head, "colour:");
  const colorButtons = {};
  for (const [key, label] of Object.entries(COLORS)) {
    const b = el("button", null, head, label);
    b.type = "button";
    b.dataset.color = key;
    b.addEventListener("click", () => {
      model.set("color_by", key);
      model.save_changes();
    });
    colorButtons[key] = b;
  }
  const body = el("div", "nbi-body", root);
  const plot = el("canvas", "nbi-plot", body);
  const side = el("div", "nbi-side", body);
  const legend = el("div", "nbi-hint", side);
  const error = el("div", "nbi-error", side);
  el("div", "nbi-hint", side, "nearest tokens (input embedding, cosine):");
  const nearList = el("div", "nbi-list", side);
  el("div", "nbi-hint", side, "drag to pan · wheel to zoom · click a point · ↑/↓ layer · double-click to reset");
  const tip = tooltip(root);

  const ctx = sizeCanvas(plot, W, H);
  const dpr = window.devicePixelRatio || 1;
  const raster = document.createElement("canvas"); // the points, drawn for the view in `rastered`
  raster.width = Math.round((W + 2 * MARGIN_X) * dpr);
  raster.height = Math.round((H + 2 * MARGIN_Y) * dpr);
  const rw = raster.width;
  const rh = raster.height;
  const rctx = raster.getContext("2d");
  const image = rctx.createImageData(rw, rh);
  const pixels = new Uint32Array(image.data.buffer);
  const BACKGROUND = rgba32(255, 255, 255);
  let rastered = null; // { scale, dx, dy, layer } of the view the raster holds
  let stale = true; // data or colours changed, a zoom settled or a drag ended: rasterise again
  let zoomTimer = 0;
  let rasters = 0;
  let rasterTotal = 0;

  let coords = new Float32Array(0); // [layers * n * 2]
  let n = 0;
  let colors = new Uint32Array(0); // one RGBA per point
  let bounds = null; // [xmin, xmax, ymin, ymax] over all layers: one frame for every layer
  let view = { scale: 1, dx: 0, dy: 0 }; // screen = base(x) * scale + d
  let frame = 0;
  let frames = 0;
  let drawTotal = 0;

  function rebuildCoords() {
    coords = float32sOf(model.get("coords"));
    n = model.get("n_points");
    bounds = null;
    if (!n || coords.length < 2 * n) return;
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < coords.length; i += 2) {
      const x = coords[i], y = coords[i + 1];
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
      if (y < y0) y0 = y;
      if (y > y1) y1 = y;
    }
    bounds = [x0, x1 === x0 ? x0 + 1 : x1, y0, y1 === y0 ? y0 + 1 : y1];
  }

  function rebuildColors() {
    const kind = model.get("color_kind");
    colors = new Uint32Array(n);
    if (kind === "categorical") {
      const cats = int32sOf(model.get("color_values"));
      for (let i = 0; i < n && i < cats.length; i++) colors[i] = rgba32(...hexRgb(CATEGORICAL[cats[i] % CATEGORICAL.length]));
    } else {
      const v = float32sOf(model.get("color_values"));
      const f = kind === "diverging" ? diverging : sequential;
      for (let i = 0; i < n && i < v.length; i++) colors[i] = rgba32(...f(v[i]));
    }
  }

  function baseTransform() {
    const [x0, x1, y0, y1] = bounds;
    const s = Math.min((W - 2 * PAD) / (x1 - x0), (H - 2 * PAD) / (y1 - y0));
    return { s, ox: PAD + ((W - 2 * PAD) - s * (x1 - x0)) / 2 - s * x0, oy: H - PAD - ((H - 2 * PAD) - s * (y1 - y0)) / 2 + s * y0 };
  }

  function layerIndex() {
    const L = Math.max(1, Math.floor(coords.length / Math.max(1, 2 * n)));
    return Math.max(0, Math.min(L - 1, get("layer")));
  }

  /** Data (x, y) -> CSS pixels of the plot now: X = x * sx + ox, Y = oy - y * sx. */
  function transform() {
    const b = baseTransform();
    return { sx: b.s * view.scale, ox: b.ox * view.scale + view.dx, oy: b.oy * view.scale + view.dy };
  }

  function rasterise(layer) {
    const t0 = performance.now();
    pixels.fill(BACKGROUND);
    if (bounds) {
      const { sx, ox, oy } = transform();
      const off = layer * 2 * n;
      const size = n <= 2000 ? POINT_FEW : POINT; // few points: bigger, easier to hit and to see
      const half = (size * dpr) >> 1;
      const side = Math.max(1, Math.round(size * dpr));
      const ax = (ox + MARGIN_X) * dpr, ay = (oy + MARGIN_Y) * dpr, s = sx * dpr;
      for (let i = 0; i < n; i++) {
        const px = Math.round(coords[off + 2 * i] * s + ax) - half;
        const py = Math.round(ay - coords[off + 2 * i + 1] * s) - half;
        if (px < 0 || py < 0 || px + side > rw || py + side > rh) continue;
        const c = colors[i] || 0xff888888;
        let row = py * rw + px;
        for (let yy = 0; yy < side; yy++, row += rw) for (let xx = 0; xx < side; xx++) pixels[row + xx] = c;
      }
    }
    rctx.putImageData(image, 0, 0);
    rastered = { scale: view.scale, dx: view.dx, dy: view.dy, layer };
    stale = false;
    rasters += 1;
    rasterTotal += performance.now() - t0;
  }

  function draw() {
    frame = 0;
    const t0 = performance.now();
    const layer = layerIndex();
    const moved = rastered && (Math.abs(view.dx - rastered.dx) > MARGIN_X || Math.abs(view.dy - rastered.dy) > MARGIN_Y);
    if (stale || !rastered || rastered.layer !== layer || moved) rasterise(layer);
    // The raster, moved (and while a zoom settles, scaled) from the view it was drawn for to this one.
    const k = view.scale / rastered.scale;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, plot.width, plot.height);
    ctx.setTransform(dpr * k, 0, 0, dpr * k, dpr * (view.dx - rastered.dx * k), dpr * (view.dy - rastered.dy * k));
    ctx.drawImage(raster, -MARGIN_X, -MARGIN_Y, W + 2 * MARGIN_X, H + 2 * MARGIN_Y);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    // The selected token of the main text: a ring and its text.
    const t = get("token");
    if (t >= 0 && t < model.get("n_main") && t < n && bounds) {
      const { sx, ox, oy } = transform();
      const X = coords[layer * 2 * n + 2 * t] * sx + ox, Y = oy - coords[layer * 2 * n + 2 * t + 1] * sx;
      ctx.strokeStyle = "#ff8c00";
      ctx.lineWidth = 2;
      ctx.strokeRect(X - 5, Y - 5, 10, 10);
      ctx.fillStyle = "#111";
      ctx.font = FONT;
      ctx.fillText(fitText(ctx, label(t), 160), X + 8, Y - 6);
    }
    if (bounds) Object.assign(plot.dataset, transform()); // tests click points through it
    const dt = performance.now() - t0;
    frames += 1;
    drawTotal += dt;
    Object.assign(root.dataset, { frames, drawMs: drawTotal.toFixed(2), rasters, rasterMs: rasterTotal.toFixed(2),
      layer: String(layer), points: String(n) });
    decorate(layer);
  }

  function label(i) {
    const main = model.get("n_main");
    const tokens = model.get("tokens");
    return i < main ? tokens[i] : model.get("other_tokens")[i - main] ?? "";
  }

  let decorated = "";
  function decorate(layer) {
    // Panning redraws every frame; the text around the plot only changes with the data, so it is left
    // alone (no layout work) unless something it shows changed.
    const key = [layer, model.get("method"), model.get("color_by"), model.get("color_of"), model.get("nearest_of"),
      model.get("error"), n, coords.length].join("|");
    if (key === decorated) return;
    decorated = key;
    const L = Math.max(1, Math.floor(coords.length / Math.max(1, 2 * n)));
    slider.max = String(L - 1);
    slider.value = String(layer);
    const method = model.get("method");
    const ex = model.get("explained");
    title.textContent = `Layer ${layer} · ${METHODS[method]}` + (ex.length ? ` (axes explain ${(100 * ex[0]).toFixed(0)}% + ${(100 * ex[1]).toFixed(0)}%)` : "");
    for (const [k, b] of Object.entries(methodButtons)) b.setAttribute("aria-pressed", String(k === method));
    const by = model.get("color_by");
    for (const [k, b] of Object.entries(colorButtons)) b.setAttribute("aria-pressed", String(k === by));
    const names = model.get("color_names");
    const kind = model.get("color_kind");
    legend.textContent = kind === "categorical"
      ? `${names.length} ${by === "label" ? "texts" : "distinct tokens"}` + (names.length <= 10 ? ": " : "")
      : by === "position" ? "colour: position in the text (dark = first, yellow = last)" : names.join(" ") + " (blue < 0 < red)";
    if (kind === "categorical" && names.length <= 10) {
      names.forEach((name, i) => {
        const sw = el("span", null, legend, `■ ${JSON.stringify(name)} `);
        sw.style.color = CATEGORICAL[i % CATEGORICAL.length];
      });
    }
    error.textContent = model.get("error");
    const near = model.get("nearest");
    const cos = float32sOf(model.get("nearest_cosines"));
    const of = model.get("nearest_of");
    nearList.textContent = of < 0 ? "click a point" : `${JSON.stringify(label(of))}\n` + near.map((s, i) => `${(cos[i] ?? 0).toFixed(3)}  ${JSON.stringify(s)}`).join("\n");
    const painted = `${layer},${method},${by},${n}`;
    if (root.dataset.painted !== painted && n > 0) {
      root.dataset.painted = painted;
      model.set("painted", model.get("painted") + 1);
    }
  }

  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };

  function hit(evt) {
    if (!bounds) return -1;
    const r = plot.getBoundingClientRect();
    const x = evt.clientX - r.left, y = evt.clientY - r.top;
    const { sx, ox, oy } = transform();
    const off = layerIndex() * 2 * n;
    let best = -1, bestD = 36; // within 6 px
    for (let i = 0; i < n; i++) {
      const dx = coords[off + 2 * i] * sx + ox - x, dy = oy - coords[off + 2 * i + 1] * sx - y;
      const d = dx * dx + dy * dy;
      if (d < bestD) {
        bestD = d;
        best = i;
      }
    }
    return best;
  }

  let drag = null;
  plot.addEventListener("pointerdown", (evt) => {
    drag = { x: evt.clientX, y: evt.clientY, moved: false };
    try {
      plot.setPointerCapture(evt.pointerId); // keep the drag when the pointer leaves the canvas
    } catch {
      // synthetic events (tests, benchmarks) have no active pointer to capture
    }
  });
  plot.addEventListener("pointermove", (evt) => {
    if (drag && (evt.buttons & 1)) {
      const dx = evt.clientX - drag.x, dy = evt.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 0) drag.moved = true;
      view.dx += dx;
      view.dy += dy;
      drag.x = evt.clientX;
      drag.y = evt.clientY;
      tip.hide();
      schedule();
      return;
    }
    if (n > 20000) return; // hover search over very large sets would cost more than a frame
    const i = hit(evt);
    if (i < 0) return tip.hide();
    tip.show(evt, `${JSON.stringify(label(i))}` + (i < model.get("n_main") ? ` #${i}` : ` (other text)`));
  });
  plot.addEventListener("pointerup", (evt) => {
    if (drag && !drag.moved) {
      const i = hit(evt);
      if (i >= 0 && i < model.get("n_main")) sel.set({ token: i });
    }
    if (drag && drag.moved) stale = true; // the blit lands on whole device pixels; redraw exactly once
    drag = null;
    schedule();
  });
  plot.addEventListener("wheel", (evt) => {
    evt.preventDefault();
    const r = plot.getBoundingClientRect();
    const x = evt.clientX - r.left, y = evt.clientY - r.top;
    const k = Math.exp(-evt.deltaY * 0.0015);
    view.dx = x - (x - view.dx) * k;
    view.dy = y - (y - view.dy) * k;
    view.scale *= k;
    clearTimeout(zoomTimer);
    zoomTimer = setTimeout(() => {
      stale = true;
      schedule();
    }, ZOOM_SETTLE_MS);
    schedule();
  }, { passive: false });
  plot.addEventListener("dblclick", () => {
    view = { scale: 1, dx: 0, dy: 0 };
    stale = true;
    schedule();
  });
  plot.addEventListener("mouseleave", () => tip.hide());
  slider.addEventListener("input", () => sel.set({ layer: Number(slider.value) }));
  root.addEventListener("keydown", (evt) => {
    if (evt.key !== "ArrowUp" && evt.key !== "ArrowDown") return;
    const L = Math.max(1, Math.floor(coords.length / Math.max(1, 2 * n)));
    sel.set({ layer: Math.max(0, Math.min(L - 1, get("layer") + (evt.key === "ArrowUp" ? -1 : 1))) });
    evt.preventDefault();
    evt.stopPropagation();
  });

  const onCoords = () => {
    rebuildCoords();
    rebuildColors();
    stale = true;
    schedule();
  };
  const onColors = () => {
    rebuildColors();
    stale = true;
    schedule();
  };
  const plain = ["method", "explained", "color_names", "error", "nearest", "nearest_cosines", "nearest_of", "color_by"];
  model.on("change:coords", onCoords);
  model.on("change:color_values", onColors);
  for (const k of plain) model.on(`change:${k}`, schedule);
  sel.on(schedule);
  onCoords();

  return () => {
    if (frame) cancelAnimationFrame(frame);
    clearTimeout(zoomTimer);
    model.off("change:coords", onCoords);
    model.off("change:color_values", onColors);
    for (const k of plain) model.off(`change:${k}`, schedule);
    sel.off(schedule);
  };
}

export default { render };
