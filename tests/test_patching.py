"""Activation patching: batched reruns from the patched layer agree with a naive full forward with a hook."""

import threading

import pytest
import torch
from tiny_models import CharTokenizer, tiny

import nbinspect
from nbinspect._batched import mlp_output_module
from nbinspect.adapters import Adapter
from nbinspect.patching import patch

CAUSAL = ["gpt2", "llama", "mistral", "qwen2", "gpt_neox", "mixtral", "qwen2_moe"]
CLEAN, CORRUPTED = "abcdefgh", "abcXefgY"
TARGET, FOIL = 5, 7


def _recorded(model, adapter, inputs):
    """Every activation patch() copies, recorded by plain hooks during one full forward."""
    n = adapter.n_layers
    rec = {"resid": [None] * (n + 1), "attn": [None] * n, "mlp": [None] * n, "heads": [None] * n}
    handles = []
    for i, layer in enumerate(adapter.layers):
        handles.append(layer.register_forward_pre_hook(
            lambda m, a, k, i=i: rec["resid"].__setitem__(i, (a[0] if a else k["hidden_states"]).clone()), with_kwargs=True))
        o = adapter.part(i, "attention_output")
        handles.append(o.register_forward_pre_hook(lambda m, a, i=i: rec["heads"].__setitem__(i, a[0].clone())))
        handles.append(o.register_forward_hook(lambda m, a, out, i=i: rec["attn"].__setitem__(i, out.clone())))
        handles.append(mlp_output_module(adapter, i).register_forward_hook(
            lambda m, a, out, i=i: rec["mlp"].__setitem__(i, (out[0] if isinstance(out, tuple) else out).clone())))
    handles.append(adapter.layers[-1].register_forward_hook(
        lambda m, a, out: rec["resid"].__setitem__(n, (out[0] if isinstance(out, tuple) else out).clone())))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return rec


def _naive(model, adapter, inputs, clean, kind, layer, col, position=-1):
    """The metric after one patch, by a full forward of the corrupted input with one hook."""
    n = adapter.n_layers

    def put(t, value):
        t = t.clone()
        t[:, col] = value[:, col]
        return t

    if kind == "resid" and layer < n:
        def hook(m, a, k):
            if a:
                return (put(a[0], clean["resid"][layer]), *a[1:]), k
            return a, {**k, "hidden_states": put(k["hidden_states"], clean["resid"][layer])}
        handle = adapter.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
    elif kind == "resid":
        def hook(m, a, out):
            if isinstance(out, tuple):
                return (put(out[0], clean["resid"][n]), *out[1:])
            return put(out, clean["resid"][n])
        handle = adapter.layers[-1].register_forward_hook(hook)
    elif kind == "heads":
        size = clean["heads"][layer].shape[-1] // adapter.n_heads

        def hook(m, a):
            z = a[0].clone()
            z[..., col * size:(col + 1) * size] = clean["heads"][layer][..., col * size:(col + 1) * size]
            return (z,)
        handle = adapter.part(layer, "attention_output").register_forward_pre_hook(hook)
    else:
        module = adapter.part(layer, "attention_output") if kind == "attn" else mlp_output_module(adapter, layer)

        def hook(m, a, out):
            if isinstance(out, tuple):
                return (put(out[0], clean[kind][layer]), *out[1:])
            return put(out, clean[kind][layer])
        handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(**inputs).logits[0, position].float()
    finally:
        handle.remove()
    return float(logits[TARGET] - logits[FOIL])


@pytest.mark.parametrize("family", CAUSAL)
def test_every_patch_matches_a_naive_full_forward(family):
    model = tiny(family)
    adapter = Adapter.of(model)
    tok = CharTokenizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = patch(model, tok, CLEAN, CORRUPTED, target=TARGET, foil=FOIL, batch_size=3, progress=False)
    clean = _recorded(model, adapter, tok(CLEAN))
    bad_inputs = tok(CORRUPTED)
    for kind in ("resid", "attn", "mlp", "heads"):
        got = result.values[kind]
        assert not torch.isnan(got).any()
        for layer in range(got.shape[0]):
            for col in range(got.shape[1]):
                want = _naive(model, adapter, bad_inputs, clean, kind, layer, col)
                assert abs(float(got[layer, col]) - want) <= 1e-5, (kind, layer, col, float(got[layer, col]), want)
    # Unpatched runs agree with the model's own forward, and nothing was left on the model.
    with torch.no_grad():
        lc = model(**tok(CLEAN)).logits[0, -1]
        lb = model(**bad_inputs).logits[0, -1]
    assert result.clean_value == pytest.approx(float(lc[TARGET] - lc[FOIL]), abs=1e-5)
    assert result.corrupted_value == pytest.approx(float(lb[TARGET] - lb[FOIL]), abs=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert result.forwards < result.runs  # several patches per forward


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_patching_the_whole_residual_recovers_everything(family):
    model, tok = tiny(family), CharTokenizer()
    result = patch(model, tok, CLEAN, CORRUPTED, target=TARGET, foil=FOIL, kinds=("resid",), progress=False)
    share = result.share("resid")
    assert result.differing == [3, 7]
    # What leaves the last layer at the measured position decides the logits alone.
    assert float(share[-1, -1]) == pytest.approx(1.0, abs=1e-4)
    # Before the first differing token nothing differs: no work, share exactly 0.
    assert torch.equal(share[:, :3], torch.zeros_like(share[:, :3]))
    # With one differing token, patching the residual stream entering layer 0 there is the clean run.
    both = patch(model, tok, CLEAN, "abcdefgY", target=TARGET, foil=FOIL, kinds=("resid",), progress=False)
    assert float(both.share("resid")[0, 7]) == pytest.approx(1.0, abs=1e-4)


def test_single_difference_layer0_share_is_one():
    model, tok = tiny("llama"), CharTokenizer()
    result = patch(model, tok, CLEAN, "abcXefgh", target=TARGET, foil=FOIL, kinds=("resid", "attn"), progress=False)
    s = result.share("resid")
    assert float(s[0, 3]) == pytest.approx(1.0, abs=1e-4)
    assert float(s[result.n_layers, 7]) == pytest.approx(1.0, abs=1e-4)
    assert result.top("resid", 1)[0][2] == pytest.approx(float(torch.nan_to_num(s, nan=-1).max()))


def test_prompts_of_different_lengths_are_refused_naming_both():
    model, tok = tiny("llama"), CharTokenizer()
    with pytest.raises(ValueError, match=r"clean prompt is 8 tokens long and the corrupted prompt 5"):
        patch(model, tok, CLEAN, "abcde", target=TARGET, foil=FOIL, progress=False)


def test_same_metric_encoder_and_bad_tokens_are_refused():
    model, tok = tiny("llama"), CharTokenizer()
    with pytest.raises(ValueError, match="same metric"):
        patch(model, tok, CLEAN, CLEAN, target=TARGET, foil=FOIL, progress=False)
    with pytest.raises(ValueError, match="no next-token head"):
        patch(tiny("bert"), tok, CLEAN, CORRUPTED, target=TARGET, foil=FOIL, progress=False)
    with pytest.raises(ValueError, match="2 tokens"):
        patch(model, tok, CLEAN, CORRUPTED, target="ab", foil=FOIL, progress=False)
    with pytest.raises(ValueError, match="kinds"):
        patch(model, tok, CLEAN, CORRUPTED, target=TARGET, foil=FOIL, kinds=("nope",), progress=False)


def test_cancel_stops_between_batches_and_leaves_nan():
    model, tok = tiny("llama"), CharTokenizer()
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    result = patch(model, tok, CLEAN, CORRUPTED, target=TARGET, foil=FOIL, batch_size=1, cancel=cancel, progress=False)
    assert not result.complete and result.forwards == 2
    assert torch.isnan(result.values["resid"]).any()
    event = threading.Event()
    event.set()
    assert not patch(model, tok, CLEAN, CORRUPTED, target=TARGET, foil=FOIL, cancel=event, progress=False).complete
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_layers_subset_and_default_answers():
    model, tok = tiny("gpt2"), CharTokenizer()
    result = patch(model, tok, CLEAN, CORRUPTED, layers=[1], progress=False)
    assert result.target is not None
    assert torch.isnan(result.values["attn"][0]).all() and not torch.isnan(result.values["attn"][1]).any()
    assert torch.isnan(result.values["resid"][-1]).all()  # the extra row belongs to the last layer


@pytest.mark.real_model
def test_smollm2_factual_prompt(smollm2):
    model, tok = smollm2
    result = nbinspect.patch(
        model, tok, "The Eiffel Tower is in the city of", "The Colosseum is in the city of",
        target=" Paris", foil=" Rome", kinds=("resid",), layers=[0, 29], progress=False,
    )
    share = result.share("resid")
    assert result.clean_value > 0 > result.corrupted_value
    assert float(share[30, -1]) == pytest.approx(1.0, abs=1e-4)


def test_view_sends_the_shares_as_bytes_and_links_the_selection():
    from nbinspect.views.patching_view import PatchingView

    model, tok = tiny("llama"), CharTokenizer()
    result = patch(model, tok, CLEAN, CORRUPTED, target=TARGET, foil=FOIL, layers=[1, 2], progress=False)
    sel = nbinspect.Selection()
    view = PatchingView(result, selection=sel)
    assert view.kinds == ["resid", "attn", "mlp", "heads"]
    for kind in view.kinds:
        share, shown = result.share(kind), view.shown(kind)
        assert torch.equal(torch.isnan(share), torch.isnan(shown))  # not measured: layer 0
        ok = ~torch.isnan(share)
        assert (share[ok] - shown[ok]).abs().max() <= view.scale / 254 + 1e-6
        assert isinstance(getattr(view, kind), bytes)
    assert view.scale >= 1.0 and len(view.resid) == (result.n_layers + 1) * 8
    view.layer, view.token, view.head = 2, 5, 3
    assert (sel.layer, sel.token, sel.head) == (2, 5, 3)
    sel.layer = 1
    assert view.layer == 1
    with pytest.raises(TypeError, match="nbinspect.patch"):
        PatchingView("not a result")
