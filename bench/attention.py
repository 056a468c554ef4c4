"""Attention view on the default model: bytes sent for the first render, time to ready and to first paint.

Prints, per N in 128, 512, 1024 tokens:
  attention_payload_bytes_N     bytes the browser receives for the first render (thumbnails + focused head + tokens)
  attention_full_fp32_bytes_N   the full float32 attention tensor of all layers, for comparison
  attention_ready_ms_N          nbinspect.attention(...) call until the widget is ready (median)
  attention_plain_forward_ms_N  a plain forward pass of the same text (the anchor, same run)
  attention_first_paint_ms_N    in JupyterLab + headless Chromium: cell run until the focused map is painted
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import nbinspect  # noqa: E402
from _common import median_ms, report, text_of_tokens  # noqa: E402

SIZES = (128, 512, 1024)


def python_figures(model, tokenizer):
    cfg = model.config
    for n in SIZES:
        text = text_of_tokens(tokenizer, n)
        view = nbinspect.attention(model, tokenizer, text)
        assert len(view.tokens) == n
        inputs = tokenizer(text, return_tensors="pt").to(model.device)
        with torch.no_grad():
            plain = median_ms(lambda: model(**inputs), repeat=3)
        ready = median_ms(lambda: nbinspect.attention(model, tokenizer, text), repeat=3)
        report(f"attention_payload_bytes_{n}", view.payload_bytes(), "bytes")
        report(f"attention_full_fp32_bytes_{n}", cfg.num_hidden_layers * cfg.num_attention_heads * n * n * 4, "bytes")
        report(f"attention_ready_ms_{n}", ready, "ms")
        report(f"attention_plain_forward_ms_{n}", plain, "ms")


def browser_figures(tokenizer):
    import nbformat

    from lab import chromium, jupyterlab, open_notebook, wait_idle_after_run

    texts = {n: text_of_tokens(tokenizer, n) for n in SIZES}
    cells = [nbformat.v4.new_code_cell(f"import json, nbinspect\nmodel, tokenizer = nbinspect.load()\ntexts = json.loads({json.dumps(json.dumps(texts))})")]
    cells += [nbformat.v4.new_code_cell(f"nbinspect.attention(model, tokenizer, texts['{n}'])") for n in SIZES]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    with jupyterlab({"bench_attention.ipynb": nbformat.writes(nb)}) as (url, _), chromium() as browser:
        page = open_notebook(browser, url, "bench_attention.ipynb")
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-cell')")  # the set-up cell
        page.wait_for_function("() => window.jupyterapp.shell.currentWidget.content.model.cells.get(0).executionCount > 0 && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'", timeout=120_000)
        for k, n in enumerate(SIZES, start=1):
            ms = page.evaluate(
                """async (k) => {
                  const w = window.jupyterapp.shell.currentWidget;
                  w.content.activeCellIndex = k;
                  const t0 = performance.now();
                  await window.jupyterapp.commands.execute("notebook:run-cell");
                  const painted = () => { const r = w.content.widgets[k].node.querySelector(".nbi-attn"); return r && r.dataset.painted; };
                  while (!painted()) await new Promise((r) => setTimeout(r, 5));
                  return performance.now() - t0;
                }""",
                k,
            )
            report(f"attention_first_paint_ms_{n}", ms, "ms")
        wait_idle_after_run(page)


def main():
    model, tokenizer = nbinspect.load()
    print(f"# default model on {model.device}, {torch.get_num_threads()} threads", file=sys.stderr)
    python_figures(model, tokenizer)
    browser_figures(tokenizer)


if __name__ == "__main__":
    main()
