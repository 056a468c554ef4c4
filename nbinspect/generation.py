"""Watch a model generate: what it looked at, and which tokens it weighed, for every new token.

``view = nbinspect.generate(model, tokenizer, prompt, max_new_tokens=32)`` runs the model's own
``generate`` (its KV cache, greedy or sampling with the usual keyword arguments) in a background thread
and returns at once; steps appear in the view while the model is still generating, and
``view.stop()`` ends it early. Step ``s`` is the forward pass that chose generated token ``s``: it reads
the last token so far (the whole prompt at step 0) and records, for that last position only:

- its attention to every earlier token, every layer and head (uint8, one scale per layer and head, so
  each weight is within scale / 510 of the true one);
- the residual stream after every block (float16), from which the **logit lens** (each layer's
  residual through the final norm and the unembedding) is computed for the steps that are looked at —
  computing it for every step would cost a full unembedding per layer per token, more than the model;
- the MLP neuron activations of every layer (float16; models with a single down projection);
- the top-k next-token candidates with their probabilities (after the sampling processors, so what the
  model actually drew from), and the token chosen.

All of it is a few hundred KB per step at most and stays in Python; the view receives one step at a
time. Hooks are removed, and the model left as it was, when generation ends, fails or is stopped.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import Adapter, ModelParts
from .inputs import encode, token_strings
from .perturb import Edit, model_lock, perturb

#: Candidates kept per step (the view lists them with their probabilities).
TOP_K = 10


@dataclass
class Step:
    """One generated token and what the model did to choose it (host tensors).

    token: the chosen id; text: its text; candidates / probs: the top-k ids and probabilities;
    chosen_prob: the probability the chosen token had;
    attention: uint8 [layers, heads, positions] of the last position's attention, with scales float32
    [layers, heads]; residual: float16 [layers, d_model] after each block; neurons: float16
    [layers, d_mlp] or None.
    """

    token: int
    text: str
    candidates: torch.Tensor
    probs: torch.Tensor
    attention: torch.Tensor
    attention_scale: torch.Tensor
    residual: torch.Tensor
    neurons: torch.Tensor | None
    chosen_prob: float = float("nan")


@dataclass
class Generation:
    """A generation run: the prompt, the steps so far, and the thread producing them."""

    model: nn.Module
    tokenizer: object
    adapter: Adapter
    prompt_ids: torch.Tensor
    prompt_tokens: list[str]
    steps: list[Step] = field(default_factory=list)
    prompt: str = ""
    settings: dict = field(default_factory=dict)  # max_new_tokens, top_k and generate's keyword arguments
    edits: tuple = ()
    done: bool = False
    error: BaseException | None = None
    seconds: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _listeners: list = field(default_factory=list)

    @property
    def tokens(self) -> list[str]:
        """Prompt tokens followed by the generated ones."""
        return self.prompt_tokens + [s.text for s in self.steps]

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids[0].tolist() + [s.token for s in self.steps]

    def stop(self) -> None:
        """Ask generation to end after the current step (it keeps what it has)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> Generation:
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self

    def logit_lens(self, step: int, k: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each layer's residual at ``step`` through the final norm and the unembedding.

        Returns (top ids int64 [layers, k], their probabilities float32 [layers, k], the probability of
        the token finally chosen at that step, float32 [layers]).
        """
        from .residual_stream import decode_residuals

        s = self.steps[step]
        head = self.adapter.unembedding()
        if head is None:
            raise ValueError("the logit lens needs an output head (unembedding); this model has none.")
        weight = head.weight
        # The trace's lens path: final norm, the whole head with the model's logit transforms (soft-cap, scaling).
        part = decode_residuals(self.adapter, s.residual.to(weight.device, weight.dtype), k=k, target=s.token)
        return part["ids"].cpu(), part["probs"].cpu(), part["tprob"].cpu()


class _Recorder:
    """Hooks that keep, for the last position of each forward, what a :class:`Step` holds.

    Cheap per layer on purpose (capture's general hooks cost more than a small model's step): each hook
    does one device-side copy into the step's preallocated buffer (residual, neurons) or keeps a
    reference to the freshly computed attention row (``_attention_hook``'s last-query mode: one small
    matmul beside the model's own sdpa call, no n x n weights at the prompt step); the step's packing
    (uint8 attention with one scale per layer and head, float16 residual and neurons) and its one move
    to the host happen once per step, in :meth:`take`. Nothing forces eager attention.
    """

    def __init__(self, adapter: Adapter):
        self.adapter, self.n = adapter, adapter.n_layers
        self.neurons_ok = adapter.parts.neurons is not None and all(adapter.has_part(i, "neurons") for i in range(self.n))
        self.rows: list = [None] * self.n
        self.residual: torch.Tensor | None = None
        self.neurons: torch.Tensor | None = None
        self._handles: list = []
        self._listening = None

    def __enter__(self) -> _Recorder:
        from . import _attention_hook

        a = self.adapter
        try:
            listeners = {a.attention(i): self._on_attention(i) for i in range(self.n)}
            self._listening = _attention_hook.listening(a.model, listeners, last_query=True)
            self._listening.__enter__()
            self._handles.append(a.layers[0].register_forward_pre_hook(self._begin, with_kwargs=True))
            for i in range(self.n):
                self._handles.append(a.layers[i].register_forward_hook(self._on_residual(i)))
                if self.neurons_ok:
                    self._handles.append(a.part(i, "neurons").register_forward_pre_hook(self._on_neurons(i)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        if self._listening is not None:
            listening, self._listening = self._listening, None
            listening.__exit__(None, None, None)
        return False

    def _begin(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.residual = torch.empty(self.n, hidden.shape[-1], dtype=torch.float16, device=hidden.device)
        self.neurons = None

    def _on_attention(self, layer: int):
        rows = self.rows

        def keep(weights):  # [batch, heads, 1 (or all queries: own-code attention), keys], fresh: no copy
            rows[layer] = weights[0, :, -1]

        return keep

    def _on_residual(self, layer: int):
        def after(module, args, output):
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            self.residual[layer].copy_(hidden[0, -1] if hidden.dim() == 3 else hidden[-1])

        return after

    def _on_neurons(self, layer: int):
        def on_neurons(module, args):
            x = args[0]
            x = x[0, -1] if x.dim() == 3 else x[-1]  # OPT's MLP sees the tokens flattened: [tokens, d_mlp]
            if self.neurons is None:
                self.neurons = torch.empty(self.n, x.shape[-1], dtype=torch.float16, device=x.device)
            self.neurons[layer].copy_(x)

        return on_neurons

    def take(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The last forward's (uint8 attention [layers, heads, keys], scales [layers, heads], residual,
        neurons), on the host. Layers whose cache keeps fewer keys (sliding windows) are aligned on the
        newest key."""
        rows = list(self.rows)
        self.rows[:] = [None] * self.n  # the same list: the attention listeners hold it
        width = max(r.shape[-1] for r in rows)
        if all(r.shape[-1] == width for r in rows):
            weights = torch.stack(rows)
        else:
            weights = rows[0].new_zeros(self.n, rows[0].shape[0], width)
            for i, r in enumerate(rows):
                weights[i, :, width - r.shape[-1]:] = r
        scale = weights.amax(-1).clamp_min_(1e-12)
        attention = weights.div_(scale[..., None]).mul_(255).round_().to(torch.uint8)
        neurons = self.neurons.cpu() if self.neurons_ok and self.neurons is not None else None
        return attention.cpu(), scale.cpu(), self.residual.cpu(), neurons


def _run(gen: Generation, inputs: dict, max_new_tokens: int, top_k: int, generate_kwargs: dict) -> None:
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    model = gen.model
    pending: dict = {}
    recorder = _Recorder(gen.adapter)

    class Candidates(LogitsProcessor):
        """Runs after the sampling processors: sees the scores the next token is drawn from; changes nothing."""

        def __call__(self, input_ids, scores):
            probs = torch.softmax(scores[0].float(), dim=-1)
            pending["top"] = probs.topk(min(top_k, probs.shape[-1]))
            pending["probs"] = probs
            return scores

    class Recorded(StoppingCriteria):
        """Called once per new token, after it is chosen: file the step, and stop when asked."""

        def __call__(self, input_ids, scores, **kwargs):
            last = input_ids[0, -1]
            top, probs = pending.pop("top"), pending.pop("probs")
            # One move to the host per step: the token, the top-k and the chosen token's probability together.
            packed = torch.cat([last.to(probs.dtype).view(1), probs[last].view(1), top.values]).cpu()
            token, chosen = int(packed[0]), float(packed[1])
            attention, scales, residual, neurons = recorder.take()
            text = gen.tokenizer.decode([token])
            gen.steps.append(Step(token, text, top.indices.cpu(), packed[2:], attention, scales, residual, neurons,
                                  chosen))
            for listener in list(gen._listeners):
                listener(len(gen.steps) - 1)
            return torch.full((input_ids.shape[0],), gen._stop.is_set(), dtype=torch.bool, device=input_ids.device)

    start = time.perf_counter()
    try:
        with model_lock(model), perturb(model, *gen.edits), recorder, torch.no_grad():
            model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                logits_processor=LogitsProcessorList([Candidates()]),
                stopping_criteria=StoppingCriteriaList([Recorded()]),
                **generate_kwargs,
            )
    except BaseException as e:  # the view shows it and wait() raises it
        gen.error = e
    finally:
        gen.seconds = time.perf_counter() - start
        gen.done = True
        for listener in list(gen._listeners):
            listener(-1)


def start_generation(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 32, *, top_k: int = TOP_K,
                     background: bool = True, parts: ModelParts | None = None, edits: tuple[Edit, ...] = (),
                     exact: bool = True, **generate_kwargs) -> Generation:
    """Start generating (see the module docs); returns the :class:`Generation` filling up.

    ``edits``: generate under these weight edits (``nbinspect.AblateHead(3, 2)`` …), restored exactly after.
    ``exact``: kept for older calls and without effect: the attention row of the new token is computed
    beside the model's own attention call (one small matmul per layer), so the tokens are always those of
    a plain ``generate``.
    """
    adapter = Adapter.of(model, parts)
    if adapter.unembedding() is None:
        raise ValueError(f"a {adapter.family!r} model without a language-modelling head cannot generate text.")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a whole number ≥ 1, got {max_new_tokens!r}.")
    inputs = encode(tokenizer, prompt, adapter)
    gen = Generation(model, tokenizer, adapter, inputs["input_ids"], token_strings(tokenizer, inputs["input_ids"]),
                     prompt=prompt, settings=dict(max_new_tokens=max_new_tokens, top_k=top_k, parts=parts, exact=exact,
                                                  **generate_kwargs),
                     edits=tuple(edits))
    generate_kwargs.setdefault("pad_token_id", getattr(tokenizer, "pad_token_id", None) or getattr(model.generation_config, "eos_token_id", None) or 0)
    args = (gen, inputs, max_new_tokens, top_k, generate_kwargs)
    if background:
        gen._thread = threading.Thread(target=_run, args=args, name="nbinspect-generate", daemon=True)
        gen._thread.start()
    else:
        _run(*args)
    return gen


def generate(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 32, *, top_k: int = TOP_K,
             background: bool = True, parts: ModelParts | None = None, exact: bool = True, selection=None,
             **generate_kwargs):
    """Generate from ``prompt`` with the model's KV cache and show every step live (a :class:`GenerationView`).

    ``selection``: a shared :class:`~nbinspect.views.selection.Selection` linking the view to others (its
    token is the position in the prompt followed by the generated tokens).

    ``generate_kwargs`` go to ``model.generate`` (``do_sample=True, temperature=0.8, top_p=0.9`` …).
    ``background=False`` returns only when generation is done. ``view.stop()`` ends it early.
    """
    from .views.generation_view import GenerationView

    gen = start_generation(model, tokenizer, prompt, max_new_tokens, top_k=top_k, background=background, parts=parts,
                           exact=exact, **generate_kwargs)
    return GenerationView(gen, selection=selection)
