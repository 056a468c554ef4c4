"""Attention maps of one Trace, reduced and quantized on the model's device, ready to encode on demand.

For every layer the forward keeps the thumbnails of all heads (block-max pooled to ``THUMBNAIL_CELLS``),
and the full maps (uint8, pooled to ``FOCUS_MAX_CELLS``) of the focused layer only: what the first paint
shows. Pooling a layer's full maps costs as much as its attention arithmetic on a CPU, so another layer's
come when a view asks, from :meth:`~nbinspect.Trace.replay` of that one block (1/L of a forward), and are
kept while the budget ``PATTERN_CACHE_MAX_BYTES`` allows; past it, one layer's at a time. Nothing crosses
to the host until a view asks for bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from . import codecs
from .capture import Request

if TYPE_CHECKING:
    from .trace import Trace


@dataclass
class LayerMaps:
    thumbnails: torch.Tensor  # uint8 [heads, c, c]
    thumbnail_scales: torch.Tensor  # float32 [heads]
    thumbnail_block: int
    full: torch.Tensor | None  # uint8 [heads, f, f], f = min(n, FOCUS_MAX_CELLS)
    full_scales: torch.Tensor | None  # float32 [heads]
    full_block: int


def reduce_layer(weights: torch.Tensor, keep_full: bool, layer: int = -1) -> LayerMaps:
    """Reduce one layer's float32 weights [batch, heads, q, k] (batch 0 is shown)."""
    w = weights[0]
    thumb, t_block = codecs.pool_max(w, codecs.THUMBNAIL_CELLS)
    # Not checked for NaN here: the trace checks its outputs once the forward is done and names the
    # first layer that is not finite, which is where the trouble starts (attention only inherits it).
    tq, ts = codecs.quantize(thumb)
    fq = fs = None
    f_block = 1
    if keep_full:
        full, f_block = codecs.pool_max(w, codecs.FOCUS_MAX_CELLS)
        # Block maxima keep every map's maximum, so the thumbnail's scales are the full map's too: no
        # second pass for them. Unpooled, the full map is the capture's own scratch (made for this call
        # and dropped after it), so it is quantized in place instead of into a new float32 copy.
        fq, fs = codecs.quantize(full, scale=ts, in_place=full is w and weights.dtype == torch.float32)
    return LayerMaps(tq, ts, t_block, fq, fs, f_block)


class MapPooler:
    """A layer's maps built block by block while attention is computed (see `capture.Request.blocks`):
    each block of query rows is pooled into the thumbnails (and the full maps) as it comes, so the layer's
    n x n float32 probabilities never exist at once (150 MB a SmolLM2 layer at 2048 tokens)."""

    def __init__(self, heads: int, q_len: int, k_len: int, device, keep_full: bool):
        side = max(q_len, k_len)
        self.targets = []
        for cells, keep in ((codecs.THUMBNAIL_CELLS, True), (codecs.FOCUS_MAX_CELLS, keep_full)):
            block = max(1, math.ceil(side / cells))
            # Zeros where no block writes: keys a causal query cannot see have probability 0.
            pooled = torch.zeros(heads, math.ceil(q_len / block), math.ceil(k_len / block), device=device) if keep else None
            self.targets.append((pooled, block))

    def add(self, start: int, probs: torch.Tensor) -> None:
        """Pool ``probs`` [heads, rows, visible keys], the rows from query ``start`` on."""
        rows = probs.shape[-2]
        for pooled, block in self.targets:
            if pooled is None:
                continue
            if block == 1:
                pooled[:, start : start + rows, : probs.shape[-1]] = probs
                continue
            keys = codecs.block_max(probs, block, -1)
            # The rows of one pooled cell may come in two blocks: keep a running maximum.
            lead = min(rows, (-start) % block)  # rows finishing a cell an earlier block began
            if lead:
                cell = pooled[:, start // block, : keys.shape[-1]]
                torch.maximum(cell, keys[:, :lead].amax(1), out=cell)
            if lead < rows:
                first = (start + lead) // block
                both = codecs.block_max(keys[:, lead:], block, -2)
                cells = pooled[:, first : first + both.shape[1], : keys.shape[-1]]
                torch.maximum(cells, both, out=cells)

    def maps(self) -> LayerMaps:
        (thumb, t_block), (full, f_block) = self.targets
        tq, ts = codecs.quantize(thumb)
        fq = fs = None
        if full is not None:  # the thumbnails' maxima are the full maps' too; ours to overwrite
            fq, fs = codecs.quantize(full, scale=ts, in_place=True)
        return LayerMaps(tq, ts, t_block, fq, fs, f_block)


class AttentionMaps:
    """All layers' maps for one trace; ``reduce`` is what the trace's capture calls for each layer."""

    def __init__(self, trace: Trace, layers: dict[int, LayerMaps] | None = None):
        self.trace = trace
        adapter = trace.adapter
        self.n_tokens = trace.n_tokens
        side = min(self.n_tokens, codecs.FOCUS_MAX_CELLS)
        self.keep_all = adapter.n_layers * adapter.n_heads * side * side <= codecs.PATTERN_CACHE_MAX_BYTES
        self.focus_layer = 0
        self.layers: dict[int, LayerMaps] = dict(layers or {})

    def reduce(self, layer: int, weights) -> LayerMaps:
        """The layer's maps from its weights [batch, heads, q, k], or from the pooler `blocks` made."""
        if isinstance(weights, MapPooler):
            return weights.maps()
        return reduce_layer(weights, layer == self.focus_layer, layer)

    def blocks(self, layer: int, heads: int, q_len: int, k_len: int, device) -> MapPooler:
        """For `capture.Request.blocks`: the pooler of one layer's maps."""
        return MapPooler(heads, q_len, k_len, device, layer == self.focus_layer)

    def inherit(self, start: int, trace: Trace) -> AttentionMaps:
        """The maps of a trace edited from layer ``start`` on: layers before it are shared."""
        maps = AttentionMaps(trace, {i: m for i, m in self.layers.items() if i < start})
        maps.focus_layer = self.focus_layer
        return maps

    def full(self, layer: int) -> LayerMaps:
        """The layer's maps with the full-resolution ones present (replaying the block if needed)."""
        maps = self.layers[layer]
        if maps.full is None:
            if not self.keep_all:  # one layer's full maps at a time past the budget
                for other in self.layers.values():
                    other.full = other.full_scales = None
            self.focus_layer = layer  # an edit re-runs it with its full maps, as the view shows them
            request = Request(layers=[layer], reduce=lambda i, w: reduce_layer(w, True, i))
            self.layers[layer] = maps = self.trace.replay([layer], requests={"attention": request}).attention[layer]
        return maps

    def thumbnails(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """uint8 [layers, heads, c, c], float32 scales [layers, heads], tokens per cell."""
        order = range(self.trace.adapter.n_layers)
        thumbs = torch.stack([self.layers[i].thumbnails.to("cpu") for i in order])
        scales = torch.stack([self.layers[i].thumbnail_scales.to("cpu") for i in order])
        return thumbs, scales, self.layers[0].thumbnail_block
