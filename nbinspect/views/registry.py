"""The one table of views: the dashboard lays out every view listed here that applies to a trace.

Each entry is a :class:`~nbinspect.views.base.View` subclass (one Python class, one JS module of the same
name). Order is the order on screen. A view whose ``applies(trace)`` returns a sentence is left out of the
dashboard and the sentence is shown in its place.
"""

from __future__ import annotations

from .attention_view import AttentionView
from .base import View
from .gradient_view import GradientView
from .neuron_view import NeuronView

VIEWS: dict[str, type[View]] = {
    "attention": AttentionView,
    "neurons": NeuronView,
    "gradients": GradientView,
}
