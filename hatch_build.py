"""Builds the JS bundle with esbuild before hatchling packs the wheel, so a wheel always carries it."""

import shutil
import subprocess
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ROOT = Path(__file__).parent
STATIC = ROOT / "nbinspect" / "static"


def bundles_missing() -> bool:
    """True when any view in js/ has no bundle yet (an old static/ folder must not ship a partial set)."""
    return any(not (STATIC / src.name).exists() for src in (ROOT / "js").glob("*_view.js"))


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version, build_data):
        if not bundles_missing():
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("nbinspect's JS bundle is missing and npm is not installed: install Node.js 18+ and retry.")
        js = ROOT / "js"
        if not (js / "node_modules").exists():
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=js, check=True)
        subprocess.run([npm, "run", "build"], cwd=js, check=True)
