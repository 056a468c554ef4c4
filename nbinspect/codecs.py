"""Tensors → bytes for the browser, and every size limit nbinspect puts on what it sends.

Nothing here sends JSON numbers: maps travel as uint8 bytes (one byte per cell), with one float32
scale per map, at no more cells than the screen draws. ``js/codecs.js`` mirrors these functions.

Quantization error bound: a map with values in ``[0, scale]`` is stored as ``round(v / scale * 255)``
and decoded as ``q * scale / 255``, so every decoded value is within ``scale / 510`` of the true value.
For attention (``scale`` = the map's largest weight, at most 1) that is at most 0.00196.
"""

from __future__ import annotations

import json
import math
import unicodedata
import zlib

import numpy as np
import torch

# --- size limits (the only place they are set) -------------------------------------------------
#: Side, in cells, of each layer×head thumbnail. The grid draws thumbnails at ~20–40 px, so 32
#: cells is already finer than a screen shows; 30 layers × 9 heads × 32² = 276 KB for SmolLM2.
THUMBNAIL_CELLS = 32
#: The focused head is sent at full resolution (one cell per token pair) up to this many tokens per
#: side; longer texts are block-max downsampled to this side. 1024² = 1 MiB, about the pixels
#: of the heatmap on a large screen.
FOCUS_MAX_CELLS = 1024
#: Full quantized attention maps of the layers a view has focused are kept on the model's device (so
#: refocusing a layer seen before is instant) while they fit in this budget; past it only the focused
#: layer's are kept and others are recomputed on demand. SmolLM2 at 1024 tokens, all layers: 283 MiB.
PATTERN_CACHE_MAX_BYTES = 512 * 2**20
#: Up to this many tokens a trace without gradients runs the model's own attention function and computes
#: the probabilities it shows beside it: outputs bit-identical to a plain forward. Past it the captured
#: layers take their output from those probabilities (eager's math, within float32 rounding of sdpa's)
#: instead of computing the scores twice: at 2048 tokens on one CPU thread, SmolLM2, that is 1.38 -> 0.97
#: of a plain sdpa forward. With gradients the model's own attention always runs.
EXACT_ATTENTION_MAX_TOKENS = 1024
#: Token strings sent to label axes are cut to this many characters (a token is rarely longer;
#: a hostile one could be megabytes).
MAX_TOKEN_CHARS = 64
#: Browser → kernel messages over 10 MB are dropped by the Jupyter server; we never send more than
#: small selection messages that way, and check payloads against this in tests.
MAX_BROWSER_MESSAGE_BYTES = 10 * 2**20


def pool_max(maps: torch.Tensor, cells: int) -> tuple[torch.Tensor, int]:
    """Block-max pool the last two dims of ``maps`` [..., q, k] to at most ``cells`` per side.

    Max, not mean: attention rows sum to one, so averaging a long row washes a sharp pattern
    (a diagonal, a single attended token) into noise, while the block maximum keeps it visible.
    Returns the pooled maps and the block size (tokens per cell).
    """
    q, k = maps.shape[-2:]
    block = max(1, math.ceil(max(q, k) / cells))
    if block == 1:
        return maps, 1
    # Keys first (one pass over the whole map, into 1/block of it), then queries over that small result.
    # Reshaped maxima rather than max_pool2d, which also computes an index per cell on the CPU (3x slower
    # at 2048 tokens). A ragged last block is kept, not dropped with the last tokens.
    return block_max(block_max(maps, block, -1), block, -2), block


def block_max(x: torch.Tensor, block: int, dim: int) -> torch.Tensor:
    """Maxima of consecutive ``block``-long runs along ``dim`` (-1 or -2), the last run possibly shorter."""
    size = x.shape[dim]
    whole = size // block * block
    main = x.narrow(dim, 0, whole).unflatten(dim, (whole // block, block)).amax(dim)
    if whole == size:
        return main
    return torch.cat([main, x.narrow(dim, whole, size - whole).amax(dim, keepdim=True)], dim)


def quantize(maps: torch.Tensor, scale: torch.Tensor | None = None, in_place: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 maps with one scale per map (the map's max), on the maps' device.

    ``maps`` [..., a, b] non-negative; returns (uint8 [..., a, b], float32 scales [...]). ``scale``: the
    maps' maxima when the caller already has them; ``in_place``: ``maps`` (float32) may be overwritten.
    """
    if scale is None:
        scale = maps.amax(dim=(-2, -1)).float()
    # One multiply and an in-place round: maps / scale * 255 lies in [0, 255] by construction, so
    # no clamp pass is needed (this runs over every cell of every layer; ~2x faster than divide+clamp).
    inv = (255.0 / torch.where(scale > 0, scale, torch.ones_like(scale)))[..., None, None]
    scaled = maps.mul_(inv) if in_place else maps.float() * inv
    q = scaled.round_().to(torch.uint8)
    return q, scale


def dequantize(q: torch.Tensor | np.ndarray, scale) -> torch.Tensor:
    """Inverse of :func:`quantize` (what the browser computes), for tests and tooltips."""
    def as_float(x):  # bytes read back from a trait are read-only numpy views: copy them
        return x.float() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, dtype=np.float32))

    q, scale = as_float(q), as_float(scale)
    return q * (scale[..., None, None] / 255.0)


def to_bytes(t: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a tensor, copied to the host (the only device→host copy we make)."""
    return t.detach().contiguous().cpu().numpy().tobytes()


def float32_bytes(t: torch.Tensor) -> bytes:
    return to_bytes(t.float())


#: Bytes of the stamp in front of every binary trait the browser receives (``js/codecs.js`` strips it).
STAMP_BYTES = 4


def stamped(value: bytes, widget=None) -> bytes:
    """A binary trait's bytes as sent: the CRC-32 of the payload (4 bytes), then the payload.

    Why: ipywidgets' frontend decides whether a trait changed with lodash ``isEqual``, which compares two
    equal-length buffers byte by byte from the start, twice per update. A slider edit at a middle layer
    leaves the first layers' part of every per-layer payload as it was, so the browser walked hundreds of
    KB per edit before it could draw. Two payloads that differ now differ in their first bytes. Identical
    payloads are never sent again (traitlets syncs only a changed value), so the stamp costs nothing there.
    An empty payload stays empty.
    """
    if not value:
        return b""
    return zlib.crc32(value).to_bytes(STAMP_BYTES, "little") + bytes(value)


#: Metadata of every binary trait: ``traitlets.Bytes(b"").tag(**codecs.BINARY_TRAIT)``.
BINARY_TRAIT = {"sync": True, "to_json": stamped}


#: Characters a token label shows as a visible marker (``⟨U+202E⟩``) instead of as themselves: bidi
#: controls would reorder the label (a token ``\u202eevil`` reads "live"), and zero-width or other
#: invisible characters would hide that a token holds anything at all; code hosts flag hidden bidi text
#: the same way. That is every control (Cc), format (Cf: bidi controls U+202A–202E, U+2066–2069,
#: U+200E/F, U+061C, zero-width U+200B–200D, U+2060, U+FEFF, soft hyphen, tags), line/paragraph
#: separator (Zl, Zp) and lone surrogate (Cs) — except newline and tab, which the views draw as ↵ and ⇥ —
#: plus these letters and marks that draw nothing (Hangul fillers, the combining grapheme joiner,
#: Khmer's invisible vowels).
_INVISIBLE_GRAPHIC = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")
_HIDDEN_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")
_KEPT_CONTROLS = frozenset("\n\t")


def _shown(ch: str) -> str:
    if ch in _KEPT_CONTROLS:
        return ch
    if ch in _INVISIBLE_GRAPHIC or unicodedata.category(ch) in _HIDDEN_CATEGORIES:
        return f"⟨U+{ord(ch):04X}⟩"
    return ch


def clip_tokens(tokens: list[str]) -> list[str]:
    """Token text as every view labels it: hidden characters made visible, at most ``MAX_TOKEN_CHARS``.

    The one place token text is made safe to show (see ``_INVISIBLE_GRAPHIC``); a label longer than
    the limit keeps its first characters and ends in "…", and a marker is never cut in half.
    """
    return [_clip_token(t) for t in tokens]


def _clip_token(token: str) -> str:
    if len(token) <= MAX_TOKEN_CHARS and token.isprintable() and _INVISIBLE_GRAPHIC.isdisjoint(token):
        return token  # the common case, checked at C speed
    pieces, length = [], 0
    for ch in token[:MAX_TOKEN_CHARS]:  # a hostile token may be megabytes: only its start can be shown
        piece = _shown(ch)
        pieces.append(piece)
        length += len(piece)
        if length > MAX_TOKEN_CHARS:
            break
    if length <= MAX_TOKEN_CHARS and len(token) <= MAX_TOKEN_CHARS:
        return "".join(pieces)
    while length > MAX_TOKEN_CHARS - 1:  # room for the "…"
        length -= len(pieces.pop())
    return "".join(pieces) + "…"


# --- signed values (MLP neuron activations) ----------------------------------------------------
# Activations are signed, so they travel as uint8 with 128 meaning 0: ``q = 128 + round(a / scale * 127)``
# (1..255) and decode as ``(q - 128) * scale / 127``, with ``scale`` = the largest |a| of the column (or
# map) they belong to. Every decoded value is within ``scale / 254`` of the true value.

#: Neurons shown side by side in NeuronView's heatmap by default, and the most it will show. Columns are
#: drawn ≥ 8 px wide in a ~480 px heatmap, so 64 is about what a screen can tell apart.
NEURON_TOP_K = 32
NEURON_TOP_K_MAX = 64
#: Token rows of NeuronView's heatmap; longer texts are pooled (per block of tokens, the value with the
#: largest |a|, sign kept) to this many rows: about the pixel height of the heatmap.
NEURON_HEATMAP_MAX_ROWS = 512
#: Bins of the per-layer activation histogram (a ~420 px wide chart: ≥ 4 px per bar at 96 bins).
HISTOGRAM_BINS = 96


#: The logit lens unembeds layer × position residuals about this many rows at a time (whole positions):
#: one GEMM tall enough for the BLAS / the GPU to run near full speed.
LENS_CHUNK_ROWS = 256
#: ... and one block of the vocabulary at a time, this many bytes of float32 logits, reduced (top-k, the
#: softmax sums, entropy, KL, the target's rank) while still in cache: [layers, positions, vocab] never
#: exists (SmolLM2 at 512 tokens: 3 GB), and on a CPU the reductions cost a fraction of the unembedding
#: instead of as much again (separate passes over 35 MB tensors). 2 MB stays within a core's L2 on most
#: CPUs (8 MB measured 1.7× slower than 2 MB on a shared EPYC); SmolLM2: 240 rows × ~2.2K tokens.
LENS_BLOCK_MAX_BYTES = 2 * 2**20
#: On a CPU, also at most this many vocabulary entries per block: the GEMM making a block slows down
#: past a few thousand columns, whatever its rows (SmolLM2, one thread, on the shared 2-core EPYC at load
#: 4.5, medians of 3: the lens view's 90 rows took 0.21 / 0.18 / 0.17 / 0.23 s at 728 / 1536 / 2184 / 5825
#: columns, 5825 being what 2 MB gave them; the full grid's 240 rows 0.44 / 0.53 / 0.56 / 0.62 s).
#: A GPU block is a dozen kernel launches: there only the bytes count.
LENS_BLOCK_TOKENS = 1536
#: Top tokens per logit-lens cell sent to the browser (shown on hover; the cell draws the first).
LENS_TOP_K = 5
#: Token positions (columns) the logit-lens view decodes and shows at once; the rest are decoded when the
#: user pages to them or selects a token there. Each column is L·d·V multiply-adds, 6.3/n of a forward
#: over n tokens on SmolLM2, and the reductions add 35-60% on a CPU: 3 columns are 3 × 6.3 / 128 = 0.15
#: of a forward at 128 tokens in multiply-adds; the lens and attribution views measured 0.23 (0.18-0.29)
#: × a forward with LENS_BLOCK_TOKENS blocks, 0.30 with 2 MB ones (one thread, loaded shared 2-core CPU;
#: 0.06-0.08 at 512 tokens); with 2 MB blocks 4 columns measured 0.25-0.36, 6 ~0.4.
#: Columns of ≤ 150 px show each cell's top token as text.
LENS_WINDOW = 3


def quantize_signed(values: torch.Tensor, dim=None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 values with 128 = 0 and one float32 scale (largest |value|) per slice, on the values' device.

    ``dim``: the dimension(s) each scale covers (``None``: one scale for everything; ``0`` for an
    ``[rows, columns]`` map: one scale per column). Error bound: ``scale / 254`` (see above).
    """
    x = values.float()
    scale = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (torch.round(x / safe * 127.0) + 128).clamp_(1, 255).to(torch.uint8)
    return q, (scale if dim is None else scale.squeeze(dim))


def dequantize_signed(q: torch.Tensor | np.ndarray, scale) -> torch.Tensor:
    """Inverse of :func:`quantize_signed` (what the browser computes); ``scale`` broadcasts against ``q``
    (a scalar, or one per column of an ``[rows, columns]`` map)."""
    q = q.float() if isinstance(q, torch.Tensor) else torch.from_numpy(np.array(q, dtype=np.float32))
    scale = scale.float() if isinstance(scale, torch.Tensor) else torch.as_tensor(np.array(scale, dtype=np.float32))
    return (q - 128.0) * (scale / 127.0)


def int32_bytes(t: torch.Tensor) -> bytes:
    return to_bytes(t.to(torch.int32))


def sent_bytes(widget) -> tuple[int, int]:
    """What a widget's synced state costs on the wire: (data bytes, code bytes).

    Binary traits count by length, everything else as its JSON text; ``_esm``/``_css`` (the view's
    code, sent once per widget model) are counted apart from the data. Used by benchmarks.
    """
    data = code = 0
    for name, value in widget.get_state().items():
        if name in ("_esm", "_css", "_anywidget_id"):
            code += len(value.encode() if isinstance(value, str) else value or b"")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data += len(value)
        else:
            data += len(json.dumps(value, default=str))
    return data, code


def check_finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """Refuse NaN or infinite values before they are encoded (uint8 has no NaN; a blank view would hide it).

    Call it on small reductions (per-map maxima, norms), which are NaN whenever any cell is.
    """
    if not bool(torch.isfinite(values).all()):
        raise ValueError(
            f"{what} contains NaN or infinite values, so there is nothing meaningful to show; the model's weights "
            "are probably not finite (check with `any(p.isnan().any() for p in model.parameters())`)."
        )
    return values


# --- training monitor (nbinspect.monitor) -------------------------------------------------------
#: Points kept per series of a training monitor (loss, each layer's gradient norm, ...). A chart is
#: ~600 px wide, so 256 points are ≥ 2 px apart; when full, neighbouring points are merged in pairs
#: (resolution halves, the whole run stays in view). A full history of a 30-layer model is
#: 256 × (6 × 30 + 10) × 4 B ≈ 190 KB, sent at most every PUBLISH_INTERVAL_S (nbinspect/monitor.py).
MONITOR_MAX_POINTS = 256


# --- model anatomy (nbinspect.anatomy, parameters / activation views) -------------------------------
#: Bins of a weight histogram (ParametersView draws it ~480 px wide: 5 px per bar). Every tensor is
#: binned on its device and only these counts travel: SmolLM2's 272 tensors cost 272 × 128 × 4 B = 139 KB
#: if all were sent, but only the selected tensor's or group's are.
WEIGHT_HISTOGRAM_BINS = 128
#: Points of an activation function's curve (a ~420 px wide chart: one point per ~1.6 px).
ACTIVATION_CURVE_POINTS = 256
#: A freshly initialised copy of the model (for comparing weights with their initialisation) is a second
#: model in memory; past this size it is refused and only the analytic initialisation densities are shown.
FRESH_COPY_MAX_BYTES = 4 * 2**30
#: Singular values sent for one matrix (the spectrum is drawn as a line; d_model is at most a few thousand).
MAX_SINGULAR_VALUES = 4096

# --- router view (views/router_view.py) -----------------------------------------------------------
#: Token rows of RouterView's token × expert heatmap at full resolution (one byte per cell: 1024 tokens
#: × 128 experts = 128 KB for the shown layer); longer texts are block-max pooled to this many rows.
ROUTER_MAX_ROWS = 1024
