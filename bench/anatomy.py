"""Parameter inventory and weight histograms on the default model: cost next to one forward, and bytes sent.

The unit is a plain forward, ``model(**inputs)`` under ``torch.no_grad()``, of an N-token text (N = 128
and 512), timed in the same process in alternating rounds with what it is compared to, so that load from
other processes weighs on both alike. Each ratio is given in wall time and in CPU time (this process's,
all threads; on a shared CPU machine the steadier of the two). On a GPU, wall time after synchronizing.

Prints:
  anatomy_inventory_ms                 sorting every parameter into kinds and layers (no statistics)
  anatomy_all_histograms_ms            the inventory plus every tensor's moments and histogram, on the
                                       model's device (``parameter_stats``: the issue's benchmark)
  anatomy_first_paint_ms               what ParametersView computes before it can paint: the inventory,
                                       every tensor's moments, the std by layer and the focused group's
                                       histogram (other histograms are binned when focused)
  anatomy_plain_forward_ms_N           the plain forward (wall)
  anatomy_ratio_to_forward_N           all histograms ÷ one forward, wall time (goal ≤ 1)
  anatomy_ratio_to_forward_cpu_N       the same in CPU time
  anatomy_first_paint_ratio_N          first paint ÷ one forward, wall time
  anatomy_first_paint_ratio_cpu_N      the same in CPU time
  anatomy_tensors                      tensors binned (fused QKV counted per part, tied tensors once)
  anatomy_parameters_view_bytes        what ParametersView sends for its first render (kinds, one histogram,
                                       init curves, std by layer)
  anatomy_all_histograms_bytes         what sending every tensor's histogram would cost (for comparison)
  anatomy_mechanics_ms_N               one head's attention mechanics at the last token (one recorded forward)
  anatomy_mechanics_view_bytes_N       what AttentionMechanicsView sends for one layer, head and query

NBINSPECT_BENCH_ROUNDS (default 3) sets the rounds per size; fewer on a crowded machine.
NBINSPECT_BENCH_THREADS sets torch's threads (default: torch's own choice, one per core). On a shared
machine one thread gives the steadier figures: threads waiting on each other for a core inflate both
the forward and the statistics, unevenly.
"""

import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import nbinspect  # noqa: E402
from _common import median_ms, report, text_of_tokens  # noqa: E402
from nbinspect import anatomy, codecs  # noqa: E402

SIZES = (128, 512)
ROUNDS = int(os.environ.get("NBINSPECT_BENCH_ROUNDS", "3"))


def timed(fn, device) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn()``, synchronizing an accelerator before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def main():
    from nbinspect.views.attention_mechanics_view import attention_mechanics
    from nbinspect.views.parameters_view import ParametersView

    if os.environ.get("NBINSPECT_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["NBINSPECT_BENCH_THREADS"]))
    model, tokenizer = nbinspect.load()
    device = next(model.parameters()).device
    print(f"# {type(model).__name__} on {device}, {sum(p.numel() for p in model.parameters())} parameters, "
          f"{torch.get_num_threads()} threads, {ROUNDS} rounds", flush=True)

    def all_histograms():
        return anatomy.parameter_stats(model)

    def first_paint():
        return ParametersView(model)

    report("anatomy_inventory_ms", median_ms(lambda: anatomy.inventory(model), repeat=3), "ms")
    report("anatomy_all_histograms_ms", median_ms(all_histograms, repeat=ROUNDS), "ms")
    report("anatomy_first_paint_ms", median_ms(first_paint, repeat=ROUNDS), "ms")
    inv = all_histograms()
    binned = sum(h is not None for h in inv.histograms)
    report("anatomy_tensors", binned, "tensors")
    report("anatomy_parameters_view_bytes", first_paint().payload_bytes(), "bytes")
    report("anatomy_all_histograms_bytes", binned * codecs.WEIGHT_HISTOGRAM_BINS * 4, "bytes")
    for n in SIZES:
        text = text_of_tokens(tokenizer, n)
        inputs = tokenizer(text, return_tensors="pt").to(device)
        assert inputs["input_ids"].shape[1] == n

        def forward():
            with torch.no_grad():
                model(**inputs)

        forward()  # warm
        rows = []  # (forward, all histograms, first paint) as (wall, cpu)
        for _ in range(ROUNDS):
            rows.append((timed(forward, device), timed(all_histograms, device), timed(first_paint, device)))
        report(f"anatomy_plain_forward_ms_{n}", statistics.median(r[0][0] for r in rows) * 1000, "ms")
        for label, k in (("ratio_to_forward", 1), ("first_paint_ratio", 2)):
            report(f"anatomy_{label}_{n}", statistics.median(r[k][0] / r[0][0] for r in rows), "x")
            report(f"anatomy_{label}_cpu_{n}", statistics.median(r[k][1] / r[0][1] for r in rows), "x")
        mech = median_ms(lambda: anatomy.mechanics(model, inputs, layer=10, head=3), repeat=ROUNDS)
        report(f"anatomy_mechanics_ms_{n}", mech, "ms")
        mview = attention_mechanics(model, tokenizer, text, layer=10, head=3)
        report(f"anatomy_mechanics_view_bytes_{n}", mview.payload_bytes(), "bytes")


if __name__ == "__main__":
    sys.exit(main())
