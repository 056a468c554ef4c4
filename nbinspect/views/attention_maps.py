"""Attention maps of one run, reduced and quantized on the model's device, ready to encode on demand.

For every layer we keep the thumbnails of all heads (block-max pooled to ``THUMBNAIL_CELLS``) and, while
the budget ``PATTERN_CACHE_MAX_BYTES`` allows, every head's full map as uint8. Past the budget only the
focused layer's full maps are kept; another layer's are recomputed by a forward pass that captures that
one layer. Nothing crosses to the host until a view asks for bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import codecs
from ..adapters import Adapter
from ..capture import Request, capture
from ..perturb import model_lock


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
    tq, ts = codecs.quantize(thumb)
    codecs.check_finite(ts, f"the attention of layer {layer}")  # a head's max is NaN if any weight is
    fq = fs = None
    f_block = 1
    if keep_full:
        full, f_block = codecs.pool_max(w, codecs.FOCUS_MAX_CELLS)
        fq, fs = codecs.quantize(full)
    return LayerMaps(tq, ts, t_block, fq, fs, f_block)


class AttentionMaps:
    """All layers' maps for one input, and the means to recompute a layer's full maps."""

    def __init__(self, adapter: Adapter, inputs: dict[str, torch.Tensor], focus_layer: int = 0):
        self.adapter = adapter
        self.inputs = inputs
        self.n_tokens = int(inputs["input_ids"].shape[-1])
        n_layers, n_heads = adapter.n_layers, adapter.n_heads
        side = min(self.n_tokens, codecs.FOCUS_MAX_CELLS)
        self.keep_all = n_layers * n_heads * side * side <= codecs.PATTERN_CACHE_MAX_BYTES
        self.layers: dict[int, LayerMaps] = {}
        self._run(range(n_layers), focus_layer)

    def _run(self, layers, focus_layer: int) -> None:
        def reduce(layer, weights):
            return reduce_layer(weights, self.keep_all or layer == focus_layer, layer)

        model = self.adapter.model
        # The lock: never run while the perturbation worker has weights edited in place.
        with model_lock(model), torch.no_grad(), capture(model, attention=Request(layers=list(layers), reduce=reduce)) as rec:
            model(**self.inputs)
        self.layers.update(rec.attention)

    def update(self, attention: dict[int, torch.Tensor], focus_layer: int) -> None:
        """Replace some layers' maps with new float32 weights (e.g. after a perturbation)."""
        for layer, weights in attention.items():
            self.layers[layer] = reduce_layer(weights, self.keep_all or layer == focus_layer, layer)

    def full(self, layer: int) -> LayerMaps:
        maps = self.layers[layer]
        if maps.full is None:
            if not self.keep_all:  # keep one layer's full maps at a time past the budget
                for other in self.layers.values():
                    other.full = other.full_scales = None
            self._run([layer], focus_layer=layer)
            maps = self.layers[layer]
        return maps

    def thumbnails(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """uint8 [layers, heads, c, c], float32 scales [layers, heads], tokens per cell."""
        order = range(self.adapter.n_layers)
        thumbs = torch.stack([self.layers[i].thumbnails.to("cpu") for i in order])
        scales = torch.stack([self.layers[i].thumbnail_scales.to("cpu") for i in order])
        return thumbs, scales, self.layers[0].thumbnail_block
