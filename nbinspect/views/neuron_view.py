"""NeuronView: one layer's MLP neurons — the strongest ones per token, one neuron over the text, and the
distribution of all of them.

The trace keeps every layer's neuron activations (the input of the down/output projection, see
:mod:`nbinspect.capture`) on the model's device. When the shared selection moves to another layer the
view ranks that layer's neurons, bins its histogram and counts its dead neurons there, and sends bytes
for that layer only:

- the top-k neuron numbers (int32) and their ranking scores (float32);
- the token × top-k heatmap, signed uint8 with one scale per column (the neuron's largest |a|);
- the displayed neuron's activation at every token (signed uint8 and one scale), to colour the text;
- the histogram counts (int32) and bin edges (float32), and three fractions as plain floats.

What the fractions mean (also written in the view's legend), over the tokens of this text:

- **dead**: a neuron whose |a| ≤ ``DEAD_THRESHOLD`` (10⁻³) × the layer's largest |a| at every token.
- **saturated**: only defined when the neuron activation is the output of a bounded function (an ungated
  MLP with tanh or sigmoid): a neuron within ``SATURATION_MARGIN`` (1 %) of the function's range of a
  non-zero bound (tanh: ±1, sigmoid: 1) at every token. GELU and SiLU are unbounded above and their only
  flat region (the negative tail, → 0) is what "dead" counts, and a gated MLP's ``act(gate) * up`` has no
  bound at all, so for GPT-2, BERT, GPT-NeoX, Llama, Mistral and Qwen2 saturation is *not applicable*:
  ``saturated_fraction`` is -1 and the legend says "n/a" and why. It is never estimated from percentiles.
- **outliers**: a neuron whose largest |a| exceeds ``OUTLIER_FACTOR`` (10) × the median over the layer's
  neurons of their largest |a| — the "massive activation" neurons of Llama-style models.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import traitlets

from .. import codecs
from ..adapters import Adapter, ModelParts
from ..anatomy import histc_counts
from ..trace import Trace
from ._bundle import bundle
from .base import View, as_trace
from .selection import Selection

RANKINGS = ("max_abs", "variance")
#: Dead: |a| at most this fraction of the layer's largest |a|, at every token.
DEAD_THRESHOLD = 1e-3
#: Saturated: within this fraction of the activation function's range of a non-zero bound, at every token.
SATURATION_MARGIN = 0.01
#: Outlier: the neuron's largest |a| exceeds this many times the layer's median (over neurons) largest |a|.
OUTLIER_FACTOR = 10.0
#: Activation functions with a bounded output, and their non-zero bounds (0 is what "dead" measures).
BOUNDED = {"tanh": (-1.0, 1.0), "sigmoid": (1.0,)}


class LayerStats(NamedTuple):
    """One layer's neurons summarized over the tokens of a text (tensors on the activations' device).

    scores: the ranking score of every neuron, float32 [neurons] (largest |a|, or variance over tokens).
    indices: the top-k neurons by score, largest first, int64 [k].
    counts: histogram of every activation of the layer, int64 [bins]; edges: float32 [bins + 1].
    dead_fraction, saturated_fraction (-1: not applicable), outlier_fraction: see the module docs.
    max_abs: the layer's largest |a|.
    """

    scores: torch.Tensor
    indices: torch.Tensor
    counts: torch.Tensor
    edges: torch.Tensor
    dead_fraction: float
    saturated_fraction: float
    outlier_fraction: float
    max_abs: float


def saturation_bounds(adapter: Adapter) -> tuple[float, ...] | None:
    """The non-zero bounds of the neuron activation, or ``None`` when it has none (see the module docs)."""
    if adapter.parts.neurons and adapter.parts.neurons.endswith("down_proj"):
        return None  # gated: act(gate) * up is unbounded whatever act is
    config = adapter.config
    name = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None)
    return BOUNDED.get(name) if isinstance(name, str) else None


def layer_stats(acts: torch.Tensor, k: int, rank_by: str, bounds: tuple[float, ...] | None = None) -> LayerStats:
    """Rank, bin and classify one layer's activations ``acts`` float32 [tokens, neurons], on their device."""
    if rank_by not in RANKINGS:
        raise ValueError(f"rank_by must be one of {RANKINGS}, got {rank_by!r}.")
    a = acts.float()
    peak = codecs.check_finite(a.abs().amax(dim=0), "this layer's neuron activations")  # [neurons]
    scores = peak if rank_by == "max_abs" else a.var(dim=0, unbiased=False)
    indices = torch.topk(scores, min(k, a.shape[1])).indices
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:  # one value everywhere: give the histogram a width
        lo, hi = lo - 0.5, hi + 0.5
    bins = codecs.HISTOGRAM_BINS
    counts = histc_counts(a, bins, lo, hi)  # torch.histc's counts, without its slow CPU loop
    edges = torch.linspace(lo, hi, bins + 1, device=a.device)
    max_abs = float(peak.max())
    dead = float((peak <= DEAD_THRESHOLD * max_abs).float().mean())
    if bounds is None:
        saturated = -1.0
    else:
        width = max(bounds) - min(min(bounds), 0.0)
        near = torch.zeros_like(a, dtype=torch.bool)
        for b in bounds:
            near |= (a - b).abs() <= SATURATION_MARGIN * width
        saturated = float(near.all(dim=0).float().mean())
    outliers = float((peak > OUTLIER_FACTOR * peak.median()).float().mean())
    return LayerStats(scores, indices, counts, edges, dead, saturated, outliers, max_abs)


def heatmap_rows(columns: torch.Tensor, rows: int) -> tuple[torch.Tensor, int]:
    """Pool ``columns`` [tokens, k] to at most ``rows`` rows; returns the pooled map and tokens per row.

    Each block of tokens keeps the value with the largest |a|, sign included: a mean would wash a
    neuron that fires on one token in fifty into nothing.
    """
    n, k = columns.shape
    block = max(1, math.ceil(n / rows))
    if block == 1:
        return columns, 1
    out_rows = math.ceil(n / block)
    padded = torch.zeros(out_rows * block, k, dtype=columns.dtype, device=columns.device)
    padded[:n] = columns
    x = padded.reshape(out_rows, block, k)
    pick = x.abs().argmax(dim=1, keepdim=True)
    return x.gather(1, pick).squeeze(1), block


class NeuronView(View):
    """A layer's top-k neurons per token, the displayed neuron over the text, and the layer's histogram."""

    _esm = bundle("neuron_view")
    title = "MLP neurons"

    n_neurons = traitlets.Int(0).tag(sync=True)
    #: The shared selection; the browser reads and writes layer, token and neuron there (js/selection.js).
    #: Selected neuron (-1: none, the layer's top neuron is displayed), mirrored from ``selection``
    #: both ways like ``layer`` and ``token``.
    neuron = traitlets.Int(-1)
    #: How the top-k neurons are chosen: "max_abs" (largest |a| over the tokens) or "variance" (over tokens).
    rank_by = traitlets.Unicode("max_abs").tag(sync=True)
    #: How many neurons the heatmap shows (at most codecs.NEURON_TOP_K_MAX).
    k = traitlets.Int(codecs.NEURON_TOP_K).tag(sync=True)
    #: Histogram bars on a log scale (counts span orders of magnitude around zero).
    log_counts = traitlets.Bool(True).tag(sync=True)
    #: int32 [k] neuron numbers, largest score first, and their float32 [k] scores.
    top_indices = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    top_scores = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: uint8 [rows, k] heatmap (128 = 0), float32 [k] column scales (each neuron's largest |a|), tokens per row.
    heatmap = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    heatmap_scales = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    heatmap_rows = traitlets.Int(0).tag(sync=True)
    heatmap_block = traitlets.Int(1).tag(sync=True)
    #: int32 [bins] histogram of all the layer's activations and float32 [bins + 1] edges.
    histogram = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    histogram_edges = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    dead_fraction = traitlets.Float(0.0).tag(sync=True)
    #: -1 where saturation is not applicable (see ``saturation_note`` and the module docs).
    saturated_fraction = traitlets.Float(-1.0).tag(sync=True)
    saturation_note = traitlets.Unicode("").tag(sync=True)
    outlier_fraction = traitlets.Float(0.0).tag(sync=True)
    #: The definitions' constants, sent so the legend states exactly what was computed.
    dead_threshold = traitlets.Float(DEAD_THRESHOLD).tag(sync=True)
    outlier_factor = traitlets.Float(OUTLIER_FACTOR).tag(sync=True)
    max_abs = traitlets.Float(0.0).tag(sync=True)
    #: Which layer and ranking the bytes above are for (the browser shows "loading" until they match).
    shown_layer = traitlets.Int(-1).tag(sync=True)
    shown_rank_by = traitlets.Unicode("").tag(sync=True)
    #: uint8 [tokens] activation of the displayed neuron (128 = 0), its scale, and which [layer, neuron].
    neuron_values = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    neuron_scale = traitlets.Float(0.0).tag(sync=True)
    neuron_of = traitlets.List(traitlets.Int(), default_value=[-1, -1]).tag(sync=True)

    def __init__(
        self,
        trace: Trace,
        selection: Selection | None = None,
        *,
        layer: int | None = None,
        k: int = codecs.NEURON_TOP_K,
        rank_by: str = "max_abs",
        **kwargs,
    ):
        adapter = trace.adapter
        self._bounds = saturation_bounds(adapter)
        self._stats: dict[tuple[int, str, int], LayerStats] = {}
        super().__init__(
            trace,
            selection,
            n_neurons=self.bounds(trace).get("n_neurons", 0),
            k=k,
            rank_by=rank_by,
            saturation_note=self._saturation_note(adapter),
            **kwargs,
        )
        if layer is not None:
            self.selection.layer = adapter.check_layer(layer)
        self._link(("layer", "neuron", "token"))
        # Follow the selection (not the mirrored traits): it holds a new layer and neuron together.
        self.selection.observe(self._layer_moved, ["layer"])
        self.selection.observe(self._neuron_moved, ["neuron"])
        self.observe(self._ranking_changed, ["rank_by", "k"])
        self._send_layer()

    @classmethod
    def applies(cls, trace: Trace) -> str | None:
        if not trace.record.neurons:
            return (
                f"a {trace.adapter.family!r} model has no single MLP whose input is its neuron activations (its experts "
                "are fused), so there are no neurons to show; name the module with parts=ModelParts(neurons=...)."
            )
        return None

    @classmethod
    def bounds(cls, trace: Trace) -> dict[str, int]:
        first = next(iter(trace.record.neurons.values()), None)
        return {} if first is None else {"n_neurons": int(first.shape[-1])}

    def show(self, trace: Trace) -> None:
        """Show another trace of the same text (e.g. after an edit)."""
        super().show(trace)
        self._stats.clear()
        self.neuron_of = [-1, -1]
        self._send_layer(force=True)

    def _layer(self, layer: int) -> torch.Tensor:
        return self.trace.record.neurons[layer][0].float()  # batch 0; float32 already, so no copy

    def _saturation_note(self, adapter: Adapter) -> str:
        if self._bounds is not None:
            bounds = ", ".join(f"{b:g}" for b in self._bounds)
            return f"saturated — within {SATURATION_MARGIN:.0%} of the activation's range of a bound ({bounds}) at every token"
        if adapter.parts.neurons and adapter.parts.neurons.endswith("down_proj"):
            return "saturated — n/a (a gated MLP's act(gate)·up has no bound)"
        return "saturated — n/a (the activation function has no upper bound)"

    # --- validation: a refused value loses nothing ----------------------------------------------
    @traitlets.validate("neuron")
    def _valid_neuron(self, proposal):
        value, n = proposal["value"], self.n_neurons
        if not -1 <= value < n:
            raise traitlets.TraitError(f"neuron {value} is out of range: this layer has neurons 0..{n - 1} (-1 for none).")
        return value

    @traitlets.validate("rank_by")
    def _valid_rank_by(self, proposal):
        if proposal["value"] not in RANKINGS:
            raise traitlets.TraitError(f"rank_by {proposal['value']!r} is not known: use one of {RANKINGS}.")
        return proposal["value"]

    @traitlets.validate("k")
    def _valid_k(self, proposal):
        value = proposal["value"]
        if not 1 <= value <= codecs.NEURON_TOP_K_MAX:
            raise traitlets.TraitError(f"k {value} is out of range: show 1..{codecs.NEURON_TOP_K_MAX} neurons.")
        return value

    # --- sending ---------------------------------------------------------------------------------
    def _layer_moved(self, change):
        self._send_layer()

    def _neuron_moved(self, change):
        self._send_neuron()

    def _ranking_changed(self, change):
        self._send_layer(force=True)

    def stats(self, layer: int | None = None) -> LayerStats:
        """The shown (or given) layer's statistics, as the view shows them (tensors on the model's device)."""
        layer = self.selection.layer if layer is None else self._adapter.check_layer(layer)
        key = (layer, self.rank_by, self.k)
        if key not in self._stats:
            self._stats = {key: layer_stats(self._layer(layer), self.k, self.rank_by, self._bounds)}
        return self._stats[key]

    def _send_layer(self, force: bool = False) -> None:
        layer = self.selection.layer
        if not force and self.shown_layer == layer and self.shown_rank_by == self.rank_by:
            return
        s = self.stats(layer)
        columns = self._layer(layer)[:, s.indices]
        pooled, block = heatmap_rows(columns, codecs.NEURON_HEATMAP_MAX_ROWS)
        q, scales = codecs.quantize_signed(pooled, dim=0)
        with self.hold_sync():
            self.top_indices = codecs.int32_bytes(s.indices)
            self.top_scores = codecs.float32_bytes(s.scores[s.indices])
            self.heatmap_rows = int(q.shape[0])
            self.heatmap_block = block
            self.heatmap_scales = codecs.float32_bytes(scales)
            self.heatmap = codecs.to_bytes(q)
            self.histogram = codecs.int32_bytes(s.counts)
            self.histogram_edges = codecs.float32_bytes(s.edges)
            self.dead_fraction = s.dead_fraction
            self.saturated_fraction = s.saturated_fraction
            self.outlier_fraction = s.outlier_fraction
            self.max_abs = s.max_abs
            self.shown_layer = layer
            self.shown_rank_by = self.rank_by
            self._send_neuron()

    def displayed_neuron(self) -> int:
        """The selected neuron, or the shown layer's top neuron when none is selected."""
        if self.selection.neuron >= 0:
            return self.selection.neuron
        return int(self.stats().indices[0])

    def _send_neuron(self) -> None:
        layer, neuron = self.selection.layer, self.displayed_neuron()
        if self.neuron_of == [layer, neuron] and self.neuron_values:
            return
        q, scale = codecs.quantize_signed(self._layer(layer)[:, neuron])
        with self.hold_sync():
            self.neuron_scale = float(scale)
            self.neuron_values = codecs.to_bytes(q)
            self.neuron_of = [layer, neuron]

    # --- for Python callers ----------------------------------------------------------------------
    def activations(self, layer: int | None = None) -> torch.Tensor:
        """The shown (or given) layer's activations, float32 [tokens, neurons], on the model's device."""
        layer = self.selection.layer if layer is None else self._adapter.check_layer(layer)
        return self._layer(layer)

    def shown_heatmap(self) -> torch.Tensor:
        """The heatmap as the browser decodes it: float32 [rows, k] on the host."""
        q = torch.frombuffer(bytearray(self.heatmap), dtype=torch.uint8).reshape(self.heatmap_rows, -1)
        scales = torch.frombuffer(bytearray(self.heatmap_scales), dtype=torch.float32)
        return codecs.dequantize_signed(q, scales)

    def payload_bytes(self) -> int:
        """Bytes this view has sent to the browser for its current state (binary traits and token text)."""
        names = ("top_indices", "top_scores", "heatmap", "heatmap_scales", "histogram", "histogram_edges", "neuron_values")
        return sum(len(getattr(self, n)) for n in names) + sum(len(t.encode()) + 3 for t in self.tokens)


def neurons(
    model,
    tokenizer=None,
    text: str | None = None,
    *,
    layer: int | None = None,
    k: int = codecs.NEURON_TOP_K,
    rank_by: str = "max_abs",
    selection: Selection | None = None,
    parts: ModelParts | None = None,
) -> NeuronView:
    """Show one layer's MLP neurons for ``text`` (or for a :class:`~nbinspect.Trace`: ``neurons(trace)``).

    ``rank_by``: "max_abs" or "variance" (switchable later, from Python or the view). Raises
    ``ValueError`` for empty or over-long text, for a mixture-of-experts model (no single MLP to read)
    and for a bad ``k`` or ``rank_by``; ``IndexError`` for a layer out of range. Pass ``selection`` to
    link this view with others.
    """
    if rank_by not in RANKINGS:
        raise ValueError(f"rank_by {rank_by!r} is not known: use one of {RANKINGS}.")
    if not isinstance(k, int) or not 1 <= k <= codecs.NEURON_TOP_K_MAX:
        raise ValueError(f"k {k!r} is out of range: show 1..{codecs.NEURON_TOP_K_MAX} neurons.")
    t = as_trace(model, tokenizer, text, parts=parts)
    if layer is not None:
        t.adapter.check_layer(layer)
    return NeuronView(t, selection, layer=layer, k=k, rank_by=rank_by)
