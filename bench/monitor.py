"""Training-monitor overhead: time per optimizer step with ``nbinspect.monitor(model)`` at the default interval
over the same loop without it, in one process (two copies of one model, timed in alternating blocks so a
shared machine's load falls on both alike).

Prints ``monitor_overhead_ratio`` (wall time, monitored ÷ plain; goal ≤ 1.10), the same from CPU time, and
the cost of one sampled step.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from _common import report
from transformers import GPT2Config, GPT2LMHeadModel

import nbinspect
from nbinspect.monitor import Monitor

BLOCK = 20  # steps per timed block: two sampled steps at every=10
ROUNDS = 3
EVERY = 10  # nbinspect.monitor's default


def make_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_embd=64, n_layer=4, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).train()


def block(model, optimizer, x, mon: Monitor | None) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(BLOCK):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        if mon is not None:
            mon.step(loss)
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    x = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    plain_model = make_model()
    watched_model = copy.deepcopy(plain_model)
    plain_opt = torch.optim.AdamW(plain_model.parameters(), lr=1e-3)
    watched_opt = torch.optim.AdamW(watched_model.parameters(), lr=1e-3)
    mon = nbinspect.monitor(watched_model, every=EVERY, optimizer=watched_opt)
    try:
        block(plain_model, plain_opt, x, None)  # warm-up both
        block(watched_model, watched_opt, x, mon)
        plain, watched = [], []
        for _ in range(ROUNDS):
            plain.append(block(plain_model, plain_opt, x, None))
            watched.append(block(watched_model, watched_opt, x, mon))
    finally:
        mon.close()
    wall = statistics.median(w[0] for w in watched) / statistics.median(p[0] for p in plain)
    cpu = statistics.median(w[1] for w in watched) / statistics.median(p[1] for p in plain)
    step_ms = statistics.median(p[0] for p in plain) / BLOCK * 1000
    extra_ms = (statistics.median(w[0] for w in watched) - statistics.median(p[0] for p in plain)) / (BLOCK // EVERY) * 1000
    report("monitor_plain_step_ms", step_ms, "ms")
    report("monitor_overhead_ratio", wall, "x")
    report("monitor_overhead_ratio_cpu", cpu, "x")
    report("monitor_sampled_step_extra_ms", extra_ms, "ms")
    report("monitor_history_points", len(mon.history), "points")


if __name__ == "__main__":
    main()
