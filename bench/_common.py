"""Shared by the benchmarks: texts of an exact token count, and medians of timed runs."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the browser harness (tests/lab.py)

PARAGRAPH = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden press adapted from wine making. Within fifty years, "
    "presses operated in more than two hundred European cities, and the price of books fell sharply. "
)


def text_of_tokens(tokenizer, n: int) -> str:
    """A natural-language text that the tokenizer splits into exactly ``n`` tokens."""
    ids = tokenizer(PARAGRAPH * (n // 20 + 2))["input_ids"]
    specials = len(tokenizer("a")["input_ids"]) - len(tokenizer("a", add_special_tokens=False)["input_ids"])
    k = n - specials
    while True:
        text = tokenizer.decode(ids[:k], skip_special_tokens=True)
        got = len(tokenizer(text)["input_ids"])
        if got == n:
            return text
        k += n - got


def median_ms(fn, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def report(name: str, value, unit: str) -> None:
    print(f"{name} {value:.4g} {unit}" if isinstance(value, float) else f"{name} {value} {unit}", flush=True)
