"""One Trace per input: one forward and one backward record what every view shows.

``t = nbinspect.trace(model, tokenizer, "The capital of France is")`` runs the model once with hooks that
keep, for every layer, the residual stream before and after the block, each head's output (the output
projection's input), the attention and MLP outputs, the MLP neuron activations and MoE routing, and the
attention patterns reduced for display (thumbnails of every head; the focused layer's full maps, other
layers' on demand, see :mod:`nbinspect.attention_maps`). One backward of the *target* (see :mod:`nbinspect.targets`) then gives the
gradient norm of every parameter and the gradient at the input embeddings. Views read all of this; none
of them runs the model.

Requirements this module is built around:

* **One pass.** Everything above comes from the one forward and the one backward. Reductions that views
  share are computed lazily, once, on the model's device (:meth:`Trace.cached`); data a trace does not
  keep (a layer's full attention past the budget, its q and k vectors) comes from :meth:`Trace.replay`,
  which reruns only the blocks asked for.
* **Nothing moves that is not shown.** Tensors stay on the device of the layer that produced them and
  are references to what the forward computed, not copies. Held per token: ``4·L·d + (L+1)·d + L·d_mlp``
  float32 values (residual stream at every boundary, attention output, MLP output, head outputs, neurons)
  — 530 KB for SmolLM2-135M (L=30, d=576, d_mlp=1536) — plus the quantized attention maps (uint8,
  ``L·H·n²`` bytes within ``PATTERN_CACHE_MAX_BYTES``) and, with gradients, the forward's autograd graph,
  kept so that an edit can re-run the backward without re-running the unedited layers.
* **Edits re-run from the edited layer.** :meth:`Trace.edit` gives a new Trace under a stack of edits:
  blocks before the first edited layer are replaced for that one forward by stand-ins that return their
  recorded output (so the model's own forward, head, loss and any logit soft-capping still run), and
  the backward flows on into the recorded graph of the unedited layers. That graph is reused only while
  those layers' weights are untouched since it was recorded (checked with the tensors' version
  counters); otherwise the run starts earlier. The old trace stays valid: views can show before/after.
* **Outputs are the model's own.** The model's attention function (sdpa, flash...) runs as always; the
  probabilities the maps show are computed beside it, without autograd, in causal blocks that skip
  the masked half, and pooled block by block as they are computed. Past
  ``codecs.EXACT_ATTENTION_MAX_TOKENS`` tokens a trace without gradients takes the attention output
  from those probabilities instead (eager's math, within float32 rounding of sdpa's): the scores are
  then computed once, not twice.
* **The model is left as it was**: hooks and stand-ins removed and weights restored on exceptions too,
  attention implementation, training flags, ``requires_grad`` and ``.grad`` as they were.
"""

from __future__ import annotations

import inspect as _inspect
import weakref
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from . import codecs
from .adapters import Adapter, ModelParts
from .attention_maps import AttentionMaps
from .capture import HeadOutputs, Record, Request, capture
from .gradients import METHODS, _norm64, _restoring, group_norms
from .inputs import check_inputs, encode, token_strings
from .perturb import Edit, changed_from, layer_edits, model_lock, perturb
from .targets import Target, predicted, resolve

#: Integrated-gradient steps computed in one batched forward + backward (memory grows with it).
IG_BATCH = 8
#: Steps of integrated gradients (midpoint rule) when a view asks for them.
IG_STEPS = 16


class _Stop(Exception):
    """Raised from a hook to end a replay once its last layer has run."""


class _Recorded(nn.Module):
    """Stands in for an unedited block during a re-run: returns what the block's successor received."""

    def __init__(self, output: torch.Tensor, as_tuple: bool):
        super().__init__()
        self.output, self.as_tuple = output, as_tuple

    def forward(self, *args, **kwargs):
        return (self.output,) if self.as_tuple else self.output


class _EmbeddingGradient:
    """Receives the gradient at the input embeddings; the trace being back-propagated sets ``into``.

    The hook sits on the embedding output of the run that built the graph; later traces that reuse that
    graph point ``into`` at themselves before their backward.
    """

    def __init__(self):
        self.into: Trace | None = None

    def __call__(self, grad: torch.Tensor) -> None:
        if self.into is not None:
            self.into.embedding_grad = grad.detach()


class Trace:
    """What one input did inside the model: activations, attention, logits and gradients, on the model's device.

    Attributes (see the module docs for what each holds): ``model``, ``adapter``, ``tokenizer``, ``inputs``,
    ``input_ids``, ``tokens``, ``record`` (a :class:`~nbinspect.Record` with every layer's ``residual``,
    ``heads``, ``neurons``, ``router``, ``attention_out``, ``mlp_out`` and the ``logits``),
    ``attention_maps``, ``target``, ``target_value``, ``gradient_norms``, ``embeddings``,
    ``embedding_grad``, ``edits`` and ``parent`` (the trace this one was edited from).
    """

    def __init__(self, adapter: Adapter, tokenizer, inputs: dict, target: Target, gradients: bool):
        self.adapter = adapter
        self.model = adapter.model
        self.tokenizer = tokenizer
        self.inputs = inputs
        self.input_ids = inputs["input_ids"]
        self.n_tokens = int(self.input_ids.shape[-1])
        self.tokens = token_strings(tokenizer, self.input_ids) if tokenizer is not None else [str(i) for i in self.input_ids[0].tolist()]
        self.target = target
        self.gradients = gradients
        self.edits: tuple[Edit, ...] = ()
        self._parent: weakref.ref | None = None
        self.record = Record()
        self.attention_maps: AttentionMaps | None = None
        self.target_value: torch.Tensor | None = None
        self.gradient_norms: GradientNorms | None = None
        self.embeddings: torch.Tensor | None = None
        self.embedding_grad: torch.Tensor | None = None
        self.from_layer = -1  # the first layer this trace's own forward computed (-1: all of it)
        self._cache: dict[Any, Any] = {}
        self._graph_in: list[torch.Tensor | None] = []  # each layer's input, attached to the autograd graph
        self._graph_last: torch.Tensor | None = None
        self._versions: list[tuple[int, ...]] = []  # weight versions each layer's graph was recorded with
        self._embedding_hook: _EmbeddingGradient | None = None
        self._tuple_blocks = False

    @property
    def parent(self) -> Trace | None:
        """The trace this one was edited from, while someone still holds it (a weak reference, so a
        slider's run of traces does not keep every earlier one alive)."""
        return None if self._parent is None else self._parent()

    @parent.setter
    def parent(self, value: Trace | None) -> None:
        self._parent = None if value is None else weakref.ref(value)

    # --- what views read ------------------------------------------------------------------------
    @property
    def logits(self) -> torch.Tensor | None:
        """Next-token logits ``[n, vocab]`` (batch row 0), or ``None`` for models without a head."""
        return None if self.record.logits is None else self.record.logits[0]

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Each token id's text."""
        ids = [int(i) for i in ids]
        if self.tokenizer is None:
            return [str(i) for i in ids]
        return [self.tokenizer.decode([i]) for i in ids]

    def cached(self, key, fn: Callable[[], Any]) -> Any:
        """``fn()`` computed once per trace (reductions that several views share)."""
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def attribution(self, method: str = "grad_x_input") -> torch.Tensor:
        """How much each input token matters to the target: float32 ``[n]`` on the host.

        ``"grad_norm"`` and ``"grad_x_input"`` come from the trace's own backward; ``"integrated_gradients"``
        runs ``IG_STEPS`` gradients along the path from an all-zero embedding, ``IG_BATCH`` per pass, the
        first time it is asked for.
        """
        if method not in METHODS:
            raise ValueError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}.")
        return self.cached(("attribution", method), lambda: self._attribution(method))

    def _attribution(self, method: str) -> torch.Tensor:
        if method == "integrated_gradients":
            scores = _integrated_gradients(self, IG_STEPS)
        else:
            if self.embedding_grad is None:
                raise ValueError("this trace was made with gradients=False (or the target does not depend on the input); "
                                 "make it with nbinspect.trace(..., gradients=True) for gradient attribution.")
            g, x = self.embedding_grad[0].float(), self.embeddings[0].float()
            scores = g.norm(dim=-1) if method == "grad_norm" else (g * x).sum(dim=-1)
        return codecs.check_finite(scores, f"the {method} attribution").cpu()

    # --- new traces from this one ----------------------------------------------------------------
    def edit(self, *edits: Edit) -> Trace:
        """This input under this trace's edits plus ``edits``: re-run from the first edited layer."""
        return self.with_edits(self.edits + tuple(edits))

    def with_edits(self, edits: Iterable[Edit]) -> Trace:
        """This input under exactly ``edits`` (e.g. what the sliders say now), re-run from the first layer
        whose edits differ from this trace's."""
        edits = tuple(edits)
        start = changed_from(self.adapter, self.edits, edits)
        if start is None:
            start = self.n_layers  # the same edits: only the head runs again
        child = Trace(self.adapter, self.tokenizer, self.inputs, self.target, self.gradients)
        child.tokens = self.tokens
        child.edits = edits
        child.parent = self
        _run(child, self, start)
        return child

    def retarget(self, target=None, foil=None, position: int | None = None) -> Trace:
        """This input and edits with another target: the forward is reused, only the backward runs again."""
        position = self.target.position if position is None else position
        new = resolve(target, foil, position, n_tokens=self.n_tokens, vocab=_vocab(self.adapter),
                      has_head=self.logits is not None, tokenizer=self.tokenizer)
        child = Trace(self.adapter, self.tokenizer, self.inputs, new, self.gradients)
        child.tokens = self.tokens
        child.edits = self.edits
        child.parent = self
        _run(child, self, self.n_layers)
        return child

    def replay(self, layers: Iterable[int], *, requests: Mapping[str, Any] | None = None,
               hooks: Iterable[tuple[nn.Module, str, Callable]] = ()) -> Record:
        """Re-run blocks ``min(layers)..max(layers)`` (under this trace's edits, without gradients) with
        ``capture(**requests)`` and extra ``(module, "forward" | "forward_pre", fn)`` hooks active.

        For data a view needs that the trace does not keep; costs those blocks plus the embeddings.
        """
        layers = sorted({self.adapter.check_layer(i) for i in layers})
        if not layers:
            raise ValueError("replay needs at least one layer.")
        first, last = layers[0], layers[-1]
        model = self.model
        with ExitStack() as stack:
            stack.enter_context(model_lock(model))
            stack.enter_context(torch.no_grad())
            stack.enter_context(_restoring(model, requires_grad=False, eval_mode=True))
            stack.enter_context(perturb(model, *self.edits))
            record = stack.enter_context(capture(model, logits=False, parts=self.adapter.parts, **dict(requests or {})))
            for module, kind, fn in hooks:
                register = module.register_forward_hook if kind == "forward" else module.register_forward_pre_hook
                stack.callback(register(fn).remove)

            def stop(module, args, output):
                raise _Stop

            stack.callback(self.adapter.layers[last].register_forward_hook(stop).remove)
            stack.enter_context(_stand_ins(self.adapter, self._recorded_inputs(), first, self._tuple_blocks))
            try:
                model(**_forward_kwargs(model, self.inputs))
            except _Stop:
                pass
        return record

    def _recorded_inputs(self, graph: bool = False) -> list[torch.Tensor]:
        if graph:
            return [*self._graph_in, self._graph_last]
        res = self.record.residual
        return [res[i].before for i in range(self.n_layers)] + [res[self.n_layers - 1].after]

    def __repr__(self) -> str:
        edits = f", edits={list(self.edits)!r}" if self.edits else ""
        return f"<Trace of {self.n_tokens} tokens, {self.n_layers} layers, target: {self.target.label}{edits}>"


# --- building traces ------------------------------------------------------------------------------


def _vocab(adapter: Adapter) -> int | None:
    head = adapter.unembedding()
    if head is None:
        return None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else getattr(head, "out_features", None)


def _as_inputs(tokenizer, text_or_inputs, adapter: Adapter) -> dict[str, torch.Tensor]:
    if isinstance(text_or_inputs, str):
        return encode(tokenizer, text_or_inputs, adapter)
    if not isinstance(text_or_inputs, (torch.Tensor, Mapping)):
        raise TypeError(
            "expected the text as a str, or model inputs as a tensor of token ids or a tokenizer's output "
            f"(a dict with 'input_ids'), got {type(text_or_inputs).__name__}."
        )
    inputs = check_inputs(adapter, text_or_inputs, "text_or_inputs")
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError(f"a trace explains one input at a time; input_ids has a batch of {inputs['input_ids'].shape[0]}.")
    return inputs


def trace(model: nn.Module, tokenizer, text_or_inputs, *, target=None, foil=None, position: int = -1,
          gradients: bool = True, parts: ModelParts | None = None) -> Trace:
    """Run ``text_or_inputs`` through ``model`` once (forward, and backward when ``gradients``) and keep
    what every view shows.

    target: what gradients and attributions explain — ``None`` (the token the model predicts at
        ``position``), a token id or one token's text, ``"loss"`` (the LM loss; needs two tokens or more)
        or a function of the model's output. ``foil``: a second token; the target becomes the difference
        of the two logits. Encoders without a head explain the norm of the final state at ``position``.
    Raises ``ValueError``/``TypeError``/``IndexError`` for bad text, ids or targets before running the
    model, and ``ValueError`` when the model's outputs are not finite (naming the first such layer).
    """
    adapter = Adapter.of(model, parts)
    inputs = _as_inputs(tokenizer, text_or_inputs, adapter)
    n = int(inputs["input_ids"].shape[-1])
    vocab = _vocab(adapter)
    resolved = resolve(target, foil, position, n_tokens=n, vocab=vocab, has_head=vocab is not None, tokenizer=tokenizer)
    if not isinstance(gradients, bool):
        raise TypeError(f"gradients must be True or False, got {gradients!r}.")
    t = Trace(adapter, tokenizer, inputs, resolved, gradients)
    _run(t, None, -1)
    return t


def _forward_kwargs(model: nn.Module, inputs: dict, labels: bool = False) -> dict:
    kwargs = dict(inputs)
    # A KV cache would keep references between calls and change what the blocks return.
    if "use_cache" in _inspect.signature(model.forward).parameters:
        kwargs["use_cache"] = False
    if labels:
        kwargs["labels"] = inputs["input_ids"]
    return kwargs


@contextmanager
def _stand_ins(adapter: Adapter, recorded: list[torch.Tensor], start: int, as_tuple: bool):
    """Replace blocks ``0..start-1`` with stand-ins returning the recorded input of the block after each."""
    layers = adapter.layers
    originals = [layers[i] for i in range(start)]
    try:
        for i in range(start):
            layers[i] = _Recorded(recorded[i + 1], as_tuple)
        yield
    finally:
        for i, module in enumerate(originals):
            layers[i] = module


def _versions(module: nn.Module) -> tuple[int, ...]:
    return tuple(p._version for p in module.parameters())


def _graph_valid_until(parent: Trace, start: int) -> int:
    """The first layer < ``start`` whose recorded graph can no longer be back-propagated (its weights were
    changed in place since), or ``start``; -1 when the embeddings changed."""
    emb = parent.adapter.embedding()
    if parent._embedding_hook is None or (emb is not None and _versions(emb) != parent._versions[0]):
        return -1
    for i in range(start):
        if _versions(parent.adapter.layers[i]) != parent._versions[i + 1]:
            return i
    return start


def _run(t: Trace, parent: Trace | None, start: int) -> None:
    """Fill ``t`` by running its input under its edits: everything when ``parent`` is ``None`` or
    ``start`` is -1, else from layer ``start`` on, reusing ``parent`` for the layers before."""
    adapter, model = t.adapter, t.model
    n = adapter.n_layers
    if parent is not None and t.gradients and start >= 0:
        start = _graph_valid_until(parent, start)
    if parent is None or start <= 0:  # from layer 0 on, the embeddings' own output feeds the run: a full one
        start, parent = -1, None
    t.from_layer = start
    layers = list(range(max(start, 0), n))
    if parent is not None:
        _inherit(t, parent, start)
    else:
        t.attention_maps = AttentionMaps(t)
    maps = t.attention_maps

    def reduce_attention(layer, weights):
        return maps.reduce(layer, weights)

    # Only the parts this model has: a view whose part is missing says so, the others still work.
    has = {name: getattr(adapter.parts, name) is not None for name in ("attention", "attention_output", "neurons", "mlp")}
    requests = dict(
        # The model's own attention function runs (outputs bit-identical to a plain forward); the
        # probabilities are computed beside it and pooled block by block as they are computed: no layer's
        # n x n probabilities are kept. Long inputs without gradients reuse them for the output instead
        # (see codecs.EXACT_ATTENTION_MAX_TOKENS); under autograd `exact` has no effect.
        attention=Request(layers=layers, reduce=reduce_attention, blocks=maps.blocks,
                          exact=t.n_tokens <= codecs.EXACT_ATTENTION_MAX_TOKENS)
        if layers and has["attention"] else None,
        heads=layers if has["attention_output"] else None,
        residual=layers,
        attention_out=layers if has["attention_output"] else None,
        mlp_out=layers if has["neurons"] or has["mlp"] else None,
        neurons=layers if has["neurons"] else None,
        router=[i for i in adapter.router_layers() if i in layers] or None,
    )
    graph_in: dict[int, torch.Tensor] = {}
    last: list = []
    shapes: list = []

    def keep_input(i):
        def hook(module, args, kwargs):
            graph_in[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def keep_output(module, args, output):
        shapes.append(isinstance(output, tuple))
        last.append(output[0] if isinstance(output, tuple) else output)

    with ExitStack() as stack:
        stack.enter_context(model_lock(model))
        params = stack.enter_context(_restoring(model, requires_grad=True if t.gradients else None, eval_mode=True))
        stack.enter_context(torch.enable_grad() if t.gradients else torch.no_grad())
        stack.enter_context(perturb(model, *t.edits))
        record = stack.enter_context(capture(model, logits=False, parts=adapter.parts, **{k: v for k, v in requests.items() if v}))
        for i in layers:
            stack.callback(adapter.layers[i].register_forward_pre_hook(keep_input(i), with_kwargs=True).remove)
        stack.callback(adapter.layers[n - 1].register_forward_hook(keep_output).remove)
        if parent is None:
            t._embedding_hook = _EmbeddingGradient() if t.gradients else None
            stack.callback(_watch_embeddings(t).remove)
        else:
            recorded = parent._recorded_inputs(graph=t.gradients)
            stack.enter_context(_stand_ins(adapter, recorded, start, parent._tuple_blocks if start > 0 else False))
        output = model(**_forward_kwargs(model, t.inputs, labels=t.target.kind == "loss"))
        if start < n:  # layers ran: their outputs were recorded; else the last layer's output is the parent's
            t._tuple_blocks = shapes[-1] if shapes else False
        _merge(t, record, layers)
        t.record.logits = _logits(output)
        _check_finite(t, output)
        if t.target.predicted:
            t.target = predicted(t.target, int(t.record.logits[0, t.target.position].argmax()), t.tokenizer)
        value = t.target.value(output)
        t.target_value = value.detach()
        codecs.check_finite(t.target_value, f"the target ({t.target.label})")
        if t.gradients:
            for i in layers:
                t._graph_in[i] = graph_in[i]
            t._graph_last = last[-1] if last else t._graph_last
            for i in layers:  # versions as the weights are now, edits applied: what the graph saved
                t._versions[i + 1] = _versions(adapter.layers[i])
            if parent is None:
                emb = adapter.embedding()
                t._versions[0] = _versions(emb) if emb is not None else ()
            norms = _backward(t, value, params)
    if t.gradients:  # grouped once the stand-ins are gone and every module is back in the model
        t.gradient_norms = group_norms(t.adapter, norms, t.target_value)
    # perturb has restored the edited weights, which bumped their versions: the graph of the edited
    # layers can no longer be back-propagated, and the check above will see that.


def _inherit(t: Trace, parent: Trace, start: int) -> None:
    """Share the parent's data for the layers before ``start`` (the same tensors, not copies)."""
    for kind in ("attention", "heads", "neurons", "residual", "router", "attention_out", "mlp_out"):
        source = getattr(parent.record, kind)
        getattr(t.record, kind).update({i: v for i, v in source.items() if i < start})
    t.attention_maps = parent.attention_maps.inherit(start, t)
    t.embeddings = parent.embeddings
    t._embedding_hook = parent._embedding_hook
    t._tuple_blocks = parent._tuple_blocks
    t._graph_in = list(parent._graph_in)
    t._graph_last = parent._graph_last
    t._versions = list(parent._versions)


def _merge(t: Trace, record: Record, layers: list[int]) -> None:
    # Head outputs keep a reference to the output projection's weight; under an edit that weight is
    # restored when the run ends, so edited layers keep a copy of the weight as it was during the run.
    edited = set(layer_edits(t.adapter, t.edits))
    for i in edited & set(record.heads):
        h = record.heads[i]
        record.heads[i] = HeadOutputs(h.z, h.weight.clone(), None if h.bias is None else h.bias.clone(), h.n_heads)
    for kind in ("heads", "neurons", "residual", "router", "attention_out", "mlp_out"):
        getattr(t.record, kind).update(getattr(record, kind))
    t.attention_maps.layers.update(record.attention)
    if not t._graph_in:
        t._graph_in = [None] * t.n_layers
        t._versions = [()] * (t.n_layers + 1)


def _watch_embeddings(t: Trace):
    emb = t.adapter.embedding()
    if emb is None:
        raise ValueError(f"a {t.adapter.family!r} model's parts name no input embedding; name it with parts=ModelParts(embedding=...).")

    def on_embeddings(module, args, output):
        t.embeddings = output.detach()
        if t._embedding_hook is not None and output.requires_grad:
            output.register_hook(t._embedding_hook)

    return emb.register_forward_hook(on_embeddings)


def _logits(output) -> torch.Tensor | None:
    logits = getattr(output, "logits", None)
    return None if logits is None else logits.detach()


def _check_finite(t: Trace, output) -> None:
    logits, last = t.record.logits, t.record.residual.get(t.n_layers - 1)
    if logits is not None and logits.dim() == 3 and last is not None:
        # The last layer's output at every position, and the logits at the target's position and the
        # last one: a weight that is not finite in the final norm or the head spoils every position's
        # logits, so these rows show it; the full [n, vocab] logits (25 MB at 128 tokens) are not read.
        rows = sorted({t.target.position % logits.shape[1], logits.shape[1] - 1})
        checked = [last.after, logits[:, rows]]
    else:
        final = logits if logits is not None else getattr(output, "last_hidden_state", None)
        checked = [] if final is None else [final]
    # A sum is finite when every value is (a NaN or an infinity carries through it); only when it is not
    # are the values themselves looked at, since a sum of finite values may still overflow.
    if all(bool(torch.isfinite(x.float().sum())) or bool(torch.isfinite(x).all()) for x in checked):
        return
    for i in range(t.n_layers):
        if not bool(torch.isfinite(t.record.residual[i].after).all()):
            raise ValueError(
                f"the output of layer {i} contains NaN or infinite values, so there is nothing meaningful to show; "
                "the model's weights are probably not finite (check with `any(p.isnan().any() for p in model.parameters())`)."
            )
    raise ValueError("the model's logits contain NaN or infinite values (its final norm or head is not finite).")


def _backward(t: Trace, value: torch.Tensor, params: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    """One backward of ``value``: id(parameter) -> its gradient's norm (float64), taken as each gradient
    lands and then dropped, and the gradient at the input embeddings. The graph is kept for later edits."""
    norms: dict[int, torch.Tensor] = {}

    def on_grad(p: torch.Tensor) -> None:
        norms[id(p)] = _norm64(p.grad.detach())
        p.grad = None

    handles = [p.register_post_accumulate_grad_hook(on_grad) for p in params if p.requires_grad]
    if t._embedding_hook is not None:
        t._embedding_hook.into = t
    try:
        if value.requires_grad:
            value.backward(retain_graph=True)
    finally:
        for h in handles:
            h.remove()
        if t._embedding_hook is not None:
            t._embedding_hook.into = None
    return norms


# --- integrated gradients, on request -----------------------------------------------------------------


def _integrated_gradients(t: Trace, steps: int) -> torch.Tensor:
    emb = t.adapter.embedding()
    model = t.model
    with torch.no_grad():
        x = emb(t.input_ids) if t.embeddings is None else t.embeddings
    base = torch.zeros_like(x)
    rest = {k: v for k, v in _forward_kwargs(model, t.inputs).items() if k != "input_ids"}
    total = torch.zeros(x.shape[1:], dtype=torch.float32, device=x.device)
    batch = 1 if t.target.kind == "function" else IG_BATCH
    with ExitStack() as stack:
        stack.enter_context(model_lock(model))
        stack.enter_context(_restoring(model, requires_grad=False, eval_mode=True))
        stack.enter_context(perturb(model, *t.edits))
        for first in range(0, steps, batch):
            ks = torch.arange(first, min(first + batch, steps), device=x.device)
            alphas = ((ks + 0.5) / steps).to(x.dtype)[:, None, None]
            path = (base + alphas * (x - base)).detach().requires_grad_(True)
            kw = {k: (v.expand(len(ks), *v.shape[1:]) if isinstance(v, torch.Tensor) else v) for k, v in rest.items()}
            with torch.enable_grad():
                out = model(inputs_embeds=path, **kw)
                values = _batched_value(t.target, out, t.input_ids)
                (grad,) = torch.autograd.grad(values.sum(), path)
            total += grad.float().sum(dim=0)
    return ((x[0] - base[0]).float() * total / steps).sum(dim=-1)


def _batched_value(target: Target, output, input_ids: torch.Tensor) -> torch.Tensor:
    """The target's value for every batch row (rows are independent inputs of the same tokens)."""
    if target.kind == "function":
        return target.value(output).reshape(1)
    if target.kind == "state_norm":
        return output.last_hidden_state[:, target.position].norm(dim=-1)
    logits = output.logits
    if target.kind == "loss":  # the mean next-token cross-entropy of each row, as the model's loss is
        labels = input_ids[0, 1:].to(logits.device).expand(logits.shape[0], -1)
        return torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, reduction="none").mean(-1)
    at = logits[:, target.position]
    if target.kind == "contrast":
        return at[:, target.token] - at[:, target.foil]
    return at[:, target.token]
