"""Parameter inventory and weight histograms on the default model: cost next to one forward, and bytes sent.

Prints:
  anatomy_inventory_ms              sorting every parameter into kinds and layers (no statistics)
  anatomy_inventory_histograms_ms   the inventory plus every tensor's histogram and moments, on the model's device
  anatomy_plain_forward_ms_N        a plain forward pass of an N-token text (the anchor, same run)
  anatomy_ratio_to_forward_N        inventory + all histograms ÷ one forward (goal ≤ 1), both timed in alternating
                                    rounds so that load from other processes weighs on both alike
  anatomy_tensors                   tensors binned (fused QKV counted per part)
  anatomy_parameters_view_bytes     what ParametersView sends for its first render (kinds, one histogram,
                                    init curves, std by layer)
  anatomy_all_histograms_bytes      what sending every tensor's histogram would cost (for comparison)
  anatomy_mechanics_ms_N            one head's attention mechanics at the last token (one recorded forward)
  anatomy_mechanics_view_bytes_N    what AttentionMechanicsView sends for one layer, head and query
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


def main():
    model, tokenizer = nbinspect.load()
    inv_ms = median_ms(lambda: anatomy.inventory(model), repeat=5)
    stats_ms = median_ms(lambda: anatomy.parameter_stats(model), repeat=3)
    inv = anatomy.parameter_stats(model)
    binned = sum(h is not None for h in inv.histograms)
    report("anatomy_inventory_ms", inv_ms, "ms")
    report("anatomy_inventory_histograms_ms", stats_ms, "ms")
    report("anatomy_tensors", binned, "tensors")
    from nbinspect.views.parameters_view import ParametersView
    from nbinspect.views.attention_mechanics_view import attention_mechanics

    view = ParametersView(inv)
    report("anatomy_parameters_view_bytes", view.payload_bytes(), "bytes")
    report("anatomy_all_histograms_bytes", binned * codecs.WEIGHT_HISTOGRAM_BINS * 4, "bytes")
    for n in SIZES:
        text = text_of_tokens(tokenizer, n)
        inputs = tokenizer(text, return_tensors="pt").to(model.device)
        ratios, plains = [], []
        for _ in range(3):
            t = time.perf_counter()
            with torch.no_grad():
                model(**inputs)
            plain = time.perf_counter() - t
            t = time.perf_counter()
            anatomy.parameter_stats(model)
            ratios.append((time.perf_counter() - t) / plain)
            plains.append(plain * 1000)
        report(f"anatomy_plain_forward_ms_{n}", statistics.median(plains), "ms")
        report(f"anatomy_ratio_to_forward_{n}", statistics.median(ratios), "x")
        mech = median_ms(lambda: anatomy.mechanics(model, inputs, layer=10, head=3), repeat=3)
        report(f"anatomy_mechanics_ms_{n}", mech, "ms")
        mview = attention_mechanics(model, tokenizer, text, layer=10, head=3)
        report(f"anatomy_mechanics_view_bytes_{n}", mview.payload_bytes(), "bytes")


if __name__ == "__main__":
    sys.exit(main())
