"""Saved pages (nbinspect.export): file size per view next to what a live notebook sends, on the default model.

Prints, for N in 128 and 512 tokens and each view (attention, neurons, gradients, dashboard):
  export_<view>_file_bytes_N      the self-contained HTML file (state, gzip+base64 bytes, ESM, runtime)
  export_<view>_payload_bytes_N   data + code a live notebook sends for the same view (each ESM once) + the runtime
  export_<view>_ratio_N           file ÷ payload (goal ≤ 1.5)
"""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import nbinspect  # noqa: E402
from _common import report, text_of_tokens  # noqa: E402
from nbinspect import export  # noqa: E402

SIZES = (128, 512)


def main():
    model, tokenizer = nbinspect.load(device="cpu")
    runtime = len((export.STATIC / "export_runtime.js").read_bytes())
    views = {
        "attention": nbinspect.attention,
        "neurons": nbinspect.neurons,
        "gradients": nbinspect.gradient_flow,
        "dashboard": nbinspect.inspect,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for n in SIZES:
            text = text_of_tokens(tokenizer, n)
            for name, make in views.items():
                view = make(model, tokenizer, text)
                size = export.save(view, Path(tmp) / f"{name}.html").stat().st_size
                data, code = export.payload_bytes(view)
                report(f"export_{name}_file_bytes_{n}", size, "bytes")
                report(f"export_{name}_payload_bytes_{n}", data + code + runtime, "bytes")
                report(f"export_{name}_ratio_{n}", size / (data + code + runtime), "x")


if __name__ == "__main__":
    main()
