"""Bad input gets a clear error and loses nothing, whichever view it reaches."""

import pytest
import torch

import nbinspect
from tiny_models import CharTokenizer, tiny

TEXT = "the cat sat on the mat"


@pytest.mark.parametrize("make", ["attention", "neurons", "gradient_flow", "inspect"])
def test_nan_weights_get_a_clear_error_and_lose_nothing(make):
    model = tiny("llama")
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")  # every layer after it is NaN too
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with pytest.raises(ValueError, match="NaN or infinite"):
        getattr(nbinspect, make)(model, CharTokenizer(), TEXT)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert all(torch.equal(saved[k], v) or (saved[k].isnan() == v.isnan()).all() for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training


# --- gradients: every bad input refused before any forward, with the argument named -------------------


class NoForward:
    """Fails the test if the model runs: the errors below must come before any forward pass."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        def refuse(module, args, kwargs):
            raise AssertionError("the model ran a forward pass before the input was checked")

        self.handle = self.model.register_forward_pre_hook(refuse, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


IDS = torch.tensor([[5, 6, 7]])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: nbinspect.gradient_norms(m, torch.tensor([[5]]), "loss"), ValueError, "at least two tokens"),
        (lambda m: nbinspect.gradient_norms(m, torch.zeros(1, 0, dtype=torch.long)), ValueError, r"inputs is empty"),
        (lambda m: nbinspect.gradient_norms(m, torch.zeros(1, 3)), TypeError, r"inputs must hold integer token ids.*float32"),
        (lambda m: nbinspect.gradient_norms(m, torch.tensor([[1, 128]])), ValueError, r"token id 128.*ids 0\.\.127"),
        (lambda m: nbinspect.gradient_norms(m, torch.tensor([[1, -1]])), ValueError, r"token id -1.*ids 0\.\.127"),
        (lambda m: nbinspect.gradient_norms(m, {"input_ids": [[1, 2]]}), TypeError, "return_tensors='pt'"),
        (lambda m: nbinspect.gradient_norms(m, "some text"), TypeError, "inputs must be a tensor of token ids"),
        (lambda m: nbinspect.gradient_norms(m, torch.zeros(1, 1, 3, dtype=torch.long)), ValueError, r"shape \[1, 1, 3\]"),
        (lambda m: nbinspect.gradient_norms(m, torch.zeros(1, 257, dtype=torch.long)), ValueError, "257 tokens.*at most 256"),
        (lambda m: nbinspect.gradient_norms(m, {"input_ids": IDS, "attention_mask": torch.ones(1, 4)}), ValueError,
         r"attention_mask.*\[1, 4\].*\[1, 3\]"),
        (lambda m: nbinspect.gradient_norms(m, IDS, 128), IndexError, r"target token id 128.*0\.\.127"),
        (lambda m: nbinspect.gradient_norms(m, IDS, 2.0), TypeError, "target"),
        (lambda m: nbinspect.gradient_norms(m, IDS, True), TypeError, "target"),
        (lambda m: nbinspect.gradient_norms(m, IDS, "los"), ValueError, "unknown target 'los'"),
        (lambda m: nbinspect.gradient_norms(m, IDS, None), ValueError, "needs a target"),
        (lambda m: nbinspect.saliency(m, torch.zeros(1, 0, dtype=torch.long)), ValueError, "inputs is empty"),
        (lambda m: nbinspect.saliency(m, torch.zeros(1, 3)), TypeError, "integer token ids"),
        (lambda m: nbinspect.saliency(m, torch.tensor([[1, 999]])), ValueError, r"token id 999.*0\.\.127"),
        (lambda m: nbinspect.saliency(m, IDS, 128), IndexError, "target token id 128"),
        (lambda m: nbinspect.saliency(m, torch.tensor([[5]]), "loss"), ValueError, "at least two tokens"),
        (lambda m: nbinspect.saliency(m, IDS, method="integrated_gradients", baseline=torch.zeros(4, 32)), ValueError,
         r"baseline has shape \[4, 32\].*embeddings have shape \[1, 3, 32\]"),
        (lambda m: nbinspect.saliency(m, IDS, method="integrated_gradients", baseline=[0.0] * 32), TypeError, "baseline"),
        (lambda m: nbinspect.saliency(m, IDS, method="integrated_gradients", baseline=torch.full((32,), float("nan"))),
         ValueError, "baseline contains NaN"),
        (lambda m: nbinspect.saliency(m, IDS, method="integrated_gradients", steps=2.5), ValueError, "steps"),
        (lambda m: nbinspect.saliency(m, IDS, method=None), ValueError, "method"),
    ],
)
def test_gradient_inputs_are_checked_before_any_forward(call, error, match):
    model = tiny("llama")
    with NoForward(model), pytest.raises(error, match=match):
        call(model)
    assert all(p.grad is None and p.requires_grad for p in model.parameters()) and not model.training


def test_one_token_text_in_gradient_flow_and_inspect():
    # The views explain the predicted next token by default, which one token has; the loss needs two.
    nbinspect.gradient_flow(tiny("llama"), CharTokenizer(), "a")
    nbinspect.inspect(tiny("llama"), CharTokenizer(), "a")
    with pytest.raises(ValueError, match="at least two tokens"):
        nbinspect.gradient_flow(tiny("llama"), CharTokenizer(), "a", target="loss")


def test_one_token_still_works_with_a_token_target_and_a_one_row_tensor():
    model = tiny("llama")
    norms = nbinspect.gradient_norms(model, torch.tensor([5]), 7)  # [tokens] is a batch of one
    assert all(float(v) > 0 for v in norms.layers)
    assert nbinspect.saliency(model, torch.tensor([[5]]), 7).shape == (1, 1)


def test_nan_weights_give_a_gradient_error_naming_the_first_broken_layer():
    model = tiny("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="output of layer 1 is the first that is not finite"):
        nbinspect.gradient_norms(model, IDS)
    with pytest.raises(ValueError, match="output of layer 1 is the first that is not finite"):
        nbinspect.saliency(model, IDS)
    assert all(p.grad is None for p in model.parameters())


def test_gradient_norms_are_accumulated_in_float64():
    # A 1M-element unembedding: float32 Tensor.norm() is off by ~5e-4 relative here; float64 accumulation
    # rounded once to float32 is within one float32 rounding (6e-8) of the float64 answer.
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 4096, (1, 16), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad.double() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    result = nbinspect.gradient_norms(model, ids)
    for name, g in grads.items():
        assert result.parameters[name].dtype == torch.float32
        torch.testing.assert_close(result.parameters[name].double(), g.square().sum().sqrt(), rtol=1.2e-7, atol=0)
    layer = [g for n, g in grads.items() if n.startswith("model.layers.1.")]
    expected = torch.stack([g.square().sum() for g in layer]).sum().sqrt()
    torch.testing.assert_close(result.layers[1].double(), expected, rtol=1.2e-7, atol=0)


# --- token text: hidden characters drawn visibly, in the one place every view takes labels from --------


def test_bidi_and_invisible_characters_are_shown_as_markers():
    from nbinspect.codecs import MAX_TOKEN_CHARS, clip_tokens

    hidden = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c\u200b\u200c\u200d\u2060\ufeff\x00\x1b\u2028\u3164"
    for ch in hidden:
        (shown,) = clip_tokens([f"a{ch}b"])
        assert shown == f"a⟨U+{ord(ch):04X}⟩b"
    assert clip_tokens(["\u202eevil", "<img src=x onerror=alert(1)>", " the", "é", "日本", "\n", "\t"]) == [
        "⟨U+202E⟩evil", "<img src=x onerror=alert(1)>", " the", "é", "日本", "\n", "\t"
    ]
    # MAX_TOKEN_CHARS still bounds every label, and a marker is never cut in half.
    assert clip_tokens(["x" * MAX_TOKEN_CHARS]) == ["x" * MAX_TOKEN_CHARS]
    assert clip_tokens(["x" * (MAX_TOKEN_CHARS + 1)]) == ["x" * (MAX_TOKEN_CHARS - 1) + "…"]
    (long,) = clip_tokens(["\u202e" * 10_000])
    assert len(long) <= MAX_TOKEN_CHARS and long.endswith("⟩…") and "\u202e" not in long


VIEWS = ["attention", "neurons", "gradient_flow", "activations", "attention_mechanics", "block_writes",
         "logit_attribution", "logit_lens", "sliders"]


@pytest.mark.parametrize("make", VIEWS)
def test_every_view_labels_tokens_with_hidden_characters_visible(make):
    class BidiTokenizer(CharTokenizer):
        def decode(self, ids, **kwargs):
            return "\u202eevil" if ids == [ord("e")] else super().decode(ids)

    view = getattr(nbinspect, make)(tiny("llama"), BidiTokenizer(), "the cat")
    assert view.tokens[2] == "⟨U+202E⟩evil" and not any("\u202e" in t for t in view.tokens)


# --- edits: bad parts and numbers refused, Ctrl-C never leaves weights half restored -------------------

from nbinspect import AddNoise, EditError, ScaleHead, ScaleLayer, ScaleNeuron, perturb  # noqa: E402


def _bits(model):
    return {k: v.detach().clone().reshape(-1).view(torch.uint8) for k, v in model.state_dict().items()}


def _assert_bits(model, before):
    after = _bits(model)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"not restored: {changed}"


def test_noise_on_a_part_that_does_not_exist_lists_the_parts_that_do():
    model = tiny("llama")
    before = _bits(model)
    with pytest.raises(EditError, match=r"no part 'bogus'.*'attention', 'attention_output', 'mlp', 'neurons'"):
        perturb(model, AddNoise((0, "bogus"), 0.1)).start()
    with pytest.raises(EditError, match="no part 'neurons'.*'router'"):
        perturb(tiny("mixtral"), AddNoise((0, "neurons"), 0.1)).start()
    _assert_bits(model, before)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 10**400], ids=["nan", "inf", "-inf", "10**400"])
@pytest.mark.parametrize(
    "make",
    [
        lambda x: ScaleHead(0, 0, x),
        lambda x: ScaleNeuron(0, 0, x),
        lambda x: ScaleLayer(0, "mlp", x),
        lambda x: AddNoise(0, x),
    ],
    ids=["ScaleHead", "ScaleNeuron", "ScaleLayer", "AddNoise"],
)
def test_nan_or_infinite_factors_and_sigmas_are_refused(make, bad):
    model = tiny("llama")
    before = _bits(model)
    with pytest.raises(EditError, match="finite number"):
        perturb(model, ScaleHead(1, 1, 0.0), make(bad)).start()
    _assert_bits(model, before)


EDITS = (ScaleHead(0, 1, 0.0), ScaleLayer(1, "mlp", 0.5), AddNoise(2, 0.3), ScaleNeuron(2, 5, 3.0))


def _interrupt_the_nth_copy(monkeypatch, n: int, how):
    """Patch Tensor.copy_ so that its n-th call (counted from now) is interrupted once."""
    calls = {"n": 0}
    original = torch.Tensor.copy_

    def copy_(self, src, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            how(self, src, original)
        return original(self, src, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "copy_", copy_)
    return calls


def test_keyboard_interrupt_raised_inside_a_restore_copy_still_restores_everything(monkeypatch):
    def raise_before_copying(dst, src, original):
        raise KeyboardInterrupt

    model = tiny("llama")
    before = _bits(model)
    with pytest.raises(KeyboardInterrupt):
        with perturb(model, *EDITS) as p:
            calls = _interrupt_the_nth_copy(monkeypatch, 2, raise_before_copying)
    monkeypatch.undo()
    assert calls["n"] >= 5 and not p.active  # the interrupted copy was made again, and the rest after it
    _assert_bits(model, before)


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler for the test: a shell that starts the run in the background (``cmd &``)
    hands it SIGINT ignored, and then Ctrl-C raises nothing anywhere."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_ctrl_c_arriving_during_restore_waits_until_the_restore_is_done(monkeypatch):
    import os
    import signal

    seen = {}

    def sigint_after_copying(dst, src, original):
        original(dst, src)
        os.kill(os.getpid(), signal.SIGINT)  # delivered between two bytecodes of the restore loop
        seen["signalled"] = True

    model = tiny("llama")
    before = _bits(model)
    with pytest.raises(KeyboardInterrupt):
        with perturb(model, *EDITS):
            _interrupt_the_nth_copy(monkeypatch, 1, sigint_after_copying)
    monkeypatch.undo()
    assert seen and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    _assert_bits(model, before)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_ctrl_c_arriving_while_edits_are_applied_restores_them_then_interrupts(monkeypatch):
    import os
    import signal

    model = tiny("llama")
    before = _bits(model)
    original = torch.Tensor.mul_

    def mul_(self, *args):
        os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(torch.Tensor, "mul_", mul_)
    with pytest.raises(KeyboardInterrupt):
        with perturb(model, *EDITS):
            pytest.fail("the block ran although Ctrl-C came while the edits were applied")
    monkeypatch.undo()
    _assert_bits(model, before)


def _nan_model(where: str):
    model = tiny("llama")
    with torch.no_grad():
        if where == "layer":
            model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")  # layer 1's output is the first NaN
        else:
            model.lm_head.weight[3, 0] = float("inf")
    return model


@pytest.mark.parametrize("where, named", [
    ("layer", "output of layer 1"),
    ("head", "logits contain"),
])
def test_nan_weights_then_sliders_name_the_first_layer_that_is_not_finite(where, named):
    model = _nan_model(where)
    before = _bits(model)
    with pytest.raises(ValueError, match=f"{named}.*NaN or infinite"):
        nbinspect.sliders(model, CharTokenizer(), TEXT, threaded=False)
    _assert_bits(model, before)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


@pytest.mark.parametrize("where, named", [("layer", "the output of layer 1"), ("head", "the output head's logits")])
def test_recompute_check_finite_names_the_first_layer_whose_output_is_not_finite(where, named):
    recompute = nbinspect.Recompute(_nan_model(where), CharTokenizer()(TEXT))
    with pytest.raises(ValueError, match=f"{named} contains NaN or infinite"):
        recompute.check_finite()
    nbinspect.Recompute(tiny("llama"), CharTokenizer()(TEXT)).check_finite()  # finite: no error
