"""ONNX -> ONNX: the `gptq` format rewritten into stock onnxruntime formats (same codes, same scales).

    gptq_export.QuantLinear(x, qweight, scales, qzeros, g_idx, bias)
        -> com.microsoft.MatMulNBits(x', B, scales', zero_points?, "", bias?)           (to_matmulnbits, `ort`)
        -> MatMul(x', DequantizeLinear(w_q, scale, zero_point?){axis 0}) (-> Add bias)  (to_qdq, `qdq`)
    x' = Gather(x, perm, axis=-1) under act-order (one per distinct (x, perm)), else x' = x

The dequantized weight is exactly the `gptq` one (layouts: `gptq_export.kernels.ort_layout`):

- Blocks: the largest power of two in [16, 256] that divides the group size (a power-of-two group
  is its own block up to 256, the largest block onnxruntime's 2-bit CPU kernel takes); groups
  larger than a block repeat their scale and zero point over their blocks. One group per row
  (per channel): the largest such power of two dividing K, else K rounded up to a power of two
  (at most 256; the last block is short). A group size with no such block is refused.
- Act-order: a g_idx that is not k // group_size is undone offline. The weight's K axis is
  permuted by perm = stable argsort(g_idx), so every group becomes a run of contiguous blocks,
  and the activations are gathered with the same perm (x @ W == x[..., perm] @ W[perm]).
  g_idx is never emitted. q/k/v (same input, same perm) share one Gather.
- Symmetric grids (zero point 2^(bits-1) everywhere) carry no zero point: MatMulNBits' default;
  in QDQ the codes are stored signed (q - 2^(bits-1), int4/int8) with the default zero point 0.

Works on onnx_ir models (an onnx.ModelProto is converted in and out): tensors of external-data
models stay lazy; only the packed tensors of each QuantLinear are read.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import onnx
import onnx_ir as ir

from gptq_export.config import ACCURACY_LEVELS, DOMAIN, Format
from gptq_export.emit import META_PREFIX, OP_TYPE
from gptq_export.errors import ExportError
from gptq_export.kernels.ort_layout import (
    MAX_BLOCK,
    MIN_BLOCK,
    pack_matmulnbits_weight,
    pack_matmulnbits_zeros,
    pack_onnx_4bit,
)
from gptq_export.kernels.reference import default_g_idx, unpack_codes, unpack_zeros

MS_DOMAIN = "com.microsoft"
MIN_QDQ_OPSET = 21  # int4/uint4 and blocked DequantizeLinear

ModelT = TypeVar("ModelT", ir.Model, onnx.ModelProto)


@dataclass
class BlockedLayer:
    """One QuantLinear re-expressed on contiguous blocks (K axis in `perm` order).

    codes uint8 [N, K]; scales float32 [k_blocks, N]; zeros uint8 [k_blocks, N];
    perm int64 [K] or None when the groups are already contiguous.
    """

    name: str
    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    perm: np.ndarray | None
    bits: int
    in_features: int
    out_features: int
    block_size: int

    @property
    def symmetric(self) -> bool:
        """Every zero point is 2^(bits-1) (the formats' default)."""
        return bool(np.all(self.zeros == 1 << (self.bits - 1)))


def _pow2_divisor(n: int) -> int | None:
    """Largest power of two in [MIN_BLOCK, MAX_BLOCK] dividing n, or None."""
    b = MAX_BLOCK
    while b >= MIN_BLOCK:
        if n % b == 0:
            return b
        b //= 2
    return None


def block_size_for(g_sorted: np.ndarray, group_size: int, layer: str) -> int:
    """Block size that reproduces the contiguous groups `g_sorted` [K] exactly; ExportError if none."""
    K = len(g_sorted)
    if K == 0 or np.all(g_sorted == g_sorted[0]):  # one group per row
        block = _pow2_divisor(K)
        if block is None:
            block = min(MAX_BLOCK, max(MIN_BLOCK, 1 << (K - 1).bit_length()))
        return block
    block = _pow2_divisor(group_size)
    if block is None or not np.array_equal(np.repeat(g_sorted[::block], block)[:K], g_sorted):
        raise ExportError(
            f"layer {layer}: group size {group_size} cannot be cut into blocks of a power of two >= {MIN_BLOCK}; "
            "use --format gptq or a group size that is a multiple of 16"
        )
    return block


def _const(node: ir.Node, index: int, what: str) -> np.ndarray:
    """The constant value of input `index` of `node`; ExportError if it is computed."""
    value = node.inputs[index]
    if value is None or value.const_value is None:
        raise ExportError(f"QuantLinear node {node.name}: {what} is not an initializer; re-export with gptq-export")
    return value.const_value.numpy()


def _layer_name(node: ir.Node) -> str:
    """Module name of a QuantLinear: its qweight initializer's name without `.qweight`."""
    qweight = node.inputs[1]
    name = qweight.name if qweight is not None and qweight.name else node.name or "quant_linear"
    return name[: -len(".qweight")] if name.endswith(".qweight") else name


def decode_quant_linear(node: ir.Node) -> BlockedLayer:
    """Read a gptq_export.QuantLinear node's packed tensors and re-block them (see module docstring)."""
    attrs = {k: node.attributes[k].as_int() for k in ("K", "N", "bits", "group_size")}
    K, N, bits, group_size = attrs["K"], attrs["N"], attrs["bits"], attrs["group_size"]
    name = _layer_name(node)
    codes = unpack_codes(_const(node, 1, "qweight"), bits, K).T  # [N, K]
    scales = np.asarray(_const(node, 2, "scales"), dtype=np.float32)
    zeros = unpack_zeros(_const(node, 3, "qzeros"), bits, N)  # [G, N]
    g_idx = _const(node, 4, "g_idx").astype(np.int64)
    perm = None
    if not np.array_equal(g_idx, default_g_idx(K, group_size)):
        perm = np.argsort(g_idx, kind="stable").astype(np.int64)
        g_idx = g_idx[perm]
        codes = codes[:, perm]
    block = block_size_for(g_idx, group_size, name)
    block_group = g_idx[::block]
    return BlockedLayer(name, np.ascontiguousarray(codes), np.ascontiguousarray(scales[block_group]),
                        np.ascontiguousarray(zeros[block_group]), perm, bits, K, N, block)


class _Builder:
    """Shared state of one conversion: unique initializer names, act-order Gathers, converted tensors."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.gathers: dict[tuple[int, bytes], ir.Value] = {}
        self.perms: dict[bytes, ir.Value] = {}
        self.layers: dict[tuple[int, ...], tuple[BlockedLayer, list[ir.Value | None]]] = {}
        self.wanted: list[tuple[ir.Value, str]] = []

    def initializer(self, name: str, tensor: ir.TensorProtocol) -> ir.Value:
        """Register `tensor` as an initializer named `name` (suffixed while the name is taken)."""
        unique, i = name, 1
        while unique in self.graph.initializers:
            unique, i = f"{name}_{i}", i + 1
        tensor.name = unique
        value = ir.Value(name=unique, const_value=tensor, type=ir.TensorType(tensor.dtype), shape=tensor.shape)
        self.graph.register_initializer(value)
        if unique != name:
            self.wanted.append((value, name))
        return value

    def settle_names(self) -> None:
        """Give suffixed initializers their intended name once the gptq tensors holding it are gone."""
        for value, name in self.wanted:
            if name not in self.graph.initializers:
                value.name = name

    def gathered(self, x: ir.Value, layer: BlockedLayer, before: ir.Node) -> ir.Value:
        """x, or Gather(x, perm, axis=-1) under act-order (one node per distinct (x, perm))."""
        if layer.perm is None:
            return x
        key = layer.perm.tobytes()
        if (id(x), key) not in self.gathers:
            if key not in self.perms:
                self.perms[key] = self.initializer(f"{layer.name}.perm", ir.Tensor(layer.perm))
            node = ir.node("Gather", [x, self.perms[key]], {"axis": -1}, name=f"{layer.name}/act_order_gather")
            node.outputs[0].name = f"{layer.name}.act_order_input"
            node.outputs[0].type, node.outputs[0].shape = x.type, x.shape
            self.graph.insert_before(before, node)
            self.gathers[(id(x), key)] = node.outputs[0]
        return self.gathers[(id(x), key)]


def _bias(node: ir.Node) -> ir.Value | None:
    """The bias input, or None when absent or of size 0 (the gptq format's "no bias")."""
    bias = node.inputs[5] if len(node.inputs) > 5 else None
    if bias is None or (bias.const_value is not None and bias.const_value.size == 0):
        return None
    return bias


def _matmulnbits_weights(b: _Builder, layer: BlockedLayer) -> list[ir.Value | None]:
    """Initializers B, scales [N, k_blocks] and zero_points (None when symmetric) of MatMulNBits."""
    B = pack_matmulnbits_weight(layer.codes, layer.bits, layer.block_size)
    out = [b.initializer(f"{layer.name}.B", ir.Tensor(B)),
           b.initializer(f"{layer.name}.scales", ir.Tensor(np.ascontiguousarray(layer.scales.T)))]
    if not layer.symmetric:
        zp = pack_matmulnbits_zeros(np.ascontiguousarray(layer.zeros.T), layer.bits)
        out.append(b.initializer(f"{layer.name}.zero_points", ir.Tensor(zp)))
    else:
        out.append(None)
    return out


def _qdq_weights(b: _Builder, layer: BlockedLayer) -> list[ir.Value | None]:
    """Initializers w_q [K, N], scale [k_blocks, N] and zero_point (None when symmetric) of DequantizeLinear."""
    K, N, bits = layer.in_features, layer.out_features, layer.bits
    values = np.ascontiguousarray(layer.codes.T)  # [K, N]
    zeros = np.ascontiguousarray(layer.zeros)  # [k_blocks, N]
    sym = layer.symmetric
    if sym:
        values = values.astype(np.int16) - (1 << (bits - 1))
    if bits == 4:
        dtype = ir.DataType.INT4 if sym else ir.DataType.UINT4
        w = ir.PackedTensor(pack_onnx_4bit(values), dtype, shape=(K, N))
        z = None if sym else ir.PackedTensor(pack_onnx_4bit(zeros), dtype, shape=zeros.shape)
    else:
        w = ir.Tensor(values.astype(np.int8 if sym else np.uint8))
        z = None if sym else ir.Tensor(zeros.astype(np.uint8))
    return [b.initializer(f"{layer.name}.w_q", w), b.initializer(f"{layer.name}.scale", ir.Tensor(layer.scales)),
            None if z is None else b.initializer(f"{layer.name}.zero_point", z)]


def _check_bits(layer: BlockedLayer, fmt: Format) -> None:
    """ExportError when `fmt` has no storage for the layer's code width."""
    allowed = (2, 4, 8) if fmt is Format.ORT else (4, 8)
    if layer.bits not in allowed:
        raise ExportError(f"layer {layer.name} has {layer.bits}-bit weights, which --format {fmt.value} cannot "
                          "hold; use --format gptq")


def _rewrite(model: ir.Model, fmt: Format, accuracy_level: int) -> ir.Model:
    """Replace every top-level QuantLinear of `model` by `fmt`'s nodes, in place."""
    graph = model.graph
    targets = [n for n in graph if n.domain == DOMAIN and n.op_type == OP_TYPE]
    b = _Builder(graph)
    old_values: list[ir.Value] = []
    for node in targets:
        key = tuple(id(v) for v in node.inputs[1:5])
        if key not in b.layers:  # nodes sharing all packed tensors share the converted ones
            layer = decode_quant_linear(node)
            _check_bits(layer, fmt)
            weights = _matmulnbits_weights(b, layer) if fmt is Format.ORT else _qdq_weights(b, layer)
            empty = np.empty((0, 0), dtype=np.uint8)  # keep only what later nodes need, not the codes
            b.layers[key] = (dataclasses.replace(layer, codes=empty, scales=empty, zeros=empty), weights)
        layer, weights = b.layers[key]
        x = b.gathered(node.inputs[0], layer, node)
        bias = _bias(node)
        if fmt is Format.ORT:
            inputs = [x, *weights, None, bias]
            while inputs[-1] is None:
                inputs.pop()
            attrs = {"K": layer.in_features, "N": layer.out_features, "bits": layer.bits,
                     "block_size": layer.block_size, "accuracy_level": accuracy_level}
            new = [ir.node("MatMulNBits", inputs, attrs, domain=MS_DOMAIN, name=f"{layer.name}/MatMulNBits")]
        else:
            dq_inputs = weights if weights[2] is not None else weights[:2]
            dq = ir.node("DequantizeLinear", dq_inputs, {"axis": 0, "block_size": layer.block_size},
                         name=f"{layer.name}/DequantizeLinear")
            dq.outputs[0].name = f"{layer.name}.weight_dq"
            new = [dq, ir.node("MatMul", [x, dq.outputs[0]], name=f"{layer.name}/MatMul")]
            if bias is not None:
                new[-1].outputs[0].name = f"{layer.name}.matmul"
                new.append(ir.node("Add", [new[-1].outputs[0], bias], name=f"{layer.name}/Add"))
        graph.insert_before(node, new)
        old = node.outputs[0]
        out = new[-1].outputs[0]
        out.type, out.shape = old.type, old.shape
        name = old.name
        old.replace_all_uses_with(out, replace_graph_outputs=True)
        old_values.extend(v for v in node.inputs if v is not None)
        graph.remove(node, safe=True)
        out.name = name
    for value in old_values:  # packed gptq tensors nobody reads any more
        if value.is_initializer() and not value.uses() and value.name in graph.initializers:
            del graph.initializers[value.name]
    b.settle_names()
    _finish(model, fmt, accuracy_level)
    return model


def _finish(model: ir.Model, fmt: Format, accuracy_level: int) -> None:
    """Opset imports and metadata of the converted model."""
    left = [n for n in model.graph.all_nodes() if n.domain == DOMAIN]
    for function in model.functions.values():
        left.extend(n for n in function if n.domain == DOMAIN)
    if left:
        raise ExportError(f"{len(left)} QuantLinear node(s) sit inside a subgraph or function, which --format "
                          f"{fmt.value} cannot rewrite; use --format gptq")
    model.opset_imports.pop(DOMAIN, None)
    if fmt is Format.ORT:
        model.opset_imports[MS_DOMAIN] = 1
    props = model.metadata_props
    props[META_PREFIX + "format"] = fmt.value
    config_key = META_PREFIX + "config"
    if config_key in props:
        try:
            config = json.loads(props[config_key])
        except json.JSONDecodeError:
            config = None
        if isinstance(config, dict):
            config["format"] = fmt.value
            if fmt is Format.ORT:
                config["accuracy_level"] = accuracy_level
            props[config_key] = json.dumps(config)


def _as_ir(model: ModelT) -> tuple[ir.Model, bool]:
    """(ir.Model, whether the caller gave an onnx.ModelProto)."""
    if isinstance(model, onnx.ModelProto):
        return ir.from_proto(model), True
    return model, False


def to_matmulnbits(model: ModelT, accuracy_level: int = 4) -> ModelT:
    """Rewrite every QuantLinear into com.microsoft.MatMulNBits (an ir.Model is changed in place)."""
    if accuracy_level not in ACCURACY_LEVELS:
        raise ExportError(f"accuracy_level={accuracy_level} is invalid; choose 0 (exact) to 4 (int8 activations)")
    m, proto = _as_ir(model)
    _rewrite(m, Format.ORT, accuracy_level)
    return ir.to_proto(m) if proto else m


def to_qdq(model: ModelT) -> ModelT:
    """Rewrite every QuantLinear into blocked DequantizeLinear + MatMul (an ir.Model is changed in place)."""
    m, proto = _as_ir(model)
    opset = m.opset_imports.get("", 0)
    if opset < MIN_QDQ_OPSET:
        raise ExportError(f"--format qdq needs ONNX opset >= {MIN_QDQ_OPSET} (the model has {opset}); "
                          "re-export it with gptq-export")
    _rewrite(m, Format.QDQ, 0)
    return ir.to_proto(m) if proto else m


def convert_format(model: ModelT, fmt: Format | str, accuracy_level: int = 4) -> ModelT:
    """`gptq` model -> `fmt` (gptq: unchanged)."""
    fmt = Format(fmt)
    if fmt is Format.ORT:
        return to_matmulnbits(model, accuracy_level)
    if fmt is Format.QDQ:
        return to_qdq(model)
    return model
