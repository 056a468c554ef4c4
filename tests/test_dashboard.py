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
    assert (d.perturb.head_layer.value, d.perturb.head.value, d.perturb.neuron_layer.value, d.perturb.neuron.value) == (2, 3, 2, 7)
    data, code = d.payload_bytes()
    assert 0 < data < code  # data is small next to the JS, which is sent once per widget model


def test_a_slider_move_repaints_attention_and_neurons_with_the_edited_run():
    model = tiny("llama")
    d = nbinspect.inspect(model, CharTokenizer(), TEXT)
    d.selection.layer = 2
    before = d.neurons.activations(2).clone()
    panel = d.perturb
    panel.head_layer.value, panel.head.value, panel.head_factor.value = 0, 1, 0.0
    assert panel.wait()
    inputs = CharTokenizer()(TEXT)
    with torch.no_grad(), nbinspect.perturb(model, nbinspect.AblateHead(0, 1)):
        with nbinspect.capture(model, neurons=[2], attention=[2]) as edited:
            model(**inputs)
    assert not torch.allclose(before, edited.neurons[2][0])
    torch.testing.assert_close(d.neurons.activations(2), edited.neurons[2][0].float(), atol=1e-5, rtol=1e-5)
    assert (d.attention.weights(2, 0) - edited.attention[2][0, 0]).abs().max() <= float(edited.attention[2][0, 0].max()) / 510 + 1e-6
    panel.reset()
    assert panel.wait()
    torch.testing.assert_close(d.neurons.activations(2), before, atol=1e-5, rtol=1e-5)


def test_a_click_that_changes_no_edit_does_not_recompute():
    d = nbinspect.inspect(tiny("llama"), CharTokenizer(), TEXT)
    assert d.perturb.wait()
    runs = d.perturb.recompute.runs
    d.selection.layer, d.selection.head = 2, 3  # moves the head sliders, whose scale is still 1
    assert d.perturb.wait() and d.perturb.recompute.runs == runs
    d.perturb.head_factor.value = 0.0  # now the selected head is switched off: one run
    assert d.perturb.wait() and d.perturb.recompute.runs == runs + 1
    assert d.perturb.prediction.summary["edits"] == [repr(nbinspect.ScaleHead(2, 3, 0.0))]
