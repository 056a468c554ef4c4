"""Attention rollout and attention flow (Abnar & Zuidema, 2020): attention-based token attributions.

Both start from each layer's attention averaged over heads, with the residual connection added and the
rows renormalised: ``Â_l = normalise_rows(0.5 · mean_h A_l + 0.5 · I)``.

- **rollout**: ``Â_L ⋯ Â_1``; row ``p`` says how much of position ``p``'s state at the last layer "comes
  from" each input token, mixing paths multiplicatively. Cheap (a few n × n products).
- **flow**: the graph with a node per (layer, token) and an edge of capacity ``Â_l[i, j]`` from token ``j``
  at layer ``l`` to token ``i`` at layer ``l + 1``; the score of input ``j`` is the maximum flow from it to
  position ``p`` at the top. One max-flow per input token (scipy's Dinic on integer capacities), so it is
  limited to ``FLOW_MAX_TOKENS`` tokens (a clear error beyond).

Unlike gradients or relevance, neither depends on the target token, only on the position explained.
"""

from __future__ import annotations

import numpy as np
import torch

from .adapters import Adapter, ModelParts
from .capture import Request, capture

#: Attention flow solves one max-flow per input token on a graph of (layers + 1) × n nodes and
#: layers × n² edges: at 64 tokens and 30 layers (~60k edges per solve) all 64 solves took 0.9 s on the
#: shared 2-core CPU machine; the cost grows roughly with n³.
FLOW_MAX_TOKENS = 64
#: Capacities are scaled to integers for scipy's max-flow; 1e-6 of a unit is far below what is shown.
_FLOW_SCALE = 1_000_000


def with_residual(means: torch.Tensor) -> torch.Tensor:
    """``[layers, n, n]`` head-averaged attention -> ``0.5·A + 0.5·I`` with rows summing to 1 (float64)."""
    a = means.double()
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    a = 0.5 * a + 0.5 * eye
    return a / a.sum(-1, keepdim=True)


def rollout_matrix(means: torch.Tensor, upto: int | None = None) -> torch.Tensor:
    """Rollout through layers ``0..upto`` (all by default): ``[n, n]``, row p = sources of position p."""
    a = with_residual(means)
    last = a.shape[0] - 1 if upto is None else upto
    out = a[0]
    for layer in range(1, last + 1):
        out = a[layer] @ out
    return out


def flow_scores(means: torch.Tensor, position: int = -1, upto: int | None = None) -> np.ndarray:
    """Attention flow from every input token to ``position`` after layer ``upto``: float32 ``[n]``."""
    try:
        from scipy.sparse import csr_array
        from scipy.sparse.csgraph import maximum_flow
    except ImportError:  # pragma: no cover - scipy comes with the geometry extra
        raise ImportError("attention flow needs scipy: pip install 'nbinspect[geometry]' (or scipy).") from None
    a = with_residual(means).cpu().numpy()
    layers = a.shape[0] if upto is None else upto + 1
    n = a.shape[-1]
    if n > FLOW_MAX_TOKENS:
        raise ValueError(
            f"attention flow solves one max-flow per token and is limited to {FLOW_MAX_TOKENS} tokens; this text has {n}. "
            "Use attention rollout (method='rollout') for longer texts, or shorten the text."
        )
    position %= n
    rows, cols, caps = [], [], []
    for layer in range(layers):
        dst, src = np.nonzero(a[layer] > 0)
        rows.append(layer * n + src)
        cols.append((layer + 1) * n + dst)
        caps.append(np.rint(a[layer][dst, src] * _FLOW_SCALE).astype(np.int32))
    size = (layers + 1) * n
    graph = csr_array((np.concatenate(caps), (np.concatenate(rows), np.concatenate(cols))), shape=(size, size))
    sink = layers * n + position
    scores = np.array([maximum_flow(graph, j, sink, method="dinic").flow_value for j in range(n)], dtype=np.float64)
    return (scores / _FLOW_SCALE).astype(np.float32)


def attention_means(model, inputs, parts: ModelParts | None = None) -> torch.Tensor:
    """Every layer's attention averaged over heads, ``[layers, n, n]`` float32 (one no-grad forward)."""
    from .perturb import model_lock

    adapter = Adapter.of(model, parts)

    def mean_heads(layer, a):
        return a[0].float().mean(0)

    with model_lock(model), torch.no_grad(), capture(model, attention=Request(reduce=mean_heads), logits=False, parts=parts) as rec:
        model(**inputs)
    return torch.stack([rec.attention[i].to(adapter.device_of(0)) for i in range(adapter.n_layers)])


def _trace_means(trace) -> torch.Tensor:
    def compute():
        from .perturb import model_lock, perturb

        # Lock first: the sliders' worker must not edit weights between our edits and our forward.
        with model_lock(trace.model), perturb(trace.model, *tuple(getattr(trace, "edits", ()) or ())):
            return attention_means(trace.model, trace.inputs, getattr(trace.adapter, "parts", None))

    return trace.cached(("attention_means",), compute)


def _means_of(source, tokenizer, text, parts):
    if all(hasattr(source, name) for name in ("model", "inputs", "cached")):
        return _trace_means(source), getattr(getattr(source, "target", None), "position", -1)
    if tokenizer is None:
        raise TypeError("pass a Trace, or a model with its tokenizer and a text.")
    from .inputs import encode

    inputs = encode(tokenizer, text, Adapter.of(source, parts)) if isinstance(text, str) else text
    return attention_means(source, inputs, parts), None


def _check_upto(layer, n_layers):
    if layer is None:
        return None
    if not isinstance(layer, int) or isinstance(layer, bool) or not -n_layers <= layer < n_layers:
        raise IndexError(f"layer {layer!r} is out of range: this model has layers 0..{n_layers - 1}.")
    return layer % n_layers


def rollout(source, tokenizer=None, text=None, *, position: int | None = None, layer: int | None = None,
            parts: ModelParts | None = None) -> np.ndarray:
    """Attention rollout: how much each input token feeds ``position`` (the trace's target position, else
    the last) after ``layer`` (the last by default); float32 ``[n]`` summing to 1."""
    means, trace_position = _means_of(source, tokenizer, text, parts)
    position = (trace_position if trace_position is not None else -1) if position is None else position
    upto = _check_upto(layer, means.shape[0])
    return rollout_matrix(means, upto)[position].float().cpu().numpy()


def flow(source, tokenizer=None, text=None, *, position: int | None = None, layer: int | None = None,
         parts: ModelParts | None = None) -> np.ndarray:
    """Attention flow (max-flow) from each input token to ``position`` after ``layer``; float32 ``[n]``.
    At most ``FLOW_MAX_TOKENS`` tokens."""
    means, trace_position = _means_of(source, tokenizer, text, parts)
    position = (trace_position if trace_position is not None else -1) if position is None else position
    return flow_scores(means, position, _check_upto(layer, means.shape[0]))


__all__ = ["FLOW_MAX_TOKENS", "attention_means", "flow", "flow_scores", "rollout", "rollout_matrix", "with_residual"]
