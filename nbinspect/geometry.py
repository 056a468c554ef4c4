"""Hidden-state geometry: the tokens of a text at each layer, projected to two dimensions.

Every layer's residual stream (``trace.record.residual[layer].after``, ``[1, n, d]``) becomes a cloud of
``n`` points (several texts: their tokens together, each with its text's label). Moving through the
layers must not make the cloud jump around for reasons that are not in the data, so the projection is
*stable*:

- **PCA** (``torch.pca_lowrank``, on the model's device) is fitted once on the tokens of all layers
  together, each token first scaled to unit length (its direction: one token's massive activation would
  otherwise be the first axis) and each layer centred and scaled to unit RMS (the residual's norm grows by
  orders of magnitude through the layers, and the last layers would otherwise set the axes alone); every
  layer is then projected on the same two axes. Axis signs are fixed (largest loading positive) so refits agree.
- **t-SNE** (openTSNE) and **UMAP** (umap-learn) have no shared axes: each layer is fitted on its own,
  t-SNE starting from the previous layer's layout, and then aligned to the previous layer's layout by
  orthogonal Procrustes (rotation, reflection and uniform scale; no shape change).

:func:`nearest_tokens` answers "which vocabulary entries does this token's input embedding sit next
to?" by cosine similarity over the embedding matrix, on its device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

METHODS = ("pca", "tsne", "umap")
#: Below this many points t-SNE/UMAP have no neighbourhoods to preserve (perplexity needs 3x points).
MIN_POINTS_NONLINEAR = 8


@dataclass
class Projection:
    """Two-dimensional coordinates of the same points at every layer.

    coords: float32 ``[layers, points, 2]`` (numpy), aligned between layers as the module docs say.
    method: "pca", "tsne" or "umap".
    explained: PCA only: share of the (standardised, all-layer) variance each axis explains.
    """

    coords: np.ndarray
    method: str
    explained: tuple[float, float] | None = None


def _sign_fixed(components: torch.Tensor) -> torch.Tensor:
    """Flip each component (a column) so that its largest-magnitude loading is positive."""
    idx = components.abs().argmax(dim=0)
    signs = torch.sign(components[idx, torch.arange(components.shape[1], device=components.device)])
    signs[signs == 0] = 1
    return components * signs


def pca(x: torch.Tensor, k: int = 2, *, mean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of rows ``x`` [m, d] on ``x``'s device: ``(scores [m, k], components [d, k], explained [k])``.

    ``torch.pca_lowrank`` with oversampling and power iterations; signs fixed as in :func:`_sign_fixed`.
    """
    x = x.float()
    m, d = x.shape
    if m < 2:
        raise ValueError(f"PCA needs at least two points, got {m}.")
    mean = x.mean(0, keepdim=True) if mean is None else mean
    centred = x - mean
    # Oversampling and power iterations make the leading components exact to float precision even
    # when the next eigenvalues are close (a randomized SVD with q = k would not be).
    q = min(k + 10, m, d)
    # pca_lowrank draws a random projection: a fixed seed (on a forked RNG, leaving the user's alone)
    # makes the same points give the same picture every time.
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(0)
        _, s, v = torch.pca_lowrank(centred, q=q, center=False, niter=10)
    components = _sign_fixed(v[:, :k])
    total = centred.pow(2).sum().clamp_min(1e-30)
    explained = s[:k].pow(2) / total
    return centred @ components, components, explained


def standardise(h: torch.Tensor) -> torch.Tensor:
    """One layer's points [n, d] as directions (each scaled to unit length), centred, and scaled to unit
    root-mean-square norm. Directions first: Llama-style models give the first token a residual hundreds of
    times longer than the others' ("massive activations"), which would otherwise be the whole first axis."""
    h = torch.nn.functional.normalize(h.float(), dim=-1)
    h = h - h.mean(0, keepdim=True)
    return h / h.pow(2).sum(-1).mean().sqrt().clamp_min(1e-12)


def procrustes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``source`` [m, 2] rotated/reflected, scaled and shifted to best match ``target`` [m, 2]."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = source - mu_s, target - mu_t
    norm_a = np.sqrt((a ** 2).sum())
    if norm_a == 0:
        return np.broadcast_to(mu_t, source.shape).copy()
    u, s, vt = np.linalg.svd(a.T @ b)
    r = u @ vt
    scale = s.sum() / norm_a ** 2
    return (a @ r * scale + mu_t).astype(np.float32)


def project_layers(hidden: list[torch.Tensor], method: str = "pca", *, seed: int = 0) -> Projection:
    """Project the same points at every layer: ``hidden[layer]`` is ``[points, d]`` (any device)."""
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}; choose one of {', '.join(METHODS)}.")
    if not hidden:
        raise ValueError("no layers to project.")
    m = hidden[0].shape[0]
    if method == "pca":
        stacked = torch.cat([standardise(h) for h in hidden])
        scores, _, explained = pca(stacked, 2, mean=torch.zeros(1, stacked.shape[1], device=stacked.device))
        coords = scores.reshape(len(hidden), m, 2).cpu().numpy().astype(np.float32)
        return Projection(coords, "pca", (float(explained[0]), float(explained[1])))
    if m < MIN_POINTS_NONLINEAR:
        raise ValueError(f"{method} needs at least {MIN_POINTS_NONLINEAR} points (tokens); this text has {m}. Use method='pca'.")
    layers: list[np.ndarray] = []
    previous = None
    for h in hidden:
        x = standardise(h).cpu().numpy().astype(np.float64)
        y = _tsne(x, previous, seed) if method == "tsne" else _umap(x, previous, seed)
        if previous is not None:
            y = procrustes(y, previous)
        layers.append(y.astype(np.float32))
        previous = layers[-1]
    return Projection(np.stack(layers), method)


def _tsne(x: np.ndarray, init: np.ndarray | None, seed: int) -> np.ndarray:
    try:
        from openTSNE import TSNE
    except ImportError:
        raise ImportError("t-SNE needs openTSNE: pip install 'nbinspect[geometry]'.") from None
    perplexity = max(2.0, min(30.0, (len(x) - 1) / 3.0))
    if init is None:
        return np.asarray(TSNE(perplexity=perplexity, initialization="pca", random_state=seed, n_jobs=1).fit(x))
    # From the previous layer's layout (rescaled as openTSNE expects) and without the early exaggeration
    # phase, which would first scatter the layout it was given.
    init = (init - init.mean(0)) / (init[:, 0].std() + 1e-12) * 1e-4
    return np.asarray(TSNE(perplexity=perplexity, initialization=init, random_state=seed, n_jobs=1,
                           early_exaggeration_iter=0).fit(x))


def _umap(x: np.ndarray, init: np.ndarray | None, seed: int) -> np.ndarray:
    try:
        import umap
    except ImportError:
        raise ImportError("UMAP needs umap-learn: pip install 'nbinspect[geometry]'.") from None
    neighbours = max(2, min(15, len(x) - 1))
    if init is None:
        init = "random" if len(x) < 16 else "spectral"
    else:  # start from the previous layer's layout, at the spread UMAP's own initialisation has
        init = (init - init.mean(0)) / (np.abs(init).max() + 1e-12) * 10.0
    return umap.UMAP(n_neighbors=neighbours, random_state=seed, init=init, n_jobs=1).fit_transform(x)


def nearest_tokens(embedding: torch.Tensor, token: int, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` vocabulary entries whose input embedding is closest to ``token``'s by cosine, itself
    excluded: ``(ids int64 [k], similarities float32 [k])``, on the embedding's device."""
    w = embedding.detach()
    vocab = w.shape[0]
    if not 0 <= int(token) < vocab:
        raise IndexError(f"token id {token} is out of range: the vocabulary has ids 0..{vocab - 1}.")
    unit = torch.nn.functional.normalize(w.float(), dim=-1)
    sims = unit @ unit[int(token)]
    sims[int(token)] = -float("inf")
    top = torch.topk(sims, min(k, vocab - 1))
    return top.indices, top.values


def residual_layers(record, row: int = 0) -> list[torch.Tensor]:
    """Each layer's residual after the block, ``[n, d]`` (batch row ``row``), from a capture Record."""
    return [record.residual[i].after[row] for i in sorted(record.residual)]




def geometry(model, tokenizer, texts, *, labels: list[str] | None = None, method: str = "pca",
             color_by: str | None = None, selection=None, parts=None):
    """A :class:`~nbinspect.views.geometry_view.GeometryView` of one text (a str) or several (a list, the
    first is the main text whose tokens clicks select), each traced once without gradients."""
    from .trace import trace
    from .views.geometry_view import GeometryView

    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("give at least one text to project.")
    traces = [trace(model, tokenizer, t, gradients=False, parts=parts) for t in texts]
    if color_by is None:
        color_by = "label" if len(texts) > 1 else "position"
    return GeometryView(traces[0], selection, method=method, color_by=color_by, others=traces[1:], labels=labels)


__all__ = ["METHODS", "Projection", "geometry", "nearest_tokens", "pca", "procrustes", "project_layers", "residual_layers", "standardise"]
