"""GradientView: norms per layer and module type, flags, attribution against manual autograd, links."""

import math

import numpy as np
import pytest
import torch

import nbinspect
import importlib
from nbinspect.views import gradient_view as gv

trace_module = importlib.import_module("nbinspect.trace")  # the module, not nbinspect.trace the function
from tiny_models import CharTokenizer, tiny

TEXT = "gradients flow backwards"


def manual_attribution(model, ids):
    """grad and grad × input of the predicted next token's logit w.r.t. the input embeddings."""
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb).logits[0, -1]
    (grad,) = torch.autograd.grad(logits[logits.argmax()], emb)  # leaves the parameters' .grad alone
    return grad[0].norm(dim=-1), (grad[0] * emb[0]).sum(-1).detach()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_attribution_equals_manual_autograd(family):
    model = tiny(family)
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT)
    norm, gxi = manual_attribution(model, CharTokenizer()(TEXT)["input_ids"])
    torch.testing.assert_close(view.attribution("grad_norm"), norm.float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(view.attribution("grad_x_input"), gxi.float(), rtol=1e-5, atol=1e-7)
    assert view.scores_of == "grad_x_input"
    np.testing.assert_array_equal(np.frombuffer(view.scores, dtype=np.float32), gxi.numpy())
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_integrated_gradients_are_computed_when_asked_for():
    model = tiny("gpt2")
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT)
    assert ("attribution", "integrated_gradients") not in view.trace._cache  # not paid for until the user switches to it
    view.method = "integrated_gradients"
    assert view.scores_of == "integrated_gradients" and not view.busy
    expected = nbinspect.saliency(model, CharTokenizer()(TEXT), method="integrated_gradients", steps=trace_module.IG_STEPS, progress=False)[0]
    torch.testing.assert_close(view.attribution(), expected.float(), rtol=1e-4, atol=1e-6)
    with pytest.raises(Exception, match="choose one of"):
        view.method = "shapley"
    assert view.method == "integrated_gradients"


def test_norms_by_module_type_add_up_to_each_layer():
    model = tiny("llama")
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT, target="loss")
    for layer, total in enumerate(view.trace.gradient_norms.layers):
        parts = [r["norm"] for r in view.rows if r["layer"] == layer]
        assert {r["part"] for r in view.rows if r["layer"] == layer} == {"attention", "mlp", "norm"}
        assert math.isclose(math.sqrt(sum(p * p for p in parts)), float(total), rel_tol=1e-5)
    # Compare one type with a plain loss.backward() over that layer's attention parameters.
    model.zero_grad()
    ids = CharTokenizer()(TEXT)["input_ids"]
    model(input_ids=ids, labels=ids).loss.backward()
    attn = model.model.layers[1].self_attn
    expected = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in attn.parameters()))
    (row,) = [r for r in view.rows if r["layer"] == 1 and r["part"] == "attention"]
    assert math.isclose(row["norm"], expected, rel_tol=1e-5)
    model.zero_grad(set_to_none=True)


def test_flags_use_the_stated_ratio_to_the_median():
    norms = [1.0, 1.0, 1.0, 0.05, 20.0]
    assert gv.flag_layers(norms) == {"vanishing": [3], "exploding": [4]}
    assert gv.flag_layers([1.0, 0.2, 5.0]) == {"vanishing": [], "exploding": []}


def test_clicking_a_layer_in_the_chart_selects_it_everywhere():
    model = tiny("llama")
    sel = nbinspect.Selection()
    att = nbinspect.attention(model, CharTokenizer(), TEXT, selection=sel)
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT, selection=sel)
    # What altair's JupyterChart receives from the browser when a point of layer 2 is clicked.
    view.chart._vl_selections = {"layer_pick": {"value": {"vlPoint": {"or": [{"layer": 2}]}}, "store": []}}
    assert sel.layer == 2 and att.layer == 2 and att.focus_of[0] == 2
    sel.layer = 1  # and the chart's marker follows the selection
    assert view.chart.params.current == 1


def test_encoder_without_lm_head_uses_a_stated_target():
    view = nbinspect.gradient_flow(tiny("bert"), CharTokenizer(), TEXT)
    assert "norm of the final state" in view.target
    assert view.attribution().shape == (len(TEXT),)


def test_model_left_as_it_was_even_with_existing_grads():
    model = tiny("gpt2")
    model.train()
    p = next(model.parameters())
    p.grad = torch.full_like(p, 3.0)
    frozen = model.transformer.wte.weight
    nbinspect.gradient_flow(model, CharTokenizer(), TEXT)
    assert model.training and torch.equal(p.grad, torch.full_like(p, 3.0))
    assert all(q.requires_grad for q in model.parameters()) and frozen.requires_grad
    model.eval()


def test_a_chart_click_still_selects_after_the_view_was_shown_an_edited_trace():
    model = tiny("llama")
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT)
    view.show(view.trace.edit(nbinspect.AblateHead(1, 0)))  # a slider move: the chart gets a new spec
    view.chart._vl_selections = {"layer_pick": {"value": {"vlPoint": {"or": [{"layer": 2}]}}, "store": []}}
    assert view.selection.layer == 2


def _title(spec: dict) -> str:
    assert spec["title"]["text"] == {"expr": gv.TITLE_PARAM}
    return next(p["value"] for p in spec["params"] if p["name"] == gv.TITLE_PARAM)


def test_the_chart_shows_the_edited_traces_norms_and_the_template_is_left_alone():
    from nbinspect.export import _chart_of

    model = tiny("llama")
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT)
    first = view.chart.spec
    edited = view.trace.edit(nbinspect.AblateHead(1, 0))
    view.show(edited)
    # The chart keeps its spec (a new one would be embedded again in the browser) and is sent the new
    # data and title as updates; the spec it shows (what export pictures) is the edited trace's.
    assert view.chart.spec is first
    assert {u["name"] for u in view.chart._py_to_js_updates} == {"norms", "flags", "layers", gv.TITLE_PARAM}
    spec = _chart_of(view.chart)
    expected = [r for r in gv.norms_by_part(edited.adapter, edited.gradient_norms) if r["norm"] > 0]
    assert spec["datasets"]["norms"] == expected and expected != first["datasets"]["norms"]
    assert "edited: ScaleHead(layer=1, head=0" in _title(spec) and "edited" not in _title(first)
    assert len(spec["datasets"]["layers"]) == edited.adapter.n_layers
    assert spec == gv.norm_chart_spec(view.rows, view.flags, edited.adapter.n_layers, _title(spec))
    # Shown again, the first trace's numbers come back: the shared template was not written to.
    view.show(edited.parent)
    assert _chart_of(view.chart)["datasets"] == first["datasets"] and _title(_chart_of(view.chart)) == _title(first)


# --- relevance, rollout and flow in the strip --------------------------------------------------------------
def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _model_state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(p.requires_grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()],
            [m.training for m in model.modules()], _hooks(model))


def _assert_unchanged(model, before):
    weights, params, training, hooks = _model_state(model)
    assert all(torch.equal(weights[k], v) for k, v in before[0].items()) and weights.keys() == before[0].keys()
    for (rg, g), (rg2, g2) in zip(before[1], params):
        assert rg == rg2 and (g is None) == (g2 is None) and (g is None or torch.equal(g, g2))
    assert training == before[2] and hooks == before[3]


def _sent(view):
    return np.frombuffer(view.scores, dtype=np.float32)


def test_switching_to_lrp_sends_the_relevance_and_the_layer_slider_moves_it(monkeypatch):
    rel = importlib.import_module("nbinspect.relevance")  # the module (nbinspect.relevance is the function)

    model = tiny("llama")
    p = next(model.parameters())
    p.grad = torch.full_like(p, 2.0)  # an existing .grad must survive the relevance backward
    before = _model_state(model)
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT)
    assert {"lrp", "rollout", "flow"} <= set(view.methods) and view.unavailable == {}
    assert view.layered["lrp"] == [-1, 2] and view.layered["rollout"] == [0, 2]
    runs = []
    real = rel.propagate
    monkeypatch.setattr(rel, "propagate", lambda *a, **k: runs.append(1) or real(*a, **k))

    view.method = "lrp"
    assert view.scores_of == "lrp" and view.scores_layer == -1 and view.message == "" and not view.busy
    at_input = _sent(view).copy()
    np.testing.assert_array_equal(at_input, rel.lrp(view.trace))
    assert np.abs(at_input).max() > 0
    view.strip_layer = 1  # the layer slider
    assert view.scores_layer == 1 and "block 1" in view.export_note  # a saved page says what it shows
    np.testing.assert_array_equal(_sent(view), rel.lrp(view.trace, layer=1))
    assert not np.allclose(_sent(view), at_input)
    # Flipping to another method and back is served from the trace: one relevance run in all.
    view.method = "grad_x_input"
    view.strip_layer = None
    view.method = "lrp"
    np.testing.assert_array_equal(_sent(view), at_input)
    assert len(runs) == 1
    _assert_unchanged(model, before)

    # An edit (a slider of the panel) gives a new trace: relevance is recomputed under the edit.
    edited = view.trace.edit(nbinspect.AblateHead(0, 1))
    view.show(edited)
    assert len(runs) == 2 and view.scores_of == "lrp"
    np.testing.assert_array_equal(_sent(view), rel.lrp(edited))
    assert not np.allclose(_sent(view), at_input)
    _assert_unchanged(model, before)
    model.zero_grad(set_to_none=True)


def test_rollout_and_flow_in_the_strip_follow_the_layer_slider():
    from nbinspect.rollout import flow, rollout

    model = tiny("gpt2")
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT)
    view.method = "rollout"
    assert view.scores_layer == 2  # through every block by default
    np.testing.assert_allclose(_sent(view), rollout(view.trace), atol=1e-7)
    assert _sent(view).sum() == pytest.approx(1.0, abs=1e-5)
    view.strip_layer = 0
    np.testing.assert_allclose(_sent(view), rollout(view.trace, layer=0), atol=1e-7)
    view.strip_layer = -1  # below rollout's range: its first layer
    assert view.scores_layer == 0
    view.method = "flow"
    assert view.scores_layer == 0
    np.testing.assert_allclose(_sent(view), flow(view.trace, layer=0), atol=1e-7)
    with pytest.raises(Exception, match="out of range"):
        view.strip_layer = 3


def test_a_model_relevance_does_not_know_gets_the_message_not_an_error():
    model = tiny("gpt_neox")
    before = _model_state(model)
    view = nbinspect.gradient_flow(model, CharTokenizer(), TEXT)
    assert "not for this model" in view.unavailable["lrp"] and "gpt_neox" in view.unavailable["lrp"]
    view.method = "lrp"
    assert view.scores_of == "lrp" and view.scores == b"" and "not for this model" in view.message
    assert not view.busy
    with pytest.raises(ValueError, match="not for this model"):
        view.attribution("lrp")
    view.method = "rollout"  # the attention-based methods work for any family
    assert view.message == "" and _sent(view).shape == (len(TEXT),)
    _assert_unchanged(model, before)


def test_a_loss_target_has_no_relevance_and_says_so():
    view = nbinspect.gradient_flow(tiny("llama"), CharTokenizer(), TEXT, target="loss")
    view.method = "lrp"
    assert view.scores == b"" and "not the loss" in view.message


# --- the strip's method switch and layer slider in Chromium ----------------------------------------------
STRIP_PAGE = """<!doctype html><meta charset="utf-8"><body><div id="host"></div>
<script type="module">
import view from "./gradient_view.js";
// A stand-in for the anywidget model: what the view sets is logged for Python, which answers with
// the traits the real GradientView computed (window.push).
function fake(state, shared) {
  const on = {};
  const fire = (k) => { for (const f of (on["change:" + k] || [])) f(); };
  return { get: (k) => state[k], set: (k, v) => { state[k] = v; window.sent.push([k, v]); },
    on: (e, f) => { (on[e] = on[e] || []).push(f); }, off: (e, f) => { on[e] = (on[e] || []).filter((g) => g !== f); },
    save_changes() {}, widget_manager: { get_model: async () => shared }, fire };
}
window.sent = [];
const selection = fake({ token: -1, layer: 0, head: 0, neuron: -1 });
const state = JSON.parse(document.getElementById("state").textContent);
// As a live model sends a binary trait: the 4-byte stamp (codecs.stamped), then the float32 values.
const bytes = (xs) => { const b = new Uint8Array(4 + 4 * xs.length); b.set(new Uint8Array(new Float32Array(xs).buffer), 4); return new DataView(b.buffer); };
state.scores = bytes(state.scores);
const model = fake(state, selection);
window.push = (traits) => {
  for (const [k, v] of Object.entries(traits)) { state[k] = k === "scores" ? bytes(v) : v; model.fire(k); }
};
await view.render({ model, el: document.getElementById("host") });
window.ready = true;
</script>"""

TRAITS = ["methods", "layered", "unavailable", "method", "strip_layer", "scores_of", "scores_layer", "message",
          "target", "position", "flags", "flag_ratio", "busy", "tokens", "painted"]


def _traits(view):
    return {**{k: getattr(view, k) for k in TRAITS}, "scores": _sent(view).tolist()}


@pytest.mark.browser
def test_strip_method_switch_and_layer_slider_in_chromium(tmp_path):
    import functools
    import http.server
    import json
    import shutil
    import threading
    from pathlib import Path

    from lab import chromium

    bundle = Path(nbinspect.__file__).parent / "static" / "gradient_view.js"
    shutil.copy(bundle, tmp_path / bundle.name)
    view = nbinspect.gradient_flow(tiny("llama"), CharTokenizer(), TEXT)
    state = dict(_traits(view), selection="IPY_MODEL_selection", chart=None)
    (tmp_path / "index.html").write_text(STRIP_PAGE.replace(
        "<body>", f'<body><script type="application/json" id="state">{json.dumps(state)}</script>'))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}), directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    answer = ["scores", "scores_of", "scores_layer", "message", "busy"]

    def relay(page):
        """What the browser set, applied to the Python view; its answer sent back."""
        for key, value in page.evaluate("window.sent.splice(0)"):
            if key in ("method", "strip_layer"):
                setattr(view, key, value)
        page.evaluate("(t) => window.push(t)", {k: (_sent(view).tolist() if k == "scores" else getattr(view, k)) for k in answer})
        page.wait_for_timeout(100)
        return page.evaluate("""() => { const r = document.querySelector('.nbi-grad');
            return { painted: r.dataset.painted, layer: r.dataset.layer, note: r.querySelector('.nbi-note').textContent,
                     slider: r.querySelector('.nbi-layer').classList.contains('is-shown'),
                     options: [...r.querySelectorAll('option')].map((o) => o.textContent) }; }""")

    try:
        with chromium() as browser:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
            page.wait_for_function("window.ready === true", timeout=30_000)
            assert "AttnLRP relevance" in page.evaluate("[...document.querySelectorAll('.nbi-grad option')].map((o) => o.textContent)")
            page.select_option(".nbi-grad select", "lrp")
            shown = relay(page)
            assert view.method == "lrp" and shown["painted"] == "lrp@-1" and shown["slider"]
            assert "AttnLRP relevance" in shown["note"] and "input embeddings" in shown["note"]
            page.evaluate("""() => { const s = document.querySelector('.nbi-layer input');
                s.value = '1'; s.dispatchEvent(new Event('input')); }""")
            shown = relay(page)
            assert view.strip_layer == 1 and shown["layer"] == "1" and "after block 1" in shown["note"]
            page.select_option(".nbi-grad select", "grad_x_input")
            shown = relay(page)
            assert shown["painted"] == "grad_x_input" and not shown["slider"]
            # A model relevance does not know: the option says so, and picking it shows the reason.
            other = nbinspect.gradient_flow(tiny("gpt_neox"), CharTokenizer(), TEXT)
            other.method = "lrp"
            page.evaluate("(t) => window.push(t)", {k: (_sent(other).tolist() if k == "scores" else getattr(other, k))
                                                    for k in ["unavailable", "method", *answer]})
            page.wait_for_timeout(100)
            note = page.evaluate("document.querySelector('.nbi-grad .nbi-note').textContent")
            options = page.evaluate("[...document.querySelectorAll('.nbi-grad option')].map((o) => o.textContent)")
            assert "not for this model" in note and "AttnLRP relevance (not for this model)" in options
            assert not errors, errors
    finally:
        server.shutdown()
