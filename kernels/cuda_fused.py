"""Launches of the fused small-M kernel (qgemm_small / qgemm_split, kernels/gptq_small.cu) in two
steps: `fused_plan` works out a configuration once per layer, device, row count and kind of x
(cached on the layer), `launch_fused` launches it with arrays or raw device pointers. Used by
`kernels.cuda.quant_matmul` (the checked entry point) and by the direct path of
`kernels.torch_cuda.linear`, which skips the per-call host work of the general one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import cuda as kc
from .launch import launch, pdl_default, pdl_supported, sm90


@dataclass(frozen=True)
class FusedPlan:
    """One launch configuration of the fused small-M kernel (`fused_plan`): its kernel, whether x
    first goes through `gather_x` (prep) or the kernel's staging gathers it (gather), and x's
    leading dimension / columns / fp32 flag as the kernel then reads it."""

    names: tuple[str, str]  # the kernel's name expression, plain and for PDL launches
    prep: bool
    gather: int
    ldx: int
    kx: int
    x_f32: int
    smem: int
    grid: tuple[int, int]
    post: tuple  # the kernel's int32 arguments after out_f32 (M, N, Np, units, units per group, log2 of it or -1)
    pre: tuple = field(init=False)  # ... and after x (ldx, kx, x_f32, gather), made once

    def __post_init__(self):
        object.__setattr__(self, "pre", tuple(np.int32(v) for v in (self.ldx, self.kx, self.x_f32, self.gather)))


def fused_plan(layer: kc.GpuLinear, M: int, x_f32: bool, aligned: bool, *, mt: int | None = None,
               nt: int | None = None, xs: bool | None = None, occ: int | None = None, cs: int | None = None,
               pd: int | None = None, device: int | None = None) -> FusedPlan:
    """The fused kernel's configuration for M rows of x (fp32 or fp16; rows 16-byte aligned or
    not) and the options of `quant_matmul`; worked out once per layer, device and arguments
    (cached on the layer: the per-call host work of a decode step). device: CuPy's current
    device, where the caller already has it (None: asked here)."""
    if device is None:
        device = kc._cupy().cuda.runtime.getDevice()
    key = (device, M, x_f32, aligned, mt, nt, xs, occ, cs, pd)
    plan = layer.plans.get(key)
    if plan is not None:
        return plan
    lay = layer.layout
    mt, nt = kc.fused_config(layer, M, mt, nt)
    pd = kc.default_pd(mt, nt) if pd is None else pd
    if cs not in (None, 1, 2, 4) or (cs and cs > 1 and mt != 1):
        raise ValueError(f"cs must be 1, 2 or 4 (2 and 4 with MT = 1), got {cs} with MT={mt}")
    if cs and cs > 1 and not sm90():
        raise ValueError("cs > 1 (split-K over a thread-block cluster) needs an sm_90+ GPU (H100 / H200)")
    so = kc.staged_x(layer, M, mt, occ, nt, cs or 4)
    if xs and not so:
        raise ValueError(f"x cannot be staged for M={M}, MT={mt}, K'={lay.Kp}, occupancy {occ}")
    explicit = xs is not None
    xs = bool(xs) if explicit else bool(so) and kc._stage_default(layer, M)
    occ = so if xs else (occ or kc.default_occ_global(lay.bits, mt, lay.gstc))
    cs = cs or 1
    prep, gather, ldx, kx, xf = False, 0, lay.K, lay.K, int(x_f32)
    if not kc.reads_in_place(layer, x_f32, aligned):
        if xs and explicit:  # the kernel's staging gathers / casts x itself
            gather = int(not lay.direct or not aligned)
        else:  # x in K' order, fp16, first (a small kernel): faster than gathering per block
            prep, ldx, kx, xf = True, lay.Kp, lay.Kp, 0
    names = tuple(kc.small_kernel_name(lay.bits, mt, nt, lay.gstc, xs, occ, pd, cs, pdl) for pdl in (False, True))
    upg, i32 = lay.upg, np.int32
    ushift = upg.bit_length() - 1 if upg & (upg - 1) == 0 else -1
    plan = layer.plans[key] = FusedPlan(
        names, prep, gather, ldx, kx, xf, M * (lay.Kp + 8) * 2 if xs else 0,
        (lay.Np // (16 * nt) * cs, -(-M // (8 * mt))),
        (i32(M), i32(lay.N), i32(lay.Np), i32(lay.nu), i32(upg), i32(ushift)),
    )
    return plan


_FLAG = (np.int32(0), np.int32(1))


def launch_fused(layer: kc.GpuLinear, plan: FusedPlan, x, bias, out, *, out_f32: bool | None = None,
                 pdl: bool | None = None, stream=None) -> None:
    """Launch the fused kernel of `plan` (for its M rows) on `stream` (None: CuPy's current one).

    x: as the plan reads it (CuPy array, or its device pointer as np.uint64); bias: CuPy float32
    [N], np.uint64 pointer or None; out: CuPy [M, N] array or np.uint64 pointer, fp32 where
    `out_f32` (None: from out's dtype). No checks here: `quant_matmul` is the checked entry point.
    pdl: as `quant_matmul`'s; a layer's first launch is a plain one (`GpuLinear.pdl_ready`)."""
    if out_f32 is None:
        out_f32 = out.dtype == kc._cupy().float32
    pdl = pdl_default() if pdl is None else pdl
    if pdl and not pdl_supported():
        raise ValueError("pdl=True needs an sm_90+ GPU (H100 / H200) and a driver with cuLaunchKernelEx")
    pdl, layer.pdl_ready = pdl and layer.pdl_ready, True  # the first launch is a plain one
    p = plan
    launch(
        kc.function(p.names[pdl]), p.grid, (kc.THREADS,),
        (x, *p.pre, layer.qw, layer.sz, layer.perm, bias if bias is not None else np.uint64(0), out,
         p.post[1], _FLAG[bool(out_f32)], *p.post),
        p.smem, pdl=pdl, stream=stream,
    )


def launch_prep(layer: kc.GpuLinear, M: int, x, x_f32: bool, out, *, stream=None) -> None:
    """prep_x: x [M, K] (fp16, or fp32 where `x_f32`; any alignment) -> fp16 [M, K'] in K' order
    (zeros at padding) at `out`, on `stream` (None: CuPy's current one). x, out: CuPy arrays or
    device pointers (np.uint64); `kernels.cuda.gather_x` is the checked entry point."""
    lay, i32 = layer.layout, np.int32
    pairs = M * lay.Kp // 2
    if pairs:
        launch(kc.function("prep_x"), ((pairs + kc.THREADS - 1) // kc.THREADS,), (kc.THREADS,),
               (x, i32(lay.K), i32(lay.K), i32(x_f32), i32(not lay.direct), layer.perm, out, i32(M), i32(lay.Kp)),
               stream=stream)
