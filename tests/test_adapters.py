"""Where each family keeps its parts, and what happens with a model nbinspect does not know."""

import pytest
import torch
from tiny_models import FAMILIES, tiny
from torch import nn

from nbinspect import ModelParts, UnsupportedModelError, capture
from nbinspect.adapters import Adapter


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_resolves(family):
    model = tiny(family)
    adapter = Adapter.of(model)
    assert adapter.family == family
    assert (adapter.n_layers, adapter.n_heads, adapter.head_dim) == (3, 4, 8)
    weight, bias = adapter.output_projection(2)
    assert weight.shape == (32, 32)
    z = torch.randn(1, 5, 32)
    projection = adapter.part(2, "attention_output")
    expected = projection(z)
    torch.testing.assert_close(z @ weight.t() + (0 if bias is None else bias), expected)
    assert adapter.device_of(0) == torch.device("cpu")
    assert adapter.is_causal == (family != "bert")
    assert isinstance(adapter.attention(0), nn.Module)


def test_gpt2_conv1d_weight_is_transposed():
    model = tiny("gpt2")
    weight, _ = Adapter.of(model).output_projection(0)
    assert weight.data_ptr() == model.transformer.h[0].attn.c_proj.weight.data_ptr()
    assert torch.equal(weight, model.transformer.h[0].attn.c_proj.weight.t())


def test_moe_router_layers():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    model = tiny("mixtral")
    assert Adapter.of(model).router_layers() == [0, 1, 2] and Adapter.of(model).n_experts == 4
    config = Qwen2MoeConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, mlp_only_layers=[0],
    )
    mixed = Qwen2MoeForCausalLM(config).eval()
    adapter = Adapter.of(mixed)
    assert adapter.router_layers() == [1, 2]
    with capture(mixed, router=True) as record, torch.no_grad():
        mixed(input_ids=torch.randint(0, 128, (1, 5)))
    assert sorted(record.router) == [1, 2]
    with pytest.raises(ValueError, match="dense MLP"):
        capture(mixed, router=[0])


def test_layer_and_head_checks():
    adapter = Adapter.of(tiny("llama"))
    assert adapter.check_layer(-1) == 2
    for bad in (3, -4, 1.0, True):
        with pytest.raises(IndexError, match=r"0\.\.2"):
            adapter.check_layer(bad)
    with pytest.raises(IndexError, match=r"0\.\.3"):
        adapter.check_head(4)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)
        self.ff = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))

    def forward(self, x):
        x = x + self.out(self.mix(x))
        return x + self.ff(x)


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Block()])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_unknown_model_names_what_is_missing_and_how_to_fix_it():
    with pytest.raises(UnsupportedModelError, match=r"ModelParts"):
        Adapter.of(_Custom())
    with pytest.raises(UnsupportedModelError, match="Module"):
        Adapter.of("gpt2")
    parts = ModelParts(layers="blocks", attention="mix", attention_output="out", mlp="ff", neurons="ff.0")
    with pytest.raises(UnsupportedModelError, match=r"neurons \('ff\.0'\)|could not find"):
        Adapter.of(_Custom(), ModelParts(layers="blocks", attention="mix", attention_output="nope", mlp="ff", neurons="ff.9"))
    with pytest.raises(UnsupportedModelError, match="layer list 'layers'"):
        Adapter.of(_Custom(), ModelParts(layers="layers", attention="mix", attention_output="out", mlp="ff", neurons=None))
    assert Adapter.of(_Custom(), parts).n_layers == 2


def test_custom_parts_capture_residual_and_neurons():
    model = _Custom().eval()
    parts = ModelParts(layers="blocks", attention="mix", attention_output="out", mlp="ff", neurons="ff.2")
    with capture(model, residual=True, neurons=[1], parts=parts) as record, torch.no_grad():
        y = model(torch.randn(1, 3, 8))
    assert torch.equal(record.residual[1].after, y)
    assert record.neurons[1].shape == (1, 3, 16)
    with pytest.raises(UnsupportedModelError, match="n_heads"):
        capture(model, heads=True, parts=parts).adapter.n_heads
    heads = ModelParts(layers="blocks", attention="mix", attention_output="out", mlp="ff", neurons="ff.2", n_heads=2)
    with capture(model, heads=[0], parts=heads) as record, torch.no_grad():
        model(torch.randn(1, 3, 8))
    assert record.heads[0].writes().shape == (1, 3, 2, 8)


def test_tied_embeddings():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    assert Adapter.of(LlamaForCausalLM(config)).tied_embeddings()
    assert not Adapter.of(tiny("gpt_neox")).tied_embeddings()


class _Mix(nn.Module):
    """An output projection nbinspect cannot recognise as a linear layer."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.mix = nn.Parameter(linear.weight.detach().clone())

    def forward(self, x):
        return x @ self.mix.t()


def test_a_part_not_found_is_refused_only_where_it_is_needed():
    from nbinspect import AddNoise, EditError, ScaleHead, perturb

    model = tiny("phi")  # found by structure
    for layer in model.model.layers:
        layer.self_attn.dense = _Mix(layer.self_attn.dense)
    adapter = Adapter.of(model)
    assert adapter.by_structure and adapter.parts.attention_output is None
    assert any("output projection" in line for line in adapter.not_found)
    ids = torch.randint(0, 128, (1, 6))
    with capture(model, attention=True, residual=True, neurons=True) as record, torch.no_grad():
        model(input_ids=ids)  # what does not need the projection still works
    assert sorted(record.attention) == [0, 1] and record.neurons[1].shape == (1, 6, 64)
    with pytest.raises(UnsupportedModelError, match=r"attention output projection.*ModelParts\(attention_output="):
        capture(model, heads=True).__enter__()
    with pytest.raises(EditError, match="attention output projection"):
        perturb(model, ScaleHead(0, 1, 0.0)).start()
    with perturb(model, AddNoise((1, "attention"), 0.1)):
        pass


def test_opt_has_no_mlp_module_but_has_neurons():
    from nbinspect import AddNoise, EditError, perturb

    model = tiny("opt")  # fc1/fc2 sit in the block itself
    adapter = Adapter.of(model)
    assert adapter.parts.mlp is None and adapter.parts.neurons == "fc2"
    with pytest.raises(EditError, match="MLP module|no part .mlp."):
        perturb(model, AddNoise((0, "mlp"), 0.1)).start()
    with capture(model, neurons=True) as record, torch.no_grad():
        model(input_ids=torch.randint(0, 128, (2, 5)))
    assert record.neurons[0].shape == (2, 5, 64)  # OPT flattens the tokens; the capture does not


def test_not_a_transformer_is_refused_by_structure_too():
    class Blocks(nn.Module):  # a block list without attention
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    with pytest.raises(UnsupportedModelError, match="attention module.*ModelParts"):
        Adapter.of(Blocks())
    with pytest.raises(UnsupportedModelError, match="list of transformer blocks"):
        Adapter.of(nn.Linear(3, 3))


@pytest.mark.real_model
@pytest.mark.parametrize("fixture", ["smollm2", "minilm"])
def test_structure_finds_what_was_named_by_hand_in_real_models(fixture, request):
    from nbinspect.adapters import FAMILIES, find_parts

    model, _ = request.getfixturevalue(fixture)
    parts, _ = find_parts(model)
    hand = FAMILIES[model.config.model_type]
    for name in ("layers", "attention", "attention_output", "neurons", "final_norm", "embedding", "router", "causal"):
        assert getattr(parts, name) == getattr(hand, name), name


def test_a_trace_of_a_model_without_a_known_output_projection_still_feeds_the_other_views():
    import nbinspect
    from tiny_models import CharTokenizer

    model = tiny("phi")
    for layer in model.model.layers:
        layer.self_attn.dense = _Mix(layer.self_attn.dense)
    dash = nbinspect.inspect(nbinspect.trace(model, CharTokenizer(), "Hello there"))
    assert "attention" in dash.views and "neurons" in dash.views
