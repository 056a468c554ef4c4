"""Ready-made ``reduce`` functions: shrink a captured tensor on its device the moment it exists.

A capture calls ``reduce(layer, value)`` inside the forward and keeps only what it returns, so the full
tensor is freed before the next layer runs. That is what makes long inputs affordable: at 2048 tokens one
SmolLM2 layer's attention is 151 MB in float32, all 30 layers 4.5 GB, but a :func:`head_summary` of a
layer is 0.2 MB.

    >>> nbinspect.capture(model, attention=Request(reduce=by_layer(head_summary, {5: None})))

keeps per-head summaries of every layer and the full pattern of layer 5 only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from .capture import HeadOutputs, Reduce


class HeadSummary(NamedTuple):
    """Per head and query position, ``[batch, heads, query]`` each.

    entropy: of the attention distribution, in nats (0 = looks at one token; log(k) = spread evenly).
    max_weight: the largest attention weight. argmax: the key position receiving it.
    """

    entropy: torch.Tensor
    max_weight: torch.Tensor
    argmax: torch.Tensor


class TopK(NamedTuple):
    """The ``k`` largest values along the last dimension and their indices (e.g. neuron numbers)."""

    values: torch.Tensor
    indices: torch.Tensor


def head_summary(layer: int, weights: torch.Tensor) -> HeadSummary:
    """Summaries of an attention pattern ``[batch, heads, query, key]`` that views can show for every layer."""
    entropy = torch.special.entr(weights).sum(dim=-1)  # entr(0) = 0, so masked keys add nothing
    max_weight, argmax = weights.max(dim=-1)
    return HeadSummary(entropy, max_weight, argmax)


def top_k(k: int) -> Reduce:
    """A reduce keeping the ``k`` largest activations per position, e.g. ``neurons=Request(reduce=top_k(20))``."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k needs a positive whole number of values to keep, got {k!r}.")

    def reduce(layer: int, value: torch.Tensor) -> TopK:
        values, indices = torch.topk(value, min(k, value.shape[-1]), dim=-1)
        return TopK(values, indices)

    return reduce


def as_dtype(dtype: torch.dtype) -> Reduce:
    """A reduce storing a copy in ``dtype`` (e.g. ``torch.float16`` halves a full attention capture)."""

    def reduce(layer: int, value: Any) -> Any:
        if isinstance(value, HeadOutputs):
            return HeadOutputs(value.z.to(dtype), value.weight, value.bias, value.n_heads)
        return value.to(dtype)

    return reduce


def head_write_norms(layer: int, heads: HeadOutputs) -> torch.Tensor:
    """How much each head writes into the residual stream: the norm of its write, ``[batch, position, heads]``."""
    return heads.writes().norm(dim=-1)


def by_layer(default: Reduce | None, overrides: Mapping[int, Reduce | None]) -> Reduce:
    """A reduce applying ``overrides[layer]`` where given (``None`` keeps the full tensor) and ``default`` elsewhere.

    Layer numbers must be non-negative, as the capture reports them.
    """
    if any(not isinstance(i, int) or i < 0 for i in overrides):
        raise ValueError(f"by_layer needs non-negative layer numbers as keys, got {sorted(overrides, key=str)}.")
    keep: Callable = lambda layer, value: value  # noqa: E731

    def reduce(layer: int, value: Any) -> Any:
        fn = overrides[layer] if layer in overrides else default
        return (fn or keep)(layer, value)

    return reduce
