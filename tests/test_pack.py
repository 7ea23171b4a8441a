"""QuantizedWeight <-> PackedLinear round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptq_export.config import QuantConfig
from gptq_export.gptq import rtn_quantize
from gptq_export.pack import pack_linear, unpack_linear


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("N,K,group", [(1, 17, -1), (33, 64, 16), (7, 100, 32)])
def test_pack_linear_round_trip_is_exact(bits, N, K, group):
    W = torch.randn(N, K)
    qw = rtn_quantize(W, QuantConfig(bits=bits, group_size=group))
    qw.g_idx = torch.from_numpy(np.random.default_rng().permutation(qw.g_idx.numpy()))  # act-order-like
    p = pack_linear(qw, group)
    assert p.qweight.dtype == torch.int32 and p.qzeros.dtype == torch.int32
    assert p.group_size == (K if group == -1 else group)
    back = unpack_linear(p)
    assert torch.equal(back.codes, qw.codes)
    assert torch.equal(back.zeros, qw.zeros)
    assert torch.equal(back.g_idx, qw.g_idx)
    assert torch.equal(back.dequantized(), qw.dequantized())
