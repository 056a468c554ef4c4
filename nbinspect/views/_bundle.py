"""Where each view's JS bundle lives (built by esbuild from ``js/``; a wheel artifact, never committed)."""

from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "static"


def bundle(name: str) -> Path:
    path = STATIC / f"{name}.js"
    if not path.exists():
        raise FileNotFoundError(
            f"the JS bundle {path.name} is missing from {STATIC}; build it with `make js` "
            "(or reinstall nbinspect from a wheel, which carries it)."
        )
    return path
