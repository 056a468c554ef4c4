// The PNG / SVG buttons every view carries: `exportButtons(root, name)`, called once with the view's
// root element (position: relative). The picture is the view as it is on screen: a copy of its DOM in an
// SVG <foreignObject>, each canvas replaced by an image of its pixels (drawn at devicePixelRatio), and
// for PNG that SVG drawn on a canvas at 2× — no server, no kernel, nothing fetched.

const SCALE = 2; // PNG pixels per CSS pixel
const CSS = `
.nbi-export { position: absolute; top: 0; right: 0; display: flex; gap: 2px; opacity: 0; z-index: 5; transition: opacity .15s; }
:hover > .nbi-export, .nbi-export:focus-within { opacity: 1; } /* shown while the pointer is over the view */
.nbi-export button { font: 11px system-ui, -apple-system, 'Segoe UI', sans-serif; padding: 0 5px; border: 1px solid #bbb;
  background: #fafafa; color: #333; cursor: pointer; line-height: 16px; }
`;

/** The view as SVG text (CSS size) and its width and height. */
export function viewSVG(root) {
  const box = root.getBoundingClientRect();
  const width = Math.ceil(Math.max(box.width, root.scrollWidth));
  const height = Math.ceil(Math.max(box.height, root.scrollHeight));
  const copy = root.cloneNode(true);
  // Canvas pixels do not survive cloneNode: put an image of each canvas where it was.
  const originals = root.querySelectorAll("canvas");
  copy.querySelectorAll("canvas").forEach((c, i) => {
    const src = originals[i];
    const img = document.createElement("img");
    img.src = src.toDataURL("image/png");
    img.className = src.className;
    img.style.cssText = src.style.cssText;
    img.style.width = `${src.clientWidth || src.width}px`;
    img.style.height = `${src.clientHeight || src.height}px`;
    img.style.display = "block";
    c.replaceWith(img);
  });
  // Form state lives in properties, which cloneNode does not copy: write it into attributes.
  const inputs = root.querySelectorAll("input, select");
  copy.querySelectorAll("input, select").forEach((e, i) => {
    const src = inputs[i];
    if (src.type === "checkbox" || src.type === "radio") e.toggleAttribute("checked", src.checked);
    else if (e.tagName === "SELECT") e.querySelectorAll("option").forEach((o, j) => o.toggleAttribute("selected", j === src.selectedIndex));
    else e.setAttribute("value", src.value);
  });
  copy.querySelectorAll(".nbi-export, .nbi-tip").forEach((e) => e.remove());
  const style = getComputedStyle(root);
  copy.style.margin = "0";
  copy.style.background = "#fff";
  copy.style.color = style.color;
  copy.style.fontFamily = style.fontFamily;
  copy.style.width = `${width}px`;
  const html = new XMLSerializer().serializeToString(copy);
  const svg =
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">` +
    `<rect width="100%" height="100%" fill="#fff"/><foreignObject x="0" y="0" width="${width}" height="${height}">${html}</foreignObject></svg>`;
  return { svg, width, height };
}

/** The view as a PNG Blob at `scale`× its CSS size. */
export async function viewPNG(root, scale = SCALE) {
  const { svg, width, height } = viewSVG(root);
  const img = new Image();
  img.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(svg)}`;
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  const ctx = canvas.getContext("2d");
  ctx.scale(scale, scale);
  ctx.drawImage(img, 0, 0, width, height);
  return new Promise((resolve, reject) => canvas.toBlob((b) => (b ? resolve(b) : reject(new Error("no PNG"))), "image/png"));
}

function download(blob, filename) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

/** Add the PNG and SVG buttons to a view's root element; `name` names the downloaded files. */
export function exportButtons(root, name = "nbinspect-view") {
  const bar = document.createElement("div");
  bar.className = "nbi-export";
  const style = document.createElement("style");
  style.textContent = CSS;
  bar.appendChild(style);
  const make = (label, title, run) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.title = title;
    b.addEventListener("click", async (evt) => {
      evt.stopPropagation();
      try {
        await run();
      } catch (e) {
        b.title = `${title} — failed here (${e && e.message ? e.message : e}); the SVG button or view.to_png() in Python still work`;
      }
    });
    bar.appendChild(b);
    return b;
  };
  make("PNG", "Save this view as a PNG (2×)", async () => download(await viewPNG(root), `${name}.png`));
  make("SVG", "Save this view as an SVG", async () => download(new Blob([viewSVG(root).svg], { type: "image/svg+xml" }), `${name}.svg`));
  if (!root.style.position) root.style.position = "relative"; // the bar sits in the view's top-right corner
  root.appendChild(bar);
  return bar;
}
