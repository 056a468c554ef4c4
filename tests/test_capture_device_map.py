"""Models dispatched by accelerate's ``device_map``: some layers on the CPU, others offloaded to disk."""

import pytest
import torch
from tiny_models import tiny

from nbinspect import capture
from nbinspect.adapters import Adapter

KINDS = dict(attention=True, heads=True, neurons=True, residual=True)


@pytest.fixture(scope="module")
def dispatched(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    reference = tiny("llama")
    reference.save_pretrained(folder)
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "disk",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    model = AutoModelForCausalLM.from_pretrained(folder, device_map=device_map, offload_folder=folder / "offload")
    model.eval()
    return model, reference


def test_offloaded_layers_are_captured_where_they_run(dispatched):
    model, reference = dispatched
    adapter = Adapter.of(model)
    assert adapter.is_offloaded(1) and not adapter.is_offloaded(0)
    assert next(adapter.layers[1].parameters()).device.type == "meta"
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    with capture(model, **KINDS) as record, torch.no_grad():
        model(input_ids=ids)
    with capture(reference, **KINDS) as expected, torch.no_grad():
        reference(input_ids=ids)
    for i in range(adapter.n_layers):
        device = adapter.device_of(i)
        for value in (record.attention[i], record.neurons[i], record.heads[i].z, *record.residual[i]):
            assert value.device == device
        torch.testing.assert_close(record.attention[i], expected.attention[i], rtol=0, atol=1e-6)
        torch.testing.assert_close(record.neurons[i], expected.neurons[i], rtol=0, atol=1e-6)
        torch.testing.assert_close(record.residual[i].after, expected.residual[i].after, rtol=0, atol=1e-6)
        # Offloaded weights are back on "meta" by now; the writes come from accelerate's store.
        torch.testing.assert_close(record.heads[i].writes(), expected.heads[i].writes(), rtol=0, atol=1e-6)
    torch.testing.assert_close(record.logits, expected.logits, rtol=0, atol=1e-6)
    assert next(adapter.layers[1].parameters()).device.type == "meta"


def _ids():
    return torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(1))


def test_edits_of_offloaded_weights_name_the_layer_and_change_nothing(dispatched):
    from nbinspect import AddNoise, EditError, ScaleHead, perturb

    model, _ = dispatched
    before = {name: p.clone() for name, p in model.named_parameters() if p.device.type != "meta"}
    for edit in (ScaleHead(1, 0, 0.0), AddNoise(2, 0.1)):
        with pytest.raises(EditError, match=r"model\.layers\.[12]\..*offloaded"):
            perturb(model, ScaleHead(0, 1, 0.5), edit).start()  # the edit of layer 0 is not left behind
    for name, p in model.named_parameters():
        if p.device.type != "meta":
            assert torch.equal(p, before[name]), name


def test_edits_of_weights_on_a_device_match_the_same_edit_undispatched(dispatched):
    from nbinspect import ScaleHead, ScaleNeuron, perturb
    from nbinspect.recompute import Recompute

    model, reference = dispatched
    edits = (ScaleHead(0, 1, 0.0), ScaleNeuron(0, 3, 2.0))
    ids = _ids()
    with torch.no_grad():
        with perturb(model, *edits):
            edited = model(input_ids=ids).logits
        with perturb(reference, *edits):
            expected = reference(input_ids=ids).logits
        plain = reference(input_ids=ids).logits
    assert (edited - plain).abs().max() > 1e-4
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-6)
    # Rerunning from layer 0 goes through accelerate's hooks, offloaded layers included.
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    result = Recompute(model, inputs).run(*edits)
    assert result.from_layer == 0
    torch.testing.assert_close(result.logits(), expected, rtol=0, atol=1e-5)
    assert next(Adapter.of(model).layers[1].parameters()).device.type == "meta"


def test_trace_and_its_edits_across_offloaded_layers(dispatched):
    import nbinspect
    from nbinspect import ScaleHead, ScaleNeuron
    from tiny_models import CharTokenizer

    model, reference = dispatched
    text = "offloaded layers"
    t = nbinspect.trace(model, CharTokenizer(), text)
    expected = nbinspect.trace(reference, CharTokenizer(), text)
    torch.testing.assert_close(t.logits, expected.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(t.embedding_grad, expected.embedding_grad, rtol=0, atol=1e-5)
    for i in range(Adapter.of(model).n_layers):
        torch.testing.assert_close(t.record.residual[i].after, expected.record.residual[i].after, rtol=0, atol=1e-5)
    edits = (ScaleHead(0, 1, 0.0), ScaleNeuron(0, 3, 2.0))
    torch.testing.assert_close(t.edit(*edits).logits, expected.edit(*edits).logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(t.edit().logits, expected.logits, rtol=0, atol=1e-5)  # nothing left applied
    dash = nbinspect.inspect(t)  # every view reads the trace, wherever its layers ran
    reference_dash = nbinspect.inspect(expected)
    assert set(dash.views) == set(reference_dash.views) and dash.skipped.keys() == reference_dash.skipped.keys()
    assert "attention" in dash.views and "gradients" in dash.views
    for view in dash.views.values():
        view.show(t.edit(*edits))


def test_an_edit_of_an_offloaded_layer_after_a_forward_names_the_layer(dispatched):
    import nbinspect
    from nbinspect import EditError, ScaleHead
    from tiny_models import CharTokenizer

    model, _ = dispatched
    t = nbinspect.trace(model, CharTokenizer(), "offloaded layers")
    t.edit(ScaleHead(0, 1, 0.0))  # a forward after the edit machinery has seen the model
    with pytest.raises(EditError, match=r"model\.layers\.1\..*offloaded"):
        t.edit(ScaleHead(1, 0, 0.0))
