"""The model's anatomy: its parameters by type, their distributions against the usual initialisations,
one attention head's arithmetic at one query, and the MLP's activation function.

Everything here is a reduction on the model's own device; only small results (counts, bins, a few
vectors of one head) are handed on to the views, which encode them as bytes.

- :func:`inventory` sorts every parameter into a *kind* (token embedding, attention Q/K/V/O with fused
  QKV split into its three parts, FFN up/gate/down, norm, output head, router, bias, ...) and a layer,
  counts tied tensors once (the output head that shares the token embedding is listed, marked, and adds
  nothing), and computes each piece's histogram and moments with one set of passes on the device.
- :func:`init_densities` gives what normal(``initializer_range``), Xavier/Glorot, Kaiming/He and PyTorch's
  ``nn.Linear`` default would put in each bin, for the tensor's own fan-in and fan-out.
- :func:`mechanics` recomputes one head's pattern row from the q, k and v the model's attention function
  actually received (after rotary), plus the projections before rotary, and checks nothing itself: the
  tests hold it to 1e-5 against the capture and eager attention.
- :func:`activation` reads the MLP's activation function from the config, checks it on the module, and
  bins the pre-activations of one layer (and for gated MLPs the gate × up product).

Which module is which kind is decided from the :class:`~nbinspect.adapters.Adapter`'s parts (the layers,
each layer's attention, output projection, MLP, down projection and router) and, inside those, from the
projection's name; ``classify`` holds that small table.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from . import codecs
from .adapters import Adapter, ModelParts

# --- kinds ----------------------------------------------------------------------------------------

#: Every kind a parameter piece can have, in the order the views list them.
KINDS = (
    "token embedding",
    "positional embedding",
    "token type embedding",
    "attention Q",
    "attention K",
    "attention V",
    "attention O",
    "FFN gate",
    "FFN up",
    "FFN down",
    "router",
    "norm",
    "output head",
    "bias",
    "other",
)

_Q, _K, _V = ("q_proj", "query", "q", "wq"), ("k_proj", "key", "k", "wk"), ("v_proj", "value", "v", "wv")
_FUSED_QKV = ("c_attn", "query_key_value", "qkv_proj", "wqkv", "qkv", "in_proj")
_GATE = ("gate_proj", "w1", "wi_0")
_UP = ("up_proj", "c_fc", "dense_h_to_4h", "fc1", "w3", "wi_1", "fc_in")
_DOWN = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "w2", "wo", "fc_out")
_FUSED_GATE_UP = ("gate_up_proj",)

#: A weight is "near zero" when |w| is at most this fraction of its tensor's largest |w| (the same rule
#: NeuronView uses for dead neurons), so the fraction means the same for tensors of any scale.
NEAR_ZERO = 1e-3


@dataclass
class Piece:
    """One parameter, or one part of a fused parameter (GPT-2's ``c_attn`` holds Q, K and V).

    ``tied_to``: the name of the parameter this one *is* (the same tensor): such a piece is listed and
    marked but counts nothing and is not binned again.
    """

    name: str
    kind: str
    layer: int  # -1: outside the layers (embeddings, final norm, head)
    shape: tuple[int, ...]
    fan: tuple[int, int]  # (fan_in, fan_out) an initialiser would see for the whole parameter
    dtype: str
    device: str
    numel: int
    bytes: int
    param: str  # the parameter's own name
    tied_to: str | None = None
    part: tuple[int, int] | None = None  # (index, of): the i-th of n equal parts of a fused tensor
    layout: str = "rows"  # how a fused tensor holds its parts: "rows", "columns" (Conv1D) or "heads" (GPT-NeoX)

    def tensor(self, model: nn.Module) -> torch.Tensor:
        """This piece's values, a view of the parameter (no copy)."""
        p = model.get_parameter(self.param)
        if self.part is None:
            return p
        i, n = self.part
        if self.layout == "columns":
            return p.detach().chunk(n, dim=-1)[i]
        if self.layout == "heads":  # GPT-NeoX: [heads, 3, head_dim] along the output dimension
            heads = self._heads
            return p.detach().view(heads, n, -1, *p.shape[1:])[:, i]
        return p.detach().chunk(n, dim=-2 if p.dim() >= 2 else 0)[i]

    _heads: int = 0


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower()


def _fans(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 2:
        return (shape[0] if shape else 1, shape[0] if shape else 1)
    if type(module).__name__ == "Conv1D":  # GPT-2 stores [in, out]
        return shape[0], shape[1]
    return shape[-1], shape[-2]  # [..., out, in]: per expert for 3-D expert stacks


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in name


def _layer_prefixes(model: nn.Module, adapter: Adapter) -> dict[str, int]:
    layers = {id(block): i for i, block in enumerate(adapter.layers)}
    return {name + ".": layers[id(m)] for name, m in model.named_modules() if id(m) in layers}


def _modules_under(root: nn.Module | None) -> set[int]:
    return set() if root is None else {id(m) for m in root.modules()}


class _Roles:
    """Module identity → role, from the adapter's parts (one pass over the layers)."""

    def __init__(self, adapter: Adapter):
        self.embedding = adapter.embedding()
        self.unembedding = adapter.unembedding()
        self.attention: set[int] = set()
        self.output: set[int] = set()
        self.mlp: set[int] = set()
        self.down: set[int] = set()
        self.router: set[int] = set()
        for i in range(adapter.n_layers):
            self.attention |= _modules_under(adapter.attention(i))
            self.output.add(id(adapter.part(i, "attention_output")))
            if adapter.has_part(i, "mlp"):
                self.mlp |= _modules_under(adapter.part(i, "mlp"))
            if adapter.has_part(i, "neurons"):
                self.down.add(id(adapter.part(i, "neurons")))
            if adapter.has_part(i, "router"):
                self.router.add(id(adapter.part(i, "router")))


def classify(module_name: str, module: nn.Module, param_name: str, roles: _Roles) -> str | tuple[str, ...]:
    """The kind of one parameter, or a tuple of kinds for a fused one (split in that many equal parts)."""
    leaf = _leaf(module_name)
    if param_name.endswith("bias"):
        return "bias"
    if module is roles.embedding:
        return "token embedding"
    if module is roles.unembedding:
        return "output head"
    if isinstance(module, nn.Embedding):
        if "pos" in module_name.lower() or leaf == "wpe":
            return "positional embedding"
        return "token type embedding" if "type" in module_name.lower() else "other"
    if _is_norm(module):
        return "norm"
    if id(module) in roles.router or leaf in ("gate", "router") and id(module) in roles.mlp or "expert_gate" in leaf:
        return "router"
    if id(module) in roles.output:
        return "attention O"
    if id(module) in roles.down:
        return "FFN down"
    if id(module) in roles.attention:
        for names, kind in ((_Q, "attention Q"), (_K, "attention K"), (_V, "attention V")):
            if leaf in names:
                return kind
        if leaf in _FUSED_QKV:
            return ("attention Q", "attention K", "attention V")
        if leaf in ("o_proj", "out_proj", "dense", "c_proj", "wo"):
            return "attention O"
        return "other"
    if id(module) in roles.mlp:
        pname = param_name.lower()
        if pname in _FUSED_GATE_UP or leaf in _FUSED_GATE_UP:
            return ("FFN gate", "FFN up")
        if pname in _DOWN:  # fused expert stacks: experts.down_proj is a parameter, not a module
            return "FFN down"
        if leaf in _GATE:
            return "FFN gate"
        if leaf in _DOWN:
            return "FFN down"
        return "FFN up"  # the other projection of an MLP (BERT's intermediate.dense, up_proj, c_fc, ...)
    return "other"


@dataclass
class Rotary:
    """Rotary position embedding: no parameters; ``theta`` is the base from the config."""

    theta: float | None
    fraction: float = 1.0  # of each head's dimensions that are rotated (GPT-NeoX: partial_rotary_factor)

    def __str__(self) -> str:
        base = f"θ = {self.theta:g}" if self.theta else "θ not in the config"
        part = "" if self.fraction == 1.0 else f", {self.fraction:.0%} of each head's dimensions"
        return f"rotary: no parameters ({base}{part})"


def rotary_of(model: nn.Module) -> Rotary | None:
    """The rotary embedding read from the config and checked against the modules (None: the model has none)."""
    config = getattr(model, "config", None)
    has_module = any("rotary" in type(m).__name__.lower() for m in model.modules())
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(params, dict) and "full_attention" in params and isinstance(params["full_attention"], dict):
        params = params["full_attention"]  # per-layer-type parameters (Gemma 3)
    theta = getattr(config, "rope_theta", None) or (params.get("rope_theta") if isinstance(params, dict) else None)
    if not has_module and theta is None:
        return None
    fraction = (params.get("partial_rotary_factor") if isinstance(params, dict) else None) or getattr(
        config, "partial_rotary_factor", None) or getattr(config, "rotary_pct", None) or 1.0
    return Rotary(float(theta) if theta else None, float(fraction))


# --- statistics -----------------------------------------------------------------------------------


@dataclass
class Moments:
    """Count, mean and central moment sums M2, M3, M4 of a set of weights; combinable across tensors."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0
    near_zero: float = 0.0  # count
    max_abs: float = 0.0
    lo: float = math.inf  # smallest and largest value (a histogram's natural range)
    hi: float = -math.inf

    def __add__(self, o: Moments) -> Moments:
        """Pébay's formulas: the moments of the union, exactly, from the two parts' moments."""
        if self.n == 0:
            return o
        if o.n == 0:
            return self
        n = self.n + o.n
        d = o.mean - self.mean
        dn = d / n
        a, b = self.n, o.n
        m2 = self.m2 + o.m2 + d * dn * a * b
        m3 = self.m3 + o.m3 + d * dn * dn * a * b * (a - b) + 3 * dn * (a * o.m2 - b * self.m2)
        m4 = (self.m4 + o.m4 + d * dn**3 * a * b * (a * a - a * b + b * b)
              + 6 * dn * dn * (a * a * o.m2 + b * b * self.m2) + 4 * dn * (a * o.m3 - b * self.m3))
        return Moments(n, self.mean + dn * b, m2, m3, m4, self.near_zero + o.near_zero, max(self.max_abs, o.max_abs),
                       min(self.lo, o.lo), max(self.hi, o.hi))

    @property
    def std(self) -> float:
        return math.sqrt(max(self.m2, 0.0) / self.n) if self.n else float("nan")

    @property
    def kurtosis(self) -> float:
        """Excess kurtosis (0 for a normal distribution, −1.2 for a uniform one)."""
        if not self.n or self.m2 <= 0:
            return float("nan")
        return self.n * self.m4 / (self.m2 * self.m2) - 3.0

    @property
    def near_zero_fraction(self) -> float:
        return self.near_zero / self.n if self.n else float("nan")

    def summary(self) -> dict[str, float]:
        return {"n": self.n, "mean": self.mean, "std": self.std, "kurtosis": self.kurtosis,
                "near_zero": self.near_zero_fraction, "max_abs": self.max_abs}


#: Elements per block on the CPU and per thread: 128K float32 (512 KB). The second read of a tensor goes
#: block by block, and each block is summed, centred, squared, dotted, binned and compared with the
#: near-zero threshold while it is in cache. Smaller blocks pay the ~2 µs each operation costs to launch
#: more often: SmolLM2's parameter_stats, one thread, CPU time, best of 6 on a shared 2-core machine:
#: 64K 0.72 s, 128K 0.60 s, 256K 0.59 s. The statistics give each of our threads whole tensors
#: (``_cpu_parallel``), a block each; one histogram over a group splits each operation between torch's
#: threads instead, so its block grows with the threads and each core keeps the same share in cache.
_CPU_BLOCK = 1 << 17
#: Elements stacked into one batch on an accelerator (a float32 copy of 256 MB, int64 bin indices 512 MB):
#: tensors of one size are binned together so that the cost is a few dozen kernel launches per size, not
#: per tensor (SmolLM2's 272 tensors have 6 sizes). A single larger tensor is handled alone, in blocks.
_DEVICE_BATCH = 1 << 26
#: Elements per block of such a larger tensor: ``histc`` counts in float32 on an accelerator, which stops
#: counting at 2²⁴; a block of at most 2²⁴ values keeps every count exact (blocks are summed in float64).
_DEVICE_BLOCK = 1 << 24

#: Tests set this to run the accelerator's stacked path on the CPU.
_STACK_ON_CPU = False

#: Per tensor, the host row of its statistics: mean, M2, M3, M4, near-zero count, min, max.
_ROW = 7


def _blocks(x: torch.Tensor, step: int):
    """float32 blocks of a flat tensor (lower precisions converted one block at a time, never whole)."""
    for start in range(0, x.numel(), step):
        yield x[start:start + step].float()


def _to_host(rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Small per-tensor results to the host: one stack and one copy per device (one sync each), order kept."""
    out: list[torch.Tensor | None] = [None] * len(rows)
    by_device: dict[torch.device, list[int]] = {}
    for i, r in enumerate(rows):
        by_device.setdefault(r.device, []).append(i)
    for idx in by_device.values():
        host = torch.stack([rows[i] for i in idx]).cpu()
        for j, i in enumerate(idx):
            out[i] = host[j]
    return out  # type: ignore[return-value]


class _Scratch:
    """Work buffers for one block, allocated once per call: a fresh temporary per operation would be fresh
    pages from the allocator each time, and their page faults cost more than the arithmetic. ``of(m)``
    gives views of the first ``m`` elements, made once per block size (slicing costs a few µs a call)."""

    def __init__(self, step: int, device: torch.device):
        self.d = torch.empty(step, device=device)  # the centred block, then its bin positions
        self.d2 = torch.empty(step, device=device)  # its squares, then |w| ≤ t as 1.0 / 0.0
        if device.type == "cpu":  # bin indices (an accelerator bins with histc, in place)
            self.i = torch.empty(step, dtype=torch.int32, device=device)
            self.i16 = torch.empty(step, dtype=torch.int16, device=device)
            self.u8 = torch.empty(step, dtype=torch.uint8, device=device)
        self._views: dict[int, SimpleNamespace] = {}

    def of(self, m: int) -> SimpleNamespace:
        """The buffers' first ``m`` elements, as attributes of the same names."""
        view = self._views.get(m)
        if view is None:
            names = [n for n in ("d", "d2", "i", "i16", "u8") if hasattr(self, n)]
            view = self._views[m] = SimpleNamespace(**{n: getattr(self, n)[:m] for n in names})
        return view


def _cpu_step() -> int:
    """Elements per block on the CPU for the current number of threads (see ``_CPU_BLOCK``)."""
    return _CPU_BLOCK * torch.get_num_threads()


def _f32(v: float) -> float:
    """``v`` rounded to float32, as a kernel working in float32 sees a Python number."""
    return float(np.float32(v))


def _scalar(v: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A 0-d float32 tensor: as an operand it costs a quarter of what a Python number does to wrap (~2 µs
    instead of ~8 µs an operation, which adds up over a few thousand blocks) and rounds the same."""
    return torch.full((), v, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=64)
def _bin_scale(bins: int, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(lo, factor, divisor), float32 on the CPU, such that ``int((w − lo) · factor / divisor)`` is histc's
    bin index ``int(((w − lo) · bins) / (hi − lo))`` with every step rounded as histc rounds it. When
    ``bins`` is a power of two, ``(w − lo) · bins`` is exact and so is ``(hi − lo) / bins``: one division
    (no factor) rounds once, as histc's division does."""
    lo32 = _f32(lo)
    width = _f32(_f32(hi) - lo32)  # hi − lo rounded to float32, as histc computes it
    step = width / bins
    if bins & (bins - 1) == 0 and _f32(step) == step and step * bins == width:
        return _scalar(lo32), None, _scalar(step)
    return _scalar(lo32), _scalar(bins), _scalar(width)


def _bin(c: torch.Tensor, bins: int, lo: float, hi: float, scratch: _Scratch | None = None) -> torch.Tensor:
    """Raw counts of one block, every value of which lies in [lo, hi] (a range taken from these values):
    ``bins + 1`` of them, the last holding the values whose index is ``bins`` (those equal to ``hi``; see
    ``_fold``). The counts are exactly ``torch.histc(c, bins, lo, hi)``'s, on every device.

    On the CPU histc's float32 index is computed with vectorised operations (``_bin_scale``), truncated to
    bytes and counted by ``bincount`` (~1 ns a value; histc's own CPU loop costs ~12 ns). On an
    accelerator ``histc`` is one kernel and, unlike ``bincount``, does not sync.
    """
    if c.device.type != "cpu":
        return torch.nn.functional.pad(torch.histc(c, bins=bins, min=lo, max=hi), (0, 1))
    m = c.numel()
    lo32, factor, divisor = _bin_scale(bins, lo, hi)
    scratch = scratch.of(m) if scratch is not None else None
    u = torch.sub(c, lo32, out=scratch.d) if scratch is not None else c - lo32
    if factor is not None:
        u.mul_(factor)
    u.div_(divisor)
    if scratch is None:
        return torch.bincount(u.to(torch.int32), minlength=bins + 1)  # truncation: u ≥ 0
    if bins < 255:  # bincount of bytes is ~2× faster; float → int16 → uint8 beats float → uint8 directly
        return torch.bincount(scratch.u8.copy_(scratch.i16.copy_(u)), minlength=bins + 1)
    return torch.bincount(scratch.i.copy_(u), minlength=bins + 1)


def _fold(raw: list[torch.Tensor], bins: int) -> torch.Tensor:
    """float32 [bins] from blocks' raw counts: the maximum's own index folded into the last bin (once per
    tensor: cheaper than clamping every value)."""
    total = torch.stack(raw).double().sum(0)
    total[bins - 1] += total[bins]
    return total[:bins]


def histc_counts(x: torch.Tensor, bins: int, lo: float, hi: float) -> torch.Tensor:
    """int64 [bins]: exactly ``torch.histc(x, bins, lo, hi)``'s counts when every value of ``x`` lies in
    [lo, hi] (a range taken from ``x``), on its device; on the CPU ~10x faster than histc (see ``_bin``)."""
    flat = x.detach().reshape(-1).float()
    if not flat.numel():
        return torch.zeros(bins, dtype=torch.int64, device=x.device)
    return _fold([_bin(flat, bins, lo, hi)], bins).round().to(torch.int64)


def _range_of(lo: float, hi: float) -> tuple[float, float, bool]:
    """A histogram's range from a tensor's min and max: widened when constant; (−1, 1, False) when not finite."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return -1.0, 1.0, False  # a NaN or inf weight: the moments say so; no bins
    return (lo, hi, True) if hi > lo else (lo - 0.5, hi + 0.5, True)


def _central(blocks: list[tuple[int, float, float, float, float, float]]) -> tuple[float, float, float, float]:
    """Mean and central sums M2, M3, M4 of a tensor from its blocks: each block's size m, sum, shift s (its
    own mean, in float32) and sums of (w − s)², (w − s)³, (w − s)⁴. The binomial expansion about the
    tensor's mean is exact, and every shift is near its block's mean, so no large terms cancel. In Python
    floats (float64) on the host: a few dozen operations per block, too small to be worth a kernel each."""
    n = sum(b[0] for b in blocks)
    mean = sum(b[1] for b in blocks) / n
    m2 = m3 = m4 = 0.0
    for m, total, shift, p2, p3, p4 in blocks:
        p1 = total - m * shift  # Σ(w − s): the float32 shift's rounding error times the block's size
        e = shift - mean
        m2 += p2 + e * (2 * p1 + m * e)
        m3 += p3 + e * (3 * p2 + e * (3 * p1 + m * e))
        m4 += p4 + e * (4 * p3 + e * (6 * p2 + e * (4 * p1 + m * e)))
    return mean, m2, m3, m4


def _blocked(x: torch.Tensor, bins: int, histograms: bool, step: int,
             scratch: _Scratch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One tensor read twice: its range, in one streaming reduction (on the host: one sync), then block by
    block while each block is in cache, its sum and its sums of powers about its own mean (float32 pairwise
    sums and dots within a block, float64 across blocks), its histogram and its near-zero count (one more
    sync for all blocks' sums)."""
    mn, mx = torch.stack(torch.aminmax(x)).double().tolist()
    top = max(abs(mn), abs(mx))
    lo, hi, finite = _range_of(mn, mx)
    near_t = _scalar(NEAR_ZERO * top, x.device)
    inverse = {}  # 1 / block size, one 0-d tensor per size
    sizes, sums, raw = [], [], []
    for c in _blocks(x, step):
        m = c.numel()
        total = c.sum()
        if m not in inverse:
            inverse[m] = _scalar(1.0 / m, x.device)
        shift = total * inverse[m]  # near the block's mean: any value near it serves (see _central)
        buf = scratch.of(m)
        # Centring also copies the block to an aligned buffer: weights loaded from safetensors can sit 8
        # bytes off a 64-byte boundary, and MKL's dot on such a tensor measured ~4x slower (SmolLM2).
        d = torch.sub(c, shift, out=buf.d)
        d2 = torch.mul(d, d, out=buf.d2)
        # dots fuse a multiply and a sum; over a block of 10⁵–10⁶ values a float32 dot stays within ~10⁻⁶–10⁻⁵
        # of float64 (MKL splits it between threads), and blocks are summed in float64
        sizes.append(m)
        sums += [total, shift, d2.sum(), torch.dot(d2, d), torch.dot(d2, d2)]
        if histograms and finite:
            raw.append(_bin(c, bins, lo, hi, scratch))
        if top > 0:  # 1.0 where |w| ≤ t, summed: a float compare in place beats a bool tensor ~4×
            sums.append(torch.abs(c, out=buf.d2).le_(near_t).sum())
    per = 6 if top > 0 else 5
    host = torch.stack(sums).double().tolist()
    rows = [host[i:i + per] for i in range(0, len(host), per)]
    mean, m2, m3, m4 = _central([(m, *r[:5]) for m, r in zip(sizes, rows)])
    near = sum(r[5] for r in rows) if top > 0 else float(x.numel())
    hist = None
    if histograms:
        hist = _fold(raw, bins) if raw else torch.zeros(bins, dtype=torch.float64, device=x.device)
    return torch.tensor([mean, m2, m3, m4, near, mn, mx], dtype=torch.float64), hist


def _stacked(xs: list[torch.Tensor], bins: int, histograms: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tensors of one size on one device, stacked [R, N] float32: rows of statistics float64 [R, _ROW] and
    counts float32 [R, bins], with no sync (ranges stay on the device; bins filled by one scatter-add)."""
    X = torch.stack([x.float() for x in xs])
    R, N = X.shape
    mn, mx = torch.aminmax(X, dim=1)
    mean = X.sum(1, dtype=torch.float64) / N
    D = X - mean.float()[:, None]
    D2 = D * D
    m2 = D2.sum(1, dtype=torch.float64)
    m3 = (D2 * D).sum(1, dtype=torch.float64)
    D.copy_(D2).mul_(D2)  # reuse D's memory for D⁴
    m4 = D.sum(1, dtype=torch.float64)
    del D, D2
    top = torch.maximum(mn.abs(), mx.abs())
    near = torch.where(top > 0, (X.abs() <= NEAR_ZERO * top[:, None]).sum(1), N).double()
    rows = torch.stack([mean, m2, m3, m4, near, mn.double(), mx.double()], dim=1)
    if not histograms:
        return rows, None
    finite = torch.isfinite(mn) & torch.isfinite(mx)
    const = mx <= mn
    lo = torch.where(finite, torch.where(const, mn - 0.5, mn), -1.0)
    hi = torch.where(finite, torch.where(const, mx + 0.5, mx), 1.0)
    # histc's index, rounded as histc rounds it: ((w − lo) · bins) / (hi − lo) in float32
    idx = torch.sub(X, lo[:, None]).mul_(bins).div_((hi - lo)[:, None]).nan_to_num_(-1.0)
    idx = idx.to(torch.int64).clamp_(0, bins - 1)
    idx += torch.arange(R, device=X.device)[:, None] * bins
    inside = (X >= lo[:, None]) & (X <= hi[:, None]) & finite[:, None]  # a row with a NaN or inf: no bins
    counts = torch.zeros(R * bins, dtype=torch.int32, device=X.device)  # float32 would stop counting at 2²⁴
    counts.index_add_(0, idx.reshape(-1), inside.reshape(-1).int())
    return rows, counts.view(R, bins).double()


@contextlib.contextmanager
def _one_torch_thread():
    """torch's intra-op threads set to one while our own threads share the cores (restored after)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _cpu_parallel(flats: list[torch.Tensor], idx: list[int], workers: int, bins: int, histograms: bool,
                  rows: list, counts: list) -> None:
    """``_blocked`` on CPU tensors, shared out by size among ``workers`` threads of one torch thread each.

    Splitting each operation between torch's threads gains little here: a block's ~15 operations cost
    ~20 µs each, and their launch and join are a good part of it (bincount does not split at all).
    Whole tensors per thread keep both cores busy: torch releases the GIL inside every operation.
    SmolLM2's statistics on 2 cores, wall, both ways alternated in one process: 606–625 ms with torch's
    two threads, 517–529 ms this way."""
    shares: list[list[int]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for i in sorted(idx, key=lambda i: -flats[i].numel()):  # largest first: the shares come out even
        w = loads.index(min(loads))
        shares[w].append(i)
        loads[w] += flats[i].numel()

    def work(share: list[int]) -> None:
        scratch = None  # allocated for the largest tensor of the share, which comes first
        for i in share:
            step = min(_CPU_BLOCK, flats[i].numel())
            if scratch is None or len(scratch.d) < step:
                scratch = _Scratch(step, flats[i].device)
            rows[i], counts[i] = _blocked(flats[i], bins, histograms, step, scratch)

    with _one_torch_thread(), concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(work, share) for share in shares]:
            done.result()  # an exception in a worker is raised here


def _summaries(tensors: list[torch.Tensor], bins: int, histograms: bool = True) -> list[tuple[Moments, Histogram | None]]:
    """Moments (and, with ``histograms``, counts in ``bins`` over its own range) of each tensor, on its device.

    On the CPU each tensor is read twice, in cached blocks (``_blocked``). On an accelerator tensors of one
    size are stacked and reduced together (``_stacked``), and every result comes back in one copy per
    device: no sync per tensor, and kernel launches per size rather than per tensor.
    """
    flats = [t.detach().reshape(-1) for t in tensors]
    rows: list[torch.Tensor | None] = [None] * len(flats)
    counts: list[torch.Tensor | None] = [None] * len(flats)
    groups: dict[tuple, list[int]] = {}
    scratch: dict[torch.device, _Scratch] = {}

    def blocked(x, step):
        step = min(step, x.numel())
        buf = scratch.get(x.device)
        if buf is None or len(buf.d) < step:
            buf = scratch[x.device] = _Scratch(step, x.device)
        return _blocked(x, bins, histograms, step, buf)

    on_cpu = []
    for i, x in enumerate(flats):
        n = x.numel()
        if n == 0:
            continue
        if x.device.type == "cpu" and not _STACK_ON_CPU:
            on_cpu.append(i)
        elif n > _DEVICE_BATCH:
            rows[i], counts[i] = blocked(x, _DEVICE_BLOCK)
        else:
            groups.setdefault((x.device, n), []).append(i)
    workers = min(torch.get_num_threads(), len(on_cpu))
    if workers > 1:
        _cpu_parallel(flats, on_cpu, workers, bins, histograms, rows, counts)
    else:
        for i in on_cpu:
            rows[i], counts[i] = blocked(flats[i], _cpu_step())
    for (_, n), idx in groups.items():
        per = max(1, _DEVICE_BATCH // n)
        for start in range(0, len(idx), per):
            chunk = idx[start:start + per]
            r, c = _stacked([flats[i] for i in chunk], bins, histograms)
            for j, i in enumerate(chunk):
                rows[i] = r[j]
                counts[i] = None if c is None else c[j]
    present = [i for i, r in enumerate(rows) if r is not None]
    host_rows = dict(zip(present, _to_host([rows[i] for i in present])))
    host_counts = dict(zip(present, _to_host([counts[i] for i in present]))) if histograms else {}
    out = []
    for i, x in enumerate(flats):
        if i not in host_rows:
            out.append((Moments(), None))
            continue
        mean, m2, m3, m4, nz, mn, mx = host_rows[i].tolist()
        moments = Moments(x.numel(), mean, m2, m3, m4, nz, max(abs(mn), abs(mx)), mn, mx)
        lo, hi, _ = _range_of(mn, mx)
        out.append((moments, Histogram(host_counts[i].float(), lo, hi, moments) if histograms else None))
    return out


@dataclass
class Histogram:
    """Counts of a set of weights in ``bins`` equal bins over [lo, hi], with their moments."""

    counts: torch.Tensor  # float32 [bins] on the host
    lo: float
    hi: float
    moments: Moments

    @property
    def edges(self) -> torch.Tensor:
        return torch.linspace(self.lo, self.hi, len(self.counts) + 1, dtype=torch.float64)


def histogram(tensors: Iterable[torch.Tensor], bins: int = 0, range: tuple[float, float] | None = None) -> Histogram:
    """One histogram (common range, or ``range``) and the moments of all values of ``tensors``, on their device.

    With ``range``, values outside it are not counted in the bins (the moments still cover every value).
    """
    bins = bins or codecs.WEIGHT_HISTOGRAM_BINS
    tensors = list(tensors)
    moments = sum((m for m, _ in _summaries(tensors, bins, histograms=False)), Moments())
    if not moments.n:
        raise ValueError("no weights to bin: every tensor given is empty.")
    if range is None:
        return binned(tensors, bins, moments.lo, moments.hi, moments)
    return binned(tensors, bins, *range, moments, inside_only=True)


def binned(tensors: Iterable[torch.Tensor], bins: int, lo: float, hi: float, moments: Moments,
           inside_only: bool = False) -> Histogram:
    """Counts of all values of ``tensors`` in ``bins`` bins over [lo, hi], summed on the device, one copy back.

    ``inside_only``: values outside [lo, hi] are left out (``histc``'s rule); otherwise every value must lie
    inside (the range was taken from these tensors).
    """
    lo, hi, finite = _range_of(lo, hi)
    per_device: dict[torch.device, torch.Tensor] = {}
    scratch: dict[torch.device, _Scratch] = {}
    for t in tensors:
        x = t.detach().reshape(-1)
        acc = per_device.setdefault(x.device, torch.zeros(bins, dtype=torch.float64, device=x.device))
        if not finite or not x.numel():
            continue
        step = _cpu_step() if x.device.type == "cpu" else _DEVICE_BLOCK
        if inside_only:
            for c in _blocks(x, step):
                acc += torch.histc(c, bins=bins, min=lo, max=hi)
            continue
        buf = scratch.get(x.device)
        if x.device.type == "cpu" and (buf is None or len(buf.d) < min(step, x.numel())):
            buf = scratch[x.device] = _Scratch(min(step, x.numel()), x.device)
        acc += _fold([_bin(c, bins, lo, hi, buf) for c in _blocks(x, step)], bins)
    total = sum((acc.cpu() for acc in per_device.values()), torch.zeros(bins, dtype=torch.float64)).float()
    return Histogram(total, lo, hi, moments)


# --- the inventory --------------------------------------------------------------------------------


@dataclass
class Inventory:
    """Every parameter of a model as pieces, with counts by kind and (once computed) each piece's statistics."""

    model: nn.Module
    adapter: Adapter
    pieces: list[Piece]
    rotary: Rotary | None
    tied: list[tuple[str, str]]  # (name, the name of the tensor it shares)
    stats: list[Moments] = field(default_factory=list)  # one per piece, [] until binned
    histograms: list[Histogram | None] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Parameters counted once each (equals ``sum(p.numel() for p in model.parameters())``)."""
        return sum(p.numel for p in self.pieces if p.tied_to is None)

    @property
    def total_bytes(self) -> int:
        return sum(p.bytes for p in self.pieces if p.tied_to is None)

    def kinds(self) -> list[str]:
        present = {p.kind for p in self.pieces}
        return [k for k in KINDS if k in present]

    def by_kind(self) -> dict[str, dict]:
        """Per kind: parameters (tied counted once), share of the total, bytes, tensors, and whether tied."""
        total = self.total or 1
        out = {}
        for kind in self.kinds():
            ps = [p for p in self.pieces if p.kind == kind]
            count = sum(p.numel for p in ps if p.tied_to is None)
            out[kind] = {
                "count": count,
                "share": count / total,
                "bytes": sum(p.bytes for p in ps if p.tied_to is None),
                "tensors": len(ps),
                "tied": [p.name + " = " + p.tied_to for p in ps if p.tied_to],
                "dtypes": sorted({p.dtype for p in ps}),
                "devices": sorted({p.device for p in ps}),
            }
        return out

    def compute(self, bins: int = 0, histograms: bool = True) -> Inventory:
        """Keep every (untied) piece's moments and, with ``histograms``, its histogram; returns self.

        Computed on each piece's device with two reads of each weight (see ``_summaries``). Without
        ``histograms`` (what a view needs to paint: the statistics, the std by layer and one group's
        histogram) a piece is binned only when a histogram of it is asked for.
        """
        bins = bins or codecs.WEIGHT_HISTOGRAM_BINS
        own = [i for i, p in enumerate(self.pieces) if p.tied_to is None]
        done = _summaries([self.pieces[i].tensor(self.model) for i in own], bins, histograms)
        self.histograms = [None] * len(self.pieces)
        for i, (_, hist) in zip(own, done):
            self.histograms[i] = hist
        by_name = {self.pieces[i].name: m for i, (m, _) in zip(own, done)}
        self.stats = [by_name[p.tied_to or p.name] for p in self.pieces]
        return self

    def select(self, kind: str | None = None, layer: int | None = None, name: str | None = None) -> list[int]:
        """Indices of the pieces of one kind and/or layer, or the one named piece (tied copies left out)."""
        out = []
        for i, p in enumerate(self.pieces):
            if p.tied_to is not None:
                continue
            if name is not None and p.name != name:
                continue
            if kind is not None and p.kind != kind:
                continue
            if layer is not None and p.layer != layer:
                continue
            out.append(i)
        return out

    def group_histogram(self, indices: list[int], bins: int = 0) -> Histogram:
        """One histogram over several pieces, on their device. The moments and the common range combine
        from each piece's own (no pass over the weights); only the binning reads them, unless the piece
        was binned already."""
        if not indices:
            raise ValueError("no parameters match this selection; pick a kind or tensor the model has.")
        bins = bins or codecs.WEIGHT_HISTOGRAM_BINS
        if not self.stats:
            self.compute(bins, histograms=False)
        one = self.histograms[indices[0]] if len(indices) == 1 else None
        if one is not None and len(one.counts) == bins:
            return one
        moments = sum((self.stats[i] for i in indices), Moments())
        hist = binned((self.pieces[i].tensor(self.model) for i in indices), bins, moments.lo, moments.hi, moments)
        if len(indices) == 1 and bins == codecs.WEIGHT_HISTOGRAM_BINS:
            self.histograms[indices[0]] = hist  # binned on request: kept for the next look
        return hist

    def std_by_layer(self) -> tuple[list[str], torch.Tensor]:
        """The std of each kind's weights in each layer, float32 [kinds, layers] (NaN: the layer has none)."""
        if not self.stats:
            self.compute(histograms=False)
        kinds = [k for k in self.kinds() if any(p.kind == k and p.layer >= 0 for p in self.pieces)]
        out = torch.full((len(kinds), self.adapter.n_layers), float("nan"))
        acc: dict[tuple[str, int], Moments] = {}
        for p, m in zip(self.pieces, self.stats):
            if p.layer >= 0 and p.tied_to is None:
                acc[(p.kind, p.layer)] = acc.get((p.kind, p.layer), Moments()) + m
        for (kind, layer), m in acc.items():
            out[kinds.index(kind), layer] = m.std
        return kinds, out

    def svdvals(self, index: int) -> torch.Tensor:
        """Singular values of one weight matrix (float32, largest first, on its device); 3-D stacks: the first."""
        t = self.pieces[index].tensor(self.model).detach()
        if t.dim() < 2:
            raise ValueError(f"{self.pieces[index].name} is a vector ({tuple(t.shape)}); singular values need a matrix.")
        while t.dim() > 2:
            t = t[0]
        return torch.linalg.svdvals(t.float())


def inventory(model: nn.Module, parts: ModelParts | None = None) -> Inventory:
    """Sort every parameter of ``model`` into pieces of one kind and layer (no statistics yet)."""
    adapter = Adapter.of(model, parts)
    roles = _Roles(adapter)
    prefixes = _layer_prefixes(model, adapter)
    first_name: dict[int, str] = {}
    tied: list[tuple[str, str]] = []
    pieces: list[Piece] = []
    n_heads = adapter.n_heads
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{pname}" if module_name else pname
            tied_to = first_name.get(id(p))
            if tied_to is None:
                first_name[id(p)] = full
            else:
                tied.append((full, tied_to))
            layer = next((i for pre, i in prefixes.items() if full.startswith(pre)), -1)
            kind = classify(module_name, module, pname, roles)
            shape = tuple(p.shape)
            fan = _fans(module, shape)
            common = dict(layer=layer, fan=fan, dtype=str(p.dtype).removeprefix("torch."), device=str(p.device),
                          param=full, tied_to=tied_to)
            if isinstance(kind, tuple):
                n = len(kind)
                leaf = _leaf(module_name)
                layout = "columns" if type(module).__name__ == "Conv1D" else "heads" if leaf == "query_key_value" else "rows"
                for i, k in enumerate(kind):
                    piece = Piece(name=f"{full}[{k.split()[-1]}]", kind=k, shape=_part_shape(shape, n, layout),
                                  numel=p.numel() // n, bytes=p.numel() * p.element_size() // n, part=(i, n),
                                  layout=layout, **common)
                    piece._heads = n_heads
                    pieces.append(piece)
            else:
                pieces.append(Piece(name=full, kind=kind, shape=shape, numel=p.numel(),
                                    bytes=p.numel() * p.element_size(), **common))
    return Inventory(model, adapter, pieces, rotary_of(model), tied)


def _part_shape(shape, n, layout):
    s = list(shape)
    axis = -1 if layout == "columns" else (-2 if len(s) >= 2 else 0)
    s[axis] //= n
    return tuple(s)


def parameter_stats(model: nn.Module, parts: ModelParts | None = None, histograms: bool = True) -> Inventory:
    """:func:`inventory` with every piece's moments and (with ``histograms``) its histogram."""
    return inventory(model, parts).compute(histograms=histograms)


# --- initialisations ------------------------------------------------------------------------------


def _normal_cdf(x: torch.Tensor, std: float) -> torch.Tensor:
    return 0.5 * (1 + torch.special.erf(x / (std * math.sqrt(2))))


def _uniform_cdf(x: torch.Tensor, bound: float) -> torch.Tensor:
    return ((x + bound) / (2 * bound)).clamp(0, 1)


def init_laws(piece: Piece, config=None) -> list[tuple[str, str, float]]:
    """The usual initialisations of a tensor of this shape: (label, "normal" | "uniform", std or bound)."""
    if len(piece.shape) < 2:
        return []  # norms start at ones and biases at zeros: a spike, no density to draw
    fan_in, fan_out = piece.fan
    laws = []
    rng = getattr(config, "initializer_range", None)
    if rng:
        laws.append((f"normal σ={rng:g} (config.initializer_range)", "normal", float(rng)))
    laws.append(("Xavier/Glorot uniform", "uniform", math.sqrt(6.0 / (fan_in + fan_out))))
    laws.append(("Kaiming/He normal (fan_in, ReLU)", "normal", math.sqrt(2.0 / fan_in)))
    laws.append(("PyTorch nn.Linear default", "uniform", 1.0 / math.sqrt(fan_in)))
    return laws


def init_densities(piece: Piece, hist: Histogram, config=None) -> tuple[list[str], torch.Tensor]:
    """Expected counts per bin of ``hist`` under each usual initialisation: labels and float32 [laws, bins]."""
    laws = init_laws(piece, config)
    edges = hist.edges
    rows = []
    for _, law, scale in laws:
        cdf = _normal_cdf(edges, scale) if law == "normal" else _uniform_cdf(edges, scale)
        rows.append(hist.moments.n * (cdf[1:] - cdf[:-1]))
    out = torch.stack(rows).float() if rows else torch.zeros(0, len(hist.counts))
    return [label for label, _, _ in laws], out


def fresh_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A freshly initialised model of the same architecture (``from_config``), on the model's device.

    Refused past ``codecs.FRESH_COPY_MAX_BYTES`` (it is a second model in memory). The caller's random
    state is left as it was.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("a fresh copy needs a Hugging Face model with a config (model.config); this model has none.")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if size > codecs.FRESH_COPY_MAX_BYTES:
        raise ValueError(
            f"a freshly initialised copy would take another {size / 2**30:.1f} GiB (limit "
            f"{codecs.FRESH_COPY_MAX_BYTES / 2**30:.0f} GiB); compare with init_densities instead."
        )
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(seed)
        fresh = type(model)(copy.deepcopy(config))
    return fresh.to(dtype).eval()


# --- attention mechanics --------------------------------------------------------------------------


@dataclass
class Mechanics:
    """One head's attention at one query, step by step (float32 tensors on the model's device).

    q [d], k [n_keys, d]: after rotary, as the attention function received them; ``q_before``/``k_before``
    are the projections before rotary (None when the model has no rotary embedding). ``dots`` = k @ q,
    ``scaled`` = dots × ``scaling``, ``mask`` additive (0 or −inf/−max), ``logits`` = scaled + mask,
    ``probs`` = softmax(logits), ``v`` [n_keys, d], ``output`` = probs @ v.
    """

    layer: int
    head: int
    query: int
    kv_head: int
    n_rep: int  # query heads per key/value head (grouped-query attention)
    scaling: float
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_before: torch.Tensor | None
    k_before: torch.Tensor | None
    dots: torch.Tensor
    scaled: torch.Tensor
    mask: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    output: torch.Tensor
    notes: list[str] = field(default_factory=list)

    @property
    def shared_with(self) -> list[int]:
        """The query heads that read the same key/value head as this one (this head included)."""
        return list(range(self.kv_head * self.n_rep, (self.kv_head + 1) * self.n_rep))


class AttentionInputs:
    """What one attention module's attention function receives during one forward: q, k, v (after rotary),
    the mask and the scaling; plus the q and k projections before rotary where the model has separate ones.

    Use as hooks: ``hooks()`` gives ``(module, "forward_pre" | "forward", fn)`` triples for
    ``trace.replay([layer], hooks=...)``, or ``with grab:`` registers them for one forward of your own.
    While the module runs, a wrapper stands in transformers' attention-function registry under the model's
    implementation name and hands every call on to what was there (so a capture's wrapper keeps working);
    it is removed when the module returns, and by ``remove`` on an exception.
    """

    def __init__(self, adapter: Adapter, layer: int):
        from ._attention_hook import ALL_ATTENTION_FUNCTIONS, implementation_of

        if ALL_ATTENTION_FUNCTIONS is None:
            raise RuntimeError("attention mechanics need transformers >= 4.48 (its attention-function registry).")
        self.adapter = adapter
        self.layer = adapter.check_layer(layer)
        self.module = adapter.attention(self.layer)
        self.name = implementation_of(adapter.model)
        self.seen: dict = {}
        self._saved = None
        self._handles = []
        self.before = self._projections()

    def _projections(self) -> dict[str, nn.Module]:
        found = {}
        for name, m in self.module.named_children():
            leaf = name.lower()
            if leaf in _Q:
                found["q"] = m
            elif leaf in _K:
                found["k"] = m
            elif leaf == "query_key_value":
                found["qkv"] = m
        return found

    # --- hooks ------------------------------------------------------------------------------------
    def hooks(self) -> list[tuple[nn.Module, str, object]]:
        out = [(self.module, "forward_pre", self._install), (self.module, "forward", self._remove_hook)]
        for key, m in self.before.items():
            out.append((m, "forward", self._keeper(key)))
        return out

    def _keeper(self, key):
        def keep(module, args, output):
            self.seen[f"{key}_proj"] = output[0].detach().clone()
        return keep

    def _install(self, module, args):
        from ._attention_hook import ALL_ATTENTION_FUNCTIONS, _module_eager

        local = ALL_ATTENTION_FUNCTIONS._local_mapping
        had = self.name in local
        previous = local.get(self.name)
        self._saved = (had, previous)
        original = previous if had else ALL_ATTENTION_FUNCTIONS._global_mapping.get(self.name)
        grab = self

        def recording_attention(mod, query, key, value, attention_mask, *a, **kw):
            if mod is grab.module:
                grab.seen.update(
                    q=query[0].detach().float().clone(), k=key[0].detach().float().clone(),
                    v=value[0].detach().float().clone(),
                    mask=None if attention_mask is None else attention_mask[0].detach().clone(),
                    scaling=kw.get("scaling"), is_causal=kw.get("is_causal"),
                    unusual={n: kw[n] for n in ("softcap", "sliding_window", "s_aux", "sinks") if kw.get(n) is not None},
                )
            fn = original if original is not None else _module_eager(mod)
            return fn(mod, query, key, value, attention_mask, *a, **kw)

        local[self.name] = recording_attention

    def _remove_hook(self, module, args, output):
        self.remove()

    def remove(self) -> None:
        """Put the registry back as it was (idempotent)."""
        if self._saved is None:
            return
        from ._attention_hook import ALL_ATTENTION_FUNCTIONS

        had, previous = self._saved
        local = ALL_ATTENTION_FUNCTIONS._local_mapping
        if had:
            local[self.name] = previous
        else:
            local.pop(self.name, None)
        self._saved = None

    def __enter__(self):
        for module, kind, fn in self.hooks():
            if kind == "forward_pre":
                self._handles.append(module.register_forward_pre_hook(fn))
            else:
                self._handles.append(module.register_forward_hook(fn, always_call=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.remove()
        return False

    # --- the arithmetic -----------------------------------------------------------------------------
    def mechanics(self, head: int, query: int) -> Mechanics:
        """One head at one query, from what was recorded (call after the forward)."""
        if "q" not in self.seen:
            raise RuntimeError(
                f"layer {self.layer}'s attention function was not called during the forward; nothing was recorded "
                "(does this model use transformers' attention functions?)."
            )
        s = self.seen
        q_all, k_all, v_all = s["q"], s["k"], s["v"]  # [H, n, d], [KV, n_keys, d]
        heads, n_q, d = q_all.shape
        head = self.adapter.check_head(head)
        if not -n_q <= query < n_q:
            raise IndexError(f"query {query} is out of range: the text has tokens 0..{n_q - 1}.")
        query %= n_q
        kv_heads, n_k = k_all.shape[0], k_all.shape[1]
        n_rep = heads // kv_heads
        kv = head // n_rep
        scaling = s["scaling"] if s["scaling"] is not None else d**-0.5
        q, k, v = q_all[head, query], k_all[kv], v_all[kv]
        dots = k @ q
        scaled = dots * scaling
        mask = self._mask_row(query, n_q, n_k, q.device)
        logits = scaled + mask
        probs = torch.softmax(logits, dim=-1)
        output = probs @ v
        notes = [f"this layer also passes {', '.join(s['unusual'])}; the steps shown leave it out"] if s["unusual"] else []
        q_before, k_before = self._before(head, kv, query, d)
        return Mechanics(self.layer, head, query, kv, n_rep, float(scaling), q, k, v, q_before, k_before,
                         dots, scaled, mask, logits, probs, output, notes)

    def _mask_row(self, query: int, n_q: int, n_k: int, device) -> torch.Tensor:
        m = self.seen["mask"]
        if m is not None:
            row = m[..., query, :n_k].reshape(-1, n_k)[0]
            if row.dtype == torch.bool:
                return torch.zeros(n_k, device=device).masked_fill_(~row, torch.finfo(torch.float32).min)
            return row.float()
        causal = self.seen["is_causal"]
        causal = getattr(self.module, "is_causal", True) if causal is None else causal
        row = torch.zeros(n_k, device=device)
        if causal and n_q > 1:
            row[n_k - n_q + query + 1:] = float("-inf")
        return row

    def _before(self, head, kv, query, d):
        s = self.seen
        if rotary_of(self.adapter.model) is None:
            return None, None
        if "q_proj" in s and "k_proj" in s:
            q = s["q_proj"].float().view(s["q_proj"].shape[0], -1, d)[query, head]
            k = s["k_proj"].float().view(s["k_proj"].shape[0], -1, d)[:, kv]
            return q, k
        if "qkv_proj" in s:  # GPT-NeoX: [tokens, heads, 3 * head_dim]
            x = s["qkv_proj"].float().view(s["qkv_proj"].shape[0], -1, 3 * d)
            return x[query, head, :d], x[:, kv, d:2 * d]
        return None, None


@dataclass
class Text:
    """A model and one tokenized text, for the anatomy views when no Trace is at hand (nothing is run here)."""

    model: nn.Module
    adapter: Adapter
    inputs: dict
    tokens: list[str]


def text(model: nn.Module, tokenizer, text: str, parts: ModelParts | None = None) -> Text:
    """Tokenize ``text`` for ``model`` (refusing empty or over-long text) without running anything."""
    from .inputs import encode, token_strings

    adapter = Adapter.of(model, parts)
    inputs = encode(tokenizer, text, adapter)
    return Text(model, adapter, inputs, token_strings(tokenizer, inputs["input_ids"]))


def _model_and_inputs(source, inputs):
    if isinstance(source, Text):
        return source.model, source.inputs
    return source, inputs


def mechanics(model_or_trace, inputs: dict | None = None, *, layer: int, head: int, query: int = -1,
              parts: ModelParts | None = None) -> Mechanics:
    """One head's attention at one query token, step by step (see :class:`Mechanics`).

    Given a Trace, replays only ``layer`` (``trace.replay``); given a model and its ``inputs``, runs one
    forward without gradients under the model lock with the recording hooks and nothing else.
    """
    if hasattr(model_or_trace, "replay"):
        trace = model_or_trace
        grab = AttentionInputs(trace.adapter, layer)
        try:
            trace.replay([grab.layer], hooks=grab.hooks())
        finally:
            grab.remove()
        return grab.mechanics(head, query)
    from .perturb import model_lock

    model, inputs = _model_and_inputs(model_or_trace, inputs)
    grab = AttentionInputs(Adapter.of(model, parts), layer)
    with model_lock(model), torch.no_grad(), grab:
        model(**inputs)
    return grab.mechanics(head, query)


# --- activation functions -------------------------------------------------------------------------

#: |act(x) − x| ≤ this × |x|: the activation passes x through ("linear"); |act(x)| ≤ this × |x|: it blocks
#: x ("negative": act ≈ 0); anything else is the curved region around zero.
REGIME_TOLERANCE = 0.05


@dataclass
class Activation:
    """One layer's MLP activation: the function, its pre-activations over the text, and for gated MLPs
    the gate × up product (what the down projection reads). Tensors on the layer's device.
    """

    layer: int
    name: str  # from the config
    module: nn.Module  # the module that computes it
    note: str  # where the config and the module disagree, or ""
    pre: torch.Tensor  # float32 [tokens, d_mlp]
    up: torch.Tensor | None  # gated MLPs: float32 [tokens, d_mlp]
    product: torch.Tensor | None  # gated: act(pre) * up

    @property
    def gated(self) -> bool:
        return self.up is not None

    def curve(self, lo: float, hi: float, points: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, act(x)) on a grid over [lo, hi], computed by the module itself."""
        points = points or codecs.ACTIVATION_CURVE_POINTS
        x = torch.linspace(lo, hi, points, device=self.pre.device)
        with torch.no_grad():
            return x, self.module(x).float()

    def regimes(self) -> dict[str, float]:
        """Fractions of pre-activations in each regime (see ``REGIME_TOLERANCE``)."""
        x = self.pre.reshape(-1)
        with torch.no_grad():
            y = self.module(x).float()
        ax = x.abs()
        nonzero = ax > 0
        linear = nonzero & ((y - x).abs() <= REGIME_TOLERANCE * ax)
        blocked = nonzero & ~linear & (y.abs() <= REGIME_TOLERANCE * ax)
        n = max(1, x.numel())
        lin, neg = float(linear.sum()) / n, float(blocked.sum()) / n
        return {"negative": neg, "near zero": 1.0 - lin - neg, "linear": lin}


def activation_name(model: nn.Module) -> str | None:
    c = getattr(model, "config", None)
    for key in ("hidden_act", "activation_function", "hidden_activation", "activation"):
        value = getattr(c, key, None)
        if isinstance(value, str):
            return value
    return None


def activation_module(adapter: Adapter, layer: int) -> nn.Module:
    """The module applying the MLP's activation function in ``layer`` (found by its class's home module)."""
    mlp = adapter.part(layer, "mlp")
    for m in mlp.modules():
        home = type(m).__module__
        if home.startswith("transformers.activations") or home == "torch.nn.modules.activation":
            return m
    raise ValueError(
        f"could not find the activation function's module in layer {layer}'s MLP ({type(mlp).__name__}); "
        "it may be applied as a plain function, which hooks cannot see."
    )


def _check_name(name: str | None, module: nn.Module) -> str:
    try:
        from transformers.activations import ACT2CLS
    except ImportError:  # pragma: no cover
        return ""
    if name is None:
        return f"the config names no activation; the module is {type(module).__name__}"
    expected = ACT2CLS.get(name)
    cls = expected[0] if isinstance(expected, tuple) else expected
    if cls is not None and not isinstance(module, cls):
        return f"the config says {name!r} but the module is {type(module).__name__}; the module's function is drawn"
    return ""


class ActivationInputs:
    """Hooks that keep one layer's activation input (and the up projection's output for gated MLPs)."""

    def __init__(self, adapter: Adapter, layer: int):
        self.adapter = adapter
        self.layer = adapter.check_layer(layer)
        self.module = activation_module(adapter, self.layer)
        mlp = adapter.part(self.layer, "mlp")
        self.up_module = next((m for n, m in mlp.named_children() if n.lower() in ("up_proj", "w3", "wi_1")), None)
        self.seen: dict[str, torch.Tensor] = {}
        self._handles = []

    def hooks(self):
        out = [(self.module, "forward_pre", self._keep_pre)]
        if self.up_module is not None:
            out.append((self.up_module, "forward", self._keep_up))
        return out

    def _keep_pre(self, module, args):
        self.seen["pre"] = args[0][0].detach().float().clone()

    def _keep_up(self, module, args, output):
        self.seen["up"] = output[0].detach().float().clone()

    def __enter__(self):
        for module, kind, fn in self.hooks():
            reg = module.register_forward_pre_hook if kind == "forward_pre" else module.register_forward_hook
            self._handles.append(reg(fn))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

    def result(self) -> Activation:
        if "pre" not in self.seen:
            raise RuntimeError(f"layer {self.layer}'s activation function did not run during the forward.")
        model = self.adapter.model
        name = activation_name(model) or type(self.module).__name__
        pre, up = self.seen["pre"], self.seen.get("up")
        product = None
        if up is not None:
            with torch.no_grad():
                product = self.module(pre).float() * up
        return Activation(self.layer, name, self.module, _check_name(activation_name(model), self.module),
                          pre.reshape(-1, pre.shape[-1]), up, product)


def activation(model_or_trace, inputs: dict | None = None, *, layer: int, parts: ModelParts | None = None) -> Activation:
    """One layer's MLP activation function and its inputs over the text (replayed from a Trace, or one forward)."""
    if hasattr(model_or_trace, "replay"):
        trace = model_or_trace
        grab = ActivationInputs(trace.adapter, layer)
        trace.replay([grab.layer], hooks=grab.hooks())
        return grab.result()
    from .perturb import model_lock

    model, inputs = _model_and_inputs(model_or_trace, inputs)
    grab = ActivationInputs(Adapter.of(model, parts), layer)
    with model_lock(model), torch.no_grad(), grab:
        model(**inputs)
    return grab.result()
