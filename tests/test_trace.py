"""The Trace: one forward and one backward feed every view; edits re-run from the edited layer, exactly."""

from __future__ import annotations

import pytest
import torch

import nbinspect
from nbinspect import _attention_hook
from tiny_models import CharTokenizer, tiny

TEXT = "the cat sat on the mat"
FAMILIES = ["llama", "gpt2", "bert", "mixtral", "gpt_neox"]


def state(model):
    """Everything a trace must leave as it was."""
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
        "modules": [id(m) for m in model.modules()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "attn": model.config._attn_implementation,
        "registry": dict(_attention_hook.ALL_ATTENTION_FUNCTIONS._local_mapping),
    }


def assert_unchanged(model, before):
    after = state(model)
    assert all(torch.equal(before["weights"][k], v) for k, v in after["weights"].items())
    for key in ("hooks", "modules", "training", "requires_grad", "grads", "attn", "registry"):
        assert after[key] == before[key], key


def manual(model, ids, target_of):
    """Parameter gradient norms per block and d target / d input embeddings, by plain autograd."""
    emb = model.get_input_embeddings()
    x = emb(ids)
    x.retain_grad()
    params = [p for p in model.parameters()]
    out = model(inputs_embeds=x)
    value = target_of(out)
    grads = torch.autograd.grad(value, params + [x], allow_unused=True)
    by_param = {id(p): g for p, g in zip(params, grads[:-1]) if g is not None}
    layers = model.base_model.layers if hasattr(model.base_model, "layers") else None
    return value.detach(), by_param, grads[-1].detach(), x.detach()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_gradients_equal_manual_autograd(family):
    model, tok = tiny(family), CharTokenizer()
    t = nbinspect.trace(model, tok, TEXT)
    ids = tok(TEXT)["input_ids"]
    token = t.target.token
    value, by_param, g_x, x = manual(model, ids, lambda out: out.logits[0, -1, token])
    torch.testing.assert_close(t.target_value, value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t.embedding_grad[0], g_x[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(t.attribution("grad_x_input"), (g_x[0] * x[0]).sum(-1), rtol=1e-5, atol=1e-7)
    names = dict(model.named_parameters(remove_duplicate=False))
    for name, norm in t.gradient_norms.parameters.items():
        g = by_param.get(id(names[name]))
        expected = 0.0 if g is None else float(torch.linalg.vector_norm(g.double()))
        assert float(norm) == pytest.approx(expected, rel=1e-5, abs=1e-9), name


@pytest.mark.parametrize("family", FAMILIES)
def test_patterns_equal_eager_and_the_model_is_left_as_it_was(family):
    model, tok = tiny(family), CharTokenizer()
    before = state(model)
    t = nbinspect.trace(model, tok, TEXT)
    assert_unchanged(model, before)
    eager = tiny(family)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        ref = eager(**tok(TEXT), output_attentions=True).attentions
    for layer in range(t.n_layers):
        maps = t.attention_maps.full(layer)
        shown = nbinspect.codecs.dequantize(maps.full, maps.full_scales)
        assert (shown - ref[layer][0]).abs().max() <= 1 / 510 + 1e-6
    assert_unchanged(model, before)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_edit_equals_a_fresh_trace_of_the_edited_model(family):
    model, tok = tiny(family), CharTokenizer()
    before = state(model)
    t = nbinspect.trace(model, tok, TEXT)
    edit = nbinspect.AblateHead(2, 1)
    edited = t.edit(edit)
    assert edited.from_layer == 2 and edited.parent is t and edited.edits == (edit,)
    with nbinspect.perturb(model, edit):
        target = t.target.token
        fresh = nbinspect.trace(model, tok, TEXT, target=target)
    assert_unchanged(model, before)
    torch.testing.assert_close(edited.target_value, fresh.target_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.stack(edited.gradient_norms.layers), torch.stack(fresh.gradient_norms.layers), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(edited.embedding_grad, fresh.embedding_grad, rtol=1e-5, atol=1e-8)
    for i in range(t.n_layers):
        torch.testing.assert_close(edited.record.residual[i].after, fresh.record.residual[i].after, rtol=1e-5, atol=1e-6)
    # Layers before the edit are shared with the parent, not recomputed.
    assert edited.record.residual[1].after is t.record.residual[1].after
    # A second edit from the edited trace at an earlier layer, then back to none: exact each time.
    again = edited.with_edits([nbinspect.ScaleHead(1, 0, 0.5)])
    with nbinspect.perturb(model, nbinspect.ScaleHead(1, 0, 0.5)):
        fresh2 = nbinspect.trace(model, tok, TEXT, target=target)
    torch.testing.assert_close(torch.stack(again.gradient_norms.layers), torch.stack(fresh2.gradient_norms.layers), rtol=1e-5, atol=1e-8)
    back = again.with_edits([])
    torch.testing.assert_close(back.target_value, t.target_value, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.stack(back.gradient_norms.layers), torch.stack(t.gradient_norms.layers), rtol=1e-5, atol=1e-8)
    assert_unchanged(model, before)


def test_inspect_runs_one_forward_and_one_backward():
    model, tok = tiny("llama"), CharTokenizer()
    calls = {"model": 0, "layer0": 0, "head": 0, "backward": 0}

    def count(name):
        def hook(*args):
            calls[name] += 1
        return hook

    model.register_forward_pre_hook(count("model"))
    model.model.layers[0].register_forward_pre_hook(count("layer0"))
    model.lm_head.register_forward_pre_hook(count("head"))
    # Accumulated once per backward pass that reaches the first block.
    model.model.layers[0].self_attn.q_proj.weight.register_post_accumulate_grad_hook(count("backward"))
    d = nbinspect.inspect(model, tok, TEXT)
    assert d.perturb.wait()
    # The head runs once in the forward; direct logit attribution then reads the unembedding once more for
    # its target direction (a reduction on the trace, not a run of the model).
    assert (calls["model"], calls["layer0"], calls["backward"]) == (1, 1, 1) and calls["head"] <= 2
    # Every view and the sliders read that one trace.
    assert d.attention.trace is d.neurons.trace is d.gradients.trace is d.perturb.base is d.trace


def test_replay_reruns_only_the_blocks_asked_for():
    model, tok = tiny("llama"), CharTokenizer()
    t = nbinspect.trace(model, tok, TEXT, gradients=False)
    ran = []
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: ran.append(i))
    record = t.replay([1], requests={"attention": True})
    assert ran == [1]
    full = t.attention_maps.full(1)
    shown = nbinspect.codecs.dequantize(full.full, full.full_scales)
    assert (shown - record.attention[1][0]).abs().max() <= 1 / 510 + 1e-6


def test_targets():
    model, tok = tiny("gpt2"), CharTokenizer()
    t = nbinspect.trace(model, tok, TEXT, target="a", foil="b", position=3)
    logits = t.logits[3]
    assert t.target.kind == "contrast"
    torch.testing.assert_close(t.target_value, logits[ord("a")] - logits[ord("b")])
    loss = nbinspect.trace(model, tok, TEXT, target="loss")
    with torch.no_grad():
        expected = model(**tok(TEXT), labels=tok(TEXT)["input_ids"]).loss
    torch.testing.assert_close(loss.target_value, expected)
    moved = t.retarget("c")
    assert moved.target.token == ord("c") and moved.target.position == 3
    assert moved.record.residual[0].after is t.record.residual[0].after  # the forward is reused


class PiecesTokenizer(CharTokenizer):
    """One token per character, so a two-letter target is two tokens."""


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(text=""), ValueError, "empty"),
        (dict(text="x", target="loss"), ValueError, "at least two tokens"),
        (dict(target="ab"), ValueError, "2 tokens"),
        (dict(target=10_000), ValueError, "out of range"),
        (dict(text="x" * 300), ValueError, "at most 256"),
        (dict(position=99), IndexError, "position 99"),
        (dict(target="a", foil="a"), ValueError, "same token"),
        (dict(foil="b"), ValueError, "needs a target"),
        (dict(gradients="yes"), TypeError, "gradients"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(kwargs, error, words):
    model, tok = tiny("gpt2"), CharTokenizer()
    before = state(model)
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    before["hooks"] += 1
    text = kwargs.pop("text", TEXT)
    with pytest.raises(error, match=words):
        nbinspect.trace(model, tok, text, **kwargs)
    assert calls == []
    assert_unchanged(model, before)


def test_not_a_transformer_and_bad_edits():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        nbinspect.trace("gpt2", CharTokenizer(), TEXT)
    with pytest.raises(TypeError):
        nbinspect.trace(torch.nn.Linear(2, 2), CharTokenizer(), TEXT)
    model = tiny("gpt2")
    t = nbinspect.trace(model, CharTokenizer(), TEXT)
    before = state(model)
    with pytest.raises(nbinspect.EditError):
        t.edit(nbinspect.AblateHead(7, 0))
    with pytest.raises(nbinspect.EditError):
        t.edit(nbinspect.ScaleHead(0, 0, float("nan")))
    assert_unchanged(model, before)


def test_nan_weights_name_the_first_layer():
    model = tiny("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    before = state(model)
    with pytest.raises(ValueError, match="layer 1"):
        nbinspect.trace(model, CharTokenizer(), TEXT)
    for a, b in zip(before["weights"].values(), model.state_dict().values()):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())
    assert state(model)["hooks"] == before["hooks"] and state(model)["grads"] == before["grads"]


def test_head_writes_of_an_edited_trace_are_the_edited_models():
    model, tok = tiny("llama"), CharTokenizer()
    t = nbinspect.trace(model, tok, TEXT, gradients=False)
    edited = t.edit(nbinspect.AblateHead(1, 2))
    writes = edited.record.heads[1].writes()
    assert float(writes[..., 2, :].abs().max()) == 0.0  # the switched-off head writes nothing
    assert float(t.record.heads[1].writes()[..., 2, :].abs().max()) > 0
    total = writes.sum(-2) + (0 if edited.record.heads[1].bias is None else edited.record.heads[1].bias)
    torch.testing.assert_close(total, edited.record.attention_out[1], rtol=1e-5, atol=1e-6)


def test_long_inputs_without_gradients_compute_attention_once(monkeypatch):
    # Past codecs.EXACT_ATTENTION_MAX_TOKENS the captured probabilities give the attention output too:
    # within float32 rounding of the model's own forward, not bit-identical; below it, bit-identical.
    from nbinspect import codecs

    model, tok = tiny("llama"), CharTokenizer()
    text = "a longer text than the limit"
    inputs = tok(text)
    with torch.no_grad():
        reference = model(**inputs).logits
    exact = nbinspect.trace(model, tok, text, gradients=False)
    assert torch.equal(exact.record.logits, reference)
    monkeypatch.setattr(codecs, "EXACT_ATTENTION_MAX_TOKENS", 8)
    fused = nbinspect.trace(model, tok, text, gradients=False)
    torch.testing.assert_close(fused.record.logits, reference, rtol=1e-5, atol=1e-5)
    for i in range(fused.n_layers):
        assert torch.equal(fused.attention_maps.layers[i].thumbnails, exact.attention_maps.layers[i].thumbnails)
    with_grad = nbinspect.trace(model, tok, text)  # under autograd the model's own attention runs
    assert torch.equal(with_grad.record.logits.detach(), reference)
