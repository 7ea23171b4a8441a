"""GPTQ core (Frantar et al. 2023, Algorithm 1) and the round-to-nearest baseline.

Pure functions of (W, H, config): no graph, no I/O. W is [N, K] (rows = outputs, like
`nn.Linear.weight`), H = 2 X X^T / n is [K, K]. Arithmetic runs in W's dtype (float32 in the
exporter, float64 in tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import QuantConfig
from .errors import GptqExportError
from .grid import grid_params

MAX_DAMP_RETRIES = 6


@dataclass
class QuantizedWeight:
    """Result of quantizing one weight matrix W [N, K].

    codes: uint8 [N, K] integer codes, in the original column order.
    scales: [G, N] and zeros: uint8 [G, N], one row per group (G = 1 per channel).
    g_idx: int32 [K], group of each input column.
    percdamp: dampening actually used (after Cholesky retries); 0 for RTN.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    bits: int
    percdamp: float = 0.0

    def dequantized(self) -> torch.Tensor:
        """W_hat [N, K] in the scales' dtype."""
        g = self.g_idx.long()
        s = self.scales[g].T  # [N, K]
        z = self.zeros[g].T.to(s.dtype)
        return s * (self.codes.to(s.dtype) - z)


def reconstruction_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """||W X - W_hat X||^2 / n, summed over outputs, from H = 2 X X^T / n (no dampening)."""
    D = (W - W_hat).to(H.dtype)
    return float(0.5 * torch.einsum("nk,kl,nl->", D, H, D))


def _upper_cholesky_of_inverse(H: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, float]:
    """Hinv = upper Cholesky factor of (H + damp I)^-1, raising the dampening until H is PD."""
    K = H.shape[0]
    mean_diag = torch.diag(H).mean()
    damp = percdamp
    for _ in range(MAX_DAMP_RETRIES):
        Hd = H + damp * mean_diag * torch.eye(K, dtype=H.dtype, device=H.device)
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                return U, damp
        damp *= 10.0
    raise GptqExportError(
        f"the Hessian stays singular even with {damp / 10:g} dampening; use more calibration "
        "samples (--nsamples) or --method rtn"
    )


def _group_size(config: QuantConfig, K: int) -> int:
    return K if config.group_size == -1 else config.group_size


def _static_group_params(W: torch.Tensor, config: QuantConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(scale, zero) of every contiguous group of the original W."""
    g = _group_size(config, W.shape[1])
    return [grid_params(W[:, j : j + g], config.bits, config.sym) for j in range(0, W.shape[1], g)]


@dataclass
class PreparedHessian:
    """Everything GPTQ derives from H alone; Linears that read the same input (q/k/v) share it.

    Hinv: upper Cholesky factor of (H[perm][:, perm] + damp I)^-1; perm: column order (act-order);
    dead: inputs that never fired (H[d, d] == 0); percdamp: dampening actually used.
    """

    Hinv: torch.Tensor
    perm: torch.Tensor
    dead: torch.Tensor
    percdamp: float


def prepare_hessian(H: torch.Tensor, config: QuantConfig) -> PreparedHessian:
    """Dead inputs, act-order permutation, dampening and Hinv (steps 2-5 of the method)."""
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    if config.act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        H = H[perm][:, perm]
    else:
        perm = torch.arange(H.shape[0], device=H.device)
    Hinv, damp = _upper_cholesky_of_inverse(H, config.percdamp)
    return PreparedHessian(Hinv, perm, dead, damp)


def gptq_quantize(
    W: torch.Tensor, H: torch.Tensor, config: QuantConfig, prepared: PreparedHessian | None = None
) -> QuantizedWeight:
    """Quantize W [N, K] column by column, spreading each rounding error over the columns left.

    Reads like Algorithm 1: Hinv = Cholesky(H^-1)^T, then blocks of `block_size` columns; inside
    a block each column is rounded and its scaled error `Err1` updates the block's remaining
    columns; after the block, one matrix product applies the block's errors to all later columns
    (lazy batch update). Columns are stored as rows (W transposed) so each step is contiguous.
    """
    p = prepared if prepared is not None else prepare_hessian(H.to(W.dtype), config)
    W = W.clone()
    W[:, p.dead] = 0
    N, K = W.shape
    bits, B, g = config.bits, config.block_size, _group_size(config, K)
    maxq = (1 << bits) - 1
    Hinv = p.Hinv.to(W.dtype)

    # Per-channel params come from the whole row; static groups from the original W.
    static = _static_group_params(W, config) if (config.static_groups or config.group_size == -1) else None
    perm = p.perm.tolist()

    Wt = W[:, p.perm].T.contiguous()  # [K, N]: row k is (permuted) column k of W
    codes_t = torch.empty_like(Wt)
    col_group = torch.zeros(K, dtype=torch.long)  # group of each permuted column
    dyn_params: list[tuple[torch.Tensor, torch.Tensor]] = []
    scale = zero = None

    for i1 in range(0, K, B):
        i2 = min(i1 + B, K)
        W1 = Wt[i1:i2]  # a view: updated in place, never read again once quantized
        C1 = codes_t[i1:i2]
        Err1 = torch.empty_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diagonal(Hinv1).tolist()

        for i in range(i2 - i1):
            col = i1 + i
            if static is not None:
                gi = perm[col] // g
                scale, zero = static[gi]
            elif col % g == 0:
                gi = col // g
                # Current (error-updated) weights of this group: inside the block from W1; past it,
                # Wt still lacks this block's pending lazy update, so apply it for those columns.
                end = min(col + g, K)
                cur = W1[i : min(end, i2) - i1]
                if end > i2:
                    rest = Wt[i2:end] - Hinv[i1 : i1 + i, i2:end].T @ Err1[:i]
                    cur = torch.cat([cur, rest])
                scale, zero = grid_params(cur.T, bits, config.sym)
                dyn_params.append((scale, zero))
            else:
                gi = col // g
            col_group[col] = gi

            w = W1[i]
            q_int = torch.div(w, scale, out=C1[i]).round_().add_(zero).clamp_(0, maxq)
            err = Err1[i]
            torch.sub(q_int, zero, out=err).mul_(scale).neg_().add_(w).div_(d[i])  # (w - q) / Hinv[i, i]
            W1[i + 1 :].addr_(Hinv1[i, i + 1 :], err, alpha=-1)

        Wt[i2:].addmm_(Hinv[i1:i2, i2:].T, Err1, alpha=-1)

    invperm = torch.argsort(p.perm)
    params = static if static is not None else dyn_params
    return QuantizedWeight(
        codes=codes_t.T[:, invperm].to(torch.uint8),
        scales=torch.stack([s for s, _ in params]),
        zeros=torch.stack([z for _, z in params]).to(torch.uint8),
        g_idx=col_group[invperm].to(torch.int32),
        bits=bits,
        percdamp=p.percdamp,
    )


def rtn_quantize(W: torch.Tensor, config: QuantConfig) -> QuantizedWeight:
    """Round-to-nearest on the same grid and groups as GPTQ (no error feedback)."""
    N, K = W.shape
    g = _group_size(config, K)
    params = _static_group_params(W, config)
    g_idx = torch.arange(K, device=W.device) // g
    scales = torch.stack([s for s, _ in params])
    zeros = torch.stack([z for _, z in params])
    codes = torch.clamp(torch.round(W / scales[g_idx].T) + zeros[g_idx].T, 0, (1 << config.bits) - 1)
    return QuantizedWeight(
        codes=codes.to(torch.uint8),
        scales=scales,
        zeros=zeros.to(torch.uint8),
        g_idx=g_idx.to(torch.int32),
        bits=config.bits,
    )


def num_groups(K: int, config: QuantConfig) -> int:
    """Number of scale/zero rows for a layer with K inputs."""
    return math.ceil(K / _group_size(config, K))
