"""AttentionView on tiny random models: what it shows equals eager attention, within the stated bound."""

import base64

import numpy as np
import pytest
import torch
import traitlets

import nbinspect
from nbinspect import codecs
from tiny_models import DENSE, FAMILIES, CharTokenizer, tiny

TEXT = "the cat sat on the mat"


def eager_attentions(model, ids):
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(input_ids=ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(impl)


@pytest.mark.parametrize("family", FAMILIES)
def test_shown_weights_equal_eager_within_quantization_bound(family):
    model = tiny(family)
    before = model.config._attn_implementation
    view = nbinspect.attention(model, CharTokenizer(), TEXT)
    assert model.config._attn_implementation == before
    ref = eager_attentions(model, CharTokenizer()(TEXT)["input_ids"])
    for layer in range(view.n_layers):
        for head in range(view.n_heads):
            expected = ref[layer][0, head]
            bound = float(expected.max()) / 510 + 1e-6
            shown = view.weights(layer, head)
            assert (shown - expected).abs().max() <= bound


def test_focus_bytes_decode_to_the_shown_weights():
    view = nbinspect.attention(tiny("gpt2"), CharTokenizer(), TEXT, layer=1, head=2)
    f = view.focus_cells
    q = np.frombuffer(view.focus, dtype=np.uint8).reshape(f, f)
    assert torch.equal(codecs.dequantize(q, view.focus_scale), view.weights(1, 2))
    assert view.focus_of == [1, 2]
    view.layer, view.head = 2, 3  # moving the focus re-sends the focused map, and only that
    assert view.focus_of == [2, 3]
    q = np.frombuffer(view.focus, dtype=np.uint8).reshape(f, f)
    assert torch.equal(codecs.dequantize(q, view.focus_scale), view.weights(2, 3))


def test_thumbnails_are_block_maxima_of_the_weights():
    text = "x" * 100  # 100 tokens → blocks of 4 tokens per thumbnail cell
    model = tiny("llama")
    view = nbinspect.attention(model, CharTokenizer(), text)
    ref = eager_attentions(model, CharTokenizer()(text)["input_ids"])
    c, L, H = view.thumbnail_cells, view.n_layers, view.n_heads
    assert view.thumbnail_block == 4 and c == 25  # ceil(100 / 32) tokens per cell
    thumbs = np.frombuffer(view.thumbnails, dtype=np.uint8).reshape(L, H, c, c)
    scales = np.frombuffer(view.thumbnail_scales, dtype=np.float32).reshape(L, H)
    for layer in range(L):
        pooled = torch.nn.functional.max_pool2d(ref[layer][0][:, None], 4, 4, ceil_mode=True)[:, 0]
        shown = codecs.dequantize(thumbs[layer], scales[layer])
        assert (shown - pooled).abs().max() <= float(pooled.max()) / 510 + 1e-6


def test_transport_is_bytes_only():
    view = nbinspect.attention(tiny("bert"), CharTokenizer(), TEXT)
    state = view.get_state()
    for name, value in state.items():
        if isinstance(value, list):  # only token strings and small integer pairs travel as JSON
            assert all(isinstance(v, (str, int)) and not isinstance(v, float) for v in value), name
    assert isinstance(state["thumbnails"], (bytes, memoryview)) and isinstance(state["focus"], (bytes, memoryview))
    assert view.payload_bytes() < codecs.MAX_BROWSER_MESSAGE_BYTES


def test_over_budget_recomputes_the_focused_layer_and_keeps_only_it(monkeypatch):
    model = tiny("qwen2")
    full = nbinspect.attention(model, CharTokenizer(), TEXT)
    monkeypatch.setattr(codecs, "PATTERN_CACHE_MAX_BYTES", 1)
    lean = nbinspect.attention(model, CharTokenizer(), TEXT, layer=1)
    kept = [i for i, m in lean._maps.layers.items() if m.full is not None]
    assert kept == [1]
    lean.layer = 2
    assert torch.equal(lean.weights(2, 3), full.weights(2, 3))
    assert [i for i, m in lean._maps.layers.items() if m.full is not None] == [2]


def test_show_an_edited_trace_repaints_with_the_edited_weights():
    model = tiny("llama")
    view = nbinspect.attention(model, CharTokenizer(), TEXT, layer=2)
    before_thumbs, before_focus = view.thumbnails, view.focus
    edited = view.trace.edit(nbinspect.AblateHead(1, 0))
    view.show(edited)
    assert view.thumbnails != before_thumbs and view.focus != before_focus
    with nbinspect.perturb(model, nbinspect.AblateHead(1, 0)):
        ref = eager_attentions(model, CharTokenizer()(TEXT)["input_ids"])
    assert (view.weights(2, 1) - ref[2][0, 1]).abs().max() <= 1 / 510 + 1e-6
    assert (view.weights(0, 1) - eager_attentions(model, CharTokenizer()(TEXT)["input_ids"])[0][0, 1]).abs().max() <= 1 / 510 + 1e-6


@pytest.mark.parametrize("family", DENSE)
def test_model_left_as_it_was(family):
    model = tiny(family)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    nbinspect.attention(model, CharTokenizer(), TEXT)
    assert all(torch.equal(params[k], v) for k, v in model.state_dict().items())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert model.config._attn_implementation == "sdpa" and not model.training


def test_works_on_an_eager_model_too():
    model = tiny("llama")
    model.set_attn_implementation("eager")
    view = nbinspect.attention(model, CharTokenizer(), TEXT)
    ref = eager_attentions(model, CharTokenizer()(TEXT)["input_ids"])
    assert (view.weights(2, 1) - ref[2][0, 1]).abs().max() <= 1 / 510 + 1e-6
    assert model.config._attn_implementation == "eager"


def test_bad_input_gets_a_clear_error():
    model = tiny("gpt2")
    with pytest.raises(ValueError, match="empty"):
        nbinspect.attention(model, CharTokenizer(), "   ")
    with pytest.raises(ValueError, match="at most 256"):
        nbinspect.attention(model, CharTokenizer(), "y" * 300)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        nbinspect.attention("gpt2", CharTokenizer(), TEXT)
    with pytest.raises(TypeError, match="transformer blocks"):
        nbinspect.attention(torch.nn.Linear(2, 2), CharTokenizer(), TEXT)
    with pytest.raises(IndexError, match="layers 0..2"):
        nbinspect.attention(model, CharTokenizer(), TEXT, layer=3)
    view = nbinspect.attention(model, CharTokenizer(), TEXT)
    with pytest.raises(traitlets.TraitError, match="heads 0..3"):
        view.head = 4
    assert view.head == 0  # a refused value loses nothing


@pytest.mark.real_model
@pytest.mark.parametrize("fixture", ["smollm2", "minilm"])
def test_real_models(fixture, request):
    model, tokenizer = request.getfixturevalue(fixture)
    view = nbinspect.attention(model, tokenizer, "The capital of France is Paris.")
    ids = tokenizer("The capital of France is Paris.", return_tensors="pt")["input_ids"]
    ref = eager_attentions(model, ids)
    layer = view.n_layers // 2
    for head in range(view.n_heads):
        assert (view.weights(layer, head) - ref[layer][0, head]).abs().max() <= 1 / 510 + 1e-6
    assert model.config._attn_implementation == "sdpa"


def test_a_view_never_runs_the_model_while_weights_are_being_edited():
    import threading
    import time

    from nbinspect.perturb import model_lock

    model = tiny("llama")
    held = threading.Event()

    def worker():  # stands in for the sliders' worker, holding the model while it edits in place
        with model_lock(model):
            held.set()
            time.sleep(0.3)

    t = threading.Thread(target=worker)
    t.start()
    held.wait()
    started = time.perf_counter()
    nbinspect.attention(model, CharTokenizer(), TEXT)
    assert time.perf_counter() - started >= 0.25
    t.join()



def test_head_type_badges_switch_on_once_per_model(monkeypatch):
    from nbinspect import residual_stream as rs
    from nbinspect.trace import trace as make_trace
    from nbinspect.views.attention_view import AttentionView
    from nbinspect.views.logit_attribution_view import LogitAttributionView

    model = tiny("llama")
    probes = []
    measure = rs.head_types
    monkeypatch.setattr(rs, "head_types", lambda *a, **kw: probes.append(a) or measure(*a, **kw))
    t = make_trace(model, CharTokenizer(), TEXT, gradients=False)
    view = AttentionView(t)
    assert view.head_types == b"" and not probes  # measured only when switched on
    view.show_head_types = True  # what the browser's checkbox does
    expected = measure(model, CharTokenizer()).badges()
    L, H = view.n_layers, view.n_heads
    sent = torch.frombuffer(bytearray(view.head_types), dtype=torch.uint8).reshape(L, H)
    assert torch.equal(sent, expected) and len(probes) == 1
    scores = torch.frombuffer(bytearray(view.head_type_scores), dtype=torch.float32).reshape(4, L, H)
    types = view.types()
    assert torch.equal(scores, torch.stack([types.scores[k] for k in rs.HEAD_TYPES]))
    assert torch.equal(types.badges(), expected) and view.head_types_reason == ""
    # Another view of the same model (another text), and the attribution's overlay: no new probe.
    other = AttentionView(make_trace(model, CharTokenizer(), "a b a b", gradients=False), show_head_types=True)
    dla = LogitAttributionView(t)
    dla.show_head_types = True
    assert other.head_types == view.head_types == dla.head_types and len(probes) == 1
    # A random tiny model has few heads over the default threshold: lower it and every badge still matches.
    view.badge_threshold = 0.05
    low = torch.frombuffer(bytearray(view.head_types), dtype=torch.uint8).reshape(L, H)
    assert torch.equal(low, types.badges(0.05)) and int((low > 0).sum()) > int((expected > 0).sum())
    assert len(probes) == 1
    # Changed weights are measured again (their in-place version counters moved).
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(2.0)
    view.show_head_types = False
    view.show_head_types = True
    assert len(probes) == 2


# --- only the changed layers' thumbnails are drawn again, in Chromium --------------------------------------
GRID_PAGE = """<!doctype html><meta charset="utf-8"><body><div id="a"></div><div id="b"></div>
<script type="module">
import view from "./attention_view.js";
// Binary traits come as base64 of the bytes the kernel sends (stamp included), as DataViews like anywidget's.
const decode = (s) => Object.fromEntries(Object.entries(s).map(([k, v]) =>
  [k, v && typeof v === "object" && "b64" in v ? new DataView(Uint8Array.from(atob(v.b64), (c) => c.charCodeAt(0)).buffer) : v]));
function fake(state, shared) {
  const on = {};
  const fire = (k) => { for (const f of (on["change:" + k] || [])) f(); for (const f of (on.change || [])) f(); };
  return { get: (k) => state[k], set: (k, v) => { state[k] = v; }, on: (e, f) => { (on[e] = on[e] || []).push(f); },
    off: (e, f) => { on[e] = (on[e] || []).filter((g) => g !== f); }, save_changes() {},
    widget_manager: { get_model: async () => shared }, state, fire };
}
const { before, after, selection } = JSON.parse(document.getElementById("state").textContent);
const frame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
const pixels = (host) => { const c = document.querySelector(`#${host} canvas.nbi-grid`);
  return c.getContext("2d").getImageData(0, 0, c.width, c.height).data; };
const differing = (x, y) => { if (x.length !== y.length) return -1; let n = 0; for (let i = 0; i < x.length; i++) n += x[i] !== y[i]; return n; };
const live = fake(decode(before), fake(decode(selection)));
await view.render({ model: live, el: document.getElementById("a") });
await frame();
const first = pixels("a").slice();
// The edit arrives as the kernel sends it: every trait that changed, then one change event each.
const next = decode(after);
const changed = Object.keys(next).filter((k) => JSON.stringify(next[k]) !== JSON.stringify(live.state[k]) || next[k] instanceof DataView);
for (const k of changed) live.state[k] = next[k];
for (const k of changed) live.fire(k);
await frame();
await view.render({ model: fake(decode(after), fake(decode(selection))), el: document.getElementById("b") });
await frame();
window.result = { editMoved: differing(first, pixels("a")), freshVsUpdated: differing(pixels("a"), pixels("b")),
  redrawn: document.querySelector("#a canvas.nbi-grid").dataset.redrawnLayers };
</script>"""


def _page_state(widget) -> dict:
    return {k: {"b64": base64.b64encode(bytes(v)).decode()} if isinstance(v, (bytes, memoryview)) else v
            for k, v in widget.get_state().items() if k not in ("_esm", "_css")}  # get_state: bytes as sent


@pytest.mark.browser
def test_an_edit_redraws_the_changed_layers_as_a_fresh_view_draws_them(tmp_path):
    """An edit at layer 0 changes the maps of the layers after it only: the grid colours and draws just those again, and the
    result is pixel for pixel what a view drawn from scratch for the edited trace shows."""
    import functools
    import http.server
    import json
    import shutil
    import threading
    from pathlib import Path

    from lab import chromium

    from nbinspect.perturb import ScaleHead

    view = nbinspect.attention(tiny("llama"), CharTokenizer(), TEXT, layer=1)
    before = _page_state(view)
    view.show(view.trace.with_edits([ScaleHead(0, 0, 0.0)]))
    after = _page_state(view)
    L, H, c = view.n_layers, view.n_heads, view.thumbnail_cells
    per = H * c * c
    old = base64.b64decode(before["thumbnails"]["b64"])[codecs.STAMP_BYTES:]
    assert old[:per] == view.thumbnails[:per] and old[per:] != view.thumbnails[per:], "layer 0 same, layer 1 changed"
    bundle = Path(nbinspect.__file__).parent / "static" / "attention_view.js"
    shutil.copy(bundle, tmp_path / bundle.name)
    state = {"before": before, "after": after, "selection": _page_state(view.selection)}
    (tmp_path / "index.html").write_text(GRID_PAGE.replace(
        "<body>", f'<body><script type="application/json" id="state">{json.dumps(state)}</script>'))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}), directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with chromium() as browser:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
            page.wait_for_function("window.result !== undefined", timeout=30_000)
            result = page.evaluate("window.result")
            assert not errors, errors
    finally:
        server.shutdown()
    assert result["redrawn"] == f"1,{L}" and result["editMoved"] > 0, result  # only the changed layers, and it shows
    assert result["freshVsUpdated"] == 0, result  # and exactly as a fresh view draws it
