"""gptq-export: GPTQ-quantize any torch.export-able transformer and write low-bit ONNX.

    import gptq_export as gx
    gx.export("./my-hf-model", gx.QuantConfig(bits=4), "out/model.onnx")
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import DOMAIN, CalibConfig, Format, Method, QuantConfig  # noqa: E402
from .errors import GptqExportError  # noqa: E402


def __getattr__(name: str):
    # Heavy imports (torch.onnx, transformers) only when the API is used.
    if name in ("export", "export_float", "ExportResult"):
        from . import api

        return getattr(api, name)
    if name in ("generate", "Decoder", "Sampling"):
        from . import decode

        return getattr(decode, name)
    raise AttributeError(f"module 'gptq_export' has no attribute {name!r}")


__all__ = ["DOMAIN", "CalibConfig", "Decoder", "ExportResult", "Format", "GptqExportError", "Method", "QuantConfig",
           "Sampling", "export", "export_float", "generate", "__version__"]
