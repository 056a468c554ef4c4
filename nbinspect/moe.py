"""Mixture-of-experts: what the router did with every token, and an edit that switches an expert off.

Routing comes from a capture's ``record.router[layer]`` (:class:`nbinspect.Routing`: the softmax of the
router's logits over all experts, the experts each token was sent to and their mixing weights). From it:

- **load** of a layer: how many tokens each expert received (a token sent to k experts counts once for
  each of them, so the loads sum to ``tokens × k``);
- **load-balance coefficient of variation**: the standard deviation of the loads over experts divided by
  their mean (population standard deviation): 0 when every expert gets the same number of tokens,
  ``sqrt(E − 1)`` when one expert gets them all;
- **top expert** of a token: the chosen expert with the largest mixing weight.

:class:`ScaleExpert` multiplies one expert's output by a factor (:func:`AblateExpert` is factor 0) by
scaling the expert's output projection (its ``down_proj`` slice in the fused expert tensors of
Mixtral, Qwen2/3-MoE and DeepSeek-V3, or the last linear layer of an expert kept as its own module) and
its bias, so the expert's whole write scales exactly. The router is left alone: tokens are still sent to
the expert and the other experts keep their weights, so an ablated expert's share is simply missing. The
perturbation machinery (:func:`nbinspect.perturb`) saves the slice first and restores it bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .adapters import Adapter
from .perturb import Change, Edit, EditError, _check_factor, _check_layer, _layer_part, _names, _OneLayerScale, _scale

#: Names an expert's output projection goes by (fused 3-D tensors or per-expert linear layers).
_DOWN_NAMES = ("down_proj", "w2", "c_proj", "fc2", "wo", "dense_4h_to_h")


class LayerRouting(NamedTuple):
    """One MoE layer's routing for one text, batch row 0 (tensors on the layer's device).

    probs: float32 [tokens, experts] (softmax of the router logits); experts: int64 [tokens, k];
    weights: float32 [tokens, k]; top: int64 [tokens] (the chosen expert with the largest weight);
    load: int64 [experts]; cv: the load-balance coefficient of variation (see the module docs).
    """

    probs: torch.Tensor
    experts: torch.Tensor
    weights: torch.Tensor
    top: torch.Tensor
    load: torch.Tensor
    cv: float


def expert_load(experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Tokens routed to each expert: ``experts`` int [..., k] -> int64 [n_experts]."""
    return torch.bincount(experts.reshape(-1).long(), minlength=n_experts)[:n_experts]


def load_cv(load: torch.Tensor) -> float:
    """Coefficient of variation of the loads (population std / mean); 0 when nothing was routed."""
    x = load.double()
    mean = x.mean()
    return float(x.std(correction=0) / mean) if mean > 0 else 0.0


def layer_routing(routing, n_experts: int | None = None) -> LayerRouting:
    """Summarize a captured :class:`nbinspect.Routing` (batch row 0) as a :class:`LayerRouting`."""
    probs = routing.probs[0].float()
    experts = routing.experts[0].long()
    weights = routing.weights[0].float()
    n = n_experts or probs.shape[-1]
    top = experts.gather(-1, weights.argmax(-1, keepdim=True)).squeeze(-1)
    load = expert_load(experts, n)
    return LayerRouting(probs, experts, weights, top, load, load_cv(load))


# --- the edit ---------------------------------------------------------------------------------------
def _experts(adapter: Adapter, layer: int, edit: Edit) -> nn.Module:
    mlp = _layer_part(adapter, layer, "mlp", edit)
    experts = getattr(mlp, "experts", None)
    if experts is None or not adapter.has_part(layer, "router"):
        routed = adapter.router_layers()
        raise EditError(
            f"{edit!r}: layer {layer} has no mixture of experts to edit"
            + (f"; its routed layers are {routed}." if routed else "; this model has none (a dense model has no experts).")
        )
    return experts


def _n_experts(adapter: Adapter, experts: nn.Module) -> int:
    if isinstance(experts, (nn.ModuleList, nn.Sequential)):
        return len(experts)
    n = adapter.n_experts or getattr(experts, "num_experts", None)
    if n:
        return int(n)
    fused = [p for p in experts.parameters(recurse=False) if p.dim() == 3]
    if fused:
        return fused[0].shape[0]
    raise EditError(f"cannot tell how many experts {type(experts).__name__} holds; name it in the config (num_experts).")


def _output_projection(experts: nn.Module, expert: int, edit: Edit) -> list[torch.Tensor]:
    """The tensors (weight, then bias if any) whose ``expert`` slice is that expert's output projection."""
    if isinstance(experts, (nn.ModuleList, nn.Sequential)):
        module = experts[expert]
        linears = [m for n, m in module.named_modules() if n.split(".")[-1] in _DOWN_NAMES and hasattr(m, "weight")]
        linears = linears or [m for m in module.modules() if isinstance(m, nn.Linear)][-1:]
        if not linears:
            raise EditError(f"{edit!r}: expert {expert} has no linear output projection to scale.")
        proj = linears[-1]
        return [t for t in (proj.weight, getattr(proj, "bias", None)) if t is not None]
    params = dict(experts.named_parameters(recurse=False))
    down = next((name for name in _DOWN_NAMES if name in params and params[name].dim() == 3), None)
    if down is None:
        raise EditError(
            f"{edit!r}: {type(experts).__name__} has no fused output projection named one of {_DOWN_NAMES}; "
            "this model's experts cannot be scaled in their weights."
        )
    bias = params.get(f"{down}_bias")
    return [params[down]] + ([bias] if bias is not None else [])


@dataclass(frozen=True)
class ScaleExpert(_OneLayerScale):
    """Multiply one expert's output in one MoE layer by ``factor`` (0 switches it off; see the module docs)."""

    layer: int
    expert: int
    factor: float

    def changes(self, adapter: Adapter) -> list[Change]:
        _check_factor(self, self.factor)
        layer = _check_layer(adapter, self.layer, self)
        experts = _experts(adapter, layer, self)
        n = _n_experts(adapter, experts)
        if isinstance(self.expert, bool) or not isinstance(self.expert, int) or not 0 <= self.expert < n:
            raise EditError(f"{self!r}: expert {self.expert!r} is out of range: layer {layer} has experts 0..{n - 1}.")
        names = _names(adapter)
        fused = not isinstance(experts, (nn.ModuleList, nn.Sequential))
        return [
            Change(t, (self.expert,) if fused else (), _scale(self.factor), names[id(t)])
            for t in _output_projection(experts, self.expert, self)
        ]


def AblateExpert(layer: int, expert: int) -> ScaleExpert:  # noqa: N802 - reads like the other edits
    """Switch one expert of one MoE layer off: ``ScaleExpert(layer, expert, 0.0)``."""
    return ScaleExpert(layer, expert, 0.0)


def routing(model: nn.Module, tokenizer, text: str, *, layer: int | None = None, selection=None, parts=None):
    """Run ``text`` through a mixture-of-experts ``model`` once (a :func:`nbinspect.trace` without gradients)
    and show its routing as a :class:`~nbinspect.views.router_view.RouterView`."""
    from .trace import trace
    from .views.router_view import RouterView

    t = trace(model, tokenizer, text, gradients=False, parts=parts)
    reason = RouterView.applies(t)
    if reason:
        raise ValueError(reason)
    return RouterView(t, selection=selection, layer=layer)
