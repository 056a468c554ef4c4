"""AttnLRP relevance (nbinspect.relevance) and attention rollout / flow (nbinspect.rollout).

References:
- ``lxt`` 2.1 (the authors' implementation, installed --no-deps by the Makefile). Its efficient mode patches
  transformers' classes *globally and for good*, so it runs in a subprocess. Two adaptations, both outside
  its rules: lxt 2.1's package ``__init__`` imports its BERT copy written for transformers 4 (which fails
  under transformers 5) and torchvision, so the script imports its llama / gpt2 patch maps directly; and
  lxt replaces transformers' ``AttentionInterface`` with a plain dict, which transformers 5 cannot call,
  so the script puts the interface back and runs the model in eager mode, where lxt's own wrapped
  ``eager_attention_forward`` is what runs.
- For BERT, lxt's efficient mode does not run under transformers 5 at all; the reference is a BERT forward
  written out by hand with lxt's *explicit* rules (``lxt.explicit.functional``: relevance propagated
  explicitly, ε-stabilised), which is a different mechanism from our gradient × input.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import nbinspect
from nbinspect.relevance import propagate, relevance
from tiny_models import CharTokenizer, tiny

TESTS = Path(__file__).resolve().parent
IDS = [[5, 17, 33, 9, 60, 2, 11, 40, 7], [3, 99, 12, 12, 45, 6, 71, 20, 8, 13, 64]]
#: Under rule="cp" nothing but float rounding is lost: |remainder| <= this x (|target| + sum of |terms|).
CP_TOLERANCE = 1e-4
#: Under AttnLRP the softmax rule does not pass on all it receives (Achtibat et al. say so); measured on
#: the tiny models below the remainder stays under this share of sum |token relevance| + |target|.
ATTNLRP_REMAINDER = 0.5


def _lxt_dir() -> str:
    spec = importlib.util.find_spec("lxt")
    if spec is None:
        pytest.fail("lxt is not installed: `make install` puts it in .venv (pip install --no-deps lxt==2.1).")
    return spec.submodule_search_locations[0]


LXT_SCRIPT = r"""
import importlib, json, sys, types
lxt_dir, cases_json = sys.argv[1:3]
sys.path.insert(0, {tests!r})
import torch, torch.nn as nn, transformers
# lxt.efficient.models' __init__ imports torchvision (for ViT) and a BERT copy for transformers 4:
# load the patch maps we compare against without that package __init__.
for name in ("lxt.efficient", "lxt.efficient.models"):
    pkg = types.ModuleType(name)
    pkg.__path__ = [lxt_dir + "/" + name.split(".", 1)[1].replace(".", "/")]
    sys.modules[name] = pkg
patched = set()
results = []
for family, seed, ids, real in json.loads(cases_json):
    if family not in patched:
        patch_map = importlib.import_module("lxt.efficient.models." + family).attnLRP
        modeling = importlib.import_module(f"transformers.models.{{family}}.modeling_{{family}}")
        interface = modeling.ALL_ATTENTION_FUNCTIONS
        for target, patch in patch_map.items():
            patch(target)  # False for torch classes another family's map already patched
        modeling.ALL_ATTENTION_FUNCTIONS = interface  # lxt swaps in a dict; eager runs lxt's wrapped function
        patched.add(family)
    if real:
        import nbinspect
        model, _ = nbinspect.load(device="cpu")
    else:
        from tiny_models import tiny
        model = tiny(family, seed=seed)
    model.set_attn_implementation("eager")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.tensor(ids)
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb).logits[0, -1]
    token = int(logits.argmax())
    logits[token].backward()
    results.append({{"tokens": (emb * emb.grad).sum(-1)[0].tolist(), "target": float(logits[token]), "token": token}})
print(json.dumps(results))
""".format(tests=str(TESTS))


def lxt_relevance(cases) -> list[dict]:
    """lxt's relevances for ``cases`` = [(family, seed, ids [batch, n], real)], in one subprocess."""
    out = subprocess.run([sys.executable, "-c", LXT_SCRIPT, _lxt_dir(), json.dumps(cases)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


TINY_CASES = [(family, seed, [IDS[seed]], False) for family in ("llama", "gpt2") for seed in (0, 1)]


@pytest.fixture(scope="module")
def lxt_tiny():
    return dict(zip([(f, s) for f, s, _, _ in TINY_CASES], lxt_relevance(TINY_CASES)))


def pearson(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))[0, 1])


def with_random_biases(model, seed=1):
    """Tiny models start with zero biases; give them values so that the bias terms are exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


# --- agreement with lxt --------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("seed", [0, 1])
def test_tokens_match_lxt(family, seed, lxt_tiny):
    ids = IDS[seed]
    ref = lxt_tiny[family, seed]
    ours = propagate(tiny(family, seed=seed), torch.tensor([ids]), None)
    assert ours.target == pytest.approx(ref["target"], rel=1e-4, abs=1e-5)
    assert pearson(ours.tokens, ref["tokens"]) >= 0.99
    # Same rules, same gradient × input: equal up to eager-vs-sdpa rounding.
    scale = np.abs(ref["tokens"]).max()
    np.testing.assert_allclose(ours.tokens, ref["tokens"], atol=1e-3 * scale)


def _explicit_bert(model, ids, u, position):
    """BERT's forward written out with lxt's explicit LRP rules; returns relevance per token embedding."""
    from lxt.explicit import functional as lf
    from lxt.explicit.rules import identity

    emb = model.embeddings
    n = ids.shape[1]
    words = emb.word_embeddings(ids).detach().requires_grad_(True)
    pos = emb.position_embeddings(torch.arange(n)[None]).detach()
    types = emb.token_type_embeddings(torch.zeros_like(ids)).detach()
    x = lf.add2(lf.add2(words, pos), types)
    ln = emb.LayerNorm
    h = lf.layer_norm(x, ln.weight, ln.bias, ln.eps)
    for layer in model.encoder.layer:
        att = layer.attention.self
        heads, d = att.num_attention_heads, att.attention_head_size

        def split(t):
            return t.view(1, n, heads, d).transpose(1, 2)

        q = split(lf.linear_epsilon(h, att.query.weight, att.query.bias))
        k = split(lf.linear_epsilon(h, att.key.weight, att.key.bias))
        v = split(lf.linear_epsilon(h, att.value.weight, att.value.bias))
        scores = lf.mul2(lf.matmul(q, k.transpose(-1, -2)), torch.tensor(d ** -0.5))
        a = lf.softmax(scores, -1)
        ctx = lf.matmul(a, v).transpose(1, 2).reshape(1, n, heads * d)
        out = layer.attention.output
        h = lf.layer_norm(lf.add2(lf.linear_epsilon(ctx, out.dense.weight, out.dense.bias), h),
                          out.LayerNorm.weight, out.LayerNorm.bias, out.LayerNorm.eps)
        inter = layer.intermediate
        m = identity(inter.intermediate_act_fn, lf.linear_epsilon(h, inter.dense.weight, inter.dense.bias))
        o = layer.output
        h = lf.layer_norm(lf.add2(lf.linear_epsilon(m, o.dense.weight, o.dense.bias), h),
                          o.LayerNorm.weight, o.LayerNorm.bias, o.LayerNorm.eps)
    reference_h = model(input_ids=ids).last_hidden_state
    assert torch.allclose(h, reference_h, atol=1e-4), "the hand-written BERT forward differs from BertModel's"
    start = torch.zeros_like(h)
    start[0, position] = h[0, position].detach() * u  # a linear readout's relevance at the last hidden state
    h.backward(start)
    return words.grad.sum(-1)[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_bert_matches_lxt_explicit_rules(seed):
    _lxt_dir()
    ids = torch.tensor([IDS[seed]])
    model = with_random_biases(tiny("bert", seed=seed), seed)
    u = torch.randn(32, generator=torch.Generator().manual_seed(seed))
    position = 3
    ref = _explicit_bert(model, ids, u, position)
    ours = propagate(model, ids, lambda o: o.last_hidden_state[0, position] @ u)
    assert pearson(ours.tokens, ref.detach()) >= 0.99


# --- conservation --------------------------------------------------------------------------------------
def _target_fn(family):
    if family == "bert":
        u = torch.randn(32, generator=torch.Generator().manual_seed(7))
        return lambda o: o.last_hidden_state[0, -1] @ u
    return None


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "qwen2", "mistral", "qwen3"])
def test_cp_rule_is_conservative(family):
    model = with_random_biases(tiny(family))
    r = propagate(model, torch.tensor([IDS[0]]), _target_fn(family), rule="cp")
    scale = abs(r.target) + np.abs(r.tokens).sum() + abs(r.positions) + abs(r.biases)
    assert abs(r.remainder) <= CP_TOLERANCE * scale, r
    if family == "gpt2" or family == "bert":
        assert r.positions != 0 and r.biases != 0  # the sinks are really counted


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "qwen2"])
def test_attnlrp_remainder_is_the_softmax_share_only(family):
    model = with_random_biases(tiny(family))
    ids = torch.tensor([IDS[1]])
    r = propagate(model, ids, _target_fn(family))
    scale = abs(r.target) + np.abs(r.tokens).sum()
    assert abs(r.remainder) <= ATTNLRP_REMAINDER * scale, r
    # ... and it is the softmax's: stopping relevance at q and k (CP-LRP) removes it.
    cp = propagate(model, ids, _target_fn(family), rule="cp")
    assert abs(cp.remainder) < 0.01 * abs(r.remainder)


def test_layers_conserve_under_cp():
    """With no biases (Llama) and no relevance through the attention pattern, each layer's residual holds
    the whole target: every cut of the graph passes it on intact."""
    model = tiny("llama")
    r = propagate(model, torch.tensor([IDS[0]]), None, rule="cp", layers=True)
    assert sorted(r.layers) == [0, 1, 2]
    for i, values in r.layers.items():
        assert float(values.sum()) == pytest.approx(r.target, rel=1e-4, abs=1e-6), i
    assert float(r.tokens.sum()) == pytest.approx(r.target, rel=1e-4, abs=1e-6)
    # The last layer is one step from the logit (identity-rule norm, then the LM head): exact under AttnLRP too.
    a = propagate(model, torch.tensor([IDS[0]]), None, layers=True)
    assert float(a.layers[2].sum()) == pytest.approx(a.target, rel=1e-4, abs=1e-6)


def test_foil_and_position():
    model = tiny("llama")
    ids = torch.tensor([IDS[0]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    r = propagate(model, ids, 7, foil=9, position=4, rule="cp")
    assert r.target == pytest.approx(float(logits[4, 7] - logits[4, 9]), abs=1e-5)
    assert float(r.tokens[5:].__abs__().max()) == 0.0  # causal: later tokens cannot matter at position 4
    assert float(r.tokens.sum()) == pytest.approx(r.target, rel=1e-4, abs=1e-6)


# --- the model is left exactly as it was ------------------------------------------------------------------
def _state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(p.requires_grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()],
        [m.training for m in model.modules()],
        model.config._attn_implementation,
    )


def _no_hooks(model):
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks, type(m).__name__
        assert "forward" not in m.__dict__, type(m).__name__


def _assert_same(model, before):
    state, params, training, impl = before
    after = _state(model)
    assert after[0].keys() == state.keys()
    for k in state:
        assert torch.equal(after[0][k], state[k]), k
    assert len(after[1]) == len(params)
    for (rg, g), (rg2, g2) in zip(params, after[1]):
        assert rg == rg2 and (g is None) == (g2 is None) and (g is None or torch.equal(g, g2))
    assert after[2] == training and after[3] == impl
    _no_hooks(model)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_model_unchanged(family):
    model = with_random_biases(tiny(family))
    model.train()  # a training flag, some frozen parameters and an existing .grad must all come back
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[1].grad = torch.ones_like(params[1])
    before = _state(model)
    ids = torch.tensor([IDS[0]])
    with torch.no_grad():
        model.eval()
        reference = model(input_ids=ids)
        model.train()
    r = propagate(model, ids, _target_fn(family))
    _assert_same(model, before)
    # The forward values are the model's own: the explained value is the plain forward's.
    if family == "bert":
        assert r.target == pytest.approx(float(_target_fn(family)(reference)), abs=1e-6)
    else:
        assert r.target == pytest.approx(float(reference.logits[0, -1].max()), abs=1e-6)

    def boom(output):
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        propagate(model, ids, boom)
    _assert_same(model, before)


def test_errors_say_what_to_do():
    with pytest.raises(nbinspect.UnsupportedModelError, match="rollout"):
        propagate(tiny("gpt_neox"), torch.tensor([IDS[0]]), None)
    with pytest.raises(ValueError, match="not the loss"):
        propagate(tiny("llama"), torch.tensor([IDS[0]]), "loss")
    with pytest.raises(ValueError, match="unknown relevance rule"):
        propagate(tiny("llama"), torch.tensor([IDS[0]]), None, rule="lrp0")
    with pytest.raises(IndexError, match="position"):
        propagate(tiny("llama"), torch.tensor([IDS[0]]), None, position=20)


def test_relevance_api_and_layers():
    model, tok = tiny("gpt2"), CharTokenizer()
    scores = relevance(model, tok, "hello world")
    assert scores.dtype == np.float32 and scores.shape == (11,)
    last = relevance(model, tok, "hello world", layer=-1)
    assert last.shape == (11,) and not np.allclose(last, scores)
    with pytest.raises(IndexError, match="out of range"):
        relevance(model, tok, "hello world", layer=3)


# --- the real model ---------------------------------------------------------------------------------------
@pytest.mark.real_model
def test_smollm2_matches_lxt_and_is_nearly_conservative(smollm2):
    model, tokenizer = smollm2
    text = "The capital of France is Paris. The capital of Italy is"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    (ref,) = lxt_relevance([("llama", 0, ids.tolist(), True)])
    with torch.no_grad():
        t0 = time.perf_counter()
        model(input_ids=ids)
        forward_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = propagate(model, ids, None)
    lrp_s = time.perf_counter() - t0
    assert r.target == pytest.approx(ref["target"], rel=1e-3)
    assert pearson(r.tokens, ref["tokens"]) >= 0.99
    print(f"\nSmolLM2 {ids.shape[1]} tokens: AttnLRP {lrp_s:.2f}s = {lrp_s / forward_s:.1f}x a forward; "
          f"target {r.target:.3f}, tokens sum {r.tokens.sum():.3f}, remainder {r.remainder:.3f}")
    assert abs(r.remainder) <= ATTNLRP_REMAINDER * (abs(r.target) + np.abs(r.tokens).sum())


# --- attention rollout and flow ----------------------------------------------------------------------------
from nbinspect.rollout import FLOW_MAX_TOKENS, flow, flow_scores, rollout, rollout_matrix, with_residual  # noqa: E402


def _random_maps(layers, n, seed=0, causal=True):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(layers, n, n, generator=g) ** 3
    if causal:
        a = a.tril()
    return a / a.sum(-1, keepdim=True)


def test_rollout_is_the_product_of_residual_maps():
    maps = _random_maps(4, 6)
    eye = torch.eye(6, dtype=torch.float64)
    hats = [(0.5 * m.double() + 0.5 * eye) for m in maps]
    expected = hats[3] @ hats[2] @ hats[1] @ hats[0]
    torch.testing.assert_close(rollout_matrix(maps), expected)
    torch.testing.assert_close(rollout_matrix(maps, upto=1), hats[1] @ hats[0])
    r = rollout_matrix(maps)
    torch.testing.assert_close(r.sum(-1), torch.ones(6, dtype=torch.float64))
    assert float(r.triu(1).abs().max()) == 0.0  # causal maps: no token feeds an earlier one


def test_flow_matches_networkx_and_single_layer_edges():
    import networkx as nx

    maps = _random_maps(3, 5, seed=2)
    a = with_residual(maps).numpy()
    g = nx.DiGraph()
    for layer in range(3):
        for i in range(5):
            for j in range(5):
                if a[layer][i, j] > 0:
                    g.add_edge((layer, j), (layer + 1, i), capacity=float(a[layer][i, j]))
    expected = [nx.maximum_flow_value(g, (0, j), (3, 4)) if (0, j) in g else 0.0 for j in range(5)]
    np.testing.assert_allclose(flow_scores(maps, position=4), expected, atol=1e-5)
    # One layer: the only path from j to p is the edge itself.
    np.testing.assert_allclose(flow_scores(maps[:1], position=3), a[0][3], atol=1e-5)


def test_flow_refuses_long_texts():
    with pytest.raises(ValueError, match=f"limited to {FLOW_MAX_TOKENS} tokens.*rollout"):
        flow_scores(_random_maps(1, FLOW_MAX_TOKENS + 1))


def test_rollout_and_flow_on_a_model():
    model, tok = tiny("llama"), CharTokenizer()
    before = _state(model)
    r = rollout(model, tok, "hello there")
    assert r.dtype == np.float32 and r.shape == (11,) and r.sum() == pytest.approx(1.0, abs=1e-5)
    early = rollout(model, tok, "hello there", layer=0)
    assert not np.allclose(early, r)
    f = flow(model, tok, "hello there", position=5)
    assert f.shape == (11,) and float(np.abs(f[6:]).max()) == 0.0
    _assert_same(model, before)


# --- on a Trace: what the attribution strip calls ------------------------------------------------------------
def test_strip_methods_on_a_trace():
    from nbinspect.relevance import STRIP_METHODS

    model, tok = tiny("llama"), CharTokenizer()
    t = nbinspect.trace(model, tok, "hello world", target=7, foil=9)
    assert t.target.kind == "contrast"
    direct = propagate(model, t.inputs, t.target.token, foil=t.target.foil, position=t.target.position, layers=True)
    np.testing.assert_allclose(STRIP_METHODS["lrp"](t), direct.tokens, atol=1e-6)
    np.testing.assert_allclose(STRIP_METHODS["lrp"](t, layer=1), direct.layers[1], atol=1e-6)
    assert direct.target == pytest.approx(float(t.target_value), abs=1e-5)
    roll = STRIP_METHODS["rollout"](t)
    assert roll.shape == (11,) and roll.sum() == pytest.approx(1.0, abs=1e-5)
    assert STRIP_METHODS["flow"](t, layer=0).shape == (11,)
    # An edited trace is explained under its edits; the model is left as it was.
    before = _state(model)
    edited = t.edit(nbinspect.AblateHead(0, 1))
    changed = STRIP_METHODS["lrp"](edited)
    assert not np.allclose(changed, direct.tokens)
    _assert_same(model, before)


def test_encoder_trace_explains_the_state_norm():
    model, tok = tiny("bert"), CharTokenizer()
    t = nbinspect.trace(model, tok, "hello world")
    assert t.target.kind == "state_norm"
    from nbinspect.relevance import trace_relevance

    r = trace_relevance(t, rule="cp")
    assert r.target == pytest.approx(float(t.target_value), rel=1e-5)
    assert abs(r.remainder) <= CP_TOLERANCE * (abs(r.target) + np.abs(r.tokens).sum() + abs(r.positions) + abs(r.biases))
