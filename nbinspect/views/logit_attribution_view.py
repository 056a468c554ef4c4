"""LogitAttributionView: which heads and MLPs wrote the target logit (direct logit attribution).

A layers × heads heatmap (red: pushes the target up, blue: down) with an MLP column and an embeddings
cell, for the target token (or target − foil) at the target position, computed by
:func:`nbinspect.residual_stream.direct_logit_attribution` with the final norm's scale frozen at its value
on this input. The title states the sum: contributions + remainder (norm and unembedding biases,
attention output biases) = the model's logit. Clicking a head selects its layer and head in the shared
Selection (the attention view focuses it); clicking an MLP cell selects its layer.

A switchable overlay marks each head's type (previous-token, induction, duplicate-token, first-token
"sink"; :func:`nbinspect.residual_stream.head_types`): measured only when first switched on, on a
repeated random sequence of the same model (one forward of ~50 tokens).

Bytes: float32 [layers, heads] + [layers] (SmolLM2: 1.2 KB), and uint8 [layers, heads] badges with
float32 [4, layers, heads] scores when the overlay is on.
"""

from __future__ import annotations

import torch
import traitlets

from .. import codecs
from .. import residual_stream as rs
from ._bundle import bundle
from ._trace_view import TraceView
from .base import as_trace


class LogitAttributionView(TraceView):
    """Direct logit attribution of the target at one position, per head, per MLP and for the embeddings."""

    title = "Direct logit attribution"
    _esm = bundle("logit_attribution_view")

    #: Mirrored from the selection both ways, like ``layer`` and ``token``.
    head = traitlets.Int(0)
    #: float32 [layers, heads] and float32 [layers]: each head's and each MLP's contribution to the logit.
    heads = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    mlp = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    embeddings = traitlets.Float(0.0).tag(sync=True)
    remainder = traitlets.Float(0.0).tag(sync=True)
    #: The model's logit (or logit difference) that the parts sum to, and the frozen norm scale.
    logit = traitlets.Float(0.0).tag(sync=True)
    norm_scale = traitlets.Float(0.0).tag(sync=True)
    shown_target = traitlets.Int(-1).tag(sync=True)
    #: Head-type overlay: switched on by the browser or Python; uint8 [layers, heads] badge per head
    #: (0 none, 1 + index in ``head_type_names``), float32 [4, layers, heads] scores.
    show_head_types = traitlets.Bool(False).tag(sync=True)
    head_types = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    head_type_scores = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    head_type_names = traitlets.List(traitlets.Unicode(), default_value=list(rs.HEAD_TYPES)).tag(sync=True)
    badge_threshold = traitlets.Float(rs.BADGE_THRESHOLD).tag(sync=True)

    def __init__(self, trace, selection=None, *, head_types: rs.HeadTypes | None = None, **kwargs):
        self._attribution: rs.LogitAttribution | None = None
        self._head_types = head_types
        super().__init__(trace, selection, **kwargs)
        self._link(("head",))
        self.observe(self._overlay, ["show_head_types", "badge_threshold"])
        self._paint()
        if head_types is not None:
            self.show_head_types = True

    @classmethod
    def applies(cls, trace) -> str | None:
        reason = rs.not_applicable(trace.adapter)
        return None if reason is None else reason[0].upper() + reason[1:]

    @traitlets.validate("head")
    def _valid_head(self, proposal):
        try:
            return self._adapter.check_head(proposal["value"])
        except IndexError as e:
            raise traitlets.TraitError(str(e)) from None

    def attribution(self) -> rs.LogitAttribution:
        """The attribution as shown (host tensors): ``.heads``, ``.mlp``, ``.embeddings``, ``.remainder``, ``.top()``."""
        key = (self.target, self.foil, self.position)
        if self._attribution is None or self._key != key:
            def compute():
                return rs.direct_logit_attribution(self.trace, target=self.target, foil=self.foil, position=self.position)

            cached = getattr(self.trace, "cached", None)
            self._attribution = cached(("logit_attribution", *key), compute) if cached else compute()
            self._key = key
        return self._attribution

    def show(self, trace) -> None:
        self._attribution = None
        super().show(trace)
        if self.show_head_types and getattr(trace, "edits", ()) != getattr(self._types_of, "edits", ()):
            self._head_types = None  # the edited model has other heads
            self._send_head_types()

    def _paint(self) -> None:
        a = self.attribution()
        with self.hold_sync():
            self.heads = codecs.float32_bytes(a.heads)
            self.mlp = codecs.float32_bytes(a.mlp)
            self.embeddings = a.embeddings
            self.remainder = a.remainder
            self.logit = a.logit
            self.norm_scale = a.scale
            self.shown_target = a.target
            self.target_label = self._label(a.target, a.foil)

    # --- head types ------------------------------------------------------------------------------
    _types_of = None

    def _overlay(self, change) -> None:
        if self.show_head_types:  # switched on, or another threshold while on
            self._send_head_types()

    def types(self) -> rs.HeadTypes:
        """Head-type scores of this model (under the trace's edits), measured once per model when first
        asked for and shared with the attention view's badges (:func:`residual_stream.head_types_of`)."""
        if self._head_types is None:
            self._head_types = rs.head_types_of(self.trace)
            self._types_of = self.trace
        return self._head_types

    def _send_head_types(self) -> None:
        t = self.types()
        with self.hold_sync():
            self.head_type_scores = codecs.float32_bytes(torch.stack([t.scores[k] for k in rs.HEAD_TYPES]))
            self.head_types = codecs.to_bytes(t.badges(self.badge_threshold))

    def payload_bytes(self) -> int:
        names = ("heads", "mlp", "head_types", "head_type_scores")
        return sum(len(getattr(self, n)) for n in names) + sum(len(t.encode()) + 3 for t in self.tokens)


def logit_attribution(model_or_trace, tokenizer=None, text: str | None = None, *, target=None, foil=None,
                      selection=None, head_types: rs.HeadTypes | None = None, **trace_kwargs) -> LogitAttributionView:
    """Show which heads and MLPs wrote the target logit, for a text (``model, tokenizer, text``) or a Trace.

    ``target`` / ``foil``: token ids or one-token strings (``" Paris"``; default: the trace's target, else
    the predicted token); with a foil the view explains ``logit(target) − logit(foil)``. Pass
    ``head_types`` (from :func:`nbinspect.head_types`) to show the overlay at once.
    """
    trace = as_trace(model_or_trace, tokenizer, text, **trace_kwargs)
    view = LogitAttributionView(trace, selection=selection, head_types=head_types)
    if target is not None or foil is not None:
        with view.hold_trait_notifications():
            if target is not None:
                view.target = target
            if foil is not None:
                view.foil = foil
    return view
