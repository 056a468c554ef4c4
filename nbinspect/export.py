"""Views that leave the notebook: one self-contained HTML page, a PNG or an SVG.

``save(view, "page.html")`` walks the widget graph from ``view`` (every widget another one references
by ``widget_serialization``: the shared Selection, a composite's children, an altair chart) and writes
one HTML file holding every model's state, the binary traits and the views' ESM, plus a small runtime
(``js/export_runtime.js``) that gives each view the model interface it has in a notebook. The page
needs no network and no kernel: hovering, clicking and the shared selection work on what was saved;
what Python would have computed (another layer's data, a slider's recompute) is named in a notice.

Size: buffers and ESM travel gzip-compressed and base64-encoded, each distinct ESM once, so the file
is usually *smaller* than the bytes a live notebook sends (:func:`payload_bytes`).

``to_png`` renders that page in headless Chromium at 2× and screenshots the view; ``to_svg`` is the
vector chart from vl-convert for an altair chart, and the 2× picture inside an SVG of the view's size
for canvas views (their pixels are the picture). :class:`Exportable` puts the three on a view class.
"""

from __future__ import annotations

import base64
import concurrent.futures
import gzip
import hashlib
import html
import json
import os
import shutil
import tempfile
from pathlib import Path

import ipywidgets
from ipywidgets.widgets.widget import _remove_buffers

from . import codecs

STATIC = Path(__file__).resolve().parent / "static"
#: The picture's scale: canvas views are drawn at devicePixelRatio, so 2 gives print-quality pixels.
PNG_SCALE = 2
#: Longest wait for a saved page to render in headless Chromium before to_png gives up.
RENDER_TIMEOUT_MS = 30_000
#: Headless Chromium for pictures: Debian's package (``make browser``); playwright drives it.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
#: Traits a view saves from the browser that need no answer from Python (painting counters, hover).
LOCAL_TRAITS = ("painted", "token", "local_tz")


def widget_graph(root: ipywidgets.Widget) -> list[ipywidgets.Widget]:
    """``root`` and every widget reachable from it through trait values (lists, tuples and dicts too)."""
    found: dict[str, ipywidgets.Widget] = {}

    def walk(value):
        if isinstance(value, ipywidgets.Widget):
            if value.model_id in found:
                return
            found[value.model_id] = value
            for name in value.keys:
                walk(getattr(value, name, None))
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    walk(root)
    return list(found.values())


def _gzip64(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode("ascii")


def page_state(root: ipywidgets.Widget) -> dict:
    """The JSON document a saved page carries (see js/export_runtime.js for its shape)."""
    code: dict[str, str] = {}
    models: dict[str, dict] = {}
    blob = bytearray()
    local: dict[str, list[str]] = {}
    notes: list[str] = []
    for w in widget_graph(root):
        state = w.get_state()
        esm = state.pop("_esm", None)
        css = state.pop("_css", None)
        state.pop("_anywidget_id", None)
        esm_key = None
        if esm:
            text = esm.encode() if isinstance(esm, str) else bytes(esm)
            esm_key = hashlib.sha256(text).hexdigest()[:16]
            code.setdefault(esm_key, _gzip64(text))
        state, paths, buffers = _remove_buffers(state)
        refs = []
        for path, buf in zip(paths, buffers):
            data = bytes(buf)
            refs.append([path, len(blob), len(data)])
            blob += data
        models[w.model_id] = {
            "name": state.get("_model_name", type(w).__name__),
            "module": state.get("_model_module", ""),
            "esm": esm_key,
            "css": str(css) if css else None,
            "state": state,
            "buffers": refs,
        }
        local[w.model_id] = list(LOCAL_TRAITS) + list(getattr(w, "export_local_traits", ()))
        note = getattr(w, "export_note", None)
        if note and note not in notes:
            notes.append(note)
    return {"root": root.model_id, "models": models, "code": code, "data": _gzip64(bytes(blob)) if blob else "", "local": local, "notes": notes}


def _runtime() -> str:
    path = STATIC / "export_runtime.js"
    if not path.exists():
        raise FileNotFoundError(f"the export runtime {path} is missing; build the JS with `make js`.")
    return path.read_text()


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval' blob:; style-src 'unsafe-inline'; img-src data: blob:; font-src data:">
<title>{title}</title>
<style>
body {{ margin: 16px; font: 13px system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222; background: #fff; }}
#nbinspect-notice {{ color: #666; margin: 0 0 10px; max-width: 900px; }}
#nbinspect-kernel-note {{ color: #8a4b00; background: #fff6e5; border: 1px solid #f0d39a; padding: 4px 8px; margin: 0 0 10px; max-width: 900px; }}
#nbinspect-root {{ display: inline-block; }}
</style>
</head>
<body>
<p id="nbinspect-notice">{notice}</p>
<p id="nbinspect-kernel-note" hidden></p>
<div id="nbinspect-root"></div>
<script type="application/json" id="nbinspect-state">{state}</script>
<script type="module">{runtime}</script>
</body>
</html>
"""


def to_html(view: ipywidgets.Widget, title: str | None = None) -> str:
    """One self-contained HTML page showing ``view`` (and everything it references) as it is now."""
    doc = page_state(view)
    notice = "Saved from nbinspect: works offline, without Python. Hover, clicks and the shared selection work on what was saved."
    if doc["notes"]:
        notice += " " + " ".join(doc["notes"])
    # "</" inside JSON would end the script element early: token text is untrusted.
    state = json.dumps(doc, separators=(",", ":")).replace("</", "<\\/")
    return PAGE.format(
        title=html.escape(title or f"nbinspect {type(view).__name__}"),
        notice=html.escape(notice),
        state=state,
        runtime=_runtime().replace("</script", "<\\/script"),
    )


def save(view: ipywidgets.Widget, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write ``view`` as one self-contained offline HTML page; returns the path."""
    path = Path(path)
    path.write_text(to_html(view, title), encoding="utf-8")
    return path


def payload_bytes(view: ipywidgets.Widget) -> tuple[int, int]:
    """(data bytes, code bytes) a live notebook sends for ``view``'s graph, each distinct ESM counted once."""
    data, seen, code = 0, set(), 0
    for w in widget_graph(view):
        d, _ = codecs.sent_bytes(w)
        data += d
        state = w.get_state()
        for name in ("_esm", "_css"):
            value = state.get(name)
            if value and str(value) not in seen:
                seen.add(str(value))
                code += len(str(value).encode())
    return data, code


# --- pictures ------------------------------------------------------------------------------------------


def _chart_of(view) -> dict | None:
    """The Vega-Lite spec when ``view`` is an altair chart (an ``alt.JupyterChart``: the spec it shows,
    which a view may have given new data since the chart was made; or an ``alt.Chart``), else None."""
    try:
        import altair as alt
    except ImportError:  # pragma: no cover - altair is a dependency
        return None
    if isinstance(view, alt.JupyterChart):
        return _shown_spec(view)
    if isinstance(view, alt.TopLevelMixin):
        return view.to_dict()
    return None


def _shown_spec(chart) -> dict:
    """The spec a JupyterChart shows: its ``spec`` with the top-level datasets and signals that Python sent
    it since as updates (``_py_to_js_updates``; a view gives a shown chart new data that way)."""
    spec = dict(chart.spec)
    updates = [u for u in chart._py_to_js_updates or [] if u.get("scope") == []]
    if updates:
        spec["datasets"] = {**spec.get("datasets", {}), **{u["name"]: u["value"] for u in updates if u["namespace"] == "data"}}
        signals = {u["name"]: u["value"] for u in updates if u["namespace"] == "signal"}
        spec["params"] = [{**p, "value": signals[p["name"]]} if p["name"] in signals else p for p in spec.get("params", [])]
    return spec


def _screenshot(view, scale: int = PNG_SCALE) -> bytes:
    """The view rendered from its saved page in headless Chromium, network blocked, as PNG bytes."""
    with tempfile.TemporaryDirectory(prefix="nbinspect-png-") as tmp:
        page_path = save(view, Path(tmp) / "view.html")
        # Playwright's sync API refuses to run on a thread with an asyncio loop (a Jupyter kernel's):
        # drive the browser from a thread of its own.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(_shoot, page_path, scale, type(view).__name__).result()


def _shoot(page_path: Path, scale: int, what: str) -> bytes:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200}, device_scale_factor=scale)
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "blob:", "data:")) else route.abort())
            page.goto(page_path.as_uri())
            page.wait_for_function("() => document.body.dataset.ready", timeout=RENDER_TIMEOUT_MS)
            if page.evaluate("() => document.body.dataset.ready") != "1":
                raise RuntimeError(f"the saved page of {what} failed to render: {page.inner_text('#nbinspect-root')[:500]}")
            return page.locator("#nbinspect-root").screenshot(type="png")
        finally:
            browser.close()


def to_png(view, path: str | os.PathLike | None = None, scale: int = PNG_SCALE) -> bytes:
    """A PNG of ``view`` at ``scale``× (altair charts through vl-convert, canvas views through headless
    Chromium); written to ``path`` when given. Returns the PNG bytes."""
    chart = _chart_of(view)
    if chart is not None:
        import vl_convert as vlc

        png = vlc.vegalite_to_png(chart, scale=scale)
    else:
        png = _screenshot(view, scale)
    if path is not None:
        Path(path).write_bytes(png)
    return png


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) of PNG bytes, from the IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def to_svg(view, path: str | os.PathLike | None = None, scale: int = PNG_SCALE) -> str:
    """An SVG of ``view``: vector for altair charts (vl-convert); for canvas views, whose pixels are the
    picture, the ``scale``× PNG inside an SVG of the view's size. Written to ``path`` when given."""
    chart = _chart_of(view)
    if chart is not None:
        import vl_convert as vlc

        svg = vlc.vegalite_to_svg(chart)
    else:
        png = _screenshot(view, scale)
        w, h = png_size(png)
        cw, ch = w / scale, h / scale
        data = base64.b64encode(png).decode("ascii")
        svg = (
            f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="{cw:g}" height="{ch:g}" '
            f'viewBox="0 0 {cw:g} {ch:g}"><image width="{cw:g}" height="{ch:g}" href="data:image/png;base64,{data}"/></svg>'
        )
    if path is not None:
        Path(path).write_text(svg, encoding="utf-8")
    return svg


class Exportable:
    """``save``, ``to_png`` and ``to_svg`` as methods: mix into a view class (``class View(Exportable, ...)``).

    A view may set ``export_note`` (a sentence the saved page shows, e.g. what needs the kernel) and
    ``export_local_traits`` (traits its JS saves that Python does not answer).
    """

    def save(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Write this view as one self-contained, offline, interactive HTML page."""
        return save(self, path, title)

    def to_png(self, path: str | os.PathLike | None = None, scale: int = PNG_SCALE) -> bytes:
        """This view as a PNG at ``scale``× (bytes; also written to ``path`` when given)."""
        return to_png(self, path, scale)

    def to_svg(self, path: str | os.PathLike | None = None, scale: int = PNG_SCALE) -> str:
        """This view as SVG text (also written to ``path`` when given)."""
        return to_svg(self, path, scale)
