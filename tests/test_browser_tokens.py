"""Tokens holding bidi controls, zero-width characters or HTML, rendered in a real JupyterLab: every view
labels them with the hidden characters drawn visibly (⟨U+202E⟩), read back from the page, and no script runs.

The labels are read where the browser draws them: an init script records every string passed to a
canvas's ``fillText``, and the tooltips' text is read from the DOM after hovering."""

import json

import nbformat
import pytest

from lab import NOTEBOOK_IDLE, chromium, jupyterlab, kernel, run_all, wait_idle_after_run

pytestmark = pytest.mark.browser

# One token per id; the text "0 1 2 ..." is tokenized into those ids.
TOKENS = [
    "\u202eevil",  # right-to-left override: would read "live"
    '<img src=x onerror="window.__pwned=1">',
    "a\u200bb",  # zero-width space
    "<script>window.__pwned=2</script>",
    "\u2066x\u2069",  # isolate controls
    "<svg onload=window.__pwned=3>",
    "\ufeffbom",
    "\u200fright\u200e",
    " plain",
]
HIDDEN = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\u200c\u200d\u200e\u200f\u2060\ufeff\u061c"

NOTEBOOK = nbformat.v4.new_notebook(
    cells=[
        nbformat.v4.new_code_cell(
            "import json, torch, nbinspect\n"
            "from transformers import LlamaConfig, LlamaForCausalLM\n"
            "torch.manual_seed(0)\n"
            "model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,"
            " num_attention_heads=4, num_key_value_heads=2)).eval()\n"
            f"TOKENS = json.loads({json.dumps(json.dumps(TOKENS))})\n"
            "class Tok:\n"
            "    def __call__(self, text, return_tensors='pt'):\n"
            "        ids = torch.tensor([[int(w) for w in text.split()]])\n"
            "        return {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}\n"
            "    def decode(self, ids, **kw):\n"
            "        return ''.join(TOKENS[i] if i < len(TOKENS) else f't{i}' for i in ids)\n"
            f"t = nbinspect.trace(model, Tok(), {' '.join(map(str, range(len(TOKENS))))!r})\n"
            "views = [nbinspect.attention(t), nbinspect.neurons(t), nbinspect.gradient_flow(t)]\n"
            "display(*views)"
        )
    ],
    metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
)

RECORD_FILLTEXT = """
window.__drawn = [];
const fillText = CanvasRenderingContext2D.prototype.fillText;
CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
  window.__drawn.push(String(text));
  return fillText.call(this, text, ...rest);
};
"""


def _wait(page, condition: str, timeout: int = 60_000):
    page.wait_for_function(f"() => {{ try {{ return {condition}; }} catch (e) {{ return false; }} }}", timeout=timeout)


def test_hidden_characters_in_tokens_are_drawn_visibly_and_html_stays_text(artifacts):
    with jupyterlab({"bidi.ipynb": json.dumps(NOTEBOOK)}) as (url, _), chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.add_init_script(RECORD_FILLTEXT)
        requests, dialogs, errors = [], [], []
        page.on("request", lambda r: requests.append(r.url))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/lab/tree/bidi.ipynb?reset")
        page.wait_for_function(NOTEBOOK_IDLE, arg="bidi.ipynb", timeout=90_000)
        run_all(page)
        wait_idle_after_run(page)
        _wait(page, "document.querySelector('.nbi-attn').dataset.painted === '0,0'"
                    " && document.querySelector('.nbi-neur').dataset.painted === '0'"
                    " && !!document.querySelector('.nbi-grad').dataset.painted")

        # The Python side sends the labels with markers (and keeps the true text for Python users).
        sent = json.loads(kernel(page, "print(json.dumps([v.tokens for v in views]))"))
        expected = ["⟨U+202E⟩evil", TOKENS[1], "a⟨U+200B⟩b", TOKENS[3], "⟨U+2066⟩x⟨U+2069⟩", TOKENS[5], "⟨U+FEFF⟩bom",
                    "⟨U+200F⟩right⟨U+200E⟩", " plain"]
        assert sent == [expected] * 3

        # What the canvases drew: the markers (labels may be shortened to fit, never the marker itself),
        # and not one hidden character.
        drawn = page.evaluate("() => window.__drawn")
        assert drawn, "no canvas text was recorded"
        raw = [s for s in drawn if any(ch in s for ch in HIDDEN)]
        assert not raw, f"hidden characters drawn as themselves: {raw[:5]!r}"
        for marker in ("⟨U+202E⟩", "⟨U+200B⟩", "⟨U+2066⟩", "⟨U+FEFF⟩"):
            assert any(marker in s for s in drawn), f"{marker} was never drawn; drawn: {sorted(set(drawn))[:40]!r}"
        assert any(s.startswith("<img src=x") for s in drawn), "the HTML token was not drawn as text"

        # A tooltip (DOM text) names the hovered token with its marker.
        focus = page.locator(".nbi-attn canvas.nbi-focus")
        n = len(TOKENS)
        label, side = 84, 480  # js/attention_view.js layout: label margin, heatmap side
        focus.hover(position={"x": label + 0.5 * side / n, "y": label + 0.5 * side / n})  # query 0, key 0
        _wait(page, "document.querySelector('.nbi-attn .nbi-tip').textContent.includes('evil')", 10_000)
        tip = page.locator(".nbi-attn .nbi-tip").text_content()
        assert "⟨U+202E⟩evil" in tip and "\u202e" not in tip, tip

        # Nothing the tokens hold ran or loaded.
        assert page.locator(".nbi-attn img, .nbi-neur img, .nbi-grad img, .nbi-attn script, .nbi-grad svg script").count() == 0
        assert page.evaluate("() => window.__pwned") is None
        assert not dialogs and not errors, (dialogs, errors)
        assert not [u for u in requests if u.rstrip("/").endswith("/x")], "an <img src=x> from a token was loaded"
        page.screenshot(path=str(artifacts / "bidi_tokens.png"), full_page=True)
        page.close()
