"""gptq-inspect: what an exported file contains (summary, quantized layers, float Linears)."""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from ..config import DOMAIN
from ..emit import OP_TYPE, read_metadata
from ..errors import GptqExportError


class InspectError(GptqExportError):
    """The file is missing or is not a readable ONNX model."""


def load_report(path: str | Path) -> dict:
    """A JSON-able description of the model at `path` (weights are not loaded)."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise InspectError(f"{path} does not exist; pass an .onnx file written by gptq-export")
    if not path.is_file():
        raise InspectError(f"{path} is not a file; pass an .onnx file written by gptq-export")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InspectError(f"{path} is not a readable ONNX model ({type(exc).__name__}); re-export it") from exc
    meta = read_metadata(model)
    layers = {d["name"]: d for d in meta.get("layers", []) if isinstance(d, dict) and "name" in d}
    nodes = []
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            attrs = {a.name: a.i for a in node.attribute}
            nodes.append({"node": node.name, "inputs": list(node.input), **attrs})
    return {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "op_types": dict(collections.Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in model.graph.node)),
        "quantized_nodes": nodes,
        "metadata": {k: v for k, v in meta.items() if k != "layers"},
        "layers": list(layers.values()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gptq-inspect", description="Describe a model written by gptq-export.")
    p.add_argument("model", help=".onnx file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    try:
        rep = load_report(args.model)
    except GptqExportError as exc:
        print(f"gptq-inspect: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    print(f"{rep['file']}: {rep['file_bytes'] / 1e6:.1f} MB, opsets {rep['opsets']}")
    print(f"inputs {rep['inputs']} -> outputs {rep['outputs']}")
    print("ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(rep["op_types"].items(), key=lambda kv: -kv[1])))
    cfg = rep["metadata"].get("config")
    if cfg:
        print(f"quantization: {json.dumps(cfg)}")
    print(f"{'layer':<48} {'K':>6} {'N':>6} {'error':>10} {'rtn error':>10}")
    for d in rep["layers"]:
        print(f"{d['name']:<48} {d['K']:>6} {d['N']:>6} {d['loss']:>10.4g} {d['rtn_loss']:>10.4g}")
    for d in rep["metadata"].get("skipped", []):
        print(f"left in float: {d['name']}: {d['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
