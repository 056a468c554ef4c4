"""Gradients of a chosen target: norms per parameter and per module, and input attribution per token.

A *target* is the scalar whose gradient is taken:

- ``"loss"``: the language-modelling loss on the input itself (``labels = input_ids``);
- an ``int`` token id: that token's logit at the last position (summed over the batch);
- a callable ``fn(output) -> scalar tensor`` on the model's output;
- ``None`` (attribution only): the logit of the token the model predicts next, per batch row.

Norms are taken as each gradient lands (``register_post_accumulate_grad_hook``) and the gradient is
dropped right away, so no full ``.grad`` tensor outlives the backward pass. Whatever happens, the model's
training flag, every parameter's ``requires_grad`` and its ``.grad`` (including a gradient that was
already there) are put back as they were. For gradients of captured activations, use
``nbinspect.capture(..., gradients=True)`` around your own backward.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .adapters import Adapter, ModelParts
from .inputs import check_inputs

Target = str | int | Callable | None
METHODS = ("grad_norm", "grad_x_input", "integrated_gradients")


@dataclass
class GradientNorms:
    """L2 norms of the target's gradient, as 0-d float32 tensors on each parameter's device.

    Every norm is accumulated in float64 (each parameter's sum of squares, and the sums over modules
    and blocks) and rounded to float32 once at the end, so it matches a float64 computation to float32
    precision; a float32 ``Tensor.norm()`` of a large gradient is off by up to ~1e-3 relative.

    parameters: parameter name -> norm (a tied weight appears under each of its names).
    modules: module name -> norm over all its parameters (``""`` is the whole model).
    layers: one norm per transformer block, first to last (to spot vanishing or exploding gradients).
    target: the target's value.
    """

    parameters: dict[str, torch.Tensor]
    modules: dict[str, torch.Tensor]
    layers: list[torch.Tensor]
    target: torch.Tensor


def _check_target(adapter: Adapter, target: Target, inputs: dict, *, allow_none: bool) -> Target:
    """Refuse a target that cannot work before the forward pass: the message comes at once, not after it.

    Returns the target with integer-like ids (numpy, 0-d tensors) turned into ``int``.
    """
    if isinstance(target, str):
        if target != "loss":
            raise ValueError(f"unknown target {target!r}: pass 'loss', a token id or a function of the output.")
        if adapter.unembedding() is None:
            raise ValueError(
                f"target='loss' needs a model that computes a language-modelling loss (a ...ForCausalLM), but this "
                f"{adapter.family!r} model ({type(adapter.model).__name__}) has no LM head; pass a function of the output instead."
            )
        if "labels" not in inputs and inputs["input_ids"].shape[-1] < 2:
            raise ValueError(
                "target='loss' needs at least two tokens (the loss scores each token's prediction of the next one), "
                "but the input has one; pass a token id or a function of the output as target instead, or a longer text."
            )
        return target
    if target is None:
        if not allow_none:
            raise ValueError("gradient_norms needs a target: 'loss', a token id or a function of the output.")
        if adapter.unembedding() is None:
            raise ValueError(
                "the default target is the predicted next token, but this model returns no logits; "
                "pass a token id or a function of the output as target."
            )
        return None
    if callable(target) and not isinstance(target, torch.Tensor):
        return target
    if isinstance(target, bool) or isinstance(target, float) or (
        isinstance(target, torch.Tensor) and (target.numel() != 1 or target.is_floating_point() or target.dtype == torch.bool)
    ):
        raise TypeError(f"target must be 'loss', a whole-number token id or a function of the output, got {target!r}.")
    try:
        token = operator.index(target)
    except TypeError:
        raise TypeError(
            f"target must be 'loss', a token id or a function of the output, got {target!r} ({type(target).__name__})."
        ) from None
    head = adapter.unembedding()
    if head is None:
        raise ValueError(
            f"a token target needs logits, but this {adapter.family!r} model has no LM head; pass a function of the output instead."
        )
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    if not 0 <= token < vocab:
        raise IndexError(f"target token id {token} is out of range: the vocabulary has ids 0..{vocab - 1}.")
    return token


def _value(output, target: Target, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """The scalar to differentiate. ``tokens`` fixes the predicted token for ``target=None``."""
    if target == "loss":
        loss = getattr(output, "loss", None)
        if loss is None:
            raise ValueError(
                "target='loss' needs a model that computes a language-modelling loss (a ...ForCausalLM); "
                "pass a token id or a function of the output instead."
            )
        return loss
    if callable(target):
        value = target(output)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError("a target function must return a single-number tensor (e.g. output.logits[0, -1, 42]).")
        return value.reshape(())
    logits = getattr(output, "logits", None)
    if logits is None:
        raise ValueError(
            f"a token target needs logits but {type(output).__name__} has none; pass a function of the output instead."
        )
    last = logits[:, -1, :]
    if isinstance(target, int) and not isinstance(target, bool):
        if not 0 <= target < last.shape[-1]:
            raise IndexError(f"token id {target} is out of range: the vocabulary has ids 0..{last.shape[-1] - 1}.")
        return last[:, target].sum()
    if target is None and tokens is not None:
        return last.gather(1, tokens[:, None].to(last.device)).sum()
    raise TypeError(f"expected the target as 'loss', a token id or a function of the output, got {target!r}.")


def _forward_inputs(inputs: dict, target: Target) -> dict:
    if target == "loss" and "labels" not in inputs:
        return {**inputs, "labels": inputs["input_ids"]}
    return inputs


@contextmanager
def _finite_watch(adapter: Adapter):
    """Note, per forward, whether each block's output is finite (a device flag; read only on failure)."""
    flags: list[tuple[int, torch.Tensor]] = []

    def watch(i: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(hidden, torch.Tensor):
                flags.append((i, torch.isfinite(hidden.detach()).all()))

        return hook

    handles = [layer.register_forward_hook(watch(i)) for i, layer in enumerate(adapter.layers)]
    try:
        yield flags
    finally:
        for handle in handles:
            handle.remove()


def _check_finite(value: torch.Tensor, flags: list[tuple[int, torch.Tensor]], target: Target) -> None:
    """Refuse a NaN or infinite target (its gradients would be NaN too), naming the first layer that broke."""
    if bool(torch.isfinite(value.detach()).all()):
        return
    first = next((i for i, ok in flags if not bool(ok)), None)
    where = (
        f"the output of layer {first} is the first that is not finite"
        if first is not None
        else "every layer's output is finite, so the output head or the target function is not"
    )
    what = "loss" if target == "loss" else ("predicted token's logit" if target is None else "target")
    raise ValueError(
        f"the {what} is NaN or infinite ({where}), so its gradients mean nothing; the model's weights are probably "
        "not finite (check with `any(p.isnan().any() for p in model.parameters())`)."
    )


@contextmanager
def _restoring(model: nn.Module, *, requires_grad: bool | None, eval_mode: bool):
    """Set every parameter's ``requires_grad``, clear ``.grad``, and put all of it back afterwards.

    ``requires_grad=None``: a run without autograd, which neither reads nor writes the flags or ``.grad``,
    so they are left alone (a few ms a call on a 135M model, a noticeable share of a short trace).
    """
    params = list(model.parameters())
    saved = [] if requires_grad is None else [(p, p.requires_grad, p.grad) for p in params]
    # Per module: a model may mix train and eval parts. Only those in training mode change.
    training = [m for m in model.modules() if m.training]
    try:
        if eval_mode and training:
            model.eval()
        for p, _, _ in saved:
            p.grad = None
            p.requires_grad_(requires_grad)
        yield params
    finally:
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad
        for module in training:
            module.training = True


def gradient_norms(model: nn.Module, inputs, target: Target = "loss", *, eval_mode: bool = True,
                   parts: ModelParts | None = None) -> GradientNorms:
    """Norms of ``d target / d parameter`` for every parameter, module and block, from one backward pass.

    ``eval_mode`` runs with dropout off (the model's own flag is restored either way).
    """
    adapter = Adapter.of(model, parts)
    inputs = check_inputs(adapter, inputs)
    target = _check_target(adapter, target, inputs, allow_none=False)
    inputs = _forward_inputs(inputs, target)
    by_id: dict[int, torch.Tensor] = {}
    handles = []

    def on_grad(p: torch.Tensor) -> None:
        by_id[id(p)] = _norm64(p.grad.detach())
        p.grad = None  # only the norm is kept: the full gradient is freed as soon as it is complete

    with _restoring(model, requires_grad=True, eval_mode=eval_mode) as params, _finite_watch(adapter) as flags:
        try:
            for p in params:
                handles.append(p.register_post_accumulate_grad_hook(on_grad))
            with torch.enable_grad():
                value = _value(model(**inputs), target)
                _check_finite(value, flags, target)
                value.backward()
        finally:
            for handle in handles:
                handle.remove()
    return group_norms(adapter, by_id, value.detach())


def group_norms(adapter: Adapter, norms: dict[int, torch.Tensor], value: torch.Tensor) -> GradientNorms:
    """id(parameter) -> float64 norm, grouped by parameter name, module and block (sums of squares in
    float64, float32 values at the end). Shared by :func:`gradient_norms` and the Trace's backward."""
    model = adapter.model
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    parameters = {name: norms[i].float() for i, ns in names.items() if i in norms for name in ns}
    modules: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        squares = [norms[id(p)].square().to(value.device) for p in module.parameters() if id(p) in norms]
        if squares:
            modules[module_name] = torch.stack(squares).sum().sqrt().float()
    prefix = {id(m): name for name, m in model.named_modules()}
    layers = [modules.get(prefix[id(block)], torch.zeros(())) for block in adapter.layers]
    return GradientNorms(parameters, modules, layers, value)


# Gradients are normed in rows of this many values: each row in float32 (short sums of squares lose
# well under one float32 rounding), the rows' norms then combined in float64, so the norm stays within
# one float32 rounding of the float64 answer. A float64 norm of the whole tensor first copies it to
# float64, which at SmolLM2's size cost 11 % of a forward + backward (17x the time of this); a float32
# norm of the whole tensor drifts by 1e-3 over its 28 M embedding gradients.
_NORM_ROW = 256
# Below this total (or when it is not finite) a square may have under- or overflowed float32: redo in float64.
_NORM_SAFE_MIN = 1e-10


def _norm64(g: torch.Tensor) -> torch.Tensor:
    """L2 norm, accurate as a float64 sum of squares (0-d float64; within ~1e-7 relative of it).
    MPS has no float64, so its gradients are read on the host."""
    if g.device.type == "mps":
        g = g.cpu()
    flat = g.reshape(-1)
    whole = flat.numel() // _NORM_ROW * _NORM_ROW
    # On an accelerator the float64 pass is cheap and the check below would wait for the device at
    # every parameter; the row trick is for the CPU, where the copy is what costs.
    if g.device.type != "cpu" or g.dtype != torch.float32 or whole == 0:
        return torch.linalg.vector_norm(flat, dtype=torch.float64)
    rows = torch.linalg.vector_norm(flat[:whole].view(-1, _NORM_ROW), dim=1).double()
    tail = torch.linalg.vector_norm(flat[whole:], dtype=torch.float64).view(1)
    total = torch.linalg.vector_norm(torch.cat([rows, tail]))
    if not _NORM_SAFE_MIN <= float(total) < float("inf"):
        return torch.linalg.vector_norm(flat, dtype=torch.float64)
    return total


def saliency(model: nn.Module, inputs, target: Target = None, *, method: str = "grad_x_input", steps: int = 32,
             baseline: torch.Tensor | None = None, progress: bool = True,
             parts: ModelParts | None = None) -> torch.Tensor:
    """How much each input token matters to ``target``: one score per token, ``[batch, position]`` float32.

    method: ``"grad_norm"`` (norm of the gradient at the token's embedding), ``"grad_x_input"`` (gradient
        dotted with the embedding) or ``"integrated_gradients"`` (``steps`` gradients along the straight
        path from ``baseline``, zeros by default, to the embedding, midpoint rule; the scores then add up
        to ``target(input) - target(baseline)`` as ``steps`` grows). ``progress`` shows a bar over the steps.
        With RMSNorm models (Llama family) an all-zero baseline sits next to the norm's jump from 0 to
        ``x/|x|``, which the steps cannot resolve; pass a small non-zero ``baseline`` there.
    Parameters are frozen while it runs (cheaper: no weight gradients) and restored afterwards.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose one of {', '.join(METHODS)}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"integrated gradients needs a positive whole number of steps, got {steps!r}.")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}.")
    adapter = Adapter.of(model, parts)
    embedding = adapter.embedding()
    if embedding is None:
        raise ValueError(f"saliency needs the input embedding, which this {adapter.family!r} model's parts do not name.")
    inputs = check_inputs(adapter, inputs)
    target = _check_target(adapter, target, inputs, allow_none=True)
    ids = inputs["input_ids"]
    if baseline is not None:
        baseline = _check_baseline(baseline, (*ids.shape, embedding.weight.shape[-1]))
    rest = {k: v for k, v in _forward_inputs(inputs, target).items() if k != "input_ids"}

    with _restoring(model, requires_grad=False, eval_mode=True), _finite_watch(adapter) as flags:
        with torch.no_grad():
            embeds = embedding(ids)
            tokens = None
            if target is None:
                logits = getattr(model(inputs_embeds=embeds, **rest), "logits", None)
                if logits is None:
                    raise ValueError(
                        "the default target is the predicted next token, but this model returns no logits; "
                        "pass a token id or a function of the output as target."
                    )
                _check_finite(logits[:, -1].amax(), flags, target)
                tokens = logits[:, -1].argmax(-1)

        def gradient(x: torch.Tensor) -> torch.Tensor:
            x = x.detach().requires_grad_(True)
            flags.clear()
            with torch.enable_grad():
                value = _value(model(inputs_embeds=x, **rest), target, tokens)
                _check_finite(value, flags, target)
                (grad,) = torch.autograd.grad(value, x)
            return grad

        if method == "grad_norm":
            return gradient(embeds).float().norm(dim=-1)
        if method == "grad_x_input":
            return (gradient(embeds).float() * embeds.float()).sum(dim=-1)
        base = torch.zeros_like(embeds) if baseline is None else baseline.to(embeds).expand_as(embeds)
        total = torch.zeros_like(embeds, dtype=torch.float32)
        for k in _progress(range(steps), progress, "integrated gradients"):
            total += gradient(base + (k + 0.5) / steps * (embeds - base)).float()
        return ((embeds - base).float() * total / steps).sum(dim=-1)


def _check_baseline(baseline, shape: tuple[int, ...]) -> torch.Tensor:
    """The integrated-gradients baseline, which must be the embeddings' shape or broadcast to it."""
    if not isinstance(baseline, torch.Tensor):
        raise TypeError(f"baseline must be a tensor shaped like the input embeddings {list(shape)}, got {type(baseline).__name__}.")
    if not baseline.is_floating_point():
        raise TypeError(f"baseline must hold floating-point embedding values, got {baseline.dtype}.")
    try:
        fits = torch.broadcast_shapes(baseline.shape, shape) == torch.Size(shape)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"baseline has shape {list(baseline.shape)} but the input embeddings have shape {list(shape)} "
            f"[batch, tokens, hidden]; pass a baseline of that shape (or [{shape[-1]}], one embedding for every token)."
        )
    if not bool(torch.isfinite(baseline).all()):
        raise ValueError("baseline contains NaN or infinite values; integrated gradients needs a finite starting point.")
    return baseline


def _progress(iterable, show: bool, description: str):
    if not show:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with transformers, but a bar is not worth failing for
        return iterable
    return tqdm(iterable, desc=description, leave=False)

