"""CompareView: two checkpoints of one architecture, ‖A − B‖ / ‖A‖ per parameter as a layers × kind heatmap,
plus the tensors outside the layers and the pieces that changed most. Clicking a cell selects its layer.

With a tokenizer and a text, ``compare`` also puts both models' attention and neuron views side by side
on that text, all linked through one Selection, so a layer picked in the heatmap shows both models there.
"""

from __future__ import annotations

import ipywidgets
import torch
import traitlets

from .. import codecs
from ..compare import Comparison, compare_weights
from ._bundle import bundle
from .selection import LinkedView, Selection


class CompareView(LinkedView):
    """Relative change per kind and layer between two checkpoints."""

    _esm = bundle("compare_view")

    names = traitlets.List(traitlets.Unicode(), default_value=["A", "B"]).tag(sync=True)
    kinds = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: float32 [kinds, layers] relative change (NaN: no such tensor in that layer).
    grid = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: Kinds outside the layers (embeddings, final norm, head) and their float32 relative change.
    outside_kinds = traitlets.List(traitlets.Unicode()).tag(sync=True)
    outside = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: The pieces that changed most: names and float32 relative changes.
    top_names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    top_values = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    identical = traitlets.Bool(False).tag(sync=True)
    #: Colour scale on log10 of the change (changes span orders of magnitude between kinds).
    log_scale = traitlets.Bool(True).tag(sync=True)

    def __init__(self, comparison: Comparison, names=("A", "B"), selection: Selection | None = None, **kwargs):
        self._comparison = c = comparison
        self._adapter = c.inventory.adapter
        selection = (selection or Selection()).bound_to(n_layers=self._adapter.n_layers)
        top = c.largest(8)
        super().__init__(
            tokens=[], n_layers=self._adapter.n_layers, selection=selection, names=list(names), kinds=c.kinds,
            grid=codecs.float32_bytes(c.grid), outside_kinds=list(c.outside),
            outside=codecs.float32_bytes(torch.tensor(list(c.outside.values()), dtype=torch.float32)),
            top_names=[n for n, _ in top], top_values=codecs.float32_bytes(torch.tensor([v for _, v in top])),
            identical=c.identical, **kwargs,
        )
        self._link(("layer",))
        self.side_by_side: list = []

    @property
    def comparison(self) -> Comparison:
        return self._comparison

    def panel(self) -> ipywidgets.Widget:
        """This heatmap above the side-by-side views (when ``compare`` was given a text)."""
        if not self.side_by_side:
            return self
        rows = [ipywidgets.HBox([a, b]) for a, b in self.side_by_side]
        return ipywidgets.VBox([self, *rows])

    def _repr_mimebundle_(self, **kwargs):
        if self.side_by_side:
            return self.panel()._repr_mimebundle_(**kwargs)
        return super()._repr_mimebundle_(**kwargs)

    def payload_bytes(self) -> int:
        return len(self.grid) + len(self.outside) + len(self.top_values)


def compare(model_a, model_b, tokenizer=None, text: str | None = None, *, names=("A", "B"),
            views=("attention", "neurons"), selection: Selection | None = None, parts=None) -> CompareView:
    """Compare two checkpoints of one architecture: ‖A − B‖ / ‖A‖ per parameter, by layer and kind.

    Given ``tokenizer`` and ``text``, also shows each model's ``views`` ("attention", "neurons") side by side
    on the text, linked through one Selection. Raises ``ArchitectureMismatch`` naming the first difference
    when the models are not of one architecture.
    """
    comparison = compare_weights(model_a, model_b, parts)
    selection = selection or Selection()
    view = CompareView(comparison, names=names, selection=selection)
    if text is not None:
        if tokenizer is None:
            raise TypeError("compare(..., text=...) needs the tokenizer too, to show both models on the text.")
        from .attention_view import attention
        from .neuron_view import neurons

        builders = {"attention": attention, "neurons": neurons}
        unknown = [v for v in views if v not in builders]
        if unknown:
            raise ValueError(f"unknown views {unknown}: choose from {sorted(builders)}.")
        for name in views:
            build = builders[name]
            view.side_by_side.append(
                (build(model_a, tokenizer, text, selection=selection, parts=parts),
                 build(model_b, tokenizer, text, selection=selection, parts=parts))
            )
    return view
