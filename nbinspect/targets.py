"""What a gradient or an attribution explains: the *target*, resolved and checked before any forward.

Users name a target in their own words — nothing (the token the model predicts), a token id, a token's
text (``" Paris"``), a contrast (``target=" Paris", foil=" Rome"``: the target's logit minus the foil's),
``"loss"`` (the language-modelling loss on the text itself) or a function of the model's output. A
:class:`Target` is that choice made concrete: ids checked against the vocabulary, strings checked to be
exactly one token, the position checked against the text, all before the model runs, so a bad target
costs nothing and says what to pass instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

KINDS = ("token", "contrast", "loss", "function", "state_norm")


@dataclass(frozen=True)
class Target:
    """A resolved target.

    kind: ``"token"`` (a logit), ``"contrast"`` (logit of ``token`` minus logit of ``foil``), ``"loss"``,
        ``"function"`` (``fn(output)``) or ``"state_norm"`` (encoders without a head: the norm of the
        final hidden state at ``position``).
    token, foil: vocabulary ids (``None`` where the kind has none). ``token`` is ``None`` for a
        ``"token"`` target until the forward has shown which token the model predicts.
    position: the position (≥ 0) whose next-token logits are explained.
    label: the target in words, for titles (``logit of ' Paris' at token 7``).
    """

    kind: str
    position: int
    token: int | None = None
    foil: int | None = None
    fn: Callable | None = None
    label: str = ""

    @property
    def predicted(self) -> bool:
        """True while the target is "whatever the model predicts" (resolved after the forward)."""
        return self.kind == "token" and self.token is None

    def value(self, output) -> torch.Tensor:
        """The scalar to differentiate, from the model's output (batch row 0)."""
        if self.kind == "loss":
            loss = getattr(output, "loss", None)
            if loss is None:
                raise ValueError("target='loss' needs a model that computes a language-modelling loss (a ...ForCausalLM).")
            return loss
        if self.kind == "function":
            value = self.fn(output)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise ValueError("a target function must return a single-number tensor (e.g. output.logits[0, -1, 42]).")
            return value.reshape(())
        if self.kind == "state_norm":
            return output.last_hidden_state[0, self.position].norm()
        logits = output.logits[0, self.position]
        if self.kind == "contrast":
            return logits[self.token] - logits[self.foil]
        return logits[self.token]


def token_id(tokenizer, value, vocab: int, name: str = "target") -> int:
    """A token id from an id or a one-token string; a clear error otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = int(value)
        else:
            raise TypeError(f"{name} must be a token id (int) or a token's text (str), got {type(value).__name__}.")
    if isinstance(value, int):
        if not 0 <= value < vocab:
            raise ValueError(f"{name} token id {value} is out of range: the vocabulary has ids 0..{vocab - 1}.")
        return value
    if tokenizer is None:
        raise ValueError(f"{name}={value!r} is text, but no tokenizer was given to turn it into a token id; pass an id.")
    if value == "":
        raise ValueError(f"{name} is an empty string; give one token's text, e.g. ' Paris', or its id.")
    ids = _ids_of(tokenizer, value)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise ValueError(
            f"{name} {value!r} is {len(ids)} tokens {pieces!r}, not one; pick one of them (e.g. {pieces[0]!r}) or pass a token id."
        )
    if not 0 <= ids[0] < vocab:
        raise ValueError(f"{name} {value!r} tokenizes to id {ids[0]}, outside the model's vocabulary 0..{vocab - 1}.")
    return int(ids[0])


def _ids_of(tokenizer, text: str) -> list[int]:
    try:
        out = tokenizer(text, add_special_tokens=False)
    except TypeError:  # simple tokenizers without that option
        out = tokenizer(text)
    ids = out["input_ids"]
    if isinstance(ids, torch.Tensor):
        ids = ids.reshape(-1).tolist()
    elif ids and isinstance(ids[0], list):
        ids = ids[0]
    return list(ids)


def resolve(target, foil, position: int, *, n_tokens: int, vocab: int | None, has_head: bool, tokenizer=None) -> Target:
    """Check a target named by a user against the text and model, before any forward.

    ``vocab`` is ``None`` for models without a next-token head (encoders).
    """
    if isinstance(position, bool) or not isinstance(position, int):
        raise TypeError(f"position must be a whole number (a token index), got {position!r}.")
    if not -n_tokens <= position < n_tokens:
        raise IndexError(f"position {position} is out of range: the text has tokens 0..{n_tokens - 1} (or -{n_tokens}..-1).")
    position %= n_tokens
    if callable(target) and not isinstance(target, str):
        if foil is not None:
            raise ValueError("a foil only goes with a token target (target=' Paris', foil=' Rome'), not with a function.")
        return Target("function", position, fn=target, label="a function of the output")
    if isinstance(target, str) and target == "loss":
        if foil is not None:
            raise ValueError("a foil only goes with a token target, not with target='loss'.")
        if not has_head:
            raise ValueError("target='loss' needs a language-model head; this model has none. Pass target=None (default).")
        if n_tokens < 2:
            raise ValueError(
                "target='loss' needs at least two tokens (the loss predicts each token from the ones before it); "
                "this text has one. Pass a token target instead (target=None explains the predicted next token)."
            )
        return Target("loss", position, label="LM loss")
    if not has_head:
        if target is not None or foil is not None:
            raise ValueError(
                "this model has no next-token head, so token targets do not apply; pass target=None (the norm of the "
                "final hidden state) or a function of the output."
            )
        return Target("state_norm", position, label=f"norm of the final state at token {position}")
    token = None if target is None else token_id(tokenizer, target, vocab, "target")
    if foil is None:
        if token is None:
            return Target("token", position, label=f"logit of the predicted token at token {position}")
        return Target("token", position, token=token, label=f"logit of {_show(tokenizer, token)} at token {position}")
    if token is None:
        raise ValueError("a foil needs a target to compare with: pass target=' Paris', foil=' Rome' (or ids).")
    foil_id = token_id(tokenizer, foil, vocab, "foil")
    if foil_id == token:
        raise ValueError(f"target and foil are the same token ({_show(tokenizer, token)}); their difference is always 0.")
    return Target("contrast", position, token=token, foil=foil_id,
                  label=f"logit {_show(tokenizer, token)} − {_show(tokenizer, foil_id)} at token {position}")


def predicted(target: Target, token: int, tokenizer=None) -> Target:
    """``target`` with the model's predicted token filled in."""
    return Target("token", target.position, token=token, label=f"logit of {_show(tokenizer, token)} (predicted) at token {target.position}")


def _show(tokenizer, token: int) -> str:
    if tokenizer is None:
        return f"token {token}"
    try:
        return repr(tokenizer.decode([token]))
    except Exception:  # noqa: BLE001 - a label is not worth failing for
        return f"token {token}"
