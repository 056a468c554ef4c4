"""Bad input gets a clear error and loses nothing, whichever view it reaches."""

import pytest
import torch

import nbinspect
from tiny_models import CharTokenizer, tiny

TEXT = "the cat sat on the mat"


@pytest.mark.parametrize("make", ["attention", "neurons", "gradient_flow", "inspect"])
def test_nan_weights_get_a_clear_error_and_lose_nothing(make):
    model = tiny("llama")
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")  # every layer after it is NaN too
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with pytest.raises(ValueError, match="NaN or infinite"):
        getattr(nbinspect, make)(model, CharTokenizer(), TEXT)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert all(torch.equal(saved[k], v) or (saved[k].isnan() == v.isnan()).all() for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training
