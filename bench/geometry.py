"""GeometryView in headless Chromium: 50,000 points panned for a few seconds.

The view's built bundle is served with a small stand-in for the anywidget model (get/set/on/off) on
127.0.0.1, and the page drags the plot by a few pixels on every animation frame while counting the frames
the view actually painted. Prints (``name value unit``):

- ``geometry_pan_fps_N``: frames painted per second while panning (the screen refreshes at 60);
- ``geometry_idle_raf_fps``: animation frames per second of the same page drawing nothing (a loaded
  machine gives fewer than 60 whatever is drawn), and ``geometry_pan_over_idle_N``, the ratio;
- ``geometry_draw_ms_N``: mean time of one pan frame (mostly one blit of the points' raster, which
  the view rasterises again only past its margin), the figure that decides whether 60 fps holds on a
  slower machine (it must stay under 16.7 ms);
- ``geometry_raster_ms_N``: mean time of one full rasterisation of N points (the ImageData fill +
  putImageData of the raster, half a view beyond each edge), paid on a data, layer, colour or zoom change
  and once the drag ends, and ``geometry_rasters_per_pan_s_N``, how many of those the pan needed per second;
- ``geometry_coords_bytes_N``: what Python sends for one layer of N points (float32 x, y).
"""

from __future__ import annotations

import functools
import http.server
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from _common import report

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "nbinspect" / "static" / "geometry_view.js"
POINTS = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
SECONDS = 3.0

PAGE = """<!doctype html><meta charset="utf-8"><body><div id="host"></div>
<script type="module">
import view from "./geometry_view.js";
function fake(state, shared) {
  const on = {};
  const fire = (k) => { for (const f of (on["change:" + k] || [])) f(); for (const f of (on.change || [])) f(); };
  return {
    get: (k) => state[k],
    set: (k, v) => { state[k] = v; fire(k); },
    on: (e, f) => { (on[e] = on[e] || []).push(f); },
    off: (e, f) => { on[e] = (on[e] || []).filter((g) => g !== f); },
    save_changes() {},
    widget_manager: { get_model: async () => shared },
  };
}
const N = %(points)d, LAYERS = 4;
const coords = new Float32Array(LAYERS * N * 2);
let seed = 1;
const rand = () => ((seed = (seed * 16807) %% 2147483647) / 2147483647);
for (let l = 0; l < LAYERS; l++) for (let i = 0; i < N; i++) {
  const c = i %% 12, r = Math.sqrt(-2 * Math.log(rand() + 1e-9)), a = 2 * Math.PI * rand();
  coords[(l * N + i) * 2] = 8 * Math.cos(c) + r * Math.cos(a) + l;
  coords[(l * N + i) * 2 + 1] = 8 * Math.sin(c) + r * Math.sin(a);
}
const positions = new Float32Array(N).map((_, i) => i / (N - 1));
const selection = fake({ token: -1, layer: 1, head: 0, neuron: -1 });
const model = fake({
  selection: "IPY_MODEL_selection", tokens: [], other_tokens: [], n_layers: LAYERS, painted: 0,
  coords: new DataView(coords.buffer), n_points: N, n_main: 0, method: "pca", explained: [0.4, 0.2],
  color_by: "position", color_values: new DataView(positions.buffer), color_kind: "sequential", color_names: [],
  color_of: "", nearest: [], nearest_cosines: new DataView(new ArrayBuffer(0)), nearest_of: -1, error: "",
}, selection);
await view.render({ model, el: document.getElementById("host") });
window.benchPan = (seconds) => new Promise((resolve) => {
  const root = document.querySelector(".nbi-geo");
  const canvas = root.querySelector("canvas.nbi-plot");
  const box = canvas.getBoundingClientRect();
  let x = box.left + 200, y = box.top + 200, step = 0;
  canvas.dispatchEvent(new PointerEvent("pointerdown", { clientX: x, clientY: y, buttons: 1, bubbles: true }));
  const f0 = Number(root.dataset.frames), d0 = Number(root.dataset.drawMs), t0 = performance.now();
  const r0 = Number(root.dataset.rasters);
  function tick() {
    const t = performance.now();
    if (t - t0 >= seconds * 1000) {
      canvas.dispatchEvent(new PointerEvent("pointerup", { clientX: x, clientY: y, bubbles: true }));
      const frames = Number(root.dataset.frames) - f0;
      const rasters = Number(root.dataset.rasters) - r0;
      resolve({ frames, seconds: (t - t0) / 1000, drawMs: (Number(root.dataset.drawMs) - d0) / Math.max(1, frames),
                rasters, points: Number(root.dataset.points) });
      return;
    }
    step += 1;
    x += Math.sin(step / 20) * 4; y += Math.cos(step / 20) * 4;
    canvas.dispatchEvent(new PointerEvent("pointermove", { clientX: x, clientY: y, buttons: 1, bubbles: true }));
    requestAnimationFrame(tick);
  }
  requestAnimationFrame(tick);
});
// The same page's animation frames with nothing to draw: what this browser and machine allow at all.
window.benchIdle = (seconds) => new Promise((resolve) => {
  let frames = 0;
  const t0 = performance.now();
  function tick() {
    const t = performance.now();
    if (t - t0 >= seconds * 1000) return resolve(frames / ((t - t0) / 1000));
    frames += 1;
    requestAnimationFrame(tick);
  }
  requestAnimationFrame(tick);
});
window.benchReady = true;
</script>"""


# Full rasterisations timed on their own: a double-click resets the view, which rasterises again.
RASTER_MS = """async () => {
  const root = document.querySelector(".nbi-geo"), canvas = root.querySelector("canvas.nbi-plot");
  const r0 = Number(root.dataset.rasters), m0 = Number(root.dataset.rasterMs);
  for (let i = 0; i < 10; i++) {
    canvas.dispatchEvent(new MouseEvent("dblclick", { bubbles: true }));
    await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  }
  return (Number(root.dataset.rasterMs) - m0) / Math.max(1, Number(root.dataset.rasters) - r0);
}"""


def main() -> None:
    if not BUNDLE.exists():
        raise SystemExit(f"{BUNDLE} is missing: build the JS with `make js`.")
    from lab import chromium

    site = Path(tempfile.mkdtemp(prefix="nbinspect-geometry-bench-"))
    shutil.copy(BUNDLE, site / BUNDLE.name)
    (site / "index.html").write_text(PAGE % {"points": POINTS})
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 900, "height": 600})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
            page.wait_for_function("window.benchReady === true", timeout=30_000)
            page.evaluate("window.benchPan(0.5)")  # warm up (JIT, first putImageData)
            raster = page.evaluate(RASTER_MS)
            idle = page.evaluate(f"window.benchIdle({SECONDS})")
            result = page.evaluate(f"window.benchPan({SECONDS})")
            if errors:
                raise SystemExit(f"page errors: {errors}")
    finally:
        server.shutdown()
        shutil.rmtree(site, ignore_errors=True)
    assert result["points"] == POINTS, result
    fps = result["frames"] / result["seconds"]
    report(f"geometry_pan_fps_{POINTS}", fps, "fps")
    report("geometry_idle_raf_fps", idle, "fps")
    report(f"geometry_pan_over_idle_{POINTS}", fps / idle, "ratio")
    report(f"geometry_draw_ms_{POINTS}", result["drawMs"], "ms")
    report(f"geometry_raster_ms_{POINTS}", raster, "ms")
    report(f"geometry_rasters_per_pan_s_{POINTS}", result["rasters"] / result["seconds"], "per_s")
    report(f"geometry_coords_bytes_{POINTS}", POINTS * 2 * 4, "bytes")


if __name__ == "__main__":
    main()
