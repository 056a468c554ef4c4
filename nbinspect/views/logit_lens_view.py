"""LogitLensView: what the model would predict if it stopped after each layer.

A layers × positions grid (canvas): each cell is the residual stream after that layer at that position,
decoded through the final norm and unembedding (:func:`nbinspect.residual_stream.logit_lens`); it shows
its top token, coloured by its probability. A switch shows instead the target token's probability or
rank, the entropy, or the KL divergence to the final distribution. Hovering a cell shows its top-5;
clicking one selects its layer and token and lists its top-5, and clicking a token there makes it the
target (``target_token``), which the attribution views follow.

Lazy by position: every column costs ``L·d·V`` multiply-adds (6.3/n of a forward on SmolLM2), so the view
decodes only the ``codecs.LENS_WINDOW`` positions it shows, around the selected token (by default the last
ones, where the prediction is). Paging in the browser (or selecting a token outside the window, in any
linked view) sets ``window_start``; Python decodes just the new columns, keeps every decoded column on the
trace (``trace.cached``) and sends the window's bytes. ``window=trace.n_tokens`` shows the full grid.

Bytes sent (nothing as JSON numbers): the distinct top tokens' texts once (``vocab``), int32 indices
into it and uint8 probabilities per cell × top-k, and float32 [layers, window] per metric. SmolLM2, 3
columns: 30 × 3 × 5 × 5 B + 4 × 360 B ≈ 3.7 KB plus the distinct tokens' texts, whatever the text's length.
"""

from __future__ import annotations

import torch
import traitlets

from .. import codecs
from .. import residual_stream as rs
from ._bundle import bundle
from ._trace_view import TraceView
from .base import as_trace

METRICS = ("top", "target_prob", "target_rank", "entropy", "kl")


class LogitLensView(TraceView):
    """The logit lens of one trace, as a layer × position grid over a window of positions."""

    title = "Logit lens"
    _esm = bundle("logit_lens_view")

    #: What colours the cells: "top" (top token's probability), "target_prob", "target_rank", "entropy", "kl".
    metric = traitlets.Unicode("top").tag(sync=True)
    k = traitlets.Int(codecs.LENS_TOP_K).tag(sync=True)
    #: First token position of the shown window (the browser pages it; selecting a token outside moves it).
    window_start = traitlets.Int(0).tag(sync=True)
    #: Positions shown (and decoded) at once: ``codecs.LENS_WINDOW`` unless asked for more.
    window_size = traitlets.Int(codecs.LENS_WINDOW).tag(sync=True)
    #: Texts of the distinct tokens any shown cell has in its top-k (clipped, drawn as text only).
    vocab = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: int32 token id of each ``vocab`` entry (what a click on it makes the target).
    vocab_ids = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: int32 [layers, columns, k] indices into ``vocab``; uint8 [layers, columns, k] probability × 255.
    #: Column ``c`` is token position ``window_start + c``.
    top_tokens = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    top_probs = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: float32 [layers, columns]: entropy (nats), KL(final ‖ layer) (nats), the target's probability;
    #: int32 [layers, columns]: the target's rank (0 = top).
    entropy = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    kl = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    target_prob = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    target_rank = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: The target token the two target metrics are for (the shown one, even when ``target_token`` is -1).
    shown_target = traitlets.Int(-1).tag(sync=True)
    #: Columns in the bytes above (``window_size``, or fewer for a short text), and the token position of
    #: the first: the window the bytes are for (``window_start`` is the one asked for, maybe not sent yet).
    n_positions = traitlets.Int(0).tag(sync=True)
    shown_start = traitlets.Int(0).tag(sync=True)

    def __init__(self, trace, selection=None, metric: str = "top", window: int | None = None, **kwargs):
        self._store: dict | None = None  # target -> {position: one-column LogitLens}, kept on the trace
        self._shown: tuple | None = None  # (key, the window's LogitLens)
        size = codecs.LENS_WINDOW if window is None else int(window)
        if size < 1:
            raise ValueError(f"window {window!r} is out of range: show at least 1 position.")
        super().__init__(trace, selection, metric=metric, window_size=min(size, trace.n_tokens), **kwargs)
        self.window_start = self._around(self.token if self.token >= 0 else self.position)
        self.observe(self._repaint, ["window_start"])
        self.observe(self._follow, ["token", "position"])
        self._paint()

    @classmethod
    def applies(cls, trace) -> str | None:
        reason = rs.not_applicable(trace.adapter)
        return None if reason is None else reason[0].upper() + reason[1:]

    @traitlets.validate("metric")
    def _valid_metric(self, proposal):
        if proposal["value"] not in METRICS:
            raise traitlets.TraitError(f"metric {proposal['value']!r} is not known: use one of {METRICS}.")
        return proposal["value"]

    @traitlets.validate("window_start")
    def _valid_start(self, proposal):
        return max(0, min(int(proposal["value"]), len(self.tokens) - self.window_size))

    # --- which positions are shown ----------------------------------------------------------------
    @property
    def positions(self) -> range:
        """The token positions of the shown window."""
        return range(self.window_start, min(self.window_start + self.window_size, len(self.tokens)))

    def _around(self, position: int) -> int:
        """The window start that shows ``position`` near the window's middle (clamped to the text)."""
        return max(0, min(position - self.window_size // 2, len(self.tokens) - self.window_size))

    def _follow(self, change) -> None:
        p = change["new"]
        if 0 <= p < len(self.tokens) and p not in self.positions:
            self.window_start = self._around(p)  # observed: decodes the new columns and sends them

    def _repaint(self, change) -> None:
        if not getattr(self, "_showing", False):
            self._paint()

    # --- the lens, decoded column by column ------------------------------------------------------
    def lens(self) -> rs.LogitLens:
        """The lens of the shown window (tensors on the model's device; ``.positions`` names the columns).

        ``nbinspect.residual_stream.logit_lens(trace)`` decodes every position (``L·n·d·V`` work).
        """
        target = self._target_now()
        key = (target, self.window_start, self.window_size)
        if self._shown is None or self._shown[0] != key:
            self._shown = (key, self._columns(list(self.positions), target))
        return self._shown[1]

    def decoded_positions(self, target: int | None = None) -> list[int]:
        """Positions whose lens has been computed for ``target`` (default: the shown target) on this trace."""
        target = self._target_now() if target is None else target
        return sorted(self._columns_store().get(target, {}))

    def _columns_store(self) -> dict:
        if self._store is None:
            cached = getattr(self.trace, "cached", None)
            self._store = cached(("logit_lens_columns", self.k), dict) if cached else {}
        return self._store

    def _columns(self, positions: list[int], target: int) -> rs.LogitLens:
        done = self._columns_store().setdefault(target, {})
        missing = [p for p in positions if p not in done]
        if missing:  # one batched unembedding for every new column
            new = rs.logit_lens(self.trace, k=self.k, target=target, positions=missing)
            for c, p in enumerate(missing):
                done[p] = new.select([c])
        return rs.LogitLens.join([done[p] for p in positions])

    def _target_now(self) -> int:
        if self.target_token >= 0:
            return self.target_token
        logits = self.trace.record.logits
        return int(logits[0, self.position].argmax())

    def show(self, trace) -> None:
        # A retargeted trace (same forward, same edits) decodes the same stream: keep the columns decoded.
        same_forward = getattr(trace, "parent", None) is self.trace and tuple(trace.edits) == tuple(self.trace.edits)
        if not same_forward:
            self._store, self._shown = None, None
        super().show(trace)

    def _paint(self) -> None:
        lens = self.lens()
        L, n, k = lens.top_ids.shape
        unique, inverse = torch.unique(lens.top_ids, return_inverse=True)
        vocab = codecs.clip_tokens(self._decode(unique.tolist()))
        with self.hold_sync():
            self.vocab = vocab
            self.vocab_ids = codecs.int32_bytes(unique)
            self.n_positions = n
            self.shown_start = int(lens.positions[0]) if n else 0
            self.top_tokens = codecs.int32_bytes(inverse)
            self.top_probs = codecs.to_bytes((lens.top_probs * 255).round_().to(torch.uint8))
            self.entropy = codecs.float32_bytes(lens.entropy)
            self.kl = codecs.float32_bytes(lens.kl_to_final)
            self.target_prob = codecs.float32_bytes(lens.target_prob)
            self.target_rank = codecs.int32_bytes(lens.target_rank)
            self.shown_target = int(lens.target)
            self.target_label = self._label(lens.target, None)

    def payload_bytes(self) -> int:
        """Bytes of data this view has sent for its current state (binary traits and token texts)."""
        names = ("vocab_ids", "top_tokens", "top_probs", "entropy", "kl", "target_prob", "target_rank")
        texts = sum(len(t.encode()) + 3 for t in [*self.vocab, *self.tokens])
        return sum(len(getattr(self, n)) for n in names) + texts


def logit_lens(model_or_trace, tokenizer=None, text: str | None = None, *, metric: str = "top", selection=None,
               target=None, window: int | None = None, **trace_kwargs) -> LogitLensView:
    """Show the logit lens of a text (``logit_lens(model, tokenizer, text)``) or of a Trace (``logit_lens(trace)``).

    ``target``: a token id or a one-token string whose probability and rank the target metrics show
    (default: the trace's target, else the predicted token). ``window``: positions decoded and shown at
    once (default ``codecs.LENS_WINDOW``, around the target position; ``t.n_tokens`` for the full grid,
    6.3× a forward's work on SmolLM2). The data is on ``view.lens()``. Raises ``ValueError`` with the
    reason for models the lens does not apply to (encoders).
    """
    view = LogitLensView(as_trace(model_or_trace, tokenizer, text, **trace_kwargs), selection=selection, metric=metric,
                         window=window)
    if target is not None:
        view.target = target
    return view
