"""Sliders that perturb a model's weights, and the predictions before and after, in one widget.

``nbinspect.sliders(model, tokenizer, text)`` (or ``sliders(trace, views=[...])``) shows sliders for one
head's scale, one MLP neuron's scale, seeded weight noise in one layer and, for mixture-of-experts models
only, one expert's scale ("ablate expert": 0 switches it off; the expert follows a click on an expert in a
linked :class:`~nbinspect.views.router_view.RouterView`), a reset button, and the top
next-token probabilities before and after with the KL divergence and whether the top token changed, for
the last position and a chosen one. The controls are drawn by the panel's own ESM
(``js/perturb_panel_view.js``), so every host that renders anywidget models renders the panel. Every
change makes a new :class:`~nbinspect.Trace` with :meth:`~nbinspect.Trace.with_edits` (re-run from the
first layer whose edits changed, backward included when the trace has gradients) and hands it to the
linked views' ``show``.

Requirements this module is built around:

* **The latest value wins.** Control observers only drop the new value into a one-slot mailbox
  (:class:`LatestWins`) and return, so the kernel keeps reading messages while a worker thread
  computes. A value replaced before its turn is never computed; a result overtaken while it was
  computed is not published. After any storm of moves the views show the last value's result.
* **Busy while computing.** ``busy`` is set on the panel and on every view that has such a trait
  from the first move until the last value's result is shown.
* **The model stays exact.** Edits are applied only while a trace computes (weights restored from
  saved clones, see :mod:`nbinspect.perturb`), so other cells always see the original weights; use
  ``with panel.applied(): ...`` to run the model under the sliders' edits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import anywidget
import ipywidgets
import torch
import traitlets

from .. import codecs
from ..adapters import ModelParts
from ..export import Exportable
from ..moe import ScaleExpert
from ..perturb import AddNoise, Edit, ScaleHead, ScaleNeuron, _in_features, perturb
from ..trace import Trace
from ._bundle import bundle
from .base import as_trace

IDLE_EXIT_S = 30.0  # a worker with nothing to do exits after this long instead of living for the whole kernel
TOP_K = 5  # rows per position in the panel: enough to see a runner-up take over, small enough to read


class LatestWins:
    """Run ``compute(value)`` for the latest submitted value only, then ``publish(value, result)``.

    ``threaded=False`` computes inside ``submit`` (scripts, tests, benchmarks). Counters:
    ``submitted``, ``computed`` (values whose compute ran), ``published``.
    """

    def __init__(
        self,
        compute: Callable[[Any], Any],
        publish: Callable[[Any, Any], None],
        on_busy: Callable[[bool], None] | None = None,
        threaded: bool = True,
    ):
        self._compute, self._publish, self._on_busy = compute, publish, on_busy or (lambda busy: None)
        self.threaded = threaded
        self.submitted = self.computed = self.published = 0
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._slot: tuple | None = None  # (value,) so that None can be a value
        self._running = False
        self._thread: threading.Thread | None = None

    @property
    def idle(self) -> bool:
        with self._cond:
            return self._slot is None and not self._running

    def submit(self, value) -> None:
        with self._cond:
            self._slot = (value,)
            self.submitted += 1
            # Busy flips under the lock, in the same order as the worker's "done", so it never sticks.
            self._on_busy(True)
            if self.threaded and self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="nbinspect-recompute", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        if not self.threaded:
            self._drain()

    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until the latest value's result is published (``False`` if ``timeout`` seconds pass first).

        Raises what a compute or publish raised since the last wait, so failures are not silent.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._slot is not None or self._running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            error, self.error = self.error, None
        if error is not None:
            raise error
        return True

    def _take(self, block: bool):
        with self._cond:
            while self._slot is None:
                if not block:
                    return None
                # Idle workers exit after a while rather than living for the whole kernel.
                if not self._cond.wait(timeout=IDLE_EXIT_S) and self._slot is None:
                    self._thread = None
                    return None
            (value,), self._slot = self._slot, None
            self._running = True
            return (value,)

    def _one(self, value) -> None:
        try:
            result = self._compute(value)
            self.computed += 1
            with self._cond:
                overtaken = self._slot is not None
            if not overtaken:
                self._publish(value, result)
                self.published += 1
        except BaseException as e:  # shown by the publisher; the worker must survive a bad value
            self.error = e
        finally:
            with self._cond:
                self._running = False
                if self._slot is None:
                    self._on_busy(False)
                self._cond.notify_all()

    def _loop(self) -> None:
        while (taken := self._take(block=True)) is not None:
            self._one(taken[0])

    def _drain(self) -> None:
        while (taken := self._take(block=False)) is not None:
            self._one(taken[0])


def _top(probs: torch.Tensor, k: int, decode) -> list[list]:
    p, ids = probs.topk(k)
    return [[decode(i), round(float(v), 6)] for v, i in zip(p.tolist(), ids.tolist())]


def compare(before: torch.Tensor, after: torch.Tensor, k: int, decode) -> list[dict]:
    """Per position: top-k before/after, KL(before‖after) and whether the top token changed.

    ``before``/``after``: logits ``[positions, vocab]`` on any device; only small lists leave it.
    """
    lb, la = before.float().log_softmax(-1), after.float().log_softmax(-1)
    pb = lb.exp()
    kl = (pb * (lb - la)).sum(-1).clamp_min(0)  # clamp: rounding can make a zero divergence -1e-9
    out = []
    for i in range(before.shape[0]):
        out.append(
            {
                "before": _top(pb[i], k, decode),
                "after": _top(la[i].exp(), k, decode),
                "kl": float(kl[i]),
                "argmax_changed": bool(lb[i].argmax() != la[i].argmax()),
            }
        )
    return out


def _hidden_change(before: torch.Tensor, after: torch.Tensor) -> list[dict]:
    b, a = before.float(), after.float()
    cos = torch.nn.functional.cosine_similarity(b, a, dim=-1)
    rel = (a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)
    return [{"cosine": float(c), "relative_change": float(r)} for c, r in zip(cos.tolist(), rel.tolist())]


class PerturbPanel(Exportable, anywidget.AnyWidget):
    """Sliders that perturb the model of a :class:`~nbinspect.Trace`, the predictions before and after,
    and the views that follow them.

    Parameters
    ----------
    trace : the unedited trace the sliders start from (``sliders(model, tokenizer, text)`` makes one).
    views : views to move to each new trace (anything with ``show(trace)``; a ``busy`` trait shows the
        busy indicator).
    position : the chosen position shown next to the last one (default: the one before the last).
    top_k : rows per position.
    threaded : recompute on a worker thread (``False``: synchronously, for scripts and tests).
    show_views : also draw the views under the controls.

    Attributes
    ----------
    head_layer, head, head_factor, neuron_layer, neuron, neuron_factor, noise_layer, noise_sigma,
    noise_seed, expert_layer, expert, expert_factor, position : the controls' values (set them from
    Python and the sliders move). The expert controls exist only when ``n_experts`` > 0 (MoE models);
    ``expert_layer`` is one of ``expert_layers`` (the routed layers), and a click on an expert in a linked
    router view moves ``expert_layer`` / ``expert`` to it.
    base : the unedited trace. latest : the trace the views show now.
    scheduler : the :class:`LatestWins` mailbox (its counters say how many values were computed).
    """

    _esm = bundle("perturb_panel_view")
    #: What a saved page says about the controls: they need the kernel to recompute.
    export_note = "The sliders need the Python kernel to recompute; this saved page shows the predictions as they were."

    head_layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(0).tag(sync=True)
    head_factor = traitlets.Float(1.0).tag(sync=True)
    neuron_layer = traitlets.Int(0).tag(sync=True)
    neuron = traitlets.Int(0).tag(sync=True)
    neuron_factor = traitlets.Float(1.0).tag(sync=True)
    noise_layer = traitlets.Int(0).tag(sync=True)
    noise_sigma = traitlets.Float(0.0).tag(sync=True)
    noise_seed = traitlets.Int(0).tag(sync=True)
    expert_layer = traitlets.Int(0).tag(sync=True)
    expert = traitlets.Int(0).tag(sync=True)
    expert_factor = traitlets.Float(1.0).tag(sync=True)
    position = traitlets.Int(0).tag(sync=True)
    #: Ranges of the controls (the browser draws sliders from them).
    n_layers = traitlets.Int(1).tag(sync=True)
    n_heads = traitlets.Int(1).tag(sync=True)
    n_neurons = traitlets.Int(0).tag(sync=True)  # 0: no single MLP down projection, neuron controls off
    n_experts = traitlets.Int(0).tag(sync=True)  # 0: not a mixture of experts, no expert controls
    expert_layers = traitlets.List(traitlets.Int()).tag(sync=True)  # the layers with a router
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: {"edits": [str], "from_layer": int, "compute_ms": float, "message": str,
    #:  "positions": [{"position", "token", "before": [[token, p]], "after": [[token, p]], "kl", "argmax_changed"}]}
    #: Small (a few KB), so plain JSON; large arrays go through nbinspect.codecs instead.
    summary = traitlets.Dict().tag(sync=True)
    busy = traitlets.Bool(False).tag(sync=True)
    #: Views drawn under the controls (by reference: each stays its own widget model).
    views = traitlets.List(traitlets.Instance(ipywidgets.Widget)).tag(sync=True, **ipywidgets.widget_serialization)
    #: Counted by the browser on its copy of the model after it paints (tests and saved pages read it there). Not
    #: sent back to Python, where it stays as it was: a message per paint cost the kernel and the page a round
    #: trip on every slider edit.
    painted = traitlets.Int(0).tag(sync=True)

    _CONTROLS = ("head_layer", "head", "head_factor", "neuron_layer", "neuron", "neuron_factor",
                 "noise_layer", "noise_sigma", "noise_seed", "expert_layer", "expert", "expert_factor", "position")

    def __init__(self, trace: Trace, views: Sequence[Any] = (), *, position: int | None = None, top_k: int = TOP_K,
                 threaded: bool = True, show_views: bool = True):
        if trace.edits:
            raise ValueError("sliders start from an unedited trace; pass the trace the edits were made from.")
        adapter = trace.adapter
        self.base = self.latest = trace
        self.adapter, self.model, self.tokenizer, self.top_k = adapter, trace.model, trace.tokenizer, top_k
        self.followers = list(views)
        n = trace.n_tokens
        if position is not None and (isinstance(position, bool) or not isinstance(position, int) or not -n <= position < n):
            raise ValueError(f"position must be a token index 0..{n - 1} (or -{n}..-1), got {position!r}.")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 50:
            raise ValueError(f"top_k must be a whole number of rows 1..50, got {top_k!r}.")
        default = n - 2 if position is None else position % n
        has_neurons = adapter.parts.neurons is not None
        routed = adapter.router_layers()
        n_experts = (adapter.n_experts or 0) if routed else 0
        super().__init__(
            n_experts=n_experts,
            expert_layers=routed if n_experts else [],
            expert_layer=routed[0] if n_experts else 0,
            n_layers=adapter.n_layers,
            n_heads=adapter.n_heads,
            n_neurons=_in_features(adapter.part(0, "neurons")) if has_neurons else 0,
            tokens=codecs.clip_tokens(trace.tokens),
            position=max(0, min(default, n - 1)),
            views=[v for v in self.followers if isinstance(v, ipywidgets.Widget)] if show_views else [],
        )
        self.last_latency_ms: float | None = None
        self._last_request = None
        self.scheduler = LatestWins(self._compute, self._publish, self._set_busy, threaded=threaded)
        self.observe(self._changed, list(self._CONTROLS))
        self.on_msg(self._message)
        if self.n_experts:
            for view in self.followers:
                self.follow_experts(view)
        self._changed()
        self.scheduler.wait()

    # --- checks: a refused value loses nothing ------------------------------------------------------
    def _check(self, name: str, value, low, high):
        if not low <= value <= high:
            raise traitlets.TraitError(f"{name} {value!r} is out of range: expected {low}..{high}.")
        return value

    @traitlets.validate("head_layer", "neuron_layer", "noise_layer")
    def _valid_layer(self, p):
        return self._check(p["trait"].name, p["value"], 0, self.n_layers - 1)

    @traitlets.validate("head")
    def _valid_head(self, p):
        return self._check("head", p["value"], 0, self.n_heads - 1)

    @traitlets.validate("neuron")
    def _valid_neuron(self, p):
        return self._check("neuron", p["value"], 0, max(self.n_neurons - 1, 0))

    @traitlets.validate("expert_layer")
    def _valid_expert_layer(self, p):
        value = p["value"]
        if self.expert_layers and value not in self.expert_layers:
            raise traitlets.TraitError(f"expert_layer {value!r} has no router: the routed layers are {self.expert_layers}.")
        return value

    @traitlets.validate("expert")
    def _valid_expert(self, p):
        return self._check("expert", p["value"], 0, max(self.n_experts - 1, 0))

    @traitlets.validate("position")
    def _valid_position(self, p):
        return self._check("position", p["value"], 0, max(len(self.tokens) - 1, 0))

    @traitlets.validate("head_factor", "neuron_factor", "noise_sigma", "expert_factor")
    def _valid_number(self, p):
        value = p["value"]
        if value != value or value in (float("inf"), float("-inf")) or value < 0:
            raise traitlets.TraitError(f"{p['trait'].name} must be a finite number ≥ 0, got {value!r}.")
        return value

    # --- what the sliders say -------------------------------------------------------------------
    @property
    def edits(self) -> tuple[Edit, ...]:
        """The edits the sliders describe now (sliders at rest add none)."""
        out: list[Edit] = []
        if self.head_factor != 1:
            out.append(ScaleHead(self.head_layer, self.head, float(self.head_factor)))
        if self.neuron_factor != 1 and self.n_neurons:
            out.append(ScaleNeuron(self.neuron_layer, self.neuron, float(self.neuron_factor)))
        if self.noise_sigma > 0:
            out.append(AddNoise(self.noise_layer, float(self.noise_sigma), int(self.noise_seed)))
        if self.expert_factor != 1 and self.n_experts:
            out.append(ScaleExpert(self.expert_layer, self.expert, float(self.expert_factor)))
        return tuple(out)

    def follow_experts(self, view) -> None:
        """Let the expert controls follow ``view``'s selected expert (a router view: clicking an expert
        selects it at the layer it shows). Views without an ``expert`` trait are ignored."""
        has = getattr(view, "has_trait", None)
        if not self.n_experts or has is None or not (has("expert") and has("shown_layer")):
            return

        def picked(change=None):
            if view.expert >= 0 and view.shown_layer in self.expert_layers:
                with self.hold_trait_notifications():
                    self.expert_layer = view.shown_layer
                    self.expert = view.expert

        view.observe(picked, ["expert", "shown_layer"])
        picked()

    def positions(self) -> list[int]:
        """The positions the panel shows, in text order: the chosen one, then the last (``[-1]``)."""
        last = len(self.tokens) - 1
        return [last] if self.position == last else [self.position, last]

    def applied(self) -> perturb:
        """``with panel.applied(): model.generate(...)`` runs the model under the sliders' edits."""
        return perturb(self.model, *self.edits)

    def reset(self) -> None:
        """Put every slider back at rest; the views then show the original model again."""
        with self.hold_trait_notifications():
            self.head_factor = 1.0
            self.neuron_factor = 1.0
            self.noise_sigma = 0.0
            self.expert_factor = 1.0
        self._changed(force=True)

    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until the views show the latest slider values (for scripts and notebooks run headless)."""
        return self.scheduler.wait(timeout)

    def _message(self, widget, content, buffers) -> None:
        if isinstance(content, dict) and content.get("event") == "reset":
            self.reset()

    # --- the pipeline: kernel thread -> mailbox -> worker ------------------------------------------
    def _changed(self, change=None, force: bool = False) -> None:
        # Moving a control that no edit reads (e.g. the head slider while its scale is 1, which the
        # dashboard does on every click in a view) describes the same run: nothing to recompute.
        request = (self.edits, tuple(self.positions()))
        if request == self._last_request and not force:
            return
        self._last_request = request
        self.scheduler.submit((*request, time.perf_counter()))

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        for view in self.followers:
            if hasattr(view, "busy"):
                view.busy = busy

    def _compute(self, value) -> tuple[Trace | None, dict]:
        edits, positions, submitted = value
        started = time.perf_counter()
        try:
            # The same edits describe the same run (e.g. only the shown position moved): nothing re-runs.
            new = self.latest if tuple(edits) == self.latest.edits else self.latest.with_edits(edits)
            summary = self._summary(new, list(positions))
        except Exception as e:  # e.g. an EditError: shown in the panel, the sliders stay usable
            return None, {"positions": [], "message": f"{type(e).__name__}: {e}", "edits": [repr(x) for x in edits]}
        summary["edits"] = [repr(e) for e in edits]
        summary["from_layer"] = new.from_layer
        summary["n_layers"] = self.adapter.n_layers
        summary["compute_ms"] = round(1000 * (time.perf_counter() - started), 1)
        return new, summary

    def _publish(self, value, result) -> None:
        new, summary = result
        self.summary = summary
        if new is not None:
            self.latest = new
            for view in self.followers:
                view.show(new)
        self.last_latency_ms = 1000 * (time.perf_counter() - value[2])

    def _summary(self, new: Trace, positions: list[int]) -> dict:
        decode = lambda i: codecs.clip_tokens([self.tokenizer.decode([i])])[0]  # noqa: E731 - shown as text, hidden characters marked
        rows = [{"position": p, "token": self.tokens[p]} for p in positions]
        if new.logits is not None:
            for row, stats in zip(rows, compare(self.base.logits[positions], new.logits[positions], self.top_k, decode)):
                row.update(stats)
            return {"positions": rows, "message": ""}
        last = self.adapter.n_layers - 1
        before = self.base.record.residual[last].after[0, positions]
        after = new.record.residual[last].after[0, positions]
        for row, stats in zip(rows, _hidden_change(before, after)):
            row.update(stats)
        message = (
            f"this {self.adapter.family} model is an encoder with no next-token head; "
            "shown instead: how far the final hidden state moved at each position."
        )
        return {"positions": rows, "message": message}


def sliders(model, tokenizer=None, text: str | None = None, views: Sequence[Any] = (), *,
            parts: ModelParts | None = None, **kwargs) -> PerturbPanel:
    """Sliders that switch heads and neurons off, add weight noise, and show how predictions move.

    Give ``(model, tokenizer, text)`` or a :class:`~nbinspect.Trace`. See :class:`PerturbPanel` for the
    keyword arguments. Raises ``ValueError`` for empty or over-long text and ``TypeError`` for a model
    nbinspect cannot find its way around.
    """
    return PerturbPanel(as_trace(model, tokenizer, text, parts=parts), views, **kwargs)
