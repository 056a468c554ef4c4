"""Attention weights under any attention implementation, without switching the model to eager.

transformers looks up the attention function by name on every call
(``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)``).
While a capture is active we place a wrapper in that registry's *local* mapping under the model's own
implementation name. The wrapper calls the very function the model would have called, so outputs are
unchanged bit for bit; only for modules someone listens to does it also compute
``softmax(q kᵀ · scale + mask)`` in float32, exactly as eager attention does (grouped KV heads
repeated, causal mask rebuilt when sdpa was given none). The wrapper is removed when the last capture
ends, on exceptions too. A capture may waive bit-identity for speed (``exact=False``, see `listening`).
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
from collections.abc import Callable

import torch
from torch import nn

try:  # transformers >= 4.48
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
except ImportError:  # pragma: no cover - older transformers
    ALL_ATTENTION_FUNCTIONS = None

Listener = Callable[[torch.Tensor], None]

_lock = threading.RLock()
# id(attention module) -> (callback receiving [batch, heads, q, k], the dtype to hand it over in,
# whether the model's own attention function must still compute the output, whether only the last
# query's row is wanted ([batch, heads, 1, k]): see `listening`)
_listeners: dict[int, tuple[Listener, torch.dtype, bool, bool]] = {}
_installed: dict[str, tuple[bool, object]] = {}  # implementation name -> (had local entry, previous entry)
_users: dict[str, int] = {}


@functools.lru_cache(maxsize=None)
def calls_attention_interface(cls: type) -> bool:
    """Whether ``cls.forward`` looks its attention function up in transformers' registry (every family
    written or rewritten since transformers 4.48 does), so that wrapping the registry entry reaches it."""
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError, AttributeError):
        return False
    return any(word in source for word in ("ALL_ATTENTION_FUNCTIONS", "eager_attention_forward", "attention_interface"))


def _module_eager(module: nn.Module) -> Callable:
    """The eager attention function of the module's own modeling file (every HF family defines one)."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise TypeError(
            f"{type(module).__name__} does not use transformers' attention functions, so its weights cannot be "
            "captured; load the model with attn_implementation='eager' or 'sdpa'."
        )
    return fn


# Scores are computed a block of query rows at a time, each block about this many float32 values
# (16 MB, twice, in a reused scratch buffer): small next to a long input's n x n pattern, large enough
# to keep the matmuls efficient and the Python loop short (9 blocks per SmolLM2 layer at 2048 tokens).
_BLOCK_VALUES = 1 << 22
# Causal blocks hold at most this many query rows: each computes only the keys its last row can see, so
# shorter blocks skip more of the masked half (sdpa's flash kernel skips it too), and 64 rows still keep
# the matmuls efficient. Measured on one CPU core, SmolLM2's 9 heads: 512 tokens 16.5 -> 7.2 ms a layer.
_CAUSAL_ROWS = 64


def attention_weights(module: nn.Module, query, key, attention_mask, scaling=None, is_causal=None,
                      dtype: torch.dtype = torch.float32, value: torch.Tensor | None = None,
                      softcap: float | None = None, reducer=None):
    """Eager attention probabilities, shape [batch, heads, q, k], from post-rotary q and k.

    Computed in float32 like eager attention and stored as ``dtype``. Written for long inputs: query rows
    go a block at a time into the one output tensor (so no second n x n float32 copy ever exists), a
    causal block only computes the keys it can see (half the work), and grouped KV heads are never copied.
    Given ``value``, also returns eager's attention output ``[batch, q, heads, head_dim]``, computed from
    each block while it is at hand: ``(weights, output)``. ``softcap`` soft-caps the scores before the
    mask as eager does (Gemma 2/3: ``tanh(s / cap) * cap``).
    Given a ``reducer`` (batch 1; see `capture.Request.blocks`), each block's probabilities go to
    ``reducer.add(start, probs)`` instead of into one n x n tensor, and ``None`` stands for the weights.
    """
    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    n_rep = heads // kv_heads  # grouped-query attention: query head j reads KV head j // n_rep
    if scaling is None:
        scaling = dim**-0.5
    # Scaling q before the product (not the n x n result) saves a pass; it changes rounding by ~1 ulp.
    q = (query.float() * scaling).view(batch, kv_heads, n_rep, q_len, dim)
    k_t = key.float().reshape(batch * kv_heads, k_len, dim).transpose(1, 2)
    mask = None
    if attention_mask is not None:
        mask = attention_mask[..., :k_len]
        if mask.dtype == torch.bool:
            # The dtype's minimum, as eager's additive masks use: a fully masked (padding) query row
            # then comes out uniform, as in eager, instead of NaN.
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, torch.finfo(torch.float32).min)
        mask = mask.float()
    causal = mask is None and (getattr(module, "is_causal", True) if is_causal is None else is_causal) and q_len > 1
    if causal:
        mask = _causal_mask(q_len, k_len, query.device)
    out = None if reducer is not None else torch.empty(batch, heads, q_len, k_len, dtype=dtype, device=query.device)
    if value is not None:
        v = value.reshape(batch * kv_heads, k_len, value.shape[-1])
        # Laid out as eager returns it, [batch, q, heads, head_dim], so no transposed copy is needed.
        output = torch.empty(batch, q_len, kv_heads, n_rep, value.shape[-1], dtype=value.dtype, device=value.device)
    block = max(1, _BLOCK_VALUES // (batch * heads * k_len))
    if causal:  # short blocks skip more of the masked triangle: 64 rows compute ~53 % of the square at 512
        block = min(block, _CAUSAL_ROWS)
    scratch = _scratch(query.device, 2 * batch * heads * min(block, q_len) * k_len)
    for start in range(0, q_len, block):
        stop = min(start + block, q_len)
        # Queries are the last q_len of the k_len positions (a KV cache may hold earlier ones).
        visible = k_len - q_len + stop if causal else k_len
        rows = q[:, :, :, start:stop].reshape(batch * kv_heads, n_rep * (stop - start), dim)
        size = batch * heads * (stop - start) * visible
        scores = scratch[:size].view(batch * kv_heads, n_rep * (stop - start), visible)
        torch.bmm(rows, k_t[:, :, :visible], out=scores)
        scores = scores.view(batch, heads, stop - start, visible)
        if softcap:
            scores.div_(softcap).tanh_().mul_(softcap)
        if mask is not None:
            scores.add_(mask[..., start:stop, :visible])
        probs = scratch[size : 2 * size].view(batch, heads, stop - start, visible)
        torch.ops.aten._softmax.out(scores, -1, False, out=probs)
        if reducer is not None:
            reducer.add(start, probs[0])
        else:
            out[:, :, start:stop, :visible] = probs
            if visible < k_len:
                out[:, :, start:stop, visible:] = 0
        if value is not None:
            rows_out = torch.bmm(probs.view(batch * kv_heads, -1, visible).to(v.dtype), v[:, :visible])
            output[:, start:stop] = rows_out.view(batch, kv_heads, n_rep, stop - start, -1).permute(0, 3, 1, 2, 4)
    if value is not None:
        return out, output.view(batch, q_len, heads, -1)
    return out


def last_query_weights(module: nn.Module, query, key, attention_mask, scaling=None, softcap: float | None = None):
    """Eager attention probabilities of the LAST query only, float32 ``[batch, heads, 1, k]``.

    ``softmax(q_last kᵀ · scale + mask_last)``: one small matmul per layer, what a generation step needs
    (at a KV-cache step the query is one token anyway; at the prompt step the other rows are skipped).
    The last query sees every key under a causal mask, so none is rebuilt when the model passed none.
    """
    batch, heads, _, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    if scaling is None:
        scaling = dim**-0.5
    # 3-D bmm (grouped KV heads never copied): fewer dispatches than a broadcasting 4-D matmul.
    q = (query[:, :, -1].float() * scaling).view(batch * kv_heads, heads // kv_heads, dim)
    scores = torch.bmm(q, key.float().reshape(batch * kv_heads, k_len, dim).transpose(1, 2)).view(batch, heads, 1, k_len)
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[..., -1:, :k_len]
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, torch.finfo(torch.float32).min)
        scores = scores + mask.float()
    return torch.softmax(scores, dim=-1)


_causal_cache: dict[tuple, torch.Tensor] = {}
_scratch_cache: dict[tuple, torch.Tensor] = {}  # (device, thread) -> buffer: two threads never share one


def _scratch(device: torch.device, size: int) -> torch.Tensor:
    """A float32 buffer of at least ``size`` values, reused from block to block and layer to layer.

    Fresh multi-MB tensors come from mmap on every allocation and each of their pages faults on first
    touch; at 512 tokens that cost as much system time as the capture's arithmetic. Dropped with the
    last capture (see `_uninstall`).
    """
    key = (str(device), threading.get_ident())
    buffer = _scratch_cache.get(key)
    if buffer is None or buffer.numel() < size:
        buffer = _scratch_cache[key] = torch.empty(size, device=device)
    return buffer


def _causal_mask(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Additive mask hiding later keys; queries are the last q_len of k_len positions (a KV cache may hold
    earlier ones). One per shape and device is kept, since every layer of a forward needs the same one."""
    key = (q_len, k_len, str(device))
    mask = _causal_cache.get(key)
    if mask is None:
        q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        mask = torch.zeros(q_len, k_len, device=device).masked_fill_(k_pos > q_pos, float("-inf"))
        _causal_cache.clear()  # lengths change from call to call; keeping only the latest bounds the memory
        _causal_cache[key] = mask
    return mask


# Attention-function arguments that change the math beyond softmax(q kᵀ · scale + mask) v; with any of
# them set, a fast capture falls back to running the model's own function.
_UNUSUAL = ("softcap", "s_aux", "sinks", "sliding_window")


def _can_replace(query, args, kwargs) -> bool:
    """Whether eager's math, as computed here, may stand in for the model's own attention function."""
    if args or kwargs.get("dropout", 0.0) or any(kwargs.get(name) is not None for name in _UNUSUAL):
        return False
    # The blocks are written in place, which autograd cannot follow.
    return not (torch.is_grad_enabled() and query.requires_grad)


def _reducer_for(listener: Listener, query: torch.Tensor, key: torch.Tensor):
    """The listener's block reducer for this call (see `capture.Request.blocks`), or None: none asked for,
    or a batch of several inputs (reducers see batch 0 only)."""
    blocks = getattr(listener, "blocks", None)
    if blocks is None or query.shape[0] != 1:
        return None
    return blocks(query.shape[1], query.shape[2], key.shape[2], query.device)


def _wrapper(name: str, original: Callable | None) -> Callable:
    def capturing_attention(module, query, key, value, attention_mask, *args, **kwargs):
        fn = original if original is not None else _module_eager(module)
        entry = _listeners.get(id(module))
        if entry is not None and entry[3]:  # the last query's row only, beside the model's own call
            out = fn(module, query, key, value, attention_mask, *args, **kwargs)
            with torch.no_grad():
                weights = last_query_weights(module, query, key, attention_mask, kwargs.get("scaling"),
                                             kwargs.get("softcap"))
            entry[0](weights if entry[1] == torch.float32 else weights.to(entry[1]))
            return out
        if entry is not None and not entry[2] and original is not None and _can_replace(query, args, kwargs):
            listener, dtype, _, _ = entry
            reducer = _reducer_for(listener, query, key)
            with torch.no_grad():
                weights, output = attention_weights(
                    module, query, key, attention_mask, kwargs.get("scaling"), kwargs.get("is_causal"), dtype, value,
                    reducer=reducer,
                )
            listener(weights if reducer is None else reducer)
            return output, None
        out = fn(module, query, key, value, attention_mask, *args, **kwargs)
        if entry is not None:
            listener, dtype, _, _ = entry
            weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
            reducer = _reducer_for(listener, query, key)
            with torch.no_grad():
                if weights is None or weights.dtype != torch.float32:
                    weights = attention_weights(
                        module, query, key, attention_mask, kwargs.get("scaling"), kwargs.get("is_causal"), dtype,
                        softcap=kwargs.get("softcap"), reducer=reducer,
                    )
                elif reducer is not None:
                    reducer.add(0, weights.detach()[0])
                else:  # the model's own weights (eager): autograd may still need them, so hand over a copy
                    weights = weights.detach().to(dtype, copy=True)
                listener(weights if reducer is None else reducer)
        return out

    capturing_attention.__nbinspect__ = name
    return capturing_attention


def _install(name: str) -> None:
    registry = ALL_ATTENTION_FUNCTIONS
    local = registry._local_mapping
    had = name in local
    previous = local.get(name)
    original = previous if had else registry._global_mapping.get(name)  # None for "eager"
    local[name] = _wrapper(name, original)
    _installed[name] = (had, previous)


def _uninstall(name: str) -> None:
    if len(_installed) == 1:
        _scratch_cache.clear()
        _causal_cache.clear()
    had, previous = _installed.pop(name)
    local = ALL_ATTENTION_FUNCTIONS._local_mapping
    if had:
        local[name] = previous
    else:
        local.pop(name, None)


def implementation_of(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"


def _takes(module: nn.Module, name: str) -> bool:
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters


def _additive_mask(module: nn.Module, hidden: torch.Tensor, mask, kwargs) -> torch.Tensor | None:
    """The float mask an own-code eager path adds to its scores, from what sdpa was given: a boolean
    mask (True: attend) becomes 0 / the dtype's minimum; no mask (sdpa's implicit causal) a causal one."""
    dtype = hidden.dtype
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    if mask is not None or not getattr(module, "is_causal", False):
        return mask
    q_len = hidden.shape[1]
    cache = kwargs.get("layer_past")
    past = cache.get_seq_length(getattr(module, "layer_idx", 0) or 0) if hasattr(cache, "get_seq_length") else 0
    q_pos = torch.arange(past, past + q_len, device=hidden.device)[:, None]
    k_pos = torch.arange(past + q_len, device=hidden.device)[None, :]
    return torch.zeros(q_len, past + q_len, dtype=dtype, device=hidden.device).masked_fill_(
        k_pos > q_pos, torch.finfo(dtype).min
    )


def _hook_own_code(module: nn.Module, listener: Listener, dtype: torch.dtype) -> list:
    """Hooks that get the weights out of an attention module that computes them in its own code."""
    takes_flag = _takes(module, "output_attentions")
    config = getattr(module, "config", None)
    own_eager_needs_mask = (getattr(config, "_attn_implementation", None) or "eager") != "eager" and _takes(
        module, "attention_mask"
    )

    def ask(mod, args, kwargs):
        if takes_flag:
            kwargs = {**kwargs, "output_attentions": True}
        if own_eager_needs_mask and "attention_mask" in kwargs:
            hidden = args[0] if args else kwargs["hidden_states"]
            kwargs["attention_mask"] = _additive_mask(mod, hidden, kwargs["attention_mask"], kwargs)
        return args, kwargs

    def hand_over(mod, args, output):
        weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        if not isinstance(weights, torch.Tensor):
            raise RuntimeError(
                f"{type(mod).__name__} neither calls transformers' attention functions nor returned its attention "
                "weights when asked (output_attentions=True), so nbinspect cannot capture them; leave attention out "
                "of the capture for this model."
            )
        with torch.no_grad():
            blocks = getattr(listener, "blocks", None)
            if blocks is not None and weights.shape[0] == 1:
                reducer = blocks(weights.shape[1], weights.shape[2], weights.shape[3], weights.device)
                reducer.add(0, weights.detach()[0].float())
                listener(reducer)
            else:
                listener(weights.detach().to(dtype, copy=True))  # a copy the listener owns (see `listening`)

    return [module.register_forward_pre_hook(ask, with_kwargs=True), module.register_forward_hook(hand_over)]


class listening:
    """Context manager: call ``listeners[module]`` with each attention module's weights (as ``dtype``) while active.

    A listener owns the tensor it is given (never the model's own, which autograd may still need): it may
    reduce it in place.

    ``exact=False`` lets a listened-to module skip its own (sdpa, flash...) attention function and use the
    output computed alongside the weights, eager's math: about half the cost at long inputs, with outputs
    that differ from sdpa's in the last bits, as eager's do. Under autograd, with dropout or with
    arguments such as a sliding window or soft-capping, the module's own function runs regardless.
    ``last_query=True`` hands over only the last query's row, ``[batch, heads, 1, k]``, computed beside the
    model's own call (see `last_query_weights`; modules computing weights in their own code hand over all
    rows: take ``[..., -1, :]``).
    """

    def __init__(self, model: nn.Module, listeners: dict[nn.Module, Listener], dtype: torch.dtype = torch.float32,
                 exact: bool = True, last_query: bool = False):
        if ALL_ATTENTION_FUNCTIONS is None:
            raise RuntimeError("capturing attention needs transformers >= 4.48 (its attention-function registry).")
        self.name = implementation_of(model)
        self.listeners = {m: fn for m, fn in listeners.items() if calls_attention_interface(type(m))}
        self.own_code = {m: fn for m, fn in listeners.items() if m not in self.listeners}
        self.dtype = dtype
        self.exact = exact
        self.last_query = last_query
        self._handles: list = []

    def __enter__(self):
        with _lock:
            clash = [m for m in self.listeners if id(m) in _listeners]
            if clash:
                raise RuntimeError("another capture is already recording this model's attention; end it first.")
            if self.listeners:
                if _users.get(self.name, 0) == 0:
                    _install(self.name)
                _users[self.name] = _users.get(self.name, 0) + 1
            for module, fn in self.listeners.items():
                _listeners[id(module)] = (fn, self.dtype, self.exact, self.last_query)
        try:
            for module, fn in self.own_code.items():
                self._handles += _hook_own_code(module, fn, self.dtype)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        with _lock:
            for module in self.listeners:
                _listeners.pop(id(module), None)
            if self.listeners:
                _users[self.name] -= 1
                if _users[self.name] == 0:
                    del _users[self.name]
                    _uninstall(self.name)
        return False
