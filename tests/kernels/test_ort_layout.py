"""Bit-exact packers of the stock onnxruntime layouts, checked against onnx and onnxruntime themselves.

MatMulNBits B / zero points (bits 2, 4, 8) and ONNX int4/uint4 storage: round trips on odd shapes
and short last blocks, hand-computed bytes, onnx's own 4-bit packer, onnxruntime's MatMulNBits and
DequantizeLinear kernels (identity input -> the dequantized weight), and onnxruntime's own
quantize_matmul_{2,4,8}bits packers.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gptq_export.kernels.ort_layout import (
    dequantize_blocked,
    dequantize_matmulnbits,
    num_blocks,
    pack_low_bits_first,
    pack_matmulnbits_weight,
    pack_matmulnbits_zeros,
    pack_onnx_4bit,
    unpack_low_bits_first,
    unpack_matmulnbits_weight,
    unpack_matmulnbits_zeros,
    unpack_onnx_4bit,
)

BITS = (2, 4, 8)
SHAPES = [(1, 1), (3, 17), (5, 64), (2, 100), (7, 129), (4, 1000)]  # (N, K)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block", [16, 32, 128])
def test_matmulnbits_weight_round_trip_is_bit_exact(bits, shape, block):
    rng = np.random.default_rng(0)
    n, k = shape
    codes = rng.integers(0, 1 << bits, size=shape).astype(np.uint8)
    b = pack_matmulnbits_weight(codes, bits, block)
    kb = num_blocks(k, block)
    assert b.dtype == np.uint8 and b.shape == (n, kb, block * bits // 8)
    assert np.array_equal(unpack_matmulnbits_weight(b, bits, k), codes)
    # The short last block is padded with zero codes.
    assert not unpack_matmulnbits_weight(b, bits, kb * block)[:, k:].any()


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("blocks", [1, 2, 3, 5, 8, 9])
def test_matmulnbits_zero_points_round_trip_is_bit_exact(bits, blocks):
    zeros = np.random.default_rng(1).integers(0, 1 << bits, size=(6, blocks)).astype(np.uint8)
    zp = pack_matmulnbits_zeros(zeros, bits)
    assert zp.shape == (6, -(-blocks * bits // 8))
    assert np.array_equal(unpack_matmulnbits_zeros(zp, bits, blocks), zeros)
    assert not unpack_low_bits_first(zp, bits, zp.shape[1] * 8 // bits)[:, blocks:].any()


def test_low_bits_first_positions_by_hand():
    assert pack_low_bits_first(np.array([1, 2]), 4).tolist() == [0x21]  # even element = low nibble
    assert pack_low_bits_first(np.array([1, 2, 3, 0, 3]), 2).tolist() == [0b00_11_10_01, 0b11]
    assert pack_low_bits_first(np.array([7, 200]), 8).tolist() == [7, 200]
    with pytest.raises(ValueError, match="out of range"):
        pack_low_bits_first(np.array([16]), 4)
    with pytest.raises(ValueError, match="use 2, 4 or 8 bits"):
        pack_low_bits_first(np.array([1]), 3)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("shape", [(1,), (3,), (3, 5), (64, 7), (17, 33)])
def test_onnx_4bit_matches_onnx_own_packer(signed, shape):
    rng = np.random.default_rng(2)
    values = rng.integers(-8, 8, size=shape) if signed else rng.integers(0, 16, size=shape)
    packed = pack_onnx_4bit(values)
    assert packed.shape == (-(-values.size // 2),)
    theirs = numpy_helper.from_array(values.astype(ml_dtypes.int4 if signed else ml_dtypes.uint4))
    assert theirs.raw_data == packed.tobytes()
    assert np.array_equal(unpack_onnx_4bit(packed, shape, signed), values)
    tensor = helper.make_tensor("t", TensorProto.INT4 if signed else TensorProto.UINT4, shape, packed.tobytes(), raw=True)
    assert np.array_equal(numpy_helper.to_array(tensor).astype(np.int64), values)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("k,block", [(64, 16), (100, 32), (96, 64), (40, 128)])
def test_onnxruntime_matmulnbits_dequantizes_our_packing(bits, sym, k, block):
    """MatMulNBits(I_K, B, ...) (accuracy level 0) is the weight onnxruntime sees: it must be ours."""
    rng = np.random.default_rng(3)
    n = 24
    kb = num_blocks(k, block)
    codes = rng.integers(0, 1 << bits, size=(n, k)).astype(np.uint8)
    scales = (rng.random((n, kb)) * 0.1 + 0.01).astype(np.float32)
    zeros = rng.integers(0, 1 << bits, size=(n, kb)).astype(np.uint8)
    inits = [numpy_helper.from_array(pack_matmulnbits_weight(codes, bits, block), "B"),
             numpy_helper.from_array(scales, "scales")]
    inputs = ["A", "B", "scales"]
    zp = None
    if not sym:
        zp = pack_matmulnbits_zeros(zeros, bits)
        inits.append(numpy_helper.from_array(zp, "zp"))
        inputs.append("zp")
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    got = _session(model).run(None, {"A": np.eye(k, dtype=np.float32)})[0]  # [K, N] = W^T
    want = dequantize_matmulnbits(pack_matmulnbits_weight(codes, bits, block), scales, zp, bits, k, block)
    np.testing.assert_allclose(got, want.T, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bits,signed", [(4, True), (4, False), (8, True), (8, False)])
@pytest.mark.parametrize("k,block", [(64, 16), (100, 32), (33, 64)])
def test_onnxruntime_blocked_dequantize_linear_reads_our_packing(bits, signed, k, block):
    rng = np.random.default_rng(4)
    n = 7
    kb = num_blocks(k, block)
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    w_q = rng.integers(lo, hi, size=(k, n))
    zero = rng.integers(lo, hi, size=(kb, n))
    scale = (rng.random((kb, n)) * 0.1 + 0.01).astype(np.float32)
    dtype = {(4, True): TensorProto.INT4, (4, False): TensorProto.UINT4, (8, True): TensorProto.INT8,
             (8, False): TensorProto.UINT8}[(bits, signed)]

    def tensor(name, values):
        raw = pack_onnx_4bit(values) if bits == 4 else values.astype(np.int8 if signed else np.uint8)
        return helper.make_tensor(name, dtype, values.shape, raw.tobytes(), raw=True)

    node = helper.make_node("DequantizeLinear", ["w_q", "scale", "zero"], ["W"], axis=0, block_size=block)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("W", TensorProto.FLOAT, [k, n])],
                              [tensor("w_q", w_q), numpy_helper.from_array(scale, "scale"), tensor("zero", zero)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    got = _session(model).run(None, {})[0]
    np.testing.assert_array_equal(got, dequantize_blocked(w_q, scale, zero, block).astype(np.float32))


@pytest.mark.parametrize("bits", BITS)
def test_onnxruntime_own_packer_gives_the_same_bytes(bits):
    """quantize_matmul_{bits}bits (onnxruntime's packer): decode with ours, re-pack, compare bytes."""
    pybind = pytest.importorskip("onnxruntime.capi._pybind_state")
    quantize = getattr(pybind, f"quantize_matmul_{bits}bits", None)
    # A private onnxruntime function: if a release drops or changes it, this cross-check must fail
    # loudly (and be rewritten), not skip silently.
    assert quantize is not None, f"onnxruntime {ort.__version__} has no quantize_matmul_{bits}bits"
    rng = np.random.default_rng(5)
    k, n, block = 100, 6, 32  # short last block
    kb = num_blocks(k, block)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = np.zeros((n, kb, block * bits // 8), np.uint8)
    scales = np.zeros((n, kb), np.float32)
    zp = np.zeros((n, -(-kb * bits // 8)), np.uint8)
    # The weight is padded to whole blocks, as onnxruntime's MatMulNBitsQuantizer does.
    quantize(b, np.pad(w, ((0, kb * block - k), (0, 0))), scales, zp, block, n, k, False)
    codes = unpack_matmulnbits_weight(b, bits, k)
    zeros = unpack_matmulnbits_zeros(zp, bits, kb)
    assert pack_matmulnbits_weight(codes, bits, block).tobytes() == b.tobytes()
    assert pack_matmulnbits_zeros(zeros, bits).tobytes() == zp.tobytes()
    # Our reading of its bytes is a min-max grid: every weight within half a step of its code.
    w_hat = dequantize_matmulnbits(b, scales, zp, bits, k, block)
    step = np.repeat(scales, block, axis=1)[:, :k]
    assert np.all(np.abs(w_hat - w.T) <= 0.5 * step + 1e-6)
