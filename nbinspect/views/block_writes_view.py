"""BlockWritesView: what each block writes into the residual stream, beside the stream itself (skip connections).

Per layer, the norm of the residual stream after the block and of what its attention and its MLP wrote
(:func:`nbinspect.residual_stream.block_writes`), on a log scale, averaged over the tokens or for the
selected token; below, the cosine between each write and the stream it is added to. The teaching point:
the skip path carries the signal through every layer, and each block adds an update that is small
next to it (and often nearly orthogonal to it). Shown beside the gradient norms, it is the forward side
of the same skip path the gradients flow back through.

Bytes: five float32 [layers, tokens] maps (SmolLM2 at 128 tokens: 77 KB).
"""

from __future__ import annotations

import traitlets

from .. import codecs
from .. import residual_stream as rs
from ._bundle import bundle
from ._trace_view import TraceView
from .base import as_trace

#: What travels: the stream entering layer l is the one leaving layer l - 1, so only what leaves is sent.
SERIES = ("stream_out", "attention", "mlp", "cos_attention", "cos_mlp")


class BlockWritesView(TraceView):
    """Norms of the residual stream and of every block's attention and MLP writes, and their cosines."""

    title = "What each block writes (skip connections)"
    _esm = bundle("block_writes_view")

    #: float32 [layers, tokens] each (see :class:`nbinspect.residual_stream.BlockWrites`).
    stream_out = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    attention = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    mlp = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    cos_attention = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    cos_mlp = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: Parallel residual (GPT-NeoX): the MLP writes into the block's input, not input + attention.
    parallel = traitlets.Bool(False).tag(sync=True)

    def __init__(self, trace, selection=None, **kwargs):
        super().__init__(trace, selection, **kwargs)
        self._paint()

    @classmethod
    def applies(cls, trace) -> str | None:
        return None

    def writes(self) -> rs.BlockWrites:
        """The norms and cosines as shown (tensors on the model's device)."""
        cached = getattr(self.trace, "cached", None)
        compute = lambda: rs.block_writes(self.trace)  # noqa: E731
        return cached("block_writes", compute) if cached else compute()

    def _retargeted(self, change) -> None:
        pass  # nothing here depends on the target

    def _paint(self) -> None:
        w = self.writes()
        with self.hold_sync():
            for name in SERIES:
                setattr(self, name, codecs.float32_bytes(getattr(w, name)))
            self.parallel = bool(getattr(self._adapter.config, "use_parallel_residual", False))

    def payload_bytes(self) -> int:
        return sum(len(getattr(self, n)) for n in SERIES) + sum(len(t.encode()) + 3 for t in self.tokens)


def block_writes(model_or_trace, tokenizer=None, text: str | None = None, *, selection=None, **trace_kwargs) -> BlockWritesView:
    """Show what each block writes into the residual stream, for a text (``model, tokenizer, text``) or a Trace."""
    return BlockWritesView(as_trace(model_or_trace, tokenizer, text, **trace_kwargs), selection=selection)
