"""IPython magics: ``%load_ext nbinspect``, then ``%%nbinspect`` shows the dashboard for a cell's text.

::

    %%nbinspect [model] [--layer L] [--device D]
    The capital of France is Paris. The capital of Italy is

    %nbinspect [-m model] [--layer L] [--device D] The capital of France is

``model`` is anything :func:`nbinspect.load` takes (``smollm2``, ``minilm``, a Hugging Face id or a
local folder); without one the offline default model is used. Each model is loaded once per session
and kept, so the next cell shows at once. The magic returns the :class:`nbinspect.Dashboard`, so
``dash = _`` keeps it. Loading the extension twice is harmless: the magics are registered again.
"""

from __future__ import annotations

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

#: (model name or None, device or None) -> (model, tokenizer), kept for the kernel's lifetime.
_LOADED: dict[tuple[str | None, str | None], tuple] = {}


def loaded(name: str | None = None, device: str | None = None):
    """``nbinspect.load(name, device)``, once per session for each (name, device)."""
    key = (name, device)
    if key not in _LOADED:
        from .loading import load

        _LOADED[key] = load(name, device=device)
    return _LOADED[key]


def dashboard(text: str, model: str | None = None, layer: int | None = None, device: str | None = None):
    """The dashboard the magics show: ``text`` through the (cached) ``model``, focused on ``layer``."""
    from .views.dashboard import inspect

    text = text.strip("\n")
    if not text.strip():
        raise ValueError("%%nbinspect needs some text: write it in the cell body, below the magic line.")
    m, tokenizer = loaded(model, device)
    dash = inspect(m, tokenizer, text)
    if layer is not None:
        dash.selection.layer = layer  # the selection checks the range and says which layers exist
    return dash


@magics_class
class NbinspectMagics(Magics):
    @magic_arguments(name="nbinspect")
    @argument("model", nargs="?", default=None, help="model to load (default: the offline SmolLM2)")
    @argument("--layer", "-l", type=int, default=None, help="layer to focus first")
    @argument("--device", "-d", default=None, help="device for the model (default: CUDA when available)")
    @cell_magic
    def nbinspect(self, line: str, cell: str):
        """Show the nbinspect dashboard (attention, neurons, gradients, sliders) for the cell's text."""
        args = parse_argstring(self.nbinspect, line)
        return dashboard(cell, args.model, args.layer, args.device)

    @magic_arguments(name="nbinspect")
    @argument("--model", "-m", default=None, help="model to load (default: the offline SmolLM2)")
    @argument("--layer", "-l", type=int, default=None, help="layer to focus first")
    @argument("--device", "-d", default=None, help="device for the model (default: CUDA when available)")
    @argument("text", nargs="*", help="the text to inspect")
    @line_magic("nbinspect")
    def nbinspect_line(self, line: str):
        """Show the nbinspect dashboard for the text after the options (``%nbinspect -m minilm Some text``)."""
        args = parse_argstring(self.nbinspect_line, line)
        # parse_argstring splits like a shell; join the words back so quotes are optional.
        text = " ".join(args.text) if args.text else ""
        if not text:
            raise ValueError("%nbinspect needs some text after the options, e.g. `%nbinspect The capital of France is`.")
        return dashboard(text, args.model, args.layer, args.device)


def load_ipython_extension(ipython) -> None:
    """``%load_ext nbinspect``: register ``%nbinspect`` and ``%%nbinspect`` (again, harmlessly, on a reload)."""
    ipython.register_magics(NbinspectMagics)


def unload_ipython_extension(ipython) -> None:
    """Nothing to undo: the magics stay until they are registered again; the model cache is kept."""
