"""The capture engine against Hugging Face's own outputs, on a tiny model of every supported family."""

import pytest
import torch
from tiny_models import DENSE, FAMILIES, CharTokenizer, tiny

import nbinspect
from nbinspect import Request, capture
from nbinspect.adapters import Adapter
from nbinspect.reductions import as_dtype, by_layer, head_summary, head_write_norms, top_k

MOE = [f for f in FAMILIES if f not in DENSE]


def _ids(batch=2, n=9, seed=1):
    return torch.randint(0, 128, (batch, n), generator=torch.Generator().manual_seed(seed))


def _eager(model, ids, **kw):
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(input_ids=ids, output_attentions=True, output_hidden_states=True, **kw)
    finally:
        model.set_attn_implementation("sdpa")


def _everything(family):
    return dict(attention=True, heads=True, residual=True, **({"neurons": True} if family in DENSE else {"router": True}))


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_matches_eager_and_hidden_states(family):
    model = tiny(family)
    ids = _ids()
    with torch.no_grad():
        plain = model(input_ids=ids)
    with capture(model, **_everything(family)) as record, torch.no_grad():
        out = model(input_ids=ids)
    ref = _eager(model, ids, **({} if family in DENSE else {"output_router_logits": True}))
    adapter = Adapter.of(model)

    # Capturing changes nothing the model computes.
    assert torch.equal(out[0], plain[0])
    for i in range(adapter.n_layers):
        weights = record.attention[i]
        assert weights.dtype == torch.float32 and weights.shape == (2, adapter.n_heads, 9, 9)
        torch.testing.assert_close(weights, ref.attentions[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(record.residual[i].before, ref.hidden_states[i], rtol=0, atol=1e-6)
    for i in range(adapter.n_layers - 1):
        assert torch.equal(record.residual[i].after, record.residual[i + 1].before)
    last = record.residual[adapter.n_layers - 1].after
    norm = adapter.final_norm()
    torch.testing.assert_close(norm(last) if norm is not None else last, ref.hidden_states[-1], rtol=0, atol=1e-5)
    if family != "bert":
        torch.testing.assert_close(record.logits, plain.logits, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_writes_add_up_to_the_output_projection(family):
    model = tiny(family)
    with capture(model, heads=[0, -1]) as record, torch.no_grad():
        model(input_ids=_ids())
    adapter = Adapter.of(model)
    assert sorted(record.heads) == [0, adapter.n_layers - 1]
    heads = record.heads[0]
    projection = adapter.part(0, "attention_output")
    with torch.no_grad():
        expected = projection(heads.z)
        writes = heads.writes()
    assert writes.shape == (2, 9, adapter.n_heads, model.config.hidden_size)
    bias = 0 if heads.bias is None else heads.bias
    torch.testing.assert_close(writes.sum(dim=2) + bias, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(heads.writes(head=1), writes[:, :, 1], rtol=1e-5, atol=1e-6)
    assert heads.per_head.shape == (2, 9, adapter.n_heads, adapter.head_dim)


@pytest.mark.parametrize("family", DENSE)
def test_neurons_are_the_input_of_the_down_projection(family):
    model = tiny(family)
    adapter = Adapter.of(model)
    mlp = adapter.part(1, "mlp")
    seen = {}
    handle = adapter.part(1, "neurons").register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with capture(model, neurons=1) as record, torch.no_grad():
        model(input_ids=_ids())
    handle.remove()
    assert list(record.neurons) == [1]
    assert torch.equal(record.neurons[1], seen["x"])
    if family in ("llama", "mistral", "qwen2"):  # gated: act(gate) * up, not act(gate)
        inp = {}
        handle = mlp.register_forward_pre_hook(lambda m, a: inp.setdefault("x", a[0]))
        with torch.no_grad():
            model(input_ids=_ids())
            expected = mlp.act_fn(mlp.gate_proj(inp["x"])) * mlp.up_proj(inp["x"])
        handle.remove()
        torch.testing.assert_close(record.neurons[1], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", MOE)
def test_router_matches_output_router_logits(family):
    model = tiny(family)
    ids = _ids()
    with capture(model, router=True) as record, torch.no_grad():
        model(input_ids=ids)
        ref = model(input_ids=ids, output_router_logits=True)
    config = model.config
    n_experts, k = Adapter.of(model).n_experts, config.num_experts_per_tok
    for i, logits in enumerate(ref.router_logits):
        routing = record.router[i]
        assert routing.probs.shape == (2, 9, n_experts) and routing.experts.shape == (2, 9, k)
        probs = torch.softmax(logits.float(), dim=-1)
        torch.testing.assert_close(routing.probs.reshape(-1, n_experts), probs, rtol=0, atol=1e-6)
        expected = probs.topk(k, dim=-1).indices
        assert torch.equal(routing.experts.reshape(-1, k).sort(-1).values, expected.sort(-1).values)


def test_hooks_exist_only_for_what_was_requested():
    model = tiny("llama")
    adapter = Adapter.of(model)

    def count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    before = count()
    with capture(model, neurons=[2], logits=False):
        assert count() == before + 1
        assert len(adapter.part(2, "neurons")._forward_pre_hooks) == 1
    assert count() == before


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_everything_is_removed_after_an_exception(error):
    from nbinspect import _attention_hook

    model = tiny("gpt2")

    def count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    before, registry = count(), dict(_attention_hook.ALL_ATTENTION_FUNCTIONS._local_mapping)
    with pytest.raises(error):
        with capture(model, **_everything("gpt2")):
            model(input_ids=_ids())
            raise error("stop")
    assert count() == before
    assert dict(_attention_hook.ALL_ATTENTION_FUNCTIONS._local_mapping) == registry
    assert not _attention_hook._listeners
    assert model.config._attn_implementation == "sdpa"


def test_model_state_is_unchanged():
    model = tiny("llama")
    model.train()
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with capture(model, **_everything("llama"), gradients=True):
        model(input_ids=_ids()).logits.sum().backward()
    assert model.training and model.config._attn_implementation == "sdpa"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_gradients_of_captured_activations():
    model = tiny("llama")
    ids = _ids(batch=1)
    with capture(model, neurons=[1], residual=[2], heads=[0], gradients=True) as record:
        out = model(input_ids=ids)
        out.logits[0, -1, 5].backward()
    # Compare with autograd directly on the very tensors that were recorded.
    model.zero_grad(set_to_none=True)
    keep = {}
    adapter = Adapter.of(model)
    handle = adapter.part(1, "neurons").register_forward_pre_hook(lambda m, a: keep.setdefault("n", a[0]))
    out = model(input_ids=ids)
    handle.remove()
    (expected,) = torch.autograd.grad(out.logits[0, -1, 5], keep["n"])
    torch.testing.assert_close(record.gradients["neurons"][1], expected)
    assert record.gradients["residual"][2].before.shape == (1, 9, 32)
    assert record.gradients["residual"][2].after.shape == (1, 9, 32)
    assert record.gradients["heads"][0].shape == (1, 9, 32)
    model.zero_grad(set_to_none=True)


def test_reductions_run_on_the_fly():
    model = tiny("llama")
    ids = _ids()
    reduce = by_layer(head_summary, {2: None})
    with capture(
        model,
        attention=Request(reduce=reduce),
        neurons=Request(layers=[0], reduce=top_k(3)),
        heads=Request(layers=[1], reduce=head_write_norms),
        residual=Request(layers=[0], reduce=as_dtype(torch.float16)),
    ) as record, torch.no_grad():
        model(input_ids=ids)
    full = _eager(model, ids).attentions
    summary = record.attention[0]
    p = full[0]
    torch.testing.assert_close(summary.entropy, -(p * p.clamp_min(1e-30).log()).sum(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(summary.max_weight, p.max(-1).values, rtol=0, atol=1e-5)
    assert summary.entropy.shape == (2, 4, 9)
    torch.testing.assert_close(record.attention[2], full[2], rtol=0, atol=1e-5)
    assert record.neurons[0].values.shape == (2, 9, 3) and record.neurons[0].indices.dtype == torch.int64
    assert record.heads[1].shape == (2, 9, 4)
    assert record.residual[0].before.dtype == torch.float16


def test_run_tokenizes_and_records():
    model = tiny("gpt2")
    record = nbinspect.run(model, CharTokenizer(), "hello there", attention=[1], neurons=True)
    assert record.tokens[:5] == list("hello") and record.input_ids.shape == (1, 11)
    assert list(record.attention) == [1] and len(record.neurons) == 3
    assert record.logits.shape == (1, 11, 128)
    with pytest.raises(ValueError, match="empty"):
        nbinspect.run(model, CharTokenizer(), "   ", attention=True)


def test_clear_errors_for_bad_requests():
    model = tiny("llama")
    with pytest.raises(IndexError, match=r"layers 0\.\.2"):
        capture(model, attention=[3])
    with pytest.raises(IndexError, match="out of range"):
        capture(model, neurons=Request(layers=[-4]))
    with pytest.raises(ValueError, match="router"):
        capture(model, router=True)
    with pytest.raises(TypeError, match="Request"):
        capture(model, attention="all")
    with pytest.raises(ValueError, match="fused"):
        capture(tiny("mixtral"), neurons=True)
    with pytest.raises(ValueError, match="gradients"):
        capture(model, attention=True, gradients=True)


def test_a_layer_index_counts_from_the_end():
    model = tiny("qwen2")
    with capture(model, attention=-1, residual=Request(layers=[-3])) as record, torch.no_grad():
        model(input_ids=_ids())
    assert list(record.attention) == [2] and list(record.residual) == [0]


def test_padding_mask_matches_eager():
    model = tiny("llama")
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    with capture(model, attention=True) as record, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    model.set_attn_implementation("sdpa")
    for i in range(3):
        torch.testing.assert_close(record.attention[i], ref.attentions[i], rtol=0, atol=1e-5)


@pytest.mark.real_model
def test_smollm2_attention_and_residual_match_eager(smollm2):
    model, tokenizer = smollm2
    inputs = tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt")
    with capture(model, attention=[0, 29], residual=[29], neurons=[29]) as record, torch.no_grad():
        out = model(**inputs)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            ref = model(**inputs, output_attentions=True, output_hidden_states=True)
    finally:
        model.set_attn_implementation("sdpa")
    for i in (0, 29):
        torch.testing.assert_close(record.attention[i], ref.attentions[i], rtol=0, atol=1e-5)
    torch.testing.assert_close(record.residual[29].before, ref.hidden_states[29], rtol=1e-4, atol=1e-4)
    assert record.neurons[29].shape[-1] == 1536
    assert record.logits.shape == out.logits.shape


@pytest.mark.real_model
def test_minilm_attention_matches_eager(minilm):
    model, tokenizer = minilm
    inputs = tokenizer(["a short one", "a somewhat longer sentence to pad against"], return_tensors="pt", padding=True)
    with capture(model, attention=True, heads=[5]) as record, torch.no_grad():
        model(**inputs)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            ref = model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    for i in range(6):
        torch.testing.assert_close(record.attention[i], ref.attentions[i], rtol=0, atol=1e-5)
    assert record.heads[5].writes().shape[2] == 12


@pytest.mark.parametrize("shape, cells", [((9, 512, 512), 32), ((2, 9, 100, 100), 32), ((3, 37, 53), 8),
                                          ((2, 1000, 1000), 32), ((1, 1, 5), 32), ((4, 2048, 2048), 1024)])
def test_pooled_maps_are_block_maxima_with_the_ragged_block_kept(shape, cells):
    import math

    from nbinspect import codecs

    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    pooled, block = codecs.pool_max(maps, cells)
    q, k = shape[-2:]
    assert block == max(1, math.ceil(max(q, k) / cells))
    expected = torch.nn.functional.max_pool2d(maps.reshape(-1, 1, q, k), block, block, ceil_mode=True)
    assert torch.equal(pooled, expected.reshape(*shape[:-2], *expected.shape[-2:]))


def test_causal_attention_weights_in_short_blocks_equal_softmax():
    # Causal blocks stop at the last key their rows can see; what they skip must be exactly zero.
    from nbinspect import _attention_hook as hook

    class Causal:
        is_causal = True

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 300, 16, generator=g) for h in (4, 2, 2))
    weights, out = hook.attention_weights(Causal(), q, k, None, value=v)
    scores = q @ k.repeat_interleave(2, 1).transpose(-1, -2) / 4.0
    scores = scores.masked_fill(torch.ones(300, 300, dtype=torch.bool).triu(1), float("-inf"))
    expected = scores.softmax(-1)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, (expected @ v.repeat_interleave(2, 1)).transpose(1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, rows", [(5, 64), (300, 64), (300, 37), (2100, 64), (2100, 1000)])
def test_maps_pooled_block_by_block_equal_maps_of_the_whole_pattern(n, rows):
    # The trace pools each block of query rows as it is computed; a pooled cell's rows may span two
    # blocks. The result must be the very bytes the whole pattern would give.
    from nbinspect.attention_maps import MapPooler, reduce_layer

    w = torch.rand(1, 3, n, n, generator=torch.Generator().manual_seed(n)).tril()
    w = w / w.sum(-1, keepdim=True)
    expected = reduce_layer(w.clone(), keep_full=True)
    pooler = MapPooler(3, n, n, "cpu", keep_full=True)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        pooler.add(start, w[0, :, start:stop, :stop])  # causal: only the keys these rows can see
    got = pooler.maps()
    assert (got.thumbnail_block, got.full_block) == (expected.thumbnail_block, expected.full_block)
    for name in ("thumbnails", "thumbnail_scales", "full", "full_scales"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
