"""Gradient norms and input attribution against a plain ``backward()``, and the model left as it was."""

import pytest
import torch
from tiny_models import FAMILIES, tiny

import nbinspect
from nbinspect.adapters import Adapter


def _ids(batch=1, n=8):
    return torch.randint(0, 128, (batch, n), generator=torch.Generator().manual_seed(3))


def _target(family):
    # BertModel has no LM head: differentiate a function of its hidden states instead.
    return (lambda out: out.last_hidden_state[:, -1].square().sum()) if family == "bert" else "loss"


def _plain_norms(model, ids, target):
    model.zero_grad(set_to_none=True)
    if target == "loss":
        value = model(input_ids=ids, labels=ids).loss
    else:
        value = target(model(input_ids=ids))
    value.backward()
    # float64, as a careful manual computation would be: float32 .norm() of a 28M-element gradient is off by ~1e-4.
    norms = {n: torch.linalg.vector_norm(p.grad.double()).float() for n, p in model.named_parameters(remove_duplicate=False) if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return norms


@pytest.mark.parametrize("family", FAMILIES)
def test_norms_match_a_plain_backward(family):
    model = tiny(family)
    ids = _ids()
    target = _target(family)
    expected = _plain_norms(model, ids, target)
    result = nbinspect.gradient_norms(model, ids, target)
    assert set(result.parameters) == set(expected)
    for name, norm in expected.items():
        torch.testing.assert_close(result.parameters[name], norm, rtol=1e-5, atol=1e-8)
    adapter = Adapter.of(model)
    assert len(result.layers) == adapter.n_layers
    block = next(n for n, m in model.named_modules() if m is adapter.layers[1])
    own = [expected[n] for n, _ in model.named_parameters() if n.startswith(block + ".")]
    torch.testing.assert_close(result.layers[1], torch.stack(own).square().sum().sqrt(), rtol=1e-5, atol=1e-8)
    assert all(p.grad is None for p in model.parameters())


def test_token_logit_target():
    model = tiny("llama")
    ids = _ids()
    result = nbinspect.gradient_norms(model, ids, 7)
    expected = _plain_norms(model, ids, lambda out: out.logits[:, -1, 7].sum())
    torch.testing.assert_close(result.parameters["lm_head.weight"], expected["lm_head.weight"], rtol=1e-5, atol=1e-8)
    with pytest.raises(IndexError, match="vocabulary"):
        nbinspect.gradient_norms(model, ids, 999)


def test_model_state_is_restored():
    model = tiny("gpt2")
    model.train()
    model.transformer.h[2].eval()  # a mixed model: each module's own flag must come back
    frozen = model.transformer.h[0].attn.c_attn.weight
    frozen.requires_grad_(False)
    had = model.transformer.h[1].mlp.c_fc.weight
    had.grad = torch.full_like(had, 0.5)
    before = had.grad
    nbinspect.gradient_norms(model, _ids(), "loss")
    nbinspect.saliency(model, _ids(), method="integrated_gradients", steps=2, progress=False)
    assert model.training and model.transformer.h[1].training and not model.transformer.h[2].training
    assert not frozen.requires_grad and frozen.grad is None
    assert had.grad is before and torch.all(had.grad == 0.5)
    assert sum(p.grad is not None for p in model.parameters()) == 1


def test_state_is_restored_after_an_error():
    model = tiny("llama")

    def broken(out):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nbinspect.gradient_norms(model, _ids(), broken)
    assert not model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters() if p._post_accumulate_grad_hooks)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_saliency_matches_autograd(family):
    model = tiny(family)
    ids = _ids()
    embeds = Adapter.of(model).embedding()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits
    token = logits[0, -1].argmax()
    (grad,) = torch.autograd.grad(logits[0, -1, token], embeds)
    torch.testing.assert_close(nbinspect.saliency(model, ids, method="grad_norm"), grad.norm(dim=-1))
    torch.testing.assert_close(nbinspect.saliency(model, ids), (grad * embeds).sum(-1).detach())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_integrated_gradients_add_up_to_the_change_in_target(family):
    model = tiny(family)
    ids = _ids()
    embeds = Adapter.of(model).embedding()(ids).detach()
    # RMSNorm jumps from 0 to x/|x| right next to an all-zero input, so Llama gets a small random baseline.
    baseline = None if family == "gpt2" else 0.02 * torch.randn(embeds.shape, generator=torch.Generator().manual_seed(0))
    scores = nbinspect.saliency(model, ids, 11, method="integrated_gradients", steps=64, baseline=baseline, progress=False)
    with torch.no_grad():
        top = model(inputs_embeds=embeds).logits[0, -1, 11]
        bottom = model(inputs_embeds=torch.zeros_like(embeds) if baseline is None else baseline).logits[0, -1, 11]
    assert scores.shape == (1, 8)
    torch.testing.assert_close(scores.sum(), top - bottom, rtol=1e-3, atol=1e-4)


def test_bert_saliency_with_a_function_target():
    model = tiny("bert")
    scores = nbinspect.saliency(model, _ids(), lambda out: out.last_hidden_state[0, 0].sum(), method="grad_norm")
    assert scores.shape == (1, 8) and torch.all(scores >= 0)
    with pytest.raises(ValueError, match="logits"):
        nbinspect.saliency(model, _ids())


def test_clear_errors():
    model = tiny("llama")
    with pytest.raises(ValueError, match="method"):
        nbinspect.saliency(model, _ids(), method="lrp")
    with pytest.raises(TypeError, match="input_ids"):
        nbinspect.gradient_norms(model, "some text")
    with pytest.raises(ValueError, match="loss"):
        nbinspect.gradient_norms(tiny("bert"), _ids(), "loss")


@pytest.mark.real_model
def test_smollm2_gradient_norms_match_backward(smollm2):
    model, tokenizer = smollm2
    inputs = tokenizer("The capital of France is Paris.", return_tensors="pt")
    expected = _plain_norms(model, inputs["input_ids"], "loss")
    result = nbinspect.gradient_norms(model, inputs, "loss")
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.29.mlp.down_proj.weight"):
        torch.testing.assert_close(result.parameters[name], expected[name], rtol=1e-5, atol=1e-8)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("scale", [1e-3, 1e-25, 1e-40, 1e25])
def test_gradient_norm_is_a_float64_norm_at_any_scale(scale):
    # Vanishing and exploding gradients are what users look for: tiny or huge values must not
    # underflow or overflow float32 squares on the fast path.
    from nbinspect.gradients import _norm64

    g = torch.randn(3 * 4096 + 17, generator=torch.Generator().manual_seed(0)) * scale
    g[::5] *= 100
    exact = torch.linalg.vector_norm(g.double())
    assert float(_norm64(g)) == pytest.approx(float(exact), rel=1e-6)
