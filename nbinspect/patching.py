"""Activation patching: which activations of a clean run carry the answer into a corrupted one.

``nbinspect.patch(model, tokenizer, "The Eiffel Tower is in", "The Colosseum is in", target=" Paris",
foil=" Rome")`` runs both prompts, then, one activation at a time, copies the clean run's value into
the corrupted run and measures how much of the logit difference (target − foil) comes back:

    recovered share = (patched − corrupted) / (clean − corrupted)

1 means that activation alone carries everything that separates the two runs; 0 means nothing.
What is patched, each at every layer:

* ``resid`` — the residual stream entering layer ``l`` at one position, ``[n_layers + 1, n]``; row
  ``n_layers`` is the stream leaving the last layer (before the final norm). Patching row 0 at every
  position where the prompts differ gives the clean run back; so does row ``n_layers`` at the target
  position.
* ``attn`` — the attention output projection's output (o_proj / c_proj / dense: every head's write
  plus the bias) at one position, ``[n_layers, n]``.
* ``mlp`` — the MLP's write (the down projection's output; the whole MLP for MoE) at one position,
  ``[n_layers, n]``.
* ``heads`` — one head's output (its slice of the output projection's input) at every position,
  ``[n_layers, n_heads]``.

How it runs (requirements):

* **Same numbers as a naive patch** (a full forward of the corrupted prompt with a hook that writes
  the clean value): the tests check every dense family to 1e-5.
* **From the patched layer on, several patches per forward.** The corrupted prompt runs once keeping
  each layer's inputs (:mod:`nbinspect._batched`); a patch at layer ``l`` reruns layers ``l..`` only,
  with the patches of one layer as the rows of one batch. A patch whose clean value equals the
  corrupted value exactly (every position before the first differing token, in a causal model)
  changes nothing and is not run: its share is 0 by definition.
* **Same-length prompts.** Positions are compared one to one, so prompts of different token counts
  are refused with both lengths in the message.
* A progress bar (``tqdm.auto``, when installed) and a ``cancel`` callable checked between batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._batched import (
    KeptRun,
    _first,
    _replace_first,
    cancelled,
    check_finite,
    locked,
    mlp_output_module,
    progress_bar,
    resolve_token,
    widen,
)
from .adapters import Adapter, ModelParts
from .inputs import encode, token_strings

KINDS = ("resid", "attn", "mlp", "heads")
#: Patches per forward. Each row is one copy of the prompt's activations ([n, d_model] per layer), so
#: 32 rows of a 64-token SmolLM2 prompt hold ~5 MB per layer in flight: far below any device's memory,
#: and past ~16 rows a CPU gains little from larger batches.
BATCH_SIZE = 32


@dataclass
class PatchResult:
    """What :func:`patch` measured. Arrays are float32 on the host.

    A patching result compares two runs, so it is not one :class:`~nbinspect.Trace`; the patching
    view reads this object instead.

    Attributes
    ----------
    clean_tokens, corrupted_tokens : each prompt's token texts (same length).
    target, foil : token ids; ``foil`` is None when the metric is the target logit alone.
    target_text, foil_text : their texts.
    position : the position whose next-token logits are measured (≥ 0).
    clean_value, corrupted_value : the metric (logit[target] − logit[foil]) of each unpatched run.
    values : kind -> the metric after each patch (shapes in the module docs); NaN where a cancelled run
        did not get to.
    complete : False when ``cancel`` stopped the run early.
    """

    clean_tokens: list[str]
    corrupted_tokens: list[str]
    target: int
    foil: int | None
    target_text: str
    foil_text: str | None
    position: int
    clean_value: float
    corrupted_value: float
    values: dict[str, torch.Tensor]
    n_layers: int
    n_heads: int
    complete: bool = True
    runs: int = 0  # rows (patched forwards) actually computed
    forwards: int = 0  # batched calls made
    elapsed_s: float = 0.0
    _shares: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if k in self.values)

    @property
    def metric_label(self) -> str:
        if self.foil is None:
            return f"logit of {self.target_text!r}"
        return f"logit {self.target_text!r} − logit {self.foil_text!r}"

    def share(self, kind: str) -> torch.Tensor:
        """Recovered share of the metric for ``kind``: (patched − corrupted) / (clean − corrupted)."""
        if kind not in self.values:
            raise KeyError(f"this result has no {kind!r} patches; it has {list(self.kinds)}.")
        if kind not in self._shares:
            gap = self.clean_value - self.corrupted_value
            self._shares[kind] = (self.values[kind] - self.corrupted_value) / gap
        return self._shares[kind]

    @property
    def differing(self) -> list[int]:
        """Positions where the two prompts have different tokens."""
        return [i for i, (a, b) in enumerate(zip(self.clean_tokens, self.corrupted_tokens)) if a != b]

    def view(self, selection=None):
        """These shares as a :class:`~nbinspect.views.patching_view.PatchingView` (heatmaps linked by ``selection``)."""
        from .views.patching_view import PatchingView

        return PatchingView(self, selection)

    def top(self, kind: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` cells with the largest recovered share: ``(layer, position or head, share)``."""
        s = self.share(kind)
        flat = torch.nan_to_num(s, nan=-float("inf")).reshape(-1)
        idx = flat.topk(min(k, flat.numel())).indices.tolist()
        cols = s.shape[1]
        return [(i // cols, i % cols, float(s.reshape(-1)[i])) for i in idx]


def _metric(run: KeptRun, hidden: torch.Tensor, position: int, target: int, foil: int | None) -> torch.Tensor:
    logits = run.logits(hidden, position).float()
    value = logits[:, target]
    return value - logits[:, foil] if foil is not None else value


def patch(
    model,
    tokenizer,
    clean: str,
    corrupted: str,
    *,
    target=None,
    foil=None,
    position: int = -1,
    kinds=KINDS,
    layers=None,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    cancel=None,
    parts: ModelParts | None = None,
) -> PatchResult:
    """Patch every layer's residual stream, attention output and MLP output at every position, and every
    head's output, from the ``clean`` run into the ``corrupted`` one (see the module docs).

    Parameters
    ----------
    target : the answer of the clean prompt: a one-token text (e.g. ``" Paris"``) or a token id;
        ``None``: the clean run's top prediction at ``position``.
    foil : the answer of the corrupted prompt, likewise; ``None``: the corrupted run's top prediction
        when it differs from ``target``, else no foil (the metric is then the target's logit).
    position : the position whose next-token prediction is measured (default: the last).
    kinds : which of ``"resid"``, ``"attn"``, ``"mlp"``, ``"heads"`` to patch.
    layers : the layers to patch (default: all); unpatched cells hold NaN.
    batch_size : patches per forward.
    progress : show a progress bar (needs tqdm).
    cancel : a callable returning True (or a ``threading.Event``) to stop between batches; the result
        then has ``complete=False`` and NaN where it did not get to.

    Raises ``ValueError`` when the prompts tokenize to different lengths or give the same metric,
    and for a model without a next-token head (an encoder).
    """
    import time

    started = time.perf_counter()
    adapter = Adapter.of(model, parts)
    if adapter.unembedding() is None:
        raise ValueError(
            f"this {adapter.family!r} model has no next-token head, so there is no logit to recover; "
            "patch a causal language model (e.g. nbinspect.load())."
        )
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be some of {KINDS}, got {kinds!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    clean_inputs = encode(tokenizer, clean, adapter)
    corrupted_inputs = encode(tokenizer, corrupted, adapter)
    n, m = clean_inputs["input_ids"].shape[1], corrupted_inputs["input_ids"].shape[1]
    if n != m:
        raise ValueError(
            f"the clean prompt is {n} tokens long and the corrupted prompt {m}; activation patching compares "
            "positions one to one, so give prompts of the same token count (e.g. swap one word for another "
            "that is also one token)."
        )
    if not -n <= position < n:
        raise IndexError(f"position {position} is out of range: the prompts have positions 0..{n - 1}.")
    position %= n
    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    wanted = list(range(n_layers)) if layers is None else sorted({adapter.check_layer(i) for i in layers})

    with locked(model):
        clean_run = KeptRun(adapter, clean_inputs, heads="heads" in kinds, outputs=bool({"attn", "mlp"} & set(kinds)))
        bad = KeptRun(adapter, corrupted_inputs, heads="heads" in kinds, outputs=bool({"attn", "mlp"} & set(kinds)))
        last = n_layers
        clean_logits = clean_run.logits(clean_run.resid[last], position)[0].float()
        bad_logits = bad.logits(bad.resid[last], position)[0].float()
        # NaN weights would give NaN shares with no word why: name the first layer that is not finite.
        check_finite(clean_run, clean_logits)
        check_finite(bad, bad_logits)
        target_id = int(clean_logits.argmax()) if target is None else resolve_token(tokenizer, target, "target")
        if foil is None:
            top = int(bad_logits.argmax())
            foil_id = top if top != target_id else None
        else:
            foil_id = resolve_token(tokenizer, foil, "foil")
        vocab = clean_logits.shape[-1]
        for name, tid in (("target", target_id), ("foil", foil_id)):
            if tid is not None and not 0 <= tid < vocab:
                raise ValueError(f"{name} token id {tid} is out of range: the vocabulary has ids 0..{vocab - 1}.")
        if foil_id == target_id:
            raise ValueError(f"target and foil are the same token ({target_id}); give two different answers.")
        clean_value = float(_metric(clean_run, clean_run.resid[last], position, target_id, foil_id))
        corrupted_value = float(_metric(bad, bad.resid[last], position, target_id, foil_id))
        if abs(clean_value - corrupted_value) <= 1e-6 * max(1.0, abs(clean_value)):
            raise ValueError(
                f"the clean and corrupted prompts give the same metric ({clean_value:.4g}), so there is no difference "
                "for a patch to recover; choose prompts whose answers differ (or another target/foil)."
            )

        jobs = _jobs(adapter, clean_run, bad, kinds, wanted, n, batch_size)
        values = {
            "resid": torch.full((n_layers + 1, n), float("nan")),
            "attn": torch.full((n_layers, n), float("nan")),
            "mlp": torch.full((n_layers, n), float("nan")),
            "heads": torch.full((n_layers, n_heads), float("nan")),
        }
        values = {k: v for k, v in values.items() if k in kinds}
        # Cells whose patch changes nothing (clean value == corrupted value, bit for bit) are the corrupted run.
        for kind, layer, cols in _unchanged(adapter, clean_run, bad, kinds, wanted, n):
            values[kind][layer, cols] = corrupted_value

        bar = progress_bar(sum(len(cols) for _, _, cols in jobs), "patching", progress)
        complete, runs, forwards = True, 0, 0
        try:
            for kind, layer, cols in jobs:
                if cancelled(cancel):
                    complete = False
                    break
                hidden = _patched_run(adapter, clean_run, bad, kind, layer, cols)
                out = _metric(bad, hidden, position, target_id, foil_id).cpu()
                values[kind][layer, cols] = out
                runs += len(cols)
                forwards += 1
                bar.update(len(cols))
        finally:
            bar.close()

    decode = lambda i: tokenizer.decode([i])  # noqa: E731
    return PatchResult(
        clean_tokens=token_strings(tokenizer, clean_inputs["input_ids"]),
        corrupted_tokens=token_strings(tokenizer, corrupted_inputs["input_ids"]),
        target=target_id,
        foil=foil_id,
        target_text=decode(target_id),
        foil_text=None if foil_id is None else decode(foil_id),
        position=position,
        clean_value=clean_value,
        corrupted_value=corrupted_value,
        values=values,
        n_layers=n_layers,
        n_heads=n_heads,
        complete=complete,
        runs=runs,
        forwards=forwards,
        elapsed_s=time.perf_counter() - started,
    )


def _source(run: KeptRun, kind: str, layer: int) -> torch.Tensor:
    return {"resid": run.resid, "attn": run.attn_out, "mlp": run.mlp_out, "heads": run.z}[kind][layer]


def _head_slices(adapter: Adapter, width: int) -> int:
    if width % adapter.n_heads:
        raise ValueError(
            f"the attention output projection reads {width} inputs, which do not split into {adapter.n_heads} "
            "equal heads; this model's heads cannot be patched one by one (patch kinds=('resid', 'attn', 'mlp'))."
        )
    return width // adapter.n_heads


def _differs(adapter, clean_run, bad, kind, layer, n) -> list[bool]:
    """Per column: whether the clean value differs from the corrupted one (else the patch is a no-op)."""
    a, b = _source(clean_run, kind, layer), _source(bad, kind, layer)
    if kind == "heads":
        size = _head_slices(adapter, a.shape[-1])
        a, b = a.unflatten(-1, (adapter.n_heads, size)), b.unflatten(-1, (adapter.n_heads, size))
        return (a != b).any(-1).any(1)[0].tolist()  # [1, n, H, size] -> per head, over every position
    return (a != b).any(-1)[0].tolist()


def _layers_of(kind: str, wanted: list[int], n_layers: int) -> list[int]:
    # The residual stream has one more row: what leaves the last layer.
    return wanted + [n_layers] if kind == "resid" and n_layers - 1 in wanted else wanted


def _jobs(adapter, clean_run, bad, kinds, wanted, n, batch_size) -> list[tuple[str, int, list[int]]]:
    jobs = []
    for kind in kinds:
        for layer in _layers_of(kind, wanted, adapter.n_layers):
            cols = [c for c, d in enumerate(_differs(adapter, clean_run, bad, kind, layer, n)) if d]
            for i in range(0, len(cols), batch_size):
                jobs.append((kind, layer, cols[i : i + batch_size]))
    # Later layers first: they are cheap, so the progress bar moves at once and speeds up honestly.
    return sorted(jobs, key=lambda j: -j[1])


def _unchanged(adapter, clean_run, bad, kinds, wanted, n):
    for kind in kinds:
        for layer in _layers_of(kind, wanted, adapter.n_layers):
            cols = [c for c, d in enumerate(_differs(adapter, clean_run, bad, kind, layer, n)) if not d]
            if cols:
                yield kind, layer, cols


def _patched_run(adapter: Adapter, clean_run: KeptRun, bad: KeptRun, kind: str, layer: int, cols: list[int]) -> torch.Tensor:
    """The corrupted run's final hidden states ``[len(cols), n, d]``, row ``r`` patched at column ``cols[r]``."""
    rows = len(cols)
    clean = _source(clean_run, kind, layer)
    index = torch.arange(rows)
    if kind == "resid":
        hidden = widen(bad.resid[layer], rows)
        hidden[index, cols] = clean[0, cols].to(hidden.dtype)
        return bad.run_from(layer, hidden)
    if kind == "heads":
        size = _head_slices(adapter, clean.shape[-1])

        def write_heads(module, args):
            z = widen(args[0], rows).unflatten(-1, (adapter.n_heads, size))
            src = clean.to(z.device, z.dtype).unflatten(-1, (adapter.n_heads, size))[0]  # [n, H, size]
            z[index, :, cols] = src[:, cols].permute(1, 0, 2)
            return (z.flatten(-2), *args[1:])

        return bad.run_from(layer, hooks=[(adapter.part(layer, "attention_output"), "forward_pre", write_heads)])
    module = adapter.part(layer, "attention_output") if kind == "attn" else mlp_output_module(adapter, layer)

    def write(module, args, output):
        value = widen(_first(output), rows)
        value[index, cols] = clean[0, cols].to(value.device, value.dtype)
        return _replace_first(output, value)

    return bad.run_from(layer, hooks=[(module, "forward", write)])
