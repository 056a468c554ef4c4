"""nbinspect: live, linked Jupyter widgets that show what happens inside a transformer while it runs."""

from .adapters import ModelParts, UnsupportedModelError
from .capture import HeadOutputs, Record, Request, Residual, Routing, capture, run
from .gradients import GradientNorms, gradient_norms, saliency
from .export import save, to_png, to_svg
from .loading import load
from .magics import load_ipython_extension
from .monitor import Monitor, TrainerCallback, monitor
from .generation import generate
from .views.generation_view import GenerationView
from .moe import AblateExpert, ScaleExpert, routing
from .perturb import AblateHead, AblateNeuron, AddNoise, Edit, EditError, ScaleHead, ScaleLayer, ScaleNeuron, perturb
from .patching import PatchResult, patch
from .recompute import Recompute
from .targets import Target
from .trace import Trace, trace
from .steering import Steer, SteerPreview, steer_preview, steering_vector
from .sweep import SweepResult, head_sweep
from .views.activation_view import ActivationView, activations
from .views.attention_mechanics_view import AttentionMechanicsView, attention_mechanics
from .views.attention_view import AttentionView, attention
from .views.compare_view import CompareView, compare
from .views.parameters_view import ParametersView, parameters
from .views.dashboard import Dashboard, inspect
from .views.gradient_view import GradientView, gradient_flow
from .views.neuron_view import NeuronView, neurons
from .views.router_view import RouterView
from .views.selection import Selection
from .views.patching_view import PatchingView
from .views.head_sweep_view import HeadSweepView
from .views.perturb_panel import PerturbPanel, sliders
from .residual_stream import HeadTypes, LogitAttribution, LogitLens, head_types
from .views.block_writes_view import BlockWritesView, block_writes
from .views.logit_attribution_view import LogitAttributionView, logit_attribution
from .views.logit_lens_view import LogitLensView, logit_lens
from .relevance import Relevance, relevance
from .rollout import rollout
from .geometry import geometry
from .views.geometry_view import GeometryView

__all__ = [
    "GeometryView",
    "geometry",
    "Relevance",
    "relevance",
    "rollout",
    "ActivationView",
    "activations",
    "AttentionMechanicsView",
    "attention_mechanics",
    "CompareView",
    "compare",
    "ParametersView",
    "parameters",
    "BlockWritesView",
    "HeadTypes",
    "LogitAttribution",
    "LogitAttributionView",
    "LogitLens",
    "LogitLensView",
    "block_writes",
    "head_types",
    "logit_attribution",
    "logit_lens",
    "Trace",
    "trace",
    "Target",
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
    "save",
    "to_png",
    "to_svg",
    "run",
    "saliency",
    "AblateHead",
    "AblateNeuron",
    "AddNoise",
    "Edit",
    "EditError",
    "PerturbPanel",
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
    "generate",
    "GenerationView",
    "AblateExpert",
    "ScaleExpert",
    "routing",
    "RouterView",
    "SweepResult",
    "head_sweep",
    "Steer",
    "SteerPreview",
    "steer_preview",
    "steering_vector",
    "PatchingView",
    "HeadSweepView",
]
__version__ = "0.1.0"
