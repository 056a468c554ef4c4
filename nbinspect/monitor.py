"""Watch a training run: loss, gradient norms, update sizes and activations, sampled every few steps.

A plain training loop::

    with nbinspect.monitor(model, every=10, optimizer=optimizer) as mon:
        mon                                   # the live view (display it once; it follows the run)
        for batch in data:
            loss = loss_fn(model(batch.x), batch.y)
            loss.backward()
            mon.step(loss)                    # once per optimizer step, after backward
            optimizer.step()
            optimizer.zero_grad()

and Hugging Face ``Trainer``: ``Trainer(..., callbacks=[nbinspect.TrainerCallback(every=10)])``.

What is recorded at a *sampled* step (every ``every``-th optimizer step, the first one included):

- **loss**: the mean loss over the steps since the previous sample (a running sum on the device, read
  once per sample: an unsampled step costs one addition, no host sync);
- **gradient norm** per layer and per module type (attention, mlp, norm, embedding, head, other; for
  a model nbinspect does not know, the owning module's class), and the total, taken by
  ``register_post_accumulate_grad_hook`` hooks that exist only during the sampled step's backward, so
  they see the gradient before any clipping and after every accumulated micro-batch;
- **update-to-weight ratio** per layer, ``‖W_after − W_before‖ / ‖W_before‖`` over the layer's
  parameters, from a copy of the trainable weights taken at the sampled step only and compared with
  the weights after the optimizer's step (at once through ``optimizer.register_step_post_hook`` when
  the optimizer is given; else at the next ``step()`` call) — ~1e-3 is the usual healthy size;
- **activation mean and standard deviation** per layer (the output of each transformer block, or of
  each leaf module with parameters for other models), from forward hooks that exist only during the
  sampled step and ignore forwards without gradients (evaluation inside the loop is not mixed in);
- **flags** per layer: *vanishing* when the layer's gradient norm is ``FLAG_RATIO`` (10) times below the
  median layer's (or exactly zero), *exploding* when ``FLAG_RATIO`` times above it or not finite — the
  same rule as :class:`nbinspect.GradientView`; and for the whole step, the total gradient norm
  ``FLAG_RATIO`` times below or above the median total of the run so far, or a non-finite loss.

Nothing is ever written to the model: hooks come and go with sampled steps and are all removed by
:meth:`Monitor.close` (or leaving the ``with`` block, exceptions included); weights, ``.grad``,
``requires_grad`` and training flags are only read.

History stays bounded: at most ``codecs.MONITOR_MAX_POINTS`` points per series. When full, neighbouring
points are merged in pairs (values averaged, flags OR-ed, a point keeps the last step it covers), so
the resolution halves and the history still spans the whole run; later points then each average twice
as many samples (``History.bucket``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from . import codecs
from .adapters import Adapter, ModelParts, UnsupportedModelError

#: Vanishing / exploding: this many times below / above the median (layer, or the run's history).
FLAG_RATIO = 10.0
#: The view is repainted at most this often from the training loop: a sample is a few KB, but a loop
#: sampling every few milliseconds would otherwise flood the browser with messages.
PUBLISH_INTERVAL_S = 0.5
#: Per-layer flag bits (History.flags) and per-step bits (History.step_flags).
VANISHING, EXPLODING, NONFINITE = 1, 2, 4
TYPE_ORDER = ("attention", "mlp", "norm", "embedding", "head", "other")


# --- which parameter belongs to which layer and module type -----------------------------------------
class _Groups:
    """The model's trainable parameters grouped by layer and by module type, and the modules whose
    outputs are the per-layer activations."""

    def __init__(self, model: nn.Module, layers: Sequence | None, parts: ModelParts | None):
        try:
            adapter = Adapter.of(model, parts)
        except UnsupportedModelError:
            adapter = None
        named = dict(model.named_modules())
        if layers is not None:
            modules = [named[m] if isinstance(m, str) else m for m in layers]
            names = [m if isinstance(m, str) else self._name_of(model, m) for m in layers]
        elif adapter is not None:
            modules = list(adapter.layers)
            names = [f"layer {i}" for i in range(len(modules))]
        else:
            leaves = [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
            names, modules = [n or type(m).__name__ for n, m in leaves], [m for _, m in leaves]
        if not modules:
            raise ValueError(f"{type(model).__name__} has no modules with parameters to monitor.")
        self.layer_modules = modules
        self.layer_names = names
        owner_layer = {}
        for i, module in enumerate(modules):
            for p in module.parameters():
                owner_layer.setdefault(id(p), i)
        attention_prefixes = ()
        if adapter is not None:
            attention_prefixes = tuple({adapter.parts.attention.split(".")[0] + ".", adapter.parts.attention_output.split(".")[0] + "."})
        type_of: dict[int, str] = {}
        embedding = adapter.embedding() if adapter is not None else None
        head = adapter.unembedding() if adapter is not None else None
        block_ids = {id(m) for m in modules}
        for name, module in model.named_modules():
            for p in module.parameters(recurse=False):
                if id(p) in type_of:
                    continue
                if adapter is None:
                    type_of[id(p)] = type(module).__name__.lower()
                elif module is embedding or isinstance(module, nn.Embedding):
                    type_of[id(p)] = "embedding"
                elif module is head:
                    type_of[id(p)] = "head"
                elif "norm" in type(module).__name__.lower():
                    type_of[id(p)] = "norm"
                else:
                    type_of[id(p)] = self._block_part(name, model, block_ids, attention_prefixes)
        seen = set()
        self.params: list[torch.Tensor] = []
        for p in model.parameters():
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            self.params.append(p)
        found = {type_of[id(p)] for p in self.params}
        self.type_names = [t for t in TYPE_ORDER if t in found] + sorted(found - set(TYPE_ORDER))
        device = self.params[0].device if self.params else torch.device("cpu")
        # -1: a parameter outside every layer (the embedding, the head): counted in types and the total only.
        self.layer_index = torch.tensor([owner_layer.get(id(p), -1) for p in self.params], dtype=torch.long)
        self.type_index = torch.tensor([self.type_names.index(type_of[id(p)]) for p in self.params], dtype=torch.long)
        self.in_layer = self.layer_index >= 0
        self.device = device

    @staticmethod
    def _name_of(model: nn.Module, module: nn.Module) -> str:
        return next((n for n, m in model.named_modules() if m is module), type(module).__name__)

    @staticmethod
    def _block_part(name: str, model: nn.Module, block_ids: set[int], attention_prefixes: tuple[str, ...]) -> str:
        # The part of the block that holds this module: "self_attn.q_proj" -> attention.
        path = name.split(".")
        for k in range(len(path), 0, -1):
            if id(model.get_submodule(".".join(path[:k]))) in block_ids:
                rest = ".".join(path[k:]) + "."
                return "attention" if rest.startswith(attention_prefixes) else "mlp"
        return "other"

    @property
    def n_layers(self) -> int:
        return len(self.layer_modules)

    def by_layer(self, squares: torch.Tensor) -> torch.Tensor:
        """Per-parameter squared norms (host float64) -> per-layer norms."""
        out = torch.zeros(self.n_layers, dtype=torch.float64)
        out.index_add_(0, self.layer_index[self.in_layer], squares[self.in_layer])
        return out.sqrt()

    def by_type(self, squares: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(self.type_names), dtype=torch.float64)
        out.index_add_(0, self.type_index, squares)
        return out.sqrt()


# --- bounded history ------------------------------------------------------------------------------
class History:
    """Time series of sampled steps, at most ``max_points`` long (see the module docs for the halving).

    Arrays (numpy, ``[points]`` or ``[points, layers]`` / ``[points, types]``): ``steps`` (the last step
    each point covers), ``loss``, ``grad_total``, ``grad_layer``, ``grad_type``, ``update_total``,
    ``update_layer``, ``act_mean``, ``act_std`` (float32, NaN where not measured), ``flags`` (uint8 bits
    VANISHING / EXPLODING per layer) and ``step_flags`` (VANISHING / EXPLODING / NONFINITE per point).
    """

    FLOATS = ("loss", "grad_total", "grad_layer", "grad_type", "update_total", "update_layer", "act_mean", "act_std")
    FLAGS = ("flags", "step_flags")

    def __init__(self, n_layers: int, n_types: int, max_points: int = codecs.MONITOR_MAX_POINTS):
        if max_points < 2 or max_points % 2:
            raise ValueError(f"max_points must be an even number ≥ 2, got {max_points}.")
        self.max_points = max_points
        self.bucket = 1  # samples per point
        self.n = 0
        self.samples = 0
        width = {"grad_layer": n_layers, "update_layer": n_layers, "act_mean": n_layers, "act_std": n_layers,
                 "grad_type": n_types, "flags": n_layers}
        self._data = {"steps": np.zeros(max_points, np.int64)}
        for name in self.FLOATS:
            self._data[name] = np.full((max_points, width[name]) if name in width else max_points, np.nan, np.float32)
        for name in self.FLAGS:
            self._data[name] = np.zeros((max_points, width[name]) if name in width else max_points, np.uint8)
        self._pending: list[dict] = []

    def add(self, sample: dict) -> None:
        """One sampled step: ``step`` and every series (flag series as uint8 bits)."""
        self.samples += 1
        self._pending.append(sample)
        if len(self._pending) == self.bucket:
            if self.n == self.max_points:
                self._halve()  # the bucket being filled now needs twice as many samples
                return
            point = self._merge(self._pending)
            for name, value in point.items():
                self._data[name][self.n] = value
            self.n += 1
            self._pending = []

    @staticmethod
    def _merge(samples: list[dict]) -> dict:
        out = {"steps": samples[-1]["steps"]}
        for name in History.FLOATS:
            values = np.stack([np.asarray(s[name], np.float32) for s in samples])
            out[name] = values.mean(axis=0)  # a NaN (a diverged step) stays visible as NaN
        for name in History.FLAGS:
            out[name] = np.bitwise_or.reduce(np.stack([np.asarray(s[name], np.uint8) for s in samples]), axis=0)
        return out

    def _halve(self) -> None:
        n = self.n
        for name, array in self._data.items():
            pairs = array[:n].reshape(n // 2, 2, *array.shape[1:])
            if name == "steps":
                merged = pairs[:, 1]
            elif name in self.FLAGS:
                merged = pairs[:, 0] | pairs[:, 1]
            else:
                merged = pairs.mean(axis=1)
            array[: n // 2] = merged
            array[n // 2 :] = np.nan if array.dtype == np.float32 else 0
        self.n = n // 2
        self.bucket *= 2

    def __len__(self) -> int:
        return self.n + (1 if self._pending else 0)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every series, completed points first and the bucket being filled (if any) as the last point."""
        out = {name: array[: self.n].copy() for name, array in self._data.items()}
        if self._pending:
            point = self._merge(self._pending)
            for name in out:
                out[name] = np.concatenate([out[name], np.asarray(point[name], out[name].dtype)[None]])
        return out

    def __getattr__(self, name: str) -> np.ndarray:
        if name.startswith("_") or name not in self._data:
            raise AttributeError(name)
        return self.arrays()[name]


def layer_flags(norms: np.ndarray) -> np.ndarray:
    """VANISHING / EXPLODING bits per layer from one step's per-layer gradient norms (see the module docs)."""
    bits = np.zeros(norms.shape, np.uint8)
    finite = np.isfinite(norms)
    bits[~finite] |= EXPLODING
    positive = norms[finite & (norms > 0)]
    if positive.size:
        median = float(np.median(positive))
        bits[finite & (norms < median / FLAG_RATIO)] |= VANISHING
        bits[finite & (norms > median * FLAG_RATIO)] |= EXPLODING
    else:
        bits[finite] |= VANISHING
    return bits


# --- the monitor ----------------------------------------------------------------------------------
class Monitor:
    """Samples a training run every ``every`` optimizer steps; see :func:`monitor` and the module docs.

    ``history`` holds what was recorded (:class:`History`); ``view`` is the live :class:`MonitorView`
    (created on first use; displaying the monitor displays it).
    """

    def __init__(self, model: nn.Module, every: int = 10, *, optimizer: torch.optim.Optimizer | None = None,
                 layers: Sequence | None = None, parts: ModelParts | None = None,
                 max_points: int = codecs.MONITOR_MAX_POINTS, updates: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"monitor needs a torch.nn.Module, got {type(model).__name__}.")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a whole number ≥ 1 (sample every N optimizer steps), got {every!r}.")
        self.model = model
        self.every = every
        self.updates = updates
        self._groups = _Groups(model, layers, parts)
        self.history = History(self._groups.n_layers, len(self._groups.type_names), max_points)
        self.step_count = 0  # optimizer steps seen
        self.closed = False
        self._view = None
        self._last_publish = 0.0
        self._loss_sum: torch.Tensor | float = 0.0
        self._loss_n = 0
        self._out_loss_sum: torch.Tensor | float = 0.0
        self._out_loss_n = 0
        self._armed: list = []  # hook handles that live for one sampled step
        self._grad_norms: dict[int, torch.Tensor] = {}
        self._acts: list[list[tuple[int, torch.Tensor, torch.Tensor]]] = []
        self._pending: tuple[dict, list[torch.Tensor]] | None = None  # a sample waiting for its update
        self._sampling = False
        self._handles = [model.register_forward_hook(self._on_model_output)]
        self._optimizer_handle = optimizer.register_step_post_hook(self._after_optimizer_step) if optimizer else None
        self._begin(0)

    # --- public --------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return list(self._groups.layer_names)

    @property
    def type_names(self) -> list[str]:
        return list(self._groups.type_names)

    @property
    def view(self):
        if self._view is None:
            from .views.monitor_view import MonitorView

            self._view = MonitorView(self)
        return self._view

    def _repr_mimebundle_(self, **kwargs):
        return self.view._repr_mimebundle_(**kwargs)

    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Call once per optimizer step, after ``backward()`` (before or after ``optimizer.step()``).

        ``loss``: this step's loss (a tensor is read without a host sync); ``None`` uses the ``loss`` the
        model's own output carried (Hugging Face models given ``labels``).
        """
        self._check_open()
        if loss is not None:
            if self._handles:  # the loss comes from the caller: the output hook is not needed any more
                for handle in self._handles:
                    handle.remove()
                self._handles = []
            self._loss_sum = self._loss_sum + (loss.detach().float() if isinstance(loss, torch.Tensor) else float(loss))
            self._loss_n += 1
        if self._pending is not None and self._optimizer_handle is None:
            self._finish_update()  # the weights have been updated once since the sample was taken
        if self._sampling:
            self._collect()
        self._begin(self.step_count + 1)

    def flush(self) -> None:
        """Send the latest history to the view now (the loop sends at most every PUBLISH_INTERVAL_S)."""
        if self._view is not None:
            self._view.show_history()
            self._last_publish = time.monotonic()

    def close(self) -> None:
        """Remove every hook, drop the weight copy and send the final history; the model is as it was."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._pending is not None:
                self._finish_update(final=True)
        finally:
            self._disarm()
            for handle in self._handles:
                handle.remove()
            self._handles = []
            if self._optimizer_handle is not None:
                self._optimizer_handle.remove()
                self._optimizer_handle = None
            self._pending = None
        self.flush()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Monitor({state}, every={self.every}, steps={self.step_count}, samples={self.history.samples})"

    # --- the step cycle (also driven by TrainerCallback) ---------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this monitor is closed (its hooks are gone); start a new one with nbinspect.monitor(model).")

    def _begin(self, step: int) -> None:
        """Step ``step`` starts: arm the hooks when it is sampled."""
        self.step_count = step
        if step % self.every == 0 and not self._sampling:
            self._arm()

    def _arm(self) -> None:
        self._sampling = True
        self._grad_norms = {}
        self._acts = [[] for _ in range(self._groups.n_layers)]
        for i, p in enumerate(self._groups.params):
            self._armed.append(p.register_post_accumulate_grad_hook(self._on_grad(i)))
        for i, module in enumerate(self._groups.layer_modules):
            self._armed.append(module.register_forward_hook(self._on_activation(i)))

    def _disarm(self) -> None:
        handles, self._armed = self._armed, []
        for handle in handles:
            handle.remove()
        self._sampling = False

    def _on_grad(self, i: int):
        def hook(p):
            if p.grad is not None:  # after every micro-batch: the last one holds the accumulated gradient
                self._grad_norms[i] = torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float32)

        return hook

    def _on_activation(self, i: int):
        def hook(module, args, output):
            if not torch.is_grad_enabled():
                return  # evaluation inside the loop is not training
            x = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel():
                std, mean = torch.std_mean(x.detach().float(), correction=0)
                self._acts[i].append((x.numel(), mean, std))

        return hook

    def _on_model_output(self, module, args, output):
        loss = getattr(output, "loss", None) if not isinstance(output, dict) else output.get("loss")
        if isinstance(loss, torch.Tensor) and torch.is_grad_enabled():
            self._out_loss_sum = self._out_loss_sum + loss.detach().float()
            self._out_loss_n += 1

    def _take_loss(self) -> float | None:
        """The mean loss since the previous sample (``None`` when no loss was seen)."""
        if self._loss_n:
            value, n = self._loss_sum, self._loss_n
        else:
            value, n = self._out_loss_sum, self._out_loss_n
        self._loss_sum, self._loss_n, self._out_loss_sum, self._out_loss_n = 0.0, 0, 0.0, 0
        return float(value) / n if n else None

    def _collect(self) -> None:
        """The sampled step's backward is done: read gradients, activations and the loss; copy the weights."""
        g = self._groups
        self._disarm()
        params = g.params
        zero = torch.zeros((), dtype=torch.float32)
        norms = torch.stack([self._grad_norms.get(i, zero).to("cpu") for i in range(len(params))]).double() if params else torch.zeros(0, dtype=torch.float64)
        squares = norms.square()
        grad_layer = g.by_layer(squares).numpy()
        grad_type = g.by_type(squares).numpy()
        act_mean = np.full(g.n_layers, np.nan, np.float32)
        act_std = np.full(g.n_layers, np.nan, np.float32)
        for i, calls in enumerate(self._acts):
            if calls:
                act_mean[i], act_std[i] = _combine(calls)
        self._acts = []
        loss = self._take_loss()
        grad_total = float(squares.sum().sqrt())
        sample = {
            "steps": self.step_count,
            "loss": math.nan if loss is None else loss,
            "grad_total": grad_total,
            "grad_layer": grad_layer,
            "grad_type": grad_type,
            "update_total": math.nan,
            "update_layer": np.full(g.n_layers, np.nan, np.float32),
            "act_mean": act_mean,
            "act_std": act_std,
            "flags": layer_flags(grad_layer),
            "step_flags": self._step_flags(loss, grad_total),
        }
        if self.updates and params:
            self._pending = (sample, [p.detach().clone() for p in params])
        else:
            self._record(sample)

    def _step_flags(self, loss: float | None, total: float) -> int:
        bits = 0
        if not math.isfinite(total) or (loss is not None and not math.isfinite(loss)):
            bits |= NONFINITE
        past = [v for v in self.history.grad_total if math.isfinite(v) and v > 0]
        if past and math.isfinite(total):
            median = statistics.median(past)
            if total > median * FLAG_RATIO:
                bits |= EXPLODING
            elif total < median / FLAG_RATIO:
                bits |= VANISHING
        return bits

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        if self._pending is not None:
            self._finish_update()

    def _finish_update(self, final: bool = False) -> None:
        sample, before = self._pending
        self._pending = None
        g = self._groups
        after = [p.detach() for p in g.params]
        delta = torch._foreach_sub(after, before)
        moved = torch.stack([n.to("cpu") for n in torch._foreach_norm(delta)]).double().square()
        weight = torch.stack([n.to("cpu") for n in torch._foreach_norm(before)]).double().square()
        del delta, before
        if final and not bool(moved.any()):
            self._record(sample)  # closed before the optimizer stepped: no update to measure
            return
        with np.errstate(divide="ignore", invalid="ignore"):
            sample["update_layer"] = (g.by_layer(moved) / g.by_layer(weight)).numpy()
            sample["update_total"] = float(moved.sum().sqrt() / weight.sum().sqrt())
        self._record(sample)

    def _record(self, sample: dict) -> None:
        self.history.add(sample)
        if self._view is not None and time.monotonic() - self._last_publish >= PUBLISH_INTERVAL_S:
            self.flush()


def _combine(calls: list[tuple[int, torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Mean and standard deviation over several forwards (micro-batches) from each one's own (n, mean, std)."""
    values = torch.stack([torch.stack([m.to("cpu"), s.to("cpu")]) for _, m, s in calls]).double()
    counts = torch.tensor([n for n, _, _ in calls], dtype=torch.float64)
    means, stds = values[:, 0], values[:, 1]
    total = counts.sum()
    mean = (counts * means).sum() / total
    var = (counts * (stds.square() + (means - mean).square())).sum() / total
    return float(mean), float(var.sqrt())


def monitor(model: nn.Module, every: int = 10, *, optimizer: torch.optim.Optimizer | None = None,
            layers: Sequence | None = None, parts: ModelParts | None = None, updates: bool = True) -> Monitor:
    """Watch ``model`` train: call ``mon.step(loss)`` once per optimizer step, after ``backward()``.

    every: sample one optimizer step in this many (the first included); unsampled steps cost one
        addition. optimizer: measure each sampled update right after ``optimizer.step()`` (without it,
        at the next ``step()`` call). layers: the modules (or their names) whose outputs are the
        per-layer activations and whose parameters form a layer's gradient (default: the transformer
        blocks, or every module with parameters of its own). updates: ``False`` skips the weight copy
        taken at sampled steps (for models too large to copy; no update-to-weight ratio then).

    Returns a :class:`Monitor`; display it for the live view, use it as a context manager (or call
    ``close()``) to remove its hooks. See :mod:`nbinspect.monitor` for what each series means.
    """
    return Monitor(model, every, optimizer=optimizer, layers=layers, parts=parts, updates=updates)


def _trainer_callback_base():
    try:
        from transformers import TrainerCallback as Base
    except ImportError:  # transformers missing: still usable as a plain object
        Base = object
    return Base


class TrainerCallback(_trainer_callback_base()):
    """A Hugging Face ``Trainer`` callback that runs a :class:`Monitor` over the training.

    ``cb = nbinspect.TrainerCallback(every=10); cb`` shows the live view (it fills in when training
    starts); ``Trainer(..., callbacks=[cb]).train()``. ``cb.monitor`` is the monitor of the latest
    ``train()``; its hooks are removed when training ends. Gradient norms are taken before the
    Trainer clips them; the loss is the model output's ``loss``.
    """

    def __init__(self, every: int = 10, *, layers: Sequence | None = None, parts: ModelParts | None = None,
                 updates: bool = True):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a whole number ≥ 1 (sample every N optimizer steps), got {every!r}.")
        self.every = every
        self._options = dict(layers=layers, parts=parts, updates=updates)
        self.monitor: Monitor | None = None
        self._view = None

    @property
    def view(self):
        if self._view is None:
            if self.monitor is not None:
                self._view = self.monitor.view
            else:
                from .views.monitor_view import MonitorView

                self._view = MonitorView()
        return self._view

    def _repr_mimebundle_(self, **kwargs):
        return self.view._repr_mimebundle_(**kwargs)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.monitor is not None:
            self.monitor.close()
        # The Trainer steps the optimizer itself: measure updates in on_optimizer_step, not by a hook.
        self.monitor = Monitor(model, self.every, **self._options)
        self.monitor._begin(state.global_step)
        if self._view is not None:  # shown before training: that view follows this monitor
            self.monitor._view = self._view
            self._view.attach(self.monitor)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.monitor is not None and not self.monitor.closed:
            self.monitor._begin(state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        mon = self.monitor
        if mon is not None and not mon.closed and mon._sampling:
            mon._collect()

    def on_optimizer_step(self, args, state, control, **kwargs):
        mon = self.monitor
        if mon is not None and not mon.closed and mon._pending is not None:
            mon._finish_update()

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.close()
