"""What the residual-stream views share: built from a Trace, linked through a Selection, pointed at a target.

The views read one Trace (``trace.record`` with every layer's residual stream, head outputs, attention and
MLP outputs, and ``trace.target``), never run the model, and repaint for a new trace with ``show(trace)``.
The target (which next token the lens and the attribution explain) can be changed from the browser (a
click in a top-k list sets ``target_token``) or from Python (``view.target = " Paris"`` or an id,
``view.foil = " Rome"``); a dashboard observes ``target_token`` / ``foil_token`` to retarget the others.
"""

from __future__ import annotations

import traitlets

from .. import codecs
from ..targets import token_id
from .base import View
from .selection import Selection


class TraceView(View):
    """A view of one Trace with a target (and optional foil) token at one position."""

    n_heads = traitlets.Int(0).tag(sync=True)
    #: The token whose logit/probability is explained (-1: the model's prediction), set by clicks too.
    target_token = traitlets.Int(-1).tag(sync=True)
    #: Contrast token (-1: none): the attribution explains logit(target) − logit(foil).
    foil_token = traitlets.Int(-1).tag(sync=True)
    #: Words for the title ("' Paris'" or "' Paris' − ' Rome'").
    target_label = traitlets.Unicode("").tag(sync=True)
    #: The position whose next token is the target (the trace's target position, default the last token).
    position = traitlets.Int(-1).tag(sync=True)

    def __init__(self, trace, selection: Selection | None = None, **kwargs):
        target = getattr(trace, "target", None)
        position = getattr(target, "position", None)
        token, foil = getattr(target, "token", None), getattr(target, "foil", None)
        super().__init__(
            trace,
            selection,
            n_heads=trace.adapter.n_heads,
            position=trace.n_tokens - 1 if position is None else int(position),
            target_token=-1 if token is None else int(token),
            foil_token=-1 if foil is None else int(foil),
            **kwargs,
        )
        self._link(("layer", "token"))
        self.observe(self._retargeted, ["target_token", "foil_token"])

    # --- the target, from Python ---------------------------------------------------------------
    @property
    def target(self) -> int | None:
        return None if self.target_token < 0 else self.target_token

    @target.setter
    def target(self, value) -> None:
        self.target_token = -1 if value is None else self._token(value, "target")

    @property
    def foil(self) -> int | None:
        return None if self.foil_token < 0 else self.foil_token

    @foil.setter
    def foil(self, value) -> None:
        self.foil_token = -1 if value is None else self._token(value, "foil")

    def _token(self, value, what: str) -> int:
        return token_id(getattr(self.trace, "tokenizer", None), value, self._vocab(), what)

    def _vocab(self) -> int:
        return int(self._adapter.unembedding().weight.shape[0])

    def _decode(self, ids: list[int]) -> list[str]:
        decode = getattr(self.trace, "decode", None)
        if decode is not None:
            return list(decode(ids))
        tokenizer = getattr(self.trace, "tokenizer", None)
        return [tokenizer.decode([i]) for i in ids] if tokenizer is not None else [f"#{i}" for i in ids]

    def _label(self, target: int | None, foil: int | None) -> str:
        if target is None:
            return "the predicted token"
        t = repr(codecs.clip_tokens(self._decode([target]))[0])
        return t if foil is None else f"{t} − {codecs.clip_tokens(self._decode([foil]))[0]!r}"

    def _retargeted(self, change) -> None:
        if not getattr(self, "_showing", False):
            self._paint()

    def _paint(self) -> None:  # pragma: no cover - each view sends its own bytes
        raise NotImplementedError

    def show(self, trace) -> None:
        """Repaint for a new trace of the same text (after an edit, or a new target)."""
        if trace.adapter.n_layers != self._adapter.n_layers or trace.n_tokens != len(self.tokens):
            raise ValueError("show() takes a trace of the same model and text as the view's.")
        super().show(trace)
        target = getattr(trace, "target", None)
        token, foil = getattr(target, "token", None), getattr(target, "foil", None)
        self._showing = True
        try:
            with self.hold_trait_notifications():
                if getattr(target, "position", None) is not None:
                    self.position = int(target.position)
                self.target_token = -1 if token is None else int(token)
                self.foil_token = -1 if foil is None else int(foil)
        finally:
            self._showing = False
        self._paint()
