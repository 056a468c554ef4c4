"""Every family in tests/tiny_models.py, found by hand (adapters.FAMILIES) or by structure, checked against
transformers' own eager outputs: attention patterns, the residual stream, head and MLP writes, routers,
exact perturbation and recompute from a middle layer."""

from __future__ import annotations

import copy
import inspect
import sys

import pytest
import torch
from tiny_models import ALL_FAMILIES, ENCODERS, MOE_FAMILIES, CharTokenizer, tiny

import nbinspect
from nbinspect import capture
from nbinspect.adapters import FAMILIES, Adapter, find_parts
from nbinspect.perturb import AddNoise, ScaleHead, ScaleLayer, ScaleNeuron, perturb
from nbinspect.recompute import Recompute

TOL = 1e-5
IDS = torch.tensor([[5, 17, 99, 3, 42, 8, 77, 12, 30], [9, 64, 21, 7, 88, 100, 4, 51, 66]])
# Blocks whose output is input + attention write + MLP write, with those writes exactly what the output and
# down projections return. Not so for post-norm blocks (BERT-likes), norms after each sub-layer (Gemma 2/3,
# OLMo 2) and scaled residuals (Granite).
NOT_ADDITIVE = {"bert", "roberta", "distilbert", "gemma2", "gemma3", "olmo2", "granite"}
# hidden_states[i] of output_hidden_states is the input of block i; the last is after the final norm, except
# where the head does more (OPT may project out; none of these tiny ones do).


def _kwargs(model) -> dict:
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    return {"input_ids": IDS, "attention_mask": torch.ones_like(IDS), **extra}


def _eager(model, **kw):
    """The reference: the same weights loaded into the same class with transformers' eager attention, which
    returns its weights (a copy, since older families cannot switch implementation at runtime)."""
    reference = type(model)._from_config(copy.deepcopy(model.config), attn_implementation="eager").eval()
    reference.load_state_dict(model.state_dict())
    assert reference.config._attn_implementation == "eager"
    with torch.no_grad():
        return reference(**_kwargs(reference), output_attentions=True, output_hidden_states=True, **kw)


def _linear_in(module) -> int:
    return module.weight.shape[0] if type(module).__name__ == "Conv1D" else module.in_features


def _final(out):
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: threads only add overhead, and on a shared 2-core machine they wait on each other.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", params=ALL_FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def model(family):
    return tiny(family)


def test_parts_are_found(family, model):
    adapter = Adapter.of(model)
    assert adapter.by_structure == (family not in FAMILIES)
    parts, missing = find_parts(model)
    hand = FAMILIES.get(family)
    if hand is not None:  # the structural search agrees with what was checked by hand
        for name in ("layers", "attention", "attention_output", "neurons", "final_norm", "embedding", "router", "causal"):
            assert getattr(parts, name) == getattr(hand, name), name
    assert parts.attention is not None and parts.attention_output is not None
    assert adapter.n_layers == model.config.num_hidden_layers
    assert adapter.is_causal == (family not in ENCODERS)
    assert (adapter.router_layers() != []) == (family in MOE_FAMILIES)
    assert adapter.embedding() is model.get_input_embeddings()
    weight, _ = adapter.output_projection(0)
    assert weight.shape == (32, adapter.n_heads * adapter.head_dim)


def test_uses_attention_interface_says_what_the_forward_does(family, model):
    """Whether a family's attention goes through transformers' registry changes between releases (Falcon's
    did in 5.25), so this watches a forward instead of naming families: a counting entry under the model's
    implementation name must be called by every attention layer exactly when the adapter says so."""
    from nbinspect._attention_hook import ALL_ATTENTION_FUNCTIONS, implementation_of

    adapter = Adapter.of(model)
    name = implementation_of(model)
    local = ALL_ATTENTION_FUNCTIONS._local_mapping
    had, previous = name in local, local.get(name)
    original = previous if had else ALL_ATTENTION_FUNCTIONS._global_mapping.get(name)
    called = set()

    def counting(module, *args, **kwargs):
        called.add(id(module))
        own = original or sys.modules[type(module).__module__].eager_attention_forward
        return own(module, *args, **kwargs)

    local[name] = counting
    try:
        with torch.no_grad():
            model(**_kwargs(model))
    finally:
        if had:
            local[name] = previous
        else:
            local.pop(name, None)
    through_registry = {id(adapter.attention(i)) for i in range(adapter.n_layers)} <= called
    assert adapter.uses_attention_interface() == through_registry
    assert through_registry or not called  # all layers or none: a family does not mix the two


def test_capture_matches_eager(family, model):
    adapter = Adapter.of(model)
    moe = family in MOE_FAMILIES
    with torch.no_grad():
        plain = model(**_kwargs(model))
    writes: dict[int, torch.Tensor] = {}
    handles = []
    for i in range(adapter.n_layers):
        part = "neurons" if adapter.has_part(i, "neurons") else "mlp"
        handles.append(adapter.part(i, part).register_forward_hook(
            # [batch, position, d] (OPT's MLP sees the tokens flattened), cloned: Falcon adds to it in place
            lambda m, a, out, i=i: writes.__setitem__(
                i, (out[0] if isinstance(out, tuple) else out).reshape(*IDS.shape, -1).clone())))
    kinds = dict(attention=True, heads=True, residual=True, attention_out=True, mlp_out=True)
    kinds["router" if moe else "neurons"] = True
    try:
        with capture(model, **kinds) as record, torch.no_grad():
            out = model(**_kwargs(model))
    finally:
        for h in handles:
            h.remove()
    ref = _eager(model, **({"output_router_logits": True} if moe else {}))

    if family == "falcon":  # asked for its weights, Falcon runs its own eager path (see _attention_hook)
        torch.testing.assert_close(_final(out), _final(ref), rtol=0, atol=TOL)
    else:  # capturing changes nothing the model computes
        assert torch.equal(_final(out), _final(plain))
    n, heads = IDS.shape[1], adapter.n_heads
    for i in range(adapter.n_layers):
        weights = record.attention[i]
        assert weights.dtype == torch.float32 and weights.shape == (2, heads, n, n)
        torch.testing.assert_close(weights, ref.attentions[i].float(), rtol=0, atol=TOL)
        torch.testing.assert_close(record.residual[i].before, ref.hidden_states[i], rtol=0, atol=TOL)
        if i + 1 < adapter.n_layers:
            assert torch.equal(record.residual[i].after, record.residual[i + 1].before)
        # Head writes add up to the output projection; with the MLP's write, to the block's change.
        h = record.heads[i]
        attention_write = h.writes().sum(dim=2) + (0 if h.bias is None else h.bias)
        with torch.no_grad():
            torch.testing.assert_close(attention_write, adapter.part(i, "attention_output")(h.z), rtol=0, atol=TOL)
        torch.testing.assert_close(record.attention_out[i], attention_write, rtol=0, atol=TOL)
        # What the down projection (MoE: the MLP) returned, even where the block then adds to it in place.
        assert record.mlp_out[i].shape == (2, n, 32)  # [batch, position, d] (OPT's MLP sees them flattened)
        torch.testing.assert_close(record.mlp_out[i], writes[i], rtol=0, atol=TOL)
        if family not in NOT_ADDITIVE:
            change = record.residual[i].after - record.residual[i].before
            torch.testing.assert_close(attention_write + writes[i], change, rtol=0, atol=TOL)
        if not moe:  # neurons: what the down projection reads, as wide as the MLP
            assert record.neurons[i].shape[:2] == (2, n)
            with torch.no_grad():
                torch.testing.assert_close(adapter.part(i, "neurons")(record.neurons[i]), writes[i], rtol=0, atol=TOL)
                assert record.neurons[i].shape[-1] == _linear_in(adapter.part(i, "neurons"))
    last = record.residual[adapter.n_layers - 1].after
    norm = adapter.final_norm()
    with torch.no_grad():
        torch.testing.assert_close(norm(last) if norm is not None else last, ref.hidden_states[-1], rtol=0, atol=TOL)
        if adapter.unembedding() is not None:  # the head, soft-capping and logit scales included
            normed = norm(last) if norm is not None else last
            torch.testing.assert_close(adapter.unembed(normed), _final(ref), rtol=0, atol=TOL)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_router_matches_output_router_logits(family):
    model = tiny(family)
    adapter = Adapter.of(model)
    with capture(model, router=True) as record, torch.no_grad():
        ref = model(input_ids=IDS, output_router_logits=True)
    layers = adapter.router_layers()
    assert sorted(record.router) == layers and len(ref.router_logits) == len(layers)
    k = model.config.num_experts_per_tok
    for i, logits in zip(layers, ref.router_logits):
        routing = record.router[i]
        assert routing.probs.shape == (2, IDS.shape[1], adapter.n_experts) and routing.experts.shape[-1] == k
        probs = torch.softmax(logits.float(), dim=-1)
        torch.testing.assert_close(routing.probs.reshape(-1, adapter.n_experts), probs, rtol=0, atol=1e-6)
        if family == "deepseek_v3":  # sigmoid scores plus a learnt bias choose the experts
            gate = adapter.part(i, "router")
            expected = (logits.float().sigmoid() + gate.e_score_correction_bias).topk(k, dim=-1).indices
        else:
            expected = probs.topk(k, dim=-1).indices
        assert torch.equal(routing.experts.reshape(-1, k).sort(-1).values, expected.sort(-1).values)


def test_edits_restore_exactly_and_recompute_from_the_middle(family, model):
    adapter = Adapter.of(model)
    middle = adapter.n_layers // 2
    edits = [ScaleHead(middle, 1, 0.0), AddNoise((middle, "attention"), 0.2, seed=3)]
    if adapter.parts.neurons is not None:
        edits += [ScaleNeuron(middle, 5, 3.0), ScaleLayer(middle, "mlp", 0.5)]
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = {k: v[:1] for k, v in _kwargs(model).items() if k != "use_cache"}
    rec = Recompute(model, inputs)

    def full(*edits):
        kwargs = {**_kwargs(model), **inputs}
        with torch.no_grad(), perturb(model, *edits):
            return _final(model(**kwargs))

    def output(result):
        return result.logits() if result.has_head else result.last_hidden()

    torch.testing.assert_close(output(rec.baseline), full(), rtol=0, atol=TOL)
    result = rec.run(*edits)
    assert result.from_layer == middle
    edited = full(*edits)
    assert (edited - full()).abs().max() > 1e-4  # the edits do change the output
    torch.testing.assert_close(output(result), edited, rtol=0, atol=TOL)
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def _edits(adapter, layer):
    edits = [ScaleHead(layer, 1, 0.0), AddNoise((layer, "attention"), 0.2, seed=3)]
    if adapter.parts.neurons is not None:
        edits += [ScaleNeuron(layer, 5, 3.0), ScaleLayer(layer, "mlp", 0.5)]
    return edits


def test_trace_and_its_edits_match_full_forwards(family, model):
    adapter = Adapter.of(model)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    t = nbinspect.trace(model, CharTokenizer(), "Tiny models, many families.")
    kwargs = {**_kwargs(model), **{k: v for k, v in t.inputs.items()}}
    with torch.no_grad():
        plain = _final(model(**kwargs))
    if adapter.unembedding() is not None:
        torch.testing.assert_close(t.logits, plain[0], rtol=0, atol=TOL)  # [n, vocab]
    assert sorted(t.record.residual) == list(range(adapter.n_layers))
    assert t.gradient_norms is not None and t.embedding_grad.shape == t.embeddings.shape
    assert bool(torch.isfinite(t.attribution("grad_x_input")).all())
    edits = _edits(adapter, adapter.n_layers // 2)
    edited = t.edit(*edits)
    with torch.no_grad(), perturb(model, *edits):
        expected = _final(model(**kwargs))
    assert (expected - plain).abs().max() > 1e-4
    if adapter.unembedding() is not None:
        torch.testing.assert_close(edited.logits, expected[0], rtol=0, atol=TOL)
    else:
        norm = adapter.final_norm()
        last = edited.record.residual[adapter.n_layers - 1].after
        torch.testing.assert_close(norm(last) if norm is not None else last, expected, rtol=0, atol=TOL)
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_every_registered_view_builds_or_says_why(family, model):
    from nbinspect.views.registry import VIEWS

    adapter = Adapter.of(model)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    t = nbinspect.trace(model, CharTokenizer(), "Views of every family.")
    dash = nbinspect.inspect(t, views="all")
    assert set(dash.views) | set(dash.skipped) == set(VIEWS) and not set(dash.views) & set(dash.skipped)
    for name, reason in dash.skipped.items():
        assert isinstance(reason, str) and len(reason) > 10, (name, reason)
    if adapter.parts.neurons is not None:
        assert "neurons" in dash.views
    else:  # MoE: fused experts, no single down projection
        assert "neuron" in dash.skipped["neurons"]
    assert "attention" in dash.views and "gradients" in dash.views
    edited = t.edit(ScaleHead(adapter.n_layers // 2, 1, 0.0))
    for view in dash.views.values():  # what a slider move does to each view
        view.show(edited)
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_outputs_are_kept_without_a_copy_where_no_in_place_op_follows(family, model):
    # Falcon's block adds the attention output into the MLP output in place; every other family here
    # leaves them as returned (test_capture_matches_eager would fail: captures check version counters).
    assert Adapter.of(model).outputs_kept_as_returned == (family != "falcon")


def test_a_family_found_changing_its_outputs_in_place_is_refused_once_then_copied(monkeypatch):
    from nbinspect import adapters

    monkeypatch.setattr(adapters, "OUTPUTS_KEPT_AS_RETURNED", adapters.OUTPUTS_KEPT_AS_RETURNED | {"falcon"})
    monkeypatch.setattr(adapters, "_OUTPUTS_CHANGED", set())
    model = tiny("falcon")
    adapter = Adapter.of(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="'falcon' model changed its mlp output of layer 0 in place"):
        nbinspect.trace(model, CharTokenizer(), "hello world", gradients=False)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    t = nbinspect.trace(model, CharTokenizer(), "hello world", gradients=False)  # copied from now on
    with torch.no_grad():
        for i in range(adapter.n_layers):
            torch.testing.assert_close(t.record.mlp_out[i], adapter.part(i, "neurons")(t.record.neurons[i]), rtol=0, atol=TOL)


def test_soft_capped_scores_equal_gemma2_eager():
    """Under an implementation that returns no weights (flex, flash), soft-capped scores are recomputed as eager does."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    from nbinspect._attention_hook import attention_weights

    attention = tiny("gemma2").model.layers[0].self_attn
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, 7, 8, generator=g) * 4 for heads in (4, 2, 2))
    mask = torch.zeros(7, 7).masked_fill_(torch.ones(7, 7, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)
    _, expected = eager_attention_forward(attention, q, k, v, mask[None, None], scaling=0.3, softcap=5.0)
    weights = attention_weights(attention, q, k, mask[None, None], scaling=0.3, softcap=5.0)
    torch.testing.assert_close(weights, expected, rtol=0, atol=TOL)
    assert (attention_weights(attention, q, k, mask[None, None], scaling=0.3) - expected).abs().max() > 1e-3
