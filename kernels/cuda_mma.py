"""Launcher of the fused dequantize + tensor-core GEMM for larger M (`qgemm_mma`, kernels/gptq_mma.cu).

It reads the same GPU tile layout as the small-M kernels (`GpuLinear`, kernels/cuda.py): no extra
repack. x must be fp16 in K' order (act-order, fp32 or unaligned x go through `prep_x` first, as
for the small-M kernel). Kernels are compiled once per process (kernels.cuda.function) and run on
the current CuPy stream.

Tiles (``MmaTile``): a block of WN x WM warps, each warp NTW n-tiles (16 outputs) x MBW m-blocks
(8 tokens); block tile BN = 16*NTW*WN outputs x BM = 8*MBW*WM tokens; one unit (128 K'
positions) per pipeline stage. ``split`` > 1 splits K' over blockIdx.z: fp32 partials go to a
workspace [split, M, N] that `mma_reduce` adds in a fixed order (deterministic) with the bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import cuda as kc

SMEM_LIMIT = 225 * 1024  # dynamic shared memory per block we allow (an H100 block may take 227 KB)
MAX_STAGES = 4
XROW = 17 * 16  # bytes per staged x row (gptq_mma.cu MmaCfg::XROW)


@dataclass(frozen=True)
class MmaTile:
    ntw: int  # n-tiles (16 outputs) per warp
    mbw: int  # m-blocks (8 tokens) per warp
    wn: int  # warps along N
    wm: int  # warps along M

    @property
    def bn(self) -> int:
        return 16 * self.ntw * self.wn

    @property
    def bm(self) -> int:
        return 8 * self.mbw * self.wm

    @property
    def threads(self) -> int:
        return 32 * self.wn * self.wm

    @property
    def label(self) -> str:
        return f"{self.bn}x{self.bm}"


#: Tiles the benchmarks sweep and the dispatch picks from (label = outputs x tokens per block).
TILES = {
    "256x64": MmaTile(4, 4, 4, 2),
    "128x128": MmaTile(4, 4, 2, 4),
    "256x128": MmaTile(4, 8, 4, 2),
    "128x64": MmaTile(4, 4, 2, 2),
}


def stage_bytes(bits: int, gstc: int, tile: MmaTile) -> int:
    ngu = 8 // gstc if gstc < 8 else 1
    return (tile.bn // 16) * 32 * kc.WORDS_PER_UNIT[bits] * 4 + ngu * tile.bn * 4 + tile.bm * XROW


def stages_for(bits: int, gstc: int, tile: MmaTile) -> int:
    st = min(MAX_STAGES, SMEM_LIMIT // stage_bytes(bits, gstc, tile))
    if st < 2:
        raise ValueError(f"tile {tile.label} does not fit shared memory with {bits} bits")
    return st


def kernel_name(bits: int, gstc: int, tile: MmaTile) -> str:
    t = tile
    return f"qgemm_mma<{bits},{gstc},{t.ntw},{t.mbw},{t.wn},{t.wm},{stages_for(bits, gstc, t)}>"


def smem_bytes(bits: int, gstc: int, tile: MmaTile) -> int:
    return stages_for(bits, gstc, tile) * stage_bytes(bits, gstc, tile)


def function(bits: int, gstc: int, tile: MmaTile):
    """The compiled kernel, with its dynamic shared-memory limit raised (once per process)."""
    return kc.function_with_smem(kernel_name(bits, gstc, tile), smem_bytes(bits, gstc, tile))


def kernel_names(bits=(2, 3, 4, 8), gstcs=(8, 4, 2, 1), tiles=None) -> list[str]:
    """Kernels of the tests and benchmarks (for kernels.cuda.precompile)."""
    tiles = tiles or list(TILES.values())
    return sorted({kernel_name(b, g, t) for b in bits for g in gstcs for t in tiles} | {"mma_reduce"})


sm_count = kc.sm_count  # module attribute: the plans below call it (tests replace it)


def default_plan(layer: kc.GpuLinear, M: int) -> tuple[MmaTile, int]:
    """(tile, split) for M rows: the 256 x 64 tile up to M = 128 (fastest or within 3% at M = 64 on
    every benchmark shape of an H100), else 256 x 128 where it makes at least half a wave of blocks
    (fastest at M = 512 on the 8192-wide shapes), else 128 x 64 (4096-wide); split K' so that the
    grid covers the SMs about once, with >= 4 units per split."""
    lay = layer.layout
    tile = TILES["256x64"]
    if M > 128:
        big = TILES["256x128"]
        tile = big if -(-lay.Np // big.bn) * -(-M // big.bm) >= sm_count() // 2 else TILES["128x64"]
    blocks = -(-lay.Np // tile.bn) * -(-M // tile.bm)
    split = max(1, min(8, sm_count() // blocks, lay.nu // 4))
    return tile, split


def mma_matmul(x2, layer: kc.GpuLinear, bias, out, *, tile: MmaTile | str | None = None, split: int | None = None,
               ws=None):
    """out[M, N] = x2[M, K'] @ W + bias with `qgemm_mma` (no validation of x2 beyond the kernel's
    contract: see `run`). Returns out."""
    lay = layer.layout
    M = x2.shape[0]
    if isinstance(tile, str):
        tile = TILES[tile]
    if tile is None or split is None:
        t0, s0 = default_plan(layer, M)
        tile, split = tile or t0, split or s0
    return run(x2, lay.Kp if x2.shape[1] == lay.Kp else lay.K, layer, bias, out, tile, split, ws)


def run(xk, kx: int, layer: kc.GpuLinear, bias, out, tile: MmaTile, split: int, ws=None):
    """Launch qgemm_mma (+ mma_reduce when split > 1).

    xk:   CuPy fp16 [M, ldx] in K' order (columns >= kx read as 0), C-contiguous, 16-byte aligned,
          ldx % 8 == 0, kx % 8 == 0.
    bias: CuPy fp32 [N] or None.   out: CuPy fp16 or fp32 [M, N], C-contiguous (written whole).
    ws:   optional CuPy fp32 buffer of >= split*M*N elements (split > 1; allocated when None).
    """
    cp = kc._cupy()
    lay = layer.layout
    M, ldx = xk.shape
    if xk.dtype != cp.float16 or not xk.flags.c_contiguous or xk.data.ptr % 16 or ldx % 8 or kx % 8 or kx > ldx:
        raise ValueError("x must be C-contiguous fp16 [M, ldx], 16-byte aligned, ldx and Kx multiples of 8")
    ws = check_gemm_args(M, lay.N, bias, out, split, ws)
    if M == 0:
        return out
    y_f32 = np.int32(out.dtype == cp.float32)
    i32 = np.int32
    null = np.uint64(0)
    grid = (-(-lay.Np // tile.bn), -(-M // tile.bm), split)
    function(lay.bits, lay.gstc, tile)(
        grid, (tile.threads,),
        (xk, i32(ldx), i32(kx), layer.qw, layer.sz, bias if (bias is not None and split == 1) else null,
         out, y_f32, ws if split > 1 else null, i32(M), i32(lay.N), i32(lay.Np), i32(lay.nu), i32(lay.upg),
         i32(split)),
        shared_mem=smem_bytes(lay.bits, lay.gstc, tile),
    )
    if split > 1:
        reduce_split(ws, split, bias, out, M, lay.N)
    return out


def check_gemm_args(M: int, N: int, bias, out, split: int, ws):
    """Validate the arguments shared by the split-K GEMM launchers (qgemm_mma, qgemm_wg): out,
    bias, split and the workspace, which is returned (allocated when split > 1 and ws is None)."""
    cp = kc._cupy()
    if out.dtype not in (cp.float16, cp.float32) or out.size != M * N or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous fp16/fp32 with {M} x {N} elements")
    if bias is not None and (bias.dtype != cp.float32 or bias.shape != (N,)):
        raise ValueError(f"bias must be fp32 [{N}]")
    if not 1 <= split <= 64:
        raise ValueError(f"split must be in [1, 64], got {split}")
    if split > 1:
        if ws is None:
            ws = cp.empty(split * M * N, dtype=cp.float32)
        elif ws.dtype != cp.float32 or ws.size < split * M * N or not ws.flags.c_contiguous:
            raise ValueError(f"ws must be a C-contiguous fp32 buffer of >= {split * M * N} elements")
    return ws


def reduce_split(ws, split: int, bias, out, M: int, N: int) -> None:
    """out[M, N] = the split fp32 partials of ws added in z order, + bias, cast to out's dtype."""
    cp = kc._cupy()
    i32 = np.int32
    blocks = max(1, min(-(-(M * N) // 256), 8 * sm_count()))
    kc.function("mma_reduce")((blocks,), (256,), (ws, i32(split), bias if bias is not None else np.uint64(0), out,
                                                   i32(out.dtype == cp.float32), i32(M), i32(N)))
