"""MonitorView: a training run over steps — loss, gradient norms, update sizes, activations and flags.

It shows a :class:`nbinspect.monitor.Monitor`'s :class:`~nbinspect.monitor.History` (not a Trace: it
watches many steps of training rather than one forward pass) as canvas line charts that repaint while
the training loop runs. The monitor sends the history from the training loop itself, at most every
``monitor.PUBLISH_INTERVAL_S``; everything the browser does afterwards (hover, picking a layer,
switching grad-norm grouping) happens in the browser, so a busy kernel never delays it.

Every series travels as bytes: float32 ``[points]`` or ``[points, layers]`` row-major (NaN where not
measured, e.g. a diverged loss), int32 steps, uint8 flag bits. At most ``codecs.MONITOR_MAX_POINTS``
points per series (see :mod:`nbinspect.monitor` for the halving), so an update is a few KB for a small
model and ≈ 190 KB for a full 30-layer history.
"""

from __future__ import annotations

import anywidget
import numpy as np
import traitlets

from .. import codecs
from ..monitor import EXPLODING, FLAG_RATIO, NONFINITE, VANISHING, Monitor
from ._bundle import bundle

_MATRICES = ("grad_layer", "grad_type", "update_layer", "act_mean", "act_std")
_VECTORS = ("loss", "grad_total", "update_total")


class MonitorView(anywidget.AnyWidget):
    """The live view of a training :class:`Monitor` (``nbinspect.monitor(model)`` displays one)."""

    _esm = bundle("monitor_view")

    #: Names of the per-layer series (transformer blocks, or module paths) and of the module types.
    layer_names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    type_names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: Sampling: one optimizer step in ``every``; each point averages ``bucket`` samples; ``max_points``.
    every = traitlets.Int(1).tag(sync=True)
    bucket = traitlets.Int(1).tag(sync=True)
    max_points = traitlets.Int(codecs.MONITOR_MAX_POINTS).tag(sync=True)
    #: Sampled steps so far, optimizer steps so far, points sent; ``running`` until the monitor closes.
    samples = traitlets.Int(0).tag(sync=True)
    step_count = traitlets.Int(0).tag(sync=True)
    n_points = traitlets.Int(0).tag(sync=True)
    running = traitlets.Bool(False).tag(sync=True)
    flag_ratio = traitlets.Float(FLAG_RATIO).tag(sync=True)
    #: int32 [points]: the last step each point covers.
    steps = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: float32 [points]: mean loss since the previous sample, total gradient norm, total update/weight.
    loss = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    grad_total = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    update_total = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: float32 [points, layers] (grad_type: [points, types]), row-major.
    grad_layer = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    grad_type = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    update_layer = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    act_mean = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    act_std = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: uint8 [points, layers]: bit 1 vanishing, bit 2 exploding; step_flags uint8 [points]: + bit 4 non-finite.
    flags = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    step_flags = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: The highlighted layer (-1: none); the browser sets it on a click.
    layer = traitlets.Int(-1).tag(sync=True)
    #: Counted by the browser on its copy of the model after it paints (tests and saved pages read it there). Not
    #: sent back to Python, where it stays as it was: a message per paint cost the kernel and the page a round
    #: trip on every slider edit.
    painted = traitlets.Int(0).tag(sync=True)

    def __init__(self, monitor: Monitor | None = None, **kwargs):
        super().__init__(**kwargs)
        self._monitor = None
        if monitor is not None:
            self.attach(monitor)

    def attach(self, monitor: Monitor) -> None:
        """Show ``monitor`` (a TrainerCallback's view exists before training creates its monitor)."""
        self._monitor = monitor
        with self.hold_sync():
            self.layer_names = [codecs.clip_tokens([n])[0] for n in monitor.layer_names]
            self.type_names = monitor.type_names
            self.every = monitor.every
            self.max_points = monitor.history.max_points
            self.layer = -1
            self.show_history()

    @traitlets.validate("layer")
    def _valid_layer(self, proposal):
        value, n = proposal["value"], len(self.layer_names)
        if not -1 <= value < max(n, 0):
            raise traitlets.TraitError(f"layer {value} is out of range: the monitor has layers 0..{n - 1} (-1 for none).")
        return value

    def show_history(self) -> None:
        """Send the monitor's history as it is now (called by the monitor, throttled)."""
        monitor = self._monitor
        if monitor is None:
            return
        h = monitor.history
        a = h.arrays()
        with self.hold_sync():
            self.steps = a["steps"].astype("<i4").tobytes()
            for name in _VECTORS + _MATRICES:
                setattr(self, name, np.ascontiguousarray(a[name], dtype="<f4").tobytes())
            self.flags = np.ascontiguousarray(a["flags"], dtype=np.uint8).tobytes()
            self.step_flags = np.ascontiguousarray(a["step_flags"], dtype=np.uint8).tobytes()
            self.bucket = h.bucket
            self.samples = h.samples
            self.step_count = monitor.step_count
            self.n_points = len(a["steps"])
            self.running = not monitor.closed

    def series(self, name: str) -> np.ndarray:
        """A series as the browser decodes it (float32 [points] or [points, layers|types]; uint8 for flags)."""
        raw = getattr(self, name)
        if name == "steps":
            return np.frombuffer(raw, dtype="<i4")
        if name in ("flags", "step_flags"):
            values = np.frombuffer(raw, dtype=np.uint8)
        else:
            values = np.frombuffer(raw, dtype="<f4")
        width = {"grad_type": len(self.type_names), "flags": len(self.layer_names)}.get(
            name, len(self.layer_names) if name in _MATRICES else 0
        )
        return values.reshape(-1, width) if width else values

    def payload_bytes(self) -> int:
        """Bytes of the last history sent (every binary trait)."""
        return sum(len(getattr(self, n)) for n in ("steps", "flags", "step_flags", *_VECTORS, *_MATRICES))


__all__ = ["MonitorView", "VANISHING", "EXPLODING", "NONFINITE"]
