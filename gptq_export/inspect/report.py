"""The gptq-inspect report: a JSON-able dict (schema in README, `SCHEMA_VERSION`) and its text form.

    OnnxFile -> build_report() -> dict -> format_text() -> str

Sizes add up: ``quantized_bytes + float_weight_bytes + other_bytes == total_bytes`` (file plus
external data), where a tensor shared by several layers (q/k/v's g_idx, an act-order perm) is
counted once, in the first layer that uses it.
"""

from __future__ import annotations

import collections
import math
import numbers

from onnx import TensorProto

from ..metadata import read_metadata
from .reader import (
    _FLOAT_TYPES,
    InspectError,
    OnnxFile,
    QuantNode,
    TensorReader,
    clean,
    dtype_name,
    find_float_linears,
    find_quant_nodes,
    numel,
    payload_bytes,
)

SCHEMA_VERSION = 1


def _num(value) -> float | None:
    """A finite float from metadata, else None (metadata of a damaged file may hold anything)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _int(value) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _jsonable(value, depth: int = 0):
    """Metadata value made safe for JSON and text: strings cleaned, NaN/inf -> None, depth bounded."""
    if depth > 20:
        return None
    if isinstance(value, str):
        return clean(value, 2000)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {clean(k, 200): _jsonable(v, depth + 1) for k, v in value.items()}
    return clean(value)


def _value_info(v) -> dict:
    t = v.type.tensor_type if v.type.HasField("tensor_type") else None
    shape: list | None = None
    if t is not None and t.HasField("shape"):
        shape = [int(d.dim_value) if d.HasField("dim_value") else (clean(d.dim_param) if d.dim_param else None)
                 for d in t.shape.dim]
    return {"name": clean(v.name), "dtype": dtype_name(t.elem_type) if t is not None else "non-tensor",
            "shape": shape}


def _meta_layers(meta: dict) -> dict[str, dict]:
    layers = meta.get("layers")
    out: dict[str, dict] = {}
    if isinstance(layers, list):
        for d in layers:
            if isinstance(d, dict) and isinstance(d.get("name"), str):
                out[d["name"]] = d
    return out


def _meta_skipped(meta: dict) -> list[dict]:
    skipped = meta.get("skipped")
    out = []
    if isinstance(skipped, list):
        for d in skipped:
            if isinstance(d, dict) and isinstance(d.get("name"), str):
                out.append({"name": clean(d["name"]), "reason": clean(d.get("reason", "no reason recorded"))})
    return out


def _config_group(meta: dict) -> int | None:
    cfg = meta.get("config")
    return _int(cfg.get("group_size")) if isinstance(cfg, dict) else None


def _fp16_bytes(t: TensorProto) -> int:
    """Bytes of this initializer in an FP16 model: floats at 2 bytes, everything else as stored."""
    return 2 * numel(t) if t.data_type in _FLOAT_TYPES else payload_bytes(t)


def _external_past_end(f: OnnxFile) -> list[str]:
    """Names of external tensors whose offset + length passes the end of their data file."""
    out = []
    for t in f.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            ext = {e.key: e.value for e in t.external_data}
            try:
                end = int(ext.get("offset", 0)) + int(ext.get("length", 0))
            except ValueError:
                out.append(t.name)
                continue
            if end > f.external_files.get(ext.get("location", ""), 0):
                out.append(t.name)
    return out


def analyse(f: OnnxFile) -> tuple[dict, list[QuantNode], TensorReader]:
    """(metadata, quantized nodes, reader) of an opened file."""
    meta = read_metadata(f.model)
    reader = TensorReader(f)
    nodes = find_quant_nodes(f, reader, _meta_layers(meta).keys(), _config_group(meta))
    return meta, nodes, reader


def build_report(f: OnnxFile) -> dict:
    """The full report of an opened file (see README: gptq-inspect JSON schema)."""
    meta, qnodes, reader = analyse(f)
    meta_layers = _meta_layers(meta)
    owned: set[str] = set()
    rows = []
    warnings: list[str] = []
    quant_fp16 = 0
    for q in qnodes:
        layer_bytes = 0
        for tname in q.tensors.values():
            if tname not in owned:
                owned.add(tname)
                layer_bytes += payload_bytes(reader.init[tname])
        bias = "bias" in q.tensors
        quant_fp16 += 2 * (q.K * q.N + (q.N if bias else 0))
        m = meta_layers.get(q.name, {})
        row = {
            "name": clean(q.name), "node": clean(q.node), "op": q.op, "format": q.format, "K": q.K, "N": q.N,
            "bits": q.bits, "group_size": q.group_size, "block_size": q.block_size, "act_order": q.act_order,
            "sym": q.sym, "bias": bias, "bytes": layer_bytes, "bits_per_weight": 8 * layer_bytes / max(q.K * q.N, 1),
            "loss": _num(m.get("loss")), "rtn_loss": _num(m.get("rtn_loss")), "percdamp": _num(m.get("percdamp")),
            "in_metadata": bool(m), "input": clean(q.x), "output": clean(q.y),
            "nodes": [clean(n) for n in q.nodes], "tensors": {k: clean(v) for k, v in q.tensors.items()},
        }
        rows.append(row)
        if m and (_int(m.get("K")), _int(m.get("N"))) != (q.K, q.N):
            warnings.append(f"layer {clean(q.name)}: graph has K x N = {q.K} x {q.N}, metadata says "
                            f"{clean(m.get('K'))} x {clean(m.get('N'))}")
        warnings.extend(f"layer {clean(q.name)}: {clean(p)}" for p in q.problems)
    names = collections.Counter(r["name"] for r in rows)
    warnings.extend(f"layer {n} appears in {c} quantized nodes" for n, c in names.items() if c > 1)
    if meta_layers:
        missing = [n for n in meta_layers if n not in names]
        if missing:
            warnings.append(f"{len(missing)} layer(s) of the metadata have no quantized node: "
                            f"{', '.join(clean(n) for n in missing[:5])}")
        extra = [r["name"] for r in rows if not r["in_metadata"]]
        if extra:
            warnings.append(f"{len(extra)} quantized node(s) are not in the metadata: {', '.join(extra[:5])}")

    inits = list(f.graph.initializer)
    quantized_bytes = sum(r["bytes"] for r in rows)
    float_bytes = sum(payload_bytes(t) for t in inits if t.name not in owned)
    total = f.total_bytes
    other = total - quantized_bytes - float_bytes
    fp16 = quant_fp16 + sum(_fp16_bytes(t) for t in inits if t.name not in owned) + max(other, 0)
    if other < 0:
        warnings.append(f"tensors declare {quantized_bytes + float_bytes} bytes but the file and its external data "
                        f"hold {total}; the file is truncated")

    past_end = _external_past_end(f)
    if past_end:
        warnings.append(f"{len(past_end)} tensor(s) point past the end of their external data file (e.g. "
                        f"{clean(past_end[0])}); the data file is truncated")

    formats = sorted({r["format"] for r in rows})
    fmt = "float" if not formats else formats[0] if len(formats) == 1 else "mixed"
    meta_fmt = meta.get("format")
    if isinstance(meta_fmt, str) and rows and meta_fmt != fmt:
        warnings.append(f"metadata says format {clean(meta_fmt)}, the graph holds {fmt}")

    skipped = _meta_skipped(meta)
    if not skipped and "skipped" not in meta:
        skipped = [{"name": clean(fl.node), "reason": "float MatMul/Gemm with a constant weight (no gptq-export "
                    "metadata names it)", "K": fl.K, "N": fl.N} for fl in find_float_linears(f)]
    model = f.model
    return {
        "schema_version": SCHEMA_VERSION,
        "file": clean(f.path, 1000),
        "genai_config": clean(f.genai_config, 1000) if f.genai_config else None,
        "format": fmt,
        "ir_version": int(model.ir_version),
        "producer": {"name": clean(model.producer_name), "version": clean(model.producer_version)},
        "opsets": {clean(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "inputs": [_value_info(v) for v in f.graph.input if v.name not in reader.init],
        "outputs": [_value_info(v) for v in f.graph.output],
        "node_count": len(f.graph.node),
        "initializer_count": len(inits),
        "op_types": dict(collections.Counter(
            clean(f"{n.domain + '.' if n.domain else ''}{n.op_type}") for n in f.graph.node).most_common()),
        "sizes": {
            "file_bytes": f.file_bytes,
            "external_data": [{"file": clean(k), "bytes": v} for k, v in f.external_files.items()],
            "external_data_bytes": sum(f.external_files.values()),
            "total_bytes": total,
            "quantized_bytes": quantized_bytes,
            "float_weight_bytes": float_bytes,
            "other_bytes": other,
            "fp16_bytes": fp16,
            "compression_vs_fp16": fp16 / total if total else None,
        },
        "metadata": {clean(k): _jsonable(v) for k, v in meta.items() if k not in ("layers", "skipped")},
        "layers": rows,
        "quantized_nodes": [{"node": r["node"], "op": r["op"], "K": r["K"], "N": r["N"], "bits": r["bits"],
                             "group_size": r["group_size"], "block_size": r["block_size"], "layer": r["name"]}
                            for r in rows],
        "float_linears": skipped,
        "warnings": warnings,
    }


# --------------------------------------------------------------------------- text


def human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _shape(v: dict) -> str:
    dims = "?" if v["shape"] is None else ", ".join("?" if d is None else str(d) for d in v["shape"])
    return f"{v['name']} {v['dtype']}[{dims}]"


def _setting(row: dict) -> tuple[str, str, str]:
    group = "-" if row["group_size"] is None else "chan" if row["group_size"] == -1 else str(row["group_size"])
    sym = "?" if row["sym"] is None else "sym" if row["sym"] else "asym"
    return group, "yes" if row["act_order"] else "no", sym


def format_text(rep: dict) -> str:
    """The report as the console shows it."""
    s = rep["sizes"]
    lines = [f"{rep['file']}  ({rep['format']} format)"]
    if rep["genai_config"]:
        lines.append(f"genai config: {rep['genai_config']}")
    lines.append(f"opsets: {', '.join(f'{k} {v}' for k, v in rep['opsets'].items())}; ir {rep['ir_version']}; "
                 f"{rep['node_count']} nodes, {rep['initializer_count']} initializers")
    lines.append("inputs:  " + "; ".join(_shape(v) for v in rep["inputs"]))
    lines.append("outputs: " + "; ".join(_shape(v) for v in rep["outputs"]))
    lines.append("ops: " + ", ".join(f"{k} x{v}" for k, v in rep["op_types"].items()))
    ext = f" + {human(s['external_data_bytes'])} external data" if s["external_data"] else ""
    ratio = f"{s['compression_vs_fp16']:.2f}x" if s["compression_vs_fp16"] else "-"
    lines.append(f"size: {human(s['file_bytes'])} file{ext} = {human(s['total_bytes'])}: quantized "
                 f"{human(s['quantized_bytes'])}, float weights {human(s['float_weight_bytes'])}, graph and "
                 f"metadata {human(s['other_bytes'])}; as FP16 {human(s['fp16_bytes'])} (compression {ratio})")
    meta = rep["metadata"]
    if isinstance(meta.get("config"), dict):
        c = meta["config"]
        lines.append("quantization: " + ", ".join(f"{k}={c[k]}" for k in ("bits", "group_size", "sym", "act_order",
                                                                           "static_groups", "method", "format")
                                                  if k in c))
    if isinstance(meta.get("calibration"), dict):
        cal = meta["calibration"]
        lines.append(f"calibration: {cal.get('nsamples')} x {cal.get('seqlen')} tokens, seed {cal.get('seed')}, "
                     f"text {cal.get('text')}")
    rows = rep["layers"]
    if rows:
        width = max(12, min(60, max(len(r["name"]) for r in rows)))
        lines.append("")
        lines.append(f"{'layer':<{width}} {'K x N':>11} {'bits':>4} {'group':>5} {'act':>3} {'sym':>4} {'fmt':>4} "
                     f"{'bytes':>9} {'gptq loss':>10} {'rtn loss':>10}")
        for r in rows:
            group, act, sym = _setting(r)
            lines.append(f"{r['name']:<{width}} {str(r['K']) + 'x' + str(r['N']):>11} {r['bits']:>4} {group:>5} "
                         f"{act:>3} {sym:>4} {r['format']:>4} {human(r['bytes']):>9} {_g(r['loss']):>10} "
                         f"{_g(r['rtn_loss']):>10}")
        losses = [(r["loss"], r["rtn_loss"]) for r in rows if r["loss"] is not None and r["rtn_loss"] is not None]
        if losses:
            gl, rl = sum(a for a, _ in losses), sum(b for _, b in losses)
            lines.append(f"{len(rows)} quantized layers; total loss {gl:.4g} (gptq) vs {rl:.4g} (rtn)")
        else:
            lines.append(f"{len(rows)} quantized layers")
    else:
        lines.append("no quantized layer")
    for d in rep["float_linears"]:
        lines.append(f"left in float: {d['name']}: {d['reason']}")
    for w in rep["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def find_row(rep: dict, name: str) -> dict:
    """The table row of layer `name` (exact, else a unique suffix or substring match)."""
    rows = rep["layers"]
    for r in rows:
        if r["name"] == name or r["node"] == name:
            return r
    hits = [r for r in rows if r["name"].endswith("." + name) or name in r["name"]]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        sample = ", ".join(r["name"] for r in rows[:3])
        raise InspectError(f"no quantized layer named {clean(name)!r}" + (f"; layers are e.g. {sample}" if sample
                                                                           else "; the file has none"))
    raise InspectError(f"{clean(name)!r} matches {len(hits)} layers ({', '.join(r['name'] for r in hits[:4])}, ...); "
                       "give the full name")
