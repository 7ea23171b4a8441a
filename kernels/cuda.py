"""CUDA kernels of the packed `gptq` format (CuPy launchers), and the GPU tile layout they read.

The CPU format (`gptq_export.kernels.reference`, the single source of truth) is converted once, at
load time, into a GPU tile layout ("tc") made for the tensor-core kernels of ``gptq_cuda.cu``;
`repack_numpy` / `unpack_tc_numpy` here are its NumPy definition, and the GPU repack kernels are
tested bit-exactly against them.

GPU tile layout
---------------
K positions are first grouped and padded ("K'"): with ``gst`` = mma k-steps (of 16) per group,
rounded up to 1, 2, 4 or a multiple of 8, group g occupies K' positions
``[g*16*gst, g*16*gst + count_g)`` (its input columns in increasing k), the rest of the run is
padding; K' is a multiple of 128. ``perm[K']`` (int32) holds each position's original column or
-1. Act-order therefore costs no permuted copy of the weights: the weights are stored once, in K'
order, and the kernel gathers x through ``perm``. With contiguous groups of 16*gst columns
(``g_idx = k // group_size``, the last group possibly short), K' order is K order and x is read
in place ("direct" layout).

N is padded to N' (multiple of 64). The weights are ``(N'/16) n-tiles x (K'/128) units x 32 lanes
x 8*bits/32 words``: one (n-tile, unit) is a contiguous block of ``256*bits`` bytes that a warp
reads with one 16-byte vector per lane per 512 bytes (3-bit: a 16-byte and an 8-byte vector).
Lane ``l = 4*g + t`` holds, for k-step ``ts`` (0..7) of the unit, the 8 codes of its mma.m16n8k16
A fragment of W^T: pairs ``pr`` 0..3 = (n = g + 8*(pr & 1), j = 2*(pr >> 1) + {0, 1}) at K'
position ``u*128 + (ts // TS)*S + t*(S/4) + (ts % TS)*4 + j`` (span ``S = 16*min(gst, 8)``,
``TS = S/16``), so each lane's x fragment of a k-step is 4 consecutive K' positions. Within the
lane's words, the two codes of a pair sit 16 bits apart, so one shift and one LOP3 with 0x6400
make ``half2(1024 + q_lo, 1024 + q_hi)``:

- 4 bits: word ts, nibble ``pr + 4*hi``;   2 bits: word ts//2, field ``p + 8*hi``, p = 4*(ts%2)+pr;
- 8 bits: word ``2*ts + pr//2``, byte ``pr%2 + 2*hi``;
- 3 bits: 32 codes (k-steps 4r..4r+3, p = 4*(ts%4)+pr) in words 3r..3r+2: pairs p < 15 at bits
  ``3*(p%5) + 16*hi`` of word ``3r + p//5``; pair 15's three bits in bit ``15 + 16*hi`` of words
  3r, 3r+1, 3r+2 (low bit first). Exactly 3 bits per weight.

``sz`` uint32 [G', N'] = half2(scale in fp16, 1024 + zero); padding (scale 0, zero 0).
``W = scale * (q - zero)`` = ``scale * ((1024 + q) - (1024 + zero))``, exact in fp16 before the scale.

Paths of `quant_matmul` (M = rows of x):

- M <= MAX_FUSED_M (M < MMA_MIN_M for bits in MMA_BITS): `qgemm_small`, one fused tensor-core kernel that streams the packed weights
  once (see gptq_cuda.cu; launched through kernels/cuda_fused.py, its plan cached per layer). Each block takes 16 output columns, or 32 for M <= 8 with 3/4 bits when
  N is wide enough (NT2_BLOCKS_PER_SM). x is read from global memory (4 blocks per SM for 3/4 bits),
  staged in shared memory only for M = 1 with 3 bits on large matrices. Act-order, fp32 or unaligned x first go through `prep_x` (one small
  kernel: x in K' order, fp16). `qgemm_split` (M <= 8, on request: `cs=2` or `4`) splits K over a
  cluster of blocks; measured slower than `qgemm_small` on every benchmark shape of an H100, so
  it is not used by default (see docs/gpu-results.md).
- MMA_MIN_M <= M <= MMA_MAX_M, bits in MMA_BITS: `qgemm_mma` (kernels/gptq_mma.cu, launcher
  kernels/cuda_mma.py), a fused dequantize + mma.sync GEMM with a cp.async pipeline over the same
  tc layout (x in K' order: prep_x first when needed).
- WG_MIN_M <= M <= WG_MAX_M (and WG_SMALL_MIN_M <= M <= WG_SMALL_MAX_M with >= WG_SMALL_MIN_UNITS K'
  units), bits in MMA_BITS, at least WG_MIN_WEIGHTS weights, on sm_90 (H100 /
  H200): `qgemm_wg` (kernels/gptq_wgmma.cu, launcher kernels/cuda_wgmma.py), a fused dequantize +
  wgmma GEMM fed by TMA bulk copies (x first put into the kernel's order by `prep_xwg_direct`,
  16-byte loads, or `prep_xwg`, an element gather under act-order).
- larger M (prefill), other bits, or path="dequant": `dequant_tc` writes W^T in fp16 (K' order) to a scratch
  buffer, then cuBLAS.

Launchers take CuPy arrays on the current device and run on the current CuPy stream; kernels are
compiled once per process and device through `cupy.RawModule` (and cached on disk by CuPy). On
sm_90+ the fused small-M kernels can be launched with programmatic dependent launch
(kernels/launch.py; `GPTQ_EXPORT_PDL=1` or `quant_matmul(..., pdl=True)`; off by default: it
gains only between two of our kernels): each then starts loading its weights while the previous kernel of the stream
finishes, and waits for it before reading x.
"""

from __future__ import annotations

import importlib.resources
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cuda_layout import (  # noqa: F401  (re-exported: the launchers' public layout API)
    MAX_FUSED_M,
    N_ALIGN,
    STAGE_MAX_M,
    SZ_PAD,
    THREADS,
    UNIT,
    WORDS_PER_UNIT,
    XS_MAX_BYTES,
    TileLayout,
    _check_bits,
    _from_memory_order,
    decode_sz_numpy,
    plan_layout,
    repack_numpy,
    unpack_tc_numpy,
)
from .cuda_plan import (  # noqa: F401  (re-exported)
    NT2_BLOCKS_PER_SM,
    common_kernel_names,
    default_nt,
    default_occ,
    default_occ_global,
    default_pd,
    dequant_kernel_name,
    mt_for,
    red_bytes,
    repack_kernel_name,
    small_kernel_name,
    small_params,
    sweep_kernel_names,
)
from .reference import packed_rows, unpack_codes, unpack_zeros  # noqa: F401

SOURCES = ("gptq_cuda.cu", "gptq_small.cu", "gptq_cuda_repack.cu", "gptq_mma.cu")  # compiled as one, in this order
#: `quant_matmul(path="auto")` runs the fused tensor-core GEMM (`qgemm_mma`, kernels/cuda_mma.py) for
#: MMA_MIN_M <= M <= MMA_MAX_M with these bits; below, the small-M kernel; above (or other bits past
#: MAX_FUSED_M), dequantize + cuBLAS. Measured on an H100 (docs/gpu-results.md), 4 and 3 bits:
#: qgemm_mma is 1.35-2.2x faster than the small-M kernel at M = 32 (2x slower at 16), 1.24-3.0x
#: faster than dequantize + cuBLAS at M = 64, 0.96-1.56x at 128 (4096 x 4096 4% slower), and slower
#: from M = 256 (250-315 TFLOP/s at M = 512 with mma.sync; cuBLAS uses wgmma). Bits 2 and 8 are
#: tested on qgemm_mma (path="mma") but not benchmarked: they keep the earlier paths.
MMA_BITS = (3, 4)
MMA_MIN_M = 17
MMA_MAX_M = 128
#: On sm_90 (H100 / H200), `quant_matmul(path="auto")` runs the wgmma GEMM (`qgemm_wg`,
#: kernels/cuda_wgmma.py) for WG_MIN_M <= M <= WG_MAX_M rows of MMA_BITS layers with at least
#: WG_MIN_WEIGHTS weights: measured there (tools/bench_kernels.py --wg-sweep, docs/gpu-results.md)
#: 1.2-1.9x faster than qgemm_mma at M = 128 and 1.3-1.8x faster than dequantize + cuBLAS at
#: M = 256 on 4096 x 11008 and larger; about even with them on 4096 x 4096. At 512 rows (H100,
#: thirteenth session, kernel only, 4-bit g128), with stream-K tiles where the blocks do not fill
#: whole waves: 8192 x 28672 391.9 us, 4096 x 11008 86.9 (dequantize + cuBLAS: 107.1, twelfth
#: session), 8192 x 8192 119.6-122.7; 11008 x 4096 in one wave of 128 x 128 blocks 99.7 against
#: 104.5 (seventh session). Above 512 rows (not measured) dequantize + cuBLAS.
WG_MIN_M = 128
WG_MAX_M = 512
WG_MIN_WEIGHTS = 32 << 20
#: ... and, in 256 x 64 blocks (kernels.cuda_wgmma.default_plan), for WG_SMALL_MIN_M <= M <=
#: WG_SMALL_MAX_M rows of layers with at least WG_MIN_WEIGHTS weights and WG_SMALL_MIN_UNITS K' units:
#: on an H200 at 32 and 64 rows (docs/gpu-results-h200.md), 4-bit 8192 x 28672 95-97 us against 126-129
#: for qgemm_mma, 8192 x 8192 35-37 against 40-43, 11008 x 4096 28-30 against 31-33; with 32 units
#: (4096 x 11008) qgemm_mma stays faster (31-34 against 34-37).
WG_SMALL_MIN_M = MMA_MIN_M
WG_SMALL_MAX_M = 64
WG_SMALL_MIN_UNITS = 64
_OPTIONS = ("-std=c++17",)
#: The Hopper wgmma kernels (`qgemm_wg<...>`, kernels/cuda_wgmma.py) are compiled as a second module:
#: SOURCES + WG_SOURCE with sm_90a's arch-specific instructions (CuPy appends its own -arch=sm_90
#: after this option; NVRTC then builds sm_90a code, which needs an H100 / H200).
WG_SOURCE = "gptq_wgmma.cu"
_WG_OPTIONS = ("-arch=sm_90a",)


# ------------------------------------------------------------------------------------------------
# CuPy: compilation

_lock = threading.Lock()
_functions: dict[tuple[int, str], Any] = {}
_sms: dict[int, int] = {}


def _cupy():
    import cupy

    return cupy


def source(wgmma: bool = False) -> str:
    """The CUDA source of every kernel (package data of gptq_export.kernels); with `wgmma`, plus
    the Hopper kernels of WG_SOURCE."""
    root = importlib.resources.files(__package__)
    return "\n".join(root.joinpath(name).read_text() for name in SOURCES + ((WG_SOURCE,) if wgmma else ()))


def cuda_available() -> str | None:
    """None when CuPy and a CUDA device are usable, else why not (one line)."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install 'gptq-export[cuda]')"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as exc:  # CUDARuntimeError when there is no driver
        return f"no usable CUDA device ({str(exc).splitlines()[0][:200]})"
    return None


def function(name: str):
    """The compiled kernel `name` (a name expression of the SOURCES) on the current device."""
    cp = _cupy()
    key = (cp.cuda.runtime.getDevice(), name)
    fn = _functions.get(key)
    if fn is None:
        with _lock:
            fn = _functions.get(key)
            if fn is None:
                wg = name.startswith("qgemm_wg<")
                module = cp.RawModule(code=source(wg), options=_OPTIONS + (_WG_OPTIONS if wg else ()),
                                      name_expressions=(name,))
                fn = module.get_function(name)
                p = small_params(name)
                if p and p["xs"]:  # staged x: may need more than 48 KB
                    fn.max_dynamic_shared_size_bytes = XS_MAX_BYTES[p["occ"]] - red_bytes(p["mt"], p["nt"], p["cs"])
                _functions[key] = fn
    return fn


_SMEM_SET: set[tuple[int, str]] = set()


def function_with_smem(name: str, smem: int):
    """`function(name)` with its dynamic shared-memory limit raised to `smem` bytes (once per
    process and device): the GEMM kernels of cuda_mma / cuda_wgmma need more than 48 KB."""
    fn = function(name)
    key = (_cupy().cuda.runtime.getDevice(), name)
    if key not in _SMEM_SET:
        fn.max_dynamic_shared_size_bytes = smem
        _SMEM_SET.add(key)
    return fn


def _compile_one(name: str) -> str:
    function(name)
    return name


def precompile(names: list[str], workers: int | None = None) -> None:
    """Compile kernels in parallel processes, filling CuPy's on-disk cache; later `function`
    calls in any process then only load them. Each compile takes seconds (NVRTC, unrolled code)."""
    import concurrent.futures
    import multiprocessing

    names = sorted(set(names))
    workers = max(1, min(workers or (os.cpu_count() or 2) // 2, len(names)))
    if workers == 1:
        for n in names:
            function(n)
        return
    ctx = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            list(pool.map(_compile_one, names))
    except concurrent.futures.process.BrokenProcessPool:  # a worker died: finish here, one by one
        for n in names:
            function(n)


# ------------------------------------------------------------------------------------------------
# CuPy: weights on the GPU


def _i32(v: int) -> np.int32:
    return np.int32(v)


_NULL = np.uint64(0)


@dataclass(eq=False)
class GpuLinear:
    """One quantized Linear on the GPU, in the tile layout.

    qw: uint32 [layout.words]; sz: uint32 [Gp, Np]; perm: int32 [Kp] (CuPy arrays, one device).
    """

    layout: TileLayout
    qw: Any
    sz: Any
    perm: Any
    wgperm: Any = None  # int32 [Kp], x gather of the wgmma kernel (kernels.cuda_wgmma.wg_perm), lazily
    # Whether a plain (not PDL) fused launch has used the weights: a PDL kernel reads its weights
    # before it waits for the previous kernel, so the first launch after the repack is a plain
    # one (which starts only once the repack is complete; every later kernel starts after it).
    pdl_ready: bool = field(default=False, repr=False)
    plans: dict = field(default_factory=dict, repr=False)  # fused_plan's cache

    @property
    def nbytes(self) -> int:
        return int(self.qw.nbytes + self.sz.nbytes + self.perm.nbytes)

    @property
    def read_bytes(self) -> int:
        """Bytes of weights + scales/zeros one fused matmul reads."""
        return int(self.qw.nbytes + self.sz.nbytes)

    @classmethod
    def from_packed(cls, qweight, scales, qzeros, g_idx, bits: int, in_features: int, out_features: int) -> GpuLinear:
        """Upload (if needed) and repack the CPU format on the current device.

        qweight int32 [ceil(K/32)*bits, N]; scales float32 [G, N] (fp16 accepted);
        qzeros int32 [G, ceil(N/32)*bits]; g_idx int32 [K] — NumPy or CuPy arrays (or anything
        `cupy.asarray` takes, e.g. CUDA tensors through __cuda_array_interface__).
        """
        cp = _cupy()
        bits, K, N = _check_bits(int(bits)), int(in_features), int(out_features)
        g_host = cp.asnumpy(g_idx) if isinstance(g_idx, cp.ndarray) else np.asarray(g_idx)
        q = cp.ascontiguousarray(cp.asarray(qweight))
        s = cp.ascontiguousarray(cp.asarray(scales, dtype=cp.float32))
        z = cp.ascontiguousarray(cp.asarray(qzeros))
        if q.dtype.itemsize != 4 or q.dtype.kind not in "iu" or q.shape != (packed_rows(K, bits), N):
            raise ValueError(f"qweight must be int32 [{packed_rows(K, bits)}, {N}], got {q.dtype} {q.shape}")
        if s.ndim != 2 or s.shape[1] != N:
            raise ValueError(f"scales must be [groups, {N}], got {s.shape}")
        G = s.shape[0]
        if z.dtype.itemsize != 4 or z.dtype.kind not in "iu" or z.shape != (G, packed_rows(N, bits)):
            raise ValueError(f"qzeros must be int32 [{G}, {packed_rows(N, bits)}], got {z.dtype} {z.shape}")
        lay = plan_layout(g_host, bits, K, N, G)
        perm = cp.asarray(lay.perm)
        qw = cp.empty(lay.words, dtype=cp.uint32)
        threads = (lay.Np // 16) * lay.nu * 32
        function(repack_kernel_name(bits))(
            ((threads + THREADS - 1) // THREADS,), (THREADS,),
            (q, _i32(K), _i32(N), perm, _i32(lay.Np), _i32(lay.nu), _i32(lay.span), qw),
        )
        sz = cp.empty((lay.Gp, lay.Np), dtype=cp.uint32)
        function("repack_sz")(
            ((sz.size + THREADS - 1) // THREADS,), (THREADS,),
            (s, z, _i32(G), _i32(N), _i32(bits), _i32(lay.Gp), _i32(lay.Np), sz),
        )
        return cls(lay, qw, sz, perm)


# ------------------------------------------------------------------------------------------------
# CuPy: matmul


def sm_count() -> int:
    """Streaming multiprocessors of the current CUDA device (asked once per device)."""
    cp = _cupy()
    dev = cp.cuda.runtime.getDevice()
    if dev not in _sms:
        _sms[dev] = int(cp.cuda.runtime.getDeviceProperties(dev)["multiProcessorCount"])
    return _sms[dev]


def _stage_default(layer: GpuLinear, M: int) -> bool:
    """Whether M rows stage x by default: only M = 1 with 3 bits on large matrices (>= 32768 units
    of 128 x 16 weights; measured 9% faster on 8192 x 28672, slower on smaller shapes and 4 bits)."""
    lay = layer.layout
    return M <= STAGE_MAX_M and lay.bits == 3 and lay.nu * (lay.Np // 16) >= 32768


def fused_config(layer: GpuLinear, M: int, mt: int | None = None, nt: int | None = None) -> tuple[int, int]:
    """(MT, NT) of the small-M kernel for M rows on the current device (see `default_nt`)."""
    lay = layer.layout
    mt = mt or mt_for(min(M, 8 * 8))
    nt = nt or default_nt(lay.bits, mt, lay.gstc, lay.N, sm_count())
    if mt not in (1, 2, 4, 8) or nt not in (1, 2, 4):
        raise ValueError(f"unsupported kernel tile MT={mt} NT={nt}")
    return mt, nt


def _as_rows(x, K: int):
    cp = _cupy()
    if not isinstance(x, cp.ndarray):
        raise TypeError(f"x must be a CuPy array, got {type(x).__name__}")
    if x.dtype not in (cp.float16, cp.float32):
        raise TypeError(f"x must be float16 or float32, got {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != K:
        raise ValueError(f"x must be [..., {K}], got {x.shape}")
    return cp.ascontiguousarray(x).reshape(-1, K)


def staged_x(layer: GpuLinear, M: int, mt: int, occ: int | None = None, nt: int = 1, cs: int = 1) -> int:
    """Blocks per SM (occupancy) with which the fused kernel stages x in shared memory, or 0 when
    it does not (MT > 2, or x too large even at 2 blocks per SM)."""
    if mt > 2 or M > 8 * mt:
        return 0
    nbytes = M * (layer.layout.Kp + 8) * 2 + red_bytes(mt, nt, cs)
    first = occ or default_occ(layer.layout.bits, mt, layer.layout.gstc)
    for o in (first, 2) if occ is None else (occ,):
        if nbytes <= XS_MAX_BYTES[o]:
            return o
    return 0


def reads_in_place(layer: GpuLinear, x_f32: bool, aligned: bool) -> bool:
    """Whether the kernels read x (fp32 or fp16, rows 16-byte aligned or not) as it is: by
    16-byte loads in K' order, which needs fp16, the direct layout and aligned rows."""
    return not x_f32 and layer.layout.direct and aligned


def x_in_place(layer: GpuLinear, x2) -> bool:
    """`reads_in_place` for the CuPy array x2 (fp16 or fp32)."""
    return reads_in_place(layer, x2.dtype == _cupy().float32, x2.data.ptr % 16 == 0)


def prep_x_needed(layer: GpuLinear, x2, M: int | None = None, mt: int | None = None, xs: bool | None = None) -> bool:
    """Whether `quant_matmul` (fused path, defaults as given) needs an [M, Kp] fp16 buffer for x in
    K' order (pass one as `xbuf` to keep allocations with the caller, e.g. PyTorch): x is not
    readable in place (act-order, fp32, unaligned) and the kernel does not gather it itself (it
    does only when xs=True is asked for explicitly: that staging gather is slower than prep_x)."""
    return not xs and not x_in_place(layer, x2)


def gather_x(layer: GpuLinear, x2, out=None):
    """x [M, K] (fp16 or fp32, any alignment) -> fp16 [M, Kp] in K' order (zeros at padding)."""
    cp = _cupy()
    lay = layer.layout
    M = x2.shape[0]
    if out is None:
        out = cp.empty((M, lay.Kp), dtype=cp.float16)
    elif (not isinstance(out, cp.ndarray) or out.dtype != cp.float16 or out.shape != (M, lay.Kp)
          or not out.flags.c_contiguous):
        raise ValueError(f"the x buffer must be a C-contiguous CuPy float16 array of shape {(M, lay.Kp)}")
    from .cuda_fused import launch_prep

    launch_prep(layer, M, x2, x2.dtype == cp.float32, out)
    return out


def auto_path(layer: GpuLinear, M: int) -> str:
    """Path of `quant_matmul(path="auto")` for M rows: "fused", "mma", "wgmma" or "dequant" (see
    MMA_BITS, WG_MIN_M, WG_SMALL_MIN_M)."""
    lay = layer.layout
    weights = lay.K * lay.N
    few = WG_SMALL_MIN_M <= M <= WG_SMALL_MAX_M and weights >= WG_MIN_WEIGHTS and lay.nu >= WG_SMALL_MIN_UNITS
    many = WG_MIN_M <= M <= WG_MAX_M and weights >= WG_MIN_WEIGHTS
    if lay.bits in MMA_BITS and (few or many):
        from . import cuda_wgmma

        if cuda_wgmma.available():
            return "wgmma"
    if lay.bits in MMA_BITS and MMA_MIN_M <= M <= MMA_MAX_M:
        return "mma"
    return "fused" if M <= MAX_FUSED_M else "dequant"


def quant_matmul(x, layer: GpuLinear, bias=None, out=None, *, path: str = "auto", mt: int | None = None,
                 nt: int | None = None, xs: bool | None = None, occ: int | None = None, cs: int | None = None,
                 pd: int | None = None, xbuf=None, tile=None, split: int | None = None, ws=None,
                 pdl: bool | None = None):
    """y[..., N] = x[..., K] @ W + bias on the current device and CuPy stream.

    x: CuPy float16 or float32 [..., K] (copied if not C-contiguous); y has x's dtype.
    bias: CuPy float32 [N] or None. out: optional C-contiguous CuPy array [..., N] of x's dtype.
    path: "fused" (tensor-core kernel reading the packed weights once; any M, in grid rows of
    8*MT), "mma" (fused dequantize + tensor-core GEMM for larger M; tile / split / ws: see
    kernels.cuda_mma.mma_matmul), "wgmma" (the same on Hopper's wgmma, sm_90 only; see
    kernels.cuda_wgmma.wg_matmul; xbuf is then its prepared-x buffer of cuda_wgmma.xbuf_size elements), "dequant" (fp16 W^T
    into a scratch buffer, then cuBLAS), or
    "auto" (`auto_path`; "fused" when any of mt / nt / xs / occ / cs is given). mt / nt / xs / occ / cs / pd override the fused kernel's tile, x staging,
    blocks per SM, blocks per split-K cluster (MT = 1) and units in flight per warp (None:
    `default_pd`; 0: the kernel's default for its occupancy)
    (tests, benchmarks). xbuf: optional CuPy float16 [M, Kp] buffer for x in K' order, used when
    `prep_x_needed` (act-order, fp32 or unaligned x that the kernel cannot stage); allocated
    when needed and None. pdl: launch the fused kernel with programmatic dependent launch
    (kernels/launch.py; None: `pdl_default()`, which follows GPTQ_EXPORT_PDL, off when unset;
    True needs `pdl_supported()`); a layer's first fused launch is a plain one regardless
    (`GpuLinear.pdl_ready`).
    """
    cp = _cupy()
    lay = layer.layout
    K, N = lay.K, lay.N
    x2 = _as_rows(x, K)
    M = x2.shape[0]
    lead = x.shape[:-1]
    if bias is not None:
        if not isinstance(bias, cp.ndarray) or bias.dtype != cp.float32 or bias.shape != (N,):
            raise ValueError(f"bias must be a CuPy float32 [{N}] array")
        bias = cp.ascontiguousarray(bias)
    if out is None:
        out = cp.empty((*lead, N), dtype=x.dtype)
    elif (not isinstance(out, cp.ndarray) or out.dtype != x.dtype or out.shape != (*lead, N)
          or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous CuPy {x.dtype} array of shape {(*lead, N)}")
    if M == 0:
        return out
    if path == "auto":  # options of the small-M kernel given: that kernel
        fused_opts = any(v is not None for v in (mt, nt, xs, occ, cs))
        path = "fused" if fused_opts else auto_path(layer, M)
    if path == "wgmma":
        from . import cuda_wgmma

        cuda_wgmma.wg_matmul(x2, layer, bias, out, tile=tile, split=split, ws=ws, xbuf=xbuf)
        return out
    if path == "mma":
        from . import cuda_mma

        xk = x2 if x_in_place(layer, x2) else gather_x(layer, x2, xbuf)
        cuda_mma.mma_matmul(xk, layer, bias, out, tile=tile, split=split, ws=ws)
        return out
    if path == "fused":
        from .cuda_fused import fused_plan, launch_fused

        plan = fused_plan(layer, M, x2.dtype == cp.float32, x2.data.ptr % 16 == 0, mt=mt, nt=nt, xs=xs, occ=occ,
                          cs=cs, pd=pd)
        launch_fused(layer, plan, gather_x(layer, x2, xbuf) if plan.prep else x2, bias, out, pdl=pdl)
        return out
    if path != "dequant":
        raise ValueError(f"path must be 'auto', 'fused', 'mma', 'wgmma' or 'dequant', got {path!r}")
    wt = dequantize(layer)
    if x_in_place(layer, x2):
        y = cp.matmul(x2, wt[:, :K].T)
    else:
        y = cp.matmul(gather_x(layer, x2, xbuf), wt.T)
    if bias is not None:
        y = y + bias
    out.reshape(M, N)[...] = y.astype(out.dtype, copy=False)
    return out


def dequantize(layer: GpuLinear, out=None):
    """W^T [N, Kp] fp16 in K' order (CuPy; `out` C-contiguous [N, Kp] fp16): column kp holds
    original column layout.perm[kp] (padding columns: whatever the codes give; x is 0 there)."""
    cp = _cupy()
    lay = layer.layout
    if out is None:
        out = cp.empty((lay.N, lay.Kp), dtype=cp.float16)
    elif (not isinstance(out, cp.ndarray) or out.dtype != cp.float16 or out.shape != (lay.N, lay.Kp)
          or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous CuPy float16 array of shape {(lay.N, lay.Kp)}")
    tasks = (lay.Np // 16) * lay.nu
    blocks = max(1, min(-(-tasks // (THREADS // 32)), 65535))
    function(dequant_kernel_name(lay.bits, lay.gstc))(
        (blocks,), (THREADS,),
        (layer.qw, layer.sz, out, _i32(lay.Kp), _i32(lay.Kp), _i32(lay.N), _i32(lay.Np), _i32(lay.nu),
         _i32(lay.upg)),
    )
    return out
