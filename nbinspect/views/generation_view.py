"""GenerationView: a model's generation step by step — the text so far, each step's top candidates, the
new token's attention to every earlier token, and the logit lens — filling in while the model generates.

It shows a :class:`nbinspect.generation.Generation` (see :mod:`nbinspect.generation` for what a step
records). The generation runs in a background thread; this view hears of each new step, follows the
latest one unless a step is picked (click a generated token, drag the scrubber, or press play), and
sends one step at a time: attention as uint8 ``[layers, heads, context]`` with float32 scales (error ≤
scale / 510), candidates' probabilities and the lens as float32, token text as strings.

Linked views: the view holds a shared :class:`~nbinspect.views.selection.Selection` (pass one to link
it). Its ``token`` counts positions in the prompt followed by the generated tokens, so generated token
``s`` is position ``len(prompt_tokens) + s``: picking a step (a click on a generated token, the
scrubber, play, the arrow keys) selects that token, and selecting a generated token elsewhere shows its
step. Selecting a prompt token outlines it and leaves the step alone; the selection's ``layer`` is
marked in the attention and lens panels (a click on a layer row there selects it).
"""

from __future__ import annotations

import anywidget
import ipywidgets
import torch
import traitlets

from .. import codecs
from ._bundle import bundle
from .selection import Selection

LENS_K = 1


class GenerationView(anywidget.AnyWidget):
    """Live view of a generation; ``view.generation`` holds every step's data, ``view.stop()`` ends it."""

    _esm = bundle("generation_view")

    prompt_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: Generated token texts so far, and float32 [steps] the probability each had when it was chosen.
    generated = traitlets.List(traitlets.Unicode()).tag(sync=True)
    chosen_probs = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    running = traitlets.Bool(False).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    seconds = traitlets.Float(0.0).tag(sync=True)
    #: The picked step (-1: follow the latest); the browser sets it (clicks, scrubber, play).
    step = traitlets.Int(-1).tag(sync=True)
    #: Set by the browser's stop button.
    stop_requested = traitlets.Bool(False).tag(sync=True)
    #: The step the bytes below are for.
    shown_step = traitlets.Int(-1).tag(sync=True)
    #: Top candidates of the shown step: their texts and float32 probabilities.
    candidates = traitlets.List(traitlets.Unicode()).tag(sync=True)
    candidate_probs = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: uint8 [layers, heads, context] the last position's attention; float32 [layers, heads] scales.
    attention = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    attention_scales = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    context = traitlets.Int(0).tag(sync=True)
    #: Logit lens of the shown step: each layer's top token, its probability, and the chosen token's.
    lens_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    lens_probs = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    lens_chosen = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: After ``view.edit(...)``: the continuation generated under the edits, its probabilities, and the edits.
    edited = traitlets.List(traitlets.Unicode()).tag(sync=True)
    edited_probs = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    edits_label = traitlets.Unicode("").tag(sync=True)
    edited_running = traitlets.Bool(False).tag(sync=True)
    painted = traitlets.Int(0).tag(sync=True)
    #: The shared selection (see the module docs); the browser reads and writes it (js/selection.js).
    selection = traitlets.Instance(Selection).tag(sync=True, **ipywidgets.widget_serialization)

    def __init__(self, generation, selection: Selection | None = None, **kwargs):
        a = generation.adapter
        # Tokens are not bounded: the text grows while the model generates.
        selection = (selection or Selection()).bound_to(n_layers=a.n_layers, n_heads=a.n_heads)
        super().__init__(selection=selection, **kwargs)
        self.generation = generation
        self.prompt_tokens = codecs.clip_tokens(generation.prompt_tokens)
        self.n_layers, self.n_heads = a.n_layers, a.n_heads
        self.running = not generation.done
        self.observe(self._picked, ["step"])
        self.observe(self._stop_clicked, ["stop_requested"])
        selection.observe(self._selected, ["token"])
        generation._listeners.append(self._on_step)
        self._on_step(len(generation.steps) - 1 if generation.steps else -1)
        if generation.done:
            self._on_step(-1)

    def edit(self, *edits, background: bool = True):
        """Generate again from the prompt under ``edits`` (e.g. ``nbinspect.AblateHead(3, 2)``) with the same
        settings; the view shows both continuations. Returns the new :class:`Generation` (``edit()`` with no
        edits clears the comparison). Greedy runs are comparable token by token; sampled ones draw anew."""
        from ..generation import start_generation

        g = self.generation
        previous = getattr(self, "edited_generation", None)
        if previous is not None:
            previous.stop()
        if not edits:
            self.edited_generation = None
            with self.hold_sync():
                self.edited, self.edited_probs, self.edits_label, self.edited_running = [], b"", "", False
            return None
        settings = dict(g.settings)
        new = start_generation(g.model, g.tokenizer, g.prompt, settings.pop("max_new_tokens"), background=background,
                               edits=edits, **settings)
        self.edited_generation = new
        self.edits_label = ", ".join(repr(e) for e in edits)
        new._listeners.append(lambda index: self._on_edited_step(new, index))
        self._on_edited_step(new, -1 if new.done else 0)
        return new

    def _on_edited_step(self, gen, index: int) -> None:
        if gen is not getattr(self, "edited_generation", None):
            return
        steps = list(gen.steps)
        with self.hold_sync():
            self.edited = codecs.clip_tokens([s.text for s in steps])
            self.edited_probs = codecs.float32_bytes(torch.tensor([s.chosen_prob for s in steps], dtype=torch.float32))
            self.edited_running = not gen.done

    def stop(self) -> None:
        """End the generation after the current step."""
        self.generation.stop()

    def wait(self, timeout: float | None = None) -> GenerationView:
        """Block until the generation is done (raises what it raised)."""
        self.generation.wait(timeout)
        return self

    def _stop_clicked(self, change) -> None:
        if change["new"]:
            self.generation.stop()

    def _on_step(self, index: int) -> None:
        """A new step (index ≥ 0) or the end (-1), from the generating thread."""
        g = self.generation
        steps = list(g.steps)
        with self.hold_sync():
            self.generated = codecs.clip_tokens([s.text for s in steps])
            self.chosen_probs = codecs.float32_bytes(torch.tensor([s.chosen_prob for s in steps], dtype=torch.float32))
            if index < 0:
                self.running = False
                self.seconds = g.seconds
                self.error = "" if g.error is None else f"{type(g.error).__name__}: {g.error}"
            if self.step < 0 and steps:
                self._show_step(len(steps) - 1)

    @property
    def selected_step(self) -> int | None:
        """The generated step the selection's token is on (``None``: no token, or a prompt token)."""
        step = self.selection.token - len(self.generation.prompt_tokens)
        return step if self.selection.token >= 0 and step >= 0 else None

    def _selected(self, change) -> None:
        step = self.selected_step
        if step is not None and step < len(self.generation.steps):
            self.step = step

    def _picked(self, change) -> None:
        n = len(self.generation.steps)
        if not n:
            return
        shown = n - 1 if change["new"] < 0 else min(change["new"], n - 1)
        self._show_step(shown)
        if change["new"] >= 0:  # a picked step selects its token, so linked views move to it
            try:
                self.selection.token = len(self.generation.prompt_tokens) + shown
            except traitlets.TraitError:
                pass  # a selection bound to a shorter text (the prompt's views) cannot point past it

    def _show_step(self, index: int) -> None:
        s = self.generation.steps[index]
        lens_ids, lens_p, chosen = self.generation.logit_lens(index, LENS_K)
        decode = self.generation.tokenizer
        from ..inputs import token_strings

        with self.hold_sync():
            self.candidates = codecs.clip_tokens(token_strings(decode, s.candidates[None]))
            self.candidate_probs = codecs.float32_bytes(s.probs)
            self.attention = codecs.to_bytes(s.attention)
            self.attention_scales = codecs.float32_bytes(s.attention_scale)
            self.context = int(s.attention.shape[-1])
            self.lens_tokens = codecs.clip_tokens(token_strings(decode, lens_ids[:, 0][None]))
            self.lens_probs = codecs.float32_bytes(lens_p[:, 0])
            self.lens_chosen = codecs.float32_bytes(chosen)
            self.shown_step = index
