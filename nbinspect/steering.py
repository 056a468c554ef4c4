"""Steering: add a vector to the residual stream at one layer and see how the model's output moves.

``Steer(layer, vector, coefficient)`` is an edit like :class:`~nbinspect.ScaleHead`: it works with
``perturb``, ``Recompute`` and ``Trace.edit``, and the sliders' edit stacks. Unlike the weight edits it
changes an activation, not a weight: while it is applied, a forward hook on block ``layer`` adds
``coefficient × vector`` to what the block writes into the residual stream, at every position (new
tokens of a generation included). ``perturb`` removes the hook on exit, on exceptions and on ``reset``,
so the model is left exactly as it was; the edit's ``layers()`` is ``{layer}``, so a recompute reruns
from that layer.

Where a vector comes from: :func:`steering_vector` takes the difference of the mean residual streams
(after block ``layer``) of two sets of prompts, e.g. ``["I love this"]`` minus ``["I hate this"]``, at
each prompt's last token (``position="last"``) or averaged over its tokens (``"mean"``). Any tensor of
the model's width works too.

:func:`steer_preview` shows the effect: the top-k next tokens before and after, the KL divergence
KL(before ‖ after) of the next-token distributions, and a short greedy continuation with and without.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._batched import _first, _replace_first, all_finite, locked, raise_not_finite
from .adapters import Adapter, ModelParts
from .capture import Request, capture
from .inputs import encode
from .perturb import Change, Edit, EditError, perturb


def _width(adapter: Adapter) -> int | None:
    config = adapter.config
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if width:
        return int(width)
    emb = adapter.embedding()
    return int(emb.weight.shape[1]) if emb is not None else None


@dataclass(frozen=True, eq=False)
class Steer(Edit):
    """Add ``coefficient × vector`` to the residual stream leaving block ``layer``, at every position.

    ``vector``: a 1-D tensor of the model's width (e.g. from :func:`steering_vector`). Two Steer edits are
    equal when layer, coefficient and vector values are equal, so sliders that keep the vector and move
    only the coefficient are recognized.
    """

    layer: int
    vector: torch.Tensor
    coefficient: float = 1.0

    @property
    def neutral(self) -> bool:
        return self.coefficient == 0

    def layers(self, adapter: Adapter) -> set[int]:
        try:
            return {adapter.check_layer(self.layer)}
        except IndexError as e:
            raise EditError(f"{self!r}: {e}") from None

    def _check(self, adapter: Adapter) -> int:
        (layer,) = self.layers(adapter)
        c = self.coefficient
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
            raise EditError(f"{self!r}: coefficient must be a finite number (0 leaves the model as is), got {c!r}.")
        v = self.vector
        if not isinstance(v, torch.Tensor) or v.dim() != 1 or not v.is_floating_point():
            raise EditError(f"{self!r}: vector must be a 1-D float tensor, got {type(v).__name__} {getattr(v, 'shape', '')}.")
        width = _width(adapter)
        if width is not None and v.shape[0] != width:
            raise EditError(f"{self!r}: vector has {v.shape[0]} entries but this model's residual stream has {width}.")
        if not bool(torch.isfinite(v).all()):
            raise EditError(f"{self!r}: vector contains NaN or infinite values.")
        return layer

    def changes(self, adapter: Adapter) -> list[Change]:
        self._check(adapter)
        return []  # no weight changes: the hook below is the whole edit

    def hooks(self, adapter: Adapter) -> list[tuple[nn.Module, str, object]]:
        layer = self._check(adapter)
        if self.coefficient == 0:
            return []
        delta = self.coefficient * self.vector.detach().float()
        cache: dict = {}

        def add(module, args, output):
            hidden = _first(output)
            key = (hidden.device, hidden.dtype)
            if key not in cache:
                cache[key] = delta.to(hidden.device, hidden.dtype)
            return _replace_first(output, hidden + cache[key])

        return [(adapter.layers[layer], "forward", add)]

    def __eq__(self, other) -> bool:
        if not isinstance(other, Steer):
            return NotImplemented
        if (self.layer, self.coefficient) != (other.layer, other.coefficient):
            return False
        a, b = self.vector, other.vector
        return a is b or (a.shape == b.shape and a.device == b.device and bool(torch.equal(a, b)))

    def __hash__(self) -> int:
        return hash((Steer, self.layer, self.coefficient, tuple(self.vector.shape)))

    def __repr__(self) -> str:
        v = self.vector
        what = f"<{v.shape[0]}-d, norm {float(v.float().norm()):.3g}>" if isinstance(v, torch.Tensor) and v.dim() == 1 else repr(v)
        return f"Steer(layer={self.layer}, vector={what}, coefficient={self.coefficient})"


def steering_vector(
    model,
    tokenizer,
    positive: str | Sequence[str],
    negative: str | Sequence[str],
    layer: int,
    *,
    position: str = "last",
    parts: ModelParts | None = None,
) -> torch.Tensor:
    """Mean residual stream after block ``layer`` over the ``positive`` prompts minus that over the
    ``negative`` ones: float32 ``[d_model]`` on the layer's device.

    ``position``: ``"last"`` (each prompt's last token) or ``"mean"`` (the mean over its tokens).
    """
    if position not in ("last", "mean"):
        raise ValueError(f"position must be 'last' or 'mean', got {position!r}.")
    adapter = Adapter.of(model, parts)
    layer = adapter.check_layer(layer)

    def prompts(texts, name) -> list[str]:
        if isinstance(texts, str):
            return [texts]
        try:
            out = list(texts)
        except TypeError:
            out = None
        if out is None or not all(isinstance(t, str) for t in out):
            raise TypeError(f"{name} must be a prompt (a str) or a list of prompts, got {type(texts).__name__} {texts!r}.")
        if not out:
            raise ValueError(f"{name} is empty: give at least one prompt.")
        return out

    def mean_of(texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            inputs = encode(tokenizer, text, adapter)
            with locked(model), torch.no_grad():
                with capture(model, residual=Request(layers=[layer]), logits=False, parts=parts) as rec:
                    model(**inputs)
                after = rec.residual[layer].after[0].float()  # [n, d]
                if not all_finite(after):  # NaN weights: name the first layer whose output is not finite
                    raise_not_finite(adapter, inputs, after, f"the residual stream after layer {layer}")
            rows.append(after[-1] if position == "last" else after.mean(0))
        return torch.stack(rows).mean(0)

    positive, negative = prompts(positive, "positive"), prompts(negative, "negative")
    return mean_of(positive) - mean_of(negative)


@dataclass
class SteerPreview:
    """Next-token predictions and a greedy continuation without and with the steering edits.

    before, after : top-k ``[(token text, probability)]`` at the last position.
    kl : KL(before ‖ after) of the next-token distributions (nats).
    argmax_changed : whether the top token changed.
    continuation_before, continuation_after : the greedy continuations (text of the new tokens only).
    edits : the edits previewed.
    """

    text: str
    before: list[tuple[str, float]]
    after: list[tuple[str, float]]
    kl: float
    argmax_changed: bool
    continuation_before: str
    continuation_after: str
    edits: tuple[Edit, ...]

    def __str__(self) -> str:
        rows = [f"edits: {', '.join(repr(e) for e in self.edits) or 'none'}",
                f"KL(before ‖ after) = {self.kl:.4f} nats" + ("  (top token changed)" if self.argmax_changed else "")]
        width = max(len(repr(t)) for t, _ in self.before + self.after)
        rows.append(f"{'before':<{width + 8}}  after")
        for (tb, pb), (ta, pa) in zip(self.before, self.after):
            rows.append(f"{tb!r:<{width}} {pb:6.3f}  {ta!r:<{width}} {pa:6.3f}")
        rows.append(f"greedy before: {self.text}[{self.continuation_before}]")
        rows.append(f"greedy after:  {self.text}[{self.continuation_after}]")
        return "\n".join(rows)

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self))


def _greedy(model, input_ids: torch.Tensor, new_tokens: int, check=None) -> tuple[torch.Tensor, list[int]]:
    """The first step's logits ``[vocab]`` and ``new_tokens`` greedily chosen ids (KV cache); ``check(logits)``
    is called on the first step's logits before any new token is generated."""
    # transformers 5 renamed past_key_values to cache; older versions know only the first.
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def cache_of(out):
        value = getattr(out, "cache", None)
        return value if value is not None else out.past_key_values

    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=True)
        first = out.logits[0, -1].float()
        if check is not None:
            check(first)
        ids, past, logits = [], cache_of(out), first
        for _ in range(new_tokens):
            nxt = int(logits.argmax())
            ids.append(nxt)
            out = model(input_ids=torch.tensor([[nxt]], device=input_ids.device), use_cache=True, **{name: past})
            past, logits = cache_of(out), out.logits[0, -1].float()
    return first, ids


def steer_preview(
    model,
    tokenizer,
    text: str,
    *edits: Edit,
    k: int = 5,
    new_tokens: int = 12,
    parts: ModelParts | None = None,
) -> SteerPreview:
    """Top-``k`` next tokens, KL and a ``new_tokens``-token greedy continuation of ``text``, without and
    with ``edits`` (e.g. a :class:`Steer`; any edit works). The model is restored exactly afterwards."""
    adapter = Adapter.of(model, parts)
    if adapter.unembedding() is None:
        raise ValueError(f"this {adapter.family!r} model has no next-token head, so there is nothing to preview.")
    if not isinstance(k, int) or k < 1 or not isinstance(new_tokens, int) or new_tokens < 0:
        raise ValueError(f"k must be ≥ 1 and new_tokens ≥ 0, got k={k!r}, new_tokens={new_tokens!r}.")
    inputs = encode(tokenizer, text, adapter)
    ids = inputs["input_ids"]

    def finite(what):
        # One sum of the [vocab] logits; on NaN (weights, or an edit that overflows) name the first broken layer.
        def check(logits):
            if not all_finite(logits):
                raise_not_finite(adapter, inputs, logits, what)
        return check

    with locked(model):
        before, cont_before = _greedy(model, ids, new_tokens, finite("the model's next-token logits"))
        with perturb(model, *edits, parts=parts):
            after, cont_after = _greedy(model, ids, new_tokens, finite("the next-token logits under the edits"))
    lb, la = before.log_softmax(-1), after.log_softmax(-1)
    kl = float((lb.exp() * (lb - la)).sum().clamp_min(0))

    def top(logp):
        p, i = logp.exp().topk(k)
        return [(tokenizer.decode([t]), round(float(v), 6)) for v, t in zip(p.tolist(), i.tolist())]

    return SteerPreview(
        text=text,
        before=top(lb),
        after=top(la),
        kl=kl,
        argmax_changed=bool(lb.argmax() != la.argmax()),
        continuation_before=tokenizer.decode(cont_before),
        continuation_after=tokenizer.decode(cont_after),
        edits=tuple(edits),
    )
