"""Python API: `export(model, config, output)` runs trace -> plan -> calibrate/GPTQ -> pack -> rewrite -> emit.

    emit: rewritten graph -> `gptq` ONNX model -> (format ort | qdq) stock onnxruntime model -> file
    kv_cache: the same packed weights rewritten into the traced KV-cache decoder -> file or genai folder
    convert(gptq file) -> ort | qdq file (same weights, no calibration)
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx

from . import __version__
from .config import DOMAIN, CalibConfig, Format, QuantConfig
from .data import calibration_windows
from .emit import OPSET, build_onnx, check_output_path, rename_io_dims, save_model
from .errors import CalibrationError, ExportError, TraceError
from .genai import check_folder_output, genai_config, is_folder_output, write_folder
from .models import LoadedModel, ModelKind, load_model
from .pack import PackedLinear, pack_linear
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
    graph_module: fx.GraphModule | None = field(default=None, repr=False)  # the rewritten torch graph (no cache)
    packed: dict[str, PackedLinear] = field(default_factory=dict, repr=False)  # for quant_linear_module.swap_linears
    kv_cache: bool = False  # the file is the KV-cache decoder

    def summary(self) -> dict:
        """JSON-able summary: output, format, settings, per-layer errors, sizes, timings."""
        n = len(self.reports)
        return {
            "output": str(self.path),
            "model": self.model,
            "format": self.config.resolved_format().value,
            "config": self.config.to_dict(),
            "calibration": _calib_dict(self.calib, self.calib_shape),
            "layers_quantized": n,
            "layers_skipped": _skipped_dicts(self.skipped),
            "mean_loss": sum(r.loss for r in self.reports) / n if n else None,
            "mean_rtn_loss": sum(r.rtn_loss for r in self.reports) / n if n else None,
            "layers": _layer_dicts(self.reports),
            "kv_cache": self.kv_cache,
            "float_bytes": self.float_bytes,
            "file_bytes": self.file_bytes,
            "seconds": self.seconds,
        }


def _calib_dict(calib: CalibConfig, shape: tuple[int, int]) -> dict:
    return {"nsamples": shape[0], "seqlen": shape[1], "seed": calib.seed, "text": calib.text or "packaged:c4"}


def _layer_dicts(reports: list[LayerReport]) -> list[dict]:
    return [
        {"name": r.name, "K": r.in_features, "N": r.out_features, "bits": r.bits, "loss": r.loss,
         "rtn_loss": r.rtn_loss, "percdamp": r.percdamp}
        for r in reports
    ]


def _skipped_dicts(skipped: list[tuple[str, str]]) -> list[dict]:
    return [{"name": n, "reason": r} for n, r in skipped]


def _file_bytes(path: Path) -> int:
    """The .onnx file plus its external data; for a genai folder, every file in it."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
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


def _dim_names(model, kv: bool) -> dict[str, str]:
    """Traced dim name -> ONNX I/O dim name: batch/seq, or onnxruntime-genai's names for a KV decoder."""
    ins = model.graph.inputs

    def name(value, axis: int) -> str:
        return str(value.shape[axis])

    if not kv:
        return {name(ins[0], 0): "batch", name(ins[0], 1): "seq"}
    total = "total_sequence_length"
    names = {name(ins[0], 0): "batch_size", name(ins[0], 1): "sequence_length", name(ins[3], 2):
             "past_sequence_length", name(ins[1], 1): total}
    names.update({name(out, 2): total for out in model.graph.outputs[1:]})
    return names


def _resolve_kv(loaded: LoadedModel, output, kv_cache: bool | None) -> bool:
    """Whether to write the KV-cache decoder: asked for, or implied by a folder output."""
    folder = is_folder_output(output)
    if kv_cache is None:
        kv_cache = folder
    if folder and not kv_cache:
        raise ExportError(f"output {output} is a folder (an onnxruntime-genai model), which needs the KV-cache "
                          "decoder: drop --no-kv-cache or write a .onnx file")
    if kv_cache and loaded.kind is not ModelKind.CAUSAL_LM:
        where = "a genai folder" if folder else "--kv-cache"
        raise ExportError(f"{loaded.name} is a {loaded.kind} model; {where} needs a causal LM: write a .onnx file "
                          "without --kv-cache")
    return kv_cache


def _check_output(output, fmt: Format | None = None) -> None:
    """Fail before any long work if `output` cannot be written (or cannot hold format `fmt`)."""
    if not is_folder_output(output):
        check_output_path(output)
        return
    if fmt is Format.GPTQ:
        raise ExportError("onnxruntime-genai cannot run the gptq custom op; use --format ort or qdq for a genai "
                          "folder (bits 2/4/8), or write the gptq format to a .onnx file")
    check_folder_output(output)


def _emit(traced: TracedModel, loaded: LoadedModel, output, metadata: dict, config: QuantConfig | None = None,
          opset: int = OPSET) -> Path:
    """Write the traced (rewritten) graph, converted to config's format when it is not gptq: a .onnx file,
    or an onnxruntime-genai folder when `output` is not a .onnx name."""
    fmt = config.resolved_format() if config is not None else None
    folder = is_folder_output(output)  # export/export_float checked `output` before any long work
    if traced.kv is not None:
        metadata = {**metadata, "kv_cache": dataclasses.asdict(traced.kv)}
    model = build_onnx(
        traced.graph_module,
        traced.example_inputs(batch=2, seq=8, vocab=loaded.vocab_size or 2),
        traced.dynamic_shapes(),
        traced.input_names,
        traced.output_names,
        metadata,
        opset,
    )
    rename_io_dims(model, _dim_names(model, traced.kv is not None))
    if fmt is not None and fmt is not Format.GPTQ:
        from .passes.onnx_formats import convert_format

        model = convert_format(model, fmt, config.accuracy_level)
    if folder:
        assert traced.kv is not None
        cfg = genai_config(loaded.model, traced.kv, traced.max_seq)
        return write_folder(model, output, cfg, loaded.tokenizer)
    return save_model(model, output)


def export(
    model: str | os.PathLike | torch.nn.Module | None,
    config: QuantConfig | None = None,
    output: str | os.PathLike = "model.onnx",
    calib: CalibConfig | None = None,
    *,
    tokenizer=None,
    calib_tokens: torch.Tensor | None = None,
    kv_cache: bool | None = None,
    opset: int = OPSET,
    progress: ProgressFn | None = None,
    status: StatusFn | None = None,
) -> ExportResult:
    """Quantize every Linear of `model` with GPTQ and write a low-bit ONNX model to `output`.

    model: a Hugging Face folder, an nn.Module, or None for the embedded default model.
    output: a .onnx file, or a folder (any other name): an onnxruntime-genai model folder.
    calib_tokens: optional [nsamples, seqlen] token ids instead of tokenizing `calib.text`.
    kv_cache: write the decoder with past/present key-values (causal LMs); None = only for a folder.
    opset: ONNX opset of the file (default 23 needs onnxruntime >= 1.23; 21 for older runtimes).
    progress(report, i, n) is called after each layer; status(msg) at each stage.
    """
    config = config or QuantConfig()
    config = dataclasses.replace(config, format=config.resolved_format())  # auto -> what is written
    calib = calib or CalibConfig()
    say = status or (lambda _msg: None)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    _check_output(output, config.format)

    loaded = load_model(model, tokenizer, on_status=say)
    kv_cache = _resolve_kv(loaded, output, kv_cache)
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
    target = traced
    if kv_cache:
        say("tracing the KV-cache decoder")
        target = _kv_decoder(loaded, plan, packed, config)
    say(f"writing ONNX ({config.format.value} format{', KV cache' if kv_cache else ''}) to {output}")
    metadata = {
        "version": __version__,
        "model": loaded.name,
        "format": config.format.value,
        "config": config.to_dict(),
        "calibration": _calib_dict(calib, shape),
        "layers": _layer_dicts(result.reports),
        "skipped": _skipped_dicts(plan.skipped),
    }
    path = _emit(target, loaded, output, metadata, config, opset)
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
        packed=packed,
        kv_cache=kv_cache,
    )


def _kv_decoder(loaded: LoadedModel, plan, packed: dict[str, PackedLinear], config: QuantConfig) -> TracedModel:
    """Trace the KV-cache decoder and rewrite its Linears with the already packed weights."""
    kv = trace_model(loaded, kv_cache=True)
    gm = canonicalize_linears(kv.graph_module)
    kv_plan = plan_linears(gm, loaded.model, config)
    names, kv_names = {s.name for s in plan.sites}, {s.name for s in kv_plan.sites}
    if names != kv_names:
        diff = sorted(names ^ kv_names)[:3]
        raise TraceError(f"the KV-cache decoder calls other Linears than the calibration graph ({', '.join(diff)}); "
                         "export without --kv-cache")
    rewrite_quantized_linears(gm, kv_plan, packed)
    kv.graph_module = gm
    return kv


def export_float(
    model: str | os.PathLike | torch.nn.Module | None,
    output: str | os.PathLike,
    *,
    kv_cache: bool | None = None,
    opset: int = OPSET,
    status: StatusFn | None = None,
) -> Path:
    """Export the unquantized model through the same trace/emit path (the FP baseline); `output`,
    `kv_cache` and `opset` as in `export`."""
    _check_output(output)
    loaded = load_model(model, on_status=status)
    traced = trace_model(loaded, kv_cache=_resolve_kv(loaded, output, kv_cache))
    return _emit(traced, loaded, output, {"version": __version__, "model": loaded.name, "config": None}, None, opset)


def convert(
    source: str | os.PathLike, output: str | os.PathLike, format: Format | str, accuracy_level: int = 4
) -> Path:
    """Rewrite a `gptq`-format file written by `export` into `format` (ort or qdq) at `output`.

    Same quantized weights, no calibration: the ONNX -> ONNX pass of `passes/onnx_formats.py`.
    External weights are read lazily; the output keeps them external when the source had them.
    """
    import onnx_ir as ir

    from .passes.onnx_formats import convert_format

    fmt = Format(format)
    check_output_path(output)
    source = Path(source)
    if not source.is_file():
        raise ExportError(f"{source} does not exist; pass a .onnx file written by gptq-export --format gptq")
    try:
        model = ir.load(source)
    except Exception as exc:
        raise ExportError(f"{source} is not a readable ONNX model ({type(exc).__name__}); re-export it") from exc
    if DOMAIN not in model.opset_imports:
        raise ExportError(f"{source} has no gptq_export.QuantLinear node; pass a file written with --format gptq")
    external = source.with_name(source.name + ".data").exists()
    model = convert_format(model, fmt, accuracy_level)
    return save_model(model, output, external=external or None)
