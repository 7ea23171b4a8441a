"""NumPy definition of the GPU tile layout read by the CUDA kernels (no GPU needed).

See `gptq_export.kernels.cuda` for the layout description; the GPU repack kernels are tested
bit-exactly against `repack_numpy` / `unpack_tc_numpy` here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .reference import unpack_codes, unpack_zeros

UNIT = 128  # K' positions per unit (8 mma k-steps)
N_ALIGN = 64  # N' multiple
THREADS = 256  # 8 warps per block (WARPS in the .cu)
WORDS_PER_UNIT = {2: 4, 3: 6, 4: 8, 8: 16}  # per lane
MAX_FUSED_M = 32  # above: dequantize to fp16 + cuBLAS (measured faster from M = 64 on an H100)
#: Largest staged x (shared memory per block) for each occupancy (blocks per SM) of the fused kernel.
XS_MAX_BYTES = {2: 110 * 1024, 3: 72 * 1024, 4: 52 * 1024}
#: Batch rows for which the fused kernel stages x in shared memory by default. Measured on an H100
#: (tools/bench_kernels.py): staged + 4 blocks/SM is the fastest at M = 1 (8192 x 28672 4-bit:
#: 50 us against 53-63 us for the other variants), x read from global memory is faster at M = 4.
STAGE_MAX_M = 1
SZ_PAD = 0x64000000


# ------------------------------------------------------------------------------------------------
# layout (NumPy, no GPU needed)


@dataclass(frozen=True, eq=False)
class TileLayout:
    """Shape of one Linear in the GPU tile layout (see module docstring).

    perm: int32 [Kp], original column of each K' position, -1 for padding.
    """

    bits: int
    K: int
    N: int
    G: int
    gst: int  # mma k-steps (16 positions) per group in K': 1, 2, 4 or a multiple of 8
    Kp: int
    Np: int
    Gp: int
    direct: bool  # K' order is K order on [0, K) and K % 8 == 0: x is read in place
    perm: np.ndarray

    @property
    def nu(self) -> int:
        """Units (128 K' positions) per n-tile."""
        return self.Kp // UNIT

    @property
    def gstc(self) -> int:
        """Compile-time group class of the kernels: gst, or 8 for every multiple of 8."""
        return min(self.gst, 8)

    @property
    def span(self) -> int:
        return 16 * self.gstc

    @property
    def upg(self) -> int:
        """Units per group (gst >= 8)."""
        return max(self.gst // 8, 1)

    @property
    def words(self) -> int:
        """uint32 words of the weight tensor."""
        return (self.Np // 16) * self.nu * 32 * WORDS_PER_UNIT[self.bits]


def _check_bits(bits: int) -> int:
    if bits not in WORDS_PER_UNIT:
        raise ValueError(f"bits must be one of {sorted(WORDS_PER_UNIT)}, got {bits}")
    return bits


def plan_layout(g_idx: np.ndarray, bits: int, in_features: int, out_features: int, n_groups: int) -> TileLayout:
    """Padding and order of K' for `g_idx` [K] (groups 0..n_groups-1, any order: act-order)."""
    _check_bits(bits)
    K, N, G = int(in_features), int(out_features), int(n_groups)
    if K <= 0 or N <= 0 or G <= 0:
        raise ValueError(f"K, N and the number of groups must be positive, got K={K} N={N} G={G}")
    g = np.asarray(g_idx).astype(np.int64, copy=False).reshape(-1)
    if g.shape != (K,):
        raise ValueError(f"g_idx must have shape ({K},), got {np.asarray(g_idx).shape}")
    if g.min() < 0 or g.max() >= G:
        raise ValueError(f"g_idx values must lie in [0, {G}), got [{g.min()}, {g.max()}]")
    counts = np.bincount(g, minlength=G)
    steps = max(1, -(-int(counts.max()) // 16))
    gst = 1 if steps == 1 else 2 if steps == 2 else 4 if steps <= 4 else -(-steps // 8) * 8
    gk = 16 * gst
    Kp = -(-G * gk // UNIT) * UNIT
    Gp = -(-Kp // gk)
    order = np.argsort(g, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    gs = g[order]
    pos = gs * gk + (np.arange(K) - starts[gs])
    perm = np.full(Kp, -1, np.int32)
    perm[pos] = order
    direct = K % 8 == 0 and bool(np.array_equal(perm[:K], np.arange(K)))
    Np = -(-N // N_ALIGN) * N_ALIGN
    return TileLayout(bits, K, N, G, gst, Kp, Np, Gp, direct, perm)


def _slot_positions(lay: TileLayout, ts: int, pr: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """K' position [NU, 32] and output n [ntiles, 32] of one code of every lane's unit."""
    lane = np.arange(32)
    g, t = lane >> 2, lane & 3
    S, TS = lay.span, lay.span // 16
    j = 2 * (pr >> 1) + hi
    kp = np.arange(lay.nu)[:, None] * UNIT + (ts // TS) * S + t[None, :] * (S // 4) + (ts % TS) * 4 + j
    n = np.arange(lay.Np // 16)[:, None] * 16 + g[None, :] + 8 * (pr & 1)
    return kp, n


def _code_bits(bits: int, ts: int, pr: int, hi: int) -> list[tuple[int, int, int]]:
    """(word, shift, code bit mask) pieces that place one code in a lane's unit words."""
    if bits == 4:
        return [(ts, 4 * (pr + 4 * hi), 0xF)]
    if bits == 2:
        p = (ts & 1) * 4 + pr
        return [(ts >> 1, 2 * (p + 8 * hi), 0x3)]
    if bits == 8:
        return [(2 * ts + (pr >> 1), 8 * ((pr & 1) + 2 * hi), 0xFF)]
    tr, p = ts >> 2, (ts & 3) * 4 + pr
    if p < 15:
        return [(3 * tr + p // 5, 3 * (p % 5) + 16 * hi, 0x7)]
    return [(3 * tr + b, 15 + 16 * hi - b, 1 << b) for b in range(3)]  # bit b of the code -> bit 15/31


def _to_memory_order(words: np.ndarray, bits: int) -> np.ndarray:
    """[ntiles, NU, 32, WPU] lane words -> the flat uint32 tensor (16-byte vectors per lane)."""
    nt, nu = words.shape[:2]
    if bits == 3:
        return np.concatenate([words[..., :4].reshape(nt, nu, 128), words[..., 4:].reshape(nt, nu, 64)], axis=2).ravel()
    wpu = WORDS_PER_UNIT[bits]
    return words.reshape(nt, nu, 32, wpu // 4, 4).transpose(0, 1, 3, 2, 4).ravel()


def _from_memory_order(flat: np.ndarray, lay: TileLayout) -> np.ndarray:
    nt, nu, bits = lay.Np // 16, lay.nu, lay.bits
    wpu = WORDS_PER_UNIT[bits]
    flat = np.asarray(flat, dtype=np.uint32).reshape(nt, nu, 32 * wpu)
    if bits == 3:
        return np.concatenate([flat[..., :128].reshape(nt, nu, 32, 4), flat[..., 128:].reshape(nt, nu, 32, 2)], axis=3)
    return flat.reshape(nt, nu, wpu // 4, 32, 4).transpose(0, 1, 3, 2, 4).reshape(nt, nu, 32, wpu)


def repack_numpy(
    qweight: np.ndarray,
    scales: np.ndarray,
    qzeros: np.ndarray,
    g_idx: np.ndarray,
    bits: int,
    in_features: int,
    out_features: int,
) -> tuple[TileLayout, np.ndarray, np.ndarray]:
    """CPU format -> (layout, tc words uint32 [layout.words], sz uint32 [Gp, Np]); the reference
    that the GPU repack kernels are tested against, bit for bit."""
    K, N = int(in_features), int(out_features)
    scales = np.asarray(scales, dtype=np.float32)
    lay = plan_layout(g_idx, bits, K, N, scales.shape[0])
    codes = unpack_codes(np.asarray(qweight), bits, K)  # [K, N]
    C = np.zeros((lay.Kp, lay.Np), np.uint32)
    valid = np.nonzero(lay.perm >= 0)[0]
    C[valid, :N] = codes[lay.perm[valid]]
    wpu = WORDS_PER_UNIT[bits]
    words = np.zeros((lay.Np // 16, lay.nu, 32, wpu), np.uint32)
    for ts in range(8):
        for pr in range(4):
            for hi in range(2):
                kp, n = _slot_positions(lay, ts, pr, hi)
                code = C[kp[None, :, :], n[:, None, :]]
                for word, shift, mask in _code_bits(bits, ts, pr, hi):
                    piece = code & np.uint32(mask)
                    if shift >= 0:
                        words[..., word] |= piece << np.uint32(shift)
                    else:  # pragma: no cover - never negative for the documented layout
                        words[..., word] |= piece >> np.uint32(-shift)
    sz = np.full((lay.Gp, lay.Np), SZ_PAD, np.uint32)
    z = unpack_zeros(np.asarray(qzeros), bits, N).astype(np.uint32)
    lo = scales.astype(np.float16).view(np.uint16).astype(np.uint32)
    sz[: lay.G, :N] = lo | ((np.uint32(0x6400) | z) << np.uint32(16))
    return lay, _to_memory_order(words, bits), sz


def unpack_tc_numpy(lay: TileLayout, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tc words -> (codes uint8 [K, N] in the original column order, padding codes [Kp, Np] mask
    of nonzero codes found where the layout has no weight: must be all False)."""
    bits = lay.bits
    words = _from_memory_order(qw, lay)
    C = np.zeros((lay.Kp, lay.Np), np.uint32)
    for ts in range(8):
        for pr in range(4):
            for hi in range(2):
                kp, n = _slot_positions(lay, ts, pr, hi)
                code = np.zeros(words.shape[:3], np.uint32)
                for word, shift, mask in _code_bits(bits, ts, pr, hi):
                    code |= (words[..., word] >> np.uint32(shift)) & np.uint32(mask)
                C[kp[None, :, :], n[:, None, :]] = code
    valid = np.nonzero(lay.perm >= 0)[0]
    codes = np.zeros((lay.K, lay.N), np.uint8)
    codes[lay.perm[valid]] = C[valid, : lay.N]
    pad = C.astype(bool)
    pad[valid, : lay.N] = False
    return codes, pad


def decode_sz_numpy(lay: TileLayout, sz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sz -> (scales float32 [G, N] as rounded to fp16, zeros uint8 [G, N])."""
    sz = np.asarray(sz, dtype=np.uint32)[: lay.G, : lay.N]
    scales = (sz & 0xFFFF).astype(np.uint16).view(np.float16).astype(np.float32)
    zeros = ((sz >> 16) - 0x6400).astype(np.uint8)
    return scales, zeros
