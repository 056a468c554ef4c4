"""The quickstart in the other hosts, beside JupyterLab (tests/test_browser.py): Notebook 7 and marimo,
each started on 127.0.0.1 from PyPI and driven by headless Chromium. In each: the views render, a
click in one view moves the linked ones (and Python answers with the new layer's data), and a
change to a slider's edit recomputes. Screenshots go to test-artifacts/."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from lab import INK, NOTEBOOKS, altair_params_error, chromium, free_port, js_wait, py, run_all, wait_idle_after_run

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

BIN = Path(sys.executable).parent


@contextlib.contextmanager
def server(cmd: list[str], url: str, root: Path, ready_path: str = "/"):
    """Run ``cmd`` in ``root`` until ``url + ready_path`` answers; stop it afterwards."""
    log = open(root / "server.log", "w")
    env = dict(os.environ, HF_HUB_OFFLINE="1", JUPYTER_CONFIG_DIR=str(root / ".jupyter-config"))
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(url + ready_path, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{cmd[0]} did not start: {(root / 'server.log').read_text()[-3000:]}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


wait_js = js_wait


# --- Notebook 7 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notebook7():
    root = Path(tempfile.mkdtemp(prefix="nbinspect-nb7-"))
    for nb in NOTEBOOKS.glob("*.ipynb"):
        shutil.copy(nb, root / nb.name)
    port = free_port()
    cmd = [
        str(BIN / "jupyter"), "notebook", "--allow-root", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.token=", "--ServerApp.password=",
        "--ServerApp.disable_check_xsrf=True", "--JupyterNotebookApp.expose_app_in_browser=True",
        f"--ServerApp.root_dir={root}",
    ]
    try:
        with server(cmd, f"http://127.0.0.1:{port}", root, "/api/status") as url:
            yield url
    finally:
        shutil.rmtree(root, ignore_errors=True)


NB7_IDLE = """(name) => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.context && w.context.path.endsWith(name) && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.status === "idle";
}"""


def test_notebook7_renders_the_quickstart_links_views_and_recomputes(notebook7, browser, artifacts):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack}"))
    page.goto(f"{notebook7}/notebooks/quickstart.ipynb")
    page.wait_for_function(NB7_IDLE, arg="quickstart.ipynb", timeout=90_000)
    # Notebook 7.6 itself throws "reading 'schema'" from notebook_core.js while it loads its settings,
    # before any cell runs: only errors from here on are ours.
    errors.clear()
    run_all(page)
    wait_idle_after_run(page, timeout_ms=240_000)
    check_dashboard(page, artifacts / "notebook7_quickstart.png")
    # Python saw the click and the slider.
    assert py(page, "print(dash.selection.layer, dash.selection.head, dash.perturb.head_factor)") == "6 1 0.0"
    assert float(py(page, "print(dash.perturb.summary['positions'][-1]['kl'])")) > 0
    assert not [e for e in errors if not altair_params_error(e)], errors
    page.close()


# --- marimo ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def marimo_app():
    root = Path(tempfile.mkdtemp(prefix="nbinspect-marimo-"))
    shutil.copy(NOTEBOOKS / "quickstart_marimo.py", root / "quickstart_marimo.py")
    port = free_port()
    cmd = [
        str(BIN / "marimo"), "run", "quickstart_marimo.py", "--headless", "--host", "127.0.0.1", "--port", str(port),
        "--no-token", "--no-sandbox", "--no-skew-protection",
    ]
    try:
        with server(cmd, f"http://127.0.0.1:{port}", root) as url:
            yield url
    finally:
        shutil.rmtree(root, ignore_errors=True)


def data(locator, key: str):
    # marimo renders each widget in a shadow root: locators reach into it, document.querySelector does not.
    return locator.evaluate(f"(e) => e.dataset.{key}")


def wait_data(locator, key: str, ok, timeout: int = 60_000):
    """Wait until ``ok(locator.dataset[key])`` (or equality when ``ok`` is a string)."""
    test = (lambda v: v == ok) if isinstance(ok, str) else ok
    deadline = time.time() + timeout / 1000
    while not test(data(locator, key)):
        if time.time() > deadline:
            raise AssertionError(f"{key} is {data(locator, key)!r}, expected {ok!r}")
        time.sleep(0.1)


def check_dashboard(page, screenshot: Path) -> None:
    """The host's first dashboard: it renders, a click links its views, a slider recomputes."""
    dash = page.locator(".nbi-dash").first
    att, neur, pred = dash.locator(".nbi-attn").first, dash.locator(".nbi-neur").first, dash.locator(".nbi-pred").first
    att.wait_for(timeout=240_000)
    wait_data(att, "painted", lambda v: bool(v), 120_000)
    wait_data(neur, "painted", lambda v: bool(v))
    assert att.locator("canvas.nbi-grid").evaluate(INK) > 0.1
    assert neur.locator("canvas.nbi-heat").evaluate(INK) > 0.1
    # Click layer 6, head 1: the neuron view follows in the browser at once, and both views repaint once
    # Python has sent the new focus map and layer 6's neurons. (marimo answers widget messages between
    # cell runs, so a cell still running below can delay the answer.)
    grid = att.locator("canvas.nbi-grid")
    grid.scroll_into_view_if_needed()
    d = grid.evaluate("(c) => ({ left: +c.dataset.left, top: +c.dataset.top, step: +c.dataset.step, size: +c.dataset.size })")
    grid.click(position={"x": d["left"] + 1 * d["step"] + d["size"] / 2, "y": d["top"] + 6 * d["step"] + d["size"] / 2})
    wait_data(neur, "layer", "6", 5_000)
    wait_data(att, "painted", "6,1", 180_000)
    wait_data(neur, "painted", "6", 30_000)
    # The sliders follow the selection: head 6.1's scale to 0 recomputes, and the prediction repaints.
    factor = pred.locator("input[name=head_factor]")
    deadline = time.time() + 30
    while (pred.locator("input[name=head_layer]").input_value(), pred.locator("input[name=head]").input_value()) != ("6", "1"):
        assert time.time() < deadline, "the sliders did not follow the selection to head 6.1"
        time.sleep(0.1)
    painted = int(data(pred, "painted"))
    factor.scroll_into_view_if_needed()
    factor.fill("0")
    wait_data(pred, "painted", lambda v: int(v) > painted, 120_000)
    wait_data(pred, "painted", lambda v: "edits:" in pred.locator(".nbi-edits").inner_text(), 60_000)
    assert "KL(before‖after) = 0.00e+0" not in pred.locator(".nbi-stats").last.inner_text()
    page.screenshot(path=str(screenshot), full_page=True)


def test_marimo_runs_the_quickstart_app_renders_links_and_recomputes(marimo_app, browser, artifacts):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack}"))
    page.goto(marimo_app)
    check_dashboard(page, artifacts / "marimo_quickstart.png")
    # The standalone view below the dashboard, focused from Python before it was shown.
    view = page.locator(".nbi-attn").last
    view.scroll_into_view_if_needed()
    wait_data(view, "painted", "3,2", 60_000)
    assert not errors, errors
    page.close()


