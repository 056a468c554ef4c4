"""RouterView and the expert edit on tiny random MoE models, checked against the router's own logits
(``output_router_logits=True``): probabilities, chosen experts, loads and their CV, the bytes sent, and
ScaleExpert / AblateExpert (exact restore; an ablated expert's share is missing and nothing else moves)."""

import types

import numpy as np
import pytest
import torch
from tiny_models import MOE_FAMILIES, CharTokenizer, tiny

import nbinspect
from nbinspect import codecs
from nbinspect.adapters import Adapter
from nbinspect.moe import AblateExpert, ScaleExpert, expert_load, load_cv
from nbinspect.perturb import EditError
from nbinspect.views.router_view import RouterView

TEXT = "Routing sends each token to a few experts."


def _trace(model, text=TEXT):
    """What RouterView reads from a Trace (adapter, tokens, record.router), from one captured forward."""
    moe = bool(Adapter.of(model).router_layers())
    record = nbinspect.run(model, CharTokenizer(), text, router=moe, residual=not moe)
    return types.SimpleNamespace(adapter=Adapter.of(model), model=model, tokens=record.tokens, record=record,
                                 input_ids=record.input_ids)


def _own_router_logits(model, input_ids):
    """The router logits the model itself returns, per routed layer (in layer order)."""
    with torch.no_grad():
        out = model(input_ids=input_ids, output_router_logits=True)
    layers = Adapter.of(model).router_layers()
    logits = [t for t in out.router_logits if t is not None]
    assert len(logits) == len(layers)
    return dict(zip(layers, logits))


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_view_matches_the_routers_own_logits(family):
    model = tiny(family)
    trace = _trace(model)
    view = RouterView(trace)
    own = _own_router_logits(model, trace.input_ids)
    n = len(trace.tokens)
    k = view.top_k
    assert view.routed_layers == sorted(own) and view.reason == ""
    loads = np.frombuffer(view.loads, dtype="<i4").reshape(len(own), -1)
    cvs = np.frombuffer(view.cvs, dtype="<f4")
    for j, (layer, logits) in enumerate(sorted(own.items())):
        logits = logits.reshape(n, -1).float()
        r = view.routing(layer)
        torch.testing.assert_close(r.probs, torch.softmax(logits, -1), rtol=1e-5, atol=1e-6)
        # The chosen experts are the top-k of the router's scores (softmax, or DeepSeek's sigmoid; its
        # correction bias is zero in a fresh model, so both orders agree with the logits').
        expected = torch.topk(logits, k, dim=-1).indices
        assert torch.equal(torch.sort(r.experts, -1).values, torch.sort(expected, -1).values)
        counts = torch.bincount(expected.reshape(-1), minlength=view.n_experts)
        assert loads[j].tolist() == counts.tolist() and counts.sum() == n * k
        mean = counts.double().mean()
        assert cvs[j] == pytest.approx(float(counts.double().std(correction=0) / mean), rel=1e-5)
        # Top expert: the chosen one with the largest mixing weight.
        assert torch.equal(r.top, r.experts.gather(-1, r.weights.argmax(-1, keepdim=True)).squeeze(-1))
    # The shown layer's bytes decode to the probabilities within 1/510.
    shown = view.routing()
    assert (view.shown_probs() - shown.probs.cpu()).abs().max() <= 1 / 510 + 1e-6
    assert np.frombuffer(view.chosen, dtype="<i4").reshape(n, k).tolist() == shown.experts.tolist()
    np.testing.assert_allclose(np.frombuffer(view.chosen_weights, dtype="<f4").reshape(n, k), shown.weights.numpy(), rtol=1e-6)


def test_layer_follows_the_selection_and_dense_layers_show_the_nearest_routed_one():
    model = tiny("deepseek_v3")  # layer 0 dense, layer 1 routed
    view = RouterView(_trace(model))
    assert view.routed_layers == [1] and view.shown_layer == 1 and view.layer == 1
    view.selection.layer = 0
    assert view.displayed_layer() == 1 and view.shown_layer == 1
    model = tiny("mixtral")
    view = RouterView(_trace(model), layer=2)
    first = bytes(view.probs)
    assert view.shown_layer == 2
    view.selection.layer = 0
    assert view.shown_layer == 0 and bytes(view.probs) != first


def test_expert_selection_is_checked_and_dense_models_get_a_reason():
    view = RouterView(_trace(tiny("qwen3_moe")))
    view.expert = 3
    with pytest.raises(Exception, match="out of range"):
        view.expert = 4
    assert view.expert == 3
    dense = _trace(tiny("llama"))
    reason = RouterView.applies(dense)
    assert reason and "no mixture-of-experts router" in reason
    assert RouterView(dense).reason == reason


def test_long_texts_are_pooled_to_the_row_limit(monkeypatch):
    monkeypatch.setattr(codecs, "ROUTER_MAX_ROWS", 8)
    model = tiny("mixtral")
    view = RouterView(_trace(model))
    n = len(view.tokens)
    assert view.block == -(-n // 8) and view.rows <= 8
    probs = view.routing().probs
    block_max = torch.nn.functional.pad(probs, (0, 0, 0, view.block * view.rows - n)).reshape(view.rows, view.block, -1).amax(1)
    assert (view.shown_probs() - block_max).abs().max() <= 1 / 510 + 1e-6


def test_load_and_cv_helpers():
    experts = torch.tensor([[0, 1], [0, 2], [0, 1]])
    assert expert_load(experts, 4).tolist() == [3, 2, 1, 0]
    assert load_cv(torch.tensor([5, 5, 5, 5])) == 0.0
    assert load_cv(torch.tensor([8, 0, 0, 0])) == pytest.approx(3**0.5)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_ablate_expert_removes_only_its_share_and_restores_exactly(family):
    model = tiny(family)
    layer = Adapter.of(model).router_layers()[0]
    ids = CharTokenizer()(TEXT)["input_ids"]
    before = {n: p.clone() for n, p in model.state_dict().items()}

    def mlp_out(*edits):
        with nbinspect.perturb(model, *edits), nbinspect.capture(model, router=layer, mlp_out=layer) as rec, torch.no_grad():
            model(input_ids=ids)
        return rec.mlp_out[layer][0], rec.router[layer].experts[0]

    clean, chosen = mlp_out()
    ablated, chosen_after = mlp_out(AblateExpert(layer, 1))
    assert torch.equal(chosen, chosen_after)  # the router is left alone
    routed = (chosen == 1).any(-1)
    assert routed.any() and (~routed).any()
    assert torch.equal(ablated[~routed], clean[~routed])  # tokens not sent to expert 1: bit-identical
    assert ((ablated[routed] - clean[routed]).abs().amax(-1) > 0).all()
    # Scaling is linear in the expert's output: half the change of a full ablation.
    half, _ = mlp_out(ScaleExpert(layer, 1, 0.5))
    torch.testing.assert_close(half - clean, (ablated - clean) / 2, rtol=1e-4, atol=1e-6)
    n_experts = RouterView(_trace(model)).n_experts
    everything, _ = mlp_out(*[AblateExpert(layer, e) for e in range(n_experts)])
    if family in ("mixtral", "qwen3_moe"):  # no shared expert: nothing is left of the MLP
        assert everything.abs().max() == 0
    for name, p in model.state_dict().items():
        assert torch.equal(p, before[name]), name


def test_expert_edits_refuse_what_does_not_exist():
    model = tiny("deepseek_v3")
    with pytest.raises(EditError, match="no mixture of experts.*routed layers are \\[1\\]"):
        with nbinspect.perturb(model, AblateExpert(0, 1)):
            pass
    with pytest.raises(EditError, match="out of range"):
        with nbinspect.perturb(model, AblateExpert(1, 9)):
            pass
    with pytest.raises(EditError, match="no mixture of experts"):
        with nbinspect.perturb(tiny("llama"), AblateExpert(0, 0)):
            pass
    assert AblateExpert(1, 2) == ScaleExpert(1, 2, 0.0) and not AblateExpert(1, 2).neutral
    assert ScaleExpert(1, 2, 1.0).neutral
