"""Record what happens inside a model during the user's own forward pass.

``with nbinspect.capture(model, attention=...) as record: model(**inputs)`` installs hooks for exactly
what was asked, keeps every result on the device of the layer that produced it (reducing it there when a
``reduce`` function is given, so the full tensor never has to be kept), and removes every hook in
``finally`` — after exceptions and KeyboardInterrupt too. The model's attention implementation is never
switched: see :mod:`nbinspect._attention_hook`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import _attention_hook
from .adapters import Adapter, ModelParts

Reduce = Callable[[int, torch.Tensor], Any]


@dataclass(frozen=True)
class Request:
    """What to record for one kind of data.

    layers: the layers to hook (``None``: all of them; negative indices count from the end).
    reduce: called as ``reduce(layer, tensor)`` on the layer's device as soon as the tensor exists;
        its return value is stored instead of the tensor (e.g. a per-head summary, a downsampled map).
    """

    layers: Sequence[int] | None = None
    reduce: Reduce | None = None


def _as_request(value) -> Request | None:
    if value is None or value is False:
        return None
    if value is True:
        return Request()
    if isinstance(value, Request):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Request(layers=(value,))
    if isinstance(value, Sequence) and not isinstance(value, str):
        return Request(layers=tuple(value))
    if callable(value):
        return Request(reduce=value)
    raise TypeError(f"expected True, a layer index, a list of layers or nbinspect.Request, got {value!r}")


@dataclass
class Record:
    """What a capture recorded. Tensors stay on the device of the layer that produced them.

    attention: layer -> attention probabilities ``[batch, heads, query, key]`` (float32), or what the
        request's ``reduce`` returned for it.
    logits: the model's output logits, when it produced any.
    """

    attention: dict[int, Any] = field(default_factory=dict)
    logits: torch.Tensor | None = None


class capture:
    """Context manager recording the requested internals of ``model`` during the calls made inside it."""

    def __init__(self, model: nn.Module, *, attention=None, parts: ModelParts | None = None):
        self.adapter = Adapter.of(model, parts)
        self.model = model
        self.attention = self._layers_of(_as_request(attention))
        self.record = Record()
        self._handles: list = []
        self._listening = None

    def _layers_of(self, request: Request | None) -> tuple[Request, list[int]] | None:
        if request is None:
            return None
        n = self.adapter.n_layers
        layers = range(n) if request.layers is None else [self.adapter.check_layer(i) for i in request.layers]
        return request, sorted(set(layers))

    def __enter__(self) -> Record:
        try:
            if self.attention is not None:
                request, layers = self.attention
                listeners = {self.adapter.attention(i): self._attention_listener(i, request) for i in layers}
                self._listening = _attention_hook.listening(self.model, listeners)
                self._listening.__enter__()
            self._handles.append(self.model.register_forward_hook(self._on_output))
        except BaseException:
            self._remove()
            raise
        return self.record

    def __exit__(self, *exc) -> bool:
        self._remove()
        return False

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._listening is not None:
            listening, self._listening = self._listening, None
            listening.__exit__(None, None, None)

    def _attention_listener(self, layer: int, request: Request):
        store = self.record.attention
        if request.reduce is None:
            return lambda weights: store.__setitem__(layer, weights)
        return lambda weights: store.__setitem__(layer, request.reduce(layer, weights))

    def _on_output(self, module, args, output):
        logits = getattr(output, "logits", None)
        if logits is not None:
            self.record.logits = logits.detach()
