"""The wheel carries the JS bundles, and the bundles import nothing from the network."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_the_js_bundles(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("nbinspect-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    views = sorted(p.stem for p in (ROOT / "js").glob("*_view.js"))
    assert views, "no views in js/"
    for view in views:
        assert f"nbinspect/static/{view}.js" in names, f"{view}.js is missing from {wheel.name}"


def test_views_import_nothing_at_render_time():
    for bundle in (ROOT / "nbinspect" / "static").glob("*.js"):
        text = bundle.read_text()
        # esbuild inlines every import; what is left as `import(` or `from "http` would be fetched.
        assert "from \"http" not in text and "import(\"http" not in text and "import('http" not in text, bundle.name
