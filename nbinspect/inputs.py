"""Turn user text into model inputs, refusing what the model cannot take with a clear message."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .adapters import Adapter


def encode(tokenizer, text: str, adapter: Adapter, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Tokenize one text for ``adapter.model``; raise ``ValueError`` for empty or over-long text."""
    if not isinstance(text, str):
        raise TypeError(f"expected the text as a str, got {type(text).__name__}.")
    if not text.strip():
        raise ValueError("the text is empty: give at least one word to run through the model.")
    if not callable(tokenizer):
        raise TypeError(
            f"expected the model's tokenizer (e.g. from nbinspect.load or transformers.AutoTokenizer), got "
            f"{type(tokenizer).__name__}: the tokenizer turns the text into token ids."
        )
    inputs = tokenizer(text, return_tensors="pt")
    if not isinstance(inputs, Mapping) or not isinstance(inputs.get("input_ids"), torch.Tensor):
        raise TypeError(
            f"the tokenizer returned {type(inputs).__name__}, not a dict with an 'input_ids' tensor; "
            "pass a Hugging Face tokenizer (called as tokenizer(text, return_tensors='pt'))."
        )
    n = inputs["input_ids"].shape[1]
    limit = adapter.max_positions
    if limit is not None and n > limit:
        raise ValueError(
            f"the text is {n} tokens long but this model takes at most {limit}; shorten it (e.g. text[:{limit * 3}])."
        )
    if n == 0:
        raise ValueError("the text produced no tokens: give at least one word to run through the model.")
    vocab = vocab_size(adapter)
    ids = inputs["input_ids"]
    if vocab is not None and (int(ids.max()) >= vocab or int(ids.min()) < 0):
        bad = int(ids.max()) if int(ids.max()) >= vocab else int(ids.min())
        raise ValueError(
            f"the tokenizer turned the text into token id {bad}, but this model's vocabulary has ids 0..{vocab - 1}; "
            "pass the tokenizer that belongs to the model (nbinspect.load gives both)."
        )
    if device is None:
        device = adapter.device_of(0)
    return {k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def token_strings(tokenizer, input_ids: torch.Tensor) -> list[str]:
    """Readable text of each token (byte-level markers such as Ġ turned back into spaces)."""
    ids = input_ids.reshape(-1).tolist()
    return [tokenizer.decode([i]) for i in ids]


def vocab_size(adapter: Adapter) -> int | None:
    """How many token ids the model's input embedding has (``None`` when nbinspect cannot tell)."""
    embedding = adapter.embedding()
    n = getattr(embedding, "num_embeddings", None)
    if n is None:
        n = getattr(adapter.config, "vocab_size", None)
    return int(n) if n else None


def check_inputs(adapter: Adapter, inputs, name: str = "inputs") -> dict[str, torch.Tensor]:
    """Model inputs given as token ids (a tensor, or a tokenizer's output), checked before any forward.

    Refuses with a ``TypeError`` what is not integer token ids, and with a ``ValueError`` empty ids,
    ids outside the vocabulary, more tokens than the model takes, and other inputs (attention mask,
    ...) shaped unlike the ids. One row of ids (``[tokens]``) becomes a batch of one (``[1, tokens]``).
    Tensors are moved to the device of the input embedding.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = {"input_ids": inputs}
    elif not (isinstance(inputs, Mapping) and "input_ids" in inputs):
        raise TypeError(
            f"{name} must be a tensor of token ids or a tokenizer's output (a dict with 'input_ids'), got "
            f"{type(inputs).__name__}; e.g. tokenizer(text, return_tensors='pt')."
        )
    ids = inputs["input_ids"]
    what = f"{name}['input_ids']" if isinstance(inputs, Mapping) and len(inputs) > 1 else name
    if not isinstance(ids, torch.Tensor):
        raise TypeError(
            f"{what} must be a torch tensor of token ids, got {type(ids).__name__}; "
            "call the tokenizer with return_tensors='pt'."
        )
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{what} must hold integer token ids (torch.long), got {ids.dtype}; token ids are not numbers to scale.")
    if ids.dim() not in (1, 2):
        raise ValueError(f"{what} must be shaped [batch, tokens] (or [tokens]), got shape {list(ids.shape)}.")
    if ids.numel() == 0:
        raise ValueError(f"{what} is empty (shape {list(ids.shape)}): give at least one token to run through the model.")
    one_row = ids.dim() == 1
    n = ids.shape[-1]
    limit = adapter.max_positions
    if limit is not None and n > limit:
        raise ValueError(f"{what} has {n} tokens but this model takes at most {limit}; shorten it (e.g. ids[..., :{limit}]).")
    vocab = vocab_size(adapter)
    lo, hi = (int(v) for v in torch.stack([ids.min(), ids.max()]).tolist())  # one device sync
    if lo < 0 or (vocab is not None and hi >= vocab):
        bad = lo if lo < 0 else hi
        valid = f"0..{vocab - 1}" if vocab is not None else "0 and up"
        raise ValueError(f"{what} holds token id {bad}, but this model's vocabulary has ids {valid}.")
    embedding = adapter.embedding()
    weight = getattr(embedding, "weight", None)
    device = weight.device if isinstance(weight, torch.Tensor) and weight.device.type != "meta" else None
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            if one_row and value.dim() == 1:
                value = value[None]
            if key != "input_ids" and value.dim() == 2 and value.shape != (1 if one_row else ids.shape[0], n):
                raise ValueError(
                    f"{name}[{key!r}] has shape {list(value.shape)} but the token ids have shape "
                    f"{[1, n] if one_row else list(ids.shape)}; they must match."
                )
            if device is not None:
                value = value.to(device)
        out[key] = value
    return out
