"""PatchingView: the recovered share of an activation-patching run as heatmaps, linked by the Selection.

A patching run compares two inputs (the clean and the corrupted prompt), so it is not one
:class:`~nbinspect.Trace`: this view reads the :class:`~nbinspect.PatchResult` that
:func:`nbinspect.patch` returned, and never runs the model. It shows, side by side:

- the residual stream, attention output and MLP output as layer × position heatmaps (the residual map
  has one more row: the stream leaving the last layer);
- every head's output as a layer × head heatmap.

Colour is the recovered share, (patched − corrupted) / (clean − corrupted), on one diverging scale for
all four maps (red > 0 > blue; full red at the largest |share|, at least 1). Cells that were not
measured (layers not asked for, a cancelled run) are grey. Clicking a position cell sets the shared
selection's layer and token; a head cell sets layer and head, so a linked attention view shows it.

Bytes only: each map is uint8 with 128 = 0 (``codecs.quantize_signed`` with one shared scale) and
0 = not measured; the clean and corrupted token texts travel as lists of strings.
"""

from __future__ import annotations

import anywidget
import ipywidgets
import torch
import traitlets

from .. import codecs
from ..patching import KINDS, PatchResult
from ._bundle import bundle
from .selection import Selection, link_focus


def encode_map(values: torch.Tensor, scale: float) -> bytes:
    """Signed uint8 bytes of ``values`` on ``scale`` (128 = 0, error ≤ scale / 254), with 0 for NaN (not measured)."""
    finite = torch.isfinite(values)
    q = (torch.round(values.float().nan_to_num(0.0) / scale * 127.0) + 128).clamp_(1, 255).to(torch.uint8)
    q[~finite] = 0
    return codecs.to_bytes(q)


def decode_map(data: bytes, rows: int, cols: int, scale: float) -> torch.Tensor:
    """Inverse of :func:`encode_map` (what the browser computes): float32 ``[rows, cols]``, NaN where 0."""
    q = torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(rows, cols)
    out = codecs.dequantize_signed(q, scale)
    out[q == 0] = float("nan")
    return out


class PatchingView(anywidget.AnyWidget):
    """Recovered share per layer × position (residual, attention, MLP) and per layer × head."""

    _esm = bundle("patching_view")

    #: Clean prompt's token texts (the position axis), and the corrupted prompt's (shown where they differ).
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    corrupted_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    #: Which maps were computed, in the order drawn ("resid", "attn", "mlp", "heads").
    kinds = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: uint8 maps (128 = 0, 0 = not measured): resid [n_layers + 1, n], attn/mlp [n_layers, n], heads [n_layers, n_heads].
    resid = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    attn = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    mlp = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    heads = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: The share a full-colour cell stands for (the largest |share|, at least 1).
    scale = traitlets.Float(1.0).tag(sync=True)
    #: Words for the title: the metric and the two unpatched values.
    metric_label = traitlets.Unicode("").tag(sync=True)
    clean_value = traitlets.Float(0.0).tag(sync=True)
    corrupted_value = traitlets.Float(0.0).tag(sync=True)
    position = traitlets.Int(-1).tag(sync=True)
    complete = traitlets.Bool(True).tag(sync=True)
    #: The shared selection (js/selection.js); clicks set layer and token, or layer and head.
    selection = traitlets.Instance(Selection).tag(sync=True, **ipywidgets.widget_serialization)
    layer = traitlets.Int(0)
    token = traitlets.Int(-1)
    head = traitlets.Int(0)
    #: Counted by the browser on its copy of the model after it paints (tests and saved pages read it there). Not
    #: sent back to Python, where it stays as it was: a message per paint cost the kernel and the page a round
    #: trip on every slider edit.
    painted = traitlets.Int(0).tag(sync=True)

    def __init__(self, result: PatchResult, selection: Selection | None = None, **kwargs):
        if not isinstance(result, PatchResult):
            raise TypeError(f"PatchingView shows what nbinspect.patch(...) returns, got {type(result).__name__}.")
        n = len(result.clean_tokens)
        selection = (selection or Selection()).bound_to(n_tokens=n, n_layers=result.n_layers, n_heads=result.n_heads)
        self.result = result
        shares = {k: result.share(k) for k in result.kinds}
        peak = max((float(s[torch.isfinite(s)].abs().max()) for s in shares.values() if torch.isfinite(s).any()), default=0.0)
        scale = max(1.0, peak)
        maps = {k: encode_map(s, scale) for k, s in shares.items()}
        super().__init__(
            tokens=codecs.clip_tokens(result.clean_tokens),
            corrupted_tokens=codecs.clip_tokens(result.corrupted_tokens),
            n_layers=result.n_layers,
            n_heads=result.n_heads,
            kinds=[k for k in KINDS if k in maps],
            scale=scale,
            metric_label=result.metric_label,
            clean_value=result.clean_value,
            corrupted_value=result.corrupted_value,
            position=result.position,
            complete=result.complete,
            selection=selection,
            **maps,
            **kwargs,
        )
        link_focus(self, selection, ("layer", "token", "head"))

    def shown(self, kind: str) -> torch.Tensor:
        """A map as the browser decodes it: float32 shares, NaN where not measured."""
        rows = self.n_layers + (1 if kind == "resid" else 0)
        cols = self.n_heads if kind == "heads" else len(self.tokens)
        return decode_map(getattr(self, kind), rows, cols, self.scale)


def patching_view(result: PatchResult, selection: Selection | None = None) -> PatchingView:
    """Show a :class:`~nbinspect.PatchResult` (what ``nbinspect.patch`` returns) as linked heatmaps."""
    return PatchingView(result, selection)
