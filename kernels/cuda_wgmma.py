"""Launcher of the Hopper fused dequantize + wgmma GEMM for prefill (`qgemm_wg`, kernels/gptq_wgmma.cu).

It reads the same GPU tile layout as the other kernels (`GpuLinear`, kernels/cuda.py): no extra
copy of the weights. x goes through one gather first (`prep`, the `prep_x` kernel with the
`wg_perm` index): the wgmma B operand is read by the tensor cores straight from shared memory, so
x must already be in the order of the decoded A fragments ("wg order"), which also applies
act-order and casts fp32 to fp16. The kernels need sm_90a (H100 / H200): `supported()` says
whether the current device has it. They are compiled once per process (kernels.cuda.function,
which adds ``-arch=sm_90a`` for these names) and run on the current CuPy stream.

Tiles (``WgTile``): a block of NWG warpgroups, each with FW m64 tiles of outputs and BM tokens
(one wgmma.m64n{BM}k16 per m64 tile and k-step); block tile BN = 64*FW*NWG outputs x BM tokens;
CN > 1 groups CN blocks along the outputs into a cluster that loads each x stage once (multicast).
x is prepared once per call (`prep`: [Kp/128, Mp/BM, 16, BM, 8], blocks of the tile's BM rows) so
that a block's x stage is one 1-D bulk copy (TMA; one per CTA of a cluster), not 16.
``split`` > 1 splits K' over blockIdx.z into an fp32 workspace that `mma_reduce` adds in a fixed
order (deterministic), as for `qgemm_mma`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import cuda as kc
from . import cuda_mma

SMEM_LIMIT = 225 * 1024  # dynamic shared memory per block we allow (an H100 block may take 227 KB)
MAX_STAGES = 6
MIN_STAGES = 3  # the pipeline loads unit it + STAGES - 1 while unit it computes
UNIT = kc.UNIT


@dataclass(frozen=True)
class WgTile:
    fw: int  # m64 output tiles per warpgroup
    bm: int  # tokens per block (the wgmma N: 64, 128 or 256)
    cn: int = 1  # CTAs per cluster along N (they share each x stage through multicast)
    wr: bool = False  # weights loaded straight into registers (one unit ahead), not staged by TMA
    nwg: int = 2  # warpgroups per block
    tail: WgTile | None = None  # blocks of the last, partial wave (split = 1 only): see `tail_start`
    sk: bool = False  # stream-K: one block per SM walks an equal share of all tiles' units (`stream_k_workers`)

    def __post_init__(self):
        if self.sk and self.tail is not None:
            raise ValueError("a stream-K tile has no tail: its blocks share the last wave's work")

    @property
    def bn(self) -> int:
        return 64 * self.fw * self.nwg

    @property
    def threads(self) -> int:
        return 128 * self.nwg + 128  # consumer warpgroups + a producer warpgroup

    @property
    def label(self) -> str:
        own = (f"{self.bn}x{self.bm}" + (f"c{self.cn}" if self.cn > 1 else "") + ("r" if self.wr else "")
               + ("s" if self.sk else ""))
        return own + (f"+{self.tail.label}" if self.tail else "")

    def parts(self) -> tuple[WgTile, ...]:
        """The block shapes launched: this one, then the tail's."""
        return (self,) + (self.tail.parts() if self.tail else ())


#: Tiles the benchmarks sweep and the dispatch picks from (label = outputs x tokens per block, then
#: cN = clusters of N blocks along the outputs sharing x, r = weights loaded into registers one
#: unit ahead, s = stream-K: `stream_k_workers`).
_BASE = (
    WgTile(1, 128), WgTile(2, 128), WgTile(1, 256), WgTile(1, 64), WgTile(2, 64, 1, True),
    WgTile(1, 128, 2), WgTile(1, 128, 4), WgTile(2, 128, 2), WgTile(1, 256, 2), WgTile(1, 256, 4),
    WgTile(1, 128, 1, True), WgTile(1, 128, 2, True), WgTile(1, 256, 2, True), WgTile(1, 256, 4, True),
    WgTile(1, 256, 4, True, sk=True), WgTile(1, 256, 2, True, sk=True), WgTile(1, 128, 1, True, sk=True),
    # three consumer warpgroups (192 outputs x 128 tokens; 128 registers per thread at entry, no
    # spill or serialized wgmma, nvcc 13.0): 1.5x the outputs per x stage of 128 x 128 blocks
    WgTile(1, 128, 1, True, 3), WgTile(1, 128, 2, True, 3), WgTile(1, 128, 1, True, 3, sk=True),
    WgTile(1, 128, 2, True, 3, sk=True),
)
#: ... and big blocks whose last, partial wave runs in smaller blocks ("main+tail").
_TAILED = tuple(WgTile(1, 256, cn, True, tail=tail) for cn in (2, 4)
                for tail in (WgTile(1, 128, 1, True), WgTile(1, 128, 2, True), WgTile(1, 64)))
TILES = {t.label: t for t in _BASE + _TAILED}
#: (Weights two units ahead in registers measured no faster than one on any H100 benchmark shape,
#: docs/gpu-results.md; removed.)


def stage_bytes(bits: int, gstc: int, tile: WgTile) -> int:
    ngu = 8 // gstc if gstc < 8 else 1
    head = (0 if tile.wr else (tile.bn // 16) * 32 * kc.WORDS_PER_UNIT[bits] * 4) + ngu * tile.bn * 4
    return -(-head // 128) * 128 + 16 * tile.bm * 16


def stages_for(bits: int, gstc: int, tile: WgTile) -> int:
    """Pipeline stages of the tile's own blocks (not of its tail's)."""
    st = min(MAX_STAGES, SMEM_LIMIT // stage_bytes(bits, gstc, tile))
    if st < MIN_STAGES:
        raise ValueError(f"tile {tile.label} does not fit shared memory with {bits} bits")
    return st


def fits(bits: int, gstc: int, tile: WgTile) -> bool:
    """Whether MIN_STAGES stages of the tile (and of its tail) fit shared memory (128 x 256 does
    not at 8 bits)."""
    return all(SMEM_LIMIT // stage_bytes(bits, gstc, t) >= MIN_STAGES for t in tile.parts())


def smem_bytes(bits: int, gstc: int, tile: WgTile) -> int:
    return stages_for(bits, gstc, tile) * stage_bytes(bits, gstc, tile)


def kernel_name(bits: int, gstc: int, tile: WgTile) -> str:
    t = tile
    sk = ",1" if t.sk else ""
    return f"qgemm_wg<{bits},{gstc},{t.fw},{t.bm},{t.nwg},{t.cn},{int(t.wr)},{stages_for(bits, gstc, t)}{sk}>"


def kernel_names(bits=(2, 3, 4, 8), gstcs=(8, 4, 2, 1), tiles=None) -> list[str]:
    """Kernels of the tests and benchmarks (for kernels.cuda.precompile)."""
    tiles = tiles or list(TILES.values())
    return sorted({kernel_name(b, g, p) for b in bits for g in gstcs for t in tiles if fits(b, g, t)
                   for p in t.parts()})


_SUPPORTED: dict[int, bool] = {}


def supported() -> bool:
    """Whether the current CuPy device runs sm_90a code (compute capability 9.0: H100, H200);
    asked once per device (it is on every launch's path)."""
    cp = kc._cupy()
    dev = cp.cuda.runtime.getDevice()
    if dev not in _SUPPORTED:
        _SUPPORTED[dev] = cp.cuda.Device(dev).compute_capability == "90"
    return _SUPPORTED[dev]


def available() -> bool:
    """`supported()`, False where CuPy or a CUDA device is missing (for the auto dispatch)."""
    try:
        return supported()
    except Exception:  # ImportError, CUDARuntimeError without a driver or device
        return False


def function(bits: int, gstc: int, tile: WgTile):
    """The compiled kernel, with its dynamic shared-memory limit raised (once per process)."""
    return kc.function_with_smem(kernel_name(bits, gstc, tile), smem_bytes(bits, gstc, tile))


def wg_perm_numpy(lay: kc.TileLayout) -> np.ndarray:
    """int32 [Kp]: original column of x at each position of the wg order (-1: padding).

    Position q = u*128 + 16*ts + 8*jh + e holds the K' position of A-fragment element (k-step ts,
    pair 2*jh, lane t = e // 2, half e % 2) of unit u: u*128 + (ts // TS)*S + t*(S/4) +
    (ts % TS)*4 + 2*jh + e % 2 (the tc layout's formula, kernels/cuda.py docstring)."""
    S = lay.span
    TS = S // 16
    q = np.arange(lay.Kp)
    u, r = q // UNIT, q % UNIT
    ts, jh, e = r // 16, (r // 8) % 2, r % 8
    kp = u * UNIT + (ts // TS) * S + (e // 2) * (S // 4) + (ts % TS) * 4 + 2 * jh + e % 2
    return lay.perm[kp].astype(np.int32)


def wg_perm(layer: kc.GpuLinear):
    """`wg_perm_numpy` on the layer's device (uploaded once, kept on the layer)."""
    if layer.wgperm is None:
        layer.wgperm = kc._cupy().asarray(wg_perm_numpy(layer.layout))
    return layer.wgperm


ROW_ALIGN = 256  # rows of the prepared x: a multiple of every tile's BM
#: 128 x 256 tiles in clusters of 4 need N' / 128 >= this x SMs (H100: 4096 x 11008 at 256 rows,
#: 64 us in clusters of 4 against 70 in clusters of 2; 8192 x 8192 at 512 rows: 202 us against 119).
C4_BLOCKS_PER_SM = 0.6


#: From SK_MIN_M rows (two 256-row blocks and more), the 128 x 256 blocks take their stream-K form
#: where they do not fill whole waves (`stream_k_workers`); layers of at most SK_C2_MAX_UNITS K'
#: units take clusters of 2 there, not 4. H100, 4-bit g128, 512 rows, kernel only (tools/probe_wgmma.py
#: --variants, docs/gpu-results.md, thirteenth session): 8192 x 28672 410.5 -> 391.9 us (clusters
#: of 2: 394.7); 4096 x 11008 (32 units) 106.9 -> 86.9 in clusters of 2 (89.6 in clusters of 4).
#: (It replaces the tail plan, whole waves of 128 x 256 blocks and the rest in 128 x 128 blocks:
#: 4096 x 11008 at 512 rows 119-124 us.) At 256 rows, not measured, the tiles stay as they were.
SK_MIN_M = 257
SK_C2_MAX_UNITS = 32
#: ... and where those would take clusters of 2, three-warpgroup 192 x 128 blocks in stream-K form
#: instead. H100, 4-bit g128, 512 rows, kernel only, side by side (tools/probe_wgmma.py --variants,
#: docs/gpu-results.md, fifteenth session): 4096 x 11008 83.0 us against 86.2 (128x256c2rs), 8192 x
#: 8192 116.4 against 118.4 (128x256c2r); where clusters of 4 are taken (8192 x 28672) they tie
#: (392.2 against 393.5), which stays.
SK_C2_TILE = "192x128rs"
#: From ONE_WAVE_MIN_M rows, layers whose 128 x 128 blocks (weights straight into registers)
#: fill between half the SMs and all of them take those blocks, one wave, K' unsplit. H200,
#: 4-bit g128, kernel only (tools/bench_kernels.py --wg-sweep-only, docs/gpu-results.md, ninth
#: session): 4096 x 4096 at 512 rows 41.3 against 50.7 us; 11008 x 4096 at 512 93.0 against 97.6;
#: 8192 x 8192 at 256 71.4 against 76.7. (Two waves or more lose: 8192 x 8192 at 512 rows 132.7
#: against 117.7; half a wave or less ties the split tiles.)
ONE_WAVE_MIN_M = 256
ONE_WAVE_TILE = "128x128r"


def padded_rows(M: int) -> int:
    return -(-M // ROW_ALIGN) * ROW_ALIGN


def xbuf_size(layer: kc.GpuLinear, M: int) -> int:
    """fp16 elements of the prepared x (`prep`) for M rows."""
    return padded_rows(M) * layer.layout.Kp


def prep(x2, layer: kc.GpuLinear, out=None, rows: int | None = None, *, gather: bool = False):
    """x [M, K] (fp16 or fp32, C-contiguous rows) -> xw fp16 [Kp/128, Mp/rows, 16, rows, 8] in wg
    order (Mp = padded_rows(M); zeros at padding and in rows >= M): blocks of `rows` rows (the
    tile's BM, so that a block's x stage is one contiguous range; default Mp, one block).
    `out`: a C-contiguous CuPy fp16 array of `xbuf_size` elements (any shape), or None.
    fp16 x of a direct layout (no act-order), 16-byte aligned, is read in 16-byte vectors
    (`prep_xwg_direct`); other x element by element through `wg_perm` (`prep_xwg`, or with
    gather=True always: the same bits, for tests and tools/probe_wgmma.py --prep)."""
    cp = kc._cupy()
    lay = layer.layout
    M = x2.shape[0]
    Mp = padded_rows(M)
    rows = rows or Mp or ROW_ALIGN
    if rows % 32 or Mp % rows:
        raise ValueError(f"rows per x block must be a multiple of 32 that divides {Mp}, got {rows}")
    if out is None:
        out = cp.empty(Mp * lay.Kp, dtype=cp.float16)
    elif (not isinstance(out, cp.ndarray) or out.dtype != cp.float16 or out.size != Mp * lay.Kp
          or not out.flags.c_contiguous):
        raise ValueError(f"the x buffer must be a C-contiguous CuPy float16 array of {Mp * lay.Kp} elements")
    out = out.reshape(lay.Kp // UNIT, Mp // rows, 16, rows, 8)
    if not (lay.Kp and Mp):
        return out
    if not gather and kc.x_in_place(layer, x2):
        kc.function("prep_xwg_direct")(
            (lay.Kp // UNIT, Mp // 32), (kc.THREADS,),
            (x2, np.int32(lay.K), out, np.int32(M), np.int32(Mp), np.int32(rows), np.int32(lay.span)),
        )
    else:
        kc.function("prep_xwg")(
            (lay.Kp // UNIT, Mp // 32), (kc.THREADS,),
            (x2, np.int32(lay.K), np.int32(x2.dtype == cp.float32), wg_perm(layer), out, np.int32(M), np.int32(Mp),
             np.int32(rows), np.int32(lay.Kp)),
        )
    return out


def clusters_along_n(n_tiles: int, tile: WgTile) -> int:
    """Clusters of `tile` (cn blocks of bn outputs each) that cover n_tiles n-tiles of 16 outputs."""
    return -(-n_tiles * 16 // (tile.bn * tile.cn))


def cluster_tiles(lay: kc.TileLayout, M: int, tile: WgTile) -> int:
    """Cluster tiles (tile.cn blocks of bn outputs x bm rows) that cover the layer's outputs for M rows."""
    return clusters_along_n(lay.Np // 16, tile) * -(-M // tile.bm)


def resident_blocks(cn: int) -> int:
    """Blocks (one per SM) the GPU runs at once in clusters of `cn` CTAs: every SM for cn <= 2; in
    clusters of 4 (each within one GPC) an H100 / H200 runs 30 clusters, 120 of its 132 SMs
    (Nsight Compute; and the time of 128 x 256 blocks in clusters of 4 doubles from 120 to 128
    blocks, `tools/probe_wgmma.py K N M --waves`, docs/gpu-results-h200.md)."""
    sms = cuda_mma.sm_count()
    return sms if cn <= 2 else max(cn, sms - sms // 11)


def tail_start(lay: kc.TileLayout, M: int, tile: WgTile) -> int:
    """First n-tile (16 outputs) of the tail of `tile` for M rows: the tile's blocks take the
    whole waves (the most blocks, in whole clusters, that fill the GPU a whole number of times),
    its tail's blocks the outputs left. Np // 16 (no tail) without a tail tile, when the blocks
    fill whole waves, or fewer blocks than one wave."""
    nts = lay.Np // 16
    if tile.tail is None:
        return nts
    per = tile.bn * tile.cn // 16  # n-tiles per cluster
    mb = -(-M // tile.bm)
    wave = resident_blocks(tile.cn)
    mid = clusters_along_n(nts, tile) * tile.cn * mb // wave * wave // (tile.cn * mb) * per
    return mid if 0 < mid < nts else nts


def default_plan(layer: kc.GpuLinear, M: int) -> tuple[WgTile, int]:
    """(tile, split) for M rows, from tile sweeps on an H100 (tools/bench_kernels.py --wg-sweep,
    docs/gpu-results.md; up to 64 rows on an H200, docs/gpu-results-h200.md): 256 x 64 blocks with
    the weights loaded straight into registers up to 64 rows, 256 x 128 blocks up to 128; above,
    128 x 256 blocks with the weights loaded straight into registers, in clusters of 4 where N gives at least C4_BLOCKS_PER_SM
    blocks of 128 outputs per SM, else of 2 (128 x 128 blocks where those tiles do not fit shared
    memory: 8 bits, 4 bits with groups of 16); from SK_MIN_M rows, layers of at most
    SK_C2_MAX_UNITS K' units take clusters of 2, blocks that would take clusters of 2 take
    SK_C2_TILE (three consumer warpgroups, stream-K), and blocks that do not fill whole waves take
    the tile's stream-K form; K' split (not in stream-K) so that the grid covers the SMs about once,
    with >= 4 units per split. From ONE_WAVE_MIN_M rows, a layer whose 128 x 128 blocks fill more than half
    the SMs in one wave takes those (ONE_WAVE_TILE)."""
    lay = layer.layout
    sms = cuda_mma.sm_count()

    def blocks(t: WgTile) -> int:
        return cluster_tiles(lay, M, t) * t.cn

    if M <= 64:
        tile = TILES["256x64r"]
    elif M <= 128:
        tile = TILES["256x128"]
    elif M >= ONE_WAVE_MIN_M and sms // 2 < blocks(TILES[ONE_WAVE_TILE]) <= sms:
        tile = TILES[ONE_WAVE_TILE]
    else:
        c4 = -(-lay.Np // 128) >= C4_BLOCKS_PER_SM * sms and not (M >= SK_MIN_M and lay.nu <= SK_C2_MAX_UNITS)
        if M < SK_MIN_M:
            tile = TILES["128x256c4r" if c4 else "128x256c2r"]
        elif not c4:
            tile = TILES[SK_C2_TILE]
        else:  # stream-K where the blocks leave a partial wave
            tile = TILES["128x256c4r"]
            if cluster_tiles(lay, M, tile) > stream_k_workers(lay, M, tile):
                tile = TILES["128x256c4rs"]
    if not fits(lay.bits, lay.gstc, tile):
        tile = TILES["128x128"]
    split = 1 if tile.sk else max(1, min(8, sms // blocks(tile), lay.nu // 4))
    return tile, split


def wg_matmul(x2, layer: kc.GpuLinear, bias, out, *, tile: WgTile | str | None = None, split: int | None = None,
              ws=None, xbuf=None):
    """out[M, N] = x2[M, K] @ W + bias (x2: CuPy fp16/fp32 [M, K], C-contiguous); returns out."""
    if isinstance(tile, str):
        tile = TILES[tile]
    if tile is None or split is None:
        t0, s0 = default_plan(layer, x2.shape[0])
        tile, split = tile or t0, split or s0
    xw = prep(x2, layer, xbuf, tile.bm)
    return run(xw, x2.shape[0], layer, bias, out, tile, split, ws)


def run(xw, M: int, layer: kc.GpuLinear, bias, out, tile: WgTile, split: int, ws=None, *, lbo: int | None = None,
        sbo: int | None = None):
    """Launch qgemm_wg (+ mma_reduce when split > 1) for M rows; a tile with a tail (split = 1)
    launches twice: its own blocks over the n-tiles [0, tail_start), then the tail's over the rest
    (a split > 1 ignores the tail).

    xw:   CuPy fp16 [Kp/128, Mp/rows, 16, rows, 8] in wg order (`prep`), C-contiguous, 16-byte
          aligned; rows = tile.bm makes each x stage one bulk copy (other tiles, tails, read it
          chunk by chunk).
    bias: CuPy fp32 [N] or None.   out: CuPy fp16 or fp32 with M*N elements, C-contiguous (written whole).
    ws:   optional CuPy fp32 buffer of >= split*M*N elements (split > 1; allocated when None).
    lbo / sbo: shared-memory descriptor offsets (tests of the layout only; default BM*16 / 128).
    """
    cp = kc._cupy()
    lay = layer.layout
    Mp = padded_rows(M)
    rows = xw.shape[3] if xw.ndim == 5 else 0
    if (xw.dtype != cp.float16 or not rows or xw.shape != (lay.Kp // UNIT, Mp // rows, 16, rows, 8)
            or not xw.flags.c_contiguous or xw.data.ptr % 16):
        raise ValueError(f"x must be C-contiguous 16-byte aligned fp16 {(lay.Kp // UNIT, 'Mp/rows', 16, 'rows', 8)} "
                         f"in wg order (prep), Mp = {Mp}")
    for part in tile.parts():  # a block's rows must lie in one block of x
        if rows % part.bm:
            raise ValueError(f"x is in blocks of {rows} rows, not a multiple of tile {part.label}'s {part.bm}: "
                             f"prepare it with prep(..., rows={tile.bm})")
    if tile.sk and split != 1:
        raise ValueError(f"stream-K tile {tile.label} takes split = 1 (its blocks already share the units), got {split}")
    ws = cuda_mma.check_gemm_args(M, lay.N, bias, out, split, ws)
    if tile.sk:
        ws = _sk_workspace(lay, M, tile, ws)
    if not supported():
        raise RuntimeError("the wgmma kernel needs an sm_90 GPU (H100 / H200); use path='mma' or 'dequant'")
    if M == 0:
        return out
    nts = lay.Np // 16
    if split > 1 or tile.tail is None:
        _launch(xw, Mp, M, layer, bias, out, tile, split, ws, 0, nts, lbo, sbo)
    else:  # whole waves of the tile's blocks, then the outputs left in the tail's blocks
        mid = tail_start(lay, M, tile)
        if mid > 0:
            _launch(xw, Mp, M, layer, bias, out, replace(tile, tail=None), 1, ws, 0, mid, lbo, sbo)
        if mid < nts:
            _launch(xw, Mp, M, layer, bias, out, tile.tail, 1, ws, mid, nts, lbo, sbo)
    if split > 1:
        cuda_mma.reduce_split(ws, split, bias, out, M, lay.N)
    return out


def stream_k_workers(lay: kc.TileLayout, M: int, tile: WgTile) -> int:
    """Clusters of a stream-K launch of `tile` for M rows: one per cluster the GPU runs at once
    (`resident_blocks`), at most one per tile. Worker c of G takes the units [c*W/G, (c+1)*W/G)
    of all tiles' W units in tile order (tiles n-fastest); a tile split between two workers (never
    more: G <= tiles) is added up by the one that finishes its piece second."""
    return max(1, min(cluster_tiles(lay, M, tile), resident_blocks(tile.cn) // tile.cn))


def stream_k_segments(lay: kc.TileLayout, M: int, tile: WgTile) -> list[list[tuple[int, int, int, int]]]:
    """The kernel's stream-K walk (wg_segment in kernels/gptq_wgmma.cu), per worker: its segments
    (tile, first unit, end unit, split slot or -1). Worker c takes the unit positions
    [c*W/G, (c+1)*W/G) of the W = tiles x units positions in tile order; a segment that is not a
    whole tile is one of the two pieces of a split tile, whose slot is the boundary between the
    two workers (c where the piece starts the worker's range, c + 1 where it ends it)."""
    nu = lay.nu
    G = stream_k_workers(lay, M, tile)
    W = cluster_tiles(lay, M, tile) * nu
    out = []
    for c in range(G):
        pos, end, segs = W * c // G, W * (c + 1) // G, []
        while pos < end:
            ti, k0 = divmod(pos, nu)
            k1 = min(nu, k0 + end - pos)
            segs.append((ti, k0, k1, c if k0 > 0 else c + 1 if k1 < nu else -1))
            pos += k1 - k0
        out.append(segs)
    return out


def workspace_size(lay: kc.TileLayout, M: int, tile: WgTile, split: int) -> int:
    """fp32 elements of a launch's workspace: split partial outputs for split > 1; for a stream-K
    tile, one block tile of partial sums per boundary between workers and CTA of a cluster; else 0."""
    if tile.sk:
        return stream_k_workers(lay, M, tile) * tile.cn * tile.bn * tile.bm
    return split * M * lay.N if split > 1 else 0


_COUNTERS: dict[tuple[int, int], object] = {}


def _sk_counters(n: int):
    """int32 zeros (>= n) for the stream-K fix-up: an arrival counter and a ready flag per split
    tile and CTA. Each launch leaves them zero again, so launches in order reuse them: one buffer
    per device and stream (the current CuPy stream, which the launch uses), kept for the process
    (a CUDA graph may hold its address). Graphs captured on one stream must not be replayed at
    the same time on two streams."""
    cp = kc._cupy()
    key = (cp.cuda.runtime.getDevice(), cp.cuda.get_current_stream().ptr)
    buf = _COUNTERS.get(key)
    if buf is None or buf.size < n:
        buf = _COUNTERS[key] = cp.zeros(max(n, 4096), dtype=cp.int32)
    return buf


def _sk_workspace(lay: kc.TileLayout, M: int, tile: WgTile, ws):
    cp = kc._cupy()
    need = workspace_size(lay, M, tile, 1)
    if ws is None:
        return cp.empty(need, dtype=cp.float32)
    if ws.dtype != cp.float32 or ws.size < need or not ws.flags.c_contiguous:
        raise ValueError(f"ws must be a C-contiguous fp32 buffer of >= {need} elements for stream-K tile {tile.label}")
    return ws


def _launch(xw, Mp: int, M: int, layer: kc.GpuLinear, bias, out, tile: WgTile, split: int, ws, nt_lo: int,
            nt_hi: int, lbo: int | None, sbo: int | None) -> None:
    """One qgemm_wg launch over the n-tiles [nt_lo, nt_hi) (arguments checked by `run`)."""
    cp = kc._cupy()
    lay = layer.layout
    i32 = np.int32
    null = np.uint64(0)
    cnt = null
    if tile.sk:  # one cluster per worker
        workers = stream_k_workers(lay, M, tile)
        grid = (workers * tile.cn, 1, 1)
        cnt = _sk_counters(2 * workers * tile.cn)
    else:
        grid = (clusters_along_n(nt_hi - nt_lo, tile) * tile.cn, -(-M // tile.bm), split)
    function(lay.bits, lay.gstc, tile)(
        grid, (tile.threads,),
        (xw, i32(Mp), i32(xw.shape[3]), layer.qw, layer.sz, bias if (bias is not None and split == 1) else null,
         out, i32(out.dtype == cp.float32), ws if (split > 1 or tile.sk) else null, i32(M), i32(lay.N), i32(lay.Np),
         i32(nt_lo), i32(nt_hi), i32(lay.nu), i32(lay.upg), i32(split),
         i32(tile.bm * 16 if lbo is None else lbo), i32(128 if sbo is None else sbo), cnt),
        shared_mem=smem_bytes(lay.bits, lay.gstc, tile),
    )
