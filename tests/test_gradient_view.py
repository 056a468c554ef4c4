"""GradientView: norms per layer and module type, flags, attribution against manual autograd, links."""

import math

import numpy as np
import pytest
import torch

import nbinspect
import importlib
from nbinspect.views import gradient_view as gv

trace_module = importlib.import_module("nbinspect.trace")  # the module, not nbinspect.trace the function
from tiny_models import CharTokenizer, tiny

TEXT = "gradients flow backwards"


def manual_attribution(model, ids):
    """grad and grad × input of the predicted next token's logit w.r.t. the input embeddings."""
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb).logits[0, -1]
    (grad,) = torch.autograd.grad(logits[logits.argmax()], emb)  # leaves the parameters' .grad alone
    return grad[0].norm(dim=-1), (grad[0] * emb[0]).sum(-1).detach()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_attribution_equals_manual_autograd(family):
    model = tiny(family)
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT)
    norm, gxi = manual_attribution(model, CharTokenizer()(TEXT)["input_ids"])
    torch.testing.assert_close(view.attribution("grad_norm"), norm.float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(view.attribution("grad_x_input"), gxi.float(), rtol=1e-5, atol=1e-7)
    assert view.scores_of == "grad_x_input"
    np.testing.assert_array_equal(np.frombuffer(view.scores, dtype=np.float32), gxi.numpy())
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_integrated_gradients_are_computed_when_asked_for():
    model = tiny("gpt2")
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT)
    assert ("attribution", "integrated_gradients") not in view.trace._cache  # not paid for until the user switches to it
    view.method = "integrated_gradients"
    assert view.scores_of == "integrated_gradients" and not view.busy
    expected = nbinspect.saliency(model, CharTokenizer()(TEXT), method="integrated_gradients", steps=trace_module.IG_STEPS, progress=False)[0]
    torch.testing.assert_close(view.attribution(), expected.float(), rtol=1e-4, atol=1e-6)
    with pytest.raises(Exception, match="choose one of"):
        view.method = "shapley"
    assert view.method == "integrated_gradients"


def test_norms_by_module_type_add_up_to_each_layer():
    model = tiny("llama")
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT, target="loss")
    for layer, total in enumerate(view.trace.gradient_norms.layers):
        parts = [r["norm"] for r in view.rows if r["layer"] == layer]
        assert {r["part"] for r in view.rows if r["layer"] == layer} == {"attention", "mlp", "norm"}
        assert math.isclose(math.sqrt(sum(p * p for p in parts)), float(total), rel_tol=1e-5)
    # Compare one type with a plain loss.backward() over that layer's attention parameters.
    model.zero_grad()
    ids = CharTokenizer()(TEXT)["input_ids"]
    model(input_ids=ids, labels=ids).loss.backward()
    attn = model.model.layers[1].self_attn
    expected = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in attn.parameters()))
    (row,) = [r for r in view.rows if r["layer"] == 1 and r["part"] == "attention"]
    assert math.isclose(row["norm"], expected, rel_tol=1e-5)
    model.zero_grad(set_to_none=True)


def test_flags_use_the_stated_ratio_to_the_median():
    norms = [1.0, 1.0, 1.0, 0.05, 20.0]
    assert gv.flag_layers(norms) == {"vanishing": [3], "exploding": [4]}
    assert gv.flag_layers([1.0, 0.2, 5.0]) == {"vanishing": [], "exploding": []}


def test_clicking_a_layer_in_the_chart_selects_it_everywhere():
    model = tiny("llama")
    sel = nbinspect.Selection()
    att = nbinspect.attention(model, CharTokenizer(), TEXT, selection=sel)
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT, selection=sel)
    # What altair's JupyterChart receives from the browser when a point of layer 2 is clicked.
    view.chart._vl_selections = {"layer_pick": {"value": {"vlPoint": {"or": [{"layer": 2}]}}, "store": []}}
    assert sel.layer == 2 and att.layer == 2 and att.focus_of[0] == 2
    sel.layer = 1  # and the chart's marker follows the selection
    assert view.chart.params.current == 1


def test_encoder_without_lm_head_uses_a_stated_target():
    view = nbinspect.gradient_flow(tiny("bert"), CharTokenizer(), TEXT)
    assert "norm of the final state" in view.target
    assert view.attribution().shape == (len(TEXT),)


def test_model_left_as_it_was_even_with_existing_grads():
    model = tiny("gpt2")
    model.train()
    p = next(model.parameters())
    p.grad = torch.full_like(p, 3.0)
    frozen = model.transformer.wte.weight
    nbinspect.gradient_flow(model, CharTokenizer(), TEXT)
    assert model.training and torch.equal(p.grad, torch.full_like(p, 3.0))
    assert all(q.requires_grad for q in model.parameters()) and frozen.requires_grad
    model.eval()


def test_a_chart_click_still_selects_after_the_view_was_shown_an_edited_trace():
    model = tiny("llama")
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT)
    view.show(view.trace.edit(nbinspect.AblateHead(1, 0)))  # a slider move: the chart gets a new spec
    view.chart._vl_selections = {"layer_pick": {"value": {"vlPoint": {"or": [{"layer": 2}]}}, "store": []}}
    assert view.selection.layer == 2
