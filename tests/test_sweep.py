"""Head sweep: batched ablations rerun from the ablated layer agree with a full forward under AblateHead."""

import threading

import pytest
import torch
from tiny_models import CharTokenizer, tiny

import nbinspect
from nbinspect.adapters import Adapter
from nbinspect.sweep import head_sweep

CAUSAL = ["gpt2", "llama", "mistral", "qwen2", "gpt_neox", "mixtral"]
TEXT = "the cat sat on"


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits[0].float()


@pytest.mark.parametrize("family", CAUSAL)
def test_zero_ablation_matches_perturb_ablate_head(family):
    model, tok = tiny(family), CharTokenizer()
    adapter = Adapter.of(model)
    inputs = tok(TEXT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = head_sweep(model, tok, TEXT, target=5, foil=9, batch_size=3, progress=False)
    base = _logits(model, inputs)[-1]
    assert result.base_value == pytest.approx(float(base[5] - base[9]), abs=1e-5)
    for layer in range(adapter.n_layers):
        for head in range(adapter.n_heads):
            with nbinspect.perturb(model, nbinspect.AblateHead(layer, head)):
                logits = _logits(model, inputs)[-1]
            want = float(logits[5] - logits[9]) - result.base_value
            assert float(result.effect[layer, head]) == pytest.approx(want, abs=1e-5), (layer, head)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert result.forwards < result.runs


def test_loss_and_mean_ablation_match_a_manual_hook():
    model, tok = tiny("llama"), CharTokenizer()
    adapter = Adapter.of(model)
    inputs = tok(TEXT)
    ids = inputs["input_ids"][0]
    size = adapter.head_dim
    reference = ["a quick brown fox", "jumps over"]
    result = head_sweep(model, tok, TEXT, metric="loss", ablation="mean", reference=reference, progress=False)
    # The mean output of each head over every position of the reference texts, by plain hooks.
    z = {}
    handles = [adapter.part(i, "attention_output").register_forward_pre_hook(
        lambda m, a, i=i: z.setdefault(i, []).append(a[0][0])) for i in range(adapter.n_layers)]
    with torch.no_grad():
        for t in reference:
            model(**tok(t))
    for h in handles:
        h.remove()

    def loss(logits):
        return float(torch.nn.functional.cross_entropy(logits[:-1], ids[1:]))

    base = loss(_logits(model, inputs))
    assert result.base_value == pytest.approx(base, abs=1e-5)
    for layer in (0, 2):
        mean = torch.cat(z[layer]).mean(0)
        for head in (0, 3):
            def hook(m, a):
                x = a[0].clone()
                x[..., head * size:(head + 1) * size] = mean[head * size:(head + 1) * size]
                return (x,)
            handle = adapter.part(layer, "attention_output").register_forward_pre_hook(hook)
            try:
                want = loss(_logits(model, inputs)) - base
            finally:
                handle.remove()
            assert float(result.effect[layer, head]) == pytest.approx(want, abs=1e-5)
    assert result.metric_label == "mean next-token loss over the text"


def test_cancel_between_batches_and_layers_subset():
    model, tok = tiny("gpt2"), CharTokenizer()
    event = threading.Event()
    seen = []

    def cancel():
        seen.append(1)
        if len(seen) == 2:
            event.set()
        return event.is_set()

    result = head_sweep(model, tok, TEXT, batch_size=2, cancel=cancel, progress=False)
    assert not result.complete and result.runs == 2 and result.forwards == 1
    assert torch.isnan(result.effect).sum() == result.effect.numel() - 2
    part = head_sweep(model, tok, TEXT, layers=[1], progress=False)
    assert torch.isnan(part.effect[0]).all() and not torch.isnan(part.effect[1]).any()
    assert part.top(1)[0][0] == 1
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_bad_arguments_are_refused():
    model, tok = tiny("llama"), CharTokenizer()
    with pytest.raises(ValueError, match="ablation"):
        head_sweep(model, tok, TEXT, ablation="noise", progress=False)
    with pytest.raises(ValueError, match="metric"):
        head_sweep(model, tok, TEXT, metric="accuracy", progress=False)
    with pytest.raises(ValueError, match="target and foil belong"):
        head_sweep(model, tok, TEXT, metric="loss", target=3, progress=False)
    with pytest.raises(ValueError, match="no next-token head"):
        head_sweep(tiny("bert"), tok, TEXT, progress=False)
    with pytest.raises(IndexError):
        head_sweep(model, tok, TEXT, layers=[7], progress=False)


@pytest.mark.real_model
def test_smollm2_sweep_of_two_layers_matches_ablate_head(smollm2):
    model, tok = smollm2
    text = "The capital of France is"
    result = nbinspect.head_sweep(model, tok, text, layers=[0, 29], progress=False)
    inputs = tok(text, return_tensors="pt")
    for layer, head in [(0, 0), (29, 8)]:
        with nbinspect.perturb(model, nbinspect.AblateHead(layer, head)):
            logits = _logits(model, inputs)[-1]
        assert float(result.values[layer, head]) == pytest.approx(float(logits[result.target]), abs=1e-4)


def test_view_sends_the_effects_as_bytes_and_links_the_selection():
    from nbinspect.views.head_sweep_view import HeadSweepView

    model, tok = tiny("llama"), CharTokenizer()
    result = head_sweep(model, tok, TEXT, layers=[0, 2], progress=False)
    sel = nbinspect.Selection()
    view = HeadSweepView(result, selection=sel)
    shown = view.shown()
    assert torch.isnan(shown[1]).all() and not torch.isnan(shown[0]).any()
    ok = ~torch.isnan(result.effect)
    assert (result.effect[ok] - shown[ok]).abs().max() <= view.scale / 254 + 1e-6
    assert view.scale == pytest.approx(float(result.effect[ok].abs().max()))
    top = torch.frombuffer(bytearray(view.top), dtype=torch.int32).reshape(-1, 2).tolist()
    assert [tuple(t) for t in top] == [(l, h) for l, h, _ in result.top(8)]
    view.layer, view.head = 2, 1
    assert (sel.layer, sel.head) == (2, 1)
    with pytest.raises(TypeError, match="head_sweep"):
        HeadSweepView("not a result")
