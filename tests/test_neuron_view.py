"""NeuronView on tiny random models: top-k, heatmap, histogram and fractions against direct torch."""

import numpy as np
import pytest
import torch
import traitlets

import nbinspect
from nbinspect import codecs
from nbinspect.adapters import Adapter
from nbinspect.views.neuron_view import DEAD_THRESHOLD, OUTLIER_FACTOR, layer_stats
from tiny_models import DENSE, CharTokenizer, tiny

TEXT = "the cat sat on the mat"


def hooked_neurons(model, text, layer):
    """The down projection's input at ``layer``, read by a forward pre-hook of our own."""
    seen = {}
    handle = Adapter.of(model).part(layer, "neurons").register_forward_pre_hook(lambda m, a: seen.setdefault("a", a[0][0].clone()))
    try:
        with torch.no_grad():
            model(**CharTokenizer()(text))
    finally:
        handle.remove()
    return seen["a"]


def decoded(view, name, dtype):
    return torch.from_numpy(np.frombuffer(getattr(view, name), dtype=dtype).copy())


@pytest.mark.parametrize("family", DENSE)
def test_top_k_and_heatmap_match_direct_torch(family):
    model = tiny(family)
    view = nbinspect.neurons(model, CharTokenizer(), TEXT, layer=1, k=10)
    acts = hooked_neurons(model, TEXT, 1)
    assert torch.equal(view.activations(1), acts)
    expected = torch.topk(acts.abs().amax(0), 10)
    assert torch.equal(decoded(view, "top_indices", np.int32).long(), expected.indices)
    assert torch.equal(decoded(view, "top_scores", np.float32), expected.values)
    columns = acts[:, expected.indices]
    scales = columns.abs().amax(0)
    assert torch.equal(decoded(view, "heatmap_scales", np.float32), scales)
    assert ((view.shown_heatmap() - columns).abs() <= scales / 254 + 1e-6).all()

    view.rank_by = "variance"  # switching the ranking re-sends the layer
    variance = torch.topk(acts.var(0, unbiased=False), 10)
    assert view.shown_rank_by == "variance"
    assert torch.equal(decoded(view, "top_indices", np.int32).long(), variance.indices)
    assert torch.allclose(decoded(view, "top_scores", np.float32), variance.values)


def test_histogram_and_fractions_match_direct_computation():
    view = nbinspect.neurons(tiny("gpt2"), CharTokenizer(), TEXT, layer=2)
    acts = view.activations()
    counts = decoded(view, "histogram", np.int32)
    edges = decoded(view, "histogram_edges", np.float32)
    assert len(counts) == codecs.HISTOGRAM_BINS and int(counts.sum()) == acts.numel()
    lo, hi = float(acts.min()), float(acts.max())
    assert torch.equal(counts.long(), torch.histc(acts, codecs.HISTOGRAM_BINS, lo, hi).long())
    assert torch.allclose(edges, torch.linspace(lo, hi, codecs.HISTOGRAM_BINS + 1))
    ref, _ = np.histogram(acts.numpy(), bins=codecs.HISTOGRAM_BINS, range=(lo, hi))
    assert np.abs(ref - counts.numpy()).sum() <= 4  # only values on a bin edge may fall either side
    peak = acts.abs().amax(0)
    assert view.dead_fraction == float((peak <= DEAD_THRESHOLD * peak.max()).float().mean())
    assert view.outlier_fraction == float((peak > OUTLIER_FACTOR * peak.median()).float().mean())
    assert view.max_abs == float(peak.max())
    assert view.saturated_fraction == -1 and "n/a" in view.saturation_note  # GELU: no bound


def test_dead_neurons_are_counted():
    model = tiny("llama")
    with torch.no_grad():  # our own model: silence 16 of layer 0's 64 neurons exactly
        model.model.layers[0].mlp.up_proj.weight[:16] = 0
    view = nbinspect.neurons(model, CharTokenizer(), TEXT, layer=0)
    assert view.dead_fraction == 16 / 64
    assert view.saturated_fraction == -1 and "gated" in view.saturation_note


def test_saturation_of_a_bounded_activation():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64, activation_function="tanh",
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # push the first 8 neurons of layer 1 deep into tanh's +1 plateau
        model.transformer.h[1].mlp.c_fc.bias[:8] = 50.0
    view = nbinspect.neurons(model, CharTokenizer(), TEXT, layer=1)
    acts = view.activations()
    near = ((acts - 1).abs() <= 0.02) | ((acts + 1).abs() <= 0.02)  # 1 % of tanh's range of 2
    assert view.saturated_fraction == float(near.all(0).float().mean()) >= 8 / 128
    assert view.saturation_note.startswith("saturated — within 1%")


def test_signed_quantization_bound():
    x = torch.randn(300, 7) * torch.tensor([0.01, 1, 5, 100, 1e4, 0, 3])
    q, scales = codecs.quantize_signed(x, dim=0)
    assert q.dtype == torch.uint8 and scales.shape == (7,)
    back = codecs.dequantize_signed(q, scales)
    assert ((back - x).abs() <= scales / 254 + 1e-6 * scales).all()
    assert (q[:, 5] == 128).all() and (torch.sign(back) == torch.sign(x))[x.abs() > scales / 254].all()
    q1, s1 = codecs.quantize_signed(x[:, 3])
    assert float(s1) == float(x[:, 3].abs().max())


def test_long_text_rows_keep_the_largest_magnitude(monkeypatch):
    monkeypatch.setattr(codecs, "NEURON_HEATMAP_MAX_ROWS", 8)
    view = nbinspect.neurons(tiny("qwen2"), CharTokenizer(), TEXT, k=5)  # 22 tokens → 3 per row
    assert view.heatmap_block == 3 and view.heatmap_rows == 8
    cols = view.activations()[:, decoded(view, "top_indices", np.int32).long()]
    padded = torch.cat([cols, torch.zeros(2, 5)]).reshape(8, 3, 5)
    expected = padded.gather(1, padded.abs().argmax(1, keepdim=True))[:, 0]
    assert ((view.shown_heatmap() - expected).abs() <= expected.abs().amax(0) / 254 + 1e-6).all()


def test_selected_neuron_column_is_sent_and_follows_the_layer():
    view = nbinspect.neurons(tiny("llama"), CharTokenizer(), TEXT, layer=0)
    top = int(decoded(view, "top_indices", np.int32)[0])
    assert view.neuron == -1 and view.neuron_of == [0, top]  # nothing selected: the top neuron is shown
    view.neuron = 40
    assert view.selection.neuron == 40 and view.neuron_of == [0, 40]
    values = codecs.dequantize_signed(decoded(view, "neuron_values", np.uint8), view.neuron_scale)
    expected = view.activations(0)[:, 40]
    assert view.neuron_scale == float(expected.abs().max())
    assert ((values - expected).abs() <= view.neuron_scale / 254 + 1e-6).all()
    view.selection.layer = 2
    assert view.shown_layer == 2 and view.neuron_of == [2, 40]


def test_linked_with_an_attention_view():
    model = tiny("llama")
    sel = nbinspect.Selection()
    attn = nbinspect.attention(model, CharTokenizer(), TEXT, selection=sel)
    view = nbinspect.neurons(model, CharTokenizer(), TEXT, selection=sel)
    assert sel.n_neurons == 64 and sel.n_heads == 4
    sel.layer = 2  # Python sets the shared selection: both views move and re-send their layer
    assert attn.layer == view.layer == 2 and attn.focus_of[0] == 2 and view.shown_layer == 2
    view.token = 3
    assert attn.token == 3
    attn.layer = 1
    assert view.shown_layer == 1
    with pytest.raises(traitlets.TraitError, match="0..63"):
        sel.neuron = 64
    with pytest.raises(traitlets.TraitError, match="0..63"):
        view.neuron = 64
    assert sel.neuron == view.neuron == -1 and view.shown_layer == 1  # nothing lost


def test_transport_is_bytes_only():
    view = nbinspect.neurons(tiny("bert"), CharTokenizer(), TEXT)
    for name, value in view.get_state().items():
        if isinstance(value, list):  # only token strings and small integer pairs travel as JSON
            assert all(isinstance(v, (str, int)) and not isinstance(v, float) for v in value), name
    for name in ("top_indices", "heatmap", "histogram", "histogram_edges", "neuron_values"):
        assert isinstance(view.get_state()[name], (bytes, memoryview)), name
    assert view.payload_bytes() < codecs.MAX_BROWSER_MESSAGE_BYTES


@pytest.mark.parametrize("family", DENSE)
def test_model_left_as_it_was(family):
    model = tiny(family)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    view = nbinspect.neurons(model, CharTokenizer(), TEXT)
    view.layer = 2
    assert all(torch.equal(params[k], v) for k, v in model.state_dict().items())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert model.config._attn_implementation == "sdpa" and not model.training


def test_bad_input_gets_a_clear_error():
    model = tiny("gpt2")
    with pytest.raises(ValueError, match="empty"):
        nbinspect.neurons(model, CharTokenizer(), "  ")
    with pytest.raises(IndexError, match="layers 0..2"):
        nbinspect.neurons(model, CharTokenizer(), TEXT, layer=3)
    with pytest.raises(ValueError, match="rank_by"):
        nbinspect.neurons(model, CharTokenizer(), TEXT, rank_by="mean")
    with pytest.raises(ValueError, match="1..64"):
        nbinspect.neurons(model, CharTokenizer(), TEXT, k=0)
    with pytest.raises(ValueError, match="experts"):
        nbinspect.neurons(tiny("mixtral"), CharTokenizer(), TEXT)
    view = nbinspect.neurons(model, CharTokenizer(), TEXT, layer=1)
    before = (view.heatmap, view.histogram, view.neuron_of)
    for name, value, match in [("layer", 3, "layers 0..2"), ("neuron", 128, "0..127"), ("token", 99, "tokens 0..21"),
                               ("rank_by", "mean", "max_abs"), ("k", 65, "1..64")]:
        with pytest.raises(traitlets.TraitError, match=match):
            setattr(view, name, value)
    assert (view.layer, view.neuron, view.token, view.rank_by, view.k) == (1, -1, -1, "max_abs", codecs.NEURON_TOP_K)
    assert (view.heatmap, view.histogram, view.neuron_of) == before  # a refused value loses nothing


def test_layer_stats_on_a_known_tensor():
    acts = torch.tensor([[0.0, 1.0, -4.0, 1e-4], [0.0, -2.0, 4.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    s = layer_stats(acts, 2, "max_abs")
    assert s.indices.tolist() == [2, 1] and torch.equal(s.scores, torch.tensor([0.0, 2.0, 4.0, 1e-4]))
    assert s.dead_fraction == 0.5 and s.max_abs == 4.0 and s.saturated_fraction == -1
    assert layer_stats(acts, 1, "variance").indices.tolist() == [2]


@pytest.mark.real_model
def test_smollm2(smollm2):
    model, tokenizer = smollm2
    text = "The capital of France is Paris. " * 16
    view = nbinspect.neurons(model, tokenizer, text, layer=15)
    ids = tokenizer(text, return_tensors="pt")
    seen = {}
    handle = model.model.layers[15].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("a", a[0][0].clone()))
    try:
        with torch.no_grad():
            model(**ids)
    finally:
        handle.remove()
    acts = seen["a"]
    assert view.n_neurons == 1536 and torch.equal(view.activations(), acts)
    expected = torch.topk(acts.abs().amax(0), codecs.NEURON_TOP_K).indices
    assert torch.equal(decoded(view, "top_indices", np.int32).long(), expected)
    assert view.payload_bytes() < 64 * 1024
