"""ActivationView: the MLP's activation function as a curve, with the selected layer's pre-activations
over the text binned under it, the fraction in each regime, and for gated MLPs the gate × up product.

The function's name comes from the config (``hidden_act`` / ``activation_function``) and is checked
against the module that applies it (a mismatch is said, and the module's function is drawn). The curve
is evaluated by that module on the device; the pre-activations are the module's input, recorded by a
replay of that one layer (or one forward without a Trace). Regimes (see ``anatomy.REGIME_TOLERANCE``):
*negative* where act(x) ≈ 0 (|act(x)| ≤ 5 % of |x|), *linear* where act(x) ≈ x, *near zero* the curved
part in between.
"""

from __future__ import annotations

import torch
import traitlets

from .. import anatomy, codecs
from ..trace import Trace
from ._bundle import bundle
from .base import View, as_trace
from .selection import Selection


class ActivationView(View):
    """The activation function, the selected layer's pre-activations on it, regimes, and gate × up."""

    _esm = bundle("activation_view")
    title = "Activation function"

    act_name = traitlets.Unicode("").tag(sync=True)
    note = traitlets.Unicode("").tag(sync=True)
    gated = traitlets.Bool(False).tag(sync=True)
    shown_layer = traitlets.Int(-1).tag(sync=True)
    #: The curve act(x) at ACTIVATION_CURVE_POINTS x values evenly over ``x_range`` (float32).
    x_range = traitlets.List(traitlets.Float(), default_value=[-1.0, 1.0]).tag(sync=True)
    curve = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: float32 [bins] counts of the pre-activations over ``x_range``.
    pre_hist = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: Fractions: {"negative", "near zero", "linear"}; and the tolerance that defines them.
    regimes = traitlets.Dict().tag(sync=True)
    tolerance = traitlets.Float(anatomy.REGIME_TOLERANCE).tag(sync=True)
    #: Gated MLPs: float32 [bins] counts of act(gate) × up over ``product_range``.
    product_hist = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    product_range = traitlets.List(traitlets.Float(), default_value=[-1.0, 1.0]).tag(sync=True)

    def __init__(self, trace: Trace, selection: Selection | None = None, **kwargs):
        super().__init__(trace, selection, **kwargs)
        self._link(("layer", "token"))
        self._act: anatomy.Activation | None = None
        selection.observe(self._moved, ["layer"])
        self._send_step()

    @classmethod
    def applies(cls, trace) -> str | None:
        if trace.adapter.router_layers():
            return ("a mixture-of-experts MLP applies its activation inside each expert, to that expert's tokens "
                    "only; the activation view shows dense MLPs.")
        try:
            anatomy.activation_module(trace.adapter, 0)
        except Exception as e:  # noqa: BLE001 - the reason is shown instead of the view
            return str(e)
        return None

    def _moved(self, change):
        self._send_step()

    def show(self, trace) -> None:
        super().show(trace)
        self._act = None
        self.shown_layer = -1
        self._send_step()

    def activation(self) -> anatomy.Activation:
        layer = self.selection.layer
        if self._act is None or self._act.layer != layer:
            self._act = anatomy.activation(self.trace, layer=layer)
        return self._act

    def _send_step(self) -> None:
        a = self.activation()
        if self.shown_layer == a.layer:
            return
        codecs.check_finite(a.pre.abs().amax(), f"layer {a.layer}'s pre-activations")
        lo, hi = float(a.pre.min()), float(a.pre.max())
        lo, hi = min(lo, -1.0), max(hi, 1.0)  # always show the bend around zero
        x, y = a.curve(lo, hi)
        bins = codecs.HISTOGRAM_BINS
        pre_hist = torch.histc(a.pre.reshape(-1), bins=bins, min=lo, max=hi)
        product_hist, prange = b"", [-1.0, 1.0]
        if a.gated:
            p = a.product.reshape(-1)
            plo, phi = float(p.min()), float(p.max())
            if phi <= plo:
                plo, phi = plo - 0.5, phi + 0.5
            product_hist = codecs.float32_bytes(torch.histc(p, bins=bins, min=plo, max=phi))
            prange = [plo, phi]
        with self.hold_sync():
            self.act_name, self.note, self.gated = a.name, a.note, a.gated
            self.x_range = [lo, hi]
            self.curve = codecs.float32_bytes(y)
            self.pre_hist = codecs.float32_bytes(pre_hist)
            self.regimes = a.regimes()
            self.product_hist, self.product_range = product_hist, prange
            self.shown_layer = a.layer

    def payload_bytes(self) -> int:
        return sum(len(getattr(self, n)) for n in ("curve", "pre_hist", "product_hist"))


def activations(model_or_trace, tokenizer=None, text: str | None = None, *, layer: int | None = None,
                selection: Selection | None = None, parts=None) -> ActivationView:
    """Show the MLP activation function with one layer's pre-activations (a Trace, or a model, tokenizer and text)."""
    trace = as_trace(model_or_trace, tokenizer, text, parts=parts)
    reason = ActivationView.applies(trace)
    if reason is not None:
        raise ValueError(reason)
    selection = (selection or Selection()).bound_to(n_layers=trace.adapter.n_layers)
    if layer is not None:
        selection.layer = trace.adapter.check_layer(layer)
    return ActivationView(trace, selection=selection)
