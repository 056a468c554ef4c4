"""What every view of a Trace is: one anywidget class here, one JS module of the same name in ``js/``.

A view reads a :class:`~nbinspect.Trace` (it never runs the model), writes binary traits, and links to
other views through a shared :class:`~nbinspect.Selection`. To add one:

1. subclass :class:`View` in ``nbinspect/views/<name>_view.py`` with ``_esm = bundle("<name>_view")``,
   a ``title``, ``applies`` (when the view makes no sense for a model, the sentence that says why) and
   ``show(trace)`` (send what a new trace changes: the dashboard calls it after every slider edit);
2. write ``js/<name>_view.js`` exporting ``{ render({ model, el }) }``;
3. add one line to :data:`nbinspect.views.registry.VIEWS`. The dashboard lays out the registry; nothing
   else changes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .. import codecs
from ..adapters import ModelParts
from ..export import Exportable
from ..trace import Trace, trace
from .selection import LinkedView, Selection


class View(Exportable, LinkedView):
    """A view of one trace. ``trace`` is the trace shown now; ``show`` moves the view to another.
    ``save`` / ``to_png`` / ``to_svg`` take it out of the notebook (see :mod:`nbinspect.export`)."""

    #: Heading the dashboard puts above the view.
    title: ClassVar[str] = ""
    #: Whether the view needs the trace's backward pass (gradients, attribution).
    needs_gradients: ClassVar[bool] = False

    def __init__(self, trace: Trace, selection: Selection | None = None, **kwargs):
        reason = self.applies(trace)
        if reason is not None:
            raise ValueError(reason)
        self.trace = trace
        self._adapter = adapter = trace.adapter
        selection = (selection or Selection()).bound_to(
            n_tokens=trace.n_tokens, n_layers=adapter.n_layers, n_heads=adapter.n_heads, **self.bounds(trace)
        )
        super().__init__(tokens=codecs.clip_tokens(trace.tokens), n_layers=adapter.n_layers, selection=selection, **kwargs)

    @classmethod
    def applies(cls, trace: Trace) -> str | None:
        """``None`` when the view can show this trace, else one sentence saying why not."""
        return None

    @classmethod
    def bounds(cls, trace: Trace) -> dict[str, int]:
        """Selection sizes this view adds (e.g. ``{"n_neurons": 1536}``)."""
        return {}

    def show(self, trace: Trace) -> None:
        """Show ``trace`` (the same text, e.g. after an edit). Subclasses send what changed."""
        self.trace = trace


def as_trace(model_or_trace, tokenizer=None, text=None, *, gradients: bool = False, parts: ModelParts | None = None,
             **trace_kwargs: Any) -> Trace:
    """The trace a view function was given, or a new one for ``(model, tokenizer, text)``.

    Accepts a :class:`Trace`, anything with a ``trace`` attribute (a Dashboard), or a model with its
    tokenizer and text. A trace without gradients is refused when the view needs them.
    """
    given = model_or_trace if isinstance(model_or_trace, Trace) else getattr(model_or_trace, "trace", None)
    if isinstance(given, Trace):
        if tokenizer is not None or text is not None:
            raise TypeError("pass either a Trace (or Dashboard) or model, tokenizer and text, not both.")
        if gradients and not given.gradients:
            raise ValueError("this view shows gradients, but the trace was made with gradients=False; "
                             "make it with nbinspect.trace(..., gradients=True).")
        return given
    if text is None:
        raise TypeError("give the text to show: view(model, tokenizer, text), or a Trace: view(trace).")
    return trace(model_or_trace, tokenizer, text, gradients=gradients, parts=parts, **trace_kwargs)
