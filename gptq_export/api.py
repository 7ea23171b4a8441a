"""Python API: `export(model, config, output)` runs trace -> plan -> calibrate/GPTQ -> pack -> rewrite -> emit."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx

from . import __version__
from .config import CalibConfig, QuantConfig
from .data import calibration_windows
from .emit import check_output_path, export_onnx
from .errors import CalibrationError, TraceError
from .models import LoadedModel, ModelKind, load_model
from .pack import pack_linear
from .passes.canonicalize import canonicalize_linears
from .passes.gptq_pass import LayerReport, ProgressFn, quantize_graph
from .passes.linears import plan_linears
from .passes.rewrite import rewrite_quantized_linears
from .passes.trace import TracedModel, trace_model

StatusFn = Callable[[str], None]


@dataclass
class ExportResult:
    """What an export produced; `summary()` is the CLI's --json document."""

    path: Path
    model: str
    config: QuantConfig
    calib: CalibConfig
    calib_shape: tuple[int, int]
    reports: list[LayerReport]
    skipped: list[tuple[str, str]]
    float_bytes: int  # fp32 bytes of the model's parameters
    file_bytes: int  # bytes of the ONNX file (+ external data)
    seconds: dict[str, float] = field(default_factory=dict)
    graph_module: fx.GraphModule | None = field(default=None, repr=False)  # the rewritten torch graph

    def summary(self) -> dict:
        n = len(self.reports)
        return {
            "output": str(self.path),
            "model": self.model,
            "config": self.config.to_dict(),
            "calibration": _calib_dict(self.calib, self.calib_shape),
            "layers_quantized": n,
            "layers_skipped": _skipped_dicts(self.skipped),
            "mean_loss": sum(r.loss for r in self.reports) / n if n else None,
            "mean_rtn_loss": sum(r.rtn_loss for r in self.reports) / n if n else None,
            "layers": _layer_dicts(self.reports),
            "float_bytes": self.float_bytes,
            "file_bytes": self.file_bytes,
            "seconds": self.seconds,
        }


def _calib_dict(calib: CalibConfig, shape: tuple[int, int]) -> dict:
    return {"nsamples": shape[0], "seqlen": shape[1], "seed": calib.seed, "text": calib.text or "packaged:c4"}


def _layer_dicts(reports: list[LayerReport]) -> list[dict]:
    return [
        {"name": r.name, "K": r.in_features, "N": r.out_features, "loss": r.loss, "rtn_loss": r.rtn_loss,
         "percdamp": r.percdamp}
        for r in reports
    ]


def _skipped_dicts(skipped: list[tuple[str, str]]) -> list[dict]:
    return [{"name": n, "reason": r} for n, r in skipped]


def _file_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _float_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * 4
    return total


def calibration_inputs(loaded: LoadedModel, calib: CalibConfig, tokens: torch.Tensor | None = None):
    """The graph inputs for calibration: token windows (+ an all-ones mask for encoders)."""
    if tokens is None:
        tokens, _ = calibration_windows(loaded.tokenizer, calib, loaded.max_context)
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() != 2 or tokens.numel() == 0:
        raise CalibrationError(f"calibration tokens must be a non-empty [nsamples, seqlen] array, got {tuple(tokens.shape)}")
    if loaded.vocab_size and int(tokens.max()) >= loaded.vocab_size:
        raise CalibrationError(
            f"calibration token id {int(tokens.max())} is outside the model's vocabulary ({loaded.vocab_size}); "
            "use the model's own tokenizer"
        )
    return (tokens, torch.ones_like(tokens)) if loaded.kind is ModelKind.ENCODER else (tokens,)


def _emit(traced: TracedModel, loaded: LoadedModel, output, metadata: dict) -> Path:
    return export_onnx(
        traced.graph_module,
        traced.example_inputs(batch=2, seq=8, vocab=loaded.vocab_size or 2),
        traced.dynamic_shapes(),
        traced.input_names,
        traced.output_name,
        output,
        metadata,
    )


def export(
    model: str | os.PathLike | torch.nn.Module | None,
    config: QuantConfig | None = None,
    output: str | os.PathLike = "model.onnx",
    calib: CalibConfig | None = None,
    *,
    tokenizer=None,
    calib_tokens: torch.Tensor | None = None,
    progress: ProgressFn | None = None,
    status: StatusFn | None = None,
) -> ExportResult:
    """Quantize every Linear of `model` with GPTQ and write a low-bit ONNX model to `output`.

    model: a Hugging Face folder, an nn.Module, or None for the embedded default model.
    calib_tokens: optional [nsamples, seqlen] token ids instead of tokenizing `calib.text`.
    progress(report, i, n) is called after each layer; status(msg) at each stage.
    """
    config = config or QuantConfig()
    calib = calib or CalibConfig()
    say = status or (lambda _msg: None)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    check_output_path(output)

    loaded = load_model(model, tokenizer, on_status=say)
    times["load"] = time.perf_counter() - t0

    say(f"tracing {loaded.name} with torch.export")
    t = time.perf_counter()
    traced = trace_model(loaded)
    gm = canonicalize_linears(traced.graph_module)
    plan = plan_linears(gm, loaded.model, config)
    if not plan.sites:
        reasons = "; ".join(f"{n}: {r}" for n, r in plan.skipped[:3]) or "the graph has no aten.linear"
        raise TraceError(f"{loaded.name} has no Linear layer to quantize ({reasons}); check --skip or the model")
    for site in plan.sites:
        config.check_layer(site.name, site.in_features)
    times["trace"] = time.perf_counter() - t

    t = time.perf_counter()
    inputs = calibration_inputs(loaded, calib, calib_tokens)
    shape = (int(inputs[0].shape[0]), int(inputs[0].shape[1]))
    say(f"calibrating on {shape[0]} x {shape[1]} tokens ({config.method.value}, {config.bits}-bit, "
        f"group {config.group_size}); {len(plan.sites)} Linear layers")
    result = quantize_graph(gm, plan, inputs, config, progress)
    times["quantize"] = time.perf_counter() - t

    t = time.perf_counter()
    packed = {name: pack_linear(qw, config.group_size) for name, qw in result.weights.items()}
    rewrite_quantized_linears(gm, plan, packed)
    say(f"writing ONNX to {output}")
    metadata = {
        "version": __version__,
        "model": loaded.name,
        "config": config.to_dict(),
        "calibration": _calib_dict(calib, shape),
        "layers": _layer_dicts(result.reports),
        "skipped": _skipped_dicts(plan.skipped),
    }
    path = _emit(traced, loaded, output, metadata)
    times["emit"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    return ExportResult(
        path=path,
        model=loaded.name,
        config=config,
        calib=calib,
        calib_shape=shape,
        reports=result.reports,
        skipped=plan.skipped,
        float_bytes=_float_bytes(loaded.model),
        file_bytes=_file_bytes(path),
        seconds=times,
        graph_module=gm,
    )


def export_float(
    model: str | os.PathLike | torch.nn.Module | None, output: str | os.PathLike, *, status: StatusFn | None = None
) -> Path:
    """Export the unquantized model through the same trace/emit path (the FP baseline)."""
    check_output_path(output)
    loaded = load_model(model, on_status=status)
    traced = trace_model(loaded)
    return _emit(traced, loaded, output, {"version": __version__, "model": loaded.name, "config": None})
