"""gptq-inspect: what an exported file contains (summary, quantized layers, float Linears)."""

from __future__ import annotations

from ._legacy import InspectError, load_report, main

__all__ = ["InspectError", "load_report", "main"]
