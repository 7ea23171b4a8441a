"""gptq-inspect: what an exported file contains, and how much accuracy its quantization costs.

    reader   parse the file (weights stay on disk), find quantized Linears of every format
    report   the summary / per-layer table as a JSON-able dict (schema: README) and as text
    layer    decode one layer's weights: --layer details, --diff
    diff     per-layer differences between two files
    compare  perplexity and per-layer activation SNR against the float model (onnxruntime)
    html     self-contained HTML report (inline SVG), PNG through headless Chromium
    cli      the command line (the only module that prints)
"""

from __future__ import annotations

import os

from .cli import main
from .reader import InspectError, load_onnx
from .report import SCHEMA_VERSION, build_report


def load_report(path: str | os.PathLike) -> dict:
    """The report of the model at `path` (.onnx file or folder with model.onnx); weights are not loaded."""
    return build_report(load_onnx(path))


__all__ = ["SCHEMA_VERSION", "InspectError", "build_report", "load_onnx", "load_report", "main"]
