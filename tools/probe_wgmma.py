"""Quick check of the Hopper wgmma kernel on one 4-bit layer (sm_90 GPU): every tile against
dequantize + cuBLAS, then the time of each tile x split (kernel only, x prepared) against fp16
cuBLAS, CUDA-event medians (tools/bench_kernels.Timer).

    python tools/probe_wgmma.py [K N M]            # default 4096 4096 512
    python tools/probe_wgmma.py K N M --ablate [--tiles T1,T2]  # where the time goes: the kernel
                                                   # rebuilt without the decode, the wgmma, the x
                                                   # copies (--variants with WG_ABLATE=1..3; their
                                                   # errors are meaningless); default: six tiles
    python tools/probe_wgmma.py K N M --one TILE   # run one tile a few times (for a profiler)
    python tools/probe_wgmma.py K N M --waves      # time of the big tiles' blocks over the first
                                                   # n outputs, one cluster more each step (where
                                                   # a second wave starts), then every tile with a
                                                   # tail against its own blocks alone
    python tools/probe_wgmma.py K N M --prep       # x into the kernel's order: 16-byte loads vs
                                                   # the element gather vs a plain copy of x (then
                                                   # --variants too, where given)
    python tools/probe_wgmma.py K N M --variants --tiles T1,T2 --defines base,WG_NC_PREFETCH=1,...
                                                   # each tile built with each set of macros ('+'
                                                   # joins several; base = none): error, time; e.g.
                                                   # WG_NC_PREFETCH=1 (the old read-only prefetch),
                                                   # WG_ABLATE=3 (timing only), WG_X_CHUNKS=1 (x copied
                                                   # chunk by chunk, as before the eighth session)
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import replace

import numpy as np


def f_timer():
    import torch

    sys.path.insert(0, "tools")
    from bench_kernels import Timer

    return Timer(torch.device("cuda"))


def _options(kc, defines: str) -> tuple[str, ...]:
    extra = () if defines == "base" else tuple(f"-D{d}" for d in defines.split("+"))
    return kc._OPTIONS + kc._WG_OPTIONS + extra


def _compile_variant(job: tuple[str, str]) -> None:
    """Fill CuPy's disk cache with one kernel built with one set of macros (a worker process)."""
    import cupy as cp

    from gptq_export.kernels import cuda as kc

    name, defines = job
    cp.RawModule(code=kc.source(True), name_expressions=(name,), options=_options(kc, defines)).get_function(name)


def variants(cp, kc, kw, xw_for, M, gl, ref, timer, labels, define_sets) -> None:
    """Every tile built with every set of macros: relative error against dequantize + cuBLAS
    (meaningless under WG_ABLATE) and kernel time, side by side in one process."""
    import concurrent.futures
    import multiprocessing

    lay = gl.layout
    tiles = [kw.TILES[lb] for lb in labels if kw.fits(lay.bits, lay.gstc, kw.TILES[lb])]
    jobs = sorted({(kw.kernel_name(lay.bits, lay.gstc, p), d) for t in tiles for p in t.parts() for d in define_sets})
    t0 = time.time()
    with concurrent.futures.ProcessPoolExecutor(min(len(jobs), 12), mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_compile_variant, jobs))
    print(f"  built {len(jobs)} kernels in {time.time() - t0:.1f}s", flush=True)
    out = cp.empty((M, lay.N), dtype=cp.float16)
    real = kw.function
    fns: dict[tuple[str, str], object] = {}

    def build(tile, defines):
        key = (kw.kernel_name(lay.bits, lay.gstc, tile), defines)
        if key not in fns:
            fn = cp.RawModule(code=kc.source(True), name_expressions=(key[0],),
                              options=_options(kc, defines)).get_function(key[0])
            fn.max_dynamic_shared_size_bytes = kw.smem_bytes(lay.bits, lay.gstc, tile)
            fns[key] = fn
        return fns[key]

    for tile in tiles:
        row = []
        for defines in define_sets:
            kw.function = lambda bits, gstc, t, d=defines: build(t, d)
            try:
                out.fill(np.nan)
                xw = xw_for(tile.bm)
                kw.run(xw, M, gl, None, out, tile, 1)
                err = float(cp.linalg.norm(out.astype(cp.float32) - ref) / cp.linalg.norm(ref))
                t = timer.per_call_ms(lambda i, tile=tile, xw=xw: kw.run(xw, M, gl, None, out, tile, 1), 1, reps=7) * 1e3
            finally:
                kw.function = real
            row.append(f"{defines} {t:.1f} us (err {err:.0e})")
        print(f"  {tile.label}/1: " + ", ".join(row), flush=True)


def waves(cp, kw, xw_for, M, gl, ref, timer) -> None:
    """Blocks that run at once (the knee in time over the number of blocks), and the tails."""
    lay = gl.layout
    out = cp.empty((M, lay.N), dtype=cp.float16)
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    for label in ("128x256c4r", "128x256c2r", "128x128r"):
        tile = kw.TILES[label]
        per = tile.bn * tile.cn // 16
        mbt = -(-M // tile.bm)
        row = []
        for clusters in range(max(1, (sms * 3 // 4) // (tile.cn * mbt)), (sms * 5 // 4) // (tile.cn * mbt) + 2):
            hi = min(lay.Np // 16, clusters * per)
            t = timer.per_call_ms(lambda i, tile=tile, hi=hi: kw._launch(xw_for(tile.bm), kw.padded_rows(M), M, gl, None,
                                                                         out, tile, 1, None, 0, hi, None, None),
                                  1, reps=5) * 1e3
            row.append(f"{clusters * tile.cn * mbt}:{t:.1f}")
        print(f"  {label} blocks:us  " + " ".join(row), flush=True)
    for label, tile in kw.TILES.items():
        if tile.tail is None:
            continue
        out.fill(np.nan)
        xw = xw_for(tile.bm)
        kw.run(xw, M, gl, None, out, tile, 1)
        err = float(cp.linalg.norm(out.astype(cp.float32) - ref) / cp.linalg.norm(ref))
        t = timer.per_call_ms(lambda i, tile=tile, xw=xw: kw.run(xw, M, gl, None, out, tile, 1), 1, reps=7) * 1e3
        main = replace(tile, tail=None)
        t0 = timer.per_call_ms(lambda i, tile=main, xw=xw: kw.run(xw, M, gl, None, out, tile, 1), 1, reps=7) * 1e3
        print(f"  {label}/1: {t:.1f} us (tail from n-tile {kw.tail_start(lay, M, tile)} of {lay.Np // 16}), "
              f"{main.label}/1 alone {t0:.1f} us; rel err {err:.1e}", flush=True)


def prep_times(cp, kw, rng, K, N, M, gl) -> None:
    """x into the kernel's order (`prep`): 16-byte loads against the element gather and a plain
    device copy of x, 8 copies of x in turn (past the 50 MB L2 at 512 x 8192), timed in interleaved rounds."""
    timer = f_timer()
    n = 8
    xs = [cp.asarray(rng.standard_normal((M, K)).astype(np.float16)) for _ in range(n)]
    outs = [cp.empty(kw.xbuf_size(gl, M), cp.float16) for _ in range(n)]
    a, b = (kw.prep(xs[0], gl, outs[j], 256, gather=j == 1).view(cp.uint16) for j in (0, 1))
    same = bool((a == b).all())
    ts = {name: v * 1e3 for name, v in timer.interleaved_ms({
        "16-byte loads": (lambda i: kw.prep(xs[i], gl, outs[i], 256), n),
        "element gather": (lambda i: kw.prep(xs[i], gl, outs[i], 256, gather=True), n),
        "plain copy": (lambda i: cp.copyto(outs[i][:M * K].reshape(M, K), xs[i]), n)}, reps=9).items()}
    mb = 2 * 2 * M * K / 1e6
    print(f"{K} x {N}, M={M}: prep of x ({mb:.1f} MB read + written), us: "
          + ", ".join(f"{k} {v:.1f} ({mb / v * 1e3:.0f} GB/s)" for k, v in ts.items())
          + f"; same bits: {same}", flush=True)


def main() -> None:
    import cupy as cp

    from gptq_export.kernels import cuda as kc
    from gptq_export.kernels import cuda_wgmma as kw

    K, N, M = (int(v) for v in sys.argv[1:4]) if len(sys.argv) >= 4 else (4096, 4096, 512)
    if not kw.supported():
        sys.exit("needs an sm_90 GPU")
    rng = np.random.default_rng(0)
    sys.path.insert(0, "tests/kernels")
    from test_cuda import random_layer  # noqa: E402

    layer = random_layer(rng, 4, K, N, 128, False)
    gl = kc.GpuLinear.from_packed(*layer, 4, K, N)
    x = cp.asarray(rng.standard_normal((M, K)).astype(np.float16))
    ref = kc.quant_matmul(x, gl, path="dequant").astype(cp.float32)
    xw_for = functools.cache(lambda bm: kw.prep(x, gl, rows=bm))  # x in blocks of the tile's BM rows
    if "--one" in sys.argv:  # for a profiler: one tile a few times
        out = cp.empty((M, N), dtype=cp.float16)
        tile = kw.TILES[sys.argv[sys.argv.index("--one") + 1]]
        for _ in range(5):
            kw.run(xw_for(tile.bm), M, gl, None, out, tile, 1)
        cp.cuda.runtime.deviceSynchronize()
        return
    def fp16_header():
        """A timer, after printing the layer and its fp16 cuBLAS time."""
        timer = f_timer()
        w16 = cp.asarray(rng.standard_normal((N, K)).astype(np.float16))
        print(f"{K} x {N}, M={M}, 4-bit g128: fp16 cuBLAS {timer.per_call_ms(lambda i: x @ w16.T, 1, reps=7) * 1e3:.1f} us",
              flush=True)
        return timer

    if "--prep" in sys.argv:
        prep_times(cp, kw, rng, K, N, M, gl)
        if "--variants" not in sys.argv:
            return
    if "--waves" in sys.argv:
        waves(cp, kw, xw_for, M, gl, ref, fp16_header())
        return
    if "--variants" in sys.argv:
        timer = fp16_header()
        labels = sys.argv[sys.argv.index("--tiles") + 1].split(",")
        define_sets = sys.argv[sys.argv.index("--defines") + 1].split(",") if "--defines" in sys.argv else ["base"]
        variants(cp, kc, kw, xw_for, M, gl, ref, timer, labels, define_sets)
        return
    if "--ablate" in sys.argv:  # where the time goes: without the weight decode, without the wgmma
        labels = ["128x128c2", "128x256c4", "128x128", "128x128r", "128x128c2r", "128x256c4r"]
        if "--tiles" in sys.argv:
            labels = sys.argv[sys.argv.index("--tiles") + 1].split(",")
        variants(cp, kc, kw, xw_for, M, gl, ref, f_timer(), labels, ["base", "WG_ABLATE=1", "WG_ABLATE=2", "WG_ABLATE=3"])
        return
    t0 = time.time()
    kw.function(4, 8, kw.TILES["128x128"])
    print(f"compiled in {time.time() - t0:.1f}s", flush=True)
    for tile in kw.TILES.values():
        out = cp.full((M, N), np.nan, dtype=cp.float16)
        kw.run(xw_for(tile.bm), M, gl, None, out, tile, 1)
        err = float(cp.linalg.norm(out.astype(cp.float32) - ref) / cp.linalg.norm(ref))
        print(f"tile {tile.label}: rel err vs dequantize + cuBLAS {err:.1e}", flush=True)
    timer = f_timer()
    w16 = cp.asarray(rng.standard_normal((N, K)).astype(np.float16))

    def timeit(fn):
        return timer.per_call_ms(lambda i: fn(), 1, reps=5) * 1e3

    f = timeit(lambda: x @ w16.T)
    print(f"fp16 cuBLAS {f:.1f} us; dequant path {timeit(lambda: kc.quant_matmul(x, gl, path='dequant')):.1f} us; "
          f"prep {timeit(lambda: kw.prep(x, gl, xw_for(256), 256)):.1f} us; mma path {timeit(lambda: kc.quant_matmul(x, gl, path='mma')):.1f} us")
    out = cp.empty((M, N), dtype=cp.float16)
    ws = cp.empty(8 * M * N, dtype=cp.float32)
    for label, tile in kw.TILES.items():
        for split in (1, 2, 4):
            t = timeit(lambda tile=tile, split=split: kw.run(xw_for(tile.bm), M, gl, None, out, tile, split, ws))
            print(f"  wg {label}/{split}: {t:.1f} us = {t / f:.2f}x fp16 (kernel only, x prepared)")


if __name__ == "__main__":
    main()
