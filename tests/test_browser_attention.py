"""The attention view in a real JupyterLab, driven by headless Chromium: pixels and two-way state."""

import json

import nbformat
import pytest

from lab import canvas_ink, chromium, jupyterlab, kernel, open_notebook, run_all, wait_idle_after_run

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

ROOT = ".nbi-attn"
FOCUS_PX, LABEL_PX = 480, 84  # js/attention_view.js layout

STRONGEST_PIXEL = f"""([i, j, n]) => {{
  const c = document.querySelector("{ROOT} canvas.nbi-focus");
  const dpr = window.devicePixelRatio || 1, cell = {FOCUS_PX} / n;
  const x = Math.round(({LABEL_PX} + (j + 0.5) * cell) * dpr), y = Math.round(({LABEL_PX} + (i + 0.5) * cell) * dpr);
  return Array.from(c.getContext("2d").getImageData(x, y, 1, 1).data.slice(0, 3));
}}"""

# A tokenizer whose every token is an HTML payload: the view must show it as text and run nothing.
HOSTILE = nbformat.v4.new_notebook(
    cells=[
        nbformat.v4.new_code_cell(
            "import sys, torch, nbinspect\n"
            "from transformers import LlamaConfig, LlamaForCausalLM\n"
            "torch.manual_seed(0)\n"
            "m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,"
            " num_attention_heads=4, num_key_value_heads=2)).eval()\n"
            "class Tok:\n"
            "    def __call__(self, text, return_tensors='pt'):\n"
            "        return {'input_ids': torch.arange(len(text.split())).remainder(64)[None]}\n"
            "    def decode(self, ids):\n"
            "        return '<img src=x onerror=\"window.__pwned=1\">'\n"
            "view = nbinspect.attention(m, Tok(), 'a b c d e f')\nview"
        )
    ],
    metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
)


@pytest.fixture(scope="module")
def lab():
    with jupyterlab({"hostile.ipynb": json.dumps(HOSTILE)}) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def test_quickstart_draws_and_syncs_both_ways(lab, browser, artifacts):
    url, _ = lab
    page = open_notebook(browser, url, "quickstart.ipynb")
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    run_all(page)
    wait_idle_after_run(page)
    # The notebook's last cell set the focus to layer 3, head 2 from Python: the browser follows.
    page.wait_for_function(f"() => document.querySelector('{ROOT}')?.dataset.painted === '3,2'", timeout=60_000)
    # A causal head is mostly near-zero weights (white): ask for some ink, and that the strongest
    # cell Python sent is painted dark exactly where it belongs.
    assert canvas_ink(page, f"{ROOT} canvas.nbi-focus") > 0.02, "the focused heatmap is blank"
    assert canvas_ink(page, f"{ROOT} canvas.nbi-grid") > 0.1, "the thumbnail grid is blank"
    i, j, n = map(int, kernel(page, "w = view.weights(); k = int(w.argmax()); print(k // w.shape[1], k % w.shape[1], w.shape[1])").split())
    rgb = page.evaluate(STRONGEST_PIXEL, [i, j, n])
    assert sum(rgb) < 250, f"the strongest cell ({i}, {j}) is drawn as {rgb}, not dark"
    page.locator(ROOT).scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "attention_quickstart.png"), full_page=False)

    # Click the thumbnail of layer 5, head 4: Python's focus changes and the full map arrives.
    grid = page.locator(f"{ROOT} canvas.nbi-grid")
    d = grid.evaluate("(c) => ({ left: +c.dataset.left, top: +c.dataset.top, step: +c.dataset.step, size: +c.dataset.size })")
    grid.click(position={"x": d["left"] + 4 * d["step"] + d["size"] / 2, "y": d["top"] + 5 * d["step"] + d["size"] / 2})
    page.wait_for_function(f"() => document.querySelector('{ROOT}').dataset.painted === '5,4'", timeout=30_000)
    assert kernel(page, "print(view.layer, view.head, view.focus_of)").strip() == "5 4 [5, 4]"

    # Arrow keys step the focus (down: next layer, left: previous head).
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(f"() => document.querySelector('{ROOT}').dataset.painted === '6,3'", timeout=30_000)
    assert kernel(page, "print(view.layer, view.head)").strip() == "6 3"

    # Hovering a token label sets the token trait in Python (throttled, so wait for it).
    focus = page.locator(f"{ROOT} canvas.nbi-focus")
    box = focus.bounding_box()
    focus.hover(position={"x": 40, "y": LABEL_PX + 2.5 * (FOCUS_PX / int(kernel(page, "print(len(view.tokens))")))})
    page.wait_for_timeout(400)
    assert kernel(page, "print(view.token)").strip() == "2"

    # Python sets the focus; the browser repaints it.
    kernel(page, "view.layer, view.head = 7, 1")
    page.wait_for_function(f"() => document.querySelector('{ROOT}').dataset.painted === '7,1'", timeout=30_000)
    assert box is not None and not errors, errors
    page.screenshot(path=str(artifacts / "attention_after_clicks.png"))
    page.close()


def test_token_text_is_never_html(lab, browser, artifacts):
    url, _ = lab
    page = open_notebook(browser, url, "hostile.ipynb")
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    run_all(page)
    wait_idle_after_run(page)
    page.wait_for_function(f"() => document.querySelector('{ROOT}')?.dataset.painted === '0,0'", timeout=60_000)
    focus = page.locator(f"{ROOT} canvas.nbi-focus")
    focus.hover(position={"x": LABEL_PX + 40, "y": LABEL_PX + 40})  # a cell: the tooltip names both tokens
    tip = page.locator(f"{ROOT} .nbi-tip")
    assert 'onerror' in tip.text_content()
    assert page.locator(f"{ROOT} img").count() == 0
    assert page.evaluate("() => window.__pwned") is None and not dialogs
    page.screenshot(path=str(artifacts / "attention_hostile_tokens.png"))
    page.close()
