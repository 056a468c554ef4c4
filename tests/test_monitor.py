"""nbinspect.monitor: what a sampled step records, against values computed by hand; hooks only on sampled
steps and none after close; a training run identical with and without the monitor; bounded history."""

import copy
import math
import sys

import numpy as np
import pytest
import torch
from tiny_models import VOCAB, tiny

import nbinspect
from nbinspect import codecs
from nbinspect.monitor import EXPLODING, NONFINITE, VANISHING, History, Monitor, layer_flags


def _batch(seed=0, n=4, t=16):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, t), generator=g)
    return {"input_ids": ids, "labels": ids}


def _hook_count(model):
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
    for p in model.parameters():
        n += len(p._post_accumulate_grad_hooks or {}) + len(p._backward_hooks or {})
    return n


def _train(model, steps, every=None, optimizer_hook=True, lr=1e-2):
    """A plain loop; returns the monitor (or None) and, per step, a copy of .grad and the weights before/after."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    mon = nbinspect.monitor(model, every=every, optimizer=opt if optimizer_hook else None) if every else None
    seen = []
    for s in range(steps):
        out = model(**_batch(s))
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        if mon:
            mon.step(out.loss)
        opt.step()
        after = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen.append((out.loss.item(), grads, before, after))
        opt.zero_grad()
    if mon:
        mon.close()
    return mon, seen


def _by_layer(model, values):
    """Per-layer sqrt(sum of squares) of a name -> tensor map, for tiny llama's blocks."""
    layers = model.model.layers
    out = []
    for i in range(len(layers)):
        prefix = f"model.layers.{i}."
        out.append(math.sqrt(sum(float(v.double().square().sum()) for n, v in values.items() if n.startswith(prefix))))
    return np.array(out)


def test_sampled_steps_record_gradients_updates_and_loss_as_computed_by_hand():
    model = tiny("llama")
    mon, seen = _train(model, 7, every=3)
    h = mon.history
    assert list(h.steps) == [0, 3, 6]
    for point, step in enumerate([0, 3, 6]):
        loss, grads, before, after = seen[step]
        np.testing.assert_allclose(h.grad_layer[point], _by_layer(model, grads), rtol=1e-5)
        total = math.sqrt(sum(float(g.double().square().sum()) for g in grads.values()))
        assert h.grad_total[point] == pytest.approx(total, rel=1e-5)
        # Module types split the same total.
        assert math.sqrt(float(np.square(h.grad_type[point].astype(np.float64)).sum())) == pytest.approx(total, rel=1e-5)
        delta = {n: after[n] - before[n] for n in before}
        np.testing.assert_allclose(h.update_layer[point], _by_layer(model, delta) / _by_layer(model, before), rtol=1e-4)
        # Loss: the mean over the steps since the previous sample (step 0 alone, then 1-3, then 4-6).
        since = range(0, 1) if step == 0 else range(step - 2, step + 1)
        assert h.loss[point] == pytest.approx(np.mean([seen[s][0] for s in since]), rel=1e-5)
    assert mon.type_names == ["attention", "mlp", "norm", "embedding", "head"]


def test_update_ratio_without_the_optimizer_is_measured_at_the_next_step():
    model = tiny("llama")
    with_hook, _ = _train(copy.deepcopy(model), 5, every=2, optimizer_hook=True)
    without, _ = _train(copy.deepcopy(model), 5, every=2, optimizer_hook=False)
    np.testing.assert_allclose(without.history.update_layer, with_hook.history.update_layer, rtol=1e-6)
    assert np.isfinite(without.history.update_layer).all()


def test_activation_mean_and_std_are_those_of_each_block_output():
    model = tiny("llama")
    model.train()
    outputs = {}
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach()))
               for i, layer in enumerate(model.model.layers)]
    mon = nbinspect.monitor(model, every=1)
    try:
        out = model(**_batch())
        out.loss.backward()
        mon.step(out.loss)
        with torch.no_grad():  # an evaluation forward inside the loop is not mixed in
            model(**_batch(5))
        out = model(**_batch(1))
        out.loss.backward()
        expected = [(float(o.mean()), float(o.std(correction=0))) for _, o in sorted(outputs.items())]
        mon.step(out.loss)
    finally:
        mon.close()
        for h in handles:
            h.remove()
    np.testing.assert_allclose(mon.history.act_mean[1], [e[0] for e in expected], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mon.history.act_std[1], [e[1] for e in expected], rtol=1e-4)


def test_gradient_accumulation_reads_the_accumulated_gradient():
    model = tiny("gpt2")
    model.train()
    mon = nbinspect.monitor(model, every=1)
    for k in range(2):
        model(**_batch(k)).loss.backward()
    total = math.sqrt(sum(float(p.grad.double().square().sum()) for p in model.parameters()))
    mon.step()  # no loss given: the model output's own loss (mean of the two micro-batches)
    mon.close()
    assert mon.history.grad_total[0] == pytest.approx(total, rel=1e-5)
    assert np.isfinite(mon.history.loss[0])


def test_training_is_identical_with_and_without_the_monitor_and_hooks_are_gone():
    model = tiny("qwen2")
    before_hooks = _hook_count(model)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    _, seen_a = _train(a, 6, every=None)
    mon, seen_b = _train(b, 6, every=2)
    for (la, ga, _, wa), (lb, gb, _, wb) in zip(seen_a, seen_b):
        assert la == lb
        for n in wa:
            assert torch.equal(wa[n], wb[n]) and torch.equal(ga[n], gb[n])
    assert _hook_count(b) == before_hooks
    assert all(p.requires_grad for p in b.parameters()) and b.training


def test_hooks_exist_only_during_sampled_steps():
    model = tiny("llama")
    model.train()
    baseline = _hook_count(model)
    mon = nbinspect.monitor(model, every=3)
    counts = []
    for s in range(6):
        counts.append(_hook_count(model) - baseline)  # during step s, before its forward
        out = model(**_batch(s))
        out.loss.backward()
        mon.step(out.loss)
        model.zero_grad()
    mon.close()
    n_params, n_layers = len(list(model.parameters())), len(model.model.layers)
    # Step 0: parameter and block hooks plus the model-output hook (dropped once a loss is passed).
    assert counts[0] == n_params + n_layers + 1
    assert counts[1] == counts[2] == counts[4] == counts[5] == 0
    assert counts[3] == n_params + n_layers
    assert _hook_count(model) == baseline


def test_context_manager_removes_hooks_on_exceptions():
    model = tiny("gpt2")
    baseline = _hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with nbinspect.monitor(model, every=1) as mon:
            model(**_batch()).loss.backward()
            raise RuntimeError("boom")
    assert mon.closed and _hook_count(model) == baseline
    with pytest.raises(RuntimeError, match="closed"):
        mon.step(1.0)


def test_history_is_bounded_and_halves_by_averaging_pairs():
    h = History(n_layers=2, n_types=1, max_points=8)
    values = np.arange(40, dtype=np.float64)
    for i, v in enumerate(values):
        h.add({"steps": i * 10, "loss": v, "grad_total": v, "grad_layer": [v, 2 * v], "grad_type": [v],
               "update_total": v, "update_layer": [v, v], "act_mean": [v, v], "act_std": [v, v],
               "flags": [EXPLODING if i == 13 else 0, 0], "step_flags": 0})
        assert h.n <= 8
    # 40 samples: buckets of 8 after two halvings -> 5 complete points, no partial one.
    assert h.bucket == 8 and len(h) == 5
    np.testing.assert_allclose(h.loss, values.reshape(5, 8).mean(axis=1))
    np.testing.assert_allclose(h.grad_layer[:, 1], 2 * values.reshape(5, 8).mean(axis=1))
    assert list(h.steps) == [70, 150, 230, 310, 390]  # the last step each point covers
    assert list(h.flags[:, 0]) == [0, EXPLODING, 0, 0, 0]  # step 13 lies in the second point
    h.add({**{k: 1.0 for k in History.FLOATS}, "grad_layer": [1, 1], "grad_type": [1], "update_layer": [1, 1],
           "act_mean": [1, 1], "act_std": [1, 1], "steps": 400, "flags": [0, 0], "step_flags": 0})
    assert len(h) == 6 and h.steps[-1] == 400  # the bucket being filled shows as the last point
    assert codecs.MONITOR_MAX_POINTS % 2 == 0


def test_layer_flags():
    bits = layer_flags(np.array([1.0, 1.2, 0.05, 30.0, np.inf], np.float32))
    assert list(bits) == [0, 0, VANISHING, EXPLODING, EXPLODING]
    assert list(layer_flags(np.zeros(3, np.float32))) == [VANISHING] * 3


def test_a_diverging_run_is_flagged_not_raised():
    model = tiny("gpt2")
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    with nbinspect.monitor(model, every=1, optimizer=opt) as mon:
        for s in range(4):
            out = model(**_batch(s))
            out.loss.backward()
            mon.step(out.loss)
            opt.step()
            opt.zero_grad()
    assert mon.history.step_flags[-1] & NONFINITE
    assert (mon.history.flags[-1] & EXPLODING).any()


def test_plain_modules_are_grouped_by_leaf_module():
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 1))
    with nbinspect.monitor(mlp, every=1) as mon:
        loss = mlp(torch.randn(5, 4)).square().mean()
        loss.backward()
        mon.step(loss)
    assert mon.layer_names == ["0", "2", "3", "4"]
    assert mon.type_names == ["layernorm", "linear"]
    expected = [math.sqrt(sum(float(p.grad.square().sum()) for p in m.parameters())) for m in (mlp[0], mlp[2], mlp[3], mlp[4])]
    np.testing.assert_allclose(mon.history.grad_layer[0], expected, rtol=1e-5)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="every"):
        nbinspect.monitor(tiny("gpt2"), every=0)
    with pytest.raises(TypeError, match="nn.Module"):
        nbinspect.monitor("model")


def test_view_sends_the_history_as_bytes_and_throttles(monkeypatch):
    monitor_module = sys.modules["nbinspect.monitor"]  # nbinspect.monitor is the function

    model = tiny("llama")
    model.train()
    mon = nbinspect.monitor(model, every=1)
    view = mon.view
    sends = []
    original = view.show_history
    monkeypatch.setattr(view, "show_history", lambda: (sends.append(1), original()))
    monkeypatch.setattr(monitor_module, "PUBLISH_INTERVAL_S", 3600.0)
    mon._last_publish = 0.0
    for s in range(5):
        out = model(**_batch(s))
        out.loss.backward()
        mon.step(out.loss)
        model.zero_grad()
    assert len(sends) == 1  # the first sample only: the rest wait for the interval or close()
    mon.close()
    assert len(sends) == 2 and not view.running
    for name in ("loss", "grad_total", "grad_layer", "grad_type", "update_layer", "act_mean", "act_std", "flags", "step_flags", "steps"):
        np.testing.assert_array_equal(view.series(name), getattr(mon.history, name).astype(view.series(name).dtype))
    assert view.n_points == 5 and view.samples == 5 and view.layer_names == mon.layer_names
    assert view.payload_bytes() < 2000
    with pytest.raises(Exception, match="out of range"):
        view.layer = 3
    view.layer = 2


def test_trainer_callback_records_pre_clip_gradients_and_cleans_up(tmp_path):
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    class Data(Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            b = _batch(i, n=1)
            return {k: v[0] for k, v in b.items()}

    model = tiny("gpt2")
    baseline = _hook_count(model)
    cb = nbinspect.TrainerCallback(every=2)
    view = cb.view  # displayable before training starts
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=6, learning_rate=1e-3,
                             max_grad_norm=1e-6, logging_steps=100, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=Data(), callbacks=[cb]).train()
    h = cb.monitor.history
    assert list(h.steps) == [0, 2, 4]
    assert (h.grad_total > 1e-3).all()  # measured before the Trainer clipped to 1e-6
    assert np.isfinite(h.loss).all() and np.isfinite(h.update_layer).all() and np.isfinite(h.act_std).all()
    assert cb.monitor.closed and _hook_count(model) == baseline
    assert view.n_points == 3 and not view.running
