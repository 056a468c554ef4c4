"""Every public entry point × every class of bad input: a typed error naming the argument, and the model
exactly as it was (weights bit for bit, no hook left, attention registry, flags, requires_grad, .grad).

``MATRIX`` has one entry per (entry point, class of bad input): either cases — ``Case(call, error,
match)``, where ``error=None`` means the input is valid for that entry point and must work — or a
sentence saying why the class does not apply. ``test_the_matrix_is_complete`` keeps it that way: a new
entry point or class fails until every pair is filled in.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tiny_models import CharTokenizer, tiny
from torch import nn

import nbinspect
from nbinspect import (
    AblateHead,
    AblateNeuron,
    AddNoise,
    EditError,
    Recompute,
    ScaleHead,
    ScaleLayer,
    ScaleNeuron,
    UnsupportedModelError,
    perturb,
)

CLASSES = [
    "empty",
    "one token",
    "over-long",
    "wrong type",
    "out-of-range index",
    "non-integer index",
    "NaN/inf number",
    "NaN weights",
    "non-transformer module",
    "unsupported family",
]
ENTRY_POINTS = [
    "load", "capture", "run", "attention", "neurons", "gradient_flow", "gradient_norms", "saliency", "sliders",
    "inspect", "perturb", "ScaleHead", "ScaleNeuron", "ScaleLayer", "AddNoise", "AblateHead", "AblateNeuron",
    "Recompute", "trace", "Trace.edit",
]  # fmt: skip

TEXT = "the cat sat"
LONG = "a" * 300  # the tiny models take 256 positions
IDS = torch.tensor([[5, 6, 7]])
NAN = float("nan")
INF = float("inf")


class Mystery(nn.Module):
    """A language model of a family nbinspect has never heard of, with no transformer blocks at all."""

    def __init__(self):
        super().__init__()
        self.config = type("MysteryConfig", (), {"model_type": "mystery", "vocab_size": 128})()
        self.embed = nn.Embedding(128, 16)
        self.rnn = nn.GRU(16, 16, batch_first=True)
        self.head = nn.Linear(16, 128)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return self.head(self.rnn(self.embed(input_ids))[0])


@dataclass
class Case:
    """``call(model, tokenizer)``; ``model`` is the prepared tiny Llama (NaN weights for that class)."""

    call: Callable
    error: type[BaseException] | None  # None: a valid input, which must work
    match: str = ""
    model: str = "llama"  # "llama", "nan" (NaN weights in layer 1), "linear", "mystery"
    xfail: str = ""  # a known gap, with the reason and who fixes it (strict: the mark goes when it is fixed)


def edit_cases(make: Callable[..., object], args: dict, error=EditError) -> dict:
    """The index/number classes for one edit class: ``args`` gives each its bad arguments and message."""
    return {
        cls: [Case(lambda m, t, a=a: _start(m, make(*a)), error, match) for a, match in cases]
        for cls, cases in args.items()
    }


def _start(model, *edits):
    with perturb(model, *edits):
        pass


def _capture(model, **requests):
    with nbinspect.capture(model, **requests):
        model(input_ids=IDS)


def _mystery_folder() -> str:
    folder = Path(tempfile.mkdtemp(prefix="nbinspect-mystery-"))
    (folder / "config.json").write_text('{"model_type": "mystery"}')
    return str(folder)


NOT_A_VIEW_ARGUMENT = "takes no index or number arguments"
#: NaN weights in layer 1 (its attention output projection): errors name the first layer whose output is not finite.
NAN_LAYER = "output of layer 1 contains NaN or infinite"
RECORDS_WHAT_IS_THERE = "records the model as it is: NaN activations are what it computed, not a bad input"

MATRIX: dict[str, dict[str, list[Case] | str]] = {
    "load": {
        "empty": [Case(lambda m, t: nbinspect.load(""), OSError, "''")],
        "one token": "takes a model name, not text",
        "over-long": [Case(lambda m, t: nbinspect.load("x" * 500), OSError, "x" * 100)],
        "wrong type": [Case(lambda m, t: nbinspect.load(123), TypeError, "name")],
        "out-of-range index": [Case(lambda m, t: nbinspect.load("/no/such/folder"), OSError, "/no/such/folder")],
        "non-integer index": "takes a model name, not indices",
        "NaN/inf number": "takes a model name, not numbers",
        "NaN weights": "loads weights as they are stored; the views refuse NaN weights (rows below)",
        "non-transformer module": "takes a model name; a module is refused by every other entry point",
        "unsupported family": [Case(lambda m, t: nbinspect.load(_mystery_folder()), ValueError, "mystery")],
    },
    "capture": {
        "empty": [Case(lambda m, t: _capture(m, attention=[], neurons=()), None)],
        "one token": "records the user's own forward, whatever its length",
        "over-long": "records the user's own forward, whatever its length",
        "wrong type": [
            Case(lambda m, t: nbinspect.capture(m, attention="all"), TypeError, "'all'"),
            Case(lambda m, t: nbinspect.capture(m, gradients="weights", residual=True), ValueError, "'weights'"),
        ],
        "out-of-range index": [Case(lambda m, t: nbinspect.capture(m, attention=[3]), IndexError, r"layer 3.*0\.\.2")],
        "non-integer index": [Case(lambda m, t: nbinspect.capture(m, neurons=[0.5]), IndexError, "layer 0.5")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.capture(m, residual=[NAN]), IndexError, "layer nan")],
        "NaN weights": RECORDS_WHAT_IS_THERE,
        "non-transformer module": [Case(lambda m, t: nbinspect.capture(m, attention=True), UnsupportedModelError,
                                        "ModelParts", "linear")],
        "unsupported family": [Case(lambda m, t: nbinspect.capture(m, attention=True), UnsupportedModelError,
                                    "'mystery' model.*ModelParts", "mystery")],
    },
    "run": {
        "empty": [Case(lambda m, t: nbinspect.run(m, t, "", attention=True), ValueError, "text is empty"),
                  Case(lambda m, t: nbinspect.run(m, t, "   ", attention=True), ValueError, "text is empty")],
        "one token": [Case(lambda m, t: nbinspect.run(m, t, "a", attention=True, residual=True), None)],
        "over-long": [Case(lambda m, t: nbinspect.run(m, t, LONG, attention=True), ValueError, "300 tokens.*at most 256")],
        "wrong type": [Case(lambda m, t: nbinspect.run(m, t, 123, attention=True), TypeError, "text as a str"),
                       Case(lambda m, t: nbinspect.run(m, t, TEXT, gradients=True, residual=True), ValueError, "backward")],
        "out-of-range index": [Case(lambda m, t: nbinspect.run(m, t, TEXT, heads=[-4]), IndexError, r"layer -4.*0\.\.2")],
        "non-integer index": [Case(lambda m, t: nbinspect.run(m, t, TEXT, residual=["1"]), IndexError, "layer '1'")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.run(m, t, TEXT, attention=[INF]), IndexError, "layer inf")],
        "NaN weights": RECORDS_WHAT_IS_THERE,
        "non-transformer module": [Case(lambda m, t: nbinspect.run(m, t, TEXT), UnsupportedModelError, "ModelParts", "linear")],
        "unsupported family": [Case(lambda m, t: nbinspect.run(m, t, TEXT), UnsupportedModelError, "'mystery' model.*ModelParts", "mystery")],
    },
    "attention": {
        "empty": [Case(lambda m, t: nbinspect.attention(m, t, ""), ValueError, "text is empty")],
        "one token": [Case(lambda m, t: nbinspect.attention(m, t, "a"), None)],
        "over-long": [Case(lambda m, t: nbinspect.attention(m, t, LONG), ValueError, "300 tokens.*at most 256")],
        "wrong type": [Case(lambda m, t: nbinspect.attention(m, t, ["the", "cat"]), TypeError, "text as a str"),
                       Case(lambda m, t: nbinspect.attention(m, "a tokenizer", TEXT), TypeError, "tokenizer")],
        "out-of-range index": [Case(lambda m, t: nbinspect.attention(m, t, TEXT, layer=3), IndexError, r"layer 3.*0\.\.2"),
                               Case(lambda m, t: nbinspect.attention(m, t, TEXT, head=4), IndexError, r"head 4.*0\.\.3")],
        "non-integer index": [Case(lambda m, t: nbinspect.attention(m, t, TEXT, layer=1.5), IndexError, "layer 1.5"),
                              Case(lambda m, t: nbinspect.attention(m, t, TEXT, head="0"), IndexError, "head '0'")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.attention(m, t, TEXT, layer=NAN), IndexError, "layer nan")],
        "NaN weights": [Case(lambda m, t: nbinspect.attention(m, t, TEXT), ValueError, NAN_LAYER, "nan")],
        "non-transformer module": [Case(lambda m, t: nbinspect.attention(m, t, TEXT), UnsupportedModelError, "ModelParts", "linear")],
        "unsupported family": [Case(lambda m, t: nbinspect.attention(m, t, TEXT), UnsupportedModelError, "'mystery' model.*ModelParts", "mystery")],
    },
    "neurons": {
        "empty": [Case(lambda m, t: nbinspect.neurons(m, t, ""), ValueError, "text is empty")],
        "one token": [Case(lambda m, t: nbinspect.neurons(m, t, "a"), None)],
        "over-long": [Case(lambda m, t: nbinspect.neurons(m, t, LONG), ValueError, "300 tokens.*at most 256")],
        "wrong type": [Case(lambda m, t: nbinspect.neurons(m, t, None), TypeError, "text"),
                       Case(lambda m, t: nbinspect.neurons(m, t, TEXT, rank_by="mean"), ValueError, "rank_by")],
        "out-of-range index": [Case(lambda m, t: nbinspect.neurons(m, t, TEXT, layer=7), IndexError, r"layer 7.*0\.\.2"),
                               Case(lambda m, t: nbinspect.neurons(m, t, TEXT, k=0), ValueError, "k")],
        "non-integer index": [Case(lambda m, t: nbinspect.neurons(m, t, TEXT, layer=0.5), IndexError, "layer 0.5"),
                              Case(lambda m, t: nbinspect.neurons(m, t, TEXT, k=2.5), (TypeError, ValueError), "k")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.neurons(m, t, TEXT, k=INF), (TypeError, ValueError), "k")],
        "NaN weights": [Case(lambda m, t: nbinspect.neurons(m, t, TEXT, layer=1), ValueError, "NaN or infinite", "nan")],
        "non-transformer module": [Case(lambda m, t: nbinspect.neurons(m, t, TEXT), UnsupportedModelError, "ModelParts", "linear")],
        "unsupported family": [Case(lambda m, t: nbinspect.neurons(m, t, TEXT), UnsupportedModelError, "'mystery' model.*ModelParts", "mystery")],
    },
    "gradient_flow": {
        "empty": [Case(lambda m, t: nbinspect.gradient_flow(m, t, ""), ValueError, "text is empty")],
        "one token": [Case(lambda m, t: nbinspect.gradient_flow(m, t, "a"), None),  # explains the predicted token
                      Case(lambda m, t: nbinspect.gradient_flow(m, t, "a", target=5), None),
                      Case(lambda m, t: nbinspect.gradient_flow(m, t, "a", target="loss"), ValueError, "at least two tokens")],
        "over-long": [Case(lambda m, t: nbinspect.gradient_flow(m, t, LONG), ValueError, "300 tokens.*at most 256")],
        "wrong type": [Case(lambda m, t: nbinspect.gradient_flow(m, t, TEXT, target="logit"), ValueError, "target 'logit'"),
                       Case(lambda m, t: nbinspect.gradient_flow(m, t, b"the cat"), TypeError, "text as a str")],
        "out-of-range index": [Case(lambda m, t: nbinspect.gradient_flow(m, t, TEXT, target=128), (IndexError, ValueError),
                                    r"target token id 128.*0\.\.127")],
        "non-integer index": [Case(lambda m, t: nbinspect.gradient_flow(m, t, TEXT, target=5.5), TypeError, "target")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.gradient_flow(m, t, TEXT, target=NAN), TypeError, "target")],
        "NaN weights": [Case(lambda m, t: nbinspect.gradient_flow(m, t, TEXT), ValueError, NAN_LAYER, "nan")],
        "non-transformer module": [Case(lambda m, t: nbinspect.gradient_flow(m, t, TEXT), UnsupportedModelError, "ModelParts", "linear")],
        "unsupported family": [Case(lambda m, t: nbinspect.gradient_flow(m, t, TEXT), UnsupportedModelError, "'mystery' model.*ModelParts", "mystery")],
    },
    "gradient_norms": {
        "empty": [Case(lambda m, t: nbinspect.gradient_norms(m, torch.zeros(1, 0, dtype=torch.long)), ValueError, "inputs is empty"),
                  Case(lambda m, t: nbinspect.gradient_norms(m, {}), TypeError, "input_ids")],
        "one token": [Case(lambda m, t: nbinspect.gradient_norms(m, torch.tensor([[5]])), ValueError, "at least two tokens"),
                      Case(lambda m, t: nbinspect.gradient_norms(m, torch.tensor([[5]]), 9), None)],
        "over-long": [Case(lambda m, t: nbinspect.gradient_norms(m, torch.ones(1, 300, dtype=torch.long)), ValueError,
                           "inputs has 300 tokens.*at most 256")],
        "wrong type": [Case(lambda m, t: nbinspect.gradient_norms(m, torch.ones(1, 3)), TypeError, "inputs must hold integer"),
                       Case(lambda m, t: nbinspect.gradient_norms(m, [[1, 2]]), TypeError, "inputs must be a tensor"),
                       Case(lambda m, t: nbinspect.gradient_norms(m, IDS, "logits"), ValueError, "target 'logits'")],
        "out-of-range index": [Case(lambda m, t: nbinspect.gradient_norms(m, torch.tensor([[1, 128]])), ValueError,
                                    r"inputs holds token id 128.*0\.\.127"),
                               Case(lambda m, t: nbinspect.gradient_norms(m, IDS, -1), IndexError, "target token id -1")],
        "non-integer index": [Case(lambda m, t: nbinspect.gradient_norms(m, IDS, 3.0), TypeError, "target")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.gradient_norms(m, IDS, INF), TypeError, "target")],
        "NaN weights": [Case(lambda m, t: nbinspect.gradient_norms(m, IDS), ValueError, "output of layer 1", "nan")],
        "non-transformer module": [Case(lambda m, t: nbinspect.gradient_norms(m, IDS), UnsupportedModelError, "ModelParts", "linear")],
        "unsupported family": [Case(lambda m, t: nbinspect.gradient_norms(m, IDS), UnsupportedModelError, "'mystery' model.*ModelParts", "mystery")],
    },
    "saliency": {
        "empty": [Case(lambda m, t: nbinspect.saliency(m, torch.zeros(0, 3, dtype=torch.long)), ValueError, "inputs is empty")],
        "one token": [Case(lambda m, t: nbinspect.saliency(m, torch.tensor([[5]])), None),
                      Case(lambda m, t: nbinspect.saliency(m, torch.tensor([[5]]), "loss"), ValueError, "at least two tokens")],
        "over-long": [Case(lambda m, t: nbinspect.saliency(m, torch.ones(1, 300, dtype=torch.long)), ValueError, "at most 256")],
        "wrong type": [Case(lambda m, t: nbinspect.saliency(m, torch.ones(1, 3, dtype=torch.float16)), TypeError, "integer token ids"),
                       Case(lambda m, t: nbinspect.saliency(m, IDS, method="integrated_gradients", baseline=0.0), TypeError, "baseline"),
                       Case(lambda m, t: nbinspect.saliency(m, IDS, method="lrp"), ValueError, "method 'lrp'")],
        "out-of-range index": [Case(lambda m, t: nbinspect.saliency(m, torch.tensor([[500]])), ValueError, r"token id 500.*0\.\.127"),
                               Case(lambda m, t: nbinspect.saliency(m, IDS, method="integrated_gradients",
                                                                    baseline=torch.zeros(1, 4, 32)), ValueError,
                                    r"baseline has shape \[1, 4, 32\].*\[1, 3, 32\]")],
        "non-integer index": [Case(lambda m, t: nbinspect.saliency(m, IDS, 7.5), TypeError, "target"),
                              Case(lambda m, t: nbinspect.saliency(m, IDS, method="integrated_gradients", steps=1.5), ValueError, "steps")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.saliency(m, IDS, method="integrated_gradients", steps=INF), ValueError, "steps"),
                           Case(lambda m, t: nbinspect.saliency(m, IDS, method="integrated_gradients",
                                                                baseline=torch.full((32,), INF)), ValueError, "baseline")],
        "NaN weights": [Case(lambda m, t: nbinspect.saliency(m, IDS), ValueError, "output of layer 1", "nan")],
        "non-transformer module": [Case(lambda m, t: nbinspect.saliency(m, IDS), UnsupportedModelError, "ModelParts", "linear")],
        "unsupported family": [Case(lambda m, t: nbinspect.saliency(m, IDS), UnsupportedModelError, "'mystery' model.*ModelParts", "mystery")],
    },
    "sliders": {
        "empty": [Case(lambda m, t: nbinspect.sliders(m, t, "", threaded=False), ValueError, "text is empty")],
        "one token": [Case(lambda m, t: nbinspect.sliders(m, t, "a", threaded=False), None)],
        "over-long": [Case(lambda m, t: nbinspect.sliders(m, t, LONG, threaded=False), ValueError, "at most 256")],
        "wrong type": [Case(lambda m, t: nbinspect.sliders(m, t, 3.5, threaded=False), TypeError, "text as a str")],
        "out-of-range index": [Case(lambda m, t: nbinspect.sliders(m, t, TEXT, position=99, threaded=False), ValueError, "position")],
        "non-integer index": [Case(lambda m, t: nbinspect.sliders(m, t, TEXT, position=1.5, threaded=False), (TypeError, ValueError),
                                   "position")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.sliders(m, t, TEXT, top_k=INF, threaded=False), (TypeError, ValueError),
                                "top_k")],
        "NaN weights": [Case(lambda m, t: nbinspect.sliders(m, t, TEXT, threaded=False), ValueError, NAN_LAYER, "nan")],
        "non-transformer module": [Case(lambda m, t: nbinspect.sliders(m, t, TEXT), UnsupportedModelError, "ModelParts", "linear")],
        "unsupported family": [Case(lambda m, t: nbinspect.sliders(m, t, TEXT), UnsupportedModelError, "'mystery' model.*ModelParts", "mystery")],
    },
    "inspect": {
        "empty": [Case(lambda m, t: nbinspect.inspect(m, t, ""), ValueError, "text is empty")],
        "one token": [Case(lambda m, t: nbinspect.inspect(m, t, "a"), None)],
        "over-long": [Case(lambda m, t: nbinspect.inspect(m, t, LONG), ValueError, "at most 256")],
        "wrong type": [Case(lambda m, t: nbinspect.inspect(m, t, {"text": TEXT}), TypeError, "text")],
        "out-of-range index": NOT_A_VIEW_ARGUMENT,
        "non-integer index": NOT_A_VIEW_ARGUMENT,
        "NaN/inf number": NOT_A_VIEW_ARGUMENT,
        "NaN weights": [Case(lambda m, t: nbinspect.inspect(m, t, TEXT), ValueError, "NaN or infinite", "nan")],
        "non-transformer module": [Case(lambda m, t: nbinspect.inspect(m, t, TEXT), UnsupportedModelError, "ModelParts", "linear")],
        "unsupported family": [Case(lambda m, t: nbinspect.inspect(m, t, TEXT), UnsupportedModelError, "'mystery' model.*ModelParts", "mystery")],
    },
    "perturb": {
        "empty": [Case(lambda m, t: _start(m), None)],
        "one token": "edits weights; takes no text",
        "over-long": "edits weights; takes no text",
        "wrong type": [Case(lambda m, t: perturb(m, (0, 1, 0.0)), TypeError, "nbinspect.ScaleHead"),
                       Case(lambda m, t: perturb(m, ScaleHead).start(), TypeError, "ScaleHead")],
        "out-of-range index": "the edits hold the indices (rows below)",
        "non-integer index": "the edits hold the indices (rows below)",
        "NaN/inf number": "the edits hold the numbers (rows below)",
        "NaN weights": [Case(lambda m, t: _start(m, AblateHead(1, 1)), None, model="nan")],
        "non-transformer module": [Case(lambda m, t: perturb(m, AblateHead(0, 0)), UnsupportedModelError, "ModelParts", "linear")],
        "unsupported family": [Case(lambda m, t: perturb(m, AblateHead(0, 0)), UnsupportedModelError, "'mystery' model.*ModelParts", "mystery")],
    },
    "ScaleHead": edit_cases(ScaleHead, {
        "out-of-range index": [((3, 0, 0.5), r"layer 3.*0\.\.2"), ((0, 4, 0.5), r"head 4.*0\.\.3"), ((0, -1, 0.5), "head -1")],
        "non-integer index": [((0.0, 0, 0.5), "layer 0.0"), ((0, 1.5, 0.5), "head 1.5")],
        "NaN/inf number": [((0, 0, NAN), "factor must be a finite number"), ((0, 0, -INF), "factor must be a finite number")],
        "wrong type": [((0, 0, "0.5"), "factor must be a finite number"), ((0, 0, None), "factor")],
    }),
    "ScaleNeuron": edit_cases(ScaleNeuron, {
        "out-of-range index": [((0, 64, 0.5), r"neuron 64.*0\.\.63"), ((-9, 0, 0.5), "layer -9")],
        "non-integer index": [((0, 3.0, 0.5), "neuron 3.0"), ((True, 3, 0.5), "layer True")],
        "NaN/inf number": [((0, 3, INF), "factor must be a finite number")],
        "wrong type": [((0, 3, [0.5]), "factor"), ((0, "3", 0.5), "neuron '3'")],
    }),
    "ScaleLayer": edit_cases(ScaleLayer, {
        "out-of-range index": [((5, "mlp", 0.5), r"layer 5.*0\.\.2")],
        "non-integer index": [((1.0, "mlp", 0.5), "layer 1.0")],
        "NaN/inf number": [((1, "attention", NAN), "factor must be a finite number")],
        "wrong type": [((1, "ffn", 0.5), "part must be 'attention' or 'mlp'"), ((1, None, 0.5), "part")],
    }),
    "AddNoise": edit_cases(AddNoise, {
        "out-of-range index": [((3, 0.1), r"layer 3.*0\.\.2"), (((0, "bogus"), 0.1), "no part 'bogus'.*'attention'")],
        "non-integer index": [((0.5, 0.1), "where must be"), (((0.5, "mlp"), 0.1), "layer 0.5")],
        "NaN/inf number": [((0, NAN), "sigma must be a finite number"), ((0, INF), "sigma"), ((0, -0.1), "sigma")],
        "wrong type": [(("model.nowhere", 0.1), "no module named 'model.nowhere'"), ((0, 0.1, 1.5), "seed"),
                       ((0, "0.1"), "sigma")],
    }),
    "AblateHead": edit_cases(AblateHead, {
        "out-of-range index": [((0, 9), r"head 9.*0\.\.3")],
        "non-integer index": [(("0", 1), "layer '0'")],
        "NaN/inf number": [((0, NAN), "head nan")],
        "wrong type": [((None, 1), "layer None")],
    }),
    "AblateNeuron": edit_cases(AblateNeuron, {
        "out-of-range index": [((2, 1000), r"neuron 1000.*0\.\.63")],
        "non-integer index": [((2, 1.5), "neuron 1.5")],
        "NaN/inf number": [((2, INF), "neuron inf")],
        "wrong type": [((2, [1]), r"neuron \[1\]")],
    }),
    "Recompute": {
        "empty": [Case(lambda m, t: Recompute(m, {"input_ids": torch.zeros(1, 0, dtype=torch.long)}), ValueError, "inputs is empty")],
        "one token": [Case(lambda m, t: Recompute(m, {"input_ids": torch.tensor([[5]])}).run(AblateHead(1, 0)), None)],
        "over-long": [Case(lambda m, t: Recompute(m, {"input_ids": torch.ones(1, 257, dtype=torch.long)}), ValueError, "at most 256")],
        "wrong type": [Case(lambda m, t: Recompute(m, "the cat"), TypeError, "inputs"),
                       Case(lambda m, t: Recompute(m, {"input_ids": IDS}).run("AblateHead(1, 0)"), TypeError, "nbinspect.ScaleHead")],
        "out-of-range index": [Case(lambda m, t: Recompute(m, {"input_ids": IDS}, attention=[3]), IndexError, "layer 3"),
                               Case(lambda m, t: Recompute(m, {"input_ids": IDS}).run(AblateHead(3, 0)), EditError, "layer 3")],
        "non-integer index": [Case(lambda m, t: Recompute(m, {"input_ids": IDS}, neurons=[1.5]), IndexError, "layer 1.5"),
                              Case(lambda m, t: Recompute(m, {"input_ids": IDS}).run(from_layer="1"), (TypeError, ValueError), "from_layer")],
        "NaN/inf number": [Case(lambda m, t: Recompute(m, {"input_ids": IDS}).run(ScaleLayer(0, "mlp", NAN)), EditError, "finite")],
        "NaN weights": "computes what the model computes; the sliders built on it refuse NaN (sliders row)",
        "non-transformer module": [Case(lambda m, t: Recompute(m, {"input_ids": IDS}), UnsupportedModelError, "ModelParts", "linear")],
        "unsupported family": [Case(lambda m, t: Recompute(m, {"input_ids": IDS}), UnsupportedModelError, "'mystery' model.*ModelParts", "mystery")],
    },
    "trace": {
        "empty": [Case(lambda m, t: nbinspect.trace(m, t, ""), ValueError, "text is empty"),
                  Case(lambda m, t: nbinspect.trace(m, t, torch.zeros(1, 0, dtype=torch.long)), ValueError, "text_or_inputs is empty")],
        "one token": [Case(lambda m, t: nbinspect.trace(m, t, "a"), None),
                      Case(lambda m, t: nbinspect.trace(m, t, "a", target="loss"), ValueError, "at least two tokens")],
        "over-long": [Case(lambda m, t: nbinspect.trace(m, t, LONG), ValueError, "300 tokens.*at most 256"),
                      Case(lambda m, t: nbinspect.trace(m, t, torch.ones(1, 257, dtype=torch.long)), ValueError, "text_or_inputs has 257")],
        "wrong type": [Case(lambda m, t: nbinspect.trace(m, t, 123), TypeError, "text as a str"),
                       Case(lambda m, t: nbinspect.trace(m, t, TEXT, gradients="yes"), TypeError, "gradients"),
                       Case(lambda m, t: nbinspect.trace(m, t, torch.ones(1, 3)), TypeError, "text_or_inputs must hold integer")],
        "out-of-range index": [Case(lambda m, t: nbinspect.trace(m, t, TEXT, position=11), IndexError, r"position 11.*0\.\.10"),
                               Case(lambda m, t: nbinspect.trace(m, t, TEXT, target=128), ValueError, r"target token id 128.*0\.\.127"),
                               Case(lambda m, t: nbinspect.trace(m, t, TEXT, target=3, foil=-1), ValueError, "foil token id -1"),
                               Case(lambda m, t: nbinspect.trace(m, t, torch.tensor([[3, 900]])), ValueError, "text_or_inputs holds token id 900")],
        "non-integer index": [Case(lambda m, t: nbinspect.trace(m, t, TEXT, position=1.5), TypeError, "position must be a whole number"),
                              Case(lambda m, t: nbinspect.trace(m, t, TEXT, target=3.0), TypeError, "target must be a token id")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.trace(m, t, TEXT, position=NAN), TypeError, "position"),
                           Case(lambda m, t: nbinspect.trace(m, t, TEXT, target=INF), TypeError, "target")],
        "NaN weights": [Case(lambda m, t: nbinspect.trace(m, t, TEXT), ValueError, NAN_LAYER, "nan")],
        "non-transformer module": [Case(lambda m, t: nbinspect.trace(m, t, TEXT), UnsupportedModelError, "ModelParts", "linear")],
        "unsupported family": [Case(lambda m, t: nbinspect.trace(m, t, TEXT), UnsupportedModelError, "'mystery' model.*ModelParts", "mystery")],
    },
    "Trace.edit": {
        "empty": [Case(lambda m, t: nbinspect.trace(m, t, TEXT).edit(), None)],
        "one token": [Case(lambda m, t: nbinspect.trace(m, t, "a").edit(AblateHead(2, 1), AddNoise(0, 0.5)), None)],
        "over-long": "the trace holds the text (trace row)",
        "wrong type": [Case(lambda m, t: nbinspect.trace(m, t, TEXT).edit("AblateHead(0, 1)"), TypeError, "nbinspect.ScaleHead"),
                       Case(lambda m, t: nbinspect.trace(m, t, TEXT).edit(ScaleLayer(0, "ffn", 0.0)), EditError, "part")],
        "out-of-range index": [Case(lambda m, t: nbinspect.trace(m, t, TEXT).edit(AblateHead(0, 9)), EditError, r"head 9.*0\.\.3"),
                               Case(lambda m, t: nbinspect.trace(m, t, TEXT).edit(AblateHead(1, 1), AblateNeuron(3, 0)), EditError, "layer 3")],
        "non-integer index": [Case(lambda m, t: nbinspect.trace(m, t, TEXT).edit(ScaleHead(0.5, 0, 0.0)), EditError, "layer 0.5")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.trace(m, t, TEXT).edit(ScaleHead(0, 0, NAN)), EditError, "finite"),
                           Case(lambda m, t: nbinspect.trace(m, t, TEXT).edit(AddNoise(1, 1e30)), ValueError, "NaN or infinite")],
        "NaN weights": "a model with NaN weights gets no trace to edit (trace row); an edit that makes them: NaN/inf row",
        "non-transformer module": "a trace exists only for a model nbinspect supports (trace row)",
        "unsupported family": "a trace exists only for a model nbinspect supports (trace row)",
    },
}


def text_view_row(name: str, **bad) -> dict:
    """The rows of a view called as ``view(model, tokenizer, text, **kw)`` (or ``view(trace)``); ``bad`` gives,
    per index/number class, ``(kwargs, error, match)`` or a reason."""
    view = getattr(nbinspect, name)
    row = {
        "empty": [Case(lambda m, t: view(m, t, ""), ValueError, "text is empty")],
        "one token": [Case(lambda m, t: view(m, t, "a"), None)],
        "over-long": [Case(lambda m, t: view(m, t, LONG), ValueError, "300 tokens.*at most 256")],
        "wrong type": [Case(lambda m, t: view(m, t, 42), TypeError, "text"),
                       Case(lambda m, t: view(m, "a tokenizer", TEXT), TypeError, "tokenizer")],
        "NaN weights": [Case(lambda m, t: view(m, t, TEXT), ValueError, NAN_LAYER, "nan")],
        "non-transformer module": [Case(lambda m, t: view(m, t, TEXT), UnsupportedModelError, "ModelParts", "linear")],
        "unsupported family": [Case(lambda m, t: view(m, t, TEXT), UnsupportedModelError, "'mystery' model.*ModelParts", "mystery")],
    }
    for cls in ("out-of-range index", "non-integer index", "NaN/inf number"):
        cell = bad.get(cls, NOT_A_VIEW_ARGUMENT)
        row[cls] = cell if isinstance(cell, str) else [
            Case(lambda m, t, kw=kw: view(m, t, TEXT, **kw), error, match) for kw, error, match in cell
        ]
    return row


MATRIX.update(
    activations=text_view_row(
        "activations",
        **{"out-of-range index": [({"layer": 3}, IndexError, r"layer 3.*0\.\.2")],
           "non-integer index": [({"layer": 1.5}, IndexError, "layer 1.5")],
           "NaN/inf number": [({"layer": NAN}, IndexError, "layer nan")]}),
    attention_mechanics=text_view_row(
        "attention_mechanics",
        **{"out-of-range index": [({"layer": 3}, IndexError, "layer 3"), ({"head": 4}, IndexError, "head 4"),
                                  ({"query": 11}, IndexError, "query")],
           "non-integer index": [({"head": 0.5}, IndexError, "head 0.5"), ({"query": 1.5}, (IndexError, TypeError), "query")],
           "NaN/inf number": [({"query": INF}, (IndexError, TypeError), "query")]}),
    block_writes=text_view_row("block_writes"),
    logit_attribution=text_view_row(
        "logit_attribution",
        **{"out-of-range index": [({"target": 128}, (IndexError, ValueError), "target token id 128")],
           "non-integer index": [({"target": 2.5}, TypeError, "target")],
           "NaN/inf number": [({"target": NAN}, TypeError, "target")]}),
    logit_lens=text_view_row(
        "logit_lens",
        **{"out-of-range index": [({"target": 128}, (IndexError, ValueError), "target token id 128")],
           "non-integer index": [({"target": 2.5}, TypeError, "target")],
           "NaN/inf number": [({"target": NAN}, TypeError, "target")]}),
)
ENTRY_POINTS += ["activations", "attention_mechanics", "block_writes", "logit_attribution", "logit_lens"]

CORRUPT = "the dog sat"  # as many tokens as TEXT
NAN_RESULT = "{}: NaN weights give NaN results without an error (its author: check finiteness as the views do)"
def model_rows(call: Callable) -> dict:
    return {
        "non-transformer module": [Case(lambda m, t: call(m, t), UnsupportedModelError, "ModelParts", "linear")],
        "unsupported family": [Case(lambda m, t: call(m, t), UnsupportedModelError, "'mystery' model.*ModelParts", "mystery")],
    }


MATRIX.update(
    patch={
        "empty": [Case(lambda m, t: nbinspect.patch(m, t, "", TEXT, progress=False), ValueError, "text is empty")],
        "one token": [Case(lambda m, t: nbinspect.patch(m, t, "a", "b", progress=False), None)],
        "over-long": [Case(lambda m, t: nbinspect.patch(m, t, LONG, LONG, progress=False), ValueError, "at most 256")],
        "wrong type": [Case(lambda m, t: nbinspect.patch(m, t, TEXT, 5, progress=False), TypeError, "text"),
                       Case(lambda m, t: nbinspect.patch(m, t, TEXT, CORRUPT, kinds=("bogus",), progress=False), ValueError, "kinds"),
                       Case(lambda m, t: nbinspect.patch(m, t, TEXT, "the dog", progress=False), ValueError, "same token count")],
        "out-of-range index": [Case(lambda m, t: nbinspect.patch(m, t, TEXT, CORRUPT, layers=[5], progress=False), IndexError, "layer 5"),
                               Case(lambda m, t: nbinspect.patch(m, t, TEXT, CORRUPT, position=40, progress=False), IndexError, "position 40"),
                               Case(lambda m, t: nbinspect.patch(m, t, TEXT, CORRUPT, target=500, progress=False), ValueError, "target token id 500")],
        "non-integer index": [Case(lambda m, t: nbinspect.patch(m, t, TEXT, CORRUPT, layers=[1.5], progress=False), IndexError, "layer 1.5")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.patch(m, t, TEXT, CORRUPT, batch_size=NAN, progress=False), ValueError, "batch_size")],
        "NaN weights": [Case(lambda m, t: nbinspect.patch(m, t, TEXT, CORRUPT, progress=False), ValueError, NAN_LAYER, "nan")],
        **model_rows(lambda m, t: nbinspect.patch(m, t, TEXT, CORRUPT, progress=False)),
    },
    head_sweep={
        "empty": [Case(lambda m, t: nbinspect.head_sweep(m, t, "", progress=False), ValueError, "text is empty")],
        "one token": [Case(lambda m, t: nbinspect.head_sweep(m, t, "a", progress=False), None)],
        "over-long": [Case(lambda m, t: nbinspect.head_sweep(m, t, LONG, progress=False), ValueError, "at most 256")],
        "wrong type": [Case(lambda m, t: nbinspect.head_sweep(m, t, TEXT, metric="bogus", progress=False), ValueError, "metric")],
        "out-of-range index": [Case(lambda m, t: nbinspect.head_sweep(m, t, TEXT, layers=[7], progress=False), IndexError, "layer 7")],
        "non-integer index": [Case(lambda m, t: nbinspect.head_sweep(m, t, TEXT, layers=[0.5], progress=False), IndexError, "layer 0.5")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.head_sweep(m, t, TEXT, batch_size=INF, progress=False), ValueError, "batch_size")],
        "NaN weights": [Case(lambda m, t: nbinspect.head_sweep(m, t, TEXT, progress=False), ValueError, NAN_LAYER, "nan")],
        **model_rows(lambda m, t: nbinspect.head_sweep(m, t, TEXT, progress=False)),
    },
    steer_preview={
        "empty": [Case(lambda m, t: nbinspect.steer_preview(m, t, "", nbinspect.Steer(1, torch.ones(32))), ValueError, "text is empty")],
        "one token": [Case(lambda m, t: nbinspect.steer_preview(m, t, "a", nbinspect.Steer(1, torch.ones(32))), None)],
        "over-long": [Case(lambda m, t: nbinspect.steer_preview(m, t, LONG, nbinspect.Steer(1, torch.ones(32))), ValueError, "at most 256")],
        "wrong type": [Case(lambda m, t: nbinspect.steer_preview(m, t, TEXT, "x"), TypeError, "nbinspect.ScaleHead")],
        "out-of-range index": [Case(lambda m, t: nbinspect.steer_preview(m, t, TEXT, nbinspect.Steer(5, torch.ones(32))), EditError, "layer 5")],
        "non-integer index": [Case(lambda m, t: nbinspect.steer_preview(m, t, TEXT, AblateHead(1, 0), k=0), ValueError, "k must be")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.steer_preview(m, t, TEXT, AblateHead(1, 0), new_tokens=NAN), ValueError, "new_tokens")],
        "NaN weights": [Case(lambda m, t: nbinspect.steer_preview(m, t, TEXT, AblateHead(1, 0)), ValueError, NAN_LAYER, "nan")],
        **model_rows(lambda m, t: nbinspect.steer_preview(m, t, TEXT, AblateHead(0, 0))),
    },
    steering_vector={
        "empty": [Case(lambda m, t: nbinspect.steering_vector(m, t, "", "b", 1), ValueError, "text is empty"),
                  Case(lambda m, t: nbinspect.steering_vector(m, t, [], ["b"], 1), ValueError, "positive is empty")],
        "one token": [Case(lambda m, t: nbinspect.steering_vector(m, t, "a", "b", 1), None)],
        "over-long": [Case(lambda m, t: nbinspect.steering_vector(m, t, LONG, "b", 1), ValueError, "at most 256")],
        "wrong type": [Case(lambda m, t: nbinspect.steering_vector(m, t, 5, "b", 1), TypeError, "positive")],
        "out-of-range index": [Case(lambda m, t: nbinspect.steering_vector(m, t, "a b", "c d", 5), IndexError, "layer 5")],
        "non-integer index": [Case(lambda m, t: nbinspect.steering_vector(m, t, "a b", "c d", 1.5), IndexError, "layer 1.5")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.steering_vector(m, t, "a b", "c d", NAN), IndexError, "layer nan")],
        "NaN weights": [Case(lambda m, t: nbinspect.steering_vector(m, t, "a b", "c d", 1), ValueError, NAN_LAYER, "nan")],
        **model_rows(lambda m, t: nbinspect.steering_vector(m, t, "a b", "c d", 0)),
    },
    Steer=edit_cases(lambda *a: nbinspect.Steer(*a), {
        "out-of-range index": [((5, torch.ones(32)), r"layer 5.*0\.\.2"), ((1, torch.ones(7)), "7 entries.*32")],
        "non-integer index": [((0.5, torch.ones(32)), "layer 0.5")],
        "NaN/inf number": [((1, torch.full((32,), NAN)), "NaN or infinite"), ((1, torch.ones(32), INF), "coefficient")],
        "wrong type": [((1, [1.0] * 32), "vector")],
    }),
    compare={
        "empty": [Case(lambda m, t: nbinspect.compare(m, tiny("llama", 1), t, ""), ValueError, "text is empty")],
        "one token": [Case(lambda m, t: nbinspect.compare(m, tiny("llama", 1), t, "a"), None)],
        "over-long": [Case(lambda m, t: nbinspect.compare(m, tiny("llama", 1), t, LONG), ValueError, "at most 256")],
        "wrong type": [Case(lambda m, t: nbinspect.compare(m, "model", t, TEXT), ValueError, "model_b is a str"),
                       Case(lambda m, t: nbinspect.compare(m, tiny("gpt2"), t, TEXT), ValueError, "GPT2LMHeadModel"),
                       Case(lambda m, t: nbinspect.compare(m, tiny("llama", 1), t, TEXT, views=("bogus",)), ValueError, "unknown views")],
        "out-of-range index": NOT_A_VIEW_ARGUMENT,
        "non-integer index": NOT_A_VIEW_ARGUMENT,
        "NaN/inf number": NOT_A_VIEW_ARGUMENT,
        "NaN weights": [Case(lambda m, t: nbinspect.compare(tiny("llama", 1), m, t, TEXT), ValueError, NAN_LAYER, "nan")],
        **model_rows(lambda m, t: nbinspect.compare(m, m, t, TEXT)),
    },
    parameters={
        "empty": "reads the weights; takes no text",
        "one token": "reads the weights; takes no text",
        "over-long": "reads the weights; takes no text",
        "wrong type": [Case(lambda m, t: nbinspect.parameters(m, layer=1), TypeError, "unknown arguments.*layer")],
        "out-of-range index": "takes no index arguments",
        "non-integer index": "takes no index arguments",
        "NaN/inf number": "takes no number arguments",
        "NaN weights": [Case(lambda m, t: nbinspect.parameters(m), ValueError,
                             r"layers\.1\.self_attn\.o_proj\.weight contains NaN or infinite", "nan")],
        **model_rows(lambda m, t: nbinspect.parameters(m)),
    },
    head_types={
        "empty": "makes its own random text",
        "one token": [Case(lambda m, t: nbinspect.head_types(m, t, period=1), ValueError, "period 1")],
        "over-long": [Case(lambda m, t: nbinspect.head_types(m, t, period=500), ValueError, "period 500")],
        "wrong type": [Case(lambda m, t: nbinspect.head_types(m, t, seed="x"), TypeError, "seed")],
        "out-of-range index": [Case(lambda m, t: nbinspect.head_types(m, t, period=0), ValueError, "period 0")],
        "non-integer index": [Case(lambda m, t: nbinspect.head_types(m, t, period=2.5), (TypeError, ValueError), "period")],
        "NaN/inf number": [Case(lambda m, t: nbinspect.head_types(m, t, period=NAN), ValueError, "period nan")],
        "NaN weights": [Case(lambda m, t: nbinspect.head_types(m, t), ValueError, NAN_LAYER, "nan")],
        **model_rows(lambda m, t: nbinspect.head_types(m, t)),
    },
)
ENTRY_POINTS += ["patch", "head_sweep", "steer_preview", "steering_vector", "Steer", "compare", "parameters", "head_types"]

#: Public entry points with no row yet, and why. A public function or edit class in neither MATRIX nor
#: here fails test_every_public_entry_point_has_a_row: whoever adds one adds its row.
PENDING = {
    "load_ipython_extension": "IPython calls it with its shell, not a user",
    "monitor": "installs training hooks by design; monitor(layers=[9]) gives AttributeError (its author)",
    **dict.fromkeys(["geometry", "relevance", "rollout", "save", "to_png", "to_svg", "ScaleExpert", "routing", "generate"],
                    "landed while this matrix was written; rows to add by its author"),
}

# Edit classes: the text, weight and model classes are perturb's (an edit is checked when perturb applies it).
for _name in ("ScaleHead", "ScaleNeuron", "ScaleLayer", "AddNoise", "AblateHead", "AblateNeuron", "Steer"):
    for _cls in ("empty", "one token", "over-long", "NaN weights", "non-transformer module", "unsupported family"):
        MATRIX[_name].setdefault(_cls, "an edit is plain data; perturb(model, edit) checks it against the model (perturb row)")


# --- the model and what "exactly as before" means --------------------------------------------------------


def prepared(kind: str):
    """The model a case runs on, in a state that is easy to disturb: a frozen parameter, a gradient already
    there, one block in training mode."""
    if kind == "linear":
        return nn.Linear(4, 4)
    if kind == "mystery":
        return Mystery()
    model = tiny("llama")
    model.model.layers[0].mlp.down_proj.weight.requires_grad_(False)
    model.model.layers[2].self_attn.o_proj.weight.grad = torch.full_like(model.model.layers[2].self_attn.o_proj.weight, 0.25)
    model.model.layers[1].mlp.train()
    if kind == "nan":
        with torch.no_grad():
            model.model.layers[1].self_attn.o_proj.weight[0, 0] = NAN  # layer 1's output and all after are NaN
    return model


def _hooks(module: nn.Module) -> tuple:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_forward_hooks_with_kwargs")
    return tuple(tuple(getattr(module, n, {}) or {}) for n in names)


def state(model: nn.Module) -> dict:
    from nbinspect import _attention_hook

    registry = getattr(_attention_hook.ALL_ATTENTION_FUNCTIONS, "_local_mapping", {})
    params = dict(model.named_parameters(remove_duplicate=False))
    globals_ = torch.nn.modules.module
    return {
        "bits": {k: v.detach().reshape(-1).view(torch.uint8).clone() for k, v in model.state_dict(keep_vars=True).items()},
        "param ids": {k: id(p) for k, p in params.items()},
        "requires_grad": {k: p.requires_grad for k, p in params.items()},
        "grad": {k: (id(p.grad), None if p.grad is None else p.grad.clone()) for k, p in params.items()},
        "param hooks": {k: (len(getattr(p, "_backward_hooks", None) or {}), len(getattr(p, "_post_accumulate_grad_hooks", None) or {}))
                        for k, p in params.items()},
        "training": {n: m.training for n, m in model.named_modules()},
        "module hooks": {n: _hooks(m) for n, m in model.named_modules()},
        "global hooks": (len(globals_._global_forward_hooks), len(globals_._global_forward_pre_hooks),
                         len(globals_._global_backward_hooks)),
        "attention registry": dict(registry),
        "attention listeners": (dict(_attention_hook._listeners), dict(_attention_hook._installed)),
        "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "grad enabled": torch.is_grad_enabled(),
    }


def assert_same(before: dict, after: dict) -> None:
    assert after.keys() == before.keys()
    for key in before:
        if key == "bits":
            changed = [k for k in before[key] if not torch.equal(before[key][k], after[key][k])]
            assert not changed and before[key].keys() == after[key].keys(), f"weights changed: {changed}"
        elif key == "grad":
            for name, (gid, grad) in before[key].items():
                aid, agrad = after[key][name]
                assert aid == gid and (grad is None or torch.equal(grad, agrad)), f".grad of {name} changed"
        else:
            assert after[key] == before[key], f"{key} changed"


def lock_is_free(model) -> bool:
    from nbinspect.perturb import model_lock

    got = []
    t = threading.Thread(target=lambda: got.append(model_lock(model).acquire(timeout=1) and model_lock(model).release() is None))
    t.start()
    t.join()
    return got == [True]


# --- the tests -------------------------------------------------------------------------------------------


def test_the_matrix_is_complete():
    assert list(MATRIX) == ENTRY_POINTS
    for entry, row in MATRIX.items():
        assert set(row) == set(CLASSES), f"{entry}: missing {set(CLASSES) - set(row)}, unknown {set(row) - set(CLASSES)}"
        for cls, cell in row.items():
            assert isinstance(cell, str) and cell or isinstance(cell, list) and cell, f"{entry} × {cls} is empty"



CASES = [
    pytest.param(entry, cls, i, case, id=f"{entry}-{cls.replace(' ', '_')}-{i}",
                 marks=[pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else [])
    for entry, row in MATRIX.items()
    for cls, cell in row.items()
    if isinstance(cell, list)
    for i, case in enumerate(cell)
]


def test_every_public_entry_point_has_a_row():
    public = {n for n in nbinspect.__all__ if n[0].islower() and callable(getattr(nbinspect, n))}
    public |= {n for n in nbinspect.__all__
               if isinstance(getattr(nbinspect, n), type) and issubclass(getattr(nbinspect, n), (nbinspect.Edit, Recompute))}
    public |= {"AblateHead", "AblateNeuron", "Trace.edit"}
    missing = public - set(MATRIX) - set(PENDING) - {"Edit"}
    assert not missing, f"public entry points with no row in MATRIX (add them, or say why in PENDING): {sorted(missing)}"


@pytest.mark.parametrize("entry, cls, i, case", CASES)
def test_bad_input(entry, cls, i, case):
    model = prepared(case.model)
    before = state(model)
    if case.error is None:
        case.call(model, CharTokenizer())
    else:
        with pytest.raises(case.error, match=case.match):
            case.call(model, CharTokenizer())
    assert_same(before, state(model))
    assert lock_is_free(model)
