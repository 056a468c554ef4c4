"""Steering: an activation edit that perturb/Recompute install as a hook and remove exactly."""

import pytest
import torch
from tiny_models import CharTokenizer, tiny

import nbinspect
from nbinspect.adapters import Adapter
from nbinspect.perturb import EditError, ScaleHead, changed_from
from nbinspect.recompute import Recompute
from nbinspect.steering import Steer, steer_preview, steering_vector

FAMILIES = ["llama", "gpt2", "gpt_neox", "qwen2"]
TEXT = "the cat sat on the"


def _no_hooks(model):
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _vector(seed=1, d=32):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_effect_equals_a_manual_hook_and_the_model_is_restored(family):
    model, tok = tiny(family), CharTokenizer()
    inputs = tok(TEXT)
    v = _vector()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(**inputs).logits

    def manual(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + 2.5 * v, *output[1:])
        return output + 2.5 * v

    handle = Adapter.of(model).layers[1].register_forward_hook(manual)
    with torch.no_grad():
        want = model(**inputs).logits
    handle.remove()
    with nbinspect.perturb(model, Steer(1, v, 2.5)) as p:
        assert p.active
        with torch.no_grad():
            got = model(**inputs).logits
    assert torch.equal(got, want) and not torch.equal(got, plain)
    assert _no_hooks(model)
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain)


def test_hook_removed_after_an_exception_and_on_set_and_reset():
    model = tiny("llama")
    with pytest.raises(RuntimeError, match="boom"):
        with nbinspect.perturb(model, Steer(0, _vector(), 1.0)):
            assert not _no_hooks(model)
            raise RuntimeError("boom")
    assert _no_hooks(model)
    p = nbinspect.perturb(model, Steer(0, _vector(), 1.0)).start()
    p.set(Steer(2, _vector(2), 1.0))
    assert sum(len(m._forward_hooks) for m in model.modules()) == 1
    p.reset()
    assert _no_hooks(model) and not p.active
    # A bad edit later in the stack applies nothing at all.
    with pytest.raises(EditError):
        nbinspect.perturb(model, Steer(0, _vector(), 1.0), Steer(1, _vector(d=7), 1.0)).start()
    assert _no_hooks(model)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_recompute_reruns_from_the_steered_layer_and_matches_a_full_forward(family):
    model, tok = tiny(family), CharTokenizer()
    inputs = tok(TEXT)
    adapter = Adapter.of(model)
    v = _vector()

    def full(*edits):
        with nbinspect.perturb(model, *edits), torch.no_grad():
            return model(**inputs).logits[0]

    rec = Recompute(model, inputs)
    stacks = [
        (Steer(1, v, 3.0),),
        (Steer(1, v, -1.0),),  # only the coefficient moves: from layer 1 again
        (Steer(1, v, -1.0), ScaleHead(2, 1, 0.0)),  # a later edit: from layer 2, steering kept once
        (Steer(1, v, -1.0), ScaleHead(2, 1, 0.5)),
        (),
    ]
    expected_start = [1, 1, 2, 2, 1]
    for edits, start in zip(stacks, expected_start):
        result = rec.run(*edits)
        assert result.from_layer == start, edits
        assert torch.allclose(result.logits()[0], full(*edits), atol=1e-5), edits
    assert _no_hooks(model)
    assert changed_from(adapter, (Steer(1, v, 1.0),), (Steer(1, v.clone(), 1.0),)) is None
    assert Steer(1, v, 1.0) == Steer(1, v.clone(), 1.0) != Steer(1, v, 2.0)
    assert Steer(1, v, 0).neutral and "32-d" in repr(Steer(1, v, 1.0))


def test_steering_vector_is_the_difference_of_mean_residuals():
    model, tok = tiny("llama"), CharTokenizer()
    adapter = Adapter.of(model)
    pos, neg = ["good day", "nice one"], ["bad day"]

    def after(text, layer):
        out = {}
        h = adapter.layers[layer].register_forward_hook(lambda m, a, o: out.setdefault("h", o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            model(**tok(text))
        h.remove()
        return out["h"][0]

    want = torch.stack([after(t, 1)[-1] for t in pos]).mean(0) - after(neg[0], 1)[-1]
    assert torch.allclose(steering_vector(model, tok, pos, neg, 1), want, atol=1e-6)
    want_mean = torch.stack([after(t, 1).mean(0) for t in pos]).mean(0) - after(neg[0], 1).mean(0)
    assert torch.allclose(steering_vector(model, tok, pos, neg, 1, position="mean"), want_mean, atol=1e-6)
    with pytest.raises(ValueError, match="position"):
        steering_vector(model, tok, pos, neg, 1, position="first")


def test_preview_before_after_kl_and_continuation():
    model, tok = tiny("llama"), CharTokenizer()
    v = _vector() * 10
    still = steer_preview(model, tok, TEXT, Steer(1, v, 0.0), k=3, new_tokens=4)
    assert still.kl == 0 and still.before == still.after and still.continuation_before == still.continuation_after
    moved = steer_preview(model, tok, TEXT, Steer(1, v, 5.0), k=3, new_tokens=4)
    assert moved.kl > 0 and moved.before == still.before and moved.after != moved.before
    assert len(moved.before) == 3 and len(moved.continuation_after) == 4
    # The continuation under steering equals a greedy loop under a manual hook, without cache.
    adapter = Adapter.of(model)
    h = adapter.layers[1].register_forward_hook(lambda m, a, o: (o[0] + 5.0 * v, *o[1:]) if isinstance(o, tuple) else o + 5.0 * v)
    ids = tok(TEXT)["input_ids"]
    with torch.no_grad():
        for _ in range(4):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    h.remove()
    assert moved.continuation_after == tok.decode(ids[0, -4:].tolist())
    assert "KL" in str(moved)
    assert _no_hooks(model)


def test_bad_steer_edits_are_refused():
    model = tiny("llama")
    for bad, match in [
        (Steer(5, _vector(), 1.0), "out of range"),
        (Steer(0, _vector(d=7), 1.0), "7 entries"),
        (Steer(0, torch.zeros(2, 32), 1.0), "1-D"),
        (Steer(0, _vector(), float("nan")), "finite"),
        (Steer(0, _vector() * float("inf"), 1.0), "NaN or infinite"),
    ]:
        with pytest.raises(EditError, match=match):
            nbinspect.perturb(model, bad).start()
    assert _no_hooks(model)


@pytest.mark.real_model
def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_smollm2_steering_moves_the_prediction(smollm2):
    model, tok = smollm2
    # Counted, not required to be zero: the session's SmolLM2 may carry transformers' own output-recording
    # hooks, installed the first time another test asked it for output_attentions/output_hidden_states.
    hooks = _hook_count(model)
    v = steering_vector(model, tok, ["I love this. It is wonderful"], ["I hate this. It is awful"], 10)
    preview = steer_preview(model, tok, "The movie was", Steer(10, v, 4.0), new_tokens=4)
    assert preview.kl > 0.01
    assert _hook_count(model) == hooks


@pytest.mark.parametrize("gradients", [False, True])
def test_trace_edit_with_steer_equals_a_full_forward_under_it(gradients):
    model, tok = tiny("llama"), CharTokenizer()
    v = _vector()
    t = nbinspect.trace(model, tok, TEXT, gradients=gradients)
    steered = t.edit(Steer(1, v, 3.0))
    with nbinspect.perturb(model, Steer(1, v, 3.0)), torch.no_grad():
        want = model(**tok(TEXT)).logits
    assert torch.allclose(steered.logits, want, atol=1e-5)
    # A later edit on top keeps the steering exactly once.
    both = steered.edit(ScaleHead(2, 0, 0.0))
    with nbinspect.perturb(model, Steer(1, v, 3.0), ScaleHead(2, 0, 0.0)), torch.no_grad():
        want = model(**tok(TEXT)).logits
    assert torch.allclose(both.logits, want, atol=1e-5)
    assert _no_hooks(model)
