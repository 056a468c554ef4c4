"""nbinspect: live, linked Jupyter widgets that show what happens inside a transformer while it runs."""

from .adapters import ModelParts, UnsupportedModelError
from .capture import HeadOutputs, Record, Request, Residual, Routing, capture, run
from .gradients import GradientNorms, gradient_norms, saliency
from .loading import load
from .magics import load_ipython_extension
from .monitor import Monitor, TrainerCallback, monitor
from .perturb import AblateHead, AblateNeuron, AddNoise, Edit, EditError, ScaleHead, ScaleLayer, ScaleNeuron, perturb
from .patching import PatchResult, patch
from .recompute import Recompute
from .sweep import SweepResult, head_sweep
from .views.attention_view import AttentionView, attention
from .views.dashboard import Dashboard, inspect
from .views.gradient_view import GradientView, gradient_flow
from .views.neuron_view import NeuronView, neurons
from .views.selection import Selection
from .views.perturb_panel import PerturbPanel, PredictionView, sliders

__all__ = [
    "AttentionView",
    "attention",
    "Selection",
    "NeuronView",
    "neurons",
    "Dashboard",
    "inspect",
    "GradientView",
    "gradient_flow",
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
    "load_ipython_extension",
    "run",
    "saliency",
    "AblateHead",
    "AblateNeuron",
    "AddNoise",
    "Edit",
    "EditError",
    "PerturbPanel",
    "PredictionView",
    "Recompute",
    "ScaleHead",
    "ScaleLayer",
    "ScaleNeuron",
    "perturb",
    "sliders",
    "PatchResult",
    "patch",
    "Monitor",
    "TrainerCallback",
    "monitor",
    "SweepResult",
    "head_sweep",
]
__version__ = "0.1.0"
