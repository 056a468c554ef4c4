"""Dashboard: every registered view of one trace, and the perturbation sliders, linked.

The dashboard is a layout over :data:`nbinspect.views.registry.VIEWS`: it makes one
:class:`~nbinspect.Trace` (one forward, one backward), builds each view that applies to it, and draws them
with its own ESM by widget reference, so it is one anywidget model that every anywidget host renders.
All views share one :class:`Selection`: a click or hover in any of them refocuses the others in the
browser at once, and Python reads or sets ``dashboard.selection``. The sliders follow the selection, so
the head or neuron picked in a view is the one the sliders scale, and every slider edit moves every view
to the edited trace.
"""

from __future__ import annotations

from collections.abc import Iterable

import anywidget
import ipywidgets
import traitlets

from .. import codecs
from ..adapters import ModelParts, UnsupportedModelError
from ..export import Exportable
from ..trace import Trace
from ._bundle import bundle
from .base import View, as_trace
from .perturb_panel import PerturbPanel
from .registry import DASHBOARD, VIEWS
from .selection import Selection


class Dashboard(Exportable, anywidget.AnyWidget):
    """The linked views of one trace. ``dashboard.views`` maps each registered name to its view (also
    reachable as ``dashboard.<name>``, e.g. ``dashboard.attention``); ``skipped`` maps the names of views
    that do not apply to the reason; ``perturb`` is the sliders panel (``None`` with ``perturb=False``)."""

    _esm = bundle("dashboard_view")

    selection = traitlets.Instance(Selection).tag(sync=True, **ipywidgets.widget_serialization)
    #: The views drawn, in registry order, by reference (each stays its own widget model).
    shown = traitlets.List(traitlets.Instance(ipywidgets.Widget)).tag(sync=True, **ipywidgets.widget_serialization)
    titles = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: [title, why it does not apply] of registered views left out for this model.
    notes = traitlets.List(traitlets.List(traitlets.Unicode())).tag(sync=True)
    panel = traitlets.Instance(PerturbPanel, allow_none=True).tag(sync=True, **ipywidgets.widget_serialization)
    painted = traitlets.Int(0).tag(sync=True)

    def __init__(self, trace: Trace, *, perturb: bool = True, views: Iterable[str] | str | None = None,
                 selection: Selection | None = None, threaded: bool = True):
        names = list(DASHBOARD) if views is None else list(VIEWS) if views == "all" else [views] if isinstance(views, str) else list(views)
        unknown = [n for n in names if n not in VIEWS]
        if unknown:
            raise ValueError(f"unknown view {unknown[0]!r}; registered views: {', '.join(VIEWS)}.")
        selection = selection or Selection()
        self.views: dict[str, View] = {}
        self.skipped: dict[str, str] = {}
        for name in names:
            cls = VIEWS[name]
            reason = cls.applies(trace)
            if reason is None:
                try:
                    self.views[name] = cls(trace, selection)
                except (ValueError, UnsupportedModelError) as e:
                    # A view that finds this architecture outside what it can explain (e.g. logit attribution
                    # on blocks whose writes do not add up) says why; the other views still work.
                    reason = str(e)
            if reason is not None:
                self.skipped[name] = reason
        self.perturb = PerturbPanel(trace, list(self.views.values()), show_views=False, threaded=threaded) if perturb else None
        super().__init__(
            selection=selection,
            shown=list(self.views.values()),
            titles=[getattr(VIEWS[n], "title", "") or n for n in self.views],
            notes=[[getattr(VIEWS[n], "title", "") or n, why] for n, why in self.skipped.items()],
            panel=self.perturb,
        )
        if self.perturb is not None:
            self._follow_selection()
        # A target picked in a view (a click in a top-k list) retargets every attribution.
        for view in self.views.values():
            if view.has_trait("target_token"):
                view.observe(self._picked_target, ["target_token", "foil_token"])

    def __getattr__(self, name):
        views = self.__dict__.get("views")
        if views is not None and name in VIEWS:
            return views.get(name)  # None when that view does not apply to this model
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def trace(self) -> Trace:
        """The trace the views show now (the edited one while sliders are off rest)."""
        return self.perturb.latest if self.perturb is not None else next(iter(self.views.values())).trace

    @property
    def target(self):
        return self.trace.target

    @target.setter
    def target(self, value) -> None:
        self.retarget(value)

    def retarget(self, target=None, foil=None, position: int | None = None) -> Trace:
        """Point every attribution at another target (a token's text or id, or ``target`` − ``foil``).

        Reuses the forward; runs one backward. Returns the new trace."""
        new = self.trace.retarget(target, foil, position)
        if self.perturb is not None:
            self.perturb.latest = new
        for view in self.views.values():
            view.show(new)
        return new

    def _picked_target(self, change) -> None:
        view = change["owner"]
        if getattr(view, "_showing", False) or getattr(self, "_retargeting", False):
            return  # the view is being shown a trace, not picking a target
        self._retargeting = True
        try:
            token, foil = view.target_token, view.foil_token
            self.retarget(None if token < 0 else token, None if foil < 0 else foil)
        finally:
            self._retargeting = False

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

    def _follow_selection(self) -> None:
        """The head and neuron picked in a view become the ones the sliders act on."""
        panel, sel = self.perturb, self.selection

        def moved(change=None):
            with panel.hold_trait_notifications():
                panel.head_layer = sel.layer
                panel.head = sel.head
                if sel.neuron >= 0 and panel.n_neurons:
                    panel.neuron_layer = sel.layer
                    panel.neuron = sel.neuron

        sel.observe(moved, ["layer", "head", "neuron"])
        moved()


def inspect(model, tokenizer=None, text: str | None = None, *, perturb: bool = True, views: Iterable[str] | str | None = None,
            target=None, foil=None, position: int = -1, parts: ModelParts | None = None) -> Dashboard:
    """Every registered view of ``text`` (or of a :class:`~nbinspect.Trace`) and perturbation sliders,
    linked by one Selection, from one forward and one backward.

    ``target``/``foil``/``position`` say what gradients and attributions explain (see
    :func:`nbinspect.trace`); ``views`` picks registered views by name (default:
    ``nbinspect.views.registry.DASHBOARD``; ``"all"`` for every registered view), each shown where it applies.
    """
    if isinstance(model, Trace) or isinstance(getattr(model, "trace", None), Trace):
        t = as_trace(model, tokenizer, text, gradients=True)
    else:
        t = as_trace(model, tokenizer, text, gradients=True, parts=parts, target=target, foil=foil, position=position)
    return Dashboard(t, perturb=perturb, views=views)
