"""GradientView: where the gradient goes, layer by layer, and which input tokens it comes back to.

Two parts, one view:

- a chart (altair ``JupyterChart``, rendered offline from vl-convert's bundled vega) of the gradient
  norm per layer and per module type (attention, MLP, norm, embedding) on a log scale, with layers
  flagged whose total norm is more than ``FLAG_RATIO`` times below (vanishing) or above (exploding)
  the median layer's; clicking a point selects that layer in the shared :class:`Selection`;
- the input tokens coloured by attribution (gradient norm, gradient × input, integrated gradients,
  AttnLRP relevance, attention rollout and attention flow), switchable in the browser; the last three
  have a layer slider. Integrated gradients, relevance (its own backward under modified rules, in
  :mod:`nbinspect.relevance`) and flow are computed only when asked for, once per trace and layer.

The chart carries one number per layer and module type (a few hundred at most), the only floats
nbinspect ever sends as JSON; token scores travel as float32 bytes.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import altair as alt
import ipywidgets
import torch
import traitlets

from .. import codecs
from ..adapters import Adapter, ModelParts, UnsupportedModelError
from ..gradients import GradientNorms
from ..relevance import STRIP_METHODS, strip_unavailable
from ..trace import Trace
from ._bundle import bundle
from .base import View, as_trace
from .selection import Selection

#: A layer is flagged when its gradient norm is this many times below or above the median layer's.
FLAG_RATIO = 10.0
PART_ORDER = ["attention", "mlp", "norm", "embedding"]


def _part_of(module_name: str, module, attention_prefixes: tuple[str, ...]) -> str:
    if "norm" in type(module).__name__.lower():
        return "norm"
    if module_name.startswith(attention_prefixes):
        return "attention"
    return "mlp"


def parameter_parts(adapter: Adapter) -> dict[str, tuple[int, str]]:
    """Parameter name -> (layer, module type) of every parameter a row of `norms_by_part` counts (each
    tensor under its first name). A model's structure does not change under an edit: a view makes this once."""
    model = adapter.model
    owner = {}  # id(param) -> (layer, part)
    for i, block in enumerate(adapter.layers):
        first = lambda path: path.split(".")[0] + "."  # noqa: E731 - the block's child holding that part
        prefixes = tuple({first(path) for path in (adapter.parts.attention, adapter.parts.attention_output) if path})
        for name, module in block.named_modules():
            for p in module.parameters(recurse=False):
                owner.setdefault(id(p), (i, _part_of(name + ".", module, prefixes)))
    for module, layer, part in ((adapter.embedding(), -1, "embedding"), (adapter.final_norm(), adapter.n_layers, "norm")):
        if module is not None:
            for p in module.parameters():
                owner.setdefault(id(p), (layer, part))
    return {name: owner[id(p)] for name, p in model.named_parameters() if id(p) in owner}  # tied: first name


def norms_by_part(adapter: Adapter, norms: GradientNorms, parts: dict[str, tuple[int, str]] | None = None) -> list[dict]:
    """One row per (layer, module type): ``{"layer", "part", "norm"}``; the embedding is layer -1,
    the final norm layer ``n_layers``. Norms of a type combine as sqrt(sum of squares). ``parts``:
    `parameter_parts` of this adapter, when the caller keeps it."""
    parts = parameter_parts(adapter) if parts is None else parts
    squares: dict[tuple[int, str], float] = {}
    for name, key in parts.items():
        if name in norms.parameters:
            squares[key] = squares.get(key, 0.0) + float(norms.parameters[name]) ** 2
    return [{"layer": layer, "part": part, "norm": value**0.5} for (layer, part), value in sorted(squares.items())]


def flag_layers(layer_norms: list[float]) -> dict[str, list[int]]:
    """Layers whose norm is ``FLAG_RATIO`` times below or above the median layer norm."""
    positive = [v for v in layer_norms if v > 0]
    if not positive:
        return {"vanishing": list(range(len(layer_norms))), "exploding": []}
    median = statistics.median(positive)
    return {
        "vanishing": [i for i, v in enumerate(layer_norms) if v < median / FLAG_RATIO],
        "exploding": [i for i, v in enumerate(layer_norms) if v > median * FLAG_RATIO],
    }


def norm_chart_template(n_layers: int) -> alt.LayerChart:
    """The chart without its numbers: three named datasets (``norms``, ``flags``, ``layers``) that
    `norm_chart_spec` fills in. Building and validating an altair chart costs ~0.3 s, so a slider edit
    swaps the data of a spec made once per depth instead of building a new chart."""
    alt.JupyterChart.enable_offline()  # vega from vl-convert: nothing is fetched at render time
    x = alt.X("layer:Q", title="layer (−1: embedding)", scale=alt.Scale(domain=[-1.5, n_layers + 0.5], nice=False),
              axis=alt.Axis(tickMinStep=1))
    y = alt.Y("norm:Q", title="gradient norm (log scale)", scale=alt.Scale(type="log"))
    color = alt.Color("part:N", title="module", scale=alt.Scale(domain=PART_ORDER))
    base = alt.Chart(alt.Data(name="norms")).encode(x=x, y=y, color=color)
    lines = base.mark_line(opacity=0.7)
    points = base.mark_circle(size=60)

    # Flag colours are fixed values, not a second colour scale, so the module legend stays the only one;
    # the label at the top of each rule says which flag it is. No flags: an empty dataset, nothing drawn.
    flag_colour = alt.condition(alt.datum.flag == "exploding", alt.value("#d62728"), alt.value("#9467bd"))
    flags_base = alt.Chart(alt.Data(name="flags")).encode(x="layer:Q", color=flag_colour)
    flag_rules = flags_base.mark_rule(strokeDash=[4, 3], strokeWidth=2, clip=True) + flags_base.mark_text(
        y=-6, fontSize=11, clip=False
    ).transform_calculate(mark="datum.flag == 'exploding' ? '▲' : '▼'").encode(text="mark:N")
    # One column per layer, full height: a click anywhere in it picks the layer (no need to hit a
    # point), its tooltip lists the layer's norms, and the selected layer's column is shaded.
    pick = alt.selection_point(name="layer_pick", fields=["layer"], on="click", clear=False)
    current = alt.param(name="current", value=0)
    band = (
        alt.Chart(alt.Data(name="layers"))
        .transform_calculate(lo="datum.layer - 0.5", hi="datum.layer + 0.5")
        .encode(x=alt.X("lo:Q"), x2="hi:Q")
    )
    shade = band.mark_rect(color="#ff7f0e", opacity=0.18).transform_filter(alt.datum.layer == current).add_params(current)
    click = band.mark_rect(color="#000", opacity=0.001, cursor="pointer").encode(
        tooltip=[alt.Tooltip("layer:Q", title="layer")]
        + [alt.Tooltip(f"{p}:Q", title=p, format=".2e") for p in ("attention", "mlp", "norm")]
    ).add_params(pick)
    return alt.layer(shade, flag_rules, lines, points, click).properties(width=560, height=240)


# n_layers -> (the template chart, its Vega-Lite spec), made once per depth; read-only (specs share parts).
_templates: dict[int, tuple[alt.LayerChart, dict]] = {}


def _template(n_layers: int) -> tuple[alt.LayerChart, dict]:
    if n_layers not in _templates:
        chart = norm_chart_template(n_layers)
        _templates[n_layers] = chart, chart.to_dict()
    return _templates[n_layers]


def norm_chart_data(rows: list[dict], flags: dict[str, list[int]], n_layers: int) -> dict[str, list[dict]]:
    """The chart's three named datasets for these norms and flags."""
    by_layer: dict[int, dict] = {i: {"layer": i} for i in range(n_layers)}
    for r in rows:
        if 0 <= r["layer"] < n_layers:
            by_layer[r["layer"]][r["part"]] = r["norm"]
    return {
        "norms": [r for r in rows if r["norm"] > 0],  # log scale: no zeros
        "flags": [{"layer": i, "flag": kind} for kind in ("vanishing", "exploding") for i in flags[kind]],
        "layers": list(by_layer.values()),
    }


#: The chart's title param (see `norm_chart_spec`).
TITLE_PARAM = "chart_title"


def norm_chart_spec(rows: list[dict], flags: dict[str, list[int]], n_layers: int, title: str) -> dict:
    """The Vega-Lite spec of the norms chart: the template's spec with this trace's data and title. The
    title is a param (``chart_title``), so that a shown chart can be given a new one like new data."""
    template = _template(n_layers)[1]
    subtitle = f"▼ vanishing / ▲ exploding: a layer more than ×{FLAG_RATIO:g} below / above the median layer · click a layer to select it"
    return {
        **template,
        # re-measured on every render: new data or a new title (their axis labels, its length) resize it
        "autosize": {"type": "pad", "resize": True},
        "params": [*template.get("params", []), {"name": TITLE_PARAM, "value": title}],
        "title": {"text": {"expr": TITLE_PARAM}, "subtitle": subtitle},
        "datasets": norm_chart_data(rows, flags, n_layers),
    }


def chart_updates(spec: dict) -> list[dict]:
    """What a shown chart needs to show ``spec`` when only its data and title differ: updates of its named
    datasets and title signal, in the form altair's JupyterChart applies (its ``_py_to_js_updates``)."""
    title = next(p["value"] for p in spec["params"] if p["name"] == TITLE_PARAM)
    return [{"namespace": "data", "name": name, "scope": [], "value": values} for name, values in spec["datasets"].items()] + [
        {"namespace": "signal", "name": TITLE_PARAM, "scope": [], "value": title}]


#: Attribution methods the strip offers: name -> (label, function of a Trace returning float32 [tokens]).
#: Multi-pass methods (integrated gradients, relevance, flow) run only when picked; others plug in here.
#: Methods in ``LAYERED`` take ``layer=`` too (see ``GradientView.strip_layer``).
ATTRIBUTIONS: dict[str, tuple[str, Callable[..., torch.Tensor]]] = {
    "grad_norm": ("gradient norm", lambda t: t.attribution("grad_norm")),
    "grad_x_input": ("gradient × input", lambda t: t.attribution("grad_x_input")),
    "integrated_gradients": ("integrated gradients", lambda t: t.attribution("integrated_gradients")),
    "lrp": ("AttnLRP relevance", STRIP_METHODS["lrp"]),
    "rollout": ("attention rollout", STRIP_METHODS["rollout"]),
    "flow": ("attention flow", STRIP_METHODS["flow"]),
}
#: Methods with a value per layer: name -> the lowest layer the slider offers (-1: at the input
#: embeddings, relevance's default; rollout and flow start after block 0 and default to the last block).
LAYERED = {"lrp": -1, "rollout": 0, "flow": 0}
#: Signed methods (red pushes the target up, blue down); the others are shares, drawn white → red.
UNSIGNED = {"grad_norm", "rollout", "flow"}


def _default_layer(method: str, n_layers: int) -> int:
    return -1 if method == "lrp" else n_layers - 1


class GradientView(View):
    """Gradient norms across depth (altair chart, a child widget) and per-token attribution (the strip),
    linked by a Selection; ``show`` follows an edited trace (its backward re-ran)."""

    _esm = bundle("gradient_view")
    title = "Gradients"
    needs_gradients = True

    #: altair's JupyterChart of the norms per layer and module type, drawn by this view's ESM.
    chart = traitlets.Instance(alt.JupyterChart, allow_none=True).tag(sync=True, **ipywidgets.widget_serialization)
    #: name -> label of the attribution methods offered (see ``ATTRIBUTIONS``).
    methods = traitlets.Dict().tag(sync=True)
    #: name -> why that method cannot explain this trace ("not for this model: ..."); absent: it can.
    unavailable = traitlets.Dict().tag(sync=True)
    #: name -> [lowest, highest] layer of the methods with a value per layer (the layer slider's range).
    layered = traitlets.Dict().tag(sync=True)
    #: The method shown; switching to integrated gradients, relevance or flow computes them on the spot.
    method = traitlets.Unicode("grad_x_input").tag(sync=True)
    #: Layer slider of the layered methods: -1 at the input embeddings (relevance only), ``i`` after
    #: block ``i`` (relevance of the residual stream there; rollout / flow through blocks 0..i);
    #: ``None``: the method's default (relevance at the input, rollout / flow through every block).
    strip_layer = traitlets.Int(None, allow_none=True).tag(sync=True)
    #: float32 [tokens] scores of ``method`` (signed for gradient × input, integrated gradients, relevance).
    scores = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    scores_of = traitlets.Unicode("").tag(sync=True)
    #: The layer ``scores`` are of (a layered method), else ``None``.
    scores_layer = traitlets.Int(None, allow_none=True).tag(sync=True)
    #: Why ``method`` shows no scores for this trace (then ``scores`` is empty), else "".
    message = traitlets.Unicode("").tag(sync=True)
    target = traitlets.Unicode("").tag(sync=True)
    #: Position whose state rollout / flow trace back (they do not depend on the target token).
    position = traitlets.Int(-1).tag(sync=True)
    flags = traitlets.Dict().tag(sync=True)
    flag_ratio = traitlets.Float(FLAG_RATIO).tag(sync=True)
    busy = traitlets.Bool(False).tag(sync=True)

    def __init__(self, trace: Trace, selection: Selection | None = None, **kwargs):
        n_layers = trace.adapter.n_layers
        super().__init__(trace, selection, methods={k: label for k, (label, _) in ATTRIBUTIONS.items()},
                         layered={k: [low, n_layers - 1] for k, low in LAYERED.items()}, **kwargs)
        self._parts = parameter_parts(trace.adapter)  # the model's structure: the same for every edit
        self.chart = alt.JupyterChart(_template(n_layers)[0], embed_options={"renderer": "canvas", "actions": False})
        self.chart.spec = self._chart_spec(trace)
        self.chart.selections.observe(self._chart_clicked, ["layer_pick"])
        self.selection.observe(self._layer_moved, ["layer"])
        self.observe(self._method_changed, ["method", "strip_layer"])
        self.chart.params.current = self.selection.layer
        self._describe(trace)
        self._send_scores()

    @classmethod
    def applies(cls, trace: Trace) -> str | None:
        if trace.gradient_norms is None:
            return "this trace was made without gradients (gradients=False), so there are no gradients to show."
        return None

    @traitlets.validate("method")
    def _valid_method(self, proposal):
        if proposal["value"] not in ATTRIBUTIONS:
            raise traitlets.TraitError(f"unknown attribution method {proposal['value']!r}; choose one of {', '.join(ATTRIBUTIONS)}.")
        return proposal["value"]

    @traitlets.validate("strip_layer")
    def _valid_layer(self, proposal):
        value, n_layers = proposal["value"], self._adapter.n_layers
        if value is not None and not -1 <= value < n_layers:
            raise traitlets.TraitError(f"strip_layer {value} is out of range: -1 (the input) or a layer 0..{n_layers - 1}.")
        return value

    def _describe(self, trace: Trace) -> None:
        self.unavailable = {m: why for m in LAYERED if (why := strip_unavailable(trace, m)) is not None}
        self.position = trace.target.position

    def _chart_spec(self, trace: Trace) -> dict:
        adapter, norms = trace.adapter, trace.gradient_norms
        codecs.check_finite(norms.target, "the gradient target (loss or logit)")
        self.rows = norms_by_part(adapter, norms, self._parts)
        flags = flag_layers([float(v) for v in norms.layers])
        self.flags, self.target = flags, trace.target.label
        edited = f" (edited: {', '.join(map(repr, trace.edits))})" if trace.edits else ""
        return norm_chart_spec(self.rows, flags, adapter.n_layers, f"Gradient of the {trace.target.label}, per layer{edited}")

    def show(self, trace: Trace) -> None:
        """Show another trace of the same text (an edit re-ran its backward): new norms and scores."""
        super().show(trace)
        # The same chart with new data and title, sent as updates that the shown chart applies to its
        # datasets and signal: a new spec would make altair embed the chart again (vega-lite compile,
        # vega parse and first render: 150-300 ms of the browser's main thread after every slider move).
        # Its params and selections (and our listener on them) stay.
        self.chart._py_to_js_updates = chart_updates(self._chart_spec(trace))
        self.chart.params.current = self.selection.layer
        self._describe(trace)
        self.scores_of = ""
        self._send_scores()

    @property
    def export_note(self) -> str:
        """What a saved page (no kernel) cannot do: compute another method or layer."""
        layer = self.scores_layer
        where = "" if layer is None else " at the input embeddings" if layer < 0 else f" at block {layer}"
        shown = ATTRIBUTIONS[self.method][0] + where
        return f"The attribution strip needs the Python kernel to switch method or layer; this saved page shows {shown}."

    def layer_of(self, method: str | None = None) -> int | None:
        """The layer ``method`` (default: the one shown) is shown at: ``strip_layer`` within the
        method's range, else its default; ``None`` for methods without layers."""
        method = method or self.method
        if method not in LAYERED:
            return None
        n_layers = self._adapter.n_layers
        if self.strip_layer is None:
            return _default_layer(method, n_layers)
        return max(LAYERED[method], min(n_layers - 1, self.strip_layer))

    def attribution(self, method: str | None = None, layer: int | None = None) -> torch.Tensor:
        """Attribution per token for ``method`` (default: the one shown), float32 on the host; the layered
        methods at ``layer`` (default: the slider's, see ``layer_of``). Raises when the method cannot
        explain this trace: ``ValueError`` with the sentence ``unavailable`` holds, or what the method
        itself raised."""
        method = method or self.method
        if method not in ATTRIBUTIONS:
            raise ValueError(f"unknown attribution method {method!r}; choose one of {', '.join(ATTRIBUTIONS)}.")
        fn = ATTRIBUTIONS[method][1]
        if method not in LAYERED:
            return fn(self.trace)
        layer = self.layer_of(method) if layer is None else layer
        if why := self.unavailable.get(method):
            raise ValueError(why)
        # Cached per trace, method and layer: flipping back is instant; a new trace (an edit) recomputes.
        return self.trace.cached(("strip", method, layer), lambda: torch.as_tensor(
            fn(self.trace, layer=None if layer == -1 else layer), dtype=torch.float32))

    def _send_scores(self) -> None:
        method = self.method
        layer = self.layer_of(method)
        self.busy = True
        try:
            try:
                values, message = self.attribution(method, layer), ""
            except (UnsupportedModelError, ValueError, ImportError) as e:
                if method not in LAYERED:
                    raise
                values, message = None, str(e)  # the strip says why; the view keeps working
            with self.hold_sync():
                self.scores = b"" if values is None else codecs.float32_bytes(values)
                self.message = message
                self.scores_layer = layer
                self.scores_of = method
        finally:
            self.busy = False

    def _method_changed(self, change) -> None:
        self._send_scores()

    def _chart_clicked(self, change) -> None:
        picked = change["new"].value if change["new"] is not None else None
        layers = [p.get("layer") for p in picked or [] if isinstance(p, dict)]
        if layers and layers[0] is not None and 0 <= int(layers[0]) < self._adapter.n_layers:
            self.selection.layer = int(layers[0])

    def _layer_moved(self, change) -> None:
        self.chart.params.current = change["new"]

    def payload_bytes(self) -> int:
        return len(self.scores) + sum(len(t.encode()) + 3 for t in self.tokens)


def gradient_flow(model, tokenizer=None, text: str | None = None, *, target=None, foil=None, position: int = -1,
                  selection: Selection | None = None, parts: ModelParts | None = None) -> GradientView:
    """Show gradient norms across depth and per-token attribution for ``text`` (or a Trace with gradients).

    ``target``: ``None`` (the predicted next token; for encoders the norm of the final state), a token
    id or one token's text, ``"loss"``, or a function of the model output returning a scalar; ``foil``
    makes it the difference of two logits. The model's training flag, ``requires_grad`` flags and
    ``.grad`` fields are left as they were.
    """
    if isinstance(model, Trace) or isinstance(getattr(model, "trace", None), Trace):
        t = as_trace(model, tokenizer, text, gradients=True)
        if (target, foil, position) != (None, None, -1):
            t = t.retarget(target, foil, position)
    else:
        t = as_trace(model, tokenizer, text, gradients=True, parts=parts, target=target, foil=foil, position=position)
    return GradientView(t, selection)

