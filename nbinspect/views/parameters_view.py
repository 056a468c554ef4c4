"""ParametersView: every parameter by kind (count, share, memory, tied tensors marked), and the weight
distribution of the focused kind, layer or tensor against the usual initialisations.

The inventory, every tensor's moments and the shown histogram are computed on the model's device by
:mod:`nbinspect.anatomy` (a tensor's own histogram only once it is focused); what travels is per kind
(counts as float64 bytes, names as text), the focused histogram (float32 counts), the expected counts
of each initialisation law in the same bins, the std of each kind per layer (float32 [kinds, layers])
and, on request, a matrix's singular values or a fresh copy's histogram.

Focus: ``focus_kind`` (a kind, "" for the largest) and ``focus_scope`` ("all" layers, "layer": the
shared selection's layer, or "tensor": ``focus_tensor``). Clicking a kind in the browser focuses it;
clicking a layer on the std chart sets the shared selection's layer and the scope to that layer.
"""

from __future__ import annotations

import math

import torch
import traitlets
from torch import nn

from .. import anatomy, codecs
from ..adapters import ModelParts
from ._bundle import bundle
from .selection import LinkedView, Selection

SCOPES = ("all", "layer", "tensor")


class ParametersView(LinkedView):
    """Parameter inventory by kind and the focused weights' distribution against their initialisations."""

    _esm = bundle("parameters_view")
    #: Heading in the dashboard. Not a trace view (it reads the weights, not a run), but it answers the
    #: same calls: built from a Trace, a model or an Inventory; ``show`` keeps it (the weights are the model's).
    title = "Parameters"
    needs_gradients = False

    #: One entry per kind present, in anatomy.KINDS order.
    kinds = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: float64 [kinds] parameters per kind (tied copies counted once) and bytes per kind.
    kind_counts = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    kind_bytes = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: One line of text per kind: tensors, shapes, dtype, device, tied tensors.
    kind_notes = traitlets.List(traitlets.Unicode()).tag(sync=True)
    total = traitlets.Float(0).tag(sync=True)
    total_bytes = traitlets.Float(0).tag(sync=True)
    #: "rotary: no parameters (θ = ...)" or "" when positions are learned (or absent).
    rotary = traitlets.Unicode("").tag(sync=True)
    #: What the histogram shows.
    focus_kind = traitlets.Unicode("").tag(sync=True)
    focus_scope = traitlets.Unicode("all").tag(sync=True)
    focus_tensor = traitlets.Unicode("").tag(sync=True)
    #: The focused weights: a title, float32 [bins] counts over [lo, hi], and their statistics.
    focus_title = traitlets.Unicode("").tag(sync=True)
    hist = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    hist_range = traitlets.List(traitlets.Float(), default_value=[0.0, 1.0]).tag(sync=True)
    stats = traitlets.Dict().tag(sync=True)
    #: Expected counts per bin under each usual initialisation, float32 [laws, bins], and their labels.
    init_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    init_counts = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: Ask for a freshly initialised copy (from_config) and show its histogram of the same weights.
    show_fresh = traitlets.Bool(False).tag(sync=True)
    fresh_hist = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    fresh_note = traitlets.Unicode("").tag(sync=True)
    #: std of each kind in each layer: names and float32 [kinds, layers] (NaN: none in that layer).
    std_kinds = traitlets.List(traitlets.Unicode()).tag(sync=True)
    std_by_layer = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: Ask for the singular values of the focused tensor (a matrix): float32, largest first.
    want_svd = traitlets.Bool(False).tag(sync=True)
    svd = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    svd_note = traitlets.Unicode("").tag(sync=True)
    #: Tensors of the focused kind (names), for the browser's tensor picker.
    kind_tensors = traitlets.List(traitlets.Unicode()).tag(sync=True)

    def __init__(self, source, selection: Selection | None = None, parts: ModelParts | None = None, **kwargs):
        model = source if isinstance(source, nn.Module) else source.model
        inv = source if isinstance(source, anatomy.Inventory) else None
        # Moments of every tensor, histograms only of what is shown (the focused group, binned on request).
        if inv is None:
            parts = parts or getattr(getattr(source, "adapter", None), "parts", None)
            inv = anatomy.parameter_stats(model, parts, histograms=False)
        elif not inv.stats:
            inv.compute(histograms=False)
        # A NaN or inf weight has no histogram (every statistic is NaN): say which tensor, as the other views do.
        for piece, m in zip(inv.pieces, inv.stats):
            if piece.tied_to is None and not (math.isfinite(m.lo) and math.isfinite(m.hi)):
                codecs.check_finite(torch.tensor([m.lo, m.hi]), f"the weight {piece.name}")
        self._inv = inv
        self._adapter = inv.adapter
        self._fresh: nn.Module | None = None
        selection = (selection or Selection()).bound_to(n_layers=inv.adapter.n_layers)
        groups = inv.by_kind()
        kinds = list(groups)
        notes = [self._note(kind, groups[kind]) for kind in kinds]
        std_kinds, std = inv.std_by_layer()
        biggest = max(kinds, key=lambda k: groups[k]["count"])
        super().__init__(
            tokens=[],
            n_layers=inv.adapter.n_layers,
            selection=selection,
            kinds=kinds,
            kind_counts=torch.tensor([groups[k]["count"] for k in kinds], dtype=torch.float64).numpy().tobytes(),
            kind_bytes=torch.tensor([groups[k]["bytes"] for k in kinds], dtype=torch.float64).numpy().tobytes(),
            kind_notes=notes,
            total=float(inv.total),
            total_bytes=float(inv.total_bytes),
            rotary=str(inv.rotary) if inv.rotary else "",
            std_kinds=std_kinds,
            std_by_layer=codecs.float32_bytes(std),
            **kwargs,
        )
        self.focus_kind = biggest
        self._link(("layer",))
        self.observe(self._refocus, ["focus_kind", "focus_scope", "focus_tensor", "show_fresh", "want_svd"])
        selection.observe(self._layer_moved, ["layer"])
        self._send_focus()

    def _note(self, kind: str, g: dict) -> str:
        shapes = sorted({str(list(p.shape)) for p in self._inv.pieces if p.kind == kind})
        shape = shapes[0] if len(shapes) == 1 else f"{len(shapes)} shapes"
        tied = f"; tied: {', '.join(g['tied'])} (counted once)" if g["tied"] else ""
        return f"{g['tensors']} tensors, {shape}, {'/'.join(g['dtypes'])} on {'/'.join(g['devices'])}{tied}"

    # --- validation -------------------------------------------------------------------------------
    @traitlets.validate("focus_kind")
    def _valid_kind(self, proposal):
        if proposal["value"] not in self.kinds:
            raise traitlets.TraitError(f"kind {proposal['value']!r} is not in this model; it has {self.kinds}.")
        return proposal["value"]

    @traitlets.validate("focus_scope")
    def _valid_scope(self, proposal):
        if proposal["value"] not in SCOPES:
            raise traitlets.TraitError(f"scope {proposal['value']!r} is not known: use one of {SCOPES}.")
        return proposal["value"]

    @traitlets.validate("focus_tensor")
    def _valid_tensor(self, proposal):
        name = proposal["value"]
        if name and not self._inv.select(name=name):
            raise traitlets.TraitError(f"no parameter named {name!r} (tied copies are shown under their original).")
        return name

    # --- focus ------------------------------------------------------------------------------------
    def _layer_moved(self, change):
        if self.focus_scope == "layer":
            self._send_focus()

    def _refocus(self, change):
        if change["name"] == "focus_tensor" and change["new"]:
            piece = self._inv.pieces[self._inv.select(name=change["new"])[0]]
            with self.hold_trait_notifications():
                self.focus_kind = piece.kind
                self.focus_scope = "tensor"
        self._send_focus()

    def focused(self) -> list[int]:
        """Indices (into ``inventory.pieces``) of the weights the histogram shows."""
        inv = self._inv
        if self.focus_scope == "tensor" and self.focus_tensor:
            return inv.select(name=self.focus_tensor)
        if self.focus_scope == "layer":
            found = inv.select(kind=self.focus_kind, layer=self.selection.layer)
            if found:
                return found
        return inv.select(kind=self.focus_kind)

    def _send_focus(self) -> None:
        inv = self._inv
        idx = self.focused()
        if not idx:  # e.g. a tied output head: its weights are shown under the token embedding
            idx = inv.select(kind="token embedding")
        hist = inv.group_histogram(idx)
        first = inv.pieces[idx[0]]
        scope = (first.name if len(idx) == 1 else
                 f"{self.focus_kind}, layer {self.selection.layer}" if self.focus_scope == "layer" and first.layer >= 0
                 else f"{self.focus_kind}, all layers")
        same_fan = all(inv.pieces[i].fan == first.fan for i in idx)
        labels, dens = anatomy.init_densities(first, hist, inv.adapter.config) if same_fan else ([], torch.zeros(0))
        fresh, fresh_note = b"", ""
        if self.show_fresh:
            try:
                if self._fresh is None:
                    self._fresh = anatomy.fresh_copy(inv.model)
                fh = anatomy.histogram((inv.pieces[i].tensor(self._fresh) for i in idx), len(hist.counts), (hist.lo, hist.hi))
                fresh = codecs.float32_bytes(fh.counts)
                fresh_note = f"fresh copy: std {fh.moments.std:.4g}, kurtosis {fh.moments.kurtosis:.3g}"
            except ValueError as e:
                fresh_note = str(e)
        svd, svd_note = b"", ""
        if self.want_svd:
            if len(idx) == 1 and len(first.shape) >= 2:
                values = inv.svdvals(idx[0])[: codecs.MAX_SINGULAR_VALUES]
                svd = codecs.float32_bytes(values)
                svd_note = f"{len(values)} singular values of {first.name}"
            else:
                svd_note = "pick one weight matrix (a tensor, not a group or a vector) for its singular values"
        names = [inv.pieces[i].name for i in inv.select(kind=self.focus_kind)]
        with self.hold_sync():
            self.focus_title = scope + ("" if same_fan else " (shapes differ: no initialisation curves)")
            self.hist = codecs.float32_bytes(hist.counts)
            self.hist_range = [hist.lo, hist.hi]
            self.stats = {k: (None if v != v else v) for k, v in hist.moments.summary().items()}
            self.init_labels = labels
            self.init_counts = codecs.float32_bytes(dens) if labels else b""
            self.fresh_hist, self.fresh_note = fresh, fresh_note
            self.svd, self.svd_note = svd, svd_note
            self.kind_tensors = names

    # --- for Python callers -----------------------------------------------------------------------
    @property
    def inventory(self) -> anatomy.Inventory:
        return self._inv

    def payload_bytes(self) -> int:
        names = ("kind_counts", "kind_bytes", "hist", "init_counts", "fresh_hist", "std_by_layer", "svd")
        text = sum(len(s.encode()) + 3 for s in self.kinds + self.kind_notes + self.kind_tensors + self.std_kinds)
        return sum(len(getattr(self, n)) for n in names) + text

    @classmethod
    def applies(cls, trace) -> str | None:
        return None

    def show(self, trace) -> None:
        """A new trace of the same model: the parameters are the same (edits are undone after each run)."""


def parameters(model, *, selection: Selection | None = None, parts: ModelParts | None = None, **focus) -> ParametersView:
    """Show every parameter of ``model`` by kind, and the weight distribution of one kind, layer or tensor.

    ``focus``: ``focus_kind=``, ``focus_scope=`` ("all", "layer", "tensor"), ``focus_tensor=``. Nothing is run
    through the model; every histogram is computed on the model's device.
    """
    view = ParametersView(model, selection=selection, parts=parts)
    for name in ("focus_kind", "focus_scope", "focus_tensor"):
        if name in focus:
            setattr(view, name, focus.pop(name))
    if focus:
        raise TypeError(f"parameters() got unknown arguments {sorted(focus)}.")
    return view
