"""HeadSweepView: what ablating each head does to the target logit (or loss), as a layers × heads heatmap.

The view reads the :class:`~nbinspect.SweepResult` that :func:`nbinspect.head_sweep` returned and never
runs the model (a sweep costs a fraction of ``n_layers × n_heads`` forwards, too much to run behind a
view's back). Colour is the effect, metric(ablated) − metric(unablated), on a diverging scale (red: the
metric went up, blue: down; full colour at the largest |effect|); grey cells were not measured. The
heads with the largest |effect| are listed beside it. Clicking a cell (or a listed head) sets the shared
selection's layer and head, so a linked attention view shows that head.

Bytes only: the map is uint8 with 128 = 0 and 0 = not measured (see :func:`patching_view.encode_map`).
"""

from __future__ import annotations

import math

import anywidget
import ipywidgets
import torch
import traitlets

from .. import codecs
from ..sweep import SweepResult
from ._bundle import bundle
from .patching_view import decode_map, encode_map
from .selection import Selection, link_focus

#: Heads listed beside the heatmap, largest |effect| first.
TOP_HEADS = 8


class HeadSweepView(anywidget.AnyWidget):
    """Effect of ablating each head, layers × heads, with the strongest heads listed."""

    _esm = bundle("head_sweep_view")

    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    #: uint8 [n_layers, n_heads] effect (128 = 0, 0 = not measured) and the |effect| of a full-colour cell.
    effect = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    scale = traitlets.Float(1.0).tag(sync=True)
    #: int32 [k, 2] (layer, head) of the heads with the largest |effect|, and their float32 [k] effects.
    top = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    top_effects = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    metric_label = traitlets.Unicode("").tag(sync=True)
    ablation = traitlets.Unicode("zero").tag(sync=True)
    base_value = traitlets.Float(0.0).tag(sync=True)
    complete = traitlets.Bool(True).tag(sync=True)
    #: The shared selection (js/selection.js); a click sets layer and head.
    selection = traitlets.Instance(Selection).tag(sync=True, **ipywidgets.widget_serialization)
    layer = traitlets.Int(0)
    head = traitlets.Int(0)
    painted = traitlets.Int(0).tag(sync=True)

    def __init__(self, result: SweepResult, selection: Selection | None = None, **kwargs):
        if not isinstance(result, SweepResult):
            raise TypeError(f"HeadSweepView shows what nbinspect.head_sweep(...) returns, got {type(result).__name__}.")
        selection = (selection or Selection()).bound_to(
            n_tokens=len(result.tokens), n_layers=result.n_layers, n_heads=result.n_heads
        )
        self.result = result
        e = result.effect
        finite = torch.isfinite(e)
        peak = float(e[finite].abs().max()) if finite.any() else 0.0
        scale = peak if peak > 0 else 1.0
        top = [t for t in result.top(TOP_HEADS) if math.isfinite(t[2])]
        super().__init__(
            tokens=codecs.clip_tokens(result.tokens),
            n_layers=result.n_layers,
            n_heads=result.n_heads,
            effect=encode_map(e, scale),
            scale=scale,
            top=codecs.int32_bytes(torch.tensor([[l, h] for l, h, _ in top], dtype=torch.int32).reshape(-1, 2)),
            top_effects=codecs.float32_bytes(torch.tensor([v for _, _, v in top], dtype=torch.float32)),
            metric_label=result.metric_label,
            ablation=result.ablation,
            base_value=result.base_value,
            complete=result.complete,
            selection=selection,
            **kwargs,
        )
        link_focus(self, selection, ("layer", "head"))

    def shown(self) -> torch.Tensor:
        """The map as the browser decodes it: float32 ``[n_layers, n_heads]``, NaN where not measured."""
        return decode_map(self.effect, self.n_layers, self.n_heads, self.scale)


def head_sweep_view(result: SweepResult, selection: Selection | None = None) -> HeadSweepView:
    """Show a :class:`~nbinspect.SweepResult` (what ``nbinspect.head_sweep`` returns) as a heatmap."""
    return HeadSweepView(result, selection)
