"""Observers: statistics of a Linear's inputs gathered during calibration."""

from __future__ import annotations

import torch

ROW_CHUNK = 8192  # rows per matmul when accumulating, to bound the float32 copy


class HessianObserver:
    """Running average H = 2 X X^T / n over every row x [..., K] seen (float32, TF32 off)."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.nsamples = 0

    def update(self, x: torch.Tensor) -> None:
        """Fold the rows of x [..., K] into H."""
        rows = x.detach().reshape(-1, x.shape[-1])
        for start in range(0, rows.shape[0], ROW_CHUNK):
            chunk = rows[start : start + ROW_CHUNK].to(torch.float32)
            m = chunk.shape[0]
            self.H *= self.nsamples / (self.nsamples + m)
            self.nsamples += m
            chunk = chunk * (2.0 / self.nsamples) ** 0.5
            self.H += chunk.T @ chunk
