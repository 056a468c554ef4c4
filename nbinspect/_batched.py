"""Run many variants of one input through the layers from L on, several variants per forward.

Activation patching and the head sweep ask the same question hundreds of times: "what does the model
output if this one activation at layer L were different?". Layers before L cannot see the change, so
one forward of the unchanged input keeps what every layer received (as :mod:`nbinspect.recompute`
does), and each variant reruns only layers L.. from the kept input of layer L. Variants that start at
the same layer travel together as the rows of one batch.

Requirements this module is built around:

* **Same numbers as a full forward with a hook.** Layers are the model's own modules called with the
  arguments the model itself gave them (position embeddings, masks) for a batch of 1; they broadcast
  over the rows (the tests compare every family with a naive full forward to 1e-5).
* **Work shared by every row is done once.** An intervention inside layer L (a head's output, the
  attention or MLP output) starts from the batch-1 kept input: the part of layer L before the
  intervention runs once, and the hook that intervenes widens its tensor to the batch's rows.
* **The model is left exact.** No weight is touched; every hook is removed in ``finally``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from . import codecs
from .adapters import Adapter
from .perturb import model_lock

Hook = tuple[nn.Module, str, Callable]  # (module, "forward" | "forward_pre", fn)


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _first(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_first(output, value: torch.Tensor):
    if isinstance(output, tuple):
        return (value, *output[1:])
    if isinstance(output, list):
        return [value, *output[1:]]
    return value


def mlp_output_module(adapter: Adapter, layer: int) -> nn.Module:
    """The module whose output is layer ``layer``'s MLP write (the down projection; the whole MLP for MoE)."""
    return adapter.part(layer, "neurons") if adapter.has_part(layer, "neurons") else adapter.part(layer, "mlp")


@contextmanager
def hooks_installed(hooks: Iterable[Hook]):
    """Register ``(module, "forward" | "forward_pre", fn)`` hooks for the block; removed on any exit."""
    handles = []
    try:
        for module, kind, fn in hooks:
            if kind == "forward":
                handles.append(module.register_forward_hook(fn))
            elif kind == "forward_pre":
                handles.append(module.register_forward_pre_hook(fn))
            else:
                raise ValueError(f"hook kind must be 'forward' or 'forward_pre', got {kind!r}.")
        yield
    finally:
        for h in handles:
            h.remove()


class KeptRun:
    """One forward of a batch-1 input that keeps each layer's arguments and, on request, its activations.

    Attributes
    ----------
    kept : per layer, the ``(args, kwargs)`` the model called it with.
    resid : per layer, the residual stream entering it ``[1, n, d]``; ``resid[n_layers]`` is the last
        layer's output (before the final norm).
    z : per layer, the attention output projection's input (every head's output) ``[1, n, H * head_dim]``
        (only when ``heads=True``).
    attn_out, mlp_out : per layer, what the attention output projection and the MLP write return
        (only when ``outputs=True``).
    """

    def __init__(self, adapter: Adapter, inputs: dict, *, heads: bool = False, outputs: bool = False):
        self.adapter = adapter
        self.inputs = inputs
        n = adapter.n_layers
        self.kept: list = [None] * n
        self.resid: list = [None] * (n + 1)
        self.z: list = [None] * n if heads else []
        self.attn_out: list = [None] * n if outputs else []
        self.mlp_out: list = [None] * n if outputs else []
        hooks: list[Hook] = []

        def keep(i):
            def hook(module, args, kwargs):
                self.kept[i] = (args, dict(kwargs))
                self.resid[i] = _hidden_of(args, kwargs).detach()

            return hook

        def store(where: list, i: int, pre: bool):
            if pre:
                return lambda module, args: where.__setitem__(i, args[0].detach())
            return lambda module, args, output: where.__setitem__(i, _first(output).detach())

        def keep_last(module, args, output):
            self.resid[n] = _first(output).detach()

        for i in range(n):
            if heads:
                hooks.append((adapter.part(i, "attention_output"), "forward_pre", store(self.z, i, True)))
            if outputs:
                hooks.append((adapter.part(i, "attention_output"), "forward", store(self.attn_out, i, False)))
                hooks.append((mlp_output_module(adapter, i), "forward", store(self.mlp_out, i, False)))
        hooks.append((adapter.layers[n - 1], "forward", keep_last))
        handles = [layer.register_forward_pre_hook(keep(i), with_kwargs=True) for i, layer in enumerate(adapter.layers)]
        try:
            with torch.no_grad(), hooks_installed(hooks):
                base = adapter.base
                kwargs = dict(inputs)
                # A KV cache would make each layer's arguments depend on the previous call.
                if "use_cache" in inspect.signature(base.forward).parameters:
                    kwargs["use_cache"] = False
                base(**kwargs)
        finally:
            for h in handles:
                h.remove()
        if any(k is None for k in self.kept) or self.resid[n] is None:
            raise RuntimeError(
                f"{type(adapter.model).__name__} did not call all of its {n} layers in one forward pass; "
                "nbinspect can only rerun models whose layers run once each, in order."
            )

    @property
    def n_tokens(self) -> int:
        return int(self.resid[0].shape[1])

    def run_from(self, start: int, hidden: torch.Tensor | None = None, hooks: Sequence[Hook] = ()) -> torch.Tensor:
        """Run layers ``start..`` on ``hidden`` ``[B, n, d]`` (default: the kept batch-1 input of ``start``)
        with ``hooks`` installed; returns the last layer's output (before the final norm).

        ``start == n_layers`` runs nothing and returns ``hidden`` (default: the kept last output).
        """
        layers = self.adapter.layers
        if hidden is None:
            hidden = self.resid[start]
        with torch.no_grad(), hooks_installed(hooks):
            for i in range(start, len(layers)):
                args, kwargs = self.kept[i]
                kept_hidden = _hidden_of(args, kwargs)
                args, kwargs = _with_hidden(args, kwargs, hidden.to(kept_hidden.device))
                hidden = _first(layers[i](*args, **kwargs))
        return hidden

    def logits(self, hidden: torch.Tensor, position: int) -> torch.Tensor:
        """Next-token logits ``[B, vocab]`` at ``position`` of final hidden states ``[B, n, d]``."""
        return self.all_logits(hidden[:, position : position + 1])[:, 0]

    def all_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n, vocab]`` of final hidden states ``[B, n, d]`` (final norm, then unembedding)."""
        head = self.adapter.unembedding()
        norm = self.adapter.final_norm()
        with torch.no_grad():
            h = norm(hidden) if norm is not None else hidden
            return head(h.to(head.weight.device))


def all_finite(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is finite, in one sum when they are (NaN and inf carry through a sum;
    the full check runs only when the sum is not finite, in case finite values overflowed it)."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def check_finite(run: KeptRun, logits: torch.Tensor | None = None) -> None:
    """Raise ``ValueError`` naming the first layer whose output in ``run`` is NaN or infinite (as a
    :class:`~nbinspect.Trace` does), or the output head when ``logits`` are not finite.

    Costs one sum of the last layer's output (and of ``logits``) when all is well; the layers are looked
    at one by one only on the error path."""
    last = run.resid[-1]
    if not all_finite(last):
        codecs.check_finite(run.resid[0], "the input embeddings")
        for i in range(1, len(run.resid)):
            codecs.check_finite(run.resid[i], f"the output of layer {i - 1}")
    if logits is not None and not all_finite(logits):
        codecs.check_finite(logits, "the output head's logits")


def raise_not_finite(adapter: Adapter, inputs: dict, values: torch.Tensor, what: str) -> None:
    """``values`` (computed from ``inputs``) are not finite: raise ``ValueError`` naming the first layer whose
    output is NaN or infinite, found by one more forward of ``inputs`` (only on this error path, under
    whatever edits are applied now); else naming ``what``. Call it with the model's lock held."""
    check_finite(KeptRun(adapter, inputs))
    codecs.check_finite(values, what)
    raise ValueError(f"{what} contains NaN or infinite values.")  # values were finite: the caller's mistake


def widen(value: torch.Tensor, rows: int) -> torch.Tensor:
    """A batch-1 tensor repeated to ``rows`` rows (a copy, so rows can be changed one by one)."""
    if value.shape[0] == rows:
        return value.clone()
    return value.expand(rows, *value.shape[1:]).clone()


def locked(model: nn.Module):
    """The model's lock (the perturbation sliders' worker edits weights in place under it)."""
    return model_lock(model)


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm.auto bar when tqdm is installed and ``enabled``; otherwise an object that does nothing."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, leave=False)
        except ImportError:  # tqdm is optional
            pass
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def cancelled(cancel) -> bool:
    """Whether ``cancel`` (None, a callable returning bool, or an object with ``is_set()``) asks to stop."""
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    if callable(cancel):
        return bool(cancel())
    raise TypeError(f"cancel must be a callable returning True to stop, or a threading.Event; got {cancel!r}.")


def resolve_token(tokenizer, token, what: str) -> int:
    """A token id from an int id or a text that is exactly one token (e.g. " Paris")."""
    if isinstance(token, bool):
        raise TypeError(f"{what} must be a token id or a one-token text, got {token!r}.")
    if isinstance(token, int):
        return token
    if hasattr(token, "item") and getattr(token, "numel", lambda: 0)() == 1:
        return int(token.item())
    if isinstance(token, str):
        ids = tokenizer(token, add_special_tokens=False)["input_ids"] if _accepts_special(tokenizer) else tokenizer(token)["input_ids"]
        ids = ids.reshape(-1).tolist() if hasattr(ids, "reshape") else list(ids[0] if ids and isinstance(ids[0], list) else ids)
        if len(ids) != 1:
            pieces = [tokenizer.decode([i]) for i in ids]
            raise ValueError(
                f"{what} {token!r} is {len(ids)} tokens ({pieces}); give one token, e.g. with its leading space "
                f"({' ' + token.strip()!r}), or its id."
            )
        return int(ids[0])
    raise TypeError(f"{what} must be a token id or a one-token text, got {type(token).__name__}.")


def _accepts_special(tokenizer) -> bool:
    try:
        return "add_special_tokens" in inspect.signature(tokenizer.__call__).parameters or hasattr(tokenizer, "is_fast")
    except (TypeError, ValueError):
        return False
