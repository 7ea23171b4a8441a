"""Emit ONNX: torch.onnx (dynamo) export of a rewritten graph, with our op's translation.

    gptq_export::quant_linear(x, qweight, scales, qzeros, g_idx, bias, K, N, bits, group_size)
        -> gptq_export.QuantLinear(x, qweight, scales, qzeros, g_idx, bias) {K, N, bits, group_size}

Quantization settings and per-layer results go to the model's metadata_props (keys below). An
optional ONNX -> ONNX pass (`passes/onnx_formats.py`: the `ort` and `qdq` formats) runs on the
in-memory model before it is saved. The file is written to a temporary folder beside the target
and renamed into place, so a failed export leaves no partial output. Models over 2 GB keep their
weights in `<name>.data`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxscript
import torch
from torch import fx

from .config import DOMAIN
from .errors import ExportError
from .metadata import META_PREFIX, encode_metadata, read_metadata  # noqa: F401  (re-exported)
from .ops import quant_linear_target

OP_TYPE = "QuantLinear"
#: Default ONNX opset: 23 has RMSNormalization, RotaryEmbedding and Attention, so the exporter emits
#: one node where opset 21 needs a dozen (measured: half the nodes of a Llama decoder, ~2x less
#: non-MatMul time per token on the CPU); onnxruntime >= 1.23 runs it. 21 is the lowest we support
#: (blocked DequantizeLinear for the qdq format) for older runtimes.
OPSET = 23
SUPPORTED_OPSETS = (21, 22, 23)
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of weights above which they go to `<name>.data`

_custom_opset = onnxscript.values.Opset(DOMAIN, 1)


def register_onnx_schema() -> None:
    """Register the ONNX schema of gptq_export.QuantLinear (the exporter needs one); idempotent."""
    if onnx.defs.has(OP_TYPE, DOMAIN):
        return
    P = onnx.defs.OpSchema.FormalParameter
    A = onnx.defs.OpSchema.Attribute
    INT = onnx.defs.OpSchema.AttrType.INT
    schema = onnx.defs.OpSchema(
        OP_TYPE,
        DOMAIN,
        1,
        doc="y[..., N] = x[..., K] @ dequant(qweight, scales, qzeros, g_idx) + bias (bias of size 0 = none); "
        "packed layout: gptq_export.kernels.reference",
        inputs=[
            P("x", "T"),
            P("qweight", "tensor(int32)"),
            P("scales", "tensor(float)"),
            P("qzeros", "tensor(int32)"),
            P("g_idx", "tensor(int32)"),
            P("bias", "T"),
        ],
        outputs=[P("y", "T")],
        type_constraints=[("T", ["tensor(float)"], "activations")],
        attributes=[A("K", INT, "in features"), A("N", INT, "out features"), A("bits", INT, "code width"),
                    A("group_size", INT, "group size along K")],
    )
    onnx.defs.register_schema(schema)


def _translate_quant_linear(
    x, qweight, scales, qzeros, g_idx, bias, in_features: int, out_features: int, bits: int, group_size: int
):
    return _custom_opset.QuantLinear(
        x, qweight, scales, qzeros, g_idx, bias, K=in_features, N=out_features, bits=bits, group_size=group_size
    )


def translation_table() -> dict:
    register_onnx_schema()
    return {quant_linear_target(): _translate_quant_linear}


@contextlib.contextmanager
def _quiet_exporter():
    """Keep torch.onnx's progress prints and warnings out of our CLI output."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def build_onnx(
    gm: fx.GraphModule,
    example_inputs: tuple[torch.Tensor, ...],
    dynamic_shapes: tuple,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    metadata: dict[str, object],
    opset: int = OPSET,
) -> ir.Model:
    """torch.onnx (dynamo) export of gm at `opset`, in memory; metadata values are JSON-encoded unless strings."""
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset} is not supported; use one of {', '.join(map(str, SUPPORTED_OPSETS))}")
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                gm,
                example_inputs,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset,
                custom_translation_table=translation_table(),
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {str(exc).strip().splitlines()[0][:300]}") from exc
    program.model.metadata_props.update(
        encode_metadata(metadata)
    )
    return program.model


def rename_io_dims(model: ir.Model, names: dict[str, str]) -> ir.Model:
    """Rename symbolic dims of the graph inputs and outputs (e.g. `batch` -> `batch_size`), in place."""
    for value in (*model.graph.inputs, *model.graph.outputs):
        if value.shape is None:
            continue
        dims = [ir.SymbolicDim(names.get(d.value, d.value)) if isinstance(d, ir.SymbolicDim) else d
                for d in value.shape.dims]
        value.shape = ir.Shape(dims)
    return model


def check_output_path(path: str | os.PathLike) -> None:
    """Fail early (before any long work) if `path` cannot be written; creates nothing."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise ExportError(f"output {path} should end in .onnx; pass -o NAME.onnx")
    if path.is_dir():
        raise ExportError(f"output {path} is a directory; give a file name such as {path / 'model.onnx'}")
    ancestor = path.parent.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ExportError(f"cannot write to {path.parent}: {ancestor} is a file; choose a writable -o")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ExportError(f"cannot write to {ancestor}: {reason}; choose a writable -o") from exc


def weight_bytes(model: ir.Model) -> int:
    """Bytes of the model's initializers (external ones included)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save_model(model: ir.Model, path: str | os.PathLike, external: bool | None = None) -> Path:
    """Write `model` to `path` atomically (temporary folder beside it, onnx.checker, rename).

    external: keep the weights in `<name>.data`; None = when they pass EXTERNAL_DATA_THRESHOLD.
    """
    path = Path(path)
    if external is None:
        external = weight_bytes(model) > EXTERNAL_DATA_THRESHOLD
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=".gptq-export-", dir=path.parent))
    except OSError as exc:
        raise ExportError(f"cannot write to {path.parent}: {exc.strerror}; choose a writable -o") from exc
    try:
        tmp = tmpdir / path.name
        with _quiet_exporter():
            ir.save(model, tmp, external_data=f"{path.name}.data" if external else None)
        try:
            onnx.checker.check_model(str(tmp), full_check=False)
        except Exception as exc:
            raise ExportError(f"the exported model fails onnx.checker: {str(exc).splitlines()[0][:300]}") from exc
        for extra in sorted(tmpdir.iterdir()):
            if extra != tmp:
                os.replace(extra, path.parent / extra.name)
        os.replace(tmp, path)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror}; choose a writable -o") from exc
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path
