"""nbinspect.generate on tiny random models: the same tokens as the model's own generate (greedy and seeded
sampling), each step's candidates, attention row and logit lens against a plain forward over the sequence
so far, live steps and stopping, and the model left without hooks."""

import threading

import pytest
import torch
from tiny_models import CharTokenizer, tiny

import nbinspect
from nbinspect.adapters import Adapter
from nbinspect.generation import start_generation

PROMPT = "Once upon a time"


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _plain(model, n, **kw):
    ids = CharTokenizer()(PROMPT)
    return model.generate(**ids, max_new_tokens=n, pad_token_id=0, **kw)[0, ids["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_steps_match_a_plain_forward_of_the_sequence_so_far(family):
    model = tiny(family)
    hooks = _hooks(model)
    view = nbinspect.generate(model, CharTokenizer(), PROMPT, max_new_tokens=5, top_k=4).wait()
    gen = view.generation
    assert [s.token for s in gen.steps] == _plain(model, 5, do_sample=False)
    assert _hooks(model) == hooks and not view.running and view.error == ""
    adapter = Adapter.of(model)
    for index, s in enumerate(gen.steps):
        ids = torch.tensor([gen.ids[: len(gen.prompt_tokens) + index]])
        with nbinspect.capture(model, attention=True, residual=True) as rec, torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        probs = torch.softmax(logits.float(), -1)
        top = probs.topk(4)
        assert s.candidates[0] == s.token and s.candidates.tolist() == top.indices.tolist()
        torch.testing.assert_close(s.probs, top.values, rtol=1e-4, atol=1e-6)
        assert s.chosen_prob == pytest.approx(float(probs[s.token]), rel=1e-4)
        for layer in range(adapter.n_layers):
            row = rec.attention[layer][0, :, -1, :]
            decoded = s.attention[layer, :, : row.shape[-1]].float() * s.attention_scale[layer][:, None] / 255
            assert (decoded - row).abs().max() <= float(row.max()) / 510 + 1e-4
            torch.testing.assert_close(s.residual[layer].float(), rec.residual[layer].after[0, -1], rtol=2e-3, atol=2e-3)
        # The lens of the last layer is the model's own prediction.
        lens_ids, lens_p, chosen = gen.logit_lens(index, k=1)
        assert int(lens_ids[-1, 0]) == s.token
        assert float(chosen[-1]) == pytest.approx(float(probs[s.token]), rel=1e-2)


def test_seeded_sampling_draws_what_the_model_draws():
    model = tiny("qwen2")
    torch.manual_seed(7)
    expected = _plain(model, 8, do_sample=True, temperature=1.5, top_k=50)
    torch.manual_seed(7)
    gen = start_generation(model, CharTokenizer(), PROMPT, 8, background=False, do_sample=True, temperature=1.5, top_k=50)
    assert [s.token for s in gen.steps] == expected
    assert all(s.probs.sum() <= 1.0 + 1e-5 for s in gen.steps)


def test_steps_arrive_live_and_stop_ends_early():
    model = tiny("llama")
    hooks = _hooks(model)
    gate = threading.Event()
    gen = start_generation(model, CharTokenizer(), PROMPT, 60, background=True)
    seen = []

    def listener(i):
        seen.append(i)
        if i == 2:
            gen.stop()
            gate.set()

    gen._listeners.append(listener)
    assert gate.wait(120)
    gen.wait(120)
    assert gen.done and 3 <= len(gen.steps) < 60
    assert seen[-1] == -1  # the end is announced
    assert _hooks(model) == hooks


def test_view_follows_the_latest_step_and_shows_a_picked_one():
    model = tiny("llama")
    view = nbinspect.generate(model, CharTokenizer(), PROMPT, max_new_tokens=4).wait()
    assert len(view.generated) == 4 and view.shown_step == 3
    view.step = 1
    assert view.shown_step == 1
    s = view.generation.steps[1]
    assert view.context == s.attention.shape[-1] == len(view.prompt_tokens) + 1
    assert len(view.attention) == view.n_layers * view.n_heads * view.context
    assert len(view.lens_tokens) == view.n_layers
    view.stop_requested = True  # after the end: harmless
    assert view.generation._stop.is_set()


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="max_new_tokens"):
        nbinspect.generate(tiny("llama"), CharTokenizer(), PROMPT, max_new_tokens=0)
    with pytest.raises(ValueError, match="cannot generate"):
        nbinspect.generate(tiny("bert"), CharTokenizer(), PROMPT)


def test_an_edit_regenerates_and_both_continuations_are_kept():
    model = tiny("llama")
    before = {n: p.clone() for n, p in model.state_dict().items()}
    view = nbinspect.generate(model, CharTokenizer(), PROMPT, max_new_tokens=6).wait()
    edits = [nbinspect.AblateHead(layer, head) for layer in range(3) for head in range(4)]
    edited = view.edit(*edits, background=False)
    with nbinspect.perturb(model, *edits), torch.no_grad():
        expected = _plain(model, 6, do_sample=False)
    assert [s.token for s in edited.steps] == expected
    assert [s.token for s in view.generation.steps] == _plain(model, 6, do_sample=False)
    assert view.edited == [s.text for s in edited.steps] and "ScaleHead(layer=0, head=0, factor=0.0)" in view.edits_label
    assert len(view.generated) == 6 and not view.edited_running
    for name, p in model.state_dict().items():
        assert torch.equal(p, before[name]), name
    assert view.edit() is None and view.edited == [] and view.edits_label == ""


def test_inexact_attention_records_the_same_rows():
    model = tiny("llama")
    exact = start_generation(model, CharTokenizer(), PROMPT, 3, background=False)
    fast = start_generation(model, CharTokenizer(), PROMPT, 3, background=False, exact=False)
    assert [s.token for s in fast.steps] == [s.token for s in exact.steps]
    for a, b in zip(exact.steps, fast.steps):
        da = a.attention.float() * a.attention_scale[..., None] / 255
        db = b.attention.float() * b.attention_scale[..., None] / 255
        assert (da - db).abs().max() <= 2 / 255


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_recorded_rows_equal_eager_attention_before_quantization(family):
    """The float rows a generation step keeps (the last query only, beside the model's sdpa call, at the
    prompt step and at KV-cache steps) equal eager attention's last row of the sequence so far to 1e-5."""
    from nbinspect.generation import _Recorder

    model = tiny(family)
    recorder = _Recorder(Adapter.of(model))
    raw = []
    take = recorder.take

    def keep_raw():
        raw.append([r.clone() for r in recorder.rows])
        return take()

    recorder.take = keep_raw
    ids = CharTokenizer()(PROMPT)["input_ids"]
    with recorder, torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        recorder.take()
        sequence = ids
        for _ in range(3):  # KV-cache steps: one query against the cached keys
            token = out.logits[:, -1:].argmax(-1)
            sequence = torch.cat([sequence, token], 1)
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            recorder.take()
    implementation = model.config._attn_implementation
    assert implementation == "sdpa"  # recorded beside sdpa, compared with eager
    model.set_attn_implementation("eager")
    try:
        for step, rows in enumerate(raw):
            n = ids.shape[1] + step
            with torch.no_grad():
                eager = model(input_ids=sequence[:, :n], output_attentions=True).attentions
            for layer, row in enumerate(rows):
                assert (row - eager[layer][0, :, -1]).abs().max() <= 1e-5, (step, layer)
    finally:
        model.set_attn_implementation(implementation)


def test_the_view_and_the_shared_selection_move_together():
    """Picking a step selects its token (prompt length + step) so linked views move, and selecting a
    generated token in a linked view shows its step; a prompt token leaves the step alone."""
    from nbinspect.views.attention_view import AttentionView
    from nbinspect.views.selection import Selection

    model = tiny("llama")
    selection = Selection()
    view = nbinspect.generate(model, CharTokenizer(), PROMPT, max_new_tokens=5, selection=selection).wait()
    gen, p = view.generation, len(view.prompt_tokens)
    assert view.selection is selection and view.step == -1 and view.shown_step == 4
    # An attention view of the whole generated text, linked by the same selection.
    whole = nbinspect.trace(model, CharTokenizer(), {"input_ids": torch.tensor([gen.ids])}, gradients=False)
    linked = AttentionView(whole, selection=selection)
    view.step = 2  # the scrubber (or a click on generated token 2)
    assert selection.token == p + 2 and linked.token == p + 2 and view.shown_step == 2
    linked.token = p + 4  # a click on the last generated token in the attention view
    assert view.step == 4 and view.shown_step == 4
    s = gen.steps[4]
    assert view.attention == nbinspect.codecs.to_bytes(s.attention)
    linked.token = 3  # a prompt token: the step stays
    assert view.step == 4 and view.selected_step is None
    selection.token = -1
    assert view.step == 4
    # A selection bound to the prompt only cannot point at generated tokens: picking still works.
    short = Selection().bound_to(n_tokens=p)
    other = nbinspect.generate(model, CharTokenizer(), PROMPT, max_new_tokens=3, selection=short).wait()
    other.step = 1
    assert other.shown_step == 1 and short.token == -1
