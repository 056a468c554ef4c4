"""nbinspect: live, linked Jupyter widgets that show what happens inside a transformer while it runs."""

from .adapters import ModelParts, UnsupportedModelError
from .capture import HeadOutputs, Record, Request, Residual, Routing, capture, run
from .gradients import GradientNorms, gradient_norms, saliency
from .loading import load
from .views.attention_view import AttentionView, attention

__all__ = [
    "AttentionView",
    "attention",
    "GradientNorms",
    "HeadOutputs",
    "ModelParts",
    "Record",
    "Request",
    "Residual",
    "Routing",
    "UnsupportedModelError",
    "capture",
    "gradient_norms",
    "load",
    "run",
    "saliency",
]
__version__ = "0.1.0"
