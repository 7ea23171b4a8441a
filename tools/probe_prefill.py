"""Prefill through dequantize + cuBLAS, pipelined (CUDA GPU): for each shape and M, fp16 cuBLAS
against our prefill path with W^T dequantized in 1 (whole) to 8 slices of output rows, slice c + 1
decoded on a side stream while cuBLAS multiplies slice c (kernels.torch_cuda.dequant_matmul), with
the dequantize kernel's default grid and smaller ones; also the dequantize kernel alone. 4-bit,
group 128, CUDA-event medians (tools/bench_kernels.Timer), weights rotated among copies larger
than L2 in all.

    python tools/probe_prefill.py                       # the five bench shapes, M = 128 256 512
    python tools/probe_prefill.py --ms 512 --shapes 8192x28672
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, "tools")
from bench_kernels import SHAPES, Timer, n_copies, random_packed  # noqa: E402

CHUNKS = (1, 2, 3, 4, 6, 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--shapes", nargs="+", default=[f"{k}x{n}" for k, n in SHAPES])
    ap.add_argument("--blocks", type=int, nargs="+", default=[0, 264, 528], help="dequantize grids (0: default)")
    args = ap.parse_args()
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    timer = Timer(device)
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    cols = [f"c{c}" + (f"/b{b}" if b else "") for c in CHUNKS for b in args.blocks if c > 1 or not b]
    print("prefill, 4-bit g128 (us, median): fp16 = cuBLAS on fp16 W; cN = W^T dequantized in N slices "
          "overlapped with cuBLAS (c1 = whole W^T first), /bB = dequantize grid of B blocks; deq = dequantize "
          "alone; best/fp16 = best cN time / fp16 time")
    print(f"{'K x N':>13} {'M':>4} {'fp16':>7} {'deq':>7} " + " ".join(f"{c:>8}" for c in cols)
          + f" {'best':>8} {'best/fp16':>9} {'err':>8}", flush=True)
    for shape in args.shapes:
        K, N = (int(v) for v in shape.split("x"))
        probe_shape(K, N, args, cols, timer, device, gen, l2)


def probe_shape(K, N, args, cols, timer, device, gen, l2) -> None:
    from gptq_export.kernels import cuda as kc
    from gptq_export.kernels import torch_cuda as tc

    layers = [tc.gpu_linear(*random_packed(K, N, 4, False, device, gen), 4, K, N, device)]
    layers += [tc.gpu_linear(*random_packed(K, N, 4, False, device, gen), 4, K, N, device)
               for _ in range(n_copies(layers[0].read_bytes, l2) - 1)]
    w16 = [torch.randn(N, K, device=device, dtype=torch.float16, generator=gen) * 0.02
           for _ in range(n_copies(2 * N * K, l2))]
    nl, nw = len(layers), len(w16)
    with tc._On(device):
        deq = timer.per_call_ms(lambda i: kc.dequantize(layers[i % nl]), nl) * 1e3
    for M in args.ms:
        x = torch.randn(M, K, device=device, dtype=torch.float16, generator=gen)
        fp16 = timer.per_call_ms(lambda i, x=x: F.linear(x, w16[i % nw]), nw) * 1e3
        times, ref, err = [], None, 0.0
        for c in CHUNKS:
            for b in args.blocks:
                if c == 1 and b:
                    continue

                def call(i, c=c, b=b, x=x):
                    with tc._On(device):
                        return tc.dequant_matmul(x, layers[i % nl], chunks=c, blocks=b or None)

                times.append(timer.per_call_ms(call, nl) * 1e3)
                y = call(0).float()
                if ref is None:
                    ref = y
                err = max(err, float((y - ref).norm() / ref.norm()))
        best = min(times)
        print(f"{K:>5} x {N:<5} {M:>4} {fp16:7.1f} {deq:7.1f} " + " ".join(f"{t:8.1f}" for t in times)
              + f" {cols[times.index(best)]:>8} {best / fp16:9.2f} {err:8.1e}", flush=True)

if __name__ == "__main__":
    main()
