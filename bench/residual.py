"""Residual-stream views: extra time of the logit lens and direct logit attribution on top of a Trace.

Prints, per text length N (SmolLM2-135M, the default model, on whatever device it loads to):

- ``residual_forward_ms_N``: one plain forward (no grad), the unit of the ratios;
- ``residual_lens_view_ratio_N``, ``residual_dla_ratio_N``, ``residual_extra_ratio_N``: wall time of what a user
  waits for — building the default LogitLensView (its window of ``codecs.LENS_WINDOW`` positions: top-5,
  entropy, KL, target prob/rank) and LogitAttributionView from an existing Trace — and of both, ÷ one forward
  (goal ≤ 0.3); ``residual_extra_cpu_ratio_N`` the same in process CPU time, which a shared machine disturbs less;
- ``residual_lens_full_ratio_N``: the full grid (every layer × position, ``residual_stream.logit_lens(t)``) ÷ one
  forward, and ``residual_lens_flop_ratio_N`` its multiply-adds ÷ the forward's (``L·n·d·V`` against the
  forward's ``≈ n·params``): the floor no batching can go under on a compute-bound device, which is why the
  view decodes only the positions it shows; ``residual_lens_view_flop_ratio_N`` the same for the window;
- ``residual_bytes_{lens,attribution,block_writes}_N``: data bytes each view sends for its first paint.

``python bench/residual.py [N ...]`` (default 128 512).
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import report, text_of_tokens  # noqa: E402

import nbinspect  # noqa: E402
from nbinspect import codecs, residual_stream as rs  # noqa: E402
from nbinspect.trace import trace as make_trace  # noqa: E402
from nbinspect.views.block_writes_view import BlockWritesView  # noqa: E402
from nbinspect.views.logit_attribution_view import LogitAttributionView  # noqa: E402
from nbinspect.views.logit_lens_view import LogitLensView  # noqa: E402


def timed(fn, repeat):
    """Median wall and CPU seconds of ``repeat`` calls (after one warm-up call when repeat > 1)."""
    if repeat > 1:
        fn()
    walls, cpus = [], []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        w, c = time.perf_counter(), time.process_time()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return sorted(walls)[len(walls) // 2], sorted(cpus)[len(cpus) // 2]


def main(lengths):
    model, tokenizer = nbinspect.load()
    params = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight
    V, d = head.shape
    for n in lengths:
        text = text_of_tokens(tokenizer, n)
        t = make_trace(model, tokenizer, text, gradients=False)
        repeat = 3 if n <= 128 else 1
        fwd, fwd_cpu = timed(lambda: _forward(model, t.inputs), repeat)

        def fresh(cls):  # a view built on a trace that has decoded nothing yet (views keep results on it)
            t._cache.clear()
            return cls(t)

        lens, lens_cpu = timed(lambda: fresh(LogitLensView), repeat)
        dla, dla_cpu = timed(lambda: fresh(LogitAttributionView), repeat)
        full, _ = timed(lambda: rs.logit_lens(t, k=codecs.LENS_TOP_K), 1)
        report(f"residual_forward_ms_{n}", fwd * 1000, "ms")
        report(f"residual_lens_view_ratio_{n}", lens / fwd, "x")
        report(f"residual_dla_ratio_{n}", dla / fwd, "x")
        report(f"residual_extra_ratio_{n}", (lens + dla) / fwd, "x")
        report(f"residual_extra_cpu_ratio_{n}", (lens_cpu + dla_cpu) / fwd_cpu, "x")
        report(f"residual_lens_full_ratio_{n}", full / fwd, "x")
        L = t.adapter.n_layers
        report(f"residual_lens_flop_ratio_{n}", (L * n * d * V) / (n * params), "x")
        shown = min(codecs.LENS_WINDOW, n)
        report(f"residual_lens_view_flop_ratio_{n}", (L * shown * d * V) / (n * params), "x")
        views = (("lens", LogitLensView), ("attribution", LogitAttributionView), ("block_writes", BlockWritesView))
        for name, cls in views:
            report(f"residual_bytes_{name}_{n}", fresh(cls).payload_bytes(), "B")


def _forward(model, inputs):
    with torch.no_grad():
        model(**inputs)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [128, 512])
