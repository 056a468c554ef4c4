"""Sliders that perturb a model's weights, and a panel showing how its predictions move.

``nbinspect.sliders(model, tokenizer, text, views=[attention_view])`` shows sliders for one head's
scale, one MLP neuron's scale and seeded weight noise in one layer, a reset button, and a
:class:`PredictionView` with the top next-token probabilities before and after, the KL divergence
and whether the top token changed, for the last position and a chosen one. Every change recomputes
from the first edited layer (:class:`nbinspect.recompute.Recompute`) on the model's device and
repaints the views that show that run.

Requirements this module is built around:

* **The latest value wins.** Slider observers only drop the new value into a one-slot mailbox
  (:class:`LatestWins`) and return, so the kernel keeps reading slider messages while a worker thread
  computes. A value replaced before its turn is never computed; a result overtaken while it was
  computed is not published. After any storm of moves the views show the last value's result.
* **Busy while computing.** ``busy`` is set on the panel and on every view that has such a trait
  from the first move until the last value's result is shown.
* **The model stays exact.** Edits are applied only while a run computes (see
  :mod:`nbinspect.recompute`), so other cells always see the original weights; use
  ``with panel.applied(): ...`` to run the model under the sliders' edits. Do not run the model
  from another cell while the panel is recomputing: the worker edits the weights in place meanwhile.
* **Views repaint only what changed**: the attention of the layers recomputed since the last
  repaint is passed to ``view.set_attention`` (float32 ``[1, heads, q, k]`` per layer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import anywidget
import ipywidgets as widgets
import torch
import traitlets

from ..adapters import Adapter, ModelParts
from ..inputs import encode, token_strings
from ..perturb import AddNoise, Edit, ScaleHead, ScaleNeuron, _in_features, perturb
from ..recompute import Recompute, Result
from ._bundle import bundle

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


class PredictionView(anywidget.AnyWidget):
    """Top next-token probabilities before and after the edits, for a few positions (JS: perturb_panel_view.js)."""

    _esm = bundle("perturb_panel_view")

    #: {"edits": [str], "from_layer": int, "compute_ms": float, "message": str,
    #:  "positions": [{"position", "token", "before": [[token, p]], "after": [[token, p]], "kl", "argmax_changed"}]}
    #: Small (a few KB), so plain JSON; large arrays go through nbinspect.codecs instead.
    summary = traitlets.Dict().tag(sync=True)
    #: True while the model recomputes.
    busy = traitlets.Bool(False).tag(sync=True)
    #: Incremented by the browser after each repaint (for tests and benchmarks).
    painted = traitlets.Int(0).tag(sync=True)


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


class PerturbPanel(widgets.VBox):
    """Sliders that perturb ``model``, a :class:`PredictionView`, and the given views, kept in step.

    Parameters
    ----------
    model, tokenizer, text : the model (any nbinspect family), its tokenizer and the text to run.
    views : views to repaint after each recompute (e.g. an ``AttentionView`` of the same text); any
        object with ``set_attention(dict)`` gets the recomputed layers' attention, and any with a
        ``busy`` trait shows the busy indicator.
    position : the chosen position shown next to the last one (default: the one before the last).
    top_k : rows per position.
    threaded : recompute on a worker thread (``False``: synchronously, for scripts and tests).
    show_views : also lay the views out under the sliders.

    Attributes
    ----------
    head_layer, head, head_factor, neuron_layer, neuron, neuron_factor, noise_layer, noise_sigma,
    noise_seed, position, reset_button : the ipywidgets controls (set ``.value`` to move them).
    prediction : the :class:`PredictionView`.
    recompute : the :class:`nbinspect.recompute.Recompute` holding the baseline run.
    scheduler : the :class:`LatestWins` mailbox (its counters say how many values were computed).
    """

    def __init__(
        self,
        model,
        tokenizer,
        text: str,
        views: Sequence[Any] = (),
        *,
        position: int | None = None,
        top_k: int = TOP_K,
        threaded: bool = True,
        show_views: bool = True,
        parts: ModelParts | None = None,
    ):
        adapter = Adapter.of(model, parts)
        self.adapter, self.model, self.tokenizer, self.top_k = adapter, model, tokenizer, top_k
        self.views = list(views)
        inputs = encode(tokenizer, text, adapter)
        self.tokens = token_strings(tokenizer, inputs["input_ids"])
        n_tokens = len(self.tokens)
        wants_attention = any(hasattr(v, "set_attention") for v in self.views)
        wants_neurons = adapter.parts.neurons is not None and any(hasattr(v, "set_activations") for v in self.views)
        self.recompute = Recompute(
            model, inputs, attention=True if wants_attention else None, neurons=True if wants_neurons else None, parts=parts
        )
        self.recompute.check_finite()  # NaN weights: the same clear error as the other views, not NaN probabilities
        self._before: dict[tuple, torch.Tensor] = {}  # positions -> baseline logits (or hidden states)
        self._unshown_from = adapter.n_layers  # first layer computed since the views were last repainted
        self.last_latency_ms: float | None = None

        n_layers, n_heads = adapter.n_layers, adapter.n_heads
        style = {"description_width": "initial"}
        slider = dict(continuous_update=True, style=style)
        self.head_layer = widgets.IntSlider(0, 0, n_layers - 1, description="head: layer", **slider)
        self.head = widgets.IntSlider(0, 0, n_heads - 1, description="head", **slider)
        self.head_factor = widgets.FloatSlider(1.0, min=0.0, max=2.0, step=0.05, description="× scale", **slider)
        has_neurons = adapter.parts.neurons is not None
        width = _in_features(adapter.part(0, "neurons")) if has_neurons else 1
        self.neuron_layer = widgets.IntSlider(0, 0, n_layers - 1, description="neuron: layer", disabled=not has_neurons, **slider)
        box = widgets.Layout(width="160px")
        self.neuron = widgets.BoundedIntText(
            0, min=0, max=width - 1, description="neuron", disabled=not has_neurons, style=style, layout=box
        )
        self.neuron_factor = widgets.FloatSlider(
            1.0, min=0.0, max=2.0, step=0.05, description="× scale", disabled=not has_neurons, **slider
        )
        self.noise_layer = widgets.IntSlider(0, 0, n_layers - 1, description="noise: layer", **slider)
        self.noise_sigma = widgets.FloatSlider(0.0, min=0.0, max=1.0, step=0.01, description="σ (× weight RMS)", **slider)
        self.noise_seed = widgets.BoundedIntText(0, min=0, max=2**31 - 1, description="seed", style=style, layout=box)
        default = n_tokens - 2 if position is None else position
        self.position = widgets.IntSlider(
            max(0, min(default, n_tokens - 1)), 0, n_tokens - 1, description="also show position", **slider
        )
        self.reset_button = widgets.Button(description="reset", tooltip="Give back the original model")
        self.prediction = PredictionView()

        self._last_request = None
        self.scheduler = LatestWins(self._compute, self._publish, self._set_busy, threaded=threaded)
        controls = [
            self.head_layer, self.head, self.head_factor,
            self.neuron_layer, self.neuron, self.neuron_factor,
            self.noise_layer, self.noise_sigma, self.noise_seed, self.position,
        ]  # fmt: skip
        for control in controls:
            control.observe(self._changed, names="value")
        self.reset_button.on_click(lambda _: self.reset())
        rows = [
            widgets.HBox([self.head_layer, self.head, self.head_factor]),
            widgets.HBox([self.neuron_layer, self.neuron, self.neuron_factor]),
            widgets.HBox([self.noise_layer, self.noise_sigma, self.noise_seed]),
            widgets.HBox([self.position, self.reset_button]),
            self.prediction,
        ]
        if not has_neurons:
            rows.insert(2, widgets.Label(f"a {adapter.family!r} model has no single MLP down projection: neuron sliders are off."))
        shown = [v for v in self.views if isinstance(v, widgets.Widget)] if show_views else []
        super().__init__(rows + shown)
        self._changed()
        self.scheduler.wait()

    # --- what the sliders say -------------------------------------------------------------------
    @property
    def edits(self) -> tuple[Edit, ...]:
        """The edits the sliders describe now (sliders at rest add none)."""
        out: list[Edit] = []
        if self.head_factor.value != 1:
            out.append(ScaleHead(self.head_layer.value, self.head.value, float(self.head_factor.value)))
        if self.neuron_factor.value != 1 and not self.neuron_factor.disabled:
            out.append(ScaleNeuron(self.neuron_layer.value, self.neuron.value, float(self.neuron_factor.value)))
        if self.noise_sigma.value > 0:
            out.append(AddNoise(self.noise_layer.value, float(self.noise_sigma.value), int(self.noise_seed.value)))
        return tuple(out)

    def positions(self) -> list[int]:
        """The positions the panel shows, in text order: the chosen one, then the last (``[-1]``)."""
        last = len(self.tokens) - 1
        return [last] if self.position.value == last else [self.position.value, last]

    def applied(self) -> perturb:
        """``with panel.applied(): model.generate(...)`` runs the model under the sliders' edits."""
        return perturb(self.model, *self.edits)

    def reset(self) -> None:
        """Put every slider back at rest; the views then show the original model again."""
        self.head_factor.value = 1.0
        self.neuron_factor.value = 1.0
        self.noise_sigma.value = 0.0
        self._changed(force=True)

    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until the views show the latest slider values (for scripts and notebooks run headless)."""
        return self.scheduler.wait(timeout)

    # --- the pipeline: kernel thread -> mailbox -> worker ------------------------------------------
    def _changed(self, change=None, force: bool = False) -> None:
        # Moving a slider that no edit reads (e.g. the head slider while its scale is 1, which the
        # dashboard does on every click in a view) describes the same run: nothing to recompute.
        request = (self.edits, tuple(self.positions()))
        if request == self._last_request and not force:
            return
        self._last_request = request
        self.scheduler.submit((*request, time.perf_counter()))

    def _set_busy(self, busy: bool) -> None:
        self.prediction.busy = busy
        for view in self.views:
            if hasattr(view, "busy"):
                view.busy = busy

    def _compute(self, value) -> dict:
        edits, positions, submitted = value
        started = time.perf_counter()
        try:
            result = self.recompute.run(*edits)
            self._unshown_from = min(self._unshown_from, max(result.from_layer, 0))
            summary = self._summary(result, list(positions))
        except Exception as e:  # e.g. an EditError: shown in the panel, the sliders stay usable
            return {"positions": [], "message": f"{type(e).__name__}: {e}", "edits": [repr(x) for x in edits]}
        summary["edits"] = [repr(e) for e in edits]
        summary["from_layer"] = result.from_layer
        summary["n_layers"] = self.adapter.n_layers
        summary["compute_ms"] = round(1000 * (time.perf_counter() - started), 1)
        return summary

    def _publish(self, value, summary: dict) -> None:
        start, self._unshown_from = self._unshown_from, self.adapter.n_layers
        self.prediction.summary = summary
        attention = {i: w for i, w in sorted(self.recompute.attention.items()) if i >= start}
        neurons = {i: a for i, a in sorted(self.recompute.neurons.items()) if i >= start}
        for view in self.views:
            if attention and hasattr(view, "set_attention"):
                view.set_attention(attention)
            if neurons and hasattr(view, "set_activations"):
                view.set_activations(neurons)
        self.last_latency_ms = 1000 * (time.perf_counter() - value[2])

    def _baseline(self, positions: tuple[int, ...], head: bool) -> torch.Tensor:
        # Computed for the same positions, in one call, exactly as the edited side is, so that sliders
        # at rest give a KL of exactly 0 rather than matmul rounding noise.
        if positions not in self._before:
            base = self.recompute.baseline
            self._before[positions] = base.logits(positions)[0] if head else base.last_hidden(positions)[0]
        return self._before[positions]

    def _summary(self, result: Result, positions: list[int]) -> dict:
        decode = lambda i: self.tokenizer.decode([i])  # noqa: E731
        rows = [{"position": p, "token": self.tokens[p]} for p in positions]
        if result.has_head:
            before = self._baseline(tuple(positions), True)
            after = result.logits(positions)[0]
            for row, stats in zip(rows, compare(before, after, self.top_k, decode)):
                row.update(stats)
            message = ""
        else:
            before = self._baseline(tuple(positions), False)
            after = result.last_hidden(positions)[0]
            for row, stats in zip(rows, _hidden_change(before, after)):
                row.update(stats)
            message = (
                f"this {self.adapter.family} model is an encoder with no next-token head; "
                "shown instead: how far the final hidden state moved at each position."
            )
        return {"positions": rows, "message": message}


def sliders(model, tokenizer, text: str, views: Sequence[Any] = (), **kwargs) -> PerturbPanel:
    """Sliders that switch heads and neurons off, add weight noise, and show how predictions move.

    See :class:`PerturbPanel` for the keyword arguments. Raises ``ValueError`` for empty or
    over-long text and ``TypeError`` for a model nbinspect cannot find its way around.
    """
    return PerturbPanel(model, tokenizer, text, views, **kwargs)
