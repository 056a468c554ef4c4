"""The residual stream as a sum: logit lens, direct logit attribution, what each block writes, head types.

Every function here reads what one forward already recorded (a :class:`~nbinspect.trace.Trace`, or
anything with ``.record`` and ``.adapter``) and reduces it on the model's device; none runs the model
again, except :func:`head_types`, which runs its own repeated random sequence once.

The view of a decoder this module takes (pre-norm blocks, as in Llama, GPT-2, GPT-NeoX, Mistral, Qwen2,
Mixtral): the stream entering the final norm is

    x_L = x_0 + Σ_l (attn_l + mlp_l),     attn_l = Σ_h head_{l,h} + b_O,l

where ``x_0`` is the embeddings (token + position), ``head_{l,h}`` what head h writes (its slice of the
output projection) and ``mlp_l`` what the MLP block returns. GPT-NeoX's parallel residual adds both to
the same input and the identity still holds. :func:`direct_logit_attribution` checks it numerically and
refuses an architecture where it fails (post-norm blocks such as BERT's renormalize the stream).

Conventions (stated once, used everywhere):

- **Lens rows** are the residual stream *after* block ``l`` (row ``L - 1`` is what enters the final norm,
  so its lens is the model's own output distribution).
- **Frozen norm scale**: the final norm ``N(x) = a ⊙ P(x) · s(x) + b`` (``P`` centres for LayerNorm and is
  the identity for RMSNorm; ``s(x) = 1 / sqrt(mean(P(x)²) + eps)``) is not linear in ``x`` because of
  ``s``. Direct logit attribution freezes ``s`` at its value on the full stream at the chosen position
  (TransformerLens's ``apply_ln`` convention), which makes it linear: component ``c`` contributes
  ``c · v`` with ``v = s · P(a ⊙ u)``, ``u`` the unembedding row of the target (minus the foil's). The
  contributions then sum, with the **remainder** (norm bias ``b · u``, unembedding bias, attention output
  biases), exactly to the model's logit (or logit difference).
- **KL to final** is ``KL(final ‖ layer)`` in nats: how much the final distribution is surprised by the
  layer's guess; 0 on the last row.
- Final-logit transforms: a linear logit scale (Cohere's ``logit_scale``, Granite's ``logits_scaling``)
  is folded into ``u``; Gemma-2's soft-capping is applied by the lens, while attribution explains the
  logit *before* the cap (the cap is monotonic, so rankings agree).
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import codecs
from .adapters import Adapter
from .perturb import model_lock

#: Encoders (BERT family) predict masked tokens through their own head, not the next token from the
#: final residual: the sentence views show instead of a lens or an attribution.
ENCODER_REASON = (
    "the logit lens and direct logit attribution read next-token predictions off the residual stream of a "
    "decoder; this {family!r} model is an encoder (each position sees the whole text and post-norm blocks "
    "renormalize the stream), so layer-by-layer predictions would be meaningless here."
)


# --- which models this applies to -----------------------------------------------------------------
def not_applicable(adapter: Adapter) -> str | None:
    """``None`` when the lens and attribution apply to this model, else one sentence saying why not."""
    if not adapter.is_causal:
        return ENCODER_REASON.format(family=adapter.family)
    if adapter.unembedding() is None:
        return (
            f"this {type(adapter.model).__name__} has no language-model head (unembedding) to decode the residual "
            "stream with; load the *ForCausalLM class of the model."
        )
    if adapter.final_norm() is None:
        return f"nbinspect does not know this {adapter.family!r} model's final norm; name it with ModelParts(final_norm=...)."
    return None


def _require(adapter: Adapter) -> None:
    reason = not_applicable(adapter)
    if reason is not None:
        raise ValueError(reason[0].upper() + reason[1:])


def _source(trace) -> tuple[Adapter, Any]:
    adapter = getattr(trace, "adapter", None)
    record = getattr(trace, "record", None)
    if adapter is None or record is None:
        raise TypeError(
            f"expected an nbinspect Trace (nbinspect.trace(model, tokenizer, text)), got {type(trace).__name__}."
        )
    return adapter, record


def _residuals(adapter: Adapter, record, what: str) -> list:
    missing = [i for i in range(adapter.n_layers) if i not in record.residual]
    if missing:
        raise ValueError(f"{what} needs the residual stream of every layer; this record lacks layers {missing[:5]}.")
    return [record.residual[i] for i in range(adapter.n_layers)]


@contextmanager
def _weights_of(trace, adapter: Adapter):
    """The model's weights as they were when ``trace`` ran: its edits applied (and undone after).

    A trace keeps references to weights (the output projections of ``record.heads``, the final norm, the
    unembedding), and after an edited run those hold the restored values again; reading them under the
    same edits gives what the edited run used.
    """
    edits = tuple(getattr(trace, "edits", ()) or ())
    with model_lock(adapter.model):
        if not edits:
            yield
            return
        from .perturb import perturb

        with perturb(adapter.model, *edits, parts=adapter.parts):
            yield


# --- the unembedding as the model applies it ------------------------------------------------------
def _weight(module: nn.Module, name: str) -> torch.Tensor | None:
    from .adapters import _materialized

    return _materialized(module, name)


# --- logit lens ------------------------------------------------------------------------------------
@dataclass
class LogitLens:
    """The residual stream after every block decoded as a next-token distribution (tensors on the device).

    Rows are layers (after block ``l``), columns token positions.

    top_ids: int64 [layers, positions, k], most probable tokens first; top_probs: float32, the same shape.
    entropy: float32 [layers, positions], in nats. kl_to_final: KL(final ‖ layer) in nats.
    target: the token id whose probability and rank are reported (None: none asked).
    target_prob: float32 [layers, positions]; target_rank: int64 [layers, positions], 0 = top token.
    """

    top_ids: torch.Tensor
    top_probs: torch.Tensor
    entropy: torch.Tensor
    kl_to_final: torch.Tensor
    target: int | None = None
    target_prob: torch.Tensor | None = None
    target_rank: torch.Tensor | None = None
    #: The token position of each column (int64 [columns], on the host): ``0..n-1`` for the full grid.
    positions: torch.Tensor | None = None

    @property
    def n_layers(self) -> int:
        return int(self.top_ids.shape[0])

    @property
    def n_positions(self) -> int:
        return int(self.top_ids.shape[1])

    def column(self, position: int) -> int:
        """The column holding token ``position`` (``KeyError`` when this lens did not decode it)."""
        if self.positions is None:
            return position
        hits = (self.positions == int(position)).nonzero()
        if not len(hits):
            raise KeyError(f"position {position} was not decoded by this lens (it holds {self.positions.tolist()[:8]}...).")
        return int(hits[0])

    def select(self, columns) -> "LogitLens":
        """The lens restricted to ``columns`` (indices into this lens's columns, a list or tensor)."""
        idx = torch.as_tensor(columns, dtype=torch.long)
        pick = lambda t: None if t is None else t[:, idx.to(t.device)]  # noqa: E731
        positions = idx if self.positions is None else self.positions[idx]
        return LogitLens(pick(self.top_ids), pick(self.top_probs), pick(self.entropy), pick(self.kl_to_final),
                         self.target, pick(self.target_prob), pick(self.target_rank), positions)

    @staticmethod
    def join(parts: list["LogitLens"]) -> "LogitLens":
        """Columns of several lenses of the same trace and target side by side, in position order."""
        positions = torch.cat([p.positions for p in parts])
        order = torch.argsort(positions)
        cat = lambda name: (None if getattr(parts[0], name) is None  # noqa: E731
                            else torch.cat([getattr(p, name) for p in parts], dim=1)[:, order.to(getattr(parts[0], name).device)])
        return LogitLens(cat("top_ids"), cat("top_probs"), cat("entropy"), cat("kl_to_final"), parts[0].target,
                         cat("target_prob"), cat("target_rank"), positions[order])


def logit_lens(trace, *, k: int = 5, target: int | None = None, positions=None) -> LogitLens:
    """Decode the residual stream after every block through the final norm and unembedding.

    Batched unembeddings of ``codecs.LENS_CHUNK_ROWS`` layer × position residuals at a time, one block of
    the vocabulary at a time (``codecs.LENS_BLOCK_MAX_BYTES`` of logits, on a CPU at most
    ``codecs.LENS_BLOCK_TOKENS`` entries): top-k, the softmax sums, entropy, KL and the target's probability
    and rank are reduced on the device block by block and the blocks' sums combined once at the end, so no
    ``[layers, positions, vocab]`` tensor is ever made, and the reductions read each block while it is
    still in cache. The path is :func:`decode_residuals` (also a generation step's lens). ``target``: a token id (default: the trace's target token, when it has one).
    ``positions``: the token positions to decode (ints, negative from the end; default: all of them).
    Each column costs ``L·d·V`` multiply-adds (6.3× a forward's per token on SmolLM2), so views decode
    only the columns they show; the columns come back in the order asked, named by ``.positions``.
    """
    adapter, record = _source(trace)
    _require(adapter)
    if target is None:
        target = _trace_token(trace)
    residual = _residuals(adapter, record, "the logit lens")
    head = adapter.unembedding()
    device = _weight(head, "weight").device
    vocab = int(_weight(head, "weight").shape[0])
    if not 1 <= k <= vocab:
        raise ValueError(f"k {k!r} is out of range: show 1..{vocab} tokens per cell.")
    if target is not None and not 0 <= int(target) < vocab:
        raise ValueError(f"target token id {target} is outside this model's vocabulary 0..{vocab - 1}.")
    n = int(residual[0].after.shape[1])
    if positions is None:
        picked = torch.arange(n)
    else:
        picked = torch.as_tensor(list(positions) if not torch.is_tensor(positions) else positions, dtype=torch.long)
        if picked.dim() != 1 or bool(((picked < -n) | (picked >= n)).any()):
            raise IndexError(f"positions {picked.tolist()[:8]} are out of range: the text has tokens 0..{n - 1}.")
        picked = picked % n
    stream = torch.stack([r.after[0].index_select(0, picked.to(r.after.device)).to(device) for r in residual], dim=1)
    n, L, _ = stream.shape  # [positions, L, d]
    chunk = max(1, codecs.LENS_CHUNK_ROWS // L)
    out = {name: [] for name in ("ids", "probs", "entropy", "kl", "tprob", "trank")}
    with _weights_of(trace, adapter), torch.no_grad():
        for start in range(0, n, chunk):
            part = decode_residuals(adapter, stream[start:start + chunk], k=k, target=target)
            for name, value in part.items():
                out[name].append(value)
    if n == 0:
        empty = lambda dtype, *shape: torch.zeros(L, 0, *shape, dtype=dtype, device=device)  # noqa: E731
        t = target is not None
        return LogitLens(empty(torch.long, k), empty(torch.float32, k), empty(torch.float32), empty(torch.float32),
                         None if not t else int(target), empty(torch.float32) if t else None,
                         empty(torch.long) if t else None, picked)
    cat = lambda name: torch.cat(out[name]).transpose(0, 1).contiguous()  # noqa: E731 -> [L, n, ...]
    codecs.check_finite(torch.cat(out["entropy"]), "the logit lens")
    return LogitLens(
        top_ids=cat("ids"),
        top_probs=cat("probs").float(),
        entropy=cat("entropy"),
        kl_to_final=cat("kl"),
        target=None if target is None else int(target),
        target_prob=cat("tprob") if target is not None else None,
        target_rank=cat("trank") if target is not None else None,
        positions=picked,
    )


def decode_residuals(adapter: Adapter, stream: torch.Tensor, *, k: int = 5, target: int | None = None) -> dict:
    """The lens of residual streams ``stream`` [positions, layers, d] (or one position's [layers, d]), outside a trace.

    The one path every logit lens in nbinspect takes (the trace's :func:`logit_lens`, a generation's steps):
    the model's final norm, then its whole head as :meth:`Adapter.unembed` applies it (soft-cap, logit
    scaling), reduced block by block on the stream's device. Returns tensors with the position dimension
    first (dropped for a [layers, d] input): ``ids`` / ``probs`` [..., layers, k], ``entropy``, ``kl`` and,
    with a ``target`` id, its probability ``tprob`` and rank ``trank`` [..., layers].
    """
    _require(adapter)
    vocab = int(_weight(adapter.unembedding(), "weight").shape[0])
    if not 1 <= k <= vocab:
        raise ValueError(f"k {k!r} is out of range: show 1..{vocab} tokens per cell.")
    one = stream.dim() == 2
    with torch.no_grad():
        part = _lens_chunk(adapter, stream[None] if one else stream, k, target, vocab)
    return {name: value[0] for name, value in part.items()} if one else part


def _lens_chunk(adapter: Adapter, x: torch.Tensor, k: int, target: int | None, vocab: int) -> dict:
    """The lens reductions of residuals ``x`` [c, L, d], one vocabulary block at a time.

    Per row and block ``b``, with ``m_b`` the block's max logit: ``S_b = Σ e^(z−m_b)``,
    ``E_b = Σ e^(z−m_b)(z−m_b)`` and, against the same position's last row ``f``,
    ``G_b = Σ e^(z_f−m_fb)(z_f−z)``; they are combined once at the end against the row's max ``M``
    (``S = Σ_b e^(m_b−M) S_b``, ...): entropy ``log S − E/S`` and ``KL(final ‖ row) = G/S_f − (lse_f − lse_row)``,
    from differences taken element by element so the small KLs of the last layers do not cancel away
    (exactly 0 on the last row). Each block is read while in cache by the top-k, one exp, one sum and two
    GEMVs; nothing else is done per block (a running rescale per block cost more than the sums). The
    combination is in float64. The target's block goes first, so its logit for the rank is the one the
    GEMM made.
    """
    normed = adapter.final_norm()(x)
    c, L = x.shape[:2]
    width = max(1, min(vocab, codecs.LENS_BLOCK_MAX_BYTES // (4 * c * L)))
    if x.device.type == "cpu":
        width = min(width, codecs.LENS_BLOCK_TOKENS)
    blocks = [(lo, min(lo + width, vocab)) for lo in range(0, vocab, width)]
    if target is not None:
        first = int(target) // width
        blocks.insert(0, blocks.pop(first))
    head = adapter.head()  # found once, not per block
    per = {name: [] for name in ("v", "i", "m", "S", "E", "ed")}
    xt = rank = None
    for lo, hi in blocks:
        z = adapter.unembed(normed, vocab=slice(lo, hi), head=head).float()  # [c, L, b]
        if target is not None:
            if xt is None:
                xt = z[..., int(target) - lo].clone()
                rank = torch.zeros(c, L, dtype=torch.long, device=z.device)
            rank += (z > xt[..., None]).sum(-1, dtype=torch.int32)
        v, i = torch.topk(z, min(k, hi - lo), dim=-1)
        d = z.sub_(v[..., :1])  # ≤ 0, from the block's max (the top-k's first); z is not needed any more
        e = d.exp()
        per["v"].append(v)
        per["i"].append(i + lo)
        per["m"].append(v[..., 0])
        per["S"].append(e.sum(-1))
        per["E"].append(torch.bmm(e.view(c * L, 1, -1), d.view(c * L, -1, 1)).view(c, L))
        per["ed"].append(torch.bmm(d, e[:, -1:, :].transpose(1, 2)).view(c, L))  # Σ e_f d per row
        del z, d, e
    top_v, j = torch.topk(torch.cat(per["v"], -1), k, dim=-1)
    top_i = torch.cat(per["i"], -1).gather(-1, j)
    m_b, S_b, E_b, ed = (torch.stack(per[name]).double() for name in ("m", "S", "E", "ed"))  # [blocks, c, L]
    # Σ_block e_f (z_f − z) = Σ e_f d_f − Σ e_f d + (m_fb − m_b) Σ e_f: d is small where e_f is not (both
    # are measured from their block's max), so nothing large cancels.
    G_b = ed[..., -1:] - ed + (m_b[..., -1:] - m_b) * S_b[..., -1:]
    m = m_b.amax(0)
    shift = m_b - m  # ≤ 0
    scale = shift.exp()
    S = (scale * S_b).sum(0)
    E = (scale * (E_b + shift * S_b)).sum(0)
    G = (scale[..., -1:] * G_b).sum(0)
    lse = m + S.log()
    entropy = (S.log() - E / S).float().clamp_min_(0.0)
    kl = (G / S[:, -1:] - (lse[:, -1:] - lse)).float().clamp_min_(0.0)
    part = {"ids": top_i, "probs": (top_v.double() - lse[..., None]).exp().float(), "entropy": entropy, "kl": kl}
    if target is not None:
        part["tprob"] = (xt.double() - lse).exp().float()
        part["trank"] = rank
    return part


def _trace_token(trace) -> int | None:
    t = getattr(trace, "target", None)
    token = getattr(t, "token", None)
    return None if token is None else int(token)


# --- direct logit attribution ----------------------------------------------------------------------
@dataclass
class LogitAttribution:
    """What every component wrote toward the target logit at one position (floats on the host).

    heads: float32 [layers, heads]; mlp: float32 [layers]; embeddings: float.
    remainder: everything that is no head, MLP or embedding (norm bias · u, unembedding bias, attention
        output biases), with ``remainder_parts`` naming each. ``logit``: the model's own target logit (minus
        the foil's), before any soft-cap. ``error``: ``logit - total``, floating-point noise only.
    scale: the final norm's frozen ``s`` at this position (see the module docs).
    """

    heads: torch.Tensor
    mlp: torch.Tensor
    embeddings: float
    remainder: float
    remainder_parts: dict[str, float]
    logit: float
    target: int
    foil: int | None
    position: int
    scale: float
    attention: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # per layer: heads + bias

    @property
    def total(self) -> float:
        return float(self.heads.double().sum() + self.mlp.double().sum()) + self.embeddings + self.remainder

    @property
    def error(self) -> float:
        return self.logit - self.total

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` components with the largest |contribution|, as ("L3H2" / "MLP 5" / "embeddings", value)."""
        items = [(f"L{l}H{h}", float(v)) for (l, h), v in _enumerate2(self.heads)]
        items += [(f"MLP {l}", float(v)) for l, v in enumerate(self.mlp.tolist())]
        items.append(("embeddings", self.embeddings))
        return sorted(items, key=lambda kv: -abs(kv[1]))[:k]


def _enumerate2(t: torch.Tensor):
    for l in range(t.shape[0]):
        for h in range(t.shape[1]):
            yield (l, h), t[l, h]


def _norm_affine(norm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool, float]:
    """(a, b, centred, s) with ``norm(x) = a ⊙ P(x) · s + b`` at the one vector ``x`` [d] (checked)."""
    centred = isinstance(norm, nn.LayerNorm) or "LayerNorm" in type(norm).__name__
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        eps = getattr(norm, "eps", None)
    weight = _weight(norm, "weight")
    bias = _weight(norm, "bias") if centred else None
    if eps is None or weight is None:
        raise ValueError(
            f"direct logit attribution needs the final norm's weight and epsilon; {type(norm).__name__} has "
            f"{'no weight' if weight is None else 'no eps attribute'}."
        )
    x64 = x.double()
    px = x64 - x64.mean() if centred else x64
    s = 1.0 / math.sqrt(float(px.pow(2).mean()) + float(eps))
    b = bias.double() if bias is not None else torch.zeros_like(x64)
    actual = norm(x[None].to(weight.dtype))[0].double()
    # Some norms scale by (1 + weight) (Gemma); find which one this module computes.
    for a in (weight.double(), 1.0 + weight.double()):
        if torch.allclose(a * px * s + b, actual, rtol=1e-3, atol=1e-4 * float(actual.abs().max()) + 1e-6):
            return a, b, centred, s
    raise ValueError(
        f"the final norm {type(norm).__name__} is neither a LayerNorm nor an RMSNorm as nbinspect knows them, so "
        "its scale cannot be frozen for direct logit attribution."
    )


def direct_logit_attribution(trace, *, target: int | None = None, foil: int | None = None,
                             position: int | None = None) -> LogitAttribution:
    """Split the target logit at ``position`` into what every head, MLP and the embeddings wrote.

    ``target`` / ``foil``: token ids (default: the trace's target, else the model's top prediction at
    ``position``); with a foil the attributed quantity is ``logit(target) - logit(foil)``. ``position``
    defaults to the trace's target position, else the last token. The final norm's scale is frozen at
    its value on this input (module docs); contributions + remainder equal the model's logit up to
    floating-point error (``.error``).
    """
    adapter, record = _source(trace)
    _require(adapter)
    residual = _residuals(adapter, record, "direct logit attribution")
    L, n = adapter.n_layers, int(residual[0].before.shape[1])
    if position is None:
        position = getattr(getattr(trace, "target", None), "position", None)
        position = n - 1 if position is None else int(position)
    if not -n <= position < n:
        raise IndexError(f"position {position} is out of range: the text has tokens 0..{n - 1}.")
    position %= n
    if target is None:
        target = _trace_token(trace)
        if foil is None:
            f = getattr(getattr(trace, "target", None), "foil", None)
            foil = None if f is None else int(f)
    for kind in ("heads", "attention_out", "mlp_out"):
        missing = [i for i in range(L) if i not in getattr(record, kind)]
        if missing:
            raise ValueError(f"direct logit attribution needs {kind} of every layer; this record lacks layers {missing[:5]}.")
    norm, head = adapter.final_norm(), adapter.unembedding()
    W_U = _weight(head, "weight")
    dev = W_U.device
    vocab = int(W_U.shape[0])
    x_L = residual[-1].after[0, position].to(dev)
    with _weights_of(trace, adapter), torch.no_grad():
        if target is None:  # the model's own prediction, read off the logits the trace kept
            kept = getattr(record, "logits", None)
            logits = kept[0, position] if kept is not None else adapter.unembed(norm(x_L[None]))[0]
            target = int(logits.argmax())
        for name, t in (("target", target), ("foil", foil)):
            if t is not None and not 0 <= int(t) < vocab:
                raise ValueError(f"{name} token id {t} is outside this model's vocabulary 0..{vocab - 1}.")
        factor, cap = adapter.logit_transform()
        u = W_U[int(target)].double()
        b_U = _weight(head, "bias")
        bias_u = float(b_U[int(target)]) if b_U is not None else 0.0
        if foil is not None:
            u = u - W_U[int(foil)].double()
            bias_u -= float(b_U[int(foil)]) if b_U is not None else 0.0
        u, bias_u = u * factor, bias_u * factor
        # The model's own (pre-cap) logit, recomputed from the stream in float64 for the reference value.
        a, b, centred, s = _norm_affine(norm, x_L)
        y = a * ((x_L.double() - x_L.double().mean()) if centred else x_L.double()) * s + b
        logit = float(y @ u) + bias_u
        au = a * u
        v = (au - au.mean() if centred else au) * s  # c · v is c's contribution (P is symmetric)
        # Everything stays on the device until one transfer at the end (no per-layer host syncs).
        at = lambda t: t[0, position].to(dev).double()  # noqa: E731
        embedding = at(residual[0].before)
        attn = torch.stack([at(record.attention_out[l]) for l in range(L)])  # [L, d]
        mlp_w = torch.stack([at(record.mlp_out[l]) for l in range(L)])
        head_rows, bias_rows = [], []
        for l in range(L):
            ho = record.heads[l]
            # W^T v (W [d, H·hd] the output projection) in float32: one cheap matvec instead of a float64 copy
            # of W per layer; its rounding (~1e-7 relative) is far under the 1e-4 the parts must sum to.
            Wv = (ho.weight.to(dev).t().float() @ v.float()).double().view(ho.n_heads, -1)  # [H, hd]
            head_rows.append((ho.per_head[0, position].to(dev).double() * Wv).sum(-1))
            bias_rows.append(ho.bias.to(dev).double() @ v if ho.bias is not None else v.new_zeros(()))
        heads64, bias64 = torch.stack(head_rows), torch.stack(bias_rows)
        attention64, mlp64 = attn @ v, mlp_w @ v
        rebuilt = embedding + attn.sum(0) + mlp_w.sum(0)
        gap = float((rebuilt - x_L.double()).norm()) / max(float(x_L.double().norm()), 1e-12)
        heads, mlp, attention, bias_l = (t.cpu() for t in (heads64, mlp64, attention64, bias64))
        embeddings = float(embedding @ v)
        attn_bias = float(bias_l.sum())
        split = heads.sum(1) + bias_l
        off = (split - attention).abs() > 1e-3 * (attention.abs() + heads.abs().sum(1)) + 1e-5
        if bool(off.any()):
            l = int(off.nonzero()[0])
            raise ValueError(
                f"layer {l}'s heads do not add up to its attention output ({float(split[l]):.4g} vs {float(attention[l]):.4g}): "
                "the output projection's weights are not those the trace ran with."
            )
        _check_gap(gap, adapter)
    parts = {"final norm bias": float(b @ u), "unembedding bias": bias_u, "attention output biases": attn_bias}
    return LogitAttribution(
        heads=heads.float(),
        mlp=mlp.float(),
        embeddings=embeddings,
        remainder=sum(parts.values()),
        remainder_parts=parts,
        logit=logit,
        target=int(target),
        foil=None if foil is None else int(foil),
        position=position,
        scale=s,
        attention=attention.float(),
    )


def _check_gap(gap: float, adapter: Adapter) -> None:
    """The stream must be the embeddings plus every block's attention and MLP output (pre-norm blocks)."""
    if gap > 1e-3:
        raise ValueError(
            f"this {adapter.family!r} model's residual stream is not the sum of its embeddings and its blocks' "
            f"attention and MLP outputs (relative gap {gap:.1e}; e.g. norms after the sub-blocks), so direct logit "
            "attribution cannot split it."
        )


# --- what each block writes ------------------------------------------------------------------------
@dataclass
class BlockWrites:
    """Per layer (rows) and token (columns), float32 on the device; ``mean_*`` average over tokens.

    stream_in / stream_out: ‖residual‖ before / after the block. attention / mlp: ‖what the attention /
    MLP block wrote‖. cos_attention: cosine between the attention write and the stream it is added to
    (the block's input); cos_mlp: between the MLP write and its input stream (input + attention write for
    sequential blocks; the block's input for GPT-NeoX's parallel residual).
    """

    stream_in: torch.Tensor
    stream_out: torch.Tensor
    attention: torch.Tensor
    mlp: torch.Tensor
    cos_attention: torch.Tensor
    cos_mlp: torch.Tensor

    def mean(self, name: str) -> torch.Tensor:
        return getattr(self, name).mean(dim=1)


def block_writes(trace) -> BlockWrites:
    """Norms of the residual stream and of what each block's attention and MLP write, and their cosines."""
    adapter, record = _source(trace)
    residual = _residuals(adapter, record, "block writes")
    for kind in ("attention_out", "mlp_out"):
        missing = [i for i in range(adapter.n_layers) if i not in getattr(record, kind)]
        if missing:
            raise ValueError(f"block writes need {kind} of every layer; this record lacks layers {missing[:5]}.")
    parallel = bool(getattr(adapter.config, "use_parallel_residual", False))
    rows = {k: [] for k in ("stream_in", "stream_out", "attention", "mlp", "cos_attention", "cos_mlp")}
    # An edited trace holds its parent's very tensors for the layers before the first one it re-ran
    # (Trace.edit), so their rows are the parent's too: a slider edit computes only the layers it changed.
    start, shared = _parent_rows(trace, "block_writes")
    # One pass per norm and per dot product (cosines from the norms at hand; torch.cosine_similarity
    # would take the norms again), and a block's input norm is the previous block's output norm
    # whenever the two are the same tensor: ~2.5x fewer passes over the stream.
    previous = None  # (the previous block's output, its norm)
    with torch.no_grad():
        for l, r in enumerate(residual):
            if l < start:
                continue
            before = r.before[0].float()
            attn = record.attention_out[l][0].to(before.device).float()
            mlp = record.mlp_out[l][0].to(before.device).float()
            n_before = previous[1] if previous is not None and _same(previous[0], r.before) else before.norm(dim=-1)
            n_after = r.after[0].float().norm(dim=-1).to(before.device)
            n_attn, n_mlp = attn.norm(dim=-1), mlp.norm(dim=-1)
            mid, n_mid = (before, n_before) if parallel else (before + attn, None)
            n_mid = mid.norm(dim=-1) if n_mid is None else n_mid
            rows["stream_in"].append(n_before)
            rows["stream_out"].append(n_after)
            rows["attention"].append(n_attn)
            rows["mlp"].append(n_mlp)
            rows["cos_attention"].append(_cosine(torch.linalg.vecdot(attn, before), n_attn, n_before))
            rows["cos_mlp"].append(_cosine(torch.linalg.vecdot(mlp, mid), n_mlp, n_mid))
            previous = (r.after, n_after)
    device = rows["stream_in"][0].device if rows["stream_in"] else shared.stream_in.device
    out = {k: torch.stack([t.to(device) for t in v]) if v else None for k, v in rows.items()}
    if start > 0:
        out = {k: getattr(shared, k)[:start] if v is None else torch.cat([getattr(shared, k)[:start], v]) for k, v in out.items()}
    codecs.check_finite(out["stream_out"].amax(), "the residual stream")
    return BlockWrites(**out)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two recorded tensors are views of the very same values (a block's output and the next
    block's input: the capture keeps a detached view of each, not one object)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype


def _cosine(dot: torch.Tensor, norm_a: torch.Tensor, norm_b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosines from dot products and norms, as torch.cosine_similarity clamps them (0 for a zero vector)."""
    return dot / (norm_a.clamp_min(eps) * norm_b.clamp_min(eps))


def _parent_rows(trace, key: str) -> tuple[int, Any]:
    """(first layer to compute, the parent's cached result) when ``trace`` is an edit re-run from a layer
    whose parent has already computed ``key`` (``Trace.cached``); else ``(0, None)``."""
    parent, start = getattr(trace, "parent", None), getattr(trace, "from_layer", -1)
    shared = getattr(parent, "_cache", {}).get(key) if parent is not None else None
    if shared is None or start <= 0:
        return 0, None
    # Layers before ``start`` are the parent's own tensors (see trace._inherit), not copies.
    record, parent_record = trace.record, parent.record
    if any(record.residual[i] is not parent_record.residual[i] for i in range(start)):
        return 0, None
    return start, shared


# --- head types ------------------------------------------------------------------------------------
HEAD_TYPES = ("previous_token", "induction", "duplicate_token", "first_token")
#: A head gets a type's badge when its score is at least this (scores are mean attention weights, 0..1);
#: 0.4 is about where TransformerLens's head detector and the induction-head papers call a head one.
BADGE_THRESHOLD = 0.4


def head_type_scores(pattern: torch.Tensor, period: int, start: int = 0) -> torch.Tensor:
    """Scores of every head for the four types, float32 [4, heads] in :data:`HEAD_TYPES` order.

    ``pattern``: attention probabilities [heads, n, n] (query, key) on a sequence whose positions
    ``start .. start + period - 1`` are repeated at ``start + period .. start + 2 * period - 1``.
    Each score is a mean attention weight (Olsson et al. 2022; TransformerLens ``head_detector``):

    - previous-token: from every query ``q ≥ 1`` to ``q - 1``;
    - induction: from every query in the repeat to the token *after* the earlier occurrence of its own
      token (``q - period + 1``);
    - duplicate-token: from every query in the repeat to the earlier occurrence of its token (``q - period``);
    - first-token ("sink", Xiao et al. 2023): from every query ``q ≥ 1`` to position 0.
    """
    H, n, _ = pattern.shape
    if n < 2:
        raise ValueError("head types need at least two tokens.")
    p = pattern.float()
    q = torch.arange(1, n, device=p.device)
    previous = p[:, q, q - 1].mean(dim=-1)
    first = p[:, q, 0].mean(dim=-1)
    if period < 1 or start < 0 or start + 2 * period > n:
        raise ValueError(f"a repeat of period {period} from position {start} does not fit in {n} tokens.")
    rq = torch.arange(start + period, start + 2 * period, device=p.device)
    induction = p[:, rq, rq - period + 1].mean(dim=-1)
    duplicate = p[:, rq, rq - period].mean(dim=-1)
    return torch.stack([previous, induction, duplicate, first])


@dataclass
class HeadTypes:
    """Head-type scores of every head, float32 [layers, heads] each, and how they were measured."""

    scores: dict[str, torch.Tensor]
    period: int
    tokens: torch.Tensor  # the sequence they were measured on, [n]

    def badges(self, threshold: float = BADGE_THRESHOLD) -> torch.Tensor:
        """uint8 [layers, heads]: 0 none, else 1 + the index in HEAD_TYPES of the head's strongest type ≥ threshold."""
        stacked = torch.stack([self.scores[k] for k in HEAD_TYPES])  # [4, L, H]
        best, which = stacked.max(dim=0)
        return torch.where(best >= threshold, which + 1, torch.zeros_like(which)).to(torch.uint8)

    def top(self, kind: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the highest ``kind`` score, as (layer, head, score)."""
        if kind not in self.scores:
            raise ValueError(f"head type {kind!r} is not known: use one of {HEAD_TYPES}.")
        s = self.scores[kind]
        values, idx = torch.topk(s.flatten(), min(k, s.numel()))
        H = s.shape[1]
        return [(int(i) // H, int(i) % H, float(v)) for v, i in zip(values, idx)]

    def rows(self) -> list[dict]:
        """One dict per head: layer, head and the four scores (a table for any dataframe library)."""
        L, H = self.scores[HEAD_TYPES[0]].shape
        return [{"layer": l, "head": h, **{k: float(self.scores[k][l, h]) for k in HEAD_TYPES}}
                for l in range(L) for h in range(H)]

    def __repr__(self) -> str:
        lines = [f"HeadTypes on a random sequence repeated once (period {self.period}); top heads per type:"]
        for kind in HEAD_TYPES:
            top = ", ".join(f"L{l}H{h} {v:.2f}" for l, h, v in self.top(kind, 5))
            lines.append(f"  {kind:<16} {top}")
        return "\n".join(lines)


def repeated_tokens(tokenizer, vocab: int, period: int, seed: int = 0) -> tuple[torch.Tensor, int]:
    """``[bos] + R + R`` with ``R`` ``period`` random ordinary token ids; returns (ids [n], start of R)."""
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    g = torch.Generator().manual_seed(seed)
    picks = []
    while len(picks) < period:
        for t in torch.randint(0, vocab, (period * 2,), generator=g).tolist():
            if t not in special and t not in picks:
                picks.append(t)
            if len(picks) == period:
                break
    bos = getattr(tokenizer, "bos_token_id", None)
    prefix = [bos] if isinstance(bos, int) and 0 <= bos < vocab else []
    return torch.tensor(prefix + picks + picks), len(prefix)


def head_types(model, tokenizer=None, *, period: int = 24, seed: int = 0, parts=None) -> HeadTypes:
    """Score every head as previous-token, induction, duplicate-token and first-token ("sink") head.

    Runs the model once (no gradients) on a random sequence of ``period`` ordinary tokens repeated once
    (after the tokenizer's BOS token, when it has one), keeping only the four scores per head (see
    :func:`head_type_scores`). A Trace may be passed instead of ``model``; its model and tokenizer are used.
    """
    from ._batched import all_finite, raise_not_finite
    from .capture import Request, capture
    from .inputs import vocab_size

    edits = ()
    if hasattr(model, "record") and hasattr(model, "adapter"):  # a Trace: its model, under its edits
        tokenizer = tokenizer or getattr(model, "tokenizer", None)
        parts, edits = model.adapter.parts, tuple(getattr(model, "edits", ()) or ())
        model = model.model
    adapter = Adapter.of(model, parts)
    vocab = vocab_size(adapter)
    if vocab is None:
        raise ValueError("head types need the model's vocabulary size to build a random sequence.")
    limit = adapter.max_positions
    if not isinstance(period, int) or period < 2 or (limit and 2 * period + 1 > limit):
        raise ValueError(f"period {period!r} is out of range: use 2..{(limit - 1) // 2 if limit else 'any'} tokens.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int (it picks the random tokens), got {type(seed).__name__} {seed!r}.")
    ids, start = repeated_tokens(tokenizer, vocab, period, seed)
    ids = ids[None].to(adapter.device_of(0))
    reduce = lambda layer, p: head_type_scores(p[0], period, start)  # noqa: E731
    from .perturb import perturb

    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with model_lock(model), torch.no_grad(), perturb(model, *edits, parts=parts) if edits else nullcontext():
        with capture(model, attention=Request(reduce=reduce), logits=False, parts=parts) as rec:
            model(**inputs)
        stacked = torch.stack([rec.attention[l].cpu() for l in range(adapter.n_layers)], dim=1)  # [4, L, H]
        if not all_finite(stacked):  # NaN weights: name the first layer whose output is not finite
            raise_not_finite(adapter, inputs, stacked, "the head-type scores")
    return HeadTypes({k: stacked[i] for i, k in enumerate(HEAD_TYPES)}, period, ids[0].cpu())


#: model -> {edits: (edits, weight version, HeadTypes)}: head types measured once per model and shared by every
#: view that shows them (the attention grid's badges, the attribution's overlay).
_HEAD_TYPES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def head_types_of(trace) -> HeadTypes:
    """:func:`head_types` of a trace's model under its edits, measured the first time any view asks.

    Kept per model until its weights change: the key holds the parameters' in-place version counters
    (training steps and edits bump them), so a stale measurement is never shown.
    """
    model = trace.model
    edits = tuple(getattr(trace, "edits", ()) or ())
    version = lambda: sum(p._version for p in model.parameters())  # noqa: E731
    # The edit objects themselves are kept with the result, so their ids stay theirs while it is stored.
    which = (tuple(id(e) for e in edits), repr(edits))
    store = _HEAD_TYPES.setdefault(model, {})
    hit = store.get(which)
    if hit is None or hit[1] != version():
        types = head_types(trace)
        store.clear()  # only the model as it is now is worth keeping
        store[which] = (edits, version(), types)  # after the probe: applying edits bumps the counters
        hit = store[which]
    return hit[2]

