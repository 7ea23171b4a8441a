"""Error hierarchy. Every message says what to do next; the CLI prints it on one line and exits 2."""

from __future__ import annotations


class GptqExportError(Exception):
    """Base class of every error the exporter raises on purpose (bad input, unsupported model...)."""

    exit_code = 2


class ConfigError(GptqExportError):
    """A quantization or calibration setting is invalid."""


class ModelLoadError(GptqExportError):
    """The model source cannot be found or loaded."""


class CalibrationError(GptqExportError):
    """Calibration text or tokens are missing or too short."""


class TraceError(GptqExportError):
    """torch.export could not trace the model, or the graph has nothing to quantize."""


class ExportError(GptqExportError):
    """The ONNX file could not be written."""


class RuntimeSetupError(GptqExportError):
    """onnxruntime or its custom-op library is missing or cannot run the model."""
