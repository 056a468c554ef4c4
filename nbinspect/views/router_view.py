"""RouterView: where a mixture-of-experts model sends each token, layer by layer.

Reads a Trace's ``record.router`` (one :class:`nbinspect.Routing` per routed layer; see
:mod:`nbinspect.moe` for what load, coefficient of variation and top expert mean) and shows:

- for the selected layer, a token × expert heatmap of router probabilities (softmax of the router's
  logits) with each token's chosen top-k experts marked;
- the load of every expert (tokens routed to it) for that layer, with the load-balance coefficient of
  variation, and the CV of every routed layer as a strip to pick a layer from;
- the text coloured by each token's top expert at that layer.

Clicking an expert selects it (``view.expert``; the text then shows which tokens go to it), and
``nbinspect.AblateExpert(layer, expert)`` / ``ScaleExpert`` are the matching edits for the sliders.

What travels: all routed layers' loads (int32 ``[routed layers, experts]``) and CVs (float32) once; for
the shown layer the probabilities as uint8 (``q = round(p · 255)``, error ≤ 1/510) ``[rows, experts]``,
the chosen experts (int32 ``[tokens, k]``) and their weights (float32). Texts longer than
``codecs.ROUTER_MAX_ROWS`` tokens show block maxima of the probabilities (the marks then come from the
chosen experts of any token in the block).
"""

from __future__ import annotations

import math

import torch
import traitlets

from .. import codecs
from ..moe import LayerRouting, layer_routing
from ._bundle import bundle
from .selection import LinkedView, Selection


def _routed_layers(trace) -> list[int]:
    return sorted(getattr(trace.record, "router", {}) or {})


class RouterView(LinkedView):
    """Router probabilities, chosen experts and expert load of a mixture-of-experts model's text."""

    _esm = bundle("router_view")

    #: The layers that have a router (dense layers in between are skipped), and the experts per layer.
    routed_layers = traitlets.List(traitlets.Int()).tag(sync=True)
    n_experts = traitlets.Int(0).tag(sync=True)
    top_k = traitlets.Int(0).tag(sync=True)
    #: Why the view does not apply ("" when it does), shown instead of the charts.
    reason = traitlets.Unicode("").tag(sync=True)
    #: int32 [routed layers, experts]: tokens routed to each expert; float32 [routed layers]: their CV.
    loads = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    cvs = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: The routed layer the bytes below are for (the selection's layer, or the nearest routed one).
    shown_layer = traitlets.Int(-1).tag(sync=True)
    #: uint8 [rows, experts] router probabilities (p = q / 255), rows = tokens / block.
    probs = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    rows = traitlets.Int(0).tag(sync=True)
    block = traitlets.Int(1).tag(sync=True)
    #: int32 [tokens, k] the chosen experts of each token, float32 [tokens, k] their mixing weights.
    chosen = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    chosen_weights = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: The selected expert (-1: none); the browser sets it on a click.
    expert = traitlets.Int(-1).tag(sync=True)

    def __init__(self, trace, selection: Selection | None = None, layer: int | None = None, **kwargs):
        self._trace = trace
        self._adapter = adapter = trace.adapter
        tokens = list(trace.tokens)
        selection = (selection or Selection()).bound_to(n_tokens=len(tokens), n_layers=adapter.n_layers)
        reason = self.applies(trace) or ""
        routed = _routed_layers(trace)
        if layer is not None:
            selection.layer = adapter.check_layer(layer)
        elif routed and selection.layer not in routed:
            selection.layer = routed[0]
        super().__init__(tokens=codecs.clip_tokens(tokens), n_layers=adapter.n_layers, selection=selection, reason=reason, **kwargs)
        self._link(("layer", "token"))
        selection.observe(self._layer_moved, ["layer"])
        self._summaries: dict[int, LayerRouting] = {}
        self.show(trace)

    @classmethod
    def applies(cls, trace) -> str | None:
        if not _routed_layers(trace):
            family = getattr(trace.adapter, "family", "this")
            return f"a {family!r} model has no mixture-of-experts router: every layer's MLP is dense, so there is no routing to show."
        return None

    @traitlets.validate("expert")
    def _valid_expert(self, proposal):
        value, n = proposal["value"], self.n_experts
        if not -1 <= value < max(n, 0):
            raise traitlets.TraitError(f"expert {value} is out of range: this model has experts 0..{n - 1} (-1 for none).")
        return value

    @property
    def trace(self):
        return self._trace

    def routing(self, layer: int | None = None) -> LayerRouting:
        """The shown (or given) routed layer's routing (tensors on the layer's device)."""
        layer = self.shown_layer if layer is None else layer
        if layer not in self._summaries:
            if layer not in self._trace.record.router:
                raise IndexError(f"layer {layer} has no router; routed layers: {self.routed_layers}.")
            self._summaries[layer] = layer_routing(self._trace.record.router[layer], self.n_experts or None)
        return self._summaries[layer]

    def show(self, trace) -> None:
        """Repaint for ``trace`` (e.g. after an edit): loads of every layer, then the shown layer."""
        self._trace = trace
        self._summaries = {}
        routed = _routed_layers(trace)
        if not routed:
            self.reason = self.applies(trace) or ""
            return
        first = trace.record.router[routed[0]]
        n_experts = int(first.probs.shape[-1])
        with self.hold_sync():
            self.routed_layers = routed
            self.n_experts = n_experts
            self.top_k = int(first.experts.shape[-1])
            summaries = [self.routing(i) for i in routed]
            self.loads = codecs.int32_bytes(torch.stack([s.load.cpu() for s in summaries]))
            self.cvs = codecs.float32_bytes(torch.tensor([s.cv for s in summaries]))
            self._send_layer(force=True)

    def displayed_layer(self) -> int:
        """The selection's layer when it is routed, else the nearest routed layer."""
        layer, routed = self.selection.layer, self.routed_layers
        if not routed or layer in routed:
            return layer
        return min(routed, key=lambda i: (abs(i - layer), i))

    def _layer_moved(self, change) -> None:
        self._send_layer()

    def _send_layer(self, force: bool = False) -> None:
        if not self.routed_layers:
            return
        layer = self.displayed_layer()
        if layer == self.shown_layer and not force:
            return
        r = self.routing(layer)
        probs, block = r.probs, 1
        if probs.shape[0] > codecs.ROUTER_MAX_ROWS:
            block = math.ceil(probs.shape[0] / codecs.ROUTER_MAX_ROWS)
            pad = block * math.ceil(probs.shape[0] / block) - probs.shape[0]
            padded = torch.nn.functional.pad(probs, (0, 0, 0, pad))
            probs = padded.reshape(-1, block, probs.shape[1]).amax(dim=1)
        q = (probs.clamp(0, 1) * 255).round_().to(torch.uint8)
        with self.hold_sync():
            self.probs = codecs.to_bytes(q)
            self.rows = int(q.shape[0])
            self.block = block
            self.chosen = codecs.int32_bytes(r.experts)
            self.chosen_weights = codecs.float32_bytes(r.weights)
            self.shown_layer = layer

    def shown_probs(self) -> torch.Tensor:
        """The heatmap as the browser decodes it: float32 [rows, experts] on the host."""
        q = torch.frombuffer(bytearray(self.probs), dtype=torch.uint8).reshape(self.rows, -1)
        return q.float() / 255.0

    def payload_bytes(self) -> int:
        names = ("loads", "cvs", "probs", "chosen", "chosen_weights")
        return sum(len(getattr(self, n)) for n in names) + sum(len(t.encode()) + 3 for t in self.tokens)
