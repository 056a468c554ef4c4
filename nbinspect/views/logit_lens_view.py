"""LogitLensView: what the model would predict if it stopped after each layer.

A layers × positions grid (canvas): each cell is the residual stream after that layer at that position,
decoded through the final norm and unembedding (:func:`nbinspect.residual_stream.logit_lens`); it shows
its top token, coloured by its probability. A switch shows instead the target token's probability or
rank, the entropy, or the KL divergence to the final distribution. Hovering a cell shows its top-5;
clicking one selects its layer and token and lists its top-5, and clicking a token there makes it the
target (``target_token``), which the attribution views follow.

Bytes sent (nothing as JSON numbers): the distinct top tokens' texts once (``vocab``), int32 indices
into it and uint8 probabilities per cell × top-k, and float32 [layers, positions] per metric. SmolLM2 at
128 tokens: 30 × 128 × 5 × 5 B + 4 × 15 KB ≈ 160 KB.
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
    """The logit lens of one trace, as a layer × position grid."""

    title = "Logit lens"
    _esm = bundle("logit_lens_view")

    #: What colours the cells: "top" (top token's probability), "target_prob", "target_rank", "entropy", "kl".
    metric = traitlets.Unicode("top").tag(sync=True)
    k = traitlets.Int(codecs.LENS_TOP_K).tag(sync=True)
    #: Texts of the distinct tokens any cell has in its top-k (clipped, drawn as text only).
    vocab = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: int32 token id of each ``vocab`` entry (what a click on it makes the target).
    vocab_ids = traitlets.Bytes(b"").tag(sync=True)
    #: int32 [layers, positions, k] indices into ``vocab``; uint8 [layers, positions, k] probability × 255.
    top_tokens = traitlets.Bytes(b"").tag(sync=True)
    top_probs = traitlets.Bytes(b"").tag(sync=True)
    #: float32 [layers, positions]: entropy (nats), KL(final ‖ layer) (nats), the target's probability;
    #: int32 [layers, positions]: the target's rank (0 = top).
    entropy = traitlets.Bytes(b"").tag(sync=True)
    kl = traitlets.Bytes(b"").tag(sync=True)
    target_prob = traitlets.Bytes(b"").tag(sync=True)
    target_rank = traitlets.Bytes(b"").tag(sync=True)
    #: The target token the two target metrics are for (the shown one, even when ``target_token`` is -1).
    shown_target = traitlets.Int(-1).tag(sync=True)
    n_positions = traitlets.Int(0).tag(sync=True)

    def __init__(self, trace, selection=None, metric: str = "top", **kwargs):
        self._lenses: dict[int, rs.LogitLens] = {}
        super().__init__(trace, selection, metric=metric, **kwargs)
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

    def lens(self) -> rs.LogitLens:
        """The lens as shown (tensors on the model's device), for the current target."""
        target = self._target_now()
        if target not in self._lenses:
            compute = lambda: rs.logit_lens(self.trace, k=self.k, target=target)  # noqa: E731
            cached = getattr(self.trace, "cached", None)
            self._lenses = {target: cached(("logit_lens", self.k, target), compute) if cached else compute()}
        return self._lenses[target]

    def _target_now(self) -> int:
        if self.target_token >= 0:
            return self.target_token
        logits = self.trace.record.logits
        return int(logits[0, self.position].argmax())

    def show(self, trace) -> None:
        # A retargeted trace (same forward, same edits) decodes the same stream: keep the lens computed.
        same_forward = getattr(trace, "parent", None) is self.trace and tuple(trace.edits) == tuple(self.trace.edits)
        if not same_forward:
            self._lenses = {}
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
               target=None, **trace_kwargs) -> LogitLensView:
    """Show the logit lens of a text (``logit_lens(model, tokenizer, text)``) or of a Trace (``logit_lens(trace)``).

    ``target``: a token id or a one-token string whose probability and rank the target metrics show
    (default: the trace's target, else the predicted token). The data is on ``view.lens()``. Raises
    ``ValueError`` with the reason for models the lens does not apply to (encoders).
    """
    view = LogitLensView(as_trace(model_or_trace, tokenizer, text, **trace_kwargs), selection=selection, metric=metric)
    if target is not None:
        view.target = target
    return view
