"""The residual stream as a sum: logit lens, direct logit attribution, block writes, head types, and their views."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import FAMILIES, CharTokenizer, tiny

import nbinspect
from nbinspect import codecs
from nbinspect import residual_stream as rs
from nbinspect.adapters import Adapter

DECODERS = [f for f in FAMILIES if f != "bert"]
TEXT = "hello world, hello there"


def make_trace(model, tokenizer, text, **kw):
    from nbinspect.trace import trace

    return trace(model, tokenizer, text, gradients=False, **kw)


def randomize_biases(model, seed=1):
    """Give every bias and norm parameter random values, so the remainder (norm bias, o_proj and MLP
    biases, unembedding bias) is not zero and a missed term shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ("norm" in name or "ln" in name) and p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


# --- direct logit attribution ---------------------------------------------------------------------
@pytest.mark.parametrize("family", DECODERS)
def test_attribution_sums_to_the_models_logit(family):
    model = randomize_biases(tiny(family))
    trace = make_trace(model, CharTokenizer(), TEXT)
    logits = trace.record.logits[0]
    for position in (trace.n_tokens - 1, 3):
        target = int(logits[position].argmax())
        dla = rs.direct_logit_attribution(trace, target=target, position=position)
        total = float(dla.heads.double().sum() + dla.mlp.double().sum()) + dla.embeddings + dla.remainder
        assert total == pytest.approx(float(logits[position, target]), abs=1e-4)
        assert dla.logit == pytest.approx(float(logits[position, target]), abs=1e-4)
        assert dla.heads.shape == (3, 4) and dla.mlp.shape == (3,)
        # Each layer's heads plus its o_proj bias are that layer's attention write.
        assert float(dla.heads.sum()) + dla.remainder_parts["attention output biases"] == pytest.approx(
            float(dla.attention.sum()), abs=1e-4)
    if family == "gpt2":  # GPT-2 has biases everywhere: the remainder must carry them
        assert abs(dla.remainder_parts["final norm bias"]) > 1e-3
        assert abs(dla.remainder_parts["attention output biases"]) > 1e-3


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_attribution_of_a_contrast_is_the_logit_difference(family):
    model = randomize_biases(tiny(family))
    trace = make_trace(model, CharTokenizer(), TEXT)
    logits = trace.record.logits[0, -1]
    dla = rs.direct_logit_attribution(trace, target=10, foil=20)
    assert dla.total == pytest.approx(float(logits[10] - logits[20]), abs=1e-4)
    single = rs.direct_logit_attribution(trace, target=10)
    foil = rs.direct_logit_attribution(trace, target=20)
    assert torch.allclose(dla.heads, single.heads - foil.heads, atol=1e-5)


def test_untied_embeddings_use_the_output_matrix():
    model = tiny("gpt_neox")  # GPT-NeoX unties embed_in and embed_out
    assert not Adapter.of(model).tied_embeddings()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(3.0)
    trace = make_trace(model, CharTokenizer(), TEXT)
    dla = rs.direct_logit_attribution(trace, target=7)
    assert dla.total == pytest.approx(float(trace.record.logits[0, -1, 7]), abs=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_attribution_and_lens_of_an_edited_trace(family):
    model = randomize_biases(tiny(family))
    trace = make_trace(model, CharTokenizer(), TEXT)
    edited = trace.edit(nbinspect.AblateHead(1, 2))
    dla = rs.direct_logit_attribution(edited, target=5)
    assert float(dla.heads[1, 2]) == 0.0  # switched off: it writes nothing
    assert dla.total == pytest.approx(float(edited.record.logits[0, -1, 5]), abs=1e-4)
    before = rs.direct_logit_attribution(trace, target=5)
    assert float(before.heads[1, 2]) != 0.0
    lens = rs.logit_lens(edited)
    assert torch.equal(lens.top_ids[-1], edited.record.logits[0].topk(5).indices)


def test_a_wrong_decomposition_is_refused():
    model = tiny("llama")
    trace = make_trace(model, CharTokenizer(), TEXT)
    trace.record.mlp_out[1] = trace.record.mlp_out[1] * 2  # a stream that is not the sum of its parts
    with pytest.raises(ValueError, match="not the sum"):
        rs.direct_logit_attribution(trace)


def test_encoders_say_why_not():
    adapter = Adapter.of(tiny("bert"))
    reason = rs.not_applicable(adapter)
    assert reason and "encoder" in reason


# --- logit lens ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", DECODERS)
def test_lens_last_layer_is_the_models_own_prediction(family):
    model = randomize_biases(tiny(family))
    trace = make_trace(model, CharTokenizer(), TEXT)
    lens = rs.logit_lens(trace, k=5, target=9)
    logp = trace.record.logits[0].float().log_softmax(-1)
    top = logp.topk(5)
    assert lens.top_ids.shape == (3, trace.n_tokens, 5)
    assert torch.equal(lens.top_ids[-1], top.indices)
    assert torch.allclose(lens.top_probs[-1], top.values.exp(), atol=1e-5)
    assert torch.allclose(lens.entropy[-1], -(logp.exp() * logp).sum(-1), atol=1e-4)
    assert float(lens.kl_to_final[-1].abs().max()) < 1e-5
    assert float(lens.kl_to_final[:-1].max()) > 0
    assert torch.allclose(lens.target_prob[-1], logp[:, 9].exp(), atol=1e-6)
    assert torch.equal(lens.target_rank[-1], (logp > logp[:, 9:10]).sum(-1))


def test_lens_of_an_early_layer_decodes_that_layers_stream():
    model = tiny("llama")
    trace = make_trace(model, CharTokenizer(), TEXT)
    adapter = Adapter.of(model)
    x = trace.record.residual[0].after[0]
    expected = model.lm_head(model.model.norm(x)).log_softmax(-1)
    lens = rs.logit_lens(trace, k=3)
    assert torch.equal(lens.top_ids[0], expected.topk(3).indices)
    # The trace's target (here the predicted token) is the lens's default target.
    assert lens.target == trace.target.token == int(trace.record.logits[0, -1].argmax())
    assert adapter.n_layers == lens.n_layers


def test_lens_in_small_chunks_gives_the_same_answer(monkeypatch):
    model = tiny("gpt2")
    trace = make_trace(model, CharTokenizer(), TEXT)
    whole = rs.logit_lens(trace, target=4)
    monkeypatch.setattr(codecs, "LENS_CHUNK_ROWS", 1)  # one position per chunk
    monkeypatch.setattr(codecs, "LENS_BLOCK_MAX_BYTES", 4 * 3 * 7)  # 7 tokens per vocabulary block
    pieces = rs.logit_lens(trace, target=4)
    assert torch.equal(whole.top_ids, pieces.top_ids)
    assert torch.allclose(whole.kl_to_final, pieces.kl_to_final, atol=1e-6)
    assert torch.allclose(whole.entropy, pieces.entropy, atol=1e-5)
    assert torch.allclose(whole.top_probs, pieces.top_probs, atol=1e-6)
    assert torch.equal(whole.target_rank, pieces.target_rank)
    # Against the plain computation on whole logits: every layer, not only the last.
    x = torch.stack([trace.record.residual[l].after[0] for l in range(3)])
    with torch.no_grad():
        logp = model.lm_head(model.transformer.ln_f(x)).log_softmax(-1)
    p = logp.exp()
    assert torch.allclose(pieces.entropy, -(p * logp).sum(-1), atol=1e-5)
    kl = (p[-1:] * (logp[-1:] - logp)).sum(-1)
    assert torch.allclose(pieces.kl_to_final, kl, atol=1e-5) and float(kl[0].max()) > 1e-4
    assert torch.equal(pieces.target_rank, (logp > logp[..., 4:5]).sum(-1))
    assert torch.allclose(pieces.target_prob, p[..., 4], atol=1e-6)


def test_lens_blocks_of_few_tokens_on_a_cpu_give_what_one_block_gives(monkeypatch):
    # On a CPU a vocabulary block is at most codecs.LENS_BLOCK_TOKENS wide (a narrow GEMM runs faster);
    # the per-block sums are combined once at the end, against each row's max over every block.
    model = randomize_biases(tiny("gemma2"))  # soft-capped logits: the blocks go through the whole head
    trace = make_trace(model, CharTokenizer(), TEXT)
    monkeypatch.setattr(codecs, "LENS_BLOCK_MAX_BYTES", 2**30)
    monkeypatch.setattr(codecs, "LENS_BLOCK_TOKENS", 2**30)
    one = rs.logit_lens(trace, target=7)
    widths = []
    unembed = Adapter.unembed
    monkeypatch.setattr(Adapter, "unembed", lambda self, h, vocab=None, **kw: widths.append(vocab.stop - vocab.start)
                        or unembed(self, h, vocab, **kw))
    monkeypatch.setattr(codecs, "LENS_BLOCK_TOKENS", 5)
    many = rs.logit_lens(trace, target=7)
    vocab = model.config.vocab_size
    assert max(widths) == 5 and sum(widths) == vocab and len(widths) == math.ceil(vocab / 5)
    assert torch.equal(one.top_ids, many.top_ids) and torch.equal(one.target_rank, many.target_rank)
    for name in ("top_probs", "entropy", "kl_to_final", "target_prob"):
        assert torch.allclose(getattr(one, name), getattr(many, name), atol=1e-5), name
    logp = trace.record.logits[0].float().log_softmax(-1)  # the model's own (capped) logits
    assert torch.allclose(many.entropy[-1], -(logp.exp() * logp).sum(-1), atol=1e-4)


# --- block writes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_block_writes(family):
    model = tiny(family)
    trace = make_trace(model, CharTokenizer(), TEXT)
    bw = rs.block_writes(trace)
    rec = trace.record
    assert bw.stream_in.shape == (3, trace.n_tokens)
    assert torch.allclose(bw.stream_out[:-1], bw.stream_in[1:], atol=1e-5)
    assert torch.allclose(bw.attention[1], rec.attention_out[1][0].norm(dim=-1), atol=1e-6)
    before = rec.residual[2].before[0]
    assert torch.allclose(bw.cos_attention[2], torch.cosine_similarity(rec.attention_out[2][0], before, dim=-1), atol=1e-6)
    for l in range(3):  # every row against torch's own norms and cosines
        r, attn, mlp = rec.residual[l], rec.attention_out[l][0], rec.mlp_out[l][0]
        mid = r.before[0] if family == "gpt_neox" else r.before[0] + attn
        torch.testing.assert_close(bw.stream_in[l], r.before[0].norm(dim=-1), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(bw.stream_out[l], r.after[0].norm(dim=-1), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(bw.cos_attention[l], torch.cosine_similarity(attn, r.before[0], dim=-1), rtol=0, atol=1e-6)
        torch.testing.assert_close(bw.cos_mlp[l], torch.cosine_similarity(mlp, mid, dim=-1), rtol=0, atol=1e-6)
    assert bool((bw.cos_mlp.abs() <= 1 + 1e-6).all())
    assert bw.mean("mlp").shape == (3,)


def test_an_edited_trace_reuses_its_parents_block_writes_before_the_edit_and_equals_a_fresh_computation(monkeypatch):
    model = tiny("llama")
    parent = make_trace(model, CharTokenizer(), TEXT)
    first = parent.cached("block_writes", lambda: rs.block_writes(parent))
    edited = parent.edit(nbinspect.ScaleHead(1, 0, 0.3))
    assert edited.from_layer == 1
    cosines = []
    real = torch.linalg.vecdot
    monkeypatch.setattr(torch.linalg, "vecdot", lambda *a, **k: cosines.append(1) or real(*a, **k))
    reused = rs.block_writes(edited)
    assert len(cosines) == 2 * (edited.n_layers - 1)  # two per layer from the edited one on, none before
    monkeypatch.undo()
    edited._cache.clear()
    edited.parent = None  # nothing to reuse: every layer computed from the edited trace's own tensors
    fresh = rs.block_writes(edited)
    for name in ("stream_in", "stream_out", "attention", "mlp", "cos_attention", "cos_mlp"):
        assert torch.equal(getattr(reused, name), getattr(fresh, name)), name
        assert torch.equal(getattr(reused, name)[:1], getattr(first, name)[:1]), name
    assert not torch.equal(reused.attention[1], first.attention[1])  # the edited layer was recomputed


# --- head types ------------------------------------------------------------------------------------
def _pattern(n, keys):
    """[n, n] attention where query q puts all its weight on keys(q) (a valid causal pattern)."""
    p = torch.zeros(n, n)
    for q in range(n):
        p[q, keys(q)] = 1.0
    return p


def test_head_type_scores_on_hand_built_patterns():
    period, start = 6, 1
    n = start + 2 * period
    heads = torch.stack([
        _pattern(n, lambda q: max(q - 1, 0)),  # previous token
        _pattern(n, lambda q: q - period + 1 if q >= start + period else 0),  # induction (else sink)
        _pattern(n, lambda q: q - period if q >= start + period else q),  # duplicate (else self)
        _pattern(n, lambda q: 0),  # sink
        torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None],  # uniform causal
    ])
    s = rs.head_type_scores(heads, period, start)
    assert s.shape == (4, 5)
    prev, ind, dup, first = s
    assert prev[0] == 1 and ind[1] == 1 and dup[2] == 1 and first[3] == 1
    assert prev[3] == pytest.approx(1 / (n - 1))  # the sink's q=1 also looks at q-1 = 0
    assert ind[0] == 0 and dup[0] == 0 and ind[3] == 0
    # Uniform causal attention: query q gives 1/(q+1) to each key.
    rq = torch.arange(start + period, n).float()
    assert ind[4] == pytest.approx(float((1 / (rq + 1)).mean()), rel=1e-5)
    assert first[4] == pytest.approx(float((1 / torch.arange(2, n + 1).float()).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        rs.head_type_scores(heads, period=20, start=0)


def test_head_types_builds_a_repeat_and_leaves_no_hooks():
    model = tiny("llama")
    tok = CharTokenizer()
    ht = rs.head_types(model, tok, period=10)
    assert set(ht.scores) == set(rs.HEAD_TYPES)
    assert ht.scores["induction"].shape == (3, 4)
    n = ht.tokens.numel()
    assert n == 20 and torch.equal(ht.tokens[:10], ht.tokens[10:])
    assert ht.badges().shape == (3, 4) and ht.badges().dtype == torch.uint8
    assert len(ht.rows()) == 12 and "induction" in repr(ht)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert ht.top("first_token", 2)[0][2] >= ht.top("first_token", 2)[1][2]


# --- a real model ----------------------------------------------------------------------------------
@pytest.mark.real_model
def test_smollm2_attribution_lens_and_induction(smollm2):
    model, tokenizer = smollm2
    trace = make_trace(model, tokenizer, "The capital of France is")
    logits = trace.record.logits[0, -1]
    paris = tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    dla = rs.direct_logit_attribution(trace, target=paris)
    assert abs(dla.total - float(logits[paris])) < 1e-4, dla.error
    lens = rs.logit_lens(trace, target=paris)
    assert int(lens.top_ids[-1, -1, 0]) == paris == int(logits.argmax())
    assert float(lens.target_prob[-1, -1]) > 0.5 > float(lens.target_prob[10, -1])  # formed late
    assert math.isclose(float(lens.kl_to_final[-1].max()), 0.0, abs_tol=1e-5)


# --- views ---------------------------------------------------------------------------------------
def _floats(b):
    return torch.frombuffer(bytearray(b), dtype=torch.float32)


def _ints(b):
    return torch.frombuffer(bytearray(b), dtype=torch.int32)


def test_lens_view_sends_bytes_that_decode_to_the_lens():
    from nbinspect.views.logit_lens_view import LogitLensView

    model = tiny("llama")
    view = LogitLensView(make_trace(model, CharTokenizer(), TEXT))
    assert view.payload_bytes() > 0 and view.title == "Logit lens"
    lens = view.lens()
    L, n, k = lens.top_ids.shape
    ids = _ints(view.vocab_ids)[_ints(view.top_tokens).long()].reshape(L, n, k)
    assert torch.equal(ids, lens.top_ids.to(torch.int32))
    probs = torch.frombuffer(bytearray(view.top_probs), dtype=torch.uint8).reshape(L, n, k).float() / 255
    assert float((probs - lens.top_probs).abs().max()) <= 1 / 510 + 1e-6
    assert torch.allclose(_floats(view.kl).reshape(L, n), lens.kl_to_final)
    # The predicted token is the default target; a click (the browser sets target_token) retargets.
    assert view.shown_target == int(view.trace.record.logits[0, -1].argmax())
    before = bytes(view.target_prob)
    view.target_token = 104
    assert view.shown_target == 104 and view.target_label == "'h'" and bytes(view.target_prob) != before
    assert torch.allclose(_floats(view.target_prob).reshape(L, n), view.lens().target_prob)
    view.target = "e"
    assert view.shown_target == ord("e")
    with pytest.raises(ValueError, match=r"2 tokens \['h', 'i'\]"):
        view.target = "hi"
    with pytest.raises(Exception, match="metric"):
        view.metric = "loudness"


def _sent(view):
    """What the lens view has sent, decoded: (positions, top ids [L, c, k], kl [L, c], target p [L, c])."""
    L, c, k = view.n_layers, view.n_positions, view.k
    ids = _ints(view.vocab_ids)[_ints(view.top_tokens).long()].reshape(L, c, k).long()
    positions = list(range(view.shown_start, view.shown_start + c))
    return positions, ids, _floats(view.kl).reshape(L, c), _floats(view.target_prob).reshape(L, c)


def test_lens_view_decodes_only_its_window_and_fills_in_columns_on_demand(monkeypatch):
    from nbinspect.views.logit_lens_view import LogitLensView

    model = randomize_biases(tiny("llama"))
    trace = make_trace(model, CharTokenizer(), TEXT)
    n, w = trace.n_tokens, codecs.LENS_WINDOW
    assert n > 3 * w  # the text is longer than a window, or nothing here is lazy
    full = rs.logit_lens(trace, k=codecs.LENS_TOP_K, target=int(trace.record.logits[0, -1].argmax()))
    asked = []
    decode = rs.logit_lens
    monkeypatch.setattr(rs, "logit_lens", lambda *a, **kw: asked.append(list(kw["positions"])) or decode(*a, **kw))

    def check(view, positions):
        sent, ids, kl, tprob = _sent(view)
        assert sent == positions
        assert torch.equal(ids, full.top_ids[:, positions])
        assert torch.allclose(kl, full.kl_to_final[:, positions], atol=1e-5)
        assert torch.allclose(tprob, full.target_prob[:, positions], atol=1e-6)

    view = LogitLensView(trace)
    last = list(range(n - w, n))  # by default the last positions, where the prediction is
    assert asked == [last] and view.decoded_positions() == last and view.lens().positions.tolist() == last
    check(view, last)
    # Selecting a token outside the window (here, or a click in any linked view) decodes its columns only.
    view.selection.token = 3
    first = list(view.positions)
    assert 3 in first and len(first) == w and asked[-1] == first
    check(view, first)
    # Paging (the browser sets window_start) decodes what is new and reuses what was decoded.
    view.window_start = first[0] + w - 2
    paged = list(range(first[0] + w - 2, first[0] + 2 * w - 2))
    assert asked[-1] == [p for p in paged if p not in first]
    check(view, paged)
    assert view.decoded_positions() == sorted(set(first) | set(paged) | set(last))
    # Each column was decoded once, and never outside the windows shown.
    flat = [p for call in asked for p in call]
    assert len(flat) == len(set(flat)) == len(view.decoded_positions())
    # A second view of the same trace reuses the columns kept on the trace.
    before = len(asked)
    again = LogitLensView(trace)
    assert len(asked) == before
    check(again, last)
    # Asked for explicitly, the view shows (and decodes) the full grid.
    whole = nbinspect.logit_lens(trace, window=n)
    check(whole, list(range(n)))
    assert view.window_size == w and whole.window_size == n


def test_attribution_view_follows_target_foil_and_selection():
    from nbinspect.views.logit_attribution_view import LogitAttributionView

    model = randomize_biases(tiny("gpt2"))
    trace = make_trace(model, CharTokenizer(), TEXT)
    view = LogitAttributionView(trace)
    heads, mlp = _floats(view.heads).reshape(3, 4), _floats(view.mlp)
    total = float(heads.double().sum() + mlp.double().sum()) + view.embeddings + view.remainder
    assert total == pytest.approx(view.logit, abs=1e-4)
    assert view.logit == pytest.approx(float(trace.record.logits[0, -1].max()), abs=1e-4)
    view.target, view.foil = "h", "e"
    logits = trace.record.logits[0, -1]
    assert view.logit == pytest.approx(float(logits[ord("h")] - logits[ord("e")]), abs=1e-4)
    assert view.target_label == "'h' − 'e'"
    view.selection.head = 3  # a click on a head in the browser sets the shared selection
    view.selection.layer = 2
    assert (view.head, view.layer) == (3, 2)
    assert view.head_types == b""  # measured only when the overlay is switched on
    view.show_head_types = True
    assert len(view.head_types) == 12 and len(view.head_type_scores) == 4 * 12 * 4
    view.badge_threshold = 0.0  # a threshold set while the overlay is on is sent at once
    assert bytes(view.head_types) == bytes(view.types().badges(0.0).flatten()) and all(view.head_types)


def test_block_writes_view_and_encoders():
    from nbinspect.views.block_writes_view import BlockWritesView
    from nbinspect.views.logit_attribution_view import LogitAttributionView
    from nbinspect.views.logit_lens_view import LogitLensView

    trace = make_trace(tiny("gpt_neox"), CharTokenizer(), TEXT)
    view = BlockWritesView(trace)
    assert view.parallel is bool(trace.adapter.config.use_parallel_residual)
    assert torch.allclose(_floats(view.stream_out).reshape(3, -1), rs.block_writes(trace).stream_out)
    bert = make_trace(tiny("bert"), CharTokenizer(), TEXT)
    for cls in (LogitLensView, LogitAttributionView):
        assert "encoder" in cls.applies(bert)
        with pytest.raises(ValueError, match="encoder"):
            cls(bert)
    with pytest.raises(ValueError, match="encoder"):
        nbinspect.logit_lens(tiny("bert"), CharTokenizer(), TEXT)
    assert BlockWritesView.applies(bert) is None


# --- in a real JupyterLab ----------------------------------------------------------------------------
LAB_NOTEBOOK = """
import torch, traitlets, nbinspect
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2)).eval()
class Tok:
    def __call__(self, text, return_tensors='pt', add_special_tokens=True):
        ids = torch.tensor([[ord(c) % 64 for c in text]])
        return {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
    def decode(self, ids, **kw):
        return '<b onmouseover="window.__pwned=1">' + ''.join(chr(32 + i) for i in ids)
t = nbinspect.trace(m, Tok(), 'hello world', gradients=False)
sel = nbinspect.Selection()
lens = nbinspect.logit_lens(t, selection=sel)
dla = nbinspect.logit_attribution(t, selection=sel)
traitlets.link((lens, 'target_token'), (dla, 'target_token'))
bw = nbinspect.block_writes(t, selection=sel)
att = nbinspect.attention(t, selection=sel)
display(lens, dla, bw, att)
"""


@pytest.mark.browser
def test_views_in_jupyterlab_click_a_head_and_pick_a_target(artifacts):
    from lab import chromium, jupyterlab, kernel, notebook, open_notebook, run_all, wait_idle_after_run

    with jupyterlab({"residual_lab.ipynb": notebook(LAB_NOTEBOOK)}) as (url, _), chromium() as browser:
        page = open_notebook(browser, url, "residual_lab.ipynb")
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        run_all(page)
        wait_idle_after_run(page)
        page.wait_for_function("() => document.querySelector('.nbi-lens canvas') && document.querySelector('.nbi-dla canvas')"
                               " && document.querySelector('.nbi-bw canvas')", timeout=60_000)
        page.wait_for_function("() => document.querySelectorAll('.nbi-lens .nbi-side button').length === 5", timeout=30_000)
        # Click head 2 of layer 1 in the attribution grid: the shared selection (Python) follows.
        grid = page.locator(".nbi-dla canvas")
        d = grid.evaluate("c => ({left: +c.dataset.left, top: +c.dataset.top, cell: +c.dataset.cell})")
        grid.click(position={"x": d["left"] + 2.5 * d["cell"], "y": d["top"] + 1.5 * d["cell"]})
        page.wait_for_timeout(500)
        assert kernel(page, "print(sel.layer, sel.head, dla.layer, dla.head)").strip() == "1 2 1 2"
        # Pick the third token of the lens's top-5 list: it becomes the target of both views.
        button = page.locator(".nbi-lens .nbi-side button").nth(2)
        picked = int(button.get_attribute("data-token"))
        button.click()
        page.wait_for_timeout(800)
        out = kernel(page, "print(lens.target_token, lens.shown_target, dla.shown_target)").split()
        assert [int(x) for x in out] == [picked] * 3
        label = kernel(page, "print(dla.target_label)").strip()
        page.wait_for_function("(l) => document.querySelector('.nbi-dla .nbi-title').textContent.includes(l)", arg=label,
                               timeout=10_000)
        # Token text stays text: the hostile decode shows up as characters, never as an element.
        assert page.locator(".nbi-lens b, .nbi-dla b, .nbi-bw b").count() == 0
        assert "onmouseover" in page.locator(".nbi-lens .nbi-side").text_content()
        assert page.evaluate("() => window.__pwned") is None
        # Page the lens back (it shows a window of positions): Python decodes those columns, the grid draws them.
        start = int(kernel(page, "print(lens.shown_start)").strip())
        assert start > 0 and kernel(page, "print(lens.decoded_positions())").strip() == str(list(range(start, 11)))
        page.locator(".nbi-lens .nbi-pager button").first.click()
        page.wait_for_timeout(800)
        moved = int(kernel(page, "print(lens.shown_start)").strip())
        assert moved == max(0, start - codecs.LENS_WINDOW)
        page.wait_for_function("(s) => document.querySelector('.nbi-lens canvas.nbi-grid').dataset.start === String(s)",
                               arg=moved, timeout=10_000)
        page.locator(".nbi-lens").screenshot(path=str(artifacts / "logit_lens_window.png"))
        # The attention grid's head-type switch: Python measures the types once and the badges are drawn.
        page.locator(".nbi-attn input[type=checkbox]").click()
        page.wait_for_function("() => document.querySelector('.nbi-attn canvas.nbi-grid').dataset.badges !== ''", timeout=30_000)
        assert kernel(page, "print(att.show_head_types, len(att.head_types))").split() == ["True", "12"]
        assert page.locator(".nbi-attn b").count() == 0
        page.screenshot(path=str(artifacts / "residual_stream_views.png"), full_page=True)
        assert not errors, errors
        page.close()


def test_views_follow_an_edited_trace():
    from nbinspect.views.block_writes_view import BlockWritesView

    model = tiny("llama")
    trace = make_trace(model, CharTokenizer(), TEXT)
    lens = nbinspect.logit_lens(trace, target="h")
    dla = nbinspect.logit_attribution(trace, selection=lens.selection)
    writes = BlockWritesView(trace, selection=lens.selection)
    assert lens.shown_target == ord("h") and dla.shown_target == int(trace.record.logits[0, -1].argmax())
    edited = trace.edit(nbinspect.AblateHead(2, 1))
    old = (bytes(lens.entropy), bytes(dla.heads), bytes(writes.mlp))  # float32: a small change shows
    for view in (lens, dla, writes):
        view.show(edited)
        assert view.trace is edited
    assert float(_floats(dla.heads).reshape(3, 4)[2, 1]) == 0.0
    assert dla.logit == pytest.approx(float(edited.record.logits[0, -1, dla.shown_target]), abs=1e-4)
    assert bytes(lens.entropy) != old[0]
    before, after = _floats(old[2]).reshape(3, -1), _floats(writes.mlp).reshape(3, -1)
    assert torch.equal(before[:2], after[:2]) and not torch.equal(before[2], after[2])  # only layer 2 re-ran
    assert torch.allclose(_floats(writes.attention).reshape(3, -1), rs.block_writes(edited).attention)


def test_a_retargeted_trace_reuses_the_lens():
    model = tiny("llama")
    trace = make_trace(model, CharTokenizer(), TEXT)
    view = nbinspect.logit_lens(trace)
    view.target_token = 104  # a click in the top-k list: the lens decodes the stream once for it
    lens = view.lens()
    view.show(trace.retarget(104))  # what the dashboard does next: same forward, no new unembedding
    assert view.lens() is lens and view.shown_target == 104
    view.show(trace.edit(nbinspect.AblateHead(0, 0)).retarget(104))
    assert view.lens() is not lens


def test_in_a_dashboard_retargeting_moves_every_view(monkeypatch):
    from nbinspect.views import registry
    from nbinspect.views.block_writes_view import BlockWritesView
    from nbinspect.views.dashboard import Dashboard
    from nbinspect.views.logit_attribution_view import LogitAttributionView
    from nbinspect.views.logit_lens_view import LogitLensView

    ours = {"logit_lens": LogitLensView, "logit_attribution": LogitAttributionView, "block_writes": BlockWritesView}
    for name, cls in ours.items():
        monkeypatch.setitem(registry.VIEWS, name, cls)
    trace = nbinspect.trace(tiny("gpt2"), CharTokenizer(), TEXT)
    dash = Dashboard(trace, views=list(ours), perturb=False)
    dash.target = "h"
    assert dash.trace.target.token == ord("h")
    assert dash.views["logit_lens"].shown_target == dash.views["logit_attribution"].shown_target == ord("h")
    bert = Dashboard(nbinspect.trace(tiny("bert"), CharTokenizer(), TEXT), views=list(ours), perturb=False)
    assert set(bert.skipped) == {"logit_lens", "logit_attribution"} and "encoder" in bert.skipped["logit_lens"]
