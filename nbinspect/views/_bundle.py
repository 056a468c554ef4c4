"""Where each view's JS bundle lives (built by esbuild from ``js/``; a wheel artifact, never committed)."""

from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "static"


def bundle(name: str) -> Path | str:
    """The bundle's path, or — when it was never built — a stand-in view that says how to build it,
    so ``import nbinspect`` works for scripting (capture, perturb) without the JS."""
    path = STATIC / f"{name}.js"
    if path.exists():
        return path
    message = f"nbinspect: the JS bundle {name}.js is missing from {STATIC}; build it with `make js`."
    return "export default { render({ el }) { el.textContent = %r; } };\n" % message
