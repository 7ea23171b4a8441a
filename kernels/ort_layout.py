"""NumPy packers and decoders of the stock onnxruntime layouts (the `ort` and `qdq` formats).

Both formats split each output row's K inputs into blocks of ``block_size`` consecutive columns
(a power of two >= 16; the last block may be short); block ``j`` has one scale and one zero point.
Dequantized weight: ``W[n, k] = scale[n, j] * (q[n, k] - zero[n, j])`` with ``j = k // block_size``.

com.microsoft.MatMulNBits (``ort``), weight W [N, K] (row n = output feature n):

- ``B`` uint8 ``[N, k_blocks, block_size * bits / 8]``: the codes of block j of row n, packed
  low bits first: code i of the block sits in byte ``i * bits // 8`` at bit offset
  ``(i % (8 // bits)) * bits`` (4-bit: even codes in the low nibble). A short last block is
  padded with zero codes.
- ``scales`` float ``[N, k_blocks]``.
- ``zero_points`` uint8 ``[N, ceil(k_blocks * bits / 8)]``: the blocks' zero points packed the same
  way along the block axis (padding zeros). Omitted means ``2^(bits-1)`` everywhere (symmetric).

ONNX DequantizeLinear, blocked along axis 0 (``qdq``), weight W^T [K, N]:

- ``w_q`` [K, N] of type uint4/int4 (4-bit) or uint8/int8 (8-bit); 4-bit tensors are stored two
  per byte in row-major order, first element in the low nibble (odd counts: high nibble of the
  last byte is 0). Symmetric grids use the signed type, ``q - 2^(bits-1)``, with no zero point.
- ``scale`` float ``[k_blocks, N]``; ``zero_point`` of the same shape and of ``w_q``'s type
  (omitted = 0).
"""

from __future__ import annotations

import numpy as np

#: Block sizes every bit width accepts in onnxruntime's CPU MatMulNBits (2-bit refuses > 256).
MIN_BLOCK = 16
MAX_BLOCK = 256
NBITS = (2, 4, 8)


def num_blocks(in_features: int, block_size: int) -> int:
    """Blocks per row: ceil(K / block_size)."""
    return -(-in_features // block_size)


def _check_bits(bits: int) -> int:
    """Codes per byte for `bits`; ValueError for widths that do not divide a byte."""
    if bits not in NBITS:
        raise ValueError(f"{bits}-bit codes cannot be packed in bytes; use 2, 4 or 8 bits")
    return 8 // bits


def pack_low_bits_first(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack codes [..., L] (0 <= code < 2**bits) along the last axis into uint8 [..., ceil(L*bits/8)]."""
    per = _check_bits(bits)
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"codes out of range for {bits} bits")
    length = codes.shape[-1]
    nbytes = -(-length // per)
    padded = np.zeros((*codes.shape[:-1], nbytes * per), dtype=np.uint8)
    padded[..., :length] = codes
    padded = padded.reshape(*codes.shape[:-1], nbytes, per)
    out = np.zeros((*codes.shape[:-1], nbytes), dtype=np.uint8)
    for i in range(per):
        out |= padded[..., i] << np.uint8(i * bits)
    return out


def unpack_low_bits_first(packed: np.ndarray, bits: int, length: int) -> np.ndarray:
    """Inverse of `pack_low_bits_first`: uint8 [..., nbytes] -> uint8 codes [..., length]."""
    per = _check_bits(bits)
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.shape[-1] * per < length:
        raise ValueError(f"packed shape {packed.shape} cannot hold {length} codes of {bits} bits")
    mask = np.uint8((1 << bits) - 1)
    codes = np.stack([(packed >> np.uint8(i * bits)) & mask for i in range(per)], axis=-1)
    return codes.reshape(*packed.shape[:-1], -1)[..., :length]


def pack_matmulnbits_weight(codes: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    """Codes [N, K] -> MatMulNBits B, uint8 [N, k_blocks, block_size*bits/8] (short last block zero-padded)."""
    codes = np.asarray(codes)
    n, k = codes.shape
    kb = num_blocks(k, block_size)
    padded = np.zeros((n, kb * block_size), dtype=np.uint8)
    padded[:, :k] = codes
    return pack_low_bits_first(padded.reshape(n, kb, block_size), bits)


def unpack_matmulnbits_weight(b: np.ndarray, bits: int, in_features: int) -> np.ndarray:
    """Inverse of `pack_matmulnbits_weight`: B [N, k_blocks, blob] -> uint8 codes [N, K]."""
    b = np.asarray(b, dtype=np.uint8)
    n, kb, blob = b.shape
    block_size = blob * 8 // bits
    return unpack_low_bits_first(b, bits, block_size).reshape(n, kb * block_size)[:, :in_features]


def pack_matmulnbits_zeros(zeros: np.ndarray, bits: int) -> np.ndarray:
    """Zero points [N, k_blocks] -> uint8 [N, ceil(k_blocks*bits/8)] (low bits first along blocks)."""
    return pack_low_bits_first(zeros, bits)


def unpack_matmulnbits_zeros(zero_points: np.ndarray, bits: int, blocks: int) -> np.ndarray:
    """Inverse of `pack_matmulnbits_zeros`: uint8 [N, nbytes] -> zero points uint8 [N, k_blocks]."""
    return unpack_low_bits_first(zero_points, bits, blocks)


def dequantize_matmulnbits(
    b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int, in_features: int, block_size: int
) -> np.ndarray:
    """MatMulNBits' weight as onnxruntime defines it: float64 [N, K] (zero points None = 2^(bits-1))."""
    q = unpack_matmulnbits_weight(b, bits, in_features).astype(np.float64)
    kb = num_blocks(in_features, block_size)
    if zero_points is None:
        z = np.full((q.shape[0], kb), 1 << (bits - 1), dtype=np.float64)
    else:
        z = unpack_matmulnbits_zeros(zero_points, bits, kb).astype(np.float64)
    cols = np.arange(in_features) // block_size
    return (q - z[:, cols]) * np.asarray(scales, dtype=np.float64)[:, cols]


def pack_onnx_4bit(values: np.ndarray) -> np.ndarray:
    """ONNX int4/uint4 storage: values (any shape, -8..7 or 0..15) flattened row-major, two per byte, first low."""
    flat = np.asarray(values).reshape(-1)
    if flat.size and (flat.min() < -8 or flat.max() > 15):
        raise ValueError("4-bit values must lie in -8..7 (int4) or 0..15 (uint4)")
    return pack_low_bits_first((flat & 0xF).astype(np.uint8), 4)


def unpack_onnx_4bit(packed: np.ndarray, shape: tuple[int, ...], signed: bool) -> np.ndarray:
    """Inverse of `pack_onnx_4bit`: int8 (signed) or uint8 values of `shape`."""
    count = int(np.prod(shape, dtype=np.int64))
    nib = unpack_low_bits_first(np.asarray(packed, dtype=np.uint8).reshape(-1), 4, count).reshape(shape)
    if signed:
        return (nib.astype(np.int8) ^ np.int8(8)) - np.int8(8)  # sign-extend the nibble
    return nib


def dequantize_blocked(
    w_q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, block_size: int
) -> np.ndarray:
    """DequantizeLinear(axis=0, block_size) as ONNX defines it: float64 [K, N] from w_q [K, N], scale [k_blocks, N]."""
    rows = np.arange(w_q.shape[0]) // block_size
    z = 0.0 if zero_point is None else np.asarray(zero_point, dtype=np.float64)[rows]
    return (np.asarray(w_q, dtype=np.float64) - z) * np.asarray(scale, dtype=np.float64)[rows]
