// GenerationView: the text as it is generated (prompt grey, each new token shaded by the probability it
// had), a step scrubber with play and stop, and for the picked step the top candidates, the new token's
// attention to every earlier token (layers × context, head mean or one head) and the logit lens.
// Pairs with nbinspect/views/generation_view.py. Canvas only; token text via fillText/textContent.
import { bytesOf, float32sOf } from "./codecs.js";
import { fitText, mapImage, sizeCanvas, tokenBoxes } from "./heatmap.js";
import { el, tooltip } from "./dom.js";
import { exportButtons } from "./export_button.js";
import { bindSelection } from "./selection.js";

const W = 860;
const LINE_H = 20;
const LABEL_PX = 56;
const FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
const TEXT_FONT = "13px ui-monospace, 'DejaVu Sans Mono', monospace";
const PLAY_MS = 400;

const CSS = `
.nbi-gen { font: ${FONT}; color: #222; display: inline-block; position: relative; outline: none; width: ${W}px; }
.nbi-gen .nbi-head { display: flex; gap: 10px; align-items: center; margin: 0 0 6px 2px; font-size: 12px; flex-wrap: wrap; }
.nbi-gen .nbi-title { font-weight: 600; }
.nbi-gen .nbi-hint { color: #777; }
.nbi-gen .nbi-error { color: #d62728; }
.nbi-gen button { font: inherit; padding: 1px 8px; border: 1px solid #bbb; background: #f6f6f6; cursor: pointer; }
.nbi-gen input[type=range] { width: 260px; }
.nbi-gen .nbi-strip { max-height: 200px; overflow-y: auto; border: 1px solid #ddd; margin-bottom: 8px; }
.nbi-gen .nbi-panels { display: flex; gap: 16px; align-items: flex-start; }
.nbi-gen .nbi-caption { color: #555; margin-bottom: 3px; }
.nbi-gen canvas { display: block; }
.nbi-gen canvas.nbi-text { cursor: pointer; }
.nbi-gen .nbi-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96); border: 1px solid #bbb;
  border-radius: 3px; padding: 3px 6px; white-space: pre; display: none; z-index: 10; box-shadow: 0 1px 4px rgba(0,0,0,.15); }
`;

const shade = (p) => `rgba(33, 113, 181, ${0.12 + 0.6 * Math.max(0, Math.min(1, p))})`;

async function render({ model, el: host }) {
  const root = el("div", "nbi-gen", host);
  exportButtons(root, "nbinspect-generation");
  root.tabIndex = 0;
  el("style", null, root).textContent = CSS;
  const head = el("div", "nbi-head", root);
  const title = el("span", "nbi-title", head);
  const play = el("button", null, head, "▶ play");
  const scrub = el("input", null, head);
  scrub.type = "range";
  scrub.min = "0";
  const stepLabel = el("span", "nbi-hint", head);
  const stop = el("button", null, head, "■ stop");
  const status = el("span", "nbi-hint", head);
  const error = el("span", "nbi-error", head);
  const stripBox = el("div", "nbi-strip", root);
  const strip = el("canvas", "nbi-text", stripBox);
  const editedCaption = el("div", "nbi-caption", root);
  const editedBox = el("div", "nbi-strip", root);
  const editedStrip = el("canvas", "nbi-edited", editedBox);
  const panels = el("div", "nbi-panels", root);
  const candBox = el("div", null, panels);
  el("div", "nbi-caption", candBox, "top candidates (what the token was drawn from)");
  const cand = el("canvas", "nbi-cand", candBox);
  const attBox = el("div", null, panels);
  const attCaption = el("div", "nbi-caption", attBox);
  const headSelect = el("select", null, attBox);
  const att = el("canvas", "nbi-att", attBox);
  const lensBox = el("div", null, panels);
  el("div", "nbi-caption", lensBox, "logit lens: each layer's top token · bar: p(chosen token)");
  const lens = el("canvas", "nbi-lens", lensBox);
  const tip = tooltip(root);

  // The shared selection: token = prompt position, or prompt length + step for a generated token.
  const selection = await bindSelection(model);
  let frame = 0;
  let boxes = [];
  let timer = null;
  let paintedKey = "";
  const get = (k) => model.get(k);
  const nSteps = () => get("generated").length;
  const shown = () => get("shown_step");

  function pick(s) {
    model.set("step", s);
    model.save_changes(); // Python sends that step's data (the kernel is free: generation runs in a thread)
    selection.set({ token: get("prompt_tokens").length + s }); // linked views move at once
    schedule();
  }
  // Another view selected a token: a generated one shows its step; a prompt token is only outlined.
  const onSelection = () => {
    const g = selection.get("token") - get("prompt_tokens").length;
    if (selection.get("token") >= 0 && g >= 0 && g < nSteps() && g !== get("step")) {
      model.set("step", g);
      model.save_changes();
    }
    schedule();
  };
  selection.on(onSelection);
  play.addEventListener("click", () => {
    if (timer) {
      clearInterval(timer);
      timer = null;
      play.textContent = "▶ play";
      return;
    }
    play.textContent = "❚❚ pause";
    let s = shown() >= nSteps() - 1 ? 0 : Math.max(0, shown());
    pick(s);
    timer = setInterval(() => {
      s += 1;
      if (s >= nSteps()) {
        clearInterval(timer);
        timer = null;
        play.textContent = "▶ play";
        return;
      }
      pick(s);
    }, PLAY_MS);
  });
  scrub.addEventListener("input", () => pick(Number(scrub.value)));
  stop.addEventListener("click", () => {
    model.set("stop_requested", true);
    model.save_changes();
  });
  headSelect.addEventListener("change", () => schedule());

  function drawStrip() {
    const prompt = get("prompt_tokens");
    const gen = get("generated");
    const probs = float32sOf(get("chosen_probs"));
    const laid = tokenBoxes(prompt.concat(gen), { font: TEXT_FONT, maxWidth: W - 12, right: W - 8, lineHeight: LINE_H });
    boxes = laid.boxes;
    const ctx = sizeCanvas(strip, W - 4, laid.height);
    ctx.font = TEXT_FONT;
    ctx.textBaseline = "middle";
    const s = shown();
    const selected = selection.get("token");
    for (const [bx, by, w, i] of boxes) {
      const g = i - prompt.length;
      ctx.fillStyle = g < 0 ? "#eeeeee" : shade(probs[g]);
      ctx.fillRect(bx, by, w, LINE_H - 2);
      if (g === s || (g < 0 && i === selected)) {
        ctx.strokeStyle = "#ff8c00";
        ctx.lineWidth = 2;
        ctx.strokeRect(bx + 1, by + 1, w - 2, LINE_H - 4);
      }
      ctx.fillStyle = g < 0 ? "#666" : "#111";
      ctx.fillText(laid.texts[i], bx + 1, by + (LINE_H - 2) / 2);
    }
  }

  // The continuation generated under edits (view.edit(...)): prompt omitted, tokens that differ from the
  // original continuation at the same step outlined in red.
  function drawEdited() {
    const label = get("edits_label");
    editedCaption.style.display = editedBox.style.display = label ? "block" : "none";
    if (!label) return;
    const gen = get("generated");
    const edited = get("edited");
    const probs = float32sOf(get("edited_probs"));
    let first = -1;
    for (let i = 0; i < edited.length; i++) if (first < 0 && edited[i] !== gen[i]) first = i;
    editedCaption.textContent = `with ${label}${get("edited_running") ? " (generating…)" : ""}: ` +
      (first < 0 ? "the same continuation so far" : `differs from step ${first} on (red)`);
    const laidOut = tokenBoxes(edited, { font: TEXT_FONT, maxWidth: W - 12, right: W - 8, lineHeight: LINE_H });
    const laid = laidOut.boxes;
    const ctx = sizeCanvas(editedStrip, W - 4, laidOut.height);
    ctx.font = TEXT_FONT;
    ctx.textBaseline = "middle";
    for (const [bx, by, w, i] of laid) {
      ctx.fillStyle = shade(probs[i]);
      ctx.fillRect(bx, by, w, LINE_H - 2);
      if (edited[i] !== gen[i]) {
        ctx.strokeStyle = "#d62728";
        ctx.lineWidth = 1.5;
        ctx.strokeRect(bx + 0.5, by + 0.5, w - 1, LINE_H - 3);
      }
      ctx.fillStyle = "#111";
      ctx.fillText(laidOut.texts[i], bx + 1, by + (LINE_H - 2) / 2);
    }
  }

  function drawCandidates() {
    const names = get("candidates");
    const probs = float32sOf(get("candidate_probs"));
    const rowH = 18;
    const cw = 240;
    const ctx = sizeCanvas(cand, cw, Math.max(1, names.length) * rowH + 4);
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    const chosen = get("generated")[shown()];
    for (let i = 0; i < names.length; i++) {
      const y = i * rowH + 2;
      ctx.fillStyle = names[i] === chosen ? "#ff8c00" : "#6aa0d8";
      ctx.fillRect(90, y + 2, Math.max(1, probs[i] * (cw - 140)), rowH - 4);
      ctx.fillStyle = "#222";
      ctx.textAlign = "right";
      ctx.fillText(fitText(ctx, JSON.stringify(names[i]), 84), 86, y + rowH / 2);
      ctx.textAlign = "left";
      ctx.fillText(probs[i].toFixed(3), 94 + probs[i] * (cw - 140), y + rowH / 2);
    }
  }

  function drawAttention() {
    const L = get("n_layers");
    const H = get("n_heads");
    const n = get("context");
    const bytes = bytesOf(get("attention"));
    const scales = float32sOf(get("attention_scales"));
    if (headSelect.options.length !== H + 1) {
      headSelect.replaceChildren();
      el("option", null, headSelect, "mean of heads").value = "-1";
      for (let h = 0; h < H; h++) el("option", null, headSelect, `head ${h}`).value = String(h);
    }
    const h = Number(headSelect.value || -1);
    const cw = 330;
    const colW = Math.max(1, Math.min(14, Math.floor((cw - LABEL_PX) / Math.max(1, n))));
    const rowH = Math.max(3, Math.min(14, Math.floor(300 / Math.max(1, L))));
    const ctx = sizeCanvas(att, LABEL_PX + n * colW + 4, L * rowH + 4);
    ctx.font = FONT;
    if (bytes.length !== L * H * n || !n) return;
    // Rows: layers; columns: context positions; each row scaled to its own largest weight.
    const cells = new Uint8Array(L * n);
    for (let l = 0; l < L; l++) {
      const row = new Float32Array(n);
      for (let k = 0; k < n; k++) {
        if (h >= 0) row[k] = (bytes[(l * H + h) * n + k] * scales[l * H + h]) / 255;
        else for (let j = 0; j < H; j++) row[k] += (bytes[(l * H + j) * n + k] * scales[l * H + j]) / 255 / H;
      }
      const top = Math.max(1e-12, ...row);
      for (let k = 0; k < n; k++) cells[l * n + k] = Math.round((row[k] / top) * 255);
    }
    ctx.drawImage(mapImage(cells, n, L), LABEL_PX, 2, n * colW, L * rowH);
    ctx.fillStyle = "#555";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const every = Math.ceil(10 / rowH);
    for (let l = 0; l < L; l += every) ctx.fillText(`layer ${l}`, LABEL_PX - 4, 2 + (l + 0.5) * rowH);
    const layer = selection.get("layer");
    if (layer >= 0 && layer < L) {
      ctx.strokeStyle = "#ff8c00";
      ctx.lineWidth = 1.5;
      ctx.strokeRect(LABEL_PX - 0.5, 2 + layer * rowH + 0.5, n * colW + 1, rowH - 1);
    }
    Object.assign(att.dataset, { left: LABEL_PX, colWidth: colW, rowHeight: rowH, context: n });
    attCaption.textContent = `step ${shown()}: the last token's attention to each earlier token (rows scaled to their max)`;
  }

  function drawLens() {
    const names = get("lens_tokens");
    const top = float32sOf(get("lens_probs"));
    const chosen = float32sOf(get("lens_chosen"));
    const L = names.length;
    const rowH = Math.max(10, Math.min(16, Math.floor(320 / Math.max(1, L))));
    const lw = 230;
    const ctx = sizeCanvas(lens, lw, L * rowH + 4);
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    Object.assign(lens.dataset, { rowHeight: rowH });
    for (let l = 0; l < L; l++) {
      const y = 2 + l * rowH;
      if (l === selection.get("layer")) {
        ctx.fillStyle = "#fff1de";
        ctx.fillRect(0, y, lw, rowH);
      }
      ctx.fillStyle = "#ff8c00";
      ctx.fillRect(120, y + 2, Math.max(1, chosen[l] * (lw - 126)), rowH - 4);
      ctx.fillStyle = "#222";
      ctx.textAlign = "right";
      ctx.fillText(`${l}`, 18, y + rowH / 2);
      ctx.textAlign = "left";
      ctx.fillText(fitText(ctx, `${JSON.stringify(names[l])} ${top[l].toFixed(2)}`, 96), 22, y + rowH / 2);
    }
  }

  function draw() {
    frame = 0;
    const n = nSteps();
    const s = shown();
    title.textContent = "Generation";
    scrub.max = String(Math.max(0, n - 1));
    scrub.value = String(Math.max(0, s));
    stepLabel.textContent = n ? `step ${s} of ${n}` + (get("step") < 0 ? " (following)" : "") : "waiting for the first token…";
    status.textContent = get("running") ? "generating…" : `done in ${get("seconds").toFixed(2)} s`;
    stop.disabled = !get("running");
    error.textContent = get("error");
    drawStrip();
    drawEdited();
    drawCandidates();
    drawAttention();
    drawLens();
    root.dataset.steps = String(n);
    root.dataset.shown = String(s);
    const key = `${n},${s},${get("running")}`;
    if (key !== paintedKey) {
      paintedKey = key;
      model.set("painted", get("painted") + 1);
    }
  }
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };

  strip.addEventListener("click", (evt) => {
    const r = strip.getBoundingClientRect();
    const x = evt.clientX - r.left;
    const y = evt.clientY - r.top;
    const hit = boxes.find(([bx, by, w]) => x >= bx && x < bx + w && y >= by && y < by + LINE_H);
    const g = hit ? hit[3] - get("prompt_tokens").length : -1;
    if (g >= 0) pick(g);
  });
  strip.addEventListener("mousemove", (evt) => {
    const r = strip.getBoundingClientRect();
    const x = evt.clientX - r.left;
    const y = evt.clientY - r.top;
    const hit = boxes.find(([bx, by, w]) => x >= bx && x < bx + w && y >= by && y < by + LINE_H);
    if (!hit) return tip.hide();
    const g = hit[3] - get("prompt_tokens").length;
    const text = g < 0 ? get("prompt_tokens")[hit[3]] : get("generated")[g];
    tip.show(evt, g < 0 ? `prompt ${JSON.stringify(text)}` : `step ${g}: ${JSON.stringify(text)}\np = ${float32sOf(get("chosen_probs"))[g].toFixed(3)}\nclick to show this step`);
  });
  strip.addEventListener("mouseleave", () => tip.hide());
  // A click on a layer row of the attention or lens panel selects that layer (linked views follow).
  const layerAt = (canvas, evt) => {
    const r = canvas.getBoundingClientRect();
    return Math.floor((evt.clientY - r.top - 2) / Number(canvas.dataset.rowHeight || 1));
  };
  for (const canvas of [att, lens]) {
    canvas.addEventListener("click", (evt) => {
      const l = layerAt(canvas, evt);
      if (l >= 0 && l < get("n_layers")) selection.set({ layer: l });
    });
  }
  root.addEventListener("keydown", (evt) => {
    if (evt.key !== "ArrowLeft" && evt.key !== "ArrowRight") return;
    pick(Math.max(0, Math.min(nSteps() - 1, shown() + (evt.key === "ArrowLeft" ? -1 : 1))));
    evt.preventDefault();
    evt.stopPropagation();
  });

  const keys = ["generated", "shown_step", "running", "error", "attention", "lens_tokens", "candidates", "edited", "edits_label", "edited_running"];
  for (const k of keys) model.on(`change:${k}`, schedule);
  draw();
  return () => {
    if (frame) cancelAnimationFrame(frame);
    if (timer) clearInterval(timer);
    for (const k of keys) model.off(`change:${k}`, schedule);
    selection.off(onSelection);
  };
}

export default { render };
