"""Read an exported ONNX file without loading its weights, and find its quantized Linears.

    path (.onnx file or a folder holding model.onnx) -> OnnxFile (graph proto, no tensor data)
    OnnxFile -> [QuantNode]: every quantized Linear of the three formats, mapped to its module name

Formats recognised (see README "Formats"):

- ``gptq``: ``gptq_export.QuantLinear(x, qweight, scales, qzeros, g_idx, bias)``;
- ``ort``: ``com.microsoft.MatMulNBits(x', B, scales, zero_points?, g_idx?, bias?)``;
- ``qdq``: ``MatMul(x', DequantizeLinear(w_q, scale, zero_point?){block_size}) (+ Add bias)``;

with ``x' = Gather(x, perm, axis=-1)`` under act-order in ``ort``/``qdq``. Weights stay on disk:
`TensorReader` reads one tensor at a time (external data through its offset and length, checked
against the file) and only where a caller asks for it.

Every problem with the file raises `InspectError` (one line, says what to do).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from ..config import DOMAIN
from ..errors import GptqExportError

#: Same values as gptq_export.emit (not imported: emit pulls in torch, which slows the CLI down).
OP_TYPE = "QuantLinear"
MS_DOMAIN = "com.microsoft"
GENAI_CONFIG = "genai_config.json"

#: Bytes per element of the tensor types we may read or size (4-bit types: half a byte).
_ITEMSIZE = {
    TensorProto.FLOAT: 4, TensorProto.UINT8: 1, TensorProto.INT8: 1, TensorProto.UINT16: 2, TensorProto.INT16: 2,
    TensorProto.INT32: 4, TensorProto.INT64: 8, TensorProto.BOOL: 1, TensorProto.FLOAT16: 2, TensorProto.DOUBLE: 8,
    TensorProto.UINT32: 4, TensorProto.UINT64: 8, TensorProto.BFLOAT16: 2, TensorProto.FLOAT8E4M3FN: 1,
    TensorProto.FLOAT8E4M3FNUZ: 1, TensorProto.FLOAT8E5M2: 1, TensorProto.FLOAT8E5M2FNUZ: 1,
    TensorProto.UINT4: 0.5, TensorProto.INT4: 0.5,
}
_NUMPY = {
    TensorProto.FLOAT: np.float32, TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8,
    TensorProto.UINT16: np.uint16, TensorProto.INT16: np.int16, TensorProto.INT32: np.int32,
    TensorProto.INT64: np.int64, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64,
    TensorProto.UINT32: np.uint32, TensorProto.UINT64: np.uint64, TensorProto.BOOL: np.bool_,
}
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


class InspectError(GptqExportError):
    """The file is missing, is not a readable ONNX model, or holds something we cannot describe."""


def clean(text: object, limit: int = 200) -> str:
    """One printable line: str(text) without control characters or unencodable code points, cut at `limit`."""
    s = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    s = "".join(ch if ch.isprintable() else "?" for ch in s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def dtype_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type).lower()
    except ValueError:
        return f"type{data_type}"


# --------------------------------------------------------------------------- the file


def resolve_model_path(path: str | os.PathLike) -> Path:
    """The .onnx file for `path`: the file itself, or `model.onnx` of a (genai) folder."""
    p = Path(path)
    if not p.exists():
        raise InspectError(f"{clean(p)} does not exist; pass an .onnx file (or a folder with model.onnx)")
    if p.is_dir():
        if (p / "model.onnx").is_file():
            return p / "model.onnx"
        found = sorted(q for q in p.glob("*.onnx") if q.is_file())
        if len(found) == 1:
            return found[0]
        what = "no .onnx file" if not found else f"{len(found)} .onnx files and no model.onnx"
        raise InspectError(f"folder {clean(p)} has {what}; pass the .onnx file itself")
    if not p.is_file():
        raise InspectError(f"{clean(p)} is not a regular file; pass an .onnx file written by gptq-export")
    return p


@dataclass
class OnnxFile:
    """A parsed model (tensor data not loaded) and where its bytes are."""

    path: Path
    model: onnx.ModelProto
    file_bytes: int
    external_files: dict[str, int]  # relative location -> size in bytes
    genai_config: Path | None = None

    @property
    def graph(self) -> onnx.GraphProto:
        return self.model.graph

    @property
    def total_bytes(self) -> int:
        return self.file_bytes + sum(self.external_files.values())


def load_onnx(path: str | os.PathLike) -> OnnxFile:
    """Parse `path` (file or genai folder) with external data left on disk; InspectError if unreadable."""
    p = resolve_model_path(path)
    try:
        size = p.stat().st_size
        if size == 0:
            raise InspectError(f"{clean(p)} is empty; re-export it")
        model = onnx.load_model(str(p), load_external_data=False)
    except InspectError:
        raise
    except OSError as exc:
        raise InspectError(f"cannot read {clean(p)}: {clean(exc.strerror or type(exc).__name__)}") from exc
    except Exception as exc:  # protobuf DecodeError, RuntimeError, ... : not an ONNX model
        raise InspectError(f"{clean(p)} is not a readable ONNX model ({type(exc).__name__}); re-export it") from exc
    if not model.HasField("graph") or (len(model.graph.node) == 0 and len(model.graph.output) == 0):
        raise InspectError(f"{clean(p)} is not a readable ONNX model (no graph); pass an .onnx model file")
    externals: dict[str, int] = {}
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            loc = _external_fields(t).get("location", "")
            if loc not in externals:
                target = _external_path(p.parent, loc, t.name)
                externals[loc] = target.stat().st_size if target.is_file() else 0
    genai = p.parent / GENAI_CONFIG
    return OnnxFile(p, model, size, externals, genai if genai.is_file() else None)


def _external_fields(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _external_path(base: Path, location: str, tensor: str) -> Path:
    """Path of an external-data file; InspectError when it would leave the model's folder."""
    if not location or os.path.isabs(location) or ".." in Path(location).parts or "\x00" in location:
        raise InspectError(f"tensor {clean(tensor)} has an invalid external data location {clean(location)!r}; "
                           "re-export the model")
    return base / location


# --------------------------------------------------------------------------- tensors


def numel(t: TensorProto) -> int:
    return math.prod(int(d) for d in t.dims) if len(t.dims) else 1


def payload_bytes(t: TensorProto) -> int:
    """Bytes of a tensor's data as stored (raw bytes, typed fields' values, or its external range)."""
    if t.data_location == TensorProto.EXTERNAL:
        ext = _external_fields(t)
        try:
            return max(int(ext.get("length", 0)), 0)
        except ValueError:
            return 0
    if t.raw_data:
        return len(t.raw_data)
    for fld in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        values = getattr(t, fld)
        if len(values):
            if fld == "string_data":
                return sum(len(v) for v in values)
            return len(values) * (8 if fld in ("int64_data", "double_data", "uint64_data") else 4)
    return 0


def expected_bytes(t: TensorProto) -> int | None:
    """Bytes the tensor's dims and type call for (None for types we do not size)."""
    size = _ITEMSIZE.get(t.data_type)
    if size is None:
        return None
    return math.ceil(numel(t) * size)


class TensorReader:
    """Reads single initializers of an `OnnxFile` on demand (external data by offset, checked)."""

    def __init__(self, f: OnnxFile):
        self.file = f
        self.init = {t.name: t for t in f.graph.initializer}

    def has(self, name: str) -> bool:
        return bool(name) and name in self.init

    def raw(self, name: str) -> bytes:
        """The stored bytes of initializer `name` (4-bit types still packed)."""
        t = self.init.get(name)
        if t is None:
            raise InspectError(f"tensor {clean(name)} is not an initializer of {clean(self.file.path)}")
        want = expected_bytes(t)
        if t.data_location == TensorProto.EXTERNAL:
            ext = _external_fields(t)
            target = _external_path(self.file.path.parent, ext.get("location", ""), t.name)
            try:
                offset = int(ext.get("offset", 0))
                length = int(ext["length"]) if "length" in ext else want
            except ValueError:
                raise InspectError(f"tensor {clean(name)} has a malformed external offset/length; re-export the "
                                   "model") from None
            size = target.stat().st_size if target.is_file() else -1
            if size < 0:
                raise InspectError(f"external data file {clean(target)} of tensor {clean(name)} is missing")
            if length is None or offset < 0 or length < 0 or offset + length > size:
                raise InspectError(f"tensor {clean(name)} points past the end of {clean(target.name)} "
                                   f"(offset {offset}, length {length}, file {size} bytes); the file is truncated")
            with open(target, "rb") as fh:
                fh.seek(offset)
                data = fh.read(length)
        elif t.raw_data:
            data = t.raw_data
        else:
            arr = onnx.numpy_helper.to_array(t)
            data = np.ascontiguousarray(arr).tobytes()
        if want is not None and len(data) != want and t.data_type not in (TensorProto.UINT4, TensorProto.INT4):
            raise InspectError(f"tensor {clean(name)} holds {len(data)} bytes but its shape {list(t.dims)} and type "
                               f"{dtype_name(t.data_type)} need {want}; the file is corrupted")
        if want is not None and len(data) < want:
            raise InspectError(f"tensor {clean(name)} holds {len(data)} bytes, its shape needs {want}; the file is "
                               "corrupted")
        return data

    def array(self, name: str) -> np.ndarray:
        """Initializer `name` as a NumPy array (int4/uint4: unpacked to int8/uint8)."""
        from ..kernels.ort_layout import unpack_onnx_4bit

        t = self.init.get(name)
        if t is None:
            raise InspectError(f"tensor {clean(name)} is not an initializer of {clean(self.file.path)}")
        dims = tuple(int(d) for d in t.dims)
        if any(d < 0 for d in dims):
            raise InspectError(f"tensor {clean(name)} has a negative dimension {list(dims)}; the file is corrupted")
        data = self.raw(name)
        if t.data_type in (TensorProto.UINT4, TensorProto.INT4):
            return unpack_onnx_4bit(np.frombuffer(data, dtype=np.uint8), dims, signed=t.data_type == TensorProto.INT4)
        dt = _NUMPY.get(t.data_type)
        if dt is None:
            raise InspectError(f"tensor {clean(name)} has type {dtype_name(t.data_type)}, which gptq-inspect cannot "
                               "decode")
        return np.frombuffer(data, dtype=dt).reshape(dims)


# --------------------------------------------------------------------------- quantized nodes


@dataclass
class QuantNode:
    """One quantized Linear of the graph, in any of the three formats."""

    name: str  # module name (metadata name when one matches, else derived from tensor/node names)
    node: str  # name of the node that computes the product
    op: str  # domain.op_type of that node
    format: str  # gptq | ort | qdq
    K: int
    N: int
    bits: int
    group_size: int | None  # None: unknown; -1: one group per row
    block_size: int | None  # ort/qdq block along K
    act_order: bool  # K axis permuted (g_idx not k // group, or a Gather in front)
    sym: bool | None  # every zero point is 2^(bits-1) (None: not determined)
    x: str  # the layer's input (before the act-order Gather)
    y: str  # the layer's output (after the bias)
    nodes: list[str] = field(default_factory=list)  # every node of this layer
    tensors: dict[str, str] = field(default_factory=dict)  # role -> initializer name
    problems: list[str] = field(default_factory=list)


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in node.attribute:
        if a.type == onnx.AttributeProto.INT:
            out[a.name] = int(a.i)
        elif a.type == onnx.AttributeProto.FLOAT:
            out[a.name] = float(a.f)
        elif a.type == onnx.AttributeProto.STRING:
            out[a.name] = a.s
        else:
            out[a.name] = a.type  # present, of a type we do not use
    return out


def _int_attr(node: onnx.NodeProto, attrs: dict, key: str, default: int | None = None) -> int:
    value = attrs.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or (key != "group_size" and value < 1) or value > 1 << 40:
        found = "missing" if key not in attrs else f"{value!r}"
        raise InspectError(f"node {clean(node.name)} ({node.op_type}) has an invalid attribute {key} ({clean(found)}); "
                           "the file is corrupted or was not written by gptq-export")
    return value


def _strip(name: str, suffixes: Iterable[str]) -> str:
    for s in suffixes:
        if name.endswith(s) and len(name) > len(s):
            return name[: -len(s)]
    return name


def match_layer_name(derived: str, known: Iterable[str]) -> str:
    """The metadata name that `derived` ends with (on a '.' boundary), longest first; else `derived`."""
    best = None
    for name in known:
        if derived == name or derived.endswith("." + name):
            if best is None or len(name) > len(best):
                best = name
    return best if best is not None else derived


class _Graph:
    """Producers and consumers of a graph's values (top-level graph only)."""

    def __init__(self, graph: onnx.GraphProto):
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.init = {t.name: t for t in graph.initializer}

    def act_order_source(self, x: str) -> tuple[str, str | None, onnx.NodeProto | None]:
        """(input before the act-order Gather, perm initializer, the Gather) or (x, None, None)."""
        g = self.producer.get(x)
        if g is not None and g.op_type == "Gather" and g.domain in ("", "ai.onnx") and len(g.input) == 2:
            axis = _attrs(g).get("axis", 0)
            perm = g.input[1]
            if axis == -1 and perm in self.init and len(self.init[perm].dims) == 1:
                return g.input[0], perm, g
        return x, None, None

    def bias_add(self, y: str) -> tuple[str, onnx.NodeProto | None, str | None]:
        """(output after a constant bias Add, the Add, bias name) or (y, None, None)."""
        users = self.consumers.get(y, [])
        if len(users) == 1 and users[0].op_type == "Add" and users[0].domain in ("", "ai.onnx") and \
                len(users[0].input) == 2 and len(users[0].output) == 1:
            add = users[0]
            other = add.input[1] if add.input[0] == y else add.input[0]
            if other in self.init and len(self.init[other].dims) == 1:
                return add.output[0], add, other
        return y, None, None


def _zeros_symmetric(reader: TensorReader, name: str, bits: int, unpack) -> bool | None:
    try:
        z = unpack(reader.array(name))
    except (InspectError, ValueError):
        return None
    return bool(z.size == 0 or np.all(z == 1 << (bits - 1)))


def find_quant_nodes(f: OnnxFile, reader: TensorReader, known_names: Iterable[str] = (),
                     config_group: int | None = None) -> list[QuantNode]:
    """Every quantized Linear of the top-level graph, in graph order.

    Reads only the small tensors that settle act-order and symmetry (g_idx and qzeros of the
    `gptq` format); never the weights.
    """
    from ..kernels.reference import default_g_idx, unpack_zeros

    known = list(known_names)
    g = _Graph(f.graph)
    out: list[QuantNode] = []
    for node in f.graph.node:
        q = None
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            q = _gptq_node(node, g, reader, default_g_idx, unpack_zeros)
        elif node.domain == MS_DOMAIN and node.op_type == "MatMulNBits":
            q = _ort_node(node, g, config_group)
        elif node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and len(node.input) == 2:
            dq = g.producer.get(node.input[1])
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input and dq.input[0] in g.init \
                    and len(g.init[dq.input[0]].dims) == 2:
                q = _qdq_node(node, dq, g, config_group)
        if q is not None:
            q.name = match_layer_name(q.name, known)
            out.append(q)
    return out


def _gptq_node(node, g: _Graph, reader: TensorReader, default_g_idx, unpack_zeros) -> QuantNode:
    attrs = _attrs(node)
    K, N, bits = (_int_attr(node, attrs, k) for k in ("K", "N", "bits"))
    group = _int_attr(node, attrs, "group_size")
    if bits > 8:
        raise InspectError(f"node {clean(node.name)} has bits={bits}; gptq-export writes 2, 3, 4 or 8")
    if len(node.input) < 5:
        raise InspectError(f"node {clean(node.name)} (QuantLinear) has {len(node.input)} inputs, expected 6; "
                           "the file is corrupted")
    roles = dict(zip(("qweight", "scales", "qzeros", "g_idx", "bias"), node.input[1:6], strict=False))
    tensors = {r: n for r, n in roles.items() if n in g.init}
    problems = [f"{r} is not an initializer" for r in ("qweight", "scales", "qzeros", "g_idx") if r not in tensors]
    if "bias" in tensors and numel(g.init[tensors["bias"]]) == 0:
        tensors["bias_none"] = tensors.pop("bias")
    derived = _strip(roles.get("qweight", "") or node.name, (".qweight",))
    act_order, sym = False, None
    if "g_idx" in tensors:
        try:
            gi = reader.array(tensors["g_idx"])
            act_order = not np.array_equal(gi.reshape(-1), default_g_idx(K, min(group, K) if group > 0 else K))
        except (InspectError, ValueError) as exc:
            problems.append(f"g_idx unreadable: {exc}")
    if "qzeros" in tensors:
        sym = _zeros_symmetric(reader, tensors["qzeros"], bits, lambda z: unpack_zeros(z, bits, N))
    groups = int(g.init[tensors["scales"]].dims[0]) if "scales" in tensors and g.init[tensors["scales"]].dims else None
    group_size = -1 if groups == 1 or group <= 0 or group >= K else group
    return QuantNode(derived, node.name, f"{DOMAIN}.{OP_TYPE}", "gptq", K, N, bits, group_size, None, act_order, sym,
                     node.input[0] if node.input else "", node.output[0] if node.output else "", [node.name],
                     tensors, problems)


def _blocked_group(block: int, k_blocks: int | None, K: int, config_group: int | None) -> int | None:
    """Group size of an ort/qdq layer: the export's setting when it fits the blocks, else the block."""
    if k_blocks == 1:
        return -1
    if config_group is not None and config_group > 0 and config_group % block == 0 and config_group < K:
        return config_group
    if config_group == -1:
        return -1
    return block


def _ort_node(node, g: _Graph, config_group: int | None) -> QuantNode:
    attrs = _attrs(node)
    K, N, bits, block = (_int_attr(node, attrs, k) for k in ("K", "N", "bits", "block_size"))
    if len(node.input) < 3:
        raise InspectError(f"node {clean(node.name)} (MatMulNBits) has {len(node.input)} inputs, expected >= 3; "
                           "the file is corrupted")
    roles = dict(zip(("B", "scales", "zero_points", "g_idx", "bias"), node.input[1:6], strict=False))
    tensors = {r: n for r, n in roles.items() if n and n in g.init}
    x, perm, gather = g.act_order_source(node.input[0])
    if perm:
        tensors["perm"] = perm
    scales = g.init.get(tensors.get("scales", ""))
    k_blocks = int(scales.dims[-1]) if scales is not None and scales.dims else None
    derived = _strip(node.name, ("/MatMulNBits",)) if node.name.endswith("/MatMulNBits") else \
        _strip(roles.get("B", "") or node.name, (".B",))
    sym = not roles.get("zero_points")
    nodes = ([gather.name] if gather is not None else []) + [node.name]
    problems = [f"{r} is not an initializer" for r in ("B", "scales") if r not in tensors]
    return QuantNode(derived, node.name, f"{MS_DOMAIN}.MatMulNBits", "ort", K, N, bits,
                     _blocked_group(block, k_blocks, K, config_group), block, perm is not None, sym, x,
                     node.output[0] if node.output else "", nodes, tensors, problems)


_QDQ_BITS = {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.INT8: 8, TensorProto.UINT8: 8,
             TensorProto.INT16: 16, TensorProto.UINT16: 16}


def _qdq_node(node, dq, g: _Graph, config_group: int | None) -> QuantNode:
    attrs = _attrs(dq)
    w = g.init[dq.input[0]]
    K, N = int(w.dims[0]), int(w.dims[1])
    bits = _QDQ_BITS.get(w.data_type)
    if bits is None:
        raise InspectError(f"node {clean(dq.name)} dequantizes a {dtype_name(w.data_type)} tensor; expected int4/uint4/"
                           "int8/uint8")
    block = attrs.get("block_size", 0)
    if not isinstance(block, int) or block < 0:
        raise InspectError(f"node {clean(dq.name)} has an invalid attribute block_size ({clean(block)}); the file is "
                           "corrupted")
    tensors = {"w_q": dq.input[0]}
    for role, i in (("scale", 1), ("zero_point", 2)):
        if len(dq.input) > i and dq.input[i] in g.init:
            tensors[role] = dq.input[i]
    scale = g.init.get(tensors.get("scale", ""))
    k_blocks = int(scale.dims[0]) if scale is not None and len(scale.dims) == 2 else (1 if scale is not None else None)
    x, perm, gather = g.act_order_source(node.input[0])
    if perm:
        tensors["perm"] = perm
    y, add, bias = g.bias_add(node.output[0] if node.output else "")
    if bias:
        tensors["bias"] = bias
    signed = w.data_type in (TensorProto.INT4, TensorProto.INT8, TensorProto.INT16)
    sym = signed and "zero_point" not in tensors
    if dq.name.endswith("/DequantizeLinear"):
        derived = _strip(dq.name, ("/DequantizeLinear",))
    else:
        derived = _strip(dq.input[0], (".w_q", ".weight_quantized", "_quantized"))
    nodes = ([gather.name] if gather is not None else []) + [dq.name, node.name] + ([add.name] if add else [])
    effective_block = block if block else K
    group = _blocked_group(effective_block, k_blocks, K, config_group)
    return QuantNode(derived, node.name, "MatMul+DequantizeLinear", "qdq", K, N, bits, group, effective_block,
                     perm is not None, sym, x, y, nodes, tensors, [] if scale is not None else ["scale is not an "
                                                                                            "initializer"])


# --------------------------------------------------------------------------- float Linears


@dataclass
class FloatLinear:
    """A MatMul/Gemm with a constant 2-D weight: a Linear left in float (or a float model's Linear)."""

    node: str
    K: int
    N: int
    x: str
    y: str
    weight: str


def find_float_linears(f: OnnxFile) -> list[FloatLinear]:
    """MatMul(x, W) (+ constant bias Add) and Gemm(x, W) nodes whose W is a 2-D initializer, in graph order."""
    g = _Graph(f.graph)
    out = []
    for node in f.graph.node:
        if node.domain not in ("", "ai.onnx") or len(node.input) < 2 or not node.output:
            continue
        w = g.init.get(node.input[1])
        if w is None or len(w.dims) != 2 or w.data_type not in _FLOAT_TYPES:
            continue
        if node.op_type == "MatMul":
            K, N = int(w.dims[0]), int(w.dims[1])
            y, _, _ = g.bias_add(node.output[0])
        elif node.op_type == "Gemm":
            trans_b = _attrs(node).get("transB", 0)
            N, K = (int(w.dims[0]), int(w.dims[1])) if trans_b == 1 else (int(w.dims[1]), int(w.dims[0]))
            y = node.output[0]
        else:
            continue
        out.append(FloatLinear(node.name, K, N, node.input[0], y, node.input[1]))
    return out
