"""Turn user text into model inputs, refusing what the model cannot take with a clear message."""

from __future__ import annotations

import torch

from .adapters import Adapter


def encode(tokenizer, text: str, adapter: Adapter, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Tokenize one text for ``adapter.model``; raise ``ValueError`` for empty or over-long text."""
    if not isinstance(text, str):
        raise TypeError(f"expected the text as a str, got {type(text).__name__}.")
    if not text.strip():
        raise ValueError("the text is empty: give at least one word to run through the model.")
    inputs = tokenizer(text, return_tensors="pt")
    n = inputs["input_ids"].shape[1]
    limit = adapter.max_positions
    if limit is not None and n > limit:
        raise ValueError(
            f"the text is {n} tokens long but this model takes at most {limit}; shorten it (e.g. text[:{limit * 3}])."
        )
    if n == 0:
        raise ValueError("the text produced no tokens: give at least one word to run through the model.")
    if device is None:
        device = adapter.device_of(0)
    return {k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def token_strings(tokenizer, input_ids: torch.Tensor) -> list[str]:
    """Readable text of each token (byte-level markers such as Ġ turned back into spaces)."""
    ids = input_ids.reshape(-1).tolist()
    return [tokenizer.decode([i]) for i in ids]
