"""Generation capture cost: time of ``nbinspect.generate`` (attention rows, residuals, neurons and top-k
candidates of every step, greedy, KV cache) over the model's own ``generate`` with the same settings, on
the offline default model (SmolLM2-135M), at 64 and 256 new tokens. Runs alternate, so a shared machine's
load falls on both alike.

Prints ``generate_capture_over_plain_N`` (wall time ratio; goal ≤ 1.2) and the same from CPU time.
What the capture adds per step: per layer one small matmul for the new token's attention row (beside
the model's own sdpa call) and two device copies (residual, neurons); per step one packing and one move
to the host (see ``generation._Recorder``).
"""

from __future__ import annotations

import os
import statistics
import time

import torch
from _common import report

import nbinspect
from nbinspect.generation import start_generation

PROMPT = "The history of the printing press begins in the fifteenth century, when"
ROUNDS = int(os.environ.get("NBINSPECT_BENCH_ROUNDS", "2"))  # fewer on a crowded machine
# NBINSPECT_BENCH_SIZES=64 for a quick check that it runs
SIZES = tuple(int(n) for n in os.environ.get("NBINSPECT_BENCH_SIZES", "64,256").split(","))


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    model, tokenizer = nbinspect.load(device="cpu")
    inputs = tokenizer(PROMPT, return_tensors="pt")
    settings = dict(do_sample=False, pad_token_id=tokenizer.eos_token_id)
    for n in SIZES:
        fixed = dict(settings, min_new_tokens=n)  # exactly n tokens both ways

        def plain():
            with torch.no_grad():
                model.generate(**inputs, max_new_tokens=n, **fixed)

        def captured():
            gen = start_generation(model, tokenizer, PROMPT, n, background=False, **fixed)
            assert len(gen.steps) == n and gen.error is None, gen.error

        plain()  # warm-up, both ways (first-call costs out of the timed runs)
        captured()
        runs = {"plain": [], "captured": []}
        for _ in range(ROUNDS):
            runs["plain"].append(timed(plain))
            runs["captured"].append(timed(captured))
        wall = statistics.median(r[0] for r in runs["captured"]) / statistics.median(r[0] for r in runs["plain"])
        cpu = statistics.median(r[1] for r in runs["captured"]) / statistics.median(r[1] for r in runs["plain"])
        report(f"generate_plain_ms_per_token_{n}", statistics.median(r[0] for r in runs["plain"]) / n * 1000, "ms")
        report(f"generate_capture_over_plain_{n}", wall, "x")
        report(f"generate_capture_over_plain_cpu_{n}", cpu, "x")


if __name__ == "__main__":
    main()
