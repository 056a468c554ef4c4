"""The dashboard: one Selection for every view, and the sliders repainting the views that show the run."""

import torch

import nbinspect
from tiny_models import CharTokenizer, tiny

TEXT = "the cat sat on the mat"


def test_every_view_shares_one_selection_and_the_sliders_follow_it():
    d = nbinspect.inspect(tiny("llama"), CharTokenizer(), TEXT)
    assert d.attention.selection is d.neurons.selection is d.gradients.selection is d.selection
    d.selection.layer, d.selection.head, d.selection.neuron = 2, 3, 7
    assert (d.attention.layer, d.attention.head, d.neurons.layer, d.neurons.neuron) == (2, 3, 2, 7)
    assert (d.perturb.head_layer, d.perturb.head, d.perturb.neuron_layer, d.perturb.neuron) == (2, 3, 2, 7)
    data, code = d.payload_bytes()
    assert 0 < data < code  # data is small next to the JS, which is sent once per widget model


def test_a_slider_move_repaints_attention_and_neurons_with_the_edited_run():
    model = tiny("llama")
    d = nbinspect.inspect(model, CharTokenizer(), TEXT)
    d.selection.layer = 2
    before = d.neurons.activations(2).clone()
    panel = d.perturb
    panel.head_layer, panel.head, panel.head_factor = 0, 1, 0.0
    assert panel.wait()
    inputs = CharTokenizer()(TEXT)
    with torch.no_grad(), nbinspect.perturb(model, nbinspect.AblateHead(0, 1)):
        with nbinspect.capture(model, neurons=[2], attention=[2]) as edited:
            model(**inputs)
    assert not torch.allclose(before, edited.neurons[2][0])
    torch.testing.assert_close(d.neurons.activations(2), edited.neurons[2][0].float(), atol=1e-5, rtol=1e-5)
    assert (d.attention.weights(2, 0) - edited.attention[2][0, 0]).abs().max() <= float(edited.attention[2][0, 0].max()) / 510 + 1e-6
    # The gradient view follows the edit too: its norms are the edited model's.
    edited_trace = nbinspect.trace(model, CharTokenizer(), TEXT)
    with nbinspect.perturb(model, nbinspect.AblateHead(0, 1)):
        reference = nbinspect.trace(model, CharTokenizer(), TEXT, target=d.trace.target.token)
    shown = d.gradients.trace.gradient_norms.layers
    torch.testing.assert_close(torch.stack(shown), torch.stack(reference.gradient_norms.layers), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(torch.stack(shown), torch.stack(edited_trace.gradient_norms.layers))
    torch.testing.assert_close(d.gradients.attribution("grad_x_input"), reference.attribution("grad_x_input"), rtol=1e-5, atol=1e-7)
    panel.reset()
    assert panel.wait()
    torch.testing.assert_close(d.neurons.activations(2), before, atol=1e-5, rtol=1e-5)


def test_a_click_that_changes_no_edit_does_not_recompute():
    d = nbinspect.inspect(tiny("llama"), CharTokenizer(), TEXT)
    assert d.perturb.wait()
    computed, latest = d.perturb.scheduler.computed, d.perturb.latest
    d.selection.layer, d.selection.head = 2, 3  # moves the head sliders, whose scale is still 1
    assert d.perturb.wait() and d.perturb.scheduler.computed == computed and d.perturb.latest is latest
    d.perturb.head_factor = 0.0  # now the selected head is switched off: one run
    assert d.perturb.wait() and d.perturb.scheduler.computed == computed + 1
    assert d.perturb.summary["edits"] == [repr(nbinspect.ScaleHead(2, 3, 0.0))]
    assert d.trace.edits == (nbinspect.ScaleHead(2, 3, 0.0),) and d.trace.from_layer == 2


def test_a_target_picked_in_a_view_retargets_every_attribution():
    model = tiny("llama")
    d = nbinspect.inspect(model, CharTokenizer(), TEXT)
    before = d.trace
    d.logit_attribution.target_token = ord("q")  # what a click in the view's top-k list sends
    assert d.trace.target.token == ord("q") and d.trace is not before
    assert d.gradients.trace is d.trace and d.block_writes.trace is d.trace
    assert d.trace.record.residual[0].after is before.record.residual[0].after  # the forward was reused
    d.target = "z"
    assert d.logit_attribution.target_token == ord("z") and d.gradients.target.startswith("logit of 'z'")


def test_every_binary_trait_is_sent_stamped():
    """The browser strips 4 bytes from every binary trait (js/codecs.js bytesOf), so every one must be sent
    through codecs.stamped; payloads that differ only at their end differ in their first bytes."""
    import importlib
    import pkgutil

    import ipywidgets
    import traitlets

    import nbinspect.views
    from nbinspect import codecs

    for info in pkgutil.iter_modules(nbinspect.views.__path__):
        importlib.import_module(f"nbinspect.views.{info.name}")
    classes, stack = [], [ipywidgets.Widget]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if sub.__module__.startswith("nbinspect."):
                classes.append(sub)
    binary = [(cls, name, trait) for cls in classes for name, trait in cls.class_traits(sync=True).items()
              if isinstance(trait, traitlets.Bytes)]
    assert len(binary) >= 80, len(binary)  # every view's maps and values
    unstamped = [f"{cls.__name__}.{name}" for cls, name, trait in binary if trait.metadata.get("to_json") is not codecs.stamped]
    assert not unstamped, unstamped
    a = bytes(1000) + b"\x01"
    b = bytes(1000) + b"\x02"
    assert codecs.stamped(b"") == b"" and codecs.stamped(a)[codecs.STAMP_BYTES:] == a
    assert codecs.stamped(a)[: codecs.STAMP_BYTES] != codecs.stamped(b)[: codecs.STAMP_BYTES]
