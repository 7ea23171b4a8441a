"""Bit-exact pack/unpack of the `gptq` format, and the NumPy quant_matmul against float64."""

from __future__ import annotations

import numpy as np
import pytest

from gptq_export.kernels.reference import (
    default_g_idx,
    dequantize,
    pack_codes,
    pack_zeros,
    packed_rows,
    quant_matmul,
    unpack_codes,
    unpack_zeros,
)

BITS = (2, 3, 4, 8)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(1, 1), (31, 3), (32, 7), (33, 1), (96, 5), (577, 11), (1000, 2)])
def test_pack_unpack_round_trip_is_bit_exact(bits, shape):
    rng = np.random.default_rng()
    codes = rng.integers(0, 1 << bits, size=shape)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.int32
    assert packed.shape == (packed_rows(shape[0], bits), shape[1])
    back = unpack_codes(packed, bits, shape[0])
    np.testing.assert_array_equal(back, codes)
    # Repacking the unpacked codes reproduces the same words.
    np.testing.assert_array_equal(pack_codes(back, bits), packed)


@pytest.mark.parametrize("bits", BITS)
def test_bitstream_layout_matches_the_documented_offsets(bits):
    rng = np.random.default_rng()
    codes = rng.integers(0, 1 << bits, size=(64, 3))
    words = pack_codes(codes, bits).view(np.uint32)
    stream = [int(w) for w in words[:, 1]]  # column 1, chunk words in order
    for k in range(64):
        chunk, j = divmod(k, 32)
        value = 0
        for b in range(bits):  # read bit by bit from the little-endian stream
            off = j * bits + b
            word = stream[chunk * bits + off // 32]
            value |= ((word >> (off % 32)) & 1) << b
        assert value == codes[k, 1]


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError):
        pack_codes(np.array([[16]]), 4)
    with pytest.raises(ValueError):
        pack_codes(np.array([[-1]]), 4)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("M,K,N,group", [(1, 64, 8, 32), (2, 100, 33, -1), (3, 96, 5, 32), (5, 160, 40, 64)])
def test_quant_matmul_matches_float64(bits, M, K, N, group):
    rng = np.random.default_rng()
    codes = rng.integers(0, 1 << bits, size=(K, N))
    g_idx = default_g_idx(K, group)
    if group != -1:
        g_idx = rng.permutation(g_idx).astype(np.int32)  # act-order style scattering
    G = int(g_idx.max()) + 1
    scales = rng.uniform(0.01, 0.1, size=(G, N)).astype(np.float32)
    zeros = rng.integers(0, 1 << bits, size=(G, N))
    bias = rng.standard_normal(N).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    qweight, qzeros = pack_codes(codes, bits), pack_zeros(zeros, bits)
    assert qzeros.shape == (G, packed_rows(N, bits))
    np.testing.assert_array_equal(unpack_zeros(qzeros, bits, N), zeros)
    y = quant_matmul(x, qweight, scales, qzeros, g_idx, bias, bits, K, N)
    w64 = (codes - zeros[g_idx]).astype(np.float64) * scales[g_idx].astype(np.float64)
    ref = x.astype(np.float64) @ w64 + bias
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 1e-5
    np.testing.assert_allclose(dequantize(qweight, scales, qzeros, g_idx, bits, K, N, np.float64), w64, rtol=0, atol=0)
