"""Probe of the M <= 8 fused kernel (qgemm_small) on a GPU: each configuration built with each set
of macros, its error against dequantize + cuBLAS and its time (CUDA-event medians, rotating
enough weight copies to defeat L2, as tools/bench_kernels.py), next to fp16 cuBLAS and two plain
reads of the same bytes (torch.sum; a 16-byte-load read kernel).

    python tools/probe_gemv.py K N [M] [--bits 3,4] [--configs NT:OCC:XS:PD,...] [--defines base,SMALL_NT_OUTER=0,...]

A configuration NT:OCC:XS:PD is qgemm_small<bits, 1, NT, 8, XS, OCC, PD> (groups of 128; PD 0 =
the kernel's default; `def` = the default plan). Macros ('+' joins several; base = none; see
kernels/gptq_small.cu): SMALL_NT_OUTER=0 / 1 (the unit's n-tiles k-step by k-step / one after
another), SMALL_ABLATE=1 (no weight decode) or 2 (no scale/zero loads), the last two for timing
only (their errors are meaningless).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import sys
import time

import numpy as np

_READ_SRC = r"""
extern "C" __global__ void read16(const uint4* __restrict__ a, long long n, const uint4* __restrict__ b,
                                  long long nb, unsigned* out) {
    unsigned acc = 0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) {
        const uint4 v = __ldg(a + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < nb; i += stride) {
        const uint4 v = __ldg(b + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9E3779B9u) out[0] = acc;
}
"""


def _tiny_packed(bits: int, K: int, N: int):
    """Zero weights of the CPU format (only the layout matters: which kernel a plan picks)."""
    from gptq_export.kernels.reference import packed_rows

    G = -(-K // 128)
    return (np.zeros((packed_rows(K, bits), N), np.int32), np.ones((G, N), np.float32),
            np.zeros((G, packed_rows(N, bits)), np.int32), (np.arange(K) // 128).astype(np.int32))


def _options(kc, defines: str) -> tuple[str, ...]:
    return kc._OPTIONS + (() if defines == "base" else tuple(f"-D{d}" for d in defines.split("+")))


def _compile(job: tuple[str, str]) -> None:
    """Fill CuPy's disk cache with one kernel built with one set of macros (a worker process)."""
    import cupy as cp

    from gptq_export.kernels import cuda as kc

    name, defines = job
    cp.RawModule(code=kc.source(), name_expressions=(name,), options=_options(kc, defines)).get_function(name)


def _config(kc, layer, bits: int, M: int, conf: str) -> tuple[int, int, int, int]:
    """(NT, OCC, XS, PD) of a --configs entry."""
    if conf != "def":
        nt, occ, xs, pd = (int(v) for v in conf.split(":"))
        return nt, occ, xs, pd
    _, nt = kc.fused_config(layer, M)
    so = kc.staged_x(layer, M, 1, None, nt)
    xs = bool(so) and kc._stage_default(layer, M)
    return nt, so if xs else kc.default_occ_global(bits, 1, layer.layout.gstc), int(xs), kc.default_pd(1, nt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("K", type=int)
    ap.add_argument("N", type=int)
    ap.add_argument("M", type=int, nargs="?", default=1)
    ap.add_argument("--bits", default="3,4")
    ap.add_argument("--configs", default="def")
    ap.add_argument("--defines", default="base")
    args = ap.parse_args()

    import cupy as cp
    import torch

    sys.path.insert(0, "tools")
    from bench_kernels import Timer, fp16_copies, packed_copies, read_us

    from gptq_export.kernels import cuda as kc

    K, N, M = args.K, args.N, args.M
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    timer = Timer(dev)
    l2 = torch.cuda.get_device_properties(dev).L2_cache_size
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    x = torch.randn(M, K, device=dev, dtype=torch.float16, generator=gen)
    w16 = fp16_copies(K, N, dev, gen, l2)
    t16 = timer.per_call_ms(lambda i: x @ w16[i].T, len(w16)) * 1e3
    print(f"{torch.cuda.get_device_name()}: {K} x {N}, M={M}; fp16 cuBLAS {t16:.1f} us", flush=True)
    reader = cp.RawKernel(_READ_SRC, "read16")
    flag = cp.zeros(1, dtype=cp.uint32)
    xc = cp.from_dlpack(x)
    bit_list = [int(b) for b in args.bits.split(",")]
    jobs = set()
    for bits in bit_list:
        probe_layer = kc.GpuLinear.from_packed(*_tiny_packed(bits, K, N), bits, K, N)
        for conf in args.configs.split(","):
            nt, occ, xs, pd = _config(kc, probe_layer, bits, M, conf)
            jobs.update((kc.small_kernel_name(bits, 1, nt, 8, bool(xs), occ, pd), d) for d in args.defines.split(","))
    t0 = time.time()
    with concurrent.futures.ProcessPoolExecutor(min(len(jobs), 14), mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_compile, sorted(jobs)))
    print(f"built {len(jobs)} kernels in {time.time() - t0:.1f}s", flush=True)
    for bits in bit_list:
        layers = packed_copies(K, N, bits, False, dev, gen, l2)
        lay = layers[0].layout
        nb = layers[0].read_bytes
        rd = read_us(nb, timer, l2)
        qv = [(ly.qw.view(cp.uint32)[: ly.qw.size // 4 * 4].reshape(-1, 4), ly.sz.reshape(-1)[: ly.sz.size // 4 * 4].reshape(-1, 4))
              for ly in layers]

        def read16(i, qv=qv):
            a, b = qv[i % len(qv)]
            reader((sms * 8,), (256,), (a, np.int64(a.shape[0]), b, np.int64(b.shape[0]), flag))

        r16 = timer.per_call_ms(read16, len(qv)) * 1e3
        ref = kc.quant_matmul(xc, layers[0], path="dequant").astype(cp.float32)
        print(f" {bits}-bit: {nb / 1e6:.1f} MB; torch.sum read {rd:.1f} us, read16 {r16:.1f} us ({t16 / r16:.2f}x fp16) "
              f"({nb / r16 / 1e3:.0f} GB/s); default auto {timer.per_call_ms(lambda i, ls=layers: kc.quant_matmul(xc, ls[i % len(ls)]), len(layers)) * 1e3:.1f} us",
              flush=True)
        out = cp.empty((M, N), dtype=cp.float16)
        upg = lay.upg
        ushift = upg.bit_length() - 1 if upg & (upg - 1) == 0 else -1
        argsets = [(xc, np.int32(K), np.int32(K), np.int32(0), np.int32(0), ly.qw, ly.sz, ly.perm, kc._NULL, out,
                    np.int32(N), np.int32(0), np.int32(M), np.int32(N), np.int32(lay.Np), np.int32(lay.nu),
                    np.int32(upg), np.int32(ushift)) for ly in layers]
        for conf in args.configs.split(","):
            nt, occ, xs, pd = _config(kc, layers[0], bits, M, conf)
            name = kc.small_kernel_name(bits, 1, nt, lay.gstc, bool(xs), occ, pd)
            row = []
            for defines in args.defines.split(","):
                fn = cp.RawModule(code=kc.source(), name_expressions=(name,), options=_options(kc, defines)).get_function(name)
                smem = M * (lay.Kp + 8) * 2 if xs else 0
                if smem > 48 * 1024:
                    fn.max_dynamic_shared_size_bytes = smem
                grid = (lay.Np // (16 * nt), -(-M // 8))

                def launch(i, fn=fn, grid=grid, smem=smem, argsets=argsets):
                    fn(grid, (256,), argsets[i % len(argsets)], shared_mem=smem)

                out.fill(np.nan)
                try:
                    launch(0)
                except Exception as exc:  # e.g. more shared memory than the GPU has
                    row.append(f"{defines} failed ({str(exc).splitlines()[0][:80]}, {smem} B shared)")
                    continue
                err = float(cp.linalg.norm(out.astype(cp.float32) - ref) / cp.linalg.norm(ref))
                t = timer.per_call_ms(launch, len(layers)) * 1e3
                row.append(f"{defines} {t:.1f} us ({fn.num_regs} regs, {nb / t / 1e3:.0f} GB/s, {t16 / t:.2f}x fp16, err {err:.0e})")
            print(f"  {name}: " + "; ".join(row), flush=True)


if __name__ == "__main__":
    main()
