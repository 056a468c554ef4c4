"""Edits change exactly what they say, and every way out of a perturbation restores bit-identical weights."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import DENSE, FAMILIES, tiny

import nbinspect  # noqa: F401  (the edits' repr must eval in nbinspect.perturb's namespace)
from nbinspect.adapters import Adapter
from nbinspect.perturb import (
    AblateHead,
    AblateNeuron,
    AddNoise,
    Change,
    Edit,
    EditError,
    ScaleHead,
    ScaleLayer,
    ScaleNeuron,
    first_layer,
    perturb,
)

HEADS = 4  # tiny models: 4 heads of 8 dims, 64 neurons, 3 layers


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def assert_exact(model, before):
    after = model.state_dict(keep_vars=True)
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k].detach()), f"{k} was not restored bit-identically"


def forward(model, ids):
    out = model(input_ids=ids) if model.config.model_type == "bert" else model(input_ids=ids, use_cache=False)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


IDS = torch.tensor([[5, 17, 99, 3, 42, 8, 77]])


# --- each edit does what it says -------------------------------------------------------------------


def _zero_input_slice(module, start, stop):
    def pre(mod, args):
        x = args[0].clone()
        x[..., start:stop] = 0
        return (x, *args[1:])

    return module.register_forward_pre_hook(pre)


@pytest.mark.parametrize("family", FAMILIES)
def test_ablating_a_head_equals_zeroing_its_output_before_the_projection(family):
    model = tiny(family)
    adapter = Adapter.of(model)
    proj = adapter.part(1, "attention_output")
    handle = _zero_input_slice(proj, 2 * 8, 3 * 8)
    with torch.no_grad():
        expected = forward(model, IDS)
    handle.remove()
    before = snapshot(model)
    with torch.no_grad(), perturb(model, AblateHead(1, 2)):
        got = forward(model, IDS)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert_exact(model, before)


@pytest.mark.parametrize("family", DENSE)
def test_ablating_a_neuron_equals_zeroing_it_where_the_down_projection_reads_it(family):
    model = tiny(family)
    adapter = Adapter.of(model)
    handle = _zero_input_slice(adapter.part(2, "neurons"), 13, 14)
    with torch.no_grad():
        expected = forward(model, IDS)
    handle.remove()
    with torch.no_grad(), perturb(model, AblateNeuron(2, 13)):
        got = forward(model, IDS)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert", "gpt_neox"])
@pytest.mark.parametrize("part", ["attention", "mlp"])
def test_scaling_a_layer_scales_its_sublayer_output(family, part):
    model = tiny(family)
    proj = Adapter.of(model).part(0, {"attention": "attention_output", "mlp": "neurons"}[part])
    handle = proj.register_forward_hook(lambda m, a, out: out * 0.25)
    with torch.no_grad():
        expected = forward(model, IDS)
    handle.remove()
    with torch.no_grad(), perturb(model, ScaleLayer(0, part, 0.25)):
        got = forward(model, IDS)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_head_edit_touches_only_that_heads_columns_and_conv1d_rows():
    llama, gpt2 = tiny("llama"), tiny("gpt2")
    for model, axis in ((llama, 1), (gpt2, 0)):  # Linear [out, in]; GPT-2 Conv1D [in, out]
        w = Adapter.of(model).part(0, "attention_output").weight
        before = w.detach().clone()
        with perturb(model, ScaleHead(0, 1, 3.0)):
            changed = (w != before).any(dim=1 - axis).nonzero().flatten().tolist()
        assert changed == list(range(8, 16))
        assert torch.equal(w, before)


def test_noise_is_seeded_and_relative_to_each_weights_rms():
    model = tiny("llama")
    w = Adapter.of(model).part(1, "neurons").weight
    rms = w.detach().pow(2).mean().sqrt()
    with perturb(model, AddNoise((1, "neurons"), 0.5, seed=7)):
        first = w.detach().clone()
    with perturb(model, AddNoise((1, "neurons"), 0.5, seed=7)):
        assert torch.equal(w, first)
    with perturb(model, AddNoise((1, "neurons"), 0.5, seed=8)):
        assert not torch.equal(w, first)
    delta_rms = (first - w.detach()).pow(2).mean().sqrt()
    assert 0.4 * rms < delta_rms < 0.6 * rms


def test_noise_on_a_layer_touches_its_matrices_and_leaves_norms_and_biases():
    model = tiny("gpt2")
    layer = Adapter.of(model).layers[2]
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    with perturb(model, AddNoise(2, 0.1)):
        changed = {n for n, p in layer.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, p in layer.named_parameters() if p.dim() >= 2}


# --- edits as values ------------------------------------------------------------------------------


def test_edits_print_as_the_code_that_makes_them_and_compare_by_value():
    edits = [ScaleHead(3, 2, 0.5), ScaleNeuron(1, 40, 0.0), AddNoise((2, "mlp"), 0.1, 3), ScaleLayer(0, "mlp", 2.0)]
    namespace = vars(sys.modules["nbinspect.perturb"])
    for e in edits:
        assert eval(repr(e), namespace) == e
    assert AblateHead(3, 2) == ScaleHead(3, 2, 0.0)
    assert repr(perturb(tiny("llama"), ScaleHead(0, 1, 0.5))).startswith("perturb(LlamaForCausalLM, [ScaleHead(")


def test_first_layer_says_where_recompute_must_start():
    model = tiny("gpt2")  # tied embeddings
    assert first_layer(model, [ScaleHead(2, 0, 0.0), ScaleNeuron(1, 0, 2.0)]) == 1
    assert first_layer(model, [AddNoise("transformer.wte", 0.1)]) == -1
    assert first_layer(model, []) is None
    llama = tiny("llama")  # untied: the unembedding only needs the head rerun
    assert first_layer(llama, [AddNoise("lm_head", 0.1)]) == 3


# --- tied, offloaded and quantized weights -----------------------------------------------------------


def test_tied_weights_are_restored_and_reported():
    model = tiny("gpt2")
    assert Adapter.of(model).tied_embeddings()
    before = snapshot(model)
    with pytest.warns(UserWarning, match=r"lm_head\.weight"):
        with perturb(model, AddNoise("transformer.wte", 0.2)) as p:
            assert any("lm_head.weight" in line for line in p.tied)
            assert not torch.equal(model.lm_head.weight, before["lm_head.weight"])
    assert_exact(model, before)


def test_offloaded_weights_get_an_error_naming_the_edit():
    model = tiny("llama")
    proj = Adapter.of(model).part(1, "attention_output")
    proj.weight = torch.nn.Parameter(torch.empty_like(proj.weight, device="meta"))
    with pytest.raises(EditError, match=r"ScaleHead\(layer=1, head=0, factor=0\.5\).*meta"):
        perturb(model, ScaleHead(1, 0, 0.5)).start()


def test_quantized_weights_get_an_error_naming_the_edit():
    model = tiny("llama")
    proj = Adapter.of(model).part(0, "neurons")
    proj.weight = torch.nn.Parameter(torch.zeros(proj.weight.shape, dtype=torch.int8), requires_grad=False)
    with pytest.raises(EditError, match=r"ScaleNeuron\(layer=0, neuron=3, factor=0\.0\).*quantized"):
        perturb(model, AblateNeuron(0, 3)).start()


@pytest.mark.parametrize(
    "edit, match",
    [
        (ScaleHead(9, 0, 0.0), "out of range"),
        (ScaleHead(0, HEADS, 0.0), "out of range"),
        (ScaleNeuron(0, 64, 0.0), "out of range"),
        (ScaleLayer(0, "norm", 2.0), "'attention' or 'mlp'"),
        (AddNoise("model.nowhere", 0.1), "no module named"),
        (AddNoise(0, -1.0), "sigma"),
        (ScaleHead(0, 0, "half"), "factor"),
    ],
)
def test_bad_edits_fail_before_any_weight_changes(edit, match):
    model = tiny("llama")
    before = snapshot(model)
    with pytest.raises(EditError, match=match):
        perturb(model, ScaleHead(1, 1, 0.0), edit).start()
    assert_exact(model, before)


def test_moe_models_refuse_neuron_edits_and_accept_head_edits():
    model = tiny("mixtral")
    with pytest.raises(EditError, match="no MLP down projection"):
        perturb(model, AblateNeuron(0, 1)).start()
    before = snapshot(model)
    with perturb(model, AblateHead(0, 1)):
        pass
    assert_exact(model, before)


def test_non_edits_are_refused():
    with pytest.raises(TypeError, match="nbinspect.ScaleHead"):
        perturb(tiny("llama"), (0, 1, 0.0))


# --- exact restore, whatever happens ------------------------------------------------------------------


class Boom(Exception):
    pass


@dataclass(frozen=True)
class FailingEdit(Edit):
    """Scales a layer's MLP weights, then raises half way through applying them."""

    layer: int

    def layers(self, adapter):
        return {self.layer}

    def changes(self, adapter):
        proj = adapter.part(self.layer, "neurons")

        def explode(view):
            view.mul_(0.5)
            raise Boom()

        return [Change(proj.weight, (slice(0, 3),), lambda v: v.mul_(2.0), ("w",)), Change(proj.weight, (), explode, ("w",))]


def test_an_exception_inside_the_block_restores_exactly():
    model = tiny("llama")
    before = snapshot(model)
    with pytest.raises(Boom):
        with perturb(model, ScaleHead(0, 1, 0.0), AddNoise(1, 0.3)):
            raise Boom()
    assert_exact(model, before)


def test_an_exception_while_applying_restores_exactly():
    model = tiny("llama")
    before = snapshot(model)
    p = perturb(model, ScaleHead(0, 1, 0.0), FailingEdit(1))
    with pytest.raises(Boom):
        p.start()
    assert_exact(model, before)
    assert not p.active


def test_start_stop_set_and_reset():
    model = tiny("gpt2")
    before = snapshot(model)
    p = perturb(model, ScaleHead(0, 0, 0.0)).start()
    p.set(ScaleNeuron(1, 2, 3.0), ScaleHead(1, 1, 0.25))
    assert p.edits == (ScaleNeuron(1, 2, 3.0), ScaleHead(1, 1, 0.25))
    assert p.first_layer() == 1
    p.reset()
    assert_exact(model, before)
    p.stop()  # twice is fine
    assert_exact(model, before)


edit_strategy = st.one_of(
    st.builds(ScaleHead, st.integers(0, 2), st.integers(0, HEADS - 1), st.sampled_from([0.0, 0.5, 1.0, 1.7, -3.0])),
    st.builds(ScaleNeuron, st.integers(0, 2), st.integers(0, 63), st.sampled_from([0.0, 0.1, 2.0])),
    st.builds(ScaleLayer, st.integers(0, 2), st.sampled_from(["attention", "mlp"]), st.sampled_from([0.0, 0.3, 1.5])),
    st.builds(
        AddNoise,
        st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.sampled_from(["attention", "mlp"])), st.just("transformer.wte")),
        st.sampled_from([0.0, 0.01, 1.0]),
        st.integers(0, 3),
    ),
    st.builds(FailingEdit, st.integers(0, 2)),
)


@pytest.fixture(scope="module")
def gpt2_with_snapshot():
    model = tiny("gpt2")  # Conv1D, biases and tied embeddings: the awkward cases together
    return model, snapshot(model)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["with", "start", "set", "reset", "stop"]), st.lists(edit_strategy, max_size=4), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_random_edit_sequences_with_exceptions_always_restore_bit_identically(gpt2_with_snapshot, steps):
    model, before = gpt2_with_snapshot
    warnings.simplefilter("ignore")  # tied-weight notes are expected here
    p = perturb(model)
    try:
        for action, edits, raise_inside in steps:
            try:
                if action == "with":
                    with perturb(model, *edits):
                        if raise_inside:
                            raise Boom()
                    if not p.active:
                        assert_exact(model, before)
                elif action == "start":
                    p.stop()
                    p = perturb(model, *edits)
                    p.start()
                elif action == "set":
                    p.set(*edits)
                elif action == "reset":
                    p.reset()
                else:
                    p.stop()
            except Boom:
                pass
    finally:
        p.stop()
    assert_exact(model, before)


def test_keyboard_interrupt_inside_the_block_restores_exactly():
    model = tiny("llama")
    before = snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        with perturb(model, ScaleLayer(2, "mlp", 0.0), AddNoise((0, "attention"), 1.0)):
            raise KeyboardInterrupt
    assert_exact(model, before)


@pytest.mark.real_model
def test_smollm2_restores_all_tensors_bit_identically_and_reports_its_tied_embeddings(smollm2):
    model, _ = smollm2
    before = snapshot(model)
    edits = [ScaleHead(0, 8, 0.0), ScaleNeuron(29, 1535, 3.7), ScaleLayer(15, "mlp", 0.1), AddNoise("model.embed_tokens", 0.05)]
    with pytest.warns(UserWarning, match=r"lm_head\.weight"):
        with perturb(model, *edits) as p:
            assert first_layer(model, edits) == -1
            assert any("lm_head.weight" in line for line in p.tied)
    assert_exact(model, before)
