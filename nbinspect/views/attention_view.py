"""AttentionView: every layer × head as thumbnails, plus one focused head as a token × token heatmap.

The trace keeps the maps (on the model's device, see :mod:`nbinspect.attention_maps`); the view sends
bytes only for what is on screen: all thumbnails once, and the focused head's map whenever the focus moves.
The focus (``layer``, ``head``) and the hovered ``token`` are two-way traits.

A switch (``show_head_types``, a checkbox in the browser) overlays a badge on each head's thumbnail:
previous-token, induction, duplicate-token or first-token ("sink") head
(:func:`nbinspect.residual_stream.head_types`). They are measured on a repeated random sequence, not on
the shown text, only when first switched on, once per model (shared with the attribution view through
:func:`nbinspect.residual_stream.head_types_of`); bytes: uint8 [layers, heads] badges and float32
[4, layers, heads] scores.
"""

from __future__ import annotations

import torch
import traitlets

from .. import codecs
from .. import residual_stream as rs
from ..adapters import ModelParts
from ..trace import Trace
from ._bundle import bundle
from .base import View, as_trace
from .selection import Selection


class AttentionView(View):
    _esm = bundle("attention_view")
    title = "Attention"

    n_heads = traitlets.Int(0).tag(sync=True)
    #: Focused head (with ``layer``, the focused map; ``token``: the token under the pointer, -1 none),
    #: mirrored from ``selection`` both ways: clicks, arrow keys and hovers in the browser set them.
    head = traitlets.Int(0)
    #: uint8 [layers, heads, c, c] thumbnails and their float32 [layers, heads] scales.
    thumbnails = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    thumbnail_scales = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    thumbnail_cells = traitlets.Int(0).tag(sync=True)
    thumbnail_block = traitlets.Int(1).tag(sync=True)
    #: uint8 [f, f] map of the focused head, its scale, tokens per cell, and which [layer, head] it is.
    focus = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    focus_scale = traitlets.Float(0.0).tag(sync=True)
    focus_cells = traitlets.Int(0).tag(sync=True)
    focus_block = traitlets.Int(1).tag(sync=True)
    focus_of = traitlets.List(traitlets.Int(), default_value=[-1, -1]).tag(sync=True)
    #: True while the model recomputes (e.g. after a perturbation slider moved).
    busy = traitlets.Bool(False).tag(sync=True)
    #: Head-type badges on the thumbnails: switched on by the browser's checkbox or from Python. uint8
    #: [layers, heads] badge per head (0 none, 1 + index in ``head_type_names``: its strongest type scoring
    #: ≥ ``badge_threshold``), float32 [4, layers, heads] scores; ``head_types_reason``: why there are none.
    show_head_types = traitlets.Bool(False).tag(sync=True)
    head_types = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    head_type_scores = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    head_type_names = traitlets.List(traitlets.Unicode(), default_value=list(rs.HEAD_TYPES)).tag(sync=True)
    badge_threshold = traitlets.Float(rs.BADGE_THRESHOLD).tag(sync=True)
    head_types_reason = traitlets.Unicode("").tag(sync=True)

    def __init__(self, trace: Trace, selection: Selection | None = None, *, layer: int | None = None,
                 head: int | None = None, **kwargs):
        super().__init__(trace, selection, n_heads=trace.adapter.n_heads, **kwargs)
        adapter, selection = trace.adapter, self.selection
        with selection.hold_trait_notifications():
            if layer is not None:
                selection.layer = adapter.check_layer(layer)
            if head is not None:
                selection.head = adapter.check_head(head)
        self._link(("layer", "head", "token"))
        # Follow the selection (not our mirrored traits): it holds the new layer and head together.
        selection.observe(self._focus_moved, ["layer", "head"])
        self._send_thumbnails()
        self._send_focus()
        self.observe(self._overlay, ["show_head_types", "badge_threshold"])
        if self.show_head_types:  # asked for at construction
            self._send_head_types()

    @property
    def _maps(self):
        return self.trace.attention_maps

    def show(self, trace: Trace) -> None:
        """Show another trace of the same text (e.g. after an edit): thumbnails and the focused map."""
        super().show(trace)
        self._send_thumbnails()
        self.focus_of = [-1, -1]
        self._send_focus()
        if self.show_head_types:  # an edited model may have other head types
            self._send_head_types()

    @traitlets.validate("head")
    def _valid_head(self, proposal):
        try:
            return self._adapter.check_head(proposal["value"])
        except IndexError as e:
            raise traitlets.TraitError(str(e)) from None

    def _focus_moved(self, change):
        self._send_focus()

    def _send_thumbnails(self) -> None:
        thumbs, scales, block = self._maps.thumbnails()
        with self.hold_sync():
            self.thumbnail_cells = int(thumbs.shape[-1])
            self.thumbnail_block = block
            self.thumbnail_scales = codecs.float32_bytes(scales)
            self.thumbnails = codecs.to_bytes(thumbs)

    def _send_focus(self) -> None:
        # Read both from the selection: when the browser moves layer and head in one message, the
        # first link update arrives before the second, and we want to send one map, not two.
        layer, head = self.selection.layer, self.selection.head
        if self.focus_of == [layer, head] and self.focus:
            return
        maps = self._maps.full(layer)
        with self.hold_sync():
            self.focus_cells = int(maps.full.shape[-1])
            self.focus_block = maps.full_block
            self.focus_scale = float(maps.full_scales[head])
            self.focus = codecs.to_bytes(maps.full[head])
            self.focus_of = [layer, head]

    # --- head-type badges ----------------------------------------------------------------------
    def _overlay(self, change) -> None:
        if self.show_head_types:
            self._send_head_types()

    def types(self) -> rs.HeadTypes:
        """Head-type scores of this model under the trace's edits (measured once per model, on first use)."""
        return rs.head_types_of(self.trace)

    def _send_head_types(self) -> None:
        try:
            t = self.types()
        except ValueError as e:  # e.g. no vocabulary size to draw the random sequence from
            self.head_types_reason = str(e)
            return
        with self.hold_sync():
            self.head_type_scores = codecs.float32_bytes(torch.stack([t.scores[k] for k in rs.HEAD_TYPES]))
            self.head_types = codecs.to_bytes(t.badges(self.badge_threshold))
            self.head_types_reason = ""

    # --- for Python callers -------------------------------------------------------------------
    def weights(self, layer: int | None = None, head: int | None = None) -> torch.Tensor:
        """The focused (or given) head's map as the browser decodes it: float32 [f, f] on the host."""
        layer = self.layer if layer is None else self._adapter.check_layer(layer)
        head = self.head if head is None else self._adapter.check_head(head)
        maps = self._maps.full(layer)
        return codecs.dequantize(maps.full[head].cpu(), maps.full_scales[head].cpu())

    def payload_bytes(self) -> int:
        """Bytes this view has sent to the browser for its current state (binary traits and token text)."""
        binary = len(self.thumbnails) + len(self.thumbnail_scales) + len(self.focus)
        binary += len(self.head_types) + len(self.head_type_scores)
        return binary + sum(len(t.encode()) + 3 for t in self.tokens)


def attention(
    model,
    tokenizer=None,
    text: str | None = None,
    *,
    layer: int | None = None,
    head: int | None = None,
    selection: Selection | None = None,
    parts: ModelParts | None = None,
) -> AttentionView:
    """Show the attention patterns of ``text`` (or of a :class:`~nbinspect.Trace`: ``attention(trace)``).

    Works on the model's current attention implementation (sdpa included) and leaves it unchanged.
    Raises ``ValueError`` for empty or over-long text and ``TypeError`` for a model nbinspect cannot
    find its way around. Pass ``selection`` to link this view with others.
    """
    return AttentionView(as_trace(model, tokenizer, text, parts=parts), selection, layer=layer, head=head)
