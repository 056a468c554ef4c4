"""A generation step's logit lens takes the trace lens's path: final norm, then the model's whole head.

Gemma 2 soft-caps its logits (``tanh(z / cap) · cap``) after the unembedding; a lens that stops at the
projection gives another distribution at the last layer than the one the model drew from.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import CharTokenizer, tiny

from nbinspect import residual_stream as rs
from nbinspect.generation import start_generation
from nbinspect.trace import trace as make_trace

PROMPT = "the cat sat on the mat"


def test_generation_lens_at_the_last_layer_is_the_models_own_prediction_under_soft_capping():
    model = tiny("gemma2")
    cap = model.config.final_logit_softcapping
    assert cap == 3.0
    with torch.no_grad():  # a final norm scaled up (Gemma's norms multiply by 1 + weight): logits far past the cap
        model.model.norm.weight.add_(20.0)
    gen = start_generation(model, CharTokenizer(), PROMPT, 3, background=False)
    prompt = gen.prompt_ids.shape[1]
    for index, step in enumerate(gen.steps):
        ids = torch.tensor([gen.ids[: prompt + index]])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float()
            x = step.residual[-1].float()  # what the lens decodes: the last block's output (kept as float16)
            uncapped = model.lm_head(model.model.norm(x))
        p = logits.softmax(-1)
        top = p.topk(5)
        lens_ids, lens_p, chosen = gen.logit_lens(index, k=5)
        assert lens_ids.shape == (model.config.num_hidden_layers, 5)
        assert torch.equal(lens_ids[-1], top.indices)
        # The residual is kept in float16: its rounding is all that separates the lens from the model.
        torch.testing.assert_close(lens_p[-1], top.values, rtol=0, atol=2e-4)
        assert abs(float(chosen[-1]) - float(p[step.token])) < 2e-4
        # What the lens gave before it applied the cap is much further off than that.
        assert float((uncapped.softmax(-1)[top.indices] - top.values).abs().max()) > 1e-2


def test_generation_lens_and_trace_lens_are_one_computation():
    model = tiny("gemma2")
    tok = CharTokenizer()
    gen = start_generation(model, tok, PROMPT, 1, background=False)
    step = gen.steps[0]
    # The trace's lens at the prompt's last position, and the same step's stream through decode_residuals.
    trace = make_trace(model, tok, PROMPT, gradients=False)
    lens = rs.logit_lens(trace, k=5, target=step.token, positions=[-1])
    stream = torch.stack([trace.record.residual[l].after[0, -1] for l in range(trace.adapter.n_layers)])
    part = rs.decode_residuals(trace.adapter, stream, k=5, target=step.token)
    assert torch.equal(part["ids"], lens.top_ids[:, 0]) and torch.equal(part["trank"], lens.target_rank[:, 0])
    torch.testing.assert_close(part["probs"], lens.top_probs[:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(part["tprob"], lens.target_prob[:, 0], rtol=0, atol=1e-6)
    # The generation's own step (float16 residual) lands on the same tokens.
    lens_ids, lens_p, chosen = gen.logit_lens(0, k=5)
    assert torch.equal(lens_ids[-1], lens.top_ids[-1, 0])
    torch.testing.assert_close(chosen, lens.target_prob[:, 0], rtol=0, atol=5e-4)


@pytest.mark.parametrize("family", ["cohere", "granite"])
def test_generation_lens_applies_the_models_logit_scaling(family):
    # Cohere multiplies its logits by logit_scale, Granite divides them by logits_scaling, after the head.
    model = tiny(family)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40.0)  # logits large enough for a scale to change the softmax
    gen = start_generation(model, CharTokenizer(), PROMPT, 2, background=False)
    prompt = gen.prompt_ids.shape[1]
    for index, step in enumerate(gen.steps):
        ids = torch.tensor([gen.ids[: prompt + index]])
        with torch.no_grad():
            p = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float().softmax(-1)
            unscaled = model.lm_head(model.model.norm(step.residual[-1].float())).softmax(-1)
        lens_ids, lens_p, chosen = gen.logit_lens(index, k=5)
        top = p.topk(5)
        assert torch.equal(lens_ids[-1], top.indices)
        torch.testing.assert_close(lens_p[-1], top.values, rtol=0, atol=1e-3)
        assert abs(float(chosen[-1]) - float(p[step.token])) < 1e-3
        assert float((unscaled[top.indices] - top.values).abs().max()) > 2e-2  # what the head alone gives
