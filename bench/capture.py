"""What capturing costs on the default model (SmolLM2-135M), against HF eager attention as the anchor.

Prints one line per figure, ``name value unit``:

- ``capture_overhead_N``: forward time with a *full capture* divided by a plain forward with the model's
  default attention (sdpa), same process, rounds interleaved, median of ``--repeats``. On the CPU the time
  is the process's CPU time (user + system, one thread; see the end of this note), on a GPU wall time. A full capture records, for every layer, the attention patterns, the MLP neuron
  activations and the residual stream before and after the block. Patterns are kept as **float16** on
  the device (half of float32's 4.5 GB at 2048 tokens; views quantize to 8 bits anyway); neurons and the
  residual stream stay float32.
- ``capture_fast_overhead_N``: the same full capture with ``Request(exact=False)``: captured layers take
  their attention output from the weights computed for the capture (eager's math) instead of also
  running sdpa, so outputs differ from sdpa's in the last bits, as eager's do.
- ``trace_capture_overhead_N``: ``nbinspect.trace(..., gradients=False)``, what every view reads: each
  layer's attention maps reduced on the device (thumbnails, and full maps while the budget in codecs.py
  allows), neurons, the residual stream, head outputs, attention and MLP outputs and the logits, with
  the attention output computed from the very probabilities the maps are made of (scores once, not
  beside sdpa) ÷ the same plain sdpa forward. The issue's goal: ≤ 1.15. ``trace_peak_mb_N`` its memory.
- ``eager_attentions_overhead_N``: the same ratio for HF eager attention with ``output_attentions=True``
  (all layers' float32 patterns), the anchor.
- ``plain_peak_mb_N`` / ``capture_peak_mb_N`` / ``eager_attentions_peak_mb_N``: peak resident memory of that forward above the
  memory held just before it (so the model's own 0.5 GB is excluded), each measured alone in a fresh
  subprocess by polling /proc; on a GPU, ``torch.cuda.max_memory_allocated`` above the same baseline.
- ``summary_peak_mb_N``: per-head summaries (entropy, max weight) of every layer plus the full pattern of one
  layer, the long-input path: it must stay far below the full capture's peak.
- ``grad_norms_cost`` / ``saliency_cost``: ``nbinspect.gradient_norms`` (LM loss) and
  ``nbinspect.saliency`` (gradient x input) at 128 tokens, relative to a plain forward at 128 tokens.

Run ``python bench/capture.py [--sizes 128 512 2048] [--repeats 5] [--threads 1]``; figures for a GPU
follow with a ``_cuda`` suffix when one is available. CPU figures use one thread unless told otherwise:
on a shared machine, OpenMP threads waiting on each other at every op made single forwards swing by 5x
(0.5 s one-threaded against 2.6-11 s two-threaded at 128 tokens), and even one-threaded wall times moved
by 50 % with other jobs; the process's CPU time stays within a few percent. Page faults are part of that
time on purpose: keeping results means touching fresh memory, and in a VM that is a real cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

# Run from a checkout without installing: the package sits next to bench/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nbinspect  # noqa: E402
from nbinspect import Request  # noqa: E402
from nbinspect.reductions import by_layer, head_summary  # noqa: E402

CONFIGS = ("plain", "capture", "capture_fast", "eager", "summary", "trace")
TIMED = ("plain", "capture", "capture_fast", "eager", "trace")
TOKENIZER = []  # set by main: the trace decodes its tokens
SUMMARY_FULL_LAYER = 15  # the one layer whose full pattern the long-input path keeps


def forward(model, ids, config: str):
    """One forward of ``config``; returns what it kept, so a caller can hold it while measuring memory."""
    with torch.no_grad():
        if config == "plain":
            return model(input_ids=ids)
        if config == "eager":
            model.set_attn_implementation("eager")
            try:
                return model(input_ids=ids, output_attentions=True)
            finally:
                model.set_attn_implementation("sdpa")
        if config == "trace":
            return nbinspect.trace(model, TOKENIZER[0], {"input_ids": ids}, gradients=False)
        if config.startswith("capture"):
            attention = Request(dtype=torch.float16, exact=config == "capture")
            kinds = dict(attention=attention, neurons=True, residual=True)
        else:
            kinds = dict(attention=Request(reduce=by_layer(head_summary, {SUMMARY_FULL_LAYER: None})))
        with nbinspect.capture(model, **kinds) as record:
            model(input_ids=ids)
        return record


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _clock(device):
    # On the CPU, the process's own CPU time (user + system, so page faults count): with one thread it
    # is the wall time an idle machine would show, and other people's jobs on a shared machine do not
    # leak into it. On a GPU, wall time after synchronizing.
    return time.perf_counter if device.type == "cuda" else time.process_time


def timed(model, ids, config):
    clock = _clock(ids.device)
    _sync(ids.device)
    start = clock()
    kept = forward(model, ids, config)
    _sync(ids.device)
    del kept
    return clock() - start


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_in_this_process(config: str, n: int, device: str) -> float:
    """Peak memory (MB) of one ``config`` forward at ``n`` tokens above what was held just before it."""
    model, tokenizer = nbinspect.load(device=device)
    TOKENIZER[:] = [tokenizer]
    ids = torch.randint(100, 40000, (1, n), generator=torch.Generator().manual_seed(0)).to(device)
    forward(model, ids[:, :16], config)  # first-call allocations are not the forward's cost
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        kept = forward(model, ids, config)
        torch.cuda.synchronize()
        del kept
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base, peak, done = _rss_mb(), [0.0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    kept = forward(model, ids, config)
    peak[0] = max(peak[0], _rss_mb())
    done.set()
    watcher.join()
    del kept
    return peak[0] - base


def peak(config: str, n: int, device: str) -> float:
    # A fresh process per figure: allocators keep freed memory, so one measurement would skew the next.
    command = [sys.executable, __file__, "--peak", config, str(n), "--device", device,
               "--threads", str(torch.get_num_threads())]
    for _ in range(2):  # one retry: in a shared working tree a file may be mid-edit when it is imported
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode == 0:
            return float(out.stdout.strip().splitlines()[-1])
    print(f"# peak {config} {n} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr, flush=True)
    return float("nan")


def main(sizes, repeats: int, device: str) -> None:
    suffix = "" if device == "cpu" else f"_{device}"
    model, tokenizer = nbinspect.load(device=device)
    TOKENIZER[:] = [tokenizer]
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        ids = torch.randint(100, 40000, (1, n), generator=gen).to(device)
        for config in TIMED:
            timed(model, ids[:, : min(n, 32)], config)  # warm every path once
        times = {c: [] for c in TIMED}
        rounds = repeats if n <= 512 else min(repeats, 2)  # a 2048-token forward takes ~10 s of one CPU core
        for _ in range(rounds):
            for config in times:
                times[config].append(timed(model, ids, config))
        plain = statistics.median(times["plain"])
        print(f"plain_forward_s_{n}{suffix} {plain:.3f} s", flush=True)
        print(f"capture_overhead_{n}{suffix} {statistics.median(times['capture']) / plain:.3f} x", flush=True)
        print(f"capture_fast_overhead_{n}{suffix} {statistics.median(times['capture_fast']) / plain:.3f} x", flush=True)
        print(f"eager_attentions_overhead_{n}{suffix} {statistics.median(times['eager']) / plain:.3f} x", flush=True)
        print(f"trace_capture_overhead_{n}{suffix} {statistics.median(times['trace']) / plain:.3f} x", flush=True)
        print(f"plain_peak_mb_{n}{suffix} {peak('plain', n, device):.0f} MB", flush=True)
        print(f"capture_peak_mb_{n}{suffix} {peak('capture', n, device):.0f} MB", flush=True)
        print(f"eager_attentions_peak_mb_{n}{suffix} {peak('eager', n, device):.0f} MB", flush=True)
        print(f"trace_peak_mb_{n}{suffix} {peak('trace', n, device):.0f} MB", flush=True)
        if n == max(sizes):
            print(f"summary_peak_mb_{n}{suffix} {peak('summary', n, device):.0f} MB", flush=True)

    ids = torch.randint(100, 40000, (1, 128), generator=gen).to(device)
    plain, grads, sal = [], [], []
    clock = _clock(ids.device)
    for _ in range(repeats):
        plain.append(timed(model, ids, "plain"))
        _sync(ids.device)
        start = clock()
        nbinspect.gradient_norms(model, ids, "loss")
        _sync(ids.device)
        grads.append(clock() - start)
        start = clock()
        nbinspect.saliency(model, ids, method="grad_x_input")
        _sync(ids.device)
        sal.append(clock() - start)
    base = statistics.median(plain)
    print(f"grad_norms_cost{suffix} {statistics.median(grads) / base:.2f} x", flush=True)
    print(f"saliency_cost{suffix} {statistics.median(sal) / base:.2f} x", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per size (at most 2 past 512 tokens)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu, then cuda too if available)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1, see above)")
    parser.add_argument("--peak", nargs=2, metavar=("CONFIG", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak:
        config, n = args.peak
        assert config in CONFIGS, config
        print(f"{peak_in_this_process(config, int(n), args.device or 'cpu'):.1f}")
    else:
        devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            main(args.sizes, args.repeats, device)
