"""Saved pages, PNG and SVG: what the file holds, and the file opened in headless Chromium with the
network blocked (zero requests), clicked, and its pixels checked."""

import base64
import gzip
import json
import re

import pytest
import torch
from tiny_models import CharTokenizer, tiny

import nbinspect
from nbinspect import codecs, export

TEXT = "The cat sat on the mat. The dog sat on the log."
LABEL_PX, FOCUS_PX = 84, 480  # js/attention_view.js layout


@pytest.fixture(scope="module")
def model():
    return tiny("llama")


@pytest.fixture(scope="module")
def dash(model):
    return nbinspect.inspect(model, CharTokenizer(), TEXT)


def embedded(html: str) -> dict:
    text = re.search(r'<script type="application/json" id="nbinspect-state">(.*?)</script>', html, re.S).group(1)
    return json.loads(text)


def test_the_page_holds_every_model_the_view_references_and_their_bytes(dash):
    doc = embedded(export.to_html(dash))
    graph = export.widget_graph(dash)
    assert set(doc["models"]) == {w.model_id for w in graph}
    assert doc["root"] == dash.model_id
    # The shared selection is one model that every view points to.
    sel = dash.selection.model_id
    assert doc["models"][dash.attention.model_id]["state"]["selection"] == f"IPY_MODEL_{sel}"
    assert doc["models"][sel]["state"]["layer"] == dash.selection.layer
    data = gzip.decompress(base64.b64decode(doc["data"]))
    for name in ("thumbnails", "focus"):
        path, offset, length = next(b for b in doc["models"][dash.attention.model_id]["buffers"] if b[0] == [name])
        # As the kernel sends it: the payload behind its 4-byte stamp (codecs.stamped).
        assert data[offset : offset + length] == codecs.stamped(getattr(dash.attention, name))
        assert data[offset + codecs.STAMP_BYTES : offset + length] == getattr(dash.attention, name)
    # Each distinct ESM once, and it is the view's own code.
    code = {k: gzip.decompress(base64.b64decode(v)).decode() for k, v in doc["code"].items()}
    assert len(code) == len({str(w._esm) for w in graph if getattr(w, "_esm", None)})
    assert code[doc["models"][dash.attention.model_id]["esm"]] == str(dash.attention._esm)


def test_the_current_selection_is_what_the_page_opens_on(model):
    view = nbinspect.attention(model, CharTokenizer(), TEXT)
    view.layer, view.head = 2, 3
    doc = embedded(export.to_html(view))
    state = doc["models"][view.selection.model_id]["state"]
    assert (state["layer"], state["head"]) == (2, 3)
    assert doc["models"][view.model_id]["state"]["focus_of"] == [2, 3]


def test_token_text_cannot_end_the_script_element(model):
    class Hostile(CharTokenizer):
        def decode(self, ids, **kw):
            return "</script><script>window.__pwned=1</script>"

    view = nbinspect.attention(model, Hostile(), "abcdef")
    html = export.to_html(view)
    assert "</script><script>window.__pwned" not in html
    assert embedded(html)["models"][view.model_id]["state"]["tokens"][0] == "</script><script>window.__pwned=1</script>"


def test_the_file_is_within_1_5x_of_the_data_and_code(dash, model, tmp_path):
    runtime = len((export.STATIC / "export_runtime.js").read_bytes())
    for view in (dash, nbinspect.attention(model, CharTokenizer(), TEXT * 4), nbinspect.neurons(model, CharTokenizer(), TEXT * 4)):
        size = export.save(view, tmp_path / "v.html").stat().st_size
        data, code = export.payload_bytes(view)
        assert size <= 1.5 * (data + code + runtime), (type(view).__name__, size, data, code, runtime)


# --- in the browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    from lab import chromium

    with chromium() as b:
        yield b


def open_offline(browser, path):
    """Open a saved page with every request but the file itself (and its own blob: modules) refused."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.requests, page.errors = [], []
    page.on("request", lambda r: page.requests.append(r.url))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.route("**/*", lambda route: route.continue_() if route.request.url == path.as_uri() else route.abort())
    page.goto(path.as_uri())
    page.wait_for_function("() => document.body.dataset.ready", timeout=30_000)
    assert page.evaluate("() => document.body.dataset.ready") == "1", page.inner_text("#nbinspect-root")[:2000]
    return page


def ink(page, selector: str) -> float:
    return page.evaluate(
        """(sel) => {
          const c = document.querySelector(sel);
          const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
          let ink = 0;
          for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i] + d[i + 1] + d[i + 2] < 700) ink++;
          return ink / (d.length / 4);
        }""",
        selector,
    )


@pytest.mark.browser
def test_the_saved_dashboard_works_offline_with_zero_requests(dash, browser, tmp_path, artifacts):
    path = export.save(dash, tmp_path / "dashboard.html")
    page = open_offline(browser, path)
    # Only the file itself was fetched (the views' own modules load from blob: URLs made in the page).
    assert [u for u in page.requests if not u.startswith("blob:")] == [path.as_uri()]
    assert ink(page, ".nbi-attn canvas.nbi-focus") > 0.02 and ink(page, ".nbi-neur canvas.nbi-heat") > 0.2
    assert page.locator(".vega-embed canvas, .vega-embed svg").count() >= 1, "the gradient chart did not render"
    # The strongest cell of the saved focus map is drawn dark where it belongs.
    w = dash.attention.weights()
    n = w.shape[1]
    k = int(w.argmax())
    i, j = k // n, k % n
    rgb = page.locator(".nbi-attn canvas.nbi-focus").evaluate(
        "(c, [x, y]) => Array.from(c.getContext('2d').getImageData(Math.round(x * devicePixelRatio), Math.round(y * devicePixelRatio), 1, 1).data.slice(0, 3))",
        [LABEL_PX + (j + 0.5) * FOCUS_PX / n, LABEL_PX + (i + 0.5) * FOCUS_PX / n],
    )
    assert sum(rgb) < 300, rgb
    # Hover a token label in the attention view: the neuron and gradient views follow, no kernel involved.
    focus = page.locator(".nbi-attn canvas.nbi-focus")
    focus.hover(position={"x": 40, "y": LABEL_PX + 4.5 * FOCUS_PX / n})
    page.wait_for_function("() => document.querySelector('.nbi-neur').dataset.token === '4' && document.querySelector('.nbi-grad').dataset.token === '4'", timeout=5_000)
    assert page.locator("#nbinspect-kernel-note").is_hidden()  # a hover needs nothing from Python
    # Click another head's thumbnail: the focus moves (drawn from the thumbnail), and the page says the
    # full map would come from Python.
    grid = page.locator(".nbi-attn canvas.nbi-grid")
    d = grid.evaluate("(c) => ({ left: +c.dataset.left, top: +c.dataset.top, step: +c.dataset.step, size: +c.dataset.size })")
    grid.click(position={"x": d["left"] + 2 * d["step"] + d["size"] / 2, "y": d["top"] + 1 * d["step"] + d["size"] / 2})
    page.wait_for_function("() => document.querySelector('.nbi-attn').dataset.layer === '1' && document.querySelector('.nbi-attn').dataset.head === '2'", timeout=5_000)
    assert page.wait_for_function("() => document.querySelector('.nbi-neur').dataset.layer === '1'", timeout=5_000)
    assert "Python" in page.locator("#nbinspect-kernel-note").inner_text()
    page.screenshot(path=str(artifacts / "export_dashboard.png"), full_page=True)
    assert [u for u in page.requests if not u.startswith("blob:")] == [path.as_uri()]
    assert not page.errors, page.errors
    page.close()


def png_pixels(browser, png: bytes):
    """Decode a PNG in the browser: (width, height, a function giving the ink fraction of a box)."""
    page = browser.new_page()
    page.set_content("<canvas></canvas>")
    size = page.evaluate(
        """async (b64) => {
          const img = new Image();
          img.src = "data:image/png;base64," + b64;
          await img.decode();
          const c = document.querySelector("canvas");
          c.width = img.width; c.height = img.height;
          c.getContext("2d").drawImage(img, 0, 0);
          return [img.width, img.height];
        }""",
        base64.b64encode(png).decode(),
    )

    def box_ink(x, y, w, h):
        return page.evaluate(
            """([x, y, w, h]) => {
              const d = document.querySelector("canvas").getContext("2d").getImageData(x, y, w, h).data;
              let ink = 0;
              for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] < 700) ink++;
              return ink / (d.length / 4);
            }""",
            [int(x), int(y), max(1, int(w)), max(1, int(h))],
        )

    return size, box_ink, page


@pytest.mark.browser
def test_a_saved_gradient_view_draws_the_norms_its_chart_was_last_sent(model, browser, tmp_path):
    """A slider edit gives the shown chart its new norms and title as updates, not a new spec. A page saved
    after it draws the chart from the first spec and then applies them: the same pixels as the chart of a
    view made for the edited trace, and not those of the unedited one."""
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT)
    unedited = view.trace
    edited = unedited.edit(nbinspect.AblateHead(1, 0))
    view.show(edited)

    def chart_pixels(v, name):
        page = open_offline(browser, export.save(v, tmp_path / name))
        page.wait_for_selector(".vega-embed canvas")
        seen = None
        for _ in range(50):  # the updates apply after the first render: wait until the pixels settle
            page.wait_for_timeout(100)
            now = page.locator(".vega-embed canvas").evaluate("(c) => c.toDataURL()")
            if now == seen:
                break
            seen = now
        assert not page.errors, page.errors
        page.close()
        return seen

    shown = chart_pixels(view, "edited.html")
    assert shown == chart_pixels(nbinspect.gradient_flow(edited), "fresh.html")
    assert shown != chart_pixels(nbinspect.gradient_flow(unedited), "unedited.html")


@pytest.mark.browser
def test_png_has_the_views_size_at_2x_and_ink_where_the_data_is(model, browser, tmp_path, artifacts):
    view = nbinspect.attention(model, CharTokenizer(), TEXT)
    png = view_png = export.to_png(view, artifacts / "export_attention.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # The same page, measured: the PNG is the view's box at twice its CSS size.
    page = open_offline(browser, export.save(view, tmp_path / "a.html"))
    root = page.locator("#nbinspect-root").bounding_box()
    focus = page.locator(".nbi-attn canvas.nbi-focus").bounding_box()
    page.close()
    (w, h), box_ink, decoded = png_pixels(browser, view_png)
    assert (w, h) == export.png_size(png)
    assert abs(w - 2 * root["width"]) <= 2 and abs(h - 2 * root["height"]) <= 2
    fx, fy = 2 * (focus["x"] - root["x"]), 2 * (focus["y"] - root["y"])
    heat = box_ink(fx + 2 * LABEL_PX, fy + 2 * LABEL_PX, 2 * FOCUS_PX, 2 * FOCUS_PX)
    blank = box_ink(fx + 2 * (LABEL_PX + FOCUS_PX) + 10, fy + 2 * LABEL_PX, 6, 2 * FOCUS_PX)  # right of the map
    assert heat > 0.3 and blank < 0.01, (heat, blank)
    # Causal attention: the top-right corner of the map (a token attending to later ones) is background.
    upper = box_ink(fx + 2 * (LABEL_PX + FOCUS_PX) - 60, fy + 2 * LABEL_PX + 8, 50, 50)
    assert upper < 0.05, upper
    decoded.close()


@pytest.mark.browser
def test_svg_of_a_canvas_view_embeds_the_2x_picture(model, tmp_path):
    view = nbinspect.neurons(model, CharTokenizer(), TEXT)
    svg = export.to_svg(view, tmp_path / "n.svg")
    w, h = (float(v) for v in re.search(r'width="([\d.]+)" height="([\d.]+)"', svg).groups())
    png = base64.b64decode(re.search(r'base64,([^"]+)"', svg).group(1))
    assert export.png_size(png) == (round(2 * w), round(2 * h))
    assert (tmp_path / "n.svg").read_text() == svg


def test_altair_charts_go_through_vl_convert(dash):
    chart = dash.gradients.chart
    svg = export.to_svg(chart)
    assert svg.startswith("<svg") and "layer" in svg and "<image" not in svg
    png = export.to_png(chart)
    w, h = export.png_size(png)
    assert w > 200 and h > 100


def test_the_mixin_gives_a_view_save_to_png_and_to_svg(model, tmp_path):
    # Every view (views.base.View), the dashboard and the panel carry the mixin.
    assert issubclass(nbinspect.AttentionView, export.Exportable) and issubclass(nbinspect.Dashboard, export.Exportable)
    base = nbinspect.attention(model, CharTokenizer(), TEXT)
    view = nbinspect.AttentionView(base.trace)
    path = view.save(tmp_path / "x.html")
    doc = embedded(path.read_text())
    assert doc["root"] == view.model_id
    assert doc["models"][view.model_id]["state"]["tokens"] == list(base.tokens)
    assert callable(view.to_png) and callable(view.to_svg)
    torch.testing.assert_close(view.weights(), base.weights())


@pytest.mark.browser
def test_the_png_and_svg_buttons_download_the_view(model, browser, tmp_path):
    from pathlib import Path

    view = nbinspect.neurons(model, CharTokenizer(), TEXT)
    page = open_offline(browser, export.save(view, tmp_path / "n.html"))
    root = page.locator(".nbi-neur")
    box = root.bounding_box()
    heat = root.locator("canvas.nbi-heat").bounding_box()
    with page.expect_download() as download:
        root.locator(".nbi-export button", has_text="PNG").click()
    png = Path(download.value.path()).read_bytes()
    assert download.value.suggested_filename.endswith(".png")
    (w, h), box_ink, decoded = png_pixels(browser, png)
    assert abs(w - 2 * box["width"]) <= 2 and abs(h - 2 * box["height"]) <= 2, (w, h, box)
    x, y = 2 * (heat["x"] - box["x"]), 2 * (heat["y"] - box["y"])
    assert box_ink(x + 2 * 90, y + 2 * 50, 2 * heat["width"] - 2 * 100, 2 * heat["height"] - 2 * 60) > 0.3
    decoded.close()
    with page.expect_download() as download:
        root.locator(".nbi-export button", has_text="SVG").click()
    svg = Path(download.value.path()).read_text()
    assert svg.startswith("<svg") and "<foreignObject" in svg and "data:image/png;base64," in svg
    assert "nbi-export" not in svg  # the buttons are not part of the picture
    assert not page.errors, page.errors
    page.close()
