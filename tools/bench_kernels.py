"""Benchmark of the CUDA quant-matmul kernels against fp16 cuBLAS and PyTorch's int4 kernel.

    python tools/bench_kernels.py            # all shapes and M; table last, $OUT/bench.json
    python tools/bench_kernels.py --quick    # two shapes, M in {1, 16, 512}
    python tools/bench_kernels.py --sweep    # M = 1 and 4: every split-K / occupancy variant first
    python tools/bench_kernels.py --mma-sweep  # M = 64 and 512: every qgemm_mma tile x split first

Measures the device-to-device copy bandwidth first (bytes read + written), then for each weight
shape K x N and batch M: y = x @ W with
  fp16   torch.nn.functional.linear on an fp16 weight (cuBLAS);
  int4   torch.ops.aten._weight_int4pack_mm (PyTorch's tinygemm, group 128, bf16), where available;
  w4/w3  ours (gptq_export.kernels, torch front end), group 128, without and with act-order
         (random g_idx permutation: activations gathered through perm inside the kernel);
         for M >= 16 also each large-M path: "mma" (fused dequantize + tensor-core GEMM,
         kernels/gptq_mma.cu), "dq" (dequantize to fp16 + cuBLAS, the old prefill path) and
         "gemv" (the small-M fused kernel).
Times are medians of CUDA-event timings over batches of back-to-back calls queued behind a GPU
sleep (so host launch overhead is not timed), after about 20 ms of the same calls, rotating among
enough weight/activation copies that the working set exceeds 3x the L2 cache; the variants of one
shape and M (fp16 and int4 included) are timed in rounds, one batch each in turn, so that they
share any slow spell of the GPU (Timer.interleaved_ms). GB/s counts packed weights + scales/zeros
+ x + y.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 8192), (8192, 28672)]
MS = [1, 4, 16, 32, 64, 128, 512]
GROUP = 128


class Timer:
    def __init__(self, device):
        self.device = device
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)
        # Calibrate torch.cuda._sleep (cycles) -> ms, to hide the host enqueue time of a batch.
        self.cycles_per_ms = None
        try:
            torch.cuda._sleep(1000)
            torch.cuda.synchronize()
            self.start.record()
            torch.cuda._sleep(10_000_000)
            self.end.record()
            self.end.synchronize()
            self.cycles_per_ms = 10_000_000 / self.start.elapsed_time(self.end)
        except Exception:
            pass

    def per_call_ms(self, fn, ncopy: int, reps: int = 7, target_ms: float = 3.0, warm_ms: float = 20.0) -> float:
        """Median over `reps` batches of the mean time of one call (calls rotate among copies)."""
        return self.interleaved_ms({"fn": (fn, ncopy)}, reps, target_ms, warm_ms)["fn"]

    def interleaved_ms(self, fns: dict, reps: int = 7, target_ms: float = 3.0, warm_ms: float = 20.0) -> dict:
        """{name: (fn, ncopy)} -> {name: median over `reps` rounds of the mean time of one call}.

        Each fn first runs for about `warm_ms` of GPU time (at most 200 calls); then every round
        times one batch of each fn in turn, so a slow spell of the GPU is shared by all of them
        rather than charged to whichever is timed first. Timed one after another, the first variant
        after the fp16 GEMM could run slow: H100, 8192 x 28672 at 512 rows, the same wgmma plan
        439.4 us timed first against 402.5 us timed fourth (fifteenth session), still 459.3 against
        408.9 with the warm-up alone (sixteenth session; docs/gpu-results.md).
        Each batch is queued behind a GPU sleep longer than the host takes to enqueue it (measured
        on the previous batch), so that the GPU runs the calls back to back."""
        iters, host_ms, times = {}, {}, {name: [] for name in fns}
        for name, (fn, ncopy) in fns.items():
            for i in range(2 * ncopy):
                fn(i % ncopy)
            torch.cuda.synchronize()
            self.start.record()
            fn(0)
            self.end.record()
            self.end.synchronize()
            est = max(self.start.elapsed_time(self.end), 1e-3)
            for i in range(min(200, math.ceil(warm_ms / est))):
                fn(i % ncopy)
            iters[name] = int(min(100, max(2 * ncopy, math.ceil(target_ms / est))))
            host_ms[name] = 0.08 * iters[name]  # first guess: 80 us per call
        for _ in range(reps):
            for name, (fn, ncopy) in fns.items():
                if self.cycles_per_ms:
                    torch.cuda._sleep(int(self.cycles_per_ms * (0.5 + 1.5 * host_ms[name])))
                t0 = time.perf_counter()
                self.start.record()
                for i in range(iters[name]):
                    fn(i % ncopy)
                self.end.record()
                host_ms[name] = (time.perf_counter() - t0) * 1e3
                self.end.synchronize()
                times[name].append(self.start.elapsed_time(self.end) / iters[name])
        return {name: statistics.median(t) for name, t in times.items()}


def copy_bandwidth(timer, nbytes=1 << 30) -> float:
    a = torch.empty(nbytes // 2, dtype=torch.float16, device="cuda").normal_()
    b = torch.empty_like(a)
    ms = timer.per_call_ms(lambda i: b.copy_(a), 1, reps=9, target_ms=20)
    return 2 * nbytes / ms / 1e6  # GB/s


def read_bandwidth(timer, nbytes=1 << 30) -> float:
    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").normal_()
    ms = timer.per_call_ms(lambda i: a.sum(), 1, reps=9, target_ms=20)
    return nbytes / ms / 1e6


def n_copies(nbytes: int, l2: int, cap: int = 24) -> int:
    return int(min(cap, max(2, math.ceil(3 * l2 / max(nbytes, 1)))))


def read_us(nbytes: int, timer, l2: int) -> float:
    """Time of a plain read (torch.sum, fp32) of `nbytes` bytes, rotating copies as the kernels do:
    what moving a layer's bytes costs any one kernel at that size (launch and ramp-up included)."""
    bufs = [torch.empty(max(nbytes // 4, 1), dtype=torch.float32, device="cuda").normal_()
            for _ in range(n_copies(nbytes, l2))]
    return timer.per_call_ms(lambda i: bufs[i % len(bufs)].sum(), len(bufs)) * 1e3


def packed_copies(K, N, bits, act_order, device, gen, l2) -> list:
    """Enough random packed layers (GpuLinear) of one shape that rotating through them defeats L2."""
    from gptq_export.kernels import torch_cuda as tc

    first = tc.gpu_linear(*random_packed(K, N, bits, act_order, device, gen), bits, K, N, device)
    return [first] + [tc.gpu_linear(*random_packed(K, N, bits, act_order, device, gen), bits, K, N, device)
                      for _ in range(n_copies(first.read_bytes, l2) - 1)]


def fp16_copies(K, N, device, gen, l2) -> list:
    """The same for fp16 weights [N, K] (cuBLAS baseline)."""
    return [torch.randn(N, K, device=device, dtype=torch.float16, generator=gen) * 0.02
            for _ in range(n_copies(2 * N * K, l2))]


def random_packed(K, N, bits, act_order, device, gen):
    """Random tensors of the CPU `gptq` format, made on the GPU (any bit pattern is a valid code stream)."""
    from gptq_export.kernels.reference import packed_rows

    G = -(-K // GROUP)
    qweight = torch.randint(-(2**31), 2**31 - 1, (packed_rows(K, bits), N), dtype=torch.int32, device=device,
                            generator=gen)
    scales = torch.rand((G, N), device=device, generator=gen) * 0.01 + 0.001
    qzeros = torch.randint(-(2**31), 2**31 - 1, (G, packed_rows(N, bits)), dtype=torch.int32, device=device,
                           generator=gen)
    g_idx = torch.arange(K, device=device, dtype=torch.int32) // GROUP
    if act_order:
        g_idx = g_idx[torch.randperm(K, device=device, generator=gen)]
    return qweight, scales, qzeros, g_idx


def int4_setup(K, N, ncopy, device, gen):
    """PyTorch's tinygemm int4 weights (or an error string)."""
    try:
        conv = torch.ops.aten._convert_weight_to_int4pack
        mm = torch.ops.aten._weight_int4pack_mm
        ws, szs = [], []
        for _ in range(ncopy):
            w8 = torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, device=device, generator=gen)
            ws.append(conv(w8, 8))
            szs.append((torch.rand((K // GROUP, N, 2), device=device, generator=gen) * 0.01).to(torch.bfloat16))
        x = torch.randn(4, K, device=device, dtype=torch.bfloat16)
        mm(x, ws[0], GROUP, szs[0])
        return ws, szs, None
    except Exception as exc:
        return None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def bench_shape(K, N, ms, timer, device, gen, l2):
    """All rows of one weight shape (printed as they come), and torch int4's error if any."""

    variants = {}
    for bits in (4, 3):
        for act in (False, True):
            variants[f"w{bits}" + ("a" if act else "")] = packed_copies(K, N, bits, act, device, gen, l2)
    w16 = fp16_copies(K, N, device, gen, l2)
    int4_w, int4_sz, err = int4_setup(K, N, n_copies(N * K // 2, l2), device, gen)
    reads = {b: read_us(variants[f"w{b}"][0].read_bytes, timer, l2) for b in (4, 3)}
    rows = []
    for M in ms:
        row = bench_m(K, N, M, timer, device, gen, variants, w16, int4_w, int4_sz)
        row["read4_us"], row["read3_us"] = reads[4], reads[3]
        rows.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return rows, err


def bench_m(K, N, M, timer, device, gen, variants, w16, int4_w, int4_sz):
    from gptq_export.kernels import torch_cuda as tc

    nx = max(len(v) for v in variants.values())
    xs = [torch.randn(M, K, device=device, dtype=torch.float16, generator=gen) for _ in range(nx)]
    xy_bytes = 2 * M * (K + N)
    row = {"K": K, "N": N, "M": M}
    timed = {"fp16": (lambda i: F.linear(xs[i % nx], w16[i % len(w16)]), max(len(w16), nx))}
    if int4_w is not None and M <= 16:
        xb = [x.to(torch.bfloat16) for x in xs]
        mm = torch.ops.aten._weight_int4pack_mm
        timed["int4"] = (lambda i: mm(xb[i % nx], int4_w[i % len(int4_w)], GROUP, int4_sz[i % len(int4_sz)]),
                         max(len(int4_w), nx))

    def run(i, layers, path="auto"):
        return tc.linear(xs[i % nx], layers[i % len(layers)], None, path=path)

    from gptq_export.kernels import cuda_wgmma

    with tc._On(device):
        wg = ["wgmma"] if M >= 64 and cuda_wgmma.supported() else []
    nbytes = {}
    for name, layers in variants.items():
        extra = (["mma", "dequant"] + wg + (["fused"] if M <= 64 else [])) if M >= 16 and not name.endswith("a") else []
        for path in ["auto"] + extra:
            key = name if path == "auto" else f"{name}_{path}"
            timed[key] = (lambda i, layers=layers, path=path: run(i, layers, path), max(len(layers), nx))
            nbytes[key] = layers[0].read_bytes + xy_bytes
    ms = timer.interleaved_ms(timed)  # every variant of this M in turn, round after round
    row["fp16_us"], row["fp16_GBps"] = ms["fp16"] * 1e3, (2 * N * K + xy_bytes) / ms["fp16"] / 1e6
    if "int4" in ms:
        row["int4_us"] = ms["int4"] * 1e3
        row["int4_GBps"] = (N * K // 2 + (K // GROUP) * N * 4 + xy_bytes) / ms["int4"] / 1e6
    for key, nb in nbytes.items():
        row[f"{key}_us"], row[f"{key}_GBps"] = ms[key] * 1e3, nb / ms[key] / 1e6
    for name, layers in variants.items():
        if M in (4, 16, 64, 512):  # sanity: the fused kernels and dequantize + cuBLAS agree
            b = run(0, layers, "dequant").float()
            for p in ("fused", "mma", *wg) if M <= 64 else ("mma", *wg):
                a = run(0, layers, p).float()
                row[f"{name}_{p}_vs_dequant"] = float((a - b).norm() / b.norm())
    return row


def _variant_label(kw: dict) -> str:
    label = f"{'s' if kw['xs'] else 'g'}{kw['occ']}c{kw['cs']}"
    return label + (f"p{kw['pd']}" if kw.get("pd") else "") + (f"n{kw['nt']}" if kw.get("nt", 1) > 1 else "")


def _sweep_shape(K, N, bits, variants, timer, device, gen, l2, ms=(1, 4)) -> list[dict]:
    from gptq_export.kernels import cuda as kc
    from gptq_export.kernels import torch_cuda as tc

    layers = packed_copies(K, N, bits, False, device, gen, l2)
    first, nl = layers[0], len(layers)
    w16 = fp16_copies(K, N, device, gen, l2)
    t_read = read_us(first.read_bytes, timer, l2)
    rows = []
    for M in ms:
        xs = [torch.randn(M, K, device=device, dtype=torch.float16, generator=gen) for _ in range(nl)]
        ys = [torch.empty(M, N, device=device, dtype=torch.float16) for _ in range(nl)]

        def call(i, kw=None, xs=xs, ys=ys):
            with tc._On(device):
                kc.quant_matmul(tc.to_cupy(xs[i % nl]), layers[i % nl], None, tc.to_cupy(ys[i % nl]), path="fused",
                                **(kw or {}))
            return ys[i % nl]

        ref = call(0).float().clone()
        nw = max(nl, len(w16))
        row = {"K": K, "N": N, "bits": bits, "M": M, "default_us": timer.per_call_ms(call, nl, reps=5) * 1e3,
               "fp16_us": timer.per_call_ms(lambda i, xs=xs: F.linear(xs[i % nl], w16[i % len(w16)]), nw, reps=5) * 1e3,
               "read_us": t_read, "variants": {}}
        for name, kw in variants:
            if kc.small_params(name)["bits"] != bits or (kw["xs"] and M != 1):
                continue
            try:
                err = float((call(0, kw).float() - ref).norm() / ref.norm())
            except ValueError as exc:  # a variant this shape cannot run (e.g. x too large to stage)
                print(f"skip {name}: {exc}", flush=True)
                continue
            t = timer.per_call_ms(lambda i, kw=kw, call=call: call(i, kw), nl, reps=5) * 1e3
            row["variants"][_variant_label(kw)] = (round(t, 2), err)
        best = min(row["variants"].items(), key=lambda kv: kv[1][0])
        row["best"], row["best_us"] = best[0], best[1][0]
        row["max_err"] = max(v[1] for v in row["variants"].values())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def sweep(shapes, timer, device, gen, l2, wide: bool = False) -> list[dict]:
    """M = 1 and 4: time every fused-kernel variant of kernels.cuda.sweep_kernel_names (x staged
    's' or read from global memory 'g', blocks per SM, blocks per split-K cluster 'c'; wide:
    units in flight per warp 'p' and output tiles per block 'n', no split-K) next to the default plan,
    and check each against the default's output."""
    from gptq_export.kernels import cuda as kc

    variants = kc.sweep_kernel_names(wide=wide)
    t0 = time.time()
    kc.precompile([n for n, _ in variants])
    print(f"sweep: {len(variants)} kernels compiled in {time.time() - t0:.1f}s", flush=True)
    rows = []
    for K, N in shapes:
        for bits in (4, 3):
            rows += _sweep_shape(K, N, bits, variants, timer, device, gen, l2, (1, 4))
            torch.cuda.empty_cache()
    labels = sorted({k for r in rows for k in r["variants"]})
    w = max(7, *(len(lb) for lb in labels))
    print("\nsweep (us; s/g = x staged / global, then blocks per SM, c = blocks per split-K cluster, p = units in "
          "flight per warp, n = output tiles per block)")
    print("(fp16 = cuBLAS fp16 weight; read = a plain read of the packed layer's bytes; xfp16 = fp16 / best)")
    print(f"{'K x N':>12} {'b':>2} {'M':>2} {'fp16':>7} {'read':>6} {'default':>8} {'best':>{w}} {'us':>6} {'xfp16':>6} "
          + " ".join(f"{lb:>{w}}" for lb in labels) + "  maxerr")
    for r in rows:
        cells = " ".join(f"{r['variants'][lb][0]:>{w}.1f}" if lb in r["variants"] else f"{'':>{w}}" for lb in labels)
        print(f"{r['K']:>5} x {r['N']:<5} {r['bits']:>2} {r['M']:>2} {r['fp16_us']:>7.1f} {r['read_us']:>6.1f} "
              f"{r['default_us']:>8.1f} {r['best']:>{w}} {r['best_us']:>6.1f} {r['fp16_us'] / r['best_us']:>6.2f} {cells}"
              f"  {r['max_err']:.1e}")
    return rows


def mma_sweep(shapes, ms, timer, device, gen, l2, path: str = "mma") -> list[dict]:
    """Every tile x split of the fused GEMM `path` ("mma": kernels.cuda_mma.TILES; "wgmma":
    kernels.cuda_wgmma.TILES) for 4 and 3 bits at each M, with the default plan's time; checked
    against dequantize + cuBLAS."""
    from gptq_export.kernels import cuda as kc
    from gptq_export.kernels import cuda_mma as km
    from gptq_export.kernels import cuda_wgmma as kw
    from gptq_export.kernels import torch_cuda as tc

    mod = km if path == "mma" else kw
    t0 = time.time()
    kc.precompile(mod.kernel_names(bits=(4, 3), gstcs=(8,)))
    print(f"{path} sweep: kernels compiled in {time.time() - t0:.1f}s", flush=True)
    rows = []
    for K, N in shapes:
        for bits in (4, 3):
            layers = packed_copies(K, N, bits, False, device, gen, l2)
            first, nl = layers[0], len(layers)
            for M in ms:
                xs = [torch.randn(M, K, device=device, dtype=torch.float16, generator=gen) for _ in range(nl)]
                ys = [torch.empty(M, N, device=device, dtype=torch.float16) for _ in range(nl)]
                wsb = torch.empty(8 * M * N, device=device, dtype=torch.float32)
                xbuf = torch.empty(kw.xbuf_size(first, M), device=device, dtype=torch.float16)

                def call(i, tile=None, split=None, xs=xs, ys=ys, wsb=wsb, layers=layers, nl=nl, xbuf=xbuf):
                    with tc._On(device):
                        kc.quant_matmul(tc.to_cupy(xs[i % nl]), layers[i % nl], None, tc.to_cupy(ys[i % nl]),
                                        path=path, tile=tile, split=split, ws=tc.to_cupy(wsb),
                                        xbuf=tc.to_cupy(xbuf) if path == "wgmma" else None)
                    return ys[i % nl]

                ref = tc.linear(xs[0], layers[0], path="dequant").float()
                dt, ds = mod.default_plan(layers[0], M)
                row = {"K": K, "N": N, "bits": bits, "M": M, "path": path, "default": f"{dt.label}/{ds}",
                       "default_us": timer.per_call_ms(call, nl, reps=5) * 1e3, "variants": {}}
                err = 0.0
                for label, tile in mod.TILES.items():
                    if path == "wgmma" and not kw.fits(bits, 8, tile):
                        continue
                    for split in (1, 2, 4, 8):
                        if split > max(1, layers[0].layout.nu // 2) or (split > 1 and path == "wgmma" and tile.tail):
                            continue
                        e = float((call(0, label, split).float() - ref).norm() / ref.norm())
                        err = max(err, e)
                        t = timer.per_call_ms(lambda i, lb=label, sp=split: call(i, lb, sp), nl, reps=5) * 1e3
                        row["variants"][f"{label}/{split}"] = round(t, 2)
                best = min(row["variants"].items(), key=lambda kv: kv[1])
                row["best"], row["best_us"], row["max_err"] = best[0], best[1], err
                rows.append(row)
                print(json.dumps(row), flush=True)
            del layers
            torch.cuda.empty_cache()
    labels = sorted({k for r in rows for k in r["variants"]}, key=lambda s: (s.split("/")[0], int(s.split("/")[1])))
    print(f"\n{path} sweep (us; tile = outputs x tokens per block / split of K')")
    print(f"{'K x N':>12} {'b':>2} {'M':>4} {'default':>13} {'us':>7} {'best':>13} " + " ".join(f"{lb:>11}" for lb in labels)
          + "  maxerr")
    for r in rows:
        cells = " ".join(f"{r['variants'][lb]:>11.1f}" if lb in r["variants"] else f"{'':>11}" for lb in labels)
        print(f"{r['K']:>5} x {r['N']:<5} {r['bits']:>2} {r['M']:>4} {r['default']:>13} {r['default_us']:>7.1f} "
              f"{r['best']:>13} {cells}  {r['max_err']:.1e}")
    return rows


def run_one(spec: str) -> None:
    from gptq_export.kernels import torch_cuda as tc

    shape, m, variant = spec.split(":")
    K, N = (int(v) for v in shape.split("x"))
    M = int(m)
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(M, K, device=device, dtype=torch.float16, generator=gen)
    if variant == "fp16":
        w = torch.randn(N, K, device=device, dtype=torch.float16, generator=gen)
        fn = lambda: F.linear(x, w)  # noqa: E731
    else:
        bits, act = int(variant[1]), variant.endswith("a")
        layer = tc.gpu_linear(*random_packed(K, N, bits, act, device, gen), bits, K, N, device)
        fn = lambda: tc.linear(x, layer)  # noqa: E731
    for _ in range(20):
        fn()
    torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shapes", nargs="*", help="KxN, e.g. 4096x4096")
    ap.add_argument("--ms", nargs="*", type=int)
    ap.add_argument("--one", help="KxN:M:variant (w4, w4a, w3, w3a, fp16): run it 20 times, for a profiler")
    ap.add_argument("--sweep", action="store_true", help="time the M <= 8 kernel variants first")
    ap.add_argument("--sweep-only", action="store_true")
    ap.add_argument("--gemv-sweep", action="store_true",
                    help="M = 1 and 4: time the fused kernel at every occupancy x units in flight x tiles per block")
    ap.add_argument("--mma-sweep", action="store_true", help="time every qgemm_mma tile x split first (M 64, 512)")
    ap.add_argument("--mma-sweep-only", action="store_true")
    ap.add_argument("--wg-sweep", action="store_true", help="time every qgemm_wg (Hopper wgmma) tile x split first")
    ap.add_argument("--wg-sweep-only", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_kernels needs a CUDA GPU")
    if args.one:
        run_one(args.one)
        return
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    ms = args.ms or MS
    if args.quick:
        shapes, ms = shapes[:1] + shapes[-1:], [1, 16, 512]
    timer = Timer(device)
    copy_bw = copy_bandwidth(timer)
    read_bw = read_bandwidth(timer)
    print(f"device: {props.name}, {props.multi_processor_count} SMs, L2 {l2 >> 20} MiB, torch {torch.__version__}")
    print(f"copy bandwidth (read + write): {copy_bw:.0f} GB/s; read-only (sum): {read_bw:.0f} GB/s", flush=True)
    gen = torch.Generator(device=device).manual_seed(0)
    results = {"device": props.name, "copy_GBps": copy_bw, "read_GBps": read_bw, "torch": torch.__version__,
               "rows": []}
    int4_error = None
    if args.gemv_sweep:
        results["gemv_sweep"] = sweep(shapes, timer, device, gen, l2, wide=True)
        shapes = []
    if args.sweep or args.sweep_only:
        results["sweep"] = sweep(shapes, timer, device, gen, l2)
        if args.sweep_only:
            shapes = []
    if args.mma_sweep or args.mma_sweep_only:
        results["mma_sweep"] = mma_sweep(shapes, [m for m in ms if m > 16] or [64, 512], timer, device, gen, l2)
        if args.mma_sweep_only:
            shapes = []
    if args.wg_sweep or args.wg_sweep_only:
        results["wg_sweep"] = mma_sweep(shapes, [m for m in ms if m > 16] or [128, 512], timer, device, gen, l2,
                                        path="wgmma")
        if args.wg_sweep_only:
            shapes = []

    for K, N in shapes:
        rows, err = bench_shape(K, N, ms, timer, device, gen, l2)
        results["rows"] += rows
        int4_error = int4_error or err
        torch.cuda.empty_cache()
    results["int4_error"] = int4_error

    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "bench.json"), "w") as f:
            json.dump(results, f, indent=1)

    print(f"\n{props.name}: copy {copy_bw:.0f} GB/s, read {read_bw:.0f} GB/s. Times in us (median); "
          f"%cp = our GB/s / copy GB/s; xfp16 = fp16 time / ours; int4 = torch _weight_int4pack_mm; "
          f"rd4 = a plain read (torch.sum) of the 4-bit layer's bytes, w4/rd4 = our 4-bit time over it"
          + (f" (n/a: {int4_error})" if int4_error else ""))
    hdr = (f"{'K x N':>12} {'M':>4} {'fp16':>8} {'int4':>8} {'w4':>8} {'w4act':>8} {'w3':>8} {'w3act':>8} "
           f"{'w4GB/s':>7} {'w4%cp':>6} {'w3%cp':>6} {'w4xfp16':>7} {'w3xfp16':>7} {'w4/int4':>7} {'rd4':>6} {'w4/rd4':>6}")
    print(hdr)
    for r in results["rows"]:
        def us(k, r=r):
            return f"{r[k]:.1f}" if k in r else "n/a"

        w4cp = r["w4_GBps"] / copy_bw * 100
        w3cp = r["w3_GBps"] / copy_bw * 100
        vs_int4 = f"{r['int4_us'] / r['w4_us']:.2f}" if "int4_us" in r else "n/a"
        print(f"{r['K']:>5} x {r['N']:<5} {r['M']:>4} {us('fp16_us'):>8} {us('int4_us'):>8} {us('w4_us'):>8} "
              f"{us('w4a_us'):>8} {us('w3_us'):>8} {us('w3a_us'):>8} {r['w4_GBps']:>7.0f} {w4cp:>5.0f}% {w3cp:>5.0f}% "
              f"{r['fp16_us'] / r['w4_us']:>7.2f} {r['fp16_us'] / r['w3_us']:>7.2f} {vs_int4:>7} "
              f"{r['read4_us']:>6.1f} {r['w4_us'] / r['read4_us']:>6.2f}")
    big = [r for r in results["rows"] if "w4_mma_us" in r]
    if big:
        print("\nLarger-M paths (us, median): mma = fused dequantize + tensor-core GEMM (qgemm_mma), dq = "
              "dequantize + cuBLAS (old prefill path), gemv = small-M fused kernel; /fp16 = our time / fp16 time")
        print(f"{'K x N':>12} {'M':>4} {'fp16':>8} {'w4 auto':>8} {'w4 mma':>8} {'w4 dq':>8} {'w4 gemv':>8} "
              f"{'w3 mma':>8} {'w3 dq':>8} {'mma/fp16':>8} {'dq/fp16':>8} {'w3mma/fp16':>10} {'mma err':>8}")
        for r in big:
            f = r["fp16_us"]
            print(f"{r['K']:>5} x {r['N']:<5} {r['M']:>4} {f:>8.1f} {r['w4_us']:>8.1f} {r['w4_mma_us']:>8.1f} "
                  f"{r['w4_dequant_us']:>8.1f} {r.get('w4_fused_us', float('nan')):>8.1f} {r['w3_mma_us']:>8.1f} {r['w3_dequant_us']:>8.1f} "
                  f"{r['w4_mma_us'] / f:>8.2f} {r['w4_dequant_us'] / f:>8.2f} {r['w3_mma_us'] / f:>10.2f} "
                  + (f"{r['w4_mma_vs_dequant']:>8.1e}" if "w4_mma_vs_dequant" in r else f"{'-':>8}"))
    wgr = [r for r in results["rows"] if "w4_wgmma_us" in r]
    if wgr:
        print("\nHopper wgmma path (us, median): wg = fused dequantize + wgmma GEMM (qgemm_wg, x gathered first); "
              "/fp16 = our time / fp16 time")
        print(f"{'K x N':>12} {'M':>4} {'fp16':>8} {'w4 auto':>8} {'w4 wg':>8} {'w4 mma':>8} {'w4 dq':>8} {'w3 wg':>8} "
              f"{'wg/fp16':>8} {'w3wg/fp16':>9} {'dq/fp16':>8} {'wg err':>8}")
        for r in wgr:
            f = r["fp16_us"]
            print(f"{r['K']:>5} x {r['N']:<5} {r['M']:>4} {f:>8.1f} {r['w4_us']:>8.1f} {r['w4_wgmma_us']:>8.1f} "
                  f"{r['w4_mma_us']:>8.1f} {r['w4_dequant_us']:>8.1f} {r['w3_wgmma_us']:>8.1f} "
                  f"{r['w4_wgmma_us'] / f:>8.2f} {r['w3_wgmma_us'] / f:>9.2f} {r['w4_dequant_us'] / f:>8.2f} "
                  + (f"{r['w4_wgmma_vs_dequant']:>8.1e}" if "w4_wgmma_vs_dequant" in r else f"{'-':>8}"))


if __name__ == "__main__":
    main()
