"""Two checkpoints of one architecture compared tensor by tensor: ‖A − B‖ / ‖A‖ for every parameter piece
(fused QKV split as in :mod:`nbinspect.anatomy`), computed on A's device, summed into a layers × kind grid.

Checkpoints of different architectures are refused before anything is computed, with the first difference
named (the class, then the parameter list in order: a missing name or a different shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .adapters import ModelParts
from .anatomy import Inventory, _to_host, inventory


class ArchitectureMismatch(ValueError):
    """The two models do not have the same parameters, so they cannot be compared tensor by tensor."""


def first_difference(a: nn.Module, b: nn.Module) -> str | None:
    """A sentence naming the first way ``b``'s architecture differs from ``a``'s, or None when they match."""
    if type(a) is not type(b):
        return f"model_a is a {type(a).__name__} but model_b is a {type(b).__name__}"
    pa = list(a.named_parameters())
    pb = dict(b.named_parameters())
    names_b = list(pb)
    for i, (name, p) in enumerate(pa):
        q = pb.get(name)
        if q is None:
            other = f" (model_b has {names_b[i]!r} there)" if i < len(names_b) else ""
            return f"model_b has no parameter {name!r}{other}"
        if p.shape != q.shape:
            return f"{name} is {tuple(p.shape)} in model_a but {tuple(q.shape)} in model_b"
    if len(pb) > len(pa):
        extra = next(n for n in names_b if n not in dict(pa))
        return f"model_b has a parameter model_a lacks: {extra!r}"
    return None


@dataclass
class Comparison:
    """Relative change of every piece and its sums by layer and kind.

    ``relative[i]`` = ‖A − B‖ / ‖A‖ of ``inventory.pieces[i]`` (NaN for a tied copy, counted with its
    original); ``grid`` float32 [kinds, layers] = sqrt(Σ‖A − B‖²) / sqrt(Σ‖A‖²) over the pieces of that kind
    in that layer (NaN where there are none); ``outside`` the same for each kind's pieces outside the layers
    (embeddings, final norm, output head).
    """

    inventory: Inventory
    relative: torch.Tensor
    kinds: list[str]
    grid: torch.Tensor
    outside: dict[str, float]
    identical: bool

    def largest(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` pieces that changed most, relatively."""
        r = torch.nan_to_num(self.relative, nan=-1.0)
        top = torch.topk(r, min(k, len(r)))
        return [(self.inventory.pieces[i].name, float(self.relative[i])) for i in top.indices.tolist()]


def compare_weights(model_a: nn.Module, model_b: nn.Module, parts: ModelParts | None = None) -> Comparison:
    """‖A − B‖ / ‖A‖ for every parameter piece; raises :class:`ArchitectureMismatch` naming the first difference."""
    diff = first_difference(model_a, model_b)
    if diff is not None:
        raise ArchitectureMismatch(f"cannot compare these checkpoints: {diff}; compare two checkpoints of one architecture.")
    inv = inventory(model_a, parts)
    rows = []
    with torch.no_grad():
        for piece in inv.pieces:
            if piece.tied_to is not None:
                rows.append(torch.full((2,), float("nan"), dtype=torch.float64))
                continue
            a = piece.tensor(model_a).detach()
            b = piece.tensor(model_b).detach().to(a.device)
            na = torch.linalg.vector_norm(a.float())
            nd = torch.linalg.vector_norm(a.float() - b.float())
            rows.append(torch.stack([nd, na]).double())  # stays on the device: one copy back for all, below
    norms = torch.stack(_to_host(rows)) if rows else torch.zeros(0, 2, dtype=torch.float64)  # [pieces, (‖A−B‖, ‖A‖)]
    relative = (norms[:, 0] / norms[:, 1]).float()
    relative = torch.where(norms[:, 1] == 0, torch.where(norms[:, 0] == 0, 0.0, float("inf")), relative)
    relative[norms[:, 1].isnan()] = float("nan")
    kinds = [k for k in inv.kinds() if any(p.kind == k and p.layer >= 0 for p in inv.pieces)]
    n_layers = inv.adapter.n_layers
    sq = torch.zeros(len(kinds), n_layers, 2, dtype=torch.float64)
    seen = torch.zeros(len(kinds), n_layers, dtype=torch.bool)
    outside: dict[str, list[float]] = {}
    for piece, (nd, na) in zip(inv.pieces, norms.tolist()):
        if piece.tied_to is not None:
            continue
        if piece.layer >= 0:
            k = kinds.index(piece.kind)
            sq[k, piece.layer] += torch.tensor([nd * nd, na * na], dtype=torch.float64)
            seen[k, piece.layer] = True
        else:
            acc = outside.setdefault(piece.kind, [0.0, 0.0])
            acc[0] += nd * nd
            acc[1] += na * na
    grid = (sq[..., 0].sqrt() / sq[..., 1].sqrt()).float()
    grid = torch.where(sq[..., 1] == 0, torch.where(sq[..., 0] == 0, 0.0, float("inf")), grid)
    grid[~seen] = float("nan")
    out = {k: (v[0] ** 0.5 / v[1] ** 0.5 if v[1] > 0 else (0.0 if v[0] == 0 else float("inf"))) for k, v in outside.items()}
    identical = bool((norms[:, 0].nan_to_num(0.0) == 0).all())
    return Comparison(inv, relative, kinds, grid, out, identical)
