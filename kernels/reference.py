"""NumPy reference of the packed `gptq` format: the single source of truth for its layout.

A quantized Linear with weight W [N, K] (N outputs, K inputs) is stored as

- ``qweight`` int32 ``[ceil(K / 32) * bits, N]``: the codes of column n along K as a little-endian
  bitstream. Each run of 32 consecutive K positions ("chunk" c) fills ``bits`` 32-bit words, rows
  ``c*bits .. c*bits+bits-1``; code k sits at bit offset ``(k % 32) * bits`` of that chunk (low
  bits first; a 3-bit code may straddle two words). For 2, 4 and 8 bits this is the usual GPTQ
  int32 packing (code k in word k // (32 / bits) at shift ``bits * (k % (32 / bits))``). Missing
  codes past K are zero.
- ``scales`` float32 ``[n_groups, N]``.
- ``qzeros`` int32 ``[n_groups, ceil(N / 32) * bits]``: integer zero points packed with the same
  bitstream scheme, along N.
- ``g_idx`` int32 ``[K]``: group of each input column (``k // group_size`` unless act-order with
  dynamic groups reorders them).

Dequantized weight, transposed to [K, N]: ``W[k, n] = scales[g, n] * (q[k, n] - z[g, n])`` with
``g = g_idx[k]``, and ``y = x @ W + bias``.
"""

from __future__ import annotations

import numpy as np

CHUNK = 32  # codes per chunk of the bitstream; a chunk is exactly `bits` int32 words


def packed_rows(length: int, bits: int) -> int:
    """Number of int32 words that hold `length` codes of `bits` bits."""
    return -(-length // CHUNK) * bits


def _bit_layout(bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Word index and bit shift, within one chunk, of each of its 32 codes."""
    offsets = np.arange(CHUNK) * bits
    return offsets // 32, offsets % 32


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack integer codes [L, M] (0 <= code < 2**bits) along axis 0 into int32 [packed_rows(L), M]."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D, got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"codes out of range for {bits} bits")
    length, cols = codes.shape
    nchunks = -(-length // CHUNK)
    padded = np.zeros((nchunks * CHUNK, cols), dtype=np.uint64)
    padded[:length] = codes
    padded = padded.reshape(nchunks, CHUNK, cols)
    word, shift = _bit_layout(bits)
    # Each code lands in a 64-bit accumulator spanning word w and w+1 of its chunk.
    acc = np.zeros((nchunks, bits + 1, cols), dtype=np.uint64)
    for j in range(CHUNK):
        acc[:, word[j]] |= padded[:, j] << np.uint64(shift[j])
    lo = acc & np.uint64(0xFFFFFFFF)
    hi = acc >> np.uint64(32)
    words = lo[:, :bits].copy()
    words[:, 1:] |= hi[:, : bits - 1]
    return words.reshape(nchunks * bits, cols).astype(np.uint32).view(np.int32)


def unpack_codes(packed: np.ndarray, bits: int, length: int) -> np.ndarray:
    """Inverse of `pack_codes`: int32 [packed_rows(length), M] -> uint8 codes [length, M]."""
    packed = np.asarray(packed)
    rows, cols = packed.shape
    if rows % bits or rows // bits * CHUNK < length:
        raise ValueError(f"packed shape {packed.shape} cannot hold {length} codes of {bits} bits")
    words = packed.view(np.uint32).astype(np.uint64).reshape(rows // bits, bits, cols)
    # Append a zero word so that word w+1 always exists.
    words = np.concatenate([words, np.zeros_like(words[:, :1])], axis=1)
    word, shift = _bit_layout(bits)
    pair = words[:, word] | (words[:, word + 1] << np.uint64(32))  # [chunks, 32, M]
    codes = (pair >> shift.astype(np.uint64)[None, :, None]) & np.uint64((1 << bits) - 1)
    return codes.reshape(-1, cols)[:length].astype(np.uint8)


def pack_zeros(zeros: np.ndarray, bits: int) -> np.ndarray:
    """Zero points [G, N] -> qzeros int32 [G, packed_rows(N)] (bitstream along N)."""
    return np.ascontiguousarray(pack_codes(np.asarray(zeros).T, bits).T)


def unpack_zeros(qzeros: np.ndarray, bits: int, out_features: int) -> np.ndarray:
    """Inverse of `pack_zeros`: qzeros [G, packed_rows(N)] -> uint8 [G, N]."""
    return np.ascontiguousarray(unpack_codes(np.asarray(qzeros).T, bits, out_features).T)


def default_g_idx(in_features: int, group_size: int) -> np.ndarray:
    """g_idx of contiguous groups (group_size -1 = one group)."""
    g = in_features if group_size == -1 else group_size
    return (np.arange(in_features) // g).astype(np.int32)


def dequantize(
    qweight: np.ndarray,
    scales: np.ndarray,
    qzeros: np.ndarray,
    g_idx: np.ndarray,
    bits: int,
    in_features: int,
    out_features: int,
    dtype: type = np.float32,
) -> np.ndarray:
    """Dequantized weight, transposed: [K, N] in `dtype` (float64 for references)."""
    q = unpack_codes(qweight, bits, in_features)
    z = unpack_zeros(qzeros, bits, out_features)
    g = np.asarray(g_idx, dtype=np.int64)
    s = np.asarray(scales, dtype=dtype)
    return (q.astype(dtype) - z[g].astype(dtype)) * s[g]


def quant_matmul(
    x: np.ndarray,
    qweight: np.ndarray,
    scales: np.ndarray,
    qzeros: np.ndarray,
    g_idx: np.ndarray,
    bias: np.ndarray | None,
    bits: int,
    in_features: int,
    out_features: int,
) -> np.ndarray:
    """y[..., N] = x[..., K] @ dequantize(...) + bias (bias of size 0 or None = no bias)."""
    w = dequantize(qweight, scales, qzeros, g_idx, bits, in_features, out_features, dtype=x.dtype)
    y = x @ w
    if bias is not None and bias.size:
        y = y + bias.astype(x.dtype)
    return y
