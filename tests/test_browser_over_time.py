"""The generation view in a real JupyterLab, driven by headless Chromium: it paints while a tiny random
model generates, the scrubber and the arrow keys move the shown step, and the shared selection follows
(and leads) in both directions. Screenshot kept in test-artifacts/."""

import json
from pathlib import Path

import nbformat
import pytest

from lab import INK, chromium, js_wait, jupyterlab, open_notebook, py, run_all, wait_idle_after_run

pytestmark = pytest.mark.browser

GEN = "document.querySelector('.nbi-gen')"
STEPS = 12
PROMPT = "Once upon a time"

NOTEBOOK = nbformat.v4.new_notebook(
    cells=[
        nbformat.v4.new_code_cell(
            f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
            "import nbinspect\n"
            "from nbinspect.views.selection import Selection\n"
            "from tiny_models import CharTokenizer, tiny\n"
            "model = tiny('llama')\n"
            "sel = Selection()\n"
            f"view = nbinspect.generate(model, CharTokenizer(), {PROMPT!r}, max_new_tokens={STEPS}, selection=sel)\n"
            "view"
        )
    ],
    metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
)



def test_generation_view_paints_scrubs_and_moves_the_selection(artifacts):
    p = len(PROMPT)  # CharTokenizer: one token per character
    with jupyterlab({"generation.ipynb": json.dumps(NOTEBOOK)}) as (url, _), chromium() as browser:
        page = open_notebook(browser, url, "generation.ipynb")
        errors = []
        page.on("pageerror", lambda e: errors.append(e.stack or str(e)))
        run_all(page)
        wait_idle_after_run(page)
        py(page, "view.wait(120); print('done')")
        # Every step arrived and the view follows the latest one.
        js_wait(page, f"{GEN}.dataset.steps === '{STEPS}' && {GEN}.dataset.shown === '{STEPS - 1}'", 60_000)
        root = page.locator(".nbi-gen")
        for canvas in ("nbi-text", "nbi-att", "nbi-lens", "nbi-cand"):
            assert root.locator(f"canvas.{canvas}").evaluate(INK) > 0.01, f"the {canvas} canvas is blank"

        # The scrubber picks step 3: Python shows it and the shared selection is on its token.
        root.locator("input[type=range]").evaluate(
            "(r) => { r.value = '3'; r.dispatchEvent(new Event('input', { bubbles: true })); }"
        )
        js_wait(page, f"{GEN}.dataset.shown === '3'")
        page.wait_for_timeout(300)
        assert py(page, "print(view.step, view.shown_step, sel.token)") == f"3 3 {p + 3}"

        # Arrow keys step back; the selection moves with them.
        root.focus()
        page.keyboard.press("ArrowLeft")
        js_wait(page, f"{GEN}.dataset.shown === '2'")
        page.wait_for_timeout(300)
        assert py(page, "print(view.step, sel.token)") == f"2 {p + 2}"

        # The selection set elsewhere (here from Python) moves the view to that generated token's step.
        py(page, f"sel.token = {p + 7}")
        js_wait(page, f"{GEN}.dataset.shown === '7'")
        assert py(page, "print(view.step)") == "7"
        page.screenshot(path=str(artifacts / "generation_view.png"), full_page=True)
        assert not errors, errors
        page.close()
