"""Probe of programmatic dependent launch (PDL) for the one-token kernel on a GPU: chains of
dependent one-token matmuls, timed with and without PDL, launched one by one and replayed from
a CUDA graph, with each trigger placement of kernels/gptq_small.cu (SMALL_PDL_TRIGGER) built
side by side.

    python tools/probe_pdl.py [--bits 4 3] [--shapes 2048x2048 8192x8192] [--hidden 2048 --inter 5632 --kv 512]
                              [--triggers 0,1,2] [--chain 32] [--reps 20]

Chains (each matmul reads the previous one's output where the shapes allow):
  KxN       that layer `--chain` times (x -> y -> x ... when square, else x -> y each time);
  block     one Llama block's seven layers, `--chain` / 7 times: q, k, v (from x), o (from q's
            output), gate, up (from o's), down (from gate's);
  block+ew  the same with an elementwise kernel (a CuPy multiply, never launched with PDL)
            before each matmul, as a norm or an activation would be.
Prints microseconds per matmul (median over --rounds rounds of --reps chains, CUDA events) and
checks that every chain's output is bitwise the same with and without PDL.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import numpy as np


def _packed(rng, bits: int, K: int, N: int):
    from gptq_export.kernels.reference import default_g_idx, pack_codes, pack_zeros

    g_idx = default_g_idx(K, 128)
    G = int(g_idx.max()) + 1
    # scales for about unit gain per layer: (q - z) has standard deviation sqrt(2 (4^bits - 1) / 12)
    s = 1.0 / (np.sqrt(K) * np.sqrt((4**bits - 1) / 6))
    return (pack_codes(rng.integers(0, 1 << bits, (K, N)), bits), rng.uniform(0.5 * s, 1.5 * s, (G, N)).astype(np.float32),
            pack_zeros(rng.integers(0, 1 << bits, (G, N)), bits), g_idx)


@contextlib.contextmanager
def small_kernels_built_with(kc, cp, defines: str):
    """kc.function returns the fused small-M kernels (qgemm_small, qgemm_split, their _pdl
    variants) built with `defines` ('+'-joined macros; 'base' = none) inside the block."""
    if defines == "base":
        yield
        return
    orig, cache = kc.function, {}
    opts = kc._OPTIONS + tuple(f"-D{d}" for d in defines.split("+"))

    def function(name):
        if kc.small_params(name) is None:
            return orig(name)
        if name not in cache:
            fn = cp.RawModule(code=kc.source(), options=opts, name_expressions=(name,)).get_function(name)
            p = kc.small_params(name)
            if p and p["xs"]:
                fn.max_dynamic_shared_size_bytes = kc.XS_MAX_BYTES[p["occ"]] - kc.red_bytes(p["mt"], p["nt"], p["cs"])
            cache[name] = fn
        return cache[name]

    kc.function = function
    try:
        yield
    finally:
        kc.function = orig


def build_chains(kc, cp, rng, bits: int, shapes: list[tuple[int, int]], H: int, I: int, KV: int, chain: int):
    """{name: (run(pdl), output array, matmuls per run, every array the chain writes)}."""
    layers: dict[tuple[int, int], object] = {}

    def layer(K, N):
        if (K, N) not in layers:
            layers[(K, N)] = kc.GpuLinear.from_packed(*_packed(rng, bits, K, N), bits, K, N)
        return layers[(K, N)]

    def vec(n):
        return cp.asarray(rng.standard_normal((1, n)).astype(np.float16) * 0.1)

    chains = {}
    for K, N in shapes:
        gl, a, b = layer(K, N), vec(K), vec(N)

        def run(pdl, gl=gl, a=a, b=b, K=K, N=N):
            src, dst = a, b
            for _ in range(chain):
                kc.quant_matmul(src, gl, None, dst, pdl=pdl)
                if K == N:
                    src, dst = dst, src
        chains[f"{K}x{N}"] = (run, b, chain, (a, b))

    q, k, v, o = layer(H, H), layer(H, KV), layer(H, KV), layer(H, H)
    gate, up, down = layer(H, I), layer(H, I), layer(I, H)
    x, yq, yk, yv, yo, yg, yu = vec(H), vec(H), vec(KV), vec(KV), vec(H), vec(I), vec(I)
    tmp_h, tmp_i = vec(H), vec(I)
    blocks = max(1, chain // 7)

    def block(pdl, ew):
        def mm(src, gl, dst, tmp):
            if ew:
                cp.multiply(src, 1.0, out=tmp)
                src = tmp
            kc.quant_matmul(src, gl, None, dst, pdl=pdl)

        for _ in range(blocks):
            mm(x, q, yq, tmp_h)
            mm(x, k, yk, tmp_h)
            mm(x, v, yv, tmp_h)
            mm(yq, o, yo, tmp_h)
            mm(yo, gate, yg, tmp_h)
            mm(yo, up, yu, tmp_h)
            mm(yg, down, x, tmp_i)

    bufs = (x, yq, yk, yv, yo, yg, yu, tmp_h, tmp_i)
    chains["block"] = (lambda pdl: block(pdl, False), x, 7 * blocks, bufs)
    chains["block+ew"] = (lambda pdl: block(pdl, True), x, 7 * blocks, bufs)
    return chains


def time_chain(cp, run, pdl: bool, graph: bool, reps: int, rounds: int) -> float:
    """Median over rounds of the time of `reps` runs, in us per run."""
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        run(pdl)  # warm-up (and kernel loads)
        g = None
        if graph:
            s.begin_capture()
            run(pdl)
            g = s.end_capture()
            g.launch(s)
        s.synchronize()
        t = []
        start, end = cp.cuda.Event(), cp.cuda.Event()
        for _ in range(rounds):
            start.record(s)
            for _ in range(reps):
                if graph:
                    g.launch(s)
                else:
                    run(pdl)
            end.record(s)
            end.synchronize()
            t.append(cp.cuda.get_elapsed_time(start, end) * 1e3 / reps)
    return float(np.median(t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[4])
    ap.add_argument("--shapes", nargs="*", default=["2048x2048", "2048x512", "5632x2048", "8192x8192"])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=5632)
    ap.add_argument("--kv", type=int, default=512)
    ap.add_argument("--triggers", default="0,1,2", help="SMALL_PDL_TRIGGER values to build (0 = the default)")
    ap.add_argument("--chain", type=int, default=28, help="matmuls per chain")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-graph", action="store_true", help="only launches one by one")
    args = ap.parse_args()

    from gptq_export.kernels import cuda as kc
    from gptq_export.kernels import launch as kl

    reason = kc.cuda_available()
    if reason:
        sys.exit(f"error: {reason}")
    import cupy as cp

    if not kl.pdl_supported():
        sys.exit("error: PDL is not available here (needs sm_90+ and a driver with cuLaunchKernelEx)")
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    dev = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
    print(f"{dev['name'].decode()}; us per matmul, median of {args.rounds} x {args.reps} chains; "
          "'same' = output bitwise equal with and without PDL (inf: equal, but not finite)", flush=True)
    modes = [("eager", False)] + ([] if args.no_graph else [("graph", True)])
    hdr = f"{'bits':>4} {'chain':<10} {'trigger':>7} " + " ".join(
        f"{m + ' off':>10} {m + ' on':>9} {'gain':>6}" for m, _ in modes) + f" {'same':>5}"
    print(hdr)
    rng = np.random.default_rng(0)
    for bits in args.bits:
        chains = build_chains(kc, cp, rng, bits, shapes, args.hidden, args.inter, args.kv, args.chain)
        for trig in args.triggers.split(","):
            defines = "base" if trig == "0" else f"SMALL_PDL_TRIGGER={trig}"
            with small_kernels_built_with(kc, cp, defines):
                for name, (run, out, n, bufs) in chains.items():
                    cells = []
                    outs = {}
                    # bitwise check: one chain each, from the same fresh state (the timing runs
                    # below leave the buffers overflowed, which would make the check meaningless)
                    fresh = [(rng.standard_normal(b.shape) * 0.1).astype(np.float16) for b in bufs]
                    for pdl in (False, True):
                        for b, v in zip(bufs, fresh, strict=True):
                            b[...] = cp.asarray(v)
                        run(pdl)
                        outs[pdl] = cp.asnumpy(out)
                    for _, graph in modes:
                        off = time_chain(cp, run, False, graph, args.reps, args.rounds) / n
                        on = time_chain(cp, run, True, graph, args.reps, args.rounds) / n
                        cells.append(f"{off:>10.2f} {on:>9.2f} {off / on:>5.2f}x")
                    finite = np.isfinite(outs[False]).all()
                    same = ("yes" if finite else "inf") if np.array_equal(outs[False], outs[True], equal_nan=True) else "NO"
                    print(f"{bits:>4} {name:<10} {trig:>7} " + " ".join(cells) + f" {same:>5}", flush=True)


if __name__ == "__main__":
    main()
