"""The head-type badges, drawn in a real JupyterLab (headless Chromium).

The Python side (which heads get which badge) is tested in test_residual_stream.py; here the question is
whether the badges reach the screen: after the "head types" checkbox, each typed head's thumbnail on the
attention grid must have a square of its type's colour in its top-right corner, and every other thumbnail
must not; on the attribution grid each typed head's cell gets its letter, and no other cell changes.
"""

from __future__ import annotations

import pytest

NOTEBOOK = """
import torch, nbinspect
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2)).eval()
class Tok:
    bos_token_id = 1
    def __call__(self, text, return_tensors='pt', add_special_tokens=True):
        ids = torch.tensor([[ord(c) % 64 for c in text]])
        return {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
    def decode(self, ids, **kw):
        return ''.join(chr(32 + i) for i in ids)
t = nbinspect.trace(m, Tok(), 'hello world, hello world', gradients=False)
att = nbinspect.attention(t)
dla = nbinspect.logit_attribution(t)
display(att, dla)
"""

#: Colours the grid draws each type's badge in (js/attention_view.js BADGES), in HEAD_TYPES order.
COLOURS = {"previous_token": (0x1F, 0x77, 0xB4), "induction": (0xD6, 0x27, 0x28),
           "duplicate_token": (0x2C, 0xA0, 0x2C), "first_token": (0x7F, 0x7F, 0x7F)}

#: For each thumbnail, the fraction of the pixels in its badge square (top-right corner, side as the JS
#: computes it) that have each type's colour; [layers][heads] of {type: fraction}.
BADGE_PIXELS = """([colours, rows, cols]) => {
  const c = document.querySelector('.nbi-attn canvas.nbi-grid');
  const d = c.dataset;
  const left = +d.left, top = +d.top, step = +d.step, T = +d.size;
  const s = Math.max(6, Math.min(12, Math.floor(T / 2.5)));
  const dpr = c.width / c.clientWidth;
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height);
  const out = [];
  for (let l = 0; l < rows; l++) {
    const row = [];
    for (let h = 0; h < cols; h++) {
      const x0 = Math.round((left + h * step + T - s) * dpr), y0 = Math.round((top + l * step) * dpr);
      const n = Math.floor(s * dpr);
      const hits = {};
      for (const name of Object.keys(colours)) hits[name] = 0;
      for (let y = y0; y < y0 + n; y++)
        for (let x = x0; x < x0 + n; x++) {
          const i = (y * px.width + x) * 4;
          for (const [name, rgb] of Object.entries(colours))
            if (Math.abs(px.data[i] - rgb[0]) <= 2 && Math.abs(px.data[i + 1] - rgb[1]) <= 2 && Math.abs(px.data[i + 2] - rgb[2]) <= 2)
              hits[name]++;
        }
      for (const name of Object.keys(hits)) hits[name] /= n * n;
      row.push(hits);
    }
    out.push(row);
  }
  return out;
}"""


#: The attribution grid's head cells, as lists of packed RGB pixels: [layers][heads] of [pixels].
DLA_CELLS = """([rows, cols]) => {
  const c = document.querySelector('.nbi-dla canvas');
  const left = +c.dataset.left, top = +c.dataset.top, cell = +c.dataset.cell;
  const dpr = c.width / c.clientWidth;
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height);
  const out = [];
  for (let l = 0; l < rows; l++) {
    const row = [];
    for (let h = 0; h < cols; h++) {
      // inside the cell, clear of the selection outlines drawn over its edges
      const x0 = Math.round((left + h * cell + 3) * dpr), y0 = Math.round((top + l * cell + 3) * dpr);
      const n = Math.floor((cell - 7) * dpr);
      const pixels = [];
      for (let y = y0; y < y0 + n; y++)
        for (let x = x0; x < x0 + n; x++) {
          const i = (y * px.width + x) * 4;
          pixels.push((px.data[i] << 16) | (px.data[i + 1] << 8) | px.data[i + 2]);
        }
      row.push(pixels);
    }
    out.push(row);
  }
  return out;
}"""


@pytest.mark.browser
def test_head_type_badges_are_drawn_on_the_attention_grid(artifacts):
    # A random model's heads hardly reach the default threshold; the test sets it between the heads' best
    # scores so that some heads are typed and some are not (what a threshold slider would do).
    _badges_in_jupyterlab(artifacts, NOTEBOOK, (3, 4), "head_type_badges", median_threshold=True)


@pytest.mark.browser
@pytest.mark.real_model
def test_head_type_badges_of_smollm2_at_the_default_threshold(artifacts):
    # The default model's own induction / previous-token / sink heads, at the threshold users get: 30 x 9
    # thumbnails of 16 px, badges of 6 px (no letter), attribution cells of 18 px (with a letter).
    code = ("import nbinspect\nmodel, tok = nbinspect.load(device='cpu')\n"
            "t = nbinspect.trace(model, tok, 'The cat sat on the mat. The cat sat on the', gradients=False)\n"
            "att = nbinspect.attention(t)\ndla = nbinspect.logit_attribution(t)\ndisplay(att, dla)\n")
    _badges_in_jupyterlab(artifacts, code, (30, 9), "head_type_badges_smollm2", median_threshold=False)


def _badges_in_jupyterlab(artifacts, code: str, shape: tuple[int, int], name: str, *, median_threshold: bool):
    from lab import chromium, js_wait, jupyterlab, notebook, open_notebook, py, run_all, wait_idle_after_run

    with jupyterlab({"badges.ipynb": notebook(code)}) as (url, _), chromium() as browser:
        page = open_notebook(browser, url, "badges.ipynb")
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        run_all(page)
        wait_idle_after_run(page)
        js_wait(page, "document.querySelector('.nbi-attn canvas.nbi-grid').dataset.step > 0", timeout=60_000)
        names = list(COLOURS)
        L, H = (int(v) for v in py(page, "print(att.n_layers, att.n_heads)").split())
        before = page.evaluate(BADGE_PIXELS, [COLOURS, L, H])
        assert (L, H) == shape and len(before) == L and len(before[0]) == H
        js_wait(page, "document.querySelector('.nbi-dla canvas').dataset.cell > 0", timeout=30_000)
        dla_before = page.evaluate(DLA_CELLS, [L, H])
        assert max(f for row in before for cell in row for f in cell.values()) < 0.05  # no badge before the switch

        # The user's path: the checkbox. Python measures the types (one short run) and sends the badges.
        page.locator(".nbi-attn input[type=checkbox]").click()
        js_wait(page, "document.querySelector('.nbi-attn canvas.nbi-grid').dataset.badges !== ''", timeout=60_000)
        assert py(page, "print(att.show_head_types, len(att.head_types))").split() == ["True", str(L * H)]
        if median_threshold:
            py(page, "import torch; best = torch.stack([att.types().scores[k] for k in nbinspect.residual_stream.HEAD_TYPES]).amax(0)\n"
                     "att.badge_threshold = float(best.flatten().sort().values[best.numel() // 2])")
        badges = [int(b) for b in py(page, "print(*list(att.head_types))").split()]
        typed = sum(1 for b in badges if b)
        assert 0 < typed < L * H, badges
        js_wait(page, f"document.querySelector('.nbi-attn canvas.nbi-grid').dataset.badges === '{typed}'", timeout=30_000)
        page.wait_for_timeout(300)  # the frame after the count was written
        after = page.evaluate(BADGE_PIXELS, [COLOURS, L, H])
        for l in range(L):
            for h in range(H):
                kind = badges[l * H + h]
                cell = after[l][h]
                if kind:  # the square in its type's colour (the letter covers the rest)
                    assert cell[names[kind - 1]] > 0.5, (l, h, names[kind - 1], cell)
                else:
                    assert max(cell.values()) < 0.05, (l, h, cell)
        page.locator(".nbi-attn").screenshot(path=str(artifacts / f"{name}.png"))
        threshold = py(page, "print(att.badge_threshold)")
        assert f"≥ {float(threshold):.2g}" in page.locator(".nbi-attn .nbi-head").text_content()

        # The attribution view's overlay: its own checkbox, the same measurement, the same threshold.
        page.locator(".nbi-dla input[type=checkbox]").click()
        js_wait(page, "document.querySelector('.nbi-dla .nbi-sum').textContent.includes('badges')", timeout=30_000)
        py(page, "dla.badge_threshold = att.badge_threshold")  # the view follows a threshold set from Python
        assert [int(b) for b in py(page, "print(*list(dla.head_types))").split()] == badges
        js_wait(page, f"document.querySelector('.nbi-dla .nbi-sum').textContent.includes('≥ {float(threshold):.2g}')",
                timeout=30_000)
        page.wait_for_timeout(300)
        dla_after = page.evaluate(DLA_CELLS, [L, H])
        for l in range(L):
            for h in range(H):
                changed = sum(a != b for a, b in zip(dla_before[l][h], dla_after[l][h]))
                if badges[l * H + h]:  # its letter
                    assert changed >= 10, (l, h, changed)
                else:
                    assert changed == 0, (l, h, changed)
        page.locator(".nbi-dla").screenshot(path=str(artifacts / f"{name}_attribution.png"))

        # Switched off again: the corners go back to the attention thumbnails.
        page.locator(".nbi-attn input[type=checkbox]").click()
        js_wait(page, "document.querySelector('.nbi-attn canvas.nbi-grid').dataset.badges === ''", timeout=30_000)
        page.wait_for_timeout(300)
        off = page.evaluate(BADGE_PIXELS, [COLOURS, L, H])
        assert max(f for row in off for cell in row for f in cell.values()) < 0.05
        assert page.locator(".nbi-attn b").count() == 0
        assert not errors, errors
        page.close()
