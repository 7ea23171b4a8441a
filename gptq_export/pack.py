"""Pack quantized weights into the `gptq` format (layout: `gptq_export.kernels.reference`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gptq import QuantizedWeight
from .kernels.reference import pack_codes, pack_zeros, unpack_codes, unpack_zeros


@dataclass
class PackedLinear:
    """Packed tensors of one Linear, ready to become initializers.

    qweight int32 [ceil(K/32)*bits, N]; scales float32 [G, N]; qzeros int32 [G, ceil(N/32)*bits];
    g_idx int32 [K]; group_size is the effective size (K when per channel).
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    qzeros: torch.Tensor
    g_idx: torch.Tensor
    bits: int
    in_features: int
    out_features: int
    group_size: int

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.qzeros, self.g_idx))


def pack_linear(qw: QuantizedWeight, group_size: int) -> PackedLinear:
    """QuantizedWeight (codes [N, K]) -> PackedLinear; group_size -1 is stored as K."""
    N, K = qw.codes.shape
    return PackedLinear(
        qweight=torch.from_numpy(pack_codes(qw.codes.T.cpu().numpy(), qw.bits)),
        scales=qw.scales.detach().to(torch.float32).cpu().contiguous(),
        qzeros=torch.from_numpy(pack_zeros(qw.zeros.cpu().numpy(), qw.bits)),
        g_idx=qw.g_idx.to(torch.int32).cpu().contiguous(),
        bits=qw.bits,
        in_features=K,
        out_features=N,
        group_size=K if group_size == -1 else group_size,
    )


def unpack_linear(p: PackedLinear) -> QuantizedWeight:
    """Inverse of `pack_linear` (used by tests and inspection)."""
    codes = unpack_codes(p.qweight.numpy(), p.bits, p.in_features).T
    zeros = unpack_zeros(p.qzeros.numpy(), p.bits, p.out_features)
    return QuantizedWeight(
        codes=torch.from_numpy(codes.copy()),
        scales=p.scales.clone(),
        zeros=torch.from_numpy(zeros.copy()),
        g_idx=p.g_idx.clone(),
        bits=p.bits,
    )
