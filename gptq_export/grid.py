"""The quantization grid (GPTQ's `Quantizer`): per-row (or per row x group) min-max scale and zero.

Asymmetric: scale = (max - min) / (2^b - 1), zero = round(-min / scale).
Symmetric: scale = 2 max|w| / (2^b - 1), zero = 2^(b-1).
min and max are first widened to include 0; an all-zero row gets the range [-1, 1].
q = clamp(round(w / scale) + zero, 0, 2^b - 1); w_hat = scale * (q - zero).
"""

from __future__ import annotations

import torch


def grid_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point, each [rows], of the rows of `w` [rows, cols]."""
    maxq = (1 << bits) - 1
    zero_t = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    xmin = torch.minimum(w.min(dim=1).values, zero_t)
    xmax = torch.maximum(w.max(dim=1).values, zero_t)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes (same float dtype as `w`) of `w` [rows] or [rows, cols] on the grid (scale, zero) [rows]."""
    if w.dim() == 2:
        scale, zero = scale[:, None], zero[:, None]
    return torch.clamp(torch.round(w / scale) + zero, 0, (1 << bits) - 1)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """scale * (q - zero), broadcasting [rows] parameters over [rows, cols] codes."""
    if q.dim() == 2:
        scale, zero = scale[:, None], zero[:, None]
    return scale * (q - zero)
