"""Capturing long inputs cheaply: patterns freed layer by layer, kept small, computed in blocks, fast mode."""

import pytest
import torch
from test_capture import _eager, _ids
from tiny_models import FAMILIES, tiny

from nbinspect import Request, capture
from nbinspect.reductions import head_summary


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_reduced_patterns_are_freed_layer_by_layer(implementation):
    import gc
    import weakref

    model = tiny("llama")
    model.set_attn_implementation(implementation)
    alive_when_reducing = {}
    refs = {}

    def reduce(layer, weights):
        gc.collect()
        alive_when_reducing[layer] = [i for i, ref in refs.items() if ref() is not None]
        refs[layer] = weakref.ref(weights)
        return weights if layer == 1 else head_summary(layer, weights)

    try:
        with capture(model, attention=Request(reduce=reduce)) as record, torch.no_grad():
            model(input_ids=_ids())
    finally:
        model.set_attn_implementation("sdpa")
    gc.collect()
    # Only the layer kept in full outlives its reduce: long inputs never hold every layer's n x n pattern.
    assert alive_when_reducing == {0: [], 1: [], 2: [1]}
    assert [i for i, ref in refs.items() if ref() is not None] == [1]
    assert record.attention[1].shape == (2, 4, 9, 9)


def test_dtype_keeps_a_smaller_copy():
    model = tiny("mistral")
    ids = _ids()
    with capture(model, attention=Request(dtype=torch.float16), neurons=Request(layers=[0], dtype=torch.bfloat16),
                 heads=Request(layers=[0], dtype=torch.float16)) as record, torch.no_grad():
        model(input_ids=ids)
    full = _eager(model, ids).attentions
    for i in range(3):
        assert record.attention[i].dtype == torch.float16
        torch.testing.assert_close(record.attention[i].float(), full[i], rtol=0, atol=1e-3)
    assert record.neurons[0].dtype == torch.bfloat16 and record.heads[0].z.dtype == torch.float16


def test_long_causal_input_is_computed_in_blocks(monkeypatch):
    from nbinspect import _attention_hook

    monkeypatch.setattr(_attention_hook, "_BLOCK_VALUES", 2 * 4 * 40 * 3)  # ~3 query rows per block
    model = tiny("llama")
    ids = _ids(n=40)
    with capture(model, attention=True) as record, torch.no_grad():
        model(input_ids=ids)
    full = _eager(model, ids).attentions
    for i in range(3):
        torch.testing.assert_close(record.attention[i], full[i], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_inexact_capture_uses_eager_math_for_the_output(family):
    model = tiny(family)
    ids = _ids()
    with torch.no_grad():
        plain = model(input_ids=ids)[0]
    with capture(model, attention=Request(exact=False)) as record, torch.no_grad():
        fast = model(input_ids=ids)[0]
    ref = _eager(model, ids)
    torch.testing.assert_close(fast, ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    for i in range(3):
        torch.testing.assert_close(record.attention[i], ref.attentions[i], rtol=0, atol=1e-5)


def test_inexact_capture_under_autograd_runs_the_models_own_attention():
    model = tiny("llama")
    ids = _ids()
    plain = model(input_ids=ids).logits
    with capture(model, attention=Request(exact=False)):
        logits = model(input_ids=ids).logits
    assert torch.equal(logits, plain)
    logits.sum().backward()  # the graph is intact
    model.zero_grad(set_to_none=True)
