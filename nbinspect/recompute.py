"""Recompute a model's output after an edit by rerunning only the layers the edit can change.

A :class:`Recompute` makes one full (baseline) forward pass and keeps what each transformer layer
received: its hidden-state input and the other arguments the model passed it (position embeddings,
masks, position ids), on the device where the layer got them. ``run(*edits)`` then applies the edits,
feeds the kept input of the first edited layer L through layers L..end with the kept arguments,
applies the final norm and the unembedding, and restores the weights exactly before returning.

Requirements this module is built around:

* **Same numbers as a full forward.** The layers, norm and head are the model's own modules called
  with the arguments the model itself gave them, so a rerun matches ``model(**inputs)`` under the
  same edits (fp32: max abs difference ≤ 1e-5; the tests check every layer of every family).
* **Rerun from what changed since the previous run**, not only since the baseline: the kept inputs
  always describe the latest run, so moving a slider at layer 25 while a head at layer 5 stays off
  reruns layers 25..end. Edits to the embeddings (or to weights tied to them) rerun everything; edits
  to the final norm or unembedding rerun only the head.
* **The model is left exact.** Edits are applied only while a run computes (:mod:`nbinspect.perturb`
  restores them bit for bit). The kept inputs assume nobody else changes the weights between runs;
  make a new ``Recompute`` if you do.
* **Logits only where asked.** Unembedding every position costs ~20 % of a SmolLM2 forward, so a run
  keeps the last layer's output and :meth:`Result.logits` unembeds only the positions requested.
  When an edit touches the final norm or the unembedding (tied embeddings included), those edits
  are applied again, briefly, while the logits are computed.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from . import codecs
from .adapters import Adapter, ModelParts
from .capture import Request, capture
from .inputs import check_inputs
from .perturb import Edit, changed_from, model_lock, perturb


@dataclass
class Result:
    """The output of one run.

    hidden : the last layer's output ``[batch, seq, hidden]`` (before the final norm), on its device.
    attention : layer -> attention weights ``[batch, heads, q, k]`` (float32) for the layers this run
        recomputed (empty when attention was not requested).
    from_layer : the first layer this run recomputed (-1: everything, embeddings included;
        ``n_layers``: only the final norm and head).
    edits : the edits the run was made under.
    """

    hidden: torch.Tensor
    attention: dict[int, torch.Tensor]
    from_layer: int
    edits: tuple[Edit, ...]
    _adapter: Adapter = field(repr=False)
    _lock: threading.RLock = field(repr=False, default_factory=threading.RLock)

    def _head_edited(self) -> bool:
        n = self._adapter.n_layers
        return any(layer >= n or layer < 0 for e in self.edits for layer in e.layers(self._adapter))

    def _head(self, fn):
        # The final norm and unembedding run after the edits were restored; when an edit touches
        # them (or weights tied to them) they are applied again for this step only.
        if not self._head_edited():
            with torch.no_grad():
                return fn()
        with self._lock, torch.no_grad(), perturb(self._adapter.model, *self.edits):
            return fn()

    @property
    def has_head(self) -> bool:
        """False for encoders (e.g. BERT) that have no next-token head."""
        return self._adapter.unembedding() is not None

    def last_hidden(self, positions: Sequence[int] | None = None) -> torch.Tensor:
        """The final hidden states (after the final norm, as the model returns them)."""
        h = self.hidden if positions is None else self.hidden[:, list(positions)]
        norm = self._adapter.final_norm()
        return self._head(lambda: norm(h) if norm is not None else h)

    def logits(self, positions: Sequence[int] | None = None) -> torch.Tensor | None:
        """Next-token logits ``[batch, len(positions) or seq, vocab]``; ``None`` for models without a head."""
        adapter = self._adapter
        if adapter.unembedding() is None:
            return None
        h = self.hidden if positions is None else self.hidden[:, list(positions)]
        norm = adapter.final_norm()
        # adapter.unembed: the model's whole head (masked-LM transforms, logit soft-capping/scaling).
        return self._head(lambda: adapter.unembed(norm(h) if norm is not None else h))


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _as_layers(adapter: Adapter, attention) -> list[int]:
    if attention is None or attention is False:
        return []
    if attention is True:
        return list(range(adapter.n_layers))
    return sorted({adapter.check_layer(i) for i in attention})


class Recompute:
    """A baseline forward pass that can be rerun from any layer under a stack of edits.

    Parameters
    ----------
    model : a transformer nbinspect supports (see :mod:`nbinspect.adapters`).
    inputs : the model inputs, e.g. from ``nbinspect.inputs.encode`` (batch of 1 recommended).
    attention : record attention weights for these layers on every run (``True``: all layers).
    neurons : likewise for MLP neuron activations (what a :class:`~nbinspect.NeuronView` shows).
    parts : module paths for a model family nbinspect does not know.

    Attributes
    ----------
    baseline : the :class:`Result` of the unedited model.
    latest : the :class:`Result` of the latest run.
    attention : layer -> the latest attention weights of every recorded layer (kept across runs, so
        layers a run did not recompute still hold the weights that are current for them).
    neurons : layer -> the latest neuron activations ``[batch, tokens, neurons]``, kept the same way.
    runs : how many runs were computed (the baseline included).
    """

    def __init__(self, model: nn.Module, inputs: dict, *, attention=None, neurons=None, parts: ModelParts | None = None):
        self.adapter = Adapter.of(model, parts)
        self.model = model
        self.inputs = check_inputs(self.adapter, inputs)  # bad ids get a clear error before the baseline forward
        self.attention_layers = _as_layers(self.adapter, attention)
        self.attention: dict[int, torch.Tensor] = {}
        self.neuron_layers = _as_layers(self.adapter, neurons)
        self.neurons: dict[int, torch.Tensor] = {}
        self.runs = 0
        self._lock = model_lock(model)  # shared with views that run the same model themselves
        self._kept: list[tuple[tuple, dict] | None] = [None] * self.adapter.n_layers
        self._edits: tuple[Edit, ...] = ()
        self.baseline = self._run_from(-1, ())
        self.latest = self.baseline

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers

    def check_finite(self) -> None:
        """Raise ``ValueError`` naming the first layer whose output in the latest run is NaN or infinite
        (or the embeddings, or the output head), as the views do; reads only what the run kept."""
        if any(k is None for k in self._kept):
            return
        with torch.no_grad():
            codecs.check_finite(_hidden_of(*self._kept[0]).abs().amax(), "the input embeddings")
            for i in range(self.n_layers):
                out = _hidden_of(*self._kept[i + 1]) if i + 1 < self.n_layers else self._last
                codecs.check_finite(out.abs().amax(), f"the output of layer {i}")
            if self.latest.has_head:
                codecs.check_finite(self.latest.logits([-1]).abs().amax(), "the output head's logits")

    def run(self, *edits: Edit, from_layer: int | None = None) -> Result:
        """Apply ``edits``, recompute from the first layer whose edits differ from the latest run's,
        restore the weights, and return the result.

        ``from_layer`` forces an earlier start (e.g. 0 or -1 to time a full rerun).
        """
        if from_layer is not None and (isinstance(from_layer, bool) or not isinstance(from_layer, int)):
            raise TypeError(f"from_layer must be a layer index (an int; -1 for the embeddings), got {from_layer!r}.")
        with self._lock:
            start = changed_from(self.adapter, self._edits, edits)
            if start is None:
                start = self.n_layers  # nothing changed: only the head, which is cheap
            if from_layer is not None:
                start = min(start, max(-1, int(from_layer)))
            with perturb(self.model, *edits):
                result = self._run_from(start, tuple(edits))
            self.latest = result
            return result

    # --- the two ways a run is made ----------------------------------------------------------------
    def _run_from(self, start: int, edits: tuple[Edit, ...]) -> Result:
        self._edits = ()  # if this run fails half way, the kept inputs no longer describe any stack
        def request(wanted: list[int]) -> Request | None:
            layers = wanted if start < 0 else [i for i in wanted if i >= start]
            return Request(layers=layers) if layers else None

        try:
            with torch.no_grad(), capture(
                self.model, attention=request(self.attention_layers), neurons=request(self.neuron_layers)
            ) as record:
                if start < 0 or any(k is None for k in self._kept):
                    start = -1
                    hidden = self._full()
                else:
                    hidden = self._layers_from(start)
        except BaseException:
            self._kept = [None] * self.n_layers  # half-updated inputs: the next run starts from scratch
            raise
        attention = {i: w for i, w in record.attention.items()}
        self.attention.update(attention)
        self.neurons.update(record.neurons)
        self._edits = edits
        self.runs += 1
        return Result(hidden, attention, start, edits, self.adapter, self._lock)

    def _full(self) -> torch.Tensor:
        """One forward pass of the base model (no head: logits are unembedded on demand)."""
        layers = self.adapter.layers
        kept: list = [None] * len(layers)
        last: list[torch.Tensor] = []

        def keep(i):
            def hook(module, args, kwargs):
                kept[i] = (args, dict(kwargs))

            return hook

        def keep_output(module, args, output):
            last.append(output[0] if isinstance(output, tuple) else output)

        handles = [layer.register_forward_pre_hook(keep(i), with_kwargs=True) for i, layer in enumerate(layers)]
        handles.append(layers[-1].register_forward_hook(keep_output))
        try:
            base = self.adapter.base
            kwargs = dict(self.inputs)
            # A KV cache would make each layer's arguments depend on the previous call.
            if "use_cache" in inspect.signature(base.forward).parameters:
                kwargs["use_cache"] = False
            base(**kwargs)
        finally:
            for h in handles:
                h.remove()
        if any(k is None for k in kept) or not last:
            raise RuntimeError(
                f"{type(self.model).__name__} did not call all of its {len(layers)} layers in one forward pass; "
                "nbinspect can only rerun models whose layers run once each, in order."
            )
        self._kept = kept
        self._last = last[-1]
        return self._last

    def _layers_from(self, start: int) -> torch.Tensor:
        layers = self.adapter.layers
        if start >= len(layers):
            return self._last
        hidden = _hidden_of(*self._kept[start])
        for i in range(start, len(layers)):
            args, kwargs = self._kept[i]
            if i > start:
                args, kwargs = _with_hidden(args, kwargs, hidden)
                self._kept[i] = (args, kwargs)
            out = layers[i](*args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        self._last = hidden
        return hidden
