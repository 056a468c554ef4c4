"""Dashboard: attention, neurons, gradients and the perturbation sliders for one text, linked.

All views share one :class:`Selection`: a click or hover in any of them refocuses the others in the
browser at once, and Python reads or sets ``dashboard.selection``. The sliders follow the selection
too, so the head or neuron picked in a view is the one the sliders scale.
"""

from __future__ import annotations

import ipywidgets

from .. import codecs
from ..adapters import Adapter, ModelParts
from ..inputs import encode
from .attention_view import attention
from .gradient_view import gradient_flow
from .perturb_panel import sliders
from .selection import Selection


class Dashboard(ipywidgets.VBox):
    """The linked views of one model and text. Attributes: ``selection``, ``attention``,
    ``neurons`` (``None`` for models without a single MLP down projection), ``gradients``,
    ``perturb`` (``None`` when built with ``perturb=False``)."""

    def __init__(self, model, tokenizer, text: str, *, perturb: bool = True, parts: ModelParts | None = None):
        adapter = Adapter.of(model, parts)
        encode(tokenizer, text, adapter)  # refuse bad text before building anything
        self.selection = Selection()
        common = dict(selection=self.selection, parts=parts)
        self.attention = attention(model, tokenizer, text, **common)
        self.neurons = None
        if adapter.parts.neurons is not None:
            from .neuron_view import neurons

            self.neurons = neurons(model, tokenizer, text, **common)
        self.gradients = gradient_flow(model, tokenizer, text, **common)
        self.perturb = None
        children = [self._heading("Attention"), self.attention]
        if self.neurons is not None:
            children += [self._heading("MLP neurons"), self.neurons]
        children += [self._heading("Gradients"), self.gradients]
        if perturb:
            shown = [v for v in (self.attention, self.neurons) if v is not None]
            self.perturb = sliders(model, tokenizer, text, views=shown, show_views=False, parts=parts)
            self._follow_selection()
            children += [self._heading("Perturb and recompute"), self.perturb]
        super().__init__(children=children)

    def widgets(self) -> list[ipywidgets.Widget]:
        """Every widget model the dashboard puts in the browser (views, chart, sliders, selection)."""
        found: dict[str, ipywidgets.Widget] = {}

        def walk(w):
            if not isinstance(w, ipywidgets.Widget) or w.model_id in found:
                return
            found[w.model_id] = w
            for name in w.keys:
                value = getattr(w, name, None)
                for child in value if isinstance(value, (list, tuple)) else [value]:
                    walk(child)

        walk(self)
        return list(found.values())

    def payload_bytes(self) -> tuple[int, int]:
        """(data bytes, code bytes) the browser receives to show the dashboard in its current state."""
        sizes = [codecs.sent_bytes(w) for w in self.widgets()]
        return sum(d for d, _ in sizes), sum(c for _, c in sizes)

    @staticmethod
    def _heading(text: str) -> ipywidgets.Label:
        # Label, not HTML: nothing user-provided is ever parsed as markup.
        return ipywidgets.Label(text, style={"font_weight": "bold", "font_size": "14px"})

    def _follow_selection(self) -> None:
        """The head and neuron picked in a view become the ones the sliders act on."""
        panel, sel = self.perturb, self.selection

        def moved(change=None):
            with panel.hold_trait_notifications():
                panel.head_layer.value = sel.layer
                panel.head.value = sel.head
                if sel.neuron >= 0 and not panel.neuron.disabled:
                    panel.neuron_layer.value = sel.layer
                    panel.neuron.value = sel.neuron

        sel.observe(moved, ["layer", "head", "neuron"])
        moved()


def inspect(model, tokenizer, text: str, *, perturb: bool = True, parts: ModelParts | None = None) -> Dashboard:
    """Attention, neurons, gradients and perturbation sliders for ``text``, linked by one Selection."""
    return Dashboard(model, tokenizer, text, perturb=perturb, parts=parts)
