"""The "ablate expert" slider of the perturbation panel, on tiny random MoE models: shown only for MoE
models, it follows an expert clicked in the router view, its edit changes the routed layer's output, the
panel's trace equals a fresh trace of the edited model, and the model is restored bit for bit."""

from __future__ import annotations

import pytest
import torch
import traitlets
from tiny_models import CharTokenizer, tiny

import nbinspect
from nbinspect.moe import AblateExpert, ScaleExpert
from nbinspect.views.perturb_panel import sliders
from nbinspect.views.router_view import RouterView

TEXT = "mixture of experts"


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral"])
def test_the_expert_slider_follows_the_router_view_and_its_edit_is_exact(family):
    model, tok = tiny(family), CharTokenizer()
    before = _state(model)
    base = nbinspect.trace(model, tok, TEXT, gradients=False)
    view = RouterView(base)
    panel = sliders(base, views=[view], threaded=False)
    routed = base.adapter.router_layers()
    assert panel.n_experts == base.adapter.n_experts > 1 and panel.expert_layers == routed
    assert panel.edits == ()
    # A click on an expert in the router view (the browser sets view.expert) moves the expert controls.
    layer = routed[-1]
    view.layer = layer
    expert = int(view.routing(layer).top[-1])  # the last token's top expert: its prediction must move
    other = (expert + 1) % panel.n_experts
    view.expert = expert
    assert (panel.expert_layer, panel.expert) == (layer, expert)
    assert panel.edits == ()  # selecting is not editing
    panel.expert_factor = 0.0
    assert panel.edits == (ScaleExpert(layer, expert, 0.0),) == (AblateExpert(layer, expert),)
    edited = panel.latest
    assert edited.edits == panel.edits and panel.summary["edits"] == [repr(AblateExpert(layer, expert))]
    # The routed layer's output changed; layers before it are untouched.
    assert not torch.equal(edited.record.mlp_out[layer], base.record.mlp_out[layer])
    assert edited.record.residual[layer - 1].after is base.record.residual[layer - 1].after or layer == 0
    # The panel's trace (rerun from the edited layer) equals a fresh trace of the edited model.
    with nbinspect.perturb(model, AblateExpert(layer, expert)):
        fresh = nbinspect.trace(model, tok, TEXT, gradients=False)
    torch.testing.assert_close(edited.logits, fresh.logits, rtol=1e-5, atol=1e-6)
    for i in range(base.n_layers):
        torch.testing.assert_close(edited.record.residual[i].after, fresh.record.residual[i].after, rtol=1e-5, atol=1e-6)
    assert panel.summary["positions"][-1]["kl"] > 0
    # The router view repainted from the edited trace (the sliders hand it over).
    assert view.trace is edited
    # Another expert clicked while the slider is at 0: the ablation moves to it.
    view.expert = other
    assert panel.edits == (AblateExpert(layer, other),) and panel.latest.edits == (AblateExpert(layer, other),)
    panel.reset()
    assert panel.edits == () and panel.expert_factor == 1.0
    torch.testing.assert_close(panel.latest.logits, base.logits, rtol=0, atol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_expert_controls_refuse_dense_layers_and_out_of_range_experts():
    model = tiny("qwen2_moe")
    panel = sliders(model, CharTokenizer(), TEXT, threaded=False)
    routed = panel.expert_layers
    dense = [i for i in range(panel.n_layers) if i not in routed]
    if dense:
        with pytest.raises(traitlets.TraitError, match="no router"):
            panel.expert_layer = dense[0]
    with pytest.raises(traitlets.TraitError, match="out of range"):
        panel.expert = panel.n_experts
    with pytest.raises(traitlets.TraitError, match="finite number"):
        panel.expert_factor = -1.0
    assert panel.edits == ()


def test_dense_models_have_no_expert_controls():
    panel = sliders(tiny("llama"), CharTokenizer(), TEXT, threaded=False)
    assert panel.n_experts == 0 and panel.expert_layers == []
    panel.expert_factor = 0.0
    assert panel.edits == ()  # nothing to ablate in a dense model
