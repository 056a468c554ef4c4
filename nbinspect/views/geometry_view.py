"""GeometryView: the tokens of a text (and of other texts) as points, at the selected layer.

Python projects every layer's residual stream once (:mod:`nbinspect.geometry`: a stable PCA by default,
t-SNE or UMAP on request) and sends all layers' coordinates together as float32 bytes
(``[layers, points, 2]``), so the layer slider only redraws in the browser. What the points are coloured
by travels as one float32 value per point (position, a neuron's activation at the selected layer) or one
int32 category per point (token id, text label) with the category names. Clicking a point of the main
text selects that token in the shared :class:`Selection`; the selected token's nearest vocabulary entries
by input-embedding cosine are listed beside the plot.

Other texts come as other Traces of the same model (``others=[...]``, ``labels=[...]``): the view never
runs the model.
"""

from __future__ import annotations

import numpy as np
import torch
import traitlets

from .. import codecs
from ..geometry import METHODS, nearest_tokens, project_layers, residual_layers
from ..trace import Trace
from ._bundle import bundle
from .base import View
from .selection import Selection

COLOR_MODES = ("position", "token", "neuron", "label")
#: How many nearest vocabulary entries are listed for the selected token.
NEAREST_K = 10


class GeometryView(View):
    """Tokens at the selected layer projected to 2-D; click a point to select its token."""

    title = "Hidden-state geometry"
    _esm = bundle("geometry_view")

    #: float32 ``[layers, n_points, 2]``: every layer's coordinates (aligned between layers).
    coords = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    n_points = traitlets.Int(0).tag(sync=True)
    #: The first ``n_main`` points are the trace's own tokens (clickable: they set the selection's token).
    n_main = traitlets.Int(0).tag(sync=True)
    #: Token text of every point after the main text's (the main text's are ``tokens``).
    other_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: "pca", "tsne" or "umap"; changing it re-projects.
    method = traitlets.Unicode("pca").tag(sync=True)
    #: What the PCA axes explain of the standardised all-layer variance ([] for t-SNE/UMAP).
    explained = traitlets.List(traitlets.Float()).tag(sync=True)
    #: "position", "token", "neuron" (the selection's neuron at the selected layer) or "label".
    color_by = traitlets.Unicode("position").tag(sync=True)
    #: float32 [n_points] values for continuous colouring, or int32 [n_points] categories; see ``color_kind``.
    color_values = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: "sequential", "diverging" or "categorical".
    color_kind = traitlets.Unicode("sequential").tag(sync=True)
    #: Category names for "categorical" colouring (token texts or text labels).
    color_names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: Which (color_by, layer, neuron) the colours are for (the browser fades stale ones).
    color_of = traitlets.Unicode("").tag(sync=True)
    #: Nearest vocabulary entries to the selected token's input embedding, and their cosines (float32 bytes).
    nearest = traitlets.List(traitlets.Unicode()).tag(sync=True)
    nearest_cosines = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    nearest_of = traitlets.Int(-1).tag(sync=True)
    neuron = traitlets.Int(-1)
    #: Why a projection failed (e.g. t-SNE on too few tokens); "" when it did not.
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(self, trace: Trace, selection: Selection | None = None, *, method: str = "pca",
                 color_by: str = "position", others: list[Trace] = (), labels: list[str] | None = None, **kwargs):
        self._others = list(others)
        n_texts = 1 + len(self._others)
        self._labels = list(labels) if labels is not None else [f"text {i}" for i in range(n_texts)]
        if len(self._labels) != n_texts:
            raise ValueError(f"labels: expected {n_texts} (the trace and {len(self._others)} others), got {len(self._labels)}.")
        for other in self._others:
            if other.adapter.model is not trace.adapter.model:
                raise ValueError("others must be traces of the same model as the main trace.")
        super().__init__(trace, selection, **kwargs)
        self._link(("layer", "token", "neuron"))
        with self.hold_sync():
            self.method = method
            self.color_by = color_by
            self._project()
            self._send_colors()
            self._send_nearest()
        self.observe(lambda c: self._reproject(), ["method"])
        self.observe(lambda c: self._send_colors(), ["color_by"])
        self.selection.observe(lambda c: self._layer_or_neuron_moved(), ["layer", "neuron"])
        self.selection.observe(lambda c: self._send_nearest(), ["token"])

    @classmethod
    def applies(cls, trace: Trace) -> str | None:
        if not trace.record.residual:
            return "this trace kept no residual stream, so there are no hidden states to project."
        return None

    @classmethod
    def bounds(cls, trace: Trace) -> dict[str, int]:
        neurons = trace.record.neurons.get(0)
        return {"n_neurons": int(neurons.shape[-1])} if isinstance(neurons, torch.Tensor) else {}

    @traitlets.validate("method")
    def _valid_method(self, proposal):
        if proposal["value"] not in METHODS:
            raise traitlets.TraitError(f"method {proposal['value']!r} is not known: use one of {METHODS}.")
        return proposal["value"]

    @traitlets.validate("color_by")
    def _valid_color(self, proposal):
        if proposal["value"] not in COLOR_MODES:
            raise traitlets.TraitError(f"color_by {proposal['value']!r} is not known: use one of {COLOR_MODES}.")
        return proposal["value"]

    # --- data ------------------------------------------------------------------------------------
    def _traces(self) -> list[Trace]:
        return [self.trace, *self._others]

    def hidden(self) -> list[torch.Tensor]:
        """Each layer's points ``[n_points, d]`` (all texts' tokens, main text first), on the model's device."""
        per_trace = [residual_layers(t.record) for t in self._traces()]
        device = per_trace[0][0].device
        return [torch.cat([layers[i].to(device) for layers in per_trace]) for i in range(len(per_trace[0]))]

    def projection(self):
        """The current :class:`~nbinspect.geometry.Projection` (computed once per trace and method)."""
        key = ("geometry", self.method, tuple(id(t) for t in self._others))
        return self.trace.cached(key, lambda: project_layers(self.hidden(), self.method))

    def _project(self) -> None:
        try:
            p = self.projection()
        except (ValueError, ImportError) as e:
            self.error = str(e)
            return
        others = [tok for t in self._others for tok in t.tokens]
        self.error = ""
        self.other_tokens = codecs.clip_tokens(others)
        self.n_main = self.trace.n_tokens
        self.n_points = p.coords.shape[1]
        self.explained = list(p.explained) if p.explained else []
        self.coords = p.coords.astype("<f4").tobytes()

    def _reproject(self) -> None:
        with self.hold_sync():
            self._project()

    def colors(self) -> tuple[str, np.ndarray, list[str]]:
        """``(kind, values, names)`` for the current ``color_by`` at the selected layer."""
        traces = self._traces()
        mode = self.color_by
        if mode == "position":
            values = np.concatenate([np.arange(t.n_tokens) / max(1, t.n_tokens - 1) for t in traces])
            return "sequential", values.astype(np.float32), []
        if mode == "label":
            values = np.concatenate([np.full(t.n_tokens, i) for i, t in enumerate(traces)])
            return "categorical", values.astype(np.int32), list(self._labels)
        if mode == "token":
            ids = np.concatenate([t.input_ids[0].cpu().numpy() for t in traces])
            unique, inverse = np.unique(ids, return_inverse=True)
            return "categorical", inverse.astype(np.int32), codecs.clip_tokens(self.trace.decode(unique.tolist()))
        layer, neuron = self.selection.layer, self.selection.neuron
        acts = [t.record.neurons.get(layer) for t in traces]
        if neuron < 0 or any(a is None for a in acts):
            return "sequential", np.zeros(self.n_points, np.float32), ["select a neuron (e.g. in the neuron view)"]
        values = torch.cat([a[0, :, neuron].float().cpu() for a in acts]).numpy()
        peak = float(np.abs(values).max()) or 1.0
        return "diverging", (values / peak).astype(np.float32), [f"neuron {neuron} at layer {layer}, max |a| {peak:.3g}"]

    def _send_colors(self) -> None:
        kind, values, names = self.colors()
        with self.hold_sync():
            self.color_kind = kind
            self.color_names = names
            self.color_values = values.astype("<f4" if values.dtype == np.float32 else "<i4").tobytes()
            self.color_of = f"{self.color_by},{self.selection.layer},{self.selection.neuron}"

    def _layer_or_neuron_moved(self) -> None:
        if self.color_by == "neuron":
            self._send_colors()

    def neighbours(self, token: int) -> list[tuple[str, float]]:
        """The selected token's nearest vocabulary entries by input-embedding cosine."""
        embedding = self._adapter.embedding()
        token_id = int(self.trace.input_ids[0, token])
        ids, sims = nearest_tokens(embedding.weight, token_id, NEAREST_K)
        return list(zip(self.trace.decode(ids.tolist()), sims.float().cpu().tolist()))

    def _send_nearest(self) -> None:
        token = self.selection.token
        if token < 0 or self._adapter.embedding() is None or token == self.nearest_of:
            return
        pairs = self.neighbours(token)
        with self.hold_sync():
            self.nearest = codecs.clip_tokens([p[0] for p in pairs])
            self.nearest_cosines = np.asarray([p[1] for p in pairs], dtype="<f4").tobytes()
            self.nearest_of = token

    def show(self, trace: Trace) -> None:
        super().show(trace)
        with self.hold_sync():
            self._project()
            self._send_colors()
            self.nearest_of = -1
            self._send_nearest()


__all__ = ["COLOR_MODES", "GeometryView"]
