"""A real JupyterLab on 127.0.0.1 and headless Chromium driving it, for browser tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# Runs `code` in the notebook's kernel and returns what it printed (errors included), so a test can
# read the Python side of a widget while the browser drives it.
KERNEL_EXEC = """async (code) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const future = kernel.requestExecute({ code, store_history: false });
  let out = "";
  future.onIOPub = (msg) => {
    const t = msg.header.msg_type;
    if (t === "stream") out += msg.content.text;
    if (t === "error") out += `ERROR ${msg.content.ename}: ${msg.content.evalue}`;
  };
  await future.done;
  return out;
}"""

NOTEBOOK_IDLE = """(name) => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.context && w.context.path.endsWith(name) && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.status === "idle";
}"""


def notebook(*cells: str) -> str:
    """The text of a notebook of these code cells, on the python3 kernel (for ``jupyterlab({name: ...})``)."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    return nbformat.writes(nb)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(notebooks: dict[str, str] | None = None):
    """Start JupyterLab over a temporary copy of ``notebooks/`` (plus ``notebooks``: name -> JSON text).

    A copy, because Lab autosaves open notebooks and must not write outputs into the repository.
    """
    root = Path(tempfile.mkdtemp(prefix="nbinspect-lab-"))
    for nb in NOTEBOOKS.glob("*.ipynb"):
        shutil.copy(nb, root / nb.name)
    for name, text in (notebooks or {}).items():
        (root / name).write_text(text)
    # Lab's "get notified about news?" toast would cover part of every screenshot: say no up front.
    settings = root / ".lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port = free_port()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        JUPYTER_CONFIG_DIR=str(root / ".jupyter-config"),
        JUPYTERLAB_SETTINGS_DIR=str(root / ".lab-settings"),
    )
    jupyter = Path(sys.executable).parent / "jupyter"
    cmd = [
        str(jupyter), "lab", "--allow-root", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.token=", "--ServerApp.password=",
        "--ServerApp.disable_check_xsrf=True", "--LabApp.expose_app_in_browser=True", f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(root / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.3)
        yield url, root
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_notebook(browser, url: str, name: str, timeout_ms: int = 90_000):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/lab/tree/{name}?reset")
    page.wait_for_function(NOTEBOOK_IDLE, arg=name, timeout=timeout_ms)
    return page


def run_all(page) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def wait_idle_after_run(page, timeout_ms: int = 120_000) -> None:
    """Wait until every code cell has run and the kernel is idle; raise with the first cell error."""
    state = page.wait_for_function(
        """() => {
          const w = window.jupyterapp.shell.currentWidget;
          const cells = w.content.model.cells;
          for (let i = 0; i < cells.length; i++) {
            const c = cells.get(i);
            if (c.type !== "code") continue;
            for (const o of c.toJSON().outputs || []) if (o.output_type === "error") return `cell ${i}: ${o.ename}: ${o.evalue}`;
            if (!c.executionCount) return false;
          }
          return w.sessionContext.session.kernel.status === "idle" ? "ok" : false;
        }""",
        timeout=timeout_ms,
    ).json_value()
    if state != "ok":
        raise AssertionError(f"the notebook failed: {state}")


def kernel(page, code: str) -> str:
    return page.evaluate(KERNEL_EXEC, code)


#: For ``locator.evaluate``: the fraction of a canvas's pixels that are neither transparent nor near-white.
INK = """(c) => {
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i] + d[i + 1] + d[i + 2] < 700) ink++;
  return ink / (d.length / 4);
}"""


def canvas_ink(page, selector: str) -> float:
    """Fraction of a canvas's pixels that are neither transparent nor near-white (it drew something)."""
    return page.evaluate(
        f"(sel) => {{ const c = document.querySelector(sel); return c && c.width ? ({INK})(c) : 0; }}", selector
    )


def js_wait(page, condition: str, timeout: int = 30_000) -> None:
    """Wait until the JS expression ``condition`` is true (an expression that throws counts as not yet)."""
    page.wait_for_function(f"() => {{ try {{ return {condition}; }} catch (e) {{ return false; }} }}", timeout=timeout)


def py(page, code: str) -> str:
    """Run ``code`` in the notebook's kernel; its printed output, which must hold no error."""
    out = kernel(page, code)
    assert "ERROR" not in out, out
    return out.strip()


def altair_params_error(error: str) -> bool:
    """altair's own JupyterChart handler ('change:_params' in altair/jupyter/js/index.js) reads
    ``new_params.changed._params``, undefined when Python moves the chart's params through the widget
    manager's set_state: a console error in JupyterLab and Notebook 7 alike, the chart keeps working."""
    return "Cannot convert undefined or null to object" in error and "Object.entries" in error and "set_state" in error
