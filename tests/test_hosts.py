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
from lab import NOTEBOOKS, chromium, free_port, kernel, run_all, wait_idle_after_run

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


def wait_js(page, condition: str, timeout: int = 30_000):
    page.wait_for_function(f"() => {{ try {{ return {condition}; }} catch (e) {{ return false; }} }}", timeout=timeout)


def py(page, code: str) -> str:
    out = kernel(page, code)
    assert "ERROR" not in out, out
    return out.strip()


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
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{notebook7}/notebooks/quickstart.ipynb")
    page.wait_for_function(NB7_IDLE, arg="quickstart.ipynb", timeout=90_000)
    run_all(page)
    wait_idle_after_run(page, timeout_ms=240_000)
    att = "document.querySelector('.nbi-attn')"
    neur = "document.querySelector('.nbi-neur')"
    # The quickstart set layer 3, head 2 from Python: the dashboard's views have painted it.
    wait_js(page, f"{att}.dataset.painted === '3,2' && {neur}.dataset.painted === '3'", 90_000)
    assert page.locator(".nbi-attn canvas.nbi-grid >> nth=0").evaluate(INK) > 0.1
    assert page.locator(".nbi-neur canvas.nbi-heat").evaluate(INK) > 0.1
    # A click on a thumbnail moves the other views in the browser, and Python sends layer 6's neurons.
    grid = page.locator(".nbi-attn >> nth=0").locator("canvas.nbi-grid")
    grid.scroll_into_view_if_needed()
    d = grid.evaluate("(c) => ({ left: +c.dataset.left, top: +c.dataset.top, step: +c.dataset.step, size: +c.dataset.size })")
    grid.click(position={"x": d["left"] + 1 * d["step"] + d["size"] / 2, "y": d["top"] + 6 * d["step"] + d["size"] / 2})
    wait_js(page, f"{att}.dataset.painted === '6,1' && {neur}.dataset.painted === '6'", 30_000)
    assert py(page, "print(dash.selection.layer, dash.selection.head, dash.neurons.layer)") == "6 1 6"
    # A slider's edit recomputes: switch the selected head off and the prediction view repaints with a KL > 0.
    before = int(page.evaluate("() => +document.querySelector('.nbi-pred').dataset.painted"))
    py(page, SWITCH_OFF)
    wait_js(page, f"+document.querySelector('.nbi-pred').dataset.painted > {before}", 60_000)
    assert float(py(page, "print(dash.perturb.prediction.summary['positions'][-1]['kl'])")) > 0
    page.screenshot(path=str(artifacts / "notebook7_quickstart.png"), full_page=True)
    assert not errors, errors
    page.close()


SWITCH_OFF = "p = dash.perturb\np.head_layer.value, p.head.value, p.head_factor.value = 6, 1, 0.0\np.wait()"

INK = """(c) => {
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i] + d[i + 1] + d[i + 2] < 700) ink++;
  return ink / (d.length / 4);
}"""


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


def wait_data(locator, key: str, value: str, timeout: int = 60_000):
    deadline = time.time() + timeout / 1000
    while data(locator, key) != value:
        if time.time() > deadline:
            raise AssertionError(f"{key} is {data(locator, key)!r}, expected {value!r}")
        time.sleep(0.1)


def test_marimo_renders_the_linked_views_and_python_answers_a_click(marimo_app, browser, artifacts):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack}"))
    page.goto(marimo_app)
    att, neur = page.locator(".nbi-attn").first, page.locator(".nbi-neur").first
    att.wait_for(timeout=180_000)
    wait_data(att, "painted", "0,0", 120_000)
    wait_data(neur, "painted", "0")
    assert att.locator("canvas.nbi-grid").evaluate(INK) > 0.1
    assert neur.locator("canvas.nbi-heat").evaluate(INK) > 0.1
    # Click layer 6, head 1: the neuron view follows in the browser, and both views repaint once Python
    # has sent the new focus map and layer 6's neurons through marimo's widget channel.
    grid = att.locator("canvas.nbi-grid")
    grid.scroll_into_view_if_needed()
    d = grid.evaluate("(c) => ({ left: +c.dataset.left, top: +c.dataset.top, step: +c.dataset.step, size: +c.dataset.size })")
    grid.click(position={"x": d["left"] + 1 * d["step"] + d["size"] / 2, "y": d["top"] + 6 * d["step"] + d["size"] / 2})
    wait_data(neur, "layer", "6", 5_000)
    # (marimo answers widget messages between cell runs: the dashboard cell below may still be running.)
    wait_data(att, "painted", "6,1", 180_000)
    wait_data(neur, "painted", "6", 30_000)
    page.screenshot(path=str(artifacts / "marimo_views.png"), full_page=True)
    assert not errors, errors
    page.close()
