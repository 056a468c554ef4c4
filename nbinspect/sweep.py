"""Head-importance sweep: switch each attention head off in turn and measure what the output loses.

``nbinspect.head_sweep(model, tokenizer, text)`` ablates every head of every layer, one at a time, and
returns a layers × heads matrix of the effect on the target logit (or on the loss over the text):

    effect[l, h] = metric(head h of layer l ablated) − metric(unablated)

Ablations (what "switched off" means; a head's output is its slice of the attention output
projection's input, as in :mod:`nbinspect.perturb`):

* ``"zero"`` — the head outputs zeros at every position; the projection's bias stays. Equals
  ``perturb(model, AblateHead(l, h))``.
* ``"mean"`` — the head outputs its mean output at every position: its mean over the positions of
  ``reference`` texts when given, else over the positions of ``text`` itself. Keeps the head's
  constant contribution and removes only what depends on the input.

Metrics: ``"logit"`` — the logit of ``target`` at ``position`` (minus the ``foil``'s logit when a foil is
given; ``target=None`` is the model's own prediction there); ``"loss"`` — the mean next-token
cross-entropy over the whole text (so a head that helps has a positive effect).

How it runs (requirements):

* **From the ablated layer on, several ablations per forward.** The text runs once keeping every layer's
  inputs (:mod:`nbinspect._batched`); the heads of one layer are the rows of one batch, each row with
  its own head mask applied by a pre-hook on the output projection, and only layers ``l..`` rerun.
  Layer ``l``'s attention itself runs once for all its rows (the hook widens the batch). The logits are
  unembedded at ``position`` only (for ``"logit"``). ``bench/sweep.py`` measures the whole sweep
  against ``n_layers × n_heads`` plain forwards.
* **Same numbers as a full forward under** ``perturb(model, AblateHead(l, h))`` (tests: 1e-5).
* **Progress and cancel.** A progress bar (``tqdm.auto``, optional) and a ``cancel`` callable or
  ``threading.Event`` checked between batches; a cancelled sweep returns what it has (``complete``
  False, NaN elsewhere). The model is never edited: no weight changes, hooks removed on any exit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from . import codecs
from ._batched import KeptRun, cancelled, check_finite, locked, progress_bar, resolve_token, widen
from .adapters import Adapter, ModelParts
from .inputs import encode, token_strings

ABLATIONS = ("zero", "mean")
METRICS = ("logit", "loss")


@dataclass
class SweepResult:
    """What :func:`head_sweep` measured (tensors float32 on the host).

    effect : ``[n_layers, n_heads]`` metric with the head ablated minus the unablated metric (NaN where
        not measured: layers not asked for, or after a cancel).
    values : ``[n_layers, n_heads]`` the metric with the head ablated.
    base_value : the unablated metric.
    metric, ablation : as passed; ``metric_label`` says it in words.
    tokens : the text's token texts; ``target``/``foil`` token ids (None for the loss).
    complete : False when ``cancel`` stopped the sweep early.
    runs, forwards, elapsed_s : ablations computed, batched calls made, wall-clock seconds.
    """

    effect: torch.Tensor
    values: torch.Tensor
    base_value: float
    metric: str
    metric_label: str
    ablation: str
    tokens: list[str]
    target: int | None
    foil: int | None
    position: int
    n_layers: int
    n_heads: int
    complete: bool = True
    runs: int = 0
    forwards: int = 0
    elapsed_s: float = 0.0

    def view(self, selection=None):
        """This sweep as a :class:`~nbinspect.views.head_sweep_view.HeadSweepView` (linked by ``selection``)."""
        from .views.head_sweep_view import HeadSweepView

        return HeadSweepView(self, selection)

    def top(self, k: int = 5, by_abs: bool = True) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the largest effect (by |effect| by default): ``(layer, head, effect)``."""
        e = torch.nan_to_num(self.effect, nan=0.0)
        score = e.abs() if by_abs else e
        idx = score.reshape(-1).topk(min(k, e.numel())).indices.tolist()
        return [(i // self.n_heads, i % self.n_heads, float(self.effect.reshape(-1)[i])) for i in idx]


def _head_size(adapter: Adapter, width: int) -> int:
    if width % adapter.n_heads:
        raise ValueError(
            f"the attention output projection reads {width} inputs, which do not split into {adapter.n_heads} "
            "equal heads; this model's heads cannot be ablated one by one."
        )
    return width // adapter.n_heads


def head_sweep(
    model,
    tokenizer,
    text: str,
    *,
    metric: str = "logit",
    target=None,
    foil=None,
    position: int = -1,
    ablation: str = "zero",
    reference=None,
    layers=None,
    batch_size: int | None = None,
    progress: bool = True,
    cancel=None,
    parts: ModelParts | None = None,
) -> SweepResult:
    """Ablate every head in turn and measure the effect on ``metric`` (see the module docs).

    Parameters
    ----------
    metric : ``"logit"`` (target logit at ``position``, minus the foil's when given) or ``"loss"``.
    target, foil : one-token texts or token ids (``metric="logit"`` only); ``target=None`` is the model's
        prediction at ``position``.
    ablation : ``"zero"`` or ``"mean"``; ``reference``: a text or list of texts whose mean head outputs
        ``"mean"`` ablation uses (default: ``text`` itself).
    layers : the layers to sweep (default: all).
    batch_size : ablations per forward (default: one layer's heads).
    progress : show a progress bar (needs tqdm). ``cancel``: a callable returning True, or a
        ``threading.Event``, checked between batches.
    """
    started = time.perf_counter()
    adapter = Adapter.of(model, parts)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}.")
    if adapter.unembedding() is None:
        raise ValueError(
            f"this {adapter.family!r} model has no next-token head, so there is no logit or loss to change; "
            "sweep a causal language model (e.g. nbinspect.load())."
        )
    if metric == "loss" and (target is not None or foil is not None):
        raise ValueError("target and foil belong to metric='logit'; the loss is measured on the text's own next tokens.")
    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    if batch_size is None:
        batch_size = n_heads
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    inputs = encode(tokenizer, text, adapter)
    ids = inputs["input_ids"]
    n = int(ids.shape[1])
    if metric == "loss" and n < 2:
        raise ValueError("the loss needs at least two tokens (one to predict the next); give a longer text.")
    if not -n <= position < n:
        raise IndexError(f"position {position} is out of range: the text has positions 0..{n - 1}.")
    position %= n
    wanted = list(range(n_layers)) if layers is None else sorted({adapter.check_layer(i) for i in layers})

    with locked(model):
        run = KeptRun(adapter, inputs, heads=True)
        target_id = foil_id = None
        if metric == "logit":
            base_logits = run.logits(run.resid[n_layers], position)[0]
            check_finite(run, base_logits)  # NaN weights: name the first layer that is not finite
            target_id = int(base_logits.argmax()) if target is None else resolve_token(tokenizer, target, "target")
            foil_id = None if foil is None else resolve_token(tokenizer, foil, "foil")
            vocab = base_logits.shape[-1]
            for name, tid in (("target", target_id), ("foil", foil_id)):
                if tid is not None and not 0 <= tid < vocab:
                    raise ValueError(f"{name} token id {tid} is out of range: the vocabulary has ids 0..{vocab - 1}.")

        def measure(hidden: torch.Tensor) -> torch.Tensor:
            if metric == "logit":
                logits = run.logits(hidden, position).float()
                value = logits[:, target_id]
                return value - logits[:, foil_id] if foil_id is not None else value
            logits = run.all_logits(hidden[:, :-1]).float()  # [B, n-1, vocab]
            labels = ids[0, 1:].to(logits.device).expand(logits.shape[0], -1)
            return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(-1)

        base_value = float(measure(run.resid[n_layers]))
        if metric == "loss" and not math.isfinite(base_value):
            check_finite(run)
            codecs.check_finite(torch.tensor(base_value), "the unablated loss")
        size = _head_size(adapter, run.z[0].shape[-1])
        means = _means(adapter, tokenizer, run, reference, size) if ablation == "mean" else None

        jobs = [(layer, list(range(i, min(i + batch_size, n_heads)))) for layer in wanted for i in range(0, n_heads, batch_size)]
        values = torch.full((n_layers, n_heads), float("nan"))
        bar = progress_bar(len(wanted) * n_heads, "head sweep", progress)
        complete, runs, forwards = True, 0, 0
        try:
            for layer, heads in jobs:
                if cancelled(cancel):
                    complete = False
                    break
                hook = _ablate(heads, n_heads, size, None if means is None else means[layer])
                hidden = run.run_from(layer, hooks=[(adapter.part(layer, "attention_output"), "forward_pre", hook)])
                values[layer, heads] = measure(hidden).cpu()
                runs += len(heads)
                forwards += 1
                bar.update(len(heads))
        finally:
            bar.close()

    if metric == "loss":
        label = "mean next-token loss over the text"
    else:
        decode = lambda i: tokenizer.decode([i])  # noqa: E731
        label = f"logit of {decode(target_id)!r}" + (f" − logit of {decode(foil_id)!r}" if foil_id is not None else "")
        label += f" at position {position}"
    return SweepResult(
        effect=values - base_value,
        values=values,
        base_value=base_value,
        metric=metric,
        metric_label=label,
        ablation=ablation,
        tokens=token_strings(tokenizer, ids),
        target=target_id,
        foil=foil_id,
        position=position,
        n_layers=n_layers,
        n_heads=n_heads,
        complete=complete,
        runs=runs,
        forwards=forwards,
        elapsed_s=time.perf_counter() - started,
    )


def _ablate(heads: list[int], n_heads: int, size: int, mean: torch.Tensor | None):
    """A pre-hook on the output projection: row r of the batch gets head ``heads[r]`` ablated."""
    rows = len(heads)
    index = torch.arange(rows)

    def hook(module, args):
        z = widen(args[0], rows).unflatten(-1, (n_heads, size))  # [rows, n, H, size]
        if mean is None:
            z[index, :, heads] = 0
        else:
            z[index, :, heads] = mean.to(z.device, z.dtype)[heads][:, None, :]
        return (z.flatten(-2), *args[1:])

    return hook


def _means(adapter: Adapter, tokenizer, run: KeptRun, reference, size: int) -> list[torch.Tensor]:
    """Per layer, every head's mean output ``[H, size]`` over the positions of the reference texts."""
    if reference is None:
        runs = [run]
    else:
        texts = [reference] if isinstance(reference, str) else list(reference)
        if not texts:
            raise ValueError("reference is empty: give at least one text to take the heads' mean outputs over.")
        runs = [KeptRun(adapter, encode(tokenizer, t, adapter), heads=True) for t in texts]
    out = []
    for layer in range(adapter.n_layers):
        zs = torch.cat([r.z[layer][0].float() for r in runs], dim=0)  # [positions, H * size]
        out.append(zs.mean(0).unflatten(-1, (adapter.n_heads, size)).to(run.z[layer].dtype))
    return out
