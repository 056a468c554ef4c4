"""Record what happens inside a model during the user's own forward (and backward) pass.

``with nbinspect.capture(model, attention=..., neurons=...) as record: model(**inputs)`` installs hooks
for exactly what was asked and nothing else, keeps every result on the device of the layer that produced
it (reducing it there when a ``reduce`` function is given, so the full tensor is never kept), and removes
every hook in ``finally`` — after exceptions and KeyboardInterrupt too. The model's attention
implementation is never switched: see :mod:`nbinspect._attention_hook`.

What each request records, per layer (``[batch, position, ...]`` unless said otherwise):

- ``attention``: attention probabilities ``[batch, heads, query, key]``, float32, equal to eager's.
- ``heads``: what each head computed, as :class:`HeadOutputs` (the concatenated head outputs that the
  output projection reads; what each head *writes* into the residual stream is computed on demand).
- ``neurons``: MLP neuron activations, the input of the down/output projection (for gated MLPs
  ``act(gate) * up``, not the activation function's output).
- ``residual``: the residual stream before and after the block, as :class:`Residual`.
- ``router``: for mixture-of-experts layers, router probabilities and chosen experts, as :class:`Routing`.
- ``attention_out``: what the attention's output projection returns (o_proj / c_proj / dense): the sum of
  every head's write plus the bias. Models with a norm after it (Gemma 2/3) or post-norm blocks (BERT)
  add a normed version of it to the residual stream.
- ``mlp_out``: what the MLP's down projection returns (the whole MLP module's output for MoE families).
- ``gradients``: gradients of the captured activations (heads, neurons, residual), filled in when the
  user calls ``backward()`` inside the block; attention probabilities are recomputed off the graph and
  have none.

Memory follows the request: a layer that was not asked for gets no hook, and a ``reduce`` runs as soon
as its tensor exists, so e.g. per-head summaries of every layer cost a few numbers per head, not n²
(see :mod:`nbinspect.reductions`); ``Request(dtype=torch.float16)`` keeps full patterns at half the size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from . import _attention_hook
from .adapters import Adapter, ModelParts

Reduce = Callable[[int, Any], Any]
_GRADIENT_KINDS = ("heads", "neurons", "residual")


@dataclass(frozen=True)
class Request:
    """What to record for one kind of data.

    layers: the layers to hook (``None``: all of them; negative indices count from the end).
    reduce: called as ``reduce(layer, value)`` on the layer's device as soon as the value exists;
        its return value is stored instead (e.g. a per-head summary, top-k neurons).
        See :mod:`nbinspect.reductions` for ready-made ones.
    dtype: keep tensors in this dtype (e.g. ``torch.float16`` halves a full attention capture);
        attention is still computed in float32 and written straight into the smaller tensor, so no
        float32 copy of a whole pattern ever exists. Applied before ``reduce``.
    exact: attention only. ``True`` (default) leaves every output of the model bit-identical: the
        weights are computed next to the model's own sdpa/flash call. ``False`` lets a captured layer use
        the output computed from those weights instead (eager's math; about half the cost at long
        inputs, outputs differ from sdpa's in the last bits as eager's do). Without effect under
        autograd, where the model's own function always runs.
    blocks: attention only, for long inputs. ``blocks(layer, heads, q_len, k_len, device)`` makes a block
        reducer: instead of one ``[batch, heads, q, k]`` tensor, the probabilities of each block of query
        rows go to its ``add(start, probs)`` (``probs`` ``[heads, rows, visible keys]``, batch 0, later
        keys are zero) while they are computed, and ``reduce`` then receives the reducer, so the n x n
        map never exists. Used by the Trace, whose maps are pooled anyway.
    """

    layers: Sequence[int] | None = None
    reduce: Reduce | None = None
    dtype: torch.dtype | None = None
    exact: bool = True
    blocks: Callable[..., Any] | None = None


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


class Residual(NamedTuple):
    """The residual stream around one block: its input and its output, ``[batch, position, d_model]``."""

    before: Any
    after: Any


class Routing(NamedTuple):
    """One MoE layer's routing decision for every token.

    probs: softmax of the router logits over all experts, float32, ``[batch, position, experts]``.
    experts: the experts each token was sent to, ``[batch, position, top_k]``.
    weights: the weights the chosen experts' outputs were mixed with, ``[batch, position, top_k]``.
    """

    probs: torch.Tensor
    experts: torch.Tensor
    weights: torch.Tensor


@dataclass
class HeadOutputs:
    """What every attention head of one layer computed, kept as the output projection's input.

    Storing the ``[batch, position, heads * head_dim]`` input rather than each head's write keeps the
    capture ``d_model / head_dim`` times smaller; :meth:`writes` multiplies it out when asked.
    """

    z: torch.Tensor
    weight: torch.Tensor  # [d_model, heads * head_dim], Conv1D already transposed
    bias: torch.Tensor | None
    n_heads: int

    @property
    def per_head(self) -> torch.Tensor:
        """Each head's output before the projection, ``[batch, position, heads, head_dim]``."""
        return self.z.unflatten(-1, (self.n_heads, -1))

    def writes(self, head: int | None = None) -> torch.Tensor:
        """What each head adds to the residual stream, ``[batch, position, heads, d_model]``
        (or ``[batch, position, d_model]`` for one ``head``). Their sum plus the bias is the projection's output."""
        z = self.per_head
        w = self.weight.unflatten(1, (self.n_heads, -1))  # [d_model, heads, head_dim]
        if head is not None:
            return z[..., head, :] @ w[:, head, :].t()
        return torch.einsum("bphd,mhd->bphm", z, w.to(z.dtype))


@dataclass
class Record:
    """What a capture recorded. Tensors stay on the device of the layer that produced them.

    attention: layer -> attention probabilities ``[batch, heads, query, key]`` (float32), or what the
        request's ``reduce`` returned for it. The other dicts work the same way (see the module docs).
    logits: the model's output logits, when it produced any.
    gradients: kind ("heads", "neurons", "residual") -> layer -> gradient of that activation, shaped
        like it (a :class:`Residual` of gradients for "residual"), filled during ``backward()``.
    """

    attention: dict[int, Any] = field(default_factory=dict)
    heads: dict[int, Any] = field(default_factory=dict)
    neurons: dict[int, Any] = field(default_factory=dict)
    residual: dict[int, Any] = field(default_factory=dict)
    router: dict[int, Any] = field(default_factory=dict)
    attention_out: dict[int, Any] = field(default_factory=dict)
    mlp_out: dict[int, Any] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    gradients: dict[str, dict[int, Any]] = field(default_factory=dict)
    input_ids: torch.Tensor | None = None  # set by run()
    tokens: list[str] | None = None  # set by run(): each token's text


def _reducer(request: Request, cast: bool = True) -> Reduce:
    """``request``'s dtype then its reduce, as one function of ``(layer, value)``."""
    dtype, reduce = request.dtype if cast else None, request.reduce
    if dtype is not None:

        def to_dtype(value):
            if isinstance(value, HeadOutputs):
                return HeadOutputs(value.z.to(dtype), value.weight, value.bias, value.n_heads)
            if isinstance(value, Routing):
                return Routing(value.probs.to(dtype), value.experts, value.weights.to(dtype))
            return value.to(dtype)

        if reduce is None:
            return lambda layer, value: to_dtype(value)
        return lambda layer, value: reduce(layer, to_dtype(value))
    return reduce or (lambda layer, value: value)


def _hidden(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _first(output) -> torch.Tensor:
    # Blocks return a tensor in transformers 5, a tuple whose first item is the hidden state before.
    return output[0] if isinstance(output, (tuple, list)) else output


class capture:
    """Context manager recording the requested internals of ``model`` during the calls made inside it.

    Each of ``attention``, ``heads``, ``neurons``, ``residual``, ``router``, ``attention_out`` and ``mlp_out`` takes ``True`` (every
    layer), a layer index, a list of layers, a ``reduce`` function, or a :class:`Request`.
    ``gradients=True`` also records the gradients of the captured heads, neurons and residual stream;
    a list of kinds limits it to those. ``parts`` names the modules of a model nbinspect does not know.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        attention=None,
        heads=None,
        neurons=None,
        residual=None,
        router=None,
        attention_out=None,
        mlp_out=None,
        gradients=False,
        logits: bool = True,
        parts: ModelParts | None = None,
    ):
        self.adapter = Adapter.of(model, parts)
        self.model = model
        requested = dict(attention=attention, heads=heads, neurons=neurons, residual=residual, router=router,
                         attention_out=attention_out, mlp_out=mlp_out)
        self.requests = {kind: self._layers_of(kind, _as_request(value)) for kind, value in requested.items()}
        self.gradient_kinds = self._gradient_kinds(gradients)
        self.logits = logits
        self.record = Record()
        self._handles: list = []
        self._listening = None
        self._token_shapes: dict[int, torch.Size] = {}  # layer -> [batch, position], where an MLP flattens them
        # Block outputs kept without a copy, with their version counters as stored: checked at the end.
        self._kept: list[tuple[str, int, torch.Tensor, int]] = []

    # --- checking the request -------------------------------------------------------------
    def _layers_of(self, kind: str, request: Request | None) -> tuple[Request, list[int]] | None:
        if request is None:
            return None
        a = self.adapter
        if kind == "neurons" and a.parts.neurons is None:
            raise ValueError(
                f"a {a.family!r} model has no single MLP whose input is its neuron activations (its experts are "
                "fused); capture router=True for it instead, or name the module with parts=ModelParts(neurons=...)."
            )
        if kind == "router":
            available = a.router_layers()
            if not available:
                raise ValueError(
                    f"this {a.family!r} model has no mixture-of-experts router to record; drop router=... for it."
                )
            if request.layers is None:
                return request, available
            layers = sorted({a.check_layer(i) for i in request.layers})
            dense = [i for i in layers if i not in available]
            if dense:
                raise ValueError(f"layers {dense} of this model have a dense MLP, not a router; routed layers: {available}.")
            return request, layers
        layers = range(a.n_layers) if request.layers is None else [a.check_layer(i) for i in request.layers]
        return request, sorted(set(layers))

    def _gradient_kinds(self, gradients) -> tuple[str, ...]:
        if gradients is True:
            kinds = tuple(k for k in _GRADIENT_KINDS if self.requests[k] is not None)
            if not kinds:
                raise ValueError("gradients=True records gradients of captured heads, neurons or residual; request one of them too.")
            return kinds
        if not gradients:
            return ()
        kinds = (gradients,) if isinstance(gradients, str) else tuple(gradients)
        for kind in kinds:
            if kind not in _GRADIENT_KINDS or self.requests[kind] is None:
                raise ValueError(
                    f"cannot record gradients of {kind!r}: name kinds among {_GRADIENT_KINDS} that this capture also records."
                )
        return kinds

    # --- installing and removing ----------------------------------------------------------
    def __enter__(self) -> Record:
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        return self.record

    def __exit__(self, *exc) -> bool:
        self._remove()
        if exc[0] is None:
            self._check_kept()
        self._kept = []
        return False

    def _check_kept(self) -> None:
        """Block outputs kept without a copy must not have changed since: a family that changes them in
        place (which a newer transformers might do) is copied from now on, and this run says so."""
        changed = [(kind, layer) for kind, layer, tensor, version in self._kept if tensor._version != version]
        if changed:
            self.adapter.outputs_changed()
            kind, layer = changed[0]
            raise RuntimeError(
                f"this {self.adapter.family!r} model changed its {kind.replace('_out', '')} output of layer {layer} in "
                "place after returning it, so what was recorded is not what the block wrote. nbinspect copies these "
                "outputs for this family from now on: run the same call again."
            )

    def _install(self) -> None:
        a, hook = self.adapter, self._handles.append
        if self.requests["attention"] is not None:
            request, layers = self.requests["attention"]
            listeners = {a.attention(i): self._attention_listener(i, request) for i in layers}
            self._listening = _attention_hook.listening(self.model, listeners, request.dtype or torch.float32, request.exact)
            self._listening.__enter__()
        if self.requests["heads"] is not None:
            request, layers = self.requests["heads"]
            for i in layers:
                hook(a.part(i, "attention_output").register_forward_pre_hook(self._on_heads(i, request)))
        if a.parts.mlp is None:  # a down projection in the block itself (OPT's) may see the tokens flattened
            flat = {i for kind in ("neurons", "mlp_out") if self.requests[kind] is not None for i in self.requests[kind][1]}
            for i in sorted(flat):
                hook(a.layers[i].register_forward_pre_hook(self._on_tokens(i), with_kwargs=True))
        if self.requests["neurons"] is not None:
            request, layers = self.requests["neurons"]
            for i in layers:
                hook(a.part(i, "neurons").register_forward_pre_hook(self._on_neurons(i, request)))
        if self.requests["residual"] is not None:
            request, layers = self.requests["residual"]
            for i in layers:
                before, after = self._on_residual(i, request)
                hook(a.layers[i].register_forward_pre_hook(before, with_kwargs=True))
                hook(a.layers[i].register_forward_hook(after))
        if self.requests["router"] is not None:
            request, layers = self.requests["router"]
            for i in layers:
                shape, on_router = self._on_router(i, request)
                hook(a.part(i, "mlp").register_forward_pre_hook(shape))
                hook(a.part(i, "router").register_forward_hook(on_router))
        for kind in ("attention_out", "mlp_out"):
            if self.requests[kind] is not None:
                request, layers = self.requests[kind]
                for i in layers:
                    hook(self._block_output_module(kind, i).register_forward_hook(self._on_block_output(kind, i, request)))
        if self.logits:
            hook(self.model.register_forward_hook(self._on_output))

    def _remove(self) -> None:
        handles, self._handles = self._handles, []
        try:
            for handle in handles:
                handle.remove()
        finally:
            if self._listening is not None:
                listening, self._listening = self._listening, None
                listening.__exit__(None, None, None)

    # --- the hooks ------------------------------------------------------------------------
    def _attention_listener(self, layer: int, request: Request) -> Callable[[Any], None]:
        listener = self._store("attention", layer, request, cast=False)
        if request.blocks is not None:  # _attention_hook looks for it (see `Request.blocks`)
            listener.blocks = functools.partial(request.blocks, layer)
        return listener

    def _store(self, kind: str, layer: int, request: Request, cast: bool = True) -> Callable[[Any], None]:
        store, reduce = getattr(self.record, kind), _reducer(request, cast)
        return lambda value: store.__setitem__(layer, reduce(layer, value))

    def _watch_gradient(self, kind: str, layer: int, tensor: torch.Tensor, slot: str | None = None,
                        shape: tuple | None = None) -> None:
        if kind not in self.gradient_kinds or not tensor.requires_grad:
            return
        grads = self.record.gradients.setdefault(kind, {})

        def keep(grad):
            if slot is None:
                grads[layer] = grad.detach() if shape is None else grad.detach().reshape(shape)
            else:
                previous = grads.get(layer, Residual(None, None))
                grads[layer] = previous._replace(**{slot: grad.detach()})

        tensor.register_hook(keep)

    def _on_heads(self, layer: int, request: Request):
        store, n_heads, adapter = self._store("heads", layer, request), self.adapter.n_heads, self.adapter

        def on_heads(module, args):
            z = args[0]
            self._watch_gradient("heads", layer, z)
            weight, bias = adapter.output_projection(layer, module)  # references (offloaded: the stored copy)
            store(HeadOutputs(z.detach(), weight.detach(), None if bias is None else bias.detach(), n_heads))

        return on_heads

    def _on_tokens(self, layer: int):
        def tokens(module, args, kwargs):
            self._token_shapes[layer] = _hidden(args, kwargs).shape[:-1]

        return tokens

    def _unflattened(self, layer: int, x: torch.Tensor) -> tuple | None:
        """``[batch, position, -1]`` when ``x`` holds the layer's tokens flattened to ``[batch * position, d]``
        (OPT's MLP runs so), else None."""
        shape = self._token_shapes.get(layer)
        return (*shape, -1) if shape is not None and x.dim() == 2 and len(shape) == 2 else None

    def _on_neurons(self, layer: int, request: Request):
        store = self._store("neurons", layer, request)

        def on_neurons(module, args):
            x = args[0]
            shape = self._unflattened(layer, x)
            self._watch_gradient("neurons", layer, x, shape=shape)
            store((x if shape is None else x.reshape(shape)).detach())

        return on_neurons

    def _on_residual(self, layer: int, request: Request):
        record, reduce = self.record.residual, _reducer(request)

        def before(module, args, kwargs):
            hidden = _hidden(args, kwargs)
            self._watch_gradient("residual", layer, hidden, "before")
            record[layer] = Residual(reduce(layer, hidden.detach()), None)

        def after(module, args, output):
            hidden = _first(output)
            self._watch_gradient("residual", layer, hidden, "after")
            record[layer] = record[layer]._replace(after=reduce(layer, hidden.detach()))

        return before, after

    def _block_output_module(self, kind: str, layer: int) -> nn.Module:
        a = self.adapter
        if kind == "attention_out":
            return a.part(layer, "attention_output")
        # The down projection's output is the MLP's write; MoE blocks have none, so their whole MLP.
        return a.part(layer, "neurons") if a.has_part(layer, "neurons") else a.part(layer, "mlp")

    def _on_block_output(self, kind: str, layer: int, request: Request):
        store, kept = self._store(kind, layer, request), self.adapter.outputs_kept_as_returned

        def on_output(module, args, output):
            out = _first(output)
            shape = self._unflattened(layer, out) if kind == "mlp_out" else None
            value = (out if shape is None else out.reshape(shape)).detach()  # shares the version counter
            if kept:
                self._kept.append((kind, layer, value, value._version))
            else:  # some blocks add to the returned tensor in place (Falcon: mlp_output += attention_output)
                value = value.clone()
            store(value)

        return on_output

    def _on_router(self, layer: int, request: Request):
        store, tokens = self._store("router", layer, request), {}

        def shape(module, args):
            tokens["shape"] = args[0].shape[:-1]

        def on_router(module, args, output):
            logits, weights, experts = output  # transformers 5 routers return all three
            leading = tokens.get("shape", logits.shape[:-1])
            probs = torch.softmax(logits.detach().float(), dim=-1)
            store(
                Routing(
                    probs.reshape(*leading, -1),
                    experts.detach().reshape(*leading, -1),
                    weights.detach().reshape(*leading, -1),
                )
            )

        return shape, on_router

    def _on_output(self, module, args, output):
        logits = getattr(output, "logits", None)
        if logits is not None:
            self.record.logits = logits.detach()


def run(model: nn.Module, tokenizer, text: str, *, parts: ModelParts | None = None, **requests) -> Record:
    """Tokenize ``text``, run ``model`` on it once without gradients, and return what ``capture`` recorded.

    ``requests`` are ``capture``'s (``attention=``, ``heads=``, ``neurons=``, ``residual=``, ``router=``);
    the record also carries the ``input_ids`` and readable ``tokens`` it was computed from.
    """
    from .inputs import encode, token_strings

    if requests.get("gradients"):
        raise ValueError(
            "run() makes no backward pass; use `with nbinspect.capture(model, gradients=True, ...)` around your own "
            "forward and backward, or nbinspect.gradient_norms / nbinspect.saliency."
        )
    adapter = Adapter.of(model, parts)
    inputs = encode(tokenizer, text, adapter)
    with capture(model, parts=parts, **requests) as record, torch.no_grad():
        model(**inputs)
    record.input_ids = inputs["input_ids"]
    record.tokens = token_strings(tokenizer, inputs["input_ids"])
    return record
