"""The dashboard on the default model: bytes sent, first paint, and linked repaints in the browser.

Prints, per N in 128 and 512 tokens:
  dashboard_payload_bytes_N    data the browser receives for the first render (all views, chart, sliders)
  dashboard_code_bytes_N       JS the browser receives once per widget model (our bundles + altair's offline vega)
  dashboard_ready_ms_N         nbinspect.inspect(...) until every widget is ready (Python side)
  dashboard_first_paint_ms_N   in JupyterLab + headless Chromium: cell run until every view has painted
and, at 128 tokens, browser-side with no kernel round trip:
  linked_repaint_ms            token hover in the attention view → the neuron view and the gradient strip repainted
  linked_repaint_layer_ms      thumbnail click in the attention view → the neuron view repainted for the new layer
and with the kernel:
  linked_layer_data_ms         thumbnail click → the neuron view painted with the new layer's data from Python
"""

import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import nbinspect  # noqa: E402
from _common import report, text_of_tokens  # noqa: E402

SIZES = (128, 512)

ALL_PAINTED = """(k) => {
  const node = window.jupyterapp.shell.currentWidget.content.widgets[k].node;
  const a = node.querySelector(".nbi-attn"), n = node.querySelector(".nbi-neur"), g = node.querySelector(".nbi-grad");
  return !!(a && a.dataset.painted && n && n.dataset.painted && g && g.dataset.painted && node.querySelector(".vega-embed canvas"));
}"""

# Hover token label i of the attention view, then count the time until both other views show it.
HOVER_REPAINT = """async ([k, i]) => {
  const node = window.jupyterapp.shell.currentWidget.content.widgets[k].node;
  const att = node.querySelector(".nbi-attn"), focus = att.querySelector("canvas.nbi-focus");
  const neur = node.querySelector(".nbi-neur"), grad = node.querySelector(".nbi-grad");
  const r = focus.getBoundingClientRect();
  const d = focus.dataset;
  const t0 = performance.now();
  const y = r.top + +d.top + (Math.floor(i / +d.block) + 0.5) * +d.cell;
  focus.dispatchEvent(new MouseEvent("mousemove", { clientX: r.left + 40, clientY: y, bubbles: true }));
  while (neur.dataset.token !== String(i) || grad.dataset.token !== String(i)) await new Promise(requestAnimationFrame);
  return performance.now() - t0;
}"""

CLICK_LAYER = """async ([k, layer, waitData]) => {
  const node = window.jupyterapp.shell.currentWidget.content.widgets[k].node;
  const grid = node.querySelector(".nbi-attn canvas.nbi-grid"), neur = node.querySelector(".nbi-neur");
  const d = grid.dataset, r = grid.getBoundingClientRect();
  const x = r.left + +d.left + +d.size / 2, y = r.top + +d.top + layer * +d.step + +d.size / 2;
  const t0 = performance.now();
  grid.dispatchEvent(new MouseEvent("click", { clientX: x, clientY: y, bubbles: true }));
  const done = () => waitData ? neur.dataset.painted === String(layer) : neur.dataset.layer === String(layer);
  while (!done()) await new Promise((res) => setTimeout(res, 1));
  return performance.now() - t0;
}"""


def main():
    model, tokenizer = nbinspect.load()
    texts = {n: text_of_tokens(tokenizer, n) for n in SIZES}
    for n in SIZES:
        t = time.perf_counter()
        dash = nbinspect.inspect(model, tokenizer, texts[n])
        dash.perturb.wait()
        ready = (time.perf_counter() - t) * 1000
        data, code = dash.payload_bytes()
        report(f"dashboard_payload_bytes_{n}", data, "bytes")
        report(f"dashboard_code_bytes_{n}", code, "bytes")
        report(f"dashboard_ready_ms_{n}", ready, "ms")
        del dash
    browser_figures(texts)


def browser_figures(texts):
    import nbformat

    from lab import chromium, jupyterlab, open_notebook

    setup = f"import json, nbinspect\nmodel, tokenizer = nbinspect.load()\ntexts = json.loads({json.dumps(json.dumps({str(k): v for k, v in texts.items()}))})"
    cells = [nbformat.v4.new_code_cell(setup)]
    cells += [nbformat.v4.new_code_cell(f"d{n} = nbinspect.inspect(model, tokenizer, texts['{n}'])\nd{n}") for n in SIZES]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    with jupyterlab({"bench_dashboard.ipynb": nbformat.writes(nb)}) as (url, _), chromium() as browser:
        page = open_notebook(browser, url, "bench_dashboard.ipynb")
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-cell')")
        page.wait_for_function("() => window.jupyterapp.shell.currentWidget.content.model.cells.get(0).executionCount > 0 && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'", timeout=180_000)
        for k, n in enumerate(SIZES, start=1):
            t0 = page.evaluate("(k) => { const w = window.jupyterapp.shell.currentWidget; w.content.activeCellIndex = k; const t = performance.now(); window.jupyterapp.commands.execute('notebook:run-cell'); return t; }", k)
            page.wait_for_function(ALL_PAINTED, arg=k, timeout=300_000, polling=10)
            report(f"dashboard_first_paint_ms_{n}", page.evaluate("() => performance.now()") - t0, "ms")
        page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'", timeout=120_000)
        k = 1  # the 128-token dashboard
        page.evaluate("(k) => window.jupyterapp.shell.currentWidget.content.widgets[k].node.querySelector('.nbi-attn').scrollIntoView()", k)
        hovers = [page.evaluate(HOVER_REPAINT, [k, i]) for i in range(2, 12)]
        report("linked_repaint_ms", statistics.median(hovers), "ms")
        clicks, data = [], []
        for layer in (4, 9, 14, 19, 24):
            clicks.append(page.evaluate(CLICK_LAYER, [k, layer, False]))
            page.wait_for_timeout(50)
        for layer in (5, 10, 15, 20, 25):
            data.append(page.evaluate(CLICK_LAYER, [k, layer, True]))
        report("linked_repaint_layer_ms", statistics.median(clicks), "ms")
        report("linked_layer_data_ms", statistics.median(data), "ms")


if __name__ == "__main__":
    main()
