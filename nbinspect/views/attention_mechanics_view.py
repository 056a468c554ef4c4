"""AttentionMechanicsView: how one head computes its pattern at one query token, step by step.

For the shared selection's layer, head and token (the query; -1: the last token) it shows the query
vector, every key vector (after rotary, with a switch to the projections before it), q·k, q·k × scale
(1/√d_head unless the model says otherwise), the mask, the softmax — the pattern row, which equals the
captured one — and the weighted sum of the value vectors. With grouped-query attention it names the
key/value head this query head reads and the other query heads that share it.

The numbers come from :func:`nbinspect.anatomy.mechanics`: q, k and v as the model's own attention
function received them, recorded during a replay of that one layer (or one forward when no Trace is
given). What travels: q, the output and the per-key rows as float32 (a few KB), k and v (and k before
rotary) as signed uint8 maps with one scale each. The temperature slider divides the logits in the
browser only: it shows how the softmax sharpens or flattens and changes nothing in the model.
"""

from __future__ import annotations

import torch
import traitlets

from .. import anatomy, codecs
from ..trace import Trace
from ._bundle import bundle
from .base import View, as_trace
from .selection import Selection


def _signed(x: torch.Tensor) -> tuple[bytes, float]:
    q, scale = codecs.quantize_signed(x)
    return codecs.to_bytes(q), float(scale)


class AttentionMechanicsView(View):
    """One head's attention at one query, from q and k to the pattern row and the weighted values."""

    _esm = bundle("attention_mechanics_view")
    title = "Attention mechanics: one head at one query"

    n_heads = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(0)
    #: Which [layer, head, query] the bytes below are for.
    shown_of = traitlets.List(traitlets.Int(), default_value=[-1, -1, -1]).tag(sync=True)
    head_dim = traitlets.Int(0).tag(sync=True)
    n_keys = traitlets.Int(0).tag(sync=True)
    scaling = traitlets.Float(1.0).tag(sync=True)
    kv_head = traitlets.Int(0).tag(sync=True)
    #: Query heads reading the same key/value head (grouped-query attention), this one included.
    shared_with = traitlets.List(traitlets.Int()).tag(sync=True)
    #: Whether q and k are shown before the rotary embedding (only offered when the model has one).
    has_rotary = traitlets.Bool(False).tag(sync=True)
    rotary_note = traitlets.Unicode("").tag(sync=True)
    before_rotary = traitlets.Bool(False).tag(sync=True)
    #: float32 [d] query; float32 [n_keys] q·k, scaled, logits (scaled + mask); uint8 [n_keys] 1 = masked.
    q = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    q_before = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    dots = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    scaled = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    masked = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    probs = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    #: Keys and values as signed uint8 [n_keys, d] (128 = 0) with one scale each; k before rotary likewise.
    k = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    k_scale = traitlets.Float(0.0).tag(sync=True)
    k_before = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    k_before_scale = traitlets.Float(0.0).tag(sync=True)
    v = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    v_scale = traitlets.Float(0.0).tag(sync=True)
    #: float32 [d]: the weighted sum of values, probs @ v (what this head writes before the output projection).
    output = traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)
    notes = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: View-only softmax temperature (the browser divides the logits by it; the model is not touched).
    temperature = traitlets.Float(1.0).tag(sync=True)

    def __init__(self, trace: Trace, selection: Selection | None = None, **kwargs):
        rotary = anatomy.rotary_of(trace.model)
        super().__init__(
            trace,
            selection,
            n_heads=trace.adapter.n_heads,
            has_rotary=rotary is not None,
            rotary_note=str(rotary) if rotary else "no rotary embedding: positions enter through the embeddings",
            **kwargs,
        )
        self._link(("layer", "head", "token"))
        self._mech: anatomy.Mechanics | None = None
        selection.observe(self._moved, ["layer", "head", "token"])
        self._send_step()

    @classmethod
    def applies(cls, trace) -> str | None:
        if not trace.adapter.uses_attention_interface():
            return (f"a {trace.adapter.family!r} model computes attention in its own code, not through transformers' "
                    "attention functions, so its q and k vectors cannot be shown step by step.")
        try:
            anatomy.AttentionInputs(trace.adapter, 0)
        except (RuntimeError, TypeError) as e:
            return str(e)
        return None

    @traitlets.validate("head")
    def _valid_head(self, proposal):
        try:
            return self._adapter.check_head(proposal["value"])
        except IndexError as e:
            raise traitlets.TraitError(str(e)) from None

    @traitlets.validate("temperature")
    def _valid_temperature(self, proposal):
        value = proposal["value"]
        if not value > 0 or value != value or value == float("inf"):
            raise traitlets.TraitError(f"temperature {value} must be a positive finite number (1 is the model's own softmax).")
        return value

    def _moved(self, change):
        self._send_step()

    def show(self, trace) -> None:
        """Repaint for a new trace (e.g. after a slider edit)."""
        super().show(trace)
        self._mech = None
        self.shown_of = [-1, -1, -1]
        self._send_step()

    def mechanics(self) -> anatomy.Mechanics:
        """The shown layer, head and query's numbers (float32 tensors on the model's device)."""
        layer, head = self.selection.layer, self.selection.head
        query = self.selection.token if self.selection.token >= 0 else len(self.tokens) - 1
        m = self._mech
        if m is None or (m.layer, m.head, m.query) != (layer, head, query):
            self._mech = m = anatomy.mechanics(self.trace, layer=layer, head=head, query=query)
        return m

    def _send_step(self) -> None:
        m = self.mechanics()
        if self.shown_of == [m.layer, m.head, m.query]:
            return
        k, ks = _signed(m.k)
        v, vs = _signed(m.v)
        kb, kbs = _signed(m.k_before) if m.k_before is not None else (b"", 0.0)
        masked = torch.isinf(m.mask) | (m.mask <= torch.finfo(torch.float32).min / 2)
        with self.hold_sync():
            self.head_dim, self.n_keys = int(m.q.numel()), int(m.k.shape[0])
            self.scaling, self.kv_head, self.shared_with = m.scaling, m.kv_head, m.shared_with
            self.q = codecs.float32_bytes(m.q)
            self.q_before = codecs.float32_bytes(m.q_before) if m.q_before is not None else b""
            self.dots = codecs.float32_bytes(m.dots)
            self.scaled = codecs.float32_bytes(m.scaled)
            self.masked = codecs.to_bytes(masked.to(torch.uint8))
            self.probs = codecs.float32_bytes(m.probs)
            self.k, self.k_scale = k, ks
            self.v, self.v_scale = v, vs
            self.k_before, self.k_before_scale = kb, kbs
            self.output = codecs.float32_bytes(m.output)
            self.notes = m.notes
            self.shown_of = [m.layer, m.head, m.query]

    def payload_bytes(self) -> int:
        names = ("q", "q_before", "dots", "scaled", "masked", "probs", "k", "k_before", "v", "output")
        return sum(len(getattr(self, n)) for n in names) + sum(len(t.encode()) + 3 for t in self.tokens)


def attention_mechanics(model_or_trace, tokenizer=None, text: str | None = None, *, layer: int | None = None,
                        head: int | None = None, query: int | None = None, selection: Selection | None = None,
                        parts=None) -> AttentionMechanicsView:
    """Show how one head computes its attention at one query token (a Trace, or a model, tokenizer and text).

    ``query``: the query token (default: the last). Raises ``IndexError`` for a layer, head or query out of range.
    """
    if query is not None and (isinstance(query, bool) or not isinstance(query, int)):
        raise IndexError(f"query {query!r} is not a token index: give an int (negative counts from the end).")
    trace = as_trace(model_or_trace, tokenizer, text, parts=parts)
    selection = (selection or Selection()).bound_to(n_tokens=trace.n_tokens, n_layers=trace.adapter.n_layers,
                                                    n_heads=trace.adapter.n_heads)
    if layer is not None:
        selection.layer = trace.adapter.check_layer(layer)
    if head is not None:
        selection.head = trace.adapter.check_head(head)
    if query is not None:
        n = trace.n_tokens
        if not -n <= query < n:
            raise IndexError(f"query {query} is out of range: the text has tokens 0..{n - 1}.")
        selection.token = query % n
    return AttentionMechanicsView(trace, selection=selection)
