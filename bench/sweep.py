"""How long a head-importance sweep takes, against the plain forwards it replaces.

Prints one line per figure, ``name value unit``, on the default model (SmolLM2) at 64 tokens:

* ``full_forward_ms_64`` — ``model(**inputs, use_cache=False)``, every position's logits.
* ``sweep_s_64`` — ``nbinspect.head_sweep`` of every layer × head (zero ablation, target logit).
* ``sweep_over_full_forwards`` — a sweep's time ÷ (n_layers × n_heads plain forwards), each sweep
  timed right after the forwards it is compared with (median of per-pair ratios, so that other load
  on a shared machine hits both sides). Goal on CPU: ≤ 0.35.
* ``sweep_cpu_time_over_full_forwards`` (CPU only) — the same in this process's CPU time, which other
  processes on a shared machine disturb far less than wall-clock time.
* ``sweep_mean_over_full_forwards`` — the same for mean ablation.

No assertions. Runs on CUDA when available (the figures then say so).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import nbinspect  # noqa: E402
from nbinspect.adapters import Adapter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, text_of_tokens  # noqa: E402

N_TOKENS = 64
ROUNDS = int(os.environ.get("NBINSPECT_BENCH_ROUNDS", "3"))  # fewer on a crowded machine
FORWARDS_PER_ROUND = 10  # plain forwards timed per round; their median stands for each of the L × H


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    model, tokenizer = nbinspect.load()
    adapter = Adapter.of(model)
    device = adapter.device_of(0)
    text = text_of_tokens(tokenizer, N_TOKENS)
    inputs = {k: v.to(device) for k, v in tokenizer(text, return_tensors="pt").items()}
    cells = adapter.n_layers * adapter.n_heads

    def forward():
        with torch.no_grad():
            model(**inputs, use_cache=False)
        sync(device)

    def timed(fn):
        w, c = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        return time.perf_counter() - w, time.process_time() - c

    forward()
    nbinspect.head_sweep(model, tokenizer, text, layers=[adapter.n_layers - 1], progress=False)  # warm-up
    results = {"zero": ([], [], []), "mean": ([], [], [])}
    for _ in range(ROUNDS):
        for ablation, (walls, cpus, sweeps) in results.items():
            pairs = [timed(forward) for _ in range(FORWARDS_PER_ROUND)]
            fw = statistics.median(p[0] for p in pairs)
            fc = statistics.median(p[1] for p in pairs)
            sw, sc = timed(lambda: nbinspect.head_sweep(model, tokenizer, text, ablation=ablation, progress=False))
            walls.append(sw / (cells * fw))
            cpus.append(sc / max(cells * fc, 1e-9))
            sweeps.append((sw, fw))
    walls, cpus, sweeps = results["zero"]
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    report(f"full_forward_ms_{N_TOKENS}{suffix}", 1000 * statistics.median(s[1] for s in sweeps), "ms")
    report(f"sweep_s_{N_TOKENS}{suffix}", statistics.median(s[0] for s in sweeps), "s")
    report(f"sweep_over_full_forwards{suffix}", statistics.median(walls), "ratio")
    if device.type == "cpu":
        report("sweep_cpu_time_over_full_forwards", statistics.median(cpus), "ratio")
    report(f"sweep_mean_over_full_forwards{suffix}", statistics.median(results["mean"][0]), "ratio")


if __name__ == "__main__":
    main()
