"""The dashboard on the default model: bytes sent, first paint, and linked repaints in the browser.

Prints, per N in 128, 512 and 2048 tokens:
  dashboard_ready_over_fwd_bwd_N  nbinspect.inspect(...) ready in Python ÷ one plain forward + backward of the
                                  same input (the predicted token's logit, every parameter's gradient), same run
  dashboard_ready_over_fwd_bwd_cpu_N  the same in the process's CPU time (all its threads), which other jobs on a
                                  shared machine disturb far less than wall time
  fwd_bwd_ms_N                 that plain forward + backward
Torch runs on NBINSPECT_BENCH_THREADS threads (default 1: on a shared 2-core machine, threads waiting on
each other made single passes swing by 5x; see bench/capture.py).
and at 2048 tokens, each in a fresh process:
  inspect_peak_rss_mb_2048     peak resident memory of a process that loads the model and builds the dashboard,
                               counted from after the load (loading peaks on its own); *_peak_above_loaded_* the
                               same minus the memory held once the model is loaded
  fwd_bwd_peak_rss_mb_2048     the same for a process that runs the plain forward + backward instead
  forward_peak_rss_mb_2048     the same for one plain forward without gradients
and per N in 128 and 512 tokens:
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
READY_SIZES = (128, 512, 2048)

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


def fwd_bwd(model, inputs) -> None:
    """The anchor: one plain forward and one backward of the predicted token's logit into every parameter."""
    for p in model.parameters():
        p.requires_grad_(True)
    logits = model(**inputs, use_cache=False).logits[0, -1]
    logits[logits.argmax()].backward()
    model.zero_grad(set_to_none=True)


def main():
    import torch

    if os.environ.get("NBINSPECT_BENCH_ONLY") == "peaks":  # the memory figures alone (a fresh process each)
        _, tokenizer = nbinspect.load()
        peak_memory(text_of_tokens(tokenizer, 2048))
        return

    torch.set_num_threads(int(os.environ.get("NBINSPECT_BENCH_THREADS", "1")))
    model, tokenizer = nbinspect.load()
    texts = {n: text_of_tokens(tokenizer, n) for n in READY_SIZES}
    for n in READY_SIZES:
        inputs = tokenizer(texts[n], return_tensors="pt")
        rounds = 3 if n <= 512 else 1
        fwd_bwd(model, inputs)  # warm-up
        anchors, readies, anchors_cpu, readies_cpu = [], [], [], []
        for _ in range(rounds):  # interleaved, so a busy moment of the machine hits both alike
            t, c = time.perf_counter(), time.process_time()
            fwd_bwd(model, inputs)
            anchors.append(time.perf_counter() - t)
            anchors_cpu.append(time.process_time() - c)
            t, c = time.perf_counter(), time.process_time()
            dash = nbinspect.inspect(model, tokenizer, texts[n])
            dash.perturb.wait()
            readies.append(time.perf_counter() - t)
            readies_cpu.append(time.process_time() - c)
            if n in SIZES:
                data, code = dash.payload_bytes()
            del dash
        for p in model.parameters():
            p.requires_grad_(False)
        anchor, ready = statistics.median(anchors), statistics.median(readies)
        report(f"fwd_bwd_ms_{n}", anchor * 1000, "ms")
        report(f"dashboard_ready_ms_{n}", ready * 1000, "ms")
        report(f"dashboard_ready_over_fwd_bwd_{n}", ready / anchor, "ratio")
        report(f"dashboard_ready_over_fwd_bwd_cpu_{n}", statistics.median(readies_cpu) / statistics.median(anchors_cpu), "ratio")
        if n in SIZES:
            report(f"dashboard_payload_bytes_{n}", data, "bytes")
            report(f"dashboard_code_bytes_{n}", code, "bytes")
    peak_memory(texts[2048])
    browser_figures(texts)


PEAK = """
import json, sys, nbinspect
model, tokenizer = nbinspect.load()
text, what = json.loads(sys.argv[1]), sys.argv[2]
inputs = tokenizer(text, return_tensors="pt")
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
# Loading the model peaks higher than some of what is measured: reset the peak (VmHWM) after it.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
if what == "inspect":
    nbinspect.inspect(model, tokenizer, text).perturb.wait()
elif what == "fwd_bwd":
    logits = model(**inputs, use_cache=False).logits[0, -1]
    logits[logits.argmax()].backward()
else:
    import torch
    with torch.no_grad():
        model(**inputs, use_cache=False)
print(status("VmHWM"), status("VmHWM") - base)
"""


def peak_memory(text: str) -> None:
    import subprocess
    import sys

    for what, name in (("inspect", "inspect"), ("fwd_bwd", "fwd_bwd"), ("forward", "forward")):
        out = subprocess.run([sys.executable, "-c", PEAK, json.dumps(text), what], capture_output=True, text=True)
        peak, above = map(float, out.stdout.strip().splitlines()[-1].split()) if out.returncode == 0 else (float("nan"),) * 2
        report(f"{name}_peak_rss_mb_2048", peak, "MB")
        report(f"{name}_peak_above_loaded_mb_2048", above, "MB")


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
