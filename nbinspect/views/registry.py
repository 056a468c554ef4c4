"""The one table of views. The dashboard lays out the views named in ``DASHBOARD`` (or any names of
``VIEWS`` it is given, ``views="all"`` for every one) that apply to a trace.

Each entry is a :class:`~nbinspect.views.base.View` (one Python class, one JS module of the same name)
built as ``cls(trace, selection)``. Order is the order on screen. A view whose ``applies(trace)`` returns
a sentence is left out of the dashboard and the sentence is shown in its place.
"""

from __future__ import annotations

from .activation_view import ActivationView
from .attention_mechanics_view import AttentionMechanicsView
from .attention_view import AttentionView
from .base import View
from .block_writes_view import BlockWritesView
from .geometry_view import GeometryView
from .gradient_view import GradientView
from .logit_attribution_view import LogitAttributionView
from .logit_lens_view import LogitLensView
from .neuron_view import NeuronView
from .parameters_view import ParametersView
from .router_view import RouterView

VIEWS: dict[str, type[View]] = {
    "attention": AttentionView,
    "neurons": NeuronView,
    "gradients": GradientView,
    "logit_lens": LogitLensView,
    "logit_attribution": LogitAttributionView,
    "block_writes": BlockWritesView,
    "router": RouterView,
    "attention_mechanics": AttentionMechanicsView,
    "activation": ActivationView,
    "geometry": GeometryView,
    "parameters": ParametersView,
}

#: What ``nbinspect.inspect`` shows by default: the views that cost little beyond the trace itself. The
#: logit lens (one unembedding per layer and position: several forwards' worth of work), the anatomy
#: views and the geometry (a projection per layer) are one ``views=[...]`` away.
DASHBOARD: tuple[str, ...] = ("attention", "neurons", "gradients", "logit_attribution", "block_writes", "router")
