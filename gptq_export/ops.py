"""The torch custom op that quantized Linears become: `gptq_export::quant_linear`.

    quant_linear(x[..., K], qweight, scales, qzeros, g_idx, bias, K, N, bits, group_size) -> y[..., N]

Tensors follow the packed `gptq` format of `gptq_export.kernels.reference` (the single source of
truth); `bias` of size 0 means "no bias". The CPU implementation dequantizes with that NumPy
reference and multiplies; a fake implementation gives shapes to torch.export.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import DOMAIN
from .kernels.reference import quant_matmul

OP_NAME = f"{DOMAIN}::quant_linear"


@torch.library.custom_op(OP_NAME, mutates_args=())
def quant_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor,
    g_idx: torch.Tensor,
    bias: torch.Tensor,
    in_features: int,
    out_features: int,
    bits: int,
    group_size: int,
) -> torch.Tensor:
    """y = x @ dequant(qweight, scales, qzeros, g_idx) + bias (CPU reference implementation)."""
    xn = x.detach().cpu().to(torch.float32).numpy()
    y = quant_matmul(
        xn,
        qweight.cpu().numpy(),
        scales.cpu().to(torch.float32).numpy(),
        qzeros.cpu().numpy(),
        g_idx.cpu().numpy(),
        bias.cpu().to(torch.float32).numpy() if bias.numel() else None,
        bits,
        in_features,
        out_features,
    )
    return torch.from_numpy(np.ascontiguousarray(y)).to(device=x.device, dtype=x.dtype)


@quant_linear.register_fake
def _quant_linear_fake(x, qweight, scales, qzeros, g_idx, bias, in_features, out_features, bits, group_size):
    return x.new_empty((*x.shape[:-1], out_features))


def quant_linear_target():
    """The OpOverload that graph nodes call."""
    return torch.ops.gptq_export.quant_linear.default


@quant_linear.register_kernel("cuda")
def _quant_linear_cuda(x, qweight, scales, qzeros, g_idx, bias, in_features, out_features, bits, group_size):
    """CUDA implementation: the fused kernels of `gptq_export.kernels.torch_cuda` (CuPy, zero-copy
    through DLPack, on PyTorch's current stream); imported on first use."""
    from .kernels.torch_cuda import quant_linear_cuda

    return quant_linear_cuda(x, qweight, scales, qzeros, g_idx, bias, in_features, out_features, bits, group_size)
