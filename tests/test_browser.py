"""The views in a real JupyterLab, driven by headless Chromium: pixels, clicks, hovers, keys, and the
Python side read back from the kernel. Screenshots are kept in test-artifacts/."""

import json

import nbformat
import pytest

from lab import INK, altair_params_error, chromium, js_wait, jupyterlab, open_notebook, py, run_all, wait_idle_after_run

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

FOCUS_PX, LABEL_PX = 480, 84  # js/attention_view.js layout
# quickstart.ipynb: the dashboard's views come first, the standalone attention view last.
DASH_ATT = "document.querySelectorAll('.nbi-attn')[0]"
VIEW_ATT = "[...document.querySelectorAll('.nbi-attn')].at(-1)"
NEURONS = "document.querySelector('.nbi-neur')"
STRIP = "document.querySelector('.nbi-grad')"


@pytest.fixture(scope="module")
def lab():
    with jupyterlab() as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def quickstart(lab, browser):
    url, _ = lab
    page = open_notebook(browser, url, "quickstart.ipynb")
    errors = []
    # altair's own chart handler logs one known error when Python moves its params (see lab.altair_params_error).
    page.on("pageerror", lambda e: None if altair_params_error(e.stack or str(e)) else errors.append(e.stack or str(e)))
    run_all(page)
    wait_idle_after_run(page, timeout_ms=240_000)
    page.errors = errors
    yield page
    assert not errors, errors
    page.close()



def test_attention_view_draws_and_syncs_both_ways(quickstart, artifacts):
    page = quickstart
    # The notebook's last cell set the focus to layer 3, head 2 from Python: the browser follows.
    js_wait(page, f"{VIEW_ATT}.dataset.painted === '3,2'", 60_000)
    focus = page.locator(".nbi-attn >> nth=-1").locator("canvas.nbi-focus")
    grid = page.locator(".nbi-attn >> nth=-1").locator("canvas.nbi-grid")
    focus.scroll_into_view_if_needed()
    # A causal head is mostly near-zero weights (white): ask for some ink, and that the strongest
    # cell Python sent is painted dark exactly where it belongs.
    assert grid.evaluate(INK) > 0.1, "the thumbnail grid is blank"
    assert focus.evaluate(INK) > 0.02, "the focused heatmap is blank"
    i, j, n = map(int, py(page, "w = view.weights(); k = int(w.argmax()); print(k // w.shape[1], k % w.shape[1], w.shape[1])").split())
    rgb = focus.evaluate(PIXEL_AT, [LABEL_PX + (j + 0.5) * FOCUS_PX / n, LABEL_PX + (i + 0.5) * FOCUS_PX / n])
    assert sum(rgb) < 250, f"the strongest cell ({i}, {j}) is drawn as {rgb}, not dark"
    page.screenshot(path=str(artifacts / "attention_view.png"))

    # Click the thumbnail of layer 5, head 4: Python's focus changes and the full map arrives.
    d = grid.evaluate("(c) => ({ left: +c.dataset.left, top: +c.dataset.top, step: +c.dataset.step, size: +c.dataset.size })")
    grid.click(position={"x": d["left"] + 4 * d["step"] + d["size"] / 2, "y": d["top"] + 5 * d["step"] + d["size"] / 2})
    js_wait(page, f"{VIEW_ATT}.dataset.painted === '5,4'")
    assert py(page, "print(view.layer, view.head, view.focus_of)") == "5 4 [5, 4]"

    # Arrow keys step the focus (down: next layer, left: previous head).
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowLeft")
    js_wait(page, f"{VIEW_ATT}.dataset.painted === '6,3'")
    assert py(page, "print(view.layer, view.head)") == "6 3"

    # Hovering a token label sets the token (throttled on its way to Python).
    n_tokens = int(py(page, "print(len(view.tokens))"))
    focus.hover(position={"x": 40, "y": LABEL_PX + 2.5 * FOCUS_PX / n_tokens})
    page.wait_for_timeout(400)
    assert py(page, "print(view.token)") == "2"

    # Python sets the focus; the browser repaints it.
    py(page, "view.layer, view.head = 7, 1")
    js_wait(page, f"{VIEW_ATT}.dataset.painted === '7,1'")
    assert not page.errors, page.errors


def test_hovering_a_token_highlights_it_in_every_linked_view(quickstart, artifacts):
    page = quickstart
    att = page.locator(".nbi-attn >> nth=0").locator("canvas.nbi-focus")
    att.scroll_into_view_if_needed()
    n_tokens = int(py(page, "print(len(dash.attention.tokens))"))
    att.hover(position={"x": 40, "y": LABEL_PX + 4.5 * FOCUS_PX / n_tokens})  # the label of token 4
    # The other views follow in the browser, before any kernel round trip is needed.
    js_wait(page, f"{NEURONS}.dataset.token === '4' && {STRIP}.dataset.token === '4'", 5_000)
    page.wait_for_timeout(400)
    assert py(page, "print(dash.selection.token, dash.neurons.token)") == "4 4"
    page.screenshot(path=str(artifacts / "dashboard_token_hover.png"), full_page=True)


def test_clicking_a_layer_in_the_gradient_chart_selects_it_everywhere(quickstart, artifacts):
    page = quickstart
    chart = page.locator(".vega-embed canvas >> nth=0")
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    # Find layer 5's column the way a person would: move along the chart until its tooltip says so.
    target = None
    for x in range(0, int(box["width"]), 4):
        chart.hover(position={"x": x, "y": box["height"] * 0.5})
        text = page.evaluate("() => document.querySelector('#vg-tooltip-element.visible')?.textContent || ''")
        if text.startswith("layer5") or text.startswith("layer 5"):
            target = x
            break
    assert target is not None, "no column of the gradient chart shows layer 5"
    chart.click(position={"x": target, "y": box["height"] * 0.5})
    js_wait(page, f"{DASH_ATT}.dataset.layer === '5' && {NEURONS}.dataset.layer === '5'", 30_000)
    js_wait(page, f"{NEURONS}.dataset.painted === '5' && {DASH_ATT}.dataset.painted.startsWith('5,')", 30_000)
    assert py(page, "print(dash.selection.layer, dash.attention.layer, dash.neurons.layer, dash.perturb.head_layer)") == "5 5 5 5"
    page.screenshot(path=str(artifacts / "dashboard_chart_click.png"), full_page=True)


def test_setting_the_selection_from_python_moves_every_view(quickstart, artifacts):
    page = quickstart
    py(page, "dash.selection.layer, dash.selection.head, dash.selection.neuron = 8, 1, int(dash.neurons.stats().indices[0])")
    neuron = py(page, "print(dash.selection.neuron)")
    js_wait(page, f"{DASH_ATT}.dataset.painted === '8,1' && {NEURONS}.dataset.painted === '8'", 30_000)
    js_wait(page, f"{NEURONS}.dataset.neuron === '{neuron}'")
    assert py(page, "print(dash.gradients.chart.params.current == 8, dash.perturb.neuron)") == f"True {neuron}"


def test_clicking_a_neuron_selects_it(quickstart):
    page = quickstart
    heat = page.locator(".nbi-neur canvas.nbi-heat")
    heat.scroll_into_view_if_needed()
    d = heat.evaluate("(c) => ({ left: +c.dataset.left, top: +c.dataset.top, w: +c.dataset.colWidth, h: +c.dataset.rowHeight })")
    heat.click(position={"x": d["left"] + 2.5 * d["w"], "y": d["top"] + 0.5 * d["h"]})  # the third column
    third = py(page, "print(int(dash.neurons.stats().indices[2]))")
    js_wait(page, f"{NEURONS}.dataset.neuron === '{third}'", 5_000)
    page.wait_for_timeout(300)
    assert py(page, "print(dash.selection.neuron, dash.perturb.neuron)") == f"{third} {third}"


# Every view of the dashboard, by its root's class, and a fingerprint of what its canvases show now.
DASH_VIEWS = {"attention": "nbi-attn", "neurons": "nbi-neur", "gradients": "nbi-grad", "logit_attribution": "nbi-dla",
              "block_writes": "nbi-bw"}
FINGERPRINTS = """(classes) => Object.fromEntries(classes.map((cls) => {
  const root = document.querySelector('.' + cls);
  let h = 0;
  for (const c of root.querySelectorAll('canvas')) {
    const s = c.toDataURL();
    for (let i = 0; i < s.length; i += 7) h = (h * 31 + s.charCodeAt(i)) | 0;
  }
  return [cls, h];
}))"""

# The gradient chart's canvas as the mean colour of each 8 x 8 block, and the largest change of a block mean
# from an earlier such list: 0 for the same picture, a few units where only antialiasing differs.
CHART_BLOCKS = """() => {
  const c = document.querySelector('.nbi-grad-chart canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const out = [];
  for (let by = 0; by + 8 <= c.height; by += 8)
    for (let bx = 0; bx + 8 <= c.width; bx += 8) {
      let sum = 0;
      for (let y = by; y < by + 8; y++) for (let x = bx; x < bx + 8; x++) { const i = 4 * (y * c.width + x); sum += d[i] + d[i + 1] + d[i + 2]; }
      out.push(sum / 192);
    }
  return out;
}"""
CHART_CHANGE = "(before) => { const now = (" + CHART_BLOCKS + ")(); " \
    "return now.length !== before.length ? 255 : Math.max(...now.map((v, i) => Math.abs(v - before[i]))); }"


def test_a_slider_edit_repaints_every_view_with_the_edited_numbers(quickstart, artifacts):
    """Drag the head slider to 0 in the browser: every view of the dashboard, gradient chart included,
    repaints, and what Python sent it is the edited model's trace, whose numbers equal a fresh trace of the
    edited model; reset paints the first pixels again."""
    page = quickstart
    assert sorted(py(page, "print(sorted(dash.views))")[1:-1].replace("'", "").split(", ")) == sorted(DASH_VIEWS)
    # The slider in view and the mouse parked on the menu bar first: a scroll under a resting mouse hovers
    # whatever comes under it, and a hovered token moves every view.
    slider = page.locator(".nbi-pred input[name=head_factor] >> nth=0")
    slider.scroll_into_view_if_needed()
    page.mouse.move(5, 5)
    # Head 0 of layer 0: everything downstream changes, and the neuron view shows layer 0's MLP, after it.
    py(page, "dash.selection.layer, dash.selection.head = 0, 0")
    js_wait(page, f"{DASH_ATT}.dataset.painted === '0,0' && {NEURONS}.dataset.painted === '0'", 30_000)
    assert py(page, "print(dash.perturb.head_layer, dash.perturb.head)") == "0 0"
    page.wait_for_timeout(500)  # the chart's band follows the layer: let vega finish before the fingerprint
    classes = list(DASH_VIEWS.values())
    before = page.evaluate(FINGERPRINTS, classes)
    chart_before = page.evaluate(CHART_BLOCKS)
    selected = py(page, "print(dash.selection.layer, dash.selection.head, dash.selection.token, dash.selection.neuron)")

    slider.evaluate("(s) => { s.value = '0'; s.dispatchEvent(new Event('input', { bubbles: true })); s.dispatchEvent(new Event('change', { bubbles: true })); }")
    assert py(page, "dash.perturb.wait(); print(dash.perturb.head_factor, [type(e).__name__ for e in dash.perturb.latest.edits])") == "0.0 ['ScaleHead']"
    page.wait_for_function(
        "([classes, before]) => { const f = (" + FINGERPRINTS + ")(classes); return classes.every((c) => f[c] !== before[c]); }",
        arg=[classes, before], timeout=60_000,
    )
    # The gradient chart (altair's, beside the view's root) is sent an edit's norms as data updates: its
    # lines and points move, not just a few edge pixels.
    page.wait_for_function(f"(before) => ({CHART_CHANGE})(before) > 40", arg=chart_before, timeout=60_000)
    page.screenshot(path=str(artifacts / "dashboard_after_slider.png"), full_page=True)
    # Every view was shown the edited trace, and that trace's numbers are the edited model's.
    assert py(page, "print(all(v.trace is dash.perturb.latest for v in dash.views.values()))") == "True"
    check = (
        "import torch\n"
        "from nbinspect.perturb import AblateHead, perturb\n"
        "t = dash.perturb.latest\n"
        "with perturb(model, AblateHead(0, 0)):\n"
        "    fresh = nbinspect.trace(model, tokenizer, text, target=t.target.token)\n"
        "torch.testing.assert_close(torch.stack(t.gradient_norms.layers), torch.stack(fresh.gradient_norms.layers), rtol=1e-4, atol=1e-7)\n"
        "torch.testing.assert_close(t.record.neurons[0], fresh.record.neurons[0], rtol=1e-4, atol=1e-5)\n"
        "torch.testing.assert_close(t.target_value, fresh.target_value, rtol=1e-4, atol=1e-5)\n"
        "print(abs(float(t.target_value - t.parent.target_value)) > 1e-3)"
    )
    assert py(page, check) == "True"

    # Reset: the model is exact again and every view paints what it painted before the edit.
    py(page, "dash.perturb.reset(); dash.perturb.wait()")
    for _ in range(120):
        after = page.evaluate(FINGERPRINTS, classes)
        chart_change = page.evaluate(CHART_CHANGE, chart_before)
        if after == before and chart_change <= 8:
            break
        page.wait_for_timeout(500)
    page.screenshot(path=str(artifacts / "dashboard_after_reset.png"), full_page=True)
    assert py(page, "print(dash.selection.layer, dash.selection.head, dash.selection.token, dash.selection.neuron)") == selected
    assert after == before, f"after reset these views do not paint what they painted first: {[c for c in classes if after[c] != before[c]]}"
    # vega draws the same chart again from the same numbers, but not to the last antialiased edge pixel
    assert chart_change <= 8, f"after reset the gradient chart differs from its first drawing by {chart_change}"

    # The keyboard moves a focused slider one step: JupyterLab's shortcuts, listening on the document,
    # would otherwise cancel the arrow key (and act on the notebook instead).
    slider.focus()
    page.keyboard.press("ArrowLeft")
    assert py(page, "dash.perturb.wait(); print(dash.perturb.head_factor, [type(e).__name__ for e in dash.perturb.latest.edits])") == "0.95 ['ScaleHead']"
    py(page, "dash.perturb.reset(); dash.perturb.wait()")
    assert not page.errors, page.errors


# A tokenizer whose every token is an HTML payload: the views must show it as text and run nothing.
HOSTILE = nbformat.v4.new_notebook(
    cells=[
        nbformat.v4.new_code_cell(
            "import torch, nbinspect\n"
            "from transformers import LlamaConfig, LlamaForCausalLM\n"
            "torch.manual_seed(0)\n"
            "m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,"
            " num_attention_heads=4, num_key_value_heads=2)).eval()\n"
            "class Tok:\n"
            "    def __call__(self, text, return_tensors='pt'):\n"
            "        ids = torch.arange(len(text.split())).remainder(64)[None]\n"
            "        return {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}\n"
            "    def decode(self, ids, **kw):\n"
            "        return '<img src=x onerror=\"window.__pwned=1\">'\n"
            "dash = nbinspect.inspect(m, Tok(), 'a b c d e f')\ndash"
        )
    ],
    metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
)


def test_token_text_is_never_html(lab, browser, artifacts):
    url, root = lab
    (root / "hostile.ipynb").write_text(json.dumps(HOSTILE))
    page = open_notebook(browser, url, "hostile.ipynb")
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    run_all(page)
    wait_idle_after_run(page)
    js_wait(page, f"{DASH_ATT}.dataset.painted === '0,0' && {NEURONS}.dataset.painted === '0'", 60_000)
    focus = page.locator(".nbi-attn canvas.nbi-focus")
    focus.hover(position={"x": LABEL_PX + 40, "y": LABEL_PX + 40})  # a cell: the tooltip names both tokens
    assert "onerror" in page.locator(".nbi-attn .nbi-tip").text_content()
    assert page.locator(".nbi-attn img, .nbi-neur img, .nbi-grad img").count() == 0
    assert page.evaluate("() => window.__pwned") is None and not dialogs
    page.screenshot(path=str(artifacts / "hostile_tokens.png"), full_page=True)
    page.close()



PIXEL_AT = """(c, [x, y]) => {
  const dpr = window.devicePixelRatio || 1;
  return Array.from(c.getContext("2d").getImageData(Math.round(x * dpr), Math.round(y * dpr), 1, 1).data.slice(0, 3));
}"""
