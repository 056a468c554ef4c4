"""Relevance propagation (AttnLRP, Achtibat et al., 2024): how much each input token contributes to a logit.

AttnLRP distributes the target logit backwards through the network with one rule per operation. As in
the reference implementation ``lxt`` (its "efficient" mode), the rules are written as modified backward
functions, so that one forward and one backward of the target give every relevance as *input × gradient*:

- **linear layers** (projections, embeddings, the LM head): the ε-rule with ε → 0, which is the ordinary
  gradient; a layer's bias keeps its share (it is a constant, not an input).
- **norms** (LayerNorm, RMSNorm): the identity rule — the normalising scale ``1/σ(x)`` is treated as a
  constant, i.e. it is detached from the graph; the mean subtraction stays (it is linear).
- **element-wise activations** (SiLU, GELU): the identity rule — ``act(x)`` passes relevance on as if it
  were ``(act(x)/x)·x`` with the ratio constant: a custom autograd Function.
- **element-wise products** (the gate × up of gated MLPs): the uniform rule — each factor gets half,
  i.e. the gradient at the product is halved (a custom autograd Function that scales the gradient).
- **attention**: the bilinear ``A·V`` splits its relevance half to ``A`` and half to ``V``, the bilinear
  ``q·kᵀ`` half to each of ``q`` and ``k`` (uniform rule), so the gradient at ``v`` is halved and the
  gradients at ``q`` and ``k`` are quartered (applied at the q/k/v projections' outputs: rotary position
  embeddings and head reshapes are linear, so the scaling commutes with them).
- **softmax**: the paper's rule ``R_in = x ⊙ (R_out − s · Σ R_out)`` is *exactly* ``x ×`` the ordinary
  softmax backward, so the model's own attention function (sdpa included) runs unchanged.

With ``rule="cp"`` the gradient through ``q`` and ``k`` is stopped instead (CP-LRP, Ali et al., 2022:
the attention pattern is a constant and ``A·V`` is linear in ``V``).

**Conservation.** Every rule above except the softmax's passes on exactly the relevance it receives, so
``target = Σ tokens + Σ position/type embeddings + Σ biases + remainder``, where the remainder is what
the softmax rule does not pass on (the paper says so: it absorbs a bias-like term) plus float rounding.
:class:`Relevance` reports each term. Under ``rule="cp"`` the remainder is float rounding only
(``|remainder| ≤ 1e-4 · (|target| + Σ|terms|)`` in float32, tested). Under AttnLRP it is measured and
reported, not small: on SmolLM2, "The capital of France is Paris. The capital of Italy is" → " Rome" has a
logit of 14.95 of which the tokens hold 5.30 and the softmax rule keeps 9.65 (lxt 2.1 gives the same
token relevances); on the tiny random test models it ranges from 0 to ~50 % of the logit. The tests bound
it at half of ``|target| + Σ|token relevance|`` and check that CP-LRP removes it.

Everything the rules need is installed as forward hooks on this model's own modules for the duration of
one call (removed in ``finally``); parameters' ``requires_grad``, ``.grad`` and the training flags are
restored as they were. The forward values are unchanged (each hook returns the module's own output
value; only its gradient is rerouted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .adapters import Adapter, ModelParts, UnsupportedModelError
from .gradients import _check_target, _restoring, _value
from .inputs import check_inputs, encode

RULES = ("attnlrp", "cp")
#: The families whose attention, MLP and norms relevance knows how to rewire.
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "gpt2", "bert")
#: A norm whose linearised output differs from the module's own by more than this (relative to its
#: largest |value|) is not the LayerNorm / RMSNorm the rules assume: refused rather than mis-explained.
NORM_CHECK_TOLERANCE = 1e-3


# --- the rules as autograd functions ------------------------------------------------------------------
class _IdentityRule(torch.autograd.Function):
    """``y = act(x)`` passing relevance as ``(y/x)·x``: the gradient at ``x`` is ``(y/x) · g``."""

    @staticmethod
    def forward(ctx, x, y):
        ratio = torch.where(x != 0, y / torch.where(x != 0, x, torch.ones_like(x)), torch.zeros_like(x))
        ctx.save_for_backward(ratio)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        (ratio,) = ctx.saved_tensors
        return g * ratio, None


class _ScaleGradient(torch.autograd.Function):
    """Identity forward, gradient multiplied by ``factor`` (a number or a tensor broadcast over the last dim)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


def _same_value(output: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """``output``'s value exactly, with the gradient of ``linear`` (a linearised stand-in of the same value)."""
    return output.detach() + (linear - linear.detach())


# --- finding the parts -------------------------------------------------------------------------------
def _is_layernorm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm)


def _is_rmsnorm(m: nn.Module) -> bool:
    return type(m).__name__.endswith("RMSNorm") and isinstance(getattr(m, "weight", None), torch.Tensor)


def _rms_eps(m: nn.Module) -> float:
    for name in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(m, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    raise UnsupportedModelError(f"relevance: cannot find the epsilon of {type(m).__name__}.")


def _linear_norm(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The norm's output with its scale 1/σ(x) detached (the identity rule)."""
    if _is_layernorm(m):
        xf = x.float()
        mean = xf.mean(-1, keepdim=True)
        var = (xf - mean).pow(2).mean(-1, keepdim=True)
        y = (xf - mean) * torch.rsqrt(var + m.eps).detach()
        if m.weight is not None:
            y = y * m.weight.float()
        if m.bias is not None:
            y = y + m.bias.float()
        return y.to(x.dtype)
    xf = x.float()
    inv = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + _rms_eps(m)).detach()
    return m.weight * (xf * inv).to(x.dtype)


def _activation(mlp: nn.Module) -> nn.Module:
    for name in ("act_fn", "act", "intermediate_act_fn", "activation_fn"):
        act = getattr(mlp, name, None)
        if isinstance(act, nn.Module):
            return act
    raise UnsupportedModelError(f"relevance: cannot find the activation module of {type(mlp).__name__}.")


@dataclass
class _Wiring:
    """Per-family modules the rules hook: (module, kind, factor) triples and the activation modules."""

    qkv: list[tuple[nn.Module, object]] = field(default_factory=list)  # output gradient scaled by factor
    activations: list[nn.Module] = field(default_factory=list)
    products: list[nn.Module] = field(default_factory=list)  # input gradient halved (gated MLPs' down_proj)


def _wiring(adapter: Adapter, rule: str) -> _Wiring:
    family = adapter.family
    if family not in FAMILIES:
        raise UnsupportedModelError(
            f"relevance propagation knows the attention and MLP of {', '.join(FAMILIES)} models, not {family!r} "
            f"({type(adapter.model).__name__}); attention rollout (nbinspect.rollout) works for any family."
        )
    qk, v = (0.25, 0.5) if rule == "attnlrp" else (0.0, 1.0)
    w = _Wiring()
    for i in range(adapter.n_layers):
        attn, mlp = adapter.attention(i), adapter.part(i, "mlp")
        if family == "gpt2":
            fused = attn.c_attn
            width = attn.embed_dim
            w.qkv.append((fused, ("fused", width, qk, v)))
            w.activations.append(_activation(mlp))
        elif family == "bert":
            w.qkv += [(attn.query, qk), (attn.key, qk), (attn.value, v)]
            w.activations.append(_activation(mlp))
        else:
            w.qkv += [(attn.q_proj, qk), (attn.k_proj, qk), (attn.v_proj, v)]
            w.activations.append(_activation(mlp))
            if hasattr(mlp, "gate_proj") and hasattr(mlp, "up_proj"):
                w.products.append(mlp.down_proj)
    return w


# --- the result -------------------------------------------------------------------------------------
@dataclass
class Relevance:
    """Where the target's value went, in the target's units (float32 on the host).

    tokens: relevance of each input token, ``[n]`` (input × modified gradient at the token embeddings).
    layers: layer -> relevance of each token's residual stream after that block, ``[n]`` (when asked).
    target: the target's value (the logit, or logit − foil logit).
    positions: relevance kept by position and token-type embeddings (GPT-2, BERT; 0 for rotary models).
    biases: relevance kept by every bias (linear layers, norms).
    remainder: ``target − tokens.sum() − positions − biases``: what the softmax rule does not pass on
        (AttnLRP) plus float rounding (all that is left under ``rule="cp"``).
    rule: "attnlrp" or "cp".
    """

    tokens: np.ndarray
    layers: dict[int, np.ndarray]
    target: float
    positions: float
    biases: float
    remainder: float
    rule: str

    @property
    def conserved_fraction(self) -> float:
        """Share of the target accounted for by tokens, positions and biases (1.0: fully conservative)."""
        return (self.target - self.remainder) / self.target if self.target else float("nan")


# --- one forward and backward under the rules ------------------------------------------------------
def propagate(
    model: nn.Module,
    inputs,
    target=None,
    *,
    position: int = -1,
    foil: int | None = None,
    rule: str = "attnlrp",
    layers: bool = False,
    parts: ModelParts | None = None,
) -> Relevance:
    """Relevance of every input token (and, with ``layers=True``, of every layer's residual) for ``target``.

    inputs: token ids or a tokenizer's output (batch of one).
    target: a token id (its logit at ``position``), ``None`` (the token the model predicts there), or a
        function ``fn(output) -> scalar tensor`` (it should be linear in the last hidden state, e.g. a
        readout of an encoder's ``last_hidden_state``, for the relevances to add up to it).
    foil: explain ``logit[target] − logit[foil]`` instead.
    rule: ``"attnlrp"`` (default) or ``"cp"`` (no relevance through the attention pattern).
    """
    if rule not in RULES:
        raise ValueError(f"unknown relevance rule {rule!r}; choose one of {', '.join(RULES)}.")
    adapter = Adapter.of(model, parts)
    inputs = check_inputs(adapter, inputs)
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError(f"relevance explains one text at a time; got a batch of {inputs['input_ids'].shape[0]}.")
    wiring = _wiring(adapter, rule)
    target = _check_target(adapter, target, inputs, allow_none=True)
    if target == "loss":
        raise ValueError("relevance explains a logit, not the loss; pass a token id (or None for the predicted token).")
    if foil is not None and callable(target):
        raise ValueError("foil= compares two token logits; it cannot go with a target function.")
    n = int(inputs["input_ids"].shape[-1])
    if not -n <= position < n:
        raise IndexError(f"position {position} is out of range: the text has tokens 0..{n - 1}.")
    position %= n
    embedding = adapter.embedding()
    if embedding is None:
        raise UnsupportedModelError(f"relevance needs the input embedding, which this {adapter.family!r} model's parts do not name.")
    others = [m for m in adapter.base.modules() if isinstance(m, nn.Embedding) and m is not embedding]

    kept: dict[str, list] = {"tokens": [], "positions": [], "layers": []}
    handles = []

    def as_leaf(kind):
        def hook(module, args, output):
            leaf = output.detach().requires_grad_(True)
            kept[kind].append(leaf)
            return leaf
        return hook

    def norm_hook(module, args, kwargs, output):
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
        linear = _linear_norm(module, x)
        with torch.no_grad():
            scale = output.detach().abs().amax().clamp_min(1e-6)
            err = float((linear.detach() - output.detach()).abs().amax() / scale)
        if err > NORM_CHECK_TOLERANCE:
            raise UnsupportedModelError(
                f"relevance: {type(module).__name__} does not compute weight·x/σ(x) (+ bias) as LayerNorm/RMSNorm do "
                f"(relative difference {err:.2g}); its identity rule would be wrong."
            )
        return _same_value(output, linear)

    def identity_hook(module, args, output):
        return _IdentityRule.apply(args[0], output)

    def scale_hook(factor):
        def hook(module, args, output):
            if isinstance(factor, tuple):  # GPT-2's fused q|k|v
                _, width, fqk, fv = factor
                f = torch.full((output.shape[-1],), fqk, dtype=output.dtype, device=output.device)
                f[2 * width:] = fv
                return _ScaleGradient.apply(output, f)
            return _ScaleGradient.apply(output, factor)
        return hook

    def halve_input(module, args):
        return (_ScaleGradient.apply(args[0], 0.5), *args[1:])

    def layer_hook(module, args, output):
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        kept["layers"].append(hidden)

    from .perturb import model_lock

    # The lock: the perturbation sliders' worker never edits weights while this forward runs.
    with model_lock(model), _restoring(model, requires_grad=False, eval_mode=True):
        biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
        for p in biases:
            p.requires_grad_(True)  # put back by _restoring
        try:
            handles.append(embedding.register_forward_hook(as_leaf("tokens")))
            handles += [m.register_forward_hook(as_leaf("positions")) for m in others]
            handles += [
                m.register_forward_hook(norm_hook, with_kwargs=True)
                for m in model.modules()
                if _is_layernorm(m) or _is_rmsnorm(m)
            ]
            handles += [m.register_forward_hook(identity_hook) for m in wiring.activations]
            handles += [m.register_forward_hook(scale_hook(f)) for m, f in wiring.qkv]
            handles += [m.register_forward_pre_hook(halve_input) for m in wiring.products]
            if layers:
                handles += [block.register_forward_hook(layer_hook) for block in adapter.layers]
            with torch.enable_grad():
                output = model(**inputs)
                value = _target_value(output, target, position, foil)
                leaves = kept["tokens"] + kept["positions"] + kept["layers"] + biases
                grads = torch.autograd.grad(value, leaves, allow_unused=True)
        finally:
            for h in handles:
                h.remove()

    def dot(x, g):
        return torch.zeros(x.shape[:-1], dtype=torch.float64) if g is None else (x.detach().double() * g.double()).sum(-1).cpu()

    k_tok, k_pos, k_lay = len(kept["tokens"]), len(kept["positions"]), len(kept["layers"])
    if k_tok != 1:
        raise UnsupportedModelError(f"relevance: the input embedding ran {k_tok} times in one forward; expected once.")
    tokens = dot(kept["tokens"][0], grads[0])[0]
    positions = sum(float(dot(x, g).sum()) for x, g in zip(kept["positions"], grads[1:1 + k_pos]))
    per_layer = {
        i: dot(x, g)[0].float().numpy() for i, (x, g) in enumerate(zip(kept["layers"], grads[1 + k_pos:1 + k_pos + k_lay]))
    }
    bias_total = 0.0
    for p, g in zip(biases, grads[1 + k_pos + k_lay:]):
        if g is not None:
            bias_total += float((p.detach().double() * g.double()).sum())
    t = float(value.detach())
    return Relevance(
        tokens=tokens.float().numpy(),
        layers=per_layer,
        target=t,
        positions=positions,
        biases=bias_total,
        remainder=t - float(tokens.sum()) - positions - bias_total,
        rule=rule,
    )


def _target_value(output, target, position: int, foil: int | None) -> torch.Tensor:
    if callable(target):
        return _value(output, target)
    logits = getattr(output, "logits", None)
    if logits is None:
        raise ValueError("a token target needs logits; this model returns none — pass a function of the output.")
    row = logits[0, position]
    token = int(row.argmax()) if target is None else int(target)
    value = row[token]
    if foil is not None:
        if not 0 <= int(foil) < row.shape[-1]:
            raise IndexError(f"foil token id {foil} is out of range: the vocabulary has ids 0..{row.shape[-1] - 1}.")
        value = value - row[int(foil)]
    return value


# --- the entry point for users and the attribution strip ----------------------------------------------
def relevance(
    source,
    tokenizer=None,
    text=None,
    *,
    target=None,
    foil: int | None = None,
    position: int = -1,
    layer: int | None = None,
    rule: str = "attnlrp",
    parts: ModelParts | None = None,
) -> np.ndarray:
    """AttnLRP relevance of each token, float32 ``[n]``: at the input embeddings (``layer=None``) or at
    the residual stream after block ``layer``.

    ``source`` is a :class:`~nbinspect.trace.Trace` (its model, inputs, target and edits are used, and the
    result is cached on it, every layer at once) or a model, with ``tokenizer`` and ``text`` (or token ids
    as ``text``). See :func:`propagate` for the rules and :class:`Relevance` for conservation.
    """
    if _is_trace(source):
        result = trace_relevance(source, rule=rule)
    else:
        if tokenizer is None and not isinstance(text, (torch.Tensor, dict)):
            raise TypeError("relevance(model, tokenizer, text): pass the tokenizer and the text (or a Trace).")
        adapter = Adapter.of(source, parts)
        inputs = encode(tokenizer, text, adapter) if isinstance(text, str) else text
        result = propagate(source, inputs, target, position=position, foil=foil, rule=rule,
                           layers=layer is not None, parts=parts)
        if layer is not None:
            adapter.check_layer(layer)
    if layer is None:
        return result.tokens
    n_layers = len(result.layers)
    if not isinstance(layer, int) or isinstance(layer, bool) or not -n_layers <= layer < n_layers:
        raise IndexError(f"layer {layer!r} is out of range: this model has layers 0..{n_layers - 1}.")
    return result.layers[layer % n_layers]


def _is_trace(obj) -> bool:
    return all(hasattr(obj, name) for name in ("model", "inputs", "target", "cached"))


def trace_relevance(trace, rule: str = "attnlrp") -> Relevance:
    """The trace's :class:`Relevance` with every layer, computed once per trace and rule (one forward +
    backward under the trace's edits, holding the model lock)."""

    def compute() -> Relevance:
        from .perturb import model_lock, perturb

        t = trace.target
        kind = getattr(t, "kind", "token")
        if kind == "loss":
            raise ValueError(
                "relevance explains a logit (or a logit difference), not the loss; make the trace with "
                "target=None (the predicted token), a token or foil=... to see relevance."
            )
        # Token targets as ids; a function (or an encoder's state norm) as the Target's own value function.
        target = t.token if kind in ("token", "contrast") else t.value
        foil = t.foil if kind == "contrast" else None
        edits = tuple(getattr(trace, "edits", ()) or ())
        with model_lock(trace.model):
            with perturb(trace.model, *edits):
                return propagate(trace.model, trace.inputs, target, position=t.position, foil=foil, rule=rule,
                                 layers=True, parts=getattr(trace.adapter, "parts", None))

    return trace.cached(("relevance", rule), compute)


def lrp(trace, layer: int | None = None) -> np.ndarray:
    """The attribution strip's "lrp" method: AttnLRP relevance of each token of ``trace``, float32 ``[n]``,
    at the input embeddings (``layer=None``) or at the residual after block ``layer`` (the layer slider)."""
    return relevance(trace, layer=layer)


def _rollout(trace, layer: int | None = None) -> np.ndarray:
    from .rollout import rollout

    return rollout(trace, layer=layer)


def _flow(trace, layer: int | None = None) -> np.ndarray:
    from .rollout import flow

    return flow(trace, layer=layer)


#: Token attributions computed from a Trace, for the attribution strip: name -> ``fn(trace, layer=None)``
#: returning float32 ``[n]`` on the host (``layer``: after that block instead of at the input). Each is
#: cached on the trace; "flow" raises ``ValueError`` past ``rollout.FLOW_MAX_TOKENS`` tokens.
STRIP_METHODS = {"lrp": lrp, "rollout": _rollout, "flow": _flow}


def strip_unavailable(trace, method: str) -> str | None:
    """Why ``STRIP_METHODS[method]`` cannot explain ``trace`` (one sentence), or ``None`` when it can.

    Cheap: reads the model's family, the trace's target and its length; runs nothing. A method that
    passes may still refuse while it runs (e.g. a norm that is not LayerNorm/RMSNorm)."""
    if method == "lrp":
        try:
            _wiring(trace.adapter, "attnlrp")
        except UnsupportedModelError as e:
            return f"not for this model: {e}"
        except AttributeError as e:  # a family's name on a model whose modules are named otherwise
            return f"not for this model: relevance cannot find the attention or MLP parts it rewires ({e})."
        if getattr(trace.target, "kind", "token") == "loss":
            return ("relevance explains a logit (or a logit difference), not the loss: make the trace with "
                    "target=None (the predicted token), a token or foil=... to see it.")
        return None
    if method == "flow":
        from .rollout import FLOW_MAX_TOKENS

        if trace.n_tokens > FLOW_MAX_TOKENS:
            return (f"attention flow solves one max-flow per token and is limited to {FLOW_MAX_TOKENS} tokens; "
                    f"this text has {trace.n_tokens}: use attention rollout, or a shorter text.")
        return None
    if method == "rollout":
        return None
    raise ValueError(f"unknown strip method {method!r}; choose one of {', '.join(STRIP_METHODS)}.")


__all__ = ["RULES", "STRIP_METHODS", "Relevance", "lrp", "propagate", "relevance", "strip_unavailable", "trace_relevance"]
