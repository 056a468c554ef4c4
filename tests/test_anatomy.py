"""nbinspect.anatomy on tiny random models: inventory counts, histograms against numpy, one head's attention
mechanics against the capture and eager attention, activation inputs against hooks, compare's errors,
and the four views building and sending bytes."""

import math

import numpy as np
import pytest
import torch

import nbinspect
from nbinspect import anatomy as A
from nbinspect._attention_hook import ALL_ATTENTION_FUNCTIONS
from nbinspect.adapters import Adapter
from tiny_models import FAMILIES, CharTokenizer, tiny

TEXT = "the cat sat on the mat"


def sharp(model, std=0.4, seed=0):
    """Weights large enough that attention patterns are far from uniform (a uniform row hides mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


# --- inventory ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_counts_equal_numel_with_tied_weights_once(family):
    model = tiny(family)
    inv = A.inventory(model)
    assert inv.total == sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    assert inv.total_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    groups = inv.by_kind()
    assert sum(g["count"] for g in groups.values()) == inv.total
    assert math.isclose(sum(g["share"] for g in groups.values()), 1.0)
    for kind in ("token embedding", "attention Q", "attention K", "attention V", "attention O", "FFN down", "norm"):
        assert groups[kind]["count"] > 0, kind
    # Q/K/V/O, up and down once per layer each
    n = Adapter.of(model).n_layers
    for kind in ("attention Q", "attention K", "attention V", "attention O"):
        assert sum(p.kind == kind and p.layer >= 0 and p.tied_to is None for p in inv.pieces) == n, kind


def test_fused_qkv_split_into_three_equal_parts():
    model = tiny("gpt2")
    inv = A.inventory(model)
    pieces = [p for p in inv.pieces if p.param == "transformer.h.0.attn.c_attn.weight"]
    assert [p.kind for p in pieces] == ["attention Q", "attention K", "attention V"]
    w = model.transformer.h[0].attn.c_attn.weight  # Conv1D [in, 3 * out]
    for i, p in enumerate(pieces):
        assert torch.equal(p.tensor(model), w[:, i * 32:(i + 1) * 32])
    # GPT-NeoX interleaves per head: [heads, 3, head_dim] along the output rows
    neox = tiny("gpt_neox")
    inv = A.inventory(neox)
    q = next(p for p in inv.pieces if p.param == "gpt_neox.layers.0.attention.query_key_value.weight")
    w = neox.gpt_neox.layers[0].attention.query_key_value.weight.view(4, 3, 8, 32)
    assert torch.equal(q.tensor(neox).reshape(-1), w[:, 0].reshape(-1))


def test_tied_output_head_is_marked_and_counted_once():
    model = tiny("gpt2")
    inv = A.inventory(model)
    head = [p for p in inv.pieces if p.kind == "output head"]
    assert len(head) == 1 and head[0].tied_to == "transformer.wte.weight"
    assert inv.by_kind()["output head"]["count"] == 0
    assert inv.tied == [("lm_head.weight", "transformer.wte.weight")]
    untied = A.inventory(tiny("llama"))
    assert untied.by_kind()["output head"]["count"] == 128 * 32


def test_rotary_read_from_config_and_absent_where_positions_are_learned():
    assert A.rotary_of(tiny("llama")).theta == 10000.0
    neox = A.rotary_of(tiny("gpt_neox"))
    assert neox.fraction == 0.25 and "no parameters" in str(neox)
    assert A.rotary_of(tiny("gpt2")) is None
    assert A.inventory(tiny("gpt2")).by_kind()["positional embedding"]["count"] == 256 * 32


# --- statistics -----------------------------------------------------------------------------------


#: How the statistics are computed: the CPU's cached blocks (one block a tensor, or many), and the
#: accelerator's path (tensors of one size stacked; in chunks of a few rows) run here on the CPU.
PATHS = {
    "blocks": {},
    "many blocks": {"_CPU_BLOCK": 1000},
    "one thread": {"threads": 1},  # the tensors in turn, each split between torch's threads (here one)
    "three threads": {"threads": 3, "_CPU_BLOCK": 1000},  # tensors shared out among our own threads
    "stacked": {"_STACK_ON_CPU": True},
    "stacked chunks": {"_STACK_ON_CPU": True, "_DEVICE_BATCH": 3000},
}


@pytest.fixture(params=list(PATHS))
def stats_path(request, monkeypatch):
    previous = torch.get_num_threads()
    for name, value in PATHS[request.param].items():
        if name == "threads":
            torch.set_num_threads(value)
        else:
            monkeypatch.setattr(A, name, value)
    yield request.param
    assert torch.get_num_threads() == PATHS[request.param].get("threads", previous)  # ours were undone
    torch.set_num_threads(previous)


def test_threads_are_given_back_when_a_tensor_fails(monkeypatch):
    """The CPU statistics run on our own threads with torch's set to one; an error in any of them reaches
    the caller and torch's thread count is restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    real, seen = A._blocked, []

    def failing(x, *args):
        seen.append(torch.get_num_threads())
        if x.numel() == 7:
            raise RuntimeError("this tensor fails")
        return real(x, *args)

    monkeypatch.setattr(A, "_blocked", failing)
    try:
        with pytest.raises(RuntimeError, match="this tensor fails"):
            A._summaries([torch.randn(100), torch.randn(7), torch.randn(50)], 16)
        assert torch.get_num_threads() == 2 and seen and set(seen) == {1}
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_histograms_and_moments_match_numpy(family, stats_path):
    model = tiny(family)
    inv = A.parameter_stats(model)
    bins = len(inv.histograms[0].counts)
    for piece, hist in zip(inv.pieces, inv.histograms):
        if hist is None:
            continue
        x = piece.tensor(model).detach().double().numpy().reshape(-1)
        lo, hi = (x.min(), x.max()) if x.max() > x.min() else (x.min() - 0.5, x.max() + 0.5)
        counts, _ = np.histogram(x, bins=bins, range=(lo, hi))
        # float32 bin edges may move a value sitting on an edge by one bin
        assert np.abs(hist.counts.numpy() - counts).sum() <= 2, piece.name
        assert hist.counts.sum() == x.size
        m = hist.moments
        assert m.mean == pytest.approx(x.mean(), abs=1e-7 + 1e-5 * abs(x.mean()))
        assert m.std == pytest.approx(x.std(), rel=1e-5, abs=1e-9)
        if x.std() > 1e-6:
            d = x - x.mean()
            kurt = (d**4).mean() / (d**2).mean() ** 2 - 3
            assert m.kurtosis == pytest.approx(kurt, rel=1e-3, abs=1e-3)
        assert m.max_abs == pytest.approx(np.abs(x).max(), rel=1e-6)
        assert m.near_zero == (np.abs(x) <= A.NEAR_ZERO * np.abs(x).max()).sum() or abs(m.near_zero - (np.abs(x) <= A.NEAR_ZERO * np.abs(x).max()).sum()) <= 1


def test_statistics_of_awkward_tensors(stats_path):
    """Near-zero and kurtosis exactly as numpy on weights far from zero (norms near 1), a constant, a
    tensor with exact zeros, a tensor of a size no other has and a bfloat16 one; a NaN gives NaN moments
    and no bins."""
    g = torch.Generator().manual_seed(1)
    tensors = [
        1.0 + 0.05 * torch.randn(5000, generator=g),
        torch.full((3000,), 0.25),
        torch.where(torch.rand(4000, generator=g) < 0.3, 0.0, torch.randn(4000, generator=g)),
        torch.randn(70, 90, generator=g) * 0.02,
        (torch.rand(3000, generator=g) - 0.5) ** 3,
        (torch.randn(3000, generator=g) * 0.1).to(torch.bfloat16),  # converted a block at a time
    ]
    wide = A._summaries(tensors, 300)  # more bins than a byte can index: the int32 path
    for t, (m, h) in zip(tensors[:1], wide):
        counts, _ = np.histogram(t.double().numpy(), bins=300, range=(m.lo, m.hi))
        assert np.abs(h.counts.numpy() - counts).sum() <= 2
    done = A._summaries(tensors, 64)
    for t, (m, h) in zip(tensors, done):
        x = t.double().numpy().ravel()
        assert m.n == x.size and h.counts.sum() == x.size
        assert m.mean == pytest.approx(x.mean(), rel=1e-6, abs=1e-6 * x.std())  # float32 sums within a block
        assert m.std == pytest.approx(x.std(), rel=1e-5, abs=1e-9)
        assert m.max_abs == pytest.approx(np.abs(x).max(), rel=1e-7) and (m.lo, m.hi) == (x.min(), x.max())
        assert m.near_zero == (np.abs(x) <= A.NEAR_ZERO * np.abs(x).max()).sum()
        if x.std() > 0:
            d = x - x.mean()
            assert m.kurtosis == pytest.approx((d**4).mean() / (d**2).mean() ** 2 - 3, rel=1e-4, abs=1e-4)
            counts, _ = np.histogram(x, bins=64, range=(x.min(), x.max()))
            assert np.abs(h.counts.numpy() - counts).sum() <= 2
        else:
            assert h.counts.max() == x.size and (h.lo, h.hi) == (x[0] - 0.5, x[0] + 0.5)
    (m, h), = A._summaries([torch.tensor([1.0, float("nan"), 2.0])], 64)
    assert math.isnan(m.mean) and h.counts.sum() == 0



def _histc(values: torch.Tensor, hist) -> torch.Tensor:
    """torch.histc on the CPU over the histogram's own range: the reference every path must equal exactly."""
    return torch.histc(values.detach().float().cpu().reshape(-1), len(hist.counts), hist.lo, hist.hi)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_histograms_equal_histc_exactly(family, stats_path):
    """Every piece's counts (fused QKV parts, tied weights once) and a group's counts are torch.histc's
    to the last value, on every path; before, a value within a rounding of a bin edge could move a bin."""
    model = sharp(tiny(family))
    inv = A.parameter_stats(model)
    binned = 0
    for piece, hist in zip(inv.pieces, inv.histograms):
        if hist is None:
            continue
        x = piece.tensor(model)
        assert torch.equal(hist.counts, _histc(x, hist)), piece.name
        binned += 1
    assert binned == sum(p.tied_to is None for p in inv.pieces)
    idx = inv.select(kind="attention Q")
    group = inv.group_histogram(idx)
    every = torch.cat([inv.pieces[i].tensor(model).detach().reshape(-1) for i in idx])
    assert torch.equal(group.counts, _histc(every, group))


def test_counts_at_chosen_edges_equal_numpy_and_histc(stats_path):
    """Values exactly on every bin edge (some twice), zeros, the minimum and the maximum (three times) and a
    constant tensor: counts equal numpy's and histc's exactly, the maximum in the last bin. The edges are
    exact binary fractions here, so float32 arithmetic and numpy's float64 agree. Values one float32 step
    beside each edge are binned as histc bins them (its float32 ``x − lo`` can round such a value onto
    the edge, where numpy, in float64, keeps it beside)."""
    bins = 64
    edges = torch.linspace(-1.0, 1.0, bins + 1)  # k / 32 − 1: exact in float32
    on = torch.cat([edges, edges[:9], torch.zeros(5), torch.tensor([1.0, 1.0])])
    beside = torch.cat([torch.nextafter(edges, torch.tensor(2.0))[:-1], torch.nextafter(edges, torch.tensor(-2.0))[1:]])
    shuffle = torch.Generator().manual_seed(0)
    for tensors, nbins in (([on], bins), ([on], 128), ([(on[on >= 0] * 300).round()], 300), ([torch.arange(6.0)], 5)):
        t = tensors[0][torch.randperm(len(tensors[0]), generator=shuffle)]
        (m, h), = A._summaries([t], nbins)
        assert (m.lo, m.hi) == (t.min().item(), t.max().item()) and (h.lo, h.hi) == (m.lo, m.hi)
        ref, _ = np.histogram(t.double().numpy(), bins=nbins, range=(m.lo, m.hi))
        assert h.counts.tolist() == ref.tolist() == _histc(t, h).tolist(), nbins
        assert h.counts[-1] == ref[-1] > 0
    both = torch.cat([on, beside])[torch.randperm(len(on) + len(beside), generator=shuffle)]
    (m, h), = A._summaries([both], bins)
    assert torch.equal(h.counts, _histc(both, h)) and h.counts.sum() == len(both)
    (m, h), = A._summaries([torch.full((1000,), 0.3)], bins)
    assert h.counts.max() == 1000 == h.counts.sum() and (h.lo, h.hi) == (m.lo - 0.5, m.hi + 0.5)
    assert torch.equal(h.counts, _histc(torch.full((1000,), 0.3), h))


def test_histc_counts_are_histc_s():
    """The neuron view bins activations with histc_counts: torch.histc's counts, exactly."""
    torch.manual_seed(0)
    for x in (torch.randn(512, 1536) * 3, torch.rand(7, 3).double(), torch.full((5, 5), 2.0), torch.randn(1, 1)):
        lo, hi = float(x.min()), float(x.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        for bins in (96, 7, 300):
            got = A.histc_counts(x, bins, lo, hi)
            assert got.dtype == torch.int64 and torch.equal(got, torch.histc(x.float(), bins, lo, hi).to(torch.int64))
    assert torch.equal(A.histc_counts(torch.empty(0, 4), 8, 0.0, 1.0), torch.zeros(8, dtype=torch.int64))


def test_bin_index_is_histc_s_near_every_edge():
    """The CPU's vectorised bin index against histc on values one to three float32 steps from every edge,
    over ranges of many scales and both bin-count paths (one division for powers of two, else two steps)."""
    g = torch.Generator().manual_seed(3)
    for trial in range(300):
        bins = (128, 64, 100, 300, 7)[trial % 5]
        lo = float(torch.randn(1, generator=g)) * 10.0 ** int(torch.randint(-4, 2, (1,), generator=g))
        hi = lo + abs(float(torch.randn(1, generator=g))) * 10.0 ** int(torch.randint(-4, 2, (1,), generator=g))
        lo, hi = torch.tensor([lo, hi]).tolist()  # float32 values, as a tensor's min and max are
        if not hi > lo:
            continue
        e = torch.linspace(lo, hi, bins + 1, dtype=torch.float64).float()
        near = [e]
        for direction in (float("inf"), float("-inf")):
            v = e
            for _ in range(3):
                v = torch.nextafter(v, torch.tensor(direction))
                near.append(v)
        x = torch.cat(near + [torch.tensor([lo, hi])])
        x = x[(x >= lo) & (x <= hi)]
        raw = A._bin(x, bins, lo, hi, A._Scratch(len(x), x.device))
        assert torch.equal(A._fold([raw], bins).float(), torch.histc(x, bins, lo, hi)), (bins, lo, hi)

@pytest.mark.real_model
def test_smollm2_statistics_match_numpy(smollm2):
    """The default model's own weights, over many blocks: the embedding (28M values), a norm (values near 1)
    and one of each projection; numbers as numpy gives them in float64."""
    model, _ = smollm2
    inv = A.parameter_stats(model)
    names = ["model.embed_tokens.weight", "model.layers.7.input_layernorm.weight", "model.layers.7.self_attn.k_proj.weight",
             "model.layers.29.mlp.down_proj.weight", "model.norm.weight"]
    for name in names:
        i = inv.select(name=name)[0]
        m, h = inv.stats[i], inv.histograms[i]
        x = inv.pieces[i].tensor(model).detach().double().cpu().numpy().ravel()
        d = x - x.mean()
        assert m.n == x.size and h.counts.sum() == x.size, name
        assert m.mean == pytest.approx(x.mean(), rel=1e-6, abs=1e-6 * x.std()), name
        assert m.std == pytest.approx(x.std(), rel=1e-5), name
        assert m.kurtosis == pytest.approx((d**4).mean() / (d**2).mean() ** 2 - 3, rel=1e-4, abs=1e-4), name
        assert m.max_abs == np.abs(x).max() and m.near_zero == (np.abs(x) <= A.NEAR_ZERO * np.abs(x).max()).sum(), name
        counts, _ = np.histogram(x, bins=len(h.counts), range=(x.min(), x.max()))
        assert np.abs(h.counts.numpy() - counts).sum() <= 4, name
    assert inv.by_kind()["output head"]["count"] == 0  # tied to the embedding: counted once


def test_histograms_on_request_equal_the_eager_ones():
    model = tiny("llama")
    eager = A.parameter_stats(model)
    lazy = A.parameter_stats(model, histograms=False)
    assert all(h is None for h in lazy.histograms)
    np.testing.assert_equal([m.summary() for m in lazy.stats], [m.summary() for m in eager.stats])  # NaN == NaN
    i = lazy.select(name="model.layers.1.mlp.down_proj.weight")[0]
    h = lazy.group_histogram([i])
    assert torch.equal(h.counts, eager.histograms[i].counts) and (h.lo, h.hi) == (eager.histograms[i].lo, eager.histograms[i].hi)
    assert lazy.histograms[i] is h  # kept


def test_group_moments_combine_exactly():
    model = tiny("llama")
    inv = A.parameter_stats(model)
    idx = inv.select(kind="attention Q")
    group = inv.group_histogram(idx)
    x = np.concatenate([inv.pieces[i].tensor(model).detach().double().numpy().ravel() for i in idx])
    d = x - x.mean()
    assert group.moments.n == x.size and group.counts.sum() == x.size
    assert group.moments.std == pytest.approx(x.std(), rel=1e-5)
    assert group.moments.kurtosis == pytest.approx((d**4).mean() / (d**2).mean() ** 2 - 3, rel=1e-3, abs=1e-3)
    combined = sum((inv.stats[i] for i in idx), A.Moments())
    assert combined.std == pytest.approx(x.std(), rel=1e-5)
    kinds, std = inv.std_by_layer()
    q = kinds.index("attention Q")
    for layer in range(3):
        w = model.model.layers[layer].self_attn.q_proj.weight.detach().double().numpy()
        assert std[q, layer].item() == pytest.approx(w.std(), rel=1e-5)


def test_init_densities_integrate_to_the_count_and_fresh_copy_leaves_rng():
    model = tiny("llama")
    inv = A.parameter_stats(model)
    i = inv.select(name="model.layers.0.mlp.up_proj.weight")[0]
    labels, dens = A.init_densities(inv.pieces[i], inv.histograms[i], model.config)
    assert labels[0].startswith("normal σ=0.02") and len(labels) == 4
    # the config's law is what HF used: its expected counts hold almost all of the weights
    assert dens[0].sum().item() == pytest.approx(inv.pieces[i].numel, rel=0.02)
    state = torch.get_rng_state()
    fresh = A.fresh_copy(model)
    assert torch.equal(torch.get_rng_state(), state)
    assert type(fresh) is type(model) and fresh is not model
    assert [n for n, _ in fresh.named_parameters()] == [n for n, _ in model.named_parameters()]
    s = inv.svdvals(i)
    assert torch.allclose(s, torch.linalg.svdvals(model.model.layers[0].mlp.up_proj.weight.detach()))


# --- attention mechanics --------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "qwen2", "gpt_neox"])
def test_mechanics_equal_capture_and_eager(family):
    model = sharp(tiny(family))
    tok = CharTokenizer()
    inputs = tok(TEXT)
    before = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    rec = nbinspect.run(model, tok, TEXT, attention=True, heads=True)
    n = inputs["input_ids"].shape[1]
    cases = [(1, 3, n - 1), (0, 0, 5), (2, 1, 0)]
    mechs = [A.mechanics(model, inputs, layer=l, head=h, query=q) for l, h, q in cases]
    assert dict(ALL_ATTENTION_FUNCTIONS._local_mapping) == before  # wrapper gone
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(**inputs, output_attentions=True).attentions
    for (layer, head, q), m in zip(cases, mechs):
        captured = rec.attention[layer][0, head, q]
        assert captured.max() > 0.2 or q == 0  # a pattern, not a uniform row
        assert (m.probs - captured).abs().max() <= 1e-5
        assert (m.probs - eager[layer][0, head, q]).abs().max() <= 1e-5
        assert torch.allclose(torch.softmax(m.scaled + m.mask, -1), m.probs)
        assert torch.allclose(m.dots, m.k @ m.q) and m.scaled.sub(m.dots * m.scaling).abs().max() == 0
        d = m.q.numel()
        z = rec.heads[layer].z[0, q, head * d:(head + 1) * d]
        assert (m.output - z.float()).abs().max() <= 1e-5
        if family != "bert" and q < n - 1:
            assert torch.isinf(m.mask[q + 1:]).all() or (m.mask[q + 1:] < -1e30).all()  # causal
    assert mechs[0].n_rep == (2 if family in ("llama", "qwen2") else 1)
    if family in ("llama", "qwen2"):
        assert mechs[0].kv_head == 1 and mechs[0].shared_with == [2, 3]
    rotary = family in ("llama", "qwen2", "gpt_neox")
    assert (mechs[0].q_before is not None) == rotary
    if rotary:  # position 0 is rotated by angle 0; later positions are not
        assert torch.allclose(mechs[2].q_before, mechs[2].q, atol=1e-6)
        assert not torch.allclose(mechs[0].q_before, mechs[0].q, atol=1e-4)


def test_mechanics_bad_head_or_query():
    model = tiny("llama")
    inputs = CharTokenizer()(TEXT)
    with pytest.raises(IndexError, match="head 9"):
        A.mechanics(model, inputs, layer=0, head=9)
    with pytest.raises(IndexError, match="query 99"):
        A.mechanics(model, inputs, layer=0, head=0, query=99)
    assert "sdpa" not in ALL_ATTENTION_FUNCTIONS._local_mapping


# --- activation function --------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "gpt_neox"])
def test_activation_inputs_and_product(family):
    model = tiny(family)
    inputs = CharTokenizer()(TEXT)
    act = A.activation(model, inputs, layer=1)
    adapter = Adapter.of(model)
    assert act.note == ""  # config and module agree
    seen = {}
    h = adapter.part(1, "neurons").register_forward_pre_hook(lambda m, a: seen.setdefault("down_in", a[0][0]))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        h.remove()
    if family == "llama":
        assert act.gated and torch.allclose(act.product, seen["down_in"].float(), atol=1e-6)
    else:
        assert not act.gated and torch.allclose(act.module(act.pre), seen["down_in"].float(), atol=1e-6)
    r = act.regimes()
    assert sum(r.values()) == pytest.approx(1.0)
    x, y = act.curve(-4, 4, 101)
    assert torch.allclose(y, act.module(x))


def test_regimes_of_relu():
    model = tiny("gpt2")
    inputs = CharTokenizer()(TEXT)
    act = A.activation(model, inputs, layer=0)
    act.module = torch.nn.ReLU()
    r = act.regimes()
    x = act.pre.reshape(-1)
    assert r["linear"] == pytest.approx(float((x > 0).float().mean()))
    assert r["negative"] == pytest.approx(float((x < 0).float().mean()))


# --- views ----------------------------------------------------------------------------------------


def decoded(view, name, dtype=np.float32):
    return np.frombuffer(getattr(view, name), dtype=dtype)


def test_parameters_view_sends_bytes_of_the_focused_weights():
    from nbinspect.views.parameters_view import parameters

    model = tiny("llama")
    view = parameters(model)
    inv = view.inventory
    assert view.kinds == inv.kinds() and view.total == inv.total
    assert decoded(view, "kind_counts", np.float64).sum() == inv.total
    # focus: the largest kind over all layers; the histogram holds every weight of it
    assert decoded(view, "hist").sum() == view.stats["n"] == sum(inv.pieces[i].numel for i in view.focused())
    view.focus_tensor = "model.layers.2.self_attn.k_proj.weight"
    w = model.model.layers[2].self_attn.k_proj.weight.detach().numpy()
    assert view.focus_kind == "attention K" and view.stats["n"] == w.size
    assert view.stats["std"] == pytest.approx(w.std(), rel=1e-5)
    assert len(view.init_labels) == 4 and decoded(view, "init_counts").size == 4 * len(decoded(view, "hist"))
    view.want_svd = True
    assert np.allclose(decoded(view, "svd"), np.linalg.svd(w, compute_uv=False), rtol=1e-4)
    view.focus_scope = "layer"
    view.selection.layer = 1  # following the shared selection
    assert view.focus_title.startswith("model.layers.1.self_attn.k_proj.weight")
    view.show_fresh = True
    assert decoded(view, "fresh_hist").size == decoded(view, "hist").size and view.fresh_note.startswith("fresh copy")
    std = decoded(view, "std_by_layer").reshape(len(view.std_kinds), 3)
    assert std[view.std_kinds.index("attention K"), 2] == pytest.approx(w.std(), rel=1e-5)
    with pytest.raises(Exception, match="not in this model"):
        view.focus_kind = "router"
    assert 0 < view.payload_bytes() < 20_000


def test_mechanics_view_follows_the_selection_and_matches_the_capture():
    from nbinspect.views.attention_mechanics_view import attention_mechanics

    model = sharp(tiny("llama"))
    tok = CharTokenizer()
    rec = nbinspect.run(model, tok, TEXT, attention=True)
    view = attention_mechanics(model, tok, TEXT, layer=1, head=3)
    n = len(view.tokens)
    assert view.shown_of == [1, 3, n - 1] and view.shared_with == [2, 3] and view.has_rotary
    assert np.abs(decoded(view, "probs") - rec.attention[1][0, 3, -1].numpy()).max() <= 1e-5
    view.selection.token = 4
    view.selection.head = 0
    assert view.shown_of == [1, 0, 4] and view.kv_head == 0
    probs = decoded(view, "probs")
    assert np.abs(probs - rec.attention[1][0, 0, 4].numpy()).max() <= 1e-5
    assert (decoded(view, "masked", np.uint8)[5:] == 1).all() and (decoded(view, "masked", np.uint8)[:5] == 0).all()
    assert len(view.k) == n * 8 and len(view.k_before) == n * 8
    with pytest.raises(Exception, match="temperature"):
        view.temperature = 0.0


def test_activation_view_and_gpt2():
    from nbinspect import codecs
    from nbinspect.views.activation_view import activations

    tok = CharTokenizer()
    view = activations(tiny("llama"), tok, TEXT, layer=2)
    assert view.act_name == "silu" and view.gated and view.shown_layer == 2
    assert decoded(view, "curve").size == codecs.ACTIVATION_CURVE_POINTS
    assert decoded(view, "pre_hist").sum() == len(view.tokens) * 64
    assert decoded(view, "product_hist").sum() == len(view.tokens) * 64
    view.selection.layer = 0
    assert view.shown_layer == 0
    g = activations(tiny("gpt2"), tok, TEXT)
    assert g.act_name == "gelu_new" and not g.gated and g.product_hist == b""


def test_compare_relative_change_and_mismatch_errors():
    from nbinspect.compare import ArchitectureMismatch
    from nbinspect.views.compare_view import compare

    a, b = tiny("llama"), tiny("llama")
    with torch.no_grad():
        b.model.layers[1].mlp.up_proj.weight.mul_(1.5)
    view = compare(a, b)
    c = view.comparison
    up = c.kinds.index("FFN up")
    grid = decoded(view, "grid").reshape(len(c.kinds), 3)
    assert grid[up, 1] == pytest.approx(0.5, rel=1e-5)
    assert np.nansum(grid) == pytest.approx(0.5, rel=1e-5)  # nothing else moved
    assert c.largest(1)[0][0] == "model.layers.1.mlp.up_proj.weight"
    assert compare(a, tiny("llama")).identical
    with pytest.raises(ArchitectureMismatch, match="LlamaForCausalLM but model_b is a GPT2LMHeadModel"):
        compare(a, tiny("gpt2"))
    wider = transformers_llama(intermediate_size=96)
    with pytest.raises(ArchitectureMismatch, match=r"model.layers.0.mlp.gate_proj.weight is \(64, 32\) in model_a but \(96, 32\)"):
        compare(a, wider)
    deeper = transformers_llama(num_hidden_layers=4)
    with pytest.raises(ArchitectureMismatch, match="model_b has a parameter model_a lacks: 'model.layers.3"):
        compare(a, deeper)
    side = compare(a, b, CharTokenizer(), TEXT)
    (att_a, att_b), (neu_a, neu_b) = side.side_by_side
    assert att_a.selection is att_b.selection is side.selection is neu_a.selection
    side.selection.layer = 2
    assert att_a.layer == att_b.layer == neu_b.layer == 2


def transformers_llama(**changes):
    import transformers

    config = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    config.update(changes)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))


BROWSER_NB = r'''
import sys; sys.path.insert(0, {tests!r})
import torch, nbinspect
from tiny_models import tiny, CharTokenizer
from nbinspect.views.parameters_view import parameters
from nbinspect.views.attention_mechanics_view import attention_mechanics
from nbinspect.views.activation_view import activations
from nbinspect.views.compare_view import compare
model, tok = tiny("llama"), CharTokenizer()
other = tiny("llama", seed=1)
sel = nbinspect.Selection()
views = [parameters(model, selection=sel), attention_mechanics(model, tok, "the cat sat on the mat <b>x</b>", selection=sel),
         activations(model, tok, "the cat sat on the mat <b>x</b>", selection=sel), compare(model, other, selection=sel)]
views[0].want_svd = True; views[0].focus_tensor = "model.layers.1.mlp.up_proj.weight"; views[0].show_fresh = True
for v in views: display(v)
'''


@pytest.mark.browser
def test_anatomy_views_paint_in_jupyterlab(artifacts):
    import json
    from pathlib import Path

    import nbformat
    from lab import canvas_ink, chromium, jupyterlab, kernel, open_notebook, run_all, wait_idle_after_run

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}})
    nb.cells = [nbformat.v4.new_code_cell(BROWSER_NB.format(tests=str(Path(__file__).parent)))]
    with jupyterlab({"anatomy_views.ipynb": nbformat.writes(nb)}) as (url, _), chromium() as browser:
        page = open_notebook(browser, url, "anatomy_views.ipynb", timeout_ms=300_000)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        run_all(page)
        wait_idle_after_run(page, timeout_ms=180_000)
        for cls in ("nbi-par", "nbi-mech", "nbi-act", "nbi-cmp"):
            page.wait_for_function(f"() => document.querySelector('.{cls} canvas') !== null", timeout=60_000)
        page.wait_for_timeout(1500)
        for cls in ("nbi-par", "nbi-mech", "nbi-act", "nbi-cmp"):
            view = page.locator(f".{cls}").first
            view.scroll_into_view_if_needed()
            view.screenshot(path=str(artifacts / f"anatomy_{cls}.png"))
            assert canvas_ink(page, f".{cls} canvas") > 0.01, cls
        # a click on the compare heatmap's layer-2 column selects layer 2 in Python and every view
        page.locator(".nbi-cmp canvas").scroll_into_view_if_needed()
        box = page.evaluate("() => { const c = document.querySelector('.nbi-cmp canvas'); const r = c.getBoundingClientRect();"
                            " return [r.left + Number(c.dataset.left) + 2.5 * Number(c.dataset.cellWidth), r.top + Number(c.dataset.top) + 5]; }")
        page.mouse.click(*box)
        page.wait_for_function("() => document.querySelector('.nbi-act .nbi-title').textContent.includes('layer 2')",
                               timeout=60_000)
        assert kernel(page, "print(sel.layer, views[2].shown_layer, views[1].shown_of[0])").strip() == "2 2 2"
        assert not page.locator(".nbi-mech b").count()  # token text is drawn, never parsed as HTML
        assert not errors, errors


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_mechanics_and_activation_through_a_trace_replay(family):
    model = sharp(tiny(family))
    tok = CharTokenizer()
    inputs = tok(TEXT)
    trace = nbinspect.trace(model, tok, TEXT, gradients=False)
    before = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    for layer in (0, 2):  # a replay that stops at the first and at the last layer
        m = A.mechanics(trace, layer=layer, head=1, query=5)
        direct = A.mechanics(model, inputs, layer=layer, head=1, query=5)
        # the trace's kept block inputs come from eager attention math, the direct forward from sdpa: float32
        # rounding (~1e-6 of values up to ~10 after two sharp layers), not a different computation
        assert (m.probs - direct.probs).abs().max() <= 1e-5
        assert (m.output - direct.output).abs().max() <= 1e-5
        act = A.activation(trace, layer=layer)
        assert torch.allclose(act.pre, A.activation(model, inputs, layer=layer).pre, rtol=1e-5, atol=1e-5)
    assert dict(ALL_ATTENTION_FUNCTIONS._local_mapping) == before


@pytest.mark.parametrize("where", ["inside the attention module", "after it"])
def test_an_error_during_the_forward_leaves_no_hook_and_no_wrapper(where):
    model = tiny("llama")
    inputs = CharTokenizer()(TEXT)
    before = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    hooks = {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in model.named_modules()}

    def boom(*args):
        raise RuntimeError("boom")

    target = model.model.layers[1].self_attn.o_proj if where == "inside the attention module" else model.model.layers[1].mlp
    handle = target.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            A.mechanics(model, inputs, layer=1, head=0)
        with pytest.raises(RuntimeError, match="boom"):
            A.activation(model, inputs, layer=1)
    finally:
        handle.remove()
    assert dict(ALL_ATTENTION_FUNCTIONS._local_mapping) == before
    assert {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in model.named_modules()} == hooks
    assert A.mechanics(model, inputs, layer=1, head=0).probs.sum() == pytest.approx(1.0)
