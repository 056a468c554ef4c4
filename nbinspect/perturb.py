"""Edit a model's weights in place and give back the exact model afterwards.

``with nbinspect.perturb(model, ScaleHead(3, 2, 0.0)): model(**inputs)`` runs the model with head 2 of
layer 3 switched off. The requirements this module is built around:

* **Exact restore.** Before any element is changed, a clone of exactly the slice an edit touches is
  saved; restoring copies the clones back in reverse order. After ``stop()`` (on normal exit, on an
  exception inside the block or during the edits themselves, and on ``reset()``) every parameter is
  bit-identical to before (``torch.equal``). Undoing by dividing is not exact in floating point and a
  factor of 0 cannot be divided back, so nothing here ever divides.
* **Edits are plain values.** Frozen dataclasses that print as the code that makes them, compare equal
  when they mean the same thing, and stack: the edits of a ``perturb`` are applied in order.
* **Where an edit acts.** Every edit knows the first layer it changes (:func:`first_layer`), which is
  what lets :mod:`nbinspect.recompute` rerun only the layers after it.

What "a head" and "a neuron" mean here, per family (the adapter names the modules):

* A head's output is the slice of the attention output projection's *input* that the head writes
  (o_proj / ``attn.c_proj`` / ``attention.output.dense`` / ``attention.dense``). Scaling a head scales
  those weight columns (rows for GPT-2's transposed ``Conv1D``), which equals scaling the head's
  output before the projection. The projection's bias belongs to no single head: ablating a head
  (factor 0) removes the head's contribution and leaves the bias, as if the head had output zeros.
* A neuron is one input of the MLP down projection (``down_proj`` / ``mlp.c_proj`` / ``output.dense``
  / ``dense_4h_to_h``): scaling it scales that weight column, i.e. the neuron's activation as the
  down projection reads it. MoE families have no single down projection and are refused.
* Scaling a whole layer's attention or MLP output scales the output projection's weight *and* bias,
  so the sub-layer's whole contribution to the residual stream is scaled.
* Noise is added to every weight matrix (parameters with 2 or more dimensions) of the module, with
  σ relative to the root mean square of that matrix, from a generator seeded by the edit's seed and
  the parameter's name, so the same edit always draws the same noise on the same device.
"""

from __future__ import annotations

import math
import signal
import threading
import warnings
import weakref
import zlib
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .adapters import Adapter, ModelParts, UnsupportedModelError


class EditError(ValueError):
    """An edit cannot be applied to this model (bad index, weights not editable in place, ...)."""


@dataclass(frozen=True, eq=False)
class Change:
    """One in-place change of one slice of one parameter; what edits resolve to.

    ``apply(view)`` changes ``param[index]`` (a view) in place. ``names`` are every name under which
    the parameter is reachable from the model (more than one when weights are tied).
    """

    param: torch.Tensor
    index: tuple
    apply: Callable[[torch.Tensor], Any]
    names: tuple[str, ...]


class Edit:
    """Base class of all edits. Subclasses resolve themselves into :class:`Change` objects.

    To write your own edit, subclass this as a frozen dataclass and implement ``changes(adapter)``
    (no mutation there: the perturbation saves each slice before calling ``Change.apply``) and
    ``layers(adapter)`` (the layer indices whose weights it touches; -1 for the embeddings and
    ``adapter.n_layers`` for the final norm and unembedding).
    """

    def changes(self, adapter: Adapter) -> list[Change]:  # pragma: no cover - interface
        raise NotImplementedError

    def layers(self, adapter: Adapter) -> set[int]:  # pragma: no cover - interface
        raise NotImplementedError

    def hooks(self, adapter: Adapter) -> list[tuple[nn.Module, str, Callable]]:
        """Activation interventions (e.g. :class:`nbinspect.Steer`): ``(module, "forward" | "forward_pre", fn)``
        registered while the edit is applied and removed on restore. Weight edits have none."""
        return []

    @property
    def neutral(self) -> bool:
        """True when the edit changes nothing (factor 1, σ 0): sliders at rest."""
        return False


# --- where things are -----------------------------------------------------------------------------


def _is_conv1d(module: nn.Module) -> bool:
    # GPT-2's Conv1D stores weight as [in, out], the transpose of nn.Linear.
    return type(module).__name__ == "Conv1D"


def _input_index(module: nn.Module, start: int, stop: int) -> tuple:
    """Index of the weight entries that read inputs ``start:stop`` of a linear-like module."""
    if _is_conv1d(module):
        return (slice(start, stop), slice(None))
    return (slice(None), slice(start, stop))


def _in_features(module: nn.Module) -> int:
    weight = module.weight
    return weight.shape[0] if _is_conv1d(module) else weight.shape[1]


# Per-model caches: walking every parameter costs ~ms on a 30-layer model, and sliders ask on every move.
_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_POSITIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Names(dict):
    """id(parameter) -> every dotted name it has in the model, read again on a miss: accelerate puts new
    parameter objects in place of offloaded ones on every forward, so an id seen before may be stale."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self._model = weakref.ref(model)
        self._fill()

    def _fill(self) -> None:
        names: dict[int, list[str]] = {}
        for name, p in self._model().named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(name)
        self.clear()
        self.update({k: tuple(v) for k, v in names.items()})

    def __missing__(self, key: int) -> tuple[str, ...]:
        self._fill()
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default


def _names(adapter: Adapter) -> dict[int, tuple[str, ...]]:
    """id(parameter) -> every dotted name it has in the model (tied weights have several)."""
    cached = _NAMES.get(adapter.model)
    if cached is None:
        cached = _NAMES[adapter.model] = _Names(adapter.model)
    return cached


def _check_editable(edit: Edit, name: str, param: torch.Tensor) -> None:
    if param.device.type == "meta":
        raise EditError(
            f"{edit!r} cannot change {name}: its weights are offloaded (on the 'meta' device), so an in-place edit "
            "would not persist; load the model without disk/CPU offload (no device_map offloading) to perturb it."
        )
    if not param.is_floating_point() or type(param).__name__ in ("Params4bit", "Int8Params") or hasattr(
        param, "quant_state"
    ):
        raise EditError(
            f"{edit!r} cannot change {name}: it is stored quantized ({param.dtype}), and quantized weights cannot be "
            "edited exactly in place; load the model in float32, float16 or bfloat16 to perturb it."
        )


def _param_name(adapter: Adapter, param: torch.Tensor) -> str:
    return _names(adapter).get(id(param), ("<unnamed parameter>",))[0]


def _module_name(adapter: Adapter, module: nn.Module) -> str:
    for name, m in adapter.model.named_modules(remove_duplicate=False):
        if m is module:
            return name
    return type(module).__name__


def _layer_part(adapter: Adapter, layer: int, part: str, edit: Edit) -> nn.Module:
    try:
        return adapter.part(layer, part)
    except UnsupportedModelError as e:
        raise EditError(f"{edit!r}: {e}") from None


def _check_layer(adapter: Adapter, layer: int, edit: Edit) -> int:
    try:
        return adapter.check_layer(layer)
    except IndexError as e:
        raise EditError(f"{edit!r}: {e}") from None


def _scale(factor: float) -> Callable[[torch.Tensor], Any]:
    return lambda view: view.mul_(factor)


def _finite_number(x) -> bool:
    """A real, finite int or float (not a bool; not NaN, ±inf, or an int too large for a float)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _check_factor(edit: Edit, factor) -> None:
    if not _finite_number(factor):
        raise EditError(f"{edit!r}: factor must be a finite number (0 switches off, 1 leaves as is), got {factor!r}.")


#: The parts of a layer that ``AddNoise((layer, part), ...)`` can name (ModelParts fields that are paths in a block).
_LAYER_PARTS = ("attention", "attention_output", "mlp", "neurons", "router")


def _named_part(adapter: Adapter, layer: int, part, edit: Edit) -> nn.Module:
    """``adapter.part(layer, part)`` for a part named by the user, refusing an unknown name with the ones that exist."""
    existing = [p for p in _LAYER_PARTS if adapter.has_part(layer, p)]
    if part not in existing:
        raise EditError(
            f"{edit!r}: layer {layer} has no part {part!r}; the parts it has are {', '.join(repr(p) for p in existing)} "
            "(or pass a module name from model.named_modules())."
        )
    return _layer_part(adapter, layer, part, edit)


# --- the edits ------------------------------------------------------------------------------------


class _OneLayerScale(Edit):
    """Shared by the edits that multiply something in one layer (``self.layer``) by ``self.factor``."""

    @property
    def neutral(self) -> bool:
        return self.factor == 1

    def layers(self, adapter: Adapter) -> set[int]:
        return {_check_layer(adapter, self.layer, self)}


@dataclass(frozen=True)
class ScaleHead(_OneLayerScale):
    """Multiply one attention head's output by ``factor`` (0 switches the head off; see the module doc)."""

    layer: int
    head: int
    factor: float

    def changes(self, adapter: Adapter) -> list[Change]:
        _check_factor(self, self.factor)
        layer = _check_layer(adapter, self.layer, self)
        try:
            head = adapter.check_head(self.head)
        except IndexError as e:
            raise EditError(f"{self!r}: {e}") from None
        proj = _layer_part(adapter, layer, "attention_output", self)
        width = _in_features(proj)
        if width % adapter.n_heads:
            raise EditError(
                f"{self!r}: the attention output projection reads {width} inputs, which do not split into "
                f"{adapter.n_heads} equal heads; this model's heads cannot be told apart in its weights."
            )
        size = width // adapter.n_heads
        return [
            Change(proj.weight, _input_index(proj, head * size, (head + 1) * size), _scale(self.factor),
                   _names(adapter)[id(proj.weight)])
        ]


@dataclass(frozen=True)
class ScaleNeuron(_OneLayerScale):
    """Multiply one MLP neuron's activation, as the down projection reads it, by ``factor``."""

    layer: int
    neuron: int
    factor: float

    def changes(self, adapter: Adapter) -> list[Change]:
        _check_factor(self, self.factor)
        layer = _check_layer(adapter, self.layer, self)
        down = _layer_part(adapter, layer, "neurons", self)
        width = _in_features(down)
        if isinstance(self.neuron, bool) or not isinstance(self.neuron, int) or not 0 <= self.neuron < width:
            raise EditError(f"{self!r}: neuron {self.neuron!r} is out of range: layer {layer} has neurons 0..{width - 1}.")
        return [
            Change(down.weight, _input_index(down, self.neuron, self.neuron + 1), _scale(self.factor),
                   _names(adapter)[id(down.weight)])
        ]


_SUBLAYERS = {"attention": "attention_output", "mlp": "neurons"}


@dataclass(frozen=True)
class ScaleLayer(_OneLayerScale):
    """Multiply a whole layer's attention or MLP output (weights and bias of its output projection)."""

    layer: int
    part: str  # "attention" or "mlp"
    factor: float

    def changes(self, adapter: Adapter) -> list[Change]:
        _check_factor(self, self.factor)
        if self.part not in _SUBLAYERS:
            raise EditError(f"{self!r}: part must be 'attention' or 'mlp', got {self.part!r}.")
        layer = _check_layer(adapter, self.layer, self)
        proj = _layer_part(adapter, layer, _SUBLAYERS[self.part], self)
        names = _names(adapter)
        out = [Change(proj.weight, (), _scale(self.factor), names[id(proj.weight)])]
        if getattr(proj, "bias", None) is not None:
            out.append(Change(proj.bias, (), _scale(self.factor), names[id(proj.bias)]))
        return out


@dataclass(frozen=True)
class AddNoise(Edit):
    """Add seeded Gaussian noise to every weight matrix of a module, σ relative to each matrix's RMS.

    ``where`` is a layer index (the whole transformer block), a part of a layer as ``(layer, part)``
    with part one of ``"attention"``, ``"mlp"``, ``"attention_output"``, ``"neurons"``, or a module
    name as in ``model.named_modules()`` (e.g. ``"model.embed_tokens"``).
    """

    where: int | tuple[int, str] | str
    sigma: float
    seed: int = 0

    @property
    def neutral(self) -> bool:
        return self.sigma == 0

    def module(self, adapter: Adapter) -> nn.Module:
        where = self.where
        if isinstance(where, int) and not isinstance(where, bool):
            return adapter.layers[_check_layer(adapter, where, self)]
        if isinstance(where, tuple) and len(where) == 2:
            return _named_part(adapter, _check_layer(adapter, where[0], self), where[1], self)
        if isinstance(where, str):
            try:
                return adapter.model.get_submodule(where)
            except AttributeError:
                raise EditError(
                    f"{self!r}: the model has no module named {where!r}; use a name from model.named_modules(), "
                    "a layer index, or (layer, 'attention'|'mlp')."
                ) from None
        raise EditError(f"{self!r}: where must be a layer index, (layer, part) or a module name, got {where!r}.")

    def _params(self, adapter: Adapter) -> list[torch.Tensor]:
        seen, out = set(), []
        for p in self.module(adapter).parameters():
            if p.dim() >= 2 and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        if not out:
            raise EditError(f"{self!r}: the module has no weight matrices to add noise to; pick a layer or a linear layer.")
        return out

    def layers(self, adapter: Adapter) -> set[int]:
        where_of = _positions(adapter)
        return {where_of.get(id(p), -1) for p in self._params(adapter)}

    def changes(self, adapter: Adapter) -> list[Change]:
        sigma = self.sigma
        if not _finite_number(sigma) or sigma < 0:
            raise EditError(f"{self!r}: sigma must be a finite number ≥ 0 (relative to each weight's RMS), got {sigma!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise EditError(f"{self!r}: seed must be an int, got {self.seed!r}.")
        names = _names(adapter)
        out = []
        for p in self._params(adapter):
            pnames = names.get(id(p), ("",))
            out.append(Change(p, (), _noise(self.sigma, self.seed, pnames[0]), pnames))
        return out


def _noise(sigma: float, seed: int, name: str) -> Callable[[torch.Tensor], Any]:
    def add(view: torch.Tensor) -> None:
        if sigma == 0:
            return
        generator = torch.Generator(device=view.device)
        # A seed per parameter, stable across runs (Python's hash() is salted per process).
        generator.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
        rms = view.float().pow(2).mean().sqrt()
        noise = torch.randn(view.shape, generator=generator, device=view.device, dtype=torch.float32)
        view.add_((noise * (sigma * rms)).to(view.dtype))

    return add


def AblateHead(layer: int, head: int) -> ScaleHead:
    """Switch one attention head off: ``ScaleHead(layer, head, 0.0)``."""
    return ScaleHead(layer, head, 0.0)


def AblateNeuron(layer: int, neuron: int) -> ScaleNeuron:
    """Switch one MLP neuron off: ``ScaleNeuron(layer, neuron, 0.0)``."""
    return ScaleNeuron(layer, neuron, 0.0)


# --- which layer an edit reaches first --------------------------------------------------------------


def _positions(adapter: Adapter) -> dict[int, int]:
    """id(parameter) -> layer index; -1 for anything before the layers, n_layers for the head after them.

    A parameter shared by the embeddings and the unembedding (tied weights) counts as -1: changing it
    changes what layer 0 receives.
    """
    cached = _POSITIONS.get(adapter.model)
    if cached is not None:
        return cached
    n = adapter.n_layers
    out: dict[int, int] = {}
    for i, layer in enumerate(adapter.layers):
        for p in layer.parameters():
            out.setdefault(id(p), i)
    after = [m for m in (adapter.final_norm(), adapter.unembedding()) if m is not None]
    inside = {id(m) for root in [*adapter.layers, *after] for m in root.modules()}
    after_ids = {id(p) for m in after for p in m.parameters()}
    before_ids = {
        id(p) for m in adapter.model.modules() if id(m) not in inside for p in m.parameters(recurse=False)
    }
    for p in adapter.model.parameters():
        if id(p) not in out:
            out[id(p)] = n if id(p) in after_ids and id(p) not in before_ids else -1
    _POSITIONS[adapter.model] = out
    return out


def first_layer(model_or_adapter, edits: Iterable[Edit]) -> int | None:
    """The first layer the edits change (-1: the embeddings; ``n_layers``: only the final norm/head).

    ``None`` when there are no edits.
    """
    adapter = model_or_adapter if isinstance(model_or_adapter, Adapter) else Adapter.of(model_or_adapter)
    layers = [min(e.layers(adapter)) for e in edits]
    return min(layers) if layers else None


def layer_edits(adapter: Adapter, edits: Iterable[Edit]) -> dict[int, tuple[Edit, ...]]:
    """layer index -> the edits (in order) that touch it; what two edit stacks are compared by."""
    out: dict[int, list[Edit]] = {}
    for e in perturb._checked(edits):
        for layer in e.layers(adapter):
            out.setdefault(layer, []).append(e)
    return {k: tuple(v) for k, v in out.items()}


def changed_from(adapter: Adapter, old: Iterable[Edit], new: Iterable[Edit]) -> int | None:
    """The first layer whose edits differ between two stacks (None when they change the same layers the same way)."""
    a, b = layer_edits(adapter, old), layer_edits(adapter, new)
    differing = [k for k in set(a) | set(b) if a.get(k) != b.get(k)]
    return min(differing) if differing else None


# --- the context manager ----------------------------------------------------------------------------

#: Times one slice's copy is retried when a KeyboardInterrupt is raised from inside it, before giving up.
_RESTORE_RETRIES = 3


@contextmanager
def _interrupts_held():
    """Hold back SIGINT (Ctrl-C, a Jupyter kernel interrupt) for the block, then deliver it.

    Python raises KeyboardInterrupt between any two bytecodes, so a restore loop can be stopped after
    some slices are copied back and before the rest are. Inside this block a SIGINT is only noted; on
    leaving, the previous handler gets it (by default: KeyboardInterrupt raised right there). Signals
    reach only the main thread, so elsewhere (the sliders' worker) this does nothing.
    """
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous is None:  # not the main thread, or a handler installed outside Python that could not be put back
        yield
        return
    received: list = []
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    except (ValueError, OSError):  # no signal support here (embedded interpreter, ...)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, received[0])
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt


_model_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_model_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock held while a model's weights are edited in place and while a view runs it.

    The perturbation sliders edit weights on a worker thread; a view that runs the model on the
    kernel thread meanwhile (e.g. to recompute a layer it did not keep) takes this lock first, so it
    never sees half-edited weights.
    """
    with _model_locks_guard:
        lock = _model_locks.get(model)
        if lock is None:
            lock = _model_locks[model] = threading.RLock()
        return lock


class perturb:
    """Apply a stack of edits to ``model``'s weights; restore them bit-identically when done.

    Use as a context manager (``with perturb(model, *edits): ...``) or with ``start()`` / ``stop()``.
    ``set(*edits)`` swaps the stack for another one (restoring first), which is what sliders do;
    ``reset()`` restores the exact model and empties the stack.

    Attributes
    ----------
    edits : the edits currently applied, in order.
    tied : one line per edit that changes a weight shared under several names (tied embeddings),
        saying which other modules it changes too. A warning says the same when the edit is applied.
    """

    def __init__(self, model: nn.Module, *edits: Edit, parts: ModelParts | None = None):
        self.adapter = Adapter.of(model, parts)
        self.model = model
        self._pending = self._checked(edits)
        self.edits: tuple[Edit, ...] = ()
        self.tied: list[str] = []
        self._undo: list[tuple[torch.Tensor, tuple, torch.Tensor]] = []
        self._handles: list = []  # hooks of activation edits (Edit.hooks), removed on restore

    @staticmethod
    def _checked(edits) -> tuple[Edit, ...]:
        for e in edits:
            if not isinstance(e, Edit):
                raise TypeError(
                    f"expected edits such as nbinspect.ScaleHead(layer, head, factor), got {e!r} ({type(e).__name__})."
                )
        return tuple(edits)

    @property
    def active(self) -> bool:
        return bool(self._undo) or bool(self.edits) or bool(self._handles)

    def start(self) -> perturb:
        """Apply the edits given at construction (or by the last ``set``)."""
        self._apply(self._pending)
        return self

    def stop(self) -> None:
        """Restore every touched slice exactly; safe to call twice."""
        self._restore()

    def reset(self) -> None:
        """Restore the exact model and forget the edits, keeping this object usable with ``set``."""
        self._restore()
        self._pending = ()

    def set(self, *edits: Edit) -> perturb:
        """Replace the applied edits with ``edits`` (restoring the model first)."""
        edits = self._checked(edits)
        self._restore()
        self._pending = edits
        self._apply(edits)
        return self

    def first_layer(self) -> int | None:
        return first_layer(self.adapter, self.edits)

    def __enter__(self) -> perturb:
        return self.start()

    def __exit__(self, *exc) -> bool:
        self._restore()
        return False

    def __repr__(self) -> str:
        state = "applied" if self.edits else "not applied"
        inner = ", ".join(repr(e) for e in (self.edits or self._pending))
        return f"perturb({type(self.model).__name__}, [{inner}], {state})"

    # Everything below keeps one invariant: a slice's clone is in self._undo before the slice changes,
    # so an exception (or KeyboardInterrupt) at any point leaves an undo log that restores exactly. While
    # weights change, Ctrl-C is held back (see _interrupts_held) and raised once they are consistent again.
    def _apply(self, edits: tuple[Edit, ...]) -> None:
        if self._undo or self._handles:
            self._restore()
        # Resolve every edit before touching any weight, so a bad edit changes nothing.
        resolved = [(e, e.changes(self.adapter)) for e in edits]
        hooks = [h for e in edits for h in e.hooks(self.adapter)]
        for e, changes in resolved:
            for c in changes:
                _check_editable(e, c.names[0] if c.names else _param_name(self.adapter, c.param), c.param)
        tied = []
        try:
            with _interrupts_held(), torch.no_grad():  # an interrupt held here is raised on leaving: caught below
                for e, changes in resolved:
                    for c in changes:
                        view = c.param[c.index] if c.index else c.param
                        self._undo.append((c.param, c.index, view.clone()))
                        c.apply(view)
                    shared = sorted({n for c in changes if len(c.names) > 1 for n in c.names[1:]})
                    if shared:
                        tied.append(f"{e!r} also changes {', '.join(shared)}: tied weights, one tensor under several names.")
                for module, kind, fn in hooks:
                    register = module.register_forward_hook if kind == "forward" else module.register_forward_pre_hook
                    self._handles.append(register(fn))
        except BaseException:
            self._restore()
            raise
        self.edits = edits
        self.tied = tied
        for line in tied:
            warnings.warn(line, stacklevel=3)

    def _restore(self) -> None:
        """Copy every saved slice back, newest first. A KeyboardInterrupt (a Ctrl-C, or one raised from
        inside a copy) does not stop it part way: the restore finishes, then the interrupt is raised."""
        interrupted: KeyboardInterrupt | None = None
        with _interrupts_held(), torch.no_grad():
            while self._handles:
                self._handles.pop().remove()
            retries = 0
            while self._undo:
                param, index, saved = self._undo[-1]
                try:
                    (param[index] if index else param).copy_(saved)
                except KeyboardInterrupt as e:
                    # Copying a slice again is harmless; give up only on a copy that is interrupted every time.
                    interrupted, retries = interrupted or e, retries + 1
                    if retries > _RESTORE_RETRIES:
                        raise
                    continue
                retries = 0
                self._undo.pop()
            self.edits = ()
            self.tied = []
        if interrupted is not None:
            raise interrupted
