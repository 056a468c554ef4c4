"""Selection: one shared focus that linked views follow, readable and settable from Python."""

import pytest
import traitlets

import nbinspect
from tiny_models import CharTokenizer, tiny

TEXT = "linked views"


def test_views_given_one_selection_move_together():
    model = tiny("llama")
    sel = nbinspect.Selection()
    a = nbinspect.attention(model, CharTokenizer(), TEXT, selection=sel)
    b = nbinspect.attention(model, CharTokenizer(), TEXT, selection=sel)
    seen = []
    sel.observe(lambda c: seen.append((c["name"], c["new"])), ["layer", "head", "token"])
    a.layer, a.head, a.token = 2, 3, 4
    assert (sel.layer, sel.head, sel.token) == (2, 3, 4)
    assert (b.layer, b.head, b.token) == (2, 3, 4) and b.focus_of == [2, 3]
    sel.layer = 1  # Python sets the shared selection: every view moves and re-sends its focused map
    assert a.layer == b.layer == 1 and a.focus_of == b.focus_of == [1, 3]
    assert seen == [("layer", 2), ("head", 3), ("token", 4), ("layer", 1)]


def test_browser_style_update_of_layer_and_head_sends_one_map():
    view = nbinspect.attention(tiny("gpt2"), CharTokenizer(), TEXT)
    sent = []
    view.observe(lambda c: sent.append(tuple(view.focus_of)), ["focus_of"])
    # What the comm does for a browser message that changes both: notifications held until both are set.
    with view.selection.hold_trait_notifications():
        view.selection.layer = 2
        view.selection.head = 1
    assert sent == [(2, 1)]


def test_selection_refuses_out_of_range_and_mismatched_views():
    model = tiny("llama")
    sel = nbinspect.Selection()
    nbinspect.attention(model, CharTokenizer(), TEXT, selection=sel)
    with pytest.raises(traitlets.TraitError, match=r"0..2"):
        sel.layer = 3
    with pytest.raises(traitlets.TraitError, match="-1 for none"):
        sel.token = len(TEXT)
    assert sel.layer == 0 and sel.token == -1  # nothing lost
    sel.layer = -1  # Python-style: the last layer
    assert sel.layer == 2
    with pytest.raises(ValueError, match="same model and text"):
        nbinspect.attention(model, CharTokenizer(), TEXT + " and more", selection=sel)
