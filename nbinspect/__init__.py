"""nbinspect: live, linked Jupyter widgets that show what happens inside a transformer while it runs."""

from .adapters import ModelParts, UnsupportedModelError
from .capture import Record, Request, capture
from .loading import load

__all__ = [
    "ModelParts",
    "Record",
    "Request",
    "UnsupportedModelError",
    "capture",
    "load",
]
__version__ = "0.1.0"
