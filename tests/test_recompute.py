"""Rerunning from the edited layer gives what a full forward under the same edits gives."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import FAMILIES, tiny

from nbinspect.adapters import Adapter
from nbinspect.capture import capture
from nbinspect.perturb import AddNoise, ScaleHead, ScaleLayer, ScaleNeuron, perturb
from nbinspect.recompute import Recompute

TOL = 1e-5
IDS = torch.tensor([[5, 17, 99, 3, 42, 8, 77, 12, 1]])
EMBEDDINGS = {"gpt2": "transformer.wte", "bert": "embeddings.word_embeddings", "gpt_neox": "gpt_neox.embed_in"}


def inputs():
    return {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}


def full(model, edits=(), attention=False):
    """The reference: a plain forward of the whole model under the edits."""
    kwargs = inputs() if model.config.model_type == "bert" else {**inputs(), "use_cache": False}
    with torch.no_grad(), perturb(model, *edits), capture(model, attention=attention or None) as record:
        out = model(**kwargs)
    final = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    return final, record.attention


def output(result):
    return result.logits() if result.has_head else result.last_hidden()


def layer_edits(family, layer):
    edits = [ScaleHead(layer, 1, 0.0), AddNoise((layer, "attention"), 0.2, seed=layer)]
    if Adapter.of(tiny(family)).parts.neurons is not None:
        edits += [ScaleNeuron(layer, 5, 3.0), ScaleLayer(layer, "mlp", 0.5)]
    return edits


@pytest.mark.parametrize("family", FAMILIES)
def test_rerun_from_every_layer_equals_a_full_forward(family):
    model = tiny(family)
    rec = Recompute(model, inputs())
    assert (output(rec.baseline) - full(model)[0]).abs().max() <= TOL
    for layer in range(Adapter.of(model).n_layers):
        edits = layer_edits(family, layer)
        rec.run()  # back to the baseline, so the next run starts exactly at `layer`
        result = rec.run(*edits)
        assert result.from_layer == layer
        assert (output(result) - full(model, edits)[0]).abs().max() <= TOL


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_rerun_records_the_attention_of_the_layers_it_recomputed(family):
    model = tiny(family)
    rec = Recompute(model, inputs(), attention=True)
    edits = [ScaleHead(1, 0, 0.0), AddNoise((1, "attention"), 0.5)]
    result = rec.run(*edits)
    assert sorted(result.attention) == [1, 2]
    _, expected = full(model, edits, attention=True)
    for layer in range(3):  # layer 0 kept from the baseline, which the edits do not reach
        assert (rec.attention[layer] - expected[layer]).abs().max() <= TOL


def test_embedding_edits_rerun_everything_and_head_edits_only_the_head():
    model = tiny("llama")
    rec = Recompute(model, inputs())
    result = rec.run(AddNoise("model.embed_tokens", 0.1))
    assert result.from_layer == -1
    assert (result.logits() - full(model, [AddNoise("model.embed_tokens", 0.1)])[0]).abs().max() <= TOL
    rec.run()
    result = rec.run(AddNoise("lm_head", 0.1))
    assert result.from_layer == 3
    assert (result.logits() - full(model, [AddNoise("lm_head", 0.1)])[0]).abs().max() <= TOL


def test_the_model_is_left_exact_and_a_failed_run_forces_a_full_rerun():
    model = tiny("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = Recompute(model, inputs())
    with pytest.warns(UserWarning, match="tied"):
        rec.run(AddNoise("transformer.wte", 0.3), ScaleHead(2, 1, 0.0))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    layer = Adapter.of(model).layers[2]
    handle = layer.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        rec.run(ScaleHead(1, 1, 0.0))
    handle.remove()
    result = rec.run(ScaleHead(2, 1, 0.0))
    assert result.from_layer == -1
    assert (result.logits() - full(model, [ScaleHead(2, 1, 0.0)])[0]).abs().max() <= TOL


def test_logits_at_chosen_positions_match_the_full_logits():
    model = tiny("qwen2")
    rec = Recompute(model, inputs())
    result = rec.run(ScaleNeuron(2, 7, 0.0))
    assert (result.logits([8, 3]) - result.logits()[:, [8, 3]]).abs().max() <= TOL


stack = st.lists(
    st.one_of(
        st.builds(ScaleHead, st.integers(0, 2), st.integers(0, 3), st.sampled_from([0.0, 0.5, 2.0])),
        st.builds(ScaleNeuron, st.integers(0, 2), st.integers(0, 63), st.sampled_from([0.0, 3.0])),
        st.builds(AddNoise, st.integers(0, 2), st.sampled_from([0.05, 0.5]), st.integers(0, 2)),
    ),
    max_size=3,
)


@pytest.fixture(scope="module")
def llama_recompute():
    model = tiny("llama")
    return model, Recompute(model, inputs())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stacks=st.lists(stack, min_size=1, max_size=5))
def test_any_sequence_of_runs_matches_full_forwards(llama_recompute, stacks):
    """Each run starts from what changed since the previous run, so the order of runs matters."""
    model, rec = llama_recompute
    for edits in stacks:
        result = rec.run(*edits)
        assert (result.logits() - full(model, edits)[0]).abs().max() <= TOL


@pytest.mark.real_model
def test_smollm2_rerun_from_first_middle_and_last_layer(smollm2):
    model, tokenizer = smollm2
    from nbinspect.inputs import encode

    enc = encode(tokenizer, "The capital of France is Paris, and the capital of Italy is", Adapter.of(model))
    rec = Recompute(model, enc)
    for layer in (0, 15, 29):
        edits = [ScaleHead(layer, 4, 0.0), ScaleNeuron(layer, 100, 5.0)]
        result = rec.run(*edits)
        with torch.no_grad(), perturb(model, *edits):
            expected = model(**enc, use_cache=False).logits
        assert (result.logits() - expected).abs().max() <= TOL


@pytest.mark.real_model
def test_minilm_rerun_matches_its_last_hidden_state(minilm):
    model, tokenizer = minilm
    from nbinspect.inputs import encode

    enc = encode(tokenizer, "Perturbing weights shows what each head does.", Adapter.of(model))
    rec = Recompute(model, enc)
    edits = [ScaleHead(3, 2, 0.0), AddNoise((4, "mlp"), 0.1)]
    result = rec.run(*edits)
    assert not result.has_head and result.logits() is None
    with torch.no_grad(), perturb(model, *edits):
        expected = model(**enc).last_hidden_state
    assert (result.last_hidden() - expected).abs().max() <= TOL
